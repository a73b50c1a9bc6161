"""The coordination checkers on hand-built histories: each accepts a correct
history and catches the failure it exists for (a holder writing after its
lock moved on, fences going back, a task completed twice, lost, or made up)."""

from __future__ import annotations

from typing import Any

from jepsen_like.checker import check_history
from jepsen_like.checker.coordination import check_fences, check_tasks
from jepsen_like.checker.history import HistoryBuilder

KEY = "jlock/l0"


def F(index: int, seq: int = 0) -> int:
    """The fence of an acquisition at Raft index `index` (position `seq` in its entry)."""
    return index << 16 | seq


def section(h: HistoryBuilder, process: int, fence: int, seen: Any, new: Any, index: int,
            write: str = "ok", released_at: int | None = None) -> None:
    """One critical section: acquire, read, fenced write (as a cas), release."""
    h.invoke(process, "acquire", KEY)
    h.ok(process, fence)
    h.invoke(process, "read", KEY, consistency="linearizable")
    h.ok(process, seen)
    h.invoke(process, "cas", KEY, [seen, new], fence=fence)
    getattr(h, write)(process, raft_index=index)
    h.invoke(process, "release", KEY, fence)
    h.ok(process, raft_index=released_at if released_at is not None else index + 1)


def test_sequential_critical_sections_are_valid() -> None:
    h = HistoryBuilder()
    section(h, 1, F(10), None, 1, 11)
    section(h, 2, F(20), 1, 2, 21)
    section(h, 1, F(30), 2, 3, 31)
    result = check_history(h.events, "lock")
    assert result["valid"] is True, result
    assert result["checkers"]["fences"]["reads_checked"] == 3


def _paused_holder(h: HistoryBuilder, accepted: bool) -> None:
    """Process 1 reads under fence 10, stalls past its lease; process 2 takes
    the lock (fence 20), reads and writes; then process 1 writes."""
    h.invoke(1, "acquire", KEY)
    h.ok(1, F(10))
    h.invoke(1, "read", KEY)
    h.ok(1, None)
    section(h, 2, F(20), None, 1, 21)
    h.invoke(1, "cas", KEY, [None, 2], fence=F(10))
    if accepted:
        h.ok(1, raft_index=25)  # an unfenced store accepts it
    else:
        h.fail(1, error="409 fenced")


def test_a_paused_holder_refused_by_its_fence_is_valid() -> None:
    h = HistoryBuilder()
    _paused_holder(h, accepted=False)
    assert check_history(h.events, "lock")["valid"] is True


def test_control_a_paused_holder_whose_write_is_accepted_is_caught_twice() -> None:
    h = HistoryBuilder()
    _paused_holder(h, accepted=True)
    result = check_history(h.events, "lock")
    assert result["valid"] is False
    assert result["checkers"]["linear-lock"]["valid"] is False
    fences = result["checkers"]["fences"]
    assert fences["valid"] is False and {v["kind"] for v in fences["violations"]} == {
        "fence went back in the log", "fence went back in real time", "write after a newer acquisition"}


def test_control_a_stale_write_that_lands_before_the_next_holder_reads_is_caught() -> None:
    """An unfenced store: A (fence at index 10) stalls past its lease, B
    acquires at index 20, A's write is accepted at index 21 while B holds the
    lock, and B then reads A's value and writes over it. The register is
    linearizable and the accepted fences grow, but the write at index 21
    carries a fence older than an acquisition at index 20 (review finding 6a)."""
    h = HistoryBuilder()
    h.invoke(1, "acquire", KEY)
    h.ok(1, F(10))
    h.invoke(1, "read", KEY)
    h.ok(1, None)
    h.invoke(2, "acquire", KEY)
    h.ok(2, F(20))  # A's lease ran out
    h.invoke(1, "cas", KEY, [None, 1], fence=F(10))
    h.ok(1, raft_index=21)  # accepted, unfenced
    h.invoke(2, "read", KEY)
    h.ok(2, 1)
    h.invoke(2, "cas", KEY, [1, 2], fence=F(20))
    h.ok(2, raft_index=23)
    h.invoke(2, "release", KEY, F(20))
    h.ok(2, raft_index=24)
    result = check_history(h.events, "lock")
    assert result["valid"] is False and result["checkers"]["linear-lock"]["valid"] is True
    violations = result["checkers"]["fences"]["violations"]
    assert [(v["kind"], v["write"]["raft_index"], v["acquired"]) for v in violations] == [
        ("write after a newer acquisition", 21, F(20))]


def test_a_write_in_the_entry_of_a_newer_acquisition_cannot_be_ordered_and_passes() -> None:
    h = HistoryBuilder()
    section(h, 1, F(10), None, 1, 20)  # its write shares index 20 with the next acquisition
    section(h, 2, F(20, 1), 1, 2, 21)
    assert check_history(h.events, "lock")["valid"] is True


