"""The lifecycle of memories in the state machine, with times chosen by hand:
access tracking and sliding TTL through coalesced `Touch` commands, pruning
policies selected on the leader and re-checked in apply."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftmem.commands import (
    Command,
    Delete,
    Expire,
    MemoryFields,
    Prune,
    Put,
    Touch,
    TouchItem,
    encode_entry,
)
from raftmem.config import PolicyConfig
from raftmem.events import ChangeKind
from raftmem.statemachine import StateMachine
from raftmem.storage import Store

T = TypeVar("T")
NOW = 1_763_700_000_000
DAY_MS = 86_400_000


def sm_at(path: Path) -> StateMachine:
    return StateMachine(Store(path), shard=0, history_versions_max=5)


def put(mid: str, now: int, agent: str | None = None, tags: tuple[str, ...] = (), **kw: Any) -> Put:
    return Put("ns", mid, MemoryFields(content=mid, agent_id=agent, tags=tags, **kw), now_ms=now)


def apply(sm: StateMachine, *commands: Command) -> list[Any]:
    applied = sm.apply(sm.applied_index + 1, encode_entry(commands))
    return applied.results


def read(mid: str, at: int, refresh: bool = False, reads: int = 1) -> TouchItem:
    return TouchItem("ns", mid, reads, at, refresh)


# -- access tracking and sliding TTL --------------------------------------------------------
def test_reads_count_and_move_the_last_access_without_a_new_version(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    apply(sm, put("a", NOW))
    assert sm.get("ns", "a", NOW)["access_count"] == 0 and sm.get("ns", "a", NOW)["last_accessed_at"] == NOW
    applied = sm.apply(2, encode_entry([Touch((read("a", NOW + 50, reads=3), read("gone", NOW)), NOW + 100)]))
    rec = sm.get("ns", "a", NOW + 100)
    assert (rec["access_count"], rec["last_accessed_at"], rec["version"], rec["rev"]) == (3, NOW + 50, 1, 1)
    assert applied.changes == []  # not a version: watchers and history see nothing
    assert [v["version"] for v in sm.history_of("ns", "a", 10)] == [1]
    # A read stamped ahead of the leader's clock counts as the leader's now.
    apply(sm, Touch((read("a", NOW + 9_999_999),), NOW + 200))
    assert sm.get("ns", "a", NOW + 200)["last_accessed_at"] == NOW + 200
    # A write keeps the reads counted so far.
    apply(sm, put("a", NOW + 300))
    assert sm.get("ns", "a", NOW + 300)["access_count"] == 4


def test_a_sliding_ttl_is_extended_by_a_refresh_and_only_then(tmp_path: Path) -> None:
    from raftmem.lifecycle import refresh_due

    sm = sm_at(tmp_path)
    apply(sm, put("a", NOW, ttl_s=10, ttl_refresh_on_read=True), put("b", NOW, ttl_s=10))
    rec = sm.get("ns", "a", NOW)
    assert rec["ttl_s"] == 10 and rec["ttl_refresh_on_read"] is True and rec["expires_at"] == NOW + 10_000
    assert not refresh_due(rec, NOW + 4_000, 0.5)  # less than half the TTL since the write
    assert refresh_due(rec, NOW + 6_000, 0.5)
    assert not refresh_due(sm.get("ns", "b", NOW), NOW + 6_000, 0.5)  # a fixed TTL never slides
    apply(sm, Touch((read("a", NOW + 6_000, refresh=True), read("b", NOW + 6_000, refresh=True)), NOW + 6_100))
    assert sm.get("ns", "a", NOW + 6_100)["expires_at"] == NOW + 16_100
    assert sm.get("ns", "b", NOW + 6_100)["expires_at"] == NOW + 10_000
    apply(sm, Expire(NOW + 11_000))
    assert sm.get("ns", "a", NOW + 11_000) is not None
    assert sm.get("ns", "b", NOW + 11_000) is None
    # Too late: a touch applied after the expiry time does not bring it back.
    apply(sm, Touch((read("a", NOW + 16_000, refresh=True),), NOW + 16_200))
    assert sm.get("ns", "a", NOW + 16_200) is None


def test_control_without_a_refresh_the_sliding_ttl_expires_on_time(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    apply(sm, put("a", NOW, ttl_s=10, ttl_refresh_on_read=True))
    apply(sm, Touch((read("a", NOW + 6_000, refresh=False),), NOW + 6_100))
    apply(sm, Expire(NOW + 11_000))
    assert sm.get("ns", "a", NOW + 11_000) is None


# -- pruning in apply ---------------------------------------------------------------------------
def idle_policy(**kw: Any) -> PolicyConfig:
    return PolicyConfig("idle", namespace="ns", idle_ms=DAY_MS, **kw)


def test_an_idle_policy_removes_what_was_not_accessed_since_its_cutoff(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    apply(sm, put("old", NOW - 3 * DAY_MS), put("read", NOW - 3 * DAY_MS), put("new", NOW - DAY_MS // 2),
          put("tagged", NOW - 3 * DAY_MS, tags=("keep",)))
    apply(sm, Touch((read("read", NOW - DAY_MS // 3),), NOW - DAY_MS // 3))
    cutoff = NOW - DAY_MS
    targets = sm.prune_candidates(idle_policy(), cutoff, NOW, 100, 1000)
    assert sorted(t[1] for t in targets) == ["old", "tagged"]
    assert [t[1] for t in sm.prune_candidates(idle_policy(tag="keep"), cutoff, NOW, 100, 1000)] == ["tagged"]
    results = apply(sm, Prune("idle", "idle", cutoff_ms=cutoff, targets=tuple(targets), now_ms=NOW))
    assert results[0].expired == 2
    assert [m for m in ("old", "read", "new", "tagged") if sm.get("ns", m, NOW)] == ["read", "new"]
    last = sm.history_of("ns", "old", 1)[0]
    assert (last["event"], last["actor"]) == ("expire", "policy:idle")


def test_a_memory_read_between_selection_and_apply_is_not_pruned(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    apply(sm, put("a", NOW - 3 * DAY_MS), put("b", NOW - 3 * DAY_MS))
    cutoff = NOW - DAY_MS
    targets = tuple(sm.prune_candidates(idle_policy(), cutoff, NOW, 100, 1000))
    assert len(targets) == 2
    apply(sm, Touch((read("a", NOW - 10),), NOW))  # the read reaches the log first
    apply(sm, Prune("idle", "idle", cutoff_ms=cutoff, targets=targets, now_ms=NOW))
    assert sm.get("ns", "a", NOW) is not None  # accessed after the cut-off: kept
    assert sm.get("ns", "b", NOW) is None  # control: same selection, not read, removed


def test_a_rewritten_memory_is_not_pruned_by_an_older_selection(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    apply(sm, put("a", NOW - 3 * DAY_MS))
    targets = tuple(sm.prune_candidates(idle_policy(), NOW - DAY_MS, NOW, 100, 1000))
    apply(sm, put("a", NOW - 3 * DAY_MS + 1))  # a new version (an old clock, still selected by time)
    apply(sm, Prune("idle", "idle", cutoff_ms=NOW - DAY_MS, targets=targets, now_ms=NOW))
    assert sm.get("ns", "a", NOW)["version"] == 2


@pytest.mark.parametrize(("order", "kept"), [("oldest", ["m3", "m4"]), ("least_accessed", ["m0", "m2"])])
def test_a_count_policy_keeps_the_newest_or_most_accessed_per_agent(tmp_path: Path, order: str,
                                                                      kept: list[str]) -> None:
    sm = sm_at(tmp_path)
    apply(sm, *(put(f"m{i}", NOW + i, agent="al") for i in range(5)), put("x", NOW, agent="bo"))
    apply(sm, Touch((read("m0", NOW + 10, reads=5), read("m2", NOW + 10, reads=2)), NOW + 10))
    policy = PolicyConfig("cap", namespace="ns", max_per_agent=2, order=order)
    targets = tuple(sm.prune_candidates(policy, 0, NOW + 20, 100, 1000))
    assert len(targets) == 3
    apply(sm, Prune("cap", "count", keep=2, targets=targets, now_ms=NOW + 20))
    assert [m["id"] for m in sm.iter_records() if m["agent_id"] == "al"] == kept
    assert sm.get("ns", "x", NOW + 20) is not None
    # Apply counts again: the same targets a second time remove nothing more.
    assert apply(sm, Prune("cap", "count", keep=2, targets=targets, now_ms=NOW + 21))[0].expired == 0


def test_a_count_policy_never_goes_below_its_keep(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    apply(sm, *(put(f"m{i}", NOW + i, agent="al") for i in range(4)))
    policy = PolicyConfig("cap", namespace="ns", max_per_agent=2)
    targets = tuple(sm.prune_candidates(policy, 0, NOW + 20, 100, 1000))
    assert [t[1] for t in targets] == ["m0", "m1"]
    apply(sm, Delete("ns", "m3", now_ms=NOW + 20))  # one went meanwhile: only one is too many now
    assert apply(sm, Prune("cap", "count", keep=2, targets=targets, now_ms=NOW + 21))[0].expired == 1
    assert [m["id"] for m in sm.iter_records()] == ["m1", "m2"]


# A model of the rule: a prune removes a memory only if its last recorded access
# (write or touch, as applied before the prune) is at or before the cut-off.
ops = st.lists(st.tuples(st.sampled_from(["put", "touch", "prune"]), st.integers(0, 3), st.integers(0, 50)),
               min_size=1, max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_pruning_never_removes_a_memory_accessed_after_the_cutoff(tmp_path_factory: Any,
                                                                  script: list[tuple[str, int, int]]) -> None:
    sm = sm_at(tmp_path_factory.mktemp("sm"))
    last_access: dict[str, int] = {}
    versions: dict[str, int] = {}
    now = NOW
    policy = PolicyConfig("p", namespace="ns", idle_ms=20)
    for kind, key, step in script:
        now += step
        mid = f"k{key}"
        if kind == "put":
            apply(sm, put(mid, now))
            last_access[mid] = now
            versions[mid] = versions.get(mid, 0) + 1
        elif kind == "touch":
            apply(sm, Touch((read(mid, now - step // 2),), now))
            if mid in last_access:
                last_access[mid] = max(last_access[mid], now - step // 2)
        else:
            cutoff = now - 20
            assert sorted(t[1] for t in sm.prune_candidates(policy, cutoff, now, 100, 1000)) == sorted(
                m for m, at in last_access.items() if at <= cutoff)
            # Every key proposed, at its version: apply keeps those accessed after the cut-off.
            targets = tuple(("ns", f"k{k}", versions.get(f"k{k}", 1)) for k in range(4))
            results = apply(sm, Prune("p", "idle", cutoff_ms=cutoff, targets=targets, now_ms=now))
            removed = {m for m in last_access if sm.get("ns", m, now) is None}
            assert removed == {m for m, at in last_access.items() if at <= cutoff}
            assert results[0].expired == len(removed)
            for m in removed:
                del last_access[m], versions[m]
    assert {m["id"] for m in sm.iter_records()} == set(last_access)


def test_two_replicas_applying_the_same_entries_hold_the_same_bytes(tmp_path: Path) -> None:
    entries = [
        encode_entry([put("a", NOW, agent="al", ttl_s=100, ttl_refresh_on_read=True), put("b", NOW, agent="al")]),
        encode_entry([Touch((read("a", NOW + 60_000, refresh=True), read("b", NOW + 5)), NOW + 60_001)]),
        encode_entry([Prune("cap", "count", keep=1, targets=(("ns", "a", 1), ("ns", "b", 1)), now_ms=NOW + 70_000)]),
    ]
    stores = []
    for name in ("r1", "r2"):
        sm = sm_at(tmp_path / name)
        for index, data in enumerate(entries, start=1):
            sm.apply(index, data)
        stores.append(list(sm.store.scan(b"\x00", b"\xff")))
    assert stores[0] == stores[1]


def test_history_records_a_prune_as_an_expire(tmp_path: Path) -> None:
    sm = sm_at(tmp_path)
    apply(sm, put("a", NOW - 3 * DAY_MS))
    applied = sm.apply(2, encode_entry([Prune("idle", "idle", cutoff_ms=NOW - DAY_MS, targets=(("ns", "a", 1),),
                                              now_ms=NOW)]))
    assert [(c.kind, c.id) for c in applied.changes] == [(ChangeKind.EXPIRE, "a")]
