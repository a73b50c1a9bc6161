"""The pure parts of watch: filters, request parsing (a clear 400 for every bad
input), events the same whether read from the change log or the live feed,
entries grouped with their seq, the shared encoding cache, who may watch."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from raftmem.auth import Authenticator, need_for
from raftmem.commands import Delete, MemoryFields, Put, encode_entry
from raftmem.config import ApiToken, AuthConfig, embedded_default
from raftmem.errors import Forbidden, InvalidRequest
from raftmem.events import Change, ChangeFeed, ChangeKind, ChangePage
from raftmem.membership import Table
from raftmem.service import Call, watchfanout
from raftmem.service.leaders import Router
from raftmem.service.watch import Watches
from raftmem.service.watchstream import (
    EventCache,
    Framing,
    WatchFilter,
    WatchRequest,
    WatchStream,
    _Item,
    entries,
    event_body,
)
from raftmem.statemachine import StateMachine
from raftmem.storage import Store

NOW = 1_763_700_000_000


def _watches() -> Watches:
    config = embedded_default()
    router = Router(config, "n1", {}, Table.seed(config), forwarder=None)  # type: ignore[arg-type]
    return Watches(config, router, ChangeFeed(), forwarder=None)  # type: ignore[arg-type]


def test_filters_judge_the_changes_record() -> None:
    rec = {"namespace": "team-a", "agent_id": "al", "tags": ["hot"]}
    assert WatchFilter().matches(rec)
    assert WatchFilter(namespace="team-a", agent_id="al", tag="hot").matches(rec)
    assert WatchFilter(namespace_prefix="team-").matches(rec)
    assert not WatchFilter(namespace="team").matches(rec)
    assert not WatchFilter(tag="cold").matches(rec)
    assert not WatchFilter(agent_id="bo").matches(rec)
    assert not WatchFilter().matches(None)


@pytest.mark.parametrize("query", [
    {"colour": "red"}, {"after": "nope"}, {"after": "8:1"}, {"after": "0:-1"}, {"after": "0:1:2"},
    {"namespace": "a b"}, {"namespace_prefix": ".."},
    {"progress_ms": "x"}, {"progress_ms": "1"}, {"progress_ms": "999999999"}, {"require_leader": "yes"},
    {"tag": "a\nb"}, {"agent_id": "\x00"}, {"agent_id": "a" * 257},
])
def test_bad_watch_requests_are_invalid(query: dict[str, str]) -> None:
    with pytest.raises(InvalidRequest):
        _watches().parse(Call("GET", "/v1/watch", query))


def test_filters_given_together_must_all_hold() -> None:
    """A namespace and a prefix together (refused before) are a conjunction, like
    any other two filters: the namespace's changes, if it has the prefix."""
    both = _watches().parse(Call("GET", "/v1/watch", {"namespace": "team-a", "namespace_prefix": "team"})).filter
    assert both.matches({"namespace": "team-a"}) and not both.matches({"namespace": "team-b"})
    never = _watches().parse(Call("GET", "/v1/watch", {"namespace": "team-a", "namespace_prefix": "x"})).filter
    assert not never.matches({"namespace": "team-a"})


def test_a_good_request() -> None:
    request = _watches().parse(Call("GET", "/v1/watch", {"namespace": "a", "after": "0:5,3:7,0:9",
                                                         "require_leader": "true", "progress_ms": "250"},
                                    {"Accept": "application/x-ndjson"}))
    assert request.after == {0: 9, 3: 7} and request.require_leader and request.framing is Framing.NDJSON
    assert request.progress_ms == 250 and request.filter == WatchFilter(namespace="a")


