"""The one module that uses pysyncobj (pinned to exactly 0.3.17).

Narrow interface: `RaftGroup.propose`, `is_leader`, `leader`, `status`, plus a
`Ticker` that drives every group of the process from one thread over one shared
poller. Everything below reaches into pysyncobj's private seams, so it is all
here and checked against one version only (see DESIGN.md in this folder):

- `createJournal` is replaced so pysyncobj writes our `DurableJournal`
  (fsync, atomic term/vote, crash-safe compaction) instead of its mmap journal.
- `createPoller` is replaced so all groups share one poller: one thread can wait
  on every Raft socket of the process at once.
- A `TCPTransport` subclass defers every outgoing message of a tick until the
  journals written in that tick are fsynced (group commit: one parallel round of
  fsyncs covers all shards). So a follower never acknowledges, and a leader never
  ships, an entry that is not durable on its own disk. It also refuses
  pysyncobj's admin ("utility") commands on Raft ports, which would otherwise be
  accepted from any connection.
- The snapshot serializer hooks pack a RocksDB checkpoint (taken on the tick
  thread, so it is exactly the state at the applied index) in a background
  thread, and restore it on install.
"""

from __future__ import annotations

import base64
import logging
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
import pysyncobj
import pysyncobj.syncobj as _so
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON, SERIALIZER_STATE
from pysyncobj.transport import TCPTransport

from .config import RaftConfig
from .raftlog import DurableJournal
from .storage import fsync_dir, fsync_file

log = logging.getLogger(__name__)

PYSYNCOBJ_VERSION = "0.3.17"
if getattr(pysyncobj, "__version__", None) not in (None, PYSYNCOBJ_VERSION):
    raise ImportError(f"raftmem needs pysyncobj=={PYSYNCOBJ_VERSION}, found {pysyncobj.__version__}")
if _so.VERSION != PYSYNCOBJ_VERSION:
    raise ImportError(f"raftmem needs pysyncobj=={PYSYNCOBJ_VERSION}, found {_so.VERSION}")

# Outcome of a proposal, from the proposer's point of view.
OK = "ok"
REJECTED = "rejected"  # certainly not in the log: safe to retry
UNKNOWN = "unknown"  # may or may not commit: report as indeterminate

_FAIL_OUTCOME = {
    FAIL_REASON.QUEUE_FULL: REJECTED,
    FAIL_REASON.MISSING_LEADER: REJECTED,
    FAIL_REASON.NOT_LEADER: REJECTED,
    FAIL_REASON.REQUEST_DENIED: REJECTED,
    # DISCARDED: another entry was committed at this index, so ours never will be.
    FAIL_REASON.DISCARDED: REJECTED,
    FAIL_REASON.LEADER_CHANGED: UNKNOWN,
    FAIL_REASON.UNKNOWN_OUTCOME: UNKNOWN,
}

# -- construction-time hooks into pysyncobj ------------------------------------
_building = threading.local()
_orig_create_journal = _so.createJournal
_orig_create_poller = _so.createPoller


def _create_journal(journal_file: str | None = None) -> Any:
    journal = getattr(_building, "journal", None)
    return journal if journal is not None else _orig_create_journal(journal_file)


def _create_poller(poller_type: str) -> Any:
    poller = getattr(_building, "poller", None)
    return poller if poller is not None else _orig_create_poller(poller_type)


_so.createJournal = _create_journal
_so.createPoller = _create_poller


