"""The raftmem Python client: shard-aware routing, bounded retries, sessions.

It imports nothing of the server (stdlib, aiohttp, orjson, and the leaf module
`raftmem.shardhash` that holds the one key hash). `AsyncClient` holds all the logic; `Client` is a
blocking facade that runs an `AsyncClient` on a private event-loop thread.

Exceptions (`.status`, `.code`, `.body`, `.message`; `status` 0 when no HTTP
answer came back):

    ClientError                   any failure
    ├── InvalidRequest            400 invalid_request, 405, 413 payload_too_large
    ├── NotFound                  404 not_found
    ├── Conflict                  409 conflict (e.g. idempotency_key_reused)
    │   ├── LockHeld              409 lock_held: another holder has the lock
    │   └── Fenced                409 fenced: the lock or claim moved on since that fence
    ├── LockLost                  a lock held by `lock()` was lost (the body was stopped)
    ├── Compacted                 410 compacted: a watch from before what the log keeps
    ├── PreconditionFailed        412 precondition_failed (If-Match / If-None-Match)
    ├── Unavailable               503, or a read that got no answer: nothing happened,
    │   │                         retrying is safe (`retryable` is True)
    │   ├── Overloaded            429 overloaded
    │   └── ConnectionFailed      status 0: the request was never sent
    └── Indeterminate             504, or a write that got no answer: it may or may
                                  not have happened; never treat it as a failure

Routing: the client reads GET /v1/cluster, computes a key's shard exactly as the
server does (blake2b-64(namespace NUL id) mod shards), and sends writes and
linearizable/strong reads straight to that shard's leader, skipping the
forwarding hop. Stale-tolerant reads (session, bounded, eventual) and lists go to
any node, round robin. A shard's leader is forgotten after a 503, a connection
error or a lost answer, and the table reloaded (at most every
`ROUTES_REFRESH_INTERVAL_S`); a node that refused a connection is skipped for
`NODE_DOWN_COOLDOWN_S`. The table is also corrected for free when a response says
another node served it (X-Raftmem-Served-By).

Retries are bounded by `RetryPolicy` (attempts and a total deadline), and happen
only where they cannot duplicate anything:
- reads and lists: on 503/429, connection errors and timeouts (reads change nothing);
- writes: only when the write carries an Idempotency-Key (one is generated per
  logical write when `idempotent=True`, the default, and reused by every attempt).
  A write without a key is never retried; if its answer is lost it raises
  Indeterminate. A write whose key-carrying retries all fail after an attempt
  that may have reached the server also raises Indeterminate.

Modules: `errors` (the tree below), `routing` (shard -> leader, pure), `retry`
(bounds, pure), `types` (request model, tokens, bodies), `aio` (AsyncClient),
`session` (AsyncSession), `sync` (Client, Session), `coordination` (locks with
fences, task queues, the `lock()` context manager), `watch` (the `watch()`
iterator that resumes by itself). See DESIGN.md in this folder.
"""

from __future__ import annotations

from .aio import CONNECTIONS_MAX, TIMEOUT_S_DEFAULT, AsyncClient
from .coordination import Lease, default_holder
from .errors import (
    ClientError,
    Compacted,
    Conflict,
    ConnectionFailed,
    Fenced,
    Indeterminate,
    InvalidRequest,
    LockHeld,
    LockLost,
    NotFound,
    Overloaded,
    PreconditionFailed,
    Unavailable,
    error_from_response,
)
from .retry import ATTEMPT_S_MIN, NO_RETRY, RetryPolicy, may_retry
from .routing import HASH_NAME, RouteTable, shard_for
from .session import AsyncSession
from .sync import Client, Session
from .types import (
    CONSISTENCY_LEVELS,
    HEADER_CONSISTENCY,
    HEADER_CONTEXT,
    HEADER_IDEMPOTENCY_KEY,
    HEADER_SERVED_BY,
    HEADER_TOKEN,
    LEADER_LEVELS,
    LIST_PAGE_DEFAULT,
    BatchResult,
    Response,
    _new_key,
    bearer_headers,
    parse_token,
    tls_context,
)
from .watch import Progress, Watch, WatchEvent, WatchGroup

__all__ = [
    "Compacted",
    "Progress",
    "Watch",
    "WatchEvent",
    "WatchGroup",
    "ATTEMPT_S_MIN",
    "CONNECTIONS_MAX",
    "CONSISTENCY_LEVELS",
    "HASH_NAME",
    "HEADER_CONSISTENCY",
    "HEADER_CONTEXT",
    "HEADER_IDEMPOTENCY_KEY",
    "HEADER_SERVED_BY",
    "HEADER_TOKEN",
    "LEADER_LEVELS",
    "LIST_PAGE_DEFAULT",
    "NO_RETRY",
    "TIMEOUT_S_DEFAULT",
    "AsyncClient",
    "AsyncSession",
    "BatchResult",
    "Client",
    "ClientError",
    "Conflict",
    "ConnectionFailed",
    "Fenced",
    "Indeterminate",
    "InvalidRequest",
    "Lease",
    "LockHeld",
    "LockLost",
    "NotFound",
    "Overloaded",
    "PreconditionFailed",
    "Response",
    "RetryPolicy",
    "RouteTable",
    "Session",
    "Unavailable",
    "_new_key",
    "bearer_headers",
    "default_holder",
    "error_from_response",
    "may_retry",
    "parse_token",
    "tls_context",
    "shard_for",
]
