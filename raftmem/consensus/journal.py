"""A durable Raft journal, duck-typed to pysyncobj's `Journal` interface.

Why not pysyncobj's FileJournal: it is an mmap that is never flushed while the
process runs, its term/vote file is renamed without fsync, and its compaction
(`deleteEntriesTo`) rewrites the file in place: a crash half way through loses
the entries after the crash point, committed ones included.

Here:
- The log file is a header then records `[len u32][crc32 u32][idx u64][term u64][command]`.
  Appends are plain writes; `sync()` fsyncs them (the adapter groups the syncs of
  all shards and sends no acknowledgement before them). At load, a torn or
  corrupt tail record (a crash during a write) is cut off.
- Term and vote are written to a meta file atomically and fsynced before the
  caller sends any message that reflects them (Raft section 5.1).
- Compaction and clear write a new file, fsync it, rename it over the old one
  and fsync the directory: at any crash point the old or the new log exists whole.

This module imports nothing from pysyncobj; the adapter hands it to pysyncobj.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from ..storage import fsync_dir, write_file_atomically

log = logging.getLogger(__name__)

COMMIT_HINT_PERIOD_S = 10.0

MAGIC = b"RMJRNL01"
# Exit status of a node stopped by a failed journal fsync (sysexits' EX_IOERR).
FSYNC_FAILED_EXIT = 74
_REC_HEAD = struct.Struct("<II")
_REC_IDX = struct.Struct("<QQ")

Entry = tuple[bytes, int, int]


def _encode(command: bytes, idx: int, term: int) -> bytes:
    payload = _REC_IDX.pack(idx, term) + command
    return _REC_HEAD.pack(len(payload), zlib.crc32(payload)) + payload


def stop_the_process(path: Path, error: OSError) -> None:
    """What a failed fsync does to a node, as in etcd and PostgreSQL: after one,
    Linux may have marked the unwritten pages clean, so a retry that succeeds
    proves nothing and nothing written since the last good fsync can be
    trusted. Stop at once; a restart reloads the journal from what is on disk."""
    log.critical("%s: fsync failed (%s): stopping the node; entries written since the last good fsync "
                 "may not be on disk", path, error)
    logging.shutdown()
    os._exit(FSYNC_FAILED_EXIT)


# Journal fsyncs are timed into these buckets (seconds; raftmem_raft_fsync_seconds).
FSYNC_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
# An fsync slower than this is logged (at most once a second a node): it holds
# the replica's acknowledgements, and a leader steps down after
# 0.75 × raft.election_timeout_ms_min (300 ms by default) without a quorum's.
SLOW_FSYNC_S = 0.2


class SyncTimes:
    """How long the node's journal fsyncs took: a histogram's bucket counts,
    sum and count, read by the metrics (from the fsync thread and the loop)."""

    def __init__(self, buckets: tuple[float, ...] = FSYNC_BUCKETS_S) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last: above every bucket
        self.sum_s = 0.0
        self.count = 0
        self.slowest_s = 0.0
        self._lock = threading.Lock()
        self._warned = 0.0

    def observe(self, seconds: float) -> None:
        with self._lock:
            self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
            self.sum_s += seconds
            self.count += 1
            self.slowest_s = max(self.slowest_s, seconds)
        now = time.monotonic()
        if seconds > SLOW_FSYNC_S and now - self._warned > 1.0:
            self._warned = now
            log.warning("a journal fsync took %.0f ms (a leader steps down after 0.75 x raft.election_timeout_ms_min without a "
                        "quorum's acknowledgements, which wait for their fsyncs)", seconds * 1000)

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative (upper bound, count) pairs, "+Inf" last, and the sum."""
        with self._lock:
            counts, total = list(self.counts), self.sum_s
        out, running = [], 0
        for bound, n in zip([*map(str, self.buckets), "+Inf"], counts, strict=True):
            running += n
            out.append((bound, running))
        return out, total


