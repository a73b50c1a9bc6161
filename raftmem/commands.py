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
        )


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

    def to_wire(self) -> dict[str, Any]:
        return {
            "t": self.TAG, "ns": self.namespace, "id": self.id, "fields": self.fields.to_wire(),
            "if_match": self.if_match, "if_none_match": self.if_none_match,
            "idem": self.idempotency_key, "now": self.now_ms,
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Put:
        fields = d["fields"]
        if not isinstance(fields, Mapping):
            raise TypeError("fields must be an object")
        return cls(
            namespace=_str(d, "ns"), id=_str(d, "id"), fields=MemoryFields.from_wire(fields),
            if_match=_opt_int(d, "if_match"), if_none_match=bool(d.get("if_none_match")),
            idempotency_key=_opt_str(d, "idem"), now_ms=_int(d, "now"),
        )


@dataclass(frozen=True)
class Delete:
    TAG: ClassVar[str] = "delete"
    namespace: str
    id: str
    if_match: int | None = None
    idempotency_key: str | None = None
    now_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "t": self.TAG, "ns": self.namespace, "id": self.id, "if_match": self.if_match,
            "idem": self.idempotency_key, "now": self.now_ms,
        }

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Delete:
        return cls(
            namespace=_str(d, "ns"), id=_str(d, "id"), if_match=_opt_int(d, "if_match"),
            idempotency_key=_opt_str(d, "idem"), now_ms=_int(d, "now"),
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


Command = Put | Delete | Noop | Expire | Restore | SetMembers | Get | Txn
COMMANDS: dict[str, Any] = {
    cls.TAG: cls for cls in (Put, Delete, Noop, Expire, Restore, SetMembers, Get, Txn)
}
assert set(COMMANDS) == codec.OP_TYPES, "every wire tag has one command class"


@dataclass(frozen=True)
class Invalid:
    """An operation of a known type that does not decode: applied as an error
    result, so the rest of its entry still applies (apply never raises)."""

    reason: str


def stamped(command: Command, now_ms: int) -> Command:
    """The command with the leader's time, for the commands that carry one."""
    if isinstance(command, Put | Delete | SetMembers | Get):
        return replace(command, now_ms=now_ms)
    if isinstance(command, Txn):
        return Txn(tuple(replace(op, now_ms=now_ms) for op in command.ops))
    return command


def idempotency_key(command: Command) -> str | None:
    return command.idempotency_key if isinstance(command, Put | Delete) else None


def fingerprint(command: Command) -> str:
    """What makes two requests "the same" for an idempotency key: everything but
    the leader-chosen time and the key itself (as computed before commands were
    typed, so keys stored then still match)."""
    stable = {k: v for k, v in command.to_wire().items() if k not in ("now", "idem")}
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

    @property
    def ok(self) -> bool:
        return self in _SUCCESSES


_SUCCESSES = frozenset({Outcome.CREATED, Outcome.UPDATED, Outcome.DELETED, Outcome.APPLIED, Outcome.READ})


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

    # Stored for an idempotency key in the form the first version wrote, so a
    # downgrade or a mixed-version cluster (a snapshot from a newer leader)
    # reads it: the numbers are that form's encoding of the outcome, not an HTTP
    # status map (which is the service's, in service/outcomes.py).
    _STORED_CODES: ClassVar[dict[Outcome, int]] = {
        Outcome.CREATED: 201, Outcome.UPDATED: 200, Outcome.DELETED: 200, Outcome.APPLIED: 200,
        Outcome.PRECONDITION_FAILED: 412, Outcome.NOT_FOUND: 404, Outcome.IDEMPOTENCY_KEY_REUSED: 409,
        Outcome.INVALID_OPERATION: 400, Outcome.INVALID_ENTRY: 400, Outcome.READ: 200, Outcome.ABORTED: 409,
    }

    def to_wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self._STORED_CODES[self.outcome]}
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
        `{"status": 200, "deleted": ...}`, `{"status": 412, "error": {...}}`."""
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


@dataclass(frozen=True)
class Committed:
    """A command's fate once its entry committed and applied on the leader."""

    index: int
    result: Result
