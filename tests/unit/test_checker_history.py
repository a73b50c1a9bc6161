"""The JSONL history format and pairing of invokes with completions."""

from __future__ import annotations

from pathlib import Path

import pytest

from jepsen_like.checker.history import (
    Event,
    HistoryBuilder,
    HistoryError,
    dump_jsonl,
    load_jsonl,
    pair_operations,
)


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    h = HistoryBuilder()
    h.nemesis("start", {"fault": "partition", "nodes": ["n1"]})
    h.invoke(0, "write", "k", [1, {"a": None}], node="n2")
    h.ok(0, version=3, node="n2")
    h.invoke(1, "read", "k", consistency="bounded", max_staleness_ms=50)
    h.info(1, None, error="timeout")
    events = [*h.events, Event.from_dict({**h.events[0].to_dict(), "index": 9, "custom": 1})]
    path = tmp_path / "history.jsonl"
    dump_jsonl(events, path)
    assert load_jsonl(path) == events
    assert load_jsonl(path)[-1].extra == {"custom": 1}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"index": 0, "time": 0, "type": "done", "process": 0, "f": "read"}', "type"),
        ('{"index": 0, "time": 0, "type": "ok", "f": "read"}', "lacks"),
        ('{"index": "0", "time": 0, "type": "ok", "process": 0, "f": "read"}', "index"),
        ('{"index": 0, "time": 0, "type": "ok", "process": "x", "f": "read"}', "process"),
        ("[1, 2]", "object"),
        ("{nope", "not JSON"),
    ],
)
def test_bad_lines_are_refused_with_their_line_number(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("\n" + line + "\n")
    with pytest.raises(HistoryError, match=message) as info:
        load_jsonl(path)
    assert ":2:" in str(info.value)


def test_pairing_statuses() -> None:
    h = HistoryBuilder()
    h.invoke(0, "write", "k", 1)
    h.invoke(1, "write", "k", 2)
    h.invoke(2, "write", "k", 3)
    h.nemesis("start", "kill n1")
    h.ok(0)
    h.fail(1)
    h.info(2, None)
    h.invoke(3, "read", "k")  # never completes
    ops = pair_operations(h.events)
    assert [(op.value, op.status) for op in ops] == [(1, "ok"), (3, "unknown"), (None, "unknown")]
    assert ops[0].ret is not None and ops[1].ret is None and ops[2].ret is None
    assert ops[1].complete is not None and ops[1].complete.type == "info"
    assert ops[2].complete is None
    with_failed = pair_operations(h.events, keep_failed=True)
    assert [op.status for op in with_failed] == ["ok", "fail", "unknown", "unknown"]


def test_pairing_is_per_process_and_by_index() -> None:
    h = HistoryBuilder()
    h.invoke(0, "read", "k")
    h.invoke(1, "read", "k")
    h.ok(1, 5)
    h.ok(0, 6)
    shuffled = list(reversed(h.events))  # order comes from index, not list position
    ops = pair_operations(shuffled)
    assert [(op.process, op.output) for op in ops] == [(0, 6), (1, 5)]
    assert ops[0].call < ops[1].call < ops[1].ret < ops[0].ret  # type: ignore[operator]


def test_process_reused_after_info_is_a_new_operation() -> None:
    h = HistoryBuilder()
    h.invoke(0, "write", "k", 1)
    h.info(0, None)
    h.invoke(0, "write", "k", 2)
    h.ok(0)
    assert [op.status for op in pair_operations(h.events)] == ["unknown", "ok"]


def test_malformed_pairings_are_refused() -> None:
    ok_alone = Event(index=0, time=0, type="ok", process=0, f="read")
    with pytest.raises(HistoryError, match="no invoke"):
        pair_operations([ok_alone])
    twice = [
        Event(index=0, time=0, type="invoke", process=0, f="read"),
        Event(index=1, time=1, type="invoke", process=0, f="read"),
    ]
    with pytest.raises(HistoryError, match="no completion"):
        pair_operations(twice)
    mismatch = [
        Event(index=0, time=0, type="invoke", process=0, f="read"),
        Event(index=1, time=1, type="ok", process=0, f="write"),
    ]
    with pytest.raises(HistoryError, match="'write'"):
        pair_operations(mismatch)
