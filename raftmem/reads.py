"""The whole read protocol, in one place (shared DESIGN.md section 3):

    level        where                what must hold before `fn` runs
    eventual     any replica          nothing
    session      any replica          applied >= the caller's token (wait up to
    (read-your-                       SESSION_WAIT_S, else the leader); a leader
    writes)                           serves it from its own applied state
    causal       any replica          the same, with the token of the key's shard
                                      from the caller's causal context (the
                                      tokens it saw, handed on between agents)
    bounded      a follower           heard from its leader within the bound and
                                      applied the commit index it learned then;
                                      a leader serves it as linearizable
    strong       the leader           under its lease, applied >= the commit
                                      index, and the lease still valid after the
                                      read (a pause in between: ReadIndex)
    linearizable the leader           ReadIndex: commit index at arrival, a quorum
                                      confirmed leadership after arrival, applied

plus the per-tag policy (`level_for`) that picks a level when the caller names
none. A replica's `Reads` runs over `RaftFacts`, the few facts its Raft group
offers (consensus.RaftGroup has them), the local state (the state machine's read
side) and a `Clock`, so tests drive it with fakes and a manual clock. A level
this replica cannot serve raises `NotHere`: the caller sends the read to the
shard leader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar

from .clock import Clock
from .config import ConsistencyConfig, LimitsConfig
from .config.schema import TOKEN_LEVELS
from .errors import NoLeader, Unavailable
from .shard import FRESH_LEVELS, MemoryReader, Served

T = TypeVar("T")

# How long a follower waits to apply a session token before the read goes to
# the leader.
SESSION_WAIT_S = 0.5


class NotHere(NoLeader):
    """This replica cannot serve the read at the level asked: ask the leader.
    (A NoLeader: where it escapes, it is a retryable 503, and the routing loop
    that found this node leading retries it until a leader is known.)"""


class RaftFacts(Protocol):
    """What the read protocol asks of a replica's Raft group. `now` is the
    monotonic clock's reading."""

    shard: int

    @property
    def applied_index(self) -> int: ...

    @property
    def commit_index(self) -> int: ...

    def is_leader(self) -> bool: ...

    def lease_index(self, now: float) -> tuple[int, int] | None:
        """(commit index, term) to read at under a valid leader lease, or None."""
        ...

    def lease_valid(self, term: int, now: float) -> bool: ...

    async def read_index(self) -> int:
        """ReadIndex: raises NoLeader/Unavailable when leadership is not confirmed."""
        ...

    async def wait_applied(self, index: int, timeout_s: float) -> bool: ...

    def follower_freshness(self, now: float) -> tuple[float, int]:
        """(seconds since the leader sent what was last accepted, its commit index
        then); (inf, 0) on a leader or a replica that knows none."""
        ...


def level_for(policy: ConsistencyConfig, tags: list[str] | tuple[str, ...] | None) -> tuple[str, int]:
    """The level (and, for bounded, the bound in ms; else -1) for a read that
    names none: the strictest override the record's tags ask for, else the
    default."""
    tagged = policy.level_for_tags(tags) if tags else None
    if tagged == "bounded" and tags:
        bound = policy.bound_for_tags(tags)
        return tagged, -1 if bound is None else bound
    return tagged or policy.default, -1


