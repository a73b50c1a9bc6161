"""The store's I/O counters and size for /metrics: RocksDB's statistics parsed
into the three counters the write-amplification metrics name (no others), and
both reused for STATS_REUSE_S (a scrape reads them twice per replica)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raftmem import storage
from raftmem.storage import Batch, Store


def test_io_stats_are_the_three_counters_and_count_a_flush(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage, "STATS_REUSE_S", 0.0)
    st = Store(tmp_path, wal=True)
    before = st.io_stats()
    assert set(before) == {"wal_bytes", "flush_bytes", "compaction_bytes"}
    batch = Batch()
    for i in range(200):
        batch.put(b"k%d" % i, b"v" * 100)
    st.commit(batch)
    st.flush()
    after = st.io_stats()
    assert after["wal_bytes"] > before["wal_bytes"] and after["flush_bytes"] > before["flush_bytes"]
    assert st.size_bytes() > 0
    st.close()


def test_io_stats_and_size_are_reused_for_a_while(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [100.0]
    monkeypatch.setattr(storage.time, "monotonic", lambda: clock[0])
    st = Store(tmp_path, wal=True)
    first, size = st.io_stats(), st.size_bytes()
    batch = Batch()
    batch.put(b"k", b"v" * 1000)
    st.commit(batch)
    st.flush()
    assert st.io_stats() == first and st.size_bytes() == size  # within STATS_REUSE_S
    clock[0] += storage.STATS_REUSE_S
    assert st.io_stats()["flush_bytes"] > first["flush_bytes"] and st.size_bytes() > size
    st.close()