def test_an_event_is_the_same_from_the_feed_and_from_the_change_log(tmp_path: Path) -> None:
    published: list[Change] = []
    sm = StateMachine(Store(tmp_path), shard=2, publish=published.extend, events_retention=100)
    put = Put("ns", "a", MemoryFields(content=1), now_ms=NOW)
    sm.apply(1, encode_entry([put]))
    sm.apply(2, encode_entry([Put("ns", "a", MemoryFields(content=2), now_ms=NOW + 1),
                              Put("ns", "b", MemoryFields(content=3), now_ms=NOW + 1),
                              Delete("ns", "a", now_ms=NOW + 2)]))
    logged = sm.changes_after(0, 100).changes
    live = [(s, i, [(q, event_body(c, q)) for q, c in group]) for s, i, group in entries(published)]
    replayed = [(s, i, [(q, event_body(c, q)) for q, c in group]) for s, i, group in entries(logged)]
    assert live == replayed
    assert [(s, i, [q for q, _ in group]) for s, i, group in live] == [(2, 1, [0]), (2, 2, [0, 1, 2])]
    second_put = live[1][2][0][1]
    assert (second_put["type"], second_put["prev_version"], second_put["token"]) == ("put", 1, "2:2")
    assert live[1][2][2][1]["type"] == "delete" and live[1][2][2][1]["record"]["content"] == 2


def test_the_event_cache_is_bounded() -> None:
    cache: EventCache[tuple[int, int, int], bytes] = EventCache(len, size_max=2)
    made: list[int] = []
    for key in [(0, 1, 0), (0, 2, 0), (0, 1, 0), (0, 3, 0), (0, 1, 0)]:
        cache.get(key, lambda k=key: (made.append(k[1]), b"x")[1])  # type: ignore[misc]
    assert made == [1, 2, 3, 1]


def test_a_watch_needs_read_and_a_namespace_limited_token_must_name_one_of_its_namespaces() -> None:
    assert need_for("GET", "/v1/watch", {}, b"", {"namespace": "a"}).namespaces == frozenset({"a"})  # type: ignore[union-attr]
    everything = need_for("GET", "/v1/watch", {}, b"", {"namespace_prefix": "a"})
    assert everything is not None and everything.every_namespace and everything.role == "read"
    limited = ApiToken("t", "0" * 64, "read", ("a",))
    Authenticator.authorize(limited, need_for("GET", "/v1/watch", {}, b"", {"namespace": "a"}))
    with pytest.raises(Forbidden):
        Authenticator.authorize(limited, everything)
    with pytest.raises(Forbidden):
        Authenticator.authorize(limited, need_for("GET", "/v1/watch", {}, b"", {"namespace": "b"}))
    Authenticator.authorize(ApiToken("all", "1" * 64, "read"), everything)
    history = need_for("GET", "/v1/memories/a/x/history", {"namespace": "a", "id": "x"})
    assert history is not None and history.role == "read" and history.namespaces == frozenset({"a"})
    assert AuthConfig().enabled is False


def test_the_event_cache_is_bounded_in_bytes_too() -> None:
    cache: EventCache[tuple[int, int, int], bytes] = EventCache(len, size_max=100, bytes_max=10)
    for i in range(5):
        cache.get((0, i, 0), lambda: b"xxxx")
    assert cache.bytes <= 10 and len(cache._items) == 2


def test_an_entrys_framed_events_are_shared_by_streams_with_the_same_filter_and_framing() -> None:
    watches = _watches()
    rec = {"namespace": "a", "id": "x", "version": 1, "rev": 7, "tags": ["t"]}
    group = [(0, Change(ChangeKind.PUT, 1, 7, "a", "x", after=rec, prev_version=None)),
             (1, Change(ChangeKind.PUT, 1, 7, "b", "y", after={**rec, "namespace": "b", "id": "y"})),
             (2, Change(ChangeKind.DELETE, 1, 7, "a", "z", before={**rec, "id": "z", "version": 3}))]
    data, count = watches.entry_frames(1, 7, group, WatchFilter(namespace="a"), framing=Framing.NDJSON)
    lines = [orjson.loads(line) for line in data.splitlines()]
    assert count == 2 and [(e["id"], e["seq"], e.get("last")) for e in lines] == [("x", 0, None), ("z", 2, True)]
    assert watches.entry_frames(1, 7, group, WatchFilter(namespace="a"), framing=Framing.NDJSON)[0] is data  # shared
    sse, _ = watches.entry_frames(1, 7, group, WatchFilter(namespace="a"), framing=Framing.SSE)
    assert sse.startswith(b"data: ") and sse.count(b"\n\n") == 2
    items, _ = watches.entry_frames(1, 7, group, WatchFilter(namespace="a"), framing=Framing.ITEMS)
    assert [(e["id"], e.get("last")) for e in orjson.loads(b"[" + items[:-1] + b"]")] == [("x", None), ("z", True)]
    everything, all_count = watches.entry_frames(1, 7, group, WatchFilter(), framing=Framing.NDJSON)
    assert all_count == 3 and orjson.loads(everything.splitlines()[1]).get("last") is None
    assert watches.entry_frames(1, 7, group, WatchFilter(tag="none"), framing=Framing.NDJSON) == (b"", 0)


