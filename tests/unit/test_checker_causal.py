"""Causal checker: a read made with a context covers what the context covers."""

from __future__ import annotations

from jepsen_like.checker.causal import check_causal
from jepsen_like.checker.history import HistoryBuilder


def _chain(read_version: int | None, floor: int = 3) -> HistoryBuilder:
    """Agent 1 writes k (version `floor`); agent 2 reads it with the context."""
    h = HistoryBuilder()
    h.invoke(1, "write", "k", "v", node="n1")
    h.ok(1, "v", version=floor, node="n1")
    h.invoke(2, "read", "k", node="n2", consistency="causal", floor=floor)
    h.ok(2, "v" if read_version else None, version=read_version, node="n2")
    return h


def test_a_read_that_sees_the_covered_version_or_later_is_valid() -> None:
    assert check_causal(_chain(3).events)["valid"] is True
    assert check_causal(_chain(5).events)["valid"] is True


def test_a_read_older_than_the_context_is_a_violation() -> None:
    result = check_causal(_chain(2).events)
    assert result["valid"] is False and result["violation_count"] == 1
    assert result["violations"][0]["floor"] == 3 and result["violations"][0]["version"] == 2


def test_a_missing_key_under_a_context_that_covers_it_is_a_violation() -> None:
    assert check_causal(_chain(None).events)["valid"] is False


def test_failed_and_unknown_reads_say_nothing_and_nothing_checked_is_unknown() -> None:
    h = HistoryBuilder()
    h.invoke(2, "read", "k", node="n2", consistency="causal", floor=3)
    h.info(2, None)
    h.invoke(3, "read", "k", node="n2", consistency="causal", floor=3)
    h.fail(3, None)
    assert check_causal(h.events)["valid"] == "unknown"
