"""Bounded retries against an in-process fake cluster: what is retried, what is
raised as Indeterminate, and that both the attempt count and the deadline hold."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from raftmem.client import (
    AsyncClient,
    Conflict,
    Indeterminate,
    NotFound,
    Overloaded,
    PreconditionFailed,
    RetryPolicy,
    Unavailable,
)
from tests.unit.fake_raftmem import FakeCluster, Fault

ATTEMPT_TIMEOUT_S = 0.2
SLOW_S = 0.6  # a scripted answer slower than an attempt's timeout


@pytest.fixture
async def fake() -> AsyncIterator[FakeCluster]:
    cluster = await FakeCluster().start()
    yield cluster
    await cluster.close()


class Pauses:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


def make_client(fake: FakeCluster, **kw: object) -> AsyncClient:
    kw.setdefault("sleep", Pauses())
    kw.setdefault("timeout_s", ATTEMPT_TIMEOUT_S)
    kw.setdefault("retry", RetryPolicy(attempts_max=4, deadline_s=5))
    return AsyncClient(fake.url_list(), **kw)  # type: ignore[arg-type]


def data_attempts(fake: FakeCluster, method: str = "PUT") -> list[dict[str, str]]:
    return [s.headers for s in fake.data_requests() if s.method == method]


async def test_a_lost_write_with_a_key_is_retried_with_the_same_key(fake: FakeCluster) -> None:
    fake.faults.append(Fault(delay_s=SLOW_S))
    async with make_client(fake) as client:
        memory = await client.put("ns", "a", 1)
    assert memory["version"] == 1
    keys = [h["Idempotency-Key"] for h in data_attempts(fake)]
    assert len(keys) == 2 and keys[0] == keys[1]


async def test_a_504_with_a_key_is_retried(fake: FakeCluster) -> None:
    fake.faults.append(Fault(504, body={"error": {"code": "indeterminate", "message": "m"}, "indeterminate": True}))
    async with make_client(fake) as client:
        await client.put("ns", "a", 1)
    assert len(data_attempts(fake)) == 2


async def test_a_lost_write_without_a_key_is_indeterminate_and_not_retried(fake: FakeCluster) -> None:
    fake.faults.append(Fault(delay_s=SLOW_S))
    async with make_client(fake, idempotent=False) as client:
        with pytest.raises(Indeterminate) as info:
            await client.put("ns", "a", 1)
    assert info.value.status == 0
    assert len(data_attempts(fake)) == 1
    assert "Idempotency-Key" not in data_attempts(fake)[0]


async def test_a_504_without_a_key_is_indeterminate(fake: FakeCluster) -> None:
    fake.faults.append(Fault(504, body={"error": {"code": "indeterminate", "message": "m"}, "indeterminate": True}))
    async with make_client(fake) as client:
        with pytest.raises(Indeterminate):
            await client.put("ns", "a", 1, idempotent=False)
    assert len(data_attempts(fake)) == 1


async def test_503_on_a_write_without_a_key_is_raised_as_unavailable(fake: FakeCluster) -> None:
    fake.faults.append(Fault(503))
    async with make_client(fake, idempotent=False) as client:
        with pytest.raises(Unavailable) as info:
            await client.put("ns", "a", 1)
    assert info.value.status == 503 and info.value.retryable
    assert len(data_attempts(fake)) == 1


async def test_a_caller_key_is_sent_as_given(fake: FakeCluster) -> None:
    fake.faults.append(Fault(503))
    async with make_client(fake, idempotent=False) as client:
        await client.put("ns", "a", 1, idempotency_key="mine-1")
    assert [h["Idempotency-Key"] for h in data_attempts(fake)] == ["mine-1", "mine-1"]


async def test_every_attempt_lost_is_indeterminate(fake: FakeCluster) -> None:
    fake.always = Fault(delay_s=SLOW_S)
    async with make_client(fake) as client:
        with pytest.raises(Indeterminate):
            await client.put("ns", "a", 1)
    assert len(data_attempts(fake)) == 4  # attempts_max


async def test_lost_then_unavailable_is_still_indeterminate(fake: FakeCluster) -> None:
    fake.faults.append(Fault(delay_s=SLOW_S))
    fake.faults.extend(Fault(503) for _ in range(10))
    async with make_client(fake) as client:
        with pytest.raises(Indeterminate) as info:
            await client.put("ns", "a", 1)
    # The first attempt may have applied: a later "nothing happened" proves nothing.
    assert info.value.status == 503
    assert isinstance(info.value.__cause__, Unavailable)


async def test_reads_retry_timeouts_and_503_then_raise_unavailable(fake: FakeCluster) -> None:
    fake.always = Fault(503)
    async with make_client(fake) as client:
        with pytest.raises(Unavailable):
            await client.get("ns", "a", consistency="eventual")
    assert len(data_attempts(fake, "GET")) == 4

    fake.always = None
    fake.seen.clear()
    fake.faults.append(Fault(delay_s=SLOW_S))
    async with make_client(fake) as client:
        with pytest.raises(NotFound):  # answered on the second attempt
            await client.get("ns", "missing")
    assert len(data_attempts(fake, "GET")) == 2


@pytest.mark.parametrize(
    ("status", "cls"), [(404, NotFound), (409, Conflict), (412, PreconditionFailed)]
)
async def test_client_errors_are_not_retried(fake: FakeCluster, status: int, cls: type[Exception]) -> None:
    fake.faults.append(Fault(status))
    async with make_client(fake) as client:
        with pytest.raises(cls):
            await client.put("ns", "a", 1)
    assert len(data_attempts(fake)) == 1


async def test_overload_is_retried_after_the_servers_pause_up_to_a_cap(fake: FakeCluster) -> None:
    fake.faults.append(Fault(429, headers={"Retry-After": "0.3"}))
    fake.faults.append(Fault(429, headers={"Retry-After": "30"}))
    pauses = Pauses()
    retry = RetryPolicy(attempts_max=4, deadline_s=60, retry_after_max_s=2)
    async with make_client(fake, sleep=pauses, retry=retry) as client:
        await client.put("ns", "a", 1)
    assert pauses.delays[0] == pytest.approx(0.3)
    assert pauses.delays[1] == pytest.approx(2.0)


async def test_overload_raises_overloaded_when_attempts_run_out(fake: FakeCluster) -> None:
    fake.always = Fault(429)
    async with make_client(fake, retry=RetryPolicy(attempts_max=2)) as client:
        with pytest.raises(Overloaded):
            await client.get("ns", "a")


async def test_the_total_deadline_bounds_retries(fake: FakeCluster) -> None:
    fake.always = Fault(delay_s=SLOW_S)
    retry = RetryPolicy(attempts_max=100, deadline_s=0.7)
    async with make_client(fake, retry=retry) as client:
        start = time.monotonic()
        with pytest.raises(Unavailable):
            await client.get("ns", "a")
        elapsed = time.monotonic() - start
    attempts = len(data_attempts(fake, "GET"))
    assert 2 <= attempts <= 4
    assert elapsed < 0.7 + ATTEMPT_TIMEOUT_S


async def test_a_batch_of_keyed_writes_is_retried_and_keys_are_stable(fake: FakeCluster) -> None:
    fake.faults.append(Fault(503, path_prefix="/v1/batch"))
    async with make_client(fake) as client:
        results = await client.batch([{"op": "put", "namespace": "ns", "id": "a", "body": {}}, {"op": "get", "namespace": "ns", "id": "a"}])
    assert [r.ok for r in results] == [True, True]
    bodies = [s.body for s in fake.data_requests() if s.path == "/v1/batch"]
    assert len(bodies) == 2 and bodies[0] == bodies[1] and b"idempotency_key" in bodies[0]


async def test_a_batch_with_an_unkeyed_write_is_not_retried(fake: FakeCluster) -> None:
    fake.faults.append(Fault(503, path_prefix="/v1/batch"))
    async with make_client(fake, idempotent=False) as client:
        with pytest.raises(Unavailable):
            await client.batch([{"op": "delete", "namespace": "ns", "id": "a"}])
        fake.faults.append(Fault(503, path_prefix="/v1/batch"))
        results = await client.batch([{"op": "get", "namespace": "ns", "id": "a"}])  # reads only: retried
    assert len(results) == 1
