"""The shard state machine: `apply(index, entry)`, snapshots, and local reads.

Rules (hashicorp/raft's FSM contract, made ours):
- `apply` is deterministic: it reads only the entry's typed commands
  (raftmem.commands) and the stored state. Timestamps, ids and expiry were
  chosen by the leader before proposing.
- `apply` never raises for a bad command: pysyncobj retries a raising apply on
  every tick forever. A bad operation becomes an error *result* (an `Outcome`,
  never an HTTP status: the service maps outcomes once).
- Data, secondary index entries and the applied index land in ONE write batch,
  and an entry at or below the applied index is skipped: replaying the log after
  a crash is harmless, and yields no change events.
- Applying yields change events (raftmem.events) in log order, built while the
  batch is assembled and handed out only after it is written.

The key layout (its constants and helpers) is raftmem.statekeys; the reads over
it, the read seam every shard read runs on, are raftmem.statereads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import codec, embeddings, lifecycle
from .commands import (
    EXPIRE_OPS_MAX,
    AcquireLock,
    ClaimTask,
    Command,
    CoordinationCommand,
    Delete,
    Deleted,
    Expire,
    ExpireLeases,
    Get,
    Invalid,
    Noop,
    Outcome,
    Prune,
    Put,
    Restore,
    Result,
    SetMembers,
    Touch,
    Txn,
    decode_entry,
    earlier_fingerprints,
    fingerprint,
    idempotency_key,
)
from .coordination import Coordination, Notice
from .events import Change, ChangeKind
from .history import History
from .shard import ListQuery, RecordScan
from .statekeys import (
    APPLIED_KEY,
    DIMS_PREFIX,
    EVENT_END,
    EVENT_PREFIX,
    EVENT_TRIM_SLACK_MIN,
    EVENTS_FROM_KEY,
    EXPIRY_PREFIX,
    IDEM_COUNT_KEY,
    INDEXED_FIELDS,
    LIFECYCLE_FIELDS,
    MEMBERS_KEY,
    MEMORY_END,
    MEMORY_PREFIX,
    RECORD_FIELDS,
    SEP,
    index_keys,
    is_live,
    memory_key,
)
from .statereads import StateReads
from .storage import Batch, Store

log = logging.getLogger(__name__)

__all__ = [
    "EVENT_TRIM_SLACK_MIN", "Applied", "ListQuery", "RecordScan", "StateMachine", "index_keys", "is_live",
    "memory_key",
]


@dataclass
class Applied:
    """What applying one entry came to: a result per command, and the changes."""

    index: int
    results: list[Result]
    changes: list[Change] = field(default_factory=list)
    replayed: bool = False  # at or below the applied index: skipped


Overlay = dict[bytes, dict[str, Any] | None]


class _Staged:
    """Writes held back until a txn knows it applies whole (then `replay`ed
    into the entry's batch), or dropped."""

    def __init__(self) -> None:
        self.ops: list[tuple[bytes, bytes | None]] = []  # (key, value); None: a delete

    def put(self, key: bytes, value: bytes) -> None:
        self.ops.append((key, value))

    def delete(self, key: bytes) -> None:
        self.ops.append((key, None))

    def replay(self, batch: Batch | _Staged) -> None:
        for key, value in self.ops:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)


@dataclass
class _Entry:
    """One entry's apply in progress: its batch, what it wrote so far (later
    commands of the entry see earlier ones) and the changes it made."""

    index: int
    batch: Batch | _Staged = field(default_factory=Batch)
    overlay: Overlay = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    idem_added: int = 0
    notices: list[Notice] = field(default_factory=list)  # coordination wake-ups

    def nested(self) -> _Entry:
        """A txn's own apply: it sees this entry's writes so far; its writes
        stay apart until `merge`."""
        return _Entry(self.index, _Staged(), dict(self.overlay))

    def merge(self, txn: _Entry) -> None:
        assert isinstance(txn.batch, _Staged)
        txn.batch.replay(self.batch)
        self.overlay.update(txn.overlay)
        self.changes.extend(txn.changes)
        self.idem_added += txn.idem_added
        self.notices.extend(txn.notices)


