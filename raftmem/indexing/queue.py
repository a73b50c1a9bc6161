"""The changes a replica's derived indexes have received but not yet absorbed:
bounded, coalescing, tiered, with the watermark it allows. Pure (times are
given), tested alone.

- Coalescing: a change to a memory that already waits replaces the waiting
  one (the newer record wins; the tier becomes the stricter of the two; the
  item keeps the index of the first change it covers). Absorbing out of log
  order is then safe (each item sets one memory's whole state) and a memory
  updated ten times between two batches costs the indexes one write.
- Tiers: `eager` items are due at once, `batched` ones once the oldest has
  waited `batch_ms` or `batch_docs` wait, `lazy` ones when the index is idle or
  when a reader demands absorption through some index.
- The watermark: every change at or below it is absorbed. It is the index
  before the oldest waiting item's first change, else everything received.
  `received` moves only forward; an item never claims an index it was not given.
- Bounded: `queue_docs_max` changes and `queue_bytes_max` bytes of records
  (an embedding of 384 dimensions is 2 KB): past either, everything waiting
  is due whatever its tier, and the shard's writes are refused (429).
- Adaptive batches: the batch size doubles (to `batch_docs_max`) while the
  oldest batched change is older than the queue-age target, and falls back to
  `batch_docs` once the queue keeps up.
- Patience (a search-idle replica, set by its owner): a batch is due once its
  oldest change has waited `idle_batch_ms`, or `batch_docs_max` wait, or the
  queue is half full (items or bytes), or absorbing what waits would take
  `idle_absorb_ms` at `change_cost_s` (the recent cost per change the owner
  records: the first search to come waits that long); and then it goes whole (up to
  `batch_docs_max`, unless an eager change waits).
  `flush_through`: batched items at or below it are due at once and urgent (a
  search woke the replica and waits for them; lazy ones keep waiting).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..config import INDEX_TIERS, IndexingConfig
from ..events import Change

EAGER, BATCHED, LAZY = INDEX_TIERS
COST_DECAY = 0.7  # per absorb, of the earlier absorbs' weight in the cost per change


@dataclass(frozen=True)
class Pending:
    key: tuple[str, str]  # (namespace, id)
    change: Change  # the newest change to this memory
    first_index: int  # the index of the first change this item covers
    tier: str
    since_s: float  # when the first change arrived
    size: int = 0  # bytes of the record it holds (embedding included)

    @property
    def index(self) -> int:
        return self.change.index


@dataclass
class IndexQueue:
    config: IndexingConfig
    received: int = 0  # every change at or below it has been handed to the queue
    items: dict[tuple[str, str], Pending] = field(default_factory=dict)
    batch_docs: int = 0
    coalesced: int = 0
    tier_counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(INDEX_TIERS, 0))
    bytes: int = 0  # of the records waiting
    patient: bool = False  # search-idle: batches wait longer and go bigger
    flush_through: int = 0  # batched items at or below it are due now (a woken replica's)
    change_cost_s: float = 0.0  # absorbing one change lately took this long (record_absorb; 0: unknown)
    _cost_sums: tuple[float, float] = (0.0, 0.0)  # decayed: seconds absorbing, changes absorbed

    def __post_init__(self) -> None:
        self.batch_docs = self.batch_docs or self.config.batch_docs

    def __len__(self) -> int:
        return len(self.items)

    def full(self) -> bool:
        return len(self.items) >= self.config.queue_docs_max or self.bytes >= self.config.queue_bytes_max

    def add(self, change: Change, tier: str, now_s: float, size: int = 0) -> None:
        assert change.index > 0
        key = (change.namespace, change.id)
        waiting = self.items.get(key)
        self.bytes += size
        if waiting is None:
            self.items[key] = Pending(key, change, change.index, tier, now_s, size)
            self.tier_counts[tier] += 1
        else:
            self.bytes -= waiting.size
            assert change.index >= waiting.index, "changes arrive in log order"
            self.coalesced += 1
            # A new item, not the old one changed: a batch being absorbed holds
            # the old one, and `absorbed` must then keep this one waiting.
            stricter = min(waiting.tier, tier, key=INDEX_TIERS.index)
            self.tier_counts[waiting.tier] -= 1
            self.tier_counts[stricter] += 1
            # Assignment keeps the key's place: items stay in arrival (log) order.
            self.items[key] = Pending(key, change, waiting.first_index, stricter, waiting.since_s, size)
        self.received = max(self.received, change.index)

    def received_through(self, index: int) -> None:
        """Every change at or below `index` has been handed over (an entry
        without changes, or the replica's applied index when the feed is drained)."""
        self.received = max(self.received, index)

    def _first(self, tiers: Iterable[str] | None = None) -> Pending | None:
        """The oldest waiting item (of these tiers): items are in arrival order,
        which is log order, so the first found has the lowest first index."""
        wanted = None if tiers is None else set(tiers)
        if wanted is not None and not any(self.tier_counts[t] for t in wanted):
            return None
        for p in self.items.values():
            if wanted is None or p.tier in wanted:
                return p
        return None

    def watermark(self) -> int:
        first = self._first()
        return self.received if first is None else first.first_index - 1

    def tier_watermark(self, tiers: Iterable[str]) -> int:
        """Every change at or below it of these tiers is absorbed."""
        first = self._first(tiers)
        return self.received if first is None else first.first_index - 1

    def oldest_s(self, tier: str | None = None) -> float | None:
        first = self._first(None if tier is None else (tier,))
        return None if first is None else first.since_s

    def counts(self) -> dict[str, int]:
        return dict(self.tier_counts)

    def _batch_ms(self) -> int:
        return max(self.config.batch_ms, self.config.idle_batch_ms) if self.patient else self.config.batch_ms

    def _flushing(self) -> bool:
        oldest = self._first((BATCHED,)) if self.flush_through else None
        return oldest is not None and oldest.first_index <= self.flush_through

    def _batch_due(self, now_s: float) -> bool:
        oldest_batched = self.oldest_s(BATCHED)
        if oldest_batched is None:
            return False
        if self.patient:
            return (self._flushing() or self.tier_counts[BATCHED] >= self.config.batch_docs_max
                    or len(self.items) >= self.config.queue_docs_max // 2
                    or self.bytes >= self.config.queue_bytes_max // 2
                    or self.tier_counts[BATCHED] * self.change_cost_s * 1000 >= self.config.idle_absorb_ms
                    or now_s - oldest_batched >= self._batch_ms() / 1000)
        return (self._flushing() or self.tier_counts[BATCHED] >= self.batch_docs
                or now_s - oldest_batched >= self.config.batch_ms / 1000)

    def is_due(self, now_s: float, idle: bool, demand: int) -> bool:
        """Whether `due` would give anything (without building the batch): what
        is urgent, a batch due by age or size, lazy items once idle."""
        return self.urgent(demand) or self._batch_due(now_s) or (idle and self.tier_counts[LAZY] > 0)

    def due(self, now_s: float, idle: bool, demand: int) -> list[Pending]:
        """What to absorb now (at most the batch size, oldest first): eager
        items, batched ones when their batch is due, lazy ones when idle, and
        anything at or below `demand` (a reader waiting for it)."""
        if not self.is_due(now_s, idle, demand):
            return []
        batch_due = self._batch_due(now_s)
        everything = self.full()  # no room left: absorb, whatever the tier
        # Whole when patient or flushed, unless an eager change waits (its writer
        # waits for this commit: no bigger than an active replica's batch).
        whole = (self.patient or self._flushing()) and not self.tier_counts[EAGER]
        most = self.config.batch_docs_max if whole else self.batch_docs
        chosen: list[Pending] = []
        for p in self.items.values():  # log order
            if (everything or p.tier == EAGER or p.first_index <= demand
                    or (p.tier == BATCHED and batch_due) or (p.tier == LAZY and idle)):
                chosen.append(p)
                if len(chosen) >= most:
                    break
        return chosen

    def urgent(self, demand: int) -> bool:
        """Whether what waits may not wait for the node's commit budget
        (indexing/budget.py): an eager item, one a reader waits for (at or
        below `demand`), or no room left."""
        first = self._first()
        return first is not None and (self.tier_counts[EAGER] > 0 or first.first_index <= demand or self.full()
                                      or self._flushing())

    def next_due_s(self, now_s: float) -> float | None:
        """Seconds until a batch falls due by age (None: nothing batched waits)."""
        oldest = self.oldest_s(BATCHED)
        if oldest is None:
            return None
        return max(0.0, oldest + self._batch_ms() / 1000 - now_s)

    def absorbed(self, items: Iterable[Pending]) -> None:
        """`items` are in the indexes now (unless a newer change replaced one meanwhile)."""
        for p in items:
            current = self.items.get(p.key)
            if current is p:
                del self.items[p.key]
                self.tier_counts[p.tier] -= 1
                self.bytes -= p.size
        if self.flush_through and not self._flushing():
            self.flush_through = 0  # done: nothing batched at or below it waits

    def record_absorb(self, seconds: float, changes: int) -> None:
        """An absorb of `changes` took `seconds` (wall time, its commit included).
        The cost per change is over the last absorbs weighed by their sizes (a
        one-change absorb is mostly its commit), each earlier one decayed by
        COST_DECAY."""
        took, count = self._cost_sums
        took, count = took * COST_DECAY + seconds, count * COST_DECAY + changes
        self._cost_sums = (took, count)
        self.change_cost_s = took / count if count else 0.0

    def adapt(self, now_s: float) -> None:
        """Grow batches while the queue lags its age target; shrink once it keeps up."""
        oldest = self.oldest_s(BATCHED)
        target_s = self.config.queue_age_target_ms / 1000
        if oldest is not None and now_s - oldest > target_s:
            self.batch_docs = min(self.config.batch_docs_max, self.batch_docs * 2)
        elif oldest is None or now_s - oldest < target_s / 4:
            self.batch_docs = max(self.config.batch_docs, self.batch_docs // 2)

    def reset(self, received: int) -> None:
        """Everything waiting is dropped (a rebuild from the store covers it)."""
        self.items.clear()
        self.tier_counts = dict.fromkeys(INDEX_TIERS, 0)
        self.bytes = 0
        self.received = received
        self.flush_through = 0