async def test_a_streams_queue_is_bounded_in_entries_and_bytes() -> None:
    from raftmem.service.watchstream import Outbox

    box = Outbox(entries_max=3, bytes_max=10)
    box.put_nowait(_Item([b"x" * 40], ((0, 1),)))  # alone, a large entry still goes in
    assert box.full() and box.full(1)
    assert box.get_nowait().positions == ((0, 1),) and box.empty() and box.bytes == 0
    for i in range(3):
        assert not box.full(2)
        box.put_nowait(_Item([b"a", b"b"], ((0, i),)))
    assert box.full()  # three entries
    waiting = asyncio.ensure_future(box.put(_Item([b"cd"], ((0, 9),))))
    await asyncio.sleep(0.01)
    assert not waiting.done()  # no room: a log reader waits
    box.get_nowait()
    await asyncio.wait_for(waiting, 2)
    assert [i.positions for i in box.items] == [((0, 1),), ((0, 2),), ((0, 9),)]


def test_the_openapi_document_describes_watch_history_and_the_lifecycle_run() -> None:
    from raftmem import openapi

    document = openapi.build(_watches().config)
    paths = document["paths"]
    watch = paths["/v1/watch"]["get"]
    assert {p["name"] for p in watch["parameters"]} == {
        "namespace", "namespace_prefix", "agent_id", "tag", "after", "progress_ms", "require_leader"}
    assert {"200", "400", "410", "429", "503"} <= set(watch["responses"])
    assert "get" in paths["/v1/memories/{namespace}/{id}/history"]
    assert "post" in paths["/v1/admin/lifecycle/run"]
    write = document["components"]["schemas"]["MemoryWrite"]["properties"]
    assert {"actor", "ttl_refresh_on_read"} <= set(write)


async def test_a_change_published_as_a_subscription_wait_times_out_is_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    """The race a jepsen halves run hit: the wait times out in the very loop
    iteration a burst is published (a partition heals, a follower applies a
    hundred entries). Told None then, a watch took everything applied as seen
    and skipped the burst."""
    from raftmem import events

    feed = ChangeFeed()
    sub = feed.subscribe()
    change = Change(ChangeKind.PUT, 0, 7, "ns", "a", after={"version": 1})
    real_settle = events.settle_waiter
    published = []

    def published_as_it_times_out(waiter: asyncio.Future[None]) -> None:
        if not published:  # the wait's timer fires, and the burst comes in the same iteration
            published.append(True)
            feed.publish([change])
        real_settle(waiter)

    monkeypatch.setattr(events, "settle_waiter", published_as_it_times_out)
    assert await sub.get(0.01) is change


class _Replica:
    """A replica of shard 0 as a stream sees it: its applied index, and a
    change log read through `read` as the Shard port does."""

    shard = 0

    def __init__(self, applied_index: int = 0) -> None:
        self.applied_index = applied_index
        self.log: list[Change] = []

    def changes_after(self, after: int, limit: int) -> ChangePage:
        return ChangePage(0, [c for c in self.log if c.index > after], self.applied_index, complete=True)

    async def read(self, level: str, fn: Callable[[_Replica], ChangePage], **kw: object) -> tuple[ChangePage, None]:
        return fn(self), None

    def role(self) -> object:
        return types.SimpleNamespace(leading=True)


