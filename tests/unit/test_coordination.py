"""Locks and task claims applied by the state machine on a real RocksDB: fences
only grow, leases end only through the log, a fenced write is refused in the
same step as the write, claims take tasks in order, failures back off and end
in the dead-letter state, and a replay decides (and wakes) nothing twice."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftmem import codec
from raftmem.commands import (
    AcquireLock,
    ClaimTask,
    Command,
    Delete,
    EnqueueTask,
    ExpireLeases,
    Fence,
    MemoryFields,
    Outcome,
    Put,
    ReleaseLock,
    RenewLock,
    Result,
    SettleTask,
    TaskSpec,
    decode_entry,
    encode_entry,
    fingerprint,
)
from raftmem.coordination import CLOCK_STEP_BACK_MS_MAX, FENCE_SPAN, shard_now
from raftmem.statemachine import StateMachine
from raftmem.storage import Store

T0 = 1_763_700_000_000


class Shard:
    """A state machine and the index of its next entry."""

    def __init__(self, path: Path, **kw: Any) -> None:
        self.notices: list[tuple[int, list[tuple[str, str, str]]]] = []
        self.sm = StateMachine(Store(path), 0, notify=lambda shard, n: self.notices.append((shard, list(n))), **kw)
        self.index = 0

    def apply(self, *commands: Command) -> list[Result]:
        self.index += 1
        return self.sm.apply(self.index, encode_entry(commands)).results

    def one(self, command: Command) -> Result:
        return self.apply(command)[0]

    def keys(self) -> list[tuple[bytes, bytes]]:
        return list(self.sm.store.scan(b"", b"\xff"))


@pytest.fixture
def shard(tmp_path: Path) -> Shard:
    return Shard(tmp_path / "db")


def acquire(holder: str, now: int, ttl: int = 1000, name: str = "L", idem: str | None = None) -> AcquireLock:
    return AcquireLock("ns", name, holder, ttl, idem, now)


def fenced_put(mid: str, fence: int, now: int, content: Any = None, name: str = "L") -> Put:
    return Put("ns", mid, MemoryFields(content=content), now_ms=now, if_fence=Fence("ns", name, fence))


def enqueue(tid: str, now: int, **spec: Any) -> EnqueueTask:
    return EnqueueTask("q", tid, TaskSpec(**{"payload": tid, **spec}), None, now)


def settle(tid: str, fence: int, action: str, now: int, **kw: Any) -> SettleTask:
    return SettleTask("q", tid, fence, action, now_ms=now, **kw)


# -- locks ------------------------------------------------------------------------------
def test_a_lock_is_acquired_renewed_and_released_by_its_fence(shard: Shard) -> None:
    got = shard.one(acquire("a", T0))
    assert got.outcome == Outcome.ACQUIRED and got.coord is not None
    fence = got.coord["fence"]
    assert fence == 1 * FENCE_SPAN + 0 and got.coord["expires_at"] == T0 + 1000
    held = shard.one(acquire("b", T0 + 10))
    assert held.outcome == Outcome.LOCK_HELD and held.coord["holder"] == "a"
    assert shard.one(RenewLock("ns", "L", fence + 1, 5000, None, T0 + 20)).outcome == Outcome.FENCED
    renewed = shard.one(RenewLock("ns", "L", fence, 5000, None, T0 + 20))
    assert renewed.outcome == Outcome.RENEWED and renewed.coord["expires_at"] == T0 + 5020
    assert renewed.coord["fence"] == fence  # a renewal keeps the fence
    assert shard.one(ReleaseLock("ns", "L", fence, None, T0 + 30)).outcome == Outcome.RELEASED
    assert shard.one(ReleaseLock("ns", "L", fence, None, T0 + 40)).outcome == Outcome.FENCED
    assert shard.sm.coordination.lock("ns", "L", T0 + 40) is None
    again = shard.one(acquire("b", T0 + 50))
    assert again.outcome == Outcome.ACQUIRED and again.coord["fence"] > fence
    assert [n for _, batch in shard.notices for n in batch] == [("lock", "ns", "L")]


def test_two_acquisitions_in_one_entry_get_different_fences(shard: Shard) -> None:
    first, release, second = shard.apply(acquire("a", T0), ReleaseLock("ns", "L", FENCE_SPAN, None, T0),
                                         acquire("b", T0))
    assert (first.outcome, release.outcome, second.outcome) == (Outcome.ACQUIRED, Outcome.RELEASED, Outcome.ACQUIRED)
    assert second.coord["fence"] == first.coord["fence"] + 2 and second.coord["fence"] // FENCE_SPAN == 1


def test_a_lease_ends_only_through_the_log(shard: Shard, monkeypatch: pytest.MonkeyPatch) -> None:
    """Apply reads no clock: with every clock broken, it decides from the times
    in the entries. A lease that ran out (by an entry's time) is free; the
    ExpireLeases entry removes it and wakes waiters."""

    def no_clock() -> float:
        raise AssertionError("apply read a clock")

    fence = shard.one(acquire("a", T0, ttl=1000)).coord["fence"]
    for name in ("time", "time_ns", "monotonic", "monotonic_ns", "perf_counter"):
        monkeypatch.setattr(time, name, no_clock)
    assert shard.one(acquire("b", T0 + 999)).outcome == Outcome.LOCK_HELD
    assert shard.one(ExpireLeases(T0 + 999)).expired == 0 and shard.notices == []
    # Past the lease by an entry's time: free, though nothing removed it yet.
    assert shard.one(fenced_put("m", fence, T0 + 1000)).outcome == Outcome.FENCED
    assert shard.one(ExpireLeases(T0 + 1000)).expired == 1
    assert shard.notices == [(0, [("lock", "ns", "L")])]
    assert shard.one(acquire("b", T0 + 1001)).outcome == Outcome.ACQUIRED


def test_time_never_goes_back_for_leases(shard: Shard) -> None:
    """A new leader whose clock is behind its predecessor's does not revive a
    lease that had run out: apply uses the latest time it has applied."""
    fence = shard.one(acquire("a", T0, ttl=1000)).coord["fence"]
    assert shard.one(fenced_put("m", fence, T0 + 999)).outcome == Outcome.CREATED
    assert shard.one(enqueue("t", T0 + 1500)).outcome == Outcome.ENQUEUED  # the shard's time is now T0+1.5s
    # The next leader's clock is a second behind: the lease is still over.
    assert shard.one(fenced_put("m", fence, T0 + 500)).outcome == Outcome.FENCED
    assert shard.one(acquire("b", T0 + 500)).coord["acquired_at"] == T0 + 1500



DAY_MS = 86_400_000


def test_one_forward_clock_step_holds_later_leases_at_most_a_minute_longer(shard: Shard) -> None:
    """One leader stamps a command a day ahead (an NTP step, a bad RTC), then
    its clock is corrected. The shard's time must not stay a day ahead: a
    holder that crashes right after acquiring a 1 s lease would keep the lock
    for a day, and the reaper would never free it (review finding 4). A lease
    is measured from at most CLOCK_STEP_BACK_MS_MAX ahead of its command's time."""
    shard.one(acquire("x", T0 + DAY_MS, ttl=1000, name="other"))  # one stamp from the bad clock
    got = shard.one(acquire("crashed", T0 + 1000, ttl=1000))  # clock fixed; a 1 s lease
    assert got.outcome == Outcome.ACQUIRED
    assert got.coord["expires_at"] <= T0 + 1000 + CLOCK_STEP_BACK_MS_MAX + 1000
    coordination = shard.sm.coordination
    later = T0 + 3_600_000  # an hour of real time later, the reaper's look (replica.expire_due)
    due = coordination.next_deadline_ms()
    assert due is not None and due <= coordination.now_ms(later)
    assert shard.one(ExpireLeases(later)).expired == 1
    assert shard.one(acquire("b", later, ttl=1000)).outcome == Outcome.ACQUIRED
    # The shard's time is back near the leader's; only the lease granted by the
    # bad stamp itself runs its (day-long) course.
    assert coordination.clock_ms() <= later + CLOCK_STEP_BACK_MS_MAX
    assert coordination.lock("ns", "other", later)["holder"] == "x"


def test_one_forward_clock_step_does_not_freeze_task_claims(shard: Shard) -> None:
    shard.one(enqueue("t1", T0, backoff_ms=0))
    shard.one(acquire("x", T0 + DAY_MS, ttl=1000, name="other"))
    assert shard.one(ClaimTask("q", "w1", 1000, None, T0 + 10)).outcome == Outcome.CLAIMED
    # w1 dies; an hour later another worker asks, and gets the task back.
    again = shard.one(ClaimTask("q", "w2", 1000, None, T0 + 3_600_000))
    assert again.outcome == Outcome.CLAIMED and again.coord["attempts"] == 1


def test_the_shard_time_is_monotonic_under_a_minute_of_skew(shard: Shard) -> None:
    """A successor up to CLOCK_STEP_BACK_MS_MAX behind decides by the shard's
    time (a lease that was over stays over); one further behind decides by its
    own time plus that bound (the clock-offset assumption, raftmem/DESIGN.md)."""
    fence = shard.one(acquire("a", T0, ttl=1000)).coord["fence"]
    shard.one(enqueue("t", T0 + 1500))
    behind = T0 + 1500 - CLOCK_STEP_BACK_MS_MAX
    assert shard.one(fenced_put("m", fence, behind)).outcome == Outcome.FENCED
    assert shard.sm.coordination.clock_ms() == T0 + 1500

def test_a_fenced_write_is_refused_in_the_same_step_as_the_write(shard: Shard) -> None:
    a = shard.one(acquire("a", T0, ttl=60_000)).coord["fence"]
    assert shard.one(fenced_put("m", a, T0 + 1, content=1)).outcome == Outcome.CREATED
    assert shard.one(ReleaseLock("ns", "L", a, None, T0 + 2)).outcome == Outcome.RELEASED
    # Not held at all: refused.
    refused = shard.one(fenced_put("m", a, T0 + 3, content=2))
    assert refused.outcome == Outcome.FENCED and refused.coord == {}
    b = shard.one(acquire("b", T0 + 4, ttl=60_000)).coord["fence"]
    # Held with a newer fence: refused, and the lock's holder is said.
    refused = shard.one(fenced_put("m", a, T0 + 5, content=3))
    assert refused.outcome == Outcome.FENCED and refused.coord["fence"] == b
    assert shard.one(Delete("ns", "m", now_ms=T0 + 5, if_fence=Fence("ns", "L", a))).outcome == Outcome.FENCED
    assert shard.sm.get("ns", "m", T0 + 6)["content"] == 1  # nothing changed
    # Within one entry the order decides: the write before the new acquisition
    # passes, the one after it does not.
    c_fence = (shard.index + 1) * FENCE_SPAN + 2
    before, release, acquired, after = shard.apply(
        fenced_put("m", b, T0 + 7, content=4), ReleaseLock("ns", "L", b, None, T0 + 7), acquire("c", T0 + 7),
        fenced_put("m", b, T0 + 7, content=5),
    )
    assert [r.outcome for r in (before, release, acquired, after)] == [
        Outcome.UPDATED, Outcome.RELEASED, Outcome.ACQUIRED, Outcome.FENCED]
    assert acquired.coord["fence"] == c_fence
    assert shard.sm.get("ns", "m", T0 + 8)["content"] == 4


def test_control_without_the_check_a_stale_fence_overwrites(tmp_path: Path) -> None:
    """The negative control the harness uses (debug.unsafe_skip_fence_check)."""
    shard = Shard(tmp_path / "db", unsafe_skip_fence_check=True)
    a = shard.one(acquire("a", T0, ttl=100)).coord["fence"]
    shard.one(acquire("b", T0 + 500))
    assert shard.one(fenced_put("m", a, T0 + 600)).outcome == Outcome.CREATED


def test_a_busy_answer_is_not_remembered_for_its_key(shard: Shard) -> None:
    fence = shard.one(acquire("a", T0)).coord["fence"]
    assert shard.one(acquire("b", T0 + 1, idem="k")).outcome == Outcome.LOCK_HELD
    shard.one(ReleaseLock("ns", "L", fence, None, T0 + 2))
    got = shard.one(acquire("b", T0 + 3, idem="k"))
    assert got.outcome == Outcome.ACQUIRED and not got.replayed
    again = shard.one(acquire("b", T0 + 4, idem="k"))  # a retry: the first answer, same fence
    assert again.replayed and again.outcome == Outcome.ACQUIRED and again.coord == got.coord
    assert shard.one(acquire("c", T0 + 5, idem="k")).outcome == Outcome.IDEMPOTENCY_KEY_REUSED



def test_a_retried_acquisition_replays_only_while_its_lease_holds(shard: Shard) -> None:
    """A keyed acquisition given back (its waiter went away while it was in the
    log) or released, then retried with the same key, must not answer 201 with
    the old fence while someone else holds the lock (review finding 2)."""
    first = shard.one(acquire("me", T0, ttl=10_000, idem="K"))
    fence = first.coord["fence"]
    again = shard.one(acquire("me", T0 + 1, ttl=10_000, idem="K"))  # still held: the first answer
    assert again.replayed and again.outcome == Outcome.ACQUIRED and again.coord["fence"] == fence
    assert shard.one(ReleaseLock("ns", "L", fence, None, T0 + 5)).outcome == Outcome.RELEASED  # the give-back
    assert shard.one(acquire("other", T0 + 10, ttl=10_000)).outcome == Outcome.ACQUIRED
    retry = shard.one(acquire("me", T0 + 60, ttl=10_000, idem="K"))
    assert retry.outcome == Outcome.FENCED and not retry.outcome.busy
    assert "is over" in retry.message and retry.coord["holder"] == "other"
    # Not stored: the key still holds the first answer (and refuses again).
    assert shard.one(acquire("me", T0 + 70, ttl=10_000, idem="K")).outcome == Outcome.FENCED
    assert shard.sm.coordination.lock("ns", "L", T0 + 70)["holder"] == "other"


def test_a_retried_acquisition_whose_lease_ran_out_is_refused_while_the_lock_is_free(shard: Shard) -> None:
    shard.one(acquire("me", T0, ttl=1000, idem="K"))
    retry = shard.one(acquire("me", T0 + 1000, ttl=1000, idem="K"))
    assert retry.outcome == Outcome.FENCED and retry.coord == {}
    assert shard.sm.coordination.lock("ns", "L", T0 + 1000) is None  # nothing acquired by the retry


def test_a_retried_claim_replays_only_while_the_claim_holds(shard: Shard) -> None:
    shard.one(enqueue("t", T0, backoff_ms=0))
    first = shard.one(ClaimTask("q", "w1", 10_000, "K", T0)).coord
    again = shard.one(ClaimTask("q", "w1", 10_000, "K", T0 + 1))
    assert again.replayed and again.outcome == Outcome.CLAIMED and again.coord["fence"] == first["fence"]
    # Given back (the claimant went away), then claimed by another worker.
    shard.one(settle("t", first["fence"], "fail", T0 + 2, charge=False))
    other = shard.one(ClaimTask("q", "w2", 10_000, None, T0 + 3))
    assert other.outcome == Outcome.CLAIMED
    retry = shard.one(ClaimTask("q", "w1", 10_000, "K", T0 + 4))
    assert retry.outcome == Outcome.FENCED and retry.coord["worker"] == "w2"
    assert shard.one(settle("t", other.coord["fence"], "complete", T0 + 5)).outcome == Outcome.SETTLED

# -- fences only grow: a model-based property ----------------------------------------------
COMMAND = st.tuples(st.sampled_from(["acquire", "renew", "release", "expire", "write"]),
                    st.sampled_from(["a", "b", "c"]), st.integers(50, 600))
# Entries: a clock step (possibly backwards: a new leader) and the commands
# group commit packed into it.
ENTRIES = st.lists(st.tuples(st.integers(-300, 700), st.lists(COMMAND, min_size=1, max_size=4)),
                   min_size=1, max_size=40)


def _lock_command(kind: str, holder: str, mine: int, ttl: int, now: int) -> Command:
    if kind == "acquire":
        return acquire(holder, now, ttl=ttl)
    if kind == "renew":
        return RenewLock("ns", "L", mine, ttl, None, now)
    if kind == "release":
        return ReleaseLock("ns", "L", mine, None, now)
    if kind == "expire":
        return ExpireLeases(now)
    return fenced_put("m", mine, now, content=holder)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=ENTRIES)
