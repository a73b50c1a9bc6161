"""The aiohttp JSON API (DESIGN.md section 4). Handlers hold no try/except:
errors are mapped to HTTP once, in `_error_to_response`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import orjson
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError

from . import openapi
from . import validation as v
from .auth import BODY_SCOPED_PATHS, INTERNAL_PREFIX, Authenticator, need_for
from .config import Config
from .errors import (
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RaftmemError,
    RequestTimeout,
)
from .metrics import Metrics
from .service import (
    CONTEXT_HEADER,
    FORWARD_HEADERS,
    FORWARD_HOPS_MAX,
    FORWARDED_HEADER,
    INTERNAL_BATCH_PATH,
    RELAY_PATH,
    Call,
    FileBody,
    ForwardLost,
    ForwardNotSent,
    MemoryService,
    Reply,
    error_reply,
    with_context,
)
from .service.tasks import CLAIM_PATH_ID
from .service.watchmux import Mux
from .service.watchstream import NDJSON as NDJSON_TYPE
from .service.watchstream import WRITE_BYTES_MAX as WATCH_WRITE_BYTES_MAX
from .service.watchstream import WatchStream, stream_headers

log = logging.getLogger(__name__)

# Passed back from a forward (compared without case: aiohttp's client gives "Etag").
PASS_HEADERS = frozenset(h.lower() for h in ("ETag", "Retry-After", "Idempotent-Replayed", "Content-Disposition"))
STREAM_CHUNK_BYTES = 1 << 20
# A snapshot download between nodes fails when no byte arrives for this long.
DOWNLOAD_STALL_S = 60.0
BACKUP_BYTES_MAX = 64 << 30
RESTORE_CHUNK_BYTES_MAX = 256 << 20
# How often a waiting request (a lock acquisition, a task claim) looks whether
# its client is still connected.
DISCONNECT_POLL_S = 0.05
# Pooled connections for forwards to other nodes (waiting forwards have their
# own pool, bounded by coordination.waiters_max).
FORWARD_CONNECTIONS_MAX = 256
FORWARD_CONNECTIONS_PER_PEER_MAX = 128
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BODY_TIMEOUT_KEY = web.AppKey("body_timeout_s", float)


class RequestTracker(Protocol):
    """Told when a connection starts and ends handling a request (httpserver's guard)."""

    def started(self, handler: Any) -> None: ...

    def finished(self, handler: Any) -> None: ...


def _json_response(
    status: int, body: Any, headers: dict[str, str] | None = None, content_type: str = "application/json"
) -> web.Response:
    data = body if isinstance(body, bytes | bytearray) else orjson.dumps(body)
    return web.Response(status=status, body=data, headers=headers, content_type=content_type)


def _error_response(error: RaftmemError, headers: dict[str, str] | None = None) -> web.Response:
    return _reply(error_reply(error, headers))


def _error_to_response(request: web.Request, exc: Exception) -> web.Response:
    """The one mapping of errors to HTTP; re-raises what aiohttp itself must see."""
    try:
        raise exc
    except RaftmemError as e:
        return _error_response(e)
    except web.HTTPRequestEntityTooLarge as e:
        return _error_response(PayloadTooLarge(f"body exceeds the limit: {e.text}"))
    except web.HTTPNotFound:
        return _error_response(NotFound(f"no route {request.method} {request.path}"))
    except web.HTTPMethodNotAllowed as e:
        allowed = sorted(e.allowed_methods)
        err = RaftmemError(f"method {request.method} not allowed on {request.path}", allowed=allowed)
        err.status, err.code = 405, "method_not_allowed"
        return _error_response(err, {"Allow": ", ".join(allowed)})  # RFC 9110 15.5.6
    except ClientGone as e:
        # Nobody reads this answer; the status is for the logs and metrics.
        gone = RaftmemError(str(e))
        gone.status, gone.code = 499, "client_gone"
        return _error_response(gone)
    except web.HTTPException:
        raise
    except (HttpProcessingError, RequestPayloadError) as e:
        # e.g. a body that does not decode as its Content-Encoding says
        return _error_response(InvalidRequest(f"unreadable request body: {e}"))
    except ConnectionResetError:
        # The client went away while its body was being read: nothing was done,
        # and nobody is left to answer (not a server fault).
        log.debug("client of %s %s went away mid-request", request.method, request.path)
        return _error_response(InvalidRequest("the client closed the connection before its request was read"))
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response(RaftmemError("internal error; see the node's log"))


class _Sent:
    """Whether a forward got a connection (so it may have been sent): told by
    aiohttp's tracing."""

    def __init__(self) -> None:
        self.connected = False


async def _connected(_session: aiohttp.ClientSession, ctx: Any, _params: Any) -> None:
    if isinstance(ctx.trace_request_ctx, _Sent):
        ctx.trace_request_ctx.connected = True


class HttpForwarder:
    """Forwards a Call to another node's API (the Forwarder of service.py).

    Two pools: one for ordinary forwards, and one for calls that wait at the
    leader (`Call.waits`: a lock acquisition or task claim with `wait_ms`),
    which hold a connection for up to `wait_ms`. In one pool, 128 waiters to a
    leader left every other forward to it queued for a connection until it
    timed out, reported as indeterminate though never sent. Waiting forwards
    are bounded per node by `coordination.waiters_max` (429 past it), as the
    leader bounds its waiters. A forward whose timeout runs out before it got a
    connection was never sent: ForwardNotSent (503), not ForwardLost (504)."""

    def __init__(self, config: Config, ssl_context: ssl.SSLContext | None = None) -> None:
        """`ssl_context`: the node's client context when TLS is on (peers verified,
        this node's certificate presented)."""
        self._ssl = ssl_context
        self._idle_timeout_s = config.limits.idle_timeout_ms / 1000
        self.urls = {n.id: config.url_of(n) for n in config.nodes}
        self._session: aiohttp.ClientSession | None = None
        self._waiting_session: aiohttp.ClientSession | None = None
        self.waiting_max = config.coordination.waiters_max
        self.waiting = 0  # waiting forwards in flight from this node
        # Node to node: the cluster token, never the client's (checked at the edge).
        self._auth_headers = Authenticator(config.auth).cluster_headers()

    def set_urls(self, urls: dict[str, str]) -> None:
        self.urls = dict(urls)

    def _new_session(self, limit: int, limit_per_host: int) -> aiohttp.ClientSession:
        # Idle pooled connections are dropped here before the peer's idle timeout
        # (limits.idle_timeout_ms) could close one under a request being sent.
        connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit_per_host,
                                         ssl=self._ssl if self._ssl else True,
                                         keepalive_timeout=min(15.0, self._idle_timeout_s / 2))
        tracing = aiohttp.TraceConfig()
        tracing.on_connection_create_end.append(_connected)
        tracing.on_connection_reuseconn.append(_connected)
        session = aiohttp.ClientSession(connector=connector, trace_configs=[tracing])
        # aiohttp silently resends a request once when a kept-alive connection
        # drops: a forwarded write could apply twice, and the resend failing to
        # connect would report a write that did apply as "not sent".
        session._retry_connection = False
        return session

    async def start(self) -> None:
        self._session = self._new_session(FORWARD_CONNECTIONS_MAX, FORWARD_CONNECTIONS_PER_PEER_MAX)
        # The count below bounds it: this pool never makes a waiting forward queue.
        self._waiting_session = self._new_session(self.waiting_max, 0)

    async def close(self) -> None:
        for session in (self._session, self._waiting_session):
            if session is not None:
                await session.close()

    async def forward(self, node_id: str, call: Call, timeout_s: float) -> Reply:
        if not call.waits:
            assert self._session is not None
            return await self._forward(self._session, node_id, call, timeout_s)
        assert self._waiting_session is not None
        if self.waiting >= self.waiting_max:
            raise Overloaded(f"too many waiting requests forwarded from this node ({self.waiting}; limit "
                             f"coordination.waiters_max={self.waiting_max})")
        self.waiting += 1
        try:
            return await self._forward(self._waiting_session, node_id, call, timeout_s)
        finally:
            self.waiting -= 1

    async def _forward(self, session: aiohttp.ClientSession, node_id: str, call: Call, timeout_s: float) -> Reply:
        headers = {h: call.headers[h] for h in FORWARD_HEADERS if h in call.headers}
        headers[FORWARDED_HEADER] = str(call.hops + 1)
        headers.update(self._auth_headers)
        base = self.urls.get(node_id)
        if base is None:
            raise ForwardNotSent(f"no address known for node {node_id}")
        url = base + call.path
        # A download may take long: it fails only when the data stops flowing.
        timeout = (
            aiohttp.ClientTimeout(total=None, sock_connect=timeout_s, sock_read=DOWNLOAD_STALL_S)
            if call.download is not None else aiohttp.ClientTimeout(total=timeout_s)
        )
        sent = _Sent()
        try:
            async with session.request(
                call.method,
                url,
                params=dict(call.query),
                data=call.body or None,
                headers=headers,
                timeout=timeout,
                trace_request_ctx=sent,
            ) as resp:
                out = {k: v for k, v in resp.headers.items()
                       if k.lower().startswith("x-raftmem-") or k.lower() in PASS_HEADERS}
                ctype = resp.content_type or "application/json"
                if call.download is not None and resp.status == 200:
                    with open(call.download, "wb") as f:
                        async for chunk in resp.content.iter_chunked(STREAM_CHUNK_BYTES):
                            await asyncio.to_thread(f.write, chunk)
                    return Reply(resp.status, FileBody(call.download), out, ctype)
                return Reply(resp.status, await resp.read(), out, ctype)
        except aiohttp.ClientConnectorError as e:
            raise ForwardNotSent(str(e)) from e
        except (TimeoutError, aiohttp.ClientError) as e:
            if not sent.connected:  # timed out waiting for a pooled connection, or connecting
                raise ForwardNotSent(f"no connection to {node_id} in time: {e!r}") from e
            raise ForwardLost(str(e)) from e


