"""Derived indexes of one replica, without Raft: a real state machine on a real
RocksDB feeds a real ReplicaIndex (tantivy, usearch) through the change feed.
Covers the queue's rules, absorption, the watermark, recovery from the change
log after a crash, a rebuild when the log no longer reaches back, tiers, and
the engines' persistence."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import tantivy

from raftmem import embeddings
from raftmem.commands import Delete, MemoryFields, Put, encode_entry
from raftmem.config import IndexingConfig
from raftmem.events import Change, ChangeFeed, ChangeKind
from raftmem.indexing.budget import CommitBudget
from raftmem.indexing.queue import IndexQueue
from raftmem.indexing.replica import ReplicaIndex
from raftmem.indexing.search import ShardQuery, shard_search
from raftmem.shard import MemoryReader, Served
from raftmem.statemachine import StateMachine
from raftmem.storage import Store
from raftmem.textindex import Restriction, TextDoc, TextIndex
from raftmem.vectorindex import VectorIndex

T = TypeVar("T")
NOW = 1_763_700_000_000
ALL_TIERS = ("eager", "batched", "lazy")


class LocalShard:
    """The Shard port's read side over a bare state machine."""

    def __init__(self, path: Path, feed: ChangeFeed, retention: int = 100_000) -> None:
        self.shard = 0
        self.store = Store(path / "db")
        self.sm = StateMachine(self.store, 0, publish=feed.publish, events_retention=retention)
        self._dir = path
        self.index = self.sm.applied_index

    @property
    def directory(self) -> Path:
        return self._dir

    @property
    def applied_index(self) -> int:
        return self.sm.applied_index

    async def read(self, level: str, fn: Callable[[MemoryReader], T], **_kw: Any) -> tuple[T, Served]:
        return fn(self.sm), Served(level, f"0:{self.sm.applied_index}")

    def apply(self, *commands: Put | Delete) -> int:
        self.index += 1
        self.sm.apply(self.index, encode_entry(commands))
        return self.index


def put(mid: str, text: str, tags: tuple[str, ...] = (), vector: list[float] | None = None, ns: str = "ns") -> Put:
    emb = embeddings.pack(vector) if vector is not None else None
    return Put(ns, mid, MemoryFields(content=text, tags=tags, embedding=emb), now_ms=NOW)


def config(**kw: Any) -> IndexingConfig:
    # Never search-idle unless a test says so (its own tests below).
    return IndexingConfig(**{"batch_ms": 20, "lazy_idle_ms": 200, "checkpoint_s": 3600, "search_idle_s": 0, **kw})


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def store_ids(shard: LocalShard) -> list[str]:
    return sorted(f"{r['namespace']}\x00{r['id']}" for r in shard.sm.iter_records())


# -- the queue ------------------------------------------------------------------------
def change(index: int, mid: str) -> Change:
    return Change(ChangeKind.PUT, 0, index, "ns", mid, after={"id": mid})


def test_queue_coalesces_and_holds_the_watermark_at_the_first_change() -> None:
    q = IndexQueue(config(batch_docs=10))
    q.add(change(1, "a"), "lazy", 0.0)
    q.add(change(2, "b"), "batched", 0.0)
    q.add(change(3, "a"), "eager", 0.0)  # replaces a@1, stricter tier
    assert len(q) == 2 and q.coalesced == 1 and q.counts() == {"eager": 1, "batched": 1, "lazy": 0}
    assert q.watermark() == 0  # a's first change (1) still waits
    due = q.due(0.0, idle=False, demand=0)
    assert [p.key[1] for p in due] == ["a"]  # eager at once; the batch is not due yet
    q.absorbed(due)
    assert q.watermark() == 1  # b@2 waits
    assert q.tier_watermark(["eager"]) == 3
    assert [p.key[1] for p in q.due(0.05, idle=False, demand=0)] == ["b"]  # batch_ms passed


def test_queue_keeps_a_change_that_replaced_one_being_absorbed() -> None:
    q = IndexQueue(config())
    q.add(change(1, "a"), "eager", 0.0)
    batch = q.due(0.0, idle=False, demand=0)
    q.add(change(2, "a"), "eager", 0.0)  # arrives while the batch is absorbed
    q.absorbed(batch)
    assert len(q) == 1 and q.items[("ns", "a")].index == 2


