"""API authentication and authorization (on when `auth.cluster_token` is set).

Authenticated at the edge: the node a client talks to checks the client's
bearer token against the whole request (role, and every namespace it touches).
Requests between nodes (forwarding to a shard leader, list fan-out, snapshot
and membership calls) carry the cluster token instead, and a node trusts them:
the edge has already decided. Internal endpoints accept the cluster token only.

Roles: `read` (reads, lists, the cluster view), `write` (and writes), `admin`
(and /v1/admin/*). A token may be limited to some namespaces. Health, readiness,
metrics and the OpenAPI document stay open, for probes and scrapers.

This module imports nothing of aiohttp: the API middleware hands it the method,
path, path parameters and (for batches) the body.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

import orjson

from .config import AUTH_ROLES, ApiToken, AuthConfig
from .errors import Forbidden, Unauthorized

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
INTERNAL_PREFIX = "/v1/internal/"
ADMIN_PREFIX = "/v1/admin/"
BATCH_WRITE_OPS = frozenset({"put", "create", "delete"})
# Requests whose body names their namespaces (the middleware reads it first).
BODY_SCOPED_PATHS = frozenset({"/v1/batch", "/v1/search", "/v1/watch"})
WATCH_PATH = "/v1/watch"


@dataclass(frozen=True)
class Need:
    """What a request needs: a role, on some namespaces (empty: none named)."""

    role: str
    namespaces: frozenset[str] = frozenset()
    internal: bool = False
    every_namespace: bool = False  # a watch of more than one namespace


def need_for(
    method: str, path: str, params: Mapping[str, str], body: bytes = b"", query: Mapping[str, str] | None = None,
) -> Need | None:
    """The permission a request needs, or None for an open endpoint. `query`:
    the query string (a watch names its namespace there)."""
    if path in OPEN_PATHS:
        return None
    if path == WATCH_PATH and method == "POST":
        return _watches_need(body)
    if path == WATCH_PATH:
        namespace = (query or {}).get("namespace")
        return Need("read", frozenset({namespace})) if namespace else Need("read", every_namespace=True)
    if path.startswith(INTERNAL_PREFIX):
        return Need("admin", internal=True)
    if path.startswith(ADMIN_PREFIX):
        return Need("admin")
    if path == "/v1/batch" and method == "POST":
        return _batch_need(body)
    if path == "/v1/search" and method == "POST":
        return _search_need(body)
    namespace = params.get("namespace")
    if namespace is not None:
        return Need("read" if method in ("GET", "HEAD") else "write", frozenset({namespace}))
    return Need("read")  # the cluster view, and unknown paths (which answer 404)


def _batch_need(body: bytes) -> Need:
    try:
        ops = orjson.loads(body).get("ops")
    except (orjson.JSONDecodeError, AttributeError):
        ops = None
    if not isinstance(ops, list):
        return Need("read")  # malformed: the handler refuses it, and nothing happens
    namespaces = {op["namespace"] for op in ops if isinstance(op, dict) and isinstance(op.get("namespace"), str)}
    writes = any(isinstance(op, dict) and op.get("op") in BATCH_WRITE_OPS for op in ops)
    return Need("write" if writes else "read", frozenset(namespaces))


def _watches_need(body: bytes) -> Need:
    """Many watches on one connection: read on each one's namespace; any
    watch without one needs every namespace (as a GET watch without one)."""
    try:
        watches = orjson.loads(body).get("watches")
    except (orjson.JSONDecodeError, AttributeError):
        watches = None
    if not isinstance(watches, list):
        return Need("read")  # malformed: the handler refuses it
    named: set[str] = set()
    for watch in watches:
        namespace = watch.get("namespace") if isinstance(watch, dict) else None
        if not isinstance(namespace, str):
            return Need("read", every_namespace=True)
        named.add(namespace)
    return Need("read", frozenset(named))


def _search_need(body: bytes) -> Need:
    """A search of one namespace needs that namespace; a namespace-prefix search
    needs read, and answers only from the namespaces the token holds (the
    service restricts it: Call.scope)."""
    try:
        request = orjson.loads(body)
    except orjson.JSONDecodeError:
        request = None
    namespace = request.get("namespace") if isinstance(request, dict) else None
    return Need("read", frozenset({namespace}) if isinstance(namespace, str) else frozenset())


class Authenticator:
    def __init__(self, config: AuthConfig) -> None:
        self.enabled = config.enabled
        self._cluster = (config.cluster_token or "").encode()
        # Rotation: nodes may accept more cluster tokens than the one they send.
        self._cluster_accepted = [self._cluster] + [t.encode() for t in config.cluster_tokens_also_accepted]
        self._tokens: dict[str, ApiToken] = {t.sha256: t for t in config.tokens}

    def cluster_headers(self) -> dict[str, str]:
        """What a node adds to its requests to other nodes."""
        return {"Authorization": f"Bearer {self._cluster.decode()}"} if self.enabled else {}

    def authenticate(self, authorization: str | None, path: str) -> ApiToken | None:
        """The client's token; None for a node (the cluster token), or for an open
        path or a cluster with auth off. Raises Unauthorized."""
        if not self.enabled or path in OPEN_PATHS:
            return None
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            raise Unauthorized("this cluster requires a bearer token (Authorization: Bearer <token>)")
        presented = secret.strip().encode()
        # Every candidate compared, in constant time each: no early exit to time.
        if any([hmac.compare_digest(presented, c) for c in self._cluster_accepted]):
            return None
        token = self._tokens.get(hashlib.sha256(presented).hexdigest())
        if token is None:
            raise Unauthorized("unknown token")
        return token

    @staticmethod
    def authorize(token: ApiToken, need: Need | None) -> None:
        """Raise Forbidden unless `token` may do what `need` says."""
        if need is None:
            return
        if need.internal:
            raise Forbidden(f"token {token.name!r}: internal endpoints are for the cluster's nodes")
        if AUTH_ROLES.index(token.role) < AUTH_ROLES.index(need.role):
            raise Forbidden(f"token {token.name!r} has role {token.role}; this needs {need.role}")
        if token.namespaces is not None and need.every_namespace:
            raise Forbidden(f"token {token.name!r} is limited to some namespaces: watch one of them (namespace=)")
        if token.namespaces is not None:
            outside = sorted(need.namespaces - set(token.namespaces))
            if outside:
                raise Forbidden(f"token {token.name!r} may not use namespace(s) {', '.join(outside)}")

    def check(self, authorization: str | None, method: str, path: str, params: Mapping[str, str],
              body: bytes = b"") -> None:
        """Both steps, for callers that already hold the body."""
        token = self.authenticate(authorization, path)
        if token is not None:
            self.authorize(token, need_for(method, path, params, body))
