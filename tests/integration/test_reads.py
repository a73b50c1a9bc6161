"""Read levels on a real cluster: leases, ReadIndex, bounded follower reads,
session tokens, per-tag policy, leadership transfer, and a paused leader."""

from __future__ import annotations

import signal
import threading
import uuid
from typing import Any

from .cluster import Cluster, wait_for


def _key(c: Cluster) -> tuple[str, str, int]:
    ns, mid = "r-" + uuid.uuid4().hex[:8], "k"
    return ns, mid, c.shard_of(ns, mid)


def _followers(c: Cluster, shard: int) -> tuple[str, list[str]]:
    leader = wait_for(lambda: c.leader_of(shard), 20, f"leader of shard {shard}")
    return leader, [n for n in c.node_ids if n != leader]


def test_strong_reads_use_the_lease_and_linearizable_uses_read_index(cluster: Cluster) -> None:
    ns, mid, shard = _key(cluster)
    assert cluster.request("n1", "PUT", f"/v1/memories/{ns}/{mid}", {"content": 1})[0] == 201
    leader, _ = _followers(cluster, shard)
    view = {s["shard"]: s for s in cluster.cluster_view(leader)["shards"]}
    wait_for(lambda: cluster.cluster_view(leader)["shards"][shard].get("lease_remaining_ms", 0) > 0, 10,
             "a lease on the leader")
    assert view[shard]["role"] == "leader"
    status, headers, body = cluster.request(leader, "GET", f"/v1/memories/{ns}/{mid}")
    assert status == 200 and body["content"] == 1
    assert headers["X-Raftmem-Consistency"] == "strong"  # the default level, served by lease
    status, headers, _ = cluster.request(leader, "GET", f"/v1/memories/{ns}/{mid}?consistency=linearizable")
    assert headers["X-Raftmem-Consistency"] == "linearizable"
    assert "X-Raftmem-Staleness-Ms" not in headers


