"""The one module that uses rocksdict: a shard replica's RocksDB.

Each replica directory holds numbered database generations (`db-000001`, ...)
and a `DB_CURRENT` file naming the live one. Installing a snapshot unpacks into
a staging directory and fsyncs it (off the event loop: `stage_snapshot`), then
renames it into a new generation and only then atomically repoints
`DB_CURRENT` (`install_staged`): a crash at any step leaves either the old or
the new database, never a mix.

Snapshots are RocksDB checkpoints (hard links of immutable SST files, taken
after a memtable flush) packed with a small metadata blob into one tar file.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    Checkpoint,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

CURRENT_FILE = "DB_CURRENT"
SNAPSHOT_META_NAME = "raftmem-snapshot-meta"
SNAPSHOT_DB_DIR = "db"
# Snapshots unpacked ahead of their install; a name no live generation can have.
STAGED_PREFIX = "staged-"
# Checkpoints taken for a backup, removed once packed (or at the next open).
BACKUP_PREFIX = "backup-"


def fsync_dir(path: str | Path) -> None:
    fd = os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_in_background(path: Path) -> None:
    """Delete a directory tree on a thread of its own (a large one takes a while);
    what a crash leaves behind is cleaned up at the next open."""
    threading.Thread(
        target=shutil.rmtree, args=(path,), kwargs={"ignore_errors": True}, name="remove", daemon=True
    ).start()


def write_file_atomically(path: Path, data: bytes, durable: bool = True) -> None:
    """Write, fsync, rename over, fsync the directory: readers see old or new.
    `durable=False` skips the fsyncs (still atomic, may be lost on power loss)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        fsync_dir(path.parent)


# RocksDB statistics counted as physical bytes written (write amplification).
IO_STATS = {
    "rocksdb.wal.bytes": "wal_bytes",
    "rocksdb.flush.write.bytes": "flush_bytes",
    "rocksdb.compact.write.bytes": "compaction_bytes",
}

# One memtable of a replica flushes at this share of the node's memtable budget
# (RocksDB's default, 64 MiB a memtable and 2 of them, is per database: 8
# replicas could hold 1 GiB before any flush).
WRITE_BUFFER_SHARE = 4
WRITE_BUFFERS_MAX = 2


