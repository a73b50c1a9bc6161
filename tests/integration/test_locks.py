"""Locks on a real 3-node cluster: acquire, renew, release, inspect; waiters
served in order of arrival; a waiter that disconnects acquires nothing; a
lease that runs out frees the lock; a stale fence is refused with the write;
the lock survives its leader's death; an unknown outcome is a 504 that a
retry with the same Idempotency-Key settles; bad input changes nothing."""

from __future__ import annotations

import asyncio
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from raftmem.client import AsyncClient, Client, Fenced, LockHeld, LockLost
from raftmem.shardhash import colocated_id

from .cluster import Cluster, wait_for


@pytest.fixture(scope="module")
def cluster(coordination_cluster: Cluster) -> Cluster:
    return coordination_cluster


def _ns() -> str:
    return f"locks-{uuid.uuid4().hex[:8]}"


def acquire(c: Cluster, node: str, ns: str, name: str, holder: str, ttl_ms: int = 10_000, wait_ms: int = 0,
            **headers: str) -> tuple[int, dict[str, Any]]:
    status, _, body = c.request(node, "POST", f"/v1/locks/{ns}/{name}",
                                {"holder": holder, "ttl_ms": ttl_ms, "wait_ms": wait_ms}, headers=headers,
                                timeout_s=wait_ms / 1000 + 15)
    return status, body


def fenced_put(c: Cluster, node: str, ns: str, mid: str, fence: str, content: Any) -> tuple[int, dict[str, Any]]:
    status, _, body = c.request(node, "PUT", f"/v1/memories/{ns}/{mid}", {"content": content},
                                headers={"If-Fence": fence})
    return status, body


def leader_node(c: Cluster, ns: str, name: str) -> str:
    return wait_for(lambda: c.leader_of(c.shard_of(ns, name)), 20, "a leader for the lock's shard")


def waiters(c: Cluster, node: str) -> int:
    return int(c.metric(node, "raftmem_coordination_waiters"))


def test_a_lock_is_acquired_inspected_renewed_and_released(cluster: Cluster) -> None:
    ns = _ns()
    status, lock = acquire(cluster, "n1", ns, "deploy", "agent-a")
    assert status == 201 and lock["holder"] == "agent-a" and lock["fence"] > 0
    fence = lock["fence"]
    status, body = acquire(cluster, "n2", ns, "deploy", "agent-b")
    assert status == 409 and body["error"]["code"] == "lock_held"
    assert body["error"]["holder"] == "agent-a" and body["error"]["expires_at"] == lock["expires_at"]
    for node in cluster.node_ids:
        status, _, seen = cluster.request(node, "GET", f"/v1/locks/{ns}/deploy")
        assert status == 200 and seen["fence"] == fence and seen["holder"] == "agent-a"
    status, _, renewed = cluster.request("n3", "POST", f"/v1/locks/{ns}/deploy/renew", {"fence": fence, "ttl_ms": 60_000})
    assert status == 200 and renewed["fence"] == fence and renewed["expires_at"] > lock["expires_at"]
    status, _, body = cluster.request("n3", "POST", f"/v1/locks/{ns}/deploy/renew", {"fence": fence + 1, "ttl_ms": 100})
    assert status == 409 and body["error"]["code"] == "fenced"
    status, _, released = cluster.request("n2", "DELETE", f"/v1/locks/{ns}/deploy?fence={fence}")
    assert status == 200 and released["fence"] == fence
    status, _, body = cluster.request("n1", "GET", f"/v1/locks/{ns}/deploy")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, again = acquire(cluster, "n3", ns, "deploy", "agent-b")
    assert status == 201 and again["fence"] > fence


def test_reacquiring_with_the_same_idempotency_key_is_idempotent(cluster: Cluster) -> None:
    ns = _ns()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    status, first = acquire(cluster, "n1", ns, "l", "a", **key)
    status2, _, again = cluster.request("n2", "POST", f"/v1/locks/{ns}/l", {"holder": "a", "ttl_ms": 10_000,
                                                                           "wait_ms": 0}, headers=key)
    assert (status, status2) == (201, 201) and again["fence"] == first["fence"]
    # Without the key, the same holder is told it holds it (no second fence).
    status, body = acquire(cluster, "n1", ns, "l", "a")
    assert status == 409 and "by this holder" in body["error"]["message"]