def test_fences_only_grow_and_only_the_current_fence_writes(tmp_path_factory: pytest.TempPathFactory,
                                                           entries: list[tuple[int, list[tuple[str, str, int]]]]
                                                           ) -> None:
    """Against a reference model of one lock: who holds it, with which fence,
    until when (by the latest time applied); every answer agrees with it."""
    shard = Shard(tmp_path_factory.mktemp("p") / "db")
    now, latest = T0, 0
    fences: dict[str, int] = {}  # what each holder believes it holds
    model: dict[str, int] | None = None
    acquired: list[int] = []
    written: list[int] = []
    for step, batch in entries:
        now += step
        commands: list[Command] = []
        for kind, holder, ttl in batch:
            commands.append(_lock_command(kind, holder, fences.get(holder, 0), ttl, now))
        shard.index += 1
        results = shard.sm.apply(shard.index, encode_entry(commands)).results
        latest = shard_now(now, latest)
        for seq, ((_kind, holder, ttl), command, result) in enumerate(zip(batch, commands, results, strict=True)):
            held = model is not None and model["expires_at"] > latest
            if isinstance(command, AcquireLock):
                assert (result.outcome == Outcome.ACQUIRED) == (not held)
                if not held:
                    model = {"fence": shard.index * FENCE_SPAN + seq, "expires_at": latest + ttl}
                    assert result.coord == {**result.coord, **model}
                    acquired.append(model["fence"])
                    fences[holder] = model["fence"]
            elif isinstance(command, RenewLock | ReleaseLock | Put):
                presented = command.if_fence.fence if isinstance(command, Put) and command.if_fence else getattr(
                    command, "fence", None)
                valid = held and model is not None and model["fence"] == presented
                assert (result.outcome != Outcome.FENCED) == valid, (command, result, model)
                if valid and isinstance(command, RenewLock):
                    assert result.outcome == Outcome.RENEWED and model is not None
                    model = {**model, "expires_at": latest + ttl}
                elif valid and isinstance(command, ReleaseLock):
                    model = None
                elif valid:
                    assert presented is not None
                    written.append(presented)
    assert acquired == sorted(set(acquired))  # strictly growing
    assert written == sorted(written)  # accepted fenced writes never go back


