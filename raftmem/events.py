"""Change events: what an applied log entry changed, and the node-local feed
that hands them to consumers (watch streams, derived indexes, history).

Contract (shared DESIGN.md section 8):
- The state machine yields events in log order, for an entry's commands in
  their order, only after the entry's RocksDB batch is written, and never for
  an index at or below the applied index it had on disk (a replay after a crash
  emits nothing twice).
- Publishing never blocks apply: each subscription has a bounded queue, and a
  subscriber that falls that far behind is cut off (`Overflowed`, carrying the
  last index it was given per shard), as etcd cancels a slow watcher. A
  consumer that needs every change keeps its own durable watermark (the Raft
  index it has absorbed) and rebuilds from the store past a cut or a `RESET`.
- A `RESET` event says a replica's state was replaced wholesale (a snapshot
  installed from the leader): whatever a consumer derived from that shard must
  be rebuilt from the store as of `index`.

Everything here runs on the node's event loop thread (apply runs in tick passes
there), so there are no locks.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

SUBSCRIPTION_QUEUE_MAX = 10_000


class ChangeKind(StrEnum):
    PUT = "put"  # created, updated or restored: `after` is the new record
    DELETE = "delete"  # deleted by a client: `before` is the last record
    EXPIRE = "expire"  # removed by expiry: `before` is the last record
    RESET = "reset"  # the shard's state was replaced by a snapshot at `index` (0: dropped)


@dataclass(frozen=True)
class Change:
    """One change. Live from the feed, `before` is the whole record replaced or
    removed; read back from the change log (`from_log`), a PUT's `before` is
    None and only `prev_version` says what it replaced (the log keeps one
    record per change: the new one, or the one removed)."""

    kind: ChangeKind
    shard: int
    index: int  # the Raft index of the entry that made the change
    namespace: str = ""
    id: str = ""
    before: Mapping[str, Any] | None = None  # the live record before, if any
    after: Mapping[str, Any] | None = None  # the record after (PUT only)
    time_ms: int = 0  # the leader's wall time for the entry (chosen before proposing)
    prev_version: int | None = None  # PUT: the version of the live record it replaced
    # The record as the state machine stored it (JSON), when it has it: the
    # change log embeds it rather than encoding the record again.
    encoded: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def version(self) -> int | None:
        rec = self.after if self.after is not None else self.before
        return None if rec is None else int(rec["version"])

    @property
    def token(self) -> str:
        return f"{self.shard}:{self.index}"

    @property
    def record(self) -> Mapping[str, Any] | None:
        """The new record of a PUT, the removed one of a DELETE or EXPIRE."""
        return self.after if self.kind is ChangeKind.PUT else self.before

    def to_log(self, embed: Callable[[bytes], Any] | None = None) -> dict[str, Any]:
        """The change log's form (JSON): one record, not two. `embed` places the
        record's stored encoding as it is (codec.embedded)."""
        record = self.record
        rec: Any = None if record is None else (
            embed(self.encoded) if embed is not None and self.encoded is not None else dict(record))
        return {"k": self.kind.value, "ns": self.namespace, "id": self.id, "t": self.time_ms,
                "pv": self.prev_version, "rec": rec}

    @classmethod
    def from_log(cls, shard: int, index: int, d: Mapping[str, Any]) -> Change:
        kind = ChangeKind(d["k"])
        rec = d.get("rec")
        return cls(kind, shard, index, str(d["ns"]), str(d["id"]),
                   before=rec if kind is not ChangeKind.PUT else None,
                   after=rec if kind is ChangeKind.PUT else None,
                   time_ms=int(d.get("t") or 0), prev_version=d.get("pv"))


class Compacted(Exception):
    """The change log no longer holds the changes after an index: they were
    trimmed (retention) or never kept. `oldest` is the earliest token a resume
    may name now (every change after it is still there)."""

    def __init__(self, shard: int, oldest: int) -> None:
        super().__init__(f"shard {shard}: changes before index {oldest + 1} are no longer kept")
        self.shard = shard
        self.oldest = oldest


@dataclass(frozen=True)
class ChangePage:
    """Changes of one shard read back from a replica's change log, in log order:
    every change in (after, through]; `through` is the replica's applied index
    when the page is complete, else the index of the last change given."""

    shard: int
    changes: list[Change]
    through: int
    complete: bool


class Overflowed(Exception):
    """The subscriber fell more than its queue behind and was cut off. `last`
    maps each shard to the last index this subscription delivered."""

    def __init__(self, last: Mapping[int, int]) -> None:
        super().__init__(f"subscription fell behind and was closed (last delivered: {dict(last)})")
        self.last = dict(last)