class MemoryBudget:
    """The RocksDB memory of one node, shared by all its replicas: one write
    buffer manager bounds their memtables together, one LRU cache holds their
    blocks. Its usage is read at scrape time (metrics)."""

    def __init__(self, memtable_bytes_max: int, block_cache_bytes: int) -> None:
        self.memtable_bytes_max = memtable_bytes_max
        self.block_cache_bytes = block_cache_bytes
        # allow_stall=False: past the budget, RocksDB flushes; it does not stall
        # writers (which would stall the event loop that applies).
        self._write_buffers = WriteBufferManager(memtable_bytes_max, False)
        self._cache = Cache(block_cache_bytes)

    def options(self) -> Options:
        opts = _options()
        opts.set_write_buffer_manager(self._write_buffers)
        opts.set_write_buffer_size(max(1 << 20, self.memtable_bytes_max // WRITE_BUFFER_SHARE))
        opts.set_max_write_buffer_number(WRITE_BUFFERS_MAX)
        table = BlockBasedOptions()
        table.set_block_cache(self._cache)
        opts.set_block_based_table_factory(table)
        return opts

    def usage(self) -> dict[str, int]:
        return {
            "memtable_bytes": int(self._write_buffers.get_usage()),
            "block_cache_bytes": int(self._cache.get_usage()),
            "block_cache_pinned_bytes": int(self._cache.get_pinned_usage()),
        }


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    return opts


def _range(it: Any, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
    """What a rocksdict iterator holds in [start, end), ascending."""
    it.seek(start)
    while it.valid():
        key = it.key()
        if key >= end:
            return
        yield key, it.value()
        it.next()


class Batch:
    """Puts and deletes that land together or not at all."""

    def __init__(self) -> None:
        self._wb = WriteBatch(raw_mode=True)
        self.count = 0

    def put(self, key: bytes, value: bytes) -> None:
        self._wb.put(key, value)
        self.count += 1

    def delete(self, key: bytes) -> None:
        self._wb.delete(key)
        self.count += 1

    def delete_range(self, start: bytes, end: bytes) -> None:
        """Every key in [start, end) (one range tombstone)."""
        self._wb.delete_range(start, end)
        self.count += 1


class Store:
    """A shard replica's key-value store (bytes to bytes)."""

    def __init__(self, directory: str | Path, budget: MemoryBudget | None = None) -> None:
        """`budget`: the node's shared RocksDB memory (None: RocksDB's defaults,
        for tools and tests that open one store)."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._budget = budget
        self._generation = self._recover_generation()
        # Bytes RocksDB wrote (WAL, flushes, compactions), from its statistics,
        # for the write-amplification metrics; counts of replaced generations kept.
        self._io_before: dict[str, int] = {}
        self._opts = self._options()
        self._db = Rdict(str(self._db_path(self._generation)), self._opts)
        # The journal is the source of truth and is fsynced per raft.fsync; the
        # RocksDB WAL need not be synced: whatever it loses is re-applied from
        # the log at restart (apply is idempotent by index).
        self._write_opts = WriteOptions()

    def _options(self) -> Options:
        opts = self._budget.options() if self._budget is not None else _options()
        opts.enable_statistics()
        return opts

    def io_stats(self) -> dict[str, int]:
        """Bytes RocksDB has written for this replica since it opened: its WAL,
        memtable flushes and compactions (RocksDB's own statistics)."""
        out = dict.fromkeys(IO_STATS, 0)
        for line in (self._opts.get_statistics() or "").splitlines():
            name, _, rest = line.partition(" COUNT : ")
            if name in IO_STATS:
                out[IO_STATS[name]] = int(rest.split()[0])
        return {k: v + self._io_before.get(k, 0) for k, v in out.items()}

    def snapshot_scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys in [start, end) as of now (a RocksDB snapshot): consistent however
        long the caller takes, and safe to consume on another thread while
        writes go on."""
        snap = self._db.snapshot()
        try:
            yield from _range(snap.iter(), start, end)
        finally:
            del snap

    def memtable_bytes(self) -> int:
        """This replica's memtables now (RocksDB's cur-size-all-mem-tables)."""
        return int(self._db.property_int_value("rocksdb.cur-size-all-mem-tables") or 0)

    def _db_path(self, generation: int) -> Path:
        return self.directory / f"db-{generation:06d}"

    def _recover_generation(self) -> int:
        current = self.directory / CURRENT_FILE
        generation = 1
        if current.exists():
            generation = int(current.read_text().strip())
        else:
            write_file_atomically(current, b"1\n")
        # Leftovers of an interrupted snapshot install or of a swap whose cleanup
        # did not finish.
        for child in self.directory.iterdir():
            if child.name.startswith(("db-", STAGED_PREFIX, BACKUP_PREFIX)) and child != self._db_path(generation):
                shutil.rmtree(child, ignore_errors=True)
        return generation

    # -- reads -----------------------------------------------------------------
    def get(self, key: bytes) -> bytes | None:
        return self._db.get(key)

    def scan(self, start: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Keys in [start, end), ascending."""
        return _range(self._db.iter(), start, end)

    # -- writes ----------------------------------------------------------------
    def commit(self, batch: Batch) -> None:
        self._db.write(batch._wb, self._write_opts)

    # -- snapshots -------------------------------------------------------------
    def create_checkpoint(self, directory: str | Path) -> None:
        """A consistent copy of the database as of now (cheap: a memtable flush and
        hard links). Call it where no write can interleave."""
        shutil.rmtree(directory, ignore_errors=True)
        Checkpoint(self._db).create_checkpoint(str(directory))

    @staticmethod
    def pack_checkpoint(directory: str | Path, path: str | Path, meta: bytes) -> None:
        """Pack a checkpoint and `meta` into one fsynced file, then drop the checkpoint."""
        try:
            with open(path, "wb") as f:
                with tarfile.open(fileobj=f, mode="w") as tar:
                    info = tarfile.TarInfo(SNAPSHOT_META_NAME)
                    info.size = len(meta)
                    tar.addfile(info, io.BytesIO(meta))
                    tar.add(str(directory), arcname=SNAPSHOT_DB_DIR)
                f.flush()
                os.fsync(f.fileno())
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    @staticmethod
    def read_snapshot_meta(path: str | Path) -> bytes:
        with tarfile.open(str(path), mode="r") as tar:
            member = tar.extractfile(SNAPSHOT_META_NAME)
            if member is None:
                raise ValueError(f"{path}: snapshot has no metadata")
            return member.read()

    def stage_snapshot(self, path: str | Path) -> Path:
        """Unpack a packed snapshot next to the live database and fsync it: the slow
        half of an install. Touches no open database, so it may run on any thread
        while the replica goes on serving; `install_staged` finishes the job."""
        # Unique, so a late thread of a dropped replica never touches a newer one's.
        staged = self.directory / f"{STAGED_PREFIX}{uuid.uuid4().hex}"
        unpack = staged.with_name(staged.name + ".unpack")
        for leftover in (staged, unpack):
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            with tarfile.open(str(path), mode="r") as tar:
                members = [m for m in tar.getmembers() if m.name.startswith(SNAPSHOT_DB_DIR)]
                tar.extractall(str(unpack), members=members, filter="data")
            os.replace(unpack / SNAPSHOT_DB_DIR, staged)
            for root, _dirs, files in os.walk(staged):
                for name in files:
                    fsync_file(Path(root) / name)
            fsync_dir(staged)
        except BaseException:
            shutil.rmtree(staged, ignore_errors=True)
            raise
        finally:
            shutil.rmtree(unpack, ignore_errors=True)
        return staged

    def install_staged(self, staged: Path) -> None:
        """Make a staged snapshot the live database: a rename, a RocksDB open and
        one small atomic file write. The old generation is removed in the
        background (a crash before that is cleaned up at the next open)."""
        generation = self._generation + 1
        target = self._db_path(generation)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staged, target)
        fsync_dir(self.directory)
        new_opts = self._options()
        new_db = Rdict(str(target), new_opts)
        write_file_atomically(self.directory / CURRENT_FILE, f"{generation}\n".encode())
        old_db, old_path = self._db, self._db_path(self._generation)
        self._io_before = self.io_stats()
        self._db, self._generation, self._opts = new_db, generation, new_opts
        old_db.close()
        remove_in_background(old_path)

    @staticmethod
    def scan_snapshot(path: str | Path, start: bytes, end: bytes, workdir: str | Path) -> Iterator[tuple[bytes, bytes]]:
        """Keys in [start, end) of a packed snapshot, read without installing it."""
        unpack = Path(workdir)
        shutil.rmtree(unpack, ignore_errors=True)
        with tarfile.open(str(path), mode="r") as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(SNAPSHOT_DB_DIR)]
            tar.extractall(str(unpack), members=members, filter="data")
        db = Rdict(str(unpack / SNAPSHOT_DB_DIR), _options(), access_type=AccessType.read_only(False))
        try:
            yield from _range(db.iter(), start, end)
        finally:
            db.close()
            shutil.rmtree(unpack, ignore_errors=True)

    def size_bytes(self) -> int:
        total = 0
        for root, _dirs, files in os.walk(self._db_path(self._generation)):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(root, name))
                except OSError:
                    pass
        return total

    def close(self) -> None:
        self._db.close()
