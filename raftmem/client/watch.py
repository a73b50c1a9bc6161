"""Watching changes from the client: `client.watch(...)` is an async iterator
of `WatchEvent` (and `Progress` when asked) over GET /v1/watch (NDJSON).

It keeps, per shard, the token through which it has every change (`tokens`:
from progress events and from events marked last in their entry) and resumes
from it, by itself, when the stream breaks: a disconnect, a node that dies or
stops, an overflow (the server cut a slow consumer off), a node that lost its
leader when the leader is required. It asks the next node that answers, backing
off 0.1 s doubling to 5 s, and gives up (`Unavailable`) only when no node has
served the watch for `outage_s` (None: never). An entry cut in the middle by a
broken connection comes again whole; the events of it already given are
skipped (by token and `seq`), so the iterator yields every change once, in log
order per shard. A resume from before what the servers keep raises
`Compacted` (its `oldest` says where the log starts).

Save `watch.tokens` to resume later: `client.watch(after=saved)`.

`client.watch_many({...})` (`WatchGroup`) carries many watches on one
connection (POST /v1/watch), each with its own filter and tokens, and yields
`(watch_id, change)`; it resumes the same way, every watch from its own tokens.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from .errors import Compacted, Unavailable, error_from_response
from .types import parse_token

if TYPE_CHECKING:
    from .aio import AsyncClient

NDJSON = "application/x-ndjson"
CONNECT_S = 5.0
PROGRESS_MS_DEFAULT = 5000
# A stream that says nothing for this many progress intervals is taken as dead.
SILENT_PROGRESS_INTERVALS = 3
SILENT_S_MIN = 10.0
RECONNECT_S_MIN, RECONNECT_S_MAX = 0.1, 5.0
OUTAGE_S_DEFAULT = 60.0
LINE_BYTES_MAX = 4 << 20  # a record is at most 1 MiB; its event a little more
# Many watches on one connection: a line is one write of a watch (256 KiB of
# entries, or one entry: a batch's, at most a body's worth of records).
GROUP_LINE_BYTES_MAX = 64 << 20
CHANGES = ("put", "delete", "expire")


@dataclass(frozen=True)
class WatchEvent:
    """A committed change: `type` put, delete or expire; `record` the new record
    (put) or the one removed; `prev_version` the version a put replaced."""

    type: str
    shard: int
    index: int
    seq: int
    namespace: str
    id: str
    version: int | None
    prev_version: int | None
    time_ms: int
    record: dict[str, Any] | None

    @property
    def token(self) -> str:
        return f"{self.shard}:{self.index}"


@dataclass(frozen=True)
class Progress:
    """Where the watch is: every change up to these tokens has been given."""

    tokens: dict[int, int]


def parse_tokens(value: str | Mapping[int, int] | None) -> dict[int, int]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return {int(s): int(i) for s, i in value.items()}
    out: dict[int, int] = {}
    for part in value.split(","):
        parsed = parse_token(part.strip()) if part.strip() else None
        if parsed is None and part.strip():
            raise ValueError(f"not a token: {part!r} (want <shard>:<index>)")
        if parsed is not None:
            out[parsed[0]] = max(out.get(parsed[0], 0), parsed[1])
    return out


def format_tokens(tokens: Mapping[int, int]) -> str:
    return ",".join(f"{s}:{i}" for s, i in sorted(tokens.items()))


FILTERS = ("namespace", "namespace_prefix", "agent_id", "tag")


class Cursor:
    """Where one watch is: per shard, the token through which it has every
    change (`positions`), and the last event it gave (an entry sent again
    after a cut is skipped)."""

    def __init__(self, after: str | Mapping[int, int] | None) -> None:
        self.positions = parse_tokens(after)
        self._given: dict[int, tuple[int, int]] = {}  # per shard: the last (index, seq) given

    @property
    def tokens(self) -> str:
        return format_tokens(self.positions)

    def event(self, item: dict[str, Any]) -> WatchEvent | None:
        """The event, or None when it was given already (an entry sent again after a cut)."""
        shard, index = (int(x) for x in str(item["token"]).split(":"))
        seq = int(item.get("seq") or 0)
        if index <= self.positions.get(shard, -1) or (index, seq) <= self._given.get(shard, (-1, -1)):
            return None
        self._given[shard] = (index, seq)
        if item.get("last"):
            self.advance({shard: index})
        return WatchEvent(item["type"], shard, index, seq, str(item["namespace"]), str(item["id"]),
                          item.get("version"), item.get("prev_version"), int(item.get("time") or 0),
                          item.get("record"))

    def advance(self, tokens: Mapping[int, int]) -> None:
        for shard, index in tokens.items():
            if index > self.positions.get(shard, -1):
                self.positions[shard] = index


class _Following:
    """A watch connection that comes back by itself: the next node that
    answers, backing off, until no node has served it for `outage_s`."""

    def __init__(self, client: AsyncClient, *, progress_ms: int | None = None, require_leader: bool = False,
                 progress: bool = False, outage_s: float | None = OUTAGE_S_DEFAULT) -> None:
        self.client = client
        self.progress_ms = progress_ms or PROGRESS_MS_DEFAULT
        self.require_leader = require_leader
        self.yield_progress = progress
        self.outage_s = outage_s
        self.served_by: str | None = None
        self.reconnects = 0
        self._response: aiohttp.ClientResponse | None = None
        self._buffer = b""
        self._failures = 0
        self._last_served = time.monotonic()
        self._closed = False
        self.line_bytes_max = LINE_BYTES_MAX

    async def _open(self, http: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout,
                    headers: dict[str, str]) -> aiohttp.ClientResponse:
        raise NotImplementedError

    async def _take(self, cursor: Cursor, item: dict[str, Any],
                    watch_id: str | None = None) -> WatchEvent | Progress | None:
        """What one item of a watch's stream gives the caller, its cursor
        moved past it; None: nothing (an event given already, a progress not
        asked for, a last event: the stream comes back elsewhere). `watch_id`:
        the watch's, among many on one connection."""
        kind = item.get("type")
        if kind in CHANGES:
            return cursor.event(item)
        cursor.advance(parse_tokens(item.get("tokens")))
        if kind == "progress":
            return Progress(dict(cursor.positions)) if self.yield_progress else None
        if kind == "compacted":
            await self.close()
            which = "" if watch_id is None else f"watch {watch_id!r}, "
            raise Compacted(f"{which}shard {item.get('shard')}: the change log starts after {item.get('oldest')}",
                            status=410, body=item if watch_id is None else {**item, "watch": watch_id})
        await self._drop(failed=kind != "overflow")  # overflow, or an error (no leader, the node stopping)
        return None

    async def _next_item(self) -> dict[str, Any] | None:
        """The next line's object, connecting first when needed; None once closed."""
        while not self._closed:
            if self._response is None:
                await self._connect()
                continue
            line = await self._next_line()
            if line is None:
                await self._drop(failed=True)
                continue
            self._last_served = time.monotonic()
            item: dict[str, Any] = orjson.loads(line)
            return item
        return None

    async def _connect(self) -> None:
        if self.outage_s is not None and time.monotonic() - self._last_served > self.outage_s:
            raise Unavailable(f"no node served the watch for {self.outage_s:.0f}s")
        client = self.client
        urls = client._all_urls()
        now = client._clock()
        usable = [u for u in urls if client.health_table.usable(u, now)] or urls
        url = usable[(self._failures + self.reconnects) % len(usable)]
        silent_s = max(SILENT_S_MIN, SILENT_PROGRESS_INTERVALS * self.progress_ms / 1000)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_S, sock_read=silent_s)
        try:
            response = await self._open(client._http(), url, timeout, {"Accept": NDJSON, **client._auth})
        except (aiohttp.ClientError, TimeoutError) as e:
            client.health_table.no_answer(url, client._clock(), f"watch: {e.__class__.__name__}")
            await self._back_off()
            return
        if response.status != 200:
            raw = await response.read()
            response.release()
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = None
            error = error_from_response(response.status, body, response.headers)
            if response.status == 410:
                raise Compacted(error.message, status=410, code="compacted", body=body)
            if not error.retryable and response.status < 500:
                raise error
            await self._back_off()
            return
        self._response = response
        self._buffer = b""
        self.served_by = response.headers.get("X-Raftmem-Served-By")

    async def _back_off(self) -> None:
        self._failures += 1
        await asyncio.sleep(min(RECONNECT_S_MAX, RECONNECT_S_MIN * 2 ** min(self._failures, 6)))

    async def _next_line(self) -> bytes | None:
        """The next line, or None when the stream ended or broke."""
        response = self._response
        assert response is not None
        while b"\n" not in self._buffer:
            try:
                chunk = await response.content.readany()
            except (aiohttp.ClientError, TimeoutError, ConnectionError):
                return None
            if not chunk or len(self._buffer) > self.line_bytes_max:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        self._failures = 0
        return line if line.strip() else await self._next_line()

    async def _drop(self, failed: bool) -> None:
        if self._response is not None:
            self._response.close()
            self._response = None
        self.reconnects += 1
        if failed:
            await self._back_off()

    async def close(self) -> None:
        self._closed = True
        if self._response is not None:
            self._response.close()
            self._response = None


