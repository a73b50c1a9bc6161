"""Embeddings as raftmem stores them: a vector of float32, packed little-endian
and base64-encoded (a quarter of its JSON size in the log, the change log and
RocksDB), and the text of a memory that an embedder or the full-text index sees.

Pure; imports nothing of the package but the error tree.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Iterator, Sequence
from typing import Any

from .config.schema import EMBEDDING_DIMS_MAX
from .errors import InvalidRequest

# Vectors are stored as float32: a larger magnitude does not fit (and would fail
# when packed, after the write was accepted).
FLOAT32_MAX = 3.4028234663852886e38
TEXT_CHARS_MAX = 100_000  # of a memory's text handed to an index or an embedder
_TEXT_DEPTH_MAX = 32


def vector_schema(dims_max: int = EMBEDDING_DIMS_MAX) -> dict[str, Any]:
    """What `check_vector` accepts, as JSON Schema."""
    return {"type": "array", "minItems": 1, "maxItems": dims_max,
            "items": {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}}


def check_vector(what: str, value: Any, dims_max: int = EMBEDDING_DIMS_MAX) -> list[float]:
    """A list of numbers a float32 holds, 1 to `dims_max` long, or InvalidRequest."""
    if not isinstance(value, list) or not value:
        raise InvalidRequest(f"{what} must be a non-empty list of numbers", field=what)
    if len(value) > dims_max:
        raise InvalidRequest(f"{what} has {len(value)} dimensions, at most {dims_max}", field=what)
    out: list[float] = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x):
            raise InvalidRequest(f"{what} must hold finite numbers only", field=what)
        if not -FLOAT32_MAX <= x <= FLOAT32_MAX:
            raise InvalidRequest(f"{what} holds {x:g}, beyond what a float32 holds ({FLOAT32_MAX:g})", field=what)
        out.append(float(x))
    return out


def pack(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def unpack(packed: str) -> list[float]:
    raw = base64.b64decode(packed)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw))


def dims(packed: str) -> int:
    """The dimension of a packed vector (without decoding it)."""
    length = len(packed)
    padding = packed.count("=", max(0, length - 2))
    return (length * 3 // 4 - padding) // 4


def strings(value: Any, depth: int = 0) -> Iterator[str]:
    """The string leaves of a JSON value, in document order."""
    if depth > _TEXT_DEPTH_MAX:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item, depth + 1)


def text_of(content: Any) -> str:
    """What full-text search and an embedder read of a memory: the string
    leaves of its content, joined (at most TEXT_CHARS_MAX characters)."""
    return "\n".join(strings(content))[:TEXT_CHARS_MAX]
