"""Heartbeat echo, leader lease, vote stickiness and pre-vote, added at
pysyncobj's message boundary (the logic is in raftmem.leases)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import RaftConfig
from ..leases import FollowerView, LeaderLease, PreVote, log_up_to_date
from .journal import DurableJournal

if TYPE_CHECKING:
    from .snapshots import Snapshots

log = logging.getLogger(__name__)


ROLE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}  # pysyncobj's _RAFT_STATE
FOLLOWER_STATE = 0
LEADER_STATE = 2

class Hooks:
    """Heartbeat echo, leader lease, vote stickiness and pre-vote, added to
    pysyncobj at its message boundary (see leases.py for the logic). Runs in tick
    passes only (the event loop thread)."""

    def __init__(self, raft: RaftConfig, cluster_size: int, journal: DurableJournal, shard: int = -1) -> None:
        self.journal = journal
        self.shard = shard  # for log lines
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
        self.snapshots: Snapshots | None = None

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
        log.info("shard %d: pre-vote refused at term %d; adopting the peer's term", self.shard, peer_term,
                 extra={"shard": self.shard})
        obj._SyncObj__setCurrentTerm(peer_term, None)
        obj._SyncObj__setState(FOLLOWER_STATE)
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
        log.info("shard %d: stuck at term %d behind a live leader; announcing the term",
                 self.shard, self.obj.raftCurrentTerm, extra={"shard": self.shard})
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

