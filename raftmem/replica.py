"""The shard implementation: one replica on the event loop, behind the Shard
port (raftmem.shard). Group commit of typed commands, read barriers, the Raft
facts the read protocol needs (raftmem.reads), waiting for an applied index,
change events handed to the node's feed, membership operations, and expiry.

The only module that holds a shard's Raft group, state machine and store.

Everything here runs on the asyncio loop thread, as do the ticks of
consensus.Ticker that apply entries and fire proposal callbacks; those
callbacks hand results over with `loop.call_soon`, so pysyncobj's apply loop
never runs request code.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from . import codec
from .clock import Clock, SystemClock
from .commands import Command, Committed, Expire, ExpireLeases, Noop, Outcome, Put, Result
from .config import Config, NodeConfig
from .consensus import OK, REJECTED, GroupSpec, RaftGroup, Ticker
from .coordination import Notice
from .errors import Indeterminate, InvalidRequest, NoLeader, Overloaded, Unavailable
from .events import ChangeFeed
from .reads import Reads
from .shard import MemoryReader, Served, ShardRole, ShardStats, ShardStatus
from .statemachine import Applied, StateMachine
from .storage import BACKUP_PREFIX, MemoryBudget, Store

T = TypeVar("T")

log = logging.getLogger(__name__)

EXPIRE_PERIOD_S = 1.0


@dataclass
class _Pending:
    commands: Sequence[Command]  # empty: a read barrier
    wires: list[dict[str, Any]] | None  # their wire forms, encoded once; None: a read barrier
    future: asyncio.Future[Any]
    size: int
    many: bool = False  # submitted with submit_many: answered with a list, kept in one entry


class ShardReplica:
    def __init__(
        self,
        shard: int,
        node_id: str,
        config: Config,
        ticker: Ticker,
        loop: asyncio.AbstractEventLoop,
        clock: Clock,
        replicas: list[str],
        nodes: Mapping[str, NodeConfig],
        preferred_leader: bool = False,
        feed: ChangeFeed | None = None,
        budget: MemoryBudget | None = None,
        notify: Callable[[int, list[Notice]], None] | None = None,
    ) -> None:
        """`replicas`: the node ids the group starts with (this node included);
        `nodes`: where every node listens (the membership table's node list);
        `feed`: where change events go (the node's); `budget`: the node's shared
        RocksDB memory; `notify`: where coordination wake-ups go (the node's
        waiters: a lock freed, a task ready)."""
        self.shard = shard
        self.node_id = node_id
        self.config = config
        self.loop = loop
        self.clock = clock
        self.limits = config.limits
        directory = Path(config.node_data_dir(node_id)) / f"shard-{shard:03d}"
        me = nodes[node_id]
        # Every node it may meet (status names voters by node id), peers or not.
        address_to_node = {f"{n.host}:{n.raft_port(shard)}": i for i, n in nodes.items()}
        # Each node's current Raft address for this shard (membership changes).
        self._addresses = {i: a for a, i in address_to_node.items()}
        self.store = Store(directory, budget, wal=config.storage.rocksdb_wal)
        self.sm = StateMachine(self.store, shard, config.limits.idempotency_keys_max,
                               publish=feed.publish if feed is not None else None,
                               events_retention=config.watch.retention_entries, notify=notify,
                               unsafe_skip_fence_check=bool(config.debug.get("unsafe_skip_fence_check")),
                               history_versions_max=config.history.versions_max)
        # Without RocksDB's WAL a crash leaves the store at its last flush: the
        # journal's entries after it are applied again (tests read this line).
        log.info("shard %d: store opened at applied index %d (RocksDB WAL %s)", shard, self.sm.applied_index,
                 "on" if config.storage.rocksdb_wal else "off")
        spec = GroupSpec(
            shard=shard,
            self_address=f"{me.host}:{me.raft_port(shard)}",
            peer_addresses=[f"{nodes[r].host}:{nodes[r].raft_port(shard)}" for r in replicas if r != node_id],
            directory=directory,
            raft=config.raft,
            address_to_node=address_to_node,
            naive_step_down=bool(config.debug.get("unsafe_local_reads")),
            preferred_leader=preferred_leader,
            disable_prevote=bool(config.debug.get("disable_prevote")),
            slow_snapshot_disk=bool(config.debug.get("slow_snapshot_disk")),
            inline_snapshot_install=bool(config.debug.get("inline_snapshot_install")),
            torn_snapshot_transfer=bool(config.debug.get("torn_snapshot_transfer")),
            unsafe_unchecked_snapshots=bool(config.debug.get("unsafe_unchecked_snapshots")),
            naive_transfer=bool(config.debug.get("naive_transfer")),
            read_timeout_s=config.limits.read_timeout_ms / 1000,
        )
        self._queue: list[_Pending] = []
        self._flush_scheduled = False
        self._linger: asyncio.TimerHandle | None = None
        self._writers = 0  # writes answered by the last entry plus those queued then
        self._in_flight = 0
        self._entries_in_flight = 0
        self.proposals = 0
        self.entries_proposed = 0
        self.outcomes = {"ok": 0, "rejected": 0, "unknown": 0}
        self.commit_seconds_sum = 0.0
        self.unsafe_early_ack = bool(config.debug.get("unsafe_early_ack"))
        try:
            self.group = RaftGroup(spec, self.sm, ticker)
        except BaseException:
            self.store.close()  # or the next attempt finds RocksDB locked
            raise
        self.group.waits.barrier = self.barrier
        # The group's lease stamps are time.monotonic(): so are the reads' checks,
        # whatever clock the node gives for record times.
        self.reads = Reads(self.group, self.sm, SystemClock(), config.limits,
                           unsafe_local_reads=bool(config.debug.get("unsafe_local_reads")))

    # -- writes: group commit ------------------------------------------------------
    async def submit(self, command: Command) -> Committed:
        """Propose one command; its index and result once committed, durable and
        applied here. Raises NoLeader/Overloaded (nothing was done) or
        Indeterminate (it may or may not happen)."""
        wire = command.to_wire()
        done: Committed = await self._enqueue([command], [wire], _entry_size([wire]))
        return done

    async def submit_many(self, commands: Sequence[Command]) -> list[Committed]:
        """Propose commands together: one log entry (one RocksDB batch), applied
        in the order given, so each sees the ones before it. All commit or
        none; raises as `submit` does."""
        wires = [c.to_wire() for c in commands]
        done: list[Committed] = await self._enqueue(commands, wires, _entry_size(wires), True)
        return done

    async def barrier(self) -> int:
        """Linearizable read fence: returns an index such that the local state,
        once applied up to it, includes every write acknowledged before the call.
        Implemented as an entry of the current term committed after the call."""
        index: int = await self._enqueue([], None, 0)
        return index

    async def _enqueue(
        self, commands: Sequence[Command], wires: list[dict[str, Any]] | None, size: int, many: bool = False
    ) -> Any:
        if not self.group.is_leader():
            raise NoLeader(f"node {self.node_id} does not lead shard {self.shard}", shard=self.shard)
        if self._in_flight + len(self._queue) >= self.limits.pending_writes_max:
            raise Overloaded(f"shard {self.shard}: too many writes in flight", shard=self.shard)
        future: asyncio.Future[Any] = self.loop.create_future()
        self._queue.append(_Pending(commands, wires, future, size, many))
        if self._linger is not None and (wires is None or len(self._queue) >= self._writers):
            self._linger.cancel()  # everyone is back (or a read waits): no reason to wait
            self._linger = None
        self._schedule_flush()
        # No timer per request: each log entry has one (see _propose), which fails
        # its writes as indeterminate when the outcome is overdue.
        return await future

    def _flush(self) -> None:
        """Pack queued writes into log entries. At most `entries_in_flight_max`
        entries per shard are uncommitted at once: under load, writes queue up
        behind them and the next entry carries them all (group commit), which
        saves messages, fsyncs and ticks per write."""
        self._flush_scheduled = False
        queue = self._queue
        taken = 0
        while taken < len(queue) and self._entries_in_flight < self.limits.entries_in_flight_max:
            batch: list[_Pending] = []
            ops: list[dict[str, Any]] = []
            size = 0
            barrier_waiters: list[_Pending] = []
            while taken < len(queue) and len(ops) < self.limits.group_commit_ops_max:
                item = queue[taken]
                if item.wires is not None and ops and (
                    size + item.size > self.limits.group_commit_bytes_max
                    or len(ops) + len(item.wires) > self.limits.group_commit_ops_max
                ):
                    break  # the next entry (a submit_many stays whole, even past the limits alone)
                taken += 1
                if item.wires is None:
                    barrier_waiters.append(item)
                    continue
                batch.append(item)
                ops.extend(item.wires)
                size += item.size
            if barrier_waiters:
                ops.append(_NOOP_WIRE)
            if ops:
                self._propose(ops, batch, barrier_waiters)
        del queue[:taken]

    def _entry_settled(self, handle: asyncio.TimerHandle | None, writes: int) -> None:
        if handle is not None:
            handle.cancel()
        self._entries_in_flight -= 1
        # Linger (PostgreSQL's commit_delay with commit_siblings): the writers just
        # answered were part of a crowd; if fewer than that crowd are queued now,
        # wait a moment for them to come back, so the next entry carries them too.
        # One entry costs every replica messages, a journal write and ticks: with
        # ~2 writes per entry that fixed cost dominates; with 4 it halves per write.
        self._writers = writes + len(self._queue)
        linger_s = self.limits.group_commit_linger_ms / 1000
        if (
            linger_s > 0 and self._writers > 1 and len(self._queue) < self._writers
            and self._linger is None and not any(item.wires is None for item in self._queue)
        ):
            self._linger = self.loop.call_later(linger_s, self._linger_over)
            return
        self._schedule_flush()

    def _linger_over(self) -> None:
        self._linger = None
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        """Pack the queue in the next loop iteration, unless lingering or already due."""
        if self._queue and self._linger is None and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _propose(self, ops: list[dict[str, Any]], batch: list[_Pending], barriers: list[_Pending]) -> None:
        payload = codec.encode_entry(ops)
        started = time.perf_counter()
        self._in_flight += len(batch) + len(barriers)
        self.proposals += len(ops)
        self.entries_proposed += 1
        self._entries_in_flight += 1
        released = False
        timeout_s = self.limits.write_timeout_ms / 1000

        def release() -> bool:
            # Once per entry: when it settles, or when its outcome is overdue (a
            # callback pysyncobj never fires must not stall the shard's writes).
            nonlocal released
            if released:
                return False
            released = True
            self._in_flight -= len(batch) + len(barriers)
            self._entry_settled(overdue, len(batch))
            return True

        def fail_all(error: Exception, barrier_reason: str) -> None:
            for item in batch:
                _fail(item.future, error)
            for item in barriers:
                _fail(item.future, Unavailable(f"shard {self.shard}: {barrier_reason}", shard=self.shard))

        def expire() -> None:
            if not release():
                return
            self.outcomes["unknown"] += 1
            error = Indeterminate(
                f"shard {self.shard}: no commit within {timeout_s:.1f}s; the write may still apply",
                shard=self.shard,
            )
            fail_all(error, "read barrier timed out")

        overdue: asyncio.TimerHandle | None = self.loop.call_later(timeout_s, expire)

        def settle(outcome: str, value: Any) -> None:
            if not release():
                return  # already reported as indeterminate
            self.outcomes[outcome if outcome in self.outcomes else "unknown"] += 1
            self.commit_seconds_sum += time.perf_counter() - started
            if outcome == OK:
                applied: Applied = value
                at = 0
                for item in batch:
                    assert item.wires is not None
                    results = applied.results[at:at + len(item.wires)]
                    results += [Result(Outcome.INVALID_ENTRY, "the entry gave no result")] * (
                        len(item.wires) - len(results))
                    mine = [Committed(applied.index, r) for r in results]
                    at += len(item.wires)
                    _resolve(item.future, mine if item.many else mine[0])
                for item in barriers:
                    _resolve(item.future, applied.index)
                return
            if outcome == REJECTED:
                error: Exception = NoLeader(
                    f"shard {self.shard}: leadership lost before the entry was appended",
                    shard=self.shard,
                )
            else:
                error = Indeterminate(
                    f"shard {self.shard}: leader changed while the write was in flight",
                    shard=self.shard,
                )
            fail_all(error, "read barrier lost")

        def on_done(outcome: str, value: Any) -> None:
            self.loop.call_soon(settle, outcome, value)

        if self.unsafe_early_ack:
            # Negative control only: acknowledge before commit (a lying store).
            self.group.propose(payload, lambda _o, _v: None)
            fake = Applied(self.sm.applied_index, [_fake_result(c) for item in batch for c in item.commands])
            self.loop.call_soon(settle, OK, fake)
            return
        self.group.propose(payload, on_done)

    # -- reads: the Shard port's read (raftmem.reads over the group and the state) ---
    async def read(
        self, level: str, fn: Callable[[MemoryReader], T], *, after: int = 0, bound_ms: int = -1
    ) -> tuple[T, Served]:
        return await self.reads.read(level, fn, after, bound_ms)

    @property
    def applied_index(self) -> int:
        """Raft's applied index (what tokens name)."""
        return self.group.last_applied

    @property
    def token(self) -> str:
        return f"{self.shard}:{self.applied_index}"

    @property
    def directory(self) -> Path:
        return self.store.directory

    # -- role, status, stats ---------------------------------------------------------
    def role(self) -> ShardRole:
        group = self.group
        leading = group.is_leader()
        return ShardRole(self.shard, leading, self.node_id if leading else group.leader_node(), group.term,
                         group.role_since)

    def status(self) -> ShardStatus:
        staleness, commit = self.group.follower_freshness(time.monotonic())
        return ShardStatus(**self.group.status(), leader_staleness_s=staleness, leader_commit_index=commit)

    def stats(self) -> ShardStats:
        group = self.group
        counters = group.counters()
        return ShardStats(
            shard=self.shard,
            term=group.term,
            commit_index=group.commit_index,
            applied_index=self.sm.applied_index,
            leading=group.is_leader(),
            db_bytes=self.store.size_bytes(),
            memtable_bytes=self.store.memtable_bytes(),
            proposals=self.proposals,
            entries_proposed=self.entries_proposed,
            lease_reads=self.reads.lease_reads,
            read_index_reads=self.reads.read_index_reads,
            outcomes=dict(self.outcomes),
            commit_seconds_sum=self.commit_seconds_sum,
            replication_lag=group.replication_lag(),
            io_bytes=self.store.io_stats(),
            **counters,
        )

    async def snapshot_to(self, dest: Path) -> int:
        """Write a consistent snapshot holding every write acknowledged before the
        call to `dest`: ReadIndex first, then a RocksDB checkpoint (point-in-time)
        packed into the file. Returns its applied index."""
        index = await self.group.read_index()
        if not await self.group.wait_applied(index, self.limits.read_timeout_ms / 1000):
            raise Unavailable(f"shard {self.shard}: apply is behind", shard=self.shard)
        applied = self.sm.applied_index
        checkpoint = self.store.directory / f"{BACKUP_PREFIX}{uuid.uuid4().hex}"

        def pack() -> None:
            try:
                self.store.create_checkpoint(checkpoint)
                Store.pack_checkpoint(checkpoint, dest, codec.dumps({"shard": self.shard, "applied": applied}))
            finally:
                shutil.rmtree(checkpoint, ignore_errors=True)

        await asyncio.to_thread(pack)
        return applied

    # -- membership ----------------------------------------------------------------------
    def learn_nodes(self, nodes: Mapping[str, NodeConfig]) -> None:
        """Where nodes listen now. A voter's old address stays known while it is
        a voter (one being removed, or re-added elsewhere under the same id)."""
        self._addresses.update({i: f"{n.host}:{n.raft_port(self.shard)}" for i, n in nodes.items()})
        before = self.group.address_to_node()
        known = {a: i for i, a in self._addresses.items()}
        known.update({a: before[a] for a in self.group.voter_addresses() if a in before})
        self.group.update_addresses(known)

    def voters(self) -> list[str]:
        return self.group.members()

    def seconds_out_of_touch(self, now: float) -> float:
        return self.group.seconds_out_of_touch(now)

    async def add_voter(self, node_id: str) -> bool:
        """False when the node's address is not known (yet): the next
        reconcile, which teaches it, tries again."""
        address = self._addresses.get(node_id)
        return address is not None and await self._change_membership(True, address)

    async def remove_voter(self, node_id: str) -> bool:
        """By the address it is a voter at (it may have moved since). `voters()`
        names a voter no node id is known for by its address: that works too."""
        names = self.group.address_to_node()
        voters = self.group.voter_addresses()
        address = next((a for a in voters if names.get(a) == node_id), node_id if node_id in voters else None)
        return address is not None and await self._change_membership(False, address)

    async def _change_membership(self, add: bool, address: str) -> bool:
        future: asyncio.Future[bool] = self.loop.create_future()

        def done(ok: bool) -> None:
            self.loop.call_soon(_resolve, future, ok)

        self.group.change_membership(add, address, done)
        try:
            return await asyncio.wait_for(future, self.limits.write_timeout_ms / 1000)
        except TimeoutError:
            return False

    async def transfer_leadership(self, node_id: str | None) -> bool:
        """To `node_id`, or (None) the most caught-up follower. True once sent;
        False when refused, or the node's address is not known."""
        address = None
        if node_id is not None:
            address = self._addresses.get(node_id)
            if address is None:
                return False
        future: asyncio.Future[bool] = self.loop.create_future()

        def done(ok: bool) -> None:
            self.loop.call_soon(_resolve, future, ok)

        self.group.transfer_leadership(address, done)
        try:
            return await asyncio.wait_for(future, self.limits.write_timeout_ms / 1000)
        except TimeoutError:
            return False

    # -- background work ---------------------------------------------------------------
    async def expire_due(self) -> None:
        """Leader only: propose the deletion of expired memories, and the end of
        lock leases, task claims, delays and retentions that ran out. The time
        is chosen here, before proposing, so apply stays deterministic."""
        if not self.group.is_leader():
            return
        now = self.clock.wall_ms()
        due = self.sm.next_expiry_ms()
        if due is not None and due <= now:
            await self.submit(Expire(now))
        # The shard's time may be ahead of this clock (a new leader whose clock
        # is behind): what is due by the time apply will decide by is due now.
        # Stamped with this clock: apply works out that time again.
        coordination = self.sm.coordination
        due = coordination.next_deadline_ms()
        if due is not None and due <= coordination.now_ms(now):
            await self.submit(ExpireLeases(now))

    def close(self) -> None:
        self.store.close()

    def drop(self) -> None:
        """This node no longer holds the shard: stop the group, delete the data.
        (Runs on a worker thread: the feed is told by the node, on the loop.)"""
        self.group.destroy()
        self.store.close()
        shutil.rmtree(self.store.directory, ignore_errors=True)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


_NOOP_WIRE = Noop().to_wire()


def _fake_result(command: Command) -> Result:
    """The negative control's lie: success, before anything committed."""
    if isinstance(command, Put):
        rec = {"namespace": command.namespace, "id": command.id, "version": 0, "rev": 0, **command.fields.to_wire()}
        return Result(Outcome.UPDATED, memory=rec)
    return Result(Outcome.APPLIED)


def _entry_size(wires: list[dict[str, Any]]) -> int:
    """The bytes `wires` take in a log entry, refused (400) if they cannot be
    encoded there: found in the flush, they would fail every write queued with them."""
    try:
        return len(codec.encode_entry(wires))
    except (TypeError, ValueError) as e:  # orjson: nested too deep, not JSON
        raise InvalidRequest(f"the write cannot be stored: {e}") from None
