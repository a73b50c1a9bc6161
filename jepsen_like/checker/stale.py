"""Staleness checker for ``bounded`` reads.

Rule: a bounded read invoked at time ``t`` with bound ``max_staleness_ms`` must not
return a version of its key that had already been overwritten by a write
acknowledged (``ok``) before ``t - max_staleness_ms``.

Event shape (fields described in ``history.py``):

- **bounded read**: ``f`` is ``read`` or ``get``; the invoke event carries
  ``consistency: "bounded"`` and ``max_staleness_ms`` (int, ms; if only the
  completion carries them, they are taken from there). Its ``ok`` event carries
  ``value`` and ``version`` (0 or null for an absent key). Other reads are ignored.
- **write**: ``f`` is ``write``, ``put``, ``cas``, ``append`` or ``delete``; its
  ``ok`` event carries ``version``, the per-key version it created.
- ``time`` is the harness's monotonic clock in ns, one clock for the history.

Method: for each key, the earliest acknowledgement time of any write with a version
above ``v`` is precomputed for every ``v`` (a suffix minimum over versions). A read
returning version ``v`` at invocation time ``t`` is stale beyond its bound iff that
time is before ``t - bound``. The report gives the violation's staleness lower bound,
``t - ack time of the first overwrite``, in ms.

What a violation proves: the overwriting write was committed before its
acknowledgement, which came before ``t - bound``; the server received the read
after ``t``. So the replica served a value older than the bound allows, whatever the
network delays were, provided (a) the store's versions of a key increase with each
committed write (its contract) and (b) the history's timestamps come from one
monotonic clock (the harness's). Neither node clocks nor clock faults on nodes
affect the verdict: only the harness's clock is used.

What it cannot prove:

- That the store honours the bound. It finds violations only; passing means none
  was observed in this history.
- Staleness hidden by latency: the read is timed at its invocation and the write at
  its acknowledgement, both conservative. A read served ``d`` ms after it was sent
  can be stale by up to ``bound + d`` + the write's ack latency undetected.
- Writes with an unknown outcome (``info``) or acknowledged without a ``version``
  are not known to have overwritten anything; they are ignored (reported in
  ``writes_unversioned``), which can hide violations but never creates one.
- That the value returned belongs to the version returned, or anything about
  ordering across reads: the session and linearizability checkers do that.

Verdict: False on any violation; "unknown" if some bounded read carried no
``version`` (it cannot be checked) or there was no bounded read at all; True
otherwise.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from jepsen_like.checker.history import Event, HistoryError, Operation, pair_operations

# Violations listed in the report; the count is always complete.
SAMPLES_MAX = 10
NS_PER_MS = 1_000_000

WRITE_FS: frozenset[str] = frozenset({"write", "put", "cas", "append", "delete"})
READ_FS: frozenset[str] = frozenset({"read", "get"})
BOUNDED = "bounded"


def _int_field(value: Any, name: str, index: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise HistoryError(f"{name!r} at index {index} must be a non-negative int: {value!r}")
    return value


def _bounded_read(op: Operation) -> int | None:
    """The read's bound in ns, or None if it is not a bounded read."""
    complete = op.complete
    consistency = op.invoke.consistency or (complete.consistency if complete else None)
    if consistency != BOUNDED:
        return None
    bound = op.invoke.max_staleness_ms
    if bound is None and complete is not None:
        bound = complete.max_staleness_ms
    if bound is None:
        raise HistoryError(f"bounded read at index {op.invoke.index} has no max_staleness_ms")
    return _int_field(bound, "max_staleness_ms", op.invoke.index) * NS_PER_MS


class _KeyWrites:
    """Acknowledged writes of one key: for a version v, when was v first overwritten?"""

    def __init__(self, acked: list[tuple[int, int, Operation]]) -> None:
        acked.sort(key=lambda item: item[0])
        self.versions = [version for version, _, _ in acked]
        # suffix[i]: (earliest ack time, op) among writes i.. (versions >= versions[i]).
        self.suffix: list[tuple[int, Operation]] = []
        best: tuple[int, Operation] | None = None
        for _, ack_time, op in reversed(acked):
            if best is None or ack_time < best[0]:
                best = (ack_time, op)
            self.suffix.append(best)
        self.suffix.reverse()

    def first_overwrite(self, version: int) -> tuple[int, Operation] | None:
        """The earliest-acknowledged write with a version above ``version``."""
        i = bisect.bisect_right(self.versions, version)
        return self.suffix[i] if i < len(self.suffix) else None


def check_stale(events: Sequence[Event]) -> dict[str, Any]:
    """Check bounded reads; see the module docstring."""
    ops = [op for op in pair_operations(events) if op.status == "ok"]
    acked: dict[str | None, list[tuple[int, int, Operation]]] = {}
    unversioned_writes = 0
    for op in ops:
        if op.f not in WRITE_FS:
            continue
        assert op.complete is not None
        if op.complete.version is None:
            unversioned_writes += 1
            continue
        version = _int_field(op.complete.version, "version", op.complete.index)
        acked.setdefault(op.key, []).append((version, op.complete.time, op))
    writes = {key: _KeyWrites(items) for key, items in acked.items()}

    checked = 0
    unversioned_reads = 0
    violations: list[dict[str, Any]] = []
    violation_count = 0
    worst_ms = 0.0
    for op in ops:
        if op.f not in READ_FS:
            continue
        bound_ns = _bounded_read(op)
        if bound_ns is None:
            continue
        complete = op.complete
        assert complete is not None
        if complete.version is None and complete.value is not None:
            unversioned_reads += 1
            continue
        # No version and no value: an absent key, overwritten by every acked write.
        raw_version = 0 if complete.version is None else complete.version
        version = _int_field(raw_version, "version", complete.index)
        checked += 1
        key_writes = writes.get(op.key)
        overwrite = key_writes.first_overwrite(version) if key_writes else None
        if overwrite is None:
            continue
        ack_time, writer = overwrite
        if ack_time < op.invoke.time - bound_ns:
            violation_count += 1
            staleness_ms = (op.invoke.time - ack_time) / NS_PER_MS
            worst_ms = max(worst_ms, staleness_ms)
            if len(violations) < SAMPLES_MAX:
                assert writer.complete is not None
                violations.append(
                    {
                        "key": op.key,
                        "process": op.process,
                        "read_invoke_index": op.invoke.index,
                        "read_version": version,
                        "read_value": op.output,
                        "node": complete.node,
                        "max_staleness_ms": bound_ns // NS_PER_MS,
                        "staleness_ms_at_least": round(staleness_ms, 3),
                        "overwritten_by": {
                            "version": writer.complete.version,
                            "value": writer.value,
                            "complete_index": writer.complete.index,
                        },
                    }
                )

    valid: bool | str = violation_count == 0
    reason = None
    if valid and unversioned_reads:
        valid, reason = "unknown", f"{unversioned_reads} bounded read(s) carried no version"
    elif valid and checked == 0:
        valid, reason = "unknown", "no ok bounded read to check"
    return {
        "valid": valid,
        "reads_checked": checked,
        "reads_unversioned": unversioned_reads,
        "writes_unversioned": unversioned_writes,
        "violation_count": violation_count,
        "worst_staleness_ms_at_least": round(worst_ms, 3),
        "violations": violations,
        "reason": reason,
    }
