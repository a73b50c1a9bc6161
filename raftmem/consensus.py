"""The one module that uses pysyncobj (pinned to exactly 0.3.17).

Narrow interface: `RaftGroup.propose`, `is_leader`, `leader`, `status`, plus a
`Ticker` that drives every group of the process on the asyncio event loop
thread, over one shared epoll set. Everything below reaches into pysyncobj's
private seams, so it is all here and checked against one version only (see
DESIGN.md in this folder):

- `createJournal` is replaced so pysyncobj writes our `DurableJournal`
  (fsync, atomic term/vote, crash-safe compaction) instead of its mmap journal.
- `createPoller` is replaced so all groups share one epoll set, which the event
  loop watches: Raft and HTTP callbacks take turns on one thread.
- A `TCPTransport` subclass defers outgoing messages of a tick until the
  journals written in that tick are fsynced (group commit: one round of fsyncs
  covers all shards). So a follower never acknowledges an entry that is not
  durable on its own disk. A leader's append-entries leave at once, and the
  leader counts itself towards a commit only up to its own durable index
  (`_DurableMatch`), so its fsync runs while the followers' do. It also refuses
  pysyncobj's admin ("utility") commands on Raft ports, which would otherwise be
  accepted from any connection.
- The snapshot serializer hooks pack a RocksDB checkpoint (taken in a tick
  pass, so it is exactly the state at the applied index) in a background
  thread, and restore it on install.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import errno
import logging
import os
import select
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
import pysyncobj
import pysyncobj.syncobj as _so
import pysyncobj.tcp_connection as _tcp_connection
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON, SERIALIZER_STATE
from pysyncobj.monotonic import monotonic as monotonic_time
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.transport import TCPTransport

from .config import RaftConfig
from .leases import FollowerView, LeaderLease, PreVote, log_up_to_date
from .raftlog import DurableJournal
from .storage import fsync_dir, fsync_file, remove_in_background

log = logging.getLogger(__name__)

PYSYNCOBJ_VERSION = "0.3.17"
if getattr(pysyncobj, "__version__", None) not in (None, PYSYNCOBJ_VERSION):
    raise ImportError(f"raftmem needs pysyncobj=={PYSYNCOBJ_VERSION}, found {pysyncobj.__version__}")
if _so.VERSION != PYSYNCOBJ_VERSION:
    raise ImportError(f"raftmem needs pysyncobj=={PYSYNCOBJ_VERSION}, found {_so.VERSION}")

APPEND_BATCH_BYTES = 4 * 1024 * 1024
_ROLE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}  # pysyncobj's _RAFT_STATE
_FOLLOWER_STATE = 0
_LEADER_STATE = 2
# The `slow_snapshot_disk` fault: extra seconds to stage each received snapshot.
SLOW_DISK_STAGE_S = 5.0
# A staged snapshot waits this long between checks for a compaction to finish.
STAGED_RETRY_S = 0.05
# On-demand heartbeats (for ReadIndex) are at least this far apart: under a read
# flood, one round confirms every read that arrived before it.
HEARTBEAT_GAP_MIN_S = 0.001

# Outcome of a proposal, from the proposer's point of view.
OK = "ok"
REJECTED = "rejected"  # certainly not in the log: safe to retry
UNKNOWN = "unknown"  # may or may not commit: report as indeterminate

_FAIL_OUTCOME = {
    FAIL_REASON.QUEUE_FULL: REJECTED,
    FAIL_REASON.MISSING_LEADER: REJECTED,
    FAIL_REASON.NOT_LEADER: REJECTED,
    FAIL_REASON.REQUEST_DENIED: REJECTED,
    # DISCARDED: another entry was committed at this index, so ours never will be.
    FAIL_REASON.DISCARDED: REJECTED,
    FAIL_REASON.LEADER_CHANGED: UNKNOWN,
    FAIL_REASON.UNKNOWN_OUTCOME: UNKNOWN,
}

# -- construction-time hooks into pysyncobj ------------------------------------
_building = threading.local()
_orig_create_journal = _so.createJournal
_orig_create_poller = _so.createPoller


def _create_journal(journal_file: str | None = None) -> Any:
    journal = getattr(_building, "journal", None)
    return journal if journal is not None else _orig_create_journal(journal_file)


def _create_poller(poller_type: str) -> Any:
    poller = getattr(_building, "poller", None)
    return poller if poller is not None else _orig_create_poller(poller_type)


_so.createJournal = _create_journal
_so.createPoller = _create_poller


class _NoZlib:
    """pysyncobj deflates every message at level 3; ours are small and on a LAN,
    and even a level-0 zlib frame costs a copy and a checksum each way. Messages
    are sent as the bare pickle. A received frame is inflated only if it is a
    zlib stream (first byte 0x78); a pickle starts with its PROTO opcode 0x80, so
    the two never mix up."""

    @staticmethod
    def compress(data: bytes, _level: int = 0) -> bytes:
        return data

    @staticmethod
    def decompress(data: bytes) -> bytes:
        return zlib.decompress(data) if data[:1] == b"\x78" else data


_tcp_connection.zlib = _NoZlib


# pysyncobj's TcpConnection makes four system calls per readable event where one
# does: getsockopt(SO_ERROR) on every event, then recv, getsockopt, and a recv
# that fails with EAGAIN. Syscalls are dear in a VM, and every Raft message pays
# them. The two methods below are pysyncobj 0.3.17's, minus those calls: SO_ERROR
# is read only while a connect is in progress (a connected socket reports errors
# through recv/send and EPOLLERR), and one recv is made per event unless it
# filled the buffer (the level-triggered poller reports what is left).
_TcpConnection = _tcp_connection.TcpConnection
_CONN = _tcp_connection.CONNECTION_STATE


def _process_read(self: Any) -> bool:
    try:
        incoming = self._TcpConnection__socket.recv(self._TcpConnection__recvBufferSize)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
            self.disconnect()
        return False
    if not incoming:
        self.disconnect()
        return False
    self._TcpConnection__readBuffer += incoming
    return len(incoming) == self._TcpConnection__recvBufferSize


def _process_connection(self: Any, descr: int, event_type: int) -> None:
    poller = self._TcpConnection__poller
    if descr != self._TcpConnection__fileno:
        poller.unsubscribe(descr)
        return
    if event_type & POLL_EVENT_TYPE.ERROR:
        self.disconnect()
        return
    self._TcpConnection__processConnectionTimeout()
    if self.state == _CONN.DISCONNECTED:
        return
    if self._TcpConnection__state == _CONN.CONNECTING and event_type & (POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE):
        if self._TcpConnection__socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            self.disconnect()
            return
        on_connected = self._TcpConnection__onConnected
        if on_connected is not None:
            on_connected()
        if self._TcpConnection__state == _CONN.DISCONNECTED:
            return
        self._TcpConnection__state = _CONN.CONNECTED
        self._TcpConnection__lastReadTime = monotonic_time()
        return
    if event_type & POLL_EVENT_TYPE.WRITE:
        self._TcpConnection__trySendBuffer()
        if self._TcpConnection__state == _CONN.DISCONNECTED:
            return
        event = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
        if self._TcpConnection__writeBuffer:
            event |= POLL_EVENT_TYPE.WRITE
        poller.subscribe(descr, self._TcpConnection__processConnection, event)
    if event_type & POLL_EVENT_TYPE.READ:
        self._TcpConnection__tryReadBuffer()
        if self._TcpConnection__state == _CONN.DISCONNECTED:
            return
        while True:
            message = self._TcpConnection__processParseMessage()
            if message is None:
                break
            # Re-read each time: the first message of an incoming connection
            # names its node, and the transport swaps the callback then.
            on_message = self._TcpConnection__onMessageReceived
            if on_message is not None:
                on_message(message)
            if self._TcpConnection__state == _CONN.DISCONNECTED:
                return


_TcpConnection._TcpConnection__processRead = _process_read
_TcpConnection._TcpConnection__processConnection = _process_connection


class _EpollPoller:
    """The process's Raft sockets in one epoll set of their own. Its descriptor is
    watched by the asyncio loop (`Ticker.start`), so Raft I/O runs on the event
    loop thread between HTTP callbacks, yet the loop's own selector never holds a
    pysyncobj socket (a socket closed without unsubscribing cannot clash with an
    aiohttp connection that reuses its number)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[int, int], None]] = {}

    def fileno(self) -> int:
        return self._epoll.fileno()

    def subscribe(self, descr: int, callback: Callable[[int, int], None], event_mask: int) -> None:
        mask = select.EPOLLERR | select.EPOLLHUP
        if event_mask & POLL_EVENT_TYPE.READ:
            mask |= select.EPOLLIN
        if event_mask & POLL_EVENT_TYPE.WRITE:
            mask |= select.EPOLLOUT
        if descr in self._callbacks:
            try:
                self._epoll.modify(descr, mask)
            except OSError:  # closed and reused: register the new one
                self._epoll.register(descr, mask)
        else:
            try:
                self._epoll.register(descr, mask)
            except FileExistsError:
                self._epoll.modify(descr, mask)
        self._callbacks[descr] = callback

    def unsubscribe(self, descr: int) -> None:
        if self._callbacks.pop(descr, None) is not None:
            with contextlib.suppress(OSError):  # already closed: epoll dropped it
                self._epoll.unregister(descr)

    def poll(self, timeout: float) -> None:
        for descr, event in self._epoll.poll(timeout, 256):
            callback = self._callbacks.get(descr)
            if callback is None:
                continue
            mask = 0
            if event & select.EPOLLIN:
                mask |= POLL_EVENT_TYPE.READ
            if event & select.EPOLLOUT:
                mask |= POLL_EVENT_TYPE.WRITE
            if event & (select.EPOLLERR | select.EPOLLHUP):
                mask |= POLL_EVENT_TYPE.ERROR
            callback(descr, mask)

    def close(self) -> None:
        self._epoll.close()


