"""The raftmem Python client: shard-aware routing, bounded retries, sessions.

It imports nothing from the raftmem package (stdlib, aiohttp and orjson only), so
agents can vendor this one file. `AsyncClient` holds all the logic; `Client` is a
blocking facade that runs an `AsyncClient` on a private event-loop thread.

Exceptions (`.status`, `.code`, `.body`, `.message`; `status` 0 when no HTTP
answer came back):

    ClientError                   any failure
    ├── InvalidRequest            400 invalid_request, 405, 413 payload_too_large
    ├── NotFound                  404 not_found
    ├── Conflict                  409 conflict (e.g. idempotency_key_reused)
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
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import itertools
import random
import threading
import time
import uuid
from collections.abc import (
    AsyncGenerator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import orjson

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "BatchResult",
    "Client",
    "ClientError",
    "Conflict",
    "ConnectionFailed",
    "Indeterminate",
    "InvalidRequest",
    "NotFound",
    "Overloaded",
    "PreconditionFailed",
    "RetryPolicy",
    "RouteTable",
    "Session",
    "Unavailable",
    "shard_for",
]

HASH_NAME = "blake2b-64(namespace NUL id) mod shards"
CONSISTENCY_LEVELS = ("linearizable", "strong", "session", "bounded", "eventual")
# Levels a shard leader must serve; the others may be answered by any replica.
LEADER_LEVELS = frozenset({"linearizable", "strong"})

TIMEOUT_S_DEFAULT = 10.0  # one attempt: above the server's 5 s write timeout + a forward
CLUSTER_TIMEOUT_S = 2.0  # one GET /v1/cluster while (re)loading the routes
ROUTES_REFRESH_INTERVAL_S = 0.2  # at most this often, however many requests fail at once
NODE_DOWN_COOLDOWN_S = 1.0  # skip a node that refused a connection for this long
CONNECTIONS_MAX = 256
LIST_PAGE_DEFAULT = 100
LIST_PAGES_MAX = 1_000_000  # an iterator never follows more cursors than this
ATTEMPT_S_MIN = 0.05  # do not start an attempt with less time left than this

HEADER_TOKEN = "X-Raftmem-Token"
HEADER_SERVED_BY = "X-Raftmem-Served-By"
HEADER_CONSISTENCY = "X-Raftmem-Consistency"
HEADER_IDEMPOTENCY_KEY = "Idempotency-Key"

T = TypeVar("T")


# -- errors -------------------------------------------------------------------------
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
    412: PreconditionFailed,
    413: InvalidRequest,
    429: Overloaded,
    503: Unavailable,
    504: Indeterminate,
}


def error_from_response(status: int, body: Any, headers: Mapping[str, str]) -> ClientError:
    """The exception for a non-2xx answer (pure: used by tests and the bench too)."""
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    if not isinstance(message, str):
        message = f"HTTP {status}"
    cls = _BY_STATUS.get(status, ClientError)
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


# -- routing (pure) -------------------------------------------------------------------
def shard_for(namespace: str, memory_id: str, shard_count: int) -> int:
    """The server's placement hash, published in GET /v1/cluster as `hash`."""
    digest = hashlib.blake2b(namespace.encode() + b"\0" + memory_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shard_count


@dataclass
class RouteTable:
    """Shard -> leader URL, from GET /v1/cluster answers. No I/O: the client feeds it."""

    shard_count: int = 0
    node_urls: dict[str, str] = field(default_factory=dict)
    leaders: dict[int, str] = field(default_factory=dict)  # shard -> node id
    terms: dict[int, int] = field(default_factory=dict)
    hash_ok: bool = False

    @property
    def loaded(self) -> bool:
        return self.shard_count > 0 and bool(self.node_urls)

    def merge(self, cluster: Mapping[str, Any]) -> None:
        """Fold one node's view in; per shard, a known leader at the highest term wins."""
        count = int(cluster.get("shard_count") or 0)
        if count <= 0:
            raise ValueError("cluster answer has no shard_count")
        if count != self.shard_count:
            self.shard_count, self.leaders, self.terms = count, {}, {}
        self.hash_ok = cluster.get("hash") == HASH_NAME
        for node in cluster.get("nodes") or ():
            if isinstance(node, dict) and isinstance(node.get("id"), str) and isinstance(node.get("url"), str):
                self.node_urls[node["id"]] = node["url"].rstrip("/")
        for entry in cluster.get("shards") or ():
            if not isinstance(entry, dict):
                continue
            shard, leader, term = entry.get("shard"), entry.get("leader"), int(entry.get("term") or 0)
            if not isinstance(shard, int) or not isinstance(leader, str):
                continue
            if term >= self.terms.get(shard, -1):
                self.leaders[shard] = leader
                self.terms[shard] = term

    def missing_leaders(self) -> list[int]:
        return [s for s in range(self.shard_count) if s not in self.leaders]

    def shard(self, namespace: str, memory_id: str) -> int | None:
        if not self.loaded or not self.hash_ok:
            return None
        return shard_for(namespace, memory_id, self.shard_count)

    def leader_url(self, shard: int | None) -> str | None:
        if shard is None:
            return None
        node = self.leaders.get(shard)
        return self.node_urls.get(node) if node is not None else None

    def learn_leader(self, shard: int, node_id: str) -> None:
        """A leader-bound request was served by `node_id`: it leads (or led) `shard`."""
        if node_id in self.node_urls:
            self.leaders[shard] = node_id

    def forget_leader(self, shard: int) -> None:
        self.leaders.pop(shard, None)


# -- retries (pure) ------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retrying one logical request: attempts and a total deadline."""

    attempts_max: int = 5
    deadline_s: float = 20.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 1.0
    retry_after_max_s: float = 1.0  # honour the server's Retry-After, up to this

    def __post_init__(self) -> None:
        if self.attempts_max < 1:
            raise ValueError("RetryPolicy.attempts_max must be at least 1")
        if self.deadline_s < ATTEMPT_S_MIN:
            raise ValueError(f"RetryPolicy.deadline_s must be at least {ATTEMPT_S_MIN} s")
        if not 0 <= self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("RetryPolicy: need 0 <= backoff_initial_s <= backoff_max_s")
        if self.retry_after_max_s < 0:
            raise ValueError("RetryPolicy.retry_after_max_s must not be negative")

    def delay_s(self, attempt: int, error: ClientError, jitter: float) -> float:
        """Pause before attempt `attempt + 1`; `jitter` in [0, 1) spreads clients apart."""
        backoff = min(self.backoff_max_s, self.backoff_initial_s * 2.0**attempt)
        delay = backoff * (0.5 + jitter / 2)
        if error.retry_after_s is not None:
            delay = max(delay, min(error.retry_after_s, self.retry_after_max_s))
        return delay


NO_RETRY = RetryPolicy(attempts_max=1)


def may_retry(error: ClientError, is_write: bool, keyed: bool) -> bool:
    """Whether `error` on one attempt allows another. A write is retried only with an
    Idempotency-Key, which makes even a lost or indeterminate attempt safe to repeat."""
    if is_write:
        return keyed and (error.retryable or isinstance(error, Indeterminate))
    return error.retryable


# -- the request model ------------------------------------------------------------------
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

    def __post_init__(self) -> None:
        if HEADER_IDEMPOTENCY_KEY in self.headers:
            self.keyed = True


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
) -> dict[str, Any]:
    body: dict[str, Any] = {"content": content}
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
    return body


