"""Every command the Raft log carries, as a typed dataclass, and what applying one
can come to (a `Result` with a domain `Outcome`, never an HTTP status).

Adding a command means: one dataclass here (with its wire tag and `to_wire` /
`from_wire`), one apply method in the state machine, one handler in the service.

The wire form is the log's format v1 (`codec.encode_entry`): an entry is
`{"ops": [...]}` and each command a JSON object tagged `"t"`. The dataclasses
write exactly the objects the untyped code wrote before them, key order
included, so journals, snapshots and stored idempotency fingerprints from
before the change decode and compare as they did.

Times (`now_ms`) are chosen by the leader before proposing: apply never reads a
clock. Results stored for an idempotency key keep the form the first version
wrote (`Result.to_wire` / `from_wire`), so stores stay readable both ways.

This module imports only `codec` from the package.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, ClassVar

from . import codec

EXPIRE_OPS_MAX = 1000


# -- commands ---------------------------------------------------------------------
@dataclass(frozen=True)
class MemoryFields:
    """What a client sets on a memory (validated before it gets here)."""

    content: Any = None
    agent_id: str | None = None
    kind: str | None = None
    tags: tuple[str, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)
    ttl_s: float | None = None
    # base64 of little-endian float32 (raftmem.embeddings); on the wire only when set
    embedding: str | None = None
    # Written only when set, so older entries and their fingerprints keep their bytes.
    actor: str | None = None  # who wrote it (history)
    ttl_refresh_on_read: bool = False  # a sliding TTL: reads extend it (raftmem.lifecycle)

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.agent_id is not None:
            out["agent_id"] = self.agent_id
        if self.kind is not None:
            out["kind"] = self.kind
        out["content"] = self.content
        out["tags"] = list(self.tags)
        out["metadata"] = dict(self.metadata)
        if self.ttl_s is not None:
            out["ttl_s"] = self.ttl_s
        if self.embedding is not None:
            out["embedding"] = self.embedding
        if self.actor is not None:
            out["actor"] = self.actor
        if self.ttl_refresh_on_read:
            out["ttl_refresh_on_read"] = True
        return out

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> MemoryFields:
        ttl = data.get("ttl_s")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int | float)):
            raise TypeError(f"ttl_s must be a number, got {ttl!r}")
        tags = data.get("tags") or ()
        if not isinstance(tags, list | tuple) or not all(isinstance(t, str) for t in tags):
            raise TypeError("tags must be a list of strings")
        return cls(
            content=data.get("content"),
            agent_id=_opt_str(data, "agent_id"),
            kind=_opt_str(data, "kind"),
            tags=tuple(tags),
            metadata=dict(data.get("metadata") or {}),
            ttl_s=ttl,
            embedding=_opt_str(data, "embedding"),
            actor=_opt_str(data, "actor"),
            ttl_refresh_on_read=bool(data.get("ttl_refresh_on_read")),
        )


@dataclass(frozen=True)
class Fence:
    """`If-Fence: <namespace>/<name>:<fence>` on a write: it applies only while
    that lock is held with exactly that fence (checked in apply, with the write)."""

    namespace: str
    name: str
    fence: int

    def to_wire(self) -> list[Any]:
        return [self.namespace, self.name, self.fence]

    @classmethod
    def from_wire(cls, value: Any) -> Fence | None:
        if value is None:
            return None
        ns, name, fence = value
        if not isinstance(ns, str) or not isinstance(name, str) or isinstance(fence, bool) or not isinstance(fence, int):
            raise TypeError(f"fence must be [namespace, name, integer], got {value!r}")
        return cls(ns, name, fence)


def _with_fence(wire: dict[str, Any], fence: Fence | None) -> dict[str, Any]:
    """The key is written only when set: older entries, and their idempotency
    fingerprints, stay byte for byte what they were."""
    if fence is not None:
        wire["fence"] = fence.to_wire()
    return wire


@dataclass(frozen=True)
class Put:
    """Upsert a memory; `if_match` (a version) or `if_none_match` (create only)."""

    TAG: ClassVar[str] = "put"
    namespace: str
    id: str
    fields: MemoryFields
    if_match: int | None = None
    if_none_match: bool = False
    idempotency_key: str | None = None
    now_ms: int = 0
    if_fence: Fence | None = None

    def to_wire(self) -> dict[str, Any]:
        return _with_fence({
            "t": self.TAG, "ns": self.namespace, "id": self.id, "fields": self.fields.to_wire(),
            "if_match": self.if_match, "if_none_match": self.if_none_match,
            "idem": self.idempotency_key, "now": self.now_ms,
        }, self.if_fence)

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Put:
        fields = d["fields"]
        if not isinstance(fields, Mapping):
            raise TypeError("fields must be an object")
        return cls(
            namespace=_str(d, "ns"), id=_str(d, "id"), fields=MemoryFields.from_wire(fields),
            if_match=_opt_int(d, "if_match"), if_none_match=bool(d.get("if_none_match")),
            idempotency_key=_opt_str(d, "idem"), now_ms=_int(d, "now"), if_fence=Fence.from_wire(d.get("fence")),
        )


@dataclass(frozen=True)
class Delete:
    TAG: ClassVar[str] = "delete"
    namespace: str
    id: str
    if_match: int | None = None
    idempotency_key: str | None = None
    now_ms: int = 0
    if_fence: Fence | None = None
    actor: str | None = None  # who deleted it (history); on the wire only when set

    def to_wire(self) -> dict[str, Any]:
        out = _with_fence({
            "t": self.TAG, "ns": self.namespace, "id": self.id, "if_match": self.if_match,
            "idem": self.idempotency_key, "now": self.now_ms,
        }, self.if_fence)
        if self.actor is not None:
            out["actor"] = self.actor
        return out

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Delete:
        return cls(
            namespace=_str(d, "ns"), id=_str(d, "id"), if_match=_opt_int(d, "if_match"),
            idempotency_key=_opt_str(d, "idem"), now_ms=_int(d, "now"), if_fence=Fence.from_wire(d.get("fence")),
            actor=_opt_str(d, "actor"),
        )


@dataclass(frozen=True)
class Noop:
    """A read barrier (an entry of the leader's term, committed after the reads)."""

    TAG: ClassVar[str] = "noop"

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG}

    @classmethod
    def from_wire(cls, _d: Mapping[str, Any]) -> Noop:
        return cls()


