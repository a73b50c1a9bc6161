"""The client's watch() against scripted servers: it resumes from the tokens it
has after a break, an overflow or an error event, skips the events of an entry
it gets again after a cut, raises Compacted, gives up after `outage_s` without
a server, and refuses bad input without retrying."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from raftmem.client import AsyncClient, Compacted, InvalidRequest, Progress, Unavailable, WatchEvent


def ev(token: str, seq: int = 0, last: bool = True, mid: str = "m", version: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {"type": "put", "token": token, "seq": seq, "namespace": "ns", "id": mid,
                            "version": version, "prev_version": None, "time": 1, "record": {"id": mid}}
    if last:
        body["last"] = True
    return body


Script = Callable[[int, dict[str, str]], tuple[int, list[dict[str, Any]]]]


class Scripted:
    """A node whose n-th GET /v1/watch answers what the script says (status,
    lines), then closes the stream; it records the query of each."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.queries: list[dict[str, str]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        status, lines = self.script(len(self.queries) - 1, dict(request.query))
        if status != 200:
            return web.json_response(lines[0] if lines else {}, status=status)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                               "X-Raftmem-Served-By": "n1"})
        await response.prepare(request)
        for line in lines:
            await response.write(orjson.dumps(line) + b"\n")
        return response


@contextlib.asynccontextmanager
async def _client(scripted: Scripted) -> AsyncIterator[tuple[AsyncClient, TestServer]]:
    app = web.Application()
    app.router.add_get("/v1/watch", scripted.handle)
    server = TestServer(app)
    await server.start_server()
    client = AsyncClient([str(server.make_url("")).rstrip("/")], route_direct=False)
    try:
        yield client, server
    finally:
        await client.close()
        await server.close()


async def _take(client: AsyncClient, count: int, **kw: Any) -> tuple[list[WatchEvent | Progress], Any]:
    watch = client.watch(**kw)
    got: list[WatchEvent | Progress] = []
    async for item in watch:
        got.append(item)
        if len(got) >= count:
            break
    await watch.close()
    return got, watch


async def test_it_resumes_from_its_tokens_and_skips_an_entry_it_gets_again() -> None:
    def script(n: int, query: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
        if n == 0:  # entry 0:5 has two events: the stream breaks after the first
            return 200, [{"type": "progress", "tokens": "0:0,1:0"}, ev("0:4"), ev("1:2"),
                         ev("0:5", seq=0, last=False, mid="a")]
        if n == 1:  # the whole entry again, then an overflow
            return 200, [ev("0:5", seq=0, last=False, mid="a"), ev("0:5", seq=1, mid="b"),
                         {"type": "overflow", "tokens": "0:5,1:7"}]
        return 200, [ev("1:9"), {"type": "progress", "tokens": "0:12,1:9"}]

    scripted = Scripted(script)
    async with _client(scripted) as (client, _):
        got, watch = await _take(client, 7, namespace="ns", progress=True)
        events = [(g.token, g.seq, g.id) for g in got if isinstance(g, WatchEvent)]
        assert events == [("0:4", 0, "m"), ("1:2", 0, "m"), ("0:5", 0, "a"), ("0:5", 1, "b"), ("1:9", 0, "m")]
        assert [q.get("after") for q in scripted.queries] == [None, "0:4,1:2", "0:5,1:7"]
        assert scripted.queries[0]["namespace"] == "ns"
        assert watch.tokens == "0:12,1:9" and isinstance(got[-1], Progress)


async def test_an_error_event_moves_on_and_a_410_raises_compacted() -> None:
    def script(n: int, query: dict[str, str]) -> tuple[int, list[dict[str, Any]]]:
        if n == 0:
            return 200, [ev("0:3"), {"type": "error", "code": "no_leader", "message": "x", "tokens": "0:3"}]
        return 410, [{"error": {"code": "compacted", "message": "gone", "oldest": "0:40"}}]

    async with _client(Scripted(script)) as (client, _):
        watch = client.watch(after="0:1")
        assert (await watch.__anext__()).token == "0:3"
        with pytest.raises(Compacted) as caught:
            await watch.__anext__()
        assert caught.value.oldest == {0: 40} and caught.value.status == 410


async def test_a_compacted_event_mid_stream_raises_too() -> None:
    async with _client(Scripted(lambda n, q: (200, [
            {"type": "compacted", "shard": 1, "oldest": "1:9", "tokens": "0:1,1:2"}]))) as (client, _):
        with pytest.raises(Compacted):
            await _take(client, 1)


async def test_bad_input_is_not_retried() -> None:
    scripted = Scripted(lambda n, q: (400, [{"error": {"code": "invalid_request", "message": "colour"}}]))
    async with _client(scripted) as (client, _):
        with pytest.raises(InvalidRequest):
            await _take(client, 1)
        assert len(scripted.queries) == 1


async def test_it_gives_up_after_outage_s_without_a_node() -> None:
    scripted = Scripted(lambda n, q: (503, [{"error": {"code": "no_leader", "message": "x"}}]))
    async with _client(scripted) as (client, _):
        with pytest.raises(Unavailable):
            await _take(client, 1, outage_s=0.5)
        assert len(scripted.queries) >= 2  # retried meanwhile


async def test_a_group_resumes_every_watch_from_its_own_tokens_moved_only_past_what_it_gave() -> None:
    """Many watches on one connection: a line holds many events of one watch;
    a watch's tokens move one event at a time (saved mid-line, they resume
    from what was given); after an overflow of one watch the group comes back
    with every watch's own tokens."""
    bodies: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        bodies.append(orjson.loads(await request.read()))
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson", "X-Raftmem-Served-By": "n1"})
        await response.prepare(request)
        if len(bodies) == 1:
            lines = [{"watch": "a", "events": [ev("0:4", mid="x"), ev("0:6", mid="y"), ev("1:3", mid="z")]},
                     {"watch": "b", "events": [{"type": "progress", "tokens": "0:9,1:9"}]},
                     {"watch": "a", "events": [{"type": "overflow", "tokens": "0:6,1:3"}]}]
        else:
            lines = [{"watch": "a", "events": [ev("1:3", mid="z"), ev("1:5", mid="w")]}]
        for line in lines:
            await response.write(orjson.dumps(line) + b"\n")
        return response

    app = web.Application()
    app.router.add_post("/v1/watch", handle)
    server = TestServer(app)
    await server.start_server()
    client = AsyncClient([str(server.make_url("")).rstrip("/")], route_direct=False)
    try:
        group = client.watch_many({"a": {"namespace": "ns", "after": "0:0,1:0"}, "b": {"tag": "t"}}, progress=True)
        watch_id, first = await group.__anext__()
        assert (watch_id, first.id) == ("a", "x")  # type: ignore[union-attr]
        assert group.tokens["a"] == "0:4,1:0"  # not past y and z, not given yet
        got = [first] + [(await group.__anext__())[1] for _ in range(4)]
        assert [getattr(e, "id", None) for e in got] == ["x", "y", "z", None, "w"]  # z not twice
        assert isinstance(got[3], Progress) and group.tokens == {"a": "0:6,1:5", "b": "0:9,1:9"}
        assert bodies[0]["watches"] == [{"id": "a", "namespace": "ns", "after": "0:0,1:0"}, {"id": "b", "tag": "t"}]
        assert bodies[1]["watches"] == [{"id": "a", "namespace": "ns", "after": "0:6,1:3"},
                                        {"id": "b", "tag": "t", "after": "0:9,1:9"}]
        await group.close()
    finally:
        await client.close()
        await server.close()
