"""Locks: acquire (waiting in turn, if asked), renew, release and inspect. A
lock lives on the shard of the memory named like it (`namespace/name`), so a
write to that memory, or to any memory of the namespace on that shard, can
carry its fence and have it checked atomically (raftmem/DESIGN.md,
"Coordination"). Writes are typed commands proposed at that shard's leader;
an inspection is a read there."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .. import validation as v
from ..commands import AcquireLock, Committed, ReleaseLock, RenewLock, stamped
from ..errors import InvalidRequest, LockHeld, NoLeader, NotFound
from ..shard import MemoryReader, Shard
from .calls import Call, Reply
from .coordinating import Coordinating, left_ms, moved, waiting_call
from .outcomes import write_reply

ACQUIRE_FIELDS = frozenset({"holder", "ttl_ms", "wait_ms"})
RENEW_FIELDS = frozenset({"fence", "ttl_ms"})
RELEASE_FIELDS = frozenset({"fence"})


class Locks(Coordinating):
    def _check_names(self, ns: str, name: str) -> int:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        v.name("lock name", name, self.limits.id_chars_max)
        return self.router.shard_of(ns, name)

    def _ttl(self, body: dict[str, Any]) -> int:
        return v.json_int_field(body, "ttl_ms", None, self.co.ttl_ms_min, self.co.ttl_ms_max)

    def _fence(self, value: Any) -> int:
        return v.json_int("fence", value, None, 0, v.FENCE_MAX)

    async def acquire(self, ns: str, name: str, call: Call) -> Reply:
        shard = self._check_names(ns, name)
        body = v.json_object(call.body, self.limits, ACQUIRE_FIELDS)
        holder = v.label("holder", body.get("holder"), self.co.holder_chars_max)
        ttl_ms = self._ttl(body)
        wait_ms = v.json_int_field(body, "wait_ms", 0, 0, self.co.wait_ms_max)
        command = AcquireLock(ns, name, holder, ttl_ms, v.idempotency_key(call.header("Idempotency-Key")))
        forwarded = waiting_call(call, body, wait_ms)
        started = time.monotonic()  # the router may run `local` twice (a leadership change that comes back)

        async def attempt(replica: Shard) -> Committed:
            return await replica.submit(stamped(command, self.clock.wall_ms()))

        async def local(replica: Shard) -> Reply:

            async def give_back(done: Committed) -> object:
                fence = int((done.result.coord or {})["fence"])
                return await replica.submit(stamped(ReleaseLock(ns, name, fence), self.clock.wall_ms()))

            def retry_in_s(done: Committed) -> float:
                expires_at = (done.result.coord or {}).get("expires_at")
                return float("inf") if expires_at is None else (int(expires_at) - self.clock.wall_ms()) / 1000

            try:
                done = await self.waiters.run((shard, "lock", ns, name), left_ms(wait_ms, started) / 1000,
                                              lambda: attempt(replica), give_back, retry_in_s)
            except NoLeader:
                moved(forwarded, body, wait_ms, started)
                raise
            if done is None:  # its turn never came
                lock = await self._local_lock(replica, ns, name)
                raise LockHeld(f"lock {ns}/{name} is held, and {self.waiters.waiting((shard, 'lock', ns, name))} "
                               f"waiter(s) were ahead for {wait_ms} ms", holder=(lock or {}).get("holder"),
                               expires_at=(lock or {}).get("expires_at"))
            return write_reply(self.node_id, shard, done)

        timeout_s = (wait_ms + self.limits.write_timeout_ms) / 1000
        return await self.router.on_leader(shard, forwarded, local, is_write=True, timeout_s=timeout_s)

    async def give_back(self, ns: str, name: str, acquired: Reply) -> None:
        """Release a lock acquired for a client that is gone (found gone once
        the acquisition committed, before its answer was written), at the
        lock's leader, here or forwarded."""
        fence = int(acquired.json()["fence"])
        await self.release(ns, name, Call("DELETE", f"/v1/locks/{ns}/{name}", {"fence": str(fence)}))

    async def _local_lock(self, replica: Shard, ns: str, name: str) -> dict[str, Any] | None:
        lock, _ = await replica.read("eventual", lambda s: s.coordination.lock(ns, name, self.clock.wall_ms()))
        return lock

    async def renew(self, ns: str, name: str, call: Call) -> Reply:
        shard = self._check_names(ns, name)
        body = v.json_object(call.body, self.limits, RENEW_FIELDS)
        command = RenewLock(ns, name, self._fence(body.get("fence")), self._ttl(body),
                            v.idempotency_key(call.header("Idempotency-Key")))
        return await self._write(shard, command, call)

    async def release(self, ns: str, name: str, call: Call) -> Reply:
        """DELETE with the fence as `?fence=` or in a JSON body."""
        shard = self._check_names(ns, name)
        body = v.json_object(call.body, self.limits, RELEASE_FIELDS, empty_ok=True)
        raw = call.query.get("fence")
        if raw is not None and "fence" in body:
            raise InvalidRequest("give the fence once: ?fence= or the body", field="fence")
        fence = v.int_param("fence", raw, 0, 0, v.FENCE_MAX) if raw is not None else self._fence(body.get("fence"))
        command = ReleaseLock(ns, name, fence, v.idempotency_key(call.header("Idempotency-Key")))

        async def local(replica: Shard) -> Reply:
            release = asyncio.ensure_future(replica.submit(stamped(command, self.clock.wall_ms())))
            # The next waiter's acquisition goes right behind it, in the same entry.
            self.waiters.hand_over((shard, "lock", ns, name))
            return write_reply(self.node_id, shard, await release)

        return await self.router.on_leader(shard, call, local, is_write=True)

    async def show(self, ns: str, name: str, call: Call) -> Reply:
        """GET: the lock if held (404 when free), at `consistency` (default
        linearizable: who holds a lock is a question worth a fresh answer)."""
        shard = self._check_names(ns, name)

        def read(state: MemoryReader) -> dict[str, Any] | None:
            return state.coordination.lock(ns, name, self.clock.wall_ms())

        def reply(lock: dict[str, Any] | None, token: str, headers: dict[str, str]) -> Reply:
            if lock is None:
                missing = NotFound(f"lock {ns}/{name} is not held", token=token)
                return Reply(missing.status, missing.body(), headers)
            return Reply(200, {**lock, "shard": shard}, headers)

        return await self._read(shard, call, read, reply)
