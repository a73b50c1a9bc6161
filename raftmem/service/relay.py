"""Single writes that reach a node which does not lead their shard, carried to
the leader's node as typed commands, several in one request (issue 17).

Without it, each such write is forwarded as an HTTP request of its own: the
leader's node parses the request again, validates the body again and builds
the command again. The relay sends the command the receiving node already
built, and while `limits.relay_in_flight_max` requests to a node are under way,
the writes that arrive meanwhile wait and leave together in the next one: the
more writes in flight, the fewer requests per write (a group commit of the
forwarding hop). With nothing in flight a write leaves at once, alone.

Fates are those of a forward: a request that never got a connection sent
nothing (each write finds its leader again, or fails as not sent); one that got
no answer leaves each of its writes indeterminate. A write whose deadline
passes while it waits for a slot was never sent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..commands import Command, Delete, Put
from ..config import LimitsConfig
from ..errors import InvalidRequest, RaftmemError
from .calls import Call, Forwarder, ForwardLost, ForwardNotSent, Reply, error_reply

log = logging.getLogger(__name__)

RELAY_PATH = "/v1/internal/proposals"
RELAYED = (Put, Delete)
# Writes in one relay request, at most (each is one client request's worth).
RELAY_BATCH_MAX = 256

Run = Callable[[int, Command, Call], Awaitable[Reply]]


@dataclass
class _Pending:
    shard: int
    wire: dict[str, Any]
    hops: int
    done: asyncio.Future[Reply]
    sent: bool = False


@dataclass
class RelayStats:
    requests: int = 0  # relay requests sent
    writes: int = 0  # writes they carried
    by_node: dict[str, int] = field(default_factory=dict)


class Relay:
    def __init__(self, limits: LimitsConfig, forwarder: Forwarder) -> None:
        self.in_flight_max = limits.relay_in_flight_max
        self.timeout_s = limits.write_timeout_ms / 1000 + 1
        self.forwarder = forwarder
        self.queues: dict[str, list[_Pending]] = {}
        self.in_flight: dict[str, int] = {}
        self.stats = RelayStats()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def enabled(self) -> bool:
        return self.in_flight_max > 0

    async def send(self, node: str, shard: int, command: Command, hops: int, timeout_s: float) -> Reply:
        """`command` run at `node` as if it had arrived there (one hop more):
        its reply, or ForwardNotSent / ForwardLost as a forward raises them."""
        pending = _Pending(shard, command.to_wire(), hops, asyncio.get_running_loop().create_future())
        self.queues.setdefault(node, []).append(pending)
        if self.in_flight.get(node, 0) < max(1, self.in_flight_max):
            self._start(node)
        try:
            return await asyncio.wait_for(asyncio.shield(pending.done), timeout_s)
        except TimeoutError:
            if pending.sent:
                raise ForwardLost(f"no answer from {node} within {timeout_s:.1f} s") from None
            self.queues[node].remove(pending)
            raise ForwardNotSent(f"no request to {node} could leave within {timeout_s:.1f} s") from None
        except asyncio.CancelledError:
            # The client went: a write not yet sent is not sent.
            if not pending.sent:
                self.queues[node].remove(pending)
            raise

    def _start(self, node: str) -> None:
        queue = self.queues.get(node)
        if not queue:
            return
        batch, self.queues[node] = queue[:RELAY_BATCH_MAX], queue[RELAY_BATCH_MAX:]
        for pending in batch:
            pending.sent = True
        self.in_flight[node] = self.in_flight.get(node, 0) + 1
        task = asyncio.ensure_future(self._send(node, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, node: str, batch: list[_Pending]) -> None:
        self.stats.requests += 1
        self.stats.writes += len(batch)
        self.stats.by_node[node] = self.stats.by_node.get(node, 0) + 1
        payload = [{"shard": p.shard, "command": p.wire} for p in batch]
        call = Call("POST", RELAY_PATH, {}, {"Content-Type": "application/json"}, orjson.dumps(payload),
                    max(p.hops for p in batch) + 1)
        try:
            reply = await self.forwarder.forward(node, call, self.timeout_s)
            replies = _replies(reply, len(batch))
        except (ForwardNotSent, ForwardLost) as e:
            for p in batch:
                _settle(p.done, exc=e)
        except Exception as e:  # noqa: BLE001 (every write learns its fate: unknown)
            log.warning("relay to %s: %r", node, e)
            for p in batch:
                _settle(p.done, exc=ForwardLost(f"relay to {node} failed: {e!r}"))
        else:
            for p, r in zip(batch, replies, strict=True):
                _settle(p.done, reply=r)
        finally:
            self.in_flight[node] -= 1
            self._start(node)

    async def receive(self, call: Call, run: Run) -> Reply:
        """At the node a relay request reached: run each write here (at its
        leader, or relayed on), concurrently; a reply per write, in order."""
        try:
            items = orjson.loads(call.body)
        except orjson.JSONDecodeError as e:
            raise InvalidRequest(f"relay request: not JSON: {e}") from None
        if not isinstance(items, list) or len(items) > RELAY_BATCH_MAX:
            raise InvalidRequest(f"relay request: a list of at most {RELAY_BATCH_MAX} writes")
        stub = Call("POST", RELAY_PATH, {}, {}, b"", call.hops)
        replies = await asyncio.gather(*(self._one(item, stub, run) for item in items))
        return Reply(200, [{"status": r.status, "headers": r.headers, "body": r.json()} for r in replies])

    async def _one(self, item: Any, stub: Call, run: Run) -> Reply:
        try:
            shard, command = _decode(item)
            return await run(shard, command, stub)
        except RaftmemError as e:
            return error_reply(e)


def _decode(item: Any) -> tuple[int, Command]:
    if not isinstance(item, dict) or not isinstance(item.get("shard"), int) or not isinstance(item.get("command"), dict):
        raise InvalidRequest("relay request: each write is {shard, command}")
    wire = item["command"]
    for kind in RELAYED:
        if wire.get("t") == kind.TAG:
            try:
                return item["shard"], kind.from_wire(wire)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise InvalidRequest(f"relay request: a malformed {kind.__name__}: {e}") from None
    raise InvalidRequest(f"relay request: only puts and deletes are relayed, not {wire.get('t')!r}")


def _replies(reply: Reply, count: int) -> list[Reply]:
    body = reply.json()
    if reply.status != 200:
        # The request as a whole was refused (overload, auth): each write gets that answer.
        return [Reply(reply.status, body, dict(reply.headers), reply.content_type) for _ in range(count)]
    if not isinstance(body, list) or len(body) != count:
        raise ValueError(f"a relay answer of {type(body).__name__} for {count} writes")
    return [Reply(int(r["status"]), r["body"], dict(r["headers"])) for r in body]


def _settle(done: asyncio.Future[Reply], reply: Reply | None = None, exc: BaseException | None = None) -> None:
    if done.done():
        return
    if exc is not None:
        done.set_exception(exc)
        done.exception()  # retrieved here: a waiter that timed out is gone
    else:
        assert reply is not None
        done.set_result(reply)
