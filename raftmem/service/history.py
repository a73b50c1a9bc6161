"""GET /v1/memories/{ns}/{id}/history: a memory's last versions, newest first
(raftmem.history keeps them, in the replicated state). Read like a memory:
`consistency=` (default: the cluster's default level), `after=` and the causal
context for session and causal reads, `max_staleness_ms=` for bounded."""

from __future__ import annotations

from typing import Any

from .. import validation as v
from ..config import STALENESS_MS_MAX, Config
from ..errors import InvalidRequest, NotFound
from ..history import READ_LIMIT_MAX
from ..shard import MemoryReader, Served
from .calls import CONTEXT_HEADER, Call, Reply
from .queries import Queries


class Histories:
    def __init__(self, config: Config, queries: Queries) -> None:
        self.config = config
        self.queries = queries
        self.limits = config.limits

    async def history(self, ns: str, mid: str, call: Call) -> Reply:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        v.name("id", mid, self.limits.id_chars_max)
        q = call.query
        unknown = sorted(set(q) - {"consistency", "after", "max_staleness_ms", "limit"})
        if unknown:
            raise InvalidRequest(f"unknown parameter(s): {', '.join(unknown)}", fields=unknown)
        shard = self.queries.router.shard_of(ns, mid)
        level = v.requested_level(q, call.headers)
        level = level or self.config.consistency.default
        limit = v.int_param("limit", q.get("limit"), max(1, self.config.history.versions_max), 1, READ_LIMIT_MAX)
        after = v.merge_tokens(
            v.tokens(q.get("after"), self.config.shards), v.context(call.header(CONTEXT_HEADER), self.config.shards)
        ).get(shard, 0)
        bound_ms = v.int_param("max_staleness_ms", q.get("max_staleness_ms"), -1, 0, STALENESS_MS_MAX)
        if level == "bounded" and bound_ms < 0:
            raise InvalidRequest("consistency=bounded needs max_staleness_ms", field="max_staleness_ms")

        def read(state: MemoryReader) -> list[dict[str, Any]]:
            return state.history_of(ns, mid, limit)

        def reply(versions: list[dict[str, Any]], served: Served) -> Reply:
            headers = self.queries.read_headers(served)
            if not versions:
                missing = NotFound(f"memory {ns}/{mid} has no history", token=served.token)
                return Reply(missing.status, missing.body(), headers)
            return Reply(200, {"namespace": ns, "id": mid, "versions": versions}, headers)

        return await self.queries.serve(shard, call, level, read, reply, after=after, bound_ms=bound_ms)
