"""Typed commands keep the log's wire format (journals and stored idempotency
fingerprints from before they were typed still apply the same), results read
the older stored form, and applying an entry yields exactly its change events,
in order, never again on replay."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from raftmem import codec
from raftmem.commands import (
    Delete,
    Expire,
    MemoryFields,
    Noop,
    Outcome,
    Put,
    Restore,
    Result,
    SetMembers,
    decode_entry,
    encode_entry,
    fingerprint,
)
from raftmem.events import Change, ChangeFeed, ChangeKind, Overflowed
from raftmem.statemachine import StateMachine
from raftmem.storage import Store

NOW = 1_763_700_000_000

# Entries as the untyped code wrote them (the dicts it built, key order included).
OLD_PUT = {"t": "put", "ns": "ns", "id": "a",
           "fields": {"agent_id": "al", "content": {"x": 1}, "tags": ["t"], "metadata": {}, "ttl_s": 5},
           "if_match": None, "if_none_match": False, "idem": "k1", "now": NOW}
OLD_DELETE = {"t": "delete", "ns": "ns", "id": "a", "if_match": 2, "idem": None, "now": NOW}


def _old_fingerprint(op: dict) -> str:
    stable = {k: v for k, v in op.items() if k not in ("now", "idem")}
    return hashlib.blake2b(codec.dumps(stable), digest_size=12).hexdigest()


def test_commands_write_the_entries_the_untyped_code_wrote() -> None:
    old = [OLD_PUT, OLD_DELETE, {"t": "noop"}, {"t": "expire", "now": NOW}, {"t": "restore", "rec": {"id": "a"}},
           {"t": "members", "table": {"nodes": []}, "if_version": 3, "now": NOW}]
    data = codec.encode_entry(old)
    commands = decode_entry(data)
    assert [type(c) for c in commands] == [Put, Delete, Noop, Expire, Restore, SetMembers]
    assert encode_entry(commands) == data  # byte for byte
    assert fingerprint(commands[0]) == _old_fingerprint(OLD_PUT)
    assert fingerprint(commands[1]) == _old_fingerprint(OLD_DELETE)


def test_control_a_changed_field_changes_the_fingerprint() -> None:
    put = decode_entry(codec.encode_entry([OLD_PUT]))[0]
    assert isinstance(put, Put)
    other = Put(put.namespace, put.id, MemoryFields(content={"x": 2}, agent_id="al", tags=("t",), ttl_s=5))
    assert fingerprint(other) != fingerprint(put)


def test_a_malformed_command_is_invalid_not_an_exception() -> None:
    commands = decode_entry(codec.encode_entry([{"t": "put", "ns": "ns"}, {"t": "delete", "ns": 3, "id": "a"}]))
    assert [type(c).__name__ for c in commands] == ["Invalid", "Invalid"]
    with pytest.raises(codec.CodecError):
        decode_entry(b"\x01" + codec.dumps({"ops": [{"t": "drop_all"}]}))


@pytest.mark.parametrize(
    ("stored", "outcome"),
    [
        ({"status": 201, "memory": {"version": 1}}, Outcome.CREATED),
        ({"status": 200, "memory": {"version": 2}}, Outcome.UPDATED),
        ({"status": 200, "deleted": {"namespace": "ns", "id": "a", "version": 2}}, Outcome.DELETED),
        ({"status": 412, "error": {"code": "precondition_failed", "message": "m", "version": 4}},
         Outcome.PRECONDITION_FAILED),
        ({"status": 404, "error": {"code": "not_found", "message": "m"}}, Outcome.NOT_FOUND),
    ],
)
def test_results_stored_in_the_older_form_decode(stored: dict, outcome: Outcome) -> None:
    result = Result.from_wire(stored)
    assert result.outcome == outcome
    assert Result.from_wire(result.to_wire()) == result
    if outcome == Outcome.PRECONDITION_FAILED:
        assert result.version == 4


def test_results_are_stored_in_the_form_the_first_version_wrote() -> None:
    """So a downgrade, or an older follower installing a newer leader's snapshot,
    reads the stored results of idempotency keys."""
    memory = {"id": "a", "version": 1}
    assert Result(Outcome.CREATED, memory=memory).to_wire() == {"status": 201, "memory": memory}
    assert Result(Outcome.UPDATED, memory=memory).to_wire() == {"status": 200, "memory": memory}
    assert Result(Outcome.PRECONDITION_FAILED, "version is 4", version=4).to_wire() == {
        "status": 412, "error": {"code": "precondition_failed", "message": "version is 4", "version": 4}}
    assert Result(Outcome.NOT_FOUND, "gone").to_wire() == {
        "status": 404, "error": {"code": "not_found", "message": "gone"}}


def test_a_key_stored_before_the_change_still_answers_its_retry(tmp_path: Path) -> None:
    """A journal entry and a stored result as the untyped code left them on disk."""
    store = Store(tmp_path)
    sm = StateMachine(store, 0)
    from raftmem.storage import Batch

    batch = Batch()
    stored = {"fp": _old_fingerprint(OLD_PUT), "result": {"status": 201, "memory": {"id": "a", "version": 1}}}
    batch.put(b"k\x00k1", codec.dumps(stored))
    store.commit(batch)
    again = sm.apply(1, codec.encode_entry([OLD_PUT])).results[0]
    assert again.replayed and again.outcome == Outcome.CREATED and again.memory == {"id": "a", "version": 1}
    clash = sm.apply(2, codec.encode_entry([{**OLD_PUT, "fields": {**OLD_PUT["fields"], "content": 9}}])).results[0]
    assert clash.outcome == Outcome.IDEMPOTENCY_KEY_REUSED
    store.close()


def _put(mid: str, now: int = NOW, **kw: object) -> Put:
    return Put("ns", mid, MemoryFields(content=mid, **kw), now_ms=now)  # type: ignore[arg-type]


def test_apply_yields_each_change_once_in_order(tmp_path: Path) -> None:
    sm = StateMachine(Store(tmp_path / "db"), 3)
    seen: list[Change] = []
    log = [
        encode_entry([_put("a"), _put("b", ttl_s=1)]),
        encode_entry([_put("a", now=NOW + 1), Delete("ns", "b", now_ms=NOW + 1), Delete("ns", "zz", now_ms=NOW)]),
        encode_entry([_put("c", ttl_s=1)]),
        encode_entry([Expire(NOW + 5000), Noop()]),
    ]
    for index, entry in enumerate(log, start=1):
        seen.extend(sm.apply(index, entry).changes)
    assert [(c.kind, c.index, c.id, c.version) for c in seen] == [
        (ChangeKind.PUT, 1, "a", 1), (ChangeKind.PUT, 1, "b", 1),
        (ChangeKind.PUT, 2, "a", 2), (ChangeKind.DELETE, 2, "b", 1),
        (ChangeKind.PUT, 3, "c", 1), (ChangeKind.EXPIRE, 4, "c", 1),
    ]
    assert all(c.shard == 3 for c in seen)
    overwrite = seen[2]
    assert overwrite.before is not None and overwrite.before["version"] == 1 and overwrite.after["version"] == 2
    assert seen[0].before is None and seen[3].after is None
    # Reopened and replayed from the start (a restart): nothing is emitted twice.
    sm.store.close()
    sm = StateMachine(Store(tmp_path / "db"), 3)
    assert [sm.apply(i, e).changes for i, e in enumerate(log, start=1)] == [[], [], [], []]
    assert [c.index for c in sm.apply(5, encode_entry([_put("d")])).changes] == [5]
    sm.store.close()


def test_a_failed_precondition_changes_nothing_and_says_nothing(tmp_path: Path) -> None:
    sm = StateMachine(Store(tmp_path), 0)
    sm.apply(1, encode_entry([_put("a")]))
    applied = sm.apply(2, encode_entry([Put("ns", "a", MemoryFields(content=1), if_match=7, now_ms=NOW)]))
    assert applied.results[0].outcome == Outcome.PRECONDITION_FAILED and applied.changes == []
    sm.store.close()


async def test_the_feed_delivers_in_order_and_cuts_off_a_subscriber_that_falls_behind() -> None:
    feed = ChangeFeed()
    everything = feed.subscribe()
    shard_one = feed.subscribe(shards=[1])
    slow = feed.subscribe(queue_max=2)
    changes = [Change(ChangeKind.PUT, s, i, "ns", f"m{i}") for i, s in ((1, 0), (2, 1), (3, 0))]
    feed.publish(changes)
    assert [await everything.get(0.1) for _ in range(3)] == changes
    assert await everything.get(0.01) is None  # nothing more: a timeout, not an error
    assert [await shard_one.get(0.1)] == [changes[1]]
    # The slow one got two, then was cut off; it learns where it stopped.
    assert [slow.get_nowait(), slow.get_nowait()] == changes[:2]
    with pytest.raises(Overflowed) as cut:
        slow.get_nowait()
    assert cut.value.last == {0: 1, 1: 2}
    assert feed.overflows == 1 and feed.watermarks == {0: 3, 1: 2}


def _entries() -> list[bytes]:
    return [
        encode_entry([_put("a"), _put("b", ttl_s=1)]),
        encode_entry([_put("a", now=NOW + 1), Delete("ns", "b", now_ms=NOW + 1)]),
        encode_entry([Noop()]),
        encode_entry([_put("c", ttl_s=1)]),
        encode_entry([Expire(NOW + 5000)]),
    ]


def test_the_change_log_reads_back_what_apply_published(tmp_path: Path) -> None:
    sm = StateMachine(Store(tmp_path / "db"), 2, events_retention=1000)
    live: list[Change] = []
    for index, entry in enumerate(_entries(), start=1):
        live.extend(sm.apply(index, entry).changes)
    page = sm.changes_after(0, 100)
    assert page.complete and page.through == 5
    assert [(c.kind, c.index, c.id, c.version, c.time_ms) for c in page.changes] == [
        (c.kind, c.index, c.id, c.version, c.time_ms) for c in live
    ]
    assert [c.prev_version for c in page.changes] == [None, None, 1, None, None, None]
    assert page.changes[2].after["content"] == "a" and page.changes[3].before["id"] == "b"  # the removed record
    # Resumed from a token: exactly what came after it, a page ends on an entry's boundary.
    assert [c.index for c in sm.changes_after(2, 100).changes] == [4, 5]
    first = sm.changes_after(0, 1)
    assert [c.index for c in first.changes] == [1, 1] and not first.complete and first.through == 1
    # Reopened and replayed (a restart): the log has no duplicates.
    sm.store.close()
    sm = StateMachine(Store(tmp_path / "db"), 2, events_retention=1000)
    for index, entry in enumerate(_entries(), start=1):
        sm.apply(index, entry)
    assert len(sm.changes_after(0, 100).changes) == len(live)
    sm.store.close()


def test_the_change_log_keeps_its_retention_and_refuses_older_resumes(tmp_path: Path) -> None:
    from raftmem.events import Compacted
    from raftmem.statemachine import EVENT_TRIM_SLACK_MIN

    retention = 10
    sm = StateMachine(Store(tmp_path / "db"), 0, events_retention=retention)
    last = retention + EVENT_TRIM_SLACK_MIN + 5
    for index in range(1, last + 1):
        sm.apply(index, encode_entry([_put(f"m{index}", now=NOW + index)]))
    assert sm.events_from > 1  # trimmed once
    kept = sm.changes_after(sm.events_from - 1, 10_000).changes
    assert [c.index for c in kept] == list(range(sm.events_from, last + 1)) and len(kept) >= retention
    with pytest.raises(Compacted) as cut:
        sm.changes_after(sm.events_from - 2, 10)
    assert cut.value.oldest == sm.events_from - 1
    # What the trim removed is gone from the store, not just hidden.
    assert not list(sm.store.scan(b"e\x00", b"e\x00" + codec.u64(sm.events_from)))
    sm.store.close()


def test_control_without_retention_no_resume_is_possible(tmp_path: Path) -> None:
    from raftmem.events import Compacted

    sm = StateMachine(Store(tmp_path / "db"), 0)
    sm.apply(1, encode_entry([_put("a")]))
    with pytest.raises(Compacted):
        sm.changes_after(0, 10)
    assert sm.changes_after(1, 10).changes == []
    sm.store.close()


def test_the_change_log_travels_inside_a_snapshot(tmp_path: Path) -> None:
    leader = StateMachine(Store(tmp_path / "leader"), 1, events_retention=1000)
    for index, entry in enumerate(_entries(), start=1):
        leader.apply(index, entry)
    leader.create_checkpoint(tmp_path / "ckpt")
    leader.pack_checkpoint(tmp_path / "ckpt", tmp_path / "snap", b"{}")
    follower = StateMachine(Store(tmp_path / "follower"), 1, events_retention=1000)
    follower.install_snapshot(tmp_path / "snap")
    assert follower.applied_index == 5 and follower.events_from == leader.events_from
    assert [(c.index, c.id) for c in follower.changes_after(0, 100).changes] == [
        (c.index, c.id) for c in leader.changes_after(0, 100).changes
    ]
    leader.store.close()
    follower.store.close()


def test_a_txn_applies_whole_or_not_at_all_and_its_gets_see_its_writes(tmp_path: Path) -> None:
    from raftmem.commands import Get, Txn

    sm = StateMachine(Store(tmp_path / "db"), 0, events_retention=100)
    sm.apply(1, encode_entry([_put("a")]))
    # One op fails (If-Match): nothing of the txn is written, no change is emitted.
    failing = Txn((_put("b"), Get("ns", "b", NOW), Put("ns", "a", MemoryFields(content=9), if_match=5, now_ms=NOW)))
    applied = sm.apply(2, encode_entry([failing]))
    (result,) = applied.results
    assert result.outcome == Outcome.ABORTED and applied.changes == []
    assert [r.outcome for r in result.results] == [Outcome.ABORTED, Outcome.READ, Outcome.PRECONDITION_FAILED]
    assert sm.get("ns", "b", NOW) is None and sm.get("ns", "a", NOW)["content"] == "a"
    assert sm.changes_after(1, 10).changes == []
    # Control: the same txn with the right version applies whole, in order.
    ok = Txn((_put("b"), Get("ns", "b", NOW), Put("ns", "a", MemoryFields(content=9), if_match=1, now_ms=NOW),
              Get("ns", "zz", NOW)))
    applied = sm.apply(3, encode_entry([ok]))
    (result,) = applied.results
    assert result.outcome == Outcome.APPLIED
    assert [r.outcome for r in result.results] == [Outcome.CREATED, Outcome.READ, Outcome.UPDATED, Outcome.NOT_FOUND]
    assert result.results[1].memory["content"] == "b"  # the get saw the txn's own write
    assert [(c.id, c.version) for c in applied.changes] == [("b", 1), ("a", 2)]
    sm.store.close()


def test_idempotency_keys_inside_a_txn_are_kept_only_when_it_applies(tmp_path: Path) -> None:
    from raftmem.commands import Txn

    sm = StateMachine(Store(tmp_path / "db"), 0)
    keyed = Put("ns", "k", MemoryFields(content=1), idempotency_key="key-1", now_ms=NOW)
    failing = Txn((keyed, Delete("ns", "missing", now_ms=NOW)))
    assert sm.apply(1, encode_entry([failing])).results[0].outcome == Outcome.ABORTED
    # The key was not recorded: the same keyed put applies afresh, then replays.
    assert sm.apply(2, encode_entry([keyed])).results[0].outcome == Outcome.CREATED
    again = sm.apply(3, encode_entry([Txn((keyed,))])).results[0]
    assert again.outcome == Outcome.APPLIED and again.results[0].replayed
    sm.store.close()


def test_the_fingerprints_of_other_coordination_commands_did_not_change() -> None:
    """Only the enqueue's fingerprint was narrowed (to what its client chose):
    keys stored for every other command still compare as they did."""
    from raftmem.commands import AcquireLock, ClaimTask, ReleaseLock, RenewLock, SettleTask

    for command in (AcquireLock("ns", "L", "h", 1000, "k", NOW), RenewLock("ns", "L", 7, 1000, "k", NOW),
                    ReleaseLock("ns", "L", 7, "k", NOW), ClaimTask("q", "w", 1000, "k", NOW),
                    SettleTask("q", "t", 7, "complete", {"r": 1}, idempotency_key="k", now_ms=NOW)):
        assert fingerprint(command) == _old_fingerprint(command.to_wire())