class _Transport(TCPTransport):  # type: ignore[misc]
    """Holds back every message until the owning ticker has fsynced the journals
    (see module docstring); refuses pysyncobj utility commands."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:  # noqa: N803
        self.outbox: list[tuple[Any, Any]] = []
        self.defer = bool(getattr(_building, "defer_sends", False))
        super().__init__(syncObj, selfNode, otherNodes)

    def send(self, node: Any, message: Any) -> bool:
        if self.defer:
            self.outbox.append((node, message))
            return True
        return bool(super().send(node, message))

    def flush_outbox(self) -> None:
        outbox, self.outbox = self.outbox, []
        for node, message in outbox:
            super().send(node, message)

    def _onUtilityMessage(self, conn: Any, message: Any) -> bool:  # noqa: N802
        log.warning("refused a pysyncobj admin command on a Raft port: %r", message[:1])
        conn.disconnect()
        return True


# -- the state machine as the adapter sees it ----------------------------------
class Replica(Protocol):
    applied_index: int

    def apply(self, index: int, payload: bytes) -> Any: ...

    def create_checkpoint(self, directory: Path) -> None: ...

    def pack_checkpoint(self, directory: Path, path: Path, meta: bytes) -> None: ...

    def install_snapshot(self, path: Path) -> None: ...

    def read_snapshot_meta(self, path: Path) -> bytes: ...


def _entry_to_json(entry: tuple[bytes, int, int]) -> list[Any]:
    return [base64.b64encode(bytes(entry[0])).decode(), entry[1], entry[2]]


def _entry_from_json(data: list[Any]) -> tuple[bytes, int, int]:
    return (base64.b64decode(data[0]), int(data[1]), int(data[2]))


class _Snapshots:
    """pysyncobj's serializer/deserializer/serializeChecker hooks."""

    def __init__(self, replica: Replica, directory: Path, shard: int) -> None:
        self.replica = replica
        self.directory = directory
        self.shard = shard
        self.dump_path = directory / "raft.dump"
        self._state = SERIALIZER_STATE.NOT_SERIALIZING
        self._thread: threading.Thread | None = None

    def serialize(self, tmp_file: str, data: Any) -> None:
        last, prev, cluster = data
        if self.replica.applied_index != last[1]:
            # Cannot happen while apply and compaction share the tick thread; if it
            # ever does, refuse rather than label a checkpoint with the wrong index.
            log.error(
                "shard %d: compaction at %d but applied index is %d; skipped",
                self.shard, last[1], self.replica.applied_index,
            )
            self._state = SERIALIZER_STATE.FAILED
            return
        meta = orjson.dumps(
            {
                "last": _entry_to_json(last),
                "prev": _entry_to_json(prev),
                "cluster": sorted(getattr(n, "address", str(n)) for n in cluster),
                "applied": last[1],
                "shard": self.shard,
            }
        )
        checkpoint = self.directory / "checkpoint.tmp"
        self.replica.create_checkpoint(checkpoint)
        self._state = SERIALIZER_STATE.SERIALIZING
        # pysyncobj renames `tmp_file` over the dump as soon as we return; we write
        # elsewhere and rename ourselves once the file is whole and fsynced, so its
        # rename finds nothing and the checker below reports the real outcome.
        self._thread = threading.Thread(
            target=self._pack, args=(checkpoint, meta), name=f"snapshot-{self.shard}", daemon=True
        )
        self._thread.start()

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
        return state

    def deserialize(self, file_name: str) -> tuple[Any, Any, Any]:
        # A dump received from the leader was renamed into place without fsync.
        fsync_file(file_name)
        fsync_dir(self.directory)
        meta = orjson.loads(self.replica.read_snapshot_meta(Path(file_name)))
        if self.replica.applied_index < meta["applied"]:
            log.info(
                "shard %d: installing snapshot at index %d (applied %d)",
                self.shard, meta["applied"], self.replica.applied_index,
            )
            self.replica.install_snapshot(Path(file_name))
        return _entry_from_json(meta["last"]), _entry_from_json(meta["prev"]), meta["cluster"]

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
        prev = _entry_from_json(meta["prev"])
        if len(journal) and journal[0][1] < prev[1] and journal.drop_before(prev[1], prev[2]):
            log.warning("shard %d: finished a compaction interrupted by a crash", self.shard)


class _ShardSyncObj(SyncObj):  # type: ignore[misc]
    def __init__(self, apply_fn: Callable[[int, bytes], Any], *args: Any, **kwargs: Any) -> None:
        self._raftmem_apply = apply_fn
        super().__init__(*args, **kwargs)

    @replicated
    def apply_entry(self, payload: bytes) -> Any:
        # pysyncobj applies entry N while raftLastApplied is N - 1.
        return self._raftmem_apply(self.raftLastApplied + 1, payload)


@dataclass
class GroupSpec:
    shard: int
    self_address: str
    peer_addresses: list[str]
    directory: Path
    raft: RaftConfig
    address_to_node: dict[str, str] = field(default_factory=dict)
    # Negative control only: step down as late as pysyncobj's default (30 s), the
    # way a naive store would, so that unsafe local reads are visibly stale.
    naive_step_down: bool = False


