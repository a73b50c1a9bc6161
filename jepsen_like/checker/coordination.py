"""Checkers of the coordination workloads (``jepsen_like.coordworkloads``).

``check_lock_register``: the registers the locks guard, as registers. A
holder's write is recorded as ``cas [value it read under the lock, new]``:
if the lock excluded everyone else from the read to the write, that is what
it did, so a second holder writing in between (a paused holder whose lease
ran out, unfenced) makes the register's history non-linearizable. The
acquisitions and releases are left out (they are not register operations).

``check_fences``: accepted fenced writes never go back. Per register, the
writes the store accepted, in the order of their Raft indexes, carry fences
that never decrease; and a write that completed before another began does not
carry a larger fence than it. And the fence rule itself, from the log
positions the history holds (a fence is ``raft index << 16 | position``, and
a lock and the register it guards share a shard, so their indexes compare):
no write accepted with fence F at index W after an acquisition of the lock
with a larger fence at an index below W (a stale write that landed before the
next holder read, which the register check cannot see), and none after F's
own release (``raft_index`` of the release's answer). A write in the same
entry as the acquisition or release cannot be ordered against it and is not
judged. Nothing checked is ``unknown``, not a pass.

``check_tasks``: every task whose enqueue was acknowledged is, in the final
read after the queue was drained, ``done`` or ``dead``; none was completed
(acknowledged) twice; a ``done`` task's result is that of an acknowledged
completion (or of one whose outcome was unknown), and an acknowledged
completion's task is ``done`` with its result; a ``dead`` task used up its
attempts (``attempts >= max_attempts``, as enqueued) or was failed with
``retry: false`` (acknowledged, or with an unknown outcome); no task appears
that was never enqueued (or whose enqueue certainly failed). A task still
``ready`` or ``claimed`` at the end could not be checked: ``unknown`` unless
something else is wrong.
"""

from __future__ import annotations

import bisect
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

from jepsen_like.checker.history import Event, Operation, pair_operations
from jepsen_like.checker.linear import check_linearizable

REGISTER_FS = frozenset({"read", "write", "cas"})
VIOLATIONS_SHOWN_MAX = 20


def register_events(events: Sequence[Event]) -> list[Event]:
    return [e for e in events if e.is_nemesis or e.f in REGISTER_FS]


def check_lock_register(events: Sequence[Event], deadline_s: float | None) -> dict[str, Any]:
    return check_linearizable(register_events(events), "register", deadline_s)


FENCE_INDEX_SHIFT = 16  # raftmem.coordination.FENCE_SPAN = 1 << 16


def check_fences(events: Sequence[Event]) -> dict[str, Any]:
    ops_all = pair_operations(events)
    writes = [op for op in ops_all if op.f == "cas" and op.status == "ok"]
    by_key: dict[str | None, list[Operation]] = defaultdict(list)
    for op in writes:
        by_key[op.key].append(op)
    acquired: dict[str | None, list[int]] = defaultdict(list)  # fences of acknowledged acquisitions
    released: dict[tuple[str | None, int], int] = {}  # (key, fence) -> index of its acknowledged release
    for op in ops_all:
        if op.status != "ok":
            continue
        if op.f == "acquire" and isinstance(op.output, int):
            acquired[op.key].append(op.output)
        elif op.f == "release" and isinstance(op.value, int) and _extra(op, "raft_index") is not None:
            released[(op.key, op.value)] = int(_extra(op, "raft_index"))
    violations: list[dict[str, Any]] = []
    for key, ops in by_key.items():
        violations.extend(_fence_rule(key, ops, sorted(acquired.get(key, [])), released))
        logged = sorted((op for op in ops if _extra(op, "raft_index") is not None),
                        key=lambda op: int(_extra(op, "raft_index")))
        for before, after in zip(logged, logged[1:], strict=False):
            if int(_extra(after, "fence")) < int(_extra(before, "fence")):
                violations.append({"kind": "fence went back in the log", "key": key,
                                   "earlier": _brief(before), "later": _brief(after)})
        by_return = sorted(ops, key=lambda op: op.ret if op.ret is not None else 0)
        highest: Operation | None = None
        for op in sorted(ops, key=lambda op: op.call):
            # The highest fence of the writes that completed before this one began.
            while by_return and by_return[0].ret is not None and by_return[0].ret < op.call:
                done = by_return.pop(0)
                if highest is None or int(_extra(done, "fence")) > int(_extra(highest, "fence")):
                    highest = done
            if highest is not None and int(_extra(op, "fence")) < int(_extra(highest, "fence")):
                violations.append({"kind": "fence went back in real time", "key": key,
                                   "earlier": _brief(highest), "later": _brief(op)})
    return {
        "valid": False if violations else (True if writes else "unknown"),
        "violation_count": len(violations),
        "violation_kinds": dict(Counter(v["kind"] for v in violations)),
        "violations": violations[:VIOLATIONS_SHOWN_MAX],
        "reads_checked": len(writes),
        "ops_checked": len(writes),
        "keys": len(by_key),
    }


