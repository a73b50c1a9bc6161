"""What requests and answers look like to the client: the request model, batch
results, tokens, request bodies and idempotency keys. Pure."""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from .errors import ClientError, error_from_response

# The server's levels and the design's alias for session.
CONSISTENCY_LEVELS = ("linearizable", "strong", "session", "causal", "bounded", "eventual", "read-your-writes")
# Levels a shard leader must serve; the others may be answered by any replica.
LEADER_LEVELS = frozenset({"linearizable", "strong"})
LIST_PAGE_DEFAULT = 100

HEADER_TOKEN = "X-Raftmem-Token"
HEADER_SERVED_BY = "X-Raftmem-Served-By"
HEADER_CONSISTENCY = "X-Raftmem-Consistency"
HEADER_IDEMPOTENCY_KEY = "Idempotency-Key"
HEADER_CONTEXT = "X-Raftmem-Context"


@dataclass
class Response:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def token(self) -> str | None:
        return self.headers.get(HEADER_TOKEN)

    @property
    def served_by(self) -> str | None:
        return self.headers.get(HEADER_SERVED_BY)


@dataclass
class _Request:
    method: str
    path: str
    is_write: bool
    shard: int | None = None  # route to this shard's leader; None: any node
    params: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes | None = None
    keyed: bool = False  # a write whose every part carries an Idempotency-Key
    # A read any replica may serve (eventual, bounded, session): it goes to a
    # healthy, fast replica, with a short attempt timeout.
    stale_tolerant: bool = False
    # One attempt's timeout when it is not the client's (a request that waits
    # at the server: a lock acquisition, a task claim).
    timeout_s: float | None = None

    def __post_init__(self) -> None:
        if HEADER_IDEMPOTENCY_KEY in self.headers:
            self.keyed = True


def tls_context(cacert: str | None = None, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    """A context for https nodes: the cluster's CA (else the system's), and a
    client certificate when the nodes require one (`tls.client_auth: require`)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cacert)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


@dataclass
class BatchResult:
    """One operation's outcome in POST /v1/batch."""

    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error(self) -> ClientError | None:
        return None if self.ok else error_from_response(self.status, self.body, {})


def parse_token(token: str) -> tuple[int, int] | None:
    try:
        shard, index = token.split(":")
        return int(shard), int(index)
    except (ValueError, AttributeError):
        return None


def _memory_path(namespace: str, memory_id: str | None = None) -> str:
    path = "/v1/memories/" + quote(namespace, safe="")
    return path if memory_id is None else path + "/" + quote(memory_id, safe="")


def _memory_body(
    agent_id: str | None,
    kind: str | None,
    content: Any,
    tags: Sequence[str] | None,
    metadata: Mapping[str, Any] | None,
    ttl_s: float | None,
    embedding: Sequence[float] | None = None,
    actor: str | None = None,
    ttl_refresh_on_read: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {"content": content}
    if embedding is not None:
        body["embedding"] = [float(x) for x in embedding]
    if agent_id is not None:
        body["agent_id"] = agent_id
    if kind is not None:
        body["kind"] = kind
    if tags is not None:
        body["tags"] = list(tags)
    if metadata is not None:
        body["metadata"] = dict(metadata)
    if ttl_s is not None:
        body["ttl_s"] = ttl_s
    if actor is not None:
        body["actor"] = actor
    if ttl_refresh_on_read:
        body["ttl_refresh_on_read"] = True
    return body


def bearer_headers(token: str | None) -> dict[str, str]:
    """The Authorization header for clusters with auth on (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _new_key() -> str:
    """Time-ordered (milliseconds first, like a UUIDv7): a create keyed with it gets a
    time-ordered id that every retry derives again (see the server's create)."""
    return f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex}"
