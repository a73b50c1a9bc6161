"""Many watches on one connection (raftmem.service.watchmux): what a turn of
the loop hands over goes out in one write, each watch's writes keep their
order, a connection whose client is behind refuses writes at once."""

from __future__ import annotations

import asyncio

import orjson

from raftmem.service.watchmux import Mux


class Body:
    """A connection's body as the API gives it, recording its writes."""

    def __init__(self, raw: bool = True) -> None:
        self.raw = raw
        self.writes: list[bytes] = []
        self.sent: list[bytes] = []
        self.held = 0  # bytes the socket has not taken
        self.closed = False
        self.drains = 0

    def buffered(self) -> int | None:
        return None if self.closed else self.held

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    async def send(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    async def drain(self) -> None:
        self.drains += 1
        self.held = 0


def lines(data: bytes) -> list[tuple[str, list[int]]]:
    return [(o["watch"], [e["n"] for e in o["events"]]) for o in map(orjson.loads, data.splitlines())]


def events(*ns: int) -> bytes:
    return b"".join(orjson.dumps({"n": n}) + b"," for n in ns)


async def test_what_a_turn_of_the_loop_hands_over_goes_out_in_one_write() -> None:
    body, count = Body(), []
    mux = Mux(body, sse=False, high_water=1 << 20, on_write=lambda: count.append(1))
    a, b = mux.writer("a")[1], mux.writer("b")[1]
    assert a(events(1, 2)) and b(events(3)) and a(events(4))
    assert body.writes == []  # nothing yet: at the end of this turn
    await asyncio.sleep(0)
    assert len(body.writes) == 1 and len(count) == 1
    assert lines(body.writes[0]) == [("a", [1, 2]), ("b", [3]), ("a", [4])]


async def test_an_awaited_send_goes_after_what_waits_and_waits_for_a_client_behind() -> None:
    body = Body()
    mux = Mux(body, sse=True, high_water=100, on_write=lambda: None)
    send_a, now_a = mux.writer("a")
    assert now_a(events(1))
    await send_a(events(2))  # written at once, after the first: one piece
    assert len(body.writes) == 1 and body.writes[0].startswith(b'data: {"watch":"a"')
    assert [o for o in body.writes[0].split(b"\n\n") if o] == [
        b'data: {"watch":"a","events":[{"n":1}]}', b'data: {"watch":"a","events":[{"n":2}]}']
    body.held = 500
    await send_a(events(3))
    assert body.drains == 1  # past high water: it waited


async def test_a_client_behind_or_gone_refuses_writes_at_once() -> None:
    body = Body()
    mux = Mux(body, sse=False, high_water=100, on_write=lambda: None)
    now = mux.writer("a")[1]
    body.held = 90
    assert now(events(1)) is True  # under the mark: taken
    assert now(events(*range(20))) is False  # what waits and the buffer pass it: the stream's writer waits
    body.closed = True
    assert now(events(2)) is False
    await asyncio.sleep(0)
    assert body.writes == []  # closed: dropped, the streams find out and end


async def test_a_connection_without_raw_writes_sends_each_line_awaited() -> None:
    body = Body(raw=False)
    mux = Mux(body, sse=False, high_water=100, on_write=lambda: None)
    send, now = mux.writer("x")
    assert now(events(1)) is False
    await send(events(1, 2))
    assert body.writes == [] and lines(body.sent[0]) == [("x", [1, 2])]


async def test_a_writer_that_stops_waiting_leaves_the_others_waiting_for_the_same_drain() -> None:
    """aiohttp's drain waits on one future per connection: a writer whose wait
    was cancelled (its write timed out) cancelled every other writer's with it."""
    taken = asyncio.Event()

    class Slow(Body):
        async def drain(self) -> None:
            self.drains += 1
            await taken.wait()
            self.held = 0

    body = Slow()
    body.held = 500
    mux = Mux(body, sse=False, high_water=100, on_write=lambda: None)
    first = asyncio.ensure_future(mux.writer("a")[0](events(1)))
    second = asyncio.ensure_future(mux.writer("b")[0](events(2)))
    deadline = asyncio.get_running_loop().time() + 5
    while len(body.writes) < 2 and asyncio.get_running_loop().time() < deadline:  # both written, both waiting
        await asyncio.sleep(0)
    first.cancel()
    await asyncio.wait({first}, timeout=5)
    for _turn in range(3):  # a cancellation that reached the shared drain would end `second` in these turns
        await asyncio.sleep(0)
    assert not second.done() and body.drains == 1  # one drain for both, still running
    taken.set()
    await asyncio.wait_for(second, 1)
    assert first.cancelled() and [w for line in body.writes for w, _ in lines(line)] == ["a", "b"]
