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
from dataclasses import dataclass
from typing import Any

import orjson

from ..commands import Command, Delete, Put
from ..config import LimitsConfig
from ..errors import Indeterminate, InvalidRequest, RaftmemError
from ..shardhash import shard_for
from .calls import Call, Forwarder, ForwardLost, ForwardNotSent, Reply, error_reply

log = logging.getLogger(__name__)

RELAY_PATH = "/v1/internal/proposals"
RELAYED = (Put, Delete)
# Writes in one relay request, at most (each is one client request's worth).
RELAY_BATCH_MAX = 256
RELAY_ENVELOPE_BYTES = 32  # {"shard":N,"command":...}, per write

Run = Callable[[int, Command, Call], Awaitable[Reply]]


@dataclass
class _Pending:
    shard: int
    wire: dict[str, Any]
    hops: int
    done: asyncio.Future[Reply]
    size: int
    sent: bool = False


@dataclass
class RelayStats:
    requests: int = 0  # relay requests sent
    writes: int = 0  # writes they carried


class Relay:
    def __init__(self, limits: LimitsConfig, forwarder: Forwarder, shards: int = 0) -> None:
        """`shards`: the cluster's shard count, to check a relayed key's shard (0: unchecked)."""
        self.in_flight_max = limits.relay_in_flight_max
        self.timeout_s = limits.write_timeout_ms / 1000 + 1
        # A little under the receiving node's own answer time, so a write that
        # takes long there is answered alone, not its whole request lost.
        self.write_timeout_s = limits.write_timeout_ms / 1000
        self.bytes_max = limits.body_bytes_max
        self.shards = shards
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
        wire = command.to_wire()
        # Its share of a relay request's body (the envelope of a write is small).
        try:
            size = len(orjson.dumps(wire)) + RELAY_ENVELOPE_BYTES
        except (TypeError, orjson.JSONEncodeError) as e:
            raise InvalidRequest(f"the write cannot be encoded: {e}") from None
        pending = _Pending(shard, wire, hops, asyncio.get_running_loop().create_future(), size)
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
        # At most RELAY_BATCH_MAX writes and (past the first) body_bytes_max bytes:
        # the receiving node refuses a larger body whole.
        count, size = 1, queue[0].size
        while count < min(len(queue), RELAY_BATCH_MAX) and size + queue[count].size <= self.bytes_max:
            size += queue[count].size
            count += 1
        batch, self.queues[node] = queue[:count], queue[count:]
        for pending in batch:
            pending.sent = True
        self.in_flight[node] = self.in_flight.get(node, 0) + 1
        task = asyncio.ensure_future(self._send(node, batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, node: str, batch: list[_Pending]) -> None:
        self.stats.requests += 1
        self.stats.writes += len(batch)
        sent = False
        try:
            # The hops the writes made so far (the forwarder counts this one).
            body = orjson.dumps([{"shard": p.shard, "command": p.wire} for p in batch])
            call = Call("POST", RELAY_PATH, {}, {"Content-Type": "application/json"}, body,
                        max(p.hops for p in batch))
            sent = True
            reply = await self.forwarder.forward(node, call, self.timeout_s)
            if reply.status in (404, 405):
                # A node without the relay (an older version, mid-upgrade): nothing ran.
                raise ForwardNotSent(f"{node} does not take relayed writes ({reply.status})")
            replies = _replies(reply, len(batch))
        except (ForwardNotSent, ForwardLost) as e:
            for p in batch:
                _settle(p.done, exc=e)
        except Exception as e:  # noqa: BLE001 (every write learns its fate)
            log.warning("relay to %s: %r", node, e)
            failure = (ForwardLost(f"relay to {node} failed: {e!r}") if sent
                       else ForwardNotSent(f"relay to {node} not sent: {e!r}"))
            for p in batch:
                _settle(p.done, exc=failure)
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
        """One write's own answer, whatever happens to the others: a write still
        under way when the sender would stop waiting is answered as unknown (504)
        alone, rather than the whole request being lost."""
        try:
            shard, command = _decode(item, self.shards)
            return await asyncio.wait_for(run(shard, command, stub), self.write_timeout_s + 0.5)
        except RaftmemError as e:
            return error_reply(e)
        except TimeoutError:
            return error_reply(Indeterminate("the write did not finish in time here; it may still apply"))
        except Exception as e:  # noqa: BLE001 (a bug must not take the other writes' answers)
            log.exception("relayed write failed")
            return error_reply(RaftmemError(f"internal error: {type(e).__name__}"))


def _decode(item: Any, shards: int) -> tuple[int, Command]:
    """A relayed write, checked as far as a peer's word goes: its type, its
    shape, and that its key is on the shard it names."""
    if not isinstance(item, dict) or type(item.get("shard")) is not int or not isinstance(item.get("command"), dict):
        raise InvalidRequest("relay request: each write is {shard, command}")
    wire = item["command"]
    for kind in RELAYED:
        if wire.get("t") == kind.TAG:
            try:
                command = kind.from_wire(wire)
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                raise InvalidRequest(f"relay request: a malformed {kind.__name__}: {e}") from None
            if shards and item["shard"] != shard_for(command.namespace, command.id, shards):
                raise InvalidRequest(f"relay request: {command.namespace}/{command.id} is not on shard {item['shard']}")
            return item["shard"], command
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
