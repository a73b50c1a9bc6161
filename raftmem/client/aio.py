"""The asyncio client: shard-aware routing, bounded retries, sessions (see the
package docstring for the rules)."""

from __future__ import annotations

import asyncio
import builtins
import itertools
import random
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp
import orjson

from .coordination import AsyncCoordination, HasFence
from .errors import (
    ClientError,
    ConnectionFailed,
    Indeterminate,
    Unavailable,
    error_from_response,
)
from .health import PROBE_TIMEOUT_S, HealthTable
from .retry import ATTEMPT_S_MIN, RetryPolicy, may_retry
from .routing import RouteTable
from .search import SearchMixin
from .session import AsyncSession
from .types import (
    CONSISTENCY_LEVELS,
    HEADER_CONTEXT,
    HEADER_IDEMPOTENCY_KEY,
    LEADER_LEVELS,
    LIST_PAGE_DEFAULT,
    BatchResult,
    Response,
    _memory_body,
    _memory_path,
    _new_key,
    _Request,
    bearer_headers,
)
from .watch import Watch, WatchGroup

TIMEOUT_S_DEFAULT = 10.0  # one attempt: above the server's 5 s write timeout + a forward
CLUSTER_TIMEOUT_S = 2.0  # one GET /v1/cluster while (re)loading the routes
ROUTES_REFRESH_INTERVAL_S = 0.2  # at most this often, however many requests fail at once
# A stale-tolerant read is served by a replica at once (a session read waits at
# most 0.5 s there): an attempt that takes longer moves on to another replica.
STALE_READ_ATTEMPT_S = 2.0
CONNECTIONS_MAX = 256
LIST_PAGES_MAX = 1_000_000  # an iterator never follows more cursors than this


