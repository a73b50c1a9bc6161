"""The node's one consumer of the change feed for every watch stream that
follows this node's replicas (raftmem/DESIGN.md, "One fan-out per node").

A stream first catches up from its replicas' change logs on its own, then
joins the fan-out, which from then on hands it every change the node applies.
Each batch (at most every `watch.batch_ms` under load) the fan-out groups the
feed's changes by entry once, frames each entry once per filter and framing,
and, per stream:

- **live** (nothing of its own waiting, its outbox has room, the batch holds no
  `RESET` and at most a piece of bytes for it): queues the batch's new entries
  in the stream's outbox as one item and moves its positions; the stream's
  driver is not woken at all, and its writer only when something waits before
  the batch (else the batch is written to the connection at once);
- otherwise appends the batch's entries to the stream's `pending` and wakes
  its driver, which queues them waiting for room, and does what needs a log
  read or another node (a `RESET`: caught up from the installed log, or handed
  over; a replica no longer serving: handed over). A stream whose pending
  entries pass `watch.buffer_events_max` is cut off (`overflow`): the fan-out
  never waits on a stream, and a node's memory does not grow with slow ones.
  A batch holds at most half that many changes, so a stream that keeps up is
  never cut off by one.

A stream's driver is the only one to change its local shards, so a hand-over
never races a catch-up: the fan-out's checks (a replica dropped, or no longer
leading when the leader is required) reach it as markers in its pending
entries, in order with the entries around them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import Unavailable
from ..events import Change, ChangeKind, Closed, Overflowed, Subscription
from ..shard import Shard
from .watchstream import LOCAL_IDLE_S, Framing, Pending, WatchFilter, _Item, entries

if TYPE_CHECKING:
    from .watch import Watches
    from .watchstream import WatchStream

log = logging.getLogger(__name__)

# Changes the fan-out's subscription holds between two batches (it takes them
# at half this, or every batch_ms); past it every stream catches up from its
# logs (Overflowed: the fan-out fell behind the feed, never a stream).
FANOUT_QUEUE_MAX = 20_000

@dataclass
class _Batch:
    """A batch's entries framed for one filter and framing, shared by every
    stream that has them: the entries, their events' bytes and how many, the
    first and last index per shard."""

    entries: list[Pending] = field(default_factory=list)
    parts: list[bytes] = field(default_factory=list)
    count: int = 0
    first: dict[int, int] = field(default_factory=dict)
    last: dict[int, int] = field(default_factory=dict)
    plain: bool = True  # no RESET in it
    _joined: bytes | None = None

    def joined(self) -> bytes:
        """Its events' bytes in one piece, joined once for every stream that
        writes the whole batch."""
        if self._joined is None:
            self._joined = b"".join(self.parts)
        return self._joined


class FanOut:
    """One feed subscription and one task for every stream that follows this
    node's replicas (`join`ed, until it `leave`s)."""

    def __init__(self, watches: Watches) -> None:
        self.watches = watches
        self.members: dict[WatchStream, None] = {}  # in join order
        self.sub: Subscription | None = None
        self.task: asyncio.Task[None] | None = None
        self.batches = 0
        self.resyncs = 0

    def join(self, stream: WatchStream) -> None:
        """From now on every change the node applies reaches `stream` (in its
        pending entries until its driver, having caught up, goes live)."""
        if self.sub is None:
            self.sub = self._subscribe()
            self.task = asyncio.ensure_future(self._run(self.sub))
            self.task.add_done_callback(self._ended)
        stream.live = False
        self.members[stream] = None

    def _subscribe(self) -> Subscription:
        return self.watches.feed.subscribe(queue_max=max(FANOUT_QUEUE_MAX, self.watches.limits.buffer_events_max))

    def leave(self, stream: WatchStream) -> None:
        self.members.pop(stream, None)
        if not self.members and self.sub is not None:
            self.sub.close()  # the task ends on it
            self.sub = self.task = None

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A fan-out that failed (a defect) ends its streams with an error (their
        clients resume from their tokens) rather than leave them waiting."""
        error = None if task.cancelled() else task.exception()
        if error is None:
            return
        log.error("watch fan-out failed", exc_info=error)
        if self.task is task:
            self._end(error)

    def _end(self, error: BaseException) -> None:
        """This fan-out is over: its streams end with `error`, and the next
        stream to join starts another."""
        if self.sub is not None:
            self.sub.close()
        self.sub = self.task = None
        members, self.members = list(self.members), {}
        for stream in members:
            stream.fail(error)

    async def _run(self, sub: Subscription) -> None:
        limits = self.watches.limits
        batch_s = limits.batch_ms / 1000
        next_batch = 0.0
        checked = time.monotonic()
        while self.sub is sub:
            try:
                first = await sub.get(LOCAL_IDLE_S)
                now = time.monotonic()
                if first is None:
                    if sub.pending() == 0:
                        # Nothing queued, now (no await since): every change applied
                        # so far has been handed out (a change published as the wait
                        # timed out, left queued, once made a stream skip a burst of
                        # entries applied after a partition healed: jepsen halves).
                        self._idle()
                        self._check()
                        checked = now
                    continue
                if now < next_batch:
                    # The last batch went out less than batch_ms ago: what comes
                    # meanwhile joins this one (one item and one write per stream),
                    # but at most half what a stream may hold for its driver (a
                    # batch that cannot go straight to a stream's outbox never
                    # cuts off a stream that keeps up).
                    await sub.gather(max(1, min(sub.queue_max, limits.buffer_events_max) // 2), next_batch - now)
                    now = time.monotonic()
                next_batch = now + batch_s
                batch = [first]
                while (more := sub.get_nowait()) is not None:
                    batch.append(more)
            except Overflowed:
                if self.sub is not sub:
                    return  # every stream left meanwhile (or a new fan-out took over)
                sub = self._resync()
                continue
            except Closed:
                if self.sub is sub:  # the feed closed: the node is stopping
                    self._end(Unavailable(f"node {self.watches.router.node_id} is stopping"))
                return
            self._dispatch(batch)
            if now - checked > LOCAL_IDLE_S:  # busy: check the replicas all the same
                self._check()
                checked = now

    def _dispatch(self, changes: list[Change]) -> None:
        groups = entries(changes)
        self.batches += 1
        framed: dict[tuple[WatchFilter, Framing], _Batch] = {}
        for stream in list(self.members):
            key = (stream.request.filter, stream.request.framing)
            batch = framed.get(key)
            if batch is None:
                batch = framed[key] = self._frame(groups, *key)
            self._offer(stream, batch)

    def _offer(self, stream: WatchStream, batch: _Batch) -> None:
        """Queue the batch's new entries in a live stream's outbox, or hand
        them to its driver (not live, a RESET, more than a piece, no room)."""
        if stream.cut:
            return
        if stream.live and batch.plain:
            whole = self._fast(stream, batch)
            item, count = whole or self._pick(stream, batch)
            if not item.parts or (item.size <= stream.piece and not stream.queue.full(item.size)):
                if item.parts:
                    if not stream.write_now(item, batch.joined() if whole else None):
                        stream.queue.put_nowait(item)
                    self.watches.stats.events += count
                stream.advance(item.positions)
                return
        stream.hold(batch.entries)

    @staticmethod
    def _fast(stream: WatchStream, batch: _Batch) -> tuple[_Item, int] | None:
        """The batch as it is, when every entry of it is new to the stream and
        on its local shards (looked at per shard, not per entry)."""
        local, pos = stream.local, stream.pos
        for shard, first in batch.first.items():
            if shard not in local or first <= pos.get(shard, 0):
                return None
        return _Item(batch.parts, tuple(batch.last.items())), batch.count

    @staticmethod
    def _pick(stream: WatchStream, batch: _Batch) -> tuple[_Item, int]:
        """The batch's entries new to the stream, on its local shards (its
        positions reach the last of them, whether they hold events or not)."""
        local, pos = stream.local, stream.pos
        parts: list[bytes] = []
        reached: dict[int, int] = {}
        count = 0
        for shard, index, entry in batch.entries:
            if entry is None or shard not in local or index <= pos.get(shard, 0):
                continue
            reached[shard] = index
            if entry[1]:
                parts.append(entry[0])
                count += entry[1]
        return _Item(parts, tuple(reached.items())), count

    def _frame(self, groups: list[tuple[int, int, list[tuple[int, Change]]]], flt: WatchFilter,
               framing: Framing) -> _Batch:
        batch = _Batch()
        for shard, index, group in groups:
            batch.first.setdefault(shard, index)
            batch.last[shard] = index
            if group[0][1].kind is ChangeKind.RESET:
                batch.entries.append((shard, index, None))
                batch.plain = False
                continue
            entry = self.watches.entry_frames(shard, index, group, flt, framing)
            batch.entries.append((shard, index, entry))
            if entry[1]:
                batch.parts.append(entry[0])
                batch.count += entry[1]
        return batch

    def _idle(self) -> None:
        """Every change applied so far was handed out: a live stream's
        positions move to its replicas' applied indexes."""
        for stream in self.members:
            if stream.live:
                for shard, replica in stream.local.items():
                    stream.pos[shard] = max(stream.pos[shard], replica.applied_index)

    def _check(self) -> None:
        """A replica dropped, or no longer leading when the leader is required:
        its streams' drivers are told, in order with their entries."""
        serving: dict[tuple[int, bool], Shard | None] = {}
        for stream in list(self.members):
            need = stream.request.require_leader
            for shard, replica in stream.local.items():
                key = (shard, need)
                if key not in serving:
                    serving[key] = self.watches.serving(shard, need)
                if serving[key] is not replica and shard not in stream.checking:
                    stream.checking.add(shard)
                    stream.hold([(shard, -1, None)])

    def _resync(self) -> Subscription:
        """The fan-out fell behind the feed (its subscription was cut off):
        subscribe again, then every stream catches up from its change logs,
        from its positions (whatever the lost changes were, they are there)."""
        self.resyncs += 1
        sub = self.sub = self._subscribe()
        for stream in list(self.members):
            stream.hold([(shard, -1, None) for shard in sorted(stream.local)])
        return sub


