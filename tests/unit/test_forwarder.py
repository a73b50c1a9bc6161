"""The forwarder between nodes (raftmem.api.HttpForwarder) against a local
aiohttp server: a forward that never got a connection was not sent (503, not
504), and waiting forwards (lock acquisitions, task claims that wait at the
leader) have a pool and a bound of their own, so they never hold up the
other forwards (review finding 1)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

import raftmem.api as api
from raftmem.api import HttpForwarder
from raftmem.config import embedded_default
from raftmem.errors import Overloaded
from raftmem.service import Call, ForwardLost, ForwardNotSent

HOLD_S = 1.5


@pytest.fixture
async def peer() -> AsyncIterator[tuple[str, list[str]]]:
    """A node that answers /fast at once and holds /slow for HOLD_S; the paths it saw."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.path)
        if request.path == "/slow":
            await asyncio.sleep(HOLD_S)
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def _forwarder(url: str, waiters_max: int = 4096) -> HttpForwarder:
    config = embedded_default()
    config = dataclasses.replace(config, coordination=dataclasses.replace(config.coordination,
                                                                          waiters_max=waiters_max))
    forwarder = HttpForwarder(config)
    await forwarder.start()
    forwarder.set_urls({"leader": url})
    return forwarder


def _call(path: str, waits: bool = False) -> Call:
    return Call("POST", path, body=b"{}", waits=waits)


async def test_a_forward_that_never_got_a_pooled_connection_was_not_sent(
        peer: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    """Its timeout ran out while it waited for a connection of the pool: the
    peer never saw it, so it is ForwardNotSent (503), not ForwardLost (504)."""
    url, seen = peer
    monkeypatch.setattr(api, "FORWARD_CONNECTIONS_PER_PEER_MAX", 1)
    forwarder = await _forwarder(url)
    try:
        busy = asyncio.ensure_future(forwarder.forward("leader", _call("/slow"), 10))
        while seen != ["/slow"]:
            await asyncio.sleep(0.01)
        with pytest.raises(ForwardNotSent):
            await forwarder.forward("leader", _call("/fast"), 0.3)
        assert seen == ["/slow"]
        assert (await busy).status == 200
        # Control: one that reached the peer and timed out is lost (it may have applied).
        with pytest.raises(ForwardLost):
            await forwarder.forward("leader", _call("/slow"), 0.3)
        assert seen == ["/slow", "/slow"]
    finally:
        busy.cancel()
        await forwarder.close()


async def test_waiting_forwards_do_not_hold_up_other_forwards_and_are_bounded(
        peer: tuple[str, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    url, seen = peer
    monkeypatch.setattr(api, "FORWARD_CONNECTIONS_PER_PEER_MAX", 1)
    forwarder = await _forwarder(url, waiters_max=2)
    try:
        waiting = [asyncio.ensure_future(forwarder.forward("leader", _call("/slow", waits=True), 10))
                   for _ in range(2)]
        while seen.count("/slow") < 2:
            await asyncio.sleep(0.01)
        # A plain forward goes at once, though two waiting ones hold connections
        # (and the plain pool has one per peer).
        started = asyncio.get_running_loop().time()
        assert (await forwarder.forward("leader", _call("/fast"), 5)).status == 200
        assert asyncio.get_running_loop().time() - started < HOLD_S / 2
        # Past coordination.waiters_max waiting forwards on this node: 429, not sent.
        with pytest.raises(Overloaded):
            await forwarder.forward("leader", _call("/slow", waits=True), 10)
        assert [r.status for r in await asyncio.gather(*waiting)] == [200, 200]
        assert (await forwarder.forward("leader", _call("/fast", waits=True), 5)).status == 200
    finally:
        await forwarder.close()
