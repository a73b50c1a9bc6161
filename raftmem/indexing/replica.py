"""One shard replica's derived indexes: the full-text catalogue (textindex)
and a vector index per embedding dimension (vectorindex), fed from the change
feed, recovered from the change log, rebuilt from the store.

The absorber task (on the event loop) moves changes from the replica's feed
subscription into the queue (raftmem.indexing.queue), and hands due batches to
a worker thread, which writes them to the engines (raftmem.indexing.engines:
in the node's engine host process, or in this one) and commits the text index
with the watermark the batch reaches. One batch at a time, so commits are in
order. Invariant, asserted before every commit: the watermark claimed is one
the queue allows (every change at or below it was received and none waits),
and it never goes backwards except on a rebuild.

Recovery at start (raftmem/indexing/DESIGN.md): subscribe to the feed first,
then replay the change log from the durable watermark (the lowest of the text
index's and the vector indexes'), then follow the feed; when the log no longer
reaches back (`events.Compacted`), after a snapshot install (`RESET`), or on
`reindex`, rebuild from a snapshot of the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import codec, embeddings
from ..config import INDEX_TIERS, IndexingConfig
from ..errors import Overloaded, Unavailable
from ..events import (
    Change,
    ChangeFeed,
    ChangeKind,
    ChangePage,
    Closed,
    Compacted,
    Overflowed,
    Subscription,
)
from ..shard import MemoryReader, RecordScan, Shard
from ..textindex import doc_key
from .budget import CommitBudget
from .engines import EngineLost, Engines, EngineState, ReplicaEngines, vkey_of
from .queue import BATCHED, EAGER, IndexQueue, Pending

log = logging.getLogger(__name__)

INDEX_DIR = "index"
REPLAY_PAGE = 2048
REBUILD_CHUNK = 2000
REBUILD_CHUNK_BYTES = 8 << 20  # and at most this many bytes of records (a frame to the engine host)
# Records handed to the engines at a time: pickling a chunk for the engine host
# holds the node's GIL (~1 us per record), a few hundred keep that short.
WRITE_CHUNK = 256
POLL_WAITING_S = 0.01  # while a reader waits, how often the applied index is looked at
SLOT_POLL_S = 0.05  # while a batch waits (its time or the commit budget), how often the feed is looked at
CHECK_ATTEMPTS = 10
SUBSCRIPTION_BATCHES = 4
QUIET_COMMIT_MIN = 1000  # entries without changes before the watermark alone is committed
WOKEN_TIERS = (EAGER, BATCHED)  # what a search waking a search-idle replica waits for


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a finished wait's outcome as seen (a closed subscription is expected)."""
    if not future.cancelled():
        future.exception()


def _changes_after(after: int) -> Callable[[MemoryReader], ChangePage]:
    return lambda s: s.changes_after(after, REPLAY_PAGE)


@dataclass
class IndexStats:
    absorbs: int = 0
    docs_absorbed: int = 0
    absorb_seconds: float = 0.0
    last_batch: int = 0
    batch_sizes_sum: int = 0
    rebuilds: int = 0
    replays: int = 0
    overflows: int = 0
    vector_saves: int = 0
    wakes: int = 0  # searches that found the replica search-idle with batched changes waiting
    engine_restarts: int = 0  # the engines opened again after their host died
    logical_bytes: int = 0  # of the records absorbed (what clients wrote)
    tiers: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INDEX_TIERS, 0))


@dataclass
class _Waiter:
    target: int
    tiers: tuple[str, ...]
    future: asyncio.Future[None]