# -- tasks ---------------------------------------------------------------------------------------
def test_claims_take_the_highest_priority_then_the_oldest_and_honour_not_before(shard: Shard) -> None:
    shard.apply(enqueue("low", T0, priority=-5), enqueue("old", T0), enqueue("later", T0 + 5_000,
                                                                             not_before_ms=T0 + 10_000))
    shard.one(enqueue("new", T0 + 1))
    shard.one(enqueue("urgent", T0 + 2, priority=7))
    order = []
    for i in range(6):
        got = shard.one(ClaimTask("q", "w", 30_000, None, T0 + 100 + i))
        order.append(got.coord["id"] if got.outcome == Outcome.CLAIMED else None)
    assert order == ["urgent", "old", "new", "low", None, None]
    got = shard.one(ClaimTask("q", "w", 30_000, None, T0 + 10_000))  # not_before has come
    assert got.outcome == Outcome.CLAIMED and got.coord["id"] == "later"
    assert [t["id"] for t in shard.sm.coordination.tasks("q", "claimed", None, 10)] == [
        "later", "low", "new", "old", "urgent"]


def test_an_expired_claim_is_requeued_with_attempts_and_its_stale_fence_is_refused(shard: Shard) -> None:
    shard.one(enqueue("t", T0, max_attempts=3, backoff_ms=0))
    first = shard.one(ClaimTask("q", "w1", 1000, None, T0)).coord
    assert shard.one(settle("t", first["fence"], "extend", T0 + 500, lease_ms=1000)).outcome == Outcome.SETTLED
    # The extension holds it past the first lease, and no longer.
    assert shard.one(ClaimTask("q", "w2", 1000, None, T0 + 1200)).outcome == Outcome.NO_TASK
    second = shard.one(ClaimTask("q", "w2", 1000, None, T0 + 1500))
    assert second.outcome == Outcome.CLAIMED and second.coord["attempts"] == 1
    assert second.coord["fence"] > first["fence"] and second.coord["last_error"] == "claim expired"
    stale = shard.one(settle("t", first["fence"], "complete", T0 + 1600, result="w1"))
    assert stale.outcome == Outcome.FENCED and stale.coord["worker"] == "w2"
    done = shard.one(settle("t", second.coord["fence"], "complete", T0 + 1700, result="w2"))
    assert done.outcome == Outcome.SETTLED and done.coord["state"] == "done" and done.coord["result"] == "w2"
    assert shard.one(settle("t", second.coord["fence"], "complete", T0 + 1800)).outcome == Outcome.FENCED
    assert shard.sm.coordination.open_tasks("q") == 0