def test_concurrent_read_index_reads_share_rounds(cluster: Cluster) -> None:
    """Reads waiting together share one confirmation round: the rounds counter moves,
    and by less than the reads do. (Not on shard 0: every node's reconcile reads the
    membership table there, linearizably, and those reads would count too.)"""
    ns, mid, shard = _key(cluster)
    while shard == 0:
        ns, mid, shard = _key(cluster)
    assert cluster.request("n1", "PUT", f"/v1/memories/{ns}/{mid}", {"content": 1})[0] == 201
    for _attempt in range(3):  # again if leadership moved meanwhile (counters are per node)
        leader, _ = _followers(cluster, shard)
        reads0 = cluster.shard_counter(leader, "raftmem_shard_read_index_reads", shard)
        rounds0 = cluster.shard_counter(leader, "raftmem_shard_read_index_rounds", shard)
        statuses: list[int] = []

        def reader(leader: str = leader, statuses: list[int] = statuses) -> None:
            for _ in range(10):
                path = f"/v1/memories/{ns}/{mid}?consistency=linearizable"
                statuses.append(cluster.request(leader, "GET", path)[0])

        threads = [threading.Thread(target=reader) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 160
        if cluster.leader_of(shard) != leader:
            continue
        reads = cluster.shard_counter(leader, "raftmem_shard_read_index_reads", shard) - reads0
        rounds = cluster.shard_counter(leader, "raftmem_shard_read_index_rounds", shard) - rounds0
        assert reads == 160
        assert 1 <= rounds < reads, (rounds, reads)
        return
    raise AssertionError(f"shard {shard}'s leadership kept moving")


def test_eventual_bounded_and_session_on_followers(cluster: Cluster) -> None:
    ns, mid, shard = _key(cluster)
    leader, followers = _followers(cluster, shard)
    status, headers, body = cluster.request(followers[0], "PUT", f"/v1/memories/{ns}/{mid}", {"content": "v1"})
    token = body["token"]
    for f in followers:
        # Session: the write's token makes any replica wait for it (read-your-writes).
        status, headers, got = cluster.request(f, "GET", f"/v1/memories/{ns}/{mid}?consistency=session&after={token}")
        assert status == 200 and got["content"] == "v1"
        assert headers["X-Raftmem-Served-By"] == f and headers["X-Raftmem-Consistency"] == "session"
        applied = int(headers["X-Raftmem-Token"].split(":")[1])
        assert applied >= int(token.split(":")[1])
        # Bounded with a generous bound: the follower answers itself.
        status, headers, got = cluster.request(f, "GET", f"/v1/memories/{ns}/{mid}?consistency=bounded&max_staleness_ms=2000")
        assert status == 200 and headers["X-Raftmem-Served-By"] == f
        assert headers["X-Raftmem-Consistency"] == "bounded"
        assert 0 <= int(headers["X-Raftmem-Staleness-Ms"]) <= 2000
        # Bounded with a bound no follower can meet: the leader serves it.
        status, headers, got = cluster.request(f, "GET", f"/v1/memories/{ns}/{mid}?consistency=bounded&max_staleness_ms=0")
        assert status == 200 and headers["X-Raftmem-Served-By"] == leader
        # Eventual: local, with the staleness it knows of.
        status, headers, got = cluster.request(f, "GET", f"/v1/memories/{ns}/{mid}?consistency=eventual")
        assert headers["X-Raftmem-Served-By"] == f and "X-Raftmem-Staleness-Ms" in headers
    status, _, body = cluster.request(followers[1], "GET", f"/v1/memories/{ns}/{mid}?consistency=bounded")
    assert status == 400  # bounded needs its bound


def test_tag_policy_picks_the_level(cluster: Cluster) -> None:
    ns, mid, shard = _key(cluster)
    leader, followers = _followers(cluster, shard)
    cluster.request(leader, "PUT", f"/v1/memories/{ns}/{mid}", {"content": 1, "tags": ["metric"]})
    cluster.request(leader, "PUT", f"/v1/memories/{ns}/lock", {"content": 1, "tags": ["lock"]})
    f = followers[0]
    wait_for(lambda: cluster.request(f, "GET", f"/v1/memories/{ns}/{mid}?consistency=eventual")[0] == 200, 10,
             "replication to the follower")
    status, headers, _ = cluster.request(f, "GET", f"/v1/memories/{ns}/{mid}")
    assert headers["X-Raftmem-Consistency"] == "eventual" and headers["X-Raftmem-Served-By"] == f
    # A bounded policy brings its own bound: the follower serves within it.
    cluster.request(leader, "PUT", f"/v1/memories/{ns}/{mid}", {"content": 2, "tags": ["dashboard"]})
    wait_for(lambda: cluster.request(f, "GET", f"/v1/memories/{ns}/{mid}?consistency=eventual")[2]["content"] == 2,
             10, "replication of the update")
    status, headers, got = cluster.request(f, "GET", f"/v1/memories/{ns}/{mid}")
    assert status == 200 and got["content"] == 2, got
    assert headers["X-Raftmem-Consistency"] == "bounded" and headers["X-Raftmem-Served-By"] == f
    assert 0 <= int(headers["X-Raftmem-Staleness-Ms"]) <= 5000
    lock_shard = cluster.shard_of(ns, "lock")
    lock_leader = wait_for(lambda: cluster.leader_of(lock_shard), 10, "lock shard leader")
    reader = next(n for n in cluster.node_ids if n != lock_leader)
    status, headers, _ = cluster.request(reader, "GET", f"/v1/memories/{ns}/lock")
    assert headers["X-Raftmem-Consistency"] == "linearizable" and headers["X-Raftmem-Served-By"] == lock_leader
    status, headers, page = cluster.request(reader, "GET", f"/v1/memories/{ns}?tag=metric")
    assert headers["X-Raftmem-Consistency"] == "eventual" and [m["id"] for m in page["items"]] in ([mid], [])
    # Every read says what it saw: lists carry one token per shard (what after= takes)
    # and, served stale, the staleness; a miss carries the read headers too.
    assert [t.split(":")[0] for t in headers["X-Raftmem-Token"].split(",")] == [
        str(s) for s in range(cluster.shards)
    ]
    assert int(headers["X-Raftmem-Staleness-Ms"]) >= 0
    status, headers, _ = cluster.request(reader, "GET", f"/v1/memories/{ns}?consistency=linearizable")
    assert status == 200 and len(headers["X-Raftmem-Token"].split(",")) == cluster.shards
    assert "X-Raftmem-Staleness-Ms" not in headers
    status, headers, body = cluster.request(reader, "GET", f"/v1/memories/{ns}/absent?consistency=eventual")
    assert status == 404 and body["error"]["code"] == "not_found"
    assert headers["X-Raftmem-Consistency"] == "eventual" and headers["X-Raftmem-Token"].startswith(
        f"{cluster.shard_of(ns, 'absent')}:"
    )
    status, headers, _ = cluster.request(reader, "GET", f"/v1/memories/{ns}/{mid}?consistency=linearizable")
    assert headers["X-Raftmem-Consistency"] == "linearizable"  # an explicit level wins


def test_leadership_transfer_works_with_stickiness(cluster: Cluster) -> None:
    shard = 1
    leader, followers = _followers(cluster, shard)
    term = cluster.cluster_view(leader)["shards"][shard]["term"]
    target = followers[0]

    def transferred() -> bool:
        status, _, _ = cluster.request(followers[1], "POST", f"/v1/admin/shards/{shard}/transfer-leader?to={target}")
        return status == 202 or cluster.leader_of(shard) == target

    wait_for(transferred, 20, "the transfer request accepted")
    wait_for(lambda: cluster.leader_of(shard) == target, 20, f"{target} leading shard {shard}")
    assert cluster.cluster_view(target)["shards"][shard]["term"] > term
    # Without a transfer, followers that hear the leader refuse to vote: the term stays put.
    new_term = cluster.cluster_view(target)["shards"][shard]["term"]
    ns = "tr-" + uuid.uuid4().hex[:6]
    for i in range(20):
        cluster.request(cluster.node_ids[i % 3], "PUT", f"/v1/memories/{ns}/k{i}", {"content": i})
    assert cluster.cluster_view(target)["shards"][shard]["term"] == new_term


PAUSED_READS = 8


def _pause_leader_and_write_new(c: Cluster) -> tuple[str, str, list[str]]:
    """Write "old", SIGSTOP the shard's leader past its lease, and write "new"
    through the leader elected meanwhile. The old leader is left stopped: the
    caller resumes it. Returns (path, old leader, the other nodes)."""
    c.start_all()
    ns, mid, shard = _key(c)
    path = f"/v1/memories/{ns}/{mid}"
    assert c.request("n1", "PUT", path, {"content": "old"})[0] == 201
    old_leader, others = _followers(c, shard)
    c.procs[old_leader].send_signal(signal.SIGSTOP)

    def new_leader() -> str | None:
        for n in others:
            if c.cluster_view(n)["shards"][shard]["role"] == "leader":
                return n
        return None

    leader = wait_for(new_leader, 40, "a new leader while the old one is paused")
    status, _, body = c.request(leader, "PUT", path, {"content": "new"})
    assert status == 200, body
    return path, old_leader, others


def _pause_leader_write_elsewhere_then_read(c: Cluster, level: str) -> list[str]:
    """Reads sent to the paused old leader wait in its socket queue; on SIGCONT
    they race the new leader's first append. Returns what they read."""
    results: list[tuple[int, Any]] = []
    lock = threading.Lock()
    try:
        path, old_leader, _ = _pause_leader_and_write_new(c)

        def read() -> None:
            status, _, body = c.request(old_leader, "GET", f"{path}?consistency={level}")
            with lock:
                results.append((status, body))

        readers = [threading.Thread(target=read) for _ in range(PAUSED_READS)]
        for t in readers:
            t.start()
    finally:
        for n in c.node_ids:
            c.procs[n].send_signal(signal.SIGCONT)
    for t in readers:
        t.join(timeout=30)
    assert len(results) == PAUSED_READS and all(status == 200 for status, _ in results), results
    return [body["content"] for _, body in results]


def test_paused_leader_never_serves_stale_strong_reads(fresh_cluster: Cluster) -> None:
    contents = _pause_leader_write_elsewhere_then_read(fresh_cluster, "strong")
    assert set(contents) == {"new"}, contents


def test_paused_leader_never_serves_stale_linearizable_reads(fresh_cluster: Cluster) -> None:
    contents = _pause_leader_write_elsewhere_then_read(fresh_cluster, "linearizable")
    assert set(contents) == {"new"}, contents


def _resume_alone_and_read(c: Cluster, level: str) -> list[tuple[int, Any]]:
    """Then pause the rest of the cluster and SIGCONT the old leader: it can hear
    nobody, and believes it still leads. Returns what reads from it got.

    (Its negative control is tests/fault/test_stale_leader.py, with a partition:
    on SIGCONT the event loop handles the new leader's messages queued in the
    Raft sockets before the read queued behind them, so even a store without
    leases would not answer stale here.)"""
    try:
        path, old_leader, others = _pause_leader_and_write_new(c)
        for n in others:
            c.procs[n].send_signal(signal.SIGSTOP)
        c.procs[old_leader].send_signal(signal.SIGCONT)
        results = []
        for _ in range(3):
            status, _, body = c.request(old_leader, "GET", f"{path}?consistency={level}")
            results.append((status, body.get("content") if status == 200 else body["error"]["code"]))
        return results
    finally:
        for n in c.node_ids:
            c.procs[n].send_signal(signal.SIGCONT)


def test_a_resumed_leader_cut_off_from_everyone_never_serves_stale_reads(fresh_cluster: Cluster) -> None:
    results = _resume_alone_and_read(fresh_cluster, "strong")
    assert all(content != "old" for _, content in results), results
    assert all(status in (200, 503) for status, _ in results), results