class _GroupPoller:
    """One group's view of the shared poller: any socket event of the group marks
    it active, so the ticker ticks only groups with something to do (plus every
    group every few tens of milliseconds for timers). pysyncobj polls at the end
    of every tick; that is a no-op here: the event loop reports ready sockets."""

    def __init__(self, shared: _EpollPoller) -> None:
        self._shared = shared
        self.active = True

    def subscribe(self, descr: int, callback: Callable[[int, int], None], event_mask: int) -> None:
        def marked(fd: int, event: int) -> None:
            self.active = True
            callback(fd, event)

        self._shared.subscribe(descr, marked, event_mask)

    def unsubscribe(self, descr: int) -> None:
        self._shared.unsubscribe(descr)

    def poll(self, timeout: float) -> None:
        pass


class _Transport(TCPTransport):  # type: ignore[misc]
    """Holds back every message until the owning ticker has fsynced the journals
    (see module docstring); lets `_Hooks` stamp, read and swallow messages;
    refuses pysyncobj utility commands."""

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any) -> None:  # noqa: N803
        # (node, message, journal sequence when sent): a message leaves only once
        # the journal is durable up to that sequence, in order.
        self.outbox: collections.deque[tuple[Any, Any, int]] = collections.deque()
        self.defer = bool(getattr(_building, "defer_sends", False))
        self.hooks: _Hooks = _building.hooks
        super().__init__(syncObj, selfNode, otherNodes)

    def _onMessageReceived(self, node: Any, message: Any) -> None:  # noqa: N802
        if isinstance(message, dict) and self.hooks.snapshots.intercept(node, message, self._deliver):
            return
        self._deliver(node, message)

    def _deliver(self, node: Any, message: Any) -> None:
        if isinstance(message, dict) and self.hooks.on_receive(node, message):
            return
        if isinstance(message, dict) and message.get("type") == "next_node_idx":
            # pysyncobj moves a follower's nextIndex back to the acknowledged point
            # on every ack, so the leader re-sends entries already in flight and the
            # follower truncates and re-appends them (see _Hooks.trim_append).
            # Keep nextIndex where it was unless the follower asked for a reset.
            next_index = self._syncObj._SyncObj__raftNextIndex
            before = next_index.get(node)
            super()._onMessageReceived(node, message)
            after = next_index.get(node)
            if (
                before is not None and after is not None and after < before
                and message.get("success") and not message.get("reset")
            ):
                next_index[node] = before
            return
        super()._onMessageReceived(node, message)

    def send(self, node: Any, message: Any) -> bool:
        if isinstance(message, dict):
            self.hooks.on_send(node, message)
        if self.defer:
            # A leader's append-entries need not wait for its own fsync (Raft
            # thesis 10.2.1): the leader counts itself towards a commit only up to
            # its durable index (`_DurableMatch`). They still leave in order,
            # behind anything held before them.
            durable_needed = 0 if message.get("type") == "append_entries" else self.hooks.journal.appended_seq
            self.outbox.append((node, message, durable_needed))
            return True
        return bool(super().send(node, message))

    def flush_outbox(self) -> None:
        outbox = self.outbox
        durable = self.hooks.journal.synced_seq
        while outbox and outbox[0][2] <= durable:
            node, message, _ = outbox.popleft()
            super().send(node, message)

    def _onUtilityMessage(self, conn: Any, message: Any) -> bool:  # noqa: N802
        log.warning("refused a pysyncobj admin command on a Raft port: %r", message[:1])
        conn.disconnect()
        return True



