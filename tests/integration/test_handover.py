"""Leadership hand-overs under a steady write load (real nodes): the leader holds
new proposals until the target has every entry, tells it to campaign, and the
target wins the next term. The negative control (`naive_transfer`: pysyncobj's
own transfer, which keeps appending after TimeoutNow) shows the test catches a
hand-over that loses its election to the old leader."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

from .cluster import Cluster, wait_for

SHARD = 2
WRITERS = 4
HANDOVERS = 3
CONTROL_HANDOVERS_MAX = 12  # a naive hand-over wins about half the time under this load


def _keys(c: Cluster, ns: str, n: int) -> list[str]:
    keys: list[str] = []
    i = 0
    while len(keys) < n:
        if c.shard_of(ns, f"k{i}") == SHARD:
            keys.append(f"k{i}")
        i += 1
    return keys


class Load:
    """WRITERS threads putting keys of SHARD through every node as fast as answered."""

    def __init__(self, c: Cluster) -> None:
        self.c = c
        self.ns = "ho-" + uuid.uuid4().hex[:6]
        self.keys = _keys(c, self.ns, WRITERS)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.statuses: list[int] = []
        self.threads = [threading.Thread(target=self._write, args=(w,), daemon=True) for w in range(WRITERS)]

    def _write(self, w: int) -> None:
        n = 0
        while not self.stop.is_set():
            up = [node for node in self.c.node_ids if self.c.alive(node)]
            node = up[(w + n) % len(up)]
            try:
                status, _, _ = self.c.request(node, "PUT", f"/v1/memories/{self.ns}/{self.keys[w]}", {"content": n})
            except OSError:
                status = -1
            with self.lock:
                self.statuses.append(status)
            n += 1

    def done(self) -> int:
        with self.lock:
            return len(self.statuses)

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        wait_for(lambda: self.done() >= 20, 20, "the write load under way")
        return self

    def __exit__(self, *_: Any) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)


def _hand_over(c: Cluster, load: Load) -> tuple[str, str, int, int]:
    """One hand-over to a follower under the load: (old leader, target, the
    term before, the term once a leader is settled after it)."""
    leader = str(wait_for(lambda: c.leader_of(SHARD), 20, f"a leader of shard {SHARD}"))
    term = c.cluster_view(leader)["shards"][SHARD]["term"]
    target = next(n for n in c.node_ids if n != leader)
    wait_for(lambda: c.request(leader, "POST", f"/v1/admin/shards/{SHARD}/transfer-leader?to={target}")[0] == 202,
             20, "the transfer request accepted (the target caught up)")
    # Settled: some node leads a term past the one before, and writes go on.
    settled = load.done()

    def leading_later() -> tuple[str, int] | None:
        now = c.leader_of(SHARD)
        if now is None:
            return None
        now_term = int(c.cluster_view(now)["shards"][SHARD]["term"])
        return (now, now_term) if now_term > term else None

    _, after = wait_for(leading_later, 20, "a leader after the hand-over")
    wait_for(lambda: load.done() >= settled + 20, 20, "writes after the hand-over")
    return leader, target, term, after


Outcome = tuple[str, str, int, int, "str | None"]  # old leader, target, term before, after, leader after


def _took_one_election(o: Outcome) -> bool:
    return (o[4], o[3]) == (o[1], o[2] + 1)


def _run(c: Cluster, handovers: int, until_failed: bool = False) -> tuple[list[Outcome], list[int]]:
    c.start_all()
    outcomes: list[Outcome] = []
    with Load(c) as load:
        for _ in range(handovers):
            leader, target, before, after = _hand_over(c, load)
            outcomes.append((leader, target, before, after, c.leader_of(SHARD)))
            if until_failed and not _took_one_election(outcomes[-1]):
                break
    return outcomes, load.statuses


def test_a_hand_over_under_writes_elects_the_target_in_one_term(tmp_path: Path) -> None:
    c = Cluster(tmp_path)
    try:
        outcomes, statuses = _run(c, HANDOVERS)
    finally:
        c.stop_all()
    for o in outcomes:
        assert _took_one_election(o), f"hand-over {o[0]} -> {o[1]} at term {o[2]}: {o[4]} leads at term {o[3]}"
    # Proposals held through a hand-over went to the new leader: none failed.
    assert set(statuses) <= {200, 201}, sorted(set(statuses))


def test_negative_control_a_transfer_that_keeps_appending_loses_to_the_old_leader(tmp_path: Path) -> None:
    c = Cluster(tmp_path, debug={"naive_transfer": True})
    try:
        outcomes, _ = _run(c, CONTROL_HANDOVERS_MAX, until_failed=True)
    finally:
        c.stop_all()
    assert not _took_one_election(outcomes[-1]), f"every naive hand-over took one election: {outcomes}"


def test_a_hand_over_to_a_node_that_is_down_is_refused_at_once(tmp_path: Path) -> None:
    """Refused before any proposal is held (not held for an election timeout,
    then abandoned): the balancer and `_converge` may ask again and again."""
    c = Cluster(tmp_path)
    try:
        c.start_all()
        leader = str(wait_for(lambda: c.leader_of(SHARD), 20, f"a leader of shard {SHARD}"))
        down = next(n for n in c.node_ids if n != leader)
        c.kill(down)
        with Load(c) as load:

            def behind() -> bool:  # the leader's view: the dead node misses committed entries
                view = c.cluster_view(leader)["shards"][SHARD]
                return int(view.get("match_index", {}).get(down, 0)) < int(view["commit_index"])

            wait_for(behind, 20, f"{down} behind the commit index")
            for _ in range(3):
                status, _, body = c.request(leader, "POST", f"/v1/admin/shards/{SHARD}/transfer-leader?to={down}")
                assert status == 503 and "transfer refused" in body["error"]["message"], (status, body)
            before = load.done()
            wait_for(lambda: load.done() >= before + 20, 20, "writes after the refusals")
        assert c.leader_of(SHARD) == leader
        assert "abandoned" not in c.log_text(leader)
    finally:
        c.stop_all()