def _stream(replica: _Replica, feed: ChangeFeed, flt: WatchFilter | None = None, watches: Watches | None = None,
            **watch: Any) -> WatchStream:
    """A stream on a node whose only replica is `replica` (`router.replicas`
    says which it holds), with these watch settings, or another stream of `watches`."""
    if watches is None:
        base = embedded_default()
        config = dataclasses.replace(base, watch=dataclasses.replace(base.watch, **watch))
        replicas = {0: replica}
        router = types.SimpleNamespace(local=replicas.get, replicas=replicas, node_id="n1", placement={})
        watches = Watches(config, router, feed, forwarder=None)  # type: ignore[arg-type]
    return WatchStream(watches, WatchRequest(flt or WatchFilter(), {}, 60_000, False, Framing.NDJSON), 0)


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_stream_never_moves_past_changes_still_queued() -> None:
    """The fan-out's guard: told None while changes wait in its subscription,
    it does not take the replica's applied index as seen for its streams."""
    feed = ChangeFeed()
    replica = _Replica(applied_index=5)
    stream = _stream(replica, feed)
    stream.pos = {0: 5}
    real_subscribe = feed.subscribe

    def subscribe(*args: object, **kw: object) -> object:
        sub = real_subscribe(*args, **kw)  # type: ignore[arg-type]
        real_get = sub.get
        told_none = []

        async def get(timeout_s: float | None = None) -> Change | None:
            change = await real_get(timeout_s)
            if change is not None and not told_none:
                told_none.append(True)
                sub._queue.appendleft(change)  # the old race: None, with the change still queued
                return None
            return change

        sub.get = get  # type: ignore[method-assign]
        return sub

    feed.subscribe = subscribe  # type: ignore[method-assign]
    stream.local = {0: replica}  # type: ignore[dict-item]
    driver = asyncio.ensure_future(stream._local())
    await asyncio.sleep(0.05)
    replica.applied_index = 6  # entry 6 applied and published: queued, not yet taken
    feed.publish([Change(ChangeKind.PUT, 0, 6, "ns", "a", after={"namespace": "ns", "id": "a", "version": 1,
                                                                  "rev": 6})])
    await until(lambda: not stream.queue.empty())
    driver.cancel()
    await asyncio.gather(driver, return_exceptions=True)
    assert [item.positions for item in stream.queue.items] == [((0, 6),)], "the change was skipped"


async def test_a_subscription_gathers_up_to_a_count_or_a_timeout() -> None:
    feed = ChangeFeed()
    sub = feed.subscribe(queue_max=8)
    waiting = asyncio.ensure_future(sub.gather(4, 30))
    for i in range(3):
        feed.publish([Change(ChangeKind.RESET, 0, i + 1)])
        await asyncio.sleep(0)
    assert not waiting.done()  # three changes do not wake it
    feed.publish([Change(ChangeKind.RESET, 0, 4)])
    await asyncio.wait_for(waiting, 2)
    await asyncio.wait_for(sub.gather(100, 0.01), 2)  # the timeout ends it
    sub.close()
    await asyncio.wait_for(sub.gather(100, 30), 2)  # closed: at once