class RaftGroup:
    """One shard replica's Raft membership."""

    def __init__(self, spec: GroupSpec, replica: Replica, ticker: Ticker) -> None:
        self.spec = spec
        self.shard = spec.shard
        self.replica = replica
        self.ticker = ticker
        spec.directory.mkdir(parents=True, exist_ok=True)
        raft = spec.raft
        self.journal = DurableJournal(spec.directory / "raft.journal", fsync_enabled=raft.fsync != "never")
        self.snapshots = _Snapshots(replica, spec.directory, spec.shard)
        self.snapshots.recover_interrupted_compaction(self.journal)
        self.leader_changes = 0
        conf = SyncObjConf(
            autoTick=False,
            bindAddress=spec.self_address,
            raftMinTimeout=raft.election_timeout_ms_min / 1000.0,
            raftMaxTimeout=raft.election_timeout_ms_max / 1000.0,
            appendEntriesPeriod=raft.append_entries_period_ms / 1000.0,
            leaderFallbackTimeout=30.0 if spec.naive_step_down else raft.leader_fallback_timeout_s,
            connectionTimeout=max(3.5, raft.election_timeout_ms_max / 1000.0 * 2),
            connectionRetryTime=0.3,
            appendEntriesUseBatch=True,
            journalFile=str(spec.directory / "raft.journal"),
            fullDumpFile=str(self.snapshots.dump_path),
            serializer=self.snapshots.serialize,
            deserializer=self.snapshots.deserialize,
            serializeChecker=self.snapshots.check,
            logCompactionMinEntries=raft.log_compaction_entries,
            logCompactionMinTime=raft.log_compaction_min_s,
            maxBindRetries=5,
            bindRetryTime=0.2,
            password=raft.password,
            onStateChanged=self._on_state_changed,
            commandsWaitLeader=False,
            dynamicMembershipChange=True,
        )
        _building.journal = self.journal
        _building.poller = ticker.poller
        _building.defer_sends = raft.fsync == "always"
        try:
            self._obj = _ShardSyncObj(
                self._apply, spec.self_address, spec.peer_addresses, conf, transportClass=_Transport
            )
        finally:
            _building.journal = None
            _building.poller = None
            _building.defer_sends = False
        self._transport: _Transport = self._obj._SyncObj__transport
        ticker.add(self)

    def _on_state_changed(self, old: int, new: int) -> None:
        self.leader_changes += 1
        log.info(
            "shard %d: raft state %d -> %d at term %d", self.shard, old, new, self._obj.raftCurrentTerm
        )

    def _apply(self, index: int, payload: bytes) -> Any:
        assert index <= self._obj.raftCommitIndex, (index, self._obj.raftCommitIndex)
        if self.journal.dirty and self._obj._isLeader():
            # A lone replica commits without any follower: make its own log
            # durable before the state (and the client) can see the entry.
            self.journal.sync()
        return self.replica.apply(index, payload)

    # -- the narrow interface ----------------------------------------------------
    def propose(self, payload: bytes, on_done: Callable[[str, Any], None]) -> None:
        """Append `payload` to the log. `on_done(outcome, result)` runs on the tick
        thread with OK and the apply result, REJECTED, or UNKNOWN."""

        def callback(result: Any, error: int) -> None:
            if error == FAIL_REASON.SUCCESS:
                on_done(OK, result)
            else:
                on_done(_FAIL_OUTCOME.get(error, UNKNOWN), error)

        self._obj.apply_entry(payload, callback=callback)
        self.ticker.wake()

    def is_leader(self) -> bool:
        return bool(self._obj._isLeader())

    def leader_node(self) -> str | None:
        leader = self._obj._getLeader()
        if leader is None:
            return None
        return self.spec.address_to_node.get(getattr(leader, "address", str(leader)))

    @property
    def term(self) -> int:
        return int(self._obj.raftCurrentTerm)

    @property
    def commit_index(self) -> int:
        return int(self._obj.raftCommitIndex)

    @property
    def last_applied(self) -> int:
        return int(self._obj.raftLastApplied)

    def status(self) -> dict[str, Any]:
        """A consistent view, taken between ticks."""
        with self.ticker.lock:
            obj = self._obj
            match = dict(obj._SyncObj__raftMatchIndex) if obj._isLeader() else {}
            status = {
                "shard": self.shard,
                "role": "leader" if obj._isLeader() else "follower",
                "leader": self.leader_node(),
                "term": obj.raftCurrentTerm,
                "commit_index": obj.raftCommitIndex,
                "applied_index": self.replica.applied_index,
                "log_entries": len(self.journal),
                "log_bytes": self.journal.bytes,
                "log_first_index": self.journal[0][1] if len(self.journal) else None,
                "journal_syncs": self.journal.syncs,
                "leader_changes": self.leader_changes,
                "has_quorum": bool(obj.hasQuorum),
            }
            if match:
                status["match_index"] = {
                    self.spec.address_to_node.get(n.address, n.address): i for n, i in match.items()
                }
        return status

    def force_compaction(self) -> None:
        with self.ticker.lock:
            self._obj.forceLogCompaction()

    def transfer_leadership(self, node_address: str | None, on_done: Callable[[bool], None]) -> None:
        def run() -> None:
            self._obj.transferLeadership(
                node_address, callback=lambda _r, err: on_done(err == FAIL_REASON.SUCCESS)
            )

        self.ticker.call_soon(run)

    def tick(self) -> None:
        self._obj.doTick(0.0)

    def destroy(self) -> None:
        with self.ticker.lock:
            self._obj._doDestroy()


