"""The history format shared by the harness and its checkers.

A history is a JSONL file, one event a line, in the order the harness observed
them::

    {"index": 0, "time": 1200, "type": "invoke", "process": 3, "f": "write",
     "key": "k1", "value": 4, "node": "n2", "error": null}
    {"index": 1, "time": 5400, "type": "ok", "process": 3, "f": "write",
     "key": "k1", "value": 4, "node": "n2", "error": null, "version": 7}

Required fields:

- ``index``: int, position in the history (unique, increasing).
- ``time``: int, the harness's monotonic clock in nanoseconds (one clock for the
  whole history, so times of different processes compare).
- ``type``: ``"invoke"`` | ``"ok"`` | ``"fail"`` | ``"info"``.
  ``ok``: the operation took effect (once). ``fail``: it certainly did not.
  ``info``: unknown, it may take effect at any time after its invocation, or never.
- ``process``: int, the client session; ``"nemesis"`` for fault events, which are
  ``info`` events with ``f`` ``"start"``/``"stop"`` and a ``value`` describing
  the fault.
- ``f``: the operation, a free string (``read``, ``write``, ``cas``, ``add``,
  ``get``, ``put``, ``append``...).
- ``key``: str or null; ``value``: any JSON. For ``cas`` the invoke value is
  ``[expected, new]``; a ``read`` invoke carries null and its ``ok`` carries the
  value read (null: the key is absent).
- ``node``: str or null, the node that served the request; ``error``: str or null.

Optional fields (omitted when null):

- ``version``: int, the store's per-key version. On the ``ok`` of a write: the
  version the write created. On the ``ok`` of a read: the version of the value
  read (0 or null when the key is absent). Used by the session and staleness
  checkers.
- ``consistency``: str, the read level asked for (``"bounded"``, ``"session"``...).
- ``max_staleness_ms``: int, the bound of a ``bounded`` read.

Any other field is kept in ``Event.extra`` and written back by ``dump_jsonl``, so
a history survives a load/dump round trip unchanged.

``pair_operations`` turns events into operations, one per invocation.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

EventType = Literal["invoke", "ok", "fail", "info"]
Status = Literal["ok", "unknown", "fail"]

EVENT_TYPES: frozenset[str] = frozenset({"invoke", "ok", "fail", "info"})
NEMESIS_PROCESS = "nemesis"

# A history line longer than this is a recorder bug, not data worth parsing:
# refuse it rather than buffering megabytes per event.
EVENT_LINE_BYTES_MAX = 1 << 20

_REQUIRED_FIELDS = ("index", "time", "type", "process", "f")
_CORE_FIELDS = frozenset({"index", "time", "type", "process", "f", "key", "value", "node", "error"})
_OPTIONAL_FIELDS = ("version", "consistency", "max_staleness_ms")


class HistoryError(ValueError):
    """A history that is malformed: a bad line, or events that do not pair up."""


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a history."""

    index: int
    time: int
    type: EventType
    process: int | str
    f: str
    key: str | None = None
    value: Any = None
    node: str | None = None
    error: str | None = None
    version: int | None = None
    consistency: str | None = None
    max_staleness_ms: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_nemesis(self) -> bool:
        return self.process == NEMESIS_PROCESS

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "time": self.time,
            "type": self.type,
            "process": self.process,
            "f": self.f,
            "key": self.key,
            "value": self.value,
            "node": self.node,
            "error": self.error,
        }
        for name in _OPTIONAL_FIELDS:
            val = getattr(self, name)
            if val is not None:
                out[name] = val
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Event:
        missing = [name for name in _REQUIRED_FIELDS if name not in raw]
        if missing:
            raise HistoryError(f"event lacks field(s) {missing}: {raw!r}")
        etype = raw["type"]
        if etype not in EVENT_TYPES:
            raise HistoryError(f"event type {etype!r} is not one of {sorted(EVENT_TYPES)}")
        # bool is an int subclass: refuse it, a true index is a recorder bug.
        for name in ("index", "time"):
            if not isinstance(raw[name], int) or isinstance(raw[name], bool):
                raise HistoryError(f"event field {name!r} must be an int: {raw!r}")
        process = raw["process"]
        if not (isinstance(process, int) and not isinstance(process, bool)) and (
            process != NEMESIS_PROCESS
        ):
            raise HistoryError(f"process must be an int or {NEMESIS_PROCESS!r}: {raw!r}")
        if not isinstance(raw["f"], str):
            raise HistoryError(f"event field 'f' must be a string: {raw!r}")
        known = _CORE_FIELDS.union(_OPTIONAL_FIELDS)
        return cls(
            index=raw["index"],
            time=raw["time"],
            type=etype,
            process=process,
            f=raw["f"],
            key=raw.get("key"),
            value=raw.get("value"),
            node=raw.get("node"),
            error=raw.get("error"),
            version=raw.get("version"),
            consistency=raw.get("consistency"),
            max_staleness_ms=raw.get("max_staleness_ms"),
            extra={k: v for k, v in raw.items() if k not in known},
        )


