"""The consensus adapter alone: real pysyncobj groups of one shard, in this process,
on one ticker and event loop, talking over real sockets on 127.0.0.1, with real
journals and RocksDB. For Raft situations a node-level test cannot set up on
purpose, such as logs and terms that disagree in a given way."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from raftmem import codec
from raftmem.config import RaftConfig
from raftmem.consensus import GroupSpec, RaftGroup, Ticker
from raftmem.consensus.journal import DurableJournal
from raftmem.statemachine import StateMachine
from raftmem.storage import Store

from .cluster import free_port_block

NO_OP = b"\x01"  # pysyncobj's _COMMAND_TYPE.NO_OP entry
POLL_S = 0.05


def _seed(directory: Path, term: int, entries: int) -> None:
    """A journal as a crash would leave it: `entries` no-op entries of term 1, and
    the node's current term."""
    directory.mkdir(parents=True)
    journal = DurableJournal(directory / "raft.journal")
    for idx in range(1, entries + 1):
        journal.add(NO_OP, idx, 1)
    journal.setCurrentTerm(term, None)
    journal._destroy()


@contextmanager
def _groups(root: Path, seeds: dict[str, tuple[int, int]], absent: list[str]) -> Iterator[dict[str, RaftGroup]]:
    """One shard whose voters are `seeds` (running, from the seeded journals) and
    `absent` (voters that never come up)."""
    _, bases = free_port_block(len(seeds) + len(absent), 1)
    names = [*seeds, *absent]
    address = {name: f"127.0.0.1:{base}" for name, base in zip(names, bases, strict=True)}
    raft = RaftConfig(election_timeout_ms_min=300, election_timeout_ms_max=600)
    ticker = Ticker(raft.fsync)
    ticker.attach(asyncio.get_running_loop())
    stores: list[Store] = []
    groups: dict[str, RaftGroup] = {}
    try:
        for name, (term, entries) in seeds.items():
            directory = root / name
            _seed(directory, term, entries)
            store = Store(directory / "db")
            stores.append(store)
            spec = GroupSpec(
                shard=0,
                self_address=address[name],
                peer_addresses=[a for n, a in address.items() if n != name],
                directory=directory,
                raft=raft,
                address_to_node={a: n for n, a in address.items()},
            )
            groups[name] = RaftGroup(spec, StateMachine(store, 0), ticker)
        ticker.start()
        yield groups
    finally:
        ticker.stop()
        for store in stores:
            store.close()


async def _leader(groups: dict[str, RaftGroup], within_s: float) -> str | None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        leaders = [name for name, g in groups.items() if g.is_leader()]
        if leaders:
            return leaders[0]
        await asyncio.sleep(POLL_S)
    return None


# A 4-voter shard with one voter down. `a` holds the longest log but is behind in
# term (it missed elections the others held and lost); `b` and `c` are at a higher
# term with shorter logs. Only `a` can win (the others need its vote and it refuses
# them, their logs being behind), and `b` and `c` refuse `a`'s pre-votes for any
# term not above their own.
BEHIND_IN_TERM = {"a": (1, 5), "b": (3, 3), "c": (3, 3)}


async def test_a_pre_candidate_behind_in_term_adopts_it_and_wins(tmp_path: Path) -> None:
    with _groups(tmp_path, BEHIND_IN_TERM, absent=["d"]) as groups:
        leader = await _leader(groups, within_s=20)
        assert leader == "a", {n: (g.term, g.is_leader()) for n, g in groups.items()}
        assert groups["a"].term > 3
        assert groups["a"].journal.getCurrentTerm() == groups["a"].term  # adopted durably


async def test_negative_control_without_adopting_the_term_nobody_is_elected(tmp_path: Path) -> None:
    with _groups(tmp_path, BEHIND_IN_TERM, absent=["d"]) as groups:
        for group in groups.values():
            group.hooks.adopt_terms = False
        # Many election timeouts (0.3-0.6 s), and pre-vote rounds, go by.
        assert await _leader(groups, within_s=6) is None
        assert groups["a"].term == 1
        assert min(g.hooks.prevotes_started for g in groups.values()) >= 3


@contextmanager
def _fsync_thread_skips(journal: DurableJournal) -> Iterator[None]:
    """The ticker's fsync thread leaves `journal` alone (as if its disk were slow);
    a sync from any other thread still works."""
    real_sync = journal.sync

    def sync() -> None:
        if threading.current_thread().name != "raft-fsync":
            real_sync()

    journal.sync = sync  # type: ignore[method-assign]
    try:
        yield
    finally:
        journal.sync = real_sync  # type: ignore[method-assign]