@dataclass(frozen=True)
class Expire:
    """Delete memories whose expiry is at or before `now_ms` (at most `limit`)."""

    TAG: ClassVar[str] = "expire"
    now_ms: int
    limit: int | None = None

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"t": self.TAG, "now": self.now_ms}
        if self.limit is not None:
            out["limit"] = self.limit
        return out

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Expire:
        return cls(now_ms=_int(d, "now"), limit=_opt_int(d, "limit"))

    @property
    def bounded_limit(self) -> int:
        return min(self.limit if self.limit is not None else EXPIRE_OPS_MAX, EXPIRE_OPS_MAX)


@dataclass(frozen=True)
class Restore:
    """Write a memory from a backup as it was (version, timestamps, tags)."""

    TAG: ClassVar[str] = "restore"
    record: Mapping[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "rec": dict(self.record)}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Restore:
        rec = d["rec"]
        if not isinstance(rec, Mapping):
            raise TypeError("rec must be an object")
        return cls(record=dict(rec))


@dataclass(frozen=True)
class SetMembers:
    """Compare-and-set of the membership table (kept in shard 0)."""

    TAG: ClassVar[str] = "members"
    table: Mapping[str, Any]
    if_version: int
    now_ms: int = 0  # stamped like every write (unused by apply)

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "table": dict(self.table), "if_version": self.if_version, "now": self.now_ms}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> SetMembers:
        table = d["table"]
        if not isinstance(table, Mapping):
            raise TypeError("table must be an object")
        return cls(table=dict(table), if_version=_int(d, "if_version"), now_ms=int(d.get("now") or 0))


@dataclass(frozen=True)
class Get:
    """Read one memory inside an entry, after the entry's earlier commands: a
    batch's read sees the batch's earlier writes of the same key."""

    TAG: ClassVar[str] = "get"
    namespace: str
    id: str
    now_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "ns": self.namespace, "id": self.id, "now": self.now_ms}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Get:
        return cls(namespace=_str(d, "ns"), id=_str(d, "id"), now_ms=_int(d, "now"))


TxnOp = Put | Delete | Get
TXN_OPS_MAX = 1000


