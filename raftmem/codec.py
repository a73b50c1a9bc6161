"""The versioned codec for what raftmem puts in the Raft log and on disk.

A log entry is one byte of format version followed by orjson: `{"ops": [...]}`,
many client operations per entry (group commit). Decoding refuses a version or
an operation type it does not know: a node never guesses at a command. No pickle.

This module imports nothing from the package.
"""

from __future__ import annotations

from typing import Any

import orjson

ENTRY_FORMAT_V1 = 1
OP_TYPES = frozenset({
    "put", "delete", "noop", "expire", "restore", "members", "get", "txn",
    # coordination (locks, task claims, their expiry)
    "lock_acquire", "lock_renew", "lock_release", "task_add", "task_claim", "task_settle", "lease_expire",
    # lifecycle (reads recorded, memories pruned)
    "touch", "prune",
})


class CodecError(ValueError):
    pass


def encode_entry(ops: list[dict[str, Any]]) -> bytes:
    for op in ops:
        if op.get("t") not in OP_TYPES:
            raise CodecError(f"unknown operation type {op.get('t')!r}")
    return bytes([ENTRY_FORMAT_V1]) + orjson.dumps({"ops": ops})


def decode_entry(data: bytes) -> list[dict[str, Any]]:
    if not data:
        raise CodecError("empty entry")
    if data[0] != ENTRY_FORMAT_V1:
        raise CodecError(f"unknown entry format version {data[0]}")
    try:
        body = orjson.loads(data[1:])
    except orjson.JSONDecodeError as e:
        raise CodecError(f"entry is not valid JSON: {e}") from e
    ops = body.get("ops") if isinstance(body, dict) else None
    if not isinstance(ops, list):
        raise CodecError("entry has no operation list")
    for op in ops:
        if not isinstance(op, dict) or op.get("t") not in OP_TYPES:
            raise CodecError(f"unknown operation {op!r:.80}")
    return ops


def dumps(value: Any) -> bytes:
    return orjson.dumps(value)


def embedded(encoded: bytes) -> Any:
    """JSON already encoded (by `dumps`), to place inside a value given to `dumps`
    without decoding and encoding it again."""
    return orjson.Fragment(encoded)


def loads(data: bytes | str) -> Any:
    return orjson.loads(data)


def u64(value: int) -> bytes:
    return value.to_bytes(8, "big")


def from_u64(data: bytes) -> int:
    return int.from_bytes(data, "big")