class _Hooks:
    """Heartbeat echo, leader lease, vote stickiness and pre-vote, added to
    pysyncobj at its message boundary (see leases.py for the logic). Runs in tick
    passes only (the event loop thread)."""

    def __init__(self, raft: RaftConfig, cluster_size: int, journal: DurableJournal) -> None:
        self.journal = journal
        self.min_timeout_s = raft.election_timeout_ms_min / 1000.0
        self.max_timeout_s = raft.election_timeout_ms_max / 1000.0
        self.lease = LeaderLease(self.min_timeout_s, raft.clock_drift_bound, cluster_size)
        self.follower = FollowerView()
        self.prevote = PreVote(cluster_size)
        self.transfer_term: int | None = None
        self.obj: Any = None
        self.transport: Any = None
        self.on_quorum_ack: Callable[[], None] | None = None
        self._last_bump = float("-inf")
        self.last_append_sent = float("-inf")
        self.votes_ignored = 0
        self.stale_acks = 0  # acknowledgements of another term's entries, dropped
        self.prevotes_started = 0
        self.prevote_enabled = True
        self.adopt_terms = True
        self.snapshots: _Snapshots | None = None

    def sticky(self, now: float) -> bool:
        """Heard from a live leader within the minimum election timeout?"""
        obj = self.obj
        if obj._isLeader():
            return self.lease.heard_from_quorum_within(now, self.min_timeout_s)
        return obj._getLeader() is not None and self.follower.heard_within(now, self.min_timeout_s)

    def on_send(self, node: Any, message: dict[str, Any]) -> None:
        kind = message.get("type")
        obj = self.obj
        if obj is None:
            return
        if kind == "append_entries":
            term = obj.raftCurrentTerm
            self.lease.sync(term)
            self.last_append_sent = time.monotonic()
            message["rm_ts"] = (term, self.last_append_sent)
            noop = obj._SyncObj__noopIDx
            message["rm_cc"] = noop is not None and obj.raftCommitIndex >= noop
        elif kind == "next_node_idx":
            stamp = self.follower.stamps.get(node.address)
            if stamp is not None:
                message["rm_echo"] = stamp
        elif kind == "request_vote":
            if self.transfer_term is not None and message["term"] == self.transfer_term + 1:
                message["rm_transfer"] = True

    def on_receive(self, node: Any, message: dict[str, Any]) -> bool:
        """Returns True when the message is consumed here."""
        obj = self.obj
        if obj is None:
            return False
        kind = message.get("type")
        now = time.monotonic()
        term = obj.raftCurrentTerm
        if kind == "append_entries":
            if message["term"] >= term:
                self.heard_from_leader(node, message, now)
                return self.trim_append(node, message)
            self._maybe_bump(node, now)
            return False
        if kind == "next_node_idx":
            echo = message.get("rm_echo")
            if obj._isLeader() and (echo is None or echo[0] != term):
                # pysyncobj's acknowledgements carry no term. One that answers an
                # earlier leader's entries (held for an fsync, say, while this
                # node lost power, came back and won a later term) would credit
                # the follower with entries this leader never sent it. Every
                # answer to this leader echoes this term's stamp.
                self.stale_acks += 1
                return True
            if echo is not None and obj._isLeader():
                self.lease.sync(term)
                if self.lease.on_echo(node.address, echo[0], echo[1], now) and self.on_quorum_ack:
                    self.on_quorum_ack()
            return False
        if kind == "request_vote":
            if not message.get("rm_transfer") and self.sticky(now):
                self.votes_ignored += 1
                return True
            return False
        if kind == "rm_prevote":
            granted = (
                message["term"] > term
                and not self.sticky(now)
                and log_up_to_date(
                    message["last_log_term"], message["last_log_index"],
                    obj._SyncObj__getCurrentLogTerm(), obj._SyncObj__getCurrentLogIndex(),
                )
            )
            self.transport.send(node, {
                "type": "rm_prevote_resp", "term": message["term"], "granted": granted, "rm_term": term,
            })
            return True
        if kind == "rm_prevote_resp":
            if self.prevote.on_response(node.address, message["term"], message["granted"]):
                obj._SyncObj__raftElectionDeadline = 0  # let pysyncobj start the real election
            elif not message["granted"] and self.adopt_terms:
                self._adopt_term(int(message.get("rm_term", 0)))
            return True
        if kind == "timeout_now":
            if message["term"] >= term and node == obj._getLeader():
                self.transfer_term = term
            return False
        return False

    def heard_from_leader(self, node: Any, message: dict[str, Any], now: float) -> None:
        self.follower.on_append(
            node.address, message["term"], message.get("rm_ts"), message.get("commit_index", 0), now,
            commit_complete=bool(message.get("rm_cc")),
        )

    def trim_append(self, node: Any, message: dict[str, Any]) -> bool:
        """Raft appends only what is new and truncates only at a conflict; pysyncobj
        truncates everything after prevLogIdx and re-appends the message's entries,
        so a re-sent batch shorter than our log would cut off entries we already
        acknowledged (and the leader may have counted towards a commit). Skip the
        entries we already hold with the same term; if the message holds nothing
        new, answer it here instead of letting pysyncobj truncate."""
        entries = message.get("entries")
        if not entries or "prevLogIdx" not in message or "transmission" in message:
            return False
        journal = self.journal
        if not len(journal):
            return False
        first, last = journal[0][1], journal[-1][1]
        matched = 0
        for _command, idx, entry_term in entries:
            if not first <= idx <= last or journal[idx - first][2] != entry_term:
                break
            matched += 1
        if matched == 0:
            return False
        if matched < len(entries):
            kept = entries[matched - 1]
            message["prevLogIdx"], message["prevLogTerm"] = kept[1], kept[2]
            message["entries"] = entries[matched:]
            return False
        if last == entries[-1][1]:
            message["prevLogIdx"], message["prevLogTerm"] = entries[-1][1], entries[-1][2]
            message["entries"] = []
            return False
        # Everything in it we have, and more after it: acknowledge what it held.
        self.transport.send(node, {
            "type": "next_node_idx", "next_node_idx": entries[-1][1] + 1, "reset": False, "success": True,
        })
        return True

    def _adopt_term(self, peer_term: int) -> None:
        """A peer refused our pre-vote and is at a higher term: take its term (as
        etcd's pre-candidate does), or a node with the longest log, behind in term,
        asks forever at a term nobody grants while the nodes at the higher term
        cannot win without its vote. Not a vote: only term and role change."""
        obj = self.obj
        if peer_term <= obj.raftCurrentTerm or obj._isLeader():
            return
        log.info("raft: pre-vote refused at term %d; adopting the peer's term", peer_term)
        obj._SyncObj__setCurrentTerm(peer_term, None)
        obj._SyncObj__setState(_FOLLOWER_STATE)
        obj._SyncObj__raftLeader = None

    def _maybe_bump(self, node: Any, now: float) -> None:
        """A node stuck at a higher term (it won a pre-vote, then lost the race)
        ignores the lower-term leader's appends forever. If it follows nobody at
        its own term, tell that leader its term, so the group converges on it."""
        if self.obj._isLeader() or self.follower.heard_within(now, self.max_timeout_s):
            return
        if now - self._last_bump < self.max_timeout_s:
            return
        self._last_bump = now
        log.info("raft: stuck at term %d behind a live leader; announcing the term", self.obj.raftCurrentTerm)
        self.transport.send(node, {
            "type": "request_vote", "term": self.obj.raftCurrentTerm,
            "last_log_index": -1, "last_log_term": -1, "rm_transfer": True,
        })

    def prevote_gate(self, now: float) -> None:
        """Before pysyncobj would start an election: run a pre-vote round first."""
        obj = self.obj
        if not self.prevote_enabled or obj._isLeader() or not obj._SyncObj__otherNodes:
            return
        if obj._SyncObj__raftElectionDeadline > now or obj._SyncObj__transferInProgress:
            return
        next_term = obj.raftCurrentTerm + 1
        if self.prevote.take_win(next_term):
            return
        self.prevote.start(next_term)
        self.prevotes_started += 1
        message = {
            "type": "rm_prevote",
            "term": next_term,
            "last_log_index": obj._SyncObj__getCurrentLogIndex(),
            "last_log_term": obj._SyncObj__getCurrentLogTerm(),
        }
        for node in obj._SyncObj__otherNodes:
            self.transport.send(node, dict(message))
        obj._SyncObj__raftElectionDeadline = now + obj._SyncObj__generateRaftTimeout()


