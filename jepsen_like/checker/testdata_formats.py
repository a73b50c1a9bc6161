"""Readers for the reference histories in ``shared/testdata/linearizability``.

Both formats become our own ``Event`` list (see ``history.py``), so the reference
histories exercise exactly the code path the harness's histories take. These
histories carry no clock: ``time`` is set to the line position, which keeps the
real-time order (all a linearizability check uses).

- ``jepsen-etcd/*.log``: Jepsen's log lines for one cas register,
  ``INFO  jepsen.util - 3<TAB>:invoke<TAB>:cas<TAB>[1 2]`` (some files use spaces).
  ``:info`` completions carry ``:timed-out``: value None, ``error`` "timed-out".
- ``kv/*.txt``: one EDN map a line,
  ``{:process 0, :type :invoke, :f :append, :key "0", :value "x 0 0 y"}``.
- ``VERDICTS``: ``FILE linearizable|not-linearizable`` a line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from jepsen_like.checker.history import Event, HistoryError

_JEPSEN_LINE = re.compile(
    r"^INFO\s+jepsen\.util\s+-\s+(\d+)\s+:(invoke|ok|fail|info)\s+:([\w-]+)\s+(.*?)\s*$"
)
_NUMBER = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.\d*|\.\d+|\d+)([eE][+-]?\d+)?$")
_DELIMITERS = frozenset('{}[](),;" \t\r\n')
_STRING_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}
# EDN nesting deeper than this is not a history line; refuse it before the
# recursive reader exhausts the Python stack.
EDN_DEPTH_MAX = 64


class Keyword(str):
    """An EDN keyword (``:invoke``), kept apart from strings (``"invoke"``)."""

    __slots__ = ()


class _EdnReader:
    """A reader for the subset of EDN found in Jepsen histories: maps, vectors,
    lists, sets, strings, keywords, symbols, integers, floats, nil, booleans."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, what: str) -> HistoryError:
        return HistoryError(f"EDN: {what} at offset {self.pos} in {self.text[:120]!r}")

    def skip(self) -> None:
        text = self.text
        while self.pos < len(text):
            ch = text[self.pos]
            if ch in " \t\r\n,":
                self.pos += 1
            elif ch == ";":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def read(self, depth: int = 0) -> Any:
        if depth > EDN_DEPTH_MAX:
            raise self.error("nesting too deep")
        self.skip()
        if self.pos >= len(self.text):
            raise self.error("unexpected end")
        ch = self.text[self.pos]
        if ch == "{":
            self.pos += 1
            items = self.read_seq("}", depth)
            if len(items) % 2:
                raise self.error("map with an odd number of forms")
            return {_map_key(items[i]): items[i + 1] for i in range(0, len(items), 2)}
        if ch in "[(":
            self.pos += 1
            return self.read_seq("]" if ch == "[" else ")", depth)
        if ch == "#" and self.text.startswith("#{", self.pos):
            self.pos += 2
            return self.read_seq("}", depth)
        if ch == '"':
            return self.read_string()
        return self.read_atom()

    def read_seq(self, close: str, depth: int) -> list[Any]:
        items: list[Any] = []
        while True:
            self.skip()
            if self.pos >= len(self.text):
                raise self.error(f"missing {close!r}")
            if self.text[self.pos] == close:
                self.pos += 1
                return items
            items.append(self.read(depth + 1))

    def read_string(self) -> str:
        text = self.text
        self.pos += 1
        out: list[str] = []
        while self.pos < len(text):
            ch = text[self.pos]
            if ch == '"':
                self.pos += 1
                return "".join(out)
            if ch == "\\":
                self.pos += 1
                esc = text[self.pos : self.pos + 1]
                if esc not in _STRING_ESCAPES:
                    raise self.error(f"unknown string escape \\{esc}")
                out.append(_STRING_ESCAPES[esc])
            else:
                out.append(ch)
            self.pos += 1
        raise self.error("unterminated string")

    def read_atom(self) -> Any:
        start = self.pos
        text = self.text
        while self.pos < len(text) and text[self.pos] not in _DELIMITERS:
            self.pos += 1
        token = text[start : self.pos]
        if not token:
            raise self.error(f"unexpected {text[start]!r}")
        if token == "nil":
            return None
        if token in ("true", "false"):
            return token == "true"
        if token.startswith(":"):
            return Keyword(token[1:])
        if _NUMBER.match(token):
            return int(token)
        if _FLOAT.match(token):
            return float(token)
        return Keyword(token)  # a symbol: only its name matters here


def _map_key(key: Any) -> Any:
    return str(key) if isinstance(key, Keyword) else key


def read_edn(text: str) -> Any:
    """Read one EDN form; trailing text other than whitespace is an error."""
    reader = _EdnReader(text)
    value = reader.read()
    reader.skip()
    if reader.pos != len(text):
        raise reader.error("trailing text")
    return value


def _plain(value: Any) -> Any:
    """Keywords become plain strings once their kind no longer matters."""
    if isinstance(value, Keyword):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def parse_jepsen_log(path: str | Path) -> list[Event]:
    """Read a Jepsen etcd register log (single register: ``key`` is None)."""
    events: list[Event] = []
    with Path(path).open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            match = _JEPSEN_LINE.match(line)
            if match is None:
                raise HistoryError(f"{path}:{lineno}: not a jepsen.util op line: {line!r}")
            process, etype, f, raw_value = match.groups()
            try:
                value = read_edn(raw_value)
            except HistoryError as exc:
                raise HistoryError(f"{path}:{lineno}: {exc}") from exc
            error = None
            if isinstance(value, Keyword):  # :timed-out and the like
                error, value = str(value), None
            index = len(events)
            events.append(
                Event(
                    index=index,
                    time=index,
                    type=etype,  # type: ignore[arg-type]  # the regex admits only the four
                    process=int(process),
                    f=f,
                    key=None,
                    value=_plain(value),
                    error=error,
                )
            )
    return events


def parse_edn_kv(path: str | Path) -> list[Event]:
    """Read an EDN key-value history (``get``/``put``/``append`` per key)."""
    events: list[Event] = []
    with Path(path).open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                raw = read_edn(line.strip())
                if not isinstance(raw, dict):
                    raise HistoryError("a history line must be a map")
                index = len(events)
                key = raw.get("key")
                events.append(
                    Event.from_dict(
                        {
                            "index": index,
                            "time": index,
                            "type": _plain(raw.get("type")),
                            "process": raw.get("process"),
                            "f": _plain(raw.get("f")),
                            "key": None if key is None else str(_plain(key)),
                            "value": _plain(raw.get("value")),
                        }
                    )
                )
            except HistoryError as exc:
                raise HistoryError(f"{path}:{lineno}: {exc}") from exc
    return events


def load_verdicts(path: str | Path) -> dict[str, bool]:
    """``VERDICTS`` as {file name: linearizable?}."""
    verdicts: dict[str, bool] = {}
    with Path(path).open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("linearizable", "not-linearizable"):
                raise HistoryError(f"{path}:{lineno}: expected 'FILE verdict': {line!r}")
            verdicts[fields[0]] = fields[1] == "linearizable"
    return verdicts