def test_failures_back_off_then_dead_letter(shard: Shard) -> None:
    shard.one(enqueue("t", T0, max_attempts=3, backoff_ms=100))
    now = T0
    for attempt, backoff in ((1, 100), (2, 200)):
        claim = shard.one(ClaimTask("q", "w", 1000, None, now)).coord
        failed = shard.one(settle("t", claim["fence"], "fail", now + 1, result="boom")).coord
        assert failed["state"] == "ready" and failed["attempts"] == attempt and failed["ready_at"] == now + 1 + backoff
        assert shard.one(ClaimTask("q", "w", 1000, None, now + backoff)).outcome == Outcome.NO_TASK
        now += 1 + backoff
    claim = shard.one(ClaimTask("q", "w", 1000, None, now)).coord
    dead = shard.one(settle("t", claim["fence"], "fail", now + 1, result="boom")).coord
    assert dead["state"] == "dead" and dead["attempts"] == 3 and dead["last_error"] == "boom"
    assert [t["id"] for t in shard.sm.coordination.tasks("q", "dead", None, 10)] == ["t"]
    # Giving a claim back (charge=False) or refusing retries (retry=False).
    shard.one(enqueue("u", now))
    claim = shard.one(ClaimTask("q", "w", 1000, None, now)).coord
    back = shard.one(settle("u", claim["fence"], "fail", now, charge=False)).coord
    assert back["state"] == "ready" and back["attempts"] == 0 and back["ready_at"] is None
    claim = shard.one(ClaimTask("q", "w", 1000, None, now)).coord
    assert shard.one(settle("u", claim["fence"], "fail", now, retry=False)).coord["state"] == "dead"