def bearer_headers(token: str | None) -> dict[str, str]:
    """The Authorization header for clusters with auth on (none without a token)."""
    return {"Authorization": f"Bearer {token}"} if token else {}


def _new_key() -> str:
    """Time-ordered (milliseconds first, like a UUIDv7): a create keyed with it gets a
    time-ordered id that every retry derives again (see the server's create)."""
    return f"{int(time.time() * 1000):013d}-{uuid.uuid4().hex}"


# -- the async client ---------------------------------------------------------------------
class AsyncClient:
    """An asyncio raftmem client. Use `async with AsyncClient([...]) as c:` or call
    `close()`. Pass `session` to share an aiohttp session (it is then not closed)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout_s: float = TIMEOUT_S_DEFAULT,
        retry: RetryPolicy | None = None,
        idempotent: bool = True,
        route_direct: bool = True,
        session: aiohttp.ClientSession | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        token: str | None = None,
    ) -> None:
        """`token`: the bearer token, for clusters that require one."""
        seeds = [u.rstrip("/") for u in urls if u.strip()]
        if not seeds:
            raise ValueError("AsyncClient needs at least one node URL")
        if timeout_s <= 0:
            raise ValueError("timeout_s must be positive")
        self.seeds = seeds
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self.idempotent = idempotent
        self.route_direct = route_direct
        self.routes = RouteTable()
        self._session = session
        self._own_session = session is None
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()
        self._rr = itertools.count()
        self._down_until: dict[str, float] = {}
        self._refresh_lock: asyncio.Lock | None = None
        self._refreshed_at = -ROUTES_REFRESH_INTERVAL_S
        self.stats = {"attempts": 0, "retries": 0, "route_refreshes": 0}
        self._auth = bearer_headers(token)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONNECTIONS_MAX))
            # No silent resend of a write on a dropped kept-alive connection: the
            # retry policy here decides, with idempotency keys.
            self._session._retry_connection = False
            self._own_session = True
        return self._session

    # -- routing ---------------------------------------------------------------------
    def _all_urls(self) -> list[str]:
        urls = list(self.routes.node_urls.values()) if self.routes.loaded else []
        return urls + [u for u in self.seeds if u not in urls]

    def _any_url(self) -> str:
        """Round robin over nodes not recently refusing connections (all if none)."""
        now = self._clock()
        urls = self._all_urls()
        live = [u for u in urls if self._down_until.get(u, 0.0) <= now]
        pool = live or urls
        return pool[next(self._rr) % len(pool)]

    async def _url_for(self, request: _Request) -> str:
        if self.route_direct and request.shard is not None:
            url = self.routes.leader_url(request.shard)
            if url is None:
                # Forgotten after a failure (or never known): ask again, rate-limited.
                await self.refresh_routes()
                url = self.routes.leader_url(request.shard)
            if url is not None and self._down_until.get(url, 0.0) <= self._clock():
                return url
        return self._any_url()

    def shard_of(self, namespace: str, memory_id: str) -> int | None:
        return self.routes.shard(namespace, memory_id)

    async def _ensure_routes(self) -> None:
        if self.route_direct and not self.routes.loaded:
            await self.refresh_routes()

    async def refresh_routes(self, force: bool = False) -> bool:
        """Reload the leader table from GET /v1/cluster (asking more nodes while some
        shard has no known leader). Concurrent callers share one refresh. Returns
        whether an answer came."""
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()
        async with self._refresh_lock:
            if not force and self._clock() - self._refreshed_at < ROUTES_REFRESH_INTERVAL_S:
                return self.routes.loaded
            self._refreshed_at = self._clock()
            self.stats["route_refreshes"] += 1
            fresh = RouteTable()
            start = next(self._rr)
            urls = self._all_urls()
            for i in range(len(urls)):
                url = urls[(start + i) % len(urls)]
                body = await self._fetch_cluster(url)
                if body is None:
                    continue
                try:
                    fresh.merge(body)
                except (ValueError, TypeError):
                    continue
                if not fresh.missing_leaders():
                    break
            if fresh.loaded:
                self.routes = fresh
            return fresh.loaded

    async def _fetch_cluster(self, url: str) -> dict[str, Any] | None:
        try:
            async with self._http().get(
                url + "/v1/cluster", headers=self._auth or None, timeout=aiohttp.ClientTimeout(total=CLUSTER_TIMEOUT_S)
            ) as resp:
                if resp.status != 200:
                    return None
                body = orjson.loads(await resp.read())
        except aiohttp.ClientConnectorError:
            self._down_until[url] = self._clock() + NODE_DOWN_COOLDOWN_S
            return None
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            return None
        return body if isinstance(body, dict) else None

    # -- one request, with bounded retries ---------------------------------------------
    async def _send_once(self, url: str, request: _Request, timeout_s: float) -> Response:
        self.stats["attempts"] += 1
        session = self._http()
        try:
            async with session.request(
                request.method,
                url + request.path,
                params=request.params or None,
                data=request.body,
                headers={**request.headers, **self._auth} or None,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as resp:
                raw = await resp.read()
                headers = resp.headers
                status = resp.status
        except aiohttp.ClientConnectorError as e:
            self._down_until[url] = self._clock() + NODE_DOWN_COOLDOWN_S
            raise ConnectionFailed(f"{url}: {e}") from e
        except (TimeoutError, aiohttp.ClientError) as e:
            what = "timed out" if isinstance(e, TimeoutError) else f"lost: {e.__class__.__name__}"
            cls = Indeterminate if request.is_write else Unavailable
            raise cls(f"{request.method} {url}{request.path} {what}", code="no_answer") from e
        try:
            body = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            body = {"error": {"code": "bad_response", "message": raw[:200].decode(errors="replace")}}
        if status >= 300:
            raise error_from_response(status, body, headers)
        return Response(status, body, headers)

    async def _send(self, request: _Request, retry: RetryPolicy | None = None) -> Response:
        policy = retry or self.retry
        await self._ensure_routes()
        deadline = self._clock() + policy.deadline_s
        maybe_applied = False
        last: ClientError | None = None
        for attempt in range(policy.attempts_max):
            remaining = deadline - self._clock()
            if remaining < ATTEMPT_S_MIN:
                break
            url = await self._url_for(request)
            try:
                response = await self._send_once(url, request, min(self.timeout_s, remaining))
            except ClientError as e:
                last = e
                if request.is_write and isinstance(e, Indeterminate):
                    maybe_applied = True
                if isinstance(e, Unavailable | Indeterminate) and request.shard is not None:
                    # No leader there, or the node is gone or hung: learn the new leader.
                    self.routes.forget_leader(request.shard)
                if not may_retry(e, request.is_write, request.keyed):
                    break
                if attempt + 1 < policy.attempts_max:
                    delay = policy.delay_s(attempt, e, self._rng.random())
                    if deadline - self._clock() - delay < ATTEMPT_S_MIN:
                        break
                    self.stats["retries"] += 1
                    await self._sleep(delay)
                continue
            if request.shard is not None and response.served_by:
                self.routes.learn_leader(request.shard, response.served_by)
            return response
        assert last is not None, "deadline_s >= ATTEMPT_S_MIN leaves time for one attempt"
        if maybe_applied and not isinstance(last, Indeterminate):
            raise Indeterminate(
                f"an earlier attempt may have applied; the last said: {last}",
                status=last.status, code="indeterminate", body=last.body,
            ) from last
        raise last

    def _write_headers(
        self,
        if_match: int | str | None,
        if_none_match: bool,
        idempotency_key: str | None,
        idempotent: bool | None,
    ) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if if_match is not None:
            headers["If-Match"] = str(if_match)
        if if_none_match:
            headers["If-None-Match"] = "*"
        use_key = self.idempotent if idempotent is None else idempotent
        if idempotency_key is None and use_key:
            idempotency_key = _new_key()
        if idempotency_key is not None:
            headers[HEADER_IDEMPOTENCY_KEY] = idempotency_key
        return headers

    # -- the API ---------------------------------------------------------------------------
    async def put_raw(
        self,
        namespace: str,
        memory_id: str,
        content: Any = None,
        *,
        agent_id: str | None = None,
        kind: str | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl_s: float | None = None,
        if_match: int | str | None = None,
        if_none_match: bool = False,
        idempotency_key: str | None = None,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
    ) -> Response:
        await self._ensure_routes()
        request = _Request(
            "PUT",
            _memory_path(namespace, memory_id),
            is_write=True,
            shard=self.shard_of(namespace, memory_id),
            headers=self._write_headers(if_match, if_none_match, idempotency_key, idempotent),
            body=orjson.dumps(_memory_body(agent_id, kind, content, tags, metadata, ttl_s)),
        )
        return await self._send(request, retry)

    async def put(self, namespace: str, memory_id: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        """Upsert; returns the memory (with `version` and `token`). Keywords: agent_id,
        kind, tags, metadata, ttl_s, if_match, if_none_match, idempotency_key,
        idempotent, retry."""
        body: dict[str, Any] = (await self.put_raw(namespace, memory_id, content, **kw)).body
        return body

    async def create_raw(
        self,
        namespace: str,
        content: Any = None,
        *,
        agent_id: str | None = None,
        kind: str | None = None,
        tags: Sequence[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl_s: float | None = None,
        idempotency_key: str | None = None,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
    ) -> Response:
        # The server derives the id from the Idempotency-Key, so a retry lands on
        # the same id; the shard is unknown here, so any node takes it.
        request = _Request(
            "POST",
            _memory_path(namespace),
            is_write=True,
            headers=self._write_headers(None, False, idempotency_key, idempotent),
            body=orjson.dumps(_memory_body(agent_id, kind, content, tags, metadata, ttl_s)),
        )
        return await self._send(request, retry)

    async def create(self, namespace: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        """Create with a server-chosen id; returns the memory."""
        body: dict[str, Any] = (await self.create_raw(namespace, content, **kw)).body
        return body

    async def get_raw(
        self,
        namespace: str,
        memory_id: str,
        *,
        consistency: str | None = None,
        after: str | Sequence[str] | None = None,
        max_staleness_ms: int | None = None,
        retry: RetryPolicy | None = None,
    ) -> Response:
        if consistency is not None and consistency not in CONSISTENCY_LEVELS:
            raise ValueError(f"unknown consistency {consistency!r} (known: {', '.join(CONSISTENCY_LEVELS)})")
        await self._ensure_routes()
        params: dict[str, str] = {}
        if consistency is not None:
            params["consistency"] = consistency
        if after:
            params["after"] = after if isinstance(after, str) else ",".join(after)
        if max_staleness_ms is not None:
            params["max_staleness_ms"] = str(max_staleness_ms)
        # Default (None) is the server's policy, usually strong: send it to the leader.
        leader_bound = consistency is None or consistency in LEADER_LEVELS
        request = _Request(
            "GET",
            _memory_path(namespace, memory_id),
            is_write=False,
            shard=self.shard_of(namespace, memory_id) if leader_bound else None,
            params=params,
        )
        return await self._send(request, retry)

    async def get(self, namespace: str, memory_id: str, **kw: Any) -> dict[str, Any]:
        """Read one memory. Keywords: consistency, after, max_staleness_ms, retry.
        Raises NotFound when absent."""
        body: dict[str, Any] = (await self.get_raw(namespace, memory_id, **kw)).body
        return body

    async def delete_raw(
        self,
        namespace: str,
        memory_id: str,
        *,
        if_match: int | str | None = None,
        idempotency_key: str | None = None,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
    ) -> Response:
        await self._ensure_routes()
        headers = self._write_headers(if_match, False, idempotency_key, idempotent)
        headers.pop("Content-Type")
        request = _Request(
            "DELETE",
            _memory_path(namespace, memory_id),
            is_write=True,
            shard=self.shard_of(namespace, memory_id),
            headers=headers,
        )
        return await self._send(request, retry)

    async def delete(self, namespace: str, memory_id: str, **kw: Any) -> dict[str, Any]:
        """Delete; returns `{"deleted": true, "version", "token", ...}`. Raises NotFound."""
        body: dict[str, Any] = (await self.delete_raw(namespace, memory_id, **kw)).body
        return body

    async def list_page(
        self,
        namespace: str,
        *,
        agent_id: str | None = None,
        tag: str | None = None,
        since: int | None = None,
        until: int | None = None,
        limit: int = LIST_PAGE_DEFAULT,
        cursor: str | None = None,
        consistency: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> dict[str, Any]:
        """One page: `{"items", "count", "cursor"?}` (no cursor: the last page)."""
        params: dict[str, str] = {"limit": str(limit)}
        for name, value in (
            ("agent_id", agent_id),
            ("tag", tag),
            ("since", since),
            ("until", until),
            ("cursor", cursor),
            ("consistency", consistency),
        ):
            if value is not None:
                params[name] = str(value)
        request = _Request("GET", _memory_path(namespace), is_write=False, params=params)
        body: dict[str, Any] = (await self._send(request, retry)).body
        return body

    async def list(
        self,
        namespace: str,
        *,
        max_items: int | None = None,
        page_size: int = LIST_PAGE_DEFAULT,
        **kw: Any,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Every matching memory, following cursors (at most `max_items` when given).
        Keywords as list_page."""
        cursor = kw.pop("cursor", None)
        seen = 0
        for _ in range(LIST_PAGES_MAX):
            page_limit = page_size if max_items is None else min(page_size, max_items - seen)
            if page_limit <= 0:
                return
            page = await self.list_page(namespace, limit=page_limit, cursor=cursor, **kw)
            for item in page.get("items") or ():
                yield item
                seen += 1
            cursor = page.get("cursor")
            if not cursor:
                return

    async def batch(
        self, ops: Sequence[Mapping[str, Any]], *, retry: RetryPolicy | None = None
    ) -> builtins.list[BatchResult]:
        """POST /v1/batch. Write operations get an idempotency_key when the client is
        idempotent; the batch is retried only if every write in it carries one."""
        prepared: builtins.list[dict[str, Any]] = []
        has_writes = False
        all_keyed = True
        for op in ops:
            op = dict(op)
            if op.get("op") in ("put", "create", "delete"):
                has_writes = True
                if op.get("idempotency_key") is None and self.idempotent:
                    op["idempotency_key"] = _new_key()
                all_keyed = all_keyed and op.get("idempotency_key") is not None
            prepared.append(op)
        request = _Request(
            "POST",
            "/v1/batch",
            is_write=has_writes,
            headers={"Content-Type": "application/json"},
            body=orjson.dumps({"ops": prepared}),
            keyed=has_writes and all_keyed,
        )
        body = (await self._send(request, retry)).body
        return [BatchResult(int(r.get("status", 0)), r.get("body")) for r in body.get("results") or ()]

    async def cluster(self) -> dict[str, Any]:
        """GET /v1/cluster from any node; also refreshes the routes with it."""
        body: dict[str, Any] = (await self._send(_Request("GET", "/v1/cluster", is_write=False))).body
        try:
            fresh = RouteTable()
            fresh.merge(body)
            if fresh.loaded:
                self.routes = fresh
        except (ValueError, TypeError):
            pass
        return body

    def session(self) -> AsyncSession:
        return AsyncSession(self)


