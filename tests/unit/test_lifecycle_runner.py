"""The leader's lifecycle run and the node's read notes, over a real state
machine and a manual clock: every replica's unsent reads are collected before
anything is selected (so a read served anywhere before the run protects a
memory), a voter that cannot hand them over defers the run, and a node's reads
go to the leader as one `Touch` per flush."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from raftmem.clock import ManualClock
from raftmem.commands import Command, Committed, TouchItem, encode_entry
from raftmem.config import parse
from raftmem.membership import Table
from raftmem.service import Call, ForwardNotSent, MemoryService, Reply
from raftmem.service.lifecycle import TouchBuffer
from raftmem.shard import MemoryReader, Served, ShardRole
from raftmem.statemachine import StateMachine

from .test_lifecycle import DAY_MS, NOW, put, sm_at

T = TypeVar("T")


# -- the leader's run: every replica's unsent reads first ---------------------------------------
class SMShard:
    """The Shard port over a real state machine (this node leads; submit applies at once)."""

    def __init__(self, sm: StateMachine, node: str) -> None:
        self.sm, self.node, self.shard = sm, node, sm.shard

    @property
    def applied_index(self) -> int:
        return self.sm.applied_index

    def role(self) -> ShardRole:
        return ShardRole(self.shard, True, self.node, 1, 0.0)

    def voters(self) -> list[str]:
        return ["n1", "n2", "n3"]

    async def submit(self, command: Command) -> Committed:
        applied = self.sm.apply(self.sm.applied_index + 1, encode_entry([command]))
        return Committed(applied.index, applied.results[0])

    async def read(self, level: str, fn: Callable[[MemoryReader], T], *, after: int = 0,
                   bound_ms: int = -1) -> tuple[T, Served]:
        return fn(self.sm), Served(level, f"0:{self.sm.applied_index}")


CONFIG = {
    "cluster": {"name": "t", "shards": 1, "nodes": [
        {"id": f"n{i}", "host": "127.0.0.1", "http_port": 18000 + i, "raft_port_base": 18100 + 10 * i}
        for i in (1, 2, 3)]},
    "lifecycle": {"policies": [{"name": "idle", "namespace": "ns", "not_accessed_for": "1d"}]},
}


class Peers:
    """Forwards a drain to the other nodes' services (or fails, for a voter that is down)."""

    def __init__(self) -> None:
        self.services: dict[str, MemoryService] = {}
        self.down: set[str] = set()

    async def forward(self, node_id: str, call: Call, timeout_s: float) -> Reply:
        if node_id in self.down:
            raise ForwardNotSent(f"{node_id} is down")
        assert call.path.endswith("/touches/drain"), call.path
        return await self.services[node_id].lifecycle.drain(0)

    def set_urls(self, urls: dict[str, str]) -> None: ...


def _nodes(tmp_path: Path) -> tuple[dict[str, MemoryService], SMShard, Peers, ManualClock]:
    config = parse(CONFIG)
    clock = ManualClock(wall_ms=NOW)
    peers = Peers()
    leader = SMShard(sm_at(tmp_path), "n1")
    for node in ("n1", "n2", "n3"):
        shards = {0: leader} if node == "n1" else {}
        peers.services[node] = MemoryService(config, node, shards, Table.seed(config), peers, clock)  # type: ignore[arg-type]
    return peers.services, leader, peers, clock


async def test_a_read_served_on_another_node_before_the_run_protects_the_memory(tmp_path: Path) -> None:
    services, leader, _peers, _clock = _nodes(tmp_path)
    await leader.submit(put("read-on-n2", NOW - 3 * DAY_MS))
    await leader.submit(put("cold", NOW - 3 * DAY_MS))
    rec = leader.sm.get("ns", "read-on-n2", NOW)
    services["n2"].lifecycle.saw(0, rec)  # served by n2's replica; its flush has not run yet
    report = await services["n1"].lifecycle.run_shard(leader, dry_run=False)
    assert report == {"idle": {"candidates": 1, "removed": 1}}
    assert leader.sm.get("ns", "read-on-n2", NOW)["access_count"] == 1
    assert leader.sm.get("ns", "cold", NOW) is None


async def test_control_a_run_that_skips_the_other_replicas_reads_prunes_a_memory_just_read(tmp_path: Path) -> None:
    services, leader, _peers, _clock = _nodes(tmp_path)
    await leader.submit(put("read-on-n2", NOW - 3 * DAY_MS))
    services["n2"].lifecycle.saw(0, leader.sm.get("ns", "read-on-n2", NOW))

    async def local_only(replica: Any) -> bool:
        return True

    services["n1"].lifecycle._collect_reads = local_only  # type: ignore[method-assign]
    await services["n1"].lifecycle.run_shard(leader, dry_run=False)
    assert leader.sm.get("ns", "read-on-n2", NOW) is None


async def test_a_voter_that_does_not_hand_over_its_reads_defers_the_run(tmp_path: Path) -> None:
    services, leader, peers, _clock = _nodes(tmp_path)
    await leader.submit(put("cold", NOW - 3 * DAY_MS))
    peers.down.add("n3")
    report = await services["n1"].lifecycle.run_shard(leader, dry_run=False)
    assert "deferred" in report["idle"]
    assert leader.sm.get("ns", "cold", NOW) is not None
    assert services["n1"].lifecycle.stats.policies["idle"].deferred == 1
    peers.down.clear()
    dry = await services["n1"].lifecycle.run_shard(leader, dry_run=True)
    assert dry == {"idle": {"candidates": 1, "sample": ["ns/cold"]}}
    assert leader.sm.get("ns", "cold", NOW) is not None  # a dry run removes nothing


async def test_reads_on_the_leader_are_flushed_as_one_touch_and_a_due_refresh_slides_the_ttl(tmp_path: Path) -> None:
    services, leader, _peers, clock = _nodes(tmp_path)
    await leader.submit(put("s", NOW, ttl_s=10, ttl_refresh_on_read=True))
    clock.advance(6)  # past half the TTL: the next read refreshes it
    for _ in range(3):
        services["n1"].lifecycle.saw(0, leader.sm.get("ns", "s", clock.wall_ms()))
    before = leader.sm.applied_index
    await services["n1"].lifecycle.flush_all()
    assert leader.sm.applied_index == before + 1  # three reads, one entry
    rec = leader.sm.get("ns", "s", clock.wall_ms())
    assert rec["access_count"] == 3 and rec["expires_at"] == clock.wall_ms() + 10_000


def test_the_touch_buffer_coalesces_and_is_bounded() -> None:
    buf = TouchBuffer(keys_max=2)
    buf.add(0, "ns", "a", 1, NOW, False)
    buf.add(0, "ns", "a", 1, NOW + 5, True)
    buf.add(1, "ns", "b", 1, NOW, False)
    buf.add(1, "ns", "c", 1, NOW, False)  # a third memory: dropped, counted
    assert (buf.count, buf.recorded, buf.dropped) == (2, 3, 1)
    assert buf.take(0) == [TouchItem("ns", "a", 2, NOW + 5, True)]
    buf.put_back(0, [TouchItem("ns", "a", 2, NOW + 5, True)])  # a failed flush keeps its reads
    assert buf.take(0) == [TouchItem("ns", "a", 2, NOW + 5, True)] and buf.recorded == 3
