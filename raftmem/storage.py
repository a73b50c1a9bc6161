"""The one module that uses rocksdict: a shard replica's RocksDB.

Each replica directory holds numbered database generations (`db-000001`, ...)
and a `DB_CURRENT` file naming the live one. Installing a snapshot unpacks into
a staging directory and fsyncs it (off the event loop: `stage_snapshot`), then
renames it into a new generation and only then atomically repoints
`DB_CURRENT` (`install_staged`): a crash at any step leaves either the old or
the new database, never a mix.

Snapshots are RocksDB checkpoints (hard links of immutable SST files, taken
after a memtable flush) packed with a small metadata blob into one tar file,
closed by a manifest of every member's size and SHA-256. Staging checks the
archive against it before unpacking: a snapshot that arrived torn (a chunk lost between
leader and follower) stops a tar reader silently at the first bad header, and
RocksDB would then have opened the few files before it as an empty database.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

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
# The packed snapshot's last member: {"meta": [bytes, sha256], "files": {name: [bytes, sha256]}}.
SNAPSHOT_MANIFEST_NAME = "raftmem-snapshot-manifest"
HASH_CHUNK_BYTES = 1 << 20
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


class SnapshotCorrupt(ValueError):
    """A packed snapshot that is not what its sender packed: torn, truncated, or
    stitched together from two transfers."""


def read_hashing(src: IO[bytes], copy_to: IO[bytes] | None = None) -> tuple[int, str]:
    """Read `src` to the end in chunks (copying them to `copy_to`, if given):
    its size and SHA-256."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(HASH_CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
        if copy_to is not None:
            copy_to.write(chunk)
    return size, digest.hexdigest()


class _HashingReader:
    """A file as tarfile reads it into an archive, hashed on the way."""

    def __init__(self, src: IO[bytes]) -> None:
        self._src = src
        self._digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self._src.read(n)
        self._digest.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def _files_under(root: Path) -> Iterator[tuple[str, Path]]:
    """(archive name, path) of every file under `root`, sorted."""
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            yield f"{SNAPSHOT_DB_DIR}/{path.relative_to(root).as_posix()}", path


def _check_archive(tar: tarfile.TarFile, name: str, required: bool) -> None:
    """Hash every member of a packed snapshot as it stands in the archive and
    compare them with the manifest packed at its end (`required`: refuse a
    snapshot without one, as a torn transfer is). Extracts nothing."""
    members = tar.getmembers()  # a torn archive ends early here, silently
    try:
        listed = tar.extractfile(SNAPSHOT_MANIFEST_NAME)
    except KeyError:
        listed = None
    if listed is None:
        if required:
            raise SnapshotCorrupt(f"{name}: no manifest at its end (torn or truncated); {len(members)} members read")
        return
    manifest = json.loads(listed.read())
    expected = {k: tuple(v) for k, v in manifest["files"].items()}
    expected[SNAPSHOT_META_NAME] = tuple(manifest["meta"])
    found = {}
    for member in members:
        if member.isfile() and member.name != SNAPSHOT_MANIFEST_NAME:
            data = tar.extractfile(member)
            assert data is not None, "a regular file"
            found[member.name] = read_hashing(data)
    if found != expected:
        missing = sorted(set(expected) - set(found))
        differ = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
        raise SnapshotCorrupt(
            f"{name}: does not match its manifest (missing {missing[:5]}, differing {differ[:5]}, "
            f"unexpected {sorted(set(found) - set(expected))[:5]})"
        )


def _unpack(tar: tarfile.TarFile, unpack: Path, name: str, required: bool, check: bool = True) -> Path:
    """Check a packed snapshot against its manifest (`check=False` only for a
    negative control), then extract its database under `unpack`; returns the
    unpacked database directory."""
    if check:
        _check_archive(tar, name, required)
    members = [m for m in tar.getmembers() if m.name == SNAPSHOT_DB_DIR or m.name.startswith(SNAPSHOT_DB_DIR + "/")]
    tar.extractall(str(unpack), members=members, filter="data")
    return unpack / SNAPSHOT_DB_DIR


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
_IO_STATS_RE = re.compile(r"^(" + "|".join(re.escape(n) for n in IO_STATS) + r") COUNT : (\d+)", re.M)
# How long the I/O counters and the size on disk are reused (both are read for
# /metrics, twice per replica per scrape; RocksDB's statistics dump is 16 KB of
# text and the size a walk of the directory: /metrics on a node of 8 shards took
# 16 ms of the event loop, more than half of it here).
STATS_REUSE_S = 2.0
_T = TypeVar("_T")

