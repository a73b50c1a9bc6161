"""The rest of recall: namespaces (LangGraph's list_namespaces), namespace
summaries with stale flags, reindexing, and the write path's hooks (server-side
embedding, index back-pressure, the eager tier's wait).

Reads of many shards go to this node's replica of each shard when it holds
one (stale-tolerant: a namespace list and a summary say how old they may be),
else to the shard's leader through an internal call."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from typing import Any
from urllib.parse import quote

from .. import embeddings
from .. import validation as v
from ..clock import Clock
from ..commands import Command, Committed, Put
from ..config import Config
from ..errors import InvalidRequest, from_result
from ..indexing.embedder import Embedder
from ..indexing.manager import Indexes
from ..indexing.summaries import Summary, combine
from ..shard import MemoryReader, Shard
from .calls import Call, Reply
from .leaders import Router

NAMESPACES_PAGE_MAX = 1000
NAMESPACES_OFFSET_MAX = 1_000_000
NAMESPACE_DEPTH_MAX = 64
NAMESPACES_SCAN_PAGE = 1000
NAMESPACES_SCAN_MAX = 50_000  # per shard, per request
WILDCARD = "*"


def label_match(labels: list[str], pattern: list[str]) -> bool:
    """`pattern` matches the first labels (a `*` label matches any one)."""
    return len(labels) >= len(pattern) and all(p in (WILDCARD, lab) for p, lab in zip(pattern, labels, strict=False))


def select_namespaces(names: set[str], prefix: str | None, suffix: str | None, max_depth: int | None) -> list[str]:
    """LangGraph's list_namespaces over dotted names: label-wise prefix and
    suffix (with `*` wildcards), then truncated to `max_depth` labels, deduplicated."""
    out: set[str] = set()
    pre = prefix.split(".") if prefix else []
    suf = suffix.split(".") if suffix else []
    for name in names:
        labels = name.split(".")
        if pre and not label_match(labels, pre):
            continue
        if suf and not label_match(labels[::-1], suf[::-1]):
            continue
        out.add(".".join(labels[:max_depth]) if max_depth is not None else name)
    return sorted(out)


def _namespaces(prefix: str, after: str | None) -> Callable[[MemoryReader], list[str]]:
    return lambda s: s.namespaces(prefix, after, NAMESPACES_SCAN_PAGE)


class Recall:
    def __init__(self, config: Config, router: Router, clock: Clock, indexes: Indexes | None,
                 barrier: Callable[[int, str, int], Awaitable[int]]) -> None:
        """`barrier(shard, level, hops)`: an index at the shard's leader that
        covers every acknowledged write (service.search.Search.barrier)."""
        self.barrier = barrier
        self.config = config
        self.router = router
        self.clock = clock
        self.indexes = indexes
        self.limits = config.limits
        embedder = config.indexing.embedder
        self.embedder = Embedder(embedder) if embedder is not None else None

    async def _on_holder(self, shard_id: int, path: str, params: dict[str, str], call: Call,
                         here: Callable[[Shard], Awaitable[Any]]) -> Any:
        """`here` on this node's replica of the shard, else at its leader via `path`."""
        local = self.router.local(shard_id)
        if local is not None:
            return await here(local)
        inner = Call("GET", path, params, {}, b"", call.hops)

        async def at_leader(leader: Shard) -> Reply:
            return Reply(200, await here(leader))

        reply = await self.router.on_leader(shard_id, inner, at_leader, is_write=False)
        body = reply.json()
        if reply.status != 200:
            raise from_result(body)
        return body

    # -- namespaces ----------------------------------------------------------------------
    async def namespaces(self, call: Call) -> Reply:
        q = call.query
        prefix, suffix = q.get("prefix"), q.get("suffix")
        for what, value in (("prefix", prefix), ("suffix", suffix)):
            if value is not None:
                for label in value.split("."):
                    if label != WILDCARD:
                        v.name(f"{what} label", label, self.limits.namespace_chars_max)
        max_depth = v.int_param("max_depth", q.get("max_depth"), 0, 1, NAMESPACE_DEPTH_MAX) or None
        limit = v.int_param("limit", q.get("limit"), 100, 1, NAMESPACES_PAGE_MAX)
        offset = v.int_param("offset", q.get("offset"), 0, 0, NAMESPACES_OFFSET_MAX)
        literal = []
        for label in (prefix or "").split(".") if prefix else []:
            if label == WILDCARD:
                break
            literal.append(label)
        scan = ".".join(literal)
        parts = await asyncio.gather(*(
            self._on_holder(s, f"/v1/internal/shards/{s}/namespaces", {"prefix": scan}, call,
                            lambda shard: self.shard_namespaces(shard, scan))
            for s in range(self.config.shards)
        ))
        names = {n for part in parts for n in part}
        if call.scope is not None:
            names &= set(call.scope)
        chosen = select_namespaces(names, prefix, suffix, max_depth)
        page = chosen[offset: offset + limit]
        body = {"namespaces": page, "more": len(chosen) > offset + limit}
        return Reply(200, body, {"X-Raftmem-Consistency": "eventual", "X-Raftmem-Served-By": self.router.node_id})

    @staticmethod
    async def shard_namespaces(shard: Shard, prefix: str) -> list[str]:
        out: list[str] = []
        after: str | None = None
        while len(out) < NAMESPACES_SCAN_MAX:
            page, _ = await shard.read("eventual", _namespaces(prefix, after))
            out.extend(page)
            if len(page) < NAMESPACES_SCAN_PAGE:
                break
            after = page[-1]
        return out

    async def namespaces_internal(self, shard_id: int, call: Call) -> Reply:
        self._shard_id(shard_id)
        prefix = call.query.get("prefix") or ""
        shard = self.router.local(shard_id)
        if shard is None:
            raise InvalidRequest(f"no replica of shard {shard_id} here")
        return Reply(200, await self.shard_namespaces(shard, prefix))

    # -- summaries ---------------------------------------------------------------------------
    async def summary(self, ns: str, call: Call) -> Reply:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        agent = call.query.get("agent_id")
        if agent is not None:
            v.label("agent_id", agent, v.AGENT_CHARS_MAX)
        refresh = v.flag("refresh", call.query.get("refresh"))
        params = {"refresh": "true" if refresh else "false", **({"agent_id": agent} if agent else {})}
        path = "/v1/internal/shards/{s}/summary/" + quote(ns)
        parts = await asyncio.gather(*(
            self._on_holder(s, path.format(s=s), params, call,
                            lambda shard: self._summary_part(shard, ns, agent, refresh, call.hops))
            for s in range(self.config.shards)
        ))
        now_s = self._indexes().now_s()
        body = combine([Summary(**{**p, "computed_s": now_s - p["computed_s"]}) for p in parts], now_s)
        body.update(namespace=ns, agent_id=agent)
        return Reply(200, body, {"X-Raftmem-Served-By": self.router.node_id})

    async def _summary_part(self, shard: Shard, ns: str, agent: str | None, refresh: bool,
                            hops: int = 0) -> dict[str, Any]:
        indexes = self._indexes()
        if refresh:
            # Recomputed on demand: from a replica that has every write acknowledged before.
            target = await self.barrier(shard.shard, "strong", hops)
            await indexes.require(shard.shard).wait_applied(target, self.limits.read_timeout_ms / 1000)
        part = await indexes.summary(shard.shard, ns, agent, refresh)
        out = asdict(part)
        # Between nodes as an age (monotonic clocks differ by node).
        out["computed_s"] = indexes.now_s() - part.computed_s
        return out

    async def summary_internal(self, shard_id: int, ns: str, call: Call) -> Reply:
        self._shard_id(shard_id)
        shard = self.router.local(shard_id)
        if shard is None:
            raise InvalidRequest(f"no replica of shard {shard_id} here")
        refresh = call.query.get("refresh") == "true"
        return Reply(200, await self._summary_part(shard, ns, call.query.get("agent_id") or None, refresh,
                                                   call.hops))

    # -- reindex -----------------------------------------------------------------------------
    async def reindex(self, call: Call) -> Reply:
        """POST /v1/admin/reindex[?shard=N][&wait=true]: rebuild this node's indexes
        of a shard (or of all) from its RocksDB state."""
        indexes = self._indexes()
        raw = call.query.get("shard")
        wait = v.flag("wait", call.query.get("wait"))  # checked before anything starts
        shards = sorted(indexes.replicas) if raw is None else [
            v.int_param("shard", raw, 0, 0, self.config.shards - 1)]
        before = {s: indexes.replicas[s].stats.rebuilds for s in shards if s in indexes.replicas}
        started = indexes.reindex(shards)
        if wait:
            deadline = asyncio.get_running_loop().time() + self.limits.read_timeout_ms / 1000 * 12
            while any(indexes.replicas[s].stats.rebuilds <= before[s] for s in started if s in indexes.replicas):
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.05)
        status = indexes.status()
        return Reply(200, {"node": self.router.node_id, "shards": started,
                           "indexes": {str(s): status.get(s) for s in started}})

    async def index_status(self, _call: Call) -> Reply:
        indexes = self._indexes()
        return Reply(200, {"node": self.router.node_id,
                           "shards": {str(s): st for s, st in indexes.status().items()},
                           "engine_host": indexes.host_status()})

    async def index_check(self, shard_id: int, _call: Call) -> Reply:
        """GET /v1/admin/indexes/{shard}/check: this node's index of the shard
        against its store at the same index (pause writes first)."""
        self._shard_id(shard_id)
        index = self._indexes().require(shard_id)
        result = await index.check(self.limits.read_timeout_ms / 1000)
        result.update(node=self.router.node_id, shard=shard_id)
        return Reply(200, result)

    def _indexes(self) -> Indexes:
        if self.indexes is None:
            raise InvalidRequest("this node has no derived indexes")
        return self.indexes

    def _shard_id(self, shard_id: int) -> None:
        if not 0 <= shard_id < self.config.shards:
            raise InvalidRequest(f"no shard {shard_id}")

    # -- the write path's hooks (service.memories.WriteHooks) ----------------------------
    async def prepare(self, command: Command) -> Command:
        """Embed a memory's text at the leader when the server has an embedder and
        the write brought no embedding."""
        if self.embedder is None or not isinstance(command, Put) or command.fields.embedding is not None:
            return command
        text = embeddings.text_of(command.fields.content)
        if not text.strip():
            return command
        vector = (await self.embedder.embed([text]))[0]
        return replace(command, fields=replace(command.fields, embedding=embeddings.pack(vector)))

    def admit(self, shard: int) -> None:
        if self.indexes is not None:
            self.indexes.admit(shard)

    async def settle(self, shard: int, command: Command, done: Committed) -> None:
        if self.indexes is not None:
            await self.indexes.settle(shard, command, done)

    async def close(self) -> None:
        if self.embedder is not None:
            await self.embedder.close()
