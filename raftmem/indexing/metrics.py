"""Prometheus metrics of the derived indexes, read at scrape time: write
amplification per shard replica (logical bytes clients wrote, physical bytes
RocksDB and each derived index wrote, their ratio), the queues (depth by tier,
age of the oldest change, the adaptive batch size), absorption (batches,
documents, seconds) and recovery (replays, rebuilds, cut subscriptions, the engine host's restarts)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily

from .manager import Indexes


class IndexCollector:
    def __init__(self, indexes: Indexes) -> None:
        self.indexes = indexes

    def collect(self) -> Iterator[Any]:
        ix = self.indexes
        logical = CounterMetricFamily("raftmem_index_logical_bytes", "Bytes of the records clients wrote (as applied here)", labels=["shard"])
        physical = CounterMetricFamily("raftmem_index_physical_bytes", "Bytes written to disk for them: RocksDB's WAL, flushes and compactions (its statistics) and each derived index's files", labels=["shard", "part"])
        factor = GaugeMetricFamily("raftmem_index_write_amplification", "Physical bytes (RocksDB + derived indexes) per logical byte", labels=["shard"])
        depth = GaugeMetricFamily("raftmem_index_queue_depth", "Changes waiting for the derived indexes, by tier", labels=["shard", "tier"])
        age = GaugeMetricFamily("raftmem_index_queue_age_seconds", "Age of the oldest change waiting", labels=["shard"])
        lag = GaugeMetricFamily("raftmem_index_lag_entries", "Applied Raft indexes not yet searchable", labels=["shard"])
        batch = GaugeMetricFamily("raftmem_index_batch_docs", "Current (adaptive) batch size", labels=["shard"])
        docs = CounterMetricFamily("raftmem_index_docs_absorbed", "Changes absorbed (after coalescing)", labels=["shard"])
        coalesced = CounterMetricFamily("raftmem_index_changes_coalesced", "Changes replaced by a newer one of the same memory before absorption", labels=["shard"])
        absorb = SummaryMetricFamily("raftmem_index_absorb_seconds", "Absorbing one batch (engines written and committed)", labels=["shard"])
        idle = GaugeMetricFamily("raftmem_index_search_idle", "1 while no search has used the replica's indexes for indexing.search_idle_s (its batches wait longer)", labels=["shard"])
        wakes = CounterMetricFamily("raftmem_index_search_wakes", "Searches that found the replica search-idle with batched changes waiting, and waited for them", labels=["shard"])
        events = CounterMetricFamily("raftmem_index_recoveries", "Replays of the change log, rebuilds from the store, subscriptions cut off, vector saves", labels=["shard", "kind"])
        for shard, index in sorted(ix.replicas.items()):
            label = [str(shard)]
            st = index.stats
            io = dict(ix.shard_io(shard))
            io.update(index.bytes_written())
            logical.add_metric(label, st.logical_bytes)
            for part, n in io.items():
                physical.add_metric([str(shard), part], n)
            if st.logical_bytes:
                factor.add_metric(label, sum(io.values()) / st.logical_bytes)
            for tier, n in index.queue.counts().items():
                depth.add_metric([str(shard), tier], n)
            entries, ms = index.lag()
            age.add_metric(label, ms / 1000)
            lag.add_metric(label, entries)
            batch.add_metric(label, index.queue.batch_docs)
            docs.add_metric(label, st.docs_absorbed)
            coalesced.add_metric(label, index.queue.coalesced)
            absorb.add_metric(label, count_value=st.absorbs, sum_value=st.absorb_seconds)
            idle.add_metric(label, 1 if index.search_idle(time.monotonic()) else 0)
            wakes.add_metric(label, st.wakes)
            for kind, n in (("replay", st.replays), ("rebuild", st.rebuilds), ("overflow", st.overflows),
                            ("vector_save", st.vector_saves), ("engine_restart", st.engine_restarts)):
                events.add_metric([str(shard), kind], n)
        yield from (logical, physical, factor, depth, age, lag, batch, docs, coalesced, absorb, idle, wakes, events)
        yield CounterMetricFamily("raftmem_index_eager_waits", "Eager-tier writes whose answer waited for absorption", value=ix.eager_waits)
        yield CounterMetricFamily("raftmem_index_eager_wait_failures", "Eager-tier writes answered before absorption (timeout)", value=ix.eager_wait_failures)
        if ix.host is not None:
            yield CounterMetricFamily("raftmem_index_engine_host_restarts", "Engine host processes started after one died", value=ix.host.restarts)
            yield CounterMetricFamily("raftmem_index_engine_calls", "Calls from this node to its engine host", value=ix.host.calls)
        budget = ix.budget
        yield CounterMetricFamily("raftmem_index_commit_slots", "Commits the node's commit budget granted to batched or lazy absorption", value=budget.granted)
        yield CounterMetricFamily("raftmem_index_commit_slots_delayed", "Of those, slots later than asked (the budget held the batch back)", value=budget.delayed)
        yield CounterMetricFamily("raftmem_index_commit_slot_delay_seconds", "Total of those delays", value=budget.delay_s)
        yield CounterMetricFamily("raftmem_summary_refreshes", "Stale summaries recomputed in the background", value=ix.summaries.refreshes)
