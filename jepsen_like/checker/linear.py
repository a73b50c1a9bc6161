"""Linearizability checker: Wing & Gong's search with Lowe's memoization, as in
Porcupine (Athalye, https://github.com/anishathalye/porcupine).

How it works:

1. **P-compositionality.** A history is linearizable iff the sub-history of every
   key is (Herlihy & Wing), so the model partitions the operations by key and each
   partition is searched alone. Partitions are checked smallest first: a small
   failing key is found in milliseconds even when a large valid key next to it
   would take the whole deadline.
2. **Entries.** Each operation gives a call entry (at its invocation) and a
   return entry (at its completion) in one doubly linked list, in history order.
   An operation whose outcome is unknown (``info`` or no completion) returns
   "at infinity": its return entry goes to the end, so it may be linearized at
   any point after its call; linearizing it last is the same as "never", because
   nothing observes the state afterwards. Unknown reads constrain nothing and are
   dropped; ``fail`` operations never happened and were dropped by
   ``pair_operations``.
3. **Search.** Walk the list from the head. At a call entry, try to linearize the
   operation next: if the model accepts it (``step`` returns ok) and the pair
   (set of linearized operations, new model state) was never seen, push it, *lift*
   its call and return entries out of the list and restart from the head. At a
   return entry, the operation it closes should have been linearized before its
   completion and was not: pop the last choice, *unlift* it (put its entries back)
   and try the next call after it. An empty list means every operation is
   linearized (valid); popping an empty stack means no order exists (invalid).
   The memo set of (bitset, state) cuts the search from factorial to at most
   2^n x |states|, usually far less.
4. **Deadline.** The search checks the clock every ``DEADLINE_CHECK_STEPS`` steps;
   when the deadline passes the verdict is ``"unknown"``, which callers must treat
   as "not a pass". The memo set is capped the same way.

Report for a failure: the key, and a ``failure_window``: the tail of the longest
linearizable prefix the search reached (with the model state after each op), then
the operation that could not be linearized ("stuck": its completion arrived before
it could take effect) and the other operations pending at that point, each with its
invoke and completion events. The deepest point reached is where the history stops
making sense, which is what a human reading it needs.
"""

from __future__ import annotations

import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, Protocol

from jepsen_like.checker.history import (
    Event,
    HistoryError,
    Operation,
    freeze,
    pair_operations,
    thaw,
)

Verdict = bool | Literal["unknown"]

DEADLINE_S_DEFAULT = 60.0
# Reading the clock costs about as much as a search step: look every few thousand.
DEADLINE_CHECK_STEPS = 2048
# (bitset, state) pairs remembered per partition; ~150 bytes each, so ~1 GiB.
MEMO_ENTRIES_MAX = 6_000_000
# Linearized operations shown before the stuck one in a failure report.
FAILURE_PREFIX_OPS_MAX = 6
# Pending operations shown beside the stuck one in a failure report.
FAILURE_PENDING_OPS_MAX = 8


class OpInput(NamedTuple):
    f: str
    key: str | None
    value: Any  # frozen (hashable) invocation value


class OpOutput(NamedTuple):
    known: bool  # False: the outcome is unknown and any result is acceptable
    value: Any  # frozen completion value; None when unknown


class Model(Protocol):
    """A sequential specification.

    ``step`` must be pure: the search calls it many times with the same arguments,
    and states must be hashable (the memo key). ``partition`` splits operations
    into independent sub-histories (by key for the models here) and may drop
    operations that cannot constrain anything.
    """

    name: str

    def init(self) -> Hashable: ...

    def step(self, state: Any, inp: OpInput, out: OpOutput) -> tuple[bool, Any]: ...

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]: ...


def _partition_by_key(
    ops: Sequence[Operation], fs: frozenset[str], read_fs: frozenset[str], model: str
) -> list[list[Operation]]:
    parts: dict[str | None, list[Operation]] = {}
    for op in ops:
        if op.f not in fs:
            raise HistoryError(
                f"{model} model has no operation {op.f!r} (op at index {op.invoke.index}); "
                f"it knows {sorted(fs)}"
            )
        if op.status == "unknown" and op.f in read_fs:
            continue  # a read whose result we never saw constrains nothing
        parts.setdefault(op.key, []).append(op)
    return list(parts.values())


