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

Files: `memory` (memory commands), `coordination` (locks, tasks), `lifecycle`
(touches, pruning), `results` (outcomes), `wire` (field decoding); this module
holds the registry, the entry codec and idempotency fingerprints. The package
imports only `codec` from raftmem.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .. import codec
from .coordination import (
    AcquireLock,
    ClaimTask,
    EnqueueTask,
    ExpireLeases,
    ReleaseLock,
    RenewLock,
    SettleTask,
    TaskSpec,
)
from .lifecycle import (
    PRUNE_TARGETS_MAX,
    TOUCH_ITEMS_MAX,
    Prune,
    Touch,
    TouchItem,
)
from .memory import (
    EXPIRE_OPS_MAX,
    TXN_OPS_MAX,
    Delete,
    Expire,
    Fence,
    Get,
    MemoryFields,
    Noop,
    Put,
    Restore,
    SetMembers,
    Txn,
    TxnOp,
)
from .results import (
    Committed,
    Deleted,
    Outcome,
    Result,
)

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

__all__ = [
    "AcquireLock",
    "COMMANDS",
    "ClaimTask",
    "Command",
    "Committed",
    "CoordinationCommand",
    "Delete",
    "Deleted",
    "ENQUEUE_CLIENT_FIELDS",
    "EXPIRE_OPS_MAX",
    "EnqueueTask",
    "Expire",
    "ExpireLeases",
    "Fence",
    "Get",
    "Invalid",
    "MemoryFields",
    "Noop",
    "Outcome",
    "PRUNE_TARGETS_MAX",
    "Prune",
    "Put",
    "ReleaseLock",
    "RenewLock",
    "Restore",
    "Result",
    "SetMembers",
    "SettleTask",
    "TOUCH_ITEMS_MAX",
    "TXN_OPS_MAX",
    "TaskSpec",
    "Touch",
    "TouchItem",
    "Txn",
    "TxnOp",
    "decode_entry",
    "earlier_fingerprints",
    "encode_entry",
    "fingerprint",
    "idempotency_key",
    "stamped",
]
