"""The state machine on a real RocksDB: apply results, determinism, replay
idempotence, idempotency keys, expiry, snapshot and restore."""

from __future__ import annotations

import tarfile
from pathlib import Path
from typing import Any

import pytest

from raftmem import codec
from raftmem.commands import Command, Delete, Expire, MemoryFields, Outcome, Put, encode_entry
from raftmem.statemachine import ListQuery, StateMachine, index_keys
from raftmem.storage import SnapshotCorrupt, Store

CREATED, UPDATED, DELETED = Outcome.CREATED, Outcome.UPDATED, Outcome.DELETED
PRECONDITION_FAILED, NOT_FOUND = Outcome.PRECONDITION_FAILED, Outcome.NOT_FOUND

NOW = 1_763_700_000_000


def put(mid: str, now: int = NOW, **kw: Any) -> Put:
    fields = MemoryFields(content=kw.pop("content", mid), tags=tuple(kw.pop("tags", [])),
                          agent_id=kw.pop("agent_id", None), ttl_s=kw.pop("ttl_s", None))
    return Put("ns", mid, fields, if_match=kw.pop("if_match", None), if_none_match=kw.pop("if_none_match", False),
               idempotency_key=kw.pop("idem", None), now_ms=now, **kw)


def delete(mid: str, now: int = NOW, **kw: Any) -> Delete:
    return Delete("ns", mid, now_ms=now, **kw)


def sm_at(path: Path) -> StateMachine:
    return StateMachine(Store(path), shard=0, idempotency_keys_max=3)


def entry(*commands: Command) -> bytes:
    return encode_entry(commands)