# A txn's commands number their idempotency records apart from the entry's own
# (4-byte sequence numbers; an entry holds far fewer than 2**31 commands).
TXN_SEQ_BASE = 1 << 31
TXN_SEQ_SHIFT = 12


def snapshot_records(path: Path, workdir: Path) -> Iterator[dict[str, Any]]:
    """The memories in a packed snapshot (a backup's shard), without installing it."""
    for _key, raw in Store.scan_snapshot(path, MEMORY_PREFIX, MEMORY_END, workdir):
        yield codec.loads(raw)


class StateMachine(StateReads):
    """One shard replica's state; also the Replica the consensus adapter drives
    (apply, checkpoints, snapshot install)."""

    def __init__(
        self, store: Store, shard: int, idempotency_keys_max: int = 100000,
        publish: Callable[[list[Change]], None] | None = None, events_retention: int = 0,
        notify: Callable[[int, list[Notice]], None] | None = None,
        unsafe_skip_fence_check: bool = False,
        history_versions_max: int = 0,
    ) -> None:
        """`publish`: where each entry's changes go once its batch is written
        (the node's change feed); `notify`: where its coordination wake-ups go
        (locks freed, tasks ready: the leader's waiters); neither may block or
        raise. `events_retention`: how many indexes of changes the change log
        keeps (0: none). `history_versions_max`: versions of each memory kept
        (0: no history). `unsafe_skip_fence_check`: a negative control (debug
        config) only."""
        self.store = store
        self.history = History(store, history_versions_max)
        self.shard = shard
        self.idempotency_keys_max = idempotency_keys_max
        self.events_retention = events_retention
        self._publish = publish
        self._notify = notify
        self.publish_errors = 0
        self._load_marks()
        self.coordination = Coordination(store, unsafe_skip_fence_check)

    def _load_marks(self) -> None:
        raw = self.store.get(APPLIED_KEY)
        self.applied_index = codec.from_u64(raw) if raw else 0
        raw = self.store.get(EVENTS_FROM_KEY)
        # A store from before the change log holds no changes up to its applied index.
        self.events_from = codec.from_u64(raw) if raw and self.events_retention > 0 else self.applied_index + 1
        self._events_from_stored = raw is not None

    # -- apply -----------------------------------------------------------------
    def apply(self, index: int, entry: bytes) -> Applied:
        """Apply one log entry. Never raises for a bad entry; a storage failure
        (disk full) does raise, and pysyncobj retries it until the disk recovers,
        which is the behaviour we want."""
        if index <= self.applied_index:
            return Applied(index, [], replayed=True)
        results: list[Result] = []
        try:
            commands = decode_entry(entry)
        except codec.CodecError as e:
            log.error("shard %d index %d: undecodable entry skipped: %s", self.shard, index, e)
            commands = []
            results.append(Result(Outcome.INVALID_ENTRY, str(e)))
        batch = Batch()
        work = _Entry(index, batch)
        for seq, command in enumerate(commands):
            if isinstance(command, Invalid):
                results.append(Result(Outcome.INVALID_OPERATION, command.reason))
                continue
            try:
                results.append(self._apply_command(work, seq, command))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                results.append(Result(Outcome.INVALID_OPERATION, f"{type(e).__name__}: {e}"))
        if work.idem_added:
            self._evict_idempotency_keys(batch, work.idem_added)
        self._log_changes(batch, index, work.changes)
        batch.put(APPLIED_KEY, codec.u64(index))
        self.store.commit(batch)
        self.applied_index = index
        self._events_from_stored = self.events_retention > 0
        if work.changes:
            self._emit(work.changes)
        if work.notices and self._notify is not None:
            try:
                self._notify(self.shard, work.notices)
            except Exception:  # same rule as _emit: never raise out of apply
                log.exception("shard %d: waking %d coordination waiter(s) failed", self.shard, len(work.notices))
        return Applied(index, results, work.changes)

    def _log_changes(self, batch: Batch, index: int, changes: list[Change]) -> None:
        """The entry's changes into the change log, in its batch; the log trimmed
        to the retention now and then (deterministic: every replica trims at
        the same indexes, given the same config)."""
        if self.events_retention <= 0:
            self.events_from = index + 1
            if self._events_from_stored:  # logging was on before: its log goes
                batch.delete_range(EVENT_PREFIX, EVENT_END)
                batch.delete(EVENTS_FROM_KEY)
            return
        for seq, change in enumerate(changes):
            log_form = change.to_log(codec.embedded)
            batch.put(EVENT_PREFIX + codec.u64(index) + seq.to_bytes(4, "big"), codec.dumps(log_form))
        slack = max(EVENT_TRIM_SLACK_MIN, self.events_retention // 8)
        if not self._events_from_stored or index - self.events_from >= self.events_retention + slack:
            cut = max(self.events_from, index - self.events_retention + 1)
            batch.delete_range(EVENT_PREFIX + codec.u64(self.events_from), EVENT_PREFIX + codec.u64(cut))
            self.events_from = cut
            batch.put(EVENTS_FROM_KEY, codec.u64(cut))

    def _emit(self, changes: list[Change]) -> None:
        """Hand changes to the feed. Never raises: this runs inside apply, after
        the batch is written, and pysyncobj retries a raising apply forever (the
        retry would find the index applied and answer nothing)."""
        if self._publish is None:
            return
        try:
            self._publish(changes)
        except Exception:
            self.publish_errors += 1
            log.exception("shard %d: publishing %d change(s) failed", self.shard, len(changes))

    def _get(self, key: bytes, overlay: Overlay) -> dict[str, Any] | None:
        if key in overlay:
            return overlay[key]
        raw = self.store.get(key)
        return codec.loads(raw) if raw is not None else None

    def _apply_command(self, work: _Entry, seq: int, command: Command) -> Result:
        if isinstance(command, Noop):
            return Result(Outcome.APPLIED)
        if isinstance(command, Expire):
            return self._apply_expire(work, command)
        if isinstance(command, Restore):
            return self._apply_restore(work, command)
        if isinstance(command, SetMembers):
            return self._apply_members(work, command)
        if isinstance(command, Get):
            return self._apply_get(work, command)
        if isinstance(command, Txn):
            return self._apply_txn(work, seq, command)
        if isinstance(command, ExpireLeases):
            return self.coordination.apply(work, seq, command)
        if isinstance(command, Touch):
            return self._apply_touch(work, command)
        if isinstance(command, Prune):
            return self._apply_prune(work, command)
        key = idempotency_key(command)
        if key is None:
            return self._apply_write(work, seq, command)
        # Only keyed requests are compared: a retry gets the first result.
        fp = fingerprint(command)
        idem_key = b"k\x00" + key.encode()
        seen = self._get(idem_key, work.overlay)
        if seen is not None:
            if seen["fp"] != fp and seen["fp"] not in earlier_fingerprints(command):
                return Result(Outcome.IDEMPOTENCY_KEY_REUSED, "this Idempotency-Key was used for a different request")
            first = replace(Result.from_wire(seen["result"]), replayed=True)
            if isinstance(command, AcquireLock | ClaimTask):
                return self.coordination.replayed(work, command, first)
            return first
        result = self._apply_write(work, seq, command)
        if result.outcome.busy:
            return result  # nothing changed: a retry with this key tries again
        stored = {"fp": fp, "result": result.to_wire()}
        work.overlay[idem_key] = stored
        work.batch.put(idem_key, codec.dumps(stored))
        work.batch.put(b"q\x00" + codec.u64(work.index) + seq.to_bytes(4, "big"), key.encode())
        work.idem_added += 1
        return result

    def _apply_get(self, work: _Entry, op: Get) -> Result:
        rec = self._get(memory_key(op.namespace, op.id), work.overlay)
        if not is_live(rec, op.now_ms):
            return Result(Outcome.NOT_FOUND, f"memory {op.namespace}/{op.id} not found")
        return Result(Outcome.READ, memory=rec)

    def _apply_txn(self, work: _Entry, seq: int, txn: Txn) -> Result:
        """All or none: the commands apply on a nested entry, merged into this
        one only if every one of them succeeds (a get that finds nothing is
        not a failure)."""
        nested = work.nested()
        results: list[Result] = []
        for i, op in enumerate(txn.ops):
            result = self._apply_command(nested, TXN_SEQ_BASE | (seq << TXN_SEQ_SHIFT) | i, op)
            results.append(result)
            if not result.outcome.ok and not (isinstance(op, Get) and result.outcome is Outcome.NOT_FOUND):
                skipped = Result(Outcome.ABORTED, f"not applied: operation {i} of the txn failed")
                undone = [r if j == i or isinstance(txn.ops[j], Get) else skipped for j, r in enumerate(results)]
                undone += [skipped] * (len(txn.ops) - len(results))
                return Result(Outcome.ABORTED, f"operation {i} failed ({result.outcome.value}): nothing applied",
                              results=tuple(undone))
        work.merge(nested)
        return Result(Outcome.APPLIED, results=tuple(results))

    def _apply_write(self, work: _Entry, seq: int, command: Put | Delete | CoordinationCommand) -> Result:
        if isinstance(command, Put):
            return self._apply_put(work, command)
        if isinstance(command, Delete):
            return self._apply_delete(work, command)
        return self.coordination.apply(work, seq, command)

    def _apply_put(self, work: _Entry, op: Put) -> Result:
        ns, mid, now = op.namespace, op.id, op.now_ms
        if op.if_fence is not None and (refusal := self.coordination.fence_refusal(work, op.if_fence, now)):
            return refusal
        key = memory_key(ns, mid)
        old = self._get(key, work.overlay)
        old_live = old if is_live(old, now) else None
        if op.if_none_match and old_live is not None:
            return Result(Outcome.PRECONDITION_FAILED, "memory already exists", version=old_live["version"])
        if op.if_match is not None:
            current = old_live["version"] if old_live else None
            if current != op.if_match:
                return Result(
                    Outcome.PRECONDITION_FAILED, f"version is {current}, If-Match wanted {op.if_match}",
                    version=current,
                )
        fields = op.fields
        if fields.embedding is not None:
            refused = self._check_dims(work, ns, embeddings.dims(fields.embedding))
            if refused is not None:
                return refused
        rec = {
            "namespace": ns,
            "id": mid,
            "agent_id": fields.agent_id,
            "kind": fields.kind,
            "content": fields.content,
            "tags": list(fields.tags),
            "metadata": dict(fields.metadata),
            "created_at": old_live["created_at"] if old_live else now,
            "updated_at": now,
            "expires_at": now + int(fields.ttl_s * 1000) if fields.ttl_s is not None else None,
            "version": (old["version"] + 1) if old else 1,
            "rev": work.index,
        }
        if fields.embedding is not None:
            rec["emb"] = fields.embedding
        lifecycle.stamp_put(rec, fields, old_live, now)
        self._write_record(work, key, old, rec, old_live)
        return Result(Outcome.UPDATED if old_live else Outcome.CREATED, memory=rec)

    def _check_dims(self, work: _Entry, ns: str, dims: int) -> Result | None:
        """A namespace's embeddings have one dimension (its first one's, on this
        shard): a put with another is refused, deterministically."""
        key = DIMS_PREFIX + ns.encode()
        known = self._get(key, work.overlay)
        if known is None:
            work.overlay[key] = {"dims": dims}
            work.batch.put(key, codec.dumps({"dims": dims}))
        elif known["dims"] != dims:
            return Result(Outcome.INVALID_OPERATION,
                          f"embedding has {dims} dimensions; namespace {ns} holds embeddings of {known['dims']}")
        return None

    def _apply_members(self, work: _Entry, op: SetMembers) -> Result:
        """Compare-and-set of the membership table (kept in shard 0)."""
        current = self._get(MEMBERS_KEY, work.overlay)
        version = current["version"] if current else 0
        if op.if_version != version:
            return Result(Outcome.PRECONDITION_FAILED, f"membership table is at version {version}", version=version)
        table = dict(op.table)
        table["version"] = version + 1
        work.batch.put(MEMBERS_KEY, codec.dumps(table))
        work.overlay[MEMBERS_KEY] = table
        return Result(Outcome.APPLIED, table=table)

    def _apply_restore(self, work: _Entry, op: Restore) -> Result:
        """Write a memory from a backup as it was (version, timestamps, tags),
        replacing whatever has its key."""
        src = op.record
        rec: dict[str, Any] = {name: src.get(name) for name in RECORD_FIELDS}
        rec["tags"] = list(rec["tags"] or [])
        rec["metadata"] = rec["metadata"] or {}
        rec["version"] = int(rec["version"])
        rec["created_at"] = int(rec["created_at"])
        rec.update({name: src[name] for name in LIFECYCLE_FIELDS if src.get(name) is not None})
        rec["rev"] = work.index
        if src.get("emb"):
            rec["emb"] = src["emb"]
        key = memory_key(rec["namespace"], rec["id"])
        old = self._get(key, work.overlay)
        self._write_record(work, key, old, rec, old)
        return Result(Outcome.APPLIED, restored=True)

    def _write_record(
        self, work: _Entry, key: bytes, old: dict[str, Any] | None, rec: dict[str, Any],
        old_live: dict[str, Any] | None,
    ) -> None:
        """Replace `old` (if any) by `rec`, a new version: the record, its index
        entries, its change and its history."""
        encoded = self._replace_record(work, key, old, rec)
        change = Change(
            ChangeKind.PUT, self.shard, work.index, rec["namespace"], rec["id"], old_live, rec,
            time_ms=int(rec.get("updated_at") or 0),
            prev_version=int(old_live["version"]) if old_live is not None else None, encoded=encoded,
        )
        work.changes.append(change)
        self.history.add(work, change, rec.get("actor"))

    def _replace_record(self, work: _Entry, key: bytes, old: dict[str, Any] | None, rec: dict[str, Any]) -> bytes:
        """The record and its index entries; returns the record as stored. Only
        index entries that change are written: an overwrite that keeps the
        agent, tags, creation time, expiry and minute of last access (the
        common case) writes the record alone, rather than a tombstone and a put
        for each entry."""
        if old is None or any(old.get(f) != rec.get(f) for f in INDEXED_FIELDS) or lifecycle.idle_moved(old, rec):
            new_keys = index_keys(rec)
            if old is not None:
                old_keys = index_keys(old)
                for k in old_keys:
                    if k not in new_keys:
                        work.batch.delete(k)
                new_keys = [k for k in new_keys if k not in old_keys]
            for k in new_keys:
                work.batch.put(k, b"")
        encoded = codec.dumps(rec)
        work.batch.put(key, encoded)
        work.overlay[key] = rec
        return encoded

    def _apply_delete(self, work: _Entry, op: Delete) -> Result:
        ns, mid, now = op.namespace, op.id, op.now_ms
        if op.if_fence is not None and (refusal := self.coordination.fence_refusal(work, op.if_fence, now)):
            return refusal
        key = memory_key(ns, mid)
        old = self._get(key, work.overlay)
        if old is None or not is_live(old, now):
            return Result(Outcome.NOT_FOUND, f"memory {ns}/{mid} not found")
        if op.if_match is not None and old["version"] != op.if_match:
            return Result(
                Outcome.PRECONDITION_FAILED, f"version is {old['version']}, If-Match wanted {op.if_match}",
                version=old["version"],
            )
        self._delete_record(work, key, old, ChangeKind.DELETE, now, op.actor)
        return Result(Outcome.DELETED, deleted=Deleted(ns, mid, old["version"]))

    def _delete_record(
        self, work: _Entry, key: bytes, rec: dict[str, Any], kind: ChangeKind, now_ms: int, actor: str | None = None,
    ) -> None:
        for k in index_keys(rec):
            work.batch.delete(k)
        work.batch.delete(key)
        work.overlay[key] = None
        change = Change(kind, self.shard, work.index, rec["namespace"], rec["id"], rec, None, time_ms=now_ms)
        work.changes.append(change)
        self.history.add(work, change, actor)

    def _apply_touch(self, work: _Entry, op: Touch) -> Result:
        """Reads recorded (raftmem.lifecycle): counters, last access, and sliding
        TTLs extended. Not a new version: no change event, no history."""
        touched = 0
        for item in op.items:
            key = memory_key(item.namespace, item.id)
            old = self._get(key, work.overlay)
            if old is not None and is_live(old, op.now_ms):
                self._replace_record(work, key, old, lifecycle.touched(old, item, op.now_ms))
                touched += 1
        return Result(Outcome.APPLIED, expired=touched)

    def _apply_prune(self, work: _Entry, op: Prune) -> Result:
        """A lifecycle policy's removals, each re-checked here against the rule
        the leader proposed (raftmem.lifecycle), or histories compacted."""
        if op.rule == "history":
            batch = work.batch  # a prune is never part of a txn: the entry's own batch
            compacted = self.history.compact(work, batch, op.cutoff_ms, EXPIRE_OPS_MAX) if isinstance(batch, Batch) else 0
            return Result(Outcome.APPLIED, expired=compacted)
        removed = 0
        left: dict[tuple[str, str], int] = {}  # count rule: live memories per (namespace, agent)
        for ns, mid, version in op.targets:
            key = memory_key(ns, mid)
            rec = self._get(key, work.overlay)
            if rec is None or not is_live(rec, op.now_ms):
                continue
            if op.rule == "idle":
                if not lifecycle.idle_removable(rec, op, version):
                    continue
            else:
                group = (ns, str(rec.get("agent_id") or ""))
                if group not in left:
                    getter: lifecycle.Getter = lambda n, m: self._live(n, m, work, op.now_ms)  # noqa: E731
                    left[group] = len(lifecycle.agent_memories(self.store, getter, ns, group[1], op.tag))
                if int(rec["version"]) != version or not lifecycle.matches(op.tag, rec) or left[group] <= op.keep:
                    continue
                left[group] -= 1
            self._delete_record(work, key, rec, ChangeKind.EXPIRE, op.now_ms, f"policy:{op.policy}")
            removed += 1
        return Result(Outcome.APPLIED, expired=removed)

    def _live(self, ns: str, mid: str, work: _Entry, now_ms: int) -> dict[str, Any] | None:
        rec = self._get(memory_key(ns, mid), work.overlay)
        return rec if is_live(rec, now_ms) else None

    def _apply_expire(self, work: _Entry, op: Expire) -> Result:
        now = op.now_ms
        limit = op.bounded_limit
        removed = 0
        for k, _ in self.store.scan(EXPIRY_PREFIX, EXPIRY_PREFIX + codec.u64(now + 1)):
            if removed >= limit:
                break
            ns, mid = k[len(EXPIRY_PREFIX) + 8:].split(SEP, 1)
            key = memory_key(ns.decode(), mid.decode())
            rec = self._get(key, work.overlay)
            if rec is not None and not is_live(rec, now):
                self._delete_record(work, key, rec, ChangeKind.EXPIRE, now)
                removed += 1
        return Result(Outcome.APPLIED, expired=removed)

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

    def verify_snapshot(self, path: Path) -> None:
        Store.verify_snapshot(path)

    def stage_snapshot(self, path: Path, verify: bool = True) -> Path:
        return self.store.stage_snapshot(path, verify)

    def install_staged(self, staged: Path, must_exist: bool = True) -> None:
        self.store.install_staged(staged, must_exist)
        self._load_marks()
        self._emit([Change(ChangeKind.RESET, self.shard, self.applied_index)])