def test_finished_tasks_are_purged_after_their_retention_and_ids_may_return(shard: Shard) -> None:
    shard.one(enqueue("t", T0, retain_ms=1000))
    assert shard.one(enqueue("t", T0)).outcome == Outcome.TASK_EXISTS
    claim = shard.one(ClaimTask("q", "w", 1000, None, T0)).coord
    shard.one(settle("t", claim["fence"], "complete", T0 + 10))
    assert shard.sm.coordination.next_deadline_ms() == T0 + 1010
    assert shard.one(ExpireLeases(T0 + 1010)).expired == 1
    assert shard.sm.coordination.task("q", "t") is None
    assert not [k for k, _ in shard.keys() if k[:1] in (b"J", b"W", b"Z") and b"\x02" not in k]
    assert shard.one(enqueue("t", T0 + 2000)).outcome == Outcome.ENQUEUED


def test_a_full_queue_refuses_more_and_says_so(shard: Shard) -> None:
    assert [r.outcome for r in shard.apply(*(enqueue(f"t{i}", T0, open_max=2) for i in range(3)))] == [
        Outcome.ENQUEUED, Outcome.ENQUEUED, Outcome.QUEUE_FULL]
    claim = shard.one(ClaimTask("q", "w", 1000, None, T0)).coord
    assert shard.one(enqueue("t3", T0, open_max=2)).outcome == Outcome.QUEUE_FULL  # claimed is open too
    shard.one(settle(claim["id"], claim["fence"], "complete", T0))
    assert shard.one(enqueue("t3", T0, open_max=2)).outcome == Outcome.ENQUEUED


