"""The node's HTTP listener, guarded against clients that hold connections
without using them.

aiohttp's server, left alone, waits forever for a connection's first request
(an hour between requests), so 10,000 idle sockets or a slowloris (headers
trickled a byte at a time) each hold a connection and its buffers for as long
as they like. The listener here wraps every aiohttp connection and sweeps
them once a second:

- a connection that has started a request but not finished sending its head
  within `limits.header_timeout_ms` is closed (slowloris);
- a connection idle between requests for `limits.idle_timeout_ms` is closed;
- past `limits.connections_max` connections, a new one evicts the connection
  idle the longest, or is answered 503 and closed when none is idle, so
  idle sockets never lock out a client with work to do.

A request being handled is left alone here: a body sent too slowly is the API
layer's to time out (`limits.body_timeout_ms`, 408), and a body too large is
refused at `limits.body_bytes_max` (413).

The connection knows when a request starts and ends from the API's middleware
(`started`, `finished`), so this needs nothing private of aiohttp: its server
(`AppRunner.server`) is an asyncio protocol factory, wrapped here.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Callable
from typing import Any, cast

from aiohttp import web

from .config import LimitsConfig

log = logging.getLogger(__name__)

SWEEP_PERIOD_S = 1.0
_REFUSAL_BODY = b'{"error":{"code":"unavailable","message":"too many connections, and none idle to make room"}}'
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
    b"Retry-After: 1\r\nContent-Length: %d\r\n\r\n%s" % (len(_REFUSAL_BODY), _REFUSAL_BODY)
)


class _Connection(asyncio.Protocol):
    """One client connection: aiohttp's handler inside, and what the guard
    needs to know of it."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self.inner = inner
        self.guard = guard
        self.transport: asyncio.Transport | None = None
        self.busy = 0  # requests being handled
        now = time.monotonic()
        self.waiting_since = now  # when it last became free (opened, or a request ended)
        self.head_since: float | None = None  # first byte of a request not yet being handled

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (uvloop's transports are not asyncio.Transport subclasses; they behave as one)
        self.transport = cast(asyncio.Transport, transport)
        if not self.guard.admit(self):
            self.transport.write(_REFUSAL)
            self.transport.close()
            return
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self.busy and self.head_since is None:
            self.head_since = time.monotonic()
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.gone(self)
        if self.inner in self.guard.by_handler:
            del self.guard.by_handler[self.inner]
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class ConnectionGuard:
    def __init__(self, limits: LimitsConfig) -> None:
        self.connections_max = limits.connections_max
        self.header_timeout_s = limits.header_timeout_ms / 1000
        self.idle_timeout_s = limits.idle_timeout_ms / 1000
        self.open: dict[_Connection, None] = {}  # in order of arrival
        self.by_handler: dict[Any, _Connection] = {}
        self.closed = {"header_timeout": 0, "idle": 0, "evicted": 0, "refused": 0}

    def wrap(self, factory: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        def make() -> asyncio.Protocol:
            inner = factory()
            conn = _Connection(inner, self)
            self.by_handler[inner] = conn
            return conn

        return make

    def admit(self, conn: _Connection) -> bool:
        if len(self.open) >= self.connections_max:
            idle = [c for c in self.open if not c.busy and c.head_since is None]
            if not idle:
                self.closed["refused"] += 1
                return False
            victim = min(idle, key=lambda c: c.waiting_since)
            self._close(victim, "evicted")
        self.open[conn] = None
        return True

    def gone(self, conn: _Connection) -> None:
        self.open.pop(conn, None)

    # -- from the API's middleware -----------------------------------------------
    def started(self, handler: Any) -> None:
        conn = self.by_handler.get(handler)
        if conn is not None:
            conn.busy += 1
            conn.head_since = None

    def finished(self, handler: Any) -> None:
        conn = self.by_handler.get(handler)
        if conn is not None:
            conn.busy = max(0, conn.busy - 1)
            conn.waiting_since = time.monotonic()

    # -- the sweep -------------------------------------------------------------------
    def sweep(self, now: float) -> None:
        for conn in list(self.open):
            if conn.busy:
                continue
            if conn.head_since is not None and now - conn.head_since > self.header_timeout_s:
                self._close(conn, "header_timeout")
            elif conn.head_since is None and now - conn.waiting_since > self.idle_timeout_s:
                self._close(conn, "idle")

    def _close(self, conn: _Connection, why: str) -> None:
        self.closed[why] += 1
        self.open.pop(conn, None)
        if conn.transport is not None:
            conn.transport.abort()


class Listener:
    """The node's HTTP server: aiohttp's app behind the connection guard."""

    def __init__(self, app: web.Application, guard: ConnectionGuard) -> None:
        self.runner = web.AppRunner(app, access_log=None)
        self.guard = guard
        self._server: asyncio.AbstractServer | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int, ssl_context: ssl.SSLContext | None) -> None:
        await self.runner.setup()
        server = self.runner.server
        assert server is not None
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self.guard.wrap(server), host, port, ssl=ssl_context, reuse_address=True, backlog=1024,
        )
        self._sweeper = asyncio.create_task(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_PERIOD_S)
            try:
                self.guard.sweep(time.monotonic())
            except Exception:
                log.exception("connection sweep failed")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        await self.runner.cleanup()
