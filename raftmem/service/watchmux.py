"""Many watches on one connection (POST /v1/watch), as etcd's clients carry
every watch of a process on one gRPC stream.

Each watch is a WatchStream of its own (its filter, tokens, outbox, bound and
terminal event); its events are framed as JSON array items (Framing.ITEMS),
and every write of it goes out as one line `{"watch": id, "events": [...]}`
(an SSE `data:` line when asked). What the streams hand over within one turn
of the event loop (the fan-out offers a batch to every stream in one go) is
joined and written to the socket once: one system call per batch for a
hundred watches, where a hundred connections cost a hundred.

Order: every write of every stream goes through one FIFO (`_pending`, then
the connection), so each watch's lines keep their order; lines of different
watches may interleave, whole. A client that does not read fills the
connection's buffer; past `high_water` bytes the streams' writes stop going
straight out (`send_now` says False) and wait in their writers, bounded by
each stream's outbox, as a single stream's do: a connection of N watches
holds at most `high_water` plus one write per watch (what N connections
would), besides the outboxes. The writers wait for room on one drain of the
connection, shielded: aiohttp's drain waits on one future per connection, and
a waiter cancelled (a watch's write timing out) cancelled it for every other.

A watch that ends without its last event (its client took nothing for
WRITE_STALL_S, or a defect) ends the connection (`Body.abort`): the client
comes back with every watch's tokens, rather than keep a connection on which
one watch went silent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

import orjson


class Body(Protocol):
    """A streamed response's body, written as it goes."""

    raw: bool  # `write` may be used (else only `send`)

    def buffered(self) -> int | None:
        """Bytes written and not yet taken by the socket; None: closed."""

    def write(self, data: bytes) -> None:
        """Write at once (framed as the response needs), without waiting."""

    async def send(self, data: bytes) -> None:
        """Write, then wait while the client is behind."""

    async def drain(self) -> None:
        """Wait while the client is behind."""

    def abort(self) -> None:
        """End the connection at once."""


class Mux:
    """The writes of one connection's watches, joined per turn of the loop."""

    def __init__(self, body: Body, sse: bool, high_water: int, on_write: Callable[[], None]) -> None:
        self.body = body
        self.on_write = on_write  # each write to the socket
        self.high_water = high_water
        self._tail = b"]}\n\n" if sse else b"]}\n"
        self._lead = b"data: " if sse else b""
        self._pending: list[bytes | memoryview] = []
        self._pending_bytes = 0
        self._scheduled = False
        self._draining: asyncio.Future[None] | None = None

    def writer(self, watch_id: str) -> tuple[Callable[[bytes], Awaitable[None]], Callable[[bytes], bool]]:
        """One watch's `send` and `send_now` (see WatchStream.run): its events
        (each followed by a comma) go out as one line naming the watch."""
        head = self._lead + b'{"watch":' + orjson.dumps(watch_id) + b',"events":['

        def send_now(data: bytes) -> bool:
            buffered = self.body.buffered()
            if not self.body.raw or buffered is None or buffered + self._pending_bytes > self.high_water:
                return False
            self._post(head, data)
            return True

        async def send(data: bytes) -> None:
            if not self.body.raw:  # each write its own, awaited; shielded as `_room` is
                sending = asyncio.ensure_future(self.body.send(head + memoryview(data)[:-1] + self._tail))
                sending.add_done_callback(_retrieved)
                await asyncio.shield(sending)
                self.on_write()
                return
            self._post(head, data)
            self.flush()  # in order after whatever waited
            buffered = self.body.buffered()
            if buffered is not None and buffered > self.high_water:
                await self._room()

        return send, send_now

    async def _room(self) -> None:
        """Until the client has taken what the connection holds: one drain
        for every waiting writer, which a waiter's cancellation leaves running."""
        if self._draining is None or self._draining.done():
            self._draining = asyncio.ensure_future(self.body.drain())
            self._draining.add_done_callback(_retrieved)
        await asyncio.shield(self._draining)

    def _post(self, head: bytes, data: bytes) -> None:
        self._pending += (head, memoryview(data)[:-1], self._tail)  # the events' last comma left out
        self._pending_bytes += len(head) + len(data) + len(self._tail)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def _take(self) -> bytes:
        data = b"".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        return data

    def flush(self) -> None:
        """Write what waits, in one piece."""
        self._scheduled = False
        if not self._pending:
            return
        joined = self._take()
        if self.body.buffered() is None:
            return  # closed: the streams find out (alive()) and end
        self.body.write(joined)
        self.on_write()


def _retrieved(task: asyncio.Future[None]) -> None:
    """A drain's failure (the connection broke) is each waiter's to see; none
    may be waiting when it ends."""
    if not task.cancelled():
        task.exception()