def test_queue_bytes_are_bounded_and_counted_through_coalescing() -> None:
    q = IndexQueue(config(queue_bytes_max=1 << 20, batch_ms=60_000, tiers=(), default_tier="lazy"))
    q.add(change(1, "a"), "lazy", 0.0, size=600_000)
    q.add(change(2, "a"), "lazy", 0.0, size=300_000)  # replaces the first
    assert q.bytes == 300_000 and not q.full() and q.due(0.0, idle=False, demand=0) == []
    q.add(change(3, "b"), "lazy", 0.0, size=800_000)
    assert q.full() and len(q.due(0.0, idle=False, demand=0)) == 2  # full: due whatever the tier
    q.absorbed(list(q.items.values()))
    assert q.bytes == 0


def test_a_patient_queue_holds_batches_until_their_idle_age_size_or_bytes() -> None:
    cfg = config(batch_ms=20, idle_batch_ms=5000, batch_docs=2, batch_docs_max=4, queue_bytes_max=1 << 20)
    q = IndexQueue(cfg)
    q.patient = True
    q.add(change(1, "a"), "batched", 0.0)
    q.add(change(2, "b"), "batched", 0.0)
    assert q.due(1.0, idle=False, demand=0) == []  # batch_ms and batch_docs passed: not for a patient one
    assert q.next_due_s(1.0) == pytest.approx(4.0)
    assert len(q.due(5.0, idle=False, demand=0)) == 2  # idle_batch_ms passed
    q.add(change(3, "c"), "batched", 5.0)
    q.add(change(4, "d"), "batched", 5.0)
    assert len(q.due(5.0, idle=False, demand=0)) == 4  # batch_docs_max wait: all of them, not batch_docs
    q.absorbed(list(q.items.values()))
    q.add(change(5, "e"), "batched", 6.0, size=600_000)  # past half the queue's bytes
    assert [p.key[1] for p in q.due(6.0, idle=False, demand=0)] == ["e"]
    q.patient = False
    assert [p.key[1] for p in q.due(6.0, idle=False, demand=0)] == []  # active: batch_ms from 6.0
    assert [p.key[1] for p in q.due(6.03, idle=False, demand=0)] == ["e"]


def test_a_patient_queue_holds_no_more_than_the_first_search_should_wait_for() -> None:
    """idle_absorb_ms at the owner's recent cost per change: with 10 ms a change
    and 250 ms, the 25th change makes the batch due (before its age or size)."""
    q = IndexQueue(config(idle_batch_ms=60_000, idle_absorb_ms=250, batch_docs=2, batch_docs_max=4096))
    q.patient = True
    for i in range(24):
        q.add(change(i + 1, f"m{i}"), "batched", 0.0)
    assert q.due(1.0, idle=False, demand=0) == []  # the cost unknown yet: age and size only
    q.record_absorb(0.010, 1)
    assert q.change_cost_s == pytest.approx(0.010)
    assert q.due(1.0, idle=False, demand=0) == []  # 240 ms
    q.add(change(25, "m24"), "lazy", 0.0)
    assert q.due(1.0, idle=False, demand=0) == []  # a lazy change is not what a search wakes it for
    q.add(change(26, "m25"), "batched", 0.0)
    assert len(q.due(1.0, idle=False, demand=0)) == 25  # 250 ms: the batched ones, whole


def test_the_cost_per_change_weighs_absorbs_by_their_sizes_and_decays_old_ones() -> None:
    q = IndexQueue(config())
    q.record_absorb(0.020, 1)  # one change: mostly its commit
    q.record_absorb(0.040, 1000)
    assert q.change_cost_s == pytest.approx((0.020 * 0.7 + 0.040) / (0.7 + 1000))
    for _ in range(30):
        q.record_absorb(0.010, 100)
    assert q.change_cost_s == pytest.approx(0.0001, rel=1e-3)  # the old ones decayed away


def test_a_patient_queue_never_waits_into_its_limit_of_changes() -> None:
    """With queue_docs_max below batch_docs_max, a patient queue absorbs at half
    of it: waiting for batch_docs_max would reach the limit and refuse writes."""
    q = IndexQueue(config(idle_batch_ms=60_000, batch_docs=2, batch_docs_max=4096, queue_docs_max=10))
    q.patient = True
    for i in range(4):
        q.add(change(i + 1, f"m{i}"), "batched", 0.0)
    assert q.due(0.0, idle=False, demand=0) == []
    q.add(change(5, "m4"), "batched", 0.0)
    assert len(q.due(0.0, idle=False, demand=0)) == 5 and not q.full()


