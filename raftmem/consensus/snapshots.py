"""Snapshots: pysyncobj's serializer hooks pack a RocksDB checkpoint off the loop,
and a received snapshot is staged off the loop before a short install."""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.node import TCPNode

from ..storage import SnapshotCorrupt, fsync_dir, fsync_file, remove_in_background
from .journal import DurableJournal

if TYPE_CHECKING:
    from .hooks import Hooks
    from .ticker import Ticker

log = logging.getLogger(__name__)


# The `slow_snapshot_disk` fault: extra seconds to stage each received snapshot.
SLOW_DISK_STAGE_S = 5.0
# The `torn_snapshot_transfer` fault: snapshots go out in chunks this small, and
# chunk number TORN_CHUNK of each group's first transfer is dropped: past the
# tar headers of the first file, in its data, so a tar reader misreads the next
# header and stops there silently, as a chunk lost at a million memories did.
TORN_TRANSFER_CHUNK_BYTES = 4096
TORN_CHUNK = 3
# A staged snapshot waits this long between checks for a compaction to finish.
STAGED_RETRY_S = 0.05
# After a failed compaction checkpoint (a full disk, too many open files), the
# next try waits this long rather than failing again on every tick.
CHECKPOINT_RETRY_S = 5.0
# The first byte of a log entry the state machine applies (pysyncobj's
# _COMMAND_TYPE.REGULAR); its no-ops and membership changes have others.
REGULAR_COMMAND = b"\x00"

# -- the state machine as the adapter sees it ----------------------------------
class Replica(Protocol):
    @property
    def applied_index(self) -> int: ...

    def apply(self, index: int, payload: bytes) -> Any: ...

    def create_checkpoint(self, directory: Path) -> None: ...

    def pack_checkpoint(self, directory: Path, path: Path, meta: bytes) -> None: ...

    def verify_snapshot(self, path: Path) -> None: ...

    def stage_snapshot(self, path: Path, verify: bool = True) -> Path: ...

    def install_staged(self, staged: Path, must_exist: bool = True) -> None: ...

    def read_snapshot_meta(self, path: Path) -> bytes: ...


def _discard(path: Path | None) -> None:
    if path is not None:
        remove_in_background(path)


def entry_to_json(entry: tuple[bytes, int, int]) -> list[Any]:
    return [base64.b64encode(bytes(entry[0])).decode(), entry[1], entry[2]]


def entry_from_json(data: list[Any]) -> tuple[bytes, int, int]:
    return (base64.b64decode(data[0]), int(data[1]), int(data[2]))


@dataclass
class _Receipt:
    """A snapshot whose last chunk arrived and is being staged off the loop."""

    node: Any
    message: dict[str, Any]
    deliver: Callable[[Any, Any], None]
    aborted: bool = False
    staged: Path | None = None
    meta: dict[str, Any] | None = None
    failed: bool = False


