"""One node process: every shard replica this node holds, their Raft ticks and
the aiohttp API on one event loop (plus an fsync thread). `raftmem serve` calls
`serve()`."""

from __future__ import annotations

import asyncio
import gc
import logging
import shutil
import signal
import time
from contextlib import suppress
from pathlib import Path

import orjson

from . import allocator, eventloop
from .api import HttpForwarder, build_app
from .clock import Clock, SystemClock
from .config import Config, NodeConfig, check_ports_free, check_tls_files, is_loopback
from .consensus import Ticker
from .coordination import Notice
from .errors import RaftmemError
from .events import ChangeFeed
from .httpserver import ConnectionGuard, Listener
from .indexing.manager import Indexes
from .membership import Table, preferred_leaders
from .metrics import Metrics
from .replica import EXPIRE_PERIOD_S, ShardReplica
from .service import FORWARD_HOPS_MAX, SCRATCH_DIR, Call, ForwardLost, ForwardNotSent, MemoryService
from .shard import Shard
from .storage import MemoryBudget, write_file_atomically
from .tls import NodeTls

log = logging.getLogger(__name__)

RECONCILE_PERIOD_S = 0.5
LEADER_BALANCE_AFTER_S = 10.0
PEERS_FILE = "peers.json"  # the voters this replica last knew, to restart with
JOINED_FILE = "joined"  # this node has been a member: never re-seed its replicas
STOP_FLUSH_S = 2.0  # a stopping node sends the reads it served for at most this long


