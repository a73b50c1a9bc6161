"""Set checker: lost, phantom and failed-but-present elements."""

from __future__ import annotations

from jepsen_like.checker.history import HistoryBuilder
from jepsen_like.checker.setcheck import SAMPLES_MAX, check_set


def _adds(h: HistoryBuilder, outcomes: dict[int, str]) -> None:
    for value, outcome in outcomes.items():
        h.invoke(0, "add", None, value)
        getattr(h, outcome)(0)


def _read(h: HistoryBuilder, seen: list[int], process: int = 1) -> None:
    h.invoke(process, "read")
    h.ok(process, seen)


def test_all_present_is_valid() -> None:
    h = HistoryBuilder()
    _adds(h, {1: "ok", 2: "ok", 3: "info", 4: "fail"})
    _read(h, [1, 2, 3])
    result = check_set(h.events)
    assert result["valid"] is True
    assert result["unknown_present_count"] == 1 and result["unknown_absent_count"] == 0
    assert (result["adds_ok"], result["adds_failed"], result["adds_unknown"]) == (2, 1, 1)


def test_lost_and_phantom() -> None:
    h = HistoryBuilder()
    _adds(h, {1: "ok", 2: "ok", 3: "info"})
    _read(h, [1, 99])
    result = check_set(h.events)
    assert result["valid"] is False
    assert (result["lost_count"], result["lost"]) == (1, [2])
    assert (result["phantom_count"], result["phantom"]) == (1, [99])
    assert result["unknown_absent_count"] == 1


def test_failed_add_that_appears_is_invalid() -> None:
    h = HistoryBuilder()
    _adds(h, {1: "fail"})
    _read(h, [1])
    result = check_set(h.events)
    assert result["valid"] is False and result["failed_present"] == [1]


def test_add_concurrent_with_read_may_be_missing() -> None:
    h = HistoryBuilder()
    h.invoke(1, "read")
    h.invoke(0, "add", None, 1)
    h.ok(0)
    h.ok(1, [])
    assert check_set(h.events)["valid"] is True


def test_element_dropped_between_reads_is_lost() -> None:
    h = HistoryBuilder()
    _adds(h, {1: "ok"})
    _read(h, [1])
    _read(h, [])
    assert check_set(h.events)["lost_count"] == 1


def test_samples_are_bounded_and_no_read_is_unknown() -> None:
    h = HistoryBuilder()
    _adds(h, {v: "ok" for v in range(SAMPLES_MAX * 3)})
    assert check_set(h.events)["valid"] == "unknown"
    _read(h, [])
    result = check_set(h.events)
    assert result["lost_count"] == SAMPLES_MAX * 3 and len(result["lost"]) == SAMPLES_MAX
