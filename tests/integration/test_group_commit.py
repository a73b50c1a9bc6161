"""Group commit's linger (`limits.group_commit_linger_ms`, like PostgreSQL's
commit_delay with commit_siblings): once a crowd of writers has been answered,
the next log entry waits for the crowd to come back, so it carries all of them;
a lone writer never waits."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from .cluster import Cluster, wait_for

WRITERS = 8
ROUNDS = 12


def _leader(c: Cluster) -> str:
    return wait_for(lambda: c.leader_of(0), 30, "a leader for shard 0")


def test_a_crowd_of_writers_rides_in_one_entry_per_round(tmp_path: Path) -> None:
    c = Cluster(tmp_path, shards=1, limits={"group_commit_linger_ms": 1000})
    try:
        c.start_all()
        leader = _leader(c)
        proposals0 = c.shard_counter(leader, "raftmem_shard_proposals", 0)
        entries0 = c.shard_counter(leader, "raftmem_shard_entries_proposed", 0)
        errors: list[object] = []

        def writer(w: int) -> None:
            for r in range(ROUNDS):
                status, _, body = c.request(leader, "PUT", f"/v1/memories/gc/w{w}-{r}", {"content": "x"})
                if status != 201:
                    errors.append(body)

        threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors, errors
        proposals = c.shard_counter(leader, "raftmem_shard_proposals", 0) - proposals0
        entries = c.shard_counter(leader, "raftmem_shard_entries_proposed", 0) - entries0
    finally:
        c.stop_all()
    assert proposals == WRITERS * ROUNDS
    # Without the linger, answered writers come back one by one behind an entry in
    # flight and the crowd splits over about three times as many entries as
    # rounds (36 for 12 rounds; 13-15 with it, 15 with both cores busy). The
    # first round splits (a lone writer goes at once); on a loaded machine a
    # writer can come back after the linger: room for a few such rounds.
    assert entries <= ROUNDS + 6, f"{proposals:.0f} writes took {entries:.0f} entries"


def test_a_lone_writer_never_waits_for_the_linger(tmp_path: Path) -> None:
    linger_s = 1.0
    c = Cluster(tmp_path, shards=1, limits={"group_commit_linger_ms": linger_s * 1000})
    try:
        c.start_all()
        leader = _leader(c)
        slowest = 0.0
        for i in range(5):
            started = time.monotonic()
            status, _, body = c.request(leader, "PUT", f"/v1/memories/gc/lone-{i}", {"content": "x"})
            assert status == 201, body
            slowest = max(slowest, time.monotonic() - started)
    finally:
        c.stop_all()
    assert slowest < linger_s / 2, f"a lone write took {slowest:.2f}s: it waited for the linger"
