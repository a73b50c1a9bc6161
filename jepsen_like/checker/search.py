"""Search checker: a ``fresh`` search sees every write acknowledged before it
was sent, and never a memory deleted before it was sent.

Event shape (the ``search`` workload): ``add`` operations (invoke ``value``:
the memory's id, ``key``: its bucket; ids are unique and never re-added),
``delete`` operations (``value``: the id, ``key``: its bucket) and ``search``
operations (``key``: a bucket, the ``ok`` value the ids found, ``complete``
false when the answer said there were more than it returned).

For every ``ok`` search S of bucket B (positions: ``call``/``ret``):

- **missed**: an add to B acknowledged before S was invoked, of a memory no
  delete was invoked for before S completed, absent from S (a complete S only).
- **deleted returned**: a memory whose delete was acknowledged before S was
  invoked, present in S.
- **phantom**: a memory in S that no add ever attempted, or whose add failed.

Adds and deletes with an unknown outcome, or concurrent with S, may go either
way. Verdict: False on any anomaly; "unknown" without an ``ok`` search that had
an acknowledged add to look for; True otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from jepsen_like.checker.history import Event, pair_operations

SAMPLES_MAX = 10


def check_search(events: Sequence[Event]) -> dict[str, Any]:
    ops = pair_operations([e for e in events if not e.is_nemesis], keep_failed=True)
    adds = {op.value: op for op in ops if op.f == "add"}
    by_bucket: dict[Any, list[Any]] = {}
    for element, add in adds.items():
        by_bucket.setdefault(add.key, []).append((element, add))
    deletes: dict[Any, list[Any]] = {}
    for op in ops:
        if op.f == "delete" and op.status != "fail":
            deletes.setdefault(op.value, []).append(op)
    searches = [op for op in ops if op.f == "search" and op.status == "ok"]
    missed: list[dict[str, Any]] = []
    returned_deleted: list[dict[str, Any]] = []
    phantoms: list[dict[str, Any]] = []
    exercised = 0
    for s in searches:
        assert s.ret is not None
        found = set(s.output or ())
        complete = s.complete is not None and s.complete.extra.get("complete", True)
        for element, add in by_bucket.get(s.key, ()):
            if add.status != "ok" or add.ret is None or add.ret >= s.call:
                continue
            dels = deletes.get(element, [])
            if any(d.status == "ok" and d.ret is not None and d.ret < s.call for d in dels):
                if element in found:
                    returned_deleted.append(_sample(s, element, "deleted before the search, returned"))
                continue
            if any(d.call < s.ret for d in dels):
                continue  # a delete in flight: either answer is right
            exercised += 1
            if complete and element not in found:
                missed.append(_sample(s, element, "acknowledged before the search, missing"))
        for element in found:
            add = adds.get(element)
            if add is None or add.status == "fail":
                phantoms.append(_sample(s, element, "never (successfully) added"))
    anomalies = len(missed) + len(returned_deleted) + len(phantoms)
    valid: bool | str = False if anomalies else (True if exercised else "unknown")
    return {
        "valid": valid,
        "reads_checked": len(searches),
        "expectations": exercised,
        "violation_count": anomalies,
        "missed_count": len(missed),
        "deleted_returned_count": len(returned_deleted),
        "phantom_count": len(phantoms),
        "violations": (missed + returned_deleted + phantoms)[:SAMPLES_MAX],
    }


def _sample(search: Any, element: Any, why: str) -> dict[str, Any]:
    return {"search": search.invoke.index, "key": search.key, "node": search.complete.node if search.complete else None,
            "element": element, "explanation": why}
