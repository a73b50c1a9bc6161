"""Routing to shard leaders: which node leads a shard, and running a call where
it does (here, or forwarded to that node), waiting out elections."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from ..config import Config
from ..errors import Indeterminate, NoLeader, Unavailable
from ..membership import Table
from ..routing import shard_for
from ..shard import Shard
from .calls import FORWARD_HOPS_MAX, Call, Forwarder, ForwardLost, ForwardNotSent, Reply

LEADER_WAIT_POLL_S = 0.05


class Router:
    def __init__(
        self, config: Config, node_id: str, shards: Mapping[int, Shard], table: Table, forwarder: Forwarder
    ) -> None:
        """`shards`: this node's replicas (the node adds and drops them)."""
        self.config = config
        self.node_id = node_id
        self.shards = shards
        self.table = table
        self.forwarder = forwarder
        self.limits = config.limits
        # Leaders of shards this node holds no replica of, learned from peers.
        self.remote_leaders: dict[int, str] = {}

    def shard_of(self, ns: str, mid: str) -> int:
        return shard_for(ns, mid, self.config.shards)

    def local(self, shard: int) -> Shard | None:
        return self.shards.get(shard)

    @property
    def placement(self) -> dict[int, list[str]]:
        return self.table.assignment

    def set_table(self, table: Table) -> None:
        if table.version < self.table.version:
            return
        self.table = table
        self.forwarder.set_urls({n: self.config.url_of(table.nodes[n]) for n in table.nodes})

    def leader_of(self, shard: int) -> str | None:
        replica = self.shards.get(shard)
        if replica is None:
            # Not ours: the last leader a peer reported, else any assigned node
            # (which forwards on to its leader).
            hint = self.remote_leaders.get(shard)
            if hint is not None and hint in self.table.nodes:
                return hint
            holders = [n for n in self.table.assignment.get(shard, []) if n != self.node_id]
            return holders[0] if holders else None
        return replica.role().leader

    async def on_leader(
        self,
        shard: int,
        call: Call,
        local: Callable[[Shard], Awaitable[Reply]],
        is_write: bool,
        timeout_s: float | None = None,
        relay: Callable[[str, float], Awaitable[Reply]] | None = None,
    ) -> Reply:
        """Run `local` where this node leads `shard`, else forward `call` to the
        leader; wait a little for an election, retry a proposal that a leadership
        change rejected (it certainly did not happen). `timeout_s`: for calls
        that may wait at the leader (a lock, a task), longer than a write's.
        `relay(leader, timeout_s)`: how to send it there instead of forwarding
        `call` (a write's command, relayed)."""
        if timeout_s is None:
            timeout_s = (self.limits.write_timeout_ms if is_write else self.limits.read_timeout_ms) / 1000
        deadline = time.monotonic() + timeout_s
        while True:
            leader = self.leader_of(shard)
            if leader == self.node_id:
                try:
                    return await local(self.shards[shard])
                except NoLeader:
                    if time.monotonic() >= deadline:
                        raise
            elif leader is not None and call.hops < FORWARD_HOPS_MAX:
                try:
                    remaining = max(0.1, deadline - time.monotonic()) + 1
                    if relay is not None:
                        return await relay(leader, remaining)
                    return await self.forwarder.forward(leader, call, remaining)
                except ForwardNotSent:
                    if time.monotonic() >= deadline:
                        raise NoLeader(f"shard {shard}: leader {leader} unreachable", shard=shard) from None
                except ForwardLost:
                    if is_write:
                        raise Indeterminate(
                            f"shard {shard}: leader {leader} did not answer; the write may still apply",
                            shard=shard,
                        ) from None
                    raise Unavailable(f"shard {shard}: leader {leader} did not answer", shard=shard) from None
            if time.monotonic() >= deadline:
                raise NoLeader(f"shard {shard} has no reachable leader", shard=shard, leader=leader)
            await asyncio.sleep(LEADER_WAIT_POLL_S)