SCOPE_KEY = "raftmem_scope"  # the namespaces the request's token is limited to


def _call(request: web.Request, body: bytes = b"") -> Call:
    try:
        hops = int(request.headers.get(FORWARDED_HEADER, "0"))
    except ValueError:
        hops = -1
    if not 0 <= hops <= FORWARD_HOPS_MAX + 1:  # the count after the last allowed hop
        raise InvalidRequest(f"{FORWARDED_HEADER} must be an integer in [0, {FORWARD_HOPS_MAX + 1}]")
    return Call(
        method=request.method,
        path=request.path,
        # Not copied: aiohttp's proxies are read-only views, and header lookups
        # must stay case-insensitive (a client's "if-match" is If-Match).
        query=request.query,
        headers=request.headers,
        body=body,
        hops=hops,
        scope=request.get(SCOPE_KEY),
    )


def _shard(request: web.Request) -> int:
    """The path's shard number (its range is the service's to check)."""
    return v.int_param("shard", request.match_info["shard"], 0, -1, 1 << 16)


async def _body(request: web.Request) -> bytes:
    """The whole body (at most limits.body_bytes_max: aiohttp answers 413 past
    it), or 408 when it does not arrive within limits.body_timeout_ms."""
    timeout_s = request.app[BODY_TIMEOUT_KEY]
    try:
        return await asyncio.wait_for(request.read(), timeout_s)
    except TimeoutError:
        raise RequestTimeout(f"the body did not arrive within {timeout_s:g} s") from None


