"""Session checker: read-your-writes and monotonic reads, per client session.

A session is a ``process``: its operations are sequential (``pair_operations``
refuses a process with two operations in flight), so "earlier in the session"
is well defined.

Event shape (the ``version`` field is described in ``history.py``):

- **write**: ``f`` is ``write``, ``put``, ``cas`` or ``append``; the invoke
  ``value`` is the value written (``[expected, new]`` for ``cas``); the ``ok``
  event carries ``version``: the per-key version the write created. A write
  whose ``ok`` lacks ``version`` is a HistoryError: the checker cannot place it.
- **read**: ``f`` is ``read`` or ``get``; the ``ok`` event carries ``value`` (the
  value read, null if absent) and ``version`` (the version of that value; 0 or
  null when the key is absent).
- ``fail`` operations are ignored; ``info`` (unknown) writes raise no floor: they
  may or may not have happened, so a session need not see them.

Verdict: False on any anomaly; "unknown" when there is no ``ok`` read at all
(nothing was exercised); True otherwise.

Checks, per session and key, for every ``ok`` read R:

- **read-your-writes**: R's version >= the version of the session's latest
  ``ok`` write to the key before R; and if equal, R's value is that write's value
  (for ``write``/``put``/``cas``; an ``append``'s resulting value is not known).
- **monotonic reads**: R's version >= the version of every earlier ``ok`` read by
  the session of the key.

And for every ``ok`` write W: **write order** (monotonic writes, writes follow
reads): W's version > every version the session already wrote or read on the key,
since a write goes through the log after everything the session saw.

It relies on the store's contract that a key's versions increase with each write.
It proves nothing across sessions (that is the linearizability checker's job) and
says nothing about writes whose outcome is unknown.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jepsen_like.checker.history import Event, HistoryError, Operation, pair_operations

# Anomalies listed in the report; the counts are always complete.
SAMPLES_MAX = 10

WRITE_FS: frozenset[str] = frozenset({"write", "put", "cas", "append"})
READ_FS: frozenset[str] = frozenset({"read", "get"})
# Writes whose resulting value is known from the invocation alone.
VALUE_KNOWN_FS: frozenset[str] = frozenset({"write", "put", "cas"})


@dataclass(slots=True)
class _SessionKey:
    write_version: int = -1
    write_value: Any = None
    write_value_known: bool = False
    write_op: Operation | None = None
    read_version: int = -1
    read_op: Operation | None = None


def _version(op: Operation, *, absent_ok: bool) -> int:
    complete = op.complete
    assert complete is not None  # only ok operations reach here
    version = complete.version
    if version is None:
        if absent_ok and complete.value is None:
            return 0
        raise HistoryError(
            f"ok {op.f} at index {complete.index} carries no 'version': the session "
            f"checker needs the store's per-key version on every ok read and write"
        )
    if not isinstance(version, int) or isinstance(version, bool):
        raise HistoryError(f"'version' at index {complete.index} must be an int")
    return version


def _written_value(op: Operation) -> Any:
    if op.f == "cas":
        if not (isinstance(op.value, list) and len(op.value) == 2):
            raise HistoryError(f"cas at index {op.invoke.index} needs value [expected, new]")
        return op.value[1]
    return op.value


def _brief(op: Operation | None) -> dict[str, Any] | None:
    if op is None or op.complete is None:
        return None
    return {
        "f": op.f,
        "value": op.value,
        "output": op.output,
        "version": op.complete.version,
        "invoke_index": op.invoke.index,
        "complete_index": op.complete.index,
    }


def check_session(events: Sequence[Event]) -> dict[str, Any]:
    """Check session guarantees; see the module docstring."""
    ops = [op for op in pair_operations(events) if op.status == "ok"]
    ops.sort(key=lambda op: op.call)
    seen: dict[tuple[int, str | None], _SessionKey] = {}
    counts = {"read_your_writes": 0, "monotonic_reads": 0, "write_order": 0}
    samples: list[dict[str, Any]] = []
    reads = writes = 0

    def report(kind: str, op: Operation, why: str, prior: Operation | None) -> None:
        counts[kind] += 1
        if len(samples) < SAMPLES_MAX:
            samples.append(
                {
                    "kind": kind,
                    "process": op.process,
                    "key": op.key,
                    "why": why,
                    "op": _brief(op),
                    "prior": _brief(prior),
                }
            )

    for op in ops:
        if op.f not in WRITE_FS and op.f not in READ_FS:
            continue
        state = seen.setdefault((op.process, op.key), _SessionKey())
        if op.f in WRITE_FS:
            writes += 1
            version = _version(op, absent_ok=False)
            floor = max(state.write_version, state.read_version)
            if version <= floor:
                own_write_higher = state.write_version >= state.read_version
                report(
                    "write_order",
                    op,
                    f"write created version {version}, but the session had already "
                    f"seen version {floor} of this key",
                    state.write_op if own_write_higher else state.read_op,
                )
            if version >= state.write_version:
                state.write_version = version
                state.write_value_known = op.f in VALUE_KNOWN_FS
                state.write_value = _written_value(op) if state.write_value_known else None
                state.write_op = op
            continue
        reads += 1
        version = _version(op, absent_ok=True)
        if version < state.write_version:
            report(
                "read_your_writes",
                op,
                f"read version {version} after the session wrote version {state.write_version}",
                state.write_op,
            )
        elif (
            version == state.write_version
            and state.write_value_known
            and op.output != state.write_value
        ):
            report(
                "read_your_writes",
                op,
                f"read version {version} with value {op.output!r}, but the session "
                f"wrote {state.write_value!r} as that version",
                state.write_op,
            )
        if version < state.read_version:
            report(
                "monotonic_reads",
                op,
                f"read version {version} after the session read version {state.read_version}",
                state.read_op,
            )
        if version >= state.read_version:
            state.read_version = version
            state.read_op = op

    anomalies = sum(counts.values())
    valid: bool | str = anomalies == 0
    if valid and reads == 0:
        valid = "unknown"  # no ok read: the guarantees were never exercised
    return {
        "valid": valid,
        "sessions": len({op.process for op in ops}),
        "reads_checked": reads,
        "writes_checked": writes,
        "anomaly_counts": counts,
        "anomalies": samples,
    }