# -- the state machine as the adapter sees it ----------------------------------
class Replica(Protocol):
    applied_index: int

    def apply(self, index: int, payload: bytes) -> Any: ...

    def create_checkpoint(self, directory: Path) -> None: ...

    def pack_checkpoint(self, directory: Path, path: Path, meta: bytes) -> None: ...

    def stage_snapshot(self, path: Path) -> Path: ...

    def install_staged(self, staged: Path) -> None: ...

    def read_snapshot_meta(self, path: Path) -> bytes: ...


def _discard(path: Path | None) -> None:
    if path is not None:
        remove_in_background(path)


def _entry_to_json(entry: tuple[bytes, int, int]) -> list[Any]:
    return [base64.b64encode(bytes(entry[0])).decode(), entry[1], entry[2]]


def _entry_from_json(data: list[Any]) -> tuple[bytes, int, int]:
    return (base64.b64decode(data[0]), int(data[1]), int(data[2]))


@dataclass
class _Receipt:
    """A snapshot whose last chunk arrived and is being staged off the loop."""

    node: Any
    message: dict[str, Any]
    deliver: Callable[[Any, Any], None]
    aborted: bool = False
    staged: Path | None = None
    meta: dict[str, Any] | None = None
    failed: bool = False


class _Snapshots:
    """pysyncobj's serializer/deserializer/serializeChecker hooks, and the
    off-loop half of installing a snapshot received from the leader."""

    def __init__(self, replica: Replica, directory: Path, shard: int, ticker: Ticker) -> None:
        self.replica = replica
        self.directory = directory
        self.shard = shard
        self.ticker = ticker
        self.dump_path = directory / "raft.dump"
        self._state = SERIALIZER_STATE.NOT_SERIALIZING
        self._thread: threading.Thread | None = None
        self.obj: Any = None
        self.hooks: _Hooks | None = None
        self.receipt: _Receipt | None = None
        self._ready: _Receipt | None = None  # staged, handed to pysyncobj, not yet installed
        self.closed = False
        self.installs = {"staged": 0, "inline": 0}
        self.stage_delay_s = 0.0  # fault injection: a slow disk under every install
        self.stage_inline = False  # negative control: the whole install on the loop

    def serialize(self, tmp_file: str, data: Any) -> None:
        last, prev, cluster = data
        if self.receipt is not None or self._ready is not None:
            # A received snapshot is about to replace the dump: a compaction of the
            # old state must not rename its older dump over it afterwards.
            self._state = SERIALIZER_STATE.FAILED
            return
        if self.replica.applied_index != last[1]:
            # Cannot happen while apply and compaction share the loop thread; if it
            # ever does, refuse rather than label a checkpoint with the wrong index.
            log.error(
                "shard %d: compaction at %d but applied index is %d; skipped",
                self.shard, last[1], self.replica.applied_index,
            )
            self._state = SERIALIZER_STATE.FAILED
            return
        meta = orjson.dumps(
            {
                "last": _entry_to_json(last),
                "prev": _entry_to_json(prev),
                "cluster": sorted(getattr(n, "address", str(n)) for n in cluster),
                "applied": last[1],
                "shard": self.shard,
            }
        )
        checkpoint = self.directory / "checkpoint.tmp"
        self.replica.create_checkpoint(checkpoint)
        self._state = SERIALIZER_STATE.SERIALIZING
        # pysyncobj renames `tmp_file` over the dump as soon as we return; we write
        # elsewhere and rename ourselves once the file is whole and fsynced, so its
        # rename finds nothing and the checker below reports the real outcome.
        self._thread = threading.Thread(
            target=self._pack, args=(checkpoint, meta), name=f"snapshot-{self.shard}", daemon=True
        )
        self._thread.start()

    def _pack(self, checkpoint: Path, meta: bytes) -> None:
        packing = self.directory / "raft.dump.packing"
        try:
            self.replica.pack_checkpoint(checkpoint, packing, meta)
            os.replace(packing, self.dump_path)
            fsync_dir(self.directory)
            self._state = SERIALIZER_STATE.SUCCESS
        except Exception:
            log.exception("shard %d: snapshot packing failed", self.shard)
            self._state = SERIALIZER_STATE.FAILED

    def check(self) -> int:
        state = self._state
        if state in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
            self._state = SERIALIZER_STATE.NOT_SERIALIZING
        return state

    def deserialize(self, file_name: str) -> tuple[Any, Any, Any]:
        # A dump received from the leader was renamed into place without fsync
        # (a no-op when it was staged: the stager fsynced it).
        fsync_file(file_name)
        fsync_dir(self.directory)
        meta = orjson.loads(self.replica.read_snapshot_meta(Path(file_name)))
        ready, self._ready = self._ready, None
        if self.replica.applied_index < meta["applied"]:
            log.info(
                "shard %d: installing snapshot at index %d (applied %d)",
                self.shard, meta["applied"], self.replica.applied_index,
                extra={"shard": self.shard, "index": meta["applied"]},
            )
            if ready is not None and ready.staged is not None and ready.meta == meta:
                self.replica.install_staged(ready.staged)
                ready.staged = None
                self.installs["staged"] += 1
            else:
                # At start-up, or when staging failed: the whole install here.
                self.replica.install_staged(self._stage_files(Path(file_name)))
                self.installs["inline"] += 1
        if ready is not None:
            _discard(ready.staged)
        return _entry_from_json(meta["last"]), _entry_from_json(meta["prev"]), meta["cluster"]

    # -- receiving a snapshot: stage off the loop, install in one short step --------
    # pysyncobj writes the chunks of a snapshot into `raft.dump.1.tmp` as they
    # come; on the last one it renames the file over the dump and calls
    # `deserialize`, inside its message handler on the loop thread. Unpacking and
    # fsyncing a large snapshot there would stall every shard of the node (and
    # its HTTP API) for seconds, past election timeouts. So the last chunk is held
    # back: a thread fsyncs the received file and unpacks it into a staging
    # directory, then the chunk is handed to pysyncobj and `deserialize` only has
    # to rename the staged database into place. Meanwhile the leader's messages
    # are dropped (it re-sends what we do not acknowledge) but still count as a
    # sign of life, so this replica does not campaign; anything else (a vote, a
    # higher term, another sender) abandons the staging and lets pysyncobj go on.
    def intercept(self, node: Any, message: dict[str, Any], deliver: Callable[[Any, Any], None]) -> bool:
        """Called with every message before pysyncobj sees it: True if consumed."""
        receipt = self.receipt
        if receipt is not None:
            return self._while_staging(receipt, node, message)
        serialized = message.get("serialized") if message.get("type") == "append_entries" else None
        if not serialized or not serialized[2] or self.stage_inline:
            return False
        obj = self.obj
        incoming = obj._SyncObj__serializer._Serializer__incomingTransmissionFile
        if incoming is None or message.get("term") != obj.raftCurrentTerm or obj._isLeader():
            return False
        incoming.flush()
        self.receipt = receipt = _Receipt(node, message, deliver)
        received = Path(f"{self.dump_path}.1.tmp")  # pysyncobj's name for it
        threading.Thread(
            target=self._stage, args=(receipt, received), name=f"snapshot-stage-{self.shard}", daemon=True
        ).start()
        return True

    def _while_staging(self, receipt: _Receipt, node: Any, message: dict[str, Any]) -> bool:
        obj, hooks = self.obj, self.hooks
        kind, term = message.get("type"), message.get("term")
        now = time.monotonic()
        if kind == "append_entries" and node == receipt.node and term == obj.raftCurrentTerm:
            # Our leader, going on: a sign of life (no campaign, votes stay sticky),
            # answered the way pysyncobj answers a chunk, which keeps the leader's
            # view of us fresh (quorum, lease echo) and changes nothing else.
            hooks.heard_from_leader(node, message, now)
            obj._SyncObj__raftElectionDeadline = now + obj._SyncObj__generateRaftTimeout()
            hooks.transport.send(node, {
                "type": "next_node_idx", "next_node_idx": obj._SyncObj__getCurrentLogIndex() + 1,
                "reset": False, "success": False,
            })
            return True
        if (
            kind in ("rm_prevote", "rm_prevote_resp")  # no term change: the hooks answer them
            or (term is not None and term < obj.raftCurrentTerm)  # pysyncobj ignores these
            or (kind == "request_vote" and not message.get("rm_transfer") and hooks.sticky(now))
        ):
            return False
        log.info("shard %d: snapshot staging abandoned (%s from %s)", self.shard, kind, node)
        receipt.aborted = True
        self.receipt = None
        return False

    def _stage(self, receipt: _Receipt, received: Path) -> None:
        """On a thread of its own: touches files only, never the live database."""
        try:
            if self.closed:
                raise RuntimeError("replica closed")
            fsync_file(received)
            meta = orjson.loads(self.replica.read_snapshot_meta(received))
            receipt.meta = meta
            if self.replica.applied_index < meta["applied"]:
                receipt.staged = self._stage_files(received)
        except Exception:
            if not receipt.aborted:  # an abandoned receipt's file may be rewritten under us
                log.exception("shard %d: staging a received snapshot failed", self.shard)
            receipt.failed = True
        self.ticker.call_soon(lambda: self._staged(receipt))

    def _retry_staged(self, receipt: _Receipt) -> None:
        loop = self.ticker.loop
        assert loop is not None
        loop.call_later(STAGED_RETRY_S, self.ticker.call_soon, lambda: self._staged(receipt))

    def _stage_files(self, path: Path) -> Path:
        if self.stage_delay_s:
            time.sleep(self.stage_delay_s)
        return self.replica.stage_snapshot(path)

    def _staged(self, receipt: _Receipt) -> None:
        """Back on the loop thread, in a tick pass."""
        if self._state != SERIALIZER_STATE.NOT_SERIALIZING and not receipt.aborted and not self.closed:
            # A compaction started before the snapshot arrived is still packing (or
            # not yet reported to pysyncobj): install after it, so its dump can
            # never land over the new one.
            self._retry_staged(receipt)
            return
        if self.receipt is receipt:
            self.receipt = None
        obj = self.obj
        if (
            receipt.aborted or self.closed or obj._isLeader()
            or obj.raftCurrentTerm != receipt.message["term"]
        ):
            _discard(receipt.staged)
            return
        self._ready = None if receipt.failed else receipt
        try:
            receipt.deliver(receipt.node, receipt.message)
        finally:
            if self._ready is receipt:  # pysyncobj did not load it after all
                self._ready = None
                _discard(receipt.staged)

    def recover_interrupted_compaction(self, journal: DurableJournal) -> None:
        """A crash after the dump was renamed into place but before the journal was
        compacted leaves a journal that still starts before the dump. pysyncobj
        would then clear the whole journal, committed tail included; finishing the
        compaction first keeps that tail."""
        if not self.dump_path.exists():
            return
        try:
            meta = orjson.loads(self.replica.read_snapshot_meta(self.dump_path))
        except Exception:
            # pysyncobj will fail to load it too and keep the journal as it is.
            log.exception("shard %d: unreadable snapshot %s", self.shard, self.dump_path)
            return
        prev = _entry_from_json(meta["prev"])
        if len(journal) and journal[0][1] < prev[1] and journal.drop_before(prev[1], prev[2]):
            log.warning("shard %d: finished a compaction interrupted by a crash", self.shard)


