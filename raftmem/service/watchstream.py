"""One watch stream (GET /v1/watch): its sources, its queue, its writer; and
the pieces the node's watch service (raftmem.service.watch) shares with it:
filters, event encoding, entries. The design is in service/watch.py's
docstring."""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson

from .. import validation as v
from ..config import LimitsConfig
from ..errors import NoLeader, RaftmemError, Unavailable
from ..events import (
    Change,
    ChangeKind,
    ChangePage,
    Compacted,
    Overflowed,
    settle_waiter,
    until_settled,
)
from ..shard import Shard
from .calls import Call, ForwardLost, ForwardNotSent, public

if TYPE_CHECKING:
    from .watch import Watches

log = logging.getLogger(__name__)

FILTER_PARAMS = ("namespace", "namespace_prefix", "agent_id", "tag")
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"
LOCAL_IDLE_S = 0.25  # the fan-out checks its streams' replicas (dropped? still leading?) this often
ALIVE_CHECK_S = 1.0  # a stream notices a client that went away within this, even when idle
WAIT_S_MIN = 0.01
WRITE_BYTES_MAX = 256 << 10  # entries joined into one write, at most
REMOTE_WAIT_MS = 2000  # a fetch from another node waits this long for a matching change
REMOTE_RETRY_S_MIN, REMOTE_RETRY_S_MAX = 0.05, 1.0
# A client that takes nothing for this long is gone (its stream ends and frees its
# place); the last event (overflow, compacted, error) waits as long for it.
WRITE_STALL_S = 30.0
EVENT_CACHE_MAX = 4096
EVENT_CACHE_BYTES_MAX = 16 << 20
LAST_IN_ENTRY = b',"last":true}'

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class WatchFilter:
    """Which changes a watch wants, judged on the change's record (the new one
    of a put, the removed one of a delete or expire)."""

    namespace: str | None = None
    namespace_prefix: str | None = None
    agent_id: str | None = None
    tag: str | None = None

    def matches(self, rec: Mapping[str, Any] | None) -> bool:
        if rec is None:
            return False
        ns = str(rec.get("namespace"))
        return (
            (self.namespace is None or ns == self.namespace)
            and (self.namespace_prefix is None or ns.startswith(self.namespace_prefix))
            and (self.agent_id is None or rec.get("agent_id") == self.agent_id)
            and (self.tag is None or self.tag in (rec.get("tags") or ()))
        )

    def query(self) -> dict[str, str]:
        return {name: value for name in FILTER_PARAMS if (value := getattr(self, name)) is not None}


def parse_filter(query: Mapping[str, str], limits: LimitsConfig) -> WatchFilter:
    """The filters of a watch; given together, they must all hold (a namespace
    and a prefix too: a change of that namespace, if it has the prefix)."""
    ns, prefix = query.get("namespace"), query.get("namespace_prefix")
    if ns is not None:
        v.name("namespace", ns, limits.namespace_chars_max)
    if prefix is not None:
        v.name("namespace_prefix", prefix, limits.namespace_chars_max)
    agent, tag = query.get("agent_id"), query.get("tag")
    if agent is not None:
        v.label("agent_id", agent, v.AGENT_CHARS_MAX)
    if tag is not None:
        v.label("tag", tag, limits.tag_chars_max)
    return WatchFilter(ns, prefix, agent, tag)


class Framing(enum.Enum):
    """How a stream frames each event: an SSE `data:` line, an NDJSON line, or
    (a watch among many on one connection, POST /v1/watch) a JSON array item
    followed by a comma, which the connection wraps per write as
    `{"watch": id, "events": [...]}`."""

    SSE = "sse"
    NDJSON = "ndjson"
    ITEMS = "items"


@dataclass(frozen=True)
class WatchRequest:
    filter: WatchFilter
    after: dict[int, int]  # shards the caller named; the others start from now
    progress_ms: int
    require_leader: bool
    framing: Framing