@pytest.mark.parametrize("case", ["large records", "many entries", "many 3 KB entries"])
async def test_a_stream_that_keeps_up_is_never_cut_off_by_its_batches(case: str) -> None:
    """Entries that come within one batch_ms are handed over together: more
    bytes than the outbox holds (two records of 600 KB after a first, 1 MiB
    outbox), more changes than half what a stream may hold (40 entries, 16),
    or batches larger than a piece that go through the stream's driver (60
    entries of 3 KB, 64 KiB outbox), reach a client that keeps up, without
    `overflow`."""
    replica = _Replica()
    feed = ChangeFeed()
    count, size, watch = {"large records": (3, 600_000, {}), "many entries": (40, 10, {}),
                          "many 3 KB entries": (60, 3_000, {"buffer_bytes_max": 64 << 10})}[case]
    stream = _stream(replica, feed, WatchFilter(namespace="ns"), buffer_events_max=16, batch_ms=200, **watch)
    watches = stream.watches
    sent: list[bytes] = []

    async def start() -> None:
        stream.local, stream.pos = {0: replica}, {0: 0}  # type: ignore[dict-item]

    async def send(data: bytes) -> None:
        sent.append(data)

    running = asyncio.ensure_future(stream.run(start, send, lambda: True))
    await until(lambda: bool(feed._subscriptions))  # the driver follows the feed
    for index in range(1, count + 1):  # the first goes at once, the rest wait for the batch
        rec = {"namespace": "ns", "id": f"m{index}", "version": 1, "rev": index, "content": "x" * size}
        replica.applied_index = index
        feed.publish([Change(ChangeKind.PUT, 0, index, "ns", f"m{index}", after=rec)])
        await asyncio.sleep(0.001)
    await until(lambda: watches.stats.events == replica.applied_index or bool(watches.stats.ended))
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)
    assert watches.stats.ended.get("overflow", 0) == 0 and b"overflow" not in b"".join(sent)
    assert watches.stats.events == replica.applied_index
    assert b"".join(sent).count(b'"type":"put"') == replica.applied_index


def _put(index: int, content: str = "") -> Change:
    rec = {"namespace": "ns", "id": f"k{index}", "version": 1, "rev": index, "content": content}
    return Change(ChangeKind.PUT, 0, index, "ns", f"k{index}", after=rec)


async def _one_batch(published: list[Change], log: list[Change], reached: int | None = None,
                     **watch: Any) -> tuple[collections.deque[_Item], dict[int, int]]:
    """A stream's local driver fed `published` in one batch, its replica's change
    log holding `log` (what a catch-up after a RESET reads), until its position
    reaches `reached` (the last index published): its queued items and positions."""
    replica = _Replica()
    feed = ChangeFeed()
    stream = _stream(replica, feed, **watch)
    stream.pos = {0: 0}
    stream.local = {0: replica}  # type: ignore[dict-item]
    driver = asyncio.ensure_future(stream._local())
    await until(lambda: bool(feed._subscriptions))
    replica.applied_index = max(c.index for c in published)
    replica.log = log
    feed.publish(published)
    await until(lambda: stream.pos[0] >= (reached or replica.applied_index))
    driver.cancel()
    await asyncio.gather(driver, return_exceptions=True)
    return stream.queue.items, stream.pos


async def test_a_batchs_entries_are_queued_as_one_item_and_positions_move_with_them() -> None:
    items, pos = await _one_batch([_put(1), _put(2), _put(3)], [])
    assert [(i.positions, b"".join(i.parts).count(b'"type":"put"')) for i in items] == [(((0, 3),), 3)]
    assert pos == {0: 3}


async def test_entries_before_a_reset_are_queued_before_the_catch_up_reads_the_log() -> None:
    """The batch's entries before a RESET, and what the catch-up reads from the
    installed log, come out once each and in order. (Queued before the RESET is
    handled, they move the position a fetch from another node would start from;
    a catch-up is also safe without it: entries are skipped when queued.)"""
    log = [_put(1), _put(2), _put(3), _put(4)]  # the installed log
    items, pos = await _one_batch([_put(1), _put(2), Change(ChangeKind.RESET, 0, 3), _put(4)], log)
    sent = [orjson.loads(line)["token"] for i in items for line in b"".join(i.parts).splitlines()]
    assert sent == ["0:1", "0:2", "0:3", "0:4"] and pos == {0: 4}


async def test_a_batch_goes_in_pieces_of_at_most_half_the_queues_bytes() -> None:
    # Nothing takes from the queue here: it holds what fits in 64 KiB, in pieces.
    items, pos = await _one_batch([_put(i, "x" * 10_000) for i in range(1, 21)], [], reached=6,
                                  buffer_bytes_max=64 << 10)
    assert len(items) == 2 and all(i.size <= 32 << 10 for i in items)
    assert pos == {0: 6} and [i.positions for i in items] == [((0, 3),), ((0, 6),)]