class Snapshots:
    """pysyncobj's serializer/deserializer/serializeChecker hooks, and the
    off-loop half of installing a snapshot received from the leader."""

    def __init__(self, replica: Replica, directory: Path, shard: int, ticker: Ticker) -> None:
        self.replica = replica
        self.directory = directory
        self.shard = shard
        self.ticker = ticker
        self.dump_path = directory / "raft.dump"
        self._state = SERIALIZER_STATE.NOT_SERIALIZING
        self._retry_after = 0.0  # after a failed checkpoint, compactions wait until then
        self._thread: threading.Thread | None = None
        self.obj: Any = None
        self.hooks: Hooks | None = None
        self.receipt: _Receipt | None = None
        self._ready: _Receipt | None = None  # staged, handed to pysyncobj, not yet installed
        self.closed = False
        # Received snapshots installed (staged off the loop, or inline), and those
        # refused because they did not match their manifest (sent again).
        self.installs = {"staged": 0, "inline": 0, "rejected": 0}
        self.stage_delay_s = 0.0  # fault injection: a slow disk under every install
        self.stage_inline = False  # negative control: the whole install on the loop
        self.tear_next_transfer = False  # fault injection: drop a chunk of the next transfer
        self._chunks_sent: dict[Any, int] = {}
        # Negative control only: install what arrived without checking it against
        # its manifest, and let RocksDB create an empty database where none is.
        self.verify = True

    def serialize(self, tmp_file: str, data: Any) -> None:
        last, prev, cluster = data
        if self.receipt is not None or self._ready is not None:
            # A received snapshot is about to replace the dump: a compaction of the
            # old state must not rename its older dump over it afterwards.
            self._state = SERIALIZER_STATE.FAILED
            return
        applied = self.replica.applied_index
        if applied != last[1] and not self._only_raft_entries(applied, last[1]):
            # pysyncobj compacts at its applied index, which counts its own entries
            # (a leader's no-op, membership changes) that the state machine never
            # sees: a state machine behind by those alone holds that same state.
            # Anything else would label a checkpoint with the wrong index: refuse.
            log.error(
                "shard %d: compaction at %d but applied index is %d; skipped",
                self.shard, last[1], applied,
            )
            self._state = SERIALIZER_STATE.FAILED
            return
        meta = orjson.dumps(
            {
                "last": entry_to_json(last),
                "prev": entry_to_json(prev),
                "cluster": sorted(getattr(n, "address", str(n)) for n in cluster),
                "applied": applied,  # the state machine's: what an install compares with
                "shard": self.shard,
            }
        )
        if time.monotonic() < self._retry_after:
            self._state = SERIALIZER_STATE.FAILED  # the last checkpoint failed: not on every tick
            return
        checkpoint = self.directory / "checkpoint.tmp"
        try:
            self.replica.create_checkpoint(checkpoint)
            self._state = SERIALIZER_STATE.SERIALIZING
            # pysyncobj renames `tmp_file` over the dump as soon as we return; we
            # write elsewhere and rename ourselves once the file is whole and
            # fsynced, so its rename finds nothing and the checker below reports
            # the real outcome.
            self._thread = threading.Thread(
                target=self._pack, args=(checkpoint, meta), name=f"snapshot-{self.shard}", daemon=True
            )
            self._thread.start()
        except Exception:
            # Raised to pysyncobj, this would leave its serializer waiting for an
            # outcome our checker never gives: no compaction of this shard again,
            # and its log held in memory without bound.
            log.exception("shard %d: compaction checkpoint failed; retrying in %.0f s", self.shard,
                          CHECKPOINT_RETRY_S)
            self._retry_after = time.monotonic() + CHECKPOINT_RETRY_S
            self._state = SERIALIZER_STATE.FAILED

    def _only_raft_entries(self, applied: int, last: int) -> bool:
        """Are the entries after `applied` up to `last` all pysyncobj's own (its
        command type byte is not REGULAR), so the state machine never saw them?"""
        assert self.hooks is not None, "wired at construction"
        journal = self.hooks.journal
        if applied > last or not len(journal) or applied + 1 < journal[0][1]:
            return False
        first = journal[0][1]
        return all(journal[i - first][0][:1] != REGULAR_COMMAND for i in range(applied + 1, last + 1))

    def _pack(self, checkpoint: Path, meta: bytes) -> None:
        packing = self.directory / "raft.dump.packing"
        try:
            self.replica.pack_checkpoint(checkpoint, packing, meta)
            os.replace(packing, self.dump_path)
            fsync_dir(self.directory)
            self._state = SERIALIZER_STATE.SUCCESS
        except Exception:
            log.exception("shard %d: snapshot packing failed", self.shard)
            self._state = SERIALIZER_STATE.FAILED

    def check(self) -> int:
        state = self._state
        if state in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
            self._state = SERIALIZER_STATE.NOT_SERIALIZING
        return int(state)

    def deserialize(self, file_name: str) -> tuple[Any, Any, Any]:
        # A dump received from the leader was renamed into place without fsync
        # (a no-op when it was staged: the stager fsynced it).
        fsync_file(file_name)
        fsync_dir(self.directory)
        meta = orjson.loads(self.replica.read_snapshot_meta(Path(file_name)))
        ready, self._ready = self._ready, None
        if self.replica.applied_index < meta["applied"]:
            log.info(
                "shard %d: installing snapshot at index %d (applied %d)",
                self.shard, meta["applied"], self.replica.applied_index,
                extra={"shard": self.shard, "index": meta["applied"]},
            )
            if ready is not None and ready.staged is not None and ready.meta == meta:
                self.replica.install_staged(ready.staged, must_exist=self.verify)
                ready.staged = None
                self.installs["staged"] += 1
            else:
                # At start-up (our own dump), or for the negative control of
                # staging: the whole install here.
                self.replica.install_staged(self._stage_files(Path(file_name)), must_exist=self.verify)
                self.installs["inline"] += 1
            if self.verify and self.replica.applied_index != meta["applied"]:
                # Invariant: a snapshot labelled at an index installs the state at it.
                raise SnapshotCorrupt(
                    f"shard {self.shard}: the snapshot labelled {meta['applied']} installed the state at "
                    f"{self.replica.applied_index}"
                )
        if ready is not None:
            _discard(ready.staged)
        # As nodes, not address strings: pysyncobj leaves itself out of the loaded
        # cluster with `node != selfNode`, which holds for every string, so a
        # replica that loaded a dump (at start, or installing a snapshot) counted
        # itself among its peers: a fourth voter in a group of three that never
        # answers, so every quorum needed all three real replicas (DESIGN.md).
        cluster = [TCPNode(address) for address in meta["cluster"]]
        return entry_from_json(meta["last"]), entry_from_json(meta["prev"]), cluster

    # -- receiving a snapshot: stage off the loop, install in one short step --------
    # pysyncobj writes the chunks of a snapshot into `raft.dump.1.tmp` as they
    # come; on the last one it renames the file over the dump and calls
    # `deserialize`, inside its message handler on the loop thread. Unpacking and
    # fsyncing a large snapshot there would stall every shard of the node (and
    # its HTTP API) for seconds, past election timeouts. So the last chunk is held
    # back: a thread fsyncs the received file and unpacks it into a staging
    # directory, then the chunk is handed to pysyncobj and `deserialize` only has
    # to rename the staged database into place. Meanwhile the leader's messages
    # are dropped (it re-sends what we do not acknowledge) but still count as a
    # sign of life, so this replica does not campaign; anything else (a vote, a
    # higher term, another sender) abandons the staging and lets pysyncobj go on.
    def intercept(self, node: Any, message: dict[str, Any], deliver: Callable[[Any, Any], None]) -> bool:
        """Called with every message before pysyncobj sees it: True if consumed."""
        receipt = self.receipt
        if receipt is not None:
            return self._while_staging(receipt, node, message)
        serialized = message.get("serialized") if message.get("type") == "append_entries" else None
        if not serialized or not serialized[2] or self.stage_inline:
            return False
        obj = self.obj
        incoming = obj._SyncObj__serializer._Serializer__incomingTransmissionFile
        if incoming is None:
            return False  # nothing received: pysyncobj ignores the chunk
        if message.get("term") != obj.raftCurrentTerm or obj._isLeader():
            # Not ours to stage: never let pysyncobj rename what arrived over the
            # dump unchecked. The leader sends again.
            self._drop_incoming()
            return False
        incoming.flush()
        self.receipt = receipt = _Receipt(node, message, deliver)
        received = Path(f"{self.dump_path}.1.tmp")  # pysyncobj's name for it
        threading.Thread(
            target=self._stage, args=(receipt, received), name=f"snapshot-stage-{self.shard}", daemon=True
        ).start()
        return True

    def _while_staging(self, receipt: _Receipt, node: Any, message: dict[str, Any]) -> bool:
        obj, hooks = self.obj, self.hooks
        assert hooks is not None, "wired at construction"
        kind, term = message.get("type"), message.get("term")
        now = time.monotonic()
        if kind == "append_entries" and node == receipt.node and term == obj.raftCurrentTerm:
            # Our leader, going on: a sign of life (no campaign, votes stay sticky),
            # answered the way pysyncobj answers a chunk, which keeps the leader's
            # view of us fresh (quorum, lease echo) and changes nothing else.
            hooks.heard_from_leader(node, message, now)
            obj._SyncObj__raftElectionDeadline = now + obj._SyncObj__generateRaftTimeout()
            hooks.transport.send(node, {
                "type": "next_node_idx", "next_node_idx": obj._SyncObj__getCurrentLogIndex() + 1,
                "reset": False, "success": False,
            })
            return True
        if (
            kind in ("rm_prevote", "rm_prevote_resp")  # no term change: the hooks answer them
            or (term is not None and term < obj.raftCurrentTerm)  # pysyncobj ignores these
            or (kind == "request_vote" and not message.get("rm_transfer") and hooks.sticky(now))
        ):
            return False
        log.info("shard %d: snapshot staging abandoned (%s from %s)", self.shard, kind, node)
        receipt.aborted = True
        self.receipt = None
        self._drop_incoming()  # a later last chunk must not install this file unstaged
        return False

    def _stage(self, receipt: _Receipt, received: Path) -> None:
        """On a thread of its own: touches files only, never the live database."""
        try:
            if self.closed:
                raise RuntimeError("replica closed")
            fsync_file(received)
            if self.verify:
                # Even when it will not be installed: pysyncobj keeps it as our dump.
                self.replica.verify_snapshot(received)
            meta = orjson.loads(self.replica.read_snapshot_meta(received))
            receipt.meta = meta
            if self.replica.applied_index < meta["applied"]:
                receipt.staged = self._stage_files(received, verified=True)
        except SnapshotCorrupt as e:
            if not receipt.aborted:  # an abandoned receipt's file may be rewritten under us
                log.warning("shard %d: a received snapshot is refused: %s", self.shard, e)
            receipt.failed = True
        except Exception:
            if not receipt.aborted:
                log.exception("shard %d: staging a received snapshot failed", self.shard)
            receipt.failed = True
        self.ticker.call_soon(lambda: self._staged(receipt))

    def _retry_staged(self, receipt: _Receipt) -> None:
        loop = self.ticker.loop
        assert loop is not None
        loop.call_later(STAGED_RETRY_S, self.ticker.call_soon, lambda: self._staged(receipt))

    def _stage_files(self, path: Path, verified: bool = False) -> Path:
        if self.stage_delay_s:
            time.sleep(self.stage_delay_s)
        return self.replica.stage_snapshot(path, verify=self.verify and not verified)

    def _staged(self, receipt: _Receipt) -> None:
        """Back on the loop thread, in a tick pass."""
        if self._state != SERIALIZER_STATE.NOT_SERIALIZING and not receipt.aborted and not self.closed:
            # A compaction started before the snapshot arrived is still packing (or
            # not yet reported to pysyncobj): install after it, so its dump can
            # never land over the new one.
            self._retry_staged(receipt)
            return
        if self.receipt is receipt:
            self.receipt = None
        obj = self.obj
        if (
            receipt.aborted or self.closed or obj._isLeader()
            or obj.raftCurrentTerm != receipt.message["term"]
        ):
            _discard(receipt.staged)
            return
        if receipt.failed:
            self._transfer_again(receipt)
            return
        self._ready = receipt
        try:
            receipt.deliver(receipt.node, receipt.message)
        finally:
            if self._ready is receipt:  # pysyncobj did not load it after all
                self._ready = None
                _discard(receipt.staged)

    def _transfer_again(self, receipt: _Receipt) -> None:
        """A received snapshot that could not be staged (torn in transit: chunks
        lost when the connection dropped or the leader changed mid-transfer, or
        stitched from two transfers) is never handed to pysyncobj, which would
        rename it over our dump and install it. Drop what arrived and ask the
        leader to send a snapshot again from its first chunk."""
        self.installs["rejected"] += 1
        obj, hooks = self.obj, self.hooks
        assert hooks is not None, "wired at construction"
        self._drop_incoming()
        hooks.transport.send(receipt.node, {
            "type": "next_node_idx", "next_node_idx": obj._SyncObj__getCurrentLogIndex() + 1,
            "reset": True, "success": False,
        })

    def _drop_incoming(self) -> None:
        """Forget the snapshot being received: pysyncobj then ignores chunks until
        the first of a new transfer, which it writes to a new file (the staging
        thread may still be reading the old one)."""
        serializer = self.obj._SyncObj__serializer
        incoming = serializer._Serializer__incomingTransmissionFile
        if incoming is not None:
            incoming.close()
            serializer._Serializer__incomingTransmissionFile = None
        Path(f"{self.dump_path}.1.tmp").unlink(missing_ok=True)

    # -- sending a snapshot -----------------------------------------------------
    def cancel_transfers(self) -> None:
        """On losing leadership: pysyncobj keeps a transfer's read position per
        follower across terms, so a leader elected again would go on from the
        middle of a snapshot the follower has long dropped."""
        self.obj._SyncObj__serializer._Serializer__transmissions.clear()
        self._chunks_sent.clear()

    def disconnected(self, node: Any) -> None:
        """The connection with `node` dropped, and with it whatever it still
        buffered: a transfer to it starts again from the first chunk, and one
        from it (our leader) that is not complete yet is forgotten."""
        obj = self.obj
        if obj is None:
            return  # still being built
        obj._SyncObj__serializer.cancelTransmisstion(node)
        self._chunks_sent.pop(node, None)
        if self.receipt is None and obj._SyncObj__raftLeader == node:
            self._drop_incoming()

    def arm_torn_transfer(self) -> None:
        self.tear_next_transfer = True
        self.obj._SyncObj__serializer._Serializer__transmissionBatchSize = TORN_TRANSFER_CHUNK_BYTES

    def drop_outgoing(self, node: Any, message: dict[str, Any]) -> bool:
        """The `torn_snapshot_transfer` fault: True for the message to drop (chunk
        TORN_CHUNK of the next transfer to `node`), as a connection that fails
        and comes back between two sends would lose it."""
        serialized = message.get("serialized")
        if not self.tear_next_transfer or not serialized:
            return False
        sent = 1 if serialized[1] else self._chunks_sent.get(node, 0) + 1
        self._chunks_sent[node] = sent
        if sent == TORN_CHUNK and not serialized[2]:
            self.tear_next_transfer = False
            log.warning("shard %d: fault: dropped chunk %d of a snapshot to %s", self.shard, sent, node)
            return True
        return False

    def recover_interrupted_compaction(self, journal: DurableJournal) -> None:
        """A crash after the dump was renamed into place but before the journal was
        compacted leaves a journal that still starts before the dump. pysyncobj
        would then clear the whole journal, committed tail included; finishing the
        compaction first keeps that tail."""
        if not self.dump_path.exists():
            return
        try:
            meta = orjson.loads(self.replica.read_snapshot_meta(self.dump_path))
        except Exception:
            # pysyncobj will fail to load it too and keep the journal as it is.
            log.exception("shard %d: unreadable snapshot %s", self.shard, self.dump_path)
            return
        prev = entry_from_json(meta["prev"])
        if len(journal) and journal[0][1] < prev[1] and journal.drop_before(prev[1], prev[2]):
            log.warning("shard %d: finished a compaction interrupted by a crash", self.shard)

