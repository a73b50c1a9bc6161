"""raftmem as a LangGraph store: `RaftmemStore` (blocking) and
`AsyncRaftmemStore` (asyncio), `BaseStore`s over a raftmem cluster.

    from raftmem.integrations.langgraph import RaftmemStore
    store = RaftmemStore(["http://127.0.0.1:8781", "http://127.0.0.1:8782"])
    graph = builder.compile(store=store)

The one module of raftmem that imports `langgraph` (`pip install
'raftmem[langgraph]'`). It is a client of the HTTP API through
`raftmem.client` and imports nothing of the server.

**Mapping.** An item is a memory: its namespace `".".join(namespace)`, as
LangGraph's Postgres store keys it, under LangGraph's label rules (a label is a
non-empty string without `.`; the first is not `langgraph`); its key is the
memory's id; its value the memory's `content`; `created_at`/`updated_at` the
memory's. raftmem names are `[A-Za-z0-9._:-]`: a label or key character
outside `[A-Za-z0-9_-]` (and `.` in keys) is written `:XX` per UTF-8 byte
(`:` is the escape), reversibly, so labels with spaces, `@` or any Unicode work
and label boundaries stay dots. Encoded, a namespace must fit the cluster's
`limits.namespace_chars_max` (128) and a key `id_chars_max` (256); an empty key is
refused.

**Consistency** (constructor argument `consistency`, the level of `get`):

| level | a get sees |
|---|---|
| `strong` (default) | the latest committed value: the shard's leader under its lease |
| `linearizable` | the same, confirmed by a quorum round (no clock assumption) |
| `session` | every write this store object made, from any replica (read-your-writes) |
| `eventual` | whatever the nearest replica holds |

Writes are always committed by a majority before `put` returns.

**Batches** behave as LangGraph's own stores run them: the batch's reads see
the state before its writes, and of several writes of one key the last wins.
Gets go in one `POST /v1/batch`, writes in another (one request per shard
leader); deleting an absent item is not an error.

**TTL** (`supports_ttl = True`): `PutOp.ttl` (minutes) becomes the memory's
`ttl_s` (at least one second: the store refuses shorter).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Generator, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchOp,
    TTLConfig,
    validate_op_namespace,
)

from raftmem.client import AsyncClient, BatchResult, Client, parse_token

Consistency = Literal["strong", "linearizable", "session", "eventual"]
CONSISTENCY_LEVELS: tuple[Consistency, ...] = ("strong", "linearizable", "session", "eventual")
SECONDS_PER_MINUTE = 60.0

# Characters a label or key keeps as they are; everything else is `:XX` per UTF-8 byte.
_LABEL_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_KEY_SAFE = _LABEL_SAFE | {"."}
_ESCAPE = ":"
_HEX = frozenset("0123456789ABCDEF")


# -- names ------------------------------------------------------------------------------------
def _encode(text: str, safe: frozenset[str]) -> str:
    return "".join(c if c in safe else "".join(f"{_ESCAPE}{b:02X}" for b in c.encode()) for c in text)


def _decode(text: str) -> str:
    """`_encode` reversed. A name written by others (`team:a`) reads as it is:
    a `:` not followed by two upper-case hex digits is itself."""
    if _ESCAPE not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        escaped = text[i + 1:i + 3]
        if text[i] == _ESCAPE and len(escaped) == 2 and all(c in _HEX for c in escaped):
            out.append(int(escaped, 16))
            i += 3
        else:
            out.extend(text[i].encode())
            i += 1
    return out.decode(errors="replace")


def namespace_name(namespace: Sequence[str]) -> str:
    """The raftmem namespace of a LangGraph namespace (labels joined by dots)."""
    return ".".join(_encode(label, _LABEL_SAFE) for label in namespace)


def namespace_labels(name: str) -> tuple[str, ...]:
    """The LangGraph namespace of a raftmem namespace (`namespace_name` reversed)."""
    return tuple(_decode(label) for label in name.split("."))


def memory_id(key: str) -> str:
    if not key:
        raise ValueError("raftmem needs a non-empty key (a memory's id)")
    return _encode(key, _KEY_SAFE)


def item_key(mid: str) -> str:
    return _decode(mid)


def _when(ms: Any) -> datetime:
    return datetime.fromtimestamp(int(ms) / 1000, tz=UTC)


def item(record: dict[str, Any]) -> Item:
    """A memory as a LangGraph item."""
    value = record.get("content")
    return Item(value=value if isinstance(value, dict) else {"content": value}, key=item_key(str(record["id"])),
                namespace=namespace_labels(str(record["namespace"])), created_at=_when(record["created_at"]),
                updated_at=_when(record["updated_at"]))


# -- a batch, as LangGraph stores run it --------------------------------------------------------
@dataclass
class _Plan:
    """A batch split by kind: reads answered before writes; one write per key, the last."""

    results: list[Result]
    gets: list[tuple[int, GetOp]] = field(default_factory=list)
    searches: list[tuple[int, SearchOp]] = field(default_factory=list)
    listings: list[tuple[int, ListNamespacesOp]] = field(default_factory=list)
    puts: dict[tuple[tuple[str, ...], str], PutOp] = field(default_factory=dict)


def _plan(ops: Iterable[Op]) -> _Plan:
    ops = list(ops)
    plan = _Plan(results=[None] * len(ops))
    for i, op in enumerate(ops):
        validate_op_namespace(op)
        if isinstance(op, GetOp):
            plan.gets.append((i, op))
        elif isinstance(op, SearchOp):
            plan.searches.append((i, op))
        elif isinstance(op, ListNamespacesOp):
            plan.listings.append((i, op))
        elif isinstance(op, PutOp):
            plan.puts.pop((op.namespace, op.key), None)  # the last write of a key, in its place
            plan.puts[(op.namespace, op.key)] = op
        else:
            raise ValueError(f"unknown operation {type(op).__name__}")
    return plan


class _Tokens:
    """The highest token per shard this store wrote or read (for `session` reads)."""

    def __init__(self) -> None:
        self.by_shard: dict[int, int] = {}

    def observe(self, token: Any) -> None:
        parsed = parse_token(token) if isinstance(token, str) else None
        if parsed is not None and parsed[1] > self.by_shard.get(parsed[0], -1):
            self.by_shard[parsed[0]] = parsed[1]

    def after(self) -> str | None:
        return ",".join(f"{s}:{i}" for s, i in sorted(self.by_shard.items())) or None


class _Core:
    """What both stores share: the requests a batch becomes and what their answers mean."""

    def __init__(self, consistency: str) -> None:
        if consistency not in CONSISTENCY_LEVELS:
            raise ValueError(f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}, not {consistency!r}")
        self.consistency = consistency
        self.tokens = _Tokens()

    def get_ops(self, gets: list[tuple[int, GetOp]]) -> list[dict[str, Any]]:
        after = self.tokens.after() if self.consistency == "session" else None
        ops = []
        for _, op in gets:
            read: dict[str, Any] = {"op": "get", "namespace": namespace_name(op.namespace), "id": memory_id(op.key),
                                    "consistency": self.consistency}
            if after:
                read["after"] = after
            ops.append(read)
        return ops

    def got(self, plan: _Plan, answers: list[BatchResult]) -> None:
        for (i, _op), answer in zip(plan.gets, answers, strict=True):
            if answer.status == 404:
                continue
            if not answer.ok or not isinstance(answer.body, dict):
                raise answer.error or ValueError(f"unexpected answer {answer.body!r}")
            self.tokens.observe(answer.body.get("token"))
            plan.results[i] = item(answer.body)

    def write_ops(self, puts: dict[tuple[tuple[str, ...], str], PutOp]) -> list[dict[str, Any]]:
        ops: list[dict[str, Any]] = []
        for op in puts.values():
            target = {"namespace": namespace_name(op.namespace), "id": memory_id(op.key)}
            if op.value is None:
                ops.append({"op": "delete", **target})
                continue
            body: dict[str, Any] = {"content": dict(op.value)}
            if op.ttl is not None:
                body["ttl_s"] = op.ttl * SECONDS_PER_MINUTE
            ops.append({"op": "put", **target, "body": body})
        return ops

    def wrote(self, writes: list[dict[str, Any]], answers: list[BatchResult]) -> None:
        for write, answer in zip(writes, answers, strict=True):
            if answer.status == 404 and write["op"] == "delete":
                continue  # deleting what is not there: done, as in LangGraph's stores
            if not answer.ok:
                raise answer.error or ValueError(f"unexpected answer {answer.body!r}")
            if isinstance(answer.body, dict):
                self.tokens.observe(answer.body.get("token"))

    def steps(self, ops: Iterable[Op]) -> Steps:
        """A batch as the calls it needs, answered by the store's driver (the
        same whether the client blocks or not)."""
        plan = _plan(ops)
        if plan.searches or plan.listings:
            raise NotImplementedError("search and list_namespaces need raftmem's recall API (POST /v1/search, "
                                      "GET /v1/namespaces)")
        if plan.gets:
            self.got(plan, (yield Call("batch", self.get_ops(plan.gets))))
        if plan.puts:
            writes = self.write_ops(plan.puts)
            self.wrote(writes, (yield Call("batch", writes)))
        return plan.results


@dataclass
class Call:
    """One call of a raftmem client method: the same name and arguments on
    `Client` and `AsyncClient`."""

    method: str
    arg: Any


Steps = Generator[Call, Any, list[Result]]


class _Store(BaseStore):
    supports_ttl = True

    def __init__(self, consistency: Consistency, index: Any, ttl: TTLConfig | None) -> None:
        if index is not None:
            raise NotImplementedError("index (semantic search) needs raftmem's recall API")
        self._core = _Core(consistency)
        self.ttl_config = ttl


class AsyncRaftmemStore(_Store):
    """A LangGraph store over a raftmem cluster, for asyncio (see the module
    docstring: mapping, consistency, batches, TTL). Call `aclose()` when done
    (or use `async with`). Its blocking methods work from other threads while
    the loop it first ran on is running."""

    def __init__(self, urls: Sequence[str], *, consistency: Consistency = "strong", index: Any = None,
                 token: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 ttl: TTLConfig | None = None) -> None:
        super().__init__(consistency, index, ttl)
        self.client = AsyncClient(urls, token=token, ssl_context=ssl_context)
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> AsyncRaftmemStore:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.client.close()

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        self._loop = asyncio.get_running_loop()
        steps = self._core.steps(ops)
        try:
            call = next(steps)
            while True:
                call = steps.send(await getattr(self.client, call.method)(call.arg))
        except StopIteration as done:
            results: list[Result] = done.value
            return results

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        loop = self._loop
        if loop is None or not loop.is_running():
            raise RuntimeError("AsyncRaftmemStore's blocking methods need its event loop running in another "
                               "thread (await a method first, or use RaftmemStore)")
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            raise RuntimeError("AsyncRaftmemStore: a blocking call on its own event loop would deadlock; use the "
                               "async methods (abatch, aget, aput, ...)")
        return asyncio.run_coroutine_threadsafe(self.abatch(list(ops)), loop).result()


class RaftmemStore(_Store):
    """A blocking LangGraph store over a raftmem cluster (see the module
    docstring). Call `close()` when done (or use `with`)."""

    def __init__(self, urls: Sequence[str], *, consistency: Consistency = "strong", index: Any = None,
                 token: str | None = None, ssl_context: ssl.SSLContext | None = None,
                 ttl: TTLConfig | None = None) -> None:
        super().__init__(consistency, index, ttl)
        self.client = Client(urls, token=token, ssl_context=ssl_context)
        self._lock = threading.Lock()  # one batch at a time: the session's tokens stay in order

    def __enter__(self) -> RaftmemStore:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        with self._lock:
            steps = self._core.steps(ops)
            try:
                call = next(steps)
                while True:
                    call = steps.send(getattr(self.client, call.method)(call.arg))
            except StopIteration as done:
                results: list[Result] = done.value
                return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.get_running_loop().run_in_executor(None, self.batch, list(ops))