class _DurableMatch(dict):  # type: ignore[type-arg]
    """pysyncobj's per-follower match index. While `cap` is set (during a tick,
    with `fsync: always`), reads return at most the leader's durable log index.
    pysyncobj counts the leader itself towards every commit quorum; capping each
    follower at the leader's durable index means an entry commits only once the
    leader and enough followers all have it on disk, so the leader may ship
    entries before its own fsync. Plain `dict.get` (leadership transfer) is not
    capped; neither are writes."""

    cap: int | None = None

    def __getitem__(self, node: Any) -> int:
        value = int(dict.__getitem__(self, node))
        cap = self.cap
        return value if cap is None or value <= cap else cap


class _ShardSyncObj(SyncObj):  # type: ignore[misc]
    def __init__(self, apply_fn: Callable[[int, bytes], Any], *args: Any, **kwargs: Any) -> None:
        self._raftmem_apply = apply_fn
        super().__init__(*args, **kwargs)

    @replicated
    def apply_entry(self, payload: bytes) -> Any:
        # pysyncobj applies entry N while raftLastApplied is N - 1.
        return self._raftmem_apply(self.raftLastApplied + 1, payload)


@dataclass
class GroupSpec:
    shard: int
    self_address: str
    peer_addresses: list[str]
    directory: Path
    raft: RaftConfig
    address_to_node: dict[str, str] = field(default_factory=dict)
    # Negative control only: step down as late as pysyncobj's default (30 s), the
    # way a naive store would, so that unsafe local reads are visibly stale.
    naive_step_down: bool = False
    # The placement's preferred leader times out first, so elections usually
    # land where placement spreads leaders; others wait longer. Every node's
    # timeout stays >= election_timeout_ms_min, which leases rely on.
    preferred_leader: bool = False
    # Negative control only: elections without a pre-vote round (an isolated node
    # bumps its term and deposes the leader when it comes back).
    disable_prevote: bool = False
    # Fault injection: every snapshot install takes SLOW_DISK_STAGE_S longer.
    slow_snapshot_disk: bool = False
    # Negative control only: install received snapshots wholly on the loop thread.
    inline_snapshot_install: bool = False