@dataclass(frozen=True)
class Txn:
    """Commands of one shard applied all or none (an atomic batch): the first
    that fails (a precondition, a memory to delete that is not there) undoes
    those before it, and the rest are not tried."""

    TAG: ClassVar[str] = "txn"
    ops: tuple[TxnOp, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "ops": [op.to_wire() for op in self.ops]}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Txn:
        raw = d["ops"]
        if not isinstance(raw, list) or not 0 < len(raw) <= TXN_OPS_MAX:
            raise TypeError(f"ops must be a list of 1 to {TXN_OPS_MAX} operations")
        ops: list[TxnOp] = []
        for op in raw:
            tag = op.get("t") if isinstance(op, Mapping) else None
            if tag == Put.TAG:
                ops.append(Put.from_wire(op))
            elif tag == Delete.TAG:
                ops.append(Delete.from_wire(op))
            elif tag == Get.TAG:
                ops.append(Get.from_wire(op))
            else:
                raise TypeError("a txn holds only put, delete and get")
        return cls(tuple(ops))


# -- coordination: locks and task claims (applied by raftmem.coordination) ---------
@dataclass(frozen=True)
class AcquireLock:
    """Take `namespace/name` for `holder` for `ttl_ms` unless someone holds it."""

    TAG: ClassVar[str] = "lock_acquire"
    namespace: str
    name: str
    holder: str
    ttl_ms: int
    idempotency_key: str | None = None
    now_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "ns": self.namespace, "name": self.name, "holder": self.holder,
                "ttl": self.ttl_ms, "idem": self.idempotency_key, "now": self.now_ms}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> AcquireLock:
        return cls(_str(d, "ns"), _str(d, "name"), _str(d, "holder"), _int(d, "ttl"),
                   _opt_str(d, "idem"), _int(d, "now"))


@dataclass(frozen=True)
class RenewLock:
    """Extend the lease of the holder of `fence` to `ttl_ms` from now."""

    TAG: ClassVar[str] = "lock_renew"
    namespace: str
    name: str
    fence: int
    ttl_ms: int
    idempotency_key: str | None = None
    now_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "ns": self.namespace, "name": self.name, "fence": self.fence,
                "ttl": self.ttl_ms, "idem": self.idempotency_key, "now": self.now_ms}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> RenewLock:
        return cls(_str(d, "ns"), _str(d, "name"), _int(d, "fence"), _int(d, "ttl"),
                   _opt_str(d, "idem"), _int(d, "now"))


@dataclass(frozen=True)
class ReleaseLock:
    TAG: ClassVar[str] = "lock_release"
    namespace: str
    name: str
    fence: int
    idempotency_key: str | None = None
    now_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "ns": self.namespace, "name": self.name, "fence": self.fence,
                "idem": self.idempotency_key, "now": self.now_ms}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> ReleaseLock:
        return cls(_str(d, "ns"), _str(d, "name"), _int(d, "fence"), _opt_str(d, "idem"), _int(d, "now"))


@dataclass(frozen=True)
class TaskSpec:
    """A task as enqueued. It is ready at `not_before_ms` (wall time) or
    `delay_ms` after the enqueue's own time, whichever is later. The retry
    policy and bounds are the leader's choice (config), in the log so that a
    replay decides the same."""

    payload: Any = None
    priority: int = 0
    not_before_ms: int = 0
    delay_ms: int = 0
    max_attempts: int = 3
    backoff_ms: int = 1000
    retain_ms: int = 7 * 24 * 3600 * 1000  # done and dead tasks are kept this long
    open_max: int = 100_000  # ready + claimed tasks in the queue, at most

    def to_wire(self) -> dict[str, Any]:
        return {"payload": self.payload, "prio": self.priority, "not_before": self.not_before_ms,
                "delay": self.delay_ms, "attempts_max": self.max_attempts, "backoff": self.backoff_ms,
                "retain": self.retain_ms, "open_max": self.open_max}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> TaskSpec:
        return cls(d.get("payload"), _int(d, "prio"), _int(d, "not_before"), _int(d, "delay"),
                   _int(d, "attempts_max"), _int(d, "backoff"), _int(d, "retain"), _int(d, "open_max"))


