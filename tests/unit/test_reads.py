"""The read protocol (raftmem.reads), driven through the service with a fake
Shard and a manual clock: no Raft, no sockets, so each timing case is exact.
Each case comes with its control, the same read without the fault, served the
other way (so the assertions can fail)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

from raftmem.clock import ManualClock
from raftmem.commands import Command, Committed
from raftmem.config import NodeConfig, embedded_default
from raftmem.membership import Table
from raftmem.reads import SESSION_WAIT_S, Reads
from raftmem.routing import shard_for
from raftmem.service import Call, MemoryService, Reply
from raftmem.shard import ListQuery, MemoryReader, Served, ShardRole, ShardStats, ShardStatus

T = TypeVar("T")
NS, MID = "team-a", "m-1"
CONFIG = embedded_default()
SHARD = shard_for(NS, MID, CONFIG.shards)
LEASE_S = 0.36  # 400 ms min election timeout x (1 - 0.1 drift)


class FakeState:
    """The local state: one record, and a hook that runs on every read (a pause)."""

    def __init__(self, clock: ManualClock) -> None:
        self.clock = clock
        self.record = {"namespace": NS, "id": MID, "version": 3, "rev": 7, "tags": [], "created_at": 1}
        self.on_read: Callable[[], None] = lambda: None

    def get(self, ns: str, mid: str, now_ms: int) -> dict[str, Any] | None:
        self.on_read()
        return dict(self.record) if (ns, mid) == (NS, MID) else None

    def list(self, q: ListQuery, now_ms: int) -> list[dict[str, Any]]:
        return []

    def members_table(self) -> dict[str, Any] | None:
        return None


class FakeShard:
    """The Shard port, and the Raft facts its reads run over: settable, on a manual clock."""

    def __init__(self, clock: ManualClock, leading: bool) -> None:
        self.shard = SHARD
        self.clock = clock
        self.leading = leading
        self.term = 4
        self.commit = 9
        self.applied = 9
        self.lease_until = clock.monotonic() + LEASE_S
        self.staleness_s = 0.05
        self.leader_commit = 9
        self.read_index_calls = 0
        self.waits: list[tuple[int, float]] = []
        self.local_state = FakeState(clock)
        self.reads = Reads(self, self.local_state, clock, CONFIG.limits)

    # -- RaftFacts
    @property
    def applied_index(self) -> int:
        return self.applied

    @property
    def commit_index(self) -> int:
        return self.commit

    def is_leader(self) -> bool:
        return self.leading

    def lease_index(self, now: float) -> tuple[int, int] | None:
        return (self.commit, self.term) if self.leading and now < self.lease_until else None

    def lease_valid(self, term: int, now: float) -> bool:
        return term == self.term and now < self.lease_until

    async def read_index(self) -> int:
        self.read_index_calls += 1
        return self.commit

    async def wait_applied(self, index: int, timeout_s: float) -> bool:
        if self.applied >= index:
            return True
        self.waits.append((index, timeout_s))
        self.clock.advance(timeout_s)  # waited it out: nothing was applied
        return False

    def follower_freshness(self, now: float) -> tuple[float, int]:
        return (float("inf"), 0) if self.leading else (self.staleness_s, self.leader_commit)

    # -- Shard port
    @property
    def directory(self) -> Path:
        return Path("/nonexistent")

    def role(self) -> ShardRole:
        return ShardRole(self.shard, self.leading, "n1" if self.leading else "n2", self.term, 0.0)

    async def read(
        self, level: str, fn: Callable[[MemoryReader], T], *, after: int = 0, bound_ms: int = -1
    ) -> tuple[T, Served]:
        return await self.reads.read(level, fn, after, bound_ms)

    async def submit(self, command: Command) -> Committed:
        raise AssertionError("reads only")

    def status(self) -> ShardStatus:
        raise AssertionError("not needed")

    def stats(self) -> ShardStats:
        raise AssertionError("not needed")

    def learn_nodes(self, nodes: Mapping[str, NodeConfig]) -> None: ...

    def voters(self) -> list[str]:
        return ["n1", "n2", "n3"]

    async def add_voter(self, node_id: str) -> bool:
        return False

    async def remove_voter(self, node_id: str) -> bool:
        return False

    async def transfer_leadership(self, node_id: str | None) -> bool:
        return False

    def seconds_out_of_touch(self, now: float) -> float:
        return 0.0

    async def snapshot_to(self, dest: Path) -> int:
        return 0

    async def expire_due(self) -> None: ...

    def close(self) -> None: ...

    def drop(self) -> None: ...


class FakeForwarder:
    def __init__(self) -> None:
        self.forwarded: list[tuple[str, Call]] = []

    async def forward(self, node_id: str, call: Call, timeout_s: float) -> Reply:
        self.forwarded.append((node_id, call))
        return Reply(200, {"from": node_id}, {"X-Raftmem-Served-By": node_id})

    def set_urls(self, urls: dict[str, str]) -> None: ...


def _service(leading: bool) -> tuple[MemoryService, FakeShard, FakeForwarder, ManualClock]:
    clock = ManualClock()
    shard = FakeShard(clock, leading)
    forwarder = FakeForwarder()
    service = MemoryService(CONFIG, "n1", {SHARD: shard}, Table.seed(CONFIG), forwarder, clock)
    return service, shard, forwarder, clock


async def _get(service: MemoryService, **query: str) -> Reply:
    return await service.queries.get(NS, MID, Call("GET", f"/v1/memories/{NS}/{MID}", query))


async def test_a_lease_that_expires_during_the_read_falls_back_to_read_index() -> None:
    service, shard, _, clock = _service(leading=True)
    reads: list[float] = []

    def pause() -> None:
        reads.append(clock.monotonic())
        if len(reads) == 1:
            clock.advance(1.0)  # a GC pause or SIGSTOP between the lease check and the read

    shard.local_state.on_read = pause
    reply = await _get(service, consistency="strong")
    assert reply.status == 200
    assert reply.headers["X-Raftmem-Consistency"] == "linearizable"
    assert shard.read_index_calls == 1 and len(reads) == 2  # re-read after ReadIndex


async def test_control_a_lease_read_without_a_pause_is_served_under_the_lease() -> None:
    service, shard, _, _ = _service(leading=True)
    reply = await _get(service, consistency="strong")
    assert reply.headers["X-Raftmem-Consistency"] == "strong"
    assert shard.read_index_calls == 0 and shard.reads.lease_reads == 1


async def test_a_bounded_read_on_a_stale_follower_is_forwarded_to_the_leader() -> None:
    service, shard, forwarder, _ = _service(leading=False)
    shard.staleness_s = 2.0  # last heard from the leader 2 s ago
    reply = await _get(service, consistency="bounded", max_staleness_ms="500")
    assert [node for node, _ in forwarder.forwarded] == ["n2"]
    assert reply.headers["X-Raftmem-Served-By"] == "n2"


async def test_control_a_bounded_read_on_a_fresh_follower_is_served_there() -> None:
    service, shard, forwarder, _ = _service(leading=False)
    shard.staleness_s = 0.1
    reply = await _get(service, consistency="bounded", max_staleness_ms="500")
    assert forwarder.forwarded == []
    assert reply.headers["X-Raftmem-Consistency"] == "bounded"
    assert reply.headers["X-Raftmem-Staleness-Ms"] == "100"


async def test_a_bounded_read_waits_for_the_commit_index_it_learned() -> None:
    service, shard, forwarder, _ = _service(leading=False)
    shard.staleness_s, shard.leader_commit, shard.applied = 0.1, 12, 9  # fresh, not yet applied
    await _get(service, consistency="bounded", max_staleness_ms="500")
    assert shard.waits == [(12, pytest.approx(0.4))]  # the bound's remaining budget
    assert len(forwarder.forwarded) == 1


async def test_a_session_read_on_a_replica_behind_the_token_waits_then_goes_to_the_leader() -> None:
    service, shard, forwarder, clock = _service(leading=False)
    shard.applied = 5
    started = clock.monotonic()
    await _get(service, consistency="session", after=f"{SHARD}:9")
    assert shard.waits == [(9, SESSION_WAIT_S)]
    assert clock.monotonic() - started == pytest.approx(SESSION_WAIT_S)
    assert [node for node, _ in forwarder.forwarded] == ["n2"]


async def test_control_a_session_read_on_a_replica_that_applied_the_token_is_served_there() -> None:
    service, shard, forwarder, _ = _service(leading=False)
    shard.applied = 9
    reply = await _get(service, consistency="session", after=f"{SHARD}:9")
    assert shard.waits == [] and forwarder.forwarded == []
    assert reply.headers["X-Raftmem-Consistency"] == "session"


async def test_a_session_read_on_the_leader_is_served_from_its_applied_state() -> None:
    service, shard, forwarder, _ = _service(leading=True)
    reply = await _get(service, consistency="session", after=f"{SHARD}:9")
    assert reply.headers["X-Raftmem-Consistency"] == "session"
    assert shard.read_index_calls == 0 and shard.reads.lease_reads == 0 and forwarder.forwarded == []


async def test_a_session_read_on_a_leader_behind_the_token_confirms_with_read_index() -> None:
    """A token past this leader's commit index came from a later leader's term:
    this one may be deposed, so it confirms leadership (at once: no wait for a
    token it cannot commit) rather than answer from its own state."""
    service, shard, _, _ = _service(leading=True)
    shard.applied = shard.commit = 5  # (a real deposed leader's ReadIndex would fail)
    reply = await _get(service, consistency="session", after=f"{SHARD}:9")
    assert shard.waits == [] and shard.read_index_calls == 1
    assert reply.headers["X-Raftmem-Consistency"] == "linearizable"


async def test_the_record_tags_choose_the_level() -> None:
    service, shard, forwarder, _ = _service(leading=False)
    shard.local_state.record["tags"] = ["analytics"]  # policy: eventual
    reply = await _get(service)
    assert reply.headers["X-Raftmem-Consistency"] == "eventual" and forwarder.forwarded == []
    shard.local_state.record["tags"] = ["critical"]  # policy: linearizable, at the leader
    await _get(service)
    assert len(forwarder.forwarded) == 1


async def _get_with_context(service: MemoryService, context: str, **query: str) -> Reply:
    call = Call("GET", f"/v1/memories/{NS}/{MID}", query, {"X-Raftmem-Context": context})
    return await service.queries.get(NS, MID, call)


async def test_a_causal_read_on_a_replica_behind_the_context_waits_then_goes_to_the_leader() -> None:
    service, shard, forwarder, _ = _service(leading=False)
    shard.applied = 5
    other = (SHARD + 1) % CONFIG.shards
    await _get_with_context(service, f"{other}:99,{SHARD}:9", consistency="causal")
    assert shard.waits == [(9, SESSION_WAIT_S)]  # the key's shard's token, not the other shard's
    assert [node for node, _ in forwarder.forwarded] == ["n2"]


async def test_control_a_causal_read_on_a_replica_that_applied_the_context_is_served_there() -> None:
    service, shard, forwarder, _ = _service(leading=False)
    shard.applied = 9
    reply = await _get_with_context(service, f"{SHARD}:9", consistency="causal")
    assert shard.waits == [] and forwarder.forwarded == []
    assert reply.headers["X-Raftmem-Consistency"] == "causal"


async def test_the_later_of_after_and_the_context_is_waited_for() -> None:
    service, shard, _, _ = _service(leading=False)
    shard.applied = 5
    await _get_with_context(service, f"{SHARD}:7", consistency="read-your-writes", after=f"{SHARD}:9")
    assert shard.waits == [(9, SESSION_WAIT_S)]