class Closed(Exception):
    """The subscription was closed (by its owner, or the feed shut down)."""


@dataclass(eq=False)
class Subscription:
    """Changes of some shards (all when `shards` is None), in log order per shard."""

    feed: ChangeFeed
    shards: frozenset[int] | None
    queue_max: int = SUBSCRIPTION_QUEUE_MAX
    _queue: collections.deque[Change] = field(default_factory=collections.deque)
    _waiter: asyncio.Future[None] | None = None
    _error: Exception | None = None
    _last: dict[int, int] = field(default_factory=dict)
    _wake_at: int = 1  # queued changes that wake the waiter (`gather` raises it)

    def wants(self, change: Change) -> bool:
        return self.shards is None or change.shard in self.shards

    def _offer(self, change: Change) -> bool:
        """False: this subscriber is full and is now cut off."""
        if len(self._queue) >= self.queue_max:
            self._fail(Overflowed(self._last))
            return False
        self._queue.append(change)
        if len(self._queue) >= self._wake_at:
            self._wake()
        return True

    def _fail(self, error: Exception) -> None:
        if self._error is None:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None:
            settle_waiter(self._waiter)

    def pending(self) -> int:
        return len(self._queue)

    def get_nowait(self) -> Change | None:
        """The next change if one is queued; raises once cut off or closed
        (after everything queued before that was taken)."""
        if self._queue:
            change = self._queue.popleft()
            self._last[change.shard] = change.index
            return change
        if isinstance(self._error, Overflowed):
            raise Overflowed(self._last)  # as of now: everything queued was taken
        if self._error is not None:
            raise self._error
        return None

    async def get(self, timeout_s: float | None = None) -> Change | None:
        """The next change; None when `timeout_s` passes first and nothing is
        queued (a change published as the wait timed out is returned: a caller
        told None may take everything applied so far as seen)."""
        change = self.get_nowait()
        if change is not None:
            return change
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await until_settled(waiter, timeout_s)
        finally:
            self._waiter = None
        return self.get_nowait()

    async def gather(self, count: int, timeout_s: float) -> None:
        """Until `count` changes are queued, the subscription is cut off or
        closed, or `timeout_s` passes: a consumer that takes its changes in
        batches waits here between them, and never past half its queue."""
        if len(self._queue) >= count or self._error is not None:
            return
        self._wake_at = count
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await until_settled(waiter, timeout_s)
        finally:
            self._waiter = None
            self._wake_at = 1

    def close(self) -> None:
        self.feed.unsubscribe(self)
        self._fail(Closed("subscription closed"))


def settle_waiter(waiter: asyncio.Future[None]) -> None:
    """Wake a bare future a waiter awaits (once; a timer may race the wake-up)."""
    if not waiter.done():
        waiter.set_result(None)


async def until_settled(waiter: asyncio.Future[None], timeout_s: float | None) -> None:
    """Until `waiter` is settled, or `timeout_s` passes. A bare future and a
    timer: wait_for and shield cost a task and two more futures per wait, and
    every watcher and index waits once per change."""
    loop = asyncio.get_running_loop()
    timer = None if timeout_s is None else loop.call_later(timeout_s, settle_waiter, waiter)
    try:
        await waiter
    finally:
        if timer is not None:
            timer.cancel()


class ChangeFeed:
    """A node's change events, fanned out to its subscriptions."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []
        self.published = 0
        self.overflows = 0
        # Per shard: the index of the last change published (a watermark: every
        # change at or below it has been handed to every live subscriber).
        self.watermarks: dict[int, int] = {}

    def subscribe(self, shards: Iterable[int] | None = None, queue_max: int = SUBSCRIPTION_QUEUE_MAX) -> Subscription:
        sub = Subscription(self, None if shards is None else frozenset(shards), queue_max)
        self._subscriptions.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscriptions:
            self._subscriptions.remove(sub)

    def publish(self, changes: Iterable[Change]) -> None:
        """Hand changes to every subscriber that wants them; never blocks."""
        # No assertion here: this runs inside apply, and a raising apply is
        # retried by pysyncobj forever (log order is the state machine's to keep).
        for change in changes:
            self.watermarks[change.shard] = change.index
            self.published += 1
            for sub in list(self._subscriptions):
                if sub.wants(change) and not sub._offer(change):
                    self.overflows += 1
                    self.unsubscribe(sub)

    def shard_dropped(self, shard: int) -> None:
        """This node no longer holds `shard` (its data is deleted): whatever was
        derived from it goes, and a later replica of it starts again from index 0."""
        self.publish([Change(ChangeKind.RESET, shard, 0)])
        self.watermarks.pop(shard, None)

    def close(self) -> None:
        for sub in list(self._subscriptions):
            sub.close()
