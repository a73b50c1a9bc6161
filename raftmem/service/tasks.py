"""Task queues: enqueue, claim (waiting in turn, if asked), complete, fail,
extend, read and list. All the tasks of a namespace live on one shard
(`shardhash.queue_shard`), so a claim sees the whole queue at once; writes are
typed commands proposed at that shard's leader."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Mapping
from typing import Any

import orjson

from .. import validation as v
from ..commands import ClaimTask, Committed, EnqueueTask, Outcome, SettleTask, TaskSpec, stamped
from ..coordination import BACKOFF_MS_MAX, PRIORITY_MAX, STATES
from ..errors import InvalidRequest, NoLeader, NotFound, PayloadTooLarge
from ..shard import MemoryReader, Shard
from ..shardhash import queue_shard
from .calls import Call, Reply
from .coordinating import Coordinating, left_ms, moved, waiting_call
from .memories import TIME_KEY_RE
from .outcomes import write_reply

ENQUEUE_FIELDS = frozenset({"id", "payload", "priority", "not_before", "delay_ms", "max_attempts", "backoff_ms"})
CLAIM_FIELDS = frozenset({"worker", "lease_ms", "wait_ms"})
SETTLE_FIELDS = {
    "complete": frozenset({"fence", "result"}),
    "fail": frozenset({"fence", "error", "retry"}),
    "extend": frozenset({"fence", "lease_ms"}),
}
ERROR_CHARS_MAX = 4096
# `GET /v1/tasks/{ns}/claim` would read a task named so, where POST claims one:
# the name is the endpoint's.
CLAIM_PATH_ID = "claim"
TIME_MS_MAX = (1 << 63) - 1


class Tasks(Coordinating):
    def _queue(self, ns: str) -> int:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        return queue_shard(ns, self.config.shards)

    def _json_value(self, what: str, value: Any) -> Any:
        size = len(orjson.dumps(value))
        if size > self.co.task_payload_bytes_max:
            raise PayloadTooLarge(f"{what} is {size} bytes as JSON, the limit is {self.co.task_payload_bytes_max}")
        return value

    def _lease(self, body: dict[str, Any]) -> int:
        return v.json_int_field(body, "lease_ms", None, self.co.ttl_ms_min, self.co.ttl_ms_max)

    def _task_id(self, ns: str, given: Any, key: str | None) -> str:
        if given is not None:
            if not isinstance(given, str):
                raise InvalidRequest("id must be a string", field="id")
            if given == CLAIM_PATH_ID:
                raise InvalidRequest(f"a task may not be named {CLAIM_PATH_ID!r} (the claim endpoint's name)",
                                     field="id")
            return v.name("id", given, self.limits.id_chars_max)
        if key is not None:
            # A retry lands on the same id; time-ordered when the key starts with its time.
            digest = hashlib.blake2b(f"{ns}\0{key}".encode(), digest_size=12).hexdigest()
            stamp = TIME_KEY_RE.match(key)
            return f"{stamp.group(1)}-{digest}" if stamp else f"i-{digest}"
        return f"{self.clock.wall_ms():013d}-{os.urandom(6).hex()}"

    async def enqueue(self, ns: str, call: Call) -> Reply:
        shard = self._queue(ns)
        body = v.json_object(call.body, self.limits, ENQUEUE_FIELDS)
        key = v.idempotency_key(call.header("Idempotency-Key"))
        co = self.co
        spec = TaskSpec(
            payload=self._json_value("payload", body.get("payload")),
            priority=v.json_int_field(body, "priority", 0, -PRIORITY_MAX, PRIORITY_MAX),
            not_before_ms=v.json_int_field(body, "not_before", 0, 0, TIME_MS_MAX),
            delay_ms=v.json_int_field(body, "delay_ms", 0, 0, co.task_delay_ms_max),
            max_attempts=v.json_int_field(body, "max_attempts", co.task_attempts_default, 1,
                                    co.task_attempts_max),
            backoff_ms=v.json_int_field(body, "backoff_ms", co.task_backoff_ms_default, 0, BACKOFF_MS_MAX),
            retain_ms=co.task_retention_ms,
            open_max=co.tasks_open_max,
        )
        if spec.not_before_ms > self.clock.wall_ms() + co.task_delay_ms_max:
            raise InvalidRequest(f"not_before is more than {co.task_delay_ms_max} ms ahead", field="not_before")
        command = EnqueueTask(ns, self._task_id(ns, body.get("id"), key), spec, key)
        return await self._write(shard, command, call)

    async def claim(self, ns: str, call: Call) -> Reply:
        """200 with the task and its claim's fence, or 204 when none was ready
        within `wait_ms`."""
        shard = self._queue(ns)
        body = v.json_object(call.body, self.limits, CLAIM_FIELDS)
        worker = v.label("worker", body.get("worker"), self.co.holder_chars_max)
        wait_ms = v.json_int_field(body, "wait_ms", 0, 0, self.co.wait_ms_max)
        command = ClaimTask(ns, worker, self._lease(body), v.idempotency_key(call.header("Idempotency-Key")))
        forwarded = waiting_call(call, body, wait_ms)
        started = time.monotonic()  # the router may run `local` twice (a leadership change that comes back)

        async def local(replica: Shard) -> Reply:

            async def attempt() -> Committed:
                return await replica.submit(stamped(command, self.clock.wall_ms()))

            async def give_back(done: Committed) -> object:
                return await replica.submit(stamped(_given_back(ns, done.result.coord or {}),
                                                    self.clock.wall_ms()))

            try:
                done = await self.waiters.run((shard, "tasks", ns, ""), left_ms(wait_ms, started) / 1000, attempt,
                                              give_back)
            except NoLeader:
                moved(forwarded, body, wait_ms, started)
                raise
            if done is None or done.result.outcome is Outcome.NO_TASK:
                return Reply(204, b"", {"X-Raftmem-Served-By": self.node_id})
            return write_reply(self.node_id, shard, done)

        timeout_s = (wait_ms + self.limits.write_timeout_ms) / 1000
        return await self.router.on_leader(shard, forwarded, local, is_write=True, timeout_s=timeout_s)

    async def give_back(self, ns: str, claimed: Reply) -> None:
        """Return to the queue a task claimed for a client that is gone (found
        gone once the claim committed, before its answer was written): at the
        queue's leader without counting an attempt; forwarded (this node does
        not lead it) as a `fail`, which counts one, as the claim's expiry would."""
        claim = claimed.json()
        back = _given_back(ns, claim)
        call = Call("POST", f"/v1/tasks/{ns}/{back.id}/fail",
                    body=orjson.dumps({"fence": back.fence, "error": back.result}))

        async def local(replica: Shard) -> Reply:
            return write_reply(self.node_id, shard, await replica.submit(stamped(back, self.clock.wall_ms())))

        shard = self._queue(ns)
        await self.router.on_leader(shard, call, local, is_write=True)

    async def settle(self, ns: str, tid: str, action: str, call: Call) -> Reply:
        """complete | fail | extend, with the claim's fence."""
        shard = self._queue(ns)
        v.name("id", tid, self.limits.id_chars_max)
        if action not in SETTLE_FIELDS:
            raise NotFound(f"no task action {action[:32]!r} (complete, fail, extend)")
        body = v.json_object(call.body, self.limits, SETTLE_FIELDS[action])
        fence = v.json_int_field(body, "fence", None, 0, v.FENCE_MAX)
        key = v.idempotency_key(call.header("Idempotency-Key"))
        if action == "complete":
            command = SettleTask(ns, tid, fence, action, self._json_value("result", body.get("result")),
                                 idempotency_key=key)
        elif action == "fail":
            error = body.get("error")
            if error is not None:
                error = v.label("error", error, ERROR_CHARS_MAX)
            retry = body.get("retry")
            if retry is None:  # null: left out, as for every optional field
                retry = True
            if not isinstance(retry, bool):
                raise InvalidRequest("retry must be true or false", field="retry")
            command = SettleTask(ns, tid, fence, action, error, retry=retry, idempotency_key=key)
        else:
            command = SettleTask(ns, tid, fence, action, lease_ms=self._lease(body), idempotency_key=key)
        return await self._write(shard, command, call)

    async def get(self, ns: str, tid: str, call: Call) -> Reply:
        shard = self._queue(ns)
        v.name("id", tid, self.limits.id_chars_max)

        def reply(task: dict[str, Any] | None, token: str, headers: dict[str, str]) -> Reply:
            if task is None:
                missing = NotFound(f"task {ns}/{tid} not found", token=token)
                return Reply(missing.status, missing.body(), headers)
            return Reply(200, task, headers)

        return await self._read(shard, call, lambda s: s.coordination.task(ns, tid), reply)

    async def list(self, ns: str, call: Call) -> Reply:
        """`?state=ready|claimed|done|dead` (default: all), by id, `limit`, `cursor`."""
        shard = self._queue(ns)
        q = call.query
        state = q.get("state")
        if state is not None and state not in STATES:
            raise InvalidRequest(f"state must be one of {', '.join(STATES)}", field="state")
        limit = v.int_param("limit", q.get("limit"), 100, 1, self.co.task_list_page_max)
        after = q.get("cursor")
        if after is not None:
            v.name("cursor", after, self.limits.id_chars_max)

        def read(s: MemoryReader) -> tuple[list[dict[str, Any]], int]:
            coordination = s.coordination
            return coordination.tasks(ns, state, after, limit + 1), coordination.open_tasks(ns)

        def reply(found: tuple[list[dict[str, Any]], int], _token: str, headers: dict[str, str]) -> Reply:
            items, open_tasks = found
            body: dict[str, Any] = {"items": items[:limit], "count": min(len(items), limit), "open": open_tasks}
            if len(items) > limit:
                body["cursor"] = items[limit - 1]["id"]
            return Reply(200, body, headers)

        return await self._read(shard, call, read, reply)


def _given_back(ns: str, claim: Mapping[str, Any]) -> SettleTask:
    """A claim nobody can learn of, back to the queue without an attempt counted."""
    return SettleTask(ns, str(claim["id"]), int(claim["fence"]), "fail", "claimant went away", charge=False)
