"""Nesting depth: a request body deeper than JSON_DEPTH_MAX is refused where it
is parsed, and a write too deep for a log entry is refused before it is queued
(in the flush it failed every write queued with it, for good)."""

from __future__ import annotations

from typing import Any

import pytest

from raftmem.commands import MemoryFields, Put
from raftmem.config import LimitsConfig
from raftmem.errors import InvalidRequest
from raftmem.replica import _entry_size
from raftmem.validation import JSON_DEPTH_MAX, parse_json


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.parametrize("body", [_nested(JSON_DEPTH_MAX + 1), b'{"a": ' + _nested(JSON_DEPTH_MAX) + b"}",
                                  b'{"a": [{"b": ' + _nested(JSON_DEPTH_MAX - 2) + b"}]}"])
def test_a_body_deeper_than_the_limit_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidRequest, match="deeper than"):
        parse_json(body, LimitsConfig())


def test_a_body_at_the_limit_and_brackets_in_strings_pass() -> None:
    assert parse_json(_nested(JSON_DEPTH_MAX), LimitsConfig())
    assert parse_json(b'{"s": "' + b"[" * 500 + b'"}', LimitsConfig()) == {"s": "[" * 500}


def test_a_write_too_deep_for_a_log_entry_is_refused_before_it_is_queued() -> None:
    deep: Any = "leaf"
    for _ in range(252):
        deep = [deep]
    with pytest.raises(InvalidRequest, match="cannot be stored"):
        _entry_size([Put("ns", "d", MemoryFields(content=deep)).to_wire()])
    assert _entry_size([Put("ns", "d", MemoryFields(content=[[1]])).to_wire()]) > 0
