"""Grow 3 -> 4 nodes under write load, rebalance, shrink back to 3: no
acknowledged write lost, only retryable errors, about a quarter of replicas moved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .cluster import Cluster, wait_for
from .test_durability import WriteLoad, assert_all_present


def converged(c: Cluster, table: dict[str, Any]) -> bool:
    """Every shard's leader reports exactly the assigned voters."""
    want = {int(s): sorted(reps) for s, reps in table["assignment"].items()}
    seen: dict[int, list[str]] = {}
    for node in c.node_ids:
        if not c.alive(node):
            continue
        for entry in c.cluster_view(node)["shards"]:
            if entry.get("role") == "leader":
                seen[entry["shard"]] = entry["members"]
    return seen == want


def test_grow_rebalance_shrink_under_load(tmp_path: Path) -> None:
    c = Cluster(tmp_path, shards=8, spare=1)
    load = WriteLoad(c, writers=4)
    try:
        c.start_all()
        load.start()
        wait_for(lambda: load.acked_count() >= 50, 60, "writes flowing")
        spec = c.start_joining("n4")
        wait_for(lambda: c.request("n4", "GET", "/healthz", timeout_s=2)[0] == 200, 30, "n4 up")
        status, _, body = c.request("n1", "POST", "/v1/admin/members", spec)
        assert status == 200, body
        assert "n4" in [n["id"] for n in body["table"]["nodes"]]
        status, _, plan = c.request("n2", "POST", "/v1/admin/rebalance?dry_run=true")
        assert status == 200 and plan["dry_run"] is True
        status, _, done = c.request("n3", "POST", "/v1/admin/rebalance")
        assert status == 200, done
        assert 0.15 <= done["moved_fraction"] <= 0.4, done["moved_fraction"]
        assert done["moves"] == plan["moves"]
        wait_for(lambda: converged(c, done["table"]), 120, "replicas moved to match the table")
        held = [e["shard"] for e in c.cluster_view("n4")["shards"] if e.get("role")]
        assert held, "n4 holds no replica after the rebalance"
        wait_for(lambda: load.acked_count() >= 400, 60, "writes during and after the grow")

        status, _, shrink = c.request("n1", "DELETE", "/v1/admin/members/n4")
        assert status == 200, shrink
        assert all("n4" not in reps for reps in shrink["table"]["assignment"].values())
        wait_for(lambda: converged(c, shrink["table"]), 120, "n4's replicas moved away")
        load.stop()
        assert not set(load.statuses) - {200, 201, 503, 504, -1}, load.statuses
        c.stop("n4")
        assert_all_present(c, load.acked, "n2")
    finally:
        load.stop()
        c.stop_all()


def test_leaders_return_to_their_preferred_nodes_after_a_failover(fresh_cluster: Cluster) -> None:
    from raftmem.membership import Table, preferred_leaders

    c = fresh_cluster
    c.start_all()
    table = Table.from_json(c.request("n1", "GET", "/v1/admin/members")[2]["table"])
    preferred = preferred_leaders(table.assignment)

    def leaders() -> dict[int, str | None]:
        return {s: c.leader_of(s) for s in range(c.shards)}

    def balanced() -> bool:
        return leaders() == preferred

    wait_for(balanced, 60, f"leaders spread as placement prefers {preferred}")
    c.kill("n1")
    wait_for(lambda: all(v not in (None, "n1") for v in leaders().values()), 30, "failover away from n1")
    c.start("n1")
    c.wait_ready(["n1"])
    wait_for(balanced, 90, "leadership handed back to n1 for the shards it prefers")
