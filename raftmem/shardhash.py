"""The one shard hash: which shard a key `(namespace, id)` lives on.

Stable across processes and Python versions (never Python's salted `hash()`).
The server routes with it, the client routes straight to shard leaders with it,
and the harness places its keys with it; all three import this module, which
imports nothing (published in GET /v1/cluster as `hash`).
"""

from __future__ import annotations

import hashlib

HASH_NAME = "blake2b-64(namespace NUL id) mod shards"


def h64(data: bytes) -> int:
    """64 bits of blake2b, big-endian (also the placement ring's point hash)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def shard_for(namespace: str, memory_id: str, shards: int) -> int:
    return h64(namespace.encode() + b"\0" + memory_id.encode()) % shards