async def _follow(stream: WatchStream, replica: _Replica) -> list[bytes]:
    """Run `stream` on `replica` from position 0: what it sends, as it sends it."""
    sent: list[bytes] = []

    async def start() -> None:
        stream.local, stream.pos = {0: replica}, {0: 0}  # type: ignore[dict-item]

    async def send(data: bytes) -> None:
        sent.append(data)

    stream._runner = asyncio.ensure_future(stream.run(start, send, lambda: True))  # type: ignore[attr-defined]
    return sent


def _tokens(sent: list[bytes]) -> list[str]:
    return [event["token"] for line in b"".join(sent).splitlines()
            if (event := orjson.loads(line))["type"] == "put"]


async def _stop(*streams: WatchStream) -> None:
    runners = [s._runner for s in streams]  # type: ignore[attr-defined]
    for runner in runners:
        runner.cancel()
    await asyncio.gather(*runners, return_exceptions=True)


async def test_one_subscription_serves_every_stream_that_follows_the_node() -> None:
    """Three streams with two filters: one feed subscription (the fan-out's),
    every stream gets its matching events once and in order."""
    replica, feed = _Replica(), ChangeFeed()
    first = _stream(replica, feed, batch_ms=0)
    streams = [first, _stream(replica, feed, watches=first.watches),
               _stream(replica, feed, WatchFilter(namespace="other"), watches=first.watches)]
    sent = [await _follow(s, replica) for s in streams]
    await until(lambda: len(first.watches.fanout.members) == 3)
    for index in range(1, 21):
        replica.applied_index = index
        replica.log.append(_put(index))
        feed.publish([_put(index)])
        await asyncio.sleep(0.001 * (index % 3))
    await until(lambda: all(s.written.get(0) == 20 for s in streams))
    assert len(feed._subscriptions) == 1
    assert _tokens(sent[0]) == _tokens(sent[1]) == [f"0:{i}" for i in range(1, 21)]
    assert _tokens(sent[2]) == []
    await _stop(*streams)
    assert feed._subscriptions == [] and first.watches.fanout.sub is None


async def test_a_stream_that_takes_nothing_is_cut_off_and_the_others_go_on() -> None:
    """The fan-out never waits on a stream: one whose client takes nothing is
    cut off (overflow) once buffer_events_max entries wait for it, while
    another stream gets every event."""
    replica, feed = _Replica(), ChangeFeed()
    stuck = _stream(replica, feed, batch_ms=0, buffer_events_max=4, buffer_bytes_max=4096)
    stuck_sent: list[bytes] = []
    never = asyncio.get_running_loop().create_future()

    async def start() -> None:
        stuck.local, stuck.pos = {0: replica}, {0: 0}  # type: ignore[dict-item]

    async def send(data: bytes) -> None:
        stuck_sent.append(data)
        if len(stuck_sent) > 1:  # the first progress goes out; then the client takes nothing
            await never

    stuck._runner = asyncio.ensure_future(stuck.run(start, send, lambda: True))  # type: ignore[attr-defined]
    other = _stream(replica, feed, watches=stuck.watches)
    sent = await _follow(other, replica)
    await until(lambda: len(stuck.watches.fanout.members) == 2)
    for index in range(1, 41):
        replica.applied_index = index
        replica.log.append(_put(index, "x" * 500))
        feed.publish([_put(index, "x" * 500)])
        await asyncio.sleep(0.001)
    await until(lambda: other.written.get(0) == 40)
    assert stuck.cut and stuck.watches.stats.ended == {"overflow": 1}
    assert list(stuck.watches.fanout.members) == [other]
    assert _tokens(sent) == [f"0:{i}" for i in range(1, 41)]
    await _stop(stuck, other)