def test_a_flush_ends_once_done_and_with_a_reset() -> None:
    q = IndexQueue(config(idle_batch_ms=60_000))
    q.patient = True
    q.add(change(1, "a"), "batched", 0.0)
    q.flush_through = 1
    q.absorbed(q.due(0.0, idle=False, demand=0))
    assert q.flush_through == 0
    q.add(change(2, "b"), "batched", 0.0)
    q.flush_through = 2
    q.reset(10)
    assert q.flush_through == 0 and not q.urgent(0)


def test_a_flush_takes_the_batched_changes_through_it_at_once_but_not_lazy_ones() -> None:
    q = IndexQueue(config(idle_batch_ms=60_000, batch_docs=1, batch_docs_max=8))
    q.patient = True
    q.add(change(1, "l"), "lazy", 0.0)
    q.add(change(2, "a"), "batched", 0.0)
    q.add(change(3, "b"), "batched", 0.0)
    assert not q.urgent(0) and q.due(0.0, idle=False, demand=0) == []
    q.flush_through = 3
    assert q.urgent(0)  # a reader waits: the commit budget does not hold it back
    assert [p.key[1] for p in q.due(0.0, idle=False, demand=0)] == ["a", "b"]  # whole, lazy left
    q.absorbed(q.due(0.0, idle=False, demand=0))
    q.add(change(4, "c"), "batched", 0.0)  # after the flush's point: patient again
    assert not q.urgent(0) and q.due(0.0, idle=False, demand=0) == []
    assert q.tier_watermark(["eager", "batched"]) == 3


def test_queue_lazy_waits_for_idle_or_demand_and_batches_adapt() -> None:
    q = IndexQueue(config(batch_docs=2, batch_docs_max=8, queue_age_target_ms=100))
    q.add(change(1, "a"), "lazy", 0.0)
    assert q.due(10.0, idle=False, demand=0) == []
    assert [p.key[1] for p in q.due(10.0, idle=False, demand=1)] == ["a"]
    assert [p.key[1] for p in q.due(10.0, idle=True, demand=0)] == ["a"]
    for i in range(2, 6):
        q.add(change(i, f"b{i}"), "batched", 0.0)
    q.adapt(1.0)  # oldest batched change waited 1 s > 0.1 s target
    assert q.batch_docs == 4
    q.absorbed(list(q.items.values()))
    q.adapt(1.0)
    assert q.batch_docs == 2


# -- the engines -------------------------------------------------------------------------
def test_text_index_commits_its_watermark_with_its_documents(tmp_path: Path) -> None:
    t = TextIndex(tmp_path / "t", 16_000_000)
    t.upsert([TextDoc("ns", "1", "alpha beta"), TextDoc("ns", "2", "beta gamma")])
    t.commit(7)
    t.upsert([TextDoc("ns", "3", "never committed")])
    written = t.bytes_written
    assert written > 0
    t.close()
    del t
    again = TextIndex(tmp_path / "t", 16_000_000)
    assert again.watermark == 7 and again.all_keys() == ["ns\x001", "ns\x002"]
    hits = again.search(Restriction(namespace="ns"), [("gamma", 1.0)], 10)
    assert [h.key for h in hits] == ["ns\x002"]


def test_text_index_searches_change_only_at_its_own_reloads(tmp_path: Path) -> None:
    """TextIndex.commit's reload is the only one: tantivy's default reader also
    reloads from a thread that polls meta.json (every 500 ms), unordered with
    ours, so an older commit's searcher could be published after a newer one's
    (searches would miss what the replica's watermark claims). A commit made
    without our reload must stay invisible while a reader with tantivy's
    default policy shows it (with that policy ours fails here too: checked by hand)."""
    t = TextIndex(tmp_path / "t", 16_000_000)
    t.upsert([TextDoc("ns", "1", "alpha")])
    t.commit(1)
    t.upsert([TextDoc("ns", "2", "alpha")])
    t.writer.commit()  # durable, not reloaded

    def found() -> list[str]:
        return sorted(h.key for h in t.search(Restriction(namespace="ns"), [("alpha", 1.0)], 10))

    # tantivy's default reader on the same directory: once it has seen the commit
    # (and a second of its polls more), ours would have too, had it its policy.
    control = tantivy.Index(t.schema, path=str(tmp_path / "t"), reuse=True)
    seen_at = None
    deadline = time.monotonic() + 10.0
    while time.monotonic() < deadline and (seen_at is None or time.monotonic() < seen_at + 1.0):
        assert found() == ["ns\x001"]
        if seen_at is None and control.searcher().num_docs == 3:  # two memories and the watermark
            seen_at = time.monotonic()
        time.sleep(0.05)  # a sampling period: the loop ends on the control's condition
    assert seen_at is not None, "tantivy's default reader never showed the commit: the check proved nothing"
    t.commit(2)
    assert found() == ["ns\x001", "ns\x002"]
    t.close()