def load_jsonl(path: str | Path) -> list[Event]:
    """Read a JSONL history. Blank lines are skipped; a bad line raises HistoryError
    naming the file and line."""
    events: list[Event] = []
    with Path(path).open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if len(line) > EVENT_LINE_BYTES_MAX:
                raise HistoryError(f"{path}:{lineno}: line longer than {EVENT_LINE_BYTES_MAX}")
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise HistoryError(f"{path}:{lineno}: not JSON: {exc}") from exc
            if not isinstance(raw, dict):
                raise HistoryError(f"{path}:{lineno}: an event must be a JSON object")
            try:
                events.append(Event.from_dict(raw))
            except HistoryError as exc:
                raise HistoryError(f"{path}:{lineno}: {exc}") from exc
    return events


def dump_jsonl(events: Iterable[Event], path: str | Path) -> None:
    """Write events as JSONL, one compact object a line."""
    with Path(path).open("w", encoding="utf-8") as fh:
        for event in events:
            fh.write(json.dumps(event.to_dict(), separators=(",", ":"), sort_keys=False))
            fh.write("\n")


@dataclass(frozen=True, slots=True)
class Operation:
    """An invocation paired with its completion.

    ``call`` and ``ret`` are positions in the history (the order of events), used
    for real-time precedence: op A precedes op B iff ``A.ret < B.call``. ``ret`` is
    None when the outcome is unknown (an ``info`` completion, or none at all): the
    operation may take effect at any point after ``call``, or never.
    """

    id: int
    process: int
    f: str
    key: str | None
    value: Any  # the invocation's value (the input)
    output: Any  # the completion's value; None when unknown
    status: Status
    invoke: Event
    complete: Event | None
    call: int
    ret: int | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "op": self.id,
            "process": self.process,
            "f": self.f,
            "key": self.key,
            "value": self.value,
            "output": self.output,
            "status": self.status,
            "invoke": self.invoke.to_dict(),
            "complete": self.complete.to_dict() if self.complete is not None else None,
        }


