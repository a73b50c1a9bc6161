"""Staleness checker for bounded reads."""

from __future__ import annotations

from jepsen_like.checker.history import HistoryBuilder
from jepsen_like.checker.stale import NS_PER_MS, check_stale

BOUND_MS = 100


def _write(h: HistoryBuilder, value: int, version: int, at_ms: int) -> None:
    h.invoke(9, "write", "k", value, time=(at_ms - 1) * NS_PER_MS)
    h.ok(9, version=version, time=at_ms * NS_PER_MS)


def _bounded_read(h: HistoryBuilder, value: int | None, version: int | None, at_ms: int) -> None:
    h.invoke(
        0, "read", "k", time=at_ms * NS_PER_MS, consistency="bounded", max_staleness_ms=BOUND_MS
    )
    h.ok(0, value, version=version, time=(at_ms + 1) * NS_PER_MS, node="n2")


def test_within_bound_is_valid() -> None:
    h = HistoryBuilder()
    _write(h, 1, 1, at_ms=10)
    _write(h, 2, 2, at_ms=1000)
    _bounded_read(h, 1, 1, at_ms=1050)  # overwritten 50 ms before: allowed
    result = check_stale(h.events)
    assert result["valid"] is True and result["reads_checked"] == 1


def test_beyond_bound_is_invalid() -> None:
    h = HistoryBuilder()
    _write(h, 1, 1, at_ms=10)
    _write(h, 2, 2, at_ms=1000)
    _write(h, 3, 3, at_ms=1200)
    _bounded_read(h, 1, 1, at_ms=1250)
    result = check_stale(h.events)
    assert result["valid"] is False and result["violation_count"] == 1
    violation = result["violations"][0]
    assert violation["overwritten_by"]["version"] == 2  # the first overwrite
    assert violation["staleness_ms_at_least"] == 250.0
    assert violation["node"] == "n2"


def test_absent_key_read_after_old_write_is_stale() -> None:
    h = HistoryBuilder()
    _write(h, 1, 1, at_ms=10)
    _bounded_read(h, None, None, at_ms=500)
    assert check_stale(h.events)["valid"] is False


def test_unknown_writes_and_other_reads_are_ignored() -> None:
    h = HistoryBuilder()
    _write(h, 1, 1, at_ms=10)
    h.invoke(9, "write", "k", 2, time=20 * NS_PER_MS)
    h.info(9, None, time=30 * NS_PER_MS)
    h.invoke(0, "read", "k", time=40 * NS_PER_MS)  # not bounded
    h.ok(0, None, version=0, time=41 * NS_PER_MS)
    _bounded_read(h, 1, 1, at_ms=900)
    assert check_stale(h.events)["valid"] is True


def test_unversioned_or_missing_reads_are_unknown() -> None:
    h = HistoryBuilder()
    _write(h, 1, 1, at_ms=10)
    assert check_stale(h.events)["valid"] == "unknown"
    _bounded_read(h, 1, None, at_ms=20)
    result = check_stale(h.events)
    assert result["valid"] == "unknown" and result["reads_unversioned"] == 1
