"""The node's derived indexes: one `ReplicaIndex` per shard replica the node
holds (started and stopped with the replica), the engine host process their
engines run in (`indexing.engines: process`), the summaries, a worker pool
for absorbing, and what the service asks of them (admission of writes, waits
for absorption, a replica's index for a search, reindex, statistics)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..clock import Clock
from ..commands import Command, Committed, Put
from ..config import Config
from ..errors import Unavailable
from ..events import ChangeFeed
from ..shard import Shard
from .budget import CommitBudget
from .engines import Engines, ReplicaEngines
from .host import EngineHost, RemoteEngines
from .queue import EAGER
from .replica import ReplicaIndex
from .summaries import Key, Summaries, Summary, compute

log = logging.getLogger(__name__)

# Absorbing threads per node: each replica absorbs one batch at a time, and a
# tantivy commit spends most of its time in fsync with the GIL released, so two
# replicas commit at once (with one, fresh searches of a 4-shard node under the
# harness's load waited behind the others' commits: p50 0.9 s).
ABSORB_THREADS = 2
# Engine work of searches (usearch's graph, tantivy's larger searches) runs on a
# pool of its own, two threads per core (not asyncio's default pool, which other
# work shares: summaries). Measured at 100k memories (raftmem/indexing/DESIGN.md,
# "A search's cost"): 8 clients did 76-81 searches/s on 2 threads, 89-96 on 4,
# 86-92 on 6; one client's latency was the same within the noise.
SEARCH_THREADS = 2 * max(1, os.cpu_count() or 1)
# A dead engine host is replaced at most this often (one that dies as it
# starts does not make the node spin).
REVIVE_INTERVAL_S = 1.0


@dataclass
class LagView:
    entries: int
    ms: int


class Indexes:
    def __init__(self, config: Config, feed: ChangeFeed, clock: Clock) -> None:
        self.config = config
        self.indexing = config.indexing
        self.enabled = config.indexing.enabled
        self.feed = feed
        self.clock = clock
        self.executor = ThreadPoolExecutor(ABSORB_THREADS, thread_name_prefix="absorb")
        self.search_executor = ThreadPoolExecutor(SEARCH_THREADS, thread_name_prefix="search")
        self.replicas: dict[int, ReplicaIndex] = {}
        self.budget = CommitBudget(config.indexing.commits_per_s, config.indexing.commits_burst)
        self.summaries = Summaries(config.indexing.summary_refresh_ms)
        self.eager_waits = 0
        self.eager_wait_failures = 0
        self._shards: dict[int, Shard] = {}
        # The replicas' engines run in a process of their own (raftmem/indexing/host.py)
        # unless indexing.engines is "thread".
        self.host = (EngineHost(config.indexing.engine_nice)
                     if self.enabled and config.indexing.engines == "process" else None)
        self._revived_s = float("-inf")

    async def start(self) -> None:
        if self.enabled:
            self.summaries.start(self.refresh_summary)
        if self.host is not None and self.host.proc is not None:
            # Before the node says it is ready: the host's imports (a second of
            # CPU) would otherwise land on its first requests.
            try:
                await asyncio.to_thread(self.host.wait_ready)
            except Unavailable as e:
                log.warning("the engine host did not answer at start: %s", e)

    def attach(self, shard: Shard) -> None:
        """A replica started on this node: index it."""
        self._shards[shard.shard] = shard
        if not self.enabled or shard.shard in self.replicas:
            return
        if self.host is not None and self.host.proc is None:
            self.host.start()  # here, on the event loop's thread: the host dies with it
        index = ReplicaIndex(shard, self.indexing, self.feed, self.executor, on_change=self.summaries.mark,
                             budget=self.budget, search_executor=self.search_executor,
                             retention_entries=self.config.watch.retention_entries,
                             engines=self._engines_factory(), revive=self.revive,
                             resume_claimed=bool(self.config.debug.get("unsafe_engines_resume_claimed")))
        self.replicas[shard.shard] = index
        index.start()

    def _engines_factory(self) -> Callable[[Path, int], Engines]:
        host = self.host
        if host is None:
            return ReplicaEngines
        return lambda directory, heap_bytes: RemoteEngines(host, directory, heap_bytes)

    async def revive(self) -> None:
        """A replica lost its engine host: start another if it is dead (once
        for all the replicas that noticed)."""
        assert self.host is not None
        if self.host.alive():
            return
        wait = self._revived_s + REVIVE_INTERVAL_S - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if self.host.revive():
            self._revived_s = time.monotonic()

    async def detach(self, shard: int, delete: bool) -> None:
        """The replica stops (`delete`: it is dropped with its data)."""
        self._shards.pop(shard, None)
        self.summaries.drop_shard(shard)
        index = self.replicas.pop(shard, None)
        if index is not None:
            await index.stop(delete=delete)

    async def stop(self) -> None:
        try:
            await self.summaries.stop()
            for shard in list(self.replicas):
                await self.detach(shard, delete=False)
            self.executor.shutdown(wait=True)
            self.search_executor.shutdown(wait=True)
        finally:
            if self.host is not None:
                await asyncio.to_thread(self.host.stop)

    def get(self, shard: int) -> ReplicaIndex | None:
        return self.replicas.get(shard)

    def require(self, shard: int) -> ReplicaIndex:
        index = self.replicas.get(shard)
        if index is None:
            raise Unavailable(f"shard {shard}: no derived index on this node"
                              + ("" if self.enabled else " (indexing.enabled is false)"), shard=shard)
        return index

    # -- the write path's hooks ----------------------------------------------------------
    def admit(self, shard: int) -> None:
        index = self.replicas.get(shard)
        if index is not None:
            index.admit()

    def eager(self, command: Command) -> bool:
        return isinstance(command, Put) and self.indexing.tier_for_tags(command.fields.tags) == EAGER

    async def settle(self, shard: int, command: Command, done: Committed) -> None:
        """An eager-tier write is acknowledged once this replica (the leader's)
        has absorbed it: a search right after sees it."""
        index = self.replicas.get(shard)
        if index is None or not done.result.outcome.ok or not self.eager(command):
            return
        self.eager_waits += 1
        try:
            await index.wait_absorbed(done.index, (EAGER,), self.config.limits.write_timeout_ms / 1000)
        except Unavailable:
            # The write is committed: its answer stands; searches wait for it instead.
            self.eager_wait_failures += 1
            log.warning("shard %d: eager write %d acknowledged before its index absorbed it", shard, done.index)

    # -- reindex -----------------------------------------------------------------------
    def reindex(self, shards: list[int]) -> list[int]:
        started = []
        for shard in shards:
            index = self.replicas.get(shard)
            if index is not None:
                index.request_rebuild()
                started.append(shard)
        return started

    # -- summaries ------------------------------------------------------------------------
    async def summary(self, shard: int, ns: str, agent: str | None, refresh: bool) -> Summary:
        key: Key = (shard, ns, agent)
        cached = self.summaries.get(key)
        if cached is not None and not refresh:
            return cached
        return await self.refresh_summary(key)

    async def refresh_summary(self, key: Key) -> Summary:
        shard_id, ns, agent = key
        shard = self._shards.get(shard_id)
        if shard is None:
            raise Unavailable(f"shard {shard_id}: no replica on this node", shard=shard_id)
        before = self.summaries.get(key)
        if before is not None:
            before.stale = False  # changes from now on mark it again
        scan = (await shard.read("eventual", lambda s: s.namespace_scan(ns)))[0]
        summary = await asyncio.to_thread(compute, scan.records, agent, self.clock.wall_ms(), scan.applied)
        if before is not None and before.stale:
            summary.stale = True  # written to while it was computed
        self.summaries.put(key, summary)
        return summary

    # -- observing -----------------------------------------------------------------------
    def lag(self, shard: int) -> LagView | None:
        index = self.replicas.get(shard)
        if index is None:
            return None
        entries, ms = index.lag()
        return LagView(entries, ms)

    def status(self) -> dict[int, dict[str, Any]]:
        """Per shard: what GET /v1/cluster and `raftmem status` show."""
        out = {}
        for shard, index in sorted(self.replicas.items()):
            entries, ms = index.lag()
            out[shard] = {
                "ready": index.ready.is_set(), "watermark": index.visible, "lag_entries": entries, "lag_ms": ms,
                "waiting": len(index.queue), "error": index.error,
                "search_idle": index.search_idle(time.monotonic()),
                "documents": index.state.documents if index.ready.is_set() else None,
                "engine_restarts": index.stats.engine_restarts,
                "absorb_us_per_change": round(index.queue.change_cost_s * 1e6),
            }
        return out

    def host_status(self) -> dict[str, Any] | None:
        host = self.host
        return None if host is None else {"pid": host.pid, "alive": host.alive(), "restarts": host.restarts}

    def shard_io(self, shard: int) -> dict[str, int]:
        """RocksDB's bytes written for the replica (its statistics)."""
        replica = self._shards.get(shard)
        if replica is None:
            return {}
        return {f"rocksdb_{k.removesuffix('_bytes')}": n for k, n in replica.stats().io_bytes.items()}

    def now_s(self) -> float:
        return time.monotonic()