class AsyncClient(AsyncCoordination, SearchMixin):
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
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`token`: the bearer token, for clusters that require one.
        `ssl_context`: for https nodes with a private CA or client certificates
        (`tls_context(cacert, cert, key)`)."""
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
        self.health_table = HealthTable(self._rng)
        self._probes: set[asyncio.Task[None]] = set()
        self._refresh_lock: asyncio.Lock | None = None
        self._refreshed_at = -ROUTES_REFRESH_INTERVAL_S
        self.stats = {"attempts": 0, "retries": 0, "route_refreshes": 0}
        self._auth = bearer_headers(token)
        self._ssl = ssl_context

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        for task in list(self._probes):
            task.cancel()
        if self._probes:
            await asyncio.gather(*self._probes, return_exceptions=True)
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=CONNECTIONS_MAX, ssl=self._ssl if self._ssl is not None else True)
            self._session = aiohttp.ClientSession(connector=connector)
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
        """Round robin over nodes that answer (all if none does)."""
        now = self._clock()
        urls = self._all_urls()
        live = [u for u in urls if self.health_table.usable(u, now)]
        pool = live or urls
        return pool[next(self._rr) % len(pool)]

    async def _url_for(self, request: _Request) -> str:
        now = self._clock()
        urls = self._all_urls()
        for due in self.health_table.due_probe(urls, now):
            self._start_probe(due)
        if self.route_direct and request.shard is not None:
            leader = self.routes.leader_url(request.shard)
            if leader is None:
                # Forgotten after a failure (or never known): ask again, rate-limited.
                await self.refresh_routes()
                leader = self.routes.leader_url(request.shard)
            if leader is not None and self.health_table.usable(leader, self._clock()):
                return leader
        if request.stale_tolerant:
            return self.health_table.pick(urls, now)
        return self._any_url()

    # -- health ----------------------------------------------------------------------
    def health(self) -> dict[str, dict[str, Any]]:
        """Per node URL: whether it answers, its latency estimate, its failures."""
        return self.health_table.snapshot(self._clock())

    def _start_probe(self, url: str) -> None:
        """A backed-off node whose back-off ran out is asked GET /healthz before
        real traffic goes back to it."""
        self.health_table.nodes[url].probing = True
        task = asyncio.get_running_loop().create_task(self._probe(url))
        self._probes.add(task)
        task.add_done_callback(self._probes.discard)

    async def _probe(self, url: str) -> None:
        started = self._clock()
        try:
            async with self._http().get(url + "/healthz", timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)):
                pass
        except (aiohttp.ClientError, TimeoutError) as e:
            self.health_table.no_answer(url, self._clock(), f"probe: {e.__class__.__name__}")
        else:
            self.health_table.answered(url, self._clock() - started)
        finally:
            self.health_table.nodes[url].probing = False

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
            self.health_table.no_answer(url, self._clock(), "connection refused")
            return None
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError):
            return None
        return body if isinstance(body, dict) else None

    # -- one request, with bounded retries ---------------------------------------------
    async def _send_once(self, url: str, request: _Request, timeout_s: float) -> Response:
        self.stats["attempts"] += 1
        session = self._http()
        started = self._clock()
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
            self.health_table.no_answer(url, self._clock(), "connection refused")
            raise ConnectionFailed(f"{url}: {e}") from e
        except (TimeoutError, aiohttp.ClientError) as e:
            what = "timed out" if isinstance(e, TimeoutError) else f"lost: {e.__class__.__name__}"
            self.health_table.no_answer(url, self._clock(), what)
            cls = Indeterminate if request.is_write else Unavailable
            raise cls(f"{request.method} {url}{request.path} {what}", code="no_answer") from e
        self.health_table.answered(url, self._clock() - started)
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
                attempt_s = min(request.timeout_s or self.timeout_s, remaining)
                if request.stale_tolerant:
                    attempt_s = min(attempt_s, STALE_READ_ATTEMPT_S)
                response = await self._send_once(url, request, attempt_s)
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
        if_fence: str | HasFence | None = None,
    ) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if if_match is not None:
            headers["If-Match"] = str(if_match)
        if if_fence is not None:
            headers["If-Fence"] = if_fence if isinstance(if_fence, str) else if_fence.if_fence
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
        embedding: Sequence[float] | None = None,
        ttl_refresh_on_read: bool = False,
        actor: str | None = None,
        if_match: int | str | None = None,
        if_none_match: bool = False,
        if_fence: str | HasFence | None = None,
        idempotency_key: str | None = None,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
        context: str | None = None,
    ) -> Response:
        """`if_fence`: a lock's `Lease` (or "ns/name:fence"): the write applies
        only while that lock is still held with that fence (raises `Fenced`)."""
        await self._ensure_routes()
        request = _Request(
            "PUT",
            _memory_path(namespace, memory_id),
            is_write=True,
            shard=self.shard_of(namespace, memory_id),
            headers=_with_context(self._write_headers(if_match, if_none_match, idempotency_key, idempotent, if_fence),
                                  context),
            body=orjson.dumps(_memory_body(agent_id, kind, content, tags, metadata, ttl_s, embedding, actor,
                                           ttl_refresh_on_read)),
        )
        return await self._send(request, retry)

    async def put(self, namespace: str, memory_id: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        """Upsert; returns the memory (with `version` and `token`). Keywords: agent_id,
        kind, tags, metadata, ttl_s, embedding (a list of floats: vector search),
        ttl_refresh_on_read (a sliding TTL), actor (who writes: kept in the history),
        if_match, if_none_match, idempotency_key, idempotent, retry."""
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
        embedding: Sequence[float] | None = None,
        ttl_refresh_on_read: bool = False,
        actor: str | None = None,
        idempotency_key: str | None = None,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
        context: str | None = None,
    ) -> Response:
        # The server derives the id from the Idempotency-Key, so a retry lands on
        # the same id; the shard is unknown here, so any node takes it.
        request = _Request(
            "POST",
            _memory_path(namespace),
            is_write=True,
            headers=_with_context(self._write_headers(None, False, idempotency_key, idempotent), context),
            body=orjson.dumps(_memory_body(agent_id, kind, content, tags, metadata, ttl_s, embedding, actor,
                                           ttl_refresh_on_read)),
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
        context: str | None = None,
        leader: bool = False,
    ) -> Response:
        """`leader`: send a stale-tolerant read to the shard's leader anyway (a
        session's read right after its write: the leader has it at once)."""
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
        # A stale-tolerant read sent to the leader by preference stays stale-tolerant:
        # a short attempt, then any healthy replica (a hung leader must not take the
        # whole deadline of a read every replica can serve).
        request = _Request(
            "GET",
            _memory_path(namespace, memory_id),
            is_write=False,
            shard=self.shard_of(namespace, memory_id) if leader_bound or leader else None,
            params=params,
            headers=_with_context({}, context),
            stale_tolerant=not leader_bound,
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
        if_fence: str | HasFence | None = None,
        idempotency_key: str | None = None,
        idempotent: bool | None = None,
        retry: RetryPolicy | None = None,
        context: str | None = None,
        actor: str | None = None,
    ) -> Response:
        await self._ensure_routes()
        headers = _with_context(self._write_headers(if_match, False, idempotency_key, idempotent, if_fence), context)
        headers.pop("Content-Type")
        request = _Request(
            "DELETE",
            _memory_path(namespace, memory_id),
            is_write=True,
            shard=self.shard_of(namespace, memory_id),
            headers=headers,
            params={"actor": actor} if actor is not None else {},
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
        self, ops: Sequence[Mapping[str, Any]], *, atomic: bool = False, retry: RetryPolicy | None = None
    ) -> builtins.list[BatchResult]:
        """POST /v1/batch. Write operations get an idempotency_key when the client is
        idempotent. With routes known, the operations go straight to their shard
        leaders: one request per leader node, sent together (an atomic batch is
        one shard's, so one request). A part is retried only if every write in
        it carries a key."""
        prepared = [dict(op) for op in ops]
        for op in prepared:
            if op.get("op") in ("put", "create", "delete") and op.get("idempotency_key") is None and self.idempotent:
                op["idempotency_key"] = _new_key()
        await self._ensure_routes()
        groups: dict[str | None, builtins.list[int]] = {}  # leader node (None: not known) -> positions
        route: dict[str | None, int | None] = {}  # a shard that node leads: where its part goes
        for i, op in enumerate(prepared):
            shard = self.shard_of(str(op.get("namespace")), str(op["id"])) if op.get("id") is not None else None
            node = self.routes.leaders.get(shard) if self.route_direct and shard is not None else None
            groups.setdefault(node, []).append(i)
            route.setdefault(node, shard)
        if atomic or len(groups) == 1:
            first = next(iter(route.values()))
            groups, route = {None: list(range(len(prepared)))}, {None: first}
        parts = {route[node]: positions for node, positions in groups.items()}
        answers = await asyncio.gather(*(
            self._batch_part([prepared[i] for i in positions], shard, atomic, retry)
            for shard, positions in parts.items()
        ))
        out: builtins.list[BatchResult] = [BatchResult(0, None)] * len(prepared)
        for positions, results in zip(parts.values(), answers, strict=True):
            for i, result in zip(positions, results, strict=True):
                out[i] = result
        return out

    async def _batch_part(
        self, ops: builtins.list[dict[str, Any]], shard: int | None, atomic: bool, retry: RetryPolicy | None
    ) -> builtins.list[BatchResult]:
        writes = [op for op in ops if op.get("op") in ("put", "create", "delete")]
        request = _Request(
            "POST",
            "/v1/batch",
            is_write=bool(writes),
            shard=shard,
            headers={"Content-Type": "application/json"},
            body=orjson.dumps({"ops": ops, "atomic": atomic} if atomic else {"ops": ops}),
            keyed=bool(writes) and all(op.get("idempotency_key") is not None for op in writes),
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

    async def history(self, namespace: str, memory_id: str, *, consistency: str | None = None,
                      limit: int | None = None, retry: RetryPolicy | None = None) -> builtins.list[dict[str, Any]]:
        """A memory's last versions, newest first (`event`, `version`, `token`,
        `time`, `actor`, `value`, ...). Raises NotFound when it has none."""
        params = {k: str(v) for k, v in (("consistency", consistency), ("limit", limit)) if v is not None}
        leader_bound = consistency is None or consistency in LEADER_LEVELS
        request = _Request("GET", _memory_path(namespace, memory_id) + "/history", is_write=False,
                           shard=self.shard_of(namespace, memory_id) if leader_bound else None, params=params,
                           stale_tolerant=not leader_bound)
        versions: builtins.list[dict[str, Any]] = (await self._send(request, retry)).body["versions"]
        return versions

    def watch(self, **kw: Any) -> Watch:
        """Changes as they commit, from `after` (tokens) or from now: an async
        iterator of `WatchEvent` (and `Progress` with progress=True) that
        resumes by itself after a disconnect, an overflow or a node failure.
        Keywords: namespace, namespace_prefix, agent_id, tag, after,
        progress_ms, require_leader, progress, outage_s (see raftmem.client.watch)."""
        return Watch(self, **kw)

    def watch_many(self, watches: Mapping[str, Mapping[str, Any]], **kw: Any) -> WatchGroup:
        """Many watches on one connection (POST /v1/watch): `watches` maps a
        watch's id to its filter (namespace, namespace_prefix, agent_id, tag)
        and `after`; an async iterator of `(watch_id, change)` that resumes by
        itself, every watch from its own tokens (`group.tokens`). Keywords:
        progress_ms, require_leader, progress, outage_s."""
        return WatchGroup(self, watches, **kw)

    def session(self, context: str | None = None) -> AsyncSession:
        """A session; `context` continues another agent's (its `session.context`):
        this one then reads everything that one wrote and saw (causal)."""
        session = AsyncSession(self)
        if context:
            session.observe_context(context)
        return session


def _with_context(headers: dict[str, str], context: str | None) -> dict[str, str]:
    if context:
        headers[HEADER_CONTEXT] = context
    return headers
