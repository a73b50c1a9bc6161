"""The raftmem error tree, mapped to HTTP in exactly one place (api._error_to_response).

    RaftmemError                      500 internal
    ├── InvalidRequest                400 invalid_request
    │   ├── PayloadTooLarge           413 payload_too_large
    │   └── RequestTimeout            408 request_timeout   (a body sent too slowly)
    ├── Unauthorized                  401 unauthorized      (no or unknown bearer token)
    ├── Forbidden                     403 forbidden         (the token's role or namespaces)
    ├── NotFound                      404 not_found
    ├── Conflict                      409 conflict
    │   ├── LockHeld                  409 lock_held         (another holder has the lock)
    │   └── Fenced                    409 fenced            (the fence is not the lock's or claim's
    │                                                        current one: released, expired, taken over)
    ├── Gone                          410 compacted         (a watch resumed from before what
    │                                                         the change log keeps: `oldest` says
    │                                                         where it may resume)
    ├── PreconditionFailed            412 precondition_failed
    ├── Overloaded                    429 overloaded        (retryable, nothing was done)
    ├── Unavailable                   503 unavailable       (retryable, nothing was done)
    │   └── NoLeader                  503 no_leader
    └── Indeterminate                 504 indeterminate     (the write may or may not have
                                                             happened: never report it as failed)

This module imports nothing from the package.
"""

from __future__ import annotations

from typing import Any


class RaftmemError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        error.update(self.details)
        return {"error": error}


class InvalidRequest(RaftmemError):
    status = 400
    code = "invalid_request"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"


class RequestTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"


class Unauthorized(RaftmemError):
    status = 401
    code = "unauthorized"
    www_authenticate = 'Bearer realm="raftmem"'


class Forbidden(RaftmemError):
    status = 403
    code = "forbidden"


class NotFound(RaftmemError):
    status = 404
    code = "not_found"


class Conflict(RaftmemError):
    status = 409
    code = "conflict"


class LockHeld(Conflict):
    code = "lock_held"


class Fenced(Conflict):
    code = "fenced"
class Gone(RaftmemError):
    status = 410
    code = "compacted"


class PreconditionFailed(RaftmemError):
    status = 412
    code = "precondition_failed"


class Overloaded(RaftmemError):
    status = 429
    code = "overloaded"
    retry_after_s = 1


class Unavailable(RaftmemError):
    status = 503
    code = "unavailable"
    retry_after_s = 1


class NoLeader(Unavailable):
    code = "no_leader"


class Indeterminate(RaftmemError):
    status = 504
    code = "indeterminate"

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"]["indeterminate"] = True
        body["indeterminate"] = True
        return body


_BY_STATUS: dict[int, type[RaftmemError]] = {
    400: InvalidRequest,
    404: NotFound,
    409: Conflict,
    410: Gone,
    412: PreconditionFailed,
    413: PayloadTooLarge,
    429: Overloaded,
    503: Unavailable,
    504: Indeterminate,
}


def from_result(result: dict[str, Any]) -> RaftmemError:
    """Rebuild an error from a result `{"status"?, "error": {"code", "message", ...}}`
    (a state machine result, or another node's error body)."""
    error = dict(result["error"])
    code = str(error.pop("code", "internal"))
    message = str(error.pop("message", ""))
    error.pop("indeterminate", None)
    status = int(result.get("status", 0)) or next(
        (cls.status for cls in _BY_STATUS.values() if cls.code == code), 500
    )
    cls = _BY_STATUS.get(status, RaftmemError)
    err = cls(message, **error)
    err.code = code
    err.status = status
    return err