def _fence_rule(key: str | None, writes: list[Operation], fences: list[int],
                released: dict[tuple[str | None, int], int]) -> list[dict[str, Any]]:
    """Accepted writes that break the fence rule, judged by log position:
    after an acquisition with a larger fence, or after their fence's release."""
    out: list[dict[str, Any]] = []
    for op in writes:
        index, fence = _extra(op, "raft_index"), _extra(op, "fence")
        if index is None or fence is None:
            continue
        index, fence = int(index), int(fence)
        # The first acquisition with a larger fence: a violation if its entry
        # comes before the write's (fences grow with the index).
        newer = bisect.bisect_right(fences, fence)
        if newer < len(fences) and fences[newer] >> FENCE_INDEX_SHIFT < index:
            out.append({"kind": "write after a newer acquisition", "key": key, "write": _brief(op),
                        "acquired": fences[newer], "acquired_index": fences[newer] >> FENCE_INDEX_SHIFT})
        release = released.get((key, fence))
        if release is not None and release < index:
            out.append({"kind": "write after its release", "key": key, "write": _brief(op),
                        "release_index": release})
    return out


def _extra(op: Operation, name: str) -> Any:
    assert op.complete is not None
    return op.complete.extra.get(name, op.invoke.extra.get(name))


def _brief(op: Operation) -> dict[str, Any]:
    return {"process": op.process, "value": op.value, "fence": _extra(op, "fence"),
            "raft_index": _extra(op, "raft_index"), "invoke_index": op.invoke.index,
            "complete_index": op.complete.index if op.complete is not None else None}


def check_tasks(events: Sequence[Event]) -> dict[str, Any]:
    ops = pair_operations(events, keep_failed=True)
    enqueued: dict[str, str] = {}  # id -> ok | unknown | fail
    attempts_max: dict[str, int] = {}  # id -> max_attempts as enqueued
    completions: dict[str, list[Operation]] = defaultdict(list)
    given_up: set[str] = set()  # failed with retry: false (acknowledged or unknown)
    final: dict[str, Any] | None = None
    for op in ops:
        if op.f == "enqueue" and op.key is not None:
            enqueued[op.key] = op.status
            if op.invoke.extra.get("max_attempts") is not None:
                attempts_max[op.key] = int(op.invoke.extra["max_attempts"])
        elif op.f == "complete" and op.key is not None and op.status != "fail":
            completions[op.key].append(op)
        elif (op.f == "fail" and op.key is not None and op.status != "fail" and isinstance(op.value, dict)
              and op.value.get("retry") is False):
            given_up.add(op.key)
        elif op.f == "read" and op.status == "ok" and isinstance(op.output, dict):
            final = op.output
    violations: list[dict[str, Any]] = []
    if final is None:
        return {"valid": "unknown", "reason": "no final read", "violation_count": 0, "violations": [],
                "reads_checked": 0, "ops_checked": 0}

    def violation(kind: str, tid: str, **detail: Any) -> None:
        violations.append({"kind": kind, "task": tid, **detail})

    unfinished = []
    for tid, status in enqueued.items():
        if status == "ok" and tid not in final:
            violation("lost: enqueued, then missing", tid)
    for tid, state in final.items():
        if enqueued.get(tid) in (None, "fail"):
            violation("phantom: never enqueued" if tid not in enqueued else "phantom: enqueue failed", tid)
        accepted = [op for op in completions.get(tid, []) if op.status == "ok"]
        maybe = [op for op in completions.get(tid, []) if op.status == "unknown"]
        if len(accepted) > 1:
            violation("completed twice", tid, completions=[op.value for op in accepted])
        if accepted and (state["state"] != "done" or state["result"] != accepted[0].value["result"]):
            violation("acknowledged completion lost", tid, final=state, completion=accepted[0].value)
        if state["state"] == "done" and state["result"] not in [op.value["result"] for op in accepted + maybe]:
            violation("done by no completion", tid, final=state)
        limit = attempts_max.get(tid, state.get("max_attempts"))
        if state["state"] == "dead" and limit is not None and state["attempts"] < limit and tid not in given_up:
            violation("dead before its attempts ran out", tid, final=state, max_attempts=limit)
        if state["state"] in ("ready", "claimed"):
            unfinished.append(tid)
    valid: bool | str = False if violations else ("unknown" if unfinished else True)
    return {
        "valid": valid,
        "violation_count": len(violations),
        "violation_kinds": dict(Counter(v["kind"] for v in violations)),
        "violations": violations[:VIOLATIONS_SHOWN_MAX],
        "unfinished": unfinished[:VIOLATIONS_SHOWN_MAX],
        "unfinished_count": len(unfinished),
        "reads_checked": len(final),
        "ops_checked": len(final),
        "done": sum(1 for s in final.values() if s["state"] == "done"),
        "dead": sum(1 for s in final.values() if s["state"] == "dead"),
    }
