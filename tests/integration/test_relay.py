"""Single writes that reach a node which does not lead their shard, relayed to
the leader's node as commands, several per request (raftmem/service/relay.py),
against real 3-node clusters: answers the same as at the leader, many writes
per request when many are in flight, and the HTTP forward when it is off."""

from __future__ import annotations

import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .cluster import Cluster, wait_for

WRITES = 96
CLIENTS = 32


def _ids_led_by(cluster: Cluster, ns: str, node: str, count: int) -> list[str]:
    """Ids whose shard `node` leads (asked once: the test cluster does not move leaders)."""
    leaders = {s: cluster.leader_of(s) for s in range(cluster.shards)}
    assert node in leaders.values(), f"{node} leads no shard: {leaders}"
    ids, i = [], 0
    while len(ids) < count:
        mid = f"m{i}"
        if leaders[cluster.shard_of(ns, mid)] == node:
            ids.append(mid)
        i += 1
    return ids


def _leader_and_other(cluster: Cluster) -> tuple[str, str]:
    leader = wait_for(lambda: cluster.leader_of(0), 30, "a leader of shard 0")
    return leader, next(n for n in cluster.node_ids if n != leader)


def _shape(reply: tuple[int, dict[str, str], Any]) -> tuple[Any, ...]:
    """What a client can tell apart: status, error code, the headers it acts on,
    and the body's fields (not their values: tokens and times differ)."""
    status, headers, body = reply
    names = {name.lower() for name in headers}  # HTTP's names have no case
    code = body["error"]["code"] if isinstance(body, dict) and "error" in body else None
    acted_on = tuple(h for h in ("ETag", "Idempotent-Replayed", "Retry-After", "X-Raftmem-Token",
                                 "X-Raftmem-Context") if h.lower() in names)
    fields = tuple(sorted(body)) if isinstance(body, dict) else type(body).__name__
    return status, code, acted_on, fields


def _script(cluster: Cluster, node: str, ns: str, mid: str) -> list[tuple[Any, ...]]:
    """The same writes, with every answer a single write can get, sent to `node`."""
    path = f"/v1/memories/{ns}/{mid}"
    key = {"Idempotency-Key": uuid.uuid4().hex}
    replies = [
        cluster.request(node, "PUT", path, {"content": "a", "tags": ["t"]}, {"If-None-Match": "*"}),
        cluster.request(node, "PUT", path, {"content": "b"}, {"If-None-Match": "*"}),  # exists: 412
        cluster.request(node, "PUT", path, {"content": "c"}, {"If-Match": "9"}),  # wrong version: 412
        cluster.request(node, "PUT", path, {"content": "d"}, {"If-Match": "1", **key}),
        cluster.request(node, "PUT", path, {"content": "d"}, {"If-Match": "1", **key}),  # replayed
        cluster.request(node, "PUT", path, {"content": "e"}, key),  # the key reused: 409
        cluster.request(node, "DELETE", path, headers={"If-Match": "1"}),  # 412
        cluster.request(node, "DELETE", path + "?actor=agent-7"),
        cluster.request(node, "DELETE", path),  # gone: 404
        cluster.request(node, "POST", f"/v1/memories/{ns}", {"content": "g"}, {"Idempotency-Key": uuid.uuid4().hex}),
    ]
    return [_shape(r) for r in replies]


def test_relayed_writes_answer_as_the_leader_does(cluster: Cluster) -> None:
    leader, other = _leader_and_other(cluster)
    ns = f"relay-{uuid.uuid4().hex[:8]}"
    (direct_id,), (relayed_id,) = _ids_led_by(cluster, ns, leader, 1), _ids_led_by(cluster, ns + "x", leader, 1)
    before = cluster.metric(other, "raftmem_relay_writes_total")
    direct = _script(cluster, leader, ns, direct_id)
    relayed = _script(cluster, other, ns + "x", relayed_id)
    assert relayed == direct, [(r, d) for r, d in zip(relayed, direct, strict=True) if r != d]
    assert [s[0] for s in direct] == [201, 412, 412, 200, 200, 409, 412, 200, 404, 201], direct
    # The nine puts and deletes at `other` of a memory `leader` leads went by the
    # relay, refused ones too (the POST's id may land on any shard).
    assert cluster.metric(other, "raftmem_relay_writes_total") - before >= 9


def test_writes_in_flight_together_share_relay_requests(cluster: Cluster) -> None:
    leader, other = _leader_and_other(cluster)
    ns = f"relay-{uuid.uuid4().hex[:8]}"
    ids = _ids_led_by(cluster, ns, leader, WRITES)
    writes0 = cluster.metric(other, "raftmem_relay_writes_total")
    requests0 = cluster.metric(other, "raftmem_relay_requests_total")
    with ThreadPoolExecutor(CLIENTS) as pool:
        replies = list(pool.map(
            lambda mid: cluster.request(other, "PUT", f"/v1/memories/{ns}/{mid}", {"content": mid}), ids))
    assert [r[0] for r in replies] == [201] * WRITES, [r for r in replies if r[0] != 201][:3]
    assert all(r[2]["id"] == mid and r[2]["version"] == 1 for r, mid in zip(replies, ids, strict=True))
    writes = cluster.metric(other, "raftmem_relay_writes_total") - writes0
    requests = cluster.metric(other, "raftmem_relay_requests_total") - requests0
    assert writes == WRITES, (writes, requests)
    # Two requests under way at most (limits.relay_in_flight_max): the rest wait
    # and leave together. One request per write would be the HTTP forward's count.
    assert requests < WRITES / 2, (writes, requests)
    for mid in ids[:: WRITES // 8]:
        status, _, body = cluster.request(leader, "GET", f"/v1/memories/{ns}/{mid}")
        assert status == 200 and body["content"] == mid


def test_with_the_relay_off_writes_are_forwarded_one_by_one(tmp_path: Any) -> None:
    cluster = Cluster(tmp_path, limits={"relay_in_flight_max": 0})
    try:
        cluster.start_all()
        cluster.wait_ready()
        leader, other = _leader_and_other(cluster)
        ns = f"relay-{uuid.uuid4().hex[:8]}"
        direct = _script(cluster, leader, ns, _ids_led_by(cluster, ns, leader, 1)[0])
        forwarded = _script(cluster, other, ns + "x", _ids_led_by(cluster, ns + "x", leader, 1)[0])
        assert forwarded == direct, [(f, d) for f, d in zip(forwarded, direct, strict=True) if f != d]
        assert cluster.metric(other, "raftmem_relay_writes_total") == 0
    finally:
        cluster.stop_all()
