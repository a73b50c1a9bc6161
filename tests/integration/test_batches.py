"""Batches against real nodes: grouped by shard, one log entry per shard, one
request per leader node; order per key, reads that see earlier writes, per-shard
atomicity, and per-operation fates through a leader failover."""

from __future__ import annotations

import itertools
import re
import threading
import uuid
from typing import Any

from .cluster import Cluster, wait_for


def _ns() -> str:
    return f"b{uuid.uuid4().hex[:8]}"


def _ids_on(cluster: Cluster, ns: str, shard: int, n: int) -> list[str]:
    return list(itertools.islice((f"m{i}" for i in itertools.count() if cluster.shard_of(ns, f"m{i}") == shard), n))


def _batch(cluster: Cluster, node: str, ops: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    status, _, body = cluster.request(node, "POST", "/v1/batch", {"ops": ops, **extra})
    assert status == 200, body
    return body


def test_operations_on_one_key_take_effect_in_order_and_reads_see_earlier_writes(cluster: Cluster) -> None:
    ns = _ns()
    ops = [
        {"op": "get", "namespace": ns, "id": "k"},
        {"op": "put", "namespace": ns, "id": "k", "body": {"content": 1}},
        {"op": "get", "namespace": ns, "id": "k"},
        {"op": "put", "namespace": ns, "id": "k", "body": {"content": 2}, "if_match": 1},
        {"op": "get", "namespace": ns, "id": "k"},
        {"op": "delete", "namespace": ns, "id": "k"},
        {"op": "get", "namespace": ns, "id": "k"},
    ]
    for node in cluster.node_ids:  # whichever node leads the key's shard
        results = _batch(cluster, node, [{**op, "namespace": f"{ns}{node}"} for op in ops])["results"]
        assert [r["status"] for r in results] == [404, 201, 200, 200, 200, 200, 404], results
        assert results[2]["body"]["content"] == 1 and results[4]["body"]["content"] == 2
        tokens = {r["body"].get("token", r["body"].get("error", {}).get("token")) for r in results[1:]}
        assert len(tokens) == 1, tokens  # one log entry for the shard's share


def test_a_batch_over_every_shard_is_one_entry_per_shard_and_one_request_per_leader_node(cluster: Cluster) -> None:
    ns = _ns()
    ids = [mid for s in range(cluster.shards) for mid in _ids_on(cluster, ns, s, 8)]
    entry = "n1"
    before = _internal_batches(cluster)
    results = _batch(cluster, entry, [{"op": "put", "namespace": ns, "id": mid, "body": {"content": mid}}
                                      for mid in ids])["results"]
    assert [r["status"] for r in results] == [201] * len(ids)
    tokens: dict[int, set[str]] = {}
    for mid, r in zip(ids, results, strict=True):
        tokens.setdefault(cluster.shard_of(ns, mid), set()).add(r["body"]["token"])
    assert all(len(t) == 1 for t in tokens.values()), tokens  # 8 puts of a shard: one entry
    leaders = {cluster.leader_of(s) for s in range(cluster.shards)} - {entry}
    sent = _internal_batches(cluster) - before
    assert sent <= len(leaders), (sent, leaders)  # not one request per operation (40+ before)
    for mid in ids[:: 5]:
        status, _, got = cluster.request("n3", "GET", f"/v1/memories/{ns}/{mid}")
        assert status == 200 and got["content"] == mid


def _internal_batches(cluster: Cluster) -> int:
    """POSTs to /v1/internal/batch answered by any node (from /metrics)."""
    total = 0
    for node in cluster.node_ids:
        text = cluster.metrics_text(node)
        for m in re.finditer(r'raftmem_http_request_seconds_count\{[^}]*route="/v1/internal/batch"[^}]*\} (\S+)', text):
            total += int(float(m.group(1)))
    return total


def test_a_failed_operation_fails_alone_unless_the_batch_is_atomic(cluster: Cluster) -> None:
    ns = _ns()
    a, b = _ids_on(cluster, ns, 0, 2)
    cluster.request("n1", "PUT", f"/v1/memories/{ns}/{b}", {"content": "b0"})
    plain = [{"op": "put", "namespace": ns, "id": a, "body": {"content": "a1"}},
             {"op": "put", "namespace": ns, "id": b, "body": {"content": "b1"}, "if_match": 7}]
    results = _batch(cluster, "n2", plain)["results"]
    assert [r["status"] for r in results] == [201, 412]
    assert cluster.request("n1", "GET", f"/v1/memories/{ns}/{a}")[2]["content"] == "a1"
    # Atomic: the same failure undoes the other write (a is at version 1 now).
    atomic = [{"op": "put", "namespace": ns, "id": a, "body": {"content": "a2"}, "if_match": 1},
              {"op": "get", "namespace": ns, "id": "nothing-here"},
              {"op": "put", "namespace": ns, "id": b, "body": {"content": "b2"}, "if_match": 7}]
    body = _batch(cluster, "n3", [op for op in atomic if cluster.shard_of(ns, op["id"]) == 0], atomic=True)
    assert body["applied"] is False
    statuses = [r["status"] for r in body["results"]]
    assert statuses[-1] == 412 and 409 in statuses and body["results"][statuses.index(409)]["body"]["error"][
        "code"] == "aborted"
    assert cluster.request("n1", "GET", f"/v1/memories/{ns}/{a}")[2]["content"] == "a1"  # undone
    # Control: the same atomic batch with a right version applies whole.
    ok = [{"op": "put", "namespace": ns, "id": a, "body": {"content": "a3"}, "if_match": 1},
          {"op": "put", "namespace": ns, "id": b, "body": {"content": "b3"}, "if_match": 1}]
    body = _batch(cluster, "n3", ok, atomic=True)
    assert body["applied"] is True and [r["status"] for r in body["results"]] == [200, 200]
    assert body["results"][0]["body"]["token"] == body["results"][1]["body"]["token"]
    assert cluster.request("n2", "GET", f"/v1/memories/{ns}/{b}")[2]["content"] == "b3"


def test_an_atomic_batch_over_two_shards_or_with_a_bad_operation_is_refused_whole(cluster: Cluster) -> None:
    ns = _ns()
    (x,), (y,) = _ids_on(cluster, ns, 0, 1), _ids_on(cluster, ns, 1, 1)
    ops = [{"op": "put", "namespace": ns, "id": x, "body": {"content": 1}},
           {"op": "put", "namespace": ns, "id": y, "body": {"content": 1}}]
    status, _, body = cluster.request("n1", "POST", "/v1/batch", {"ops": ops, "atomic": True})
    assert status == 400 and "one shard" in body["error"]["message"]
    bad = [ops[0], {"op": "put", "namespace": ns, "id": x, "body": {"surprise": 1}}]
    status, _, body = cluster.request("n1", "POST", "/v1/batch", {"ops": bad, "atomic": True})
    assert status == 400 and "ops[1]" in body["error"]["message"]
    status, _, body = cluster.request("n1", "POST", "/v1/batch", {"ops": ops, "atomic": "yes"})
    assert status == 400
    for mid in (x, y):
        assert cluster.request("n2", "GET", f"/v1/memories/{ns}/{mid}")[0] == 404


def test_through_a_leader_failover_each_operation_is_applied_failed_or_indeterminate(fresh_cluster: Cluster) -> None:
    """Batches of unique keys over every shard while the leader of shard 0 is
    killed: afterwards every 2xx key holds its value, no 503 key exists (it
    certainly did not happen), and a 504 key may go either way."""
    c = fresh_cluster
    c.start_all()
    ns = _ns()
    outcomes: list[tuple[str, int, int]] = []  # (id, value, status)
    stop = threading.Event()
    counter = itertools.count()
    entry = "n2"

    def load() -> None:
        while not stop.is_set():
            ops = []
            for _ in range(16):
                n = next(counter)
                ops.append({"op": "put", "namespace": ns, "id": f"u{n}", "body": {"content": n}})
            try:
                status, _, body = c.request(entry, "POST", "/v1/batch", {"ops": ops}, timeout_s=30)
            except OSError:
                continue
            if status == 200:
                outcomes.extend((op["id"], op["body"]["content"], r["status"])
                                for op, r in zip(ops, body["results"], strict=True))

    victim = wait_for(lambda: c.leader_of(0) if c.leader_of(0) != entry else None, 30, "shard 0 led off n2")
    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_for(lambda: len(outcomes) > 200, 60, "load before the kill")
        c.kill(victim)
        seen = len(outcomes)
        wait_for(lambda: len(outcomes) > seen + 400, 90, "load after the kill")
    finally:
        stop.set()
        thread.join(60)
    statuses = {s for _, _, s in outcomes}
    assert statuses <= {201, 503, 504}, statuses
    for mid, value, status in outcomes:
        got_status, _, got = c.request(entry, "GET", f"/v1/memories/{ns}/{mid}?consistency=linearizable")
        if status == 201:
            assert got_status == 200 and got["content"] == value, (mid, status)
        elif status == 503:
            assert got_status == 404, (mid, "a failed write must not have happened")