class EventCache(Generic[K, V]):
    """Encodings shared between streams: events by (shard, index, seq), and an
    entry's framed events by (shard, index, filter, framing), so a change sent
    to many watchers is encoded, filtered and framed once. Bounded in items and
    bytes (the first added go first)."""

    def __init__(self, weigh: Callable[[V], int], size_max: int = EVENT_CACHE_MAX,
                 bytes_max: int = EVENT_CACHE_BYTES_MAX) -> None:
        self._items: collections.OrderedDict[K, V] = collections.OrderedDict()
        self.weigh = weigh
        self.size_max = size_max
        self.bytes_max = bytes_max
        self.bytes = 0

    def get(self, key: K, make: Callable[[], V]) -> V:
        value = self._items.get(key)
        if value is None:
            value = self._items[key] = make()
            self.bytes += self.weigh(value)
            while self._items and (len(self._items) > self.size_max or self.bytes > self.bytes_max):
                self.bytes -= self.weigh(self._items.popitem(last=False)[1])
        return value


def event_body(change: Change, seq: int) -> dict[str, Any]:
    """A change as the stream shows it (the same from the feed and from the log:
    a put's old version is `prev_version`, never the old record)."""
    rec = change.record
    body: dict[str, Any] = {
        "type": change.kind.value, "token": change.token, "seq": seq, "namespace": change.namespace,
        "id": change.id, "version": change.version, "time": change.time_ms,
        "record": public(rec, change.shard) if rec is not None else None,
    }
    if change.kind is ChangeKind.PUT:
        body["prev_version"] = change.prev_version
    return body


def entries(changes: Iterable[Change]) -> list[tuple[int, int, list[tuple[int, Change]]]]:
    """Changes grouped by log entry, in order: (shard, index, [(seq, change)])."""
    out: list[tuple[int, int, list[tuple[int, Change]]]] = []
    for change in changes:
        if out and out[-1][0] == change.shard and out[-1][1] == change.index:
            out[-1][2].append((len(out[-1][2]), change))
        else:
            out.append((change.shard, change.index, [(0, change)]))
    return out


Framed = tuple[bytes, int]  # an entry's events framed for a stream, and how many


def frame(body: bytes, framing: Framing) -> bytes:
    """One event as a stream sends it (see Framing)."""
    if framing is Framing.NDJSON:
        return body + b"\n"
    if framing is Framing.ITEMS:
        return body + b","
    return b"data: " + body + b"\n\n"


def stream_headers(sse: bool, node_id: str) -> dict[str, str]:
    """A watch response's headers (one watch, or many on one connection)."""
    return {"Content-Type": SSE if sse else NDJSON, "Cache-Control": "no-cache", "X-Raftmem-Served-By": node_id}


def format_tokens(positions: Mapping[int, int]) -> str:
    return ",".join(f"{s}:{i}" for s, i in sorted(positions.items()))


