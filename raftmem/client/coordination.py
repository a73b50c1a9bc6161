"""Locks and task queues in the client: methods mixed into `AsyncClient`
(and, blocking, into `Client`), and `lock()`, a context manager that holds a
lock while its body runs: it renews the lease in the background and stops the
body (cancels it, and raises `LockLost`) when a renewal is refused or cannot
succeed before the lease might have run out.

Timing: a lease granted for `ttl_ms` runs from the leader's time when it
applied the acquisition, which is after this client sent the request. So this
client counts the lease from its own send time, shortened by the clock drift
bound, and treats it as lost a margin before that: the body stops before the
cluster can give the lock to anyone else, as long as clocks drift less than
`drift` and the nodes' clocks agree in offset to well within the margin (a
lease may be ended by another leader than the one that granted it). Writes that must not happen without the lock carry its fence
(`put(..., if_fence=lease)`): the store refuses them once the lock moved on,
whatever the clocks did.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, replace
from typing import Any, Protocol
from urllib.parse import quote

import orjson

from .errors import ClientError, Fenced, LockHeld, LockLost, NotFound
from .retry import RetryPolicy
from .routing import RouteTable
from .types import Response, _Request

DRIFT_DEFAULT = 0.1  # as raft.clock_drift_bound
RENEW_FRACTION = 3  # renew every ttl / 3 unless told
LOSS_MARGIN_S_MAX = 1.0  # stop the body this long (at most ttl / 10) before the lease could end
RENEW_RETRY_S = 0.05


def default_holder() -> str:
    """Unique per client process (a holder name identifies one holder)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class HasFence(Protocol):
    @property
    def if_fence(self) -> str: ...


@dataclass
class Lease:
    """A lock as its holder knows it. `fence` goes with every guarded write
    (`if_fence=lease`); `valid_until` is this client's monotonic time before
    which the cluster cannot have given the lock to anyone else (clock drift
    under the bound)."""

    namespace: str
    name: str
    holder: str
    fence: int
    expires_at: int  # the leader's wall clock, ms
    ttl_ms: int
    valid_until: float
    lost: str | None = None  # why, once lost

    @property
    def if_fence(self) -> str:
        return f"{self.namespace}/{self.name}:{self.fence}"

    def check(self) -> None:
        """Raise LockLost if the lock was lost (for a blocking body to call at safe points)."""
        if self.lost is not None:
            raise LockLost(f"lock {self.namespace}/{self.name} (fence {self.fence}) lost: {self.lost}")

    def remaining_s(self, now: float | None = None) -> float:
        return self.valid_until - (time.monotonic() if now is None else now)


def _path(kind: str, namespace: str, *parts: str) -> str:
    return f"/v1/{kind}/" + "/".join(quote(p, safe="") for p in (namespace, *parts))


class _Core(Protocol):
    """What the mixin needs of the client it is mixed into (AsyncClient)."""

    retry: RetryPolicy
    routes: RouteTable
    idempotent: bool

    async def _send(self, request: _Request, retry: RetryPolicy | None = None) -> Response: ...

    async def _ensure_routes(self) -> None: ...

    def shard_of(self, namespace: str, memory_id: str) -> int | None: ...

    async def acquire_lock(self, namespace: str, name: str, *, ttl_ms: int, holder: str | None = None,
                           wait_ms: int = 0, drift: float = DRIFT_DEFAULT) -> Lease: ...

    async def renew_lock(self, lease: Lease, ttl_ms: int | None = None, *, retry: RetryPolicy | None = None,
                         drift: float = DRIFT_DEFAULT) -> Lease: ...

    async def release_lock(self, lease: Lease) -> dict[str, Any]: ...


def _write(method: str, path: str, body: Mapping[str, Any] | None, shard: int | None, idempotent: bool,
           wait_ms: int = 0, timeout_s: float = 0.0) -> _Request:
    headers = {"Content-Type": "application/json"}
    if idempotent:
        headers["Idempotency-Key"] = _key()
    return _Request(method, path, is_write=True, shard=shard, headers=headers,
                    body=orjson.dumps(body) if body is not None else None,
                    timeout_s=(wait_ms / 1000 + timeout_s) if wait_ms else None)


