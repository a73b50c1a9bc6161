"""The one place a command's outcome becomes HTTP: a success status, or the
error (raftmem.errors maps each error class to its status)."""

from __future__ import annotations

from typing import Any

from ..commands import Committed, Outcome, Result
from ..errors import (
    Conflict,
    Fenced,
    InvalidRequest,
    LockHeld,
    NotFound,
    Overloaded,
    PreconditionFailed,
    RaftmemError,
)
from .calls import Reply, public

SUCCESS_STATUS = {
    Outcome.CREATED: 201, Outcome.UPDATED: 200, Outcome.DELETED: 200, Outcome.APPLIED: 200, Outcome.READ: 200,
    Outcome.ACQUIRED: 201, Outcome.RENEWED: 200, Outcome.RELEASED: 200, Outcome.ENQUEUED: 201,
    Outcome.CLAIMED: 200, Outcome.NO_TASK: 204, Outcome.SETTLED: 200,
}
FAILURES: dict[Outcome, type[RaftmemError]] = {
    Outcome.PRECONDITION_FAILED: PreconditionFailed,
    Outcome.NOT_FOUND: NotFound,
    Outcome.IDEMPOTENCY_KEY_REUSED: Conflict,
    Outcome.INVALID_OPERATION: InvalidRequest,
    Outcome.INVALID_ENTRY: InvalidRequest,
    Outcome.ABORTED: Conflict,
    Outcome.LOCK_HELD: LockHeld,
    Outcome.FENCED: Fenced,
    Outcome.TASK_EXISTS: Conflict,
    Outcome.QUEUE_FULL: Overloaded,
}
assert set(SUCCESS_STATUS) | set(FAILURES) == set(Outcome), "every outcome is mapped"
# What a refusal says of the lock or task that refused it: never the current
# fence, which a refused writer must not adopt (a "take the fence from the
# error and retry" loop would write as the new holder; GET shows fences, for
# observability only).
_LOCK_DETAILS = ("holder", "expires_at")
_TASK_DETAILS = ("state", "worker", "claim_expires_at", "attempts")


def error_for(result: Result) -> RaftmemError:
    details: dict[str, Any] = {}
    if result.outcome is Outcome.PRECONDITION_FAILED:
        details["version"] = result.version
    coord = result.coord
    if coord is not None and result.outcome in (Outcome.LOCK_HELD, Outcome.FENCED, Outcome.TASK_EXISTS):
        if "id" in coord:
            details["task"] = {k: coord.get(k) for k in _TASK_DETAILS}
        elif result.outcome is Outcome.LOCK_HELD:
            details.update({k: coord.get(k) for k in _LOCK_DETAILS})
        else:  # fenced by a lock: who holds it now, if anyone
            details["lock"] = {k: coord.get(k) for k in _LOCK_DETAILS} if coord else None
    error = FAILURES[result.outcome](result.message, **details)
    error.code = result.outcome.value
    return error


def write_reply(node_id: str, shard: int, done: Committed) -> Reply:
    """The answer to a committed write, or its error raised."""
    result = done.result
    if not result.outcome.ok:
        raise error_for(result)
    token = f"{shard}:{done.index}"
    headers = {"X-Raftmem-Token": token, "X-Raftmem-Served-By": node_id}
    body: dict[str, Any] = {"token": token}
    if result.memory is not None:
        body = public(result.memory, shard)
        headers["ETag"] = str(result.memory["version"])
    elif result.deleted is not None:
        body.update(namespace=result.deleted.namespace, id=result.deleted.id, version=result.deleted.version)
        body["deleted"] = True
    elif result.table is not None:
        body["table"] = dict(result.table)
    elif result.coord is not None:
        body = {**result.coord, "token": token}
    if result.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Reply(SUCCESS_STATUS[result.outcome], body, headers)