# One memtable of a replica flushes at this share of the node's memtable budget
# (RocksDB's default, 64 MiB a memtable and 2 of them, is per database: 8
# replicas could hold 1 GiB before any flush).
WRITE_BUFFER_SHARE = 4
WRITE_BUFFERS_MAX = 2
BLOOM_BITS_PER_KEY = 10


class MemoryBudget:
    """The RocksDB memory of one node, shared by all its replicas: one write
    buffer manager bounds their memtables together, one LRU cache holds their
    blocks. Its usage is read at scrape time (metrics)."""

    def __init__(self, memtable_bytes_max: int, block_cache_bytes: int,
                 bloom_bits_per_key: int = BLOOM_BITS_PER_KEY) -> None:
        """`bloom_bits_per_key`: 0 for tables without bloom filters (as before
        2026-12-07; bench/apply_bench.py --no-bloom)."""
        self.memtable_bytes_max = memtable_bytes_max
        self.block_cache_bytes = block_cache_bytes
        self.bloom_bits_per_key = bloom_bits_per_key
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
        # A full bloom filter per table (10 bits a key, ~1 % false positives):
        # apply's gets of keys that are not there (a new memory's record and
        # history, a new idempotency key) skip the tables' index and data
        # blocks. raftmem/DESIGN.md, "A batched memory's CPU".
        if self.bloom_bits_per_key:
            table.set_bloom_filter(self.bloom_bits_per_key, False)
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


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class Store:
    """A shard replica's key-value store (bytes to bytes)."""

    def __init__(self, directory: str | Path, budget: MemoryBudget | None = None, wal: bool = True) -> None:
        """`budget`: the node's shared RocksDB memory (None: RocksDB's defaults,
        for tools and tests that open one store). `wal`: RocksDB's own
        write-ahead log; without it, a write is durable once its memtable is
        flushed (a checkpoint, a clean close, or RocksDB's own flush), and a
        crash loses the writes since: only a store whose writes can be
        replayed from another log (the Raft journal) may turn it off."""
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._budget = budget
        self._generation = self._recover_generation()
        # Bytes RocksDB wrote (WAL, flushes, compactions), from its statistics,
        # for the write-amplification metrics; counts of replaced generations kept.
        self._io_before: dict[str, int] = {}
        self._reused: dict[str, tuple[float, Any]] = {}  # name -> (when, value): see STATS_REUSE_S
        self._opts = self._options()
        self._db = Rdict(str(self._db_path(self._generation)), self._opts)
        # The journal is the source of truth and is fsynced per raft.fsync; the
        # RocksDB WAL, when kept, need not be synced: whatever it loses is
        # re-applied from the log at restart (apply is idempotent by index).
        self._write_opts = WriteOptions()
        # A property in rocksdict (its stub says a method).
        self._write_opts.disable_wal = not wal  # type: ignore[method-assign,assignment]

    def _options(self) -> Options:
        opts = self._budget.options() if self._budget is not None else _options()
        opts.enable_statistics()
        return opts

    def _reuse(self, name: str, make: Callable[[], _T]) -> _T:
        now = time.monotonic()
        kept = self._reused.get(name)
        if kept is not None and now - kept[0] < STATS_REUSE_S:
            return kept[1]  # type: ignore[no-any-return]
        value = make()
        self._reused[name] = (now, value)
        return value

    def io_stats(self) -> dict[str, int]:
        """Bytes RocksDB has written for this replica since it opened: its WAL,
        memtable flushes and compactions (RocksDB's own statistics; up to
        STATS_REUSE_S old)."""
        return dict(self._reuse("io", self._io_stats_now))

    def _io_stats_now(self) -> dict[str, int]:
        out = dict.fromkeys(IO_STATS.values(), 0)
        for name, count in _IO_STATS_RE.findall(self._opts.get_statistics() or ""):
            out[IO_STATS[name]] = int(count)
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

    def flush(self) -> None:
        """Write the memtables out (durable without the WAL)."""
        self._db.flush()

    # -- snapshots -------------------------------------------------------------
    def create_checkpoint(self, directory: str | Path) -> None:
        """A consistent copy of the database as of now (cheap: a memtable flush and
        hard links). Call it where no write can interleave."""
        shutil.rmtree(directory, ignore_errors=True)
        Checkpoint(self._db).create_checkpoint(str(directory))

    @staticmethod
    def pack_checkpoint(directory: str | Path, path: str | Path, meta: bytes) -> None:
        """Pack a checkpoint and `meta` into one fsynced file, then drop the
        checkpoint. The manifest of every file's size and SHA-256 goes last: a
        reader that finds it has read the whole archive."""
        try:
            with open(path, "wb") as f:
                with tarfile.open(fileobj=f, mode="w") as tar:
                    _add_bytes(tar, SNAPSHOT_META_NAME, meta)
                    meta_hash = read_hashing(io.BytesIO(meta))
                    tar.add(str(directory), arcname=SNAPSHOT_DB_DIR, recursive=False)
                    files: dict[str, list[Any]] = {}
                    for arcname, file in _files_under(Path(directory)):
                        info = tar.gettarinfo(str(file), arcname=arcname)
                        with open(file, "rb") as src:
                            reader = _HashingReader(src)
                            tar.addfile(info, reader)
                        files[arcname] = [reader.size, reader.hexdigest()]
                    manifest = {"meta": list(meta_hash), "files": files}
                    _add_bytes(tar, SNAPSHOT_MANIFEST_NAME, json.dumps(manifest).encode())
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

    @staticmethod
    def verify_snapshot(path: str | Path) -> None:
        """SnapshotCorrupt unless the packed snapshot matches the manifest at its
        end (a received one is checked before anything uses or keeps it)."""
        try:
            with tarfile.open(str(path), mode="r") as tar:
                _check_archive(tar, str(path), required=True)
        except (tarfile.TarError, EOFError) as e:
            raise SnapshotCorrupt(f"{path}: unreadable archive: {e}") from None

    def stage_snapshot(self, path: str | Path, verify: bool = True) -> Path:
        """Unpack a packed snapshot next to the live database, check it against its
        manifest (SnapshotCorrupt if it does not match, or has none) and fsync it:
        the slow half of an install. Touches no open database, so it may run on
        any thread while the replica goes on serving; `install_staged` finishes
        the job. `verify=False` only for the negative control of the check."""
        # Unique, so a late thread of a dropped replica never touches a newer one's.
        staged = self.directory / f"{STAGED_PREFIX}{uuid.uuid4().hex}"
        unpack = staged.with_name(staged.name + ".unpack")
        for leftover in (staged, unpack):
            shutil.rmtree(leftover, ignore_errors=True)
        try:
            try:
                with tarfile.open(str(path), mode="r") as tar:
                    unpacked = _unpack(tar, unpack, str(path), required=True, check=verify)
            except (tarfile.TarError, EOFError) as e:
                raise SnapshotCorrupt(f"{path}: unreadable archive: {e}") from None
            os.replace(unpacked, staged)
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

    def install_staged(self, staged: Path, must_exist: bool = True) -> None:
        """Make a staged snapshot the live database: a rename, a RocksDB open and
        one small atomic file write. The old generation is removed in the
        background (a crash before that is cleaned up at the next open). The
        open refuses a directory that holds no database (`must_exist=False`
        only for the negative control: RocksDB then creates an empty one)."""
        generation = self._generation + 1
        target = self._db_path(generation)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staged, target)
        fsync_dir(self.directory)
        new_opts = self._options()
        new_opts.create_if_missing(not must_exist)
        new_db = Rdict(str(target), new_opts)
        write_file_atomically(self.directory / CURRENT_FILE, f"{generation}\n".encode())
        old_db, old_path = self._db, self._db_path(self._generation)
        self._io_before = self._io_stats_now()
        self._db, self._generation, self._opts = new_db, generation, new_opts
        self._reused.clear()
        old_db.close()
        remove_in_background(old_path)

    @staticmethod
    def scan_snapshot(path: str | Path, start: bytes, end: bytes, workdir: str | Path) -> Iterator[tuple[bytes, bytes]]:
        """Keys in [start, end) of a packed snapshot, read without installing it."""
        unpack = Path(workdir)
        shutil.rmtree(unpack, ignore_errors=True)
        with tarfile.open(str(path), mode="r") as tar:
            # Backups made before snapshots carried a manifest have none (a
            # backup's own manifest holds each snapshot's SHA-256).
            root = _unpack(tar, unpack, str(path), required=False)
        db = Rdict(str(root), _options(), access_type=AccessType.read_only(False))
        try:
            yield from _range(db.iter(), start, end)
        finally:
            db.close()
            shutil.rmtree(unpack, ignore_errors=True)

    def size_bytes(self) -> int:
        """The database's files on disk (up to STATS_REUSE_S old)."""
        return self._reuse("size", self._size_bytes_now)

    def _size_bytes_now(self) -> int:
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
