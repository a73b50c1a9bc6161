"""The Shard port: everything the service, the node (and its reconciler) and the
metrics know about a shard replica. Nothing outside the shard implementation
(raftmem.replica) touches its Raft group, state machine or store.

    role()                  leading?, the leader's node id, term, since when
    submit(command)         propose one typed command: its Committed (index, result)
    submit_many(commands)   propose several in one entry, in order (a batch's share)
    read(level, fn, ...)    run `fn` over the local state under a consistency level
                            (the protocol is raftmem.reads): (value, Served)
    status(), stats()       point-in-time views, as dataclasses
    membership              learn_nodes, voters, add_voter, remove_voter,
                            transfer_leadership, seconds_out_of_touch
    snapshot_to, expire_due, close, drop

This module imports only the command types, the config and the change types.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from .commands import Command, Committed
from .config import NodeConfig, PolicyConfig
from .events import ChangePage

T = TypeVar("T")

# Consistency levels a shard leader must serve (the others: any replica).
FRESH_LEVELS = ("linearizable", "strong")
TIME_MAX = (1 << 64) - 1


@dataclass
class ListQuery:
    """A page of one namespace's memories, by creation time (optionally of one
    agent or tag), strictly after a cursor."""

    namespace: str
    agent_id: str | None = None
    tag: str | None = None
    since_ms: int = 0
    until_ms: int = TIME_MAX
    after: tuple[int, str] | None = None  # (created_at, id) of the last item already seen
    limit: int = 100


@dataclass
class RecordScan:
    """Every memory a replica stored as of `applied` (a storage snapshot):
    `records` yields (key, JSON bytes) and may be consumed on another thread."""

    applied: int
    records: Iterator[tuple[bytes, bytes]]


@dataclass(frozen=True)
class ShardRole:
    shard: int
    leading: bool
    leader: str | None  # node id of the leader this replica knows, if any
    term: int
    since: float  # monotonic time of this replica's last role change


@dataclass(frozen=True)
class Served:
    """How a read was served: the level actually given, the serving replica's
    applied token, and (for stale-tolerant levels) how stale it may be."""

    level: str
    token: str
    staleness_ms: int | None = None


class CoordinationReader(Protocol):
    """Locks and tasks as a replica holds them (raftmem.coordination)."""

    def lock(self, ns: str, name: str, now_ms: int) -> dict[str, Any] | None: ...

    def task(self, ns: str, tid: str) -> dict[str, Any] | None: ...

    def tasks(self, ns: str, state: str | None, after: str | None, limit: int) -> list[dict[str, Any]]: ...

    def open_tasks(self, ns: str) -> int: ...


class MemoryReader(Protocol):
    """The local state a read function sees (the state machine's read side)."""

    def get(self, ns: str, mid: str, now_ms: int) -> dict[str, Any] | None: ...

    def list(self, q: ListQuery, now_ms: int) -> list[dict[str, Any]]: ...

    def members_table(self) -> dict[str, Any] | None: ...

    def changes_after(self, after: int, limit: int) -> ChangePage:
        """This replica's change log after `after` (raises events.Compacted)."""
        ...
    @property
    def coordination(self) -> CoordinationReader: ...

    def record_scan(self) -> RecordScan:
        """Every stored memory as of now (derived indexes rebuild from it)."""
        ...

    def namespace_scan(self, ns: str) -> RecordScan:
        """The memories of one namespace as of now (summaries read it)."""
        ...

    def namespaces(self, prefix: str, after: str | None, limit: int) -> builtins.list[str]:
        """Namespaces with memories here, in order, starting with `prefix`."""
        ...

    def dims_of(self, ns: str) -> int | None:
        """The dimension of the namespace's embeddings here, if it has any."""
    def history_of(self, ns: str, mid: str, limit: int) -> builtins.list[dict[str, Any]]:
        """A memory's versions, newest first (raftmem.history)."""
        ...

    def history_compaction_due(self, cutoff_ms: int) -> bool:
        """Does a removed memory's history wait for compaction (removed at or before the cut-off)?"""
        ...

    def prune_candidates(
        self, policy: PolicyConfig, cutoff_ms: int, now_ms: int, limit: int, scan_max: int,
    ) -> builtins.list[tuple[str, str, int]]:
        """What a lifecycle policy would remove now (raftmem.lifecycle)."""
        ...


@dataclass(frozen=True)
class ShardStatus:
    """What GET /v1/cluster shows of a replica (`to_json`), plus the freshness a
    follower learned from its leader (for readiness)."""

    shard: int
    role: str
    leader: str | None
    term: int
    commit_index: int
    applied_index: int
    sm_applied_index: int
    log_entries: int
    log_bytes: int
    log_first_index: int | None
    journal_syncs: int
    leader_changes: int
    has_quorum: bool
    members: list[str]
    votes_ignored: int
    prevotes_started: int
    lease_clock_resets: int
    snapshot_installs: dict[str, int]
    snapshot_staging: bool
    lease_remaining_ms: int | None = None  # leaders
    last_contact_ms: int | None = None  # followers that know a leader
    since_leader_ms: int | None = None  # followers
    match_index: dict[str, int] | None = None  # leaders: per follower node
    # Followers: seconds since the leader sent what was last accepted, and the
    # commit index it carried (inf, 0 when there is no such leader).
    leader_staleness_s: float = float("inf")
    leader_commit_index: int = 0

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "shard": self.shard, "role": self.role, "leader": self.leader, "term": self.term,
            "commit_index": self.commit_index, "applied_index": self.applied_index,
            "sm_applied_index": self.sm_applied_index, "log_entries": self.log_entries,
            "log_bytes": self.log_bytes, "log_first_index": self.log_first_index,
            "journal_syncs": self.journal_syncs, "leader_changes": self.leader_changes,
            "has_quorum": self.has_quorum, "members": list(self.members),
            "votes_ignored": self.votes_ignored, "prevotes_started": self.prevotes_started,
            "lease_clock_resets": self.lease_clock_resets, "snapshot_installs": dict(self.snapshot_installs),
            "snapshot_staging": self.snapshot_staging,
        }
        for key in ("lease_remaining_ms", "last_contact_ms", "since_leader_ms", "match_index"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(frozen=True)
class ShardStats:
    """Counters and gauges for /metrics, read at scrape time."""

    shard: int
    term: int
    commit_index: int
    applied_index: int
    leading: bool
    log_entries: int
    log_bytes: int
    db_bytes: int
    memtable_bytes: int
    leader_changes: int
    proposals: int
    entries_proposed: int
    journal_syncs: int
    inline_syncs: int
    lease_reads: int
    read_index_reads: int
    read_rounds: int
    votes_ignored: int
    stale_acks: int
    snapshot_installs: dict[str, int]
    outcomes: dict[str, int]
    commit_seconds_sum: float
    replication_lag: dict[str, int] = field(default_factory=dict)  # leaders: per follower
    io_bytes: dict[str, int] = field(default_factory=dict)  # RocksDB's bytes written (storage.IO_STATS)


class Shard(Protocol):
    shard: int

    @property
    def directory(self) -> Path:
        """Where this replica's data lives."""
        ...

    @property
    def applied_index(self) -> int: ...

    def role(self) -> ShardRole: ...

    async def submit(self, command: Command) -> Committed:
        """Propose one command; its index and result once committed, durable and
        applied here. Raises NoLeader/Overloaded (nothing was done) or
        Indeterminate (it may or may not happen)."""
        ...

    async def submit_many(self, commands: Sequence[Command]) -> list[Committed]:
        """Propose commands in one log entry, applied in order (each sees the
        ones before it); all commit or none. Raises as `submit` does."""
        ...

    async def read(
        self, level: str, fn: Callable[[MemoryReader], T], *, after: int = 0, bound_ms: int = -1
    ) -> tuple[T, Served]:
        """Run `fn` over the local state once `level` allows it here. Raises
        reads.NotHere when this replica cannot serve the level (the read goes to
        the leader), NoLeader/Unavailable when the leader cannot either."""
        ...

    def status(self) -> ShardStatus: ...

    def stats(self) -> ShardStats: ...

    def learn_nodes(self, nodes: Mapping[str, NodeConfig]) -> None:
        """Where nodes listen (Raft addresses of this shard are derived from it)."""
        ...

    def voters(self) -> list[str]: ...

    async def add_voter(self, node_id: str) -> bool: ...

    async def remove_voter(self, node_id: str) -> bool: ...

    async def transfer_leadership(self, node_id: str | None) -> bool: ...

    def seconds_out_of_touch(self, now: float) -> float: ...

    async def snapshot_to(self, dest: Path) -> int: ...

    async def expire_due(self) -> None: ...

    def close(self) -> None: ...

    def drop(self) -> None: ...