class Watch(_Following):
    """`async for change in client.watch(namespace="team-a"): ...`"""

    def __init__(
        self,
        client: AsyncClient,
        *,
        namespace: str | None = None,
        namespace_prefix: str | None = None,
        agent_id: str | None = None,
        tag: str | None = None,
        after: str | Mapping[int, int] | None = None,
        progress_ms: int | None = None,
        require_leader: bool = False,
        progress: bool = False,
        outage_s: float | None = OUTAGE_S_DEFAULT,
    ) -> None:
        super().__init__(client, progress_ms=progress_ms, require_leader=require_leader, progress=progress,
                         outage_s=outage_s)
        self.filter = {k: v for k, v in (("namespace", namespace), ("namespace_prefix", namespace_prefix),
                                         ("agent_id", agent_id), ("tag", tag)) if v is not None}
        self.cursor = Cursor(after)

    @property
    def positions(self) -> dict[int, int]:
        """Per shard: every change up to here was given."""
        return self.cursor.positions

    @property
    def tokens(self) -> str:
        """Where to resume from (`client.watch(after=...)`): one token per shard."""
        return self.cursor.tokens

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchEvent | Progress:
        while (item := await self._next_item()) is not None:
            given = await self._take(self.cursor, item)
            if given is not None:
                return given
        raise StopAsyncIteration

    async def _open(self, http: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout,
                    headers: dict[str, str]) -> aiohttp.ClientResponse:
        params = {**self.filter, "progress_ms": str(self.progress_ms)}
        if self.positions:
            params["after"] = self.tokens
        if self.require_leader:
            params["require_leader"] = "true"
        return await http.get(url + "/v1/watch", params=params, timeout=timeout, headers=headers)


