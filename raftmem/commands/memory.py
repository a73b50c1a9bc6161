"""The memory commands: writes, reads inside an entry, expiry, restores, the
membership table, and atomic groups of them (Txn)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .wire import opt_int, opt_str, req_int, req_str

EXPIRE_OPS_MAX = 1000


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
            agent_id=opt_str(data, "agent_id"),
            kind=opt_str(data, "kind"),
            tags=tuple(tags),
            metadata=dict(data.get("metadata") or {}),
            ttl_s=ttl,
            embedding=opt_str(data, "embedding"),
            actor=opt_str(data, "actor"),
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
            namespace=req_str(d, "ns"), id=req_str(d, "id"), fields=MemoryFields.from_wire(fields),
            if_match=opt_int(d, "if_match"), if_none_match=bool(d.get("if_none_match")),
            idempotency_key=opt_str(d, "idem"), now_ms=req_int(d, "now"), if_fence=Fence.from_wire(d.get("fence")),
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
            namespace=req_str(d, "ns"), id=req_str(d, "id"), if_match=opt_int(d, "if_match"),
            idempotency_key=opt_str(d, "idem"), now_ms=req_int(d, "now"), if_fence=Fence.from_wire(d.get("fence")),
            actor=opt_str(d, "actor"),
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
        return cls(now_ms=req_int(d, "now"), limit=opt_int(d, "limit"))

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
        return cls(table=dict(table), if_version=req_int(d, "if_version"), now_ms=int(d.get("now") or 0))


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
        return cls(namespace=req_str(d, "ns"), id=req_str(d, "id"), now_ms=req_int(d, "now"))


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