class RegisterModel:
    """One register per key: ``read``, ``write``, ``cas`` with value
    ``[expected, new]``. Starts as None (absent); a read of an absent key returns
    None. A cas reported ``ok`` must have matched; a cas whose outcome is unknown
    may have applied (if it matched) or not."""

    name = "register"
    FS: frozenset[str] = frozenset({"read", "write", "cas"})
    READ_FS: frozenset[str] = frozenset({"read"})

    def init(self) -> Hashable:
        return None

    def step(self, state: Any, inp: OpInput, out: OpOutput) -> tuple[bool, Any]:
        f = inp.f
        if f == "read":
            return (not out.known or out.value == state), state
        if f == "write":
            return True, inp.value
        expected, new = inp.value
        if state == expected:
            return True, new
        return (not out.known), state

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        for op in ops:
            if op.f == "cas" and not (isinstance(op.value, list) and len(op.value) == 2):
                raise HistoryError(
                    f"cas at index {op.invoke.index} needs value [expected, new], got {op.value!r}"
                )
        return _partition_by_key(ops, self.FS, self.READ_FS, self.name)


class KVModel:
    """A string per key: ``get``, ``put``, ``append``; every key starts as "".
    A get that returns null is read as "" (an absent key)."""

    name = "kv"
    FS: frozenset[str] = frozenset({"get", "put", "append"})
    READ_FS: frozenset[str] = frozenset({"get"})

    def init(self) -> Hashable:
        return ""

    def step(self, state: Any, inp: OpInput, out: OpOutput) -> tuple[bool, Any]:
        f = inp.f
        if f == "get":
            if not out.known:
                return True, state
            seen = "" if out.value is None else out.value
            return seen == state, state
        if f == "put":
            return True, inp.value
        return True, state + inp.value

    def partition(self, ops: Sequence[Operation]) -> list[list[Operation]]:
        for op in ops:
            if op.f in ("put", "append") and not isinstance(op.value, str):
                raise HistoryError(
                    f"{op.f} at index {op.invoke.index} needs a string value, got {op.value!r}"
                )
        return _partition_by_key(ops, self.FS, self.READ_FS, self.name)


MODELS: dict[str, Model] = {"register": RegisterModel(), "kv": KVModel()}


@dataclass(slots=True)
class _Failure:
    prefix: list[int]  # local op indices, in linearization order
    states: list[Any]  # state after each prefix op
    state: Any  # state after the whole prefix
    stuck: int
    pending: list[int]  # local op indices whose calls precede the stuck return


@dataclass(slots=True)
class PartitionResult:
    valid: Verdict
    steps: int
    reason: str | None = None
    failure: _Failure | None = None
    ops: list[Operation] = field(default_factory=list)


def check_partition(
    ops: Sequence[Operation], model: Model, deadline_at: float | None
) -> PartitionResult:
    """Search one partition. ``deadline_at`` is a ``time.monotonic()`` instant."""
    n = len(ops)
    if n == 0:
        return PartitionResult(True, 0)
    inputs = [OpInput(op.f, op.key, freeze(op.value)) for op in ops]
    outputs = [
        OpOutput(op.status == "ok", freeze(op.output) if op.status == "ok" else None) for op in ops
    ]
    # Entry 2i is op i's call, 2i+1 its return. Unknown outcomes return after
    # every known event, in call order.
    beyond = 1 + max(max(op.call for op in ops), max(op.ret or 0 for op in ops))
    positions: list[tuple[int, int]] = []
    for i, op in enumerate(ops):
        positions.append((op.call, 2 * i))
        positions.append((op.ret if op.ret is not None else beyond + op.call, 2 * i + 1))
    positions.sort()
    head = 2 * n
    tail = 2 * n + 1
    nxt = [0] * (2 * n + 2)
    prv = [0] * (2 * n + 2)
    order = [head] + [e for _, e in positions] + [tail]
    for a, b in zip(order, order[1:], strict=False):
        nxt[a] = b
        prv[b] = a

    step = model.step
    bits = [1 << i for i in range(n)]
    memo: set[tuple[int, Any]] = set()
    stack_entries: list[int] = []
    stack_states: list[Any] = []
    state: Any = model.init()
    linearized = 0
    steps = 0
    best_depth = -1
    failure: _Failure | None = None
    entry = nxt[head]

    while nxt[head] != tail:
        steps += 1
        if steps % DEADLINE_CHECK_STEPS == 0:
            if deadline_at is not None and time.monotonic() > deadline_at:
                return PartitionResult("unknown", steps, reason="deadline")
            if len(memo) > MEMO_ENTRIES_MAX:
                return PartitionResult("unknown", steps, reason="memo limit")
        if entry & 1 == 0:  # a call entry
            i = entry >> 1
            ok, new_state = step(state, inputs[i], outputs[i])
            if ok:
                new_lin = linearized | bits[i]
                memo_key = (new_lin, new_state)
                if memo_key not in memo:
                    memo.add(memo_key)
                    stack_entries.append(entry)
                    stack_states.append(state)
                    state = new_state
                    linearized = new_lin
                    # Lift the call and its return out of the list.
                    ret = entry + 1
                    nxt[prv[entry]] = nxt[entry]
                    prv[nxt[entry]] = prv[entry]
                    nxt[prv[ret]] = nxt[ret]
                    prv[nxt[ret]] = prv[ret]
                    entry = nxt[head]
                    continue
            entry = nxt[entry]
            continue
        # A return entry: its op had to take effect by now and could not.
        depth = len(stack_entries)
        if depth > best_depth:
            best_depth = depth
            pending = []
            cursor = nxt[head]
            while cursor != entry:
                if cursor & 1 == 0:
                    pending.append(cursor >> 1)
                cursor = nxt[cursor]
            failure = _Failure(
                prefix=[e >> 1 for e in stack_entries],
                states=stack_states[1:] + [state],
                state=state,
                stuck=entry >> 1,
                pending=pending,
            )
        if not stack_entries:
            return PartitionResult(False, steps, failure=failure, ops=list(ops))
        entry = stack_entries.pop()
        state = stack_states.pop()
        linearized &= ~bits[entry >> 1]
        # Unlift in reverse order of the lift.
        ret = entry + 1
        nxt[prv[ret]] = ret
        prv[nxt[ret]] = ret
        nxt[prv[entry]] = entry
        prv[nxt[entry]] = entry
        entry = nxt[entry]
    return PartitionResult(True, steps)


