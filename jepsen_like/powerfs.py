"""A FUSE filesystem that loses every write not made durable by fsync: the
"power loss" of the harness.

``python -m jepsen_like.powerfs BACKING MOUNTPOINT`` mounts BACKING (a plain
directory, "the disk") at MOUNTPOINT in the foreground. Reads and writes through
the mount behave like a normal filesystem, except that file data written since
the last ``fsync``/``fdatasync`` of that file lives only in this process's
memory. Killing the process (SIGKILL) is the power cut: the mount dies, and what
BACKING holds is exactly what a disk would hold after losing power with a
write-back cache that honours fsync and nothing else.

Model, and how it compares with a real disk:

- **File data** (writes, truncates, size) is volatile until the file is
  fsynced; then the dirty pages are written to BACKING and BACKING's file is
  fsynced. A file created and written but never fsynced comes back empty; a
  file appended to comes back at its size as of its last fsync; a truncate that
  was never fsynced is undone. This is the worst case POSIX allows for data,
  and what ext4's ``data=writeback`` or a lying cache shows in practice.
- **Namespace operations** (create, mkdir, rename, link, unlink, rmdir) are
  applied to BACKING at once, as if every directory were fsynced after each.
  That is kinder than a real disk (a rename not followed by a directory fsync
  may be lost there): a store that forgets a directory fsync is not caught.
  Data loss, the failure that loses acknowledged writes, is modelled fully.
- Volatile state is kept per backing inode, so hard links share it and a
  rename keeps it. ``fallocate`` with KEEP_SIZE is accepted and ignored.

The point of the exercise: with ``raft.fsync: always`` no acknowledged write may
be lost across a power cut of every node; with ``fsync: never`` (a negative
control) acknowledged writes must go missing, or this layer is not dropping
what it should.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import stat
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

PAGE_BYTES = 4096
# Dirty data held in memory per mount; past it writes fail with ENOSPC (a store
# that never fsyncs would otherwise grow this process without bound).
DIRTY_BYTES_MAX = 512 * 1024 * 1024
FALLOC_FL_KEEP_SIZE = 0x01

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Volatile:
    """What a file looks like to readers, beyond what BACKING durably holds."""

    size: int  # logical size
    floor: int  # bytes of the backing file still valid (shrinks with truncates)
    pages: dict[int, bytearray] = field(default_factory=dict)  # dirty pages


class PowerLossFS:
    """The FUSE operations (mfusepy's high-level API, paths as str)."""

    use_ns = True

    def __init__(self, backing: str) -> None:
        self.backing = os.path.realpath(backing)
        self._mutex = threading.RLock()
        self.volatile: dict[tuple[int, int], _Volatile] = {}
        self.dirty_bytes = 0
        self.syncs = 0

    # -- helpers -------------------------------------------------------------------
    def _path(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    @staticmethod
    def _ino(st: os.stat_result) -> tuple[int, int]:
        return (st.st_dev, st.st_ino)

    def _state(self, fd: int, create: bool) -> _Volatile | None:
        st = os.fstat(fd)
        key = self._ino(st)
        vol = self.volatile.get(key)
        if vol is None and create:
            vol = _Volatile(size=st.st_size, floor=st.st_size)
            self.volatile[key] = vol
        return vol

    def _forget(self, backing_path: str) -> None:
        """The last link of a file goes: its volatile state goes with it."""
        try:
            st = os.lstat(backing_path)
        except FileNotFoundError:
            return
        if stat.S_ISREG(st.st_mode) and st.st_nlink <= 1:
            vol = self.volatile.pop(self._ino(st), None)
            if vol is not None:
                self.dirty_bytes -= len(vol.pages) * PAGE_BYTES

    def _durable_bytes(self, fd: int, vol: _Volatile, offset: int, length: int) -> bytes:
        """Bytes [offset, offset+length) of the backing file below the floor,
        zero-filled past it."""
        valid = max(0, min(length, vol.floor - offset))
        data = os.pread(fd, valid, offset) if valid else b""
        return data + b"\0" * (length - len(data))

    # -- metadata ------------------------------------------------------------------
    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.lstat(self._path(path))
        attrs = {
            key: getattr(st, key)
            for key in (
                "st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino", "st_blocks",
            )
        }
        attrs["st_atime"] = st.st_atime_ns
        attrs["st_mtime"] = st.st_mtime_ns
        attrs["st_ctime"] = st.st_ctime_ns
        with self._mutex:
            vol = self.volatile.get(self._ino(st))
            if vol is not None:
                attrs["st_size"] = vol.size
                attrs["st_blocks"] = (vol.size + 511) // 512
        return attrs

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._path(path), amode):
            raise OSError(errno.EACCES, "access denied")
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._path(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.lchown(self._path(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._path(path))
        else:
            os.utime(self._path(path), ns=times)
        return 0

    def readlink(self, path: str) -> str:
        return os.readlink(self._path(path))

    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self._path(target))
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._path(path))
        return {
            key: getattr(sv, key)
            for key in (
                "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                "f_files", "f_flag", "f_frsize", "f_namemax",
            )
        }

    # -- namespace (applied at once; see the module docstring) ---------------------
    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._path(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._path(path))
        return 0

    def unlink(self, path: str) -> int:
        target = self._path(path)
        with self._mutex:
            self._forget(target)
            os.unlink(target)
        return 0

    def rename(self, old: str, new: str) -> int:
        target = self._path(new)
        with self._mutex:
            source_st = os.lstat(self._path(old))
            try:
                target_st = os.lstat(target)
            except FileNotFoundError:
                target_st = None
            if target_st is not None and self._ino(target_st) != self._ino(source_st):
                self._forget(target)
            os.rename(self._path(old), target)
        return 0

    def link(self, target: str, source: str) -> int:
        os.link(self._path(source), self._path(target))
        return 0

    def opendir(self, path: str) -> int:
        return 0

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._path(path))]

    def releasedir(self, path: str, fh: int) -> int:
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        return 0

    # -- files ---------------------------------------------------------------------
    def _open_backing(self, path: str, flags: int, mode: int = 0o644) -> int:
        # Always read-write: an fsync through a read-only handle must still be
        # able to write the dirty pages out.
        clean = flags & ~(os.O_ACCMODE | os.O_TRUNC | os.O_APPEND)
        clean &= ~(getattr(os, "O_DIRECT", 0))
        return os.open(self._path(path), clean | os.O_RDWR, mode)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        with self._mutex:
            fd = os.open(self._path(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)
            # A new inode may reuse the number of a deleted one: start clean.
            vol = self.volatile.pop(self._ino(os.fstat(fd)), None)
            if vol is not None:
                self.dirty_bytes -= len(vol.pages) * PAGE_BYTES
        return fd

    def open(self, path: str, flags: int) -> int:
        fd = self._open_backing(path, flags)
        if flags & os.O_TRUNC:
            with self._mutex:
                self._truncate_fd(fd, 0)
        return fd

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0  # close() makes nothing durable

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mutex:
            vol = self._state(fh, create=False)
            if vol is None:
                return os.pread(fh, size, offset)
            end = min(offset + size, vol.size)
            out = bytearray()
            pos = offset
            while pos < end:
                page_no, in_page = divmod(pos, PAGE_BYTES)
                page = vol.pages.get(page_no)
                if page is not None:
                    take = min(PAGE_BYTES - in_page, end - pos)
                    out += page[in_page : in_page + take]
                else:
                    # A run of clean pages: one pread.
                    run_end = pos
                    while run_end < end and (run_end // PAGE_BYTES) not in vol.pages:
                        run_end = (run_end // PAGE_BYTES + 1) * PAGE_BYTES
                    take = min(run_end, end) - pos
                    out += self._durable_bytes(fh, vol, pos, take)
                pos += take
            return bytes(out)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        with self._mutex:
            vol = self._state(fh, create=True)
            assert vol is not None
            pos = offset
            view = memoryview(data)
            done = 0
            while done < len(data):
                page_no, in_page = divmod(pos, PAGE_BYTES)
                page = vol.pages.get(page_no)
                if page is None:
                    if self.dirty_bytes + PAGE_BYTES > DIRTY_BYTES_MAX:
                        if done:
                            break
                        raise OSError(errno.ENOSPC, "powerfs: too much unsynced data")
                    page = bytearray(self._durable_bytes(fh, vol, page_no * PAGE_BYTES, PAGE_BYTES))
                    # Bytes past the logical size read as zeros, whatever backing holds.
                    valid = max(0, vol.size - page_no * PAGE_BYTES)
                    if valid < PAGE_BYTES:
                        page[valid:] = b"\0" * (PAGE_BYTES - valid)
                    vol.pages[page_no] = page
                    self.dirty_bytes += PAGE_BYTES
                take = min(PAGE_BYTES - in_page, len(data) - done)
                page[in_page : in_page + take] = view[done : done + take]
                done += take
                pos += take
            vol.size = max(vol.size, offset + done)
            return done

    def _truncate_fd(self, fd: int, length: int) -> None:
        vol = self._state(fd, create=True)
        assert vol is not None
        if length < vol.size:
            keep = (length + PAGE_BYTES - 1) // PAGE_BYTES
            for page_no in [p for p in vol.pages if p >= keep]:
                del vol.pages[page_no]
                self.dirty_bytes -= PAGE_BYTES
            last = length // PAGE_BYTES
            if length % PAGE_BYTES and last in vol.pages:
                page = vol.pages[last]
                page[length % PAGE_BYTES :] = b"\0" * (PAGE_BYTES - length % PAGE_BYTES)
            vol.floor = min(vol.floor, length)
        vol.size = length

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._mutex:
            if fh is not None:
                self._truncate_fd(fh, length)
                return 0
            fd = os.open(self._path(path), os.O_RDWR)
            try:
                self._truncate_fd(fd, length)
            finally:
                os.close(fd)
        return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        if mode & FALLOC_FL_KEEP_SIZE:
            return 0  # preallocation only: nothing a reader can see
        if mode:
            raise OSError(errno.EOPNOTSUPP, "powerfs: fallocate mode not supported")
        with self._mutex:
            vol = self._state(fh, create=True)
            assert vol is not None
            vol.size = max(vol.size, offset + size)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        with self._mutex:
            key = self._ino(os.fstat(fh))
            vol = self.volatile.pop(key, None)
            if vol is None:
                return 0
            self.dirty_bytes -= len(vol.pages) * PAGE_BYTES
            os.ftruncate(fh, vol.floor)
            for page_no in sorted(vol.pages):
                start = page_no * PAGE_BYTES
                if start >= vol.size:
                    continue
                page = vol.pages[page_no]
                os.pwrite(fh, bytes(page[: min(PAGE_BYTES, vol.size - start)]), start)
            os.ftruncate(fh, vol.size)
            os.fsync(fh)
            self.syncs += 1
        return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jepsen_like.powerfs", description=__doc__.split("\n")[0])
    parser.add_argument("backing", help="directory that plays the disk")
    parser.add_argument("mountpoint")
    args = parser.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore", DeprecationWarning)
    import mfusepy  # imported here: only this process needs libfuse

    wrapped = type("PowerLossOperations", (PowerLossFS, mfusepy.Operations), {})
    ops = wrapped(args.backing)
    # Foreground, multithreaded; no kernel writeback cache, so every write()
    # reaches this process (which is what makes the loss model exact).
    mfusepy.FUSE(ops, args.mountpoint, foreground=True, nothreads=False, fsname="rmj-powerfs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
