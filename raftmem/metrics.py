"""Prometheus metrics (prometheus-client), one registry per node process.

Request metrics are observed as requests complete; shard gauges are read from
each replica's `stats()` (the Shard port) at scrape time, so nothing on the
write path pays for them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    SummaryMetricFamily,
)

if TYPE_CHECKING:
    from .consensus import Ticker
    from .indexing.manager import Indexes
    from .service import MemoryService
    from .storage import MemoryBudget

LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
LOOP_LAG_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class LoopLag:
    """How late the event loop runs a timer: every `period_s` a callback is due,
    and the time past its due time it ran is observed. Everything on the node's
    loop (HTTP, Raft ticks, the change feed) waits that long too: a handler that
    blocks, a scrape, the GIL held by another thread (an index absorbing a batch)."""

    def __init__(self, observe: Callable[[float], None], period_s: float = 0.1) -> None:
        self._observe = observe
        self.period_s = period_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._due = loop.time() + self.period_s
        self._handle = loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._observe(max(0.0, now - self._due))
        self._due = now + self.period_s
        self._handle = self._loop.call_at(self._due, self._tick)


class _ShardCollector:
    def __init__(self, ticker: Ticker | None, budget: MemoryBudget | None) -> None:
        self.service: MemoryService | None = None
        self.ticker = ticker  # the node's, even when it hosts no replica
        self.budget = budget

    def collect(self) -> Any:
        if self.service is None:
            return
        gauges = {
            "term": GaugeMetricFamily("raftmem_shard_term", "Raft term", labels=["shard"]),
            "commit_index": GaugeMetricFamily("raftmem_shard_commit_index", "Raft commit index", labels=["shard"]),
            "applied_index": GaugeMetricFamily("raftmem_shard_applied_index", "Applied index", labels=["shard"]),
            "is_leader": GaugeMetricFamily("raftmem_shard_is_leader", "1 if this node leads the shard", labels=["shard"]),
            "log_entries": GaugeMetricFamily("raftmem_shard_log_entries", "Entries in the Raft log", labels=["shard"]),
            "log_bytes": GaugeMetricFamily("raftmem_shard_log_bytes", "Bytes in the Raft log", labels=["shard"]),
            "db_bytes": GaugeMetricFamily("raftmem_shard_db_bytes", "RocksDB size on disk", labels=["shard"]),
            "memtable_bytes": GaugeMetricFamily("raftmem_shard_memtable_bytes", "RocksDB memtables of this replica", labels=["shard"]),
        }
        counters = {
            "leader_changes": CounterMetricFamily("raftmem_shard_role_changes", "Raft role changes", labels=["shard"]),
            "proposals": CounterMetricFamily("raftmem_shard_proposals", "Operations proposed", labels=["shard"]),
            "entries": CounterMetricFamily("raftmem_shard_entries_proposed", "Log entries proposed (group commit)", labels=["shard"]),
            "syncs": CounterMetricFamily("raftmem_shard_journal_fsyncs", "Journal fsyncs", labels=["shard"]),
            "inline_syncs": CounterMetricFamily("raftmem_shard_leader_inline_fsyncs", "Journal fsyncs a leader made on the event loop before applying (a lone replica, or entries committed before it led); the fsync thread does the rest", labels=["shard"]),
            "lease_reads": CounterMetricFamily("raftmem_shard_lease_reads", "Strong reads served under the lease", labels=["shard"]),
            "read_index": CounterMetricFamily("raftmem_shard_read_index_reads", "Reads confirmed by ReadIndex (lease fallbacks included)", labels=["shard"]),
            "read_rounds": CounterMetricFamily("raftmem_shard_read_index_rounds", "Heartbeat rounds requested by ReadIndex reads (reads waiting together share one; reads / rounds is the batching)", labels=["shard"]),
            "outcomes": CounterMetricFamily("raftmem_shard_log_entries_settled", "Proposed log entries by outcome (rejected/unknown: quorum or leadership lost)", labels=["shard", "outcome"]),
            "votes_ignored": CounterMetricFamily("raftmem_shard_votes_ignored", "Vote requests ignored while a leader was live", labels=["shard"]),
            "stale_acks": CounterMetricFamily("raftmem_shard_stale_acks_dropped", "Follower acknowledgements answering another term's entries, dropped by the leader", labels=["shard"]),
            "snapshot_installs": CounterMetricFamily("raftmem_shard_snapshot_installs", "Snapshots received: installed staged off the event loop or inline (at start-up), or rejected (torn in transit: not matching their manifest; sent again)", labels=["shard", "how"]),
        }
        lag = GaugeMetricFamily("raftmem_shard_replication_lag_entries", "Leader's last index minus a follower's match index", labels=["shard", "follower"])
        commit = SummaryMetricFamily("raftmem_shard_commit_seconds", "Time from proposal to commit and apply on the leader", labels=["shard"])
        node_replicas = GaugeMetricFamily("raftmem_node_replicas", "Shard replicas placed on each node (skew)", labels=["node"])
        ticker = self.ticker
        if ticker is not None:
            yield CounterMetricFamily("raftmem_raft_fsync_rounds", "Group-commit fsync rounds (each syncs every dirty journal)", value=ticker.sync_rounds)
            buckets, total = ticker.fsync_times.snapshot()
            yield HistogramMetricFamily("raftmem_raft_fsync_seconds", "How long each journal fsync took (a "
                                        "replica acknowledges entries only once they are durable)",
                                        buckets=buckets, sum_value=total)
            yield CounterMetricFamily("raftmem_raft_tick_passes", "Tick passes over the node's Raft groups", value=ticker.passes)
            yield CounterMetricFamily("raftmem_raft_tick_errors", "Tick passes that raised (logged; retried)", value=ticker.tick_errors)
            yield GaugeMetricFamily("raftmem_node_raft_log_compaction_bytes", "A replica's log is compacted past this many bytes (raft.log_compaction_bytes)", value=ticker.log_compaction_bytes)
        if self.budget is not None:
            usage = self.budget.usage()
            yield GaugeMetricFamily("raftmem_node_memtable_bytes", "RocksDB memtables of every replica of the node (one write buffer manager)", value=usage["memtable_bytes"])
            yield GaugeMetricFamily("raftmem_node_memtable_budget_bytes", "storage.memtable_bytes_max", value=self.budget.memtable_bytes_max)
            yield GaugeMetricFamily("raftmem_node_block_cache_bytes", "The node's shared RocksDB block cache in use", value=usage["block_cache_bytes"])
            yield GaugeMetricFamily("raftmem_node_block_cache_pinned_bytes", "Block cache entries pinned (in use by readers)", value=usage["block_cache_pinned_bytes"])
            yield GaugeMetricFamily("raftmem_node_block_cache_budget_bytes", "storage.block_cache_bytes", value=self.budget.block_cache_bytes)
        waiters = self.service.waiters
        yield GaugeMetricFamily("raftmem_coordination_waiters", "Lock acquisitions and task claims waiting here (coordination.waiters_max)", value=waiters.waiting())
        relay = self.service.relay.stats
        yield CounterMetricFamily("raftmem_relay_requests", "Requests carrying single writes to their leader's "
                                  "node (limits.relay_in_flight_max)", value=relay.requests)
        yield CounterMetricFamily("raftmem_relay_writes", "Single writes those requests carried", value=relay.writes)
        yield CounterMetricFamily("raftmem_coordination_waits_served", "Waiting acquisitions and claims that got their lock or task", value=waiters.served)
        yield CounterMetricFamily("raftmem_coordination_given_back", "Locks released and tasks requeued because their waiter disconnected while its proposal was in the log", value=waiters.gave_back)
        for replica in self.service.router.shards.values():
            st = replica.stats()
            label = [str(st.shard)]
            gauges["term"].add_metric(label, st.term)
            gauges["commit_index"].add_metric(label, st.commit_index)
            gauges["applied_index"].add_metric(label, st.applied_index)
            gauges["is_leader"].add_metric(label, 1 if st.leading else 0)
            gauges["log_entries"].add_metric(label, st.log_entries)
            gauges["log_bytes"].add_metric(label, st.log_bytes)
            gauges["db_bytes"].add_metric(label, st.db_bytes)
            gauges["memtable_bytes"].add_metric(label, st.memtable_bytes)
            counters["leader_changes"].add_metric(label, st.leader_changes)
            counters["proposals"].add_metric(label, st.proposals)
            counters["entries"].add_metric(label, st.entries_proposed)
            counters["syncs"].add_metric(label, st.journal_syncs)
            counters["inline_syncs"].add_metric(label, st.inline_syncs)
            counters["lease_reads"].add_metric(label, st.lease_reads)
            counters["read_index"].add_metric(label, st.read_index_reads)
            counters["read_rounds"].add_metric(label, st.read_rounds)
            counters["votes_ignored"].add_metric(label, st.votes_ignored)
            counters["stale_acks"].add_metric(label, st.stale_acks)
            for how, count in st.snapshot_installs.items():
                counters["snapshot_installs"].add_metric([str(st.shard), how], count)
            for outcome, count in st.outcomes.items():
                counters["outcomes"].add_metric([str(st.shard), outcome], count)
            commit.add_metric(label, count_value=sum(st.outcomes.values()), sum_value=st.commit_seconds_sum)
            for follower, behind in st.replication_lag.items():
                lag.add_metric([str(st.shard), follower], behind)
        per_node: dict[str, int] = {}
        for replicas in self.service.router.placement.values():
            for node in replicas:
                per_node[node] = per_node.get(node, 0) + 1
        for node, count in sorted(per_node.items()):
            node_replicas.add_metric([node], count)
        yield from gauges.values()
        yield from counters.values()
        yield lag
        yield commit
        yield node_replicas
        yield from self._feed()

    def _feed(self) -> Any:
        """Watch streams, and the lifecycle (as this node ran it for the shards it led)."""
        assert self.service is not None
        watch, life = self.service.watches.stats, self.service.lifecycle
        yield GaugeMetricFamily("raftmem_watch_streams", "Watch streams open on this node", value=watch.open_now)
        yield CounterMetricFamily("raftmem_watch_streams_opened", "Watch streams opened", value=watch.opened)
        yield CounterMetricFamily("raftmem_watch_events_sent", "Change events sent to watchers", value=watch.events)
        yield CounterMetricFamily("raftmem_watch_writes", "Writes of events to watchers' connections (events "
                                  "that come within watch.batch_ms share one)", value=watch.writes)
        fanout = self.service.watches.fanout
        yield GaugeMetricFamily("raftmem_watch_fanout_following", "Watch streams following this node's replicas "
                                "through its one fan-out", value=len(fanout.members))
        yield CounterMetricFamily("raftmem_watch_fanout_resyncs", "Times the fan-out fell behind the node's changes "
                                  "and its streams caught up from their change logs", value=fanout.resyncs)
        ended = CounterMetricFamily("raftmem_watch_streams_ended", "Watch streams ended, by why (overflow: a "
                                    "slow consumer cut off; compacted; client gone; ...)", labels=["reason"])
        for reason, count in watch.ended.items():
            ended.add_metric([reason], count)
        yield ended
        pruned = CounterMetricFamily("raftmem_lifecycle_pruned", "Memories removed by each pruning policy "
                                     "(the shards this node led)", labels=["policy"])
        runs = CounterMetricFamily("raftmem_lifecycle_runs", "Policy runs, done or deferred (a replica did not "
                                   "hand over its unsent reads)", labels=["policy", "outcome"])
        for name, stats in life.stats.policies.items():
            pruned.add_metric([name], stats.removed)
            runs.add_metric([name, "done"], stats.runs)
            runs.add_metric([name, "deferred"], stats.deferred)
        yield pruned
        yield runs
        buffer = life.buffer
        yield CounterMetricFamily("raftmem_touch_reads", "Reads recorded for access tracking and sliding TTL",
                                  value=buffer.recorded)
        yield CounterMetricFamily("raftmem_touches_dropped", "Reads not recorded: lifecycle.touch_keys_max "
                                  "memories were waiting already", value=buffer.dropped)
        yield CounterMetricFamily("raftmem_touch_entries", "Touch commands sent (each carries a flush's reads of "
                                  "one shard)", value=life.stats.touches.entries)
        yield GaugeMetricFamily("raftmem_touches_pending", "Memories with reads waiting to be sent",
                                value=buffer.count)
        yield CounterMetricFamily("raftmem_history_compacted", "Histories of removed memories compacted",
                                  value=life.stats.histories_compacted)


class Metrics:
    def __init__(self, ticker: Ticker | None = None, budget: MemoryBudget | None = None,
                 indexes: Indexes | None = None) -> None:
        self.registry = CollectorRegistry()
        # process_resident_memory_bytes and friends, from /proc.
        ProcessCollector(registry=self.registry)
        self.requests = Histogram(
            "raftmem_http_request_seconds",
            "HTTP request latency by route, method and status",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], Any] = {}
        lag = Histogram("raftmem_event_loop_lag_seconds", "How late the node's event loop ran a timer due "
                        "every 100 ms (what every request and Raft tick waited besides)",
                        buckets=LOOP_LAG_BUCKETS_S, registry=self.registry)
        self.loop_lag = LoopLag(lag.observe)
        self._shards = _ShardCollector(ticker, budget)
        self.registry.register(self._shards)
        if indexes is not None:
            from .indexing.metrics import IndexCollector

            self.registry.register(IndexCollector(indexes))

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        child = self._children.get(key)
        if child is None:  # labels() costs a lock and string work per call: once per series
            child = self._children[key] = self.requests.labels(route, method, str(status))
        child.observe(seconds)

    def render(self, service: MemoryService) -> tuple[bytes, str]:
        self._shards.service = service
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