def _key() -> str:
    return f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex}"


def _waiting(policy: RetryPolicy, wait_ms: int) -> RetryPolicy:
    """Retries of a request that waits at the server leave it time to."""
    return replace(policy, deadline_s=policy.deadline_s + wait_ms / 1000) if wait_ms else policy


class AsyncCoordination:
    """Mixed into AsyncClient: locks and task queues."""

    # -- locks -----------------------------------------------------------------------
    async def acquire_lock(self: _Core, namespace: str, name: str, *, ttl_ms: int, holder: str | None = None,
                           wait_ms: int = 0, drift: float = DRIFT_DEFAULT) -> Lease:
        """Acquire for `ttl_ms`, waiting in turn up to `wait_ms`. Raises LockHeld."""
        await self._ensure_routes()
        holder = holder or default_holder()
        request = _write("POST", _path("locks", namespace, name), {"holder": holder, "ttl_ms": ttl_ms,
                                                                   "wait_ms": wait_ms},
                         self.shard_of(namespace, name), self.idempotent, wait_ms, 10.0)
        sent = time.monotonic()
        response = await self._send(request, _waiting(self.retry, wait_ms))
        body = response.body
        lease = Lease(namespace, name, holder, int(body["fence"]), int(body["expires_at"]), ttl_ms,
                      _valid_until(sent, ttl_ms, drift))
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        if replayed or time.monotonic() - sent > ttl_ms / 1000 / RENEW_FRACTION:
            # It waited, or was retried (a replayed answer is an earlier attempt's,
            # and the lease may have changed hands since; the servers check, this
            # checks again): when the lease began is unknown here, so count it
            # from a renewal sent now instead, which also proves it is still held.
            try:
                await self.renew_lock(lease, drift=drift)
            except Fenced:
                raise  # not ours (any more): nothing to release
            except BaseException:
                with suppress(ClientError):
                    await self.release_lock(lease)
                raise
        return lease

    async def renew_lock(self: _Core, lease: Lease, ttl_ms: int | None = None, *, retry: RetryPolicy | None = None,
                         drift: float = DRIFT_DEFAULT) -> Lease:
        """Extend `lease` (in place, and returned). Raises Fenced once it is lost."""
        await self._ensure_routes()
        ttl = ttl_ms or lease.ttl_ms
        request = _write("POST", _path("locks", lease.namespace, lease.name, "renew"),
                         {"fence": lease.fence, "ttl_ms": ttl}, self.shard_of(lease.namespace, lease.name),
                         self.idempotent)
        sent = time.monotonic()
        body = (await self._send(request, retry)).body
        lease.expires_at, lease.ttl_ms = int(body["expires_at"]), ttl
        lease.valid_until = _valid_until(sent, ttl, drift)
        return lease

    async def release_lock(self: _Core, lease: Lease) -> dict[str, Any]:
        """Release; raises Fenced when it was no longer held with this fence."""
        await self._ensure_routes()
        request = _write("DELETE", _path("locks", lease.namespace, lease.name), {"fence": lease.fence},
                         self.shard_of(lease.namespace, lease.name), self.idempotent)
        body: dict[str, Any] = (await self._send(request)).body
        return body

    async def get_lock(self: _Core, namespace: str, name: str, consistency: str | None = None) -> dict[str, Any] | None:
        """Who holds the lock (None: nobody)."""
        await self._ensure_routes()
        params = {"consistency": consistency} if consistency else {}
        request = _Request("GET", _path("locks", namespace, name), is_write=False,
                           shard=self.shard_of(namespace, name), params=params)
        try:
            body: dict[str, Any] = (await self._send(request)).body
        except NotFound:
            return None
        return body

    @asynccontextmanager
    async def lock(self: _Core, namespace: str, name: str, *, ttl_ms: int, holder: str | None = None,
                   wait_ms: int = 0, renew_every_ms: int | None = None,
                   drift: float = DRIFT_DEFAULT) -> AsyncIterator[Lease]:
        """`async with client.lock(ns, name, ttl_ms=...) as lease:` holds the lock
        while the body runs (released at the end). The lease is renewed every
        `renew_every_ms` (default ttl / 3); when a renewal is refused, or none
        succeeds before the lease might run out, the body is cancelled and
        `LockLost` raised. Pass `if_fence=lease` with the writes it guards."""
        every_s = _renew_every_s(ttl_ms, renew_every_ms, drift)
        lease = await self.acquire_lock(namespace, name, ttl_ms=ttl_ms, holder=holder, wait_ms=wait_ms, drift=drift)
        body = asyncio.current_task()
        assert body is not None, "lock() runs inside a task"
        state = {"inside": True, "stopped": False}

        def stop(why: str) -> None:
            lease.lost = why
            if state["inside"]:  # never cancel what runs after the body
                state["stopped"] = True
                body.cancel()

        keeper = asyncio.ensure_future(_keep(self, lease, every_s, drift, stop))
        try:
            yield lease
        except asyncio.CancelledError:
            if state["stopped"]:
                state["stopped"] = False
                if body.uncancel() == 0:
                    raise LockLost(f"lock {namespace}/{name} (fence {lease.fence}) lost: {lease.lost}") from None
            raise
        finally:
            state["inside"] = False
            keeper.cancel()
            with suppress(asyncio.CancelledError):
                await keeper
            if lease.lost is None:
                with suppress(ClientError):
                    await self.release_lock(lease)
        if state["stopped"]:
            # The body swallowed the cancellation that stopped it (or ended
            # before it landed): take it back, so the task is not left cancelling.
            body.uncancel()
        lease.check()  # lost while the body ran to its end without awaiting

    # -- tasks -----------------------------------------------------------------------
    async def enqueue_task(self: _Core, namespace: str, payload: Any = None, *, priority: int = 0,
                           task_id: str | None = None, not_before: int | None = None, delay_ms: int | None = None,
                           max_attempts: int | None = None, backoff_ms: int | None = None) -> dict[str, Any]:
        await self._ensure_routes()
        body: dict[str, Any] = {"payload": payload, "priority": priority}
        for key, value in (("id", task_id), ("not_before", not_before), ("delay_ms", delay_ms),
                           ("max_attempts", max_attempts), ("backoff_ms", backoff_ms)):
            if value is not None:
                body[key] = value
        request = _write("POST", _path("tasks", namespace), body, self.shard_of(namespace, ""), self.idempotent)
        out: dict[str, Any] = (await self._send(request)).body
        return out

    async def claim_task(self: _Core, namespace: str, *, lease_ms: int, worker: str | None = None,
                         wait_ms: int = 0) -> dict[str, Any] | None:
        """The claimed task (with its `fence`), or None when none was ready within
        `wait_ms`, or when the claim this request made is already over: a retry
        (same Idempotency-Key) after its answer was lost is refused (409 fenced)
        once that claim was given back or ran out, and the task is back in the
        queue for anyone, this worker included."""
        await self._ensure_routes()
        request = _write("POST", _path("tasks", namespace, "claim"),
                         {"worker": worker or default_holder(), "lease_ms": lease_ms, "wait_ms": wait_ms},
                         self.shard_of(namespace, ""), self.idempotent, wait_ms, 10.0)
        try:
            response = await self._send(request, _waiting(self.retry, wait_ms))
        except Fenced:
            return None
        out: dict[str, Any] | None = response.body if response.status == 200 else None
        return out

    async def complete_task(self: _Core, namespace: str, task_id: str, fence: int,
                            result: Any = None) -> dict[str, Any]:
        """Raises Fenced when the claim is no longer this fence's (it ran out and moved on)."""
        return await _settle(self, namespace, task_id, "complete", {"fence": fence, "result": result})

    async def fail_task(self: _Core, namespace: str, task_id: str, fence: int, error: str | None = None,
                        retry: bool = True) -> dict[str, Any]:
        """Back to the queue after the back-off (dead once attempts run out, or with retry=False)."""
        body: dict[str, Any] = {"fence": fence, "retry": retry}
        if error is not None:
            body["error"] = error
        return await _settle(self, namespace, task_id, "fail", body)

    async def extend_task(self: _Core, namespace: str, task_id: str, fence: int, lease_ms: int) -> dict[str, Any]:
        return await _settle(self, namespace, task_id, "extend", {"fence": fence, "lease_ms": lease_ms})

    async def get_task(self: _Core, namespace: str, task_id: str, consistency: str | None = None) -> dict[str, Any]:
        """Raises NotFound."""
        await self._ensure_routes()
        request = _Request("GET", _path("tasks", namespace, task_id), is_write=False,
                           shard=self.shard_of(namespace, ""), params={"consistency": consistency} if consistency else {})
        out: dict[str, Any] = (await self._send(request)).body
        return out

    async def list_tasks(self: _Core, namespace: str, *, state: str | None = None, limit: int = 100,
                         cursor: str | None = None, consistency: str | None = None) -> dict[str, Any]:
        """One page: `{"items", "count", "open", "cursor"?}`."""
        await self._ensure_routes()
        params = {"limit": str(limit)}
        for key, value in (("state", state), ("cursor", cursor), ("consistency", consistency)):
            if value is not None:
                params[key] = value
        request = _Request("GET", _path("tasks", namespace), is_write=False, shard=self.shard_of(namespace, ""),
                           params=params)
        out: dict[str, Any] = (await self._send(request)).body
        return out