async def test_a_fanout_that_falls_behind_the_feed_catches_every_stream_up_from_the_log(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fan-out's own subscription cut off (more changes at once than it
    holds): every stream catches up from its change log, from its position,
    and gets each event once and in order."""
    monkeypatch.setattr(watchfanout, "FANOUT_QUEUE_MAX", 4)
    replica, feed = _Replica(), ChangeFeed()
    stream = _stream(replica, feed, batch_ms=0, buffer_events_max=4)
    sent = await _follow(stream, replica)
    await until(lambda: stream.live)
    burst = [_put(index) for index in range(1, 11)]
    replica.applied_index, replica.log = 10, burst
    feed.publish(burst)  # more than its subscription holds, before it runs again
    await until(lambda: stream.written.get(0) == 10)
    assert stream.watches.fanout.resyncs == 1
    assert _tokens(sent) == [f"0:{i}" for i in range(1, 11)]
    await _stop(stream)


async def test_a_replica_that_stops_serving_hands_its_shard_over() -> None:
    """A replica dropped from this node: the fan-out's check tells the
    stream's driver, which hands the shard over to a fetch from another node."""
    replica, feed = _Replica(), ChangeFeed()
    stream = _stream(replica, feed)
    stream.pos = {0: 0}
    stream.local = {0: replica}  # type: ignore[dict-item]
    driver = asyncio.ensure_future(stream._local())
    await until(lambda: stream.live)
    del stream.router.replicas[0]  # type: ignore[attr-defined]
    await until(lambda: 0 in stream.remote)
    assert stream.local == {} and stream.checking == set()
    await asyncio.wait_for(driver, 5)  # nothing local left: the driver ends, and leaves the fan-out
    assert not stream.watches.fanout.members
    await stream._cancel_drivers()


async def test_a_fanout_that_fails_ends_its_streams_with_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A defect in the fan-out ends its streams with an error event (their
    clients resume from their tokens), never leaves them waiting."""
    replica, feed = _Replica(), ChangeFeed()
    stream = _stream(replica, feed, batch_ms=0)
    sent = await _follow(stream, replica)
    await until(lambda: stream.live)

    def broken(*args: object) -> None:
        raise RuntimeError("a defect")

    monkeypatch.setattr(stream.watches.fanout, "_dispatch", broken)
    replica.applied_index = 1
    feed.publish([_put(1)])
    await asyncio.wait_for(stream._runner, 5)  # type: ignore[attr-defined]
    last = orjson.loads(sent[-1])
    assert last["type"] == "error" and last["code"] == "internal" and last["tokens"] == "0:0"
    assert stream.watches.fanout.sub is None and feed._subscriptions == []


async def test_live_batches_go_straight_to_the_connection_only_when_nothing_waits_before_them() -> None:
    """A live batch is written at once (no wake-up of the writer) when the
    outbox is empty and the connection takes it; otherwise it goes through the
    outbox, and a batch after it waits its turn there: the client gets every
    event once, in order, whichever way each went."""
    replica, feed = _Replica(), ChangeFeed()
    stream = _stream(replica, feed, batch_ms=0)
    fanout = stream.watches.fanout
    out: list[bytes] = []
    direct: list[bytes] = []
    busy = [False]  # the connection has bytes buffered: it takes nothing at once

    async def start() -> None:
        stream.local, stream.pos = {0: replica}, {0: 0}  # type: ignore[dict-item]

    async def send(data: bytes) -> None:
        out.append(data)

    def send_now(data: bytes) -> bool:
        if busy[0]:
            return False
        out.append(data)
        direct.append(data)
        return True

    runner = asyncio.ensure_future(stream.run(start, send, lambda: True, send_now))
    await until(lambda: stream.live)
    replica.applied_index = 4
    fanout._dispatch([_put(1)])  # at once
    busy[0] = True
    fanout._dispatch([_put(2)])  # the connection is busy: through the outbox
    busy[0] = False
    fanout._dispatch([_put(3)])  # the outbox holds 2: 3 waits behind it
    assert _tokens(direct) == ["0:1"] and len(stream.queue.items) == 2
    await until(lambda: stream.queue.empty())
    fanout._dispatch([_put(4)])  # nothing waits: at once again
    await until(lambda: stream.written.get(0) == 4)
    assert _tokens(out) == ["0:1", "0:2", "0:3", "0:4"] and _tokens(direct) == ["0:1", "0:4"]
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