async def _chunks(request: web.Request, chunk_bytes: int = 1 << 16) -> AsyncIterator[bytes]:
    """A large body (a backup) chunk by chunk: 408 when it stalls for limits.body_timeout_ms."""
    timeout_s = request.app[BODY_TIMEOUT_KEY]
    while True:
        try:
            chunk = await asyncio.wait_for(request.content.read(chunk_bytes), timeout_s)
        except TimeoutError:
            raise RequestTimeout(f"the body stalled for {timeout_s:g} s") from None
        if not chunk:
            return
        yield chunk


async def _read_limited(request: web.Request, limit: int) -> bytes:
    data = bytearray()
    async for chunk in _chunks(request):
        data += chunk
        if len(data) > limit:
            raise PayloadTooLarge(f"body larger than {limit} bytes")
    return bytes(data)


def _reply(reply: Reply) -> web.Response:
    return _json_response(reply.status, reply.body, reply.headers, reply.content_type)


async def _send(request: web.Request, reply: Reply) -> web.StreamResponse:
    """A reply whose body may be a file: streamed (sendfile) before the caller
    removes it, so the response is complete when this returns."""
    if not isinstance(reply.body, FileBody):
        return _reply(reply)
    response = web.FileResponse(reply.body.path, chunk_size=STREAM_CHUNK_BYTES, status=reply.status,
                                headers={**reply.headers, "Content-Type": reply.content_type})
    await response.prepare(request)
    return response