def test_control_a_fenced_write_after_its_own_release_is_caught() -> None:
    """The holder writes with its fence after its own release returned ok; nobody
    else holds the lock, so neither the register nor the fence order sees it."""
    h = HistoryBuilder()
    section(h, 1, F(10), None, 1, 11, released_at=12)
    h.invoke(1, "cas", KEY, [1, 2], fence=F(10), after_release=True)
    h.ok(1, raft_index=13)  # accepted after the release
    result = check_history(h.events, "lock")
    assert result["valid"] is False and result["checkers"]["linear-lock"]["valid"] is True
    assert [v["kind"] for v in result["checkers"]["fences"]["violations"]] == ["write after its release"]
    # ...and refused, it is what a fenced store does: valid.
    h = HistoryBuilder()
    section(h, 1, F(10), None, 1, 11, released_at=12)
    h.invoke(1, "cas", KEY, [1, 2], fence=F(10), after_release=True)
    h.fail(1, error="409 fenced")
    assert check_history(h.events, "lock")["valid"] is True


def test_fences_with_nothing_written_are_unknown() -> None:
    h = HistoryBuilder()
    h.invoke(1, "acquire", KEY)
    h.fail(1)
    assert check_fences(h.events)["valid"] == "unknown"


# -- tasks -------------------------------------------------------------------------------
def enqueue(h: HistoryBuilder, tid: str, how: str = "ok") -> None:
    h.invoke(9, "enqueue", tid, tid)
    getattr(h, how)(9)


def complete(h: HistoryBuilder, process: int, tid: str, fence: int, how: str = "ok") -> dict[str, Any]:
    body = {"fence": fence, "result": {"by": f"p{process}", "fence": fence}}
    h.invoke(process, "complete", tid, body)
    getattr(h, how)(process)
    return body


def final(h: HistoryBuilder, tasks: dict[str, Any]) -> None:
    h.invoke(8, "read", None)
    h.ok(8, tasks)


def done(body: dict[str, Any]) -> dict[str, Any]:
    return {"state": "done", "attempts": 0, "result": body["result"]}


def test_every_task_done_once_or_dead_is_valid() -> None:
    h = HistoryBuilder()
    for tid in ("t1", "t2", "t3"):
        enqueue(h, tid)
    a = complete(h, 1, "t1", 5)
    complete(h, 2, "t1", 3, how="fail")  # a stale claim, refused
    b = complete(h, 2, "t2", 6, how="info")  # unknown outcome: it did land
    final(h, {"t1": done(a), "t2": done(b), "t3": {"state": "dead", "attempts": 3, "result": None}})
    result = check_tasks(h.events)
    assert result["valid"] is True and result["done"] == 2 and result["dead"] == 1


def test_control_each_task_failure_is_caught() -> None:
    h = HistoryBuilder()
    for tid in ("twice", "lost", "dropped", "made-up"):
        enqueue(h, tid)
    enqueue(h, "failed", how="fail")
    first = complete(h, 1, "twice", 5)
    complete(h, 2, "twice", 7)
    dropped = complete(h, 1, "dropped", 9)
    final(h, {"twice": done(first), "dropped": {"state": "ready", "attempts": 1, "result": None},
              "made-up": {"state": "done", "attempts": 0, "result": {"by": "nobody"}},
              "failed": {"state": "dead", "attempts": 3, "result": None}, "ghost": {"state": "dead", "attempts": 1,
                                                                                    "result": None}})
    kinds = {(v["kind"], v["task"]) for v in check_tasks(h.events)["violations"]}
    assert kinds == {("completed twice", "twice"), ("lost: enqueued, then missing", "lost"),
                     ("acknowledged completion lost", "dropped"), ("done by no completion", "made-up"),
                     ("phantom: enqueue failed", "failed"), ("phantom: never enqueued", "ghost")}
    assert dropped["fence"] == 9


def test_control_a_task_dead_before_its_attempts_ran_out_is_caught() -> None:
    """A queue that dead-letters everything at once (0 attempts, never failed
    with retry=false) must not pass (review finding 6c)."""
    h = HistoryBuilder()
    for tid in ("t1", "t2", "t3", "t4"):
        h.invoke(9, "enqueue", tid, tid, max_attempts=3)
        h.ok(9)
    h.invoke(1, "fail", "t3", {"fence": 5, "retry": False})
    h.ok(1)
    h.invoke(2, "fail", "t4", {"fence": 6, "retry": False})
    h.info(2)  # may have landed: not a violation
    final(h, {tid: {"state": "dead", "attempts": 0, "result": None} for tid in ("t1", "t2", "t3", "t4")}
          | {"t2": {"state": "dead", "attempts": 3, "result": None}})
    result = check_tasks(h.events)
    assert result["valid"] is False
    assert [(v["kind"], v["task"]) for v in result["violations"]] == [("dead before its attempts ran out", "t1")]


def test_tasks_left_unfinished_or_unread_are_unknown_not_a_pass() -> None:
    h = HistoryBuilder()
    enqueue(h, "t1")
    assert check_tasks(h.events)["valid"] == "unknown"  # no final read
    final(h, {"t1": {"state": "claimed", "attempts": 0, "result": None}})
    assert check_tasks(h.events)["valid"] == "unknown"
