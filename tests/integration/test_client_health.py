"""Health-aware routing against real nodes: with one node paused by SIGSTOP
(it accepts connections and never answers), the client's stale-tolerant reads
keep succeeding well within their deadline, by backing the node off; after
SIGCONT a probe brings it back and reads go to it again."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from raftmem.client import AsyncClient, AsyncSession, RetryPolicy

from .cluster import Cluster, wait_for

NS = "health"
READ_S_MAX = 4.0  # each read, with the paused node in the way, finishes within this


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path)
    try:
        c.start_all()
        yield c
    finally:
        for node in c.node_ids:
            if c.alive(node):
                c.procs[node].send_signal(signal.SIGCONT)
        c.stop_all()


async def _reads(client: AsyncClient, session: AsyncSession, count: int) -> list[float]:
    """`count` rounds of eventual, bounded and session reads; each one's seconds."""
    took = []
    for i in range(count):
        mid = f"k{i % 4}"
        for level in ("eventual", "bounded", "session"):
            started = time.monotonic()
            if level == "session":
                memory = await session.get(NS, mid)
            else:
                memory = await client.get(NS, mid, consistency=level, max_staleness_ms=5000 if level == "bounded" else None)
            assert memory["id"] == mid
            took.append(time.monotonic() - started)
    return took


async def test_stale_tolerant_reads_route_around_a_paused_node_and_come_back(cluster: Cluster) -> None:
    urls = [f"http://127.0.0.1:{cluster.http[n]}" for n in cluster.node_ids]
    async with AsyncClient(urls, retry=RetryPolicy(attempts_max=5, deadline_s=8.0)) as client:
        session = client.session()
        for i in range(4):
            await session.put(NS, f"k{i}", i)
        for node in cluster.node_ids:  # every replica has them: eventual reads find them
            for i in range(4):
                wait_for(lambda n=node, k=f"k{i}": cluster.request(
                    n, "GET", f"/v1/memories/{NS}/{k}?consistency=eventual")[0] == 200, 20, f"{node} has k{i}")
        await _reads(client, session, 8)
        assert all(client.health()[u]["answered"] > 0 for u in urls)  # every node measured
        # Pause the node the client likes best: it is in two pairs of three, and
        # wins each, so the reads certainly meet it.
        paused = min(urls, key=lambda u: client.health()[u]["latency_ms"])
        victim = cluster.node_ids[urls.index(paused)]

        cluster.procs[victim].send_signal(signal.SIGSTOP)
        took = await _reads(client, session, 10)
        assert max(took) < READ_S_MAX, took
        health = client.health()[paused]
        assert not health["usable"] and health["failed"] >= 1
        answered_while_paused = health["answered"]

        cluster.procs[victim].send_signal(signal.SIGCONT)

        async def back() -> bool:
            await _reads(client, session, 2)
            return bool(client.health()[paused]["answered"] > answered_while_paused + 2)

        deadline = time.monotonic() + 30
        while not await back():
            assert time.monotonic() < deadline, client.health()
    wait_for(lambda: cluster.ready(victim), 30, f"{victim} ready after SIGCONT")
