"""Waiting on Raft, on the event loop: ReadIndex (leadership confirmed by a
quorum after a read arrived) and waiting for an applied index. Woken by the
tick passes (a quorum acknowledgement, an applied entry), with a short re-check
as a safety net."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..errors import NoLeader, Unavailable

if TYPE_CHECKING:
    from .group import RaftGroup

# ReadIndex waiters are woken by quorum acks; this is only a safety re-check.
QUORUM_RECHECK_S = 0.05


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class Waits:
    def __init__(self, group: RaftGroup, loop: asyncio.AbstractEventLoop, read_timeout_s: float) -> None:
        self.group = group
        self.loop = loop
        self.read_timeout_s = read_timeout_s
        # Commits an entry of the leader's term through the shard's write queue
        # (group commit), returning its index: set by the shard implementation.
        self.barrier: Callable[[], Awaitable[int]] | None = None
        self._apply_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._quorum_waiters: list[asyncio.Future[None]] = []

    async def read_index(self) -> int:
        """ReadIndex: the commit index at arrival, once a quorum has acknowledged
        a send made after arrival in the same term (leadership confirmed)."""
        group = self.group
        shard = group.shard
        if not group.is_leader():
            raise NoLeader(f"this node does not lead shard {shard}", shard=shard)
        if not group.noop_committed():
            # An entry of this term, committed after the read arrived, confirms
            # leadership and brings the commit index up to date.
            assert self.barrier is not None, "the shard wires its barrier at construction"
            return await self.barrier()
        term = group.term
        index = group.commit_index
        arrival = time.monotonic()
        deadline = arrival + self.read_timeout_s
        while group.quorum_ack_time(term) < arrival:
            if group.term != term or not group.is_leader():
                raise NoLeader(f"shard {shard}: leadership lost during a read", shard=shard)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"shard {shard}: no quorum confirmed leadership", shard=shard)
            future: asyncio.Future[None] = self.loop.create_future()
            self._quorum_waiters.append(future)
            group.request_heartbeat(arrival)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, min(remaining, QUORUM_RECHECK_S))
        if group.term != term:
            raise NoLeader(f"shard {shard}: leadership lost during a read", shard=shard)
        return index

    async def wait_applied(self, index: int, timeout_s: float) -> bool:
        """Wait until this replica has applied `index`; False on timeout."""
        if self.group.last_applied >= index:
            return True
        future: asyncio.Future[None] = self.loop.create_future()
        self._apply_waiters.append((index, future))
        try:
            await asyncio.wait_for(future, timeout_s)
            return True
        except TimeoutError:
            return self.group.last_applied >= index
        finally:
            self._apply_waiters = [(i, f) for i, f in self._apply_waiters if f is not future]

    # -- from tick passes (the loop thread) --------------------------------------------
    def quorum_acked(self) -> None:
        if self._quorum_waiters:
            self.loop.call_soon(self._wake_quorum_waiters)

    def _wake_quorum_waiters(self) -> None:
        waiters, self._quorum_waiters = self._quorum_waiters, []
        for future in waiters:
            _resolve(future)

    def applied(self) -> None:
        if self._apply_waiters:
            self.loop.call_soon(self._wake_apply_waiters)

    def _wake_apply_waiters(self) -> None:
        applied = self.group.last_applied
        for index, future in self._apply_waiters:
            if index <= applied:
                _resolve(future)
