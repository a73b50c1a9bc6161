"""Session checker: read-your-writes, monotonic reads, write order."""

from __future__ import annotations

import pytest

from jepsen_like.checker.history import HistoryBuilder, HistoryError
from jepsen_like.checker.session import check_session


def _write(h: HistoryBuilder, p: int, value: int, version: int, key: str = "k") -> None:
    h.invoke(p, "write", key, value)
    h.ok(p, version=version)


def _read(h: HistoryBuilder, p: int, value: int | None, version: int | None) -> None:
    h.invoke(p, "read", "k")
    h.ok(p, value, version=version)


def test_valid_sessions() -> None:
    h = HistoryBuilder()
    _read(h, 0, None, None)  # absent key: version 0
    _write(h, 0, 10, 1)
    _read(h, 0, 10, 1)
    _write(h, 1, 20, 2)
    _read(h, 0, 20, 2)
    _read(h, 1, 20, 2)
    result = check_session(h.events)
    assert result["valid"] is True
    assert result["reads_checked"] == 4 and result["sessions"] == 2


def test_read_your_writes_violation() -> None:
    h = HistoryBuilder()
    _write(h, 0, 10, 1)
    _write(h, 0, 11, 2)
    _read(h, 0, 10, 1)
    result = check_session(h.events)
    assert result["valid"] is False
    assert result["anomaly_counts"]["read_your_writes"] == 1
    sample = result["anomalies"][0]
    assert sample["prior"]["version"] == 2 and sample["op"]["version"] == 1


def test_same_version_other_value_is_a_violation() -> None:
    h = HistoryBuilder()
    _write(h, 0, 10, 1)
    _read(h, 0, 99, 1)
    assert check_session(h.events)["anomaly_counts"]["read_your_writes"] == 1


def test_other_sessions_writes_need_not_be_seen() -> None:
    h = HistoryBuilder()
    _write(h, 1, 10, 1)
    _read(h, 0, None, 0)
    assert check_session(h.events)["valid"] is True


def test_monotonic_reads_violation() -> None:
    h = HistoryBuilder()
    _write(h, 1, 10, 1)
    _write(h, 1, 11, 2)
    _read(h, 0, 11, 2)
    _read(h, 0, 10, 1)
    result = check_session(h.events)
    assert result["anomaly_counts"] == {
        "read_your_writes": 0,
        "monotonic_reads": 1,
        "write_order": 0,
    }


def test_write_order_violation() -> None:
    h = HistoryBuilder()
    _write(h, 1, 10, 5)
    _read(h, 0, 10, 5)
    _write(h, 0, 11, 4)  # a write after seeing version 5 cannot create version 4
    assert check_session(h.events)["anomaly_counts"]["write_order"] == 1


def test_unknown_and_failed_writes_raise_no_floor() -> None:
    h = HistoryBuilder()
    _write(h, 0, 10, 1)
    h.invoke(0, "write", "k", 11)
    h.info(0, None)
    h.invoke(0, "write", "k", 12)
    h.fail(0)
    _read(h, 0, 10, 1)
    assert check_session(h.events)["valid"] is True


def test_missing_version_is_refused_and_no_read_is_unknown() -> None:
    h = HistoryBuilder()
    _write(h, 0, 10, 1)
    assert check_session(h.events)["valid"] == "unknown"
    h.invoke(0, "read", "k")
    h.ok(0, 10)
    with pytest.raises(HistoryError, match="version"):
        check_session(h.events)