def test_two_claims_in_one_entry_take_two_tasks(shard: Shard) -> None:
    shard.one(enqueue("a", T0))
    shard.one(enqueue("b", T0))
    one, two, three = shard.apply(*(ClaimTask("q", f"w{i}", 1000, None, T0) for i in range(3)))
    assert (one.coord["id"], two.coord["id"], three.outcome) == ("a", "b", Outcome.NO_TASK)
    assert two.coord["fence"] == one.coord["fence"] + 1


# -- replay, determinism, the wire ---------------------------------------------------------
def _log() -> list[bytes]:
    return [encode_entry(cs) for cs in (
        [acquire("a", T0), enqueue("t", T0, backoff_ms=0)],
        [ClaimTask("q", "w", 500, None, T0 + 1), fenced_put("m", FENCE_SPAN, T0 + 1)],
        [ExpireLeases(T0 + 2000)],
        [ClaimTask("q", "w2", 500, "k", T0 + 2001), acquire("b", T0 + 2001)],
    )]


def test_a_replay_decides_and_wakes_nothing_twice_and_replicas_agree(tmp_path: Path) -> None:
    first = Shard(tmp_path / "a")
    log = _log()
    results = [first.sm.apply(i, e).results for i, e in enumerate(log, start=1)]
    assert [r.outcome for r in results[3]] == [Outcome.CLAIMED, Outcome.ACQUIRED]
    woken = list(first.notices)
    assert woken == [(0, [("tasks", "q", "")]), (0, [("tasks", "q", ""), ("lock", "ns", "L")])]
    state = first.keys()
    first.sm.store.close()
    again = Shard(tmp_path / "a")
    assert all(again.sm.apply(i, e).replayed for i, e in enumerate(log, start=1))
    assert again.notices == [] and again.keys() == state
    other = Shard(tmp_path / "b")
    for i, e in enumerate(log, start=1):
        other.sm.apply(i, e)
    assert other.keys() == state and other.notices == woken