class RaftGroup:
    """One shard replica's Raft membership."""

    def __init__(self, spec: GroupSpec, replica: Replica, ticker: Ticker) -> None:
        self.spec = spec
        self.shard = spec.shard
        self.replica = replica
        self.ticker = ticker
        spec.directory.mkdir(parents=True, exist_ok=True)
        raft = spec.raft
        lo, hi = raft.election_timeout_ms_min / 1000.0, raft.election_timeout_ms_max / 1000.0
        if spec.preferred_leader:
            timeouts = (lo, lo + (hi - lo) / 4)
        else:
            timeouts = (lo + (hi - lo) / 2, hi)
        self.journal = DurableJournal(spec.directory / "raft.journal", fsync_enabled=raft.fsync != "never")
        self.snapshots = _Snapshots(replica, spec.directory, spec.shard, ticker)
        self.snapshots.stage_delay_s = SLOW_DISK_STAGE_S if spec.slow_snapshot_disk else 0.0
        self.snapshots.stage_inline = spec.inline_snapshot_install
        self.snapshots.recover_interrupted_compaction(self.journal)
        self.leader_changes = 0
        self.role_since = time.monotonic()
        self.led_until = float("-inf")
        self._applied_seen = 0
        self._shipped_upto = 0
        self.inline_syncs = 0  # leader fsyncs on the loop before an apply (see _apply)
        self.heartbeat_wanted = False
        self.read_rounds = 0  # append-entries rounds requested by ReadIndex (reads share them)
        self._on_applied: Callable[[], None] | None = None
        conf = SyncObjConf(
            autoTick=False,
            bindAddress=spec.self_address,
            raftMinTimeout=timeouts[0],
            raftMaxTimeout=timeouts[1],
            appendEntriesPeriod=raft.append_period_ms / 1000.0,
            leaderFallbackTimeout=30.0 if spec.naive_step_down else raft.leader_fallback_timeout_s,
            connectionTimeout=max(3.5, raft.election_timeout_ms_max / 1000.0 * 2),
            connectionRetryTime=0.3,
            appendEntriesUseBatch=True,
            # Larger than any single entry (body limit 1 MiB + envelope), so no entry
            # takes pysyncobj's chunked "transmission" path.
            appendEntriesBatchSizeBytes=APPEND_BATCH_BYTES,
            journalFile=str(spec.directory / "raft.journal"),
            fullDumpFile=str(self.snapshots.dump_path),
            serializer=self.snapshots.serialize,
            deserializer=self.snapshots.deserialize,
            serializeChecker=self.snapshots.check,
            logCompactionMinEntries=raft.log_compaction_entries,
            logCompactionMinTime=raft.log_compaction_min_s,
            maxBindRetries=5,
            bindRetryTime=0.2,
            password=raft.password,
            onStateChanged=self._on_state_changed,
            commandsWaitLeader=False,
            dynamicMembershipChange=True,
        )
        self.hooks = _Hooks(raft, cluster_size=len(spec.peer_addresses) + 1, journal=self.journal)
        self.hooks.prevote_enabled = not spec.disable_prevote
        self.hooks.snapshots = self.snapshots
        self.snapshots.hooks = self.hooks
        _building.journal = self.journal
        self.poller_view = _GroupPoller(ticker.poller)
        self.last_tick = 0.0
        _building.poller = self.poller_view
        _building.defer_sends = raft.fsync == "always"
        _building.hooks = self.hooks
        try:
            self._obj = _ShardSyncObj(
                self._apply, spec.self_address, spec.peer_addresses, conf, transportClass=_Transport
            )
        finally:
            _building.journal = None
            _building.poller = None
            _building.defer_sends = False
            _building.hooks = None
        self._transport: _Transport = self._obj._SyncObj__transport
        self._match = _DurableMatch(self._obj._SyncObj__raftMatchIndex)
        self._obj._SyncObj__raftMatchIndex = self._match
        # Off only for the negative control in test_raft_groups.
        self.commit_needs_own_fsync = raft.fsync == "always"
        self.durable_seen = 0
        self.hooks.obj = self._obj
        self.hooks.transport = self._transport
        self._followers: frozenset[str] = frozenset()
        self.sync_members()
        self.snapshots.obj = self._obj
        ticker.add(self)

    def _on_state_changed(self, old: int, new: int) -> None:
        self.leader_changes += 1
        self.role_since = time.monotonic()
        if old == _LEADER_STATE:
            self.led_until = self.role_since
        term = self._obj.raftCurrentTerm
        log.info(
            "shard %d: %s -> %s at term %d", self.shard, _ROLE_NAMES.get(old, old), _ROLE_NAMES.get(new, new), term,
            extra={"shard": self.shard, "term": term, "index": self._obj.raftCommitIndex},
        )

    def _apply(self, index: int, payload: bytes) -> Any:
        assert index <= self._obj.raftCommitIndex, (index, self._obj.raftCommitIndex)
        if self.journal.durable_index < index and self._obj._isLeader():
            # Invariant: a leader applies (and so acknowledges) only what is
            # on its own disk. With
            # followers, `_DurableMatch` holds the commit back until the fsync
            # thread got there; a lone replica commits alone, and a new leader
            # may apply entries committed before it led: fsync here, on the loop.
            self.inline_syncs += 1
            self.journal.sync()
            assert self.journal.durable_index >= index, (self.journal.durable_index, index)
        return self.replica.apply(index, payload)

    # -- the narrow interface ----------------------------------------------------
    def propose(self, payload: bytes, on_done: Callable[[str, Any], None]) -> None:
        """Append `payload` to the log. `on_done(outcome, result)` runs on the tick
        thread with OK and the apply result, REJECTED, or UNKNOWN."""

        def callback(result: Any, error: int) -> None:
            if error == FAIL_REASON.SUCCESS:
                on_done(OK, result)
            else:
                on_done(_FAIL_OUTCOME.get(error, UNKNOWN), error)

        self._obj.apply_entry(payload, callback=callback)
        self.poller_view.active = True
        self.ticker.wake()

    def is_leader(self) -> bool:
        return bool(self._obj._isLeader())

    def leader_node(self) -> str | None:
        leader = self._obj._getLeader()
        if leader is None:
            return None
        return self.spec.address_to_node.get(getattr(leader, "address", str(leader)))

    @property
    def term(self) -> int:
        return int(self._obj.raftCurrentTerm)

    @property
    def commit_index(self) -> int:
        return int(self._obj.raftCommitIndex)

    @property
    def last_applied(self) -> int:
        return int(self._obj.raftLastApplied)

    def request_heartbeat(self, arrival: float) -> None:
        """Ask for an append-entries round soon (a ReadIndex waits for a quorum to
        acknowledge a send made after the read arrived at `arrival`). Reads that
        arrive before the round is sent share it."""
        if self.hooks.last_append_sent >= arrival:
            return  # a round was sent after this read arrived: its acks will do
        if not self.heartbeat_wanted:
            self.heartbeat_wanted = True
            self.read_rounds += 1
            self.poller_view.active = True
            self.ticker.wake()

    def set_on_applied(self, callback: Callable[[], None]) -> None:
        """`callback` runs on the loop thread after a tick that applied entries."""
        self._on_applied = callback

    def set_on_quorum_ack(self, callback: Callable[[], None]) -> None:
        """`callback` runs on the loop thread whenever the quorum-acknowledged
        send time moves forward (ReadIndex waiters re-check then)."""
        self.hooks.on_quorum_ack = callback

    def noop_committed(self) -> bool:
        """Has this leader committed an entry of its own term? Until then its
        commit index may lag entries committed by earlier leaders."""
        noop = self._obj._SyncObj__noopIDx
        return self._obj._isLeader() and noop is not None and self._obj.raftCommitIndex >= noop

    def quorum_ack_time(self, term: int) -> float:
        """Latest monotonic send time a quorum acknowledged in `term` (0: none)."""
        lease = self.hooks.lease
        return lease.quorum_ack if lease.term == term else 0.0

    def lease_remaining_s(self, now: float) -> float:
        if not self._obj._isLeader() or not self.noop_committed():
            return 0.0
        return self.hooks.lease.remaining_s(now, self._obj.raftCurrentTerm)

    def follower_freshness(self, now: float) -> tuple[float, int]:
        """(seconds since the leader sent what we last accepted, its commit index then)."""
        view = self.hooks.follower
        if self._obj._isLeader() or view.term != self._obj.raftCurrentTerm:
            return float("inf"), 0
        return view.staleness_s(now), view.leader_commit

    def _first_log_index(self) -> int | None:
        try:
            return int(self.journal[0][1])
        except IndexError:
            return None

    def status(self) -> dict[str, Any]:
        """A point-in-time view, read between tick passes."""
        obj = self._obj
        match = dict(obj._SyncObj__raftMatchIndex) if obj._isLeader() else {}
        status = {
            "shard": self.shard,
            "role": _ROLE_NAMES.get(obj._SyncObj__raftState, "follower"),
            "leader": self.leader_node(),
            "term": obj.raftCurrentTerm,
            "commit_index": obj.raftCommitIndex,
            "applied_index": obj.raftLastApplied,
            "sm_applied_index": self.replica.applied_index,
            "log_entries": len(self.journal),
            "log_bytes": self.journal.bytes,
            "log_first_index": self._first_log_index(),
            "journal_syncs": self.journal.syncs,
            "leader_changes": self.leader_changes,
            "has_quorum": bool(obj.hasQuorum),
            "members": sorted(
                self.spec.address_to_node.get(a, a)
                for a in [n.address for n in obj.otherNodes] + [self.spec.self_address]
            ),
            "votes_ignored": self.hooks.votes_ignored,
            "prevotes_started": self.hooks.prevotes_started,
            "lease_clock_resets": self.hooks.lease.clock_resets,
            "snapshot_installs": dict(self.snapshots.installs),
            "snapshot_staging": self.snapshots.receipt is not None,
        }
        now = time.monotonic()
        if obj._isLeader():
            status["lease_remaining_ms"] = max(0, int(self.lease_remaining_s(now) * 1000))
        else:
            staleness, _ = self.follower_freshness(now)
            if staleness != float("inf"):
                status["last_contact_ms"] = int(staleness * 1000)
            since = self.seconds_since_leader(now)
            if since != float("inf"):
                # Since the last append accepted from any leader, whatever our term.
                status["since_leader_ms"] = int(since * 1000)
        if match:
            status["match_index"] = {
                self.spec.address_to_node.get(n.address, n.address): i for n, i in match.items()
            }
        return status

    def members(self) -> list[str]:
        """This replica's view of the group's voters, as node ids (addresses for
        nodes the address map does not know)."""
        # Copying a set is one C-level step under the GIL: no lock needed.
        addresses = [n.address for n in self._obj.otherNodes] + [self.spec.self_address]
        return sorted(self.spec.address_to_node.get(a, a) for a in addresses)

    def update_addresses(self, address_to_node: dict[str, str]) -> None:
        self.spec.address_to_node = dict(address_to_node)

    def change_membership(self, add: bool, address: str, on_done: Callable[[bool], None]) -> None:
        """Add or remove one voter (pysyncobj allows one change in flight)."""

        def run() -> None:
            change = self._obj.addNodeToCluster if add else self._obj.removeNodeFromCluster
            change(address, callback=lambda _r, err: on_done(err == FAIL_REASON.SUCCESS))

        self.ticker.call_soon(run)

    def seconds_since_leader(self, now: float) -> float:
        if self._obj._isLeader():
            return 0.0
        return now - self.hooks.follower.last_contact

    def seconds_out_of_touch(self, now: float) -> float:
        """Since this replica last led the group or heard from its leader: a
        replica that just handed leadership over has been in touch until then,
        and stays a voter until the new leader removes it."""
        if self._obj._isLeader():
            return 0.0
        return now - max(self.hooks.follower.last_contact, self.led_until)

    def force_compaction(self) -> None:
        with self.ticker.lock:
            self._obj.forceLogCompaction()

    def transfer_leadership(self, node_address: str | None, on_done: Callable[[bool], None]) -> None:
        def run() -> None:
            # The target will be elected without waiting out our lease: stop
            # serving lease reads in this term from now on.
            self.hooks.lease.revoked_term = self._obj.raftCurrentTerm
            self._obj.transferLeadership(
                node_address, callback=lambda _r, err: on_done(err == FAIL_REASON.SUCCESS)
            )

        self.ticker.call_soon(run)

    def sync_members(self) -> None:
        """Lease and pre-vote quorums follow the voters pysyncobj has now."""
        followers = frozenset(n.address for n in self._obj.otherNodes)
        if followers != self._followers:
            self._followers = followers
            self.hooks.lease.set_members(followers)
            self.hooks.prevote.cluster_size = len(followers) + 1

    def tick(self) -> None:
        """One pysyncobj tick. A leader ships entries it appended (or a wanted
        heartbeat) at once rather than at the next append-entries period."""
        obj = self._obj
        self.durable_seen = self.journal.durable_index
        if self.commit_needs_own_fsync:
            self._match.cap = self.durable_seen
        try:
            obj.doTick(0.0)
        finally:
            self._match.cap = None
        if obj._isLeader():
            last = self.journal.last_index()
            heartbeat_due = (
                self.heartbeat_wanted
                and time.monotonic() - self.hooks.last_append_sent >= HEARTBEAT_GAP_MIN_S
            )
            if last > self._shipped_upto or heartbeat_due:
                self._shipped_upto = max(self._shipped_upto, last)
                self.heartbeat_wanted = False
                obj._SyncObj__sendAppendEntries()
        applied = obj.raftLastApplied
        if applied != self._applied_seen:
            self._applied_seen = applied
            if self._on_applied is not None:
                self._on_applied()

    def destroy(self) -> None:
        """Stop this replica's Raft membership on this node (its data stays)."""
        self.snapshots.closed = True
        self.ticker.remove(self)
        with self.ticker.lock:
            self._obj._doDestroy()