def pair_operations(events: Sequence[Event], *, keep_failed: bool = False) -> list[Operation]:
    """Match each invoke with the next completion of the same process.

    - ``ok``: status "ok", ``output`` is the completion's value.
    - ``info`` or no completion at all: status "unknown", ``ret`` is None.
    - ``fail``: the operation certainly did not happen; it is dropped unless
      ``keep_failed`` (the set checker wants to see failed adds).

    Nemesis events are skipped. Events are taken in ``index`` order. Raises
    HistoryError for a completion without an invoke, an invoke while the process
    still has one in flight, or a completion whose ``f`` differs from its invoke's.
    """
    ordered = sorted(events, key=lambda e: e.index)
    pending: dict[int, tuple[int, Event]] = {}
    # Slots in call order; filled in when the completion arrives.
    slots: list[tuple[int, Event, int | None, Event | None]] = []
    slot_of: dict[int, int] = {}
    for pos, event in enumerate(ordered):
        if event.is_nemesis:
            continue
        proc = event.process
        assert isinstance(proc, int)  # Event.from_dict admits only int or nemesis
        if event.type == "invoke":
            if proc in pending:
                prev = pending[proc][1]
                raise HistoryError(
                    f"process {proc} invoked at index {event.index} while its "
                    f"invoke at index {prev.index} has no completion"
                )
            pending[proc] = (pos, event)
            slot_of[proc] = len(slots)
            slots.append((pos, event, None, None))
            continue
        if proc not in pending:
            raise HistoryError(
                f"{event.type} at index {event.index} for process {proc} has no invoke"
            )
        call_pos, invoke = pending.pop(proc)
        if event.f != invoke.f:
            raise HistoryError(
                f"completion at index {event.index} is {event.f!r} but its invoke at "
                f"index {invoke.index} is {invoke.f!r}"
            )
        slots[slot_of.pop(proc)] = (call_pos, invoke, pos, event)

    ops: list[Operation] = []
    for call_pos, invoke, ret_pos, complete in slots:
        if complete is None or complete.type == "info":
            status: Status = "unknown"
            ret: int | None = None
            output = None
        elif complete.type == "fail":
            if not keep_failed:
                continue
            status, ret, output = "fail", ret_pos, complete.value
        else:
            status, ret, output = "ok", ret_pos, complete.value
        assert isinstance(invoke.process, int)
        ops.append(
            Operation(
                id=len(ops),
                process=invoke.process,
                f=invoke.f,
                key=invoke.key,
                value=invoke.value,
                output=output,
                status=status,
                invoke=invoke,
                complete=complete,
                call=call_pos,
                ret=ret,
            )
        )
    return ops


def freeze(value: Any) -> Any:
    """A hashable image of a JSON value (lists -> tuples, dicts -> frozensets of
    items), for model states, memo keys and set membership."""
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, dict):
        return frozenset((k, freeze(v)) for k, v in value.items())
    return value


def thaw(value: Any) -> Any:
    """The JSON value that ``freeze`` made hashable (for reports)."""
    if isinstance(value, tuple):
        return [thaw(v) for v in value]
    if isinstance(value, frozenset):
        return {k: thaw(v) for k, v in value}
    return value


_SAME: Any = object()  # sentinel: "the invoke's value"


class HistoryBuilder:
    """Builds a well-formed event list: indexes in order, times from a fake
    monotonic clock (``time_step_ns`` per event unless ``advance``d or given), and a
    completion's ``f`` and ``key`` taken from its process's pending invoke.
    For tests and tools; the harness's recorder writes the same shape."""

    def __init__(self, time_step_ns: int = 1_000_000) -> None:
        self.events: list[Event] = []
        self.now_ns = 0
        self.time_step_ns = time_step_ns
        self._pending: dict[int | str, Event] = {}

    def advance(self, ns: int) -> None:
        self.now_ns += ns

    def _add(self, **fields: Any) -> Event:
        at = fields.pop("time", None)
        if at is None:
            self.now_ns += self.time_step_ns
            at = self.now_ns
        else:
            self.now_ns = at
        event = Event.from_dict({"index": len(self.events), "time": at, **fields})
        self.events.append(event)
        return event

    def invoke(
        self, process: int, f: str, key: str | None = None, value: Any = None, **fields: Any
    ) -> Event:
        event = self._add(type="invoke", process=process, f=f, key=key, value=value, **fields)
        self._pending[process] = event
        return event

    def _complete(self, etype: str, process: int, value: Any, fields: dict[str, Any]) -> Event:
        invoke = self._pending.pop(process)
        return self._add(
            type=etype,
            process=process,
            f=invoke.f,
            key=invoke.key,
            value=invoke.value if value is _SAME else value,
            **fields,
        )

    def ok(self, process: int, value: Any = _SAME, **fields: Any) -> Event:
        return self._complete("ok", process, value, fields)

    def fail(self, process: int, value: Any = _SAME, **fields: Any) -> Event:
        return self._complete("fail", process, value, fields)

    def info(self, process: int, value: Any = _SAME, **fields: Any) -> Event:
        return self._complete("info", process, value, fields)

    def nemesis(self, f: str, value: Any = None, **fields: Any) -> Event:
        return self._add(type="info", process=NEMESIS_PROCESS, f=f, value=value, **fields)