class Node:
    def __init__(
        self, config: Config, node_id: str, clock: Clock | None = None, me: NodeConfig | None = None
    ) -> None:
        """`me`: where this node listens, for a node joining a running cluster that
        its config does not list (see `raftmem member add`)."""
        self.config = config
        self.node_id = node_id
        self.me = me or config.node(node_id)
        check_tls_files(config, node_id)
        self.clock = clock or SystemClock()
        self.replicas: dict[int, Shard] = {}
        # Change events of every replica here, in log order per shard; open before
        # any replica starts, so a subscriber can see what a start-up applies.
        self.feed = ChangeFeed()
        self.ticker = Ticker(config.raft.fsync, config.raft.fsync_batch_ms, config.raft.log_compaction_bytes)
        # RocksDB memory, one budget for all the replicas here (storage.*).
        self.budget = MemoryBudget(config.storage.memtable_bytes_max, config.storage.block_cache_bytes)
        # HTTPS for the API and to the other nodes when tls: is set (raftmem/tls.py).
        self.tls = NodeTls(config.tls.for_node(node_id)) if config.tls.enabled else None
        self.forwarder = HttpForwarder(config, self.tls.client if self.tls is not None else None)
        self.listener: Listener | None = None
        self.metrics: Metrics | None = None
        # Derived indexes of every replica here, fed from the feed (raftmem/indexing).
        self.indexes = Indexes(config, self.feed, self.clock)
        self.service: MemoryService | None = None
        self.known_nodes: dict[str, NodeConfig] = {n.id: n for n in config.nodes}
        self._last_balance = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def _nodes(self, table: Table) -> dict[str, NodeConfig]:
        """Every node ever seen: a voter being removed may be gone from the table."""
        self.known_nodes.update(table.nodes)
        self.known_nodes[self.node_id] = self.me
        return dict(self.known_nodes)

    def _start_replica(self, shard: int, peers: list[str], table: Table) -> ShardReplica:
        assert self._loop is not None
        members = sorted(set(peers) | {self.node_id})
        preferred = preferred_leaders(table.assignment).get(shard) == self.node_id
        replica = ShardReplica(shard, self.node_id, self.config, self.ticker, self._loop, self.clock,
                               members, self._nodes(table), preferred_leader=preferred, feed=self.feed,
                               budget=self.budget, notify=self._wake)
        _save_peers(replica.directory, members)
        self.replicas[shard] = replica
        self.indexes.attach(replica)
        return replica

    async def start(self) -> None:
        check_ports_free(self.config, self.me)
        for warning in debug_warnings(self.config):
            log.warning("node %s: %s", self.node_id, warning)
        if not self.config.auth.enabled and not is_loopback(self.me.host):
            log.warning(
                "node %s: the API on %s is open to anyone who can reach it; set auth.cluster_token "
                "and auth.tokens to require bearer tokens", self.node_id, self.config.url_of(self.me),
            )
        self._loop = asyncio.get_running_loop()
        self.ticker.attach(self._loop)
        table = Table.seed(self.config)
        data_dir = self.config.node_data_dir(self.node_id)
        shutil.rmtree(Path(data_dir) / SCRATCH_DIR, ignore_errors=True)  # transfers a crash cut short
        for shard in range(self.config.shards):
            peers = _load_peers(data_dir / f"shard-{shard:03d}")
            if peers is None and self.node_id in table.assignment[shard] and not _joined(data_dir):
                peers = table.assignment[shard]  # a seed node's first start
            if peers is not None:
                self._start_replica(shard, peers, table)
        self.ticker.start()
        await self.forwarder.start()
        self.service = MemoryService(self.config, self.node_id, self.replicas, table, self.forwarder, self.clock,
                                     indexes=self.indexes, feed=self.feed)
        await self.indexes.start()
        guard = ConnectionGuard(self.config.limits)
        self.metrics = Metrics(self.ticker, self.budget, self.indexes)
        self.metrics.loop_lag.start(self._loop)
        app = build_app(self.service, self.config, self.metrics, guard)
        self.listener = Listener(app, guard)
        await self.listener.start(self.me.host, self.me.http_port, self.tls.server if self.tls is not None else None)
        self._tasks.append(asyncio.create_task(self._reaper()))
        self._tasks.append(asyncio.create_task(self._reconcile_forever()))
        self._tasks.append(asyncio.create_task(self.service.lifecycle.flush_forever()))
        self._tasks.append(asyncio.create_task(self.service.lifecycle.run_forever()))
        log.info(
            "node %s: serving %d shard replicas, API on %s, Raft on %s:%d-%d",
            self.node_id, len(self.replicas), self.config.url_of(self.me), self.me.host,
            self.me.raft_port(0), self.me.raft_port(self.config.shards - 1),
        )

    def _wake(self, shard: int, notices: list[Notice]) -> None:
        """A replica applied something waiters here may want (a lock freed, a
        task ready): on the loop, inside apply, so it must not block."""
        if self.service is not None:
            self.service.wake(shard, notices)

    # -- membership: converge on the table ------------------------------------------
    async def _reconcile_forever(self) -> None:
        while True:
            await asyncio.sleep(RECONCILE_PERIOD_S)
            try:
                await self.reconcile()
            except RaftmemError as e:
                log.debug("node %s: reconcile deferred: %s", self.node_id, e.message)
            except Exception:
                log.exception("node %s: reconcile failed", self.node_id)

    async def reconcile(self) -> None:
        """One step towards the membership table: start replicas assigned here,
        let each shard leader add or remove one voter, drop replicas this node
        no longer holds."""
        service = self.service
        assert service is not None
        table = await service.membership.current_table(Call("GET", "/v1/admin/members"))
        service.router.set_table(table)
        member = self.node_id in table.nodes
        if member:
            _mark_joined(self.config.node_data_dir(self.node_id))
        now = time.monotonic()
        for shard, desired in sorted(table.assignment.items()):
            replica = self.replicas.get(shard)
            known = self._nodes(table)
            if replica is None:
                if member and self.node_id in desired:
                    peers = await self._current_members(shard, table) or desired
                    peers = [p for p in set(peers) | set(desired) if p in known]
                    log.info("node %s: starting a replica of shard %d (peers %s)", self.node_id, shard, peers)
                    self._start_replica(shard, sorted(peers), table)
                continue
            replica.learn_nodes(known)
            members = replica.voters()
            _save_peers(replica.directory, members)
            if replica.role().leading:
                await self._converge(replica, desired, members, table)
            elif self.node_id not in desired and replica.seconds_out_of_touch(now) > self._drop_after_s():
                # Not at once: an outgoing leader is still a voter until its
                # successor removes it, and a group short of a voter tolerates
                # one failure fewer.
                log.info("node %s: dropping shard %d (no longer assigned here)", self.node_id, shard)
                del self.replicas[shard]
                await self.indexes.detach(shard, delete=True)
                await asyncio.to_thread(replica.drop)
                self.feed.shard_dropped(shard)

    def _drop_after_s(self) -> float:
        return 3 * self.config.raft.election_timeout_ms_max / 1000

    async def _converge(self, replica: Shard, desired: list[str], members: list[str], table: Table) -> None:
        shard = replica.shard
        add = [n for n in desired if n not in members]
        remove = [n for n in members if n not in desired]
        if add:
            log.info("node %s: shard %d: adding %s", self.node_id, shard, add[0])
            await replica.add_voter(add[0])
        elif self.node_id in remove:
            target = next((n for n in desired if n != self.node_id), None)
            if target is not None:
                log.info("node %s: shard %d: handing leadership to %s before leaving", self.node_id, shard, target)
                await replica.transfer_leadership(target)
        elif remove:
            log.info("node %s: shard %d: removing %s", self.node_id, shard, remove[0])
            await replica.remove_voter(remove[0])
        else:
            await self._balance_leader(replica, table)

    async def _balance_leader(self, replica: Shard, table: Table) -> None:
        """Hand leadership to the shard's preferred leader (placement spreads them)
        once this node has led it for a while: failovers otherwise pile leaders up."""
        preferred = preferred_leaders(table.assignment).get(replica.shard)
        now = time.monotonic()
        if preferred in (None, self.node_id) or now - replica.role().since < LEADER_BALANCE_AFTER_S:
            return
        if now - self._last_balance < LEADER_BALANCE_AFTER_S:
            return  # one hand-over at a time per node, spread out
        status = replica.status()
        if (status.match_index or {}).get(preferred, -1) < status.commit_index:
            return  # not caught up: pysyncobj would refuse the transfer anyway
        self._last_balance = now
        log.info("node %s: shard %d: handing leadership to preferred leader %s", self.node_id, replica.shard, preferred)
        await replica.transfer_leadership(preferred)

    async def _current_members(self, shard: int, table: Table) -> list[str] | None:
        """Ask the nodes assigned to `shard` which voters its leader has."""
        assert self.service is not None
        for node_id in table.assignment[shard]:
            if node_id == self.node_id:
                continue
            try:
                reply = await self.forwarder.forward(node_id, Call("GET", "/v1/cluster", {}, {}, b"", FORWARD_HOPS_MAX), 2.0)
            except (ForwardNotSent, ForwardLost):
                continue
            if reply.status == 200:
                entry = reply.json()["shards"][shard]
                if entry.get("members"):
                    return list(entry["members"])
        return None

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_PERIOD_S)
            for replica in list(self.replicas.values()):
                try:
                    await replica.expire_due()
                except Exception as e:  # the next period tries again
                    log.debug("shard %d: expiry deferred: %s", replica.shard, e)

    async def stop(self) -> None:
        if self.service is not None:
            self.service.watches.close()  # streams end with an event saying so
            with suppress(Exception):  # reads served and not yet sent: best effort
                await asyncio.wait_for(self.service.lifecycle.flush_all(), STOP_FLUSH_S)
        for task in self._tasks:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        if self.metrics is not None:
            self.metrics.loop_lag.stop()
        if self.listener is not None:
            await self.listener.stop()
        await self.forwarder.close()
        await self.indexes.stop()
        if self.service is not None:
            await self.service.recall.close()
        self.ticker.stop()
        for replica in self.replicas.values():
            replica.close()
        self.feed.close()
        log.info("node %s: stopped", self.node_id)


