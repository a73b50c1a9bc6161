"""The one package that uses pysyncobj (pinned to exactly 0.3.17).

What the rest of raftmem uses: `RaftGroup` (one shard replica's Raft membership:
propose, role, read primitives, membership operations, status and stats), its
`GroupSpec`, the proposal outcomes, the `Replica` seam a state machine offers,
and the `Ticker` that drives every group of the process on the asyncio event
loop thread over one shared epoll set. Only the shard implementation
(raftmem.replica) holds a RaftGroup; everything else sees the Shard port.

One file per job: `patches` (what changes pysyncobj itself), `poller`,
`transport`, `hooks` (lease, ReadIndex stamps, pre-vote), `snapshots`, `group`,
`ticker`, `journal` (the durable journal). Everything here reaches into
pysyncobj's private seams, checked against one version only (DESIGN.md in this
folder):

- `createJournal` is replaced so pysyncobj writes our `DurableJournal`
  (fsync, atomic term/vote, crash-safe compaction) instead of its mmap journal.
- `createPoller` is replaced so all groups share one epoll set, which the event
  loop watches: Raft and HTTP callbacks take turns on one thread.
- A `TCPTransport` subclass defers outgoing messages of a tick until the
  journals written in that tick are fsynced (group commit: one round of fsyncs
  covers all shards). So a follower never acknowledges an entry that is not
  durable on its own disk. A leader's append-entries leave at once, and the
  leader counts itself towards a commit only up to its own durable index
  (`DurableMatch`), so its fsync runs while the followers' do. It also refuses
  pysyncobj's admin ("utility") commands on Raft ports, which would otherwise be
  accepted from any connection.
- The snapshot serializer hooks pack a RocksDB checkpoint (taken in a tick
  pass, so it is exactly the state at the applied index) in a background
  thread, and restore it on install.
"""

from __future__ import annotations

from . import patches  # noqa: F401  (first: pysyncobj is patched before any group is built)
from .group import OK, REJECTED, UNKNOWN, GroupSpec, RaftGroup
from .snapshots import Replica
from .ticker import Ticker

__all__ = ["OK", "REJECTED", "UNKNOWN", "GroupSpec", "RaftGroup", "Replica", "Ticker"]
