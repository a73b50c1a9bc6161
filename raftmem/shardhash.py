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


# Suffixes tried before giving up: with S shards one try in S lands, so failing
# this many times has a chance of (1 - 1/S) ** (64 S) < e**-64.
COLOCATE_TRIES_PER_SHARD = 64


def colocated_id(namespace: str, lock_name: str, stem: str, shards: int) -> str:
    """An id `stem` or `stem.N` that lives on the shard of lock `lock_name` of
    the same namespace (locks live where the memory named like them does): a
    write to it may carry the lock's `If-Fence`, which is checked on that shard
    atomically with the write. Stable: the same arguments give the same id."""
    target = shard_for(namespace, lock_name, shards)
    if shard_for(namespace, stem, shards) == target:
        return stem
    for n in range(COLOCATE_TRIES_PER_SHARD * shards):
        candidate = f"{stem}.{n}"
        if shard_for(namespace, candidate, shards) == target:
            return candidate
    raise ValueError(f"no id for {stem!r} on the shard of lock {namespace}/{lock_name}")  # pragma: no cover


def queue_shard(namespace: str, shards: int) -> int:
    """A task queue (all the tasks of a namespace) lives on one shard, so that a
    claim sees every task at once: the shard of the empty id, which no memory
    can have."""
    return shard_for(namespace, "", shards)
