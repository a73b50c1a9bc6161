"""Sessions (read-your-writes tokens), list pagination, and the blocking Client,
against an in-process fake cluster."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from raftmem.client import AsyncClient, Client, NotFound, RetryPolicy, shard_for
from tests.unit.fake_raftmem import SHARDS, FakeCluster, Fault


@pytest.fixture
async def fake() -> AsyncIterator[FakeCluster]:
    cluster = await FakeCluster().start()
    yield cluster
    await cluster.close()


async def test_session_reads_carry_the_sessions_token_for_that_shard(fake: FakeCluster) -> None:
    async with AsyncClient(fake.url_list()) as client:
        session = client.session()
        written = await session.put("ns", "a", 1)
        shard = shard_for("ns", "a", SHARDS)
        assert session.tokens == {shard: int(written["token"].split(":")[1])}
        await client.put("ns", "b", 2)  # outside the session: not remembered
        fake.seen.clear()
        assert (await session.get("ns", "a"))["content"] == 1
        read = fake.data_requests()[0]
        assert read.query == {"consistency": "session", "after": written["token"]}


async def test_session_reads_are_monotonic_and_learn_from_not_found(fake: FakeCluster) -> None:
    async with AsyncClient(fake.url_list()) as client:
        session = client.session()
        other = next(f"k{i}" for i in range(1000) if shard_for("ns", f"k{i}", SHARDS) == shard_for("ns", "a", SHARDS))
        await client.put("ns", other, 1)  # advances the shard's index: the read header carries it
        with pytest.raises(NotFound):
            await session.get("ns", "a")
        shard = shard_for("ns", "a", SHARDS)
        assert session.tokens[shard] == fake.index[shard]
        await client.put("ns", "a", 5)
        await session.get("ns", "a")
        assert session.tokens[shard] == fake.index[shard]


async def test_session_delete_and_create_advance_the_session(fake: FakeCluster) -> None:
    async with AsyncClient(fake.url_list()) as client:
        session = client.session()
        await session.put("ns", "a", 1)
        deleted = await session.delete("ns", "a")
        shard, index = map(int, deleted["token"].split(":"))
        assert session.tokens[shard] == index
        created = await session.create("ns", "hello")
        shard, index = map(int, created["token"].split(":"))
        assert session.tokens[shard] == index


async def test_list_follows_cursors_and_stops_at_max_items(fake: FakeCluster) -> None:
    async with AsyncClient(fake.url_list()) as client:
        for i in range(7):
            await client.put("ns", f"m{i}", i)
        await client.put("other", "x", 0)
        ids = [m["id"] async for m in client.list("ns", page_size=3)]
        assert ids == [f"m{i}" for i in range(7)]
        pages = [s for s in fake.data_requests() if s.method == "GET"]
        assert [p.query.get("cursor") for p in pages] == [None, "m2", "m5"]
        assert [m["id"] async for m in client.list("ns", page_size=3, max_items=4)] == ["m0", "m1", "m2", "m3"]


@pytest.fixture
def fake_in_thread() -> Iterator[FakeCluster]:
    """The fake on its own loop thread, so a blocking Client can call it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cluster = asyncio.run_coroutine_threadsafe(FakeCluster().start(), loop).result()
    try:
        yield cluster
    finally:
        asyncio.run_coroutine_threadsafe(cluster.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def test_the_blocking_client(fake_in_thread: FakeCluster) -> None:
    fake = fake_in_thread
    with Client(fake.url_list()) as client:
        assert client.put("ns", "a", {"x": 1}, tags=["t"])["version"] == 1
        assert client.put("ns", "a", {"x": 2}, if_match=1)["version"] == 2
        assert client.get("ns", "a")["content"] == {"x": 2}
        assert client.create("ns", "c")["id"].startswith("i-")
        assert [m["id"] for m in client.list("ns", page_size=1)] == sorted(k for (n, k) in fake.data if n == "ns")
        assert client.list_page("ns", limit=1)["count"] == 1
        assert client.delete("ns", "a")["deleted"] is True
        with pytest.raises(NotFound):
            client.get("ns", "a")
        assert [r.status for r in client.batch([{"op": "get", "namespace": "ns", "id": "z"}])] == [200]
        assert client.cluster()["shard_count"] == SHARDS
        session = client.session()
        token = session.put("ns", "s", 1)["token"]
        assert session.get("ns", "s")["token"] == token
        assert client.routes.loaded
    client.close()  # closing twice is harmless
    with pytest.raises(RuntimeError):
        client.get("ns", "a")


def test_the_blocking_client_rejects_bad_arguments_and_cleans_up() -> None:
    with pytest.raises(ValueError):
        Client([])


async def test_a_session_read_right_after_its_write_goes_to_the_leader_and_later_to_any_replica(
    fake: FakeCluster,
) -> None:
    now = [100.0]
    async with AsyncClient(fake.url_list(), clock=lambda: now[0]) as client:
        session = client.session()
        for key in [f"k{i}" for i in range(10)] + ["a"]:
            await session.put("ns", key, 1)
            leader = fake.leaders[shard_for("ns", key, SHARDS)]
            fake.seen.clear()
            await session.get("ns", key)
            (read,) = fake.data_requests()
            assert read.node == leader and read.query["consistency"] == "session", key
        now[0] += 5.0  # long after the write: any replica may serve it (the healthiest)
        picks = set()
        for _ in range(20):
            fake.seen.clear()
            await session.get("ns", "a")
            picks.add(fake.data_requests()[0].node)
        assert picks - {leader}, "a later session read is not pinned to the leader"


async def test_a_session_read_sent_to_a_hung_leader_moves_on_to_a_replica_in_time(fake: FakeCluster) -> None:
    """Right after a write the session prefers the leader, but the read stays
    stale-tolerant: a hung leader costs one short attempt, not the deadline."""
    async with AsyncClient(fake.url_list(), retry=RetryPolicy(attempts_max=5, deadline_s=6.0)) as client:
        session = client.session()
        await session.put("ns", "a", 1)
        leader = fake.leaders[shard_for("ns", "a", SHARDS)]
        fake.always = Fault(delay_s=60.0, node=leader)  # accepts, never answers in time
        fake.seen.clear()
        assert (await session.get("ns", "a"))["content"] == 1
        nodes = [seen.node for seen in fake.data_requests()]
        assert nodes[0] == leader and nodes[-1] != leader, nodes