class Ticker:
    """Drives every Raft group of the process from one thread (pysyncobj with
    autoTick=False), over one shared poller, with group-commit fsync rounds."""

    IDLE_POLL_S = 0.005
    # Compact a log early when it holds this many bytes, whatever its entry count.
    LOG_BYTES_COMPACT = 64 * 1024 * 1024

    def __init__(self, fsync: str, fsync_batch_ms: int = 10) -> None:
        self.poller = _orig_create_poller("auto")
        self.fsync = fsync
        self.fsync_batch_s = fsync_batch_ms / 1000.0
        self.groups: list[RaftGroup] = []
        self.lock = threading.RLock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="fsync")
        self._calls: list[Callable[[], None]] = []
        self._last_sync = time.monotonic()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._woken = False
        self.poller.subscribe(self._wake_r, self._on_wake, 1)
        self.tick_errors = 0

    def add(self, group: RaftGroup) -> None:
        with self.lock:
            self.groups.append(group)

    def wake(self) -> None:
        if not self._woken:
            self._woken = True
            try:
                os.write(self._wake_w, b"x")
            except BlockingIOError:
                pass

    def _on_wake(self, _fd: int, _event: int) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        self._woken = False

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the tick thread (pysyncobj state is not thread-safe)."""
        with self.lock:
            self._calls.append(fn)
        self.wake()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="raft-ticker", daemon=True)
        self._thread.start()

    def _sync_journals(self) -> None:
        dirty = [g.journal for g in self.groups if g.journal.dirty]
        if len(dirty) == 1:
            dirty[0].sync()
        elif dirty:
            list(self._pool.map(DurableJournal.sync, dirty))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poller.poll(self.IDLE_POLL_S)
                with self.lock:
                    calls, self._calls = self._calls, []
                    for fn in calls:
                        fn()
                    for group in self.groups:
                        group.tick()
                        if group.journal.bytes > self.LOG_BYTES_COMPACT:
                            group._obj.forceLogCompaction()
                    now = time.monotonic()
                    if self.fsync == "always" or (
                        self.fsync == "batch" and now - self._last_sync >= self.fsync_batch_s
                    ):
                        self._sync_journals()
                        self._last_sync = now
                    for group in self.groups:
                        group._transport.flush_outbox()
            except Exception:
                # pysyncobj retries a failing apply on the next tick (e.g. disk full):
                # count it, log it, and go on rather than kill every shard.
                self.tick_errors += 1
                log.exception("raft tick failed")
                self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self.lock:
            for group in self.groups:
                try:
                    group._obj._doDestroy()
                except Exception:
                    log.exception("shard %d: destroy failed", group.shard)
        self._pool.shutdown(wait=True)
        os.close(self._wake_r)
        os.close(self._wake_w)
