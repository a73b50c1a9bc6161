"""Requests that wait for a lock or a task, on the leader of its shard: served
in order of arrival, woken when the state machine frees a lock or readies a
task (and at least every `waiter_poll_ms`), bounded in number.

Only the first waiter of a key proposes: the others wait their turn, so a lock
goes to waiters in the order they came. A release that finds a waiter starts
the waiter's acquisition with it (`hand_over`), so both ride in one log entry (a request that does not wait may
still take a lock that is free at that moment: it is not a waiter). The queue
lives in the leader's memory: after a change of leader the waiters go on at
the new leader (the router forwards them), behind those already there.

A waiter whose request is cancelled (its client disconnected: the API cancels
the request) leaves its queue at once. If a proposal of its was already in
the log, what it won is given back once it commits (`undo`): a lock nobody
can learn about is released, a claimed task returned to the queue.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from ..commands import Committed
from ..config import CoordinationConfig
from ..errors import Overloaded

log = logging.getLogger(__name__)

Key = tuple[int, str, str, str]  # (shard, "lock" | "tasks", namespace, name)
PAUSE_S_MIN = 0.005  # between two proposals of one waiter, whatever it was told


@dataclass(eq=False)
class Ticket:
    key: Key
    woken: asyncio.Event = field(default_factory=asyncio.Event)
    attempt: Callable[[], Awaitable[Committed]] | None = None
    undo: Callable[[Committed], Awaitable[object]] | None = None
    proposing: bool = False
    # A proposal started for this waiter by `hand_over`, not yet awaited.
    handed: asyncio.Future[Committed] | None = None


class Waiters:
    def __init__(self, config: CoordinationConfig) -> None:
        self.per_key_max = config.waiters_per_key_max
        self.total_max = config.waiters_max
        self.poll_s = config.waiter_poll_ms / 1000
        self._queues: dict[Key, collections.deque[Ticket]] = {}
        self._total = 0
        self._undoing: set[asyncio.Task[None]] = set()
        self.served = 0
        self.gave_back = 0

    def waiting(self, key: Key | None = None) -> int:
        return self._total if key is None else len(self._queues.get(key, ()))

    def wake(self, key: Key) -> None:
        """Something changed for `key`: its first waiter looks again."""
        queue = self._queues.get(key)
        if queue:
            queue[0].woken.set()

    @asynccontextmanager
    async def _enter(self, key: Key) -> AsyncIterator[Ticket]:
        queue = self._queues.setdefault(key, collections.deque())
        if len(queue) >= self.per_key_max or self._total >= self.total_max:
            if not queue:
                del self._queues[key]
            raise Overloaded(
                f"too many waiters ({len(queue)} here, {self._total} on this node; limits "
                f"coordination.waiters_per_key_max={self.per_key_max}, waiters_max={self.total_max})"
            )
        ticket = Ticket(key)
        queue.append(ticket)
        self._total += 1
        try:
            yield ticket
        finally:
            queue.remove(ticket)
            self._total -= 1
            if ticket.handed is not None and ticket.undo is not None:  # started for it, never awaited
                undo = ticket.undo
                ticket.handed.add_done_callback(lambda t: self._give_back(t, undo))
            if queue:
                queue[0].woken.set()  # the next in line
            else:
                del self._queues[key]

    def _first(self, ticket: Ticket) -> bool:
        return self._queues[ticket.key][0] is ticket

    def hand_over(self, key: Key) -> bool:
        """Called with a release of `key` being proposed: start the first
        waiter's acquisition now, so that group commit packs it into the same
        log entry, right after the release (one entry per hand-over instead of
        two in a row). False: nobody waits, or the first is already proposing."""
        queue = self._queues.get(key)
        head = queue[0] if queue else None
        if head is None or head.attempt is None or head.proposing or head.handed is not None:
            return False
        head.handed = asyncio.ensure_future(head.attempt())
        head.woken.set()
        return True

    async def run(
        self,
        key: Key,
        wait_s: float,
        attempt: Callable[[], Awaitable[Committed]],
        undo: Callable[[Committed], Awaitable[object]],
        retry_in_s: Callable[[Committed], float] = lambda _done: float("inf"),
    ) -> Committed | None:
        """Propose with `attempt` until its outcome is not busy, in turn with the
        other waiters of `key`, for at most `wait_s`. Returns the last outcome,
        or None when the wait ran out before this request's turn came (nothing
        was proposed). `retry_in_s`: when a busy outcome is worth another try
        anyway (a lease's end), besides the wake-ups and the poll."""
        if wait_s <= 0:
            return await self._propose(attempt, undo)
        deadline = time.monotonic() + wait_s
        done: Committed | None = None
        async with self._enter(key) as ticket:
            ticket.attempt, ticket.undo = attempt, undo
            if self._first(ticket):
                ticket.woken.set()  # first in line on arrival: try at once
            while True:
                pause = self.poll_s if done is None else max(PAUSE_S_MIN, min(self.poll_s, retry_in_s(done)))
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return done
                if not ticket.woken.is_set():
                    try:
                        await asyncio.wait_for(ticket.woken.wait(), min(pause, remaining))
                    except TimeoutError:
                        pass
                if not self._first(ticket) or time.monotonic() >= deadline:
                    continue
                # Cleared before proposing, not before waiting: a wake-up that
                # comes while the proposal is in the log is not lost.
                ticket.woken.clear()
                handed, ticket.handed = ticket.handed, None
                ticket.proposing = True
                try:
                    done = await self._propose(attempt, undo, handed)
                finally:
                    ticket.proposing = False
                if not done.result.outcome.busy:
                    self.served += 1
                    return done

    async def _propose(
        self, attempt: Callable[[], Awaitable[Committed]], undo: Callable[[Committed], Awaitable[object]],
        started: asyncio.Future[Committed] | None = None,
    ) -> Committed:
        """One proposal (or the one `hand_over` `started`) that outlives its
        caller: if the request is cancelled while the proposal is in the log,
        what it won is given back."""
        task = started if started is not None else asyncio.ensure_future(attempt())
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(lambda t: self._give_back(t, undo))
            raise

    def _give_back(self, task: asyncio.Future[Committed], undo: Callable[[Committed], Awaitable[object]]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        done = task.result()
        if not done.result.outcome.ok or done.result.outcome.busy:
            return
        self.gave_back += 1
        undoing = asyncio.ensure_future(self._undo(undo, done))
        self._undoing.add(undoing)
        undoing.add_done_callback(self._undoing.discard)

    @staticmethod
    async def _undo(undo: Callable[[Committed], Awaitable[object]], done: Committed) -> None:
        try:
            await undo(done)
        except Exception as e:  # the lease or claim runs out instead
            log.warning("giving back what a cancelled waiter won (index %d) failed: %s", done.index, e)
