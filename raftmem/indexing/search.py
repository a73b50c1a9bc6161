"""One shard's part of a search, over one replica's derived indexes: the best
`need` memories that match, by BM25, by vector similarity, or by time.

Candidates come from the indexes (restricted by namespace and the filter's
pushdown), records from the replica's state (so every hit is the record as
GET returns it there, and a memory deleted or changed since the index absorbed
it is dropped or re-checked), and the whole filter is evaluated on the record.
When too few candidates survive the filter, the shard asks its index for four
times as many and tries again (at most `ROUNDS_MAX` times, or until the index
has no more).

A vector search among few candidates (a namespace, an agent, a tag: at most
`engines.EXACT_CANDIDATES_MAX` of them) is exact over their stored vectors; a broad
one asks the HNSW graph for more neighbours than it needs and filters them.
The graph ranks by cosine; `dot` and `l2` re-rank its candidates exactly.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from ..textindex import Hit, Restriction, bm25_idf
from .engines import Nearest
from .filters import TRUE, Node, Pushdown, matches
from .replica import ReplicaIndex

T = TypeVar("T")

ROUNDS_MAX = 5
CANDIDATES_MIN = 20
HYDRATE_CHUNK_MIN = 10  # candidates read from the store at a time
# A text search for at most this many hits runs on the event loop when the
# engines are in this process: about 0.15 ms on 6k documents, less than a hop
# to a thread and back (raftmem/indexing/DESIGN.md). In the engine host, every
# call goes through the search pool (the loop never waits on a socket).
INLINE_HITS_MAX = 100
ORDER_FIELDS = {"updated_at": "updated", "created_at": "created"}

# Fetch live records by (namespace, id) from the replica's state: None where gone.
Records = Callable[[Sequence[tuple[str, str]]], Awaitable[list[dict[str, Any] | None]]]


class Timings:
    """Where one search's time went, by stage, in ms (a stage that ran in
    several shards at once is summed over them): sent back as Server-Timing."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.ms[name] = self.ms.get(name, 0.0) + (time.perf_counter() - started) * 1000

    def header(self) -> str:
        return ", ".join(f"{name};dur={ms:.2f}" for name, ms in self.ms.items())


@dataclass
class ShardQuery:
    namespace: str | None = None
    namespace_prefix: str | None = None
    namespaces: tuple[str, ...] | None = None  # only these (a scoped token); None: any
    terms: list[tuple[str, float]] = field(default_factory=list)  # (token, boost)
    vector: list[float] | None = None
    metric: str = "cosine"
    filter: Node = TRUE
    pushdown: Pushdown = field(default_factory=Pushdown)
    order_by: str = "score"  # or updated_at / created_at
    descending: bool = True
    need: int = 10
    timings: Timings = field(default_factory=Timings)

    def restriction(self, with_vector: bool = False) -> Restriction:
        return Restriction(
            namespace=self.namespace, namespace_prefix=self.namespace_prefix,
            agent_ids=self.pushdown.agent_ids, kinds=self.pushdown.kinds,
            tags_all=self.pushdown.tags_all, tags_any=self.pushdown.tags_any, with_vector=with_vector,
        )

    def allows_namespace(self, ns: str) -> bool:
        if self.namespace is not None and ns != self.namespace:
            return False
        prefix = self.namespace_prefix
        if prefix is not None and ns != prefix and not ns.startswith(prefix + "."):
            return False
        return self.namespaces is None or ns in self.namespaces


@dataclass
class Found:
    record: dict[str, Any]
    score: float | None


@dataclass
class ShardResult:
    text: list[Found] = field(default_factory=list)
    vector: list[Found] = field(default_factory=list)
    ordered: list[Found] = field(default_factory=list)  # no query or vector: by time
    exhausted: bool = True  # the index had no more candidates than these


def _split(key: str) -> tuple[str, str]:
    ns, _, mid = key.partition("\x00")
    return ns, mid


async def _keep(q: ShardQuery, keys: Sequence[tuple[str, float | None]], records: Records,
                out: list[Found], seen: set[str], until: int | None = None) -> None:
    """Hydrate candidates, keep those the filter and the namespace scope accept;
    with `until`, in chunks, stopping once `out` holds that many (the
    candidates come best first: the rest could only rank below them)."""
    fresh = [(k, s) for k, s in keys if k not in seen]
    step = max(HYDRATE_CHUNK_MIN, q.need) if until is not None else max(1, len(fresh))
    for start in range(0, len(fresh), step):
        chunk = fresh[start:start + step]
        seen.update(k for k, _ in chunk)
        pairs = [_split(k) for k, _ in chunk]
        allowed = [(p, s) for p, (_k, s) in zip(pairs, chunk, strict=True) if q.allows_namespace(p[0])]
        with q.timings.stage("records"):
            recs = await records([p for p, _ in allowed])
        for (_p, score), rec in zip(allowed, recs, strict=True):
            if rec is not None and matches(q.filter, rec):
                out.append(Found(rec, score))
        if until is not None and len(out) >= until:
            return