def test_coordination_commands_round_trip_and_a_bad_one_is_only_an_error(shard: Shard) -> None:
    commands: list[Command] = [
        acquire("a", T0, idem="k"), RenewLock("ns", "L", 7, 10, "k2", T0), ReleaseLock("ns", "L", 7, None, T0),
        enqueue("t", T0, priority=3, not_before_ms=T0 + 5), ClaimTask("q", "w", 100, None, T0),
        settle("t", 9, "fail", T0, result="e", retry=False, charge=False), ExpireLeases(T0, 10),
        fenced_put("m", 7, T0), Delete("ns", "m", now_ms=T0, if_fence=Fence("ns", "L", 7)),
    ]
    assert decode_entry(encode_entry(commands)) == commands
    plain = Put("ns", "m", MemoryFields(), now_ms=T0)
    assert "fence" not in plain.to_wire() and fingerprint(plain) != fingerprint(fenced_put("m", 7, T0))
    bad = [{**fenced_put("m", 7, T0).to_wire(), "fence": ["ns", "L", "seven"]},
           {**settle("t", 1, "complete", T0).to_wire(), "action": "explode"}, acquire("a", T0).to_wire()]
    results = shard.sm.apply(1, codec.encode_entry(bad)).results
    assert [r.outcome for r in results] == [Outcome.INVALID_OPERATION, Outcome.INVALID_OPERATION, Outcome.ACQUIRED]


@pytest.mark.parametrize("outcome", [Outcome.ACQUIRED, Outcome.FENCED, Outcome.SETTLED, Outcome.TASK_EXISTS])
def test_coordination_results_are_stored_with_their_names(outcome: Outcome) -> None:
    result = Result(outcome, "why" if not outcome.ok else "", coord={"fence": 5})
    assert Result.from_wire(result.to_wire()) == result



