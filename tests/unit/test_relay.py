"""The relay's queueing and fates (raftmem/service/relay.py) with a forwarder
that the test holds and releases: writes in flight together share a request,
and every write learns the fate of its request (sent or not, answered or lost).
Relayed answers against real nodes: tests/integration/test_relay.py."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from raftmem.commands import Delete, MemoryFields, Noop, Put
from raftmem.config import LimitsConfig
from raftmem.errors import InvalidRequest, Overloaded
from raftmem.service.calls import Call, ForwardLost, ForwardNotSent, Reply
from raftmem.service.relay import Relay


class HeldForwarder:
    """Each forward waits until the test releases it with an outcome."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Call, asyncio.Future[Any]]] = []

    async def forward(self, node_id: str, call: Call, timeout_s: float) -> Reply:
        gate: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.calls.append((node_id, call, gate))
        outcome = await gate
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, Reply)
        return outcome

    def set_urls(self, urls: dict[str, str]) -> None:
        pass

    def answer(self, i: int) -> None:
        """Release call i with a 201 per write, echoing each write's id."""
        _, call, gate = self.calls[i]
        items = orjson.loads(call.body)
        gate.set_result(Reply(200, [{"status": 201, "headers": {"ETag": "1"}, "body": {"id": it["command"]["id"]}}
                                    for it in items]))


def _put(mid: str) -> Put:
    return Put("ns", mid, MemoryFields(content=mid))


async def _until(condition: Any) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_writes_arriving_while_requests_are_under_way_leave_together() -> None:
    fwd = HeldForwarder()
    relay = Relay(LimitsConfig(relay_in_flight_max=2), fwd)
    sends = [asyncio.ensure_future(relay.send("n2", 0, _put(f"m{i}"), 0, 5)) for i in range(10)]
    # The first two leave at once, alone; the other eight wait for a slot.
    await _until(lambda: len(fwd.calls) == 2)
    assert [len(orjson.loads(c.body)) for _, c, _ in fwd.calls] == [1, 1]
    fwd.answer(0)
    await _until(lambda: len(fwd.calls) == 3)
    assert len(orjson.loads(fwd.calls[2][1].body)) == 8
    assert fwd.calls[2][1].hops == 0  # the forwarder counts the hop it makes
    fwd.answer(1)
    fwd.answer(2)
    replies = await asyncio.gather(*sends)
    assert [r.body["id"] for r in replies] == [f"m{i}" for i in range(10)]
    assert all(r.status == 201 and r.headers == {"ETag": "1"} for r in replies)
    assert (relay.stats.requests, relay.stats.writes) == (3, 10)


@pytest.mark.parametrize("failure", [ForwardNotSent("refused"), ForwardLost("reset")])
async def test_every_write_of_a_request_gets_its_fate(failure: Exception) -> None:
    fwd = HeldForwarder()
    relay = Relay(LimitsConfig(relay_in_flight_max=1), fwd)
    first = asyncio.ensure_future(relay.send("n2", 0, _put("a"), 0, 5))
    await _until(lambda: len(fwd.calls) == 1)
    rest = [asyncio.ensure_future(relay.send("n2", 1, _put(m), 0, 5)) for m in "bcd"]
    await asyncio.sleep(0)
    fwd.answer(0)
    assert (await first).status == 201
    await _until(lambda: len(fwd.calls) == 2)
    fwd.calls[1][2].set_result(failure)
    for send in rest:
        with pytest.raises(type(failure)):
            await send


async def test_a_write_that_cannot_leave_in_time_was_not_sent_and_one_sent_is_lost() -> None:
    fwd = HeldForwarder()
    relay = Relay(LimitsConfig(relay_in_flight_max=1), fwd)
    sent = asyncio.ensure_future(relay.send("n2", 0, _put("a"), 0, 0.05))
    await _until(lambda: len(fwd.calls) == 1)
    with pytest.raises(ForwardNotSent):  # the only slot stays taken
        await relay.send("n2", 0, _put("b"), 0, 0.05)
    with pytest.raises(ForwardLost):  # its request left and no answer came
        await sent
    fwd.answer(0)
    await asyncio.sleep(0)
    assert relay.queues["n2"] == [] and len(fwd.calls) == 1  # "b" never left


async def test_a_refused_request_is_each_writes_answer() -> None:
    fwd = HeldForwarder()
    relay = Relay(LimitsConfig(relay_in_flight_max=1), fwd)
    send = asyncio.ensure_future(relay.send("n2", 0, Delete("ns", "a"), 0, 5))
    await _until(lambda: len(fwd.calls) == 1)
    fwd.calls[0][2].set_result(Reply(429, {"error": {"code": "overloaded"}}, {"Retry-After": "1"}))
    reply = await send
    assert reply.status == 429 and reply.headers == {"Retry-After": "1"}


