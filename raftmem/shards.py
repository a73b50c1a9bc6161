"""A shard replica on the event loop: group commit of writes, read barriers,
waiting for an applied index, and the expiry reaper.

Everything here runs on the asyncio loop thread, as do the ticks of
consensus.Ticker that apply entries and fire proposal callbacks; those
callbacks hand results over with `loop.call_soon`, so pysyncobj's apply loop
never runs request code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import codec
from .clock import Clock
from .config import Config, NodeConfig
from .consensus import OK, REJECTED, GroupSpec, RaftGroup, Ticker
from .errors import Indeterminate, NoLeader, Overloaded, Unavailable
from .statemachine import StateMachine
from .storage import BACKUP_PREFIX, Store

log = logging.getLogger(__name__)

EXPIRE_PERIOD_S = 1.0
# ReadIndex waiters are woken by quorum acks; this is only a safety re-check.
QUORUM_RECHECK_S = 0.05


@dataclass
class _Pending:
    op: dict[str, Any] | None  # None: a read barrier
    future: asyncio.Future[Any]
    size: int


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
        nodes: dict[str, NodeConfig],
        preferred_leader: bool = False,
    ) -> None:
        """`replicas`: the node ids the group starts with (this node included);
        `nodes`: where every node listens (the membership table's node list)."""
        self.shard = shard
        self.node_id = node_id
        self.config = config
        self.loop = loop
        self.clock = clock
        self.limits = config.limits
        directory = Path(config.node_data_dir(node_id)) / f"shard-{shard:03d}"
        me = nodes[node_id]
        address_to_node = {f"{nodes[r].host}:{nodes[r].raft_port(shard)}": r for r in replicas}
        self.store = Store(directory)
        self.sm = StateMachine(self.store, shard, config.limits.idempotency_keys_max)
        spec = GroupSpec(
            shard=shard,
            self_address=f"{me.host}:{me.raft_port(shard)}",
            peer_addresses=[a for a, r in address_to_node.items() if r != node_id],
            directory=directory,
            raft=config.raft,
            address_to_node=address_to_node,
            naive_step_down=bool(config.debug.get("unsafe_local_reads")),
            preferred_leader=preferred_leader,
            disable_prevote=bool(config.debug.get("disable_prevote")),
            slow_snapshot_disk=bool(config.debug.get("slow_snapshot_disk")),
            inline_snapshot_install=bool(config.debug.get("inline_snapshot_install")),
        )
        self._queue: list[_Pending] = []
        self._flush_scheduled = False
        self._linger: asyncio.TimerHandle | None = None
        self._writers = 0  # writes answered by the last entry plus those queued then
        self._in_flight = 0
        self._entries_in_flight = 0
        self._apply_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.proposals = 0
        self.entries_proposed = 0
        self.outcomes = {"ok": 0, "rejected": 0, "unknown": 0}
        self.commit_seconds_sum = 0.0
        self.unsafe_early_ack = bool(config.debug.get("unsafe_early_ack"))
        self._quorum_waiters: list[asyncio.Future[None]] = []
        self.lease_reads = 0
        self.read_index_reads = 0
        try:
            self.group = RaftGroup(spec, _ApplyHook(self), ticker)
        except BaseException:
            self.store.close()  # or the next attempt finds RocksDB locked
            raise
        self.group.set_on_quorum_ack(self._quorum_ack_from_tick)
        self.group.set_on_applied(self._on_applied_from_tick)

    # -- writes: group commit ------------------------------------------------------
    async def submit(self, op: dict[str, Any]) -> dict[str, Any]:
        """Propose one write; returns `{"index", "result"}` once committed, durable
        and applied here. Raises NoLeader/Overloaded (nothing was done) or
        Indeterminate (it may or may not happen)."""
        return await self._enqueue(op, len(codec.dumps(op)))

    async def barrier(self) -> int:
        """Linearizable read fence: returns an index such that the local state,
        once applied up to it, includes every write acknowledged before the call.
        Implemented as an entry of the current term committed after the call."""
        done = await self._enqueue(None, 0)
        return int(done["index"])

    async def _enqueue(self, op: dict[str, Any] | None, size: int) -> dict[str, Any]:
        if not self.group.is_leader():
            raise NoLeader(f"node {self.node_id} does not lead shard {self.shard}", shard=self.shard)
        if self._in_flight + len(self._queue) >= self.limits.pending_writes_max:
            raise Overloaded(f"shard {self.shard}: too many writes in flight", shard=self.shard)
        future: asyncio.Future[Any] = self.loop.create_future()
        self._queue.append(_Pending(op, future, size))
        if self._linger is not None and (op is None or len(self._queue) >= self._writers):
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
                if item.op is not None and ops and size + item.size > self.limits.group_commit_bytes_max:
                    break
                taken += 1
                if item.op is None:
                    barrier_waiters.append(item)
                    continue
                batch.append(item)
                ops.append(item.op)
                size += item.size
            if barrier_waiters:
                ops.append({"t": "noop"})
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
            and self._linger is None and not any(item.op is None for item in self._queue)
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
                index = value["index"]
                results = value["results"]
                for item, result in zip(batch, results, strict=False):
                    _resolve(item.future, {"index": index, "result": result})
                for item in barriers:
                    _resolve(item.future, {"index": index})
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
            fake = {"index": self.sm.applied_index, "results": [_fake_result(op) for op in ops]}
            self.loop.call_soon(settle, OK, fake)
            return
        self.group.propose(payload, on_done)

    # -- reads -----------------------------------------------------------------------
    def lease_read_index(self) -> tuple[int, int] | None:
        """(commit index, term) to read at under a valid leader lease, or None.
        No network round trip: a quorum acknowledged a recent send, so no other
        leader can exist until the lease ends (leases.py)."""
        group = self.group
        term = group.term
        if group.lease_remaining_s(time.monotonic()) <= 0:
            return None
        return group.commit_index, term

    def lease_still_valid(self, term: int) -> bool:
        """Re-checked after a lease read: a pause (GC, SIGSTOP) between the check
        and the read must not let an expired lease answer."""
        return self.group.term == term and self.group.lease_remaining_s(time.monotonic()) > 0

    async def read_index(self) -> int:
        """ReadIndex: the commit index at arrival, once a quorum has acknowledged
        a send made after arrival in the same term (leadership confirmed)."""
        group = self.group
        if not group.is_leader():
            raise NoLeader(f"node {self.node_id} does not lead shard {self.shard}", shard=self.shard)
        if not group.noop_committed():
            return await self.barrier()  # commits an entry of this term, confirming leadership
        term = group.term
        index = group.commit_index
        arrival = time.monotonic()
        deadline = arrival + self.limits.read_timeout_ms / 1000
        while group.quorum_ack_time(term) < arrival:
            if group.term != term or not group.is_leader():
                raise NoLeader(f"shard {self.shard}: leadership lost during a read", shard=self.shard)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(f"shard {self.shard}: no quorum confirmed leadership", shard=self.shard)
            future: asyncio.Future[None] = self.loop.create_future()
            self._quorum_waiters.append(future)
            group.request_heartbeat(arrival)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(future, min(remaining, QUORUM_RECHECK_S))
        if group.term != term:
            raise NoLeader(f"shard {self.shard}: leadership lost during a read", shard=self.shard)
        return index

    def _quorum_ack_from_tick(self) -> None:
        if self._quorum_waiters:
            self.loop.call_soon(self._wake_quorum_waiters)

    def _wake_quorum_waiters(self) -> None:
        waiters, self._quorum_waiters = self._quorum_waiters, []
        for future in waiters:
            _resolve(future, None)

    async def wait_applied(self, index: int, timeout_s: float) -> bool:
        """Wait until the local replica has applied `index`; False on timeout."""
        if self.applied_index >= index:
            return True
        future: asyncio.Future[None] = self.loop.create_future()
        self._apply_waiters.append((index, future))
        try:
            await asyncio.wait_for(future, timeout_s)
            return True
        except TimeoutError:
            return self.applied_index >= index
        finally:
            self._apply_waiters = [(i, f) for i, f in self._apply_waiters if f is not future]

    @property
    def applied_index(self) -> int:
        """Raft's applied index: it counts entries the state machine never sees
        (a leader's no-op, membership changes), unlike `sm.applied_index`."""
        return self.group.last_applied

    def _on_applied_from_tick(self) -> None:
        if self._apply_waiters:
            self.loop.call_soon(self._on_applied)

    def _on_applied(self) -> None:
        applied = self.applied_index
        for index, future in self._apply_waiters:
            if index <= applied and not future.done():
                future.set_result(None)

    @property
    def token(self) -> str:
        return f"{self.shard}:{self.applied_index}"

    async def snapshot_to(self, dest: Path) -> int:
        """Write a consistent snapshot holding every write acknowledged before the
        call to `dest`: ReadIndex first, then a RocksDB checkpoint (point-in-time)
        packed into the file. Returns its applied index."""
        index = await self.read_index()
        if not await self.wait_applied(index, self.limits.read_timeout_ms / 1000):
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

    async def change_membership(self, add: bool, address: str) -> bool:
        future: asyncio.Future[bool] = self.loop.create_future()

        def done(ok: bool) -> None:
            self.loop.call_soon(_resolve, future, ok)

        self.group.change_membership(add, address, done)
        try:
            return await asyncio.wait_for(future, self.limits.write_timeout_ms / 1000)
        except TimeoutError:
            return False

    async def transfer_leadership(self, address: str | None) -> bool:
        future: asyncio.Future[bool] = self.loop.create_future()

        def done(ok: bool) -> None:
            self.loop.call_soon(_resolve, future, ok)

        self.group.transfer_leadership(address, done)
        return await asyncio.wait_for(future, self.limits.write_timeout_ms / 1000)

    # -- background work ---------------------------------------------------------------
    async def reap_expired(self) -> None:
        """Leader only: propose the deletion of expired memories. The time is
        chosen here, before proposing, so apply stays deterministic."""
        now = self.clock.wall_ms()
        first = next(self.store.scan(b"x\x00", b"x\x01"), None)
        if first is None or codec.from_u64(first[0][2:10]) > now:
            return
        await self.submit({"t": "expire", "now": now})

    def close(self) -> None:
        self.store.close()

    def drop(self) -> None:
        """This node no longer holds the shard: stop the group, delete the data."""
        self.group.destroy()
        self.store.close()
        shutil.rmtree(self.store.directory, ignore_errors=True)


class _ApplyHook:
    """The Replica the consensus adapter sees: the state machine, plus a nudge to
    the event loop when an applied index is awaited."""

    def __init__(self, replica: ShardReplica) -> None:
        self._r = replica
        self._sm = replica.sm

    @property
    def applied_index(self) -> int:
        return self._sm.applied_index

    def apply(self, index: int, payload: bytes) -> Any:
        return self._sm.apply(index, payload)

    def create_checkpoint(self, directory: Path) -> None:
        self._sm.create_checkpoint(directory)

    def pack_checkpoint(self, directory: Path, path: Path, meta: bytes) -> None:
        self._sm.pack_checkpoint(directory, path, meta)

    def stage_snapshot(self, path: Path) -> Path:
        return self._sm.stage_snapshot(path)

    def install_staged(self, staged: Path) -> None:
        self._sm.install_staged(staged)

    def read_snapshot_meta(self, path: Path) -> bytes:
        return self._sm.read_snapshot_meta(path)


def _resolve(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _fail(future: asyncio.Future[Any], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)


def _fake_result(op: dict[str, Any]) -> dict[str, Any]:
    if op["t"] == "put":
        fields = op["fields"]
        rec = {"namespace": op["ns"], "id": op["id"], "version": 0, "rev": 0, **fields}
        return {"status": 200, "memory": rec}
    return {"status": 200}
