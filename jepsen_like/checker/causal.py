"""Causal checker: a read made with a causal context sees every write that
context covers.

The causal workload passes a message along a chain of processes on different
nodes (agent A hands its context to agent B, B to C). A message carries the
context (``X-Raftmem-Context``) and the dependencies it covers: each key the
senders wrote or read, with the version they wrote or saw. The receiver reads
those keys with ``consistency=causal`` and the context; the invoke event of each
such read carries ``floor``: the version the context covers for its key.

Event shape: a read's invoke has ``f`` ``read`` and ``floor`` (int); its ``ok``
carries ``version`` (0 or null when the key was absent). Writes are recorded
too (``f`` ``write``, ``version`` on the ok), but only reads with a floor are
judged here; the linearizability checker judges the rest.

Verdict: False when any ``ok`` read with a floor returned an older version
(a causal violation: B did not see what A wrote, or what A saw); "unknown"
when no ``ok`` read had a floor above 0 (nothing was exercised); True
otherwise. ``fail`` and ``info`` reads say nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jepsen_like.checker.history import Event, pair_operations

SAMPLES_MAX = 10


def check_causal(events: Sequence[Event]) -> dict[str, Any]:
    violations: list[dict[str, Any]] = []
    checked = 0
    for op in pair_operations([e for e in events if e.process != "nemesis"]):
        invoke = op.invoke
        floor = invoke.extra.get("floor")
        if invoke.f != "read" or not isinstance(floor, int) or op.status != "ok" or op.complete is None:
            continue
        if floor <= 0:
            continue
        checked += 1
        seen = op.complete.version or 0
        if seen < floor:
            violations.append({
                "key": invoke.key, "process": invoke.process, "node": op.complete.node,
                "floor": floor, "version": seen, "index": invoke.index,
                "explanation": f"read version {seen} of {invoke.key} with a context covering version {floor}",
            })
    valid: bool | str = False if violations else (True if checked else "unknown")
    return {
        "valid": valid,
        "reads_checked": checked,
        "violation_count": len(violations),
        "violations": violations[:SAMPLES_MAX],
    }
