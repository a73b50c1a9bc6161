"""POST /v1/search: recall by text (BM25), by vector, by fields, or both
(reciprocal-rank fusion), gathered across shards.

Each shard's part runs on a replica of it, this node's when it holds one (else
at the shard's leader, through an internal call), over that replica's derived
indexes (raftmem.indexing). Freshness, per shard, before the part runs:

    fresh: true         ReadIndex at the leader (a barrier: its commit index,
                        confirmed after the search arrived), then wait until
                        the serving replica applied it and its indexes absorbed
                        every change through it, whatever their tier: lag 0
    (default: strong)   the leader's lease index instead, and wait for the
                        eager tier only: an eager write acknowledged before the
                        search is found; batched and lazy ones may lag
    session / causal    the caller's tokens (after=, X-Raftmem-Context): the
                        serving replica absorbed through them (read your writes)
    eventual            the serving replica's indexes as they are

Every answer says how far behind the indexes were (`index_lag`, and the
X-Raftmem-Index-Lag header). BM25 scores are made comparable across shards by
boosting each query term with the ratio of the cluster's idf to the shard's
(document frequencies are summed over the shards first).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from .. import embeddings
from .. import validation as v
from ..clock import Clock
from ..config import Config
from ..errors import InvalidRequest, RaftmemError, from_result
from ..indexing import filters
from ..indexing.manager import Indexes
from ..indexing.queue import EAGER
from ..indexing.search import Found, ShardQuery, Timings, engine_call, shard_search, term_boosts
from ..shard import Shard
from ..textindex import analyzer
from ..vectorindex import METRICS
from .calls import CONTEXT_HEADER, Call, ForwardLost, ForwardNotSent, Reply, public
from .leaders import Router

QUERY_CHARS_MAX = 4096
QUERY_TOKENS_MAX = 64
SEARCH_LIMIT_MAX = 1000
LIMIT_DEFAULT = 10
OFFSET_MAX = 10_000
RRF_K_DEFAULT = 60
RRF_K_MAX = 10_000
ALL_TIERS = ("eager", "batched", "lazy")
ORDERS = ("score", "updated_at", "-updated_at", "created_at", "-created_at")
REQUEST_KEYS = frozenset({
    "namespace", "namespace_prefix", "query", "vector", "metric", "filter", "limit", "offset", "cursor",
    "fresh", "consistency", "after", "order_by", "with_embedding", "rrf_k",
})
SEARCH_LEVELS = ("linearizable", "strong", "session", "causal", "eventual")


@dataclass
class SearchRequest:
    namespace: str | None
    namespace_prefix: str | None
    query: str | None
    tokens: list[str]
    vector: list[float] | None
    metric: str
    filter: filters.Node
    raw_filter: Any
    limit: int
    offset: int
    level: str  # linearizable (fresh), strong, session, causal, eventual
    after: dict[int, int]
    order_by: str
    with_embedding: bool
    rrf_k: int
    scope: tuple[str, ...] | None = None
    digest: str = ""
    # shard -> the barrier index its leader gave this search (taken up front,
    # one call per leader node); shards missing here take theirs one by one.
    targets: dict[int, int] = field(default_factory=dict)
    # per shard: the index its statistics phase waited for here (the search phase
    # then needs no wait of its own; run elsewhere, it takes its own)
    references: dict[int, int] = field(default_factory=dict)
    timings: Timings = field(default_factory=Timings)

    @property
    def need(self) -> int:
        return self.offset + self.limit + 1


@dataclass
class Part:
    """One shard's answer."""

    text: list[tuple[dict[str, Any], float | None]] = field(default_factory=list)
    vector: list[tuple[dict[str, Any], float | None]] = field(default_factory=list)
    ordered: list[tuple[dict[str, Any], float | None]] = field(default_factory=list)
    exhausted: bool = True
    lag_entries: int = 0
    lag_ms: int = 0
    level: str = "eventual"
    at: int = 0  # every change of the shard at or below it was in the indexes that answered
    barrier: int | None = None  # the index the level made them reach (strong: its eager changes; None: eventual)

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "vector": self.vector, "ordered": self.ordered, "exhausted": self.exhausted,
                "lag": [self.lag_entries, self.lag_ms], "level": self.level, "at": self.at,
                "barrier": self.barrier}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Part:
        lag = d.get("lag") or [0, 0]
        barrier = d.get("barrier")
        return cls([tuple(x) for x in d["text"]], [tuple(x) for x in d["vector"]],
                   [tuple(x) for x in d["ordered"]], bool(d["exhausted"]), int(lag[0]), int(lag[1]),
                   str(d.get("level", "eventual")), int(d.get("at") or 0),
                   None if barrier is None else int(barrier))

    def lag_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"entries": self.lag_entries, "ms": self.lag_ms, "at": self.at}
        if self.barrier is not None:
            out["barrier"] = self.barrier
        return out


