"""Per-memory version history, written by apply in each entry's own batch (so
it is replicated state: it survives restarts with the data and travels inside
snapshots), read back newest first.

The state machine delegates to this module; its keys belong here:

    h NUL ns NUL id NUL ~index(8) ~seq(4)        -> one version (JSON: event, version, index, time,
                                                    actor, and a put's record as stored), newest first
    n NUL ns NUL id                              -> {"v": [[index, seq], ...] oldest first,
                                                     "gone": removed at (ms) or null}
    r NUL g NUL gone(8) ns NUL id                -> ""   (histories of removed memories,
                                                          in compaction order)

`~x` is the bitwise complement, so a forward scan reads the newest version
first. A memory keeps its last `versions_max` versions (the oldest goes when a
new one comes: one delete, found through the `n` key, no scan). A deleted or
expired memory keeps its history (its last event says how it went) until a
`Prune(rule="history")` the leader proposes compacts it, `retain_removed_s`
after the removal; a memory written again meanwhile continues the same history.

`versions_max` comes from the config, like the change log's retention: every
replica must be given the same value, or their histories differ in depth (the
memories themselves never do).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from . import codec
from .events import Change, ChangeKind
from .storage import Batch, Store

HISTORY_PREFIX = b"h\x00"
META_PREFIX = b"n\x00"
GONE_PREFIX, GONE_END = b"r\x00g\x00", b"r\x00g\x01"
SEP = b"\x00"
_U32 = (1 << 32) - 1
_U64 = (1 << 64) - 1
# Fields of a put's record a version shows besides its value (namespace, id and
# version are the version's own; the lifecycle counters are not history).
VERSION_FIELDS = ("agent_id", "kind", "tags", "metadata", "expires_at")
HEAVY_FIELD = "emb"  # a record's embedding (search's): left out of its versions
READ_LIMIT_MAX = 1000


class Writes(Protocol):
    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...


class EntryWork(Protocol):
    """The state machine's entry in progress (or a txn's, nested in it): where
    its writes go and what it wrote so far."""

    @property
    def index(self) -> int: ...

    @property
    def batch(self) -> Writes: ...

    @property
    def overlay(self) -> dict[bytes, Any]: ...


def _key_prefix(ns: str, mid: str) -> bytes:
    return HISTORY_PREFIX + ns.encode() + SEP + mid.encode() + SEP


def _meta_key(ns: str, mid: str) -> bytes:
    return META_PREFIX + ns.encode() + SEP + mid.encode()


def _version_suffix(index: int, seq: int) -> bytes:
    return codec.u64(_U64 - index) + (_U32 - seq).to_bytes(4, "big")


def _gone_key(at_ms: int, ns: str, mid: str) -> bytes:
    return GONE_PREFIX + codec.u64(at_ms) + ns.encode() + SEP + mid.encode()


class History:
    def __init__(self, store: Store, versions_max: int) -> None:
        self.store = store
        self.versions_max = versions_max

    def _meta(self, work: EntryWork, key: bytes) -> dict[str, Any] | None:
        if key in work.overlay:
            value: dict[str, Any] | None = work.overlay[key]
            return value
        raw = self.store.get(key)
        return codec.loads(raw) if raw is not None else None

    def add(self, work: EntryWork, change: Change, actor: str | None) -> None:
        """Record `change` as the memory's newest version."""
        if self.versions_max <= 0 or change.kind is ChangeKind.RESET:
            return
        ns, mid, index = change.namespace, change.id, change.index
        key = ns.encode() + SEP + mid.encode()
        meta_key = META_PREFIX + key
        meta = self._meta(work, meta_key) or {"v": [], "gone": None}
        # Several versions of a memory in one entry (a txn's too) are told apart
        # by a sequence of their own: one past the newest of that entry kept.
        seq = max((s for i, s in meta["v"] if i == index), default=-1) + 1
        version: dict[str, Any] = {"e": change.kind.value, "v": change.version, "i": index,
                                   "t": change.time_ms, "a": actor}
        if change.kind is ChangeKind.PUT and change.record is not None:
            record = change.record
            if change.encoded is not None and HEAVY_FIELD not in record:
                # The record as apply stored it, embedded as it is (not encoded again).
                version["rec"] = codec.embedded(change.encoded)
            else:  # a version never shows the embedding: not kept versions_max times over
                version["rec"] = {k: val for k, val in record.items() if k != HEAVY_FIELD}
        prefix = HISTORY_PREFIX + key + SEP
        work.batch.put(prefix + _version_suffix(index, seq), codec.dumps(version))
        kept: list[list[int]] = [*meta["v"], [index, seq]]
        while len(kept) > self.versions_max:
            old_index, old_seq = kept.pop(0)
            work.batch.delete(prefix + _version_suffix(old_index, old_seq))
        gone = meta.get("gone")
        if gone is not None:
            work.batch.delete(_gone_key(int(gone), ns, mid))
            gone = None
        if change.kind is not ChangeKind.PUT:
            gone = change.time_ms
            work.batch.put(_gone_key(gone, ns, mid), b"")
        meta = {"v": kept, "gone": gone}
        work.overlay[meta_key] = meta
        work.batch.put(meta_key, codec.dumps(meta))

    def compact(self, work: EntryWork, batch: Batch, cutoff_ms: int, limit: int) -> int:
        """Drop the histories of memories removed at or before `cutoff_ms` (at
        most `limit`); a memory written again since keeps its history. `batch`:
        the entry's own (never a txn's: range deletes)."""
        done = 0
        for key, _ in self.store.scan(GONE_PREFIX, GONE_PREFIX + codec.u64(cutoff_ms + 1)):
            if done >= limit:
                break
            rest = key[len(GONE_PREFIX) + 8:]
            ns, mid = (part.decode() for part in rest.split(SEP, 1))
            meta_key = _meta_key(ns, mid)
            meta = self._meta(work, meta_key)
            batch.delete(key)
            if meta is None or meta.get("gone") is None or meta["gone"] > cutoff_ms:
                continue  # written again (in this entry): it lives on
            prefix = _key_prefix(ns, mid)
            batch.delete_range(prefix, prefix[:-1] + b"\x01")
            batch.delete(meta_key)
            work.overlay[meta_key] = None
            done += 1
        return done

    def compaction_due(self, cutoff_ms: int) -> bool:
        return next(self.store.scan(GONE_PREFIX, GONE_PREFIX + codec.u64(cutoff_ms + 1)), None) is not None

    def read(self, shard: int, ns: str, mid: str, limit: int) -> list[dict[str, Any]]:
        """The memory's versions, newest first, as the API shows them."""
        prefix = _key_prefix(ns, mid)
        out: list[dict[str, Any]] = []
        for _, raw in self.store.scan(prefix, prefix[:-1] + b"\x01"):
            if len(out) >= min(limit, READ_LIMIT_MAX):
                break
            out.append(public_version(shard, codec.loads(raw)))
        return out


def public_version(shard: int, stored: Mapping[str, Any]) -> dict[str, Any]:
    rec = stored.get("rec") or {}
    out: dict[str, Any] = {
        "event": stored["e"], "version": stored["v"], "token": f"{shard}:{stored['i']}",
        "time": stored["t"], "actor": stored.get("a"), "value": rec.get("content"),
    }
    if rec:
        out.update({f: rec.get(f) for f in VERSION_FIELDS})
    return out
