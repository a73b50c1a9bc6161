"""The power-loss disk: data not fsynced is gone after a cut, fsynced data and
namespace operations survive."""

from __future__ import annotations

import os
from pathlib import Path

from jepsen_like.disks import PowerDisk
from jepsen_like.resources import Teardown

from .conftest import requires_fuse, requires_harness

pytestmark = [requires_harness, requires_fuse]


def _write(path: Path, data: bytes, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fdatasync(fd)
    finally:
        os.close(fd)


def test_a_power_cut_drops_exactly_the_unsynced_data(tmp_path: Path) -> None:
    teardown = Teardown("powerfs test")
    disk = PowerDisk(tmp_path / "mnt", tmp_path / "backing", tmp_path / "powerfs.log", teardown)
    try:
        disk.start()
        mnt = disk.path
        _write(mnt / "log", b"a" * 5000, sync=True)
        _write(mnt / "log", b"b" * 3000, sync=False)
        _write(mnt / "never-synced", b"x" * 100, sync=False)
        (mnt / "dir").mkdir()
        _write(mnt / "dir" / "tmp", b"meta", sync=True)
        os.rename(mnt / "dir" / "tmp", mnt / "dir" / "final")
        fd = os.open(mnt / "truncated", os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, b"y" * 10000)
        os.fsync(fd)
        os.ftruncate(fd, 10)  # never synced: undone by the cut
        os.close(fd)
        # Before the cut the mount shows everything written.
        assert (mnt / "log").read_bytes() == b"a" * 5000 + b"b" * 3000
        assert (mnt / "truncated").stat().st_size == 10
        disk.cut()
        disk.start()
        assert (mnt / "log").read_bytes() == b"a" * 5000
        assert (mnt / "never-synced").read_bytes() == b""
        assert (mnt / "dir" / "final").read_bytes() == b"meta"
        assert (mnt / "truncated").read_bytes() == b"y" * 10000
    finally:
        assert teardown.run() == []
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        assert str(tmp_path / "mnt") not in fh.read()


def test_reads_see_unsynced_writes_over_synced_data(tmp_path: Path) -> None:
    teardown = Teardown("powerfs test")
    disk = PowerDisk(tmp_path / "mnt", tmp_path / "backing", tmp_path / "powerfs.log", teardown)
    try:
        disk.start()
        path = disk.path / "f"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        os.write(fd, bytes(range(256)) * 64)  # 16 KiB
        os.fsync(fd)
        os.pwrite(fd, b"Z" * 10, 4090)  # straddles a page boundary
        data = os.pread(fd, 16384, 0)
        expected = bytearray(bytes(range(256)) * 64)
        expected[4090:4100] = b"Z" * 10
        assert data == bytes(expected)
        os.close(fd)
        assert (tmp_path / "backing" / "f").read_bytes() == bytes(range(256)) * 64
    finally:
        assert teardown.run() == []
