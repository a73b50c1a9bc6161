"""The client's lock() on a fake transport: it renews in the background, stops
(cancels) the body with LockLost when a renewal is refused or cannot land
before the lease could run out, releases at the end, and never cancels what
runs after the body. And the answers it maps to LockHeld / Fenced."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from raftmem.client import ClientError, Fenced, LockHeld, LockLost, Unavailable, error_from_response
from raftmem.client.coordination import AsyncCoordination, Lease
from raftmem.client.retry import RetryPolicy
from raftmem.client.types import Response, _Request


class FakeClient(AsyncCoordination):
    """Answers acquire at once; renewals as told (ok, refused, or unavailable)."""

    def __init__(self, renew: str = "ok") -> None:
        self.renew = renew
        self.renewals = 0
        self.released: list[int] = []

    async def acquire_lock(self, namespace: str, name: str, *, ttl_ms: int, holder: str | None = None,
                           wait_ms: int = 0, drift: float = 0.1) -> Lease:
        return Lease(namespace, name, holder or "h", 7, 0, ttl_ms, time.monotonic() + ttl_ms / 1000 * (1 - drift))

    async def renew_lock(self, lease: Lease, ttl_ms: int | None = None, *, retry: Any = None,
                         drift: float = 0.1) -> Lease:
        self.renewals += 1
        if self.renew == "refused":
            raise Fenced("lock moved on", status=409, code="fenced")
        if self.renew == "unavailable":
            raise Unavailable("no leader", status=503)
        lease.valid_until = time.monotonic() + lease.ttl_ms / 1000 * (1 - drift)
        return lease

    async def release_lock(self, lease: Lease) -> dict[str, Any]:
        self.released.append(lease.fence)
        return {}


async def test_the_lease_is_renewed_while_the_body_runs_and_released_after() -> None:
    client = FakeClient()
    async with client.lock("ns", "l", ttl_ms=300) as lease:
        await asyncio.sleep(0.8)  # well past the ttl
        assert lease.lost is None and lease.remaining_s() > 0
    assert client.renewals >= 5 and client.released == [7]


@pytest.mark.parametrize("renew", ["refused", "unavailable"])
async def test_a_lost_lease_cancels_the_body_with_lock_lost(renew: str) -> None:
    client = FakeClient(renew)
    reached: list[str] = []
    started = time.monotonic()
    with pytest.raises(LockLost) as lost:
        async with client.lock("ns", "l", ttl_ms=300):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                reached.append("cancelled")
                raise
    elapsed = time.monotonic() - started
    assert reached == ["cancelled"]
    # Refused: at the first renewal (ttl/3). Unavailable: before the lease could run out.
    assert elapsed < 0.3 + 0.2, elapsed  # (0.2 s of slack for a loaded machine)
    assert ("refused" in str(lost.value)) == (renew == "refused")
    assert client.released == []  # not ours any more: nothing to release
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0.01)  # no stray cancellation lands after the block


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    client = FakeClient()

    async def holder() -> None:
        async with client.lock("ns", "l", ttl_ms=10_000):
            await asyncio.sleep(10)

    task = asyncio.ensure_future(holder())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.released == [7]


def test_conflicts_map_to_their_own_errors() -> None:
    held = error_from_response(409, {"error": {"code": "lock_held", "message": "m", "holder": "a"}}, {})
    fenced = error_from_response(409, {"error": {"code": "fenced", "message": "m"}}, {})
    other = error_from_response(409, {"error": {"code": "idempotency_key_reused", "message": "m"}}, {})
    assert isinstance(held, LockHeld) and isinstance(fenced, Fenced)
    assert not isinstance(other, LockHeld | Fenced)
    lease = Lease("team", "deploy:prod", "h", 42, 0, 1000, 0.0)
    assert lease.if_fence == "team/deploy:prod:42"
    lease.lost = "gone"
    with pytest.raises(LockLost):
        lease.check()


class WireFake(AsyncCoordination):
    """The real acquire_lock / renew_lock / release_lock over a scripted
    transport: answers by (method, path suffix), in order; errors raised."""

    def __init__(self, answers: dict[str, list[Response | ClientError]]) -> None:
        self.retry = RetryPolicy()
        self.idempotent = True
        self.answers = answers
        self.sent: list[str] = []

    async def _ensure_routes(self) -> None:
        return None

    def shard_of(self, namespace: str, memory_id: str) -> int | None:
        return 0

    async def _send(self, request: _Request, retry: RetryPolicy | None = None) -> Response:
        what = request.method + (" renew" if request.path.endswith("/renew") else "")
        self.sent.append(what)
        answer = self.answers[what].pop(0)
        if isinstance(answer, ClientError):
            raise answer
        return answer


def _acquired(fence: int, **headers: str) -> Response:
    return Response(201, {"fence": fence, "expires_at": 0, "holder": "h"}, headers)


async def test_a_replayed_acquisition_is_renewed_before_it_is_trusted() -> None:
    """Idempotent-Replayed: the acquisition happened earlier (a retry of it);
    the client renews before returning the lease, and a refused renewal means
    the lock is not its own (a server that replays without checking)."""
    refused = Fenced("not held", status=409, code="fenced")
    client = WireFake({"POST": [_acquired(7, **{"Idempotent-Replayed": "true"})], "POST renew": [refused]})
    with pytest.raises(Fenced):
        await client.acquire_lock("ns", "l", ttl_ms=10_000)
    assert client.sent == ["POST", "POST renew"]
    fresh = WireFake({"POST": [_acquired(8)]})
    assert (await fresh.acquire_lock("ns", "l", ttl_ms=10_000)).fence == 8 and fresh.sent == ["POST"]
    ok = WireFake({"POST": [_acquired(9, **{"Idempotent-Replayed": "true"})],
                   "POST renew": [Response(200, {"fence": 9, "expires_at": 5}, {})]})
    assert (await ok.acquire_lock("ns", "l", ttl_ms=10_000)).expires_at == 5


async def test_a_renewal_after_a_long_wait_that_fails_releases_the_lock_it_took() -> None:
    client = WireFake({"POST": [_acquired(7, **{"Idempotent-Replayed": "true"})],
                       "POST renew": [Unavailable("no leader", status=503)],
                       "DELETE": [Response(200, {}, {})]})
    with pytest.raises(Unavailable):
        await client.acquire_lock("ns", "l", ttl_ms=10_000)
    assert client.sent == ["POST", "POST renew", "DELETE"]


async def test_a_claim_whose_retry_finds_it_over_claims_nothing() -> None:
    over = Fenced("the claim this Idempotency-Key made is over", status=409, code="fenced")
    client = WireFake({"POST": [over, Response(200, {"id": "t", "fence": 3}, {})]})
    assert await client.claim_task("q", lease_ms=1000) is None
    assert (await client.claim_task("q", lease_ms=1000))["fence"] == 3


class Boom(RuntimeError):
    pass


async def test_a_renewal_that_fails_unexpectedly_stops_the_body() -> None:
    """Not a ClientError (a bug, a decoding error): the keeper stops the body
    rather than dying silently and leaving it to run past the lease."""
    client = FakeClient("ok")

    async def explode(lease: Lease, ttl_ms: int | None = None, *, retry: Any = None, drift: float = 0.1) -> Lease:
        raise Boom("unexpected")

    client.renew_lock = explode  # type: ignore[method-assign]
    with pytest.raises(LockLost) as lost:
        async with client.lock("ns", "l", ttl_ms=300):
            await asyncio.sleep(2)
    assert "unexpected" in str(lost.value)


async def test_the_keeper_does_not_spin_when_no_renewal_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Renewals keep failing; in the last RENEW_RETRY_S before the lease could
    run out no renewal is worth sending: the keeper sleeps, it does not spin."""
    import raftmem.client.coordination as cc

    looks = {"n": 0}
    real = time.monotonic

    def counted() -> float:
        looks["n"] += 1
        return real()

    monkeypatch.setattr(cc, "time", SimpleNamespace(monotonic=counted, time=time.time))
    client = FakeClient("unavailable")
    with pytest.raises(LockLost):
        async with client.lock("ns", "l", ttl_ms=1000):
            await asyncio.sleep(5)
    assert looks["n"] < 200, looks


@pytest.mark.parametrize("every_ms", [900, 1000, 5000])
async def test_a_renewal_interval_that_cannot_keep_the_lease_is_refused(every_ms: int) -> None:
    client = FakeClient()
    with pytest.raises(ValueError, match="renew_every_ms"):
        async with client.lock("ns", "l", ttl_ms=1000, renew_every_ms=every_ms):
            pass
    assert client.released == []  # refused before acquiring


async def test_a_body_that_swallows_the_stop_is_uncancelled_and_told() -> None:
    client = FakeClient("refused")
    with pytest.raises(LockLost):
        async with client.lock("ns", "l", ttl_ms=300):
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                pass  # e.g. a library that catches and cleans up
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0.01)
