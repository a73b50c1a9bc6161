"""A node's memory is bounded in bytes: with small budgets (RocksDB memtables and
block cache shared by the node's replicas, and the Raft log compacted by bytes),
loading several times those budgets leaves each node's resident memory within
its start-up size plus the budgets plus a stated margin. The derived indexes
have budgets of their own, counted per replica: tantivy's indexing arena
(indexing.text_heap_bytes), the records waiting for absorption
(indexing.queue_bytes_max) and the feed subscription (4 batches of records).
The control runs the
same load with budgets as large as the old defaults and shows the same check
failing, so the check can tell."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from pathlib import Path

import pytest

from .cluster import Cluster

SHARDS = 4
MIB = 1 << 20
BOUNDED = {"memtable_bytes_max": 8 * MIB, "block_cache_bytes": 4 * MIB}
BOUNDED_LOG_BYTES = 2 * MIB
# Python's own heap (requests and entries in flight, the interpreter's arenas)
# grows under load whatever the budgets: this much beyond them is allowed.
MARGIN_BYTES = 48 * MIB
VALUE_BYTES = 4096
BATCH = 32
LOAD_BYTES = 64 * MIB  # 8x the memtable budget, 32x a shard's log budget
INDEXING = {"text_heap_bytes": 15_000_000, "queue_bytes_max": 1 * MIB, "batch_docs": 64}
REFUSED_FOR_S_MAX = 60.0  # a put refused (429, 503) this long fails the load
INDEX_BYTES = INDEXING["text_heap_bytes"] + INDEXING["queue_bytes_max"] + 4 * INDEXING["batch_docs"] * VALUE_BYTES


def _rss(pid: int) -> int:
    """The node's RSS and its children's (the engine host runs its indexes:
    raftmem/indexing/host.py); a child that exits meanwhile counts nothing."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{p}/status").read_text(), re.M)
        except FileNotFoundError:
            continue
        if match:
            total += int(match.group(1)) * 1024
    return total


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out.extend(int(c) for c in (task / "children").read_text().split())
        except FileNotFoundError:
            continue
    return out


def _batch(cluster: Cluster, node: str, first: int) -> None:
    """BATCH puts; those refused without effect (503 during an election, 429 while
    the indexes' queue is at its budget: the back-pressure this test provokes)
    are sent again, backing off, until a deadline."""
    ops = [{"op": "put", "namespace": "mem", "id": f"m-{first + i}", "body": {"content": "x" * VALUE_BYTES}}
           for i in range(BATCH)]
    deadline = time.monotonic() + REFUSED_FOR_S_MAX
    pause = 0.05
    while True:
        conn = http.client.HTTPConnection("127.0.0.1", cluster.http[node], timeout=60)
        try:
            conn.request("POST", "/v1/batch", body=json.dumps({"ops": ops}))
            resp = conn.getresponse()
            body = json.loads(resp.read())
        finally:
            conn.close()
        assert resp.status in (200, 429), body
        results = body.get("results") or [{"status": 429}] * len(ops)
        assert all(r["status"] in (200, 201, 429, 503) for r in results), body
        ops = [op for op, r in zip(ops, results, strict=True) if r["status"] in (429, 503)]
        if not ops:
            return
        assert time.monotonic() < deadline, f"{len(ops)} puts still refused after {REFUSED_FOR_S_MAX} s: {body}"
        time.sleep(pause)  # noqa: ASYNC251 (a back-off between attempts, not a sync)
        pause = min(2 * pause, 1.0)


def _growth_under_load(cluster: Cluster) -> dict[str, int]:
    """Load LOAD_BYTES through every node; each node's peak RSS minus its RSS before."""
    pids = {n: cluster.procs[n].pid for n in cluster.node_ids}
    _batch(cluster, "n1", 10**9)  # warm: every code path loaded once
    before = {n: _rss(p) for n, p in pids.items()}
    peak = dict(before)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            for n, p in pids.items():
                peak[n] = max(peak[n], _rss(p))
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    batches = LOAD_BYTES // (VALUE_BYTES * BATCH)
    workers = []
    failures: list[BaseException] = []
    per_worker = batches // 4
    for w in range(4):
        def run(w: int = w) -> None:
            try:
                for b in range(per_worker):
                    _batch(cluster, cluster.node_ids[(w + b) % 3], (w * per_worker + b) * BATCH)
            except BaseException as e:  # the test reports it, with the load's own words
                failures.append(e)
        workers.append(threading.Thread(target=run))
    try:
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        if failures:
            raise failures[0]
        time.sleep(0.3)  # one more sample after the last write  # noqa: ASYNC251 (a sampling period, not a sync)
    finally:
        done.set()
        sampler.join()
    return {n: peak[n] - before[n] for n in pids}


def _allowed(storage: dict[str, int], log_bytes: int) -> int:
    return (storage["memtable_bytes_max"] + storage["block_cache_bytes"] + SHARDS * (log_bytes + INDEX_BYTES)
            + MARGIN_BYTES)


def _load_cluster(tmp_path: Path, storage: dict[str, int], log_bytes: int) -> dict[str, int]:
    cluster = Cluster(tmp_path, shards=SHARDS, storage=storage, raft={"log_compaction_bytes": log_bytes},
                      indexing=INDEXING)
    try:
        cluster.start_all()
        return _growth_under_load(cluster)
    finally:
        cluster.stop_all()


def test_resident_memory_stays_within_the_budgets(tmp_path: Path) -> None:
    growth = _load_cluster(tmp_path, BOUNDED, BOUNDED_LOG_BYTES)
    allowed = _allowed(BOUNDED, BOUNDED_LOG_BYTES)
    assert all(g < allowed for g in growth.values()), {n: round(g / MIB) for n, g in growth.items()}


@pytest.mark.slow
def test_control_budgets_as_large_as_the_old_defaults_break_the_same_check(tmp_path: Path) -> None:
    growth = _load_cluster(tmp_path, {"memtable_bytes_max": 512 * MIB, "block_cache_bytes": 4 * MIB}, 64 * MIB)
    allowed = _allowed(BOUNDED, BOUNDED_LOG_BYTES)
    assert max(growth.values()) > allowed, {n: round(g / MIB) for n, g in growth.items()}
