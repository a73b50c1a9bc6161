"""One node process: every shard replica this node holds, one Raft tick thread,
the aiohttp API on the event loop. `raftmem serve` calls `serve()`."""

from __future__ import annotations

import asyncio
import logging
import signal
from contextlib import suppress

from aiohttp import web

from .api import HttpForwarder, build_app
from .clock import Clock, SystemClock
from .config import Config, check_ports_free
from .consensus import Ticker
from .metrics import Metrics
from .routing import placement
from .service import MemoryService
from .shards import EXPIRE_PERIOD_S, ShardReplica

log = logging.getLogger(__name__)


class Node:
    def __init__(self, config: Config, node_id: str, clock: Clock | None = None) -> None:
        self.config = config
        self.node_id = node_id
        self.me = config.node(node_id)
        self.clock = clock or SystemClock()
        self.replicas: dict[int, ShardReplica] = {}
        self.ticker = Ticker(config.raft.fsync, config.raft.fsync_batch_ms)
        self.forwarder = HttpForwarder(config)
        self.runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        check_ports_free(self.config, self.node_id)
        loop = asyncio.get_running_loop()
        table = placement([n.id for n in self.config.nodes], self.config.shards, self.config.replication_factor)
        for shard, replicas in table.items():
            if self.node_id in replicas:
                self.replicas[shard] = ShardReplica(
                    shard, self.node_id, self.config, self.ticker, loop, self.clock, replicas
                )
        self.ticker.start()
        await self.forwarder.start()
        service = MemoryService(self.config, self.node_id, self.replicas, table, self.forwarder, self.clock)
        app = build_app(service, self.config, Metrics())
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.me.host, self.me.http_port, reuse_address=True)
        await site.start()
        self._tasks.append(asyncio.create_task(self._reaper()))
        log.info(
            "node %s: serving %d shard replicas, API on %s, Raft on %s:%d-%d",
            self.node_id, len(self.replicas), self.me.http_url, self.me.host,
            self.me.raft_port(0), self.me.raft_port(self.config.shards - 1),
        )

    async def _reaper(self) -> None:
        while True:
            await asyncio.sleep(EXPIRE_PERIOD_S)
            for replica in self.replicas.values():
                if replica.group.is_leader():
                    try:
                        await replica.reap_expired()
                    except Exception as e:  # the next period tries again
                        log.debug("shard %d: expiry deferred: %s", replica.shard, e)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task
        if self.runner is not None:
            await self.runner.cleanup()
        await self.forwarder.close()
        await asyncio.to_thread(self.ticker.stop)
        for replica in self.replicas.values():
            replica.close()
        log.info("node %s: stopped", self.node_id)


async def _serve(config: Config, node_id: str) -> None:
    node = Node(config, node_id)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    print(f"raftmem node {node_id} ready on {node.me.http_url}", flush=True)
    await stop.wait()
    await node.stop()


def serve(config: Config, node_id: str) -> None:
    asyncio.run(_serve(config, node_id))