class Ticker:
    """Drives every Raft group of the process on the asyncio event loop thread
    (pysyncobj with autoTick=False): Raft socket events, proposals and a periodic
    timer schedule a tick pass; fsync runs on a thread of its own, in group-commit
    rounds, and held messages leave once their journal is durable.

    One thread for HTTP and Raft: with two, every socket call handed the GIL to
    the other thread and waited to get it back (measured: ~15 context switches
    per write, a quarter of a shard's commit latency)."""

    # A timer looks for groups due a tick every TICK_PERIOD_S. A leader is ticked
    # at least that often (its heartbeats leave up to that late), a follower at
    # least every FOLLOWER_TICK_S (election deadlines and pre-vote: an election
    # starts up to that much later, never earlier, so leases are unaffected). At
    # 10 ms for every group, timer wake-ups and idle ticks cost an idle 3-node
    # cluster 0.24 cores; at these values 0.14.
    TICK_PERIOD_S = 0.02
    FOLLOWER_TICK_S = 0.05
    # Compact a log early when it holds this many bytes, whatever its entry count.
    LOG_BYTES_COMPACT = 64 * 1024 * 1024

    def __init__(self, fsync: str, fsync_batch_ms: int = 10) -> None:
        self.poller = _EpollPoller()
        self.fsync = fsync
        self.fsync_batch_s = fsync_batch_ms / 1000.0
        self.groups: list[RaftGroup] = []
        # Held by every tick pass; other threads take it to touch pysyncobj state.
        self.lock = threading.RLock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._calls: list[Callable[[], None]] = []
        self._last_sync = time.monotonic()
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self._sync_wanted = threading.Condition()
        self._sync_requested = False
        self._sync_stop = threading.Event()
        self._sync_thread: threading.Thread | None = None
        self.tick_errors = 0
        self.passes = 0
        self.sync_rounds = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the running loop; call on its thread before creating groups."""
        self.loop = loop
        self._loop_thread = threading.get_ident()

    def add(self, group: RaftGroup) -> None:
        with self.lock:
            self.groups.append(group)

    def remove(self, group: RaftGroup) -> None:
        with self.lock:
            self.groups = [g for g in self.groups if g is not group]

    def wake(self) -> None:
        """Ask for a tick pass soon (from any thread)."""
        if threading.get_ident() == self._loop_thread:
            self._schedule()
        elif self.loop is not None and not self._stopped:
            with contextlib.suppress(RuntimeError):  # loop closed at shutdown
                self.loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        if not self._scheduled and not self._stopped:
            self._scheduled = True
            assert self.loop is not None
            self.loop.call_soon(self._pass)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the next tick pass, on the loop thread (pysyncobj state is
        not thread-safe)."""
        with self.lock:
            self._calls.append(fn)
        self.wake()

    def start(self) -> None:
        loop = self.loop
        assert loop is not None and threading.get_ident() == self._loop_thread, "attach() first, on the loop"
        loop.add_reader(self.poller.fileno(), self._on_raft_io)
        self._timer = loop.call_later(self.TICK_PERIOD_S, self._periodic)
        if self.fsync != "never":
            self._sync_thread = threading.Thread(target=self._sync_loop, name="raft-fsync", daemon=True)
            self._sync_thread.start()
        self._schedule()

    def _on_raft_io(self) -> None:
        try:
            with self.lock:
                self.poller.poll(0.0)
        except Exception:
            self.tick_errors += 1
            log.exception("raft socket event failed")
        self._schedule()

    def _periodic(self) -> None:
        if self._stopped:
            return
        assert self.loop is not None
        self._timer = self.loop.call_later(self.TICK_PERIOD_S, self._periodic)
        self._schedule()

    def _sync_loop(self) -> None:
        """The fsync thread: the loop goes on serving and ticking while journals
        reach the disk; held messages leave when theirs is durable."""
        while not self._sync_stop.is_set():
            with self._sync_wanted:
                while not self._sync_requested and not self._sync_stop.is_set():
                    self._sync_wanted.wait(0.5)
                self._sync_requested = False
            self.sync_rounds += 1
            for journal in [g.journal for g in self.groups]:
                try:
                    journal.sync()
                except OSError:
                    # A failed fsync stops the node (raftlog.stop_the_process);
                    # where that is replaced (tests), nothing waiting on it leaves.
                    log.exception("journal fsync failed")
                    self._sync_stop.wait(0.05)
            self.wake()

    def _request_sync(self) -> None:
        with self._sync_wanted:
            self._sync_requested = True
            self._sync_wanted.notify()

    def _pass(self) -> None:
        """Tick every group with socket activity, a proposal, a wanted heartbeat, or
        no tick for its role's period; then start an fsync round and send what is durable."""
        self._scheduled = False
        if self._stopped:
            return
        self.passes += 1
        try:
            with self.lock:
                calls, self._calls = self._calls, []
                for fn in calls:
                    try:
                        fn()
                    except Exception:  # one failing call must not drop the others
                        self.tick_errors += 1
                        log.exception("raft call failed")
                now = time.monotonic()
                for group in self.groups:
                    leading = group.is_leader()
                    if (
                        not group.poller_view.active
                        and not group.heartbeat_wanted
                        and not (leading and group.journal.durable_index != group.durable_seen)
                        and now - group.last_tick < (self.TICK_PERIOD_S if leading else self.FOLLOWER_TICK_S)
                    ):
                        continue
                    group.poller_view.active = False
                    group.last_tick = now
                    try:
                        group.sync_members()
                        group.hooks.lease.check_clock(now)
                        group.hooks.prevote_gate(now)
                        group.tick()
                        if group.journal.bytes > self.LOG_BYTES_COMPACT:
                            group._obj.forceLogCompaction()
                    except Exception:
                        # pysyncobj retries a failing apply on the next tick (e.g.
                        # disk full): count it, log it, and go on with the other
                        # shards, their fsyncs and their messages.
                        self.tick_errors += 1
                        log.exception("shard %d: raft tick failed", group.shard)
                now = time.monotonic()
                dirty = any(g.journal.dirty for g in self.groups)
                if dirty and (
                    self.fsync == "always"
                    or (self.fsync == "batch" and now - self._last_sync >= self.fsync_batch_s)
                ):
                    self._request_sync()
                    self._last_sync = now
                for group in self.groups:
                    group._transport.flush_outbox()
                wanted = any(g.heartbeat_wanted for g in self.groups)
        except Exception:
            self.tick_errors += 1
            log.exception("raft tick pass failed")
            return
        if wanted and self._heartbeat_timer is None:
            # An on-demand heartbeat not yet due (HEARTBEAT_GAP_MIN_S): come back for it.
            assert self.loop is not None
            self._heartbeat_timer = self.loop.call_later(HEARTBEAT_GAP_MIN_S, self._heartbeat_due)

    def _heartbeat_due(self) -> None:
        self._heartbeat_timer = None
        self._schedule()

    def stop(self) -> None:
        """On the loop thread: stop ticking, finish the fsync thread, close every group."""
        self._stopped = True
        for timer in (self._timer, self._heartbeat_timer):
            if timer is not None:
                timer.cancel()
        if self.loop is not None:
            self.loop.remove_reader(self.poller.fileno())
        self._sync_stop.set()
        self._request_sync()
        if self._sync_thread is not None:
            self._sync_thread.join(timeout=5)
        with self.lock:
            for group in self.groups:
                try:
                    group._obj._doDestroy()
                except Exception:
                    log.exception("shard %d: destroy failed", group.shard)
        self.poller.close()
