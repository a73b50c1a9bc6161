"""What the lock and task services share: their wiring, the write path (one
typed command proposed at a shard's leader), reads at a level, and the call
a waiting request is forwarded as."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import orjson

from .. import validation as v
from ..clock import Clock
from ..commands import Command, stamped
from ..config import Config
from ..errors import InvalidRequest
from ..shard import FRESH_LEVELS, MemoryReader, Shard
from .calls import Call, Reply
from .leaders import Router
from .outcomes import write_reply
from .waiters import Waiters

T = TypeVar("T")
READ_LEVELS = ("linearizable", "strong", "eventual")


def waiting_call(call: Call, body: dict[str, Any], wait_ms: int) -> Call:
    """The call as forwarded to a leader: its own copy, whose `wait_ms` is
    lowered to what is left if the wait has to move to a new leader (`moved`)."""
    return Call(call.method, call.path, call.query, call.headers, orjson.dumps({**body, "wait_ms": wait_ms}),
                call.hops, waits=wait_ms > 0)


def left_ms(wait_ms: int, started: float) -> int:
    """What is left of a wait of `wait_ms` that began at `started` (monotonic)."""
    return max(0, wait_ms - int((time.monotonic() - started) * 1000))


def moved(forwarded: Call, body: dict[str, Any], wait_ms: int, started: float) -> None:
    """Leadership moved while waiting here: the router forwards `forwarded` to
    the new leader (or runs the wait here again), with the wait that is left."""
    forwarded.body = orjson.dumps({**body, "wait_ms": left_ms(wait_ms, started)})


class Coordinating:
    def __init__(self, config: Config, router: Router, clock: Clock, waiters: Waiters) -> None:
        self.config = config
        self.router = router
        self.clock = clock
        self.waiters = waiters
        self.limits = config.limits
        self.co = config.coordination
        self.node_id = router.node_id

    async def _write(self, shard: int, command: Command, call: Call) -> Reply:
        """Propose `command` at `shard`'s leader (here, or forwarded), stamped there."""

        async def local(replica: Shard) -> Reply:
            return write_reply(self.node_id, shard, await replica.submit(stamped(command, self.clock.wall_ms())))

        return await self.router.on_leader(shard, call, local, is_write=True)

    def _level(self, call: Call) -> str:
        """Locks and tasks are read at `linearizable` unless asked otherwise."""
        level = v.requested_level(call.query, call.headers) or "linearizable"
        if level not in READ_LEVELS:
            raise InvalidRequest(f"locks and tasks are read at {', '.join(READ_LEVELS)}", field="consistency")
        return level

    async def _read(self, shard: int, call: Call, fn: Callable[[MemoryReader], T],
                    reply: Callable[[T, str, dict[str, str]], Reply]) -> Reply:
        """`fn` over the shard's state at the call's level: the local replica for
        `eventual`, else the leader; `reply(value, token, headers)` answers."""
        level = self._level(call)

        async def at(replica: Shard) -> Reply:
            value, served = await replica.read(level, fn)
            headers = {"X-Raftmem-Consistency": served.level, "X-Raftmem-Served-By": self.node_id,
                       "X-Raftmem-Token": served.token}
            return reply(value, served.token, headers)

        here = self.router.local(shard)
        if here is not None and level not in FRESH_LEVELS:
            return await at(here)
        return await self.router.on_leader(shard, call, at, is_write=False)