async def _settle(client: _Core, namespace: str, task_id: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
    await client._ensure_routes()
    request = _write("POST", _path("tasks", namespace, task_id, action), body, client.shard_of(namespace, ""),
                     client.idempotent)
    out: dict[str, Any] = (await client._send(request)).body
    return out


def _loss_margin_s(ttl_ms: int) -> float:
    return min(LOSS_MARGIN_S_MAX, ttl_ms / 1000 / 10)


def _renew_every_s(ttl_ms: int, renew_every_ms: int | None, drift: float) -> float:
    """How often lock() renews; a ValueError for an interval that cannot keep
    the lease (a renewal due only after the body would have been stopped)."""
    every_s = (renew_every_ms or ttl_ms // RENEW_FRACTION) / 1000
    keeps_s = ttl_ms / 1000 * (1 - drift) - _loss_margin_s(ttl_ms)
    if every_s >= keeps_s:
        raise ValueError(f"renew_every_ms={renew_every_ms} cannot keep a lease of ttl_ms={ttl_ms}: renew well "
                         f"within {keeps_s * 1000:.0f} ms (the ttl less the drift bound and the loss margin)")
    return every_s


def _valid_until(sent: float, ttl_ms: int, drift: float) -> float:
    """Until when (this client's monotonic clock) the lease certainly holds: it
    began when the leader applied the request (or, replayed for a retry, its
    first attempt), which is after `sent`; shortened by the drift bound."""
    return sent + ttl_ms / 1000 * (1 - drift)


async def _keep(client: _Core, lease: Lease, every_s: float, drift: float, stop: Callable[[str], None]) -> None:
    """Renew `lease` every `every_s` until cancelled; `stop(why)` once it is lost
    (a renewal refused, none succeeding in time, or one failing unexpectedly)."""
    margin = _loss_margin_s(lease.ttl_ms)
    next_at = time.monotonic() + every_s
    while True:
        now = time.monotonic()
        if now >= lease.valid_until - margin:
            stop("no renewal succeeded before the lease could run out")
            return
        await asyncio.sleep(max(0.0, min(next_at, lease.valid_until - margin) - now))
        if time.monotonic() < next_at:
            continue
        left = lease.valid_until - margin - time.monotonic()
        if left <= RENEW_RETRY_S:
            await asyncio.sleep(max(0.0, left))  # no renewal fits in what is left: wait for the end
            continue
        try:
            await client.renew_lock(lease, retry=RetryPolicy(attempts_max=3, deadline_s=left), drift=drift)
        except (Fenced, NotFound, LockHeld) as e:
            stop(f"renewal refused: {e}")
            return
        except ClientError:
            next_at = time.monotonic() + RENEW_RETRY_S  # try again while the lease lasts
            continue
        except Exception as e:  # noqa: BLE001 (not one the client knows: the lease is not kept)
            stop(f"renewal failed: {type(e).__name__}: {e}")
            return
        next_at = time.monotonic() + every_s


class _SyncCore(Protocol):
    _async: Any

    def _run(self, awaitable: Any) -> Any: ...


async def _start(coro: Any) -> asyncio.Task[None]:
    return asyncio.ensure_future(coro)


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with suppress(asyncio.CancelledError):
        await task


class SyncCoordination:
    """Mixed into the blocking Client: the same methods, run on its loop thread."""

    def acquire_lock(self: _SyncCore, namespace: str, name: str, **kw: Any) -> Lease:
        lease: Lease = self._run(self._async.acquire_lock(namespace, name, **kw))
        return lease

    def renew_lock(self: _SyncCore, lease: Lease, ttl_ms: int | None = None) -> Lease:
        renewed: Lease = self._run(self._async.renew_lock(lease, ttl_ms))
        return renewed

    def release_lock(self: _SyncCore, lease: Lease) -> dict[str, Any]:
        out: dict[str, Any] = self._run(self._async.release_lock(lease))
        return out

    def get_lock(self: _SyncCore, namespace: str, name: str, consistency: str | None = None) -> dict[str, Any] | None:
        out: dict[str, Any] | None = self._run(self._async.get_lock(namespace, name, consistency))
        return out

    @contextmanager
    def lock(self: _SyncCore, namespace: str, name: str, *, ttl_ms: int, holder: str | None = None,
             wait_ms: int = 0, renew_every_ms: int | None = None, drift: float = DRIFT_DEFAULT,
             on_lost: Callable[[Lease], None] | None = None) -> Iterator[Lease]:
        """`with client.lock(ns, name, ttl_ms=...) as lease:`. Renewed in the
        background; a blocking body cannot be cancelled, so when the lock is lost
        `lease.lost` says why, `lease.check()` raises LockLost, `on_lost(lease)`
        is called (on the client's thread: it must not block), and leaving the
        block raises LockLost. Guarded writes carry `if_fence=lease`, which the
        store refuses once the lock moved on."""
        every_s = _renew_every_s(ttl_ms, renew_every_ms, drift)
        lease: Lease = self._run(self._async.acquire_lock(namespace, name, ttl_ms=ttl_ms, holder=holder,
                                                          wait_ms=wait_ms, drift=drift))

        def stop(why: str) -> None:
            lease.lost = why
            if on_lost is not None:
                on_lost(lease)

        keeper: asyncio.Task[None] = self._run(_start(_keep(self._async, lease, every_s, drift, stop)))
        try:
            yield lease
        finally:
            self._run(_cancelled(keeper))
            if lease.lost is None:
                with suppress(ClientError):
                    self._run(self._async.release_lock(lease))
        lease.check()

    def enqueue_task(self: _SyncCore, namespace: str, payload: Any = None, **kw: Any) -> dict[str, Any]:
        out: dict[str, Any] = self._run(self._async.enqueue_task(namespace, payload, **kw))
        return out

    def claim_task(self: _SyncCore, namespace: str, **kw: Any) -> dict[str, Any] | None:
        out: dict[str, Any] | None = self._run(self._async.claim_task(namespace, **kw))
        return out

    def complete_task(self: _SyncCore, namespace: str, task_id: str, fence: int, result: Any = None) -> dict[str, Any]:
        out: dict[str, Any] = self._run(self._async.complete_task(namespace, task_id, fence, result))
        return out

    def fail_task(self: _SyncCore, namespace: str, task_id: str, fence: int, error: str | None = None,
                  retry: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = self._run(self._async.fail_task(namespace, task_id, fence, error, retry))
        return out

    def extend_task(self: _SyncCore, namespace: str, task_id: str, fence: int, lease_ms: int) -> dict[str, Any]:
        out: dict[str, Any] = self._run(self._async.extend_task(namespace, task_id, fence, lease_ms))
        return out

    def get_task(self: _SyncCore, namespace: str, task_id: str, consistency: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = self._run(self._async.get_task(namespace, task_id, consistency))
        return out

    def list_tasks(self: _SyncCore, namespace: str, **kw: Any) -> dict[str, Any]:
        out: dict[str, Any] = self._run(self._async.list_tasks(namespace, **kw))
        return out
