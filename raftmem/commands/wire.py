"""Reading the log's wire form: typed fields out of a command's JSON object,
raising TypeError for a field of the wrong type (the command decodes as
`Invalid`, and apply answers it with an error result)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def req_str(d: Mapping[str, Any], key: str) -> str:
    value = d[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string, got {type(value).__name__}")
    return value


def opt_str(d: Mapping[str, Any], key: str) -> str | None:
    return None if d.get(key) is None else req_str(d, key)


def req_int(d: Mapping[str, Any], key: str) -> int:
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} must be a number, got {value!r}")
    return int(value)


def opt_int(d: Mapping[str, Any], key: str) -> int | None:
    return None if d.get(key) is None else req_int(d, key)