@dataclass(frozen=True)
class EnqueueTask:
    TAG: ClassVar[str] = "task_add"
    namespace: str
    id: str
    spec: TaskSpec
    idempotency_key: str | None = None
    now_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "ns": self.namespace, "id": self.id, "spec": self.spec.to_wire(),
                "idem": self.idempotency_key, "now": self.now_ms}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> EnqueueTask:
        spec = d["spec"]
        if not isinstance(spec, Mapping):
            raise TypeError("spec must be an object")
        return cls(_str(d, "ns"), _str(d, "id"), TaskSpec.from_wire(spec), _opt_str(d, "idem"), _int(d, "now"))


@dataclass(frozen=True)
class ClaimTask:
    """Claim the highest-priority, oldest ready task of the queue for `lease_ms`."""

    TAG: ClassVar[str] = "task_claim"
    namespace: str
    worker: str
    lease_ms: int
    idempotency_key: str | None = None
    now_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "ns": self.namespace, "worker": self.worker, "lease": self.lease_ms,
                "idem": self.idempotency_key, "now": self.now_ms}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> ClaimTask:
        return cls(_str(d, "ns"), _str(d, "worker"), _int(d, "lease"), _opt_str(d, "idem"), _int(d, "now"))


@dataclass(frozen=True)
class SettleTask:
    """What the holder of a claim's `fence` does with it: `complete` (with a
    result), `fail` (retry with back-off, or dead-letter when `retry` is false or
    the attempts are used up; `charge` false gives the claim back without
    counting an attempt), or `extend` the claim to `lease_ms` from now."""

    TAG: ClassVar[str] = "task_settle"
    ACTIONS: ClassVar[tuple[str, ...]] = ("complete", "fail", "extend")
    namespace: str
    id: str
    fence: int
    action: str
    result: Any = None  # complete: the result; fail: the error message
    lease_ms: int = 0  # extend
    retry: bool = True  # fail
    charge: bool = True  # fail
    idempotency_key: str | None = None
    now_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "ns": self.namespace, "id": self.id, "fence": self.fence, "action": self.action,
                "result": self.result, "lease": self.lease_ms, "retry": self.retry, "charge": self.charge,
                "idem": self.idempotency_key, "now": self.now_ms}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> SettleTask:
        action = _str(d, "action")
        if action not in cls.ACTIONS:
            raise ValueError(f"unknown task action {action!r}")
        return cls(_str(d, "ns"), _str(d, "id"), _int(d, "fence"), action, d.get("result"), _int(d, "lease"),
                   bool(d.get("retry")), bool(d.get("charge")), _opt_str(d, "idem"), _int(d, "now"))


@dataclass(frozen=True)
class ExpireLeases:
    """Decide every lock lease, task claim, delay and retention due at or before
    `now_ms` (at most `limit`): proposed by the leader when its clock says so."""

    TAG: ClassVar[str] = "lease_expire"
    now_ms: int
    limit: int = EXPIRE_OPS_MAX

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "now": self.now_ms, "limit": self.limit}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> ExpireLeases:
        return cls(_int(d, "now"), min(_int(d, "limit"), EXPIRE_OPS_MAX))


# -- lifecycle: reads recorded, memories pruned (applied with raftmem.lifecycle) ----
TOUCH_ITEMS_MAX = 1000
PRUNE_TARGETS_MAX = 1000


@dataclass(frozen=True)
class TouchItem:
    """The reads of one memory a replica served since its last flush."""

    namespace: str
    id: str
    reads: int
    last_ms: int  # the latest read, on the serving node's clock
    refresh: bool  # its sliding TTL is due for a refresh

    def to_wire(self) -> list[Any]:
        return [self.namespace, self.id, self.reads, self.last_ms, 1 if self.refresh else 0]

    @classmethod
    def from_wire(cls, value: Any) -> TouchItem:
        ns, mid, reads, last_ms, refresh = value
        if not isinstance(ns, str) or not isinstance(mid, str):
            raise TypeError(f"touch item must be [namespace, id, reads, last_ms, refresh], got {value!r:.80}")
        return cls(ns, mid, _int({"reads": reads}, "reads"), _int({"last": last_ms}, "last"), bool(refresh))


@dataclass(frozen=True)
class Touch:
    """Record coalesced reads (access counts, last access, sliding-TTL
    refreshes): one log entry per shard and node and flush, not one per read."""

    TAG: ClassVar[str] = "touch"
    items: tuple[TouchItem, ...]
    now_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "items": [i.to_wire() for i in self.items], "now": self.now_ms}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Touch:
        items = d["items"]
        if not isinstance(items, list) or len(items) > TOUCH_ITEMS_MAX:
            raise TypeError(f"items must be a list of at most {TOUCH_ITEMS_MAX}")
        return cls(tuple(TouchItem.from_wire(i) for i in items), _int(d, "now"))