# What each debug switch does (config `debug:`, the harness's faults and negative controls).
DEBUG_EFFECTS = {
    "unsafe_local_reads": "UNSAFE: strong reads are served locally without a lease or ReadIndex",
    "unsafe_early_ack": "UNSAFE: writes are acknowledged before they commit",
    "disable_prevote": "UNSAFE: Raft pre-vote is off",
    "naive_transfer": "leadership hand-overs keep appending after TimeoutNow (under writes they fail, and the "
                      "old leader wins again at a higher term)",
    "unsafe_skip_fence_check": "UNSAFE: fences are not checked: a lock protects no write, and a stale claim "
                               "settles a task",
    "slow_snapshot_disk": "a fault: each snapshot install takes 3 s longer",
    "inline_snapshot_install": "snapshots are installed on the event loop, which stalls the node",
    "torn_snapshot_transfer": "a fault: the first snapshot each shard sends a follower loses a chunk in transit",
    "unsafe_unchecked_snapshots": "UNSAFE: received snapshots are installed unchecked (a torn one becomes an "
                                  "empty or partial database)",
    "unsafe_search_no_barrier": "UNSAFE: fresh searches answer without their barrier (they may miss "
                                "acknowledged writes)",
    "unsafe_watch_drop": "UNSAFE: watch streams leave out one event in a hundred",
    "unsafe_search_no_wake": "UNSAFE: searches do not wake search-idle indexes (they may miss batched writes "
                             "for up to indexing.idle_batch_ms)",
    "unsafe_engines_resume_claimed": "UNSAFE: after the engine host dies, indexes resume from what they had "
                                     "claimed (they may lose what was not saved)",
}


