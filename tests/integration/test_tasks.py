"""Task queues on a real 3-node cluster: claims in priority order, each task
claimed and completed once however many workers race, an expired claim
requeued with its attempts counted and its stale fence refused, retries ending
in the dead-letter state, a waiting claim woken by an enqueue, and bad input
refused without a change."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest

from raftmem.client import Client, Fenced

from .cluster import Cluster, wait_for


@pytest.fixture(scope="module")
def cluster(coordination_cluster: Cluster) -> Cluster:
    return coordination_cluster


def _ns() -> str:
    return f"tasks-{uuid.uuid4().hex[:8]}"


def enqueue(c: Cluster, node: str, ns: str, **body: Any) -> dict[str, Any]:
    status, _, task = c.request(node, "POST", f"/v1/tasks/{ns}", body)
    assert status == 201, task
    return task


def claim(c: Cluster, node: str, ns: str, worker: str = "w", lease_ms: int = 10_000,
          wait_ms: int = 0) -> dict[str, Any] | None:
    status, _, task = c.request(node, "POST", f"/v1/tasks/{ns}/claim",
                                {"worker": worker, "lease_ms": lease_ms, "wait_ms": wait_ms},
                                timeout_s=wait_ms / 1000 + 15)
    assert status in (200, 204), task
    return task if status == 200 else None


def settle(c: Cluster, node: str, ns: str, tid: str, action: str, **body: Any) -> tuple[int, dict[str, Any]]:
    status, _, answer = c.request(node, "POST", f"/v1/tasks/{ns}/{tid}/{action}", body)
    return status, answer


def test_claims_follow_priority_then_age_and_complete_once(cluster: Cluster) -> None:
    ns = _ns()
    low = enqueue(cluster, "n1", ns, payload="low", priority=-1)
    first = enqueue(cluster, "n2", ns, payload="first")
    second = enqueue(cluster, "n3", ns, payload="second")
    urgent = enqueue(cluster, "n1", ns, payload="urgent", priority=5)
    later = enqueue(cluster, "n2", ns, payload="later", delay_ms=60_000)
    order = [claim(cluster, n, ns) for n in ("n3", "n2", "n1", "n3")]
    assert [t["id"] for t in order if t] == [urgent["id"], first["id"], second["id"], low["id"]]
    assert claim(cluster, "n1", ns) is None  # `later` is not ready for a minute
    fences = [t["fence"] for t in order if t]
    assert fences == sorted(fences)
    task = order[0]
    assert task is not None
    status, done = settle(cluster, "n2", ns, task["id"], "complete", fence=task["fence"], result={"ok": True})
    assert status == 200 and done["state"] == "done" and done["result"] == {"ok": True}
    status, body = settle(cluster, "n3", ns, task["id"], "complete", fence=task["fence"])
    assert status == 409 and body["error"]["code"] == "fenced"
    status, _, page = cluster.request("n1", "GET", f"/v1/tasks/{ns}?state=claimed")
    assert status == 200 and sorted(t["id"] for t in page["items"]) == sorted(t["id"] for t in order[1:] if t)
    assert page["open"] == 4  # three claimed and `later`
    status, _, page = cluster.request("n1", "GET", f"/v1/tasks/{ns}?state=ready")
    assert [t["id"] for t in page["items"]] == [later["id"]] and page["items"][0]["not_before"] > time.time() * 1000
    status, _, one = cluster.request("n3", "GET", f"/v1/tasks/{ns}/{later['id']}")
    assert status == 200 and one["payload"] == "later"


def test_concurrent_workers_claim_and_complete_every_task_exactly_once(cluster: Cluster) -> None:
    ns = _ns()
    total = 60
    ids = {enqueue(cluster, cluster.node_ids[i % 3], ns, payload=i)["id"] for i in range(total)}
    completed: list[str] = []
    claims: list[str] = []
    guard = threading.Lock()

    def work(worker: int) -> None:
        node = cluster.node_ids[worker % 3]
        while True:
            task = claim(cluster, node, ns, worker=f"w{worker}", lease_ms=30_000, wait_ms=300)
            if task is None:
                return
            with guard:
                claims.append(task["id"])
            status, body = settle(cluster, node, ns, task["id"], "complete", fence=task["fence"], result=worker)
            assert status == 200, body
            with guard:
                completed.append(task["id"])

    threads = [threading.Thread(target=work, args=(w,)) for w in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert Counter(claims) == Counter(completed) == Counter(ids)
    status, _, page = cluster.request("n2", "GET", f"/v1/tasks/{ns}?state=done&limit=1000")
    assert {t["id"] for t in page["items"]} == ids and page["open"] == 0


def test_an_expired_claim_is_requeued_with_attempts_and_its_fence_refused(cluster: Cluster) -> None:
    ns = _ns()
    task = enqueue(cluster, "n1", ns, payload="slow", backoff_ms=0)
    stale = claim(cluster, "n2", ns, worker="paused", lease_ms=300)
    assert stale is not None and stale["id"] == task["id"]

    def requeued() -> bool:
        _, _, page = cluster.request("n1", "GET", f"/v1/tasks/{ns}?state=ready")
        return [(t["id"], t["attempts"]) for t in page["items"]] == [(task["id"], 1)]

    # Nobody claims meanwhile: the leader's reaper proposes the expiry (through the log).
    wait_for(requeued, 10, "the expired claim requeued by the reaper")
    again = wait_for(lambda: claim(cluster, "n3", ns, worker="fresh", lease_ms=30_000, wait_ms=1000), 15,
                     "the task back in the queue")
    assert again["id"] == task["id"] and again["attempts"] == 1 and again["fence"] > stale["fence"]
    assert again["last_error"] == "claim expired"
    status, body = settle(cluster, "n1", ns, task["id"], "complete", fence=stale["fence"], result="paused")
    assert status == 409 and body["error"]["code"] == "fenced" and body["error"]["task"]["worker"] == "fresh"
    assert str(again["fence"]) not in orjson.dumps(body).decode(), body  # the new claim's fence is not told
    status, body = settle(cluster, "n1", ns, task["id"], "extend", fence=again["fence"], lease_ms=60_000)
    assert status == 200 and body["claim_expires_at"] > again["claim_expires_at"]
    assert settle(cluster, "n1", ns, task["id"], "complete", fence=again["fence"], result="fresh")[0] == 200



@pytest.mark.parametrize("through", ["leader", "another node"])
def test_a_claim_whose_client_leaves_as_it_commits_goes_back_to_the_queue(cluster: Cluster, through: str) -> None:
    """The claimant sends and closes its connection at once: the claim commits
    before the node looks for departed clients, and the task goes back to the
    queue instead of staying claimed for its 60 s lease (review finding 8):
    uncharged at the queue's leader, charged one attempt (as the claim's
    expiry would) when given back by a node that forwards it."""
    import socket

    ns = _ns()
    task = enqueue(cluster, "n1", ns, payload=1, backoff_ms=0)
    leader = wait_for(lambda: cluster.leader_of(cluster.shard_of(ns, "")), 20, "the queue's leader")
    node = leader if through == "leader" else next(n for n in cluster.node_ids if n != leader)
    body = orjson.dumps({"worker": "gone", "lease_ms": 60_000, "wait_ms": 0})
    sock = socket.create_connection(("127.0.0.1", cluster.http[node]), timeout=5)
    sock.sendall(f"POST /v1/tasks/{ns}/claim HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    sock.close()

    def back() -> dict[str, Any] | None:
        _, _, seen = cluster.request("n1", "GET", f"/v1/tasks/{ns}/{task['id']}")
        return seen if seen["state"] == "ready" and seen["claims"] == 1 else None

    seen = wait_for(back, 10, "the task back in the queue")
    # (0 through another node too when its forward is cancelled in flight: the
    # leader then gives it back itself.)
    assert seen["attempts"] in ((0,) if through == "leader" else (0, 1))

def test_failures_back_off_and_end_in_the_dead_letter_state(cluster: Cluster) -> None:
    ns = _ns()
    task = enqueue(cluster, "n1", ns, payload="doomed", max_attempts=2, backoff_ms=200)
    first = claim(cluster, "n2", ns)
    assert first is not None
    status, failed = settle(cluster, "n2", ns, task["id"], "fail", fence=first["fence"], error="boom")
    assert status == 200 and failed["state"] == "ready" and failed["attempts"] == 1
    second = wait_for(lambda: claim(cluster, "n3", ns, wait_ms=1000), 15, "the retry after its back-off")
    assert second["attempts"] == 1
    status, dead = settle(cluster, "n3", ns, task["id"], "fail", fence=second["fence"], error="boom again")
    assert status == 200 and dead["state"] == "dead" and dead["attempts"] == 2 and dead["last_error"] == "boom again"
    status, _, page = cluster.request("n1", "GET", f"/v1/tasks/{ns}?state=dead")
    assert [t["id"] for t in page["items"]] == [task["id"]] and page["open"] == 0
    assert claim(cluster, "n1", ns) is None


def test_a_waiting_claim_is_woken_by_an_enqueue(cluster: Cluster) -> None:
    ns = _ns()
    got: list[tuple[float, dict[str, Any] | None]] = []
    started = time.monotonic()
    t = threading.Thread(target=lambda: got.append((time.monotonic(), claim(cluster, "n2", ns, wait_ms=20_000))))
    t.start()
    wait_for(lambda: sum(int(cluster.metric(n, "raftmem_coordination_waiters")) for n in cluster.node_ids) == 1,
             10, "the claim waiting")
    enqueued_at = time.monotonic()
    task = enqueue(cluster, "n3", ns, payload="x")
    t.join(30)
    (returned_at, claimed), = got
    assert claimed is not None and claimed["id"] == task["id"]
    assert returned_at - enqueued_at < 2 and returned_at - started < 15


def test_the_client_drives_a_queue(cluster: Cluster) -> None:
    ns = _ns()
    urls = [f"http://127.0.0.1:{cluster.http[n]}" for n in cluster.node_ids]
    with Client(urls) as client:
        added = client.enqueue_task(ns, {"job": 1}, priority=3)
        task = client.claim_task(ns, lease_ms=5000, wait_ms=100)
        assert task is not None and task["id"] == added["id"]
        assert client.extend_task(ns, task["id"], task["fence"], 10_000)["state"] == "claimed"
        assert client.complete_task(ns, task["id"], task["fence"], "done")["state"] == "done"
        with pytest.raises(Fenced):
            client.complete_task(ns, task["id"], task["fence"], "twice")
        assert client.claim_task(ns, lease_ms=5000) is None
        assert [t["id"] for t in client.list_tasks(ns, state="done")["items"]] == [added["id"]]
        assert client.get_task(ns, added["id"])["result"] == "done"


def test_bad_input_is_a_clear_400_and_changes_nothing(cluster: Cluster) -> None:
    ns = _ns()
    for body in ({"payload": 1, "priority": 10**9}, {"payload": 1, "max_attempts": 0},
                 {"payload": 1, "backoff_ms": -1}, {"payload": 1, "id": "bad id"}, {"payload": 1, "delay_ms": -5},
                 {"payload": 1, "colour": 1}, {"payload": 1, "not_before": 10**18},
                 {"payload": "x" * 70_000}, {"payload": 1, "max_attempts": None}, {"payload": 1, "priority": None}):
        status, _, answer = cluster.request("n1", "POST", f"/v1/tasks/{ns}", body)
        assert status in (400, 413) and answer["error"]["code"] in ("invalid_request", "payload_too_large"), body
    for body in ({"lease_ms": 1000}, {"worker": "w"}, {"worker": "w", "lease_ms": -1},
                 {"worker": "w", "lease_ms": 1000, "wait_ms": 10**7}, {"worker": "w", "lease_ms": None}):
        assert cluster.request("n1", "POST", f"/v1/tasks/{ns}/claim", body)[0] == 400, body
    assert cluster.request("n1", "POST", f"/v1/tasks/{ns}/t1/complete", {"result": 1})[0] == 400  # no fence
    assert cluster.request("n1", "POST", f"/v1/tasks/{ns}/t1/fail", {"fence": 1, "retry": "yes"})[0] == 400
    assert cluster.request("n1", "POST", f"/v1/tasks/{ns}/t1/explode", {"fence": 1})[0] == 404
    assert cluster.request("n1", "GET", f"/v1/tasks/{ns}?state=lost")[0] == 400
    assert cluster.request("n1", "GET", f"/v1/tasks/{ns}?limit=0")[0] == 400
    assert cluster.request("n1", "POST", f"/v1/tasks/{ns}/t1/complete", {"fence": 1})[0] == 404  # no such task
    status, _, page = cluster.request("n2", "GET", f"/v1/tasks/{ns}")
    assert status == 200 and page["items"] == [] and page["open"] == 0