@pytest.mark.parametrize("how_many", [1, 3, 300], ids=["one", "disjunction", "term-set"])
def test_any_of_several_terms_matches_exactly_those_documents(tmp_path: Path, how_many: int) -> None:
    """Restrictions to any of several agents (and vector keys resolved to
    documents) as a disjunction of term queries, or past
    ANY_TERMS_DISJUNCTION_MAX as tantivy's term set: the same documents either
    way, and a restriction adds nothing to a BM25 score."""
    t = TextIndex(tmp_path / "t", 16_000_000)
    docs = [TextDoc("ns", str(i), f"alpha {'beta ' * (i % 3)}", agent_id=f"a{i % 400}", vkey=1000 + i)
            for i in range(800)]
    t.upsert(docs)
    t.commit(1)
    agents = tuple(f"a{i}" for i in range(0, 2 * how_many, 2))
    want = sorted(d.key for d in docs if d.agent_id in agents)
    hits = t.search(Restriction(namespace="ns", agent_ids=agents), [("beta", 1.0)], 1000)
    assert sorted(h.key for h in hits) == sorted(k for k in want if int(k.split("\x00")[1]) % 3)
    unrestricted = {h.key: h.score for h in t.search(Restriction(namespace="ns"), [("beta", 1.0)], 1000)}
    assert all(h.score == unrestricted[h.key] for h in hits)
    vkeys = [1000 + i for i in range(0, 2 * how_many, 2)] + [999_999]  # the last one held by no document
    assert t.resolve(vkeys) == {1000 + i: f"ns\x00{i}" for i in range(0, 2 * how_many, 2)}


def test_vector_index_saves_atomically_with_its_watermark(tmp_path: Path) -> None:
    v = VectorIndex(tmp_path / "v.usearch", 3)
    v.upsert([1, 2], np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32))
    v.save(5)
    v.upsert([3], np.array([[0, 0, 1]], dtype=np.float32))  # not saved
    again = VectorIndex(tmp_path / "v.usearch", 3)
    assert again.watermark == 5 and len(again) == 2
    assert again.exact(np.array([0, 1, 0.1]), [1, 2, 3], "cosine")[0][0] == 2
    (tmp_path / "v.usearch").write_bytes(b"garbage")
    assert len(VectorIndex(tmp_path / "v.usearch", 3)) == 0  # damaged: starts empty (rebuilt from the store)


