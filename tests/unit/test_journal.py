"""The durable journal: reload, torn tails, truncation, crash-safe compaction."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from raftmem.consensus.journal import FSYNC_FAILED_EXIT, DurableJournal, SyncTimes


def filled(path: Path, n: int) -> DurableJournal:
    j = DurableJournal(path)
    for i in range(1, n + 1):
        j.add(f"cmd-{i}".encode(), i, 1 + i // 10)
    j.sync()
    return j


def test_fsyncs_are_timed_and_a_slow_one_is_logged_once_a_second(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    times = SyncTimes(buckets=(0.01, 0.1))
    j = DurableJournal(tmp_path / "raft.journal")
    j.observe_sync = times.observe
    j.add(b"x", 1, 1)
    j.sync()
    j.sync()  # nothing new: no fsync, nothing timed
    assert times.count == 1 and times.sum_s > 0
    for seconds in (0.05, 0.5, 0.7):
        times.observe(seconds)
    buckets, total = times.snapshot()
    assert [b for b, _ in buckets] == ["0.01", "0.1", "+Inf"] and buckets[-1][1] == 4
    assert buckets[1][1] - buckets[0][1] >= 1 and total > 1.2 and times.slowest_s == 0.7
    assert len([r for r in caplog.records if "fsync took" in r.getMessage()]) == 1  # 0.5 s, not 0.7 s as well


def test_reload_keeps_entries_and_term(tmp_path: Path) -> None:
    j = filled(tmp_path / "j", 25)
    j.setCurrentTerm(7, "n2:9101")
    j.setRaftCommitIndex(20)
    j._destroy()
    k = DurableJournal(tmp_path / "j")
    assert len(k) == 25 and k[-1] == (b"cmd-25", 25, 3)
    assert k.getCurrentTerm() == 7 and k.getVotedForNodeId() == "n2:9101"
    assert k.getRaftCommitIndex() == 20


def test_torn_tail_is_cut_at_the_last_whole_record(tmp_path: Path) -> None:
    j = filled(tmp_path / "j", 10)
    size = os.path.getsize(tmp_path / "j")
    j._destroy()
    with open(tmp_path / "j", "r+b") as f:
        f.truncate(size - 3)  # a crash in the middle of the last write
    k = DurableJournal(tmp_path / "j")
    assert len(k) == 9 and k[-1][1] == 9
    k.add(b"new", 10, 5)
    k._destroy()
    assert DurableJournal(tmp_path / "j")[-1] == (b"new", 10, 5)


def test_corrupt_record_is_not_trusted(tmp_path: Path) -> None:
    j = filled(tmp_path / "j", 5)
    j._destroy()
    data = bytearray((tmp_path / "j").read_bytes())
    data[-2] ^= 0xFF  # flip a byte inside the last record
    (tmp_path / "j").write_bytes(bytes(data))
    assert len(DurableJournal(tmp_path / "j")) == 4


def test_truncate_then_append(tmp_path: Path) -> None:
    j = filled(tmp_path / "j", 10)
    j.deleteEntriesFrom(6)  # keep entries 1..6
    j.add(b"x", 7, 9)
    j._destroy()
    k = DurableJournal(tmp_path / "j")
    assert [e[1] for e in k] == [1, 2, 3, 4, 5, 6, 7] and k[-1] == (b"x", 7, 9)


def test_compaction_is_atomic(tmp_path: Path) -> None:
    j = filled(tmp_path / "j", 10)
    j.deleteEntriesTo(4)
    assert [e[1] for e in j] == [5, 6, 7, 8, 9, 10]
    j.add(b"y", 11, 2)
    j._destroy()
    assert [e[1] for e in DurableJournal(tmp_path / "j")] == [5, 6, 7, 8, 9, 10, 11]
    # A crash while writing the compacted copy leaves only a stray .tmp: the log is whole.
    (tmp_path / "j.tmp").write_bytes(b"RMJRNL01garbage")
    assert len(DurableJournal(tmp_path / "j")) == 7


def test_finishing_an_interrupted_compaction(tmp_path: Path) -> None:
    j = filled(tmp_path / "j", 10)
    assert j.drop_before(6, 1)
    assert [e[1] for e in j] == [6, 7, 8, 9, 10]
    assert not j.drop_before(6, 99)  # wrong term: not our entry, leave the log alone
    assert len(j) == 5


def test_sync_only_when_dirty(tmp_path: Path) -> None:
    j = filled(tmp_path / "j", 3)
    syncs = j.syncs
    j.sync()
    assert j.syncs == syncs
    j.add(b"z", 4, 1)
    j.sync()
    assert j.syncs == syncs + 1
    off = DurableJournal(tmp_path / "k", fsync_enabled=False)
    off.add(b"a", 1, 1)
    off.sync()
    assert off.syncs == 0


def test_a_failed_write_leaves_whole_records(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import errno

    j = filled(tmp_path / "j", 5)
    real_write = os.write
    calls = {"n": 0}

    def short_then_enospc(fd: int, data: bytes) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, data[:7])  # a short write...
        raise OSError(errno.ENOSPC, "No space left on device")  # ...then the disk is full

    monkeypatch.setattr(os, "write", short_then_enospc)
    try:
        j.add(b"doomed", 6, 1)
    except OSError:
        pass
    else:
        raise AssertionError("the failed append was reported as written")
    monkeypatch.setattr(os, "write", real_write)
    assert len(j) == 5
    j.add(b"after", 6, 1)  # lands right after the last whole record
    j._destroy()
    k = DurableJournal(tmp_path / "j")
    assert [e[1] for e in k] == [1, 2, 3, 4, 5, 6] and k[-1][0] == b"after"


def test_durable_index_is_the_synced_prefix(tmp_path: Path) -> None:
    j = DurableJournal(tmp_path / "j")
    for i in range(1, 6):
        j.add(b"c%d" % i, i, 1)
    assert j.durable_index == 0  # written, not synced
    j.sync()
    assert j.durable_index == 5
    j.add(b"c6", 6, 1)
    assert j.durable_index == 5
    j.deleteEntriesFrom(3)  # a follower cuts a conflicting suffix (indexes 4..6)
    assert j.durable_index == 3
    j.add(b"x4", 4, 2)  # the replacement is not durable until synced
    assert j.durable_index == 3
    j.sync()
    assert j.durable_index == 4
    j.add(b"x5", 5, 2)
    j.deleteEntriesTo(2)  # compaction rewrites the file, fsynced
    assert j.durable_index == 5
    j._destroy()
    assert DurableJournal(tmp_path / "j").durable_index == 5  # what a restart finds is on disk


def test_a_cut_during_a_sync_is_not_claimed_durable(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The loop thread may cut a conflicting suffix (and append its replacement)
    # while the fsync thread is inside fdatasync: the indexes cut must not come
    # back as durable when that sync returns.
    j = filled(tmp_path / "j", 5)
    j.add(b"c6", 6, 1)
    j.add(b"c7", 7, 1)
    real = os.fdatasync

    def fdatasync_with_a_cut(fd: int) -> None:
        j.deleteEntriesFrom(5)  # indexes 6, 7 go
        j.add(b"x6", 6, 2)  # written after the sync began: not covered
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync_with_a_cut)
    j.sync()
    assert j.durable_index == 5
    monkeypatch.setattr(os, "fdatasync", real)
    j.sync()
    assert j.durable_index == 6


def test_opening_a_journal_syncs_what_a_crash_left_unsynced(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # After a process crash the file may hold records still only in the page
    # cache; they are counted as durable only after this fsync.
    filled(tmp_path / "j", 3)._destroy()
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
    j = DurableJournal(tmp_path / "j")
    assert synced, "the journal was not fsynced when opened"
    assert j.durable_index == 3


def test_a_failed_fsync_poisons_the_journal(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # After a failed fsync Linux may have marked the unwritten pages clean, so a
    # later fsync that succeeds proves nothing: no sync may claim them again.
    j = filled(tmp_path / "j", 3)
    failures: list[OSError] = []
    j.on_fsync_error = lambda _path, error: failures.append(error)
    j.add(b"c4", 4, 1)
    real = os.fdatasync

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", failing)
    with pytest.raises(OSError):
        j.sync()
    monkeypatch.setattr(os, "fdatasync", real)
    with pytest.raises(OSError):
        j.sync()  # the disk answers again: still not trusted
    assert [e.errno for e in failures] == [errno.EIO]
    assert j.durable_index == 3
    assert j.synced_seq < j.appended_seq


def test_a_failed_fsync_stops_the_process(tmp_path: Path) -> None:
    script = (
        "import errno, os, sys\n"
        "from raftmem.consensus.journal import DurableJournal\n"
        f"j = DurableJournal({str(tmp_path / 'j')!r})\n"
        "j.add(b'c1', 1, 1)\n"
        "def failing(fd): raise OSError(errno.EIO, 'Input/output error')\n"
        "os.fdatasync = failing\n"
        "try:\n"
        "    j.sync()\n"
        "except OSError:\n"
        "    sys.exit(1)  # still running: the failure was not fatal\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == FSYNC_FAILED_EXIT, done.stderr
    assert "fsync failed" in done.stderr