class DurableJournal:
    def __init__(self, path: str | Path, fsync_enabled: bool = True) -> None:
        self.path = Path(path)
        self.meta_path = self.path.with_name(self.path.name + ".meta")  # term, vote: fsynced
        self.commit_path = self.path.with_name(self.path.name + ".commit")  # a hint: not fsynced
        self.fsync_enabled = fsync_enabled
        self._entries: list[Entry] = []
        self._offsets: list[int] = []  # file offset of each entry's record
        self.bytes = 0  # payload bytes held, to trigger compaction by size
        # Mutations appended vs made durable; `sync` may run on another thread
        # (the ticker's fsync thread) while the loop thread appends.
        self.appended_seq = 0
        self.synced_seq = 0
        # The last index of the longest prefix of the log known to be on disk: a
        # leader counts itself towards a commit only up to here.
        self.durable_index = 0
        self._fd_lock = threading.Lock()  # sync vs rewrite (the fd is replaced)
        self._durable_lock = threading.Lock()  # sync's bookkeeping vs truncation; never held across I/O
        self._truncations = 0
        # A failed fdatasync poisons the journal: every later sync raises it.
        self.fsync_error: OSError | None = None
        self.observe_sync: Callable[[float], None] | None = None  # each fdatasync's seconds (SyncTimes)
        self.on_fsync_error: Callable[[Path, OSError], None] = stop_the_process
        self.syncs = 0
        self._meta: dict[str, Any] = self._load_meta()
        self._commit = self._load_commit()
        self._commit_saved = self._commit
        self._commit_saved_at = time.monotonic()
        self._fd = self._open_and_load()

    # -- loading ---------------------------------------------------------------
    def _load_meta(self) -> dict[str, Any]:
        try:
            return dict(orjson.loads(self.meta_path.read_bytes()))
        except FileNotFoundError:
            return {}

    def _load_commit(self) -> int:
        try:
            return int(self.commit_path.read_text().strip() or 1)
        except (FileNotFoundError, ValueError):
            return 1  # lost or torn: Raft learns the commit index again

    def _open_and_load(self) -> int:
        if not self.path.exists():
            self._write_whole([])
        fd = os.open(str(self.path), os.O_RDWR)
        data = b""
        with open(self.path, "rb") as f:
            data = f.read()
        if data[: len(MAGIC)] != MAGIC:
            raise ValueError(f"{self.path}: not a raftmem journal")
        pos = len(MAGIC)
        while pos + _REC_HEAD.size <= len(data):
            length, crc = _REC_HEAD.unpack_from(data, pos)
            start = pos + _REC_HEAD.size
            payload = data[start : start + length]
            if length < _REC_IDX.size or len(payload) != length or zlib.crc32(payload) != crc:
                break  # torn write at the tail: everything after is not durable
            idx, term = _REC_IDX.unpack_from(payload)
            self._entries.append((payload[_REC_IDX.size :], idx, term))
            self._offsets.append(pos)
            self.bytes += length
            pos = start + length
        if pos != len(data):
            os.ftruncate(fd, pos)
        if self.fsync_enabled or pos != len(data):
            # After a process crash the file may hold records the OS has not
            # written back yet; they count as durable only once synced.
            os.fsync(fd)
        os.lseek(fd, pos, os.SEEK_SET)
        self._end = pos
        self.durable_index = self.last_index()
        return fd

    def last_index(self) -> int:
        """The index of the last entry held (0 when none)."""
        return self._entries[-1][1] if self._entries else 0

    def _write_whole(self, entries: list[Entry]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            for command, idx, term in entries:
                f.write(_encode(command, idx, term))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)

    def _rewrite(self, entries: list[Entry]) -> None:
        with self._fd_lock:
            os.close(self._fd)
            self._write_whole(entries)  # fsynced: everything in it is durable
            self._entries, self._offsets, self.bytes = [], [], 0
            self._fd = self._open_and_load()
            self.appended_seq += 1
            self.synced_seq = self.appended_seq

    # -- pysyncobj Journal interface ------------------------------------------
    def add(self, command: bytes, idx: int, term: int) -> None:
        if self._entries:
            assert idx == self._entries[-1][1] + 1, (idx, self._entries[-1][1])
        rec = _encode(bytes(command), idx, term)
        try:
            written = 0
            while written < len(rec):  # a short write (disk filling up) is not a write
                written += os.write(self._fd, rec[written:])
        except OSError:
            # Disk full or failing: cut the partial record so the file stays a
            # sequence of whole records, and let the caller see the failure.
            os.ftruncate(self._fd, self._end)
            os.lseek(self._fd, self._end, os.SEEK_SET)
            raise
        self._entries.append((bytes(command), idx, term))
        self._offsets.append(self._end)
        self._end += len(rec)
        self.bytes += len(rec) - _REC_HEAD.size
        self.appended_seq += 1

    def clear(self) -> None:
        self._rewrite([])

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802 (pysyncobj's name)
        if entryFrom >= len(self._entries):
            return
        # Not under the fd lock (a sync in progress would stall the event loop
        # for a whole fdatasync): a sync that began before this cut sees the
        # truncation count change and does not raise durable_index.
        with self._durable_lock:
            cut = self._offsets[entryFrom]
            for command, _, _ in self._entries[entryFrom:]:
                self.bytes -= len(command) + _REC_IDX.size
            del self._entries[entryFrom:]
            del self._offsets[entryFrom:]
            os.ftruncate(self._fd, cut)
            os.lseek(self._fd, cut, os.SEEK_SET)
            self._end = cut
            self.durable_index = min(self.durable_index, self.last_index())
            self._truncations += 1
            self.appended_seq += 1

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802
        self._rewrite(self._entries[entryTo:])

    def __getitem__(self, item: Any) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def _destroy(self) -> None:
        self.sync()
        self._save_commit()
        with self._fd_lock:
            os.close(self._fd)

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802
        self._commit = raftCommitIndex

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return self._commit

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:  # noqa: N802
        if self._meta.get("term") == term and self._meta.get("vote") == votedForNodeId:
            return
        self._meta["term"] = term
        self._meta["vote"] = votedForNodeId
        write_file_atomically(self.meta_path, orjson.dumps(self._meta))

    def getCurrentTerm(self) -> int:  # noqa: N802
        return int(self._meta.get("term", 0))

    def getVotedForNodeId(self) -> Any:  # noqa: N802
        return self._meta.get("vote")

    def onOneSecondTimer(self) -> None:  # noqa: N802
        # Every COMMIT_HINT_PERIOD_S, not every second: under write load the
        # rename of a shard's hint file cost the loop ~4 % of its time (8 shards,
        # ~5 ms each on this machine), and the hint only speeds up a restart.
        now = time.monotonic()
        if now - self._commit_saved_at >= COMMIT_HINT_PERIOD_S:
            self._commit_saved_at = now
            self._save_commit()

    # -- raftmem additions -----------------------------------------------------
    def _save_commit(self) -> None:
        # The commit index is a hint (Raft recomputes it): saved lazily, in its
        # own file, without fsync.
        if self._commit != self._commit_saved:
            write_file_atomically(self.commit_path, f"{self._commit}\n".encode(), durable=False)
            self._commit_saved = self._commit

    @property
    def dirty(self) -> bool:
        return self.appended_seq != self.synced_seq

    def sync(self) -> None:
        """Make every appended entry durable (a no-op when nothing is new).
        Thread-safe against appends on the loop thread."""
        took_s: float | None = None
        with self._fd_lock:
            with self._durable_lock:
                seq = self.appended_seq
                # Every entry listed now was written before the fdatasync below
                # starts (add writes, then lists).
                last = self.last_index()
                truncations = self._truncations
            if self.fsync_error is not None:
                raise self.fsync_error
            if seq == self.synced_seq:
                return
            if self.fsync_enabled:
                started = time.monotonic()
                try:
                    os.fdatasync(self._fd)
                except OSError as e:
                    self.fsync_error = e
                    self.on_fsync_error(self.path, e)
                    raise
                self.syncs += 1
                took_s = time.monotonic() - started
            with self._durable_lock:
                self.synced_seq = seq
                if truncations == self._truncations:  # else the cut lowered it; the next sync raises it
                    self.durable_index = last
        if took_s is not None and self.observe_sync is not None:
            try:  # outside the lock (it may log), and never the sync's failure
                self.observe_sync(took_s)
            except Exception:  # noqa: BLE001
                log.exception("timing a journal fsync failed")

    def drop_before(self, idx: int, term: int) -> bool:
        """Finish a compaction that a crash interrupted: if the entry (idx, term)
        is in the log, drop the entries before it. Returns whether it did."""
        for pos, (_, i, t) in enumerate(self._entries):
            if i == idx and t == term:
                if pos > 0:
                    self.deleteEntriesTo(pos)
                return True
        return False
