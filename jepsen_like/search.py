"""The ``search`` workload: writers add memories (unique ids, spread over
buckets by tag) and delete some of their own; searchers on every node issue
``fresh: true`` searches of one bucket at a time. The search checker
(jepsen_like.checker.search) holds every ok search to the promise of
``fresh``: it sees every write acknowledged before it was sent and no memory
deleted before it was sent.

Writes go through the normal write path and are indexed by the derived indexes
of every replica in the default (batched) tier, so a search that answered
without its barrier (the negative control, ``debug.unsafe_search_no_barrier``)
misses writes the indexes have not absorbed yet.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

from jepsen_like.workloads import Context, Workload, outcome

BUCKETS = 16
SEARCH_LIMIT = 1000


class SearchWorkload(Workload):
    name = "search"
    namespace = "jsearch"

    def __init__(self, ctx: Context, writers_per_node: int = 1, searchers_per_node: int = 1,
                 delete_share: float = 0.2, mean_delay_s: float = 0.02) -> None:
        super().__init__(ctx)
        self.writers_per_node = writers_per_node
        self.searchers_per_node = searchers_per_node
        self.delete_share = delete_share
        self.mean_delay_s = mean_delay_s
        self.elements = itertools.count(1)

    def workers(self) -> list[Callable[[], Awaitable[None]]]:
        nodes = self.ctx.node_ids
        writers = [(lambda node=node: self._writer(node)) for _ in range(self.writers_per_node) for node in nodes]
        searchers = [(lambda node=node: self._searcher(node)) for _ in range(self.searchers_per_node) for node in nodes]
        return [*writers, *searchers]

    def _bucket(self, n: int) -> str:
        return f"b{n % BUCKETS}"

    async def _writer(self, node: str) -> None:
        ctx = self.ctx
        process = ctx.recorder.new_process()
        mine: list[tuple[str, str]] = []  # (id, bucket) acknowledged, not deleted
        while not ctx.stop.is_set():
            if mine and self.rng.random() < self.delete_share:
                mid, bucket = mine.pop(self.rng.randrange(len(mine)))
                inv = self.invoke(process, "delete", bucket, mid, node)
                answer = await ctx.client.request(node, "DELETE", f"/v1/memories/{self.namespace}/{mid}")
                etype, error = outcome(answer, (200,), fail_statuses=(404,))
            else:
                n = next(self.elements)
                mid, bucket = f"e{n}", self._bucket(n)
                inv = self.invoke(process, "add", bucket, mid, node)
                answer = await ctx.client.request(node, "PUT", f"/v1/memories/{self.namespace}/{mid}",
                                                  body={"content": f"search probe {mid}", "tags": [bucket]})
                etype, error = outcome(answer, (200, 201))
                if etype == "ok":
                    mine.append((mid, bucket))
            self.complete(inv, etype, inv.value, error, answer)
            if etype == "info":
                process = ctx.recorder.new_process()
            await self.pause(self.mean_delay_s, failed=etype != "ok")

    async def _searcher(self, node: str) -> None:
        ctx = self.ctx
        process = ctx.recorder.new_process()
        while not ctx.stop.is_set():
            bucket = self._bucket(self.rng.randrange(BUCKETS))
            inv = self.invoke(process, "search", bucket, None, node, consistency="fresh")
            answer = await ctx.client.request(node, "POST", "/v1/search", body={
                "namespace": self.namespace, "filter": {"tags": bucket}, "limit": SEARCH_LIMIT, "fresh": True})
            etype, error = outcome(answer, (200,))
            if etype == "ok" and isinstance(answer.body, dict):
                found = sorted(str(item["id"]) for item in answer.body.get("items") or ())
                self.complete(inv, "ok", found, None, answer, complete=not answer.body.get("more"))
            else:
                self.complete(inv, etype, None, error, answer)
            if etype == "info":
                process = ctx.recorder.new_process()
            await self.pause(self.mean_delay_s * 5, failed=etype != "ok")
