"""A shard replica on the event loop: group commit of writes, read barriers,
waiting for an applied index, and the expiry reaper.

The tick thread (consensus.Ticker) applies entries and fires proposal
callbacks; everything here runs on the asyncio loop, and results cross over
with `loop.call_soon_threadsafe` only.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import codec
from .clock import Clock
from .config import Config
from .consensus import OK, REJECTED, GroupSpec, RaftGroup, Ticker
from .errors import Indeterminate, NoLeader, Overloaded, Unavailable
from .statemachine import StateMachine
from .storage import Store

log = logging.getLogger(__name__)

EXPIRE_PERIOD_S = 1.0


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
    ) -> None:
        self.shard = shard
        self.node_id = node_id
        self.config = config
        self.loop = loop
        self.clock = clock
        self.limits = config.limits
        directory = Path(config.node_data_dir(node_id)) / f"shard-{shard:03d}"
        self.store = Store(directory)
        self.sm = StateMachine(self.store, shard, config.limits.idempotency_keys_max)
        nodes = {n.id: n for n in config.nodes}
        me = nodes[node_id]
        address_to_node = {f"{nodes[r].host}:{nodes[r].raft_port(shard)}": r for r in replicas}
        spec = GroupSpec(
            shard=shard,
            self_address=f"{me.host}:{me.raft_port(shard)}",
            peer_addresses=[a for a, r in address_to_node.items() if r != node_id],
            directory=directory,
            raft=config.raft,
            address_to_node=address_to_node,
            naive_step_down=bool(config.debug.get("unsafe_local_reads")),
        )
        self._queue: list[_Pending] = []
        self._flush_scheduled = False
        self._in_flight = 0
        self._apply_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.proposals = 0
        self.entries_proposed = 0
        self.unsafe_early_ack = bool(config.debug.get("unsafe_early_ack"))
        self.group = RaftGroup(spec, _ApplyHook(self), ticker)

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
        # The waiter may time out before the outcome arrives: mark the outcome as
        # retrieved so asyncio does not log it as lost.
        future.add_done_callback(_consume)
        self._queue.append(_Pending(op, future, size))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)
        timeout_s = (self.limits.write_timeout_ms if op is not None else self.limits.read_timeout_ms) / 1000
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            if op is None:
                raise Unavailable(f"shard {self.shard}: read barrier timed out", shard=self.shard) from None
            raise Indeterminate(
                f"shard {self.shard}: no commit within {timeout_s:.1f}s; the write may still apply",
                shard=self.shard,
            ) from None

    def _flush(self) -> None:
        self._flush_scheduled = False
        queue, self._queue = self._queue, []
        while queue:
            batch: list[_Pending] = []
            ops: list[dict[str, Any]] = []
            size = 0
            barrier_waiters: list[_Pending] = []
            while queue and len(ops) < self.limits.group_commit_ops_max:
                item = queue[0]
                if item.op is None:
                    barrier_waiters.append(queue.pop(0))
                    continue
                if ops and size + item.size > self.limits.group_commit_bytes_max:
                    break
                queue.pop(0)
                batch.append(item)
                ops.append(item.op)
                size += item.size
            if barrier_waiters:
                ops.append({"t": "noop"})
            if not ops:
                continue
            self._propose(ops, batch, barrier_waiters)

    def _propose(self, ops: list[dict[str, Any]], batch: list[_Pending], barriers: list[_Pending]) -> None:
        payload = codec.encode_entry(ops)
        self._in_flight += len(batch) + len(barriers)
        self.proposals += len(ops)
        self.entries_proposed += 1

        def settle(outcome: str, value: Any) -> None:
            self._in_flight -= len(batch) + len(barriers)
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
            for item in batch:
                _fail(item.future, error)
            for item in barriers:
                _fail(item.future, Unavailable(f"shard {self.shard}: read barrier lost", shard=self.shard))

        def on_done(outcome: str, value: Any) -> None:
            self.loop.call_soon_threadsafe(settle, outcome, value)

        if self.unsafe_early_ack:
            # Negative control only: acknowledge before commit (a lying store).
            self.group.propose(payload, lambda _o, _v: None)
            fake = {"index": self.sm.applied_index, "results": [_fake_result(op) for op in ops]}
            self.loop.call_soon(settle, OK, fake)
            return
        self.group.propose(payload, on_done)

    # -- reads -----------------------------------------------------------------------
    async def wait_applied(self, index: int, timeout_s: float) -> bool:
        """Wait until the local replica has applied `index`; False on timeout."""
        if self.sm.applied_index >= index:
            return True
        future: asyncio.Future[None] = self.loop.create_future()
        self._apply_waiters.append((index, future))
        try:
            await asyncio.wait_for(future, timeout_s)
            return True
        except TimeoutError:
            return self.sm.applied_index >= index
        finally:
            self._apply_waiters = [(i, f) for i, f in self._apply_waiters if f is not future]

    def _on_applied(self) -> None:
        applied = self.sm.applied_index
        for index, future in self._apply_waiters:
            if index <= applied and not future.done():
                future.set_result(None)

    @property
    def token(self) -> str:
        return f"{self.shard}:{self.sm.applied_index}"

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
        result = self._sm.apply(index, payload)
        if self._r._apply_waiters:
            self._r.loop.call_soon_threadsafe(self._r._on_applied)
        return result

    def create_checkpoint(self, directory: Path) -> None:
        self._sm.create_checkpoint(directory)

    def pack_checkpoint(self, directory: Path, path: Path, meta: bytes) -> None:
        self._sm.pack_checkpoint(directory, path, meta)

    def install_snapshot(self, path: Path) -> None:
        self._sm.install_snapshot(path)
        if self._r._apply_waiters:
            self._r.loop.call_soon_threadsafe(self._r._on_applied)

    def read_snapshot_meta(self, path: Path) -> bytes:
        return self._sm.read_snapshot_meta(path)


def _consume(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


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