def test_an_enqueue_retried_through_a_node_with_another_config_replays(shard: Shard) -> None:
    """The enqueue's fingerprint covers only what its client chose: retention,
    queue bound and default retry policy come from the leader's config, which
    may differ on the node a retry goes through (review finding 7)."""
    first = shard.one(EnqueueTask("q", "t1", TaskSpec(payload=1, retain_ms=7 * DAY_MS), "K", T0))
    assert first.outcome == Outcome.ENQUEUED
    other_config = TaskSpec(payload=1, retain_ms=DAY_MS, open_max=10, max_attempts=5, backoff_ms=50)
    retry = shard.one(EnqueueTask("q", "t1", other_config, "K", T0 + 10))
    assert retry.outcome == Outcome.ENQUEUED and retry.replayed and retry.coord == first.coord
    # Control: what the client chose still tells two requests apart.
    for spec in (TaskSpec(payload=2), TaskSpec(payload=1, priority=3), TaskSpec(payload=1, delay_ms=5)):
        assert shard.one(EnqueueTask("q", "t1", spec, "K", T0 + 20)).outcome == Outcome.IDEMPOTENCY_KEY_REUSED
    assert shard.one(EnqueueTask("q", "t2", TaskSpec(payload=1), "K", T0 + 20)).outcome == \
        Outcome.IDEMPOTENCY_KEY_REUSED


def test_an_enqueue_key_stored_under_the_first_fingerprint_still_answers_its_retry(shard: Shard) -> None:
    """Keys stored by the version that fingerprinted the whole spec."""
    from raftmem.storage import Batch

    command = EnqueueTask("q", "t1", TaskSpec(payload=1), "K", T0)
    wire = {k: v for k, v in command.to_wire().items() if k not in ("now", "idem")}
    first_fp = hashlib.blake2b(codec.dumps(wire), digest_size=12).hexdigest()
    assert first_fp != fingerprint(command)
    stored = Result(Outcome.ENQUEUED, coord={"namespace": "q", "id": "t1", "state": "ready"})
    batch = Batch()
    batch.put(b"k\x00K", codec.dumps({"fp": first_fp, "result": stored.to_wire()}))
    shard.sm.store.commit(batch)
    again = shard.one(command)
    assert again.replayed and again.outcome == Outcome.ENQUEUED and again.coord == stored.coord

def test_settling_an_unknown_task_is_not_found(shard: Shard) -> None:
    assert shard.one(settle("nope", 1, "complete", T0)).outcome == Outcome.NOT_FOUND


def test_a_stale_fence_aborts_an_atomic_batch(shard: Shard) -> None:
    from raftmem.commands import Txn

    fence = shard.one(acquire("a", T0, ttl=60_000)).coord["fence"]
    aborted = shard.one(Txn((fenced_put("x", fence, T0 + 1), fenced_put("y", fence - 1, T0 + 1))))
    assert aborted.outcome == Outcome.ABORTED and [r.outcome for r in aborted.results] == [
        Outcome.ABORTED, Outcome.FENCED]
    assert shard.sm.get("ns", "x", T0 + 2) is None and shard.sm.get("ns", "y", T0 + 2) is None
    applied = shard.one(Txn((fenced_put("x", fence, T0 + 3), fenced_put("y", fence, T0 + 3))))
    assert applied.outcome == Outcome.APPLIED and shard.sm.get("ns", "y", T0 + 4) is not None


def test_a_refusal_never_tells_the_current_fence(shard: Shard) -> None:
    """Neither the message nor the HTTP error of a fenced write, renewal or
    settlement carries the fence that holds now (review finding 5): a refused
    writer must not adopt a fence it did not acquire."""
    from raftmem.service.outcomes import error_for

    a = shard.one(acquire("a", T0, ttl=100)).coord["fence"]
    b = shard.one(acquire("b", T0 + 200, ttl=60_000)).coord["fence"]
    shard.one(enqueue("t", T0, backoff_ms=0))
    stale = shard.one(ClaimTask("q", "w1", 100, None, T0 + 200)).coord["fence"]
    fresh = shard.one(ClaimTask("q", "w2", 60_000, None, T0 + 400)).coord["fence"]
    refusals = [shard.one(fenced_put("m", a, T0 + 300)), shard.one(RenewLock("ns", "L", a, 100, None, T0 + 300)),
                shard.one(settle("t", stale, "complete", T0 + 500))]
    for refused, current in zip(refusals, (b, b, fresh), strict=True):
        assert refused.outcome == Outcome.FENCED
        body = codec.dumps(error_for(refused).body()).decode()
        assert str(current) not in refused.message and str(current) not in body, body
    assert "newer" in refusals[0].message and '"holder":"b"' in codec.dumps(error_for(refusals[0]).body()).decode()
