"""Coordination workloads: locks guarding a register with fences, and a task
queue worked by many workers. Same rules as ``workloads.py`` (ok / fail /
info, a process retired after an info, one node per worker, no retries).

- ``lock``: groups of clients (one per node and more) share a lock and a
  register of the same name (so the lock can fence it: same shard). A client
  acquires (waiting in turn), reads the register (linearizable), and writes a
  new unique value with ``If-Fence`` of its lock, then releases. Under the
  lock, that write is a compare-and-set from the value it read: the history
  records it as ``cas [read, new]`` with its fence and Raft index, so a second
  holder writing in between shows as a non-linearizable register, and
  accepted fences that go back show directly. Some holders pause past their
  lease between the read and the write (a GC pause or SIGSTOP of the holder,
  modelled here: the harness's clients are tasks of one process), which is
  Jepsen's etcd-lock unsafety when the store does not check the fence. Some
  holders write once more with their fence after their own release returned
  (a holder that does not know it let go: the store must refuse it; recorded
  as ``cas`` with ``after_release``). Every ``ops_per_key`` critical sections
  a group moves to a fresh lock and register.
- ``task``: producers enqueue tasks with unique ids; workers claim (waiting in
  turn), usually complete at once, sometimes fail (retried with back-off,
  dead-lettered after ``max_attempts``, or at once with ``retry: false``) and
  sometimes stall past their claim
  before completing (the claim runs out, someone else gets the task, and the
  late completion must be refused). After the faults heal the queue is
  drained and read in full: every task enqueued must end done (completed
  once) or dead.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jepsen_like.httpclient import LOST, Answer
from jepsen_like.workloads import FINAL_READ_TIMEOUT_S, Context, RegisterWorkload, Workload, outcome

LOCK_TTL_MS = 1000
LOCK_WAIT_MS = 2000
TASK_LEASE_MS = 1000
CLAIM_WAIT_MS = 500
TASK_LIST_PAGE = 1000
DRAIN_TIMEOUT_S = FINAL_READ_TIMEOUT_S


def _index(token: Any) -> int | None:
    try:
        return int(str(token).split(":")[1])
    except (IndexError, ValueError):
        return None


class LockWorkload(RegisterWorkload):
    """Keys as the register workload's: a group moves to a fresh lock and
    register on the next shard every `ops_per_key` critical sections."""

    name = "lock"
    namespace = "jlock"

    def __init__(self, ctx: Context, groups: int = 2, clients_per_node: int = 2, ops_per_key: int = 150,
                 pause_share: float = 0.15, renew_share: float = 0.2, ttl_ms: int = LOCK_TTL_MS,
                 late_share: float = 0.1) -> None:
        super().__init__(ctx, groups=groups, readers_per_node=0, ops_per_key=ops_per_key)
        self.clients_per_node = clients_per_node
        self.pause_share = pause_share
        self.renew_share = renew_share
        self.ttl_ms = ttl_ms
        self.late_share = late_share

    def workers(self) -> list[Callable[[], Awaitable[None]]]:
        return [(lambda g=g, node=node: self._client(g, node)) for g in range(self.groups)
                for node in self.ctx.node_ids for _ in range(self.clients_per_node)]

    async def _client(self, group: int, node: str) -> None:
        ctx = self.ctx
        process = ctx.recorder.new_process()
        while not ctx.stop.is_set():
            etype = await self._section(process, node, self._next_key(group))
            if etype == "info":
                process = ctx.recorder.new_process()
            await self.pause(0.01, failed=etype != "ok")

    async def _section(self, process: int, node: str, mid: str) -> str:
        """One critical section; returns the worst outcome it met."""
        ctx, key = self.ctx, f"{self.namespace}/{mid}"
        lock_path = f"/v1/locks/{self.namespace}/{mid}"
        inv = self.invoke(process, "acquire", key, None, node)
        answer = await ctx.client.request(node, "POST", lock_path, body={
            "holder": f"p{process}", "ttl_ms": self.ttl_ms, "wait_ms": LOCK_WAIT_MS},
            timeout_s=ctx.op_timeout_s + LOCK_WAIT_MS / 1000)
        etype, error = outcome(answer, (201,), fail_statuses=(409,))
        fence = answer.body.get("fence") if etype == "ok" and isinstance(answer.body, dict) else None
        self.complete(inv, etype, fence, error, answer)
        if fence is None:
            return etype
        worst, written = await self._read_then_write(process, node, key, mid, int(fence))
        inv = self.invoke(process, "release", key, fence, node)
        answer = await ctx.client.request(node, "DELETE", f"{lock_path}?fence={fence}")
        etype, error = outcome(answer, (200,), fail_statuses=(409,))
        index = _index(answer.body.get("token")) if etype == "ok" and isinstance(answer.body, dict) else None
        self.complete(inv, etype, fence, error, answer, raft_index=index)
        if etype == "ok" and written is not None and self.rng.random() < self.late_share:
            # Once more after the release: the store must refuse it.
            late, _ = await self._write(process, node, key, mid, int(fence), written, after_release=True)
            etype = "info" if late == "info" else etype
        return "info" if "info" in (worst, etype) else worst

    async def _read_then_write(self, process: int, node: str, key: str, mid: str, fence: int
                               ) -> tuple[str, Any]:
        """Read, maybe stall or renew, write: the worst outcome, and the value
        written (None unless the write was acknowledged)."""
        ctx = self.ctx
        path = f"/v1/memories/{self.namespace}/{mid}"
        inv = self.invoke(process, "read", key, None, node, consistency="linearizable")
        answer = await ctx.client.request(node, "GET", path, params={"consistency": "linearizable"})
        if answer.status == 404:
            seen: Any = None
        elif answer.status == 200 and isinstance(answer.body, dict):
            seen = answer.body.get("content")
        else:
            etype, error = outcome(answer, (200,))
            self.complete(inv, etype, None, error, answer)
            return etype, None
        self.complete(inv, "ok", seen, None, answer)
        if self.rng.random() < self.pause_share:
            # The holder stalls past its lease (a GC pause, SIGSTOP): meanwhile the
            # lock is someone else's. It then goes on as if it still held it.
            await asyncio.sleep(self.ttl_ms / 1000 * self.rng.uniform(1.3, 2.2))
        elif self.rng.random() < self.renew_share:
            renew = await ctx.client.request(node, "POST", f"/v1/locks/{self.namespace}/{mid}/renew",
                                             body={"fence": fence, "ttl_ms": self.ttl_ms})
            if renew.status == LOST:
                return "info", None
        return await self._write(process, node, key, mid, fence, seen)

    async def _write(self, process: int, node: str, key: str, mid: str, fence: int, seen: Any,
                     **extra: Any) -> tuple[str, Any]:
        """A fenced write of a new value over `seen`, recorded as a cas."""
        new = next(self.values)
        inv = self.invoke(process, "cas", key, [seen, new], node, fence=fence, **extra)
        answer = await self.ctx.client.request(node, "PUT", f"/v1/memories/{self.namespace}/{mid}",
                                               body={"content": new},
                                               headers={"If-Fence": f"{self.namespace}/{mid}:{fence}"})
        etype, error = outcome(answer, (200, 201), fail_statuses=(409,))
        index = _index(answer.body.get("token")) if etype == "ok" and isinstance(answer.body, dict) else None
        self.complete(inv, etype, [seen, new], error, answer, fence=fence, raft_index=index)
        return etype, new if etype == "ok" else None


class TaskWorkload(Workload):
    name = "task"
    namespace = "jtask"

    def __init__(self, ctx: Context, producers_per_node: int = 1, workers_per_node: int = 2,
                 slow_share: float = 0.08, fail_share: float = 0.08, max_attempts: int = 3,
                 enqueue_delay_s: float = 0.03, give_up_share: float = 0.25) -> None:
        """`give_up_share`: of the failures, those with retry: false (dead at once)."""
        super().__init__(ctx)
        self.producers_per_node = producers_per_node
        self.workers_per_node = workers_per_node
        self.slow_share = slow_share
        self.fail_share = fail_share
        self.give_up_share = give_up_share
        self.max_attempts = max_attempts
        self.enqueue_delay_s = enqueue_delay_s
        self.ids = itertools.count(1)

    def workers(self) -> list[Callable[[], Awaitable[None]]]:
        nodes = self.ctx.node_ids
        producers = [(lambda node=node: self._producer(node)) for node in nodes for _ in range(self.producers_per_node)]
        workers = [(lambda node=node: self._worker(node)) for node in nodes for _ in range(self.workers_per_node)]
        return [*producers, *workers]

    async def _producer(self, node: str) -> None:
        ctx = self.ctx
        process = ctx.recorder.new_process()
        while not ctx.stop.is_set():
            tid = f"t{next(self.ids)}"
            inv = self.invoke(process, "enqueue", tid, tid, node, max_attempts=self.max_attempts)
            answer = await ctx.client.request(node, "POST", f"/v1/tasks/{self.namespace}", body={
                "id": tid, "payload": tid, "max_attempts": self.max_attempts, "backoff_ms": 100})
            etype, error = outcome(answer, (201,), fail_statuses=(409,))
            self.complete(inv, etype, tid, error, answer)
            if etype == "info":
                process = ctx.recorder.new_process()
            await self.pause(self.enqueue_delay_s, failed=etype != "ok")

    async def _worker(self, node: str, draining: bool = False) -> None:
        ctx = self.ctx
        process = ctx.recorder.new_process()
        while draining or not ctx.stop.is_set():
            etype, task = await self._claim(process, node)
            if etype == "info":
                process = ctx.recorder.new_process()
            if task is None:
                if draining:
                    return
                await self.pause(0.02, failed=etype != "ok")
                continue
            etype = await self._work(process, node, task, draining)
            if etype == "info":
                process = ctx.recorder.new_process()

    async def _claim(self, process: int, node: str) -> tuple[str, dict[str, Any] | None]:
        ctx = self.ctx
        inv = self.invoke(process, "claim", None, None, node)
        answer = await ctx.client.request(node, "POST", f"/v1/tasks/{self.namespace}/claim", body={
            "worker": f"p{process}", "lease_ms": TASK_LEASE_MS, "wait_ms": CLAIM_WAIT_MS},
            timeout_s=ctx.op_timeout_s + CLAIM_WAIT_MS / 1000)
        etype, error = outcome(answer, (200, 204))
        task = answer.body if answer.status == 200 and isinstance(answer.body, dict) else None
        value = {"id": task["id"], "fence": task["fence"], "attempts": task["attempts"]} if task else None
        self.complete(inv, etype, value, error, answer)
        return etype, task

    async def _work(self, process: int, node: str, task: dict[str, Any], draining: bool) -> str:
        ctx = self.ctx
        tid, fence = task["id"], task["fence"]
        roll = self.rng.random()
        if not draining and roll < self.slow_share:
            await asyncio.sleep(TASK_LEASE_MS / 1000 * self.rng.uniform(1.3, 2.5))  # stalls past its claim
        else:
            await asyncio.sleep(self.rng.uniform(0.0, 0.02))
        if not draining and self.slow_share <= roll < self.slow_share + self.fail_share:
            action, body = "fail", {"fence": fence, "error": f"p{process} gave up"}
            if self.rng.random() < self.give_up_share:
                body["retry"] = False
        else:
            action, body = "complete", {"fence": fence, "result": {"by": f"p{process}", "fence": fence}}
        inv = self.invoke(process, action, tid, body, node, fence=fence)
        answer = await ctx.client.request(node, "POST", f"/v1/tasks/{self.namespace}/{tid}/{action}", body=body)
        etype, error = outcome(answer, (200,), fail_statuses=(409, 404))
        self.complete(inv, etype, body, error, answer)
        return etype

    async def final(self) -> bool:
        """Drain the queue (claims that ran out come back; nobody stalls now),
        then read every task once, linearizably."""
        ctx = self.ctx
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            live = ctx.live_nodes() or ctx.node_ids
            await asyncio.gather(*(self._worker(node, draining=True) for node in live))
            tasks = await self._read_all(ctx.recorder.new_process(), live[0], record=False)
            if tasks is not None and not any(t["state"] in ("ready", "claimed") for t in tasks):
                break
            await asyncio.sleep(0.5)
        for node in itertools.cycle(ctx.node_ids):
            if time.monotonic() > deadline + DRAIN_TIMEOUT_S:
                return False
            if node in ctx.live_nodes() and await self._read_all(ctx.recorder.new_process(), node) is not None:
                return True
            await asyncio.sleep(0.2)
        return False

    async def _read_all(self, process: int, node: str, record: bool = True) -> list[dict[str, Any]] | None:
        ctx = self.ctx
        inv = self.invoke(process, "read", None, None, node, consistency="linearizable") if record else None
        tasks: list[dict[str, Any]] = []
        cursor: str | None = None
        answer = Answer(0)
        while True:
            params = {"limit": str(TASK_LIST_PAGE), "consistency": "linearizable"}
            if cursor:
                params["cursor"] = cursor
            answer = await ctx.client.request(node, "GET", f"/v1/tasks/{self.namespace}", params=params)
            if answer.status != 200 or not isinstance(answer.body, dict):
                break
            tasks.extend(answer.body.get("items", []))
            cursor = answer.body.get("cursor")
            if not cursor:
                break
        etype, error = outcome(answer, (200,))
        value = {t["id"]: {"state": t["state"], "attempts": t["attempts"], "max_attempts": t.get("max_attempts"),
                           "result": t.get("result")} for t in tasks} if etype == "ok" else None
        if inv is not None:
            self.complete(inv, etype, value, error, answer)
        return tasks if etype == "ok" else None


COORDINATION_WORKLOADS: dict[str, type[Workload]] = {"lock": LockWorkload, "task": TaskWorkload}
# Which checkers of jepsen_like.checker judge each (jepsen_like.checker.WORKLOADS).
COORDINATION_CHECKS: dict[str, str] = {"lock": "lock", "task": "task"}
