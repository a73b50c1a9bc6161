"""Version history in the state machine (raftmem.history), on a real RocksDB:
written by apply in the entry's batch, newest first, bounded per memory, kept
after a delete or an expiry until compacted, carried by snapshots, never
written twice by a replay; and the wire forms of the new write fields."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from raftmem import codec, embeddings
from raftmem.commands import (
    Command,
    Delete,
    Expire,
    MemoryFields,
    Prune,
    Put,
    decode_entry,
    encode_entry,
    fingerprint,
)
from raftmem.history import HISTORY_PREFIX
from raftmem.statemachine import StateMachine
from raftmem.storage import Store

NOW = 1_763_700_000_000
SHARD = 3


def sm_at(path: Path, versions_max: int = 3) -> StateMachine:
    return StateMachine(Store(path), shard=SHARD, history_versions_max=versions_max, events_retention=1000)


def put(mid: str, content: Any, now: int = NOW, actor: str | None = None, **kw: Any) -> Put:
    return Put("ns", mid, MemoryFields(content=content, actor=actor, **kw), now_ms=now)


def apply(sm: StateMachine, *commands: Command) -> int:
    index = sm.applied_index + 1
    sm.apply(index, encode_entry(commands))
    return index


def events(sm: StateMachine, mid: str = "a") -> list[tuple[str, int, Any, str | None]]:
    return [(v["event"], v["version"], v["value"], v["actor"]) for v in sm.history_of("ns", mid, 100)]


def test_versions_newest_first_with_token_time_and_actor(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    i1 = apply(sm, put("a", "one", actor="planner"))
    i2 = apply(sm, put("a", "two", now=NOW + 5, actor="worker-1", tags=("x",)))
    versions = sm.history_of("ns", "a", 10)
    assert [(v["version"], v["value"], v["actor"], v["token"], v["time"]) for v in versions] == [
        (2, "two", "worker-1", f"{SHARD}:{i2}", NOW + 5), (1, "one", "planner", f"{SHARD}:{i1}", NOW)]
    assert versions[0]["tags"] == ["x"] and versions[0]["event"] == "put"
    assert sm.get("ns", "a", NOW + 5)["actor"] == "worker-1"  # the record names its last writer


def test_history_is_bounded_per_memory_and_the_oldest_goes_first(tmp_path: Path) -> None:
    sm = sm_at(tmp_path, versions_max=3)
    for n in range(1, 8):
        apply(sm, put("a", n, now=NOW + n))
    apply(sm, put("b", "other"))
    assert [v for _e, v, _val, _a in events(sm)] == [7, 6, 5]
    assert len(list(sm.store.scan(b"h\x00ns\x00a\x00", b"h\x00ns\x00a\x01"))) == 3  # trimmed on disk, not hidden
    assert [v for _e, v, _val, _a in events(sm, "b")] == [1]


def test_several_versions_of_one_memory_in_one_entry(tmp_path: Path) -> None:
    sm = sm_at(tmp_path, versions_max=2)
    apply(sm, put("a", 1), put("a", 2, now=NOW + 1), put("a", 3, now=NOW + 2))
    assert [v for _e, v, _val, _a in events(sm)] == [3, 2]


def test_deletes_and_expiries_are_versions_and_the_history_outlives_the_memory(tmp_path: Path) -> None:
    sm = sm_at(tmp_path, versions_max=10)
    apply(sm, put("a", "one"))
    apply(sm, Delete("ns", "a", now_ms=NOW + 1, actor="janitor"))
    assert sm.get("ns", "a", NOW + 2) is None
    apply(sm, put("a", "again", now=NOW + 2, ttl_s=1))  # a new life: version 1 again
    apply(sm, Expire(NOW + 5000))
    assert events(sm) == [("expire", 1, None, None), ("put", 1, "again", None),
                          ("delete", 1, None, "janitor"), ("put", 1, "one", None)]


def test_removed_memories_histories_are_compacted_after_the_cutoff_only(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    apply(sm, put("a", 1), put("b", 1), put("c", 1))
    apply(sm, Delete("ns", "a", now_ms=NOW + 10), Delete("ns", "b", now_ms=NOW + 10))
    apply(sm, Delete("ns", "c", now_ms=NOW + 500))
    apply(sm, put("b", 2, now=NOW + 20))  # written again: it keeps its history
    assert sm.history_compaction_due(NOW + 100)
    apply(sm, Prune("", "history", cutoff_ms=NOW + 100, now_ms=NOW + 1000))
    assert events(sm, "a") == []
    assert [e for e, *_ in events(sm, "b")] == ["put", "delete", "put"]
    assert [e for e, *_ in events(sm, "c")] == ["delete", "put"]  # removed after the cut-off
    assert not sm.history_compaction_due(NOW + 100)
    assert sm.history_compaction_due(NOW + 500)
    assert sm.store.get(b"n\x00ns\x00a") is None


def test_control_without_history_nothing_is_kept(tmp_path: Path) -> None:
    sm = sm_at(tmp_path, versions_max=0)
    apply(sm, put("a", 1))
    assert events(sm) == []
    assert list(sm.store.scan(b"h\x00", b"h\x01")) == []


def test_a_replay_writes_no_version_twice(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    data = encode_entry([put("a", 1)])
    sm.apply(1, data)
    sm.apply(2, encode_entry([put("a", 2, now=NOW + 1)]))
    sm.store.close()
    again = sm_at(tmp_path)
    again.apply(1, data)  # pysyncobj re-applies its journal after a restart
    assert [v for _e, v, _val, _a in events(again)] == [2, 1]


def test_history_travels_in_a_snapshot(tmp_path: Path) -> None:
    sm = sm_at(tmp_path / "a")
    apply(sm, put("a", 1, actor="x"))
    apply(sm, put("a", 2, now=NOW + 1))
    checkpoint, packed = tmp_path / "cp", tmp_path / "snap"
    sm.create_checkpoint(checkpoint)
    sm.pack_checkpoint(checkpoint, packed, b"{}")
    other = sm_at(tmp_path / "b")
    other.install_snapshot(packed)
    assert events(other) == events(sm)
    apply(other, put("a", 3, now=NOW + 2))  # and goes on from there
    assert [v for _e, v, _val, _a in events(other)] == [3, 2, 1]


def test_new_write_fields_are_on_the_wire_only_when_set() -> None:
    plain = Put("ns", "a", MemoryFields(content=1), now_ms=NOW)
    assert "actor" not in plain.fields.to_wire() and "ttl_refresh_on_read" not in plain.fields.to_wire()
    assert "actor" not in Delete("ns", "a", now_ms=NOW).to_wire()
    with_actor = Put("ns", "a", MemoryFields(content=1, actor="bo", ttl_s=5, ttl_refresh_on_read=True), now_ms=NOW)
    decoded = decode_entry(encode_entry([with_actor, Delete("ns", "a", actor="bo")]))
    assert decoded[0] == with_actor and decoded[1] == Delete("ns", "a", actor="bo")
    # An actor is part of what makes two requests the same (idempotency).
    assert fingerprint(with_actor) != fingerprint(plain)
    assert codec.decode_entry(encode_entry([plain]))[0]["fields"] == {"content": 1, "tags": [], "metadata": {}}


def test_a_txn_writes_its_versions_only_when_it_applies_whole(tmp_path: Path) -> None:
    from raftmem.commands import Txn

    sm = sm_at(tmp_path, versions_max=10)
    # In one entry: a put, then a txn of two more puts of the same memory.
    apply(sm, put("a", 1), Txn((put("a", 2, now=NOW + 1), put("a", 3, now=NOW + 2))))
    assert [(v, val) for _e, v, val, _a in events(sm)] == [(3, 3), (2, 2), (1, 1)]
    # A txn that fails (its delete finds nothing) leaves no version behind.
    apply(sm, Txn((put("a", 4, now=NOW + 3), Delete("ns", "missing", now_ms=NOW + 3))))
    assert [v for _e, v, _val, _a in events(sm)] == [3, 2, 1]
    assert sm.get("ns", "a", NOW + 3)["content"] == 3


def test_versions_do_not_keep_embeddings(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    vector = embeddings.pack([0.5, 0.25, 1.0])
    apply(sm, put("a", "one", embedding=vector), put("b", "plain"))
    assert sm.get("ns", "a", NOW)["emb"] == vector  # the memory keeps it (search's)
    stored = [raw for key, raw in sm.store.scan(HISTORY_PREFIX, HISTORY_PREFIX[:-1] + b"\x01")]
    assert len(stored) == 2 and not any(b"emb" in raw for raw in stored)
    assert events(sm) == [("put", 1, "one", None)]