class AsyncSession:
    """Read-your-writes and monotonic reads: remembers the highest token seen per
    shard (from its writes and reads) and reads with `consistency=session&after=`,
    which any replica that has applied that index may serve."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.tokens: dict[int, int] = {}

    def observe(self, token: str | None) -> None:
        parsed = parse_token(token) if token else None
        if parsed is not None:
            shard, index = parsed
            if index > self.tokens.get(shard, -1):
                self.tokens[shard] = index

    def _observe_response(self, response: Response) -> None:
        self.observe(response.token)
        if isinstance(response.body, dict):
            self.observe(response.body.get("token"))

    def after(self, shard: int | None) -> str | None:
        if shard is None:  # routes unknown: send every token, the server picks its shard's
            return ",".join(f"{s}:{i}" for s, i in sorted(self.tokens.items())) or None
        index = self.tokens.get(shard)
        return None if index is None else f"{shard}:{index}"

    async def put(self, namespace: str, memory_id: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        response = await self.client.put_raw(namespace, memory_id, content, **kw)
        self._observe_response(response)
        body: dict[str, Any] = response.body
        return body

    async def create(self, namespace: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        response = await self.client.create_raw(namespace, content, **kw)
        self._observe_response(response)
        body: dict[str, Any] = response.body
        return body

    async def delete(self, namespace: str, memory_id: str, **kw: Any) -> dict[str, Any]:
        response = await self.client.delete_raw(namespace, memory_id, **kw)
        self._observe_response(response)
        body: dict[str, Any] = response.body
        return body

    async def get(self, namespace: str, memory_id: str, *, consistency: str | None = None, **kw: Any) -> dict[str, Any]:
        """Session read (or the given level); NotFound also advances the session."""
        await self.client._ensure_routes()
        if consistency is None:
            consistency = "session"
            kw.setdefault("after", self.after(self.client.shard_of(namespace, memory_id)))
        try:
            response = await self.client.get_raw(namespace, memory_id, consistency=consistency, **kw)
        except NotFound as e:
            if isinstance(e.body, dict) and isinstance(e.body.get("error"), dict):
                self.observe(e.body["error"].get("token"))
            raise
        self.observe(response.token)
        body: dict[str, Any] = response.body
        return body


# -- the blocking facade ---------------------------------------------------------------
async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


class Client:
    """A blocking client: the same logic as AsyncClient, run on a private event-loop
    thread. Use as a context manager or call `close()`."""

    def __init__(self, urls: Sequence[str], **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raftmem-client", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self._async = self._run(self._make(urls, kw))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _make(urls: Sequence[str], kw: dict[str, Any]) -> AsyncClient:
        return AsyncClient(urls, **kw)

    def _run(self, awaitable: Awaitable[T]) -> T:
        if self._closed:
            if isinstance(awaitable, Coroutine):
                awaitable.close()
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._async.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def routes(self) -> RouteTable:
        return self._async.routes

    def put(self, namespace: str, memory_id: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        return self._run(self._async.put(namespace, memory_id, content, **kw))

    def create(self, namespace: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        return self._run(self._async.create(namespace, content, **kw))

    def get(self, namespace: str, memory_id: str, **kw: Any) -> dict[str, Any]:
        return self._run(self._async.get(namespace, memory_id, **kw))

    def delete(self, namespace: str, memory_id: str, **kw: Any) -> dict[str, Any]:
        return self._run(self._async.delete(namespace, memory_id, **kw))

    def list_page(self, namespace: str, **kw: Any) -> dict[str, Any]:
        return self._run(self._async.list_page(namespace, **kw))

    def list(self, namespace: str, **kw: Any) -> Iterator[dict[str, Any]]:
        pages = self._async.list(namespace, **kw)
        try:
            while True:
                try:
                    item = self._run(pages.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            if not self._closed:
                self._run(pages.aclose())

    def batch(self, ops: Sequence[Mapping[str, Any]], **kw: Any) -> builtins.list[BatchResult]:
        return self._run(self._async.batch(ops, **kw))

    def cluster(self) -> dict[str, Any]:
        return self._run(self._async.cluster())

    def refresh_routes(self) -> bool:
        return self._run(self._async.refresh_routes(force=True))

    def session(self) -> Session:
        return Session(self, self._async.session())


class Session:
    """The blocking face of AsyncSession."""

    def __init__(self, client: Client, inner: AsyncSession) -> None:
        self._client = client
        self._inner = inner

    @property
    def tokens(self) -> dict[int, int]:
        return self._inner.tokens

    def put(self, namespace: str, memory_id: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        return self._client._run(self._inner.put(namespace, memory_id, content, **kw))

    def create(self, namespace: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        return self._client._run(self._inner.create(namespace, content, **kw))

    def delete(self, namespace: str, memory_id: str, **kw: Any) -> dict[str, Any]:
        return self._client._run(self._inner.delete(namespace, memory_id, **kw))

    def get(self, namespace: str, memory_id: str, **kw: Any) -> dict[str, Any]:
        return self._client._run(self._inner.get(namespace, memory_id, **kw))