class WatchGroup(_Following):
    """Many watches on one connection (POST /v1/watch), as etcd's clients carry
    a process's watches on one stream: `async for watch_id, change in
    client.watch_many({"tasks": {"namespace": "team-a", "tag": "task"},
    "reviews": {"namespace": "reviews"}}): ...`. Each watch keeps its own
    tokens (`group.tokens[watch_id]`) and sees exactly what a watch of its own
    would; after a disconnect, an overflow or a node failure the group comes
    back on another connection, every watch from its own tokens. A watch
    resumed from before what the servers keep raises `Compacted` (`watch`
    in its body names it)."""

    def __init__(self, client: AsyncClient, watches: Mapping[str, Mapping[str, Any]], **options: Any) -> None:
        """`options`: progress_ms, require_leader, progress, outage_s (as a Watch's)."""
        super().__init__(client, **options)
        self.line_bytes_max = GROUP_LINE_BYTES_MAX
        if not watches:
            raise ValueError("watch_many: at least one watch")
        self.filters: dict[str, dict[str, str]] = {}
        self.cursors: dict[str, Cursor] = {}
        for watch_id, spec in watches.items():
            unknown = sorted(set(spec) - {*FILTERS, "after"})
            if unknown:
                raise ValueError(f"watch {watch_id!r}: unknown key(s) {', '.join(unknown)}")
            self.filters[watch_id] = {k: str(spec[k]) for k in FILTERS if spec.get(k) is not None}
            self.cursors[watch_id] = Cursor(spec.get("after"))
        self._ready: collections.deque[tuple[str, dict[str, Any]]] = collections.deque()  # received, not yet given

    @property
    def tokens(self) -> dict[str, str]:
        """Per watch, where to resume it from (its `after`)."""
        return {watch_id: cursor.tokens for watch_id, cursor in self.cursors.items()}

    def __aiter__(self) -> WatchGroup:
        return self

    async def __anext__(self) -> tuple[str, WatchEvent | Progress]:
        while True:
            if not self._ready:
                line = await self._next_item()
                if line is None:
                    raise StopAsyncIteration
                watch_id = str(line.get("watch"))
                if watch_id in self.cursors:
                    self._ready.extend((watch_id, item) for item in line.get("events") or [])
                continue
            # Taken one at a time (a watch's tokens move only past what was given);
            # one watch overflowed or failed: the group comes back, every watch from its tokens.
            watch_id, item = self._ready.popleft()
            given = await self._take(self.cursors[watch_id], item, watch_id)
            if given is not None:
                return watch_id, given

    async def _open(self, http: aiohttp.ClientSession, url: str, timeout: aiohttp.ClientTimeout,
                    headers: dict[str, str]) -> aiohttp.ClientResponse:
        watches = [{"id": watch_id, **self.filters[watch_id],
                    **({"after": cursor.tokens} if cursor.positions else {})}
                   for watch_id, cursor in self.cursors.items()]
        body = {"watches": watches, "progress_ms": self.progress_ms, "require_leader": self.require_leader}
        return await http.post(url + "/v1/watch", data=orjson.dumps(body), timeout=timeout,
                               headers={**headers, "Content-Type": "application/json"})
