"""Set checker: lost and phantom elements.

Event shape: ``add`` operations whose invoke ``value`` is the element (each value
added at most once; JSON values, compared by value), and ``read`` operations whose
``ok`` value is the whole set as a JSON list. ``key`` is ignored: the workload is
one set (use one history per set).

Every ``ok`` read R is checked, not only the last one:

- **lost**: an add acknowledged (``ok``) before R was invoked, missing from R.
  A linearizable set cannot lose an acknowledged element; this is the bug the
  workload hunts (acknowledging before commit, losing unsynced writes).
- **phantom**: an element of R that no add ever attempted.
- **failed-but-present**: an element of R whose add reported ``fail`` (a ``fail``
  promises the add did not happen).
- Adds with an unknown outcome (``info`` or no completion) may or may not be
  present; they are counted as ``unknown_present``/``unknown_absent`` against the
  final read, never as errors. Adds still in flight when R was invoked may also be
  present or not.

Deletes are not part of this workload; an element seen by one read and missing
from a later one is lost if its add was acknowledged before the later read began.

Verdict: False if any anomaly; "unknown" if there is no ``ok`` read (nothing can
be proved); True otherwise.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from jepsen_like.checker.history import Event, HistoryError, freeze, pair_operations, thaw

# Anomalies listed per kind in the report; the counts are always complete.
SAMPLES_MAX = 10

ADD_F = "add"
READ_F = "read"


def _samples(values: Sequence[Hashable] | set[Hashable]) -> list[Any]:
    return [thaw(v) for v in sorted(values, key=repr)[:SAMPLES_MAX]]


def check_set(events: Sequence[Event]) -> dict[str, Any]:
    """Check a set workload history; see the module docstring."""
    ops = pair_operations(events, keep_failed=True)
    adds = [op for op in ops if op.f == ADD_F]
    reads = [op for op in ops if op.f == READ_F and op.status == "ok"]

    attempted: dict[Hashable, str] = {}  # element -> status of its add
    duplicates: set[Hashable] = set()
    for op in adds:
        element = freeze(op.value)
        if element in attempted:
            duplicates.add(element)
            # A retried add: the strongest outcome decides what must be present.
            if op.status == "ok" or attempted[element] == "fail":
                attempted[element] = op.status
        else:
            attempted[element] = op.status

    lost: set[Hashable] = set()
    phantom: set[Hashable] = set()
    failed_present: set[Hashable] = set()
    for read in reads:
        if not isinstance(read.output, list):
            raise HistoryError(
                f"read completed at index {read.complete.index if read.complete else '?'} "
                f"must return a list, got {type(read.output).__name__}"
            )
        seen = {freeze(v) for v in read.output}
        for element in seen:
            status = attempted.get(element)
            if status is None:
                phantom.add(element)
            elif status == "fail":
                failed_present.add(element)
        for op in adds:
            if op.status == "ok" and op.ret is not None and op.ret < read.call:
                element = freeze(op.value)
                if element not in seen:
                    lost.add(element)

    result: dict[str, Any] = {
        "valid": True,
        "adds_attempted": len(adds),
        "adds_ok": sum(1 for op in adds if op.status == "ok"),
        "adds_failed": sum(1 for op in adds if op.status == "fail"),
        "adds_unknown": sum(1 for op in adds if op.status == "unknown"),
        "reads": len(reads),
        "lost_count": len(lost),
        "lost": _samples(lost),
        "phantom_count": len(phantom),
        "phantom": _samples(phantom),
        "failed_present_count": len(failed_present),
        "failed_present": _samples(failed_present),
        "duplicate_adds_count": len(duplicates),
        "unknown_present_count": 0,
        "unknown_absent_count": 0,
        "reason": None,
    }
    if reads:
        # The read that completed last sees the most; in-flight adds aside.
        last_read = max(reads, key=lambda op: op.ret if op.ret is not None else -1)
        final = {freeze(v) for v in last_read.output}
        unknown = {e for e, status in attempted.items() if status == "unknown"}
        result["unknown_present_count"] = len(unknown & final)
        result["unknown_absent_count"] = len(unknown - final)
    if lost or phantom or failed_present:
        result["valid"] = False
    elif not reads:
        result["valid"] = "unknown"
        result["reason"] = "no ok read: nothing to check the adds against"
    return result