async def _until(condition: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def _commit_with_the_leaders_fsync_stalled(tmp_path: Path, cap: bool) -> tuple[bool, int]:
    """Stall the leader's fsync thread, propose an entry, and wait for a follower
    to acknowledge it. Returns whether the leader committed it in the next tick
    passes, and how many fsyncs the leader then made on its event loop."""
    with _groups(tmp_path, {"a": (1, 1), "b": (1, 1), "c": (1, 1)}, absent=[]) as groups:
        name = await _leader(groups, within_s=20)
        assert name is not None
        leader = groups[name]
        leader.commit_needs_own_fsync = cap
        await _until(lambda: leader.noop_committed(), 10, "the leader's first entry to commit")
        outcomes: list[str] = []
        with _fsync_thread_skips(leader.journal):
            index = leader.journal[-1][1] + 1
            leader.propose(codec.encode_entry([{"t": "noop"}]), lambda outcome, _: outcomes.append(outcome))
            await _until(lambda: leader.journal[-1][1] >= index, 10, "the leader to append the entry")
            acked = lambda: any(dict.get(leader._match, n, 0) >= index for n in leader._obj.otherNodes)  # noqa: E731
            await _until(acked, 10, "a follower to acknowledge")
            passes = leader.ticker.passes
            await _until(lambda: leader.ticker.passes >= passes + 3, 10, "three more tick passes")
            committed = leader.commit_index >= index
            assert leader.journal.durable_index >= index or not outcomes  # never acknowledged undurable
        await _until(lambda: outcomes == ["ok"], 10, "the entry to commit once the fsync thread gets to it")
        return committed, leader.inline_syncs


async def test_a_leader_commits_only_what_its_fsync_thread_made_durable(tmp_path: Path) -> None:
    # The leader shipped the entry before its own fsync, and a follower has it on
    # disk: that is a majority by count, but not a majority of disks.
    committed, inline_syncs = await _commit_with_the_leaders_fsync_stalled(tmp_path, cap=True)
    assert not committed
    assert inline_syncs == 0


async def test_negative_control_without_the_cap_the_leader_commits_first(tmp_path: Path) -> None:
    # pysyncobj counts the leader towards every quorum: uncapped, the entry commits
    # on the follower's acknowledgement, and only the fsync before apply on the
    # event loop keeps the acknowledgement durable.
    committed, inline_syncs = await _commit_with_the_leaders_fsync_stalled(tmp_path, cap=False)
    assert committed
    assert inline_syncs >= 1


async def test_a_leader_drops_acknowledgements_of_another_terms_entries(tmp_path: Path) -> None:
    # pysyncobj's next_node_idx carries no term. A follower's answer to an earlier
    # leader (held for its fsync) that reached a later leader would credit the
    # follower with entries that leader never sent it.
    with _groups(tmp_path, {"a": (1, 1), "b": (1, 1), "c": (1, 1)}, absent=[]) as groups:
        name = await _leader(groups, within_s=20)
        assert name is not None
        leader = groups[name]
        node = next(iter(leader._obj.otherNodes))
        term = leader.term

        def ack(echo: tuple[int, float] | None) -> dict[str, object]:
            message: dict[str, object] = {"type": "next_node_idx", "next_node_idx": 2, "reset": False, "success": True}
            if echo is not None:
                message["rm_echo"] = echo
            return message

        with leader.ticker.lock:
            assert leader.hooks.on_receive(node, ack((term - 1, 0.0))) is True  # consumed: dropped
            assert leader.hooks.on_receive(node, ack(None)) is True
            assert leader.hooks.stale_acks == 2
            # Control: an answer to this term's append-entries goes on to pysyncobj.
            assert leader.hooks.on_receive(node, ack((term, leader.hooks.last_append_sent))) is False
            assert leader.hooks.stale_acks == 2


async def test_a_failing_shard_does_not_stall_the_others_on_its_ticker(tmp_path: Path) -> None:
    # One replica's tick raises every time (as a disk-full apply does, retried by
    # pysyncobj on every tick). The other two, on the same ticker, still commit.
    # Checked by hand against a pass that gave up at the first failing group:
    # nothing was sent and the entry never committed.
    with _groups(tmp_path, {"a": (1, 1), "b": (1, 1), "c": (1, 1)}, absent=[]) as groups:
        name = await _leader(groups, within_s=20)
        assert name is not None
        leader = groups[name]
        await _until(lambda: leader.noop_committed(), 10, "the leader's first entry to commit")
        failing = next(g for g in leader.ticker.groups if g is not leader)

        def broken_tick() -> None:
            raise OSError(28, "No space left on device")

        failing.tick = broken_tick  # type: ignore[method-assign]
        failing.heartbeat_wanted = True  # so every pass ticks it (the broken tick never clears this)
        errors = leader.ticker.tick_errors
        outcomes: list[str] = []
        leader.propose(codec.encode_entry([{"t": "noop"}]), lambda outcome, _: outcomes.append(outcome))
        await _until(lambda: outcomes == ["ok"], 10, "the entry to commit on the leader and the healthy follower")
        assert leader.ticker.tick_errors > errors