def test_apply_results_and_preconditions(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    r = sm.apply(1, entry(put("a"), put("a", content="again"), put("b", if_none_match=True)))
    assert [x.outcome for x in r.results] == [CREATED, UPDATED, CREATED]
    assert r.results[1].memory["version"] == 2  # same-entry writes see each other
    r = sm.apply(2, entry(put("a", if_match=1), put("a", if_match=2), put("b", if_none_match=True)))
    assert [x.outcome for x in r.results] == [PRECONDITION_FAILED, UPDATED, PRECONDITION_FAILED]
    r = sm.apply(3, entry(delete("a", if_match=9), delete("a"), delete("a")))
    assert [x.outcome for x in r.results] == [PRECONDITION_FAILED, DELETED, NOT_FOUND]
    assert sm.get("ns", "a", NOW) is None and sm.get("ns", "b", NOW)["version"] == 1


def test_bad_operations_become_results_not_exceptions(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    r = sm.apply(1, codec.encode_entry([{"t": "put", "ns": "ns"}, put("ok").to_wire()]))
    assert [x.outcome for x in r.results] == [Outcome.INVALID_OPERATION, CREATED]
    r = sm.apply(2, b"\x09garbage")
    assert r.results[0].outcome == Outcome.INVALID_ENTRY
    assert sm.applied_index == 2  # the log moves on


def test_replay_is_harmless(tmp_path: Path) -> None:
    log = [entry(put(f"k{i}", content=i, tags=["t"])) for i in range(1, 20)]
    sm = sm_at(tmp_path / "a")
    for i, e in enumerate(log, start=1):
        sm.apply(i, e)
    state = [r for r in sm.iter_records()]
    # Restart (reopen) and replay the whole log: nothing changes.
    sm.store.close()
    sm = sm_at(tmp_path / "a")
    assert sm.applied_index == 19
    for i, e in enumerate(log, start=1):
        assert sm.apply(i, e).replayed is True
    assert list(sm.iter_records()) == state
    # A second replica applying the same log reaches the same state (determinism).
    other = sm_at(tmp_path / "b")
    for i, e in enumerate(log, start=1):
        other.apply(i, e)
    assert list(other.iter_records()) == state


def test_idempotency_keys_are_remembered_and_bounded(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    first = sm.apply(1, entry(put("a", idem="k1"))).results[0]
    again = sm.apply(2, entry(put("a", idem="k1", now=NOW + 5))).results[0]
    assert again.replayed is True and again.memory["version"] == first.memory["version"] == 1
    clash = sm.apply(3, entry(put("a", idem="k1", content="other"))).results[0]
    assert clash.outcome == Outcome.IDEMPOTENCY_KEY_REUSED
    for i in range(2, 6):  # bound is 3 keys: k1 gets evicted
        sm.apply(2 + i, entry(put(f"x{i}", idem=f"k{i}")))
    replay = sm.apply(20, entry(put("a", idem="k1"))).results[0]
    assert not replay.replayed and replay.memory["version"] == 2


def test_expiry_is_decided_by_the_proposed_time(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    sm.apply(1, entry(put("short", ttl_s=1), put("long", ttl_s=100)))
    assert sm.get("ns", "short", NOW + 999) is not None
    assert sm.get("ns", "short", NOW + 1000) is None  # invisible once expired
    r = sm.apply(2, entry(Expire(NOW + 5000)))
    assert r.results[0].expired == 1
    assert sm.get("ns", "long", NOW + 5000) is not None
    assert [m["id"] for m in sm.list(ListQuery("ns"), NOW + 5000)] == ["long"]


def test_list_indexes_follow_updates(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    sm.apply(1, entry(put("a", tags=["x"], agent_id="al"), put("b", now=NOW + 1, tags=["x", "y"], agent_id="bo")))
    sm.apply(2, entry(put("a", now=NOW + 2, tags=["y"], agent_id="bo")))
    ids = lambda **kw: [m["id"] for m in sm.list(ListQuery("ns", **kw), NOW + 10)]  # noqa: E731
    assert ids(tag="x") == ["b"]
    assert ids(tag="y") == ["a", "b"]  # created_at is kept across updates
    assert ids(agent_id="bo") == ["a", "b"]
    assert ids(agent_id="al") == []
    assert ids(after=(NOW, "a")) == ["b"]
    assert ids(since_ms=NOW + 1) == ["b"]
    assert ids(until_ms=NOW) == ["a"]


def test_snapshot_restores_on_another_replica(tmp_path: Path) -> None:
    sm = sm_at(tmp_path / "src")
    for i in range(1, 30):
        sm.apply(i, entry(put(f"k{i}", content=i)))
    sm.create_checkpoint(tmp_path / "cp")
    sm.pack_checkpoint(tmp_path / "cp", tmp_path / "snap", b'{"applied": 29}')
    assert sm.read_snapshot_meta(tmp_path / "snap") == b'{"applied": 29}'
    dst = sm_at(tmp_path / "dst")
    dst.apply(1, entry(put("stale")))
    dst.install_snapshot(tmp_path / "snap")
    assert dst.applied_index == 29
    assert list(dst.iter_records()) == list(sm.iter_records())
    # The switch is durable: reopening finds the installed generation.
    dst.store.close()
    again = sm_at(tmp_path / "dst")
    assert again.applied_index == 29 and again.get("ns", "stale", NOW) is None


def _torn_copies(packed: Path, out: Path) -> dict[str, Path]:
    """The ways a snapshot arrives damaged: a chunk lost inside a file's data
    (every tar header after it is misread, and tarfile stops there without a
    word), cut short, one byte changed in a file or in the metadata."""
    data = packed.read_bytes()
    with tarfile.open(packed) as tar:
        first_sst = next(m for m in tar.getmembers() if m.name.endswith(".sst"))
        meta_at = tar.getmembers()[0].offset_data + 2
    lost_at = first_sst.offset_data + 100

    def flip(at: int) -> bytes:
        return data[:at] + bytes([data[at] ^ 1]) + data[at + 1:]

    variants = {
        "chunk-lost": data[:lost_at] + data[lost_at + 4096:],
        "cut-short": data[: len(data) // 2],
        "byte-changed": flip(lost_at),
        "meta-changed": flip(meta_at),
    }
    out.mkdir()
    for name, blob in variants.items():
        (out / name).write_bytes(blob)
    return {name: out / name for name in variants}


def test_a_torn_snapshot_is_refused_and_the_live_state_kept(tmp_path: Path) -> None:
    """Checking (and staging, which checks first) compares every member of the
    archive with the manifest packed last, before anything is unpacked.
    Negative control: unchecked (and with RocksDB allowed to create a database),
    the snapshot that lost a chunk installs as an empty database at index 0,
    without an error: what a wiped node did with the million memories."""
    sm = sm_at(tmp_path / "src")
    for i in range(1, 400):
        sm.apply(i, entry(put(f"k{i}", content="x" * 200)))
        if i == 200:  # an earlier flush: an SST ahead of the WAL in the packed order
            sm.create_checkpoint(tmp_path / "cp0")
    sm.create_checkpoint(tmp_path / "cp")
    sm.pack_checkpoint(tmp_path / "cp", tmp_path / "snap", b'{"applied": 399}')
    for name, torn in _torn_copies(tmp_path / "snap", tmp_path / "torn").items():
        dst = sm_at(tmp_path / f"dst-{name}")
        dst.apply(1, entry(put("mine")))
        with pytest.raises(SnapshotCorrupt):
            Store.verify_snapshot(torn)
        with pytest.raises(SnapshotCorrupt):
            dst.stage_snapshot(torn)
        assert dst.applied_index == 1 and dst.get("ns", "mine", NOW) is not None
        assert not [p for p in (tmp_path / f"dst-{name}").iterdir() if p.name.startswith("staged-")]
        dst.store.close()
    control = sm_at(tmp_path / "control")
    control.install_staged(control.stage_snapshot(tmp_path / "torn" / "chunk-lost", verify=False), must_exist=False)
    assert control.applied_index == 0 and not list(control.iter_records())
    # Checked, but a database directory without a database is refused at the open too.
    control.store.close()
    again = sm_at(tmp_path / "control2")
    with pytest.raises(Exception, match="does not exist"):
        again.install_staged(again.stage_snapshot(tmp_path / "torn" / "chunk-lost", verify=False))
    # The intact snapshot passes and installs.
    Store.verify_snapshot(tmp_path / "snap")
    good = sm_at(tmp_path / "good")
    good.install_staged(good.stage_snapshot(tmp_path / "snap"))
    assert good.applied_index == 399 and list(good.iter_records()) == list(sm.iter_records())


def test_a_staged_snapshot_is_invisible_until_installed(tmp_path: Path) -> None:
    """Staging (the slow half of an install, run off the event loop) leaves the live
    database alone; a crash before the install discards the staging at the next
    open, and the install itself switches generations."""
    sm = sm_at(tmp_path / "src")
    for i in range(1, 11):
        sm.apply(i, entry(put(f"k{i}", content=i)))
    sm.create_checkpoint(tmp_path / "cp")
    sm.pack_checkpoint(tmp_path / "cp", tmp_path / "snap", b'{"applied": 10}')
    dst = sm_at(tmp_path / "dst")
    dst.apply(1, entry(put("mine")))
    staged = dst.stage_snapshot(tmp_path / "snap")
    assert staged.is_dir() and staged.parent == tmp_path / "dst"
    assert dst.applied_index == 1 and dst.get("ns", "mine", NOW) is not None
    # "Crash" with the staging in place: reopening keeps the live generation only.
    dst.store.close()
    dst = sm_at(tmp_path / "dst")
    assert not staged.exists()
    assert dst.applied_index == 1 and dst.get("ns", "mine", NOW) is not None
    # Stage again and install: the snapshot's state, durable across a reopen.
    dst.install_staged(dst.stage_snapshot(tmp_path / "snap"))
    assert dst.applied_index == 10 and dst.get("ns", "mine", NOW) is None
    assert list(dst.iter_records()) == list(sm.iter_records())
    dst.store.close()
    again = sm_at(tmp_path / "dst")
    assert again.applied_index == 10
    assert sorted(p.name for p in (tmp_path / "dst").iterdir() if p.is_dir()) == ["db-000002"]


def _index_invariant(sm: StateMachine) -> None:
    """Every index entry in the store belongs to a stored record, and every
    stored record has all of its index entries."""
    stored = {k for p in (b"c\x00", b"a\x00", b"t\x00", b"x\x00", b"r\x00a\x00") for k, _ in sm.store.scan(p, p[:-1] + b"\x01")}
    expected = {k for rec in sm.iter_records() for k in index_keys(rec)}
    assert stored == expected


def test_overwrites_write_only_the_index_entries_that_change(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    counts: list[int] = []
    commit = sm.store.commit
    sm.store.commit = lambda batch: (counts.append(batch.count), commit(batch))[1]  # type: ignore[method-assign]
    steps = [
        put("a", tags=["x", "y"], agent_id="al"),
        put("a", now=NOW + 1, tags=["x", "y"], agent_id="al"),  # same indexes: the record alone
        put("a", now=NOW + 2, tags=["y", "z"], agent_id="al"),  # tag x out, z in
        put("a", now=NOW + 3, tags=["y", "z"], agent_id="bo", ttl_s=5),  # agent changes, expiry appears
        put("a", now=NOW + 4, tags=["y", "z"], agent_id="bo", ttl_s=9),  # expiry moves
        put("a", now=NOW + 20_000, tags=["y"]),  # over an expired record: created_at is new
        delete("a", now=NOW + 20_001),
    ]
    for index, op in enumerate(steps, start=1):
        sm.apply(index, entry(op))
        _index_invariant(sm)
    # Record + applied index only; then tag x deleted, z put.
    assert counts[1] == 2
    assert counts[2] == 4
    # Several writes of one key in one entry (the overlay carries the old record).
    sm.apply(10, entry(put("b", tags=["p"]), put("b", now=NOW + 1, tags=["q"]), put("b", now=NOW + 2, tags=["q"])))
    _index_invariant(sm)
    assert [m["id"] for m in sm.list(ListQuery("ns", tag="q"), NOW + 10)] == ["b"]
    assert sm.list(ListQuery("ns", tag="p"), NOW + 10) == []