class Reads:
    """One replica's reads: over its Raft facts and its local state."""

    def __init__(
        self, raft: RaftFacts, state: MemoryReader, clock: Clock, limits: LimitsConfig,
        unsafe_local_reads: bool = False,
    ) -> None:
        """`clock.monotonic()` must be the clock the group's stamps use (a real
        group: time.monotonic, so the replica passes a SystemClock)."""
        self.raft = raft
        self.state = state
        self.clock = clock
        self.timeout_s = limits.read_timeout_ms / 1000
        # Negative control only: whoever believes it leads answers, unchecked.
        self.unsafe_local_reads = unsafe_local_reads
        self.lease_reads = 0
        self.read_index_reads = 0  # lease fallbacks included

    def _token(self) -> str:
        return f"{self.raft.shard}:{self.raft.applied_index}"

    def staleness_ms(self) -> int | None:
        if self.raft.is_leader():
            return 0
        staleness, _ = self.raft.follower_freshness(self.clock.monotonic())
        return None if staleness == float("inf") else max(0, int(staleness * 1000))

    async def read(
        self, level: str, fn: Callable[[MemoryReader], T], after: int = 0, bound_ms: int = -1
    ) -> tuple[T, Served]:
        raft = self.raft
        if level == "eventual":
            return fn(self.state), Served("eventual", self._token(), self.staleness_ms())
        if not raft.is_leader():
            return await self._follower_read(level, fn, after, bound_ms)
        if level in TOKEN_LEVELS and after <= raft.commit_index and await raft.wait_applied(after, SESSION_WAIT_S):
            # The leader has applied every token it acknowledged, and a token from
            # a later leader's term names a committed entry: applied >= token
            # means the write is in this state (read-your-writes, monotonic). A
            # token past our commit index came from a later leader (we may be
            # deposed): confirm leadership instead of waiting for it.
            return fn(self.state), Served(level, self._token())
        return await self._leader_read(level, fn)

    async def _follower_read(
        self, level: str, fn: Callable[[MemoryReader], T], after: int, bound_ms: int
    ) -> tuple[T, Served]:
        if level in TOKEN_LEVELS and await self.raft.wait_applied(after, SESSION_WAIT_S):
            return fn(self.state), Served(level, self._token(), self.staleness_ms())
        if level == "bounded":
            staleness_ms = await self._bounded_ready(bound_ms)
            if staleness_ms is not None:
                return fn(self.state), Served("bounded", self._token(), staleness_ms)
        shard = self.raft.shard
        raise NotHere(f"shard {shard}: a {level} read needs the leader", shard=shard)

    async def _bounded_ready(self, bound_ms: int) -> int | None:
        """Can this follower serve a read at most `bound_ms` stale? It must have
        heard from its leader within the bound and applied the commit index it
        learned then. Returns the staleness, or None (the read goes to the leader)."""
        staleness, commit = self.raft.follower_freshness(self.clock.monotonic())
        if staleness * 1000 > bound_ms:
            return None
        budget_s = min(SESSION_WAIT_S, bound_ms / 1000 - staleness)
        if not await self.raft.wait_applied(commit, max(0.0, budget_s)):
            return None
        staleness, _ = self.raft.follower_freshness(self.clock.monotonic())
        if staleness * 1000 > bound_ms:
            return None
        return max(0, int(staleness * 1000))

    async def _leader_read(self, level: str, fn: Callable[[MemoryReader], T]) -> tuple[T, Served]:
        """`strong` under the lease; any other level as `linearizable`."""
        served, lease_term = await self._fresh(level)
        value = fn(self.state)
        if lease_term is not None and not self.raft.lease_valid(lease_term, self.clock.monotonic()):
            # The lease ran out while we read (a pause): confirm with ReadIndex.
            served, _ = await self._fresh("linearizable")
            value = fn(self.state)
        return value, Served(served, self._token(), None if served in FRESH_LEVELS else 0)

    async def _fresh(self, level: str) -> tuple[str, int | None]:
        """Bring the leader's replica up to date for a fresh read. Returns the
        level served and, for a lease read, the term to re-check after reading."""
        if self.unsafe_local_reads:
            return level, None  # negative control: the level asked, unchecked
        raft = self.raft
        if level == "strong":
            lease = raft.lease_index(self.clock.monotonic())
            if lease is not None:
                index, term = lease
                if await raft.wait_applied(index, self.timeout_s):
                    self.lease_reads += 1
                    return "strong", term
        self.read_index_reads += 1
        index = await raft.read_index()
        if not await raft.wait_applied(index, self.timeout_s):
            raise Unavailable(f"shard {raft.shard}: apply is behind", shard=raft.shard)
        return "linearizable", None


__all__ = ["FRESH_LEVELS", "SESSION_WAIT_S", "NotHere", "RaftFacts", "Reads", "level_for"]