@dataclass(frozen=True)
class Prune:
    """Remove memories a lifecycle policy selected, re-checked in apply against
    the rule the leader chose before proposing: `idle` (last access at or before
    `cutoff_ms`), `count` (while the agent has more than `keep`), or `history`
    (compact the histories of memories removed at or before `cutoff_ms`)."""

    TAG: ClassVar[str] = "prune"
    RULES: ClassVar[tuple[str, ...]] = ("idle", "count", "history")
    policy: str
    rule: str
    cutoff_ms: int = 0
    keep: int = 0
    tag: str | None = None
    targets: tuple[tuple[str, str, int], ...] = ()  # (namespace, id, version)
    now_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "policy": self.policy, "rule": self.rule, "cutoff": self.cutoff_ms,
                "keep": self.keep, "tag": self.tag, "targets": [list(t) for t in self.targets], "now": self.now_ms}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Prune:
        rule = _str(d, "rule")
        if rule not in cls.RULES:
            raise ValueError(f"unknown prune rule {rule!r}")
        targets = d["targets"]
        if not isinstance(targets, list) or len(targets) > PRUNE_TARGETS_MAX:
            raise TypeError(f"targets must be a list of at most {PRUNE_TARGETS_MAX}")
        clean = []
        for ns, mid, version in targets:
            if not isinstance(ns, str) or not isinstance(mid, str):
                raise TypeError("a target is [namespace, id, version]")
            clean.append((ns, mid, _int({"v": version}, "v")))
        return cls(_str(d, "policy"), rule, _int(d, "cutoff"), _int(d, "keep"), _opt_str(d, "tag"),
                   tuple(clean), _int(d, "now"))


Command = (
    Put | Delete | Noop | Expire | Restore | SetMembers | Get | Txn
    | AcquireLock | RenewLock | ReleaseLock | EnqueueTask | ClaimTask | SettleTask | ExpireLeases
    | Touch | Prune
)
CoordinationCommand = AcquireLock | RenewLock | ReleaseLock | EnqueueTask | ClaimTask | SettleTask | ExpireLeases
_CLASSES: tuple[type[Command], ...] = (
    Put, Delete, Noop, Expire, Restore, SetMembers, Get, Txn,
    AcquireLock, RenewLock, ReleaseLock, EnqueueTask, ClaimTask, SettleTask, ExpireLeases,
    Touch, Prune,
)
COMMANDS: dict[str, Any] = {cls.TAG: cls for cls in _CLASSES}
assert set(COMMANDS) == codec.OP_TYPES, "every wire tag has one command class"
# Commands stamped with the leader's time before proposing, and those that
# carry a client's Idempotency-Key.
_STAMPED = (
    Put, Delete, SetMembers, Get, AcquireLock, RenewLock, ReleaseLock, EnqueueTask, ClaimTask, SettleTask, Touch, Prune,
)
_KEYED = (Put, Delete, AcquireLock, RenewLock, ReleaseLock, EnqueueTask, ClaimTask, SettleTask)


@dataclass(frozen=True)
class Invalid:
    """An operation of a known type that does not decode: applied as an error
    result, so the rest of its entry still applies (apply never raises)."""

    reason: str


def stamped(command: Command, now_ms: int) -> Command:
    """The command with the leader's time, for the commands that carry one."""
    if isinstance(command, _STAMPED):
        return replace(command, now_ms=now_ms)
    if isinstance(command, Txn):
        return Txn(tuple(replace(op, now_ms=now_ms) for op in command.ops))
    return command


def idempotency_key(command: Command) -> str | None:
    return command.idempotency_key if isinstance(command, _KEYED) else None


# What an enqueue's client chooses (of TaskSpec.to_wire): the rest (attempts and
# back-off when not given, retention, the queue bound) is the leader's config.
ENQUEUE_CLIENT_FIELDS = ("payload", "prio", "not_before", "delay")