# -- the node's commit budget ---------------------------------------------------------------
def test_commit_budget_grants_a_burst_then_slots_at_its_rate_in_the_order_asked() -> None:
    b = CommitBudget(per_s=10, burst=3)
    assert [b.reserve(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]  # the burst
    slots = [b.reserve(0.0) for _ in range(4)]
    assert slots == pytest.approx([0.1, 0.2, 0.3, 0.4])  # then one per 1/rate, first asked first served
    assert b.delayed == 4 and b.delay_s == pytest.approx(1.0)
    assert b.reserve(5.0) == 5.0  # idle long enough: at once again
    assert CommitBudget(per_s=0, burst=1).reserve(1.0) == 1.0  # 0: no budget


def test_queue_urgent_is_eager_demanded_or_full() -> None:
    q = IndexQueue(config(queue_docs_max=3, batch_docs=1))
    assert not q.urgent(demand=0)
    q.add(change(1, "a"), "batched", 0.0)
    assert not q.urgent(demand=0) and q.urgent(demand=1)  # a reader waits for index 1
    q.add(change(2, "b"), "eager", 0.0)
    assert q.urgent(demand=0)
    q.absorbed([q.items[("ns", "b")]])
    q.add(change(3, "c"), "lazy", 0.0)
    q.add(change(4, "d"), "lazy", 0.0)
    assert q.full() and q.urgent(demand=0)


@pytest.mark.parametrize("control", [False, True])
async def test_replicas_sharing_a_budget_commit_at_its_rate_and_eager_changes_never_wait(
    tmp_path: Path, control: bool,
) -> None:
    """Two replicas, batched writes to both for 2 s: with a budget of 2 commits a
    second their commits stay within it, while an eager write is absorbed at
    once. Control: without a budget they commit far more often (so the count
    can tell)."""
    budget = CommitBudget(per_s=0 if control else 2, burst=1)
    cfg = config(batch_ms=20)
    replicas = [await started(tmp_path / f"r{i}", cfg, budget=budget) for i in range(2)]
    started_s = time.monotonic()
    n = 0
    while time.monotonic() - started_s < 2.0:
        for shard, *_ in replicas:
            shard.apply(put(f"m{n}", f"note {n}"))
        n += 1
        await asyncio.sleep(0.01)
    shard, index, _feed, _ex = replicas[0]
    eager_at = shard.apply(put("urgent", "eager note", tags=("critical",)))
    waited = time.monotonic()
    await index.wait_absorbed(eager_at, ("eager",), 10)
    eager_wait_s = time.monotonic() - waited
    elapsed = time.monotonic() - started_s
    commits = sum(r[1].stats.absorbs for r in replicas)
    for shard, index, _feed, executor in replicas:
        await index.wait_absorbed(shard.applied_index, ("eager", "batched", "lazy"), 10)
        assert index.engines is not None and index.engines.all_keys() == store_ids(shard)
        await index.stop()
        executor.shutdown()
    if control:
        assert commits > 12, commits
    else:
        # the burst, then 2 a second; the eager one on top of that
        assert commits <= 1 + 2 * elapsed + 1, (commits, elapsed)
        assert eager_wait_s < 0.45, eager_wait_s  # never waited for a slot (they are 0.5 s apart)


# -- one replica's indexes -----------------------------------------------------------------
async def started(tmp_path: Path, cfg: IndexingConfig, retention: int = 100_000,
                  budget: CommitBudget | None = None) -> tuple[LocalShard, ReplicaIndex, ChangeFeed, ThreadPoolExecutor]:
    feed = ChangeFeed()
    shard = LocalShard(tmp_path, feed, retention)
    executor = ThreadPoolExecutor(1)
    index = ReplicaIndex(shard, cfg, feed, executor, retention_entries=retention,  # type: ignore[arg-type]
                         budget=budget)
    index.start()
    await asyncio.wait_for(index.ready.wait(), 10)
    return shard, index, feed, executor


async def test_absorbed_documents_equal_the_store_at_the_watermark(tmp_path: Path) -> None:
    shard, index, _feed, executor = await started(tmp_path, config())
    for i in range(50):
        shard.apply(put(f"m{i}", f"note {i} about {'deploy' if i % 2 else 'cache'}", vector=[float(i), 1.0]))
    last = shard.apply(Delete("ns", "m3", now_ms=NOW), put("m4", "rewritten deploy"))
    await index.wait_absorbed(last, ("eager", "batched", "lazy"), 10)
    assert index.visible >= last
    assert index.engines is not None and index.engines.all_keys() == store_ids(shard)
    assert index.state.vector_counts[2] == 48  # m3 deleted, m4 rewritten without one

    async def records(keys: Any) -> list[Any]:
        return [shard.sm.get(ns, mid, NOW) for ns, mid in keys]

    result = await shard_search(index, ShardQuery(namespace="ns", terms=[("deploy", 1.0)], need=100), records)
    assert {f.record["id"] for f in result.text} == ({f"m{i}" for i in range(1, 50, 2)} | {"m4"}) - {"m3"}
    await index.stop()
    executor.shutdown()


@pytest.mark.parametrize("control", [False, True])
async def test_a_crash_resumes_from_the_durable_watermark_without_gaps_or_duplicates(
    tmp_path: Path, control: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Control: resuming from the text index's watermark alone (ignoring the
    vector index's older one) loses the vectors absorbed since the last save."""
    if control:
        monkeypatch.setattr(ReplicaIndex, "durable_watermark", lambda self: self.state.text_watermark)
    cfg = config()
    shard, index, feed, executor = await started(tmp_path, cfg)
    for i in range(30):
        shard.apply(put(f"m{i}", f"text {i}", vector=[1.0, float(i)]))
    await index.wait_absorbed(shard.applied_index, ("eager", "batched", "lazy"), 10)
    # A crash: the vector index was never saved (checkpoint_s is an hour), the
    # absorber stops dead, and changes keep being applied while it is down.
    assert index._task is not None and index._sub is not None
    index._task.cancel()
    index._sub.close()
    text_mark = index.state.text_watermark
    index.engines = None  # dropped without closing: what kill -9 leaves
    for i in range(30, 40):
        shard.apply(put(f"m{i}", f"text {i}", vector=[1.0, float(i)]))
    shard.apply(Delete("ns", "m0", now_ms=NOW))
    await asyncio.sleep(0.05)
    # Restart on the same directory.
    again = ReplicaIndex(shard, cfg, feed, executor, retention_entries=100_000)  # type: ignore[arg-type]
    assert text_mark > 0
    again.start()
    await asyncio.wait_for(again.ready.wait(), 10)
    await again.wait_absorbed(shard.applied_index, ("eager", "batched", "lazy"), 10)
    assert again.stats.replays == 1 and again.stats.rebuilds == 0
    keys = again.engines.all_keys() if again.engines is not None else []
    assert keys == store_ids(shard) and len(keys) == len(set(keys)) == 39
    assert (again.state.vector_counts.get(2) == 39) != control
    await again.stop()
    executor.shutdown()


@pytest.mark.parametrize("control", [False, True], ids=["checked", "watermark-alone-negative-control"])
async def test_an_index_ahead_of_its_store_after_a_crash_covers_only_what_the_store_holds(
    tmp_path: Path, control: bool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without RocksDB's WAL a crash leaves the store at its last flush while
    the text index kept its later commit: a search waiting for a token must
    wait for the store to apply it again, not take the index's watermark for
    it. Control: coverage judged by the index alone answers at once, and the
    search misses the acknowledged write."""
    if control:
        def by_the_index_alone(self: ReplicaIndex, target: int, tiers: Any) -> bool:
            return self.ready.is_set() and self.queue.received >= target and self.visible >= target

        monkeypatch.setattr(ReplicaIndex, "covered", by_the_index_alone)
    shard, index, _feed, executor = await started(tmp_path, config())
    shard.apply(put("m1", "old note"))
    shard.store.create_checkpoint(tmp_path / "flushed")  # the last flush, at index 1
    acked = shard.apply(put("m2", "acknowledged deploy"))
    await index.wait_absorbed(acked, ALL_TIERS, 10)
    assert index._task is not None and index._sub is not None
    index._task.cancel()  # kill -9: the index's commit at 2 survives, the store's memtable does not
    index._sub.close()
    index.engines = None
    shard.store.close()
    generation = next((tmp_path / "db").glob("db-*"))
    shutil.rmtree(generation)
    shutil.copytree(tmp_path / "flushed", generation)
    feed = ChangeFeed()
    restarted = LocalShard(tmp_path, feed)
    assert restarted.sm.applied_index == 1
    again = ReplicaIndex(restarted, config(), feed, executor, retention_entries=100_000)  # type: ignore[arg-type]
    again.start()
    await asyncio.wait_for(again.ready.wait(), 10)
    assert again.state.text_watermark == acked  # ahead of the store

    async def search() -> set[str]:
        async def records(keys: Any) -> list[Any]:
            return [restarted.sm.get(ns, mid, NOW) for ns, mid in keys]

        result = await shard_search(again, ShardQuery(namespace="ns", terms=[("deploy", 1.0)], need=10), records)
        return {f.record["id"] for f in result.text}

    assert again.covered(acked, ALL_TIERS) == control
    if control:
        assert await search() == set()  # what a read after its own write would have got
    else:
        waiting = asyncio.ensure_future(again.wait_applied(acked, 10))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        restarted.index = 1
        restarted.apply(put("m2", "acknowledged deploy"))  # the journal's entry applied again
        await waiting
        assert await search() == {"m2"}
    await again.stop()
    executor.shutdown()


async def test_past_the_change_log_the_indexes_are_rebuilt_from_the_store(tmp_path: Path) -> None:
    cfg = config()
    shard, index, feed, executor = await started(tmp_path, cfg, retention=10)
    await index.stop()  # the index stops at 0; the log keeps only the last ~266 indexes
    for i in range(600):
        shard.apply(put(f"m{i}", f"text {i}"))
    again = ReplicaIndex(shard, cfg, feed, executor, retention_entries=10)  # type: ignore[arg-type]
    again.start()
    await asyncio.wait_for(again.ready.wait(), 30)
    assert again.stats.rebuilds == 1
    assert again.engines is not None and again.engines.all_keys() == store_ids(shard)
    # The control: a log that does reach back replays instead.
    await again.stop()
    third = ReplicaIndex(shard, cfg, feed, executor, retention_entries=10)  # type: ignore[arg-type]
    third.start()
    await asyncio.wait_for(third.ready.wait(), 10)
    assert third.stats.rebuilds == 0 and third.stats.replays == 1
    await third.stop()
    executor.shutdown()


async def test_tiers_eager_at_once_lazy_only_when_idle_or_asked(tmp_path: Path) -> None:
    cfg = config(batch_ms=5000, lazy_idle_ms=60_000,
                 tiers=IndexingConfig().tiers + (__import__("raftmem.config", fromlist=["TierRule"]).TierRule(("slow",), "lazy"),))
    shard, index, _feed, executor = await started(tmp_path, cfg)
    lazy = shard.apply(put("l", "lazy words", tags=("slow",)))
    batched = shard.apply(put("b", "batched words"))
    eager = shard.apply(put("e", "eager words", tags=("critical",)))
    await index.wait_absorbed(eager, ("eager",), 5)  # the eager one does not wait for the others
    assert index.engines is not None and index.engines.all_keys() == ["ns\x00e"]
    assert not index.covered(batched, ("eager", "batched", "lazy"))
    # A reader demanding everything through `lazy` gets it (lazy and batched both, in log order).
    await index.wait_absorbed(batched, ("eager", "batched", "lazy"), 5)
    assert index.engines.all_keys() == ["ns\x00b", "ns\x00e", "ns\x00l"]
    assert lazy < batched
    await index.stop()
    executor.shutdown()


async def test_a_search_wakes_a_search_idle_replica_and_waits_for_its_batched_changes(tmp_path: Path) -> None:
    """Negative control first: idle, a batched change waits past batch_ms (the
    search would miss it without the wake)."""
    tiers = IndexingConfig().tiers + (__import__("raftmem.config", fromlist=["TierRule"]).TierRule(("slow",), "lazy"),)
    cfg = config(batch_ms=20, idle_batch_ms=60_000, search_idle_s=30, lazy_idle_ms=60_000, tiers=tiers)
    shard, index, _feed, executor = await started(tmp_path, cfg)
    assert index.search_idle(time.monotonic())  # no search yet
    lazy = shard.apply(put("l", "lazy words", tags=("slow",)))
    batched = shard.apply(put("b", "batched words"))
    await until(lambda: index.queue.received >= batched)
    await asyncio.sleep(0.3)  # 15 x batch_ms: an active replica would have absorbed it
    assert not index.covered(batched, ("eager", "batched")) and index.stats.absorbs == 0
    # Two searches at once: the second finds the replica awake already, and
    # still waits for what the first one's wake absorbs.
    first = asyncio.ensure_future(index.awaken(5))
    await asyncio.sleep(0)
    assert not index.search_idle(time.monotonic()) and not index.covered(batched, ("eager", "batched"))
    await index.awaken(5)
    assert index.covered(batched, ("eager", "batched")) and index.stats.wakes == 1
    await first
    assert index.engines is not None and index.engines.all_keys() == ["ns\x00b"]  # the lazy one still waits
    assert not index.covered(lazy, ("lazy",))
    # Active now: the next batched change goes within batch_ms, without a wake.
    again = shard.apply(put("c", "more words"))
    await until(lambda: index.covered(again, ("eager", "batched")), 5.0)
    await index.awaken(5)
    assert index.stats.wakes == 1
    # Idle again (as after search_idle_s without a search): a batched change waits again.
    index._searched_s = float("-inf")
    late = shard.apply(put("d", "late words"))
    await until(lambda: index.queue.received >= late)
    await asyncio.sleep(0.3)
    assert not index.covered(late, ("eager", "batched"))
    await index.stop()
    executor.shutdown()


async def test_a_replica_that_goes_idle_holding_a_commit_slot_does_not_stall_the_loop(tmp_path: Path) -> None:
    """A batch due while active reserves a slot of the commit budget; the replica
    goes search-idle before the slot comes, so nothing is due any more. Kept,
    the slot made the absorber's sleep return at once, without yielding, until
    the batch fell due by idle_batch_ms: the node's loop stood still (2 s)."""
    budget = CommitBudget(1.0, 1)
    cfg = config(batch_ms=20, search_idle_s=30, idle_batch_ms=3000, lazy_idle_ms=60_000)
    shard, index, _feed, executor = await started(tmp_path, cfg, budget=budget)
    index._searched_s = time.monotonic()  # active
    budget.reserve(time.monotonic())  # another replica took the next slot
    shard.apply(put("a", "alpha"))  # due at 20 ms; its slot ~1 s away
    await until(lambda: index._slot is not None)
    index._searched_s = float("-inf")  # search-idle before the slot comes
    worst, last, began = 0.0, time.monotonic(), time.monotonic()
    while time.monotonic() - began < 2.0:
        await asyncio.sleep(0.01)
        now = time.monotonic()
        worst, last = max(worst, now - last), now
    assert worst < 0.5, f"the event loop stood still for {worst:.2f} s"
    assert index.stats.absorbs == 0  # and the batch waits, patient
    await index.stop()
    executor.shutdown()


async def test_a_wake_does_not_wait_for_what_the_store_has_not_applied_again(tmp_path: Path) -> None:
    """After a crash the indexes may be ahead of the store (RocksDB without its
    WAL): nothing waits to be absorbed there, and a search must not wait for it."""
    shard, index, _feed, executor = await started(tmp_path, config(search_idle_s=30, idle_batch_ms=60_000))
    shard.apply(put("a", "alpha"))
    await index.wait_absorbed(shard.applied_index, ("eager", "batched", "lazy"), 5)
    index.queue.received_through(shard.applied_index + 3)  # as after the crash
    index.visible = shard.applied_index + 3
    index._searched_s = float("-inf")
    for _ in range(3):
        began = time.monotonic()
        await index.awaken(1.0)
        assert time.monotonic() - began < 0.5
    assert index.stats.wakes == 0 and index.queue.flush_through == 0
    await index.stop()
    executor.shutdown()


async def test_a_full_queue_refuses_writes(tmp_path: Path) -> None:
    cfg = config(batch_docs=2, queue_docs_max=3, batch_ms=60_000, tiers=(), default_tier="lazy",
                 lazy_idle_ms=60_000)
    shard, index, _feed, executor = await started(tmp_path, cfg)
    index.admit()
    await index.stop()  # nothing absorbs now: the changes pile up in the subscription
    index._sub = _feed.subscribe([0])
    for i in range(4):
        shard.apply(put(f"m{i}", "x"))
    with pytest.raises(Exception, match="wait for the derived indexes"):
        index.admit()
    executor.shutdown()


async def test_a_subscription_cut_off_resumes_from_the_change_log(tmp_path: Path) -> None:
    """A burst larger than the subscription (4 batches) cuts it off; the index
    resumes from the change log and misses nothing."""
    shard, index, _feed, executor = await started(tmp_path, config(batch_docs=2, queue_docs_max=10))
    for i in range(100):  # no await in between: the absorber cannot drain meanwhile
        shard.apply(put(f"m{i}", f"burst {i}"))
    await index.wait_absorbed(shard.applied_index, ("eager", "batched", "lazy"), 10)
    assert index.stats.overflows >= 1 and index.stats.replays >= 2
    assert index.engines is not None and index.engines.all_keys() == store_ids(shard)
    await index.stop()
    executor.shutdown()


async def test_a_cut_off_with_changes_waiting_resumes_after_what_the_queue_received(tmp_path: Path) -> None:
    """A key rewritten twice waits in the queue (one item, its first change's
    index) when a burst cuts the subscription off. The replay must start after
    what the queue already received, not at the queue's watermark: from there
    the change log hands over the key's first change again, older than the one
    waiting (seen on a wiped node rebuilding 1M memories under a write load:
    its indexes stopped with "changes arrive in log order")."""
    shard, index, _feed, executor = await started(tmp_path, config(batch_ms=60_000, batch_docs=2,
                                                                   queue_docs_max=1000))
    shard.apply(put("k", "first"))
    last = shard.apply(put("k", "second"))
    await until(lambda: index.queue.received >= last and len(index.queue) == 1)
    assert index.queue.watermark() < last  # the key waits, held at its first change
    for i in range(100):  # no await in between: the subscription (8 changes) is cut off
        shard.apply(put(f"m{i}", f"burst {i}"))
    await index.wait_absorbed(shard.applied_index, ("eager", "batched", "lazy"), 10)
    assert index.error is None and index.stats.overflows >= 1
    assert index.engines is not None and index.engines.all_keys() == store_ids(shard)
    await index.stop()
    executor.shutdown()
