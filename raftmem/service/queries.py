"""Reading memories: one by key, or a page of a namespace gathered across shards.
Where a read may be served is the read protocol's (raftmem.reads), run by the
shard; this module picks the level, tries the local replica when it may serve,
and otherwise sends the read to the shard leader."""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import quote

from .. import validation as v
from ..clock import Clock
from ..config import STALENESS_MS_MAX, Config
from ..errors import InvalidRequest, NotFound, from_result
from ..reads import NotHere, level_for
from ..shard import FRESH_LEVELS, ListQuery, MemoryReader, Served, Shard
from .calls import CONTEXT_HEADER, Call, Reply, public
from .leaders import Router

T = TypeVar("T")


@dataclass
class _ListPart:
    """One shard's share of a list page."""

    items: list[dict[str, Any]]
    more: bool
    level: str
    token: str
    staleness_ms: int | None = None



def not_fenced(if_fence: str | None) -> None:
    """Reads are not fenced: If-Fence on one is refused, not ignored (a client
    could believe its read was checked against the lock)."""
    if if_fence is not None:
        raise InvalidRequest("If-Fence applies to writes (PUT, DELETE, POST, batch put and delete), not to reads",
                             field="If-Fence")

class Queries:
    def __init__(self, config: Config, router: Router, clock: Clock) -> None:
        self.config = config
        self.router = router
        self.clock = clock
        self.limits = config.limits
        self.node_id = router.node_id
        # Told of every memory a read served here found (the node wires it).
        self.on_read: Callable[[int, dict[str, Any]], None] | None = None

    # -- one memory ------------------------------------------------------------------
    async def get(self, ns: str, mid: str, call: Call) -> Reply:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        v.name("id", mid, self.limits.id_chars_max)
        not_fenced(call.header("If-Fence"))
        shard_id = self.router.shard_of(ns, mid)
        q = call.query
        level = v.requested_level(q, call.headers)
        shard = self.router.local(shard_id)

        def read(state: MemoryReader) -> dict[str, Any] | None:
            return state.get(ns, mid, self.clock.wall_ms())

        tag_bound_ms = -1
        if level is None:
            # The record's tags choose the level (what this replica holds of it).
            local_rec = (await shard.read("eventual", read))[0] if shard is not None else None
            level, tag_bound_ms = level_for(self.config.consistency, local_rec["tags"] if local_rec else None)
        # The caller's tokens: after= and its causal context, whichever is later.
        after = v.merge_tokens(
            v.tokens(q.get("after"), self.config.shards), v.context(call.header(CONTEXT_HEADER), self.config.shards)
        ).get(shard_id, 0)
        bound_ms = v.int_param("max_staleness_ms", q.get("max_staleness_ms"), tag_bound_ms, 0, STALENESS_MS_MAX)
        if level == "bounded" and bound_ms < 0:
            raise InvalidRequest("consistency=bounded needs max_staleness_ms", field="max_staleness_ms")
        return await self.serve(shard_id, call, level, read, lambda rec, served: self._reply_for(
            shard_id, ns, mid, rec, served), after=after, bound_ms=bound_ms)

    async def serve(
        self, shard_id: int, call: Call, level: str, read: Callable[[MemoryReader], T],
        reply: Callable[[T, Served], Reply], *, after: int = 0, bound_ms: int = -1,
    ) -> Reply:
        """Run `read` where `level` allows: the local replica when it may serve
        (any replica for `eventual`; a follower decides for the other levels),
        else the shard leader (here, or `call` forwarded to it)."""
        shard = self.router.local(shard_id)
        if shard is not None and (level == "eventual" or not shard.role().leading):
            try:
                value, served = await shard.read(level, read, after=after, bound_ms=bound_ms)
                return reply(value, served)
            except NotHere:
                pass  # the leader serves it

        async def local(leader: Shard) -> Reply:
            value, served = await leader.read(level, read, after=after, bound_ms=bound_ms)
            return reply(value, served)

        return await self.router.on_leader(shard_id, call, local, is_write=False)

    def read_headers(self, served: Served) -> dict[str, str]:
        """What a reply says of how it was read."""
        headers = {
            "X-Raftmem-Consistency": served.level,
            "X-Raftmem-Served-By": self.node_id,
            "X-Raftmem-Token": served.token,
        }
        if served.staleness_ms is not None and served.level not in FRESH_LEVELS:
            headers["X-Raftmem-Staleness-Ms"] = str(served.staleness_ms)
        return headers

    def _reply_for(self, shard: int, ns: str, mid: str, rec: dict[str, Any] | None, served: Served) -> Reply:
        headers = self.read_headers(served)
        if rec is None:
            # A reply, not a raise: a miss carries the read headers too (the level
            # served, and the token that says how far this replica had applied).
            missing = NotFound(f"memory {ns}/{mid} not found", token=served.token)
            return Reply(missing.status, missing.body(), headers)
        headers["ETag"] = str(rec["version"])
        if self.on_read is not None:
            self.on_read(shard, rec)  # access tracking, sliding TTL (service/lifecycle.py)
        return Reply(200, public(rec, shard), headers)

    # -- lists ---------------------------------------------------------------------
    def _list_query(self, ns: str, call: Call) -> ListQuery:
        q = call.query
        agent, tag = q.get("agent_id"), q.get("tag")
        # Not read by a list (it is served fresh, or eventual), but checked as everywhere.
        v.tokens(q.get("after"), self.config.shards)
        return ListQuery(
            namespace=ns,
            agent_id=v.label("agent_id", agent, v.AGENT_CHARS_MAX) if agent is not None else None,
            tag=v.label("tag", tag, self.limits.tag_chars_max) if tag is not None else None,
            since_ms=v.int_param("since", q.get("since"), 0, 0, v.TIME_MS_MAX),
            until_ms=v.int_param("until", q.get("until"), v.TIME_MS_MAX, 0, v.TIME_MS_MAX),
            after=v.decode_cursor(q.get("cursor")),
            limit=v.int_param("limit", q.get("limit"), v.LIST_PAGE_DEFAULT, 1, self.limits.list_page_max),
        )

    def _list_level(self, call: Call, tag: str | None) -> str:
        level = v.requested_level(call.query, call.headers)
        if level is None and tag is not None:
            level = self.config.consistency.level_for_tags([tag])
        return level or self.config.consistency.default

    async def list(self, ns: str, call: Call) -> Reply:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        not_fenced(call.header("If-Fence"))
        query = self._list_query(ns, call)
        level = self._list_level(call, query.tag)
        parts = await asyncio.gather(
            *(self._list_shard(s, query, level, call) for s in range(self.config.shards))
        )
        items: list[dict[str, Any]] = []
        served: set[str] = set()
        more = False
        tokens: list[str] = []
        stalest: int | None = None
        for part in parts:
            items.extend(part.items)
            more = more or part.more
            served.add(part.level)
            tokens.append(part.token)
            if part.staleness_ms is not None:
                stalest = max(stalest or 0, part.staleness_ms)
        items.sort(key=lambda m: (m["created_at"], m["id"]))
        if len(items) > query.limit:
            items, more = items[: query.limit], True
        body: dict[str, Any] = {"items": items, "count": len(items)}
        if more and items:
            body["cursor"] = v.encode_cursor(items[-1]["created_at"], items[-1]["id"])
        level_served = next((lv for lv in ("eventual", "strong", "linearizable") if lv in served), level)
        # One token per shard (what `after=` takes), and the stalest shard's staleness.
        headers = {
            "X-Raftmem-Consistency": level_served,
            "X-Raftmem-Served-By": self.node_id,
            "X-Raftmem-Token": ",".join(tokens),
        }
        if level_served == "eventual" and stalest is not None:
            headers["X-Raftmem-Staleness-Ms"] = str(stalest)
        return Reply(200, body, headers)

    def _page(self, state: MemoryReader, shard: int, query: ListQuery) -> tuple[builtins.list[dict[str, Any]], bool]:
        recs = state.list(replace(query, limit=query.limit + 1), self.clock.wall_ms())
        return [public(r, shard) for r in recs[: query.limit]], len(recs) > query.limit

    async def _list_shard(self, shard_id: int, query: ListQuery, level: str, call: Call) -> _ListPart:
        shard = self.router.local(shard_id)
        if level == "eventual" and shard is not None:
            (items, more), served = await shard.read("eventual", lambda s: self._page(s, shard_id, query))
            return _ListPart(items, more, "eventual", served.token, served.staleness_ms)
        fresh = "strong" if level == "strong" else "linearizable"

        async def local(leader: Shard) -> Reply:
            (items, more), served = await leader.read(fresh, lambda s: self._page(s, shard_id, query))
            return Reply(200, {"items": items, "more": more, "level": served.level, "token": served.token}, {})

        params = dict(call.query)
        params["consistency"] = fresh
        path = f"/v1/internal/shards/{shard_id}/list/{quote(query.namespace)}"
        shard_call = Call("GET", path, params, {}, b"", call.hops)
        reply = await self.router.on_leader(shard_id, shard_call, local, is_write=False)
        body = reply.json()
        if reply.status != 200:
            raise from_result(body)
        return _ListPart(body["items"], body["more"], body.get("level", "linearizable"), body.get("token", f"{shard_id}:0"))

    async def list_shard(self, shard: int, ns: str, call: Call) -> Reply:
        """Internal: one shard's page, served at its leader (the fan-out's far end)."""
        if not 0 <= shard < self.config.shards:
            raise InvalidRequest(f"no shard {shard}")
        v.name("namespace", ns, self.limits.namespace_chars_max)
        query = self._list_query(ns, call)
        level = "strong" if call.query.get("consistency") == "strong" else "linearizable"
        part = await self._list_shard(shard, query, level, call)
        return Reply(200, {"items": part.items, "more": part.more, "level": part.level, "token": part.token}, {})