def fingerprint(command: Command) -> str:
    """What makes two requests "the same" for an idempotency key: everything but
    the leader-chosen time and the key itself (as computed before commands were
    typed, so keys stored then still match). An enqueue's covers only what its
    client chose: a retry through a node whose coordination config differs is
    the same request (so an enqueue's max_attempts and backoff_ms, which the
    leader fills in when not given, are not compared either)."""
    if isinstance(command, EnqueueTask):
        spec = command.spec.to_wire()
        return _digest({"t": command.TAG, "ns": command.namespace, "id": command.id,
                        "spec": {k: spec[k] for k in ENQUEUE_CLIENT_FIELDS}})
    return _digest(_stable(command))


def earlier_fingerprints(command: Command) -> tuple[str, ...]:
    """Fingerprints an earlier version stored keys under for this command (the
    first enqueue fingerprint covered the whole spec): still the same request."""
    return (_digest(_stable(command)),) if isinstance(command, EnqueueTask) else ()


def _stable(command: Command) -> dict[str, Any]:
    return {k: v for k, v in command.to_wire().items() if k not in ("now", "idem")}


def _digest(stable: dict[str, Any]) -> str:
    return hashlib.blake2b(codec.dumps(stable), digest_size=12).hexdigest()


def encode_entry(commands: Sequence[Command]) -> bytes:
    return codec.encode_entry([c.to_wire() for c in commands])


def decode_entry(data: bytes) -> list[Command | Invalid]:
    """Raises codec.CodecError for an entry that is not ours at all; an operation
    that is ours but malformed becomes `Invalid`."""
    out: list[Command | Invalid] = []
    for op in codec.decode_entry(data):
        try:
            out.append(COMMANDS[op["t"]].from_wire(op))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            out.append(Invalid(f"{type(e).__name__}: {e}"))
    return out


def _str(d: Mapping[str, Any], key: str) -> str:
    value = d[key]
    if not isinstance(value, str):
        raise TypeError(f"{key} must be a string, got {type(value).__name__}")
    return value


def _opt_str(d: Mapping[str, Any], key: str) -> str | None:
    return None if d.get(key) is None else _str(d, key)


def _int(d: Mapping[str, Any], key: str) -> int:
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{key} must be a number, got {value!r}")
    return int(value)


def _opt_int(d: Mapping[str, Any], key: str) -> int | None:
    return None if d.get(key) is None else _int(d, key)


