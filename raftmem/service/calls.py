"""What the service speaks: a `Call` in, a `Reply` out, and the small `Forwarder`
interface it sends calls to other nodes through (the API layer implements it
over aiohttp; the service knows nothing of HTTP libraries)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson

from ..errors import RaftmemError
from ..validation import format_tokens

FORWARDED_HEADER = "X-Raftmem-Forwarded"
CONTEXT_HEADER = "X-Raftmem-Context"
FORWARD_HOPS_MAX = 2
FORWARD_HEADERS = (
    "If-Match", "If-None-Match", "If-Fence", "Idempotency-Key", "X-Raftmem-Consistency", "X-Raftmem-Context",
    "Content-Type",
)
SNAPSHOT_CONTENT_TYPE = "application/octet-stream"
PRIVATE_FIELDS = ("rev", "emb")


@dataclass
class Call:
    """A client request as the service sees it."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    hops: int = 0
    # Where a large answer (a snapshot) goes, here or when forwarded: a file, not memory.
    download: Path | None = None
    # It may wait at the leader (a lock acquisition or task claim with wait_ms):
    # forwarded over connections of its own, bounded per node.
    waits: bool = False
    # The namespaces the caller's token is limited to (None: any), for requests
    # that name none up front (a namespace-prefix search, the namespace list).
    scope: tuple[str, ...] | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass(frozen=True)
class FileBody:
    """A reply body on disk (snapshots, backups), streamed to the client."""

    path: Path


@dataclass
class Reply:
    status: int
    body: Any  # a JSON-able value, or bytes passed through from another node
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def json(self) -> Any:
        return orjson.loads(self.body) if isinstance(self.body, bytes | bytearray) else self.body


def error_reply(error: RaftmemError, headers: dict[str, str] | None = None) -> Reply:
    """An error as its answer: the status, the body and the headers it implies."""
    headers = dict(headers or {})
    retry_after = getattr(error, "retry_after_s", None)
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    challenge = getattr(error, "www_authenticate", None)
    if challenge is not None:
        headers["WWW-Authenticate"] = challenge
    return Reply(error.status, error.body(), headers)


class ForwardNotSent(Exception):
    """The request never reached the other node: nothing happened there (no
    connection was ever obtained for it)."""


class ForwardLost(Exception):
    """The request may have reached the other node, but no answer came back."""


class Forwarder(Protocol):
    async def forward(self, node_id: str, call: Call, timeout_s: float) -> Reply: ...

    def set_urls(self, urls: dict[str, str]) -> None: ...


def with_context(reply: Reply, context: dict[int, int], batch: bool = False) -> Reply:
    """Return the caller's causal context, advanced by what this reply shows
    (its X-Raftmem-Token, one token per shard; a batch's per-operation tokens):
    one token per shard at most, so it stays small however long a session."""
    seen = dict(context)

    def see(token: Any) -> None:
        if isinstance(token, str) and ":" in token:
            shard, _, index = token.partition(":")
            if shard.isdigit() and index.isdigit():
                seen[int(shard)] = max(seen.get(int(shard), 0), int(index))

    for token in (reply.headers.get("X-Raftmem-Token") or "").split(","):
        see(token)
    body = reply.json() if batch and reply.status == 200 else None
    if isinstance(body, dict) and isinstance(body.get("results"), list):
        for result in body["results"]:
            if isinstance(result, dict) and isinstance(result.get("body"), dict):
                see(result["body"].get("token"))
    if seen:
        reply.headers[CONTEXT_HEADER] = format_tokens(seen)
    return reply


def public(rec: Mapping[str, Any], shard: int) -> dict[str, Any]:
    """A stored record as clients see it: its Raft index as a token (the packed
    embedding stays inside: search answers with it when asked)."""
    out = {k: val for k, val in rec.items() if k not in PRIVATE_FIELDS}
    out["token"] = f"{shard}:{rec['rev']}"
    return out