def _failure_window(result: PartitionResult) -> tuple[list[dict[str, Any]], str]:
    failure = result.failure
    assert failure is not None
    ops = result.ops
    window: list[dict[str, Any]] = []
    tail_from = max(0, len(failure.prefix) - FAILURE_PREFIX_OPS_MAX)
    for pos in range(tail_from, len(failure.prefix)):
        entry = ops[failure.prefix[pos]].to_dict()
        entry["role"] = "linearized"
        entry["linearized_position"] = pos
        entry["state_after"] = thaw(failure.states[pos])
        window.append(entry)
    state_before = thaw(failure.state)
    stuck = ops[failure.stuck]
    entry = stuck.to_dict()
    entry["role"] = "stuck"
    entry["state_before"] = state_before
    window.append(entry)
    others = [i for i in failure.pending if i != failure.stuck][:FAILURE_PENDING_OPS_MAX]
    for i in others:
        entry = ops[i].to_dict()
        entry["role"] = "pending"
        window.append(entry)
    done = stuck.complete.index if stuck.complete is not None else None
    explanation = (
        f"after {len(failure.prefix)} linearized op(s) the state is {state_before!r}; "
        f"op {stuck.id} (process {stuck.process} {stuck.f} {stuck.value!r} -> "
        f"{stuck.output!r}) completed at index {done} but neither it nor any of the "
        f"{len(failure.pending) - 1} other pending op(s) can take effect next"
    )
    return window, explanation


def check_linearizable(
    history: Sequence[Event] | Sequence[Operation],
    model: Model | str = "register",
    deadline_s: float | None = DEADLINE_S_DEFAULT,
) -> dict[str, Any]:
    """Check a history (events, or operations from ``pair_operations``).

    Returns ``{"valid": True|False|"unknown", "key", "ops_checked",
    "failure_window", "explanation", "partitions", "partitions_checked",
    "steps", "elapsed_s", "model", "reason"}``. ``deadline_s`` None means no
    deadline (tests only: a real run must bound its time).
    """
    started = time.monotonic()
    if isinstance(model, str):
        if model not in MODELS:
            raise ValueError(f"unknown model {model!r}; known: {sorted(MODELS)}")
        model = MODELS[model]
    ops: list[Operation]
    if history and isinstance(history[0], Event):
        ops = pair_operations(history)  # type: ignore[arg-type]
    else:
        ops = list(history)  # type: ignore[arg-type]
    deadline_at = None if deadline_s is None else started + deadline_s
    parts = model.partition(ops)
    parts.sort(key=lambda part: (len(part), str(part[0].key)))
    result: dict[str, Any] = {
        "valid": True,
        "key": None,
        "ops_checked": 0,
        "failure_window": [],
        "explanation": None,
        "partitions": len(parts),
        "partitions_checked": 0,
        "steps": 0,
        "model": model.name,
        "reason": None,
    }
    unknown_key: str | None = None
    unknown_reason: str | None = None
    for part in parts:
        outcome = check_partition(part, model, deadline_at)
        result["steps"] += outcome.steps
        if outcome.valid == "unknown":
            # Keep going: a later, independent key may still be provably invalid
            # (and after the deadline every further search stops at once).
            if unknown_key is None:
                unknown_key, unknown_reason = part[0].key, outcome.reason
            continue
        result["partitions_checked"] += 1
        result["ops_checked"] += len(part)
        if outcome.valid is False:
            window, explanation = _failure_window(outcome)
            result.update(
                valid=False, key=part[0].key, failure_window=window, explanation=explanation
            )
            break
    else:
        if unknown_reason is not None:
            result.update(valid="unknown", key=unknown_key, reason=unknown_reason)
    result["elapsed_s"] = round(time.monotonic() - started, 3)
    return result