# -- results ------------------------------------------------------------------------
class Outcome(StrEnum):
    """What applying one command came to. The service maps these to HTTP, once."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    APPLIED = "applied"  # noop, expire, restore, members, a txn
    READ = "read"  # a get inside an entry found the memory
    PRECONDITION_FAILED = "precondition_failed"
    NOT_FOUND = "not_found"
    IDEMPOTENCY_KEY_REUSED = "idempotency_key_reused"
    INVALID_OPERATION = "invalid_operation"
    INVALID_ENTRY = "invalid_entry"
    ABORTED = "aborted"  # a txn undone because one of its commands failed; or a command of it not tried
    # coordination
    ACQUIRED = "acquired"
    RENEWED = "renewed"
    RELEASED = "released"
    LOCK_HELD = "lock_held"  # someone else holds it (busy: not remembered for a key)
    FENCED = "fenced"  # the fence is not the lock's (or the claim's) current one
    ENQUEUED = "enqueued"
    TASK_EXISTS = "task_exists"
    QUEUE_FULL = "queue_full"  # busy
    CLAIMED = "claimed"
    NO_TASK = "no_task"  # nothing ready to claim (busy)
    SETTLED = "settled"  # a claim completed, failed or extended

    @property
    def ok(self) -> bool:
        return self in _SUCCESSES

    @property
    def busy(self) -> bool:
        """Nothing changed because of what others hold now: a retry with the same
        Idempotency-Key tries again rather than replaying this answer."""
        return self in _BUSY



_SUCCESSES = frozenset({
    Outcome.CREATED, Outcome.UPDATED, Outcome.DELETED, Outcome.APPLIED, Outcome.READ, Outcome.ACQUIRED,
    Outcome.RENEWED, Outcome.RELEASED, Outcome.ENQUEUED, Outcome.CLAIMED, Outcome.NO_TASK, Outcome.SETTLED,
})
_BUSY = frozenset({Outcome.LOCK_HELD, Outcome.NO_TASK, Outcome.QUEUE_FULL})


@dataclass(frozen=True)
class Deleted:
    namespace: str
    id: str
    version: int


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    message: str = ""
    memory: Mapping[str, Any] | None = None  # the record a put wrote
    deleted: Deleted | None = None
    table: Mapping[str, Any] | None = None  # the membership table written
    expired: int = 0
    restored: bool = False
    version: int | None = None  # the current version, when a precondition failed
    replayed: bool = False  # answered from an idempotency key's first result
    results: tuple[Result, ...] = ()  # a txn: one per command (ABORTED for those undone or not tried)
    coord: Mapping[str, Any] | None = None  # a lock or task outcome's details (its view)

    # Stored for an idempotency key in the form the first version wrote, so a
    # downgrade or a mixed-version cluster (a snapshot from a newer leader)
    # reads it: the numbers are that form's encoding of the outcome, not an HTTP
    # status map (which is the service's, in service/outcomes.py).
    _STORED_CODES: ClassVar[dict[Outcome, int]] = {
        Outcome.CREATED: 201, Outcome.UPDATED: 200, Outcome.DELETED: 200, Outcome.APPLIED: 200,
        Outcome.PRECONDITION_FAILED: 412, Outcome.NOT_FOUND: 404, Outcome.IDEMPOTENCY_KEY_REUSED: 409,
        Outcome.INVALID_OPERATION: 400, Outcome.INVALID_ENTRY: 400, Outcome.READ: 200, Outcome.ABORTED: 409,
        Outcome.ACQUIRED: 201, Outcome.RENEWED: 200, Outcome.RELEASED: 200, Outcome.LOCK_HELD: 409,
        Outcome.FENCED: 409, Outcome.ENQUEUED: 201, Outcome.TASK_EXISTS: 409, Outcome.QUEUE_FULL: 429,
        Outcome.CLAIMED: 200, Outcome.NO_TASK: 204, Outcome.SETTLED: 200,
    }

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self._STORED_CODES[self.outcome]}
        if self.coord is not None or self.outcome in _COORD_OUTCOMES:
            # Outcomes the first version did not have say their name (and their
            # details); the older form above is kept for the older outcomes.
            out["outcome"] = self.outcome.value
            out["coord"] = dict(self.coord or {})
        if self.memory is not None:
            out["memory"] = dict(self.memory)
        if self.deleted is not None:
            out["deleted"] = {"namespace": self.deleted.namespace, "id": self.deleted.id,
                              "version": self.deleted.version}
        if not self.outcome.ok:
            error: dict[str, Any] = {"code": self.outcome.value, "message": self.message}
            if self.outcome is Outcome.PRECONDITION_FAILED:
                error["version"] = self.version
            out["error"] = error
        return out

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Result:
        """A result stored for an idempotency key: `{"status": 201, "memory": ...}`,
        `{"status": 200, "deleted": ...}`, `{"status": 412, "error": {...}}`; and
        `{"status", "outcome", "coord", "error"?}` for the coordination outcomes."""
        named = d.get("outcome")
        if isinstance(named, str) and named in Outcome._value2member_map_:
            return cls(Outcome(named), message=str((d.get("error") or {}).get("message", "")),
                       coord=d.get("coord"), memory=d.get("memory"))
        status = int(d.get("status", 500))
        error = d.get("error") or {}
        deleted = d.get("deleted")
        if status == 201:
            return cls(Outcome.CREATED, memory=d.get("memory"))
        if status == 200 and deleted:
            return cls(Outcome.DELETED, deleted=Deleted(deleted["namespace"], deleted["id"], int(deleted["version"])))
        if status == 200 and d.get("memory") is not None:
            return cls(Outcome.UPDATED, memory=d.get("memory"))
        if status == 200:
            return cls(Outcome.APPLIED)
        outcome = Outcome(error["code"]) if error.get("code") in Outcome._value2member_map_ else (
            {412: Outcome.PRECONDITION_FAILED, 404: Outcome.NOT_FOUND}.get(status, Outcome.INVALID_OPERATION))
        return cls(outcome, message=str(error.get("message", "")), version=error.get("version"))


_COORD_OUTCOMES = frozenset(o for o in Outcome if o.value not in {
    "created", "updated", "deleted", "applied", "precondition_failed", "not_found", "idempotency_key_reused",
    "invalid_operation", "invalid_entry", "read", "aborted",
})


@dataclass(frozen=True)
class Committed:
    """A command's fate once its entry committed and applied on the leader."""

    index: int
    result: Result
