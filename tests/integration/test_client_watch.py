"""The Python clients' watch() against real nodes: the node it streams from is
killed, and it goes on from another with no gap and no duplicate; the blocking
client watches, reads a history, writes an actor and a sliding TTL; a resume
from saved tokens sees exactly what came after them."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from raftmem.client import AsyncClient, Client, Compacted, WatchEvent

from .cluster import Cluster


def _urls(c: Cluster) -> list[str]:
    return [f"http://127.0.0.1:{c.http[n]}" for n in c.node_ids]


async def test_watch_goes_on_from_another_node_when_its_node_is_killed(tmp_path: Path) -> None:
    c = Cluster(tmp_path, shards=2)
    try:
        c.start_all()
        async with AsyncClient(_urls(c)) as client:
            watch = client.watch(namespace="kw", after="0:0,1:0", progress_ms=200)
            got: list[WatchEvent] = []

            async def take_until(count: int) -> None:
                while len(got) < count:
                    item = await asyncio.wait_for(watch.__anext__(), 60)
                    assert isinstance(item, WatchEvent)
                    got.append(item)

            for i in range(5):
                await client.put("kw", f"a{i}", i)
            await take_until(5)
            victim = watch.served_by
            assert victim is not None
            await asyncio.to_thread(c.kill, victim)
            for i in range(5):
                await client.put("kw", f"b{i}", i)
            await take_until(10)
            assert watch.served_by != victim and watch.reconnects >= 1
            keys = [(e.shard, e.index, e.seq) for e in got]
            assert len(keys) == len(set(keys))
            assert sorted(e.id for e in got) == sorted([f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)])
            saved = watch.tokens
            await watch.close()
            # Later, from the saved tokens: exactly what came after.
            await client.put("kw", "c0", 0)
            again = client.watch(namespace="kw", after=saved)
            item = await asyncio.wait_for(again.__anext__(), 30)
            assert isinstance(item, WatchEvent) and item.id == "c0"
            await again.close()
    finally:
        c.stop_all()


async def test_many_watches_on_one_connection_go_on_from_another_node_each_from_its_tokens(tmp_path: Path) -> None:
    c = Cluster(tmp_path, shards=2)
    try:
        c.start_all()
        async with AsyncClient(_urls(c)) as client:
            for i in range(3):
                await client.put("kg", f"early{i}", i)
            zero = "0:0,1:0"
            group = client.watch_many({"all": {"namespace": "kg", "after": zero},
                                       "hot": {"namespace": "kg", "tag": "hot", "after": zero},
                                       "other": {"namespace": "kg-other", "after": zero}}, progress_ms=200)
            got: dict[str, list[WatchEvent]] = {"all": [], "hot": [], "other": []}

            async def take_until(count: dict[str, int]) -> None:
                while any(len(got[w]) < n for w, n in count.items()):
                    watch_id, item = await asyncio.wait_for(group.__anext__(), 60)
                    assert isinstance(item, WatchEvent)
                    got[watch_id].append(item)

            for i in range(4):
                await client.put("kg", f"a{i}", i, tags=["hot"] if i % 2 else [])
            await take_until({"all": 7, "hot": 2})
            victim = group.served_by
            assert victim is not None
            await asyncio.to_thread(c.kill, victim)
            for i in range(4):
                await client.put("kg", f"b{i}", i, tags=["hot"] if i % 2 else [])
            await client.put("kg-other", "o", 1)
            await take_until({"all": 11, "hot": 4, "other": 1})
            assert group.served_by != victim and group.reconnects >= 1
            for watch_id, events in got.items():
                keys = [(e.shard, e.index, e.seq) for e in events]
                assert len(keys) == len(set(keys)), watch_id
            assert sorted(e.id for e in got["all"]) == sorted(
                [f"early{i}" for i in range(3)] + [f"a{i}" for i in range(4)] + [f"b{i}" for i in range(4)])
            assert sorted(e.id for e in got["hot"]) == ["a1", "a3", "b1", "b3"]
            assert [e.id for e in got["other"]] == ["o"]
            saved = group.tokens
            await group.close()
            # Later, from each watch's saved tokens: exactly what came after.
            await client.put("kg", "c0", 0, tags=["hot"])
            again = client.watch_many({w: {"after": t, "namespace": "kg"} | ({"tag": "hot"} if w == "hot" else {})
                                       for w, t in saved.items() if w != "other"})
            later = [await asyncio.wait_for(again.__anext__(), 30) for _ in range(2)]
            assert sorted((w, e.id) for w, e in later if isinstance(e, WatchEvent)) == [("all", "c0"), ("hot", "c0")]
            await again.close()
    finally:
        c.stop_all()


def test_the_blocking_client_watches_and_reads_histories(tmp_path: Path) -> None:
    c = Cluster(tmp_path, shards=1, sections={"watch": {"retention_entries": 40}})
    try:
        c.start_all()
        with Client(_urls(c)) as client:
            first = client.put("sw", "m", "one", actor="planner", ttl_s=60, ttl_refresh_on_read=True)
            client.put("sw", "m", "two", actor="worker")
            client.delete("sw", "m", actor="janitor")
            history = client.history("sw", "m")
            assert [(v["event"], v["actor"]) for v in history] == [
                ("delete", "janitor"), ("put", "worker"), ("put", "planner")]
            assert first["ttl_refresh_on_read"] is True and first["actor"] == "planner"
            seen: list[WatchEvent] = []
            tokens: list[str] = []

            def watch() -> None:
                for item in client.watch(namespace="sw", after="0:0", tokens_out=tokens):
                    assert isinstance(item, WatchEvent)
                    seen.append(item)
                    if len(seen) == 3:
                        return

            thread = threading.Thread(target=watch, daemon=True)
            thread.start()
            thread.join(60)
            assert [(e.type, e.id) for e in seen] == [("put", "m"), ("put", "m"), ("delete", "m")]
            assert tokens and all(":" in t for t in tokens[0].split(","))
            # Past the (tiny) retention, a resume from the start raises Compacted.
            for i in range(400):
                client.put("sw", f"f{i}", i)
            try:
                next(iter(client.watch(after="0:1")))
            except Compacted as e:
                assert e.oldest
            else:
                raise AssertionError("a resume from before the retention did not raise Compacted")
            try:  # one watch of many from before it: Compacted, naming it
                next(iter(client.watch_many({"new": {}, "old": {"after": "0:1"}})))
            except Compacted as e:
                assert e.oldest and e.body["error"]["watch"] == "old"
            else:
                raise AssertionError("a watch among many from before the retention did not raise Compacted")
    finally:
        c.stop_all()
