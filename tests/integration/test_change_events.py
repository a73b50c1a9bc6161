"""Change events from a real node: two node processes plus one node run in the
test's own event loop (the subscription interface is node-local), real Raft
between them, real RocksDB. A subscriber sees exactly the writes, overwrites,
deletes and expiries, in log order with the writes' own indexes, and a restart
replays the journal without emitting anything twice."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp

from raftmem.config import load
from raftmem.events import Change, ChangeKind, Subscription
from raftmem.node import Node

from .cluster import Cluster

NS = "events"
DEADLINE_S = 60.0


async def _request(session: aiohttp.ClientSession, base: str, method: str, path: str,
                   body: Any = None) -> tuple[int, Any]:
    async with session.request(method, base + path, json=body, timeout=aiohttp.ClientTimeout(total=15)) as resp:
        return resp.status, await resp.json(content_type=None)


async def _until(condition: Any, what: str, timeout_s: float = DEADLINE_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def _ready(session: aiohttp.ClientSession, base: str) -> bool:
    try:
        status, _ = await _request(session, base, "GET", "/readyz")
    except (aiohttp.ClientError, TimeoutError):
        return False
    return status == 200


async def _take(sub: Subscription, count: int, what: str) -> list[Change]:
    got: list[Change] = []
    deadline = time.monotonic() + DEADLINE_S
    while len(got) < count and time.monotonic() < deadline:
        change = await sub.get(0.2)
        if change is not None and change.namespace == NS:
            got.append(change)
    assert len(got) == count, f"{what}: got {got}"
    return got


async def test_a_subscriber_sees_each_applied_change_once_across_a_restart(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, shards=2)
    config = load(cluster.config_path)
    base = f"http://127.0.0.1:{cluster.http['n1']}"
    cluster.start("n2")
    cluster.start("n3")
    node = Node(config, "n1")
    sub = node.feed.subscribe()
    stopped = False
    try:
        await node.start()
        async with aiohttp.ClientSession() as session:
            await _until(lambda: _ready(session, base), "n1 ready")
            tokens = []
            for method, mid, body in [
                ("PUT", "a", {"content": 1}),
                ("PUT", "a", {"content": 2}),
                ("DELETE", "a", None),
                ("PUT", "b", {"content": 3, "ttl_s": 1}),
            ]:
                status, answer = await _request(session, base, method, f"/v1/memories/{NS}/{mid}", body)
                assert status in (200, 201), answer
                tokens.append(answer["token"])
            seen = await _take(sub, 5, "four writes and one expiry")
            # In log order per shard (a and b may live on different shards, whose
            # entries this replica applies independently).
            of_a = [c for c in seen if c.id == "a"]
            of_b = [c for c in seen if c.id == "b"]
            assert [(c.kind, c.version) for c in of_a] == [
                (ChangeKind.PUT, 1), (ChangeKind.PUT, 2), (ChangeKind.DELETE, 2)]
            assert [(c.kind, c.version) for c in of_b] == [(ChangeKind.PUT, 1), (ChangeKind.EXPIRE, 1)]
            # Each write's event carries that write's own Raft index (its token).
            assert [c.token for c in of_a + of_b[:1]] == tokens
            assert of_a[1].before is not None and of_a[1].before["content"] == 1 and of_a[1].after["content"] == 2
            assert of_b[1].index > of_b[0].index
            last = {c.shard: c.index for c in seen}
        await node.stop()
        stopped = True

        # Restart on the same data: the journal is re-applied (pysyncobj starts
        # applying at index 2 again); the state machine skips what it has, so a
        # subscriber open from before the start sees nothing of it.
        again = Node(config, "n1")
        sub2 = again.feed.subscribe()
        try:
            await again.start()
            async with aiohttp.ClientSession() as session:
                await _until(lambda: _ready(session, base), "n1 ready again")

                async def replayed() -> bool:
                    _, view = await _request(session, base, "GET", "/v1/cluster")
                    return all(view["shards"][s]["applied_index"] >= i for s, i in last.items())

                await _until(replayed, "n1 to re-apply its journal past the old events")
                status, answer = await _request(session, base, "PUT", f"/v1/memories/{NS}/c", {"content": 4})
                assert status == 201, answer
                fresh = await _take(sub2, 1, "the one new write")
                assert [(c.kind, c.id, c.token) for c in fresh] == [(ChangeKind.PUT, "c", answer["token"])]
                assert fresh[0].index > last.get(fresh[0].shard, 0)
                assert sub2.pending() == 0
        finally:
            await again.stop()
    finally:
        if not stopped:
            await node.stop()
        cluster.stop_all()
