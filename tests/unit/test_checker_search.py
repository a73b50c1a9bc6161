"""The search checker on small histories: what it must catch (a missed
acknowledged write, a deleted memory returned, a phantom) and what it must
let pass (writes and deletes concurrent with the search, incomplete pages)."""

from __future__ import annotations

from typing import Any

from jepsen_like.checker import check_history
from jepsen_like.checker.history import Event


class H:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, etype: str, process: int, f: str, key: str, value: Any, **extra: Any) -> None:
        i = len(self.events)
        self.events.append(Event(index=i, time=i * 1000, type=etype, process=process, f=f, key=key, value=value,
                                 node="n1", extra={"workload": "search", **extra}))


def history(*steps: tuple[Any, ...]) -> list[Event]:
    h = H()
    for step in steps:
        extra = step[5] if len(step) > 5 else {}
        h.add(*step[:5], **extra)
    return h.events


def verdict(events: list[Event]) -> dict[str, Any]:
    return check_history(events, "search")["checkers"]["search"]


def test_a_search_that_sees_every_acknowledged_write_is_valid() -> None:
    result = verdict(history(
        ("invoke", 1, "add", "b1", "e1"), ("ok", 1, "add", "b1", "e1"),
        ("invoke", 2, "search", "b1", None), ("ok", 2, "search", "b1", ["e1"]),
    ))
    assert result["valid"] is True and result["expectations"] == 1


def test_a_missed_acknowledged_write_is_caught() -> None:
    result = verdict(history(
        ("invoke", 1, "add", "b1", "e1"), ("ok", 1, "add", "b1", "e1"),
        ("invoke", 2, "search", "b1", None), ("ok", 2, "search", "b1", []),
    ))
    assert result["valid"] is False and result["missed_count"] == 1


def test_a_deleted_memory_returned_is_caught_and_a_phantom_too() -> None:
    result = verdict(history(
        ("invoke", 1, "add", "b1", "e1"), ("ok", 1, "add", "b1", "e1"),
        ("invoke", 1, "delete", "b1", "e1"), ("ok", 1, "delete", "b1", "e1"),
        ("invoke", 2, "search", "b1", None), ("ok", 2, "search", "b1", ["e1", "e9"]),
    ))
    assert result["deleted_returned_count"] == 1 and result["phantom_count"] == 1 and result["valid"] is False


def test_concurrent_writes_deletes_and_incomplete_pages_may_go_either_way() -> None:
    result = verdict(history(
        ("invoke", 1, "add", "b1", "e1"), ("ok", 1, "add", "b1", "e1"),
        ("invoke", 3, "add", "b1", "e2"),  # in flight during the search
        ("invoke", 1, "delete", "b1", "e1"),  # in flight during the search
        ("invoke", 2, "search", "b1", None), ("ok", 2, "search", "b1", ["e2"]),
        ("ok", 3, "add", "b1", "e2"), ("ok", 1, "delete", "b1", "e1"),
        ("invoke", 4, "add", "b2", "e3"), ("ok", 4, "add", "b2", "e3"),
        ("invoke", 2, "search", "b2", None), ("ok", 2, "search", "b2", [], {"complete": False}),
    ))
    assert result["valid"] is not False and result["violation_count"] == 0
