"""Coordination commands: locks and task claims (applied by raftmem.coordination)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .memory import EXPIRE_OPS_MAX
from .wire import opt_str, req_int, req_str


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
        return cls(req_str(d, "ns"), req_str(d, "name"), req_str(d, "holder"), req_int(d, "ttl"),
                   opt_str(d, "idem"), req_int(d, "now"))


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
        return cls(req_str(d, "ns"), req_str(d, "name"), req_int(d, "fence"), req_int(d, "ttl"),
                   opt_str(d, "idem"), req_int(d, "now"))


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
        return cls(req_str(d, "ns"), req_str(d, "name"), req_int(d, "fence"), opt_str(d, "idem"), req_int(d, "now"))


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
        return cls(d.get("payload"), req_int(d, "prio"), req_int(d, "not_before"), req_int(d, "delay"),
                   req_int(d, "attempts_max"), req_int(d, "backoff"), req_int(d, "retain"), req_int(d, "open_max"))


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
        return cls(req_str(d, "ns"), req_str(d, "id"), TaskSpec.from_wire(spec), opt_str(d, "idem"), req_int(d, "now"))


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
        return cls(req_str(d, "ns"), req_str(d, "worker"), req_int(d, "lease"), opt_str(d, "idem"), req_int(d, "now"))


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
        action = req_str(d, "action")
        if action not in cls.ACTIONS:
            raise ValueError(f"unknown task action {action!r}")
        return cls(req_str(d, "ns"), req_str(d, "id"), req_int(d, "fence"), action, d.get("result"), req_int(d, "lease"),
                   bool(d.get("retry")), bool(d.get("charge")), opt_str(d, "idem"), req_int(d, "now"))


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
        return cls(req_int(d, "now"), min(req_int(d, "limit"), EXPIRE_OPS_MAX))
