"""`raftmem status`'s pure part: merging every node's /v1/cluster view into one
picture (leader, lag, marks, exit status) and rendering it."""

from __future__ import annotations

import io
from typing import Any

from cli.status import Snapshot, last_index, leaders, render, summarize

NODES = [{"id": f"n{i}", "url": f"http://h:{i}", "zone": "", "raft_port_base": 0} for i in (1, 2, 3)]


def leader(shard: int, node: str, term: int = 2, **kw: Any) -> dict[str, Any]:
    entry = {"shard": shard, "replicas": ["n1", "n2", "n3"], "role": "leader", "leader": node, "term": term,
             "commit_index": 10, "applied_index": 10, "log_first_index": 1, "log_entries": 12,
             "members": ["n1", "n2", "n3"], "has_quorum": True, "lease_remaining_ms": 300,
             "match_index": {n: 12 for n in ("n1", "n2", "n3") if n != node}}
    entry.update(kw)
    return entry


def follower(shard: int, node_leader: str | None, term: int = 2, **kw: Any) -> dict[str, Any]:
    entry = {"shard": shard, "replicas": ["n1", "n2", "n3"], "role": "follower", "leader": node_leader,
             "term": term, "commit_index": 10, "applied_index": 9, "members": ["n1", "n2", "n3"],
             "has_quorum": True, "last_contact_ms": 20}
    entry.update(kw)
    return entry


def view(node: str, shards: list[dict[str, Any]], table_version: int = 0) -> dict[str, Any]:
    return {"cluster": "t", "node": node, "shard_count": len(shards), "replication_factor": 3,
            "table_version": table_version, "nodes": NODES, "shards": shards}


def healthy() -> dict[str, dict[str, Any]]:
    """Shard 0 led by n1, shard 1 by n2."""
    return {
        "n1": view("n1", [leader(0, "n1"), follower(1, "n2")]),
        "n2": view("n2", [follower(0, "n1"), leader(1, "n2")]),
        "n3": view("n3", [follower(0, "n1"), follower(1, "n2")]),
    }


def snap(views: dict[str, dict[str, Any]], down: dict[str, str] | None = None) -> Snapshot:
    nodes = {n["id"]: n["url"] for n in NODES}
    return Snapshot(views=views, nodes=nodes, down=down or {})


def test_healthy_cluster_merges_every_nodes_view() -> None:
    summary = summarize(snap(healthy()))
    assert summary["ok"] and not summary["problems"]
    assert [s["leader"] for s in summary["shards"]] == ["n1", "n2"]
    s0 = summary["shards"][0]
    assert [r["node"] for r in s0["replicas"]] == ["n1", "n2", "n3"]  # the leader first
    assert s0["replicas"][0]["lease_remaining_ms"] == 300 and s0["replicas"][0]["lag"] is None
    # Lag: the leader's last index (first 1 + 12 entries - 1 = 12) minus the match index.
    assert [r["lag"] for r in s0["replicas"][1:]] == [0, 0]
    assert s0["replicas"][1]["last_contact_ms"] == 20 and s0["replicas"][1]["applied_index"] == 9
    assert {n["id"]: n["leads"] for n in summary["nodes"]} == {"n1": 1, "n2": 1, "n3": 0}
    out = io.StringIO()
    render(summary, out)
    text = out.getvalue()
    assert "2/2 shards have a leader with a quorum; 3/3 nodes answered" in text
    assert "!" not in text


def test_lag_per_follower_and_a_down_member() -> None:
    views = healthy()
    views["n1"]["shards"][0] = leader(0, "n1", match_index={"n2": 7, "n3": 2})
    del views["n3"]
    summary = summarize(snap(views, down={"n3": "connection refused"}))
    s0 = summary["shards"][0]
    assert [(r["node"], r["role"], r["lag"]) for r in s0["replicas"]] == [
        ("n1", "leader", None), ("n2", "follower", 5), ("n3", "down", 10)]
    assert summary["ok"]  # a node down, every shard still led
    assert any("n3" in p and "connection refused" in p for p in summary["problems"])
    assert [n["up"] for n in summary["nodes"]] == [True, True, False]


def test_no_leader_is_marked_and_fails() -> None:
    views = healthy()
    views["n2"]["shards"][1] = follower(1, None, term=3)
    views["n1"]["shards"][1] = follower(1, "n2", term=2)
    views["n3"]["shards"][1] = follower(1, None, term=3)
    summary = summarize(snap(views))
    s1 = summary["shards"][1]
    assert not summary["ok"] and not s1["available"] and s1["leader"] is None and s1["term"] == 3
    assert s1["problems"] == ["no leader (replicas last heard from n2)"]
    out = io.StringIO()
    render(summary, out)
    row = next(line for line in out.getvalue().splitlines() if line.startswith("!"))
    assert row.split()[:3] == ["!", "1", "-"]
    assert "! shard 1: no leader" in out.getvalue()


def test_leader_without_quorum_and_a_stale_leader() -> None:
    views = healthy()
    views["n1"]["shards"][0] = leader(0, "n1", has_quorum=False)
    summary = summarize(snap(views))
    assert not summary["ok"] and summary["shards"][0]["problems"] == ["leader n1 has no quorum"]

    views = healthy()
    views["n2"]["shards"][0] = follower(0, None, term=5)  # n2 started an election
    summary = summarize(snap(views))
    assert summary["shards"][0]["leader"] == "n1"
    assert "election in progress" in summary["shards"][0]["problems"][0]


def test_highest_term_leader_wins_and_moves_are_marked() -> None:
    views = healthy()
    views["n3"]["shards"][0] = leader(0, "n3", term=1)  # a deposed leader that has not heard yet
    assert leaders(views)[0][0] == "n1"
    views = healthy()
    for v in views.values():
        v["table_version"] = 1
        for e in v["shards"]:
            if e["shard"] == 1:
                e["replicas"] = ["n2", "n3", "n4"]
    summary = summarize(snap(views))
    s1 = summary["shards"][1]
    assert s1["moving"] and not s1["problems"] and summary["ok"]
    assert [r["node"] for r in s1["replicas"]][-1] == "n4" and s1["replicas"][-1]["role"] == "missing"
    out = io.StringIO()
    render(summary, out)
    assert any(line.startswith("~") for line in out.getvalue().splitlines())
    assert "1 shard(s) moving replicas (~)" in out.getvalue()


def test_last_index() -> None:
    assert last_index({"log_first_index": 101, "log_entries": 50, "commit_index": 140}) == 150
    assert last_index({"log_first_index": None, "log_entries": 0, "commit_index": 7}) == 7
