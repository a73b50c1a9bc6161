"""The watch checker on histories written by hand: a valid one passes, and each
broken guarantee (a lost event, a duplicate across a resume, order, a split
entry, a progress token followed by an older event or going back, two
watchers disagreeing, a failed write seen, a filter not kept, a 410 within
retention) is named."""

from __future__ import annotations

from typing import Any

import pytest

from jepsen_like.checker import check_history
from jepsen_like.checker.watch import check_watch
from jepsen_like.recorder import Recorder


class H:
    """A history under construction."""

    def __init__(self) -> None:
        self.r = Recorder(None)

    def write(self, f: str, key: str, value: Any, token: str | None, version: int | None, status: str = "ok") -> None:
        p = self.r.new_process()
        inv = self.r.invoke(p, f, f"jwatch/{key}", value, "n1", workload="watch")
        extra = {"version": version, "token": token} if status == "ok" else {}
        self.r.complete(inv, status, value, None if status == "ok" else "503", **extra)

    def session(self, watcher: str, after: dict[int, int], items: list[Any], flt: dict[str, str] | None = None,
                status: str = "ok", error: str | None = None) -> None:
        p = self.r.new_process()
        inv = self.r.invoke(p, "watch", None, {"after": after, "filter": flt or {}}, "n2", workload="watch",
                            watcher=watcher)
        self.r.complete(inv, status, items if status == "ok" else None, error, watcher=watcher)

    def check(self) -> dict[str, Any]:
        return check_watch(self.r.events)


def e(token: str, key: str, version: int, value: Any, seq: int = 0, last: bool = True, kind: str = "put") -> list[Any]:
    shard, index = (int(x) for x in token.split(":"))
    return ["e", shard, index, seq, kind, key, version, value if kind == "put" else None, last]


def p(**tokens: int) -> list[Any]:
    return ["p", {int(k[1:]): v for k, v in tokens.items()}]


def base() -> H:
    h = H()
    h.write("put", "a", 1, "0:5", 1)
    h.write("put", "b", 2, "1:3", 1)
    h.write("put", "a", 3, "0:6", 2)
    h.write("delete", "b", None, "1:4", 1)
    return h


def test_a_watcher_resumed_across_sessions_that_saw_everything_passes() -> None:
    h = base()
    h.session("w0", {0: 0, 1: 0}, [p(s0=0, s1=0), e("0:5", "a", 1, 1), e("1:3", "b", 1, 2), p(s0=5, s1=3)])
    h.session("w0", {0: 5, 1: 3}, [e("0:6", "a", 2, 3), e("1:4", "b", 1, None, kind="delete"), p(s0=9, s1=9)])
    h.session("even", {0: 0, 1: 0}, [e("1:3", "b", 1, 2), p(s0=9, s1=9)], flt={"tag": "even"})
    result = h.check()
    assert result["valid"] is True, result
    assert result["writes_checked"] == 4 + 1 and result["sessions"] == 3  # the even watcher: one put


def test_the_harness_entry_point_judges_the_watch_workload() -> None:
    h = base()
    h.session("w0", {0: 0, 1: 0}, [e("0:5", "a", 1, 1), p(s0=5, s1=0)])
    assert check_history(h.r.events, "watch")["valid"] is True


@pytest.mark.parametrize(("items", "kind"), [
    ([e("0:6", "a", 2, 3), p(s0=9, s1=9)], "lost"),  # 0:5 covered by the progress, never seen
    ([e("0:5", "a", 1, 1), e("0:5", "a", 1, 1), p(s0=9, s1=0)], "unordered"),
    ([e("0:6", "a", 2, 3), e("0:5", "a", 1, 1), p(s0=9, s1=0)], "unordered"),
    ([e("0:5", "a", 1, 1), p(s0=6, s1=0), e("0:6", "a", 2, 3)], "before-resume-or-progress"),
    ([p(s0=6, s1=0), p(s0=4, s1=0)], "progress-backwards"),
    ([e("0:5", "a", 1, 1, last=True), e("0:5", "x", 1, 7, seq=1)], "atomic"),
    ([e("0:5", "a", 1, 99), p(s0=5, s1=0)], "wrong-value"),
])
def test_each_broken_guarantee_is_named(items: list[Any], kind: str) -> None:
    h = base()
    h.session("w0", {0: 0, 1: 0}, items)
    result = h.check()
    assert result["valid"] is False and kind in result["violations_by_kind"], result


def test_a_resumed_session_that_repeats_an_event_before_its_token() -> None:
    h = base()
    h.session("w0", {0: 0, 1: 0}, [e("0:5", "a", 1, 1), p(s0=5, s1=3)])
    h.session("w0", {0: 5, 1: 3}, [e("0:5", "a", 1, 1), e("0:6", "a", 2, 3), p(s0=9, s1=9)])
    assert "before-resume-or-progress" in h.check()["violations_by_kind"]


def test_watchers_that_disagree_on_an_entry() -> None:
    h = base()
    h.session("w0", {0: 0, 1: 0}, [e("0:5", "a", 1, 1), p(s0=5, s1=0)])
    h.session("w1", {0: 0, 1: 0}, [e("0:5", "a", 1, 11), p(s0=5, s1=0)])
    assert "disagreement" in h.check()["violations_by_kind"]


def test_a_write_that_failed_must_not_appear_and_a_filter_must_hold() -> None:
    h = base()
    h.write("put", "c", 42, None, None, status="fail")
    h.session("even", {0: 0, 1: 0}, [e("0:5", "a", 1, 1), e("0:7", "c", 1, 42), p(s0=9, s1=9)],
              flt={"tag": "even"})
    kinds = h.check()["violations_by_kind"]
    assert "failed-write-seen" in kinds and "filter" in kinds


def test_a_410_within_retention_is_a_violation_and_nothing_covered_is_unknown() -> None:
    h = base()
    h.session("w0", {0: 3, 1: 0}, [], status="fail", error="410 compacted")
    assert "compacted" in h.check()["violations_by_kind"]
    h = base()
    h.session("w0", {0: 0, 1: 0}, [p(s0=0, s1=0)])
    assert h.check()["valid"] == "unknown"