async def engine_call(index: ReplicaIndex, timings: Timings, stage: str, inline: bool, fn: Callable[..., T],
                      *args: Any) -> T:
    """Engine work (tantivy, usearch), timed as `stage`: on the loop when
    `inline` and the engines are in this process, else on a thread of the
    node's search pool (one hop per shard and round, whatever the calls inside)."""
    with timings.stage(stage):
        if inline and not index.require_engines().remote:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(index.search_executor, fn, *args)


async def text_search(index: ReplicaIndex, q: ShardQuery, records: Records) -> tuple[list[Found], bool]:
    engines = index.require_engines()
    order = ORDER_FIELDS.get(q.order_by)
    limit = max(CANDIDATES_MIN, q.need * 2)
    out: list[Found] = []
    seen: set[str] = set()
    for _round in range(ROUNDS_MAX):
        hits: list[Hit] = await engine_call(index, q.timings, "tantivy", limit <= INLINE_HITS_MAX, engines.search,
                                            q.restriction(), q.terms, limit, order, q.descending)
        # Each round's hits begin with the previous round's (same query, more
        # of it): stopping at `need` survivors keeps exactly the best.
        await _keep(q, [(h.key, h.score if order is None and q.terms else None) for h in hits], records, out, seen,
                    until=q.need)
        if len(out) >= q.need or len(hits) < limit:
            return out[: q.need], len(hits) < limit
        limit *= 4
    return out[: q.need], False


async def vector_search(index: ReplicaIndex, q: ShardQuery, records: Records) -> tuple[list[Found], bool]:
    assert q.vector is not None
    engines = index.require_engines()
    query = np.asarray(q.vector, dtype=np.float32)
    restriction = q.restriction(with_vector=True)
    out: list[Found] = []
    seen: set[str] = set()
    count = max(CANDIDATES_MIN, q.need * 4)
    for _round in range(ROUNDS_MAX):
        # Candidates come best first; an exact ranking's rounds extend the
        # previous one, as does a graph's first round: the first `need`
        # survivors are the answer, and only the first few candidates are
        # resolved to documents at once. A later graph round mixes with what
        # earlier ones kept: all of it is read.
        chunked = q.need if not out else None
        first = max(HYDRATE_CHUNK_MIN, q.need) if chunked else count
        found: Nearest | None = await engine_call(index, q.timings, "vectors", False, engines.nearest, query,
                                                  restriction, q.metric, count, first)
        if found is None:  # no vector of this dimension here (any more: deleted, or rebuilt without)
            out.sort(key=lambda f: -(f.score or 0.0))
            return out[: q.need], True
        exact, done, ranked, rest = found
        if exact:
            chunked = q.need
        await _keep(q, ranked, records, out, seen, until=chunked)
        step = max(HYDRATE_CHUNK_MIN, q.need) * 4 if chunked is not None else max(1, len(rest))
        for start in range(0, len(rest), step):
            if chunked is not None and len(out) >= chunked:
                break
            part = rest[start:start + step]
            keys = await engine_call(index, q.timings, "vectors", False, engines.resolve, [k for k, _ in part])
            await _keep(q, [(keys[k], s) for k, s in part if k in keys], records, out, seen, until=chunked)
        out.sort(key=lambda f: -(f.score or 0.0))
        if len(out) >= q.need or done:
            return out[: q.need], exact or done
        count *= 4
    return out[: q.need], False


async def shard_search(index: ReplicaIndex, q: ShardQuery, records: Records) -> ShardResult:
    result = ShardResult()
    if q.terms or (q.vector is None and not q.terms):
        found, exhausted = await text_search(index, q, records)
        if q.terms and q.order_by == "score":
            result.text = found
        else:
            result.ordered = found
        result.exhausted = exhausted
    if q.vector is not None:
        found, exhausted = await vector_search(index, q, records)
        result.vector = found
        result.exhausted = result.exhausted and exhausted
    return result


def term_boosts(local: tuple[int, list[int]], total: tuple[int, list[int]], tokens: Sequence[str]) -> list[tuple[str, float]]:
    """Per-token boosts that turn this shard's BM25 idf into the cluster's: the
    shard's score for a document becomes sum(global idf x the shard's tf part)."""
    docs, freqs = local
    all_docs, all_freqs = total
    out = []
    for token, df, all_df in zip(tokens, freqs, all_freqs, strict=True):
        local_idf = bm25_idf(docs, df)
        out.append((token, bm25_idf(all_docs, all_df) / local_idf if df and local_idf > 0 else 1.0))
    return out
