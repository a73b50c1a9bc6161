"""The client's exception tree (drawn in the package docstring), and the one
mapping from an HTTP answer to it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ClientError(Exception):
    """A request failed. `status` is the HTTP status (0: no HTTP answer), `code` the
    server's error code, `body` the decoded error body (None without one)."""

    retryable = False
    default_code = "error"

    def __init__(
        self,
        message: str,
        status: int = 0,
        code: str | None = None,
        body: Any = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or self.default_code
        self.body = body
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        status = f"{self.status} " if self.status else ""
        return f"{status}{self.code}: {self.message}"


class InvalidRequest(ClientError):
    default_code = "invalid_request"


class NotFound(ClientError):
    default_code = "not_found"


class Conflict(ClientError):
    default_code = "conflict"


class LockHeld(Conflict):
    """Another holder has the lock (`body["error"]` names it and its expiry)."""

    default_code = "lock_held"


class Fenced(Conflict):
    """The fence presented is not the current one: the lock (or the task's
    claim) was released, ran out, or was taken over since. Whatever was guarded
    by it must not be done."""

    default_code = "fenced"


class LockLost(ClientError):
    """A lock held by `client.lock(...)` was lost: a renewal was refused, or did
    not succeed before the lease could have run out. The body was stopped."""

    default_code = "lock_lost"


class Compacted(ClientError):
    """A watch asked for changes older than the servers keep (410). `oldest`:
    per shard, the token it may resume from."""

    default_code = "compacted"

    @property
    def oldest(self) -> dict[int, int]:
        error = self.body.get("error", self.body) if isinstance(self.body, dict) else {}
        out: dict[int, int] = {}
        for part in str(error.get("oldest") or "").split(","):
            shard, _, index = part.partition(":")
            if shard.isdigit() and index.isdigit():
                out[int(shard)] = int(index)
        return out


class PreconditionFailed(ClientError):
    default_code = "precondition_failed"


class Unavailable(ClientError):
    """Nothing happened; the same request may be sent again."""

    retryable = True
    default_code = "unavailable"


class Overloaded(Unavailable):
    default_code = "overloaded"


class ConnectionFailed(Unavailable):
    """The connection could not be made: the request was never sent."""

    default_code = "connection_failed"


class Indeterminate(ClientError):
    """The write may or may not have happened. Read the key to find out, or retry
    with the same Idempotency-Key."""

    default_code = "indeterminate"


_BY_STATUS: dict[int, type[ClientError]] = {
    400: InvalidRequest,
    404: NotFound,
    405: InvalidRequest,
    409: Conflict,
    410: Compacted,
    412: PreconditionFailed,
    413: InvalidRequest,
    429: Overloaded,
    503: Unavailable,
    504: Indeterminate,
}


_BY_CODE: dict[str, type[ClientError]] = {"lock_held": LockHeld, "fenced": Fenced}


def error_from_response(status: int, body: Any, headers: Mapping[str, str]) -> ClientError:
    """The exception for a non-2xx answer (pure: used by tests and the bench too)."""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        message = f"HTTP {status}"
    cls = _BY_STATUS.get(status, ClientError)
    if status == 409 and code in _BY_CODE:
        cls = _BY_CODE[code]
    if isinstance(body, dict) and body.get("indeterminate") is True:
        cls = Indeterminate
    retry_after: float | None = None
    raw = headers.get("Retry-After")
    if raw is not None:
        try:
            retry_after = max(0.0, float(raw))
        except ValueError:
            retry_after = None
    return cls(message, status=status, code=code if isinstance(code, str) else None, body=body,
               retry_after_s=retry_after)