async def test_a_keyed_retry_of_an_acquisition_given_back_is_refused_and_no_body_runs(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The end state of: a waiter's acquisition given back (its connection
    dropped while it was in the log), another holder taking the lock, then the
    client's retry with the same Idempotency-Key through another node. It
    must not be told 201 with the given-back fence, and lock() must not run
    its body while someone else holds the lock (review finding 2)."""
    import raftmem.client.coordination as cc

    ns, key = _ns(), f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex}"
    status, first = acquire(cluster, "n1", ns, "L", "me", ttl_ms=9000, **{"Idempotency-Key": key})
    assert status == 201
    assert cluster.request("n1", "DELETE", f"/v1/locks/{ns}/L?fence={first['fence']}")[0] == 200  # the give-back
    status, other = acquire(cluster, "n2", ns, "L", "other", ttl_ms=9000)
    assert status == 201
    status, _, replay = cluster.request("n3", "POST", f"/v1/locks/{ns}/L", {"holder": "me", "ttl_ms": 9000,
                                                                           "wait_ms": 0},
                                        headers={"Idempotency-Key": key})
    assert status == 409 and replay["error"]["code"] == "fenced", replay
    assert replay["error"]["lock"]["holder"] == "other" and str(other["fence"]) not in orjson.dumps(replay).decode()
    # The client library, its acquisition's key made to be that one:
    keys = iter([key])
    real = cc._key
    monkeypatch.setattr(cc, "_key", lambda: next(keys, None) or real())
    urls = [f"http://127.0.0.1:{cluster.http[n]}" for n in cluster.node_ids]
    entered: list[str] = []
    async with AsyncClient(urls) as client:
        with pytest.raises(Fenced):
            async with client.lock(ns, "L", ttl_ms=9000, holder="me"):
                entered.append((await client.get_lock(ns, "L"))["holder"])
    assert entered == []
    assert cluster.request("n1", "DELETE", f"/v1/locks/{ns}/L?fence={other['fence']}")[0] == 200

def test_waiters_are_served_in_order_of_arrival(cluster: Cluster) -> None:
    ns = _ns()
    leader = leader_node(cluster, ns, "fifo")
    status, first = acquire(cluster, "n1", ns, "fifo", "owner", ttl_ms=30_000)
    assert status == 201
    got: list[tuple[str, int]] = []
    lock = threading.Lock()

    def wait_then_hand_over(holder: str, node: str) -> None:
        status, body = acquire(cluster, node, ns, "fifo", holder, ttl_ms=30_000, wait_ms=30_000)
        assert status == 201, body
        with lock:
            got.append((holder, body["fence"]))
        cluster.request(node, "DELETE", f"/v1/locks/{ns}/fifo?fence={body['fence']}")

    threads = []
    for i, node in enumerate(["n2", "n3", "n1", "n2"]):  # through any node: forwarded to the leader
        t = threading.Thread(target=wait_then_hand_over, args=(f"w{i}", node))
        t.start()
        threads.append(t)
        wait_for(lambda n=i + 1: waiters(cluster, leader) == n, 10, f"{i + 1} waiter(s) queued")
    cluster.request("n1", "DELETE", f"/v1/locks/{ns}/fifo?fence={first['fence']}")
    for t in threads:
        t.join(60)
    assert [h for h, _ in got] == ["w0", "w1", "w2", "w3"]
    fences = [f for _, f in got]
    assert fences == sorted(fences) and fences[0] > first["fence"]


def test_a_release_hands_the_lock_to_the_first_waiter_in_the_same_log_entry(cluster: Cluster) -> None:
    ns = _ns()
    leader = leader_node(cluster, ns, "l")
    status, held = acquire(cluster, leader, ns, "l", "a", ttl_ms=30_000)
    assert status == 201
    got: list[tuple[int, dict[str, Any]]] = []
    waiter = threading.Thread(target=lambda: got.append(acquire(cluster, "n2", ns, "l", "b", 30_000, 10_000)))
    waiter.start()
    wait_for(lambda: waiters(cluster, leader) == 1, 10, "b waiting")
    status, _, released = cluster.request(leader, "DELETE", f"/v1/locks/{ns}/l?fence={held['fence']}")
    waiter.join(20)
    (status, lock), = got
    assert status == 201 and lock["holder"] == "b"
    # fence = Raft index * 2^16 + position in the entry: the release's entry, right after it.
    release_index = int(released["token"].split(":")[1])
    # (Group commit usually packs them; on a loaded machine the release's entry may leave
    # before the hand-over's proposal joins it: then a later one.)
    index, position = lock["fence"] >> 16, lock["fence"] & 0xFFFF
    assert (index, position) == (release_index, 1) or index > release_index


def test_a_waiter_that_disconnects_does_not_acquire(cluster: Cluster) -> None:
    ns = _ns()
    leader = leader_node(cluster, ns, "gone")
    status, held = acquire(cluster, leader, ns, "gone", "owner", ttl_ms=30_000)
    assert status == 201
    body = orjson.dumps({"holder": "ghost", "ttl_ms": 30_000, "wait_ms": 30_000})
    sock = socket.create_connection(("127.0.0.1", cluster.http[leader]), timeout=5)
    sock.sendall(f"POST /v1/locks/{ns}/gone HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    wait_for(lambda: waiters(cluster, leader) == 1, 10, "the ghost waiting")
    sock.close()
    wait_for(lambda: waiters(cluster, leader) == 0, 10, "the ghost gone from the queue")
    cluster.request(leader, "DELETE", f"/v1/locks/{ns}/gone?fence={held['fence']}")
    # Free: nobody who could no longer learn of it took it.
    status, next_holder = acquire(cluster, "n1", ns, "gone", "next")
    assert status == 201, next_holder
    status, _, seen = cluster.request("n2", "GET", f"/v1/locks/{ns}/gone")
    assert seen["holder"] == "next"



def test_forwarded_waiters_do_not_hold_up_other_forwards(cluster: Cluster) -> None:
    """130 waiting acquisitions sent to a follower hold 130 connections to the
    leader; a PUT forwarded by the same follower still answers at once (one
    pool for both, 128 per peer, queued it until it timed out as a 504 though
    it was never sent: review finding 1)."""
    ns = _ns()
    leader = leader_node(cluster, ns, "L")
    follower = next(n for n in cluster.node_ids if n != leader)
    status, held = acquire(cluster, leader, ns, "L", "owner", ttl_ms=60_000)
    assert status == 201
    socks = []
    try:
        for i in range(130):
            body = orjson.dumps({"holder": f"w{i}", "ttl_ms": 60_000, "wait_ms": 25_000})
            sock = socket.create_connection(("127.0.0.1", cluster.http[follower]), timeout=60)
            sock.sendall(f"POST /v1/locks/{ns}/L HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            socks.append(sock)
        wait_for(lambda: waiters(cluster, leader) >= 128, 30, "the waiters queued at the leader")
        started = time.monotonic()
        status, _, answer = cluster.request(follower, "PUT", f"/v1/memories/{ns}/L", {"content": 1}, timeout_s=60)
        took = time.monotonic() - started
        assert status in (200, 201) and took < 2.0, (status, took, answer)
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: waiters(cluster, leader) == 0, 30, "the waiters gone")
    assert cluster.request(leader, "DELETE", f"/v1/locks/{ns}/L?fence={held['fence']}")[0] == 200


def test_a_client_that_leaves_as_its_acquisition_commits_leaves_no_lock_held(cluster: Cluster) -> None:
    """Clients that send an acquisition of a free lock and close their
    connection at once: the acquisition commits (in a few ms) before the
    node's look for departed clients (every 50 ms), so its answer goes
    nowhere; the lock is given back, not held for its 60 s lease (review
    finding 8). Through the leader of each lock and through another node."""
    ns = _ns()
    names = [f"l{i}" for i in range(12)]
    body = orjson.dumps({"holder": "gone", "ttl_ms": 60_000, "wait_ms": 0})
    for i, name in enumerate(names):
        leader = leader_node(cluster, ns, name)
        node = leader if i % 2 else next(n for n in cluster.node_ids if n != leader)
        sock = socket.create_connection(("127.0.0.1", cluster.http[node]), timeout=5)
        sock.sendall(f"POST /v1/locks/{ns}/{name} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        sock.close()

    def held() -> list[str]:
        return [n for n in names if cluster.request("n1", "GET", f"/v1/locks/{ns}/{n}")[0] == 200]

    wait_for(lambda: not held(), 10, "every lock given back")


def test_a_lease_that_runs_out_frees_the_lock_and_refuses_the_old_fence(cluster: Cluster) -> None:
    ns = _ns()
    status, stale = acquire(cluster, "n1", ns, "job", "sleepy", ttl_ms=300)
    assert status == 201
    fence = f"{ns}/job:{stale['fence']}"
    assert fenced_put(cluster, "n2", ns, "job", fence, "by sleepy")[0] == 201
    started = time.monotonic()
    status, fresh = acquire(cluster, "n2", ns, "job", "awake", ttl_ms=30_000, wait_ms=10_000)
    waited = time.monotonic() - started
    assert status == 201 and fresh["fence"] > stale["fence"] and waited < 5, (waited, fresh)
    # The paused holder wakes up and writes with its old fence: refused, nothing changed.
    status, body = fenced_put(cluster, "n3", ns, "job", fence, "late write")
    assert status == 409 and body["error"]["code"] == "fenced" and body["error"]["lock"]["holder"] == "awake"
    # A refused writer is not told the current holder's fence: a naive "take the
    # fence from the error and retry" loop would write as the new holder.
    assert str(fresh["fence"]) not in orjson.dumps(body).decode(), body
    assert body["error"]["lock"]["expires_at"] == fresh["expires_at"]
    _, _, memory = cluster.request("n1", "GET", f"/v1/memories/{ns}/job?consistency=linearizable")
    assert memory["content"] == "by sleepy"
    status, _, body = cluster.request("n1", "POST", f"/v1/locks/{ns}/job/renew", {"fence": stale["fence"],
                                                                                  "ttl_ms": 1000})
    assert status == 409 and body["error"]["code"] == "fenced"
    assert str(fresh["fence"]) not in orjson.dumps(body).decode(), body
    # The new holder's fence works, in a batch too; a memory off the lock's shard cannot be fenced.
    good = f"{ns}/job:{fresh['fence']}"
    other = colocated_id(ns, "job", "report", cluster.shards)
    # Through a node that does not lead the shard: the batch's share goes to the leader.
    elsewhere = next(n for n in cluster.node_ids if n != leader_node(cluster, ns, "job"))
    status, _, batch = cluster.request(elsewhere, "POST", "/v1/batch", {"ops": [
        {"op": "put", "namespace": ns, "id": other, "body": {"content": 1}, "if_fence": good},
        {"op": "put", "namespace": ns, "id": other, "body": {"content": 2}, "if_fence": fence},
    ]})
    assert [r["status"] for r in batch["results"]] == [201, 409]
    assert str(fresh["fence"]) not in orjson.dumps(batch["results"][1]).decode(), batch
    off = next(m for m in (f"m{i}" for i in range(100)) if cluster.shard_of(ns, m) != cluster.shard_of(ns, "job"))
    status, body = fenced_put(cluster, "n1", ns, off, good, 1)
    assert status == 400 and "shard" in body["error"]["message"]


def test_bad_input_is_a_clear_400_and_changes_nothing(cluster: Cluster) -> None:
    ns = _ns()
    path = f"/v1/locks/{ns}/l"
    bad_bodies: list[Any] = [
        {"holder": "a", "ttl_ms": -5}, {"holder": "a", "ttl_ms": 10**12}, {"holder": "a", "ttl_ms": 0},
        {"holder": "a"}, {"ttl_ms": 1000}, {"holder": "", "ttl_ms": 1000}, {"holder": "a", "ttl_ms": "10"},
        {"holder": "a", "ttl_ms": 1000, "wait_ms": -1}, {"holder": "a", "ttl_ms": 1000, "wait_ms": 10**9},
        {"holder": "a", "ttl_ms": 1000, "colour": "red"}, [1, 2], {"holder": "a\x00b", "ttl_ms": 1000},
    ]
    for body in bad_bodies:
        status, _, answer = cluster.request("n1", "POST", path, body)
        assert status == 400 and answer["error"]["code"] == "invalid_request", (body, answer)
    for raw in (b"not json", b""):
        status, _, answer = cluster.request("n1", "POST", path, raw=raw)
        assert status == 400, answer
    assert cluster.request("n1", "POST", f"/v1/locks/{ns}/bad%20name", {"holder": "a", "ttl_ms": 1000})[0] == 400
    assert cluster.request("n1", "POST", f"/v1/locks/{ns}/l/renew", {"fence": "x", "ttl_ms": 1000})[0] == 400
    assert cluster.request("n1", "POST", f"/v1/locks/{ns}/l/renew", {"fence": -1, "ttl_ms": 1000})[0] == 400
    assert cluster.request("n1", "DELETE", f"{path}?fence=abc")[0] == 400
    assert cluster.request("n1", "DELETE", path)[0] == 400  # no fence at all
    assert cluster.request("n1", "GET", f"{path}?consistency=session")[0] == 400
    for header in ("nonsense", f"{ns}/l", f"{ns}/l:-1", f"{ns}/l:1x", "other-ns/l:5", f"{ns}/:5", f"{ns}/l:{10**20}"):
        status, body = fenced_put(cluster, "n2", ns, "l", header, 1)
        assert status == 400 and body["error"]["code"] == "invalid_request", (header, body)
    assert cluster.request("n1", "GET", path)[0] == 404  # nothing was acquired
    assert cluster.request("n1", "GET", f"/v1/memories/{ns}/l")[0] == 404  # nothing was written
    # A fence of a lock never acquired is well-formed but not held: 409, still nothing written.
    status, body = fenced_put(cluster, "n2", ns, "l", f"{ns}/l:5", 1)
    assert status == 409 and body["error"]["code"] == "fenced"
    assert cluster.request("n1", "GET", f"/v1/memories/{ns}/l")[0] == 404


async def test_the_client_holds_a_lock_past_its_ttl_and_stops_the_body_when_it_is_lost(cluster: Cluster) -> None:
    ns = _ns()
    urls = [f"http://127.0.0.1:{cluster.http[n]}" for n in cluster.node_ids]
    async with AsyncClient(urls) as client:
        async with client.lock(ns, "gate", ttl_ms=600) as lease:
            for step in range(4):  # four times the ttl: renewed in the background
                await client.put(ns, "gate", {"step": step}, if_fence=lease)
                await asyncio.sleep(0.6)
            assert (await client.get_lock(ns, "gate"))["fence"] == lease.fence
        assert await client.get_lock(ns, "gate") is None  # released at the end
        cancelled_at: list[float] = []
        with pytest.raises(LockLost):
            async with client.lock(ns, "gate", ttl_ms=600) as lease:
                # Someone releases it under us (an operator, a bug): the next
                # renewal is refused and the body is stopped.
                cluster.request("n1", "DELETE", f"/v1/locks/{ns}/gate?fence={lease.fence}")
                try:
                    await asyncio.sleep(30)
                finally:
                    cancelled_at.append(time.monotonic())
        assert cancelled_at and lease.lost is not None and "refused" in lease.lost
        with pytest.raises(Fenced):
            await client.put(ns, "gate", "too late", if_fence=lease)
        other = await client.acquire_lock(ns, "gate", ttl_ms=5000, holder="x")
        with pytest.raises(LockHeld):
            await client.acquire_lock(ns, "gate", ttl_ms=5000, holder="y")
        await client.release_lock(other)


def test_the_blocking_client_holds_and_reports_a_lost_lock(cluster: Cluster) -> None:
    ns = _ns()
    urls = [f"http://127.0.0.1:{cluster.http[n]}" for n in cluster.node_ids]
    lost: list[str] = []
    with Client(urls) as client:
        with client.lock(ns, "g", ttl_ms=500) as lease:
            client.put(ns, "g", 1, if_fence=lease)
            time.sleep(1.2)
            lease.check()
            client.put(ns, "g", 2, if_fence=lease)
        with pytest.raises(LockLost):
            with client.lock(ns, "g", ttl_ms=500, on_lost=lambda lease: lost.append(lease.lost or "")) as lease:
                cluster.request("n1", "DELETE", f"/v1/locks/{ns}/g?fence={lease.fence}")
                wait_for(lambda: lost, 5, "the loss noticed")
                with pytest.raises(LockLost):
                    lease.check()
        assert client.get(ns, "g")["content"] == 2


# -- faults (clusters of their own) ---------------------------------------------------------
def test_the_lock_survives_its_leaders_death(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    c.start_all()
    ns = _ns()
    old = leader_node(c, ns, "l")
    status, lock = acquire(c, old, ns, "l", "survivor", ttl_ms=60_000)
    assert status == 201
    c.kill(old)
    survivors = [n for n in c.node_ids if n != old]
    new = wait_for(lambda: c.leader_of(c.shard_of(ns, "l")), 30, "a new leader")
    assert new != old
    for node in survivors:
        status, _, seen = c.request(node, "GET", f"/v1/locks/{ns}/l")
        assert status == 200 and seen["fence"] == lock["fence"] and seen["holder"] == "survivor"
    assert acquire(c, survivors[0], ns, "l", "usurper")[0] == 409
    fence = f"{ns}/l:{lock['fence']}"
    assert fenced_put(c, survivors[1], ns, "l", fence, "after failover")[0] == 201
    status, _, _ = c.request(survivors[0], "POST", f"/v1/locks/{ns}/l/renew", {"fence": lock["fence"], "ttl_ms": 60_000})
    assert status == 200
    c.start(old)
    c.wait_ready()
    status, _, seen = c.request(old, "GET", f"/v1/locks/{ns}/l")
    assert status == 200 and seen["fence"] == lock["fence"]


def test_an_acquisition_whose_outcome_is_unknown_is_a_504_that_a_keyed_retry_settles(fresh_cluster: Cluster) -> None:
    c = fresh_cluster
    c.start_all()
    ns = _ns()
    leader = leader_node(c, ns, "l")
    other = next(n for n in c.node_ids if n != leader)
    # Warm the forwarding connection, then stop the leader: the next forward
    # reaches it and is never answered.
    assert acquire(c, other, ns, "warm", "w")[0] in (201, 409)
    key = {"Idempotency-Key": uuid.uuid4().hex}
    c.procs[leader].send_signal(signal.SIGSTOP)
    try:
        status, body = acquire(c, other, ns, "l", "me", ttl_ms=60_000, **key)
    finally:
        c.procs[leader].send_signal(signal.SIGCONT)
    # Sent to the leader, never answered: it may or may not have happened.
    assert status == 504 and body["error"]["code"] == "indeterminate" and body["indeterminate"] is True, body
    status, lock = wait_for(lambda: (lambda r: r if r[0] == 201 else None)(acquire(c, other, ns, "l", "me",
                                                                                   ttl_ms=60_000, **key)),
                            30, "the keyed retry settling it")
    status, _, seen = c.request(leader, "GET", f"/v1/locks/{ns}/l")
    assert seen["holder"] == "me" and seen["fence"] == lock["fence"]


def test_control_the_disconnect_test_sees_a_waiter_that_stays(tmp_path: Path) -> None:
    """The disconnect test's premise: a waiter still connected does take the
    lock once it is free (so, had the server not dropped the ghost, the next
    holder would have been refused)."""
    c = Cluster(tmp_path)
    try:
        c.start_all()
        ns = _ns()
        leader = leader_node(c, ns, "l")
        status, held = acquire(c, leader, ns, "l", "owner", ttl_ms=30_000)
        result: list[int] = []
        t = threading.Thread(target=lambda: result.append(acquire(c, leader, ns, "l", "stayer", 30_000, 30_000)[0]))
        t.start()
        wait_for(lambda: waiters(c, leader) == 1, 10, "the waiter queued")
        c.request(leader, "DELETE", f"/v1/locks/{ns}/l?fence={held['fence']}")
        t.join(30)
        assert result == [201]
        assert acquire(c, "n1", ns, "l", "next")[0] == 409
    finally:
        c.stop_all()