def _encode_cursor(offset: int, digest: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([offset, digest])).decode().rstrip("=")


def _decode_cursor(value: str, digest: str) -> int:
    try:
        offset, seen = orjson.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
        if not isinstance(offset, int) or seen != digest or not 0 <= offset <= OFFSET_MAX:
            raise ValueError
        return offset
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise InvalidRequest("cursor is not one this server issued for this search", field="cursor") from None


class Search:
    def __init__(self, config: Config, router: Router, clock: Clock, indexes: Indexes | None) -> None:
        self.config = config
        self.router = router
        self.clock = clock
        self.indexes = indexes
        self.limits = config.limits
        self.analyzer = analyzer()
        self.no_barrier = bool(config.debug.get("unsafe_search_no_barrier"))
        self.no_wake = bool(config.debug.get("unsafe_search_no_wake"))

    # -- the request ------------------------------------------------------------------
    def parse(self, call: Call) -> SearchRequest:
        body = v.parse_json(call.body, self.limits)
        if not isinstance(body, dict):
            raise InvalidRequest("the search must be a JSON object")
        unknown = sorted(set(body) - REQUEST_KEYS)
        if unknown:
            raise InvalidRequest(f"unknown field(s): {', '.join(unknown)} (allowed: {', '.join(sorted(REQUEST_KEYS))})")
        body = {key: value for key, value in body.items() if value is not None}  # null: left out
        for key in ("namespace", "namespace_prefix", "consistency", "after", "order_by"):
            if key in body and not isinstance(body[key], str):
                raise InvalidRequest(f"{key} must be a string", field=key)
        ns, prefix = body.get("namespace"), body.get("namespace_prefix")
        if (ns is None) == (prefix is None):
            raise InvalidRequest("give one of namespace and namespace_prefix", field="namespace")
        chars = self.limits.namespace_chars_max
        if ns is not None:
            ns = v.name("namespace", ns, chars)
        if prefix is not None:
            prefix = v.name("namespace_prefix", prefix, chars)
        query = body.get("query")
        tokens: list[str] = []
        if query is not None:
            if not isinstance(query, str):
                raise InvalidRequest("query must be a string", field="query")
            if len(query) > QUERY_CHARS_MAX:
                raise InvalidRequest(f"query is longer than {QUERY_CHARS_MAX} characters", field="query")
            tokens = list(dict.fromkeys(self.analyzer.analyze(query)))[:QUERY_TOKENS_MAX]
        vector = None
        if body.get("vector") is not None:
            vector = embeddings.check_vector("vector", body["vector"])
        metric = body.get("metric", "cosine")
        if metric not in METRICS:
            raise InvalidRequest(f"metric must be one of {', '.join(METRICS)}", field="metric")
        node = filters.parse(body.get("filter"))
        limit = _int(body, "limit", LIMIT_DEFAULT, 1, SEARCH_LIMIT_MAX)
        offset = _int(body, "offset", 0, 0, OFFSET_MAX)
        scored = query is not None or vector is not None
        order_by = body.get("order_by", "score" if scored else "-updated_at")
        if order_by not in ORDERS or (order_by == "score" and not scored):
            raise InvalidRequest(f"order_by must be one of {', '.join(ORDERS)} (score needs a query or a vector)",
                                 field="order_by")
        if order_by != "score" and vector is not None:
            raise InvalidRequest("a vector search is ordered by score", field="order_by")
        fresh = body.get("fresh", False)
        if not isinstance(fresh, bool):
            raise InvalidRequest("fresh must be true or false", field="fresh")
        level = v.consistency(body.get("consistency"))
        if level is not None and level not in SEARCH_LEVELS:
            raise InvalidRequest(f"a search's consistency is one of {', '.join(v.levels_accepted(SEARCH_LEVELS))}",
                                 field="consistency")
        after = v.merge_tokens(
            v.tokens(body.get("after"), self.config.shards),
            v.context(call.header(CONTEXT_HEADER), self.config.shards),
        )
        if fresh:
            level = "linearizable"
        elif level is None:
            level = "session" if after else "strong"
        with_embedding = body.get("with_embedding", False)
        if not isinstance(with_embedding, bool):
            raise InvalidRequest("with_embedding must be true or false", field="with_embedding")
        request = SearchRequest(
            namespace=ns, namespace_prefix=prefix, query=query, tokens=tokens, vector=vector, metric=metric,
            filter=node, raw_filter=body.get("filter"), limit=limit, offset=offset, level=level, after=after,
            order_by=order_by, with_embedding=with_embedding,
            rrf_k=_int(body, "rrf_k", RRF_K_DEFAULT, 1, RRF_K_MAX), scope=call.scope,
        )
        request.digest = hashlib.blake2b(orjson.dumps(
            [ns, prefix, query, vector, metric, body.get("filter"), order_by]), digest_size=8).hexdigest()
        if body.get("cursor") is not None:
            if not isinstance(body["cursor"], str):
                raise InvalidRequest("cursor must be a string", field="cursor")
            request.offset = _decode_cursor(body["cursor"], request.digest)
        return request

    def _shard_query(self, r: SearchRequest, boosts: list[tuple[str, float]] | None) -> ShardQuery:
        order = r.order_by.lstrip("-")
        return ShardQuery(
            namespace=r.namespace, namespace_prefix=r.namespace_prefix, namespaces=r.scope,
            terms=boosts if boosts is not None else [(t, 1.0) for t in r.tokens],
            vector=r.vector, metric=r.metric, filter=r.filter, pushdown=filters.pushdown(r.filter),
            order_by=order, descending=r.order_by.startswith("-") or order == "score", need=r.need,
            timings=r.timings,
        )

    # -- the whole search ---------------------------------------------------------------
    async def search(self, call: Call) -> Reply:
        started = time.perf_counter()
        r = self.parse(call)
        reply = await self._search(r, call)
        r.timings.ms["total"] = (time.perf_counter() - started) * 1000
        reply.headers["Server-Timing"] = r.timings.header()
        return reply

    async def _search(self, r: SearchRequest, call: Call) -> Reply:
        if r.scope is not None and r.namespace is None:
            assert r.namespace_prefix is not None
            p = r.namespace_prefix
            allowed = tuple(n for n in r.scope if n == p or n.startswith(p + "."))
            if not allowed:
                return self._reply(r, [], False, [])
            r.scope = allowed
        shards = range(self.config.shards)
        if r.level in ("strong", "linearizable") and not (r.level == "linearizable" and self.no_barrier):
            with r.timings.stage("barrier"):
                r.targets = await self._barriers(r.level, call.hops)
        boosts: dict[int, list[tuple[str, float]]] = {}
        if r.tokens:
            with r.timings.stage("stats"):
                stats = await asyncio.gather(*(self._run(s, r, call, "stats", None) for s in shards))
            total_docs = sum(int(st["docs"]) for st in stats)
            total_dfs = [sum(int(st["dfs"][i]) for st in stats) for i in range(len(r.tokens))]
            for s, st in zip(shards, stats, strict=True):
                boosts[s] = term_boosts((int(st["docs"]), [int(x) for x in st["dfs"]]),
                                        (total_docs, total_dfs), r.tokens)
        with r.timings.stage("shards"):
            answers = await asyncio.gather(*(self._run(s, r, call, "search", boosts.get(s)) for s in shards))
        with r.timings.stage("merge"):
            parts = [Part.from_json(a) for a in answers]
            items, more = self._merge(r, parts)
        return self._reply(r, items, more, parts)

    async def list_ordered(self, ns: str, call: Call) -> Reply:
        """GET /v1/memories/{ns}?order=[-]updated_at|[-]created_at: a list (its
        agent_id, tag, since, until, limit, cursor) ordered by a time, served by
        the derived indexes (a filter-only search; the default list order stays
        the store's (created_at, id))."""
        q = call.query
        order = q.get("order") or ""
        if order not in ORDERS or order == "score":
            raise InvalidRequest("order must be updated_at, -updated_at, created_at or -created_at", field="order")
        conditions: list[dict[str, Any]] = []
        if q.get("agent_id") is not None:
            conditions.append({"agent_id": v.label("agent_id", q["agent_id"], v.AGENT_CHARS_MAX)})
        if q.get("tag") is not None:
            conditions.append({"tags": v.label("tag", q["tag"], self.limits.tag_chars_max)})
        for param, op in (("since", "$gte"), ("until", "$lte")):
            if q.get(param) is not None:
                conditions.append({"created_at": {op: v.int_param(param, q[param], 0, 0, v.TIME_MS_MAX)}})
        body: dict[str, Any] = {"namespace": ns, "order_by": order,
                                "limit": v.int_param("limit", q.get("limit"), v.LIST_PAGE_DEFAULT, 1,
                                                     self.limits.list_page_max)}
        if conditions:
            body["filter"] = {"$and": conditions}
        # A list keeps its levels' promises: strong and linearizable see every
        # acknowledged write (fresh), session and causal their tokens, eventual
        # what the replica has; bounded is served fresh (stronger than asked, as
        # the unordered list does: the indexes keep no staleness bound).
        level = v.requested_level(q, call.headers)
        if level in (None, "strong", "linearizable", "bounded"):
            body["fresh"] = True
        else:
            body["consistency"] = level
        if q.get("after"):
            body["after"] = q["after"]
        if q.get("cursor"):
            body["cursor"] = q["cursor"]
        reply = await self.search(replace(call, body=orjson.dumps(body)))
        found = reply.json()
        items = [{k: val for k, val in item.items() if k != "score"} for item in found["items"]]
        out: dict[str, Any] = {"items": items, "count": len(items), "index_lag": found["index_lag"]}
        if found["cursor"]:
            out["cursor"] = found["cursor"]
        return Reply(200, out, reply.headers)

    def _merge(self, r: SearchRequest, parts: Sequence[Part]) -> tuple[list[dict[str, Any]], bool]:
        def key(rec: dict[str, Any]) -> tuple[str, str]:
            return rec["namespace"], rec["id"]

        ranked: list[tuple[dict[str, Any], float | None]]
        if r.order_by != "score":
            field_name = r.order_by.lstrip("-")
            ranked = [x for p in parts for x in p.ordered]
            ranked.sort(key=lambda x: (x[0].get(field_name) or 0, key(x[0])), reverse=r.order_by.startswith("-"))
        else:
            text = sorted((x for p in parts for x in p.text), key=lambda x: (-(x[1] or 0.0), key(x[0])))
            vec = sorted((x for p in parts for x in p.vector), key=lambda x: (-(x[1] or 0.0), key(x[0])))
            if text and r.vector is not None or (r.tokens and r.vector is not None):
                fused: dict[tuple[str, str], list[Any]] = {}
                for ranking in (text, vec):
                    for rank, (rec, _score) in enumerate(ranking, start=1):
                        entry = fused.setdefault(key(rec), [rec, 0.0])
                        entry[1] += 1.0 / (r.rrf_k + rank)
                ranked = sorted(((rec, s) for rec, s in fused.values()), key=lambda x: (-(x[1] or 0.0), key(x[0])))
            else:
                ranked = text or vec
        window = ranked[r.offset: r.offset + r.limit]
        more = len(ranked) > r.offset + r.limit or any(not p.exhausted for p in parts) and len(window) == r.limit
        return [self._item(rec, score, r) for rec, score in window], more

    @staticmethod
    def _item(rec: dict[str, Any], score: float | None, r: SearchRequest) -> dict[str, Any]:
        out = dict(rec)
        emb = out.pop("emb", None)
        if r.with_embedding and emb is not None:
            out["embedding"] = embeddings.unpack(emb)
        out["score"] = score
        return out

    def _reply(self, r: SearchRequest, items: list[dict[str, Any]], more: bool, parts: Sequence[Part]) -> Reply:
        entries = max((p.lag_entries for p in parts), default=0)
        ms = max((p.lag_ms for p in parts), default=0)
        lag = {"entries": entries, "ms": ms, "stale": entries > 0,
               "shards": {str(s): p.lag_json() for s, p in enumerate(parts)}}
        body = {"items": items, "more": more,
                "cursor": _encode_cursor(r.offset + r.limit, r.digest) if more else None, "index_lag": lag}
        headers = {
            "X-Raftmem-Index-Lag": f"entries={entries}; ms={ms}",
            "X-Raftmem-Consistency": r.level,
            "X-Raftmem-Served-By": self.router.node_id,
        }
        return Reply(200, body, headers)

    # -- one shard ----------------------------------------------------------------------
    async def _run(self, shard_id: int, r: SearchRequest, call: Call, phase: str,
                   boosts: list[tuple[str, float]] | None) -> dict[str, Any]:
        """One shard's phase, here if this node holds an index of it, else at its leader."""
        if self.indexes is not None and self.indexes.get(shard_id) is not None:
            return await self.shard_part(shard_id, r, phase, boosts, call.hops)
        plan = {"request": call.body.decode(), "phase": phase, "boosts": boosts,
                "scope": list(r.scope) if r.scope is not None else None, "offset": r.offset}
        body = orjson.dumps(plan)
        inner = Call("POST", f"/v1/internal/shards/{shard_id}/search", {}, dict(_context(call)), body, call.hops)

        async def local(_leader: Shard) -> Reply:
            return await self.shard_internal(shard_id, inner)

        reply = await self.router.on_leader(shard_id, inner, local, is_write=False)
        answer = reply.json()
        if reply.status != 200:
            raise from_result(answer)
        return dict(answer)

    async def shard_internal(self, shard_id: int, call: Call) -> Reply:
        """POST /v1/internal/shards/{shard}/search: one shard's phase, for a node without its index."""
        if not 0 <= shard_id < self.config.shards:
            raise InvalidRequest(f"no shard {shard_id}")
        plan = orjson.loads(call.body)
        inner = replace(call, body=str(plan["request"]).encode(),
                        scope=tuple(plan["scope"]) if plan.get("scope") is not None else None)
        r = self.parse(inner)
        r.offset = int(plan.get("offset") or 0)
        boosts = [(str(t), float(b)) for t, b in plan["boosts"]] if plan.get("boosts") else None
        return Reply(200, await self.shard_part(shard_id, r, str(plan["phase"]), boosts, call.hops))

    async def shard_part(self, shard_id: int, r: SearchRequest, phase: str,
                         boosts: list[tuple[str, float]] | None, hops: int) -> dict[str, Any]:
        assert self.indexes is not None
        index = self.indexes.require(shard_id)
        shard = self.router.local(shard_id)
        assert shard is not None
        with r.timings.stage("wait"):
            # Both phases: the search phase may run elsewhere than the statistics' did.
            timeout_s = await self._awaken(index)
        if phase == "stats":
            with r.timings.stage("wait"):
                reference = r.references[shard_id] = await self._freshen(shard_id, index, r, hops, timeout_s)
            # a dictionary lookup per term: on the loop when the engines are in this process
            docs, dfs = await engine_call(index, r.timings, "tantivy", True, index.require_engines().term_stats,
                                          r.tokens)
            return {"docs": docs, "dfs": dfs, "reference": reference}
        # With query terms, the stats phase waited already when it ran here
        # (everything through its reference is visible now).
        with r.timings.stage("wait"):
            waited = r.references.get(shard_id)
            reference = waited if waited is not None else await self._freshen(shard_id, index, r, hops, timeout_s)
        barrier = None if r.level == "eventual" else reference  # for `strong`: its eager changes
        if r.level not in ("linearizable", "session", "causal"):
            reference = shard.applied_index
        await self._check_dims(shard, r)
        now = self.clock.wall_ms()

        async def records(keys: Sequence[tuple[str, str]]) -> list[dict[str, Any] | None]:
            recs, _ = await shard.read("eventual", lambda st: [st.get(ns, mid, now) for ns, mid in keys])
            # The packed embedding only when asked for (a quarter of the record's bytes).
            keep_emb = r.with_embedding
            return [None if rec is None else public(rec, shard_id) | (
                {"emb": rec["emb"]} if keep_emb and "emb" in rec else {}) for rec in recs]

        at = index.visible  # what the indexes had absorbed when the search began
        result = await shard_search(index, self._shard_query(r, boosts), records)
        lag_entries, lag_ms = index.lag()
        if r.level in ("linearizable", "session", "causal"):
            lag_entries = max(0, min(lag_entries, reference - index.visible))
        part = Part(_pairs(result.text), _pairs(result.vector), _pairs(result.ordered), result.exhausted,
                    lag_entries, lag_ms if lag_entries else 0, r.level, at, barrier)
        return part.to_json()

    @staticmethod
    async def _check_dims(shard: Shard, r: SearchRequest) -> None:
        namespace = r.namespace
        if r.vector is None or namespace is None:
            return
        dims, _ = await shard.read("eventual", lambda s: s.dims_of(namespace))
        if dims is not None and dims != len(r.vector):
            raise InvalidRequest(f"vector has {len(r.vector)} dimensions; namespace {r.namespace} holds "
                                 f"embeddings of {dims}", field="vector")

    async def _awaken(self, index: Any) -> float:
        """A search-idle replica absorbs its batched changes first, within half
        the read's time; the time left for the level's wait (`_freshen`)."""
        timeout_s = self.limits.read_timeout_ms / 1000
        if self.no_wake:
            return timeout_s
        started = time.monotonic()
        await index.awaken(timeout_s / 2)
        return max(timeout_s / 2, timeout_s - (time.monotonic() - started))

    async def _freshen(self, shard_id: int, index: Any, r: SearchRequest, hops: int, timeout_s: float) -> int:
        """Wait, per the request's level and within `timeout_s`, until this
        replica's indexes may answer; the index the answer is at least as fresh as."""
        level = r.level
        if level == "eventual" or (level == "linearizable" and self.no_barrier):
            return int(index.visible)
        if level in ("session", "causal"):
            target = r.after.get(shard_id, 0)
            if not index.covered(target, ALL_TIERS):
                # As a session read does (raftmem.reads): a token past what the
                # leader committed names no acknowledged write of this cluster (a
                # made-up one, or from before a restore): the leader's
                # linearizable barrier covers everything the caller can have
                # seen, and waiting for the token would only time out.
                target = min(target, await self.barrier(shard_id, "linearizable", hops))
            await index.wait_absorbed(target, ALL_TIERS, timeout_s)
            return target
        found = r.targets.get(shard_id)
        barrier = found if found is not None else await self.barrier(shard_id, level, hops)
        await index.wait_absorbed(barrier, ALL_TIERS if level == "linearizable" else (EAGER,), timeout_s)
        return barrier

    async def _barriers(self, level: str, hops: int) -> dict[int, int]:
        """Barriers of every shard this node searches locally, asked of each
        leader node once (a shard whose leader moved meanwhile is left out: it
        takes its own barrier later)."""
        assert self.indexes is not None
        by_leader: dict[str, list[int]] = {}
        for s in range(self.config.shards):
            leader = self.router.leader_of(s)
            if self.indexes.get(s) is not None and leader is not None:
                by_leader.setdefault(leader, []).append(s)
        answers = await asyncio.gather(*(self._barriers_at(node, shards, level, hops)
                                         for node, shards in by_leader.items()))
        return {s: i for answer in answers for s, i in answer.items()}

    async def _barriers_at(self, node: str, shards: list[int], level: str, hops: int) -> dict[int, int]:
        if node == self.router.node_id:
            return await self.barriers_here(shards, level)
        call = Call("GET", "/v1/internal/barriers", {"shards": ",".join(map(str, shards)), "level": level},
                    {}, b"", hops)
        try:
            reply = await self.router.forwarder.forward(node, call, self.limits.read_timeout_ms / 1000)
        except (ForwardNotSent, ForwardLost):
            return {}
        body = reply.json()
        if reply.status != 200 or not isinstance(body, dict):
            return {}
        return {int(s): int(i) for s, i in (body.get("indexes") or {}).items()}

    async def barriers_here(self, shards: list[int], level: str) -> dict[int, int]:
        """The barriers of those shards this node leads."""
        async def one(s: int) -> tuple[int, int | None]:
            replica = self.router.local(s)
            if replica is None or not replica.role().leading:
                return s, None
            try:
                return s, int((await self.barrier_here(replica, level)).json()["index"])
            except RaftmemError:
                return s, None

        found = await asyncio.gather(*(one(s) for s in shards))
        return {s: i for s, i in found if i is not None}

    async def barriers_internal(self, call: Call) -> Reply:
        """GET /v1/internal/barriers?shards=1,4&level=: those this node leads."""
        try:
            shards = [int(x) for x in (call.query.get("shards") or "").split(",") if x]
        except ValueError:
            raise InvalidRequest("shards must be comma-separated integers") from None
        if any(not 0 <= s < self.config.shards for s in shards):
            raise InvalidRequest("no such shard")
        indexes = await self.barriers_here(shards, call.query.get("level") or "strong")
        return Reply(200, {"indexes": {str(s): i for s, i in indexes.items()}})

    async def barrier(self, shard_id: int, level: str, hops: int = 0) -> int:
        """An index at the shard's leader covering every write acknowledged before
        the call (ReadIndex for linearizable, the lease for strong)."""
        call = Call("GET", f"/v1/internal/shards/{shard_id}/barrier", {"level": level}, {}, b"", hops)

        async def local(leader: Shard) -> Reply:
            return await self.barrier_here(leader, level)

        reply = await self.router.on_leader(shard_id, call, local, is_write=False)
        body = reply.json()
        if reply.status != 200:
            raise from_result(body)
        return int(body["index"])

    @staticmethod
    async def barrier_here(leader: Shard, level: str) -> Reply:
        _, served = await leader.read("linearizable" if level == "linearizable" else "strong", lambda _s: None)
        return Reply(200, {"index": int(served.token.rsplit(":", 1)[1]), "level": served.level})

    async def barrier_internal(self, shard_id: int, call: Call) -> Reply:
        """GET /v1/internal/shards/{shard}/barrier?level=: served at the leader."""
        if not 0 <= shard_id < self.config.shards:
            raise InvalidRequest(f"no shard {shard_id}")
        level = call.query.get("level") or "strong"
        return await self.router.on_leader(shard_id, call, lambda leader: self.barrier_here(leader, level),
                                           is_write=False)


def _pairs(found: list[Found]) -> list[tuple[dict[str, Any], float | None]]:
    return [(f.record, f.score) for f in found]


def _context(call: Call) -> dict[str, str]:
    value = call.header(CONTEXT_HEADER)
    return {CONTEXT_HEADER: value} if value else {}


def _int(body: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    value = v.integral(body.get(key, default))
    if value is None or not lo <= value <= hi:
        raise InvalidRequest(f"{key} must be an integer in [{lo}, {hi}]", field=key)
    return value


__all__ = ["Search", "SearchRequest"]