def debug_warnings(config: Config) -> list[str]:
    """One warning per debug switch that is on: they exist for the harness's
    fault tests and negative controls, never for production."""
    return [f"debug.{name} is on: {DEBUG_EFFECTS.get(name, 'a debug switch')} (for tests only, never in production)"
            for name, on in sorted(config.debug.items()) if on]


def _load_peers(directory: Path) -> list[str] | None:
    try:
        return list(orjson.loads((directory / PEERS_FILE).read_bytes()))
    except FileNotFoundError:
        return None


def _save_peers(directory: Path, peers: list[str]) -> None:
    path = directory / PEERS_FILE
    data = orjson.dumps(sorted(peers))
    if not path.exists() or path.read_bytes() != data:
        write_file_atomically(path, data)


def _joined(data_dir: Path) -> bool:
    return (data_dir / JOINED_FILE).exists()


def _mark_joined(data_dir: Path) -> None:
    if not _joined(data_dir):
        data_dir.mkdir(parents=True, exist_ok=True)
        write_file_atomically(data_dir / JOINED_FILE, b"1\n")


# A node allocates briskly (a few hundred objects per request), so with the
# default threshold of 700 the collector ran a young-generation pass every few
# requests. Start-up objects (modules, config, routes) are frozen out of it.
# Measured on the 3-node bench: +6 % strong reads, writes up to +18 % (noisy).
GC_THRESHOLDS = (20_000, 20, 20)


def _tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _serve(config: Config, node_id: str, me: NodeConfig | None = None) -> None:
    node = Node(config, node_id, me=me)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if node.tls is not None:
        loop.add_signal_handler(signal.SIGHUP, node.tls.reload)
    await node.start()
    _tune_gc()
    log.info("node %s: event loop %s", node_id, eventloop.loop_kind())
    print(f"raftmem node {node_id} ready on {config.url_of(node.me)}", flush=True)
    await stop.wait()
    await node.stop()


def serve(config: Config, node_id: str, me: NodeConfig | None = None) -> None:
    allocator.tune()
    eventloop.run(_serve(config, node_id, me))
