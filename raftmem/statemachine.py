"""The shard state machine: `apply(index, entry)`, `snapshot(path)`, `restore(path)`.

Rules (hashicorp/raft's FSM contract, made ours):
- `apply` is deterministic: it reads only the entry and the stored state.
  Timestamps, ids and expiry were chosen by the leader before proposing.
- `apply` never raises for a bad command: pysyncobj retries a raising apply on
  every tick forever. A bad operation becomes an error *result*.
- Data, secondary index entries and the applied index land in ONE write batch,
  and an entry at or below the applied index is skipped: replaying the log after
  a crash is harmless.

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
    s NUL members                                     -> membership table (shard 0 only)
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import codec
from .storage import Batch, Store

log = logging.getLogger(__name__)

APPLIED_KEY = b"m\x00applied"
RECORD_FIELDS = (
    "namespace", "id", "agent_id", "kind", "content", "tags", "metadata",
    "created_at", "updated_at", "expires_at", "version",
)
IDEM_COUNT_KEY = b"m\x00idem_count"
MEMBERS_KEY = b"s\x00members"
EXPIRE_OPS_MAX = 1000
SEP = b"\x00"
TIME_MAX = (1 << 64) - 1


def memory_key(ns: str, mid: str) -> bytes:
    return b"d\x00" + ns.encode() + SEP + mid.encode()


def _index_keys(rec: dict[str, Any]) -> list[bytes]:
    ns = rec["namespace"].encode()
    mid = rec["id"].encode()
    ts = codec.u64(rec["created_at"])
    keys = [b"c\x00" + ns + SEP + ts + mid]
    if rec.get("agent_id"):
        keys.append(b"a\x00" + ns + SEP + rec["agent_id"].encode() + SEP + ts + mid)
    for tag in rec.get("tags") or ():
        keys.append(b"t\x00" + ns + SEP + tag.encode() + SEP + ts + mid)
    if rec.get("expires_at") is not None:
        keys.append(b"x\x00" + codec.u64(rec["expires_at"]) + ns + SEP + mid)
    return keys


def _error(status: int, code: str, message: str, **details: Any) -> dict[str, Any]:
    error = {"code": code, "message": message}
    error.update(details)
    return {"status": status, "error": error}


def op_fingerprint(op: dict[str, Any]) -> str:
    """What makes two requests "the same" for an idempotency key: everything but
    the leader-chosen time and the key itself."""
    stable = {k: v for k, v in op.items() if k not in ("now", "idem")}
    return hashlib.blake2b(codec.dumps(stable), digest_size=12).hexdigest()


def is_live(rec: dict[str, Any] | None, now_ms: int) -> bool:
    return rec is not None and (rec.get("expires_at") is None or rec["expires_at"] > now_ms)


@dataclass
class ListQuery:
    namespace: str
    agent_id: str | None = None
    tag: str | None = None
    since_ms: int = 0
    until_ms: int = TIME_MAX
    after: tuple[int, str] | None = None  # (created_at, id) of the last item already seen
    limit: int = 100


class StateMachine:
    def __init__(self, store: Store, shard: int, idempotency_keys_max: int = 100000) -> None:
        self.store = store
        self.shard = shard
        self.idempotency_keys_max = idempotency_keys_max
        raw = store.get(APPLIED_KEY)
        self.applied_index = codec.from_u64(raw) if raw else 0

    # -- apply -----------------------------------------------------------------
    def apply(self, index: int, entry: bytes) -> dict[str, Any]:
        """Apply one log entry; returns its index and one result per operation. Never raises
        for a bad entry; a storage failure (disk full) does raise, and pysyncobj
        retries it until the disk recovers, which is the behaviour we want."""
        if index <= self.applied_index:
            return {"index": index, "results": [], "replayed": True}
        try:
            ops = codec.decode_entry(entry)
        except codec.CodecError as e:
            log.error("shard %d index %d: undecodable entry skipped: %s", self.shard, index, e)
            ops = []
            results = [_error(400, "invalid_entry", str(e))]
        else:
            results = []
        batch = Batch()
        overlay: dict[bytes, dict[str, Any] | None] = {}
        idem_added: list[str] = []
        for seq, op in enumerate(ops):
            try:
                results.append(self._apply_op(index, seq, op, batch, overlay, idem_added))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                results.append(_error(400, "invalid_operation", f"{type(e).__name__}: {e}"))
        if idem_added:
            self._evict_idempotency_keys(batch, len(idem_added))
        batch.put(APPLIED_KEY, codec.u64(index))
        self.store.commit(batch)
        self.applied_index = index
        return {"index": index, "results": results}

    def _get(self, key: bytes, overlay: dict[bytes, dict[str, Any] | None]) -> dict[str, Any] | None:
        if key in overlay:
            return overlay[key]
        raw = self.store.get(key)
        return codec.loads(raw) if raw is not None else None

    def _apply_op(
        self,
        index: int,
        seq: int,
        op: dict[str, Any],
        batch: Batch,
        overlay: dict[bytes, dict[str, Any] | None],
        idem_added: list[str],
    ) -> dict[str, Any]:
        kind = op["t"]
        if kind == "noop":
            return {"status": 200}
        if kind == "expire":
            return self._apply_expire(op, batch, overlay)
        if kind == "restore":
            return self._apply_restore(index, op, batch, overlay)
        if kind == "members":
            return self._apply_members(op, batch, overlay)
        idem = op.get("idem")
        if idem:
            fingerprint = op_fingerprint(op)  # only keyed requests are compared
            idem_key = b"k\x00" + idem.encode()
            seen = self._get(idem_key, overlay)
            if seen is not None:
                if seen["fp"] != fingerprint:
                    return _error(
                        409,
                        "idempotency_key_reused",
                        "this Idempotency-Key was used for a different request",
                    )
                result = dict(seen["result"])
                result["replayed"] = True
                return result
        if kind == "put":
            result = self._apply_put(index, op, batch, overlay)
        else:
            result = self._apply_delete(op, batch, overlay)
        if idem and result["status"] < 500:
            stored = {"fp": fingerprint, "result": result}
            overlay[idem_key] = stored
            batch.put(idem_key, codec.dumps(stored))
            batch.put(b"q\x00" + codec.u64(index) + seq.to_bytes(4, "big"), idem.encode())
            idem_added.append(idem)
        return result

    def _apply_put(
        self, index: int, op: dict[str, Any], batch: Batch, overlay: dict[bytes, dict[str, Any] | None]
    ) -> dict[str, Any]:
        ns, mid, now = op["ns"], op["id"], int(op["now"])
        key = memory_key(ns, mid)
        old = self._get(key, overlay)
        if not is_live(old, now):
            old_live = None
        else:
            old_live = old
        if op.get("if_none_match") and old_live is not None:
            return _error(412, "precondition_failed", "memory already exists", version=old_live["version"])
        if op.get("if_match") is not None:
            current = old_live["version"] if old_live else None
            if current != op["if_match"]:
                return _error(
                    412,
                    "precondition_failed",
                    f"version is {current}, If-Match wanted {op['if_match']}",
                    version=current,
                )
        fields = op["fields"]
        ttl_s = fields.get("ttl_s")
        rec = {
            "namespace": ns,
            "id": mid,
            "agent_id": fields.get("agent_id"),
            "kind": fields.get("kind"),
            "content": fields.get("content"),
            "tags": list(fields.get("tags") or []),
            "metadata": fields.get("metadata") or {},
            "created_at": old_live["created_at"] if old_live else now,
            "updated_at": now,
            "expires_at": now + int(ttl_s * 1000) if ttl_s is not None else None,
            "version": (old["version"] + 1) if old else 1,
            "rev": index,
        }
        self._write_record(key, old, rec, batch, overlay)
        return {"status": 200 if old_live else 201, "memory": rec}

    def _apply_members(
        self, op: dict[str, Any], batch: Batch, overlay: dict[bytes, dict[str, Any] | None]
    ) -> dict[str, Any]:
        """Compare-and-set of the membership table (kept in shard 0)."""
        current = self._get(MEMBERS_KEY, overlay)
        version = current["version"] if current else 0
        if op["if_version"] != version:
            return _error(412, "precondition_failed", f"membership table is at version {version}", version=version)
        table = dict(op["table"])
        table["version"] = version + 1
        batch.put(MEMBERS_KEY, codec.dumps(table))
        overlay[MEMBERS_KEY] = table
        return {"status": 200, "table": table}

    def members_table(self) -> dict[str, Any] | None:
        raw = self.store.get(MEMBERS_KEY)
        return codec.loads(raw) if raw is not None else None

    def _apply_restore(
        self, index: int, op: dict[str, Any], batch: Batch, overlay: dict[bytes, dict[str, Any] | None]
    ) -> dict[str, Any]:
        """Write a memory from a backup as it was (version, timestamps, tags),
        replacing whatever has its key."""
        src = op["rec"]
        rec = {field: src.get(field) for field in RECORD_FIELDS}
        rec["tags"] = list(rec["tags"] or [])
        rec["metadata"] = rec["metadata"] or {}
        rec["version"] = int(rec["version"])
        rec["created_at"] = int(rec["created_at"])
        rec["rev"] = index
        key = memory_key(rec["namespace"], rec["id"])
        self._write_record(key, self._get(key, overlay), rec, batch, overlay)
        return {"status": 200, "restored": True}

    def _write_record(
        self,
        key: bytes,
        old: dict[str, Any] | None,
        rec: dict[str, Any],
        batch: Batch,
        overlay: dict[bytes, dict[str, Any] | None],
    ) -> None:
        """Replace `old` (if any) by `rec`: the record and its index entries.
        Only index entries that change are written: an overwrite that keeps the
        agent, tags, creation time and expiry (the common case) writes the
        record alone, rather than a tombstone and a put for each entry."""
        new_keys = _index_keys(rec)
        if old is not None:
            old_keys = _index_keys(old)
            for k in old_keys:
                if k not in new_keys:
                    batch.delete(k)
            new_keys = [k for k in new_keys if k not in old_keys]
        for k in new_keys:
            batch.put(k, b"")
        batch.put(key, codec.dumps(rec))
        overlay[key] = rec

    def _apply_delete(
        self, op: dict[str, Any], batch: Batch, overlay: dict[bytes, dict[str, Any] | None]
    ) -> dict[str, Any]:
        ns, mid, now = op["ns"], op["id"], int(op["now"])
        key = memory_key(ns, mid)
        old = self._get(key, overlay)
        if not is_live(old, now):
            return _error(404, "not_found", f"memory {ns}/{mid} not found")
        assert old is not None
        if op.get("if_match") is not None and old["version"] != op["if_match"]:
            return _error(
                412,
                "precondition_failed",
                f"version is {old['version']}, If-Match wanted {op['if_match']}",
                version=old["version"],
            )
        self._delete_record(key, old, batch, overlay)
        return {"status": 200, "deleted": {"namespace": ns, "id": mid, "version": old["version"]}}

    def _delete_record(
        self, key: bytes, rec: dict[str, Any], batch: Batch, overlay: dict[bytes, dict[str, Any] | None]
    ) -> None:
        for k in _index_keys(rec):
            batch.delete(k)
        batch.delete(key)
        overlay[key] = None

    def _apply_expire(
        self, op: dict[str, Any], batch: Batch, overlay: dict[bytes, dict[str, Any] | None]
    ) -> dict[str, Any]:
        now = int(op["now"])
        limit = min(int(op.get("limit", EXPIRE_OPS_MAX)), EXPIRE_OPS_MAX)
        removed = 0
        for k, _ in self.store.scan(b"x\x00", b"x\x00" + codec.u64(now + 1)):
            if removed >= limit:
                break
            ns, mid = k[10:].split(SEP, 1)
            key = memory_key(ns.decode(), mid.decode())
            rec = self._get(key, overlay)
            if rec is not None and not is_live(rec, now):
                self._delete_record(key, rec, batch, overlay)
                removed += 1
        return {"status": 200, "expired": removed}

    def _evict_idempotency_keys(self, batch: Batch, added: int) -> None:
        raw = self.store.get(IDEM_COUNT_KEY)
        count = (codec.from_u64(raw) if raw else 0) + added
        excess = count - self.idempotency_keys_max
        if excess > 0:
            for qkey, idem in self.store.scan(b"q\x00", b"q\x01"):
                if excess <= 0:
                    break
                batch.delete(qkey)
                batch.delete(b"k\x00" + idem)
                excess -= 1
                count -= 1
        batch.put(IDEM_COUNT_KEY, codec.u64(count))

    # -- snapshots (the Replica seam of the consensus adapter) -----------------
    def create_checkpoint(self, directory: Path) -> None:
        self.store.create_checkpoint(directory)

    def pack_checkpoint(self, directory: Path, path: Path, meta: bytes) -> None:
        Store.pack_checkpoint(directory, path, meta)

    def read_snapshot_meta(self, path: Path) -> bytes:
        return Store.read_snapshot_meta(path)

    def install_snapshot(self, path: Path) -> None:
        """Replace the state with the snapshot's, crash-safely, in one go (both halves)."""
        self.install_staged(self.store.stage_snapshot(path))

    def stage_snapshot(self, path: Path) -> Path:
        return self.store.stage_snapshot(path)

    def install_staged(self, staged: Path) -> None:
        self.store.install_staged(staged)
        raw = self.store.get(APPLIED_KEY)
        self.applied_index = codec.from_u64(raw) if raw else 0

    # -- reads -----------------------------------------------------------------
    def get(self, ns: str, mid: str, now_ms: int) -> dict[str, Any] | None:
        raw = self.store.get(memory_key(ns, mid))
        if raw is None:
            return None
        rec = codec.loads(raw)
        return rec if is_live(rec, now_ms) else None

    def list(self, q: ListQuery, now_ms: int) -> list[dict[str, Any]]:
        ns = q.namespace.encode()
        if q.tag is not None:
            prefix = b"t\x00" + ns + SEP + q.tag.encode() + SEP
        elif q.agent_id is not None:
            prefix = b"a\x00" + ns + SEP + q.agent_id.encode() + SEP
        else:
            prefix = b"c\x00" + ns + SEP
        start = prefix + codec.u64(q.since_ms)
        if q.after is not None and q.after[0] >= q.since_ms:
            # Strictly after (created_at, id): the id byte string sorts after any
            # shorter prefix of itself, so appending NUL skips exactly that key.
            start = prefix + codec.u64(q.after[0]) + q.after[1].encode() + b"\x00"
        end = prefix + codec.u64(min(q.until_ms, TIME_MAX - 1) + 1)
        out: list[dict[str, Any]] = []
        for key, _ in self.store.scan(start, end):
            mid = key[len(prefix) + 8 :].decode()
            rec = self.get(q.namespace, mid, now_ms)
            if rec is None:
                continue
            if q.agent_id is not None and rec.get("agent_id") != q.agent_id:
                continue
            out.append(rec)
            if len(out) >= q.limit:
                break
        return out

    def iter_records(self) -> Iterator[dict[str, Any]]:
        for _, raw in self.store.scan(b"d\x00", b"d\x01"):
            yield codec.loads(raw)