class ReplicaIndex:
    def __init__(self, shard: Shard, config: IndexingConfig, feed: ChangeFeed, executor: ThreadPoolExecutor,
                 on_change: Callable[[Change], None] | None = None, retention_entries: int = 0,
                 budget: CommitBudget | None = None, search_executor: Executor | None = None,
                 engines: Callable[[Path, int], Engines] = ReplicaEngines,
                 revive: Callable[[], Awaitable[None]] | None = None, resume_claimed: bool = False) -> None:
        self.shard = shard
        self.shard_id = shard.shard
        self.config = config
        self.feed = feed
        self.executor = executor
        self.search_executor = search_executor  # searches' engine work (None: asyncio's default pool)
        self.on_change = on_change  # summaries: mark stale
        self.open_engines = engines  # in this process (ReplicaEngines) or the engine host (host.RemoteEngines)
        self.revive = revive  # after EngineLost: a new engine host
        self.resume_claimed = resume_claimed  # negative control (debug.unsafe_engines_resume_claimed)
        self.retention_entries = retention_entries
        # The node's commit budget (none of its own by default: unit tests)
        self.budget = budget if budget is not None else CommitBudget(0, 1)
        self._slot: float | None = None  # the budget's slot this replica holds for its next batch
        self.directory: Path = shard.directory / INDEX_DIR
        self.queue = IndexQueue(config)
        self.engines: Engines | None = None
        self.state = EngineState()  # the engines' watermarks and counters after their last write
        self.visible = 0  # every change at or below it is searchable
        self.stats = IndexStats()
        self.last_change_s = time.monotonic()
        # No search has used it yet: search-idle from the start (config.search_idle_s).
        self._searched_s = float("-inf")
        self._saved_at = time.monotonic()
        self._sub: Subscription | None = None
        self._task: asyncio.Task[None] | None = None
        self._jobs: set[Future[Any]] = set()  # engine jobs handed to the pool, not finished
        self._poke = asyncio.Event()
        self._waiters: list[_Waiter] = []
        self._demand = 0
        self._rebuild_wanted = False
        self._stopped = False
        # Changes at or below it came from the change log or a rebuild: the feed's
        # copies are dropped (not the queue's `received`: an entry's changes share
        # its index, and the feed hands them over one by one).
        self._skip_through = 0
        self.ready = asyncio.Event()
        self.error: str | None = None

    # -- life --------------------------------------------------------------------------
    def start(self) -> None:
        """Subscribe (before anything is replayed: nothing falls between) and
        start the absorber."""
        self._sub = self._subscribe()
        self._task = asyncio.create_task(self._run(), name=f"index-{self.shard_id}")

    async def stop(self, delete: bool = False) -> None:
        self._stopped = True
        if self._sub is not None:
            self._sub.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 (stopping: it was logged)
                pass
        for w in self._waiters:
            if not w.future.done():
                w.future.set_exception(Unavailable(f"shard {self.shard_id}: index stopped", shard=self.shard_id))
        await self._quiesce()  # an absorb the cancelled task left running
        if self.engines is not None:
            await self._in_thread(self._close_engines, not delete)
        if delete:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _subscribe(self) -> Subscription:
        """The feed's changes of this shard. Its queue holds records between two
        turns of the absorber: a few batches' worth. A subscription that falls
        further behind (a long absorb under a write burst) is cut off, and the
        absorber resumes from the change log, which costs reads, not memory."""
        return self.feed.subscribe([self.shard_id], queue_max=SUBSCRIPTION_BATCHES * self.config.batch_docs)

    def _close_engines(self, save: bool) -> None:
        engines, self.engines = self.engines, None
        if engines is not None:
            try:
                engines.close(save)
            except EngineLost:
                pass  # the host is gone, and its engines with it

    async def _in_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Engine work on the node's absorb pool. Unfinished jobs are kept: a
        cancelled await does not stop one, and `stop` must not close the engines
        under it (a save beside an insert, a writer closed mid-batch)."""
        job = self.executor.submit(fn, *args)
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return await asyncio.wrap_future(job)

    async def _quiesce(self) -> None:
        for job in list(self._jobs):
            with contextlib.suppress(Exception):
                await asyncio.wrap_future(job)

    def _open_engines(self) -> None:
        engines = self.open_engines(self.directory, self.config.text_heap_bytes)
        self.state = engines.state()
        self.engines = engines

    def require_engines(self) -> Engines:
        """The engines as they are (for a search: while they replay or rebuild,
        the answer's lag says how far behind); Unavailable while they are not
        open (starting, or opening again in a new engine host)."""
        engines = self.engines
        if engines is None:
            raise Unavailable(f"shard {self.shard_id}: the derived indexes are not open", shard=self.shard_id)
        return engines

    def durable_watermark(self) -> int:
        return self.state.durable()

    # -- the absorber ------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                await self._open_and_follow()
                return
            except asyncio.CancelledError:
                raise
            except EngineLost as e:
                if self._stopped or self.revive is None:
                    raise
                # The engine host died: what it had not made durable is in the
                # change log (the engines' write-ahead log, as after a crash).
                self.ready.clear()
                self.engines = None
                self.stats.engine_restarts += 1
                log.warning("shard %d: %s; opening the derived indexes again", self.shard_id, e)
                await self._revive()

    async def _revive(self) -> None:
        """A new engine host, retried until one starts (a fork can fail for
        want of memory or descriptors: the absorber must not die of it)."""
        assert self.revive is not None
        pause = 1.0
        while True:
            try:
                await self.revive()
                return
            except OSError as e:
                log.error("shard %d: cannot start an engine host (%s): again in %.0fs", self.shard_id, e, pause)
                await asyncio.sleep(pause)
                pause = min(2 * pause, 30.0)

    async def _open_and_follow(self) -> None:
        try:
            claimed = self.visible
            await self._in_thread(self._open_engines)
            start = self.durable_watermark()
            if self.resume_claimed and self.stats.engine_restarts:
                start = max(start, claimed)  # UNSAFE: skips what the engines lost with their host
            self.visible = start
            self.queue.reset(start)
            self._skip_through = start
            if not await self._replay(start):
                await self._rebuild()
            self.ready.set()
            await self._follow()
        except (asyncio.CancelledError, EngineLost):
            raise
        except Exception as e:
            self.error = f"{type(e).__name__}: {e}"
            log.exception("shard %d: derived indexes stopped", self.shard_id)
            for w in self._waiters:
                if not w.future.done():
                    w.future.set_exception(Unavailable(f"shard {self.shard_id}: index failed: {self.error}"))
            raise

    async def _replay(self, after: int) -> bool:
        """Absorb the change log after `after`; False when it no longer reaches back."""
        self.stats.replays += 1
        while True:
            try:
                page, _ = await self.shard.read("eventual", _changes_after(after))
            except Compacted:
                return False
            for change in page.changes:
                self._ingest(change, replay=True)
            after = max(after, page.through)
            self._skip_through = max(self._skip_through, page.through)
            self.queue.received_through(page.through)
            while len(self.queue):
                await self._absorb(self.queue.due(time.monotonic(), True, self.queue.received))
            if page.complete:
                return True

    async def _rebuild(self) -> None:
        """The indexes again from a snapshot of the store (searches see the old
        ones until the new ones are committed and swapped in)."""
        scan: RecordScan = (await self.shard.read("eventual", lambda s: s.record_scan()))[0]
        log.info("shard %d: rebuilding derived indexes from the store at index %d", self.shard_id, scan.applied)
        await self._in_thread(self._rebuild_sync, scan.records, scan.applied)
        self.queue.reset(scan.applied)
        self._skip_through = scan.applied
        self.visible = scan.applied
        self.stats.rebuilds += 1
        self._wake_waiters()

    def _rebuild_sync(self, records: Iterator[tuple[bytes, bytes]], applied: int) -> None:
        engines = self.require_engines()
        engines.begin_rebuild()  # the old indexes answer searches until the commit below
        chunk: list[bytes] = []
        size = 0
        for _key, raw in records:
            chunk.append(bytes(raw))  # the stored JSON: decoded where the engines run
            size += len(raw)
            if len(chunk) >= REBUILD_CHUNK or size >= REBUILD_CHUNK_BYTES:
                engines.write((), (), chunk)
                chunk, size = [], 0
        engines.write((), (), chunk)
        self.state = engines.commit(applied)
        self._saved_at = time.monotonic()

    def request_rebuild(self) -> None:
        self._rebuild_wanted = True
        self._poke.set()

    async def _follow(self) -> None:
        while not self._stopped:
            if self.require_engines().lost():
                raise EngineLost(f"shard {self.shard_id}: the engine host of these indexes is gone",
                                 shard=self.shard_id)
            if self._rebuild_wanted:
                self._rebuild_wanted = False
                await self._rebuild()
            resync = self._drain()
            if resync is not None:
                await self._resync(resync)
                continue
            now = time.monotonic()
            idle = now - self.last_change_s >= self.config.lazy_idle_ms / 1000
            self.queue.patient = self._patient(now)
            if not self.queue.is_due(now, idle, self._demand):
                # Nothing due (it may have been: the replica went search-idle since
                # its slot was reserved): a slot kept now would make _sleep spin.
                self._slot = None
            elif self._may_absorb(now):
                self._slot = None
                await self._absorb(self.queue.due(now, idle, self._demand))
                continue
            self._advance_visible()
            await self._checkpoint_if_due()
            await self._sleep(now)

    def search_idle(self, now: float) -> bool:
        idle_s = self.config.search_idle_s
        return idle_s > 0 and now - self._searched_s >= idle_s

    def _patient(self, now: float) -> bool:
        """Whether batches may wait as long as a search-idle replica's do: not
        when the change log would no longer reach back to the oldest waiting
        change by the time it is absorbed (a restart would then rebuild)."""
        if not self.search_idle(now):
            return False
        behind = self.queue.received - self.queue.watermark()
        return not (self.retention_entries and behind > self.retention_entries // 4)

    def _may_absorb(self, now: float) -> bool:
        """Whether a due batch goes now: at once when it is urgent (eager
        changes, a reader waiting, a full queue), else at the slot the node's
        commit budget grants (reserved on the first ask, kept until used)."""
        if self.queue.urgent(self._demand):
            return True
        if self._slot is None:
            self._slot = self.budget.reserve(now)
        return self._slot <= now

    def _drain(self) -> int | None:
        """Move what the feed has into the queue; an index to resync from when
        the subscription was cut off, or the store was replaced (-1)."""
        assert self._sub is not None
        while True:
            try:
                change = self._sub.get_nowait()
            except Overflowed:
                # Resume after what the queue received, less its last entry:
                # an entry's changes share its index and come one by one, so
                # the cut may have fallen inside it (taking one again is harmless:
                # it coalesces, or is absorbed again as it was).
                self.stats.overflows += 1
                return max(0, self.queue.received - 1)
            except Closed:
                return None
            if change is None:
                break
            if change.kind is ChangeKind.RESET:
                return -1
            self._ingest(change)
        # Drained: every change the replica applied so far has been published.
        self.queue.received_through(self.shard.applied_index)
        return None

    def _ingest(self, change: Change, replay: bool = False) -> None:
        if change.index <= self._skip_through:
            return  # absorbed already (a replay, or a re-apply after a crash)
        rec = change.record or {}
        tier = "batched" if replay else self.config.tier_for_tags(rec.get("tags"))
        if change.before is not None and change.kind is ChangeKind.PUT:
            tier = min(tier, self.config.tier_for_tags(change.before.get("tags")), key=INDEX_TIERS.index)
        size = 0
        if change.kind is ChangeKind.PUT and change.after is not None:
            # the stored JSON when the feed has it (not encoded again per replica)
            size = len(change.encoded) if change.encoded is not None else len(codec.dumps(change.after))
        if self.on_change is not None:
            self.on_change(change)
        # What waits keeps only what absorbing reads (a PUT's new record; the key
        # of a removal): the record replaced and the stored JSON tripled the bytes
        # the queue counts (tests/integration/test_memory_bound.py, 4 KB values,
        # with the commit budget: nodes grew 146-160 MiB with them, 84-95 without).
        slim = dataclasses.replace(change, before=None, encoded=None,
                                   after=change.after if change.kind is ChangeKind.PUT else None)
        self.queue.add(slim, tier, time.monotonic(), size)
        self.stats.tiers[tier] += 1
        self.stats.logical_bytes += size
        self.last_change_s = time.monotonic()

    async def _resync(self, after: int) -> None:
        """Resume from the change log after `after` (what the queue had received
        before the cut: not the queue's watermark, from which the log would hand
        over again changes of keys still waiting, older than their queued ones),
        or rebuild (-1: the store was replaced)."""
        assert self._sub is not None
        self._sub.close()
        self._sub = self._subscribe()
        if after < 0 or not await self._replay(after):
            await self._rebuild()

    async def _sleep(self, now: float) -> None:
        assert self._sub is not None
        timeouts = [1.0]
        if self._slot is not None:
            timeouts.append(max(0.0, self._slot - now))  # a batch is due and waits for its slot
        else:
            due = self.queue.next_due_s(now)
            if due is not None:
                timeouts.append(due)
            if self.queue.tier_counts["lazy"]:
                timeouts.append(max(0.0, self.last_change_s + self.config.lazy_idle_ms / 1000 - now))
        if self._waiters:
            timeouts.append(POLL_WAITING_S)
        if self.state.vectors_dirty:
            timeouts.append(max(0.0, self._saved_at + self.config.checkpoint_s - now))
        timeout = min(timeouts)
        if timeout <= 0:
            await asyncio.sleep(0)  # never a loop that does not yield
            return
        self._poke.clear()
        if len(self.queue) and not self._waiters:
            # A batch is waiting (for its time or its slot): what arrives
            # meanwhile joins it then, without a wake-up per change (each cost
            # the loop two futures and a look at the queue). Readers poke; an
            # eager change on a replica nobody waits on is looked at within
            # SLOT_POLL_S. An empty queue waits on the feed: a change after a
            # quiet spell is taken at once.
            try:
                await asyncio.wait_for(self._poke.wait(), min(timeout, SLOT_POLL_S))
            except TimeoutError:
                pass
            return
        get = asyncio.ensure_future(self._sub.get(timeout))
        get.add_done_callback(_retrieve)
        poke = asyncio.ensure_future(self._poke.wait())
        try:
            done, _ = await asyncio.wait({get, poke}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            poke.cancel()
            if not get.done():
                get.cancel()
        if get not in done or get.cancelled() or get.exception() is not None:
            return  # poked, or cut off / closed: the next drain sees to it
        change = get.result()
        if change is not None:
            if change.kind is ChangeKind.RESET:
                self._rebuild_wanted = True
            else:
                self._ingest(change)

    async def _absorb(self, batch: list[Pending]) -> None:
        if not batch:
            return
        taken = [(p, p.change) for p in batch]
        chosen = {id(p) for p in batch}
        remaining = [p for p in self.queue.items.values() if id(p) not in chosen]
        watermark = remaining[0].first_index - 1 if remaining else self.queue.received
        assert watermark <= self.queue.received, "a derived index never claims a change it was not given"
        assert all(p.first_index > watermark for p in remaining), "nor one still waiting"
        started = time.perf_counter()
        await self._in_thread(self._absorb_sync, [c for _, c in taken], max(watermark, self.visible))
        self.queue.absorbed(batch)
        self.stats.absorbs += 1
        self.stats.docs_absorbed += len(batch)
        self.stats.last_batch = len(batch)
        self.stats.batch_sizes_sum += len(batch)
        took = time.perf_counter() - started
        self.stats.absorb_seconds += took
        # A search-idle replica's batches wait no longer than the first search to
        # come should wait for them (config idle_absorb_ms), at this cost.
        self.queue.record_absorb(took, len(batch))
        self.queue.adapt(time.monotonic())
        self._advance_visible()

    def _absorb_sync(self, changes: Sequence[Change], watermark: int) -> None:
        engines = self.require_engines()
        puts = [c.after for c in changes if c.kind is ChangeKind.PUT and c.after is not None]
        gone = [(c.namespace, c.id) for c in changes if c.kind is not ChangeKind.PUT]
        for start in range(0, len(puts), WRITE_CHUNK):
            engines.write(puts[start:start + WRITE_CHUNK], ())
        if gone:
            engines.write((), gone)
        self.state = engines.commit(watermark)

    async def _checkpoint_if_due(self) -> None:
        """Save the vector indexes (their durable watermark) every checkpoint_s,
        or sooner when the change log is about to forget what they would replay;
        commit the text index's watermark alone when entries without changes
        (read barriers, expiry passes) have moved it far."""
        engines = self.engines
        if engines is None:
            return
        quiet = self.visible - self.state.text_watermark
        if quiet > max(QUIET_COMMIT_MIN, self.retention_entries // 4) and not len(self.queue):
            self.state = await self._in_thread(engines.commit, self.visible)
        if not self.state.vectors_dirty:
            return
        behind = self.state.vectors_behind()
        late = self.retention_entries and behind > self.retention_entries // 2
        if time.monotonic() - self._saved_at < self.config.checkpoint_s and not late:
            return
        await self._in_thread(self._save_vectors)

    def _save_vectors(self) -> None:
        self.state = self.require_engines().save_vectors()
        self.stats.vector_saves += 1
        self._saved_at = time.monotonic()

    def _advance_visible(self) -> None:
        # Every change the queue no longer holds (and at or below what it
        # received) is committed and searchable: entries without changes count.
        if self.engines is not None and self.ready.is_set():
            self.visible = max(self.visible, self.state.text_watermark, self.queue.watermark())
        self._wake_waiters()

    # -- readers -----------------------------------------------------------------------
    def covered(self, target: int, tiers: Sequence[str]) -> bool:
        """Every change at or below `target` of these tiers is searchable, and
        the store the hits are read from holds them. After a crash the indexes
        may be ahead of the store (committed past its last flush; RocksDB has no
        WAL): until the journal's entries are applied again, an index watermark
        alone would answer for records that are not there yet."""
        if self.queue.received < target or not self.ready.is_set() or self.shard.applied_index < target:
            return False
        if set(tiers) >= set(INDEX_TIERS):
            return self.visible >= target
        return self.queue.tier_watermark(tiers) >= target

    def _wake_waiters(self) -> None:
        still = []
        for w in self._waiters:
            if w.future.done():
                continue
            if self.covered(w.target, w.tiers):
                w.future.set_result(None)
            else:
                still.append(w)
        self._waiters = still
        if not still:
            self._demand = 0

    async def awaken(self, timeout_s: float) -> None:
        """A search is about to use this replica. If it was search-idle, wait
        while it absorbs the batched changes it holds (eager ones never wait;
        lazy ones go on waiting), as the first search on a search-idle
        Elasticsearch shard waits for its refresh; then it stays active for
        `search_idle_s`. Never fails the search: past the timeout, or while the
        index is not ready, it answers as it is (its lag says how far behind)."""
        now = time.monotonic()
        if not self.ready.is_set():
            self._searched_s = now
            return
        if self.search_idle(now):
            self.queue.patient = False
            # What the queue holds, and no further than the store has applied
            # (after a crash the indexes may be ahead of it: nothing to absorb there).
            target = min(self.queue.received, self.shard.applied_index)
            if self.queue.tier_watermark(WOKEN_TIERS) < target:
                self.stats.wakes += 1
                self.queue.flush_through = max(self.queue.flush_through, target)
        self._searched_s = now
        # A search that comes while another's wake is absorbing waits for it too
        # (the replica is no longer idle, but what it held is not searchable yet).
        flush = self.queue.flush_through
        if not flush or self.queue.tier_watermark(WOKEN_TIERS) >= flush:
            return
        try:
            await self.wait_absorbed(flush, WOKEN_TIERS, timeout_s, demand=False)
        except Unavailable as e:
            log.warning("shard %d: a search woke the index and did not wait for it: %s", self.shard_id, e)

    async def wait_absorbed(self, target: int, tiers: Sequence[str], timeout_s: float, demand: bool = True) -> None:
        """Until every change at or below `target` of `tiers` is searchable here
        (lazy ones are absorbed on this demand, unless `demand` is false: then
        the queue's own rules, or `flush_through`, bring them). Raises
        Unavailable past the timeout."""
        if self.covered(target, tiers):
            return
        if self.error is not None:
            raise Unavailable(f"shard {self.shard_id}: index failed: {self.error}", shard=self.shard_id)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(target, tuple(tiers), future))
        if demand and set(tiers) - {EAGER}:
            self._demand = max(self._demand, target)
        self._poke.set()
        try:
            await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            raise Unavailable(
                f"shard {self.shard_id}: the index has not absorbed through {target} within {timeout_s:.1f}s "
                f"(it is at {self.visible})", shard=self.shard_id,
            ) from None

    async def check(self, timeout_s: float) -> dict[str, Any]:
        """Compare the indexes with the store at the same index (writes paused):
        documents missing from the index, extra ones, duplicates, vectors."""
        for _attempt in range(CHECK_ATTEMPTS):
            await self.wait_absorbed(self.shard.applied_index, INDEX_TIERS, timeout_s)
            scan: RecordScan = (await self.shard.read("eventual", lambda s: s.record_scan()))[0]
            await self.wait_absorbed(scan.applied, INDEX_TIERS, timeout_s)
            watermark = self.visible
            if watermark == scan.applied:
                break  # the store and the indexes at the same index

        def compare() -> dict[str, Any]:
            engines = self.require_engines()
            store: set[str] = set()
            revs: dict[str, int] = {}
            vectored: dict[int, list[int]] = {}
            for _key, raw in scan.records:
                rec = codec.loads(raw)
                store.add(doc_key(rec["namespace"], rec["id"]))
                revs[doc_key(rec["namespace"], rec["id"])] = int(rec.get("rev") or 0)
                if rec.get("emb"):
                    dims = embeddings.dims(rec["emb"])
                    vectored.setdefault(dims, []).append(vkey_of(rec["namespace"], rec["id"]))
            indexed = engines.revs()
            keys = [k for k, _ in indexed]
            held = set(keys)
            stale = sorted(k for k, rev in indexed if k in revs and revs[k] != rev)
            vectors = {str(d): {"store": len(vectored[d]), "index": count, "held": held_keys}
                       for d, (count, held_keys) in engines.vectors_held(vectored).items()}
            return {
                "applied": scan.applied, "watermark": watermark, "documents": len(keys), "store": len(store),
                "missing": sorted(store - held)[:20], "extra": sorted(held - store)[:20],
                "duplicates": len(keys) - len(held), "stale": stale[:20], "vectors": vectors,
            }

        return dict(await self._in_thread(compare))

    async def wait_applied(self, target: int, timeout_s: float) -> None:
        """Until the replica has applied `target` (and handed its changes over)."""
        await self.wait_absorbed(target, (), timeout_s)

    def admit(self) -> None:
        """Back-pressure: writes to the shard wait for the index to catch up."""
        waiting = len(self.queue) + (self._sub.pending() if self._sub is not None else 0)
        if waiting >= self.config.queue_docs_max or self.queue.bytes >= self.config.queue_bytes_max:
            raise Overloaded(
                f"shard {self.shard_id}: {waiting} changes ({self.queue.bytes} bytes) wait for the derived "
                f"indexes (limits {self.config.queue_docs_max}, {self.config.queue_bytes_max} bytes); retry",
                shard=self.shard_id,
            )

    def lag(self) -> tuple[int, int]:
        """(entries applied but not searchable, age in ms of the oldest change waiting)."""
        entries = max(0, self.shard.applied_index - self.visible) if self.ready.is_set() else self.shard.applied_index
        oldest = self.queue.oldest_s()
        return entries, 0 if oldest is None else int((time.monotonic() - oldest) * 1000)

    def bytes_written(self) -> dict[str, int]:
        return {"text": self.state.text_bytes, "vector": self.state.vector_bytes}
