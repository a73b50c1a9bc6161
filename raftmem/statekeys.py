"""The key layout of a shard replica's RocksDB, and the small helpers over it.
Only the state machine (statemachine, statereads) and the modules it delegates
to (coordination, history, lifecycle) use these keys: expiry scans, restores
from a backup and lists go through their methods.

Key layout (namespace and id are `[A-Za-z0-9._:-]`, tags and agent ids have no
NUL, so NUL separates fields; times are 8-byte big-endian milliseconds so byte
order is time order):

    d NUL ns NUL id                                   -> memory (JSON)
    c NUL ns NUL created(8) id                        -> ""   (list by time)
    a NUL ns NUL agent NUL created(8) id              -> ""   (list by agent)
    t NUL ns NUL tag NUL created(8) id                -> ""   (list by tag)
    x NUL expires(8) ns NUL id                        -> ""   (expiry)
    k NUL idempotency-key                             -> first result (JSON)
    q NUL index(8) seq(4)                             -> idempotency key (eviction order)
    m NUL applied                                     -> applied index (8)
    m NUL events_from                                 -> first index the change log holds (8)
    s NUL members                                     -> membership table (shard 0 only)
    e NUL index(8) seq(4)                             -> change (JSON, Change.to_log): the change
                                                         log, the last `events_retention` indexes
    v NUL dims NUL ns                                 -> the dimension of the namespace's embeddings
                                                         on this shard (4), set by its first one

Version history and the lifecycle (their keys belong to raftmem.history and
raftmem.lifecycle, which this module delegates to; their docstrings have the
details):

    h NUL ns NUL id NUL ~index(8) ~seq(4)             -> one version of a memory, newest first
    n NUL ns NUL id                                   -> which versions it keeps; removed when
    r NUL g NUL gone(8) ns NUL id                     -> ""   (removed memories' histories)
    r NUL a NUL ns NUL minute(8) id                   -> ""   (memories by last access: pruning)

The change log is written by apply in the entry's own batch, so it is exactly
the committed changes, survives crashes with the data, and travels inside
snapshots: a watch resumes, and a derived index replays, from any replica.

Locks and task claims (their keys belong to raftmem.coordination, which
applies their commands for this module; its docstring has the details):

    L NUL ns NUL name                                 -> lock
    J NUL ns NUL id | J NUL ns NUL 0x01 state ...     -> task, tasks by state, open count
    W NUL ns NUL rank(4) order(8) id                  -> ""   (ready queue: priority, then enqueue order)
    Z NUL due(8) kind ns NUL name                     -> ""   (lease, claim, delay, retention deadlines)
    m NUL coord_clock                                 -> the shard's time (coordination.shard_now)
"""

from __future__ import annotations

from typing import Any

from . import codec, lifecycle

APPLIED_KEY = b"m\x00applied"
RECORD_FIELDS = (
    "namespace", "id", "agent_id", "kind", "content", "tags", "metadata",
    "created_at", "updated_at", "expires_at", "version",
)
# Restored as they were when the backup has them (raftmem.lifecycle's fields).
LIFECYCLE_FIELDS = ("actor", "last_accessed_at", "access_count", "ttl_s", "ttl_refresh_on_read")
IDEM_COUNT_KEY = b"m\x00idem_count"
MEMBERS_KEY = b"s\x00members"
SEP = b"\x00"


MEMORY_PREFIX, MEMORY_END = b"d\x00", b"d\x01"
EXPIRY_PREFIX, EXPIRY_END = b"x\x00", b"x\x01"
EVENT_PREFIX, EVENT_END = b"e\x00", b"e\x01"
EVENTS_FROM_KEY = b"m\x00events_from"
DIMS_PREFIX = b"v\x00dims\x00"
CREATED_PREFIX = b"c\x00"
# The change log is trimmed once it holds this many indexes past its retention
# (a fraction of it, at least this many): one range delete now and then, not one per entry.
EVENT_TRIM_SLACK_MIN = 256


def memory_key(ns: str, mid: str) -> bytes:
    return MEMORY_PREFIX + ns.encode() + SEP + mid.encode()


# What the index entries of a record are made of: an overwrite that keeps them
# all (the common case) writes no index entry.
INDEXED_FIELDS = ("created_at", "agent_id", "tags", "expires_at")


def index_keys(rec: dict[str, Any]) -> list[bytes]:
    ns = rec["namespace"].encode()
    mid = rec["id"].encode()
    ts = codec.u64(rec["created_at"])
    keys = [b"c\x00" + ns + SEP + ts + mid]
    if rec.get("agent_id"):
        keys.append(b"a\x00" + ns + SEP + rec["agent_id"].encode() + SEP + ts + mid)
    for tag in rec.get("tags") or ():
        keys.append(b"t\x00" + ns + SEP + tag.encode() + SEP + ts + mid)
    if rec.get("expires_at") is not None:
        keys.append(EXPIRY_PREFIX + codec.u64(rec["expires_at"]) + ns + SEP + mid)
    keys.append(lifecycle.idle_key(rec))
    return keys


def is_live(rec: dict[str, Any] | None, now_ms: int) -> bool:
    return rec is not None and (rec.get("expires_at") is None or rec["expires_at"] > now_ms)