class ClientGone(Exception):
    """The client of a waiting request disconnected; the request was cancelled."""


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class _StreamBody:
    """A streamed response's body (raftmem.service.watchmux.Body): aiohttp
    writes its head; then, when its framing is plain (chunked or not, never
    compressed), events go straight to the transport, framed as aiohttp would
    (`raw`), without a coroutine per write."""

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self.request = request
        self.response = response
        self.raw = False
        self._chunked = False

    async def start(self) -> None:
        await self.response.prepare(self.request)
        writer = self.request.writer
        framing = getattr(writer, "chunked", None)  # an HTTP/1.0 client: plain
        send_headers = getattr(writer, "send_headers", None)  # aiohttp holds the head for the first write
        if isinstance(framing, bool) and callable(send_headers) and hdrs.CONTENT_ENCODING not in self.response.headers:
            send_headers()
            self.raw, self._chunked = True, framing

    def alive(self) -> bool:
        return not _gone(self.request)

    def buffered(self) -> int | None:
        transport = self.request.transport
        if transport is None or transport.is_closing():
            return None
        return int(transport.get_write_buffer_size())

    def write(self, data: bytes) -> None:
        transport = self.request.transport
        if not data or transport is None:
            return  # an empty chunk would end the body
        try:
            if self._chunked:
                transport.writelines((b"%x\r\n" % len(data), data, b"\r\n"))
            else:
                transport.write(data)
        except Exception:  # noqa: BLE001 (a broken connection: the streams find out, alive())
            pass

    async def send(self, data: bytes) -> None:
        await self.response.write(data)

    async def drain(self) -> None:
        await self.request.writer.drain()

    def abort(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()


async def _while_connected(request: web.Request, work: Awaitable[Reply],
                           give_back: Callable[[Reply], Awaitable[object]]) -> Reply:
    """Run `work` while the client stays connected, and cancel it when the client
    goes: a waiter that can no longer learn of its lock or task gives up its
    place (the service gives back what a proposal in flight wins). A client
    found gone only once `work` succeeded (it left after the acquisition or
    claim committed, before the answer could be written) gets what it won
    given back (`give_back(reply)`), not held until its lease runs out. A
    client that goes after this last look, while the answer is written, still
    leaves it held until the lease ends: narrowed, not closed."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                reply = task.result()
                if not (_gone(request) and 200 <= reply.status < 300 and reply.status != 204):
                    return reply
                try:
                    await give_back(reply)
                except Exception as e:  # noqa: BLE001 (the lease or claim runs out instead)
                    log.warning("%s %s: giving back what a departed client won failed: %s",
                                request.method, request.path, e)
                raise ClientGone(f"{request.method} {request.path}: the client disconnected; what it won "
                                 "was given back")
            if _gone(request):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                raise ClientGone(f"{request.method} {request.path}: the client disconnected")
    finally:
        if not task.done():
            task.cancel()


class Api:
    def __init__(self, service: MemoryService, metrics: Metrics) -> None:
        self.service = service
        self.metrics = metrics
        # The config's document: built once (it depends on nothing else).
        self._document = openapi.build(service.config)

    async def _memories(self, call: Call, run: Callable[[Call], Awaitable[Reply]], batch: bool = False) -> web.Response:
        """A memory request: its causal context checked first (a bad one changes
        nothing), and returned advanced by the reply (X-Raftmem-Context)."""
        context = v.context(call.header(CONTEXT_HEADER), self.service.config.shards)
        return _reply(with_context(await run(call), context, batch))

    async def put(self, request: web.Request) -> web.Response:
        ns, mid = request.match_info["namespace"], request.match_info["id"]
        return await self._memories(_call(request, await _body(request)),
                                    lambda call: self.service.memories.put(ns, mid, call))

    async def create(self, request: web.Request) -> web.Response:
        ns = request.match_info["namespace"]
        return await self._memories(_call(request, await _body(request)),
                                    lambda call: self.service.memories.create(ns, call))

    async def get(self, request: web.Request) -> web.Response:
        ns, mid = request.match_info["namespace"], request.match_info["id"]
        return await self._memories(_call(request), lambda call: self.service.queries.get(ns, mid, call))

    async def delete(self, request: web.Request) -> web.Response:
        ns, mid = request.match_info["namespace"], request.match_info["id"]
        return await self._memories(_call(request), lambda call: self.service.memories.delete(ns, mid, call))

    async def list(self, request: web.Request) -> web.Response:
        ns = request.match_info["namespace"]
        # Ordered by a time (?order=-updated_at): the derived indexes serve it.
        run = self.service.search.list_ordered if request.query.get("order") else self.service.queries.list
        return await self._memories(_call(request), lambda call: run(ns, call))

    async def history(self, request: web.Request) -> web.Response:
        ns, mid = request.match_info["namespace"], request.match_info["id"]
        return await self._memories(_call(request), lambda call: self.service.histories.history(ns, mid, call))

    async def watch(self, request: web.Request) -> web.StreamResponse:
        """A stream: errors found before it starts (400, 410, 429, 503) are
        answered as usual; once it runs, the stream's last event says why it ended."""
        stream = await self.service.watches.open(_call(request))
        body = _StreamBody(request, web.StreamResponse(status=200, headers=stream.headers))

        def send_now(data: bytes) -> bool:
            """Write at once when nothing is buffered before it (else False,
            nothing written): the connection's order is kept, and a client
            that does not read makes the stream wait in its writer, bounded.
            Called from the node's one fan-out: never raises."""
            if not body.raw or not data or body.buffered() != 0:
                return False
            body.write(data)
            return True

        try:
            await stream.run(body.start, body.send, body.alive, send_now)
        except Exception:
            if not body.response.prepared:
                raise  # answered as usual
            # Its head is out: an error answer now would land inside the body.
            log.exception("a watch stream failed")
            body.abort()
        return body.response

    async def watch_many(self, request: web.Request) -> web.StreamResponse:
        """POST /v1/watch: many watches on one connection (raftmem.service.watchmux),
        each line `{"watch": id, "events": [...]}`; the response ends when every
        watch has (or the client goes)."""
        streams = await self.service.watches.open_many(_call(request, await _body(request)))
        sse = NDJSON_TYPE not in (request.headers.get("Accept") or "")  # as GET: SSE unless NDJSON is asked for
        headers = stream_headers(sse, self.service.router.node_id)
        body = _StreamBody(request, web.StreamResponse(status=200, headers=headers))
        watches = self.service.watches

        def wrote() -> None:
            watches.stats.writes += 1

        mux = Mux(body, sse, max(watches.limits.buffer_bytes_max, WATCH_WRITE_BYTES_MAX), wrote)

        async def no_start() -> None:
            pass  # the response has started: the first progress of each watch goes out as it comes

        async def one(watch_id: str, stream: WatchStream) -> None:
            send, send_now = mux.writer(watch_id)
            try:
                await stream.run(no_start, send, body.alive, send_now)
            except Exception:  # noqa: BLE001 (a defect: its connection ends, below, and the client resumes)
                log.exception("watch %r of a connection failed", watch_id)
            if not stream.finished:
                body.abort()  # ended without its last event: every watch of the connection resumes elsewhere

        try:
            await body.start()
            async with asyncio.TaskGroup() as group:  # one failing ends the others (no stream left behind)
                for watch_id, stream in streams:
                    group.create_task(one(watch_id, stream))
        finally:
            mux.flush()
            for _watch_id, stream in streams:
                stream.release()  # not started, or a task cancelled before it ran (once only: run gave back the rest)
        return body.response

    async def watch_fetch(self, request: web.Request) -> web.Response:
        return _reply(await self.service.watches.fetch(_shard(request), _call(request)))

    async def touch(self, request: web.Request) -> web.Response:
        return _reply(await self.service.lifecycle.touch(_shard(request), _call(request, await request.read())))

    async def touches_drain(self, request: web.Request) -> web.Response:
        return _reply(await self.service.lifecycle.drain(_shard(request)))

    async def lifecycle_shard(self, request: web.Request) -> web.Response:
        return _reply(await self.service.lifecycle.run_here(_shard(request), _call(request)))

    async def lifecycle_run(self, request: web.Request) -> web.Response:
        return _reply(await self.service.lifecycle.run_all(_call(request)))

    async def list_shard(self, request: web.Request) -> web.Response:
        ns = request.match_info["namespace"]
        return _reply(await self.service.queries.list_shard(_shard(request), ns, _call(request)))

    async def batch(self, request: web.Request) -> web.Response:
        return await self._memories(_call(request, await _body(request)), self.service.batches.batch, batch=True)

    async def relayed(self, request: web.Request) -> web.Response:
        return _reply(await self.service.memories.relayed(_call(request, await _body(request))))

    async def internal_batch(self, request: web.Request) -> web.Response:
        return _reply(await self.service.batches.internal(_call(request, await _body(request))))

    # -- recall ---------------------------------------------------------------------------
    async def search(self, request: web.Request) -> web.Response:
        return _reply(await self.service.search.search(_call(request, await _body(request))))

    async def search_shard(self, request: web.Request) -> web.Response:
        return _reply(await self.service.search.shard_internal(_shard(request), _call(request, await _body(request))))

    async def barriers(self, request: web.Request) -> web.Response:
        return _reply(await self.service.search.barriers_internal(_call(request)))

    async def barrier(self, request: web.Request) -> web.Response:
        return _reply(await self.service.search.barrier_internal(_shard(request), _call(request)))

    async def namespaces(self, request: web.Request) -> web.Response:
        return _reply(await self.service.recall.namespaces(_call(request)))

    async def namespaces_shard(self, request: web.Request) -> web.Response:
        return _reply(await self.service.recall.namespaces_internal(_shard(request), _call(request)))

    async def summary(self, request: web.Request) -> web.Response:
        return _reply(await self.service.recall.summary(request.match_info["namespace"], _call(request)))

    async def summary_shard(self, request: web.Request) -> web.Response:
        ns = request.match_info["namespace"]
        return _reply(await self.service.recall.summary_internal(_shard(request), ns, _call(request)))

    async def reindex(self, request: web.Request) -> web.Response:
        return _reply(await self.service.recall.reindex(_call(request)))

    async def index_status(self, request: web.Request) -> web.Response:
        return _reply(await self.service.recall.index_status(_call(request)))

    async def index_check(self, request: web.Request) -> web.Response:
        return _reply(await self.service.recall.index_check(_shard(request), _call(request)))

    async def transfer_leader(self, request: web.Request) -> web.Response:
        return _reply(await self.service.transfers.transfer_leader(_shard(request), _call(request)))

    async def shard_snapshot(self, request: web.Request) -> web.StreamResponse:
        with self.service.transfers.scratch() as tmp:
            call = _call(request)
            call.download = Path(tmp) / "shard.snapshot"
            return await _send(request, await self.service.transfers.shard_snapshot(_shard(request), call))

    async def apply_restore(self, request: web.Request) -> web.Response:
        body = await _read_limited(request, RESTORE_CHUNK_BYTES_MAX)
        return _reply(await self.service.transfers.apply_restore(_shard(request), _call(request, body)))

    async def backup(self, request: web.Request) -> web.StreamResponse:
        with self.service.transfers.scratch() as tmp:
            return await _send(request, await self.service.transfers.backup(_call(request), Path(tmp)))

    async def restore(self, request: web.Request) -> web.Response:
        with self.service.transfers.scratch() as tmp:
            path = Path(tmp) / "upload.backup"
            size = 0
            with open(path, "wb") as f:
                async for chunk in _chunks(request):
                    size += len(chunk)
                    if size > BACKUP_BYTES_MAX:
                        raise PayloadTooLarge(f"backup larger than {BACKUP_BYTES_MAX} bytes")
                    f.write(chunk)
            return _reply(await self.service.transfers.restore(path, Path(tmp)))

    async def members(self, request: web.Request) -> web.Response:
        return _reply(await self.service.membership.members(_call(request)))

    async def member_add(self, request: web.Request) -> web.Response:
        return _reply(await self.service.membership.member_add(_call(request, await _body(request))))

    async def member_remove(self, request: web.Request) -> web.Response:
        return _reply(await self.service.membership.member_remove(request.match_info["node"], _call(request)))

    async def rebalance(self, request: web.Request) -> web.Response:
        return _reply(await self.service.membership.rebalance(_call(request)))

    async def internal_members(self, request: web.Request) -> web.Response:
        return _reply(await self.service.membership.internal_write_table(_call(request, await _body(request))))

    # -- locks and tasks -------------------------------------------------------------
    async def lock_acquire(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        call = _call(request, await request.read())
        return _reply(await _while_connected(request, self.service.locks.acquire(ns, name, call),
                                             lambda reply: self.service.locks.give_back(ns, name, reply)))

    async def lock_renew(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        return _reply(await self.service.locks.renew(ns, name, _call(request, await _body(request))))

    async def lock_release(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        return _reply(await self.service.locks.release(ns, name, _call(request, await _body(request))))

    async def lock_show(self, request: web.Request) -> web.Response:
        ns, name = request.match_info["namespace"], request.match_info["name"]
        return _reply(await self.service.locks.show(ns, name, _call(request)))

    async def task_add(self, request: web.Request) -> web.Response:
        return _reply(await self.service.tasks.enqueue(request.match_info["namespace"],
                                                       _call(request, await _body(request))))

    async def task_claim(self, request: web.Request) -> web.Response:
        ns = request.match_info["namespace"]
        call = _call(request, await request.read())
        return _reply(await _while_connected(request, self.service.tasks.claim(ns, call),
                                             lambda reply: self.service.tasks.give_back(ns, reply)))

    async def task_settle(self, request: web.Request) -> web.Response:
        ns, tid, action = (request.match_info[k] for k in ("namespace", "id", "action"))
        return _reply(await self.service.tasks.settle(ns, tid, action, _call(request, await _body(request))))

    async def task_get(self, request: web.Request) -> web.Response:
        ns, tid = request.match_info["namespace"], request.match_info["id"]
        return _reply(await self.service.tasks.get(ns, tid, _call(request)))

    async def task_list(self, request: web.Request) -> web.Response:
        return _reply(await self.service.tasks.list(request.match_info["namespace"], _call(request)))

    async def cluster(self, _request: web.Request) -> web.Response:
        return _reply(self.service.status.cluster())

    async def healthz(self, _request: web.Request) -> web.Response:
        return _json_response(200, {"status": "ok", "node": self.service.node_id})

    async def readyz(self, request: web.Request) -> web.Response:
        sync = v.flag("sync", request.query.get("sync"))
        ready, problems = self.service.status.readiness(sync=sync)
        body = {"ready": ready, "node": self.service.node_id, "problems": problems}
        return _json_response(200 if ready else 503, body, None if ready else {"Retry-After": "1"})

    async def metrics_handler(self, _request: web.Request) -> web.Response:
        data, content_type = self.metrics.render(self.service)
        return web.Response(body=data, headers={"Content-Type": content_type})

    async def openapi(self, _request: web.Request) -> web.Response:
        return _json_response(200, self._document)


# Every route: method, path, the Api method that serves it. The OpenAPI document
# describes each public one (tests/unit/test_contract_rules.py checks both ways).
ROUTES: tuple[tuple[str, str, str], ...] = (
    ("PUT", "/v1/memories/{namespace}/{id}", "put"),
    ("GET", "/v1/memories/{namespace}/{id}", "get"),
    ("DELETE", "/v1/memories/{namespace}/{id}", "delete"),
    ("POST", "/v1/memories/{namespace}", "create"),
    ("GET", "/v1/memories/{namespace}", "list"),
    ("GET", "/v1/memories/{namespace}/{id}/history", "history"),
    ("GET", "/v1/watch", "watch"),
    ("POST", "/v1/watch", "watch_many"),
    ("GET", "/v1/internal/shards/{shard}/changes", "watch_fetch"),
    ("POST", "/v1/internal/shards/{shard}/touch", "touch"),
    ("POST", "/v1/internal/shards/{shard}/touches/drain", "touches_drain"),
    ("POST", "/v1/internal/shards/{shard}/lifecycle", "lifecycle_shard"),
    ("POST", "/v1/admin/lifecycle/run", "lifecycle_run"),
    ("GET", "/v1/internal/shards/{shard}/list/{namespace}", "list_shard"),
    ("POST", "/v1/batch", "batch"),
    ("POST", INTERNAL_BATCH_PATH, "internal_batch"),
    ("POST", RELAY_PATH, "relayed"),
    ("POST", "/v1/locks/{namespace}/{name}", "lock_acquire"),
    ("GET", "/v1/locks/{namespace}/{name}", "lock_show"),
    ("DELETE", "/v1/locks/{namespace}/{name}", "lock_release"),
    ("POST", "/v1/locks/{namespace}/{name}/renew", "lock_renew"),
    ("POST", "/v1/tasks/{namespace}", "task_add"),
    ("GET", "/v1/tasks/{namespace}", "task_list"),
    ("POST", "/v1/tasks/{namespace}/claim", "task_claim"),
    ("GET", "/v1/tasks/{namespace}/{id:(?!" + CLAIM_PATH_ID + "$)[^{}/]+}", "task_get"),  # not the claim path
    ("POST", "/v1/tasks/{namespace}/{id}/{action}", "task_settle"),
    ("GET", "/v1/cluster", "cluster"),
    ("POST", "/v1/admin/shards/{shard}/transfer-leader", "transfer_leader"),
    ("GET", "/v1/admin/backup", "backup"),
    ("GET", "/v1/admin/members", "members"),
    ("POST", "/v1/admin/members", "member_add"),
    ("DELETE", "/v1/admin/members/{node}", "member_remove"),
    ("POST", "/v1/admin/rebalance", "rebalance"),
    ("POST", "/v1/internal/members", "internal_members"),
    ("POST", "/v1/admin/restore", "restore"),
    ("GET", "/v1/internal/shards/{shard}/snapshot", "shard_snapshot"),
    ("POST", "/v1/internal/shards/{shard}/restore", "apply_restore"),
    ("POST", "/v1/search", "search"),
    ("GET", "/v1/namespaces", "namespaces"),
    ("GET", "/v1/namespaces/{namespace}/summary", "summary"),
    ("POST", "/v1/admin/reindex", "reindex"),
    ("GET", "/v1/admin/indexes", "index_status"),
    ("GET", "/v1/admin/indexes/{shard}/check", "index_check"),
    ("POST", "/v1/internal/shards/{shard}/search", "search_shard"),
    ("GET", "/v1/internal/shards/{shard}/barrier", "barrier"),
    ("GET", "/v1/internal/barriers", "barriers"),
    ("GET", "/v1/internal/shards/{shard}/namespaces", "namespaces_shard"),
    ("GET", "/v1/internal/shards/{shard}/summary/{namespace}", "summary_shard"),
    ("GET", "/healthz", "healthz"),
    ("GET", "/readyz", "readyz"),
    ("GET", "/metrics", "metrics_handler"),
    ("GET", "/openapi.json", "openapi"),
)


def add_routes(router: web.UrlDispatcher, api: Any) -> None:
    for method, path, name in ROUTES:
        if method == "GET":
            # And HEAD, as before; not for a watch (its body is a stream: HEAD is 405).
            router.add_get(path, getattr(api, name), allow_head=name != "watch")
        else:
            router.add_route(method, path, getattr(api, name))


def build_app(
    service: MemoryService, config: Config, metrics: Metrics, tracker: RequestTracker | None = None
) -> web.Application:
    api = Api(service, metrics)
    authenticator = Authenticator(config.auth)

    # One middleware, not a timing one around an error one: aiohttp wraps every
    # middleware layer in a coroutine of its own, per request.
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        start = time.perf_counter()
        if tracker is not None:
            tracker.started(request.protocol)
        try:
            if request.query_string and not request.path.startswith(INTERNAL_PREFIX):
                v.query(request.query)  # no empty value, none twice: before anything reads it
            if authenticator.enabled:
                # Who first: nobody without a valid token gets a body read or parsed.
                token = authenticator.authenticate(request.headers.get("Authorization"), request.path)
                if token is not None:
                    body = await _body(request) if request.path in BODY_SCOPED_PATHS else b""
                    authorize = need_for(request.method, request.path, request.match_info, body, request.query)
                    authenticator.authorize(token, authorize)
                    request[SCOPE_KEY] = token.namespaces
            response = await handler(request)
        except Exception as e:  # noqa: BLE001 (mapped, or re-raised, in one place)
            response = _error_to_response(request, e)
        finally:
            if tracker is not None:
                tracker.finished(request.protocol)
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        metrics.observe_request(route, request.method, response.status, time.perf_counter() - start)
        return response

    # A little over the body limit, so that our own check answers with a clear message.
    app = web.Application(middlewares=[middleware], client_max_size=config.limits.body_bytes_max + 4096)
    app[BODY_TIMEOUT_KEY] = config.limits.body_timeout_ms / 1000
    add_routes(app.router, api)
    return app
