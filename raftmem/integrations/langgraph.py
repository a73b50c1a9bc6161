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
refused. A memory whose content is not an object (written by another client)
reads as the value `{"content": <it>}`.

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

**Search** (`POST /v1/search` per `SearchOp`): under `namespace_prefix` on
label boundaries; `filter` on the value's fields becomes raftmem's filter on
`content.<field>` (a plain value is equality, LangGraph's operators `$eq $ne $gt
$gte $lt $lte` pass through, as do raftmem's `$in $nin $contains`; an object
without operators matches field by field); `limit`, `offset`. Without a query,
newest first (by `updated_at`, as LangGraph's Postgres store). With
`index={"embed": ..., "dims": ..., "fields": [...]}`, as LangGraph's own stores
take it, a put embeds the text at `fields` (or the op's `index`; `False`: none)
and stores the vector with the memory, and a `query` is embedded and searched
by cosine similarity. Without `index`, a `query` is a full-text (BM25) search of
the content. At `strong` and `linearizable` a search is fresh (it waits for the
indexes to absorb every write acknowledged before it); at `session` it sees
this store's writes; at `eventual` the nearest replica's indexes as they are.
A search of the whole store (`()`) searches under each root namespace and
merges (the roots from the namespace list and from this store's writes).

**list_namespaces** (`GET /v1/namespaces`): `prefix` and `suffix` with `*`
wildcards, `max_depth`, `limit` (at most 1000), `offset`. Namespaces are listed
by the replicas of the node asked (eventual: one created a moment ago may take
a moment to show), ordered by their dotted names.

**TTL** (`supports_ttl = True`): `PutOp.ttl` (minutes) becomes the memory's
`ttl_s` (at least one second: the store refuses shorter), sliding as
LangGraph's does (`ttl_refresh_on_read`: reads extend it) unless the store's
`ttl={"refresh_on_read": False}`. raftmem counts a read by id as an access
whatever `GetOp.refresh_ttl` says (it has no read that does not count), and a
search is not one: with `refresh_ttl` (the default) the store reads the hits
whose TTL slides, which extends them. Refreshes are coalesced: an expiry is
extended once half its TTL has passed, within about a second of the read.

**Deliberate differences** from LangGraph's `InMemoryStore` (checked by a
differential test): `created_at` is when the item was first put (InMemoryStore
resets it on every put); ops with invalid labels are refused by `batch` itself;
an empty key is refused; `list_namespaces` lists namespaces that hold items
(InMemoryStore also those it only looked up or emptied) in the order of their
dotted names; without a query, search orders newest first (InMemoryStore: by
insertion); filters compare JSON values (`true` is not `1`, and a number is not
a numeric string: InMemoryStore compares with `float()`); a filter key may not
contain `.`; one vector per item, the texts at its fields joined (InMemoryStore
embeds each and keeps the best match), and items without one are not found by
a query (InMemoryStore appends them, unscored).
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from langgraph.store.base import (
    BaseStore,
    Embeddings,
    GetOp,
    IndexConfig,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    ensure_embeddings,
    get_text_at_path,
    tokenize_path,
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
WILDCARD = "*"  # a label of a list_namespaces prefix or suffix: any one label
NAMESPACES_PAGE_MAX = 1000  # GET /v1/namespaces' page limit
ROOTS_KNOWN_MAX = 10_000
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
    """What both stores share: the calls a batch becomes and what their answers
    mean (sans I/O: `steps` yields calls, the store answers them)."""

    def __init__(self, consistency: str, index: IndexConfig | None, refresh_on_read: bool = True) -> None:
        if consistency not in CONSISTENCY_LEVELS:
            raise ValueError(f"consistency must be one of {', '.join(CONSISTENCY_LEVELS)}, not {consistency!r}")
        self.consistency = consistency
        self.refresh_on_read = refresh_on_read
        self.tokens = _Tokens()
        self.index = index
        self.embeddings: Embeddings | None = None
        self.fields: list[tuple[str, str | list[str]]] = []
        self.dims = 0
        # Root labels of namespaces this store wrote: a whole-store search looks
        # under them as well as under those the namespace list (eventual) has.
        self.roots: set[str] = set()
        if index is not None:
            if "embed" not in index or "dims" not in index:
                raise ValueError("index needs embed (an Embeddings, a function or a provider string) and dims")
            self.embeddings = ensure_embeddings(index["embed"])
            self.dims = int(index["dims"])
            self.fields = [(p, p if p == "$" else tokenize_path(p)) for p in index.get("fields") or ["$"]]

    # -- gets ------------------------------------------------------------------------------
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

    # -- writes ------------------------------------------------------------------------------
    def texts(self, op: PutOp) -> str | None:
        """What to embed for a put: the text at the index's fields (or the op's),
        joined into one text: raftmem keeps one vector per memory."""
        if self.embeddings is None or op.value is None or op.index is False:
            return None
        paths = self.fields if op.index is None else [(p, tokenize_path(p)) for p in op.index]
        texts = [t for _, path in paths for t in get_text_at_path(op.value, path)]
        return "\n".join(texts) if texts else None

    def write_ops(self, puts: dict[tuple[tuple[str, ...], str], PutOp],
                  vectors: Mapping[tuple[tuple[str, ...], str], list[float]] | None = None) -> list[dict[str, Any]]:
        ops: list[dict[str, Any]] = []
        for key, op in puts.items():
            target = {"namespace": namespace_name(op.namespace), "id": memory_id(op.key)}
            if op.value is None:
                ops.append({"op": "delete", **target})
                continue
            if len(self.roots) < ROOTS_KNOWN_MAX:
                self.roots.add(target["namespace"].split(".")[0])
            body: dict[str, Any] = {"content": dict(op.value)}
            if op.ttl is not None:
                body["ttl_s"] = op.ttl * SECONDS_PER_MINUTE
                # LangGraph's TTL slides: reads extend it (unless the store's ttl config says not).
                body["ttl_refresh_on_read"] = self.refresh_on_read
            if vectors and key in vectors:
                body["embedding"] = vectors[key]
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

    def _vectors(self, puts: dict[tuple[tuple[str, ...], str], PutOp]) -> Generator[
            Call, Any, dict[tuple[tuple[str, ...], str], list[float]]]:
        texts = {key: text for key, op in puts.items() if (text := self.texts(op)) is not None}
        if not texts:
            return {}
        vectors = yield Call("embed_documents", (list(texts.values()),))
        if len(vectors) != len(texts) or any(len(v) != self.dims for v in vectors):
            raise ValueError(f"the embedder gave {len(vectors)} vectors for {len(texts)} texts, of "
                             f"{sorted({len(v) for v in vectors})} dimensions, not index['dims'] ({self.dims})")
        return {key: [float(x) for x in vector] for key, vector in zip(texts, vectors, strict=True)}

    # -- searches -----------------------------------------------------------------------------
    def _level(self) -> dict[str, Any]:
        """A search at the store's level: strong and linearizable ones wait for
        the indexes to absorb every acknowledged write (fresh); session ones,
        this store's writes."""
        if self.consistency in ("strong", "linearizable"):
            return {"fresh": True}
        if self.consistency == "session":
            after = self.tokens.after()
            return {"consistency": "session", **({"after": after} if after else {})}
        return {"consistency": "eventual"}

    def _search(self, op: SearchOp) -> Generator[Call, Any, list[SearchItem]]:
        records = yield from self._found(op)
        sliding = [r for r in records if r.get("ttl_refresh_on_read") and r.get("expires_at") is not None]
        if op.refresh_ttl and sliding:
            # A search is not an access; a read by id is: read the hits whose TTL slides.
            yield Call("batch", ([{"op": "get", "namespace": r["namespace"], "id": r["id"],
                                   "consistency": "eventual"} for r in sliding],))
        return [search_item(r) for r in records]

    def _found(self, op: SearchOp) -> Generator[Call, Any, list[dict[str, Any]]]:
        kw: dict[str, Any] = {**self._level(), "filter": translate_filter(op.filter) if op.filter else None}
        if op.query and self.embeddings is not None:
            kw["vector"] = [float(x) for x in (yield Call("embed_query", (op.query,)))]
        elif op.query:
            kw["query"] = op.query
        if op.namespace_prefix:
            page = yield Call("search", (), {**kw, "namespace_prefix": namespace_name(op.namespace_prefix),
                                             "limit": op.limit, "offset": op.offset})
            return list(page.get("items") or ())
        # The whole store: a search under each root namespace, merged (scores are
        # comparable across searches: cosine for vectors; BM25 with each search's statistics).
        listed = yield Call("list_namespaces", (), {"max_depth": 1, "limit": NAMESPACES_PAGE_MAX})
        found: list[dict[str, Any]] = []
        for root in sorted(set(listed) | self.roots):
            page = yield Call("search", (), {**kw, "namespace_prefix": root, "limit": op.offset + op.limit})
            found.extend(page.get("items") or ())
        if "query" in kw or "vector" in kw:
            found.sort(key=lambda r: -float(r.get("score") or 0.0))
        else:
            found.sort(key=lambda r: (-int(r["updated_at"]), r["namespace"], r["id"]))
        return found[op.offset: op.offset + op.limit]

    @staticmethod
    def _list(op: ListNamespacesOp) -> Generator[Call, Any, list[tuple[str, ...]]]:
        patterns: dict[str, str] = {}
        for condition in op.match_conditions or ():
            if not condition.path:
                continue
            if condition.match_type in patterns:
                raise NotImplementedError(f"one {condition.match_type} condition at most")
            patterns[condition.match_type] = ".".join(
                label if label == WILDCARD else _encode(label, _LABEL_SAFE) for label in condition.path)
        names = yield Call("list_namespaces", (), {**patterns, "max_depth": op.max_depth,
                                                   "limit": min(op.limit, NAMESPACES_PAGE_MAX), "offset": op.offset})
        return [namespace_labels(name) for name in names]

    def steps(self, ops: Iterable[Op]) -> Steps:
        """A batch as the calls it needs, answered by the store's driver (the
        same whether the client blocks or not)."""
        plan = _plan(ops)
        if plan.gets:
            self.got(plan, (yield Call("batch", (self.get_ops(plan.gets),))))
        for i, search in plan.searches:
            plan.results[i] = yield from self._search(search)
        for i, listing in plan.listings:
            plan.results[i] = yield from self._list(listing)
        if plan.puts:
            writes = self.write_ops(plan.puts, (yield from self._vectors(plan.puts)))
            self.wrote(writes, (yield Call("batch", (writes,))))
        return plan.results


def translate_filter(conditions: Mapping[str, Any], path: tuple[str, ...] = ("content",)) -> dict[str, Any]:
    """A LangGraph filter on an item's value as a raftmem filter on the memory's
    content: `{"a": 1}` is `{"content.a": {"$eq": 1}}`, operators pass through,
    and an object without operators matches field by field, as LangGraph's stores do."""
    out: dict[str, Any] = {}
    for key, value in conditions.items():
        if "." in key or not key:
            raise ValueError(f"filter key {key!r}: raftmem paths are dotted; nest objects instead of dots")
        where = (*path, key)
        if isinstance(value, Mapping) and any(str(k).startswith("$") for k in value):
            out[".".join(where)] = dict(value)
        elif isinstance(value, Mapping):
            out.update(translate_filter(value, where))
        else:
            out[".".join(where)] = {"$eq": value}
    return out


def search_item(record: dict[str, Any]) -> SearchItem:
    found = item(record)
    score = record.get("score")
    return SearchItem(found.namespace, found.key, found.value, found.created_at, found.updated_at,
                      float(score) if score is not None else None)


@dataclass
class Call:
    """One call the store answers: a raftmem client method (the same name and
    arguments on `Client` and `AsyncClient`), or the index's embedder
    (`embed_documents`, `embed_query`; `aembed_*` in the async store)."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


Steps = Generator[Call, Any, list[Result]]
EMBEDDER_CALLS = ("embed_documents", "embed_query")


class _Store(BaseStore):
    supports_ttl = True

    def __init__(self, consistency: Consistency, index: IndexConfig | None, ttl: TTLConfig | None) -> None:
        self._core = _Core(consistency, index, (ttl or {}).get("refresh_on_read", True))
        self.index_config = index
        self.ttl_config = ttl


class AsyncRaftmemStore(_Store):
    """A LangGraph store over a raftmem cluster, for asyncio (see the module
    docstring: mapping, consistency, batches, search, TTL). Call `aclose()`
    when done (or use `async with`). Its blocking methods work from other
    threads while the loop it first ran on is running."""

    def __init__(self, urls: Sequence[str], *, consistency: Consistency = "strong", index: IndexConfig | None = None,
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

    async def _answer(self, call: Call) -> Any:
        if call.method in EMBEDDER_CALLS:
            return await getattr(self._core.embeddings, "a" + call.method)(*call.args)
        return await getattr(self.client, call.method)(*call.args, **call.kwargs)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        self._loop = asyncio.get_running_loop()
        steps = self._core.steps(ops)
        try:
            call = next(steps)
            while True:
                call = steps.send(await self._answer(call))
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

    def __init__(self, urls: Sequence[str], *, consistency: Consistency = "strong", index: IndexConfig | None = None,
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

    def _answer(self, call: Call) -> Any:
        if call.method in EMBEDDER_CALLS:
            return getattr(self._core.embeddings, call.method)(*call.args)
        return getattr(self.client, call.method)(*call.args, **call.kwargs)

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        with self._lock:
            steps = self._core.steps(ops)
            try:
                call = next(steps)
                while True:
                    call = steps.send(self._answer(call))
            except StopIteration as done:
                results: list[Result] = done.value
                return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        return await asyncio.get_running_loop().run_in_executor(None, self.batch, list(ops))
