"""The ticker starts one log compaction at a time per node, the largest due
first (a compaction checkpoints RocksDB and rewrites the journal on the loop:
every shard at once stalled the loop past the leaders' step-down time). The
groups are stand-ins for the policy alone; tests/integration/test_durability.py
shows real groups compacting every shard on every node under it."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from raftmem.consensus.ticker import Ticker


class Group:
    def __init__(self, shard: int, size: int, due: bool = True) -> None:
        self.shard = shard
        self.journal = SimpleNamespace(bytes=size)
        self.due = due
        self.pending = False
        self.started = 0

    def compaction_due(self, now: float, bytes_max: int) -> bool:
        return self.due

    def start_compaction(self, now: float) -> None:
        self.started += 1
        self.pending, self.due = True, False

    def compaction_pending(self) -> bool:
        return self.pending


def _ticker(groups: list[Any]) -> Ticker:
    ticker = Ticker("always")
    ticker.groups = groups
    return ticker


def test_one_compaction_at_a_time_the_largest_first() -> None:
    small, large, middle = Group(0, 10), Group(1, 30), Group(2, 20)
    ticker = _ticker([small, large, middle])
    ticker._compact_one(0.0)
    assert [g.started for g in (small, large, middle)] == [0, 1, 0]
    ticker._compact_one(0.1)  # the first still packing: nobody else starts
    assert [g.started for g in (small, large, middle)] == [0, 1, 0]
    large.pending = False
    ticker._compact_one(0.2)
    assert [g.started for g in (small, large, middle)] == [0, 1, 1]
    middle.pending = False
    ticker._compact_one(0.3)
    assert [g.started for g in (small, large, middle)] == [1, 1, 1]


def test_a_group_removed_while_compacting_frees_the_turn() -> None:
    first, second = Group(0, 30), Group(1, 20)
    ticker = _ticker([first, second])
    ticker._compact_one(0.0)
    assert first.started == 1
    ticker.groups = [second]  # dropped from this node mid-compaction
    ticker._compact_one(0.1)
    assert second.started == 1


def test_nothing_due_starts_nothing() -> None:
    idle = Group(0, 99, due=False)
    ticker = _ticker([idle])
    ticker._compact_one(0.0)
    assert idle.started == 0
