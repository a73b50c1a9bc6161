"""The memory service: validates requests, routes them to shards, and decides who
serves: a local shard leader, a local replica (stale-tolerant reads), or the
shard leader on another node (forwarding).

It knows nothing of aiohttp (the API layer hands it a `Call` and gets a `Reply`;
forwarding goes through the small `Forwarder` interface) and knows shards only
by the Shard port (raftmem.shard). One module per concern:

    calls       Call, Reply, Forwarder: what the service speaks
    leaders     Router: who leads a shard, run a call there (or forward it)
    outcomes    the one mapping of command outcomes to HTTP
    memories    put, create, delete (typed commands)
    relay       those writes carried to their leader's node as commands, several per request
    batches     many operations, one log entry per shard, one request per leader node
    queries     get and list (the read protocol itself is raftmem.reads)
    search      POST /v1/search over the shards' derived indexes
    recall      namespaces, summaries, reindex, the write path's index hooks
    transfers   leadership transfer, snapshots, backup, restore
    membership  the membership table as an API
    status      GET /v1/cluster, readiness
    locks       locks: acquire (waiting in turn), renew, release, inspect
    tasks       task queues: enqueue, claim (waiting in turn), complete, fail, extend, list
    waiters     the leader's queues of waiting acquisitions and claims
    watch       GET /v1/watch: committed changes, streamed, resumable from tokens;
                POST /v1/watch: many watches on one connection (watchmux)
    history     GET /v1/memories/{ns}/{id}/history
    lifecycle   reads recorded (access, sliding TTL), pruning policies
"""

from __future__ import annotations

from collections.abc import Mapping

from ..clock import Clock
from ..config import Config
from ..coordination import Notice
from ..events import ChangeFeed
from ..indexing.manager import Indexes
from ..membership import Table
from ..shard import Shard
from .batches import INTERNAL_BATCH_PATH, Batches
from .calls import (
    CONTEXT_HEADER,
    FORWARD_HEADERS,
    FORWARD_HOPS_MAX,
    FORWARDED_HEADER,
    SNAPSHOT_CONTENT_TYPE,
    Call,
    FileBody,
    Forwarder,
    ForwardLost,
    ForwardNotSent,
    Reply,
    error_reply,
    with_context,
)
from .history import Histories
from .leaders import Router
from .lifecycle import Lifecycle
from .locks import Locks
from .membership import Membership
from .memories import TIME_KEY_RE, Memories
from .queries import Queries
from .recall import Recall
from .relay import RELAY_PATH, Relay
from .search import Search
from .status import Status
from .tasks import Tasks
from .transfers import SCRATCH_DIR, Transfers
from .waiters import Waiters
from .watch import Watches

__all__ = [
    "CONTEXT_HEADER", "INTERNAL_BATCH_PATH", "RELAY_PATH", "error_reply", "with_context",
    "FORWARDED_HEADER", "FORWARD_HEADERS", "FORWARD_HOPS_MAX", "SCRATCH_DIR", "SNAPSHOT_CONTENT_TYPE",
    "TIME_KEY_RE", "Call", "FileBody", "ForwardLost", "ForwardNotSent", "Forwarder", "MemoryService", "Reply",
]


class MemoryService:
    """The service's parts, wired once per node."""

    def __init__(
        self,
        config: Config,
        node_id: str,
        shards: Mapping[int, Shard],
        table: Table,
        forwarder: Forwarder,
        clock: Clock,
        indexes: Indexes | None = None,
        feed: ChangeFeed | None = None,
    ) -> None:
        """`indexes`: the node's derived indexes (None: search is unavailable here);
        `feed`: the node's change events (watches follow it)."""
        self.config = config
        self.node_id = node_id
        self.clock = clock
        self.router = Router(config, node_id, shards, table, forwarder)
        self.queries = Queries(config, self.router, clock)
        self.search = Search(config, self.router, clock, indexes)
        self.recall = Recall(config, self.router, clock, indexes, self.search.barrier)
        self.relay = Relay(config.limits, forwarder, config.shards)
        self.memories = Memories(config, self.router, clock, hooks=self.recall if indexes is not None else None,
                                 relay=self.relay)
        self.batches = Batches(config, self.router, self.queries, clock,
                               hooks=self.recall if indexes is not None else None)
        self.transfers = Transfers(config, self.router, clock)
        self.membership = Membership(config, self.router, self.memories)
        self.status = Status(config, self.router, indexes.status if indexes is not None else None)
        self.waiters = Waiters(config.coordination)
        self.locks = Locks(config, self.router, clock, self.waiters)
        self.tasks = Tasks(config, self.router, clock, self.waiters)
        self.histories = Histories(config, self.queries)
        self.watches = Watches(config, self.router, feed if feed is not None else ChangeFeed(), forwarder)
        self.lifecycle = Lifecycle(config, self.router, self.memories, forwarder, clock)
        self.queries.on_read = self.lifecycle.saw
        self.status.sections["lifecycle"] = self.lifecycle.status
        self.status.sections["watch"] = self.watches.status

    def wake(self, shard: int, notices: list[Notice]) -> None:
        """A replica here applied what waiters may want: a lock freed, tasks ready."""
        for kind, ns, name in notices:
            self.waiters.wake((shard, kind, ns, name))
