"""The engine host (raftmem/indexing/host.py) on real node processes: the
node's tantivy and usearch engines run in a process of their own; killed
with -9 under writes, it is replaced, every replica opens its engines again
from their durable watermarks, and the indexes match the store afterwards.

The negative control (`debug.unsafe_engines_resume_claimed`) resumes from
what the replicas had claimed instead: the vectors absorbed since the last
save died with the host, and the same check reports them missing."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from .cluster import Cluster, wait_for
from .test_recall_recovery import SLOW_BATCHES, checks, consistent, loading, quiesce


def engine_host(c: Cluster, node: str) -> dict[str, Any]:
    status, _, body = c.request(node, "GET", "/v1/admin/indexes")
    assert status == 200, body
    host: dict[str, Any] = body["engine_host"]
    return host


def absorbed_some(c: Cluster, node: str) -> bool:
    """Every replica's indexes claim some changes (search-idle replicas absorb
    every idle_batch_ms, 5 s here: the first batches take a few seconds)."""
    status, _, body = c.request(node, "GET", "/v1/admin/indexes")
    return status == 200 and all(s["ready"] and s["documents"] for s in body["shards"].values())


def all_ready(c: Cluster, node: str) -> bool:
    status, _, body = c.request(node, "GET", "/v1/admin/indexes")
    return status == 200 and all(s["ready"] and s["engine_restarts"] >= 1 for s in body["shards"].values())


@pytest.mark.parametrize("control", [False, True], ids=["recovered", "resume-claimed-negative-control"])
def test_a_killed_engine_host_is_replaced_and_the_indexes_match_the_store(tmp_path: Path, control: bool) -> None:
    c = Cluster(tmp_path, indexing=SLOW_BATCHES, debug={"unsafe_engines_resume_claimed": True} if control else None)
    try:
        c.start_all()
        first = engine_host(c, "n1")
        assert first["alive"] and first["restarts"] == 0 and first["pid"] != c.procs["n1"].pid
        # The load stops with the kill: writes after it would put back every
        # memory's vector and hide what the control loses.
        with loading(c) as counter:
            wait_for(lambda: counter[0] > 15, 30, "load under way")
            wait_for(lambda: absorbed_some(c, "n1"), 60, "indexes that hold documents")
            mark = counter[0]
            wait_for(lambda: counter[0] > mark + 5, 30, "more writes, waiting in the queues")
            os.kill(first["pid"], signal.SIGKILL)  # vectors absorbed and not saved (checkpoint_s: an hour)
        again = wait_for(lambda: (h := engine_host(c, "n1"))["restarts"] == 1 and h["alive"] and h, 30,
                         "a new engine host")
        assert again["pid"] != first["pid"]
        wait_for(lambda: all_ready(c, "n1"), 60, "every replica's engines open again")
        quiesce(c)
        results = checks(c, "n1")
        assert all(b["store"] > 0 for b in results)
        if control:
            assert not all(consistent(b) for b in results), [(b["watermark"], b["vectors"]) for b in results]
            return
        for body in results:
            assert body["watermark"] >= body["applied"] and consistent(body), body
        status, _, answer = c.request("n1", "POST", "/v1/search", {"namespace": "crash", "query": "alpha",
                                                                    "vector": [0.2, 0.9, 1.0], "limit": 5})
        assert status == 200 and answer["items"], answer
    finally:
        c.stop_all()
