"""Writing memories: put, create, delete; each a typed command proposed at its
shard's leader (batches: batches.py)."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Awaitable
from typing import Protocol

from .. import validation as v
from ..clock import Clock
from ..commands import Command, Committed, Delete, Fence, MemoryFields, Put, stamped
from ..config import Config, LimitsConfig
from ..errors import InvalidRequest
from ..shard import Shard
from ..shardhash import colocated_id
from .calls import FORWARD_HEADERS, Call, Reply
from .leaders import Router
from .outcomes import write_reply
from .relay import RELAY_PATH, RELAYED, Relay

# An idempotency key that starts with a 13-digit millisecond time.
TIME_KEY_RE = re.compile(r"(\d{13})-")


def derived_id(ns: str, idempotency_key: str | None, clock: Clock) -> str:
    """A server-chosen, time-ordered id. With an idempotency key, a retry must
    land on the same shard and id: the id comes from the key, time-ordered
    when the key starts with its creation time in ms (the bundled client's keys do)."""
    if idempotency_key is None:
        return f"{clock.wall_ms():013d}-{os.urandom(6).hex()}"
    digest = hashlib.blake2b(f"{ns}\0{idempotency_key}".encode(), digest_size=12).hexdigest()
    time_stamped = TIME_KEY_RE.match(idempotency_key)
    return f"{time_stamped.group(1)}-{digest}" if time_stamped else f"i-{digest}"


def checked_fence(router: Router, limits: LimitsConfig, ns: str, mid: str, header: str | None) -> Fence | None:
    """`If-Fence`, for a memory its lock can guard: one of the lock's namespace
    on the lock's shard, where the check is atomic with the write
    (raftmem/DESIGN.md, "Coordination"). Anything else is a 400."""
    fence = v.if_fence(header, limits)
    if fence is None:
        return None
    if fence.namespace != ns:
        raise InvalidRequest(f"If-Fence names a lock of namespace {fence.namespace!r}; a lock fences only "
                             f"memories of its own namespace ({ns!r})", field="If-Fence")
    lock_shard, shard = router.shard_of(ns, fence.name), router.shard_of(ns, mid)
    if lock_shard != shard:
        raise InvalidRequest(
            f"lock {ns}/{fence.name} lives on shard {lock_shard} and memory {ns}/{mid} on shard {shard}: a lock "
            f"fences memories on its own shard only (name the memory like the lock, or take an id from "
            f"raftmem.shardhash.colocated_id)", field="If-Fence", lock_shard=lock_shard, shard=shard,
        )
    return fence


def fenced_id(ns: str, mid: str, header: str | None, limits: LimitsConfig, shards: int) -> str:
    """A server-chosen id moved where the `If-Fence` lock can guard it
    (deterministic: a retry lands on the same id)."""
    fence = v.if_fence(header, limits)
    return colocated_id(ns, fence.name, mid, shards) if fence is not None and fence.namespace == ns else mid


class WriteHooks(Protocol):
    """What the derived indexes ask of a write at the shard leader: a chance
    to complete the command before it is proposed (server-side embedding), to
    refuse it while the indexes are too far behind (429), and to hold its
    answer until the eager tier has absorbed it."""

    async def prepare(self, command: Command) -> Command: ...

    def admit(self, shard: int) -> None: ...

    async def settle(self, shard: int, command: Command, done: Committed) -> None: ...


class Memories:
    def __init__(self, config: Config, router: Router, clock: Clock, hooks: WriteHooks | None = None,
                 relay: Relay | None = None) -> None:
        self.config = config
        self.router = router
        self.clock = clock
        self.limits = config.limits
        self.node_id = router.node_id
        self.hooks = hooks
        self.relay = relay

    async def write(self, shard: int, command: Command, call: Call) -> Reply:
        """Propose `command` at `shard`'s leader (here or forwarded)."""

        async def local(replica: Shard) -> Reply:
            final = command
            if self.hooks is not None:
                self.hooks.admit(shard)
                final = await self.hooks.prepare(command)
            # The leader chooses the time before proposing: apply stays deterministic.
            done = await replica.submit(stamped(final, self.clock.wall_ms()))
            if self.hooks is not None:
                await self.hooks.settle(shard, final, done)
            return write_reply(self.node_id, shard, done)

        relay = self.relay
        if relay is None or not isinstance(command, RELAYED) or not (relay.enabled or call.path == RELAY_PATH):
            # Forwarded as the HTTP request it came as (a relayed write has no
            # request left to forward: it is relayed on whatever the setting).
            return await self.router.on_leader(shard, call, local, is_write=True)

        def send(leader: str, timeout_s: float) -> Awaitable[Reply]:
            assert relay is not None
            return relay.send(leader, shard, command, call.hops, timeout_s)

        return await self.router.on_leader(shard, call, local, is_write=True, relay=send)

    async def relayed(self, call: Call) -> Reply:
        """Writes relayed here by the node that received them."""
        assert self.relay is not None
        return await self.relay.receive(call, self.write)

    def _fence(self, ns: str, mid: str, call: Call) -> Fence | None:
        return checked_fence(self.router, self.limits, ns, mid, call.header("If-Fence"))

    async def put(self, ns: str, mid: str, call: Call) -> Reply:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        v.name("id", mid, self.limits.id_chars_max)
        fields = v.memory_fields(v.parse_json(call.body, self.limits), self.limits)
        command = Put(
            namespace=ns,
            id=mid,
            fields=MemoryFields.from_wire(fields),
            if_match=v.version_header("If-Match", call.header("If-Match")),
            if_none_match=v.if_none_match(call.header("If-None-Match")),
            idempotency_key=v.idempotency_key(call.header("Idempotency-Key")),
            if_fence=self._fence(ns, mid, call),
        )
        return await self.write(self.router.shard_of(ns, mid), command, call)

    async def create(self, ns: str, call: Call) -> Reply:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        mid = derived_id(ns, v.idempotency_key(call.header("Idempotency-Key")), self.clock)
        mid = fenced_id(ns, mid, call.header("If-Fence"), self.limits, self.config.shards)
        # Canonical names: `call.headers` may be case-insensitive, a dict is not.
        headers = {name: value for name in FORWARD_HEADERS if (value := call.header(name)) is not None}
        headers["If-None-Match"] = "*"
        as_put = Call("PUT", f"/v1/memories/{ns}/{mid}", call.query, headers, call.body, call.hops)
        return await self.put(ns, mid, as_put)

    async def delete(self, ns: str, mid: str, call: Call) -> Reply:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        v.name("id", mid, self.limits.id_chars_max)
        actor = call.query.get("actor")
        command = Delete(
            namespace=ns,
            id=mid,
            if_match=v.version_header("If-Match", call.header("If-Match")),
            idempotency_key=v.idempotency_key(call.header("Idempotency-Key")),
            if_fence=self._fence(ns, mid, call),
            actor=v.actor(actor) if actor is not None else None,
        )
        return await self.write(self.router.shard_of(ns, mid), command, call)