class Outbox:
    """A stream's entries waiting for its client, in items (entries queued
    together: a live batch's, a log page's, or one fetched from another node),
    bounded in items and bytes (an item alone may exceed the bytes: a large
    record still goes out)."""

    def __init__(self, entries_max: int, bytes_max: int) -> None:
        self.entries_max = entries_max
        self.bytes_max = bytes_max
        self.items: collections.deque[_Item] = collections.deque()
        self.bytes = 0
        self._waiters: list[asyncio.Future[None]] = []  # told when an item comes in or goes out

    def empty(self) -> bool:
        return not self.items

    def full(self, size: int = 0) -> bool:
        return bool(self.items) and (len(self.items) >= self.entries_max or self.bytes + size > self.bytes_max)

    def put_nowait(self, item: _Item) -> None:
        self.items.append(item)
        self.bytes += item.size
        self.wake()

    def get_nowait(self) -> _Item:
        item = self.items.popleft()
        self.bytes -= item.size
        self.wake()
        return item

    def wake(self) -> None:
        if self._waiters:
            for waiter in self._waiters:
                settle_waiter(waiter)
            self._waiters.clear()

    async def changed(self, timeout_s: float) -> None:
        """Until an item comes in or goes out, or `timeout_s` passes (no task
        per wait: the writer of every stream waits once per item)."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await until_settled(waiter, timeout_s)
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)

    async def put(self, item: _Item, cut_off: Callable[[], bool] = lambda: False) -> bool:
        """Wait for room, then queue; False (nothing queued) if `cut_off()`
        says, while it waits, that the wait is over."""
        while self.full(item.size):
            if cut_off():
                return False
            await self.changed(ALIVE_CHECK_S)
        self.put_nowait(item)
        return True


@dataclass
class _Item:
    """What goes out: whole entries' events (`parts`, each entry's bytes as the
    cache shares them between streams, joined only when written), with the last
    index of each shard they reach (`positions`); or the last event (`terminal`)."""

    parts: list[bytes]
    positions: tuple[tuple[int, int], ...] = ()
    terminal: Callable[[dict[int, int]], dict[str, Any]] | None = None
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = sum(map(len, self.parts))


Pending = tuple[int, int, Framed | None]  # an entry for a stream's driver: shard, index, its events (None: a marker)


async def read_page(replica: Shard, after: int, limit: int) -> ChangePage:
    page, _served = await replica.read("eventual", lambda state: state.changes_after(after, limit))
    return page


class WatchStream:
    """One client's watch: a driver per source (this node's replicas together,
    and one per shard fetched from another node), one writer, one queue."""

    def __init__(self, watches: Watches, request: WatchRequest, hops: int) -> None:
        self.watches = watches
        self.request = request
        self.hops = hops
        self.limits = watches.limits
        self.router = watches.router
        self.queue = Outbox(self.limits.buffer_events_max, self.limits.buffer_bytes_max)
        self.pos: dict[int, int] = {}  # per shard: every matching change at or below it is queued
        self.written: dict[int, int] = {}  # per shard: ... and written
        self.local: dict[int, Shard] = {}  # shards served by this node's replicas
        self.remote: set[int] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        # Following this node's replicas through the fan-out (raftmem.service.watchfanout):
        self.live = False  # the fan-out queues straight into the outbox (nothing pending)
        self.pending: collections.deque[Pending] = collections.deque()  # for the driver, in order
        self.checking: set[int] = set()  # shards whose replica the driver is told to check
        self.cut = False  # fell more than buffer_events_max entries behind: overflow
        self.broken: BaseException | None = None  # the fan-out failed
        self._woken: asyncio.Future[None] | None = None  # the driver's wait for pending entries
        self._send_now: Callable[[bytes], bool] | None = None
        self.piece = min(WRITE_BYTES_MAX, self.limits.buffer_bytes_max // 2)  # bytes of entries per queued item
        # A watch among many on one connection does not own its socket: the
        # connection counts its writes (raftmem.service.watchmux).
        self._counts_writes = request.framing is not Framing.ITEMS
        self._failed: asyncio.Future[BaseException] | None = None
        self.holds_place = False  # counted in the node's open watches (Watches._open, run)
        self.finished = False  # its last event (overflow, compacted, error) was written

    @property
    def headers(self) -> dict[str, str]:
        return stream_headers(self.request.framing is Framing.SSE, self.router.node_id)

    def frame(self, body: bytes) -> bytes:
        return frame(body, self.request.framing)

    # -- where each shard starts ------------------------------------------------------------
    async def start(self, shard: int) -> None:
        """The shard's starting position; raises events.Compacted when the
        caller's token is older than what the change log keeps."""
        after = self.request.after.get(shard)
        replica = self.watches.serving(shard, self.request.require_leader)
        if replica is not None:
            self.local[shard] = replica
            if after is None:
                self.pos[shard] = replica.applied_index
            else:
                await read_page(replica, after, 1)  # raises Compacted
                self.pos[shard] = after
            return
        self.remote.add(shard)
        if after is not None:
            self.pos[shard] = after
        body = await self._fetch(shard, after if after is not None else -1, 0, limit=1)
        if after is None:
            self.pos[shard] = int(body["through"])

    # -- running -------------------------------------------------------------------------------
    async def run(self, start: Callable[[], Awaitable[None]], send: Callable[[bytes], Awaitable[None]],
                  alive: Callable[[], bool], send_now: Callable[[bytes], bool] | None = None) -> None:
        """Stream until the client goes, the node stops, or the watch must end
        (overflow, compacted, no leader): then one last event says why and
        where to resume. `send_now`, if given, writes bytes to the connection
        at once when nothing is buffered before them (True), or writes nothing
        (False): the fan-out's live batches go that way when the outbox is
        empty, without waking the writer."""
        watches = self.watches
        watches.stats.opened += 1
        if not self.holds_place:
            watches.stats.open_now += 1
            self.holds_place = True
        self._failed = asyncio.get_running_loop().create_future()
        reason = "client gone"
        writer: asyncio.Task[None] | None = None
        try:
            await start()
            self.written = dict(self.pos)
            await send(self.frame(orjson.dumps({"type": "progress", "tokens": format_tokens(self.written)})))
            self._send_now = send_now  # after the first write: the response's head is out
            writer = asyncio.create_task(self._write(send, alive))
            if self.local:
                self._spawn(self._local())
            for shard in sorted(self.remote):
                self._spawn(self._remote(shard))
            stopping = asyncio.create_task(self._until_stopping())
            self._tasks.add(stopping)
            waiters: set[asyncio.Future[Any]] = {writer, self._failed, stopping}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not writer.done():
                error: BaseException = (self._failed.result() if self._failed.done()
                                        else Unavailable(f"node {self.router.node_id} is stopping"))
                reason, terminal = _terminal(error)
                watches.stats.ended[reason] = watches.stats.ended.get(reason, 0) + 1
                await self._cancel_drivers()
                self.queue.put_nowait(_Item([], terminal=terminal))  # the drivers are gone: nothing follows it
                await asyncio.wait_for(writer, WRITE_STALL_S)
            elif writer.exception() is not None:
                raise writer.exception()  # type: ignore[misc]
        except (ConnectionError, TimeoutError):
            pass  # the client went away, or took nothing for WRITE_STALL_S
        finally:
            self._send_now = None
            self.release()  # before any await: a second cancellation cannot keep its place
            if writer is not None and not writer.done():
                writer.cancel()
            await self._cancel_drivers()
            if reason == "client gone":
                watches.stats.ended[reason] = watches.stats.ended.get(reason, 0) + 1

    def release(self) -> None:
        """Give back its place among the node's open watches (once)."""
        if self.holds_place:
            self.holds_place = False
            self.watches.stats.open_now -= 1

    async def _until_stopping(self) -> None:
        await self.watches.stopping.wait()

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._driver_done)

    def _driver_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or self._failed is None or self._failed.done():
            return
        error = task.exception()
        if error is not None:
            self._failed.set_result(error)

    async def _cancel_drivers(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _write(self, send: Callable[[bytes], Awaitable[None]], alive: Callable[[], bool]) -> None:
        """Send what the drivers queue, and a progress event whenever the queue
        is empty (so every position is written) and `progress_ms` has passed."""
        progress_s = self.request.progress_ms / 1000
        next_progress = time.monotonic() + progress_s
        last_progress = dict(self.written)
        while True:
            if self.queue.empty():
                # Wait only when there is nothing to send (a stream that waited
                # whenever its progress fell due, however full its queue, stalled).
                await self.queue.changed(max(WAIT_S_MIN, min(next_progress - time.monotonic(), ALIVE_CHECK_S)))
            item = self.queue.get_nowait() if not self.queue.empty() else None
            if not alive():
                return
            if item is not None and item.terminal is None:
                # Everything queued behind it goes in the same write (one system
                # call for many entries when the client keeps up less than the feed).
                chunks = list(item.parts)
                self._wrote(item)
                size = item.size
                while size < WRITE_BYTES_MAX and not self.queue.empty() and self.queue.items[0].terminal is None:
                    more = self.queue.get_nowait()
                    chunks.extend(more.parts)
                    size += more.size
                    self._wrote(more)
                async with asyncio.timeout(WRITE_STALL_S):  # no task per write, as wait_for made
                    await send(b"".join(chunks))
                if self._counts_writes:
                    self.watches.stats.writes += 1
            if self.queue.empty():
                for shard, index in self.pos.items():
                    self.written[shard] = max(self.written.get(shard, 0), index)
            if item is not None and item.terminal is not None:
                await send(self.frame(orjson.dumps(item.terminal(self.written))))
                self.finished = True
                return
            now = time.monotonic()
            idle = item is None
            if now >= next_progress and self.queue.empty() and (idle or self.written != last_progress):
                await send(self.frame(orjson.dumps({"type": "progress", "tokens": format_tokens(self.written)})))
                last_progress = dict(self.written)
                next_progress = now + progress_s

    def _wrote(self, item: _Item) -> None:
        for shard, index in item.positions:
            self.written[shard] = max(self.written.get(shard, 0), index)

    # -- delivering entries ----------------------------------------------------------------------
    async def _queue_groups(self, groups: Iterable[tuple[int, int, list[tuple[int, Change]]]]) -> None:
        """Queue whole entries' matching changes (a page of a change log)."""
        flt, framing = self.request.filter, self.request.framing
        await self._queue_framed([(shard, index, self.watches.entry_frames(shard, index, group, flt, framing))
                                  for shard, index, group in groups if index > self.pos.get(shard, 0)])

    async def _queue_framed(self, framed: Iterable[tuple[int, int, Framed]]) -> None:
        """Queue whole entries (log order per shard), skipping entries at or
        below the positions, in items of at most `piece` bytes (an entry alone
        may be larger): one item, one wake-up of the writer, for many entries."""
        run: list[tuple[int, int, Framed]] = []
        size = 0
        for shard, index, entry in framed:
            if index <= self.pos.get(shard, 0):
                continue
            if run and size + len(entry[0]) > self.piece:
                await self._queue_entries(run)
                run, size = [], 0
            run.append((shard, index, entry))
            size += len(entry[0])
        await self._queue_entries(run)

    async def _queue_entries(self, framed: list[tuple[int, int, Framed]]) -> None:
        """Queue whole entries (in log order per shard) as one item, waiting for
        room, then move past them. The feed never waits for it: live, the
        fan-out holds what comes meanwhile in `pending`, and once that has
        fallen `buffer_events_max` entries behind, the stream is cut off
        (`overflow`, told at once even if its client takes nothing); read
        from a change log, the reader is the one waiting. Positions move
        only once the entries are queued: the writer, finding its queue empty,
        takes them as written."""
        reached: dict[int, int] = {}
        parts: list[bytes] = []
        count = 0
        for shard, index, (data, n) in framed:
            reached[shard] = max(reached.get(shard, 0), index)
            if n:
                parts.append(data)
                count += n
        if parts:
            item = _Item(parts, tuple(reached.items()))
            if not await self.queue.put(item, self._cut_off):
                if self.broken is not None:
                    raise self.broken
                raise Overflowed(self.pos)  # told now, not when the client next takes something
            self.watches.stats.events += count
        self.advance(reached.items())

    def advance(self, positions: Iterable[tuple[int, int]]) -> None:
        """Move past entries now queued (or written, or with nothing to send)."""
        pos = self.pos
        for shard, index in positions:
            pos[shard] = max(pos.get(shard, 0), index)

    def _cut_off(self) -> bool:
        return self.cut or self.broken is not None

    async def _deliver_bodies(self, shard: int, bodies: list[dict[str, Any]]) -> None:
        """Events fetched from another node (whole entries), by entry."""
        group: list[dict[str, Any]] = []
        for body in [*bodies, None]:
            if group and (body is None or body["token"] != group[0]["token"]):
                index = int(str(group[0]["token"]).split(":")[1])
                if index > self.pos.get(shard, 0):
                    encoded = [self.watches.encode_body(shard, index, b) for b in group]
                    await self._queue_entries([(shard, index, self.watches.frame_entry(encoded, self.request.framing))])
                group = []
            if body is not None:
                group.append(body)

    # -- shards on this node ---------------------------------------------------------------------
    async def _catch_up(self, shard: int, replica: Shard) -> None:
        """From the change log, up to the replica's applied index."""
        while True:
            page = await read_page(replica, self.pos[shard], self.limits.page_events_max)
            await self._queue_groups(entries(page.changes))
            self.pos[shard] = max(self.pos[shard], page.through)
            if page.complete:
                return

    async def _local(self) -> None:
        """This node's replicas: from their change logs, then through the fan-out."""
        fanout = self.watches.fanout
        for shard, replica in sorted(self.local.items()):
            await self._catch_up(shard, replica)
        fanout.join(self)  # what is applied from now on comes as pending entries
        try:
            for shard, replica in sorted(self.local.items()):  # what was applied meanwhile
                await self._catch_up(shard, replica)
            while self.local:
                if self.cut:
                    raise Overflowed(self.pos)
                if self.broken is not None:
                    raise self.broken
                if self.pending:
                    await self._drain()
                    continue
                # Nothing pending, now (no await since): the fan-out may queue
                # straight into the outbox; it wakes the driver when it cannot.
                self.live = True
                waiter = self._woken = asyncio.get_running_loop().create_future()
                try:
                    await until_settled(waiter, None)
                finally:
                    self._woken = None
        finally:
            fanout.leave(self)

    def write_now(self, item: _Item, data: bytes | None = None) -> bool:
        """Write a live batch straight to the connection when nothing waits
        before it (the outbox empty, and nothing buffered in the connection:
        the writer is idle, or its last send is out), so the writer is not
        woken; False: it goes through the outbox. The writer never holds
        entries across an await before handing them to the connection, so
        nothing can be overtaken. `data`: the item's bytes, joined already
        (a batch many streams share)."""
        send_now = self._send_now
        if send_now is None or not self.queue.empty() or not send_now(data or b"".join(item.parts)):
            return False
        if self._counts_writes:
            self.watches.stats.writes += 1
        self._wrote(item)
        return True

    def hold(self, pending: Iterable[Pending]) -> None:
        """Entries (and markers) for the driver, in order after what it holds;
        past `buffer_events_max` of them the stream is cut off (the fan-out
        never waits on a stream)."""
        if self.cut:
            return
        self.live = False
        local, pos = self.local, self.pos
        # What it would skip anyway is not held (a shard handed over never comes
        # back to `local`; positions only grow): the bound counts what it queues.
        self.pending.extend(p for p in pending if p[0] in local and (p[2] is None or p[1] > pos.get(p[0], 0)))
        if len(self.pending) > self.limits.buffer_events_max:
            self.cut = True
            self.pending.clear()
            self.watches.fanout.leave(self)
            self.queue.wake()  # a driver waiting for room is told at once
        if self._woken is not None:
            settle_waiter(self._woken)

    def fail(self, error: BaseException) -> None:
        """The fan-out failed: the stream ends with an error event."""
        self.broken = error
        self.queue.wake()
        if self._woken is not None:
            settle_waiter(self._woken)

    async def _drain(self) -> None:
        """Queue the pending entries (waiting for room), and act on markers:
        a RESET (the replica replaced by a snapshot, its change log with it,
        or dropped) or a check (the replica may no longer serve the stream)
        catches the shard up from the log, or hands it over to a fetch from
        another node, after what came before it is queued."""
        run: list[tuple[int, int, Framed]] = []
        while self.pending:
            shard, index, entry = self.pending.popleft()
            current = self.local.get(shard)
            if current is None:
                continue
            if entry is not None:
                run.append((shard, index, entry))
                continue
            await self._queue_framed(run)  # its positions move before a fetch starts from them
            run = []
            self.checking.discard(shard)
            if index == 0 or self.watches.serving(shard, self.request.require_leader) is not current:
                self._to_remote(shard)
            else:
                await self._catch_up(shard, current)
        await self._queue_framed(run)

    def _to_remote(self, shard: int) -> None:
        del self.local[shard]
        self.remote.add(shard)
        self._spawn(self._remote(shard))

    # -- shards fetched from another node ----------------------------------------------------------
    def _holders(self, shard: int) -> list[str]:
        """Nodes to fetch the shard's changes from, best first: any other holder,
        or with the leader required, the leader this node knows, then the others."""
        me = self.router.node_id
        others = [n for n in self.router.placement.get(shard, []) if n != me]
        leader = self.router.leader_of(shard)
        if self.request.require_leader and leader is not None:
            return [leader, *(n for n in others if n != leader)]
        return others or ([leader] if leader is not None else [])

    async def _fetch(self, shard: int, after: int, wait_ms: int, limit: int | None = None,
                     attempt: int = 0) -> dict[str, Any]:
        holders = self._holders(shard)
        if not holders:
            raise NoLeader(f"shard {shard}: no node to fetch its changes from", shard=shard)
        node = holders[attempt % len(holders)]
        query = {"after": str(after), "wait_ms": str(wait_ms), "limit": str(limit or self.limits.page_events_max),
                 **self.request.filter.query()}
        if self.request.require_leader:
            query["require_leader"] = "true"
        call = Call("GET", f"/v1/internal/shards/{shard}/changes", query, {}, b"", self.hops)
        try:
            reply = await self.watches.forwarder.forward(node, call, wait_ms / 1000 + 5)
        except (ForwardNotSent, ForwardLost) as e:
            raise Unavailable(f"shard {shard}: node {node}: {e}", shard=shard) from None
        body = reply.json()
        if reply.status == 410:
            raise Compacted(shard, int(str(body["error"]["oldest"]).split(":")[1]))
        if reply.status != 200:
            message = body.get("error", {}).get("message") if isinstance(body, dict) else None
            raise Unavailable(f"shard {shard}: node {node} answered {reply.status}: {message}", shard=shard)
        result: dict[str, Any] = body
        return result

    async def _remote(self, shard: int) -> None:
        """Long-polls at a node that holds the shard (its leader, when required),
        moving on to another one when it fails."""
        attempt, failing_since = 0, None
        timeout_s = self.watches.config.limits.read_timeout_ms / 1000
        while True:
            try:
                body = await self._fetch(shard, self.pos[shard], REMOTE_WAIT_MS, attempt=attempt)
            except Unavailable as e:
                now = time.monotonic()
                failing_since = failing_since or now
                if self.request.require_leader and now - failing_since > timeout_s:
                    raise NoLeader(f"shard {shard}: no leader reachable for {timeout_s:.0f}s: {e.message}",
                                   shard=shard) from None
                attempt += 1
                await asyncio.sleep(min(REMOTE_RETRY_S_MAX, REMOTE_RETRY_S_MIN * 2 ** min(attempt, 5)))
                continue
            failing_since = None
            await self._deliver_bodies(shard, list(body["events"]))
            self.pos[shard] = max(self.pos[shard], int(body["through"]))


def _terminal(error: BaseException) -> tuple[str, Callable[[dict[int, int]], dict[str, Any]]]:
    """The last event of a stream that must end, and a word for the metrics."""
    if isinstance(error, Overflowed):
        return "overflow", lambda tokens: {"type": "overflow", "tokens": format_tokens(tokens)}
    if isinstance(error, Compacted):
        shard, oldest = error.shard, error.oldest
        return "compacted", lambda tokens: {"type": "compacted", "shard": shard, "oldest": f"{shard}:{oldest}",
                                            "tokens": format_tokens(tokens)}
    if isinstance(error, RaftmemError):
        code, message = error.code, error.message
    else:
        log.error("watch stream failed", exc_info=error)
        code, message = "internal", "internal error; see the node's log"
    return code, lambda tokens: {"type": "error", "code": code, "message": message,
                                 "tokens": format_tokens(tokens)}
