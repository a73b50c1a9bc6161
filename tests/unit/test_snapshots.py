"""The snapshot hooks pysyncobj calls (raftmem.consensus.snapshots), against a real
journal and a fake state machine: what a compaction accepts, and the cluster a
loaded dump hands back."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.node import TCPNode

from raftmem.consensus.journal import DurableJournal
from raftmem.consensus.snapshots import Snapshots, entry_to_json

REGULAR, NO_OP = b"\x00", b"\x01"  # pysyncobj's command type bytes
SELF, PEERS = "127.0.0.1:7001", ["127.0.0.1:7002", "127.0.0.1:7003"]


class FakeReplica:
    def __init__(self, applied_index: int) -> None:
        self.applied_index = applied_index
        self.meta = b""

    def create_checkpoint(self, directory: Path) -> None:
        directory.mkdir()

    def pack_checkpoint(self, directory: Path, path: Path, meta: bytes) -> None:
        path.write_bytes(meta)

    def read_snapshot_meta(self, path: Path) -> bytes:
        return Path(path).read_bytes()


def _snapshots(tmp_path: Path, applied: int, kinds: list[bytes]) -> tuple[Snapshots, DurableJournal]:
    """A log of entries 1.. with the given command types, and a state machine at `applied`."""
    journal = DurableJournal(tmp_path / "raft.journal", fsync_enabled=False)
    for idx, kind in enumerate(kinds, start=1):
        journal.add(kind + b"payload", idx, 1)
    snapshots = Snapshots(FakeReplica(applied), tmp_path, 0, ticker=None)  # type: ignore[arg-type]
    snapshots.hooks = SimpleNamespace(journal=journal)  # type: ignore[assignment]
    return snapshots, journal


def _settled(check: Callable[[], int]) -> int:
    """Poll a compaction's outcome (its packing runs on a thread) until it is not SERIALIZING."""
    deadline = time.monotonic() + 10
    while (state := check()) == SERIALIZER_STATE.SERIALIZING and time.monotonic() < deadline:
        time.sleep(0.01)
    return int(state)


def _compact(snapshots: Snapshots, journal: DurableJournal) -> int:
    """pysyncobj's call at its applied index (the log's end here); the final state."""
    cluster = {TCPNode(a) for a in [SELF, *PEERS]}
    snapshots.serialize(str(snapshots.dump_path) + ".tmp", (journal[-1], journal[-2], cluster))
    return _settled(snapshots.check)


def test_compaction_over_trailing_noops_labels_the_state_machines_index(tmp_path: Path) -> None:
    """Elections append no-ops the state machine never sees; a compaction at
    pysyncobj's applied index behind them is the same state (2026-12-06: refused
    with an ERROR on every tick while the log held nothing newer)."""
    snapshots, journal = _snapshots(tmp_path, applied=3, kinds=[REGULAR, REGULAR, REGULAR, NO_OP, NO_OP])
    assert _compact(snapshots, journal) == SERIALIZER_STATE.SUCCESS
    meta = orjson.loads(snapshots.dump_path.read_bytes())
    assert meta["last"] == entry_to_json(journal[-1]) and meta["applied"] == 3


@pytest.mark.parametrize("applied", [2, 6], ids=["behind-a-regular-entry", "ahead"])
def test_compaction_refused_when_the_state_machine_is_not_at_that_state(tmp_path: Path, applied: int) -> None:
    snapshots, journal = _snapshots(tmp_path, applied=applied, kinds=[REGULAR, REGULAR, REGULAR, NO_OP, NO_OP])
    assert _compact(snapshots, journal) == SERIALIZER_STATE.FAILED
    assert not snapshots.dump_path.exists()


def test_a_loaded_dump_leaves_this_replica_out_of_its_peers(tmp_path: Path) -> None:
    """pysyncobj drops itself from a loaded dump's cluster with `node != selfNode`
    (`__updateClusterConfiguration`); an address string is never equal to a node,
    so the dump's cluster must come back as nodes, or this replica becomes a
    fourth voter of its own group that never answers."""
    snapshots, journal = _snapshots(tmp_path, applied=3, kinds=[REGULAR, REGULAR, REGULAR])
    assert _compact(snapshots, journal) == SERIALIZER_STATE.SUCCESS
    _last, _prev, cluster = snapshots.deserialize(str(snapshots.dump_path))
    self_node = TCPNode(SELF)
    peers: Any = [node for node in cluster if node != self_node]  # pysyncobj's own filter
    assert sorted(getattr(n, "address", n) for n in peers) == PEERS


class FailingOnce(FakeReplica):
    """A checkpoint that fails the first time (a full disk, too many open files)."""

    def __init__(self, applied_index: int) -> None:
        super().__init__(applied_index)
        self.calls = 0

    def create_checkpoint(self, directory: Path) -> None:
        self.calls += 1
        if self.calls == 1:
            raise OSError(28, "No space left on device")
        super().create_checkpoint(directory)


def test_a_failed_checkpoint_fails_the_compaction_and_a_later_one_runs(tmp_path: Path) -> None:
    """Through pysyncobj's own Serializer: an exception out of the hook left it
    waiting for an outcome the checker never gave, and it never called the
    hook again (no compaction of that shard, its log growing in memory)."""
    from pysyncobj.serializer import Serializer

    snapshots, journal = _snapshots(tmp_path, applied=3, kinds=[REGULAR, REGULAR, REGULAR])
    replica = FailingOnce(3)
    snapshots.replica = replica
    serializer = Serializer(str(snapshots.dump_path), 1 << 20, False, snapshots.serialize, None, snapshots.check)
    cluster = {TCPNode(a) for a in [SELF, *PEERS]}

    def attempt() -> int:
        serializer.serialize((None, journal[-1], journal[-2], cluster), journal[-1][1])
        return _settled(lambda: int(serializer.checkSerializing()[0]))

    assert attempt() == SERIALIZER_STATE.FAILED and replica.calls == 1
    assert attempt() == SERIALIZER_STATE.FAILED and replica.calls == 1  # backing off: not tried on every tick
    snapshots._retry_after = 0.0  # the back-off over
    assert attempt() == SERIALIZER_STATE.SUCCESS and replica.calls == 2
    assert orjson.loads(snapshots.dump_path.read_bytes())["applied"] == 3
