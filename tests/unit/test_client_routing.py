"""Shard-aware routing against an in-process fake cluster: writes and strong reads
go straight to the shard leader, stale-tolerant reads spread over nodes, and the
leader table follows the cluster."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import pytest

from raftmem.client import AsyncClient, ConnectionFailed, RetryPolicy, shard_for
from tests.unit.fake_raftmem import SHARDS, FakeCluster, Fault, free_port


class FakeTime:
    """Injected time: `sleep` records the pause and advances `now` at once."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.delays: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay_s: float) -> None:
        self.delays.append(delay_s)
        self.now += delay_s


def key_in_shard(shard: int, ns: str = "ns") -> str:
    return next(f"k{i}" for i in range(10_000) if shard_for(ns, f"k{i}", SHARDS) == shard)


@pytest.fixture
async def fake() -> AsyncIterator[FakeCluster]:
    cluster = await FakeCluster().start()
    yield cluster
    await cluster.close()


def make_client(fake: FakeCluster, time: FakeTime | None = None, **kw: object) -> AsyncClient:
    time = time or FakeTime()
    kw.setdefault("sleep", time.sleep)
    kw.setdefault("clock", time.clock)
    kw.setdefault("rng", random.Random(0))
    return AsyncClient(fake.url_list()[:1], **kw)  # type: ignore[arg-type]


async def test_writes_and_strong_reads_go_to_the_shard_leader(fake: FakeCluster) -> None:
    async with make_client(fake) as client:
        for shard in range(SHARDS):
            mid = key_in_shard(shard)
            await client.put("ns", mid, {"v": shard})
            await client.get("ns", mid, consistency="strong")
            await client.get("ns", mid, consistency="linearizable")
            await client.get("ns", mid)  # the server's default policy: leader-bound
            await client.delete("ns", mid)
            leader = fake.leaders[shard]
            assert [s.node for s in fake.data_requests()] == [leader] * 5
            fake.seen.clear()
    assert fake.cluster_calls == 1  # loaded once, never needed again


async def test_stale_tolerant_reads_and_lists_spread_over_nodes(fake: FakeCluster) -> None:
    mid = key_in_shard(0)
    async with make_client(fake) as client:
        await client.put("ns", mid, 1)
        fake.seen.clear()
        for _ in range(6):
            await client.get("ns", mid, consistency="eventual")
        for _ in range(3):
            await client.list_page("ns")
    nodes = [s.node for s in fake.data_requests()]
    assert set(nodes) == set(fake.node_ids)


async def test_routing_can_be_turned_off(fake: FakeCluster) -> None:
    async with make_client(fake, route_direct=False) as client:
        await client.put("ns", key_in_shard(1), 1)
    assert fake.cluster_calls == 0
    assert fake.data_requests()[0].node == "n1"  # the only seed


async def test_a_forwarded_answer_corrects_the_leader_table(fake: FakeCluster) -> None:
    mid = key_in_shard(0)
    async with make_client(fake) as client:
        await client.put("ns", mid, 1)
        assert fake.data_requests()[-1].node == "n1"
        fake.leaders[0] = "n3"  # leadership moved; n1 now forwards to n3
        await client.put("ns", mid, 2)
        assert fake.data_requests()[-1].node == "n1"
        await client.put("ns", mid, 3)  # learnt from X-Raftmem-Served-By: straight to n3
        assert fake.data_requests()[-1].node == "n3"
    assert fake.cluster_calls == 1


async def test_no_leader_refreshes_the_table_and_retries(fake: FakeCluster) -> None:
    mid = key_in_shard(0)
    time = FakeTime()
    async with make_client(fake, time) as client:
        await client.put("ns", mid, 1)
        fake.leaders[0] = "n2"
        fake.faults.append(Fault(503, headers={"Retry-After": "0.5"}, node="n1"))
        time.now += 10
        await client.put("ns", mid, 2)
        attempts = fake.data_requests()[1:]
        assert [s.node for s in attempts] == ["n1", "n2"]
        # The same logical write: the same key on every attempt.
        assert attempts[0].headers["Idempotency-Key"] == attempts[1].headers["Idempotency-Key"]
    assert fake.cluster_calls == 2
    assert time.delays == [0.5]  # the server's Retry-After (under the policy's cap)


async def test_a_dead_leader_is_skipped(fake: FakeCluster) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    fake.extra_nodes["n4"] = dead
    fake.leaders[0] = "n4"
    mid = key_in_shard(0)
    async with make_client(fake) as client:
        await client.put("ns", mid, 1)
        assert client.stats["attempts"] == 2  # refused at n4, then any live node
        fake.seen.clear()
        await client.put("ns", mid, 2)  # n4 is in its cooldown: not tried again
        assert client.stats["attempts"] == 3
    assert fake.data_requests()[0].node in fake.node_ids


async def test_a_write_without_a_key_is_not_retried_even_when_refused(fake: FakeCluster) -> None:
    fake.extra_nodes["n4"] = f"http://127.0.0.1:{free_port()}"
    fake.leaders[0] = "n4"
    async with make_client(fake, idempotent=False) as client:
        with pytest.raises(ConnectionFailed) as info:
            await client.put("ns", key_in_shard(0), 1)
        assert info.value.retryable and info.value.status == 0
        assert client.stats["attempts"] == 1


async def test_the_cluster_map_is_asked_of_other_seeds(fake: FakeCluster) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    time = FakeTime()
    client = AsyncClient([dead, fake.urls["n2"]], sleep=time.sleep, clock=time.clock, retry=RetryPolicy(attempts_max=3))
    async with client:
        await client.put("ns", key_in_shard(2), 1)
    assert client.routes.loaded
    assert fake.data_requests()[0].node == fake.leaders[2]


async def test_cluster_call_refreshes_routes(fake: FakeCluster) -> None:
    async with make_client(fake) as client:
        body = await client.cluster()
        assert body["shard_count"] == SHARDS
        assert client.routes.leaders == fake.leaders