async def test_the_receiving_node_runs_puts_and_deletes_and_refuses_the_rest() -> None:
    relay = Relay(LimitsConfig(), HeldForwarder())
    ran: list[tuple[int, Any, int]] = []

    async def run(shard: int, command: Any, call: Call) -> Reply:
        ran.append((shard, command, call.hops))
        if command.id == "busy":
            raise Overloaded("too many")
        return Reply(201, {"id": command.id}, {"ETag": "1"})

    items = [{"shard": 3, "command": _put("a").to_wire()}, {"shard": 1, "command": Delete("ns", "b").to_wire()},
             {"shard": 0, "command": Noop().to_wire()}, {"shard": "x", "command": {}},
             {"shard": 2, "command": _put("busy").to_wire()}]
    reply = await relay.receive(Call("POST", "/v1/internal/proposals", body=orjson.dumps(items), hops=1), run)
    statuses = [r["status"] for r in reply.body]
    assert statuses == [201, 201, 400, 400, 429], reply.body
    assert reply.body[4]["headers"].get("Retry-After") is not None
    assert [(s, c.id, h) for s, c, h in ran] == [(3, "a", 1), (1, "b", 1), (2, "busy", 1)]
    with pytest.raises(InvalidRequest):
        await relay.receive(Call("POST", "/v1/internal/proposals", body=b"{not json", hops=1), run)


async def test_a_batch_stays_under_the_body_limit() -> None:
    fwd = HeldForwarder()
    relay = Relay(LimitsConfig(relay_in_flight_max=1, body_bytes_max=4096), fwd)
    first = asyncio.ensure_future(relay.send("n2", 0, _put("a"), 0, 5))
    await _until(lambda: len(fwd.calls) == 1)
    big = [asyncio.ensure_future(relay.send("n2", 0, Put("ns", f"b{i}", MemoryFields(content="x" * 1500)), 0, 5))
           for i in range(4)]
    await asyncio.sleep(0)
    fwd.answer(0)
    await first
    for i in range(1, 3):  # two of 1.5 kB per request of at most 4 kB
        await _until(lambda i=i: len(fwd.calls) == i + 1)
        assert len(fwd.calls[i][1].body) <= 4096 and len(orjson.loads(fwd.calls[i][1].body)) == 2
        fwd.answer(i)
    assert [r.status for r in await asyncio.gather(*big)] == [201] * 4


async def test_a_batch_that_cannot_be_encoded_was_not_sent_and_the_relay_goes_on() -> None:
    fwd = HeldForwarder()
    relay = Relay(LimitsConfig(relay_in_flight_max=1), fwd)
    deep: Any = "leaf"
    while True:  # as deep as orjson encodes alone, too deep once in a relay request
        deeper = [deep]
        try:
            orjson.dumps(Put("ns", "d", MemoryFields(content=deeper)).to_wire())
        except TypeError:
            break
        deep = deeper
    with pytest.raises(ForwardNotSent):
        await relay.send("n2", 0, Put("ns", "deep", MemoryFields(content=deep)), 0, 5)
    with pytest.raises(InvalidRequest):  # too deep to encode at all
        await relay.send("n2", 0, Put("ns", "deeper", MemoryFields(content=[deep])), 0, 5)
    assert relay.in_flight["n2"] == 0 and fwd.calls == []
    send = asyncio.ensure_future(relay.send("n2", 0, _put("fine"), 0, 5))
    await _until(lambda: len(fwd.calls) == 1)
    fwd.answer(0)
    assert (await send).status == 201


async def test_a_node_without_the_relay_is_not_sent_to() -> None:
    fwd = HeldForwarder()
    relay = Relay(LimitsConfig(relay_in_flight_max=1), fwd)
    send = asyncio.ensure_future(relay.send("n2", 0, Delete("ns", "a"), 0, 5))
    await _until(lambda: len(fwd.calls) == 1)
    fwd.calls[0][2].set_result(Reply(404, {"error": {"code": "not_found", "message": "no route"}}))
    with pytest.raises(ForwardNotSent):  # a 404 here is not the memory's: nothing ran
        await send


async def test_each_relayed_write_is_answered_alone_at_the_receiving_node() -> None:
    relay = Relay(LimitsConfig(write_timeout_ms=200), HeldForwarder(), shards=8)

    async def run(shard: int, command: Any, call: Call) -> Reply:
        if command.id == "bug":
            raise KeyError("a bug")
        if command.id == "slow":
            await asyncio.sleep(5)
        return Reply(201, {"id": command.id})

    from raftmem.shardhash import shard_for

    def item(mid: str, shard: int | None = None) -> dict[str, Any]:
        return {"shard": shard_for("ns", mid, 8) if shard is None else shard, "command": _put(mid).to_wire()}

    wrong = (shard_for("ns", "x", 8) + 1) % 8
    items = [item("a"), item("bug"), item("slow"), item("x", wrong), {"shard": True, "command": _put("t").to_wire()}]
    reply = await relay.receive(Call("POST", "/v1/internal/proposals", body=orjson.dumps(items), hops=1), run)
    answers = [(r["status"], r["body"].get("error", {}).get("code")) for r in reply.body]
    assert answers == [(201, None), (500, "internal"), (504, "indeterminate"), (400, "invalid_request"),
                       (400, "invalid_request")], answers
