"""What applying a command can come to: a `Result` with a domain `Outcome`
(never an HTTP status: the service maps outcomes, once), and `Committed`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar


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
