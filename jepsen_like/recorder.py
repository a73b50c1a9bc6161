"""The history recorder: events in the order the harness observed them, stamped
with one monotonic clock, streamed to ``history.jsonl`` as they happen (so an
interrupted run still leaves its history).

Event shape: see ``jepsen_like/checker/history.py``. Every client event also
carries ``workload`` (which checker set applies) and, where known, the read
``consistency`` and ``max_staleness_ms``. Nemesis events are ``info`` events of
process ``"nemesis"`` with ``f`` ``start``/``stop`` and a ``value`` that names
the fault (``{"fault": "isolate", "id": 3, "nodes": [...]}``); a start and its
stop share the ``id``.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any, TextIO

from jepsen_like.checker.history import NEMESIS_PROCESS, Event


class Recorder:
    def __init__(self, path: Path | None = None) -> None:
        self.events: list[Event] = []
        self._fh: TextIO | None = path.open("w", encoding="utf-8") if path is not None else None
        self._processes = itertools.count()
        self._fault_ids = itertools.count(1)
        self.started_ns = time.monotonic_ns()

    def new_process(self) -> int:
        return next(self._processes)

    def _add(self, fields: dict[str, Any]) -> Event:
        fields = {k: v for k, v in fields.items() if v is not None or k in ("key", "value", "node", "error")}
        event = Event.from_dict({"index": len(self.events), "time": time.monotonic_ns(), **fields})
        self.events.append(event)
        if self._fh is not None:
            self._fh.write(json.dumps(event.to_dict(), separators=(",", ":")) + "\n")
        return event

    def invoke(self, process: int, f: str, key: str | None, value: Any, node: str, **extra: Any) -> Event:
        return self._add({"type": "invoke", "process": process, "f": f, "key": key, "value": value,
                          "node": node, "error": None, **extra})

    def complete(self, invoke: Event, etype: str, value: Any = None, error: str | None = None,
                 **extra: Any) -> Event:
        fields = {"type": etype, "process": invoke.process, "f": invoke.f, "key": invoke.key,
                  "value": value, "node": invoke.node, "error": error}
        for name in ("consistency", "max_staleness_ms"):
            if getattr(invoke, name) is not None:
                fields[name] = getattr(invoke, name)
        fields.update(invoke.extra)
        fields.update(extra)
        return self._add(fields)

    def fault_id(self) -> int:
        return next(self._fault_ids)

    def nemesis(self, f: str, value: dict[str, Any]) -> Event:
        return self._add({"type": "info", "process": NEMESIS_PROCESS, "f": f, "key": None, "value": value,
                          "node": None, "error": None})

    def flush(self) -> None:
        if self._fh is not None:
            self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
