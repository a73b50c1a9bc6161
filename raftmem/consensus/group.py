"""One shard replica's Raft membership: a pysyncobj SyncObj behind a narrow interface."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj.config import FAIL_REASON

from ..config import RaftConfig
from .hooks import LEADER_STATE, ROLE_NAMES, Hooks
from .journal import DurableJournal
from .patches import building
from .poller import GroupPoller
from .snapshots import SLOW_DISK_STAGE_S, Replica, Snapshots
from .transport import Transport
from .waits import Waits

if TYPE_CHECKING:
    from .ticker import Ticker

log = logging.getLogger(__name__)


APPEND_BATCH_BYTES = 4 * 1024 * 1024
# On-demand heartbeats (for ReadIndex) are at least this far apart: under a read
# flood, one round confirms every read that arrived before it.
HEARTBEAT_GAP_MIN_S = 0.001

# Outcome of a proposal, from the proposer's point of view.
OK = "ok"
REJECTED = "rejected"  # certainly not in the log: safe to retry
UNKNOWN = "unknown"  # may or may not commit: report as indeterminate

FAIL_OUTCOME = {
    FAIL_REASON.QUEUE_FULL: REJECTED,
    FAIL_REASON.MISSING_LEADER: REJECTED,
    FAIL_REASON.NOT_LEADER: REJECTED,
    FAIL_REASON.REQUEST_DENIED: REJECTED,
    # DISCARDED: another entry was committed at this index, so ours never will be.
    FAIL_REASON.DISCARDED: REJECTED,
    FAIL_REASON.LEADER_CHANGED: UNKNOWN,
    FAIL_REASON.UNKNOWN_OUTCOME: UNKNOWN,
}


class DurableMatch(dict):  # type: ignore[type-arg]
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


class ShardSyncObj(SyncObj):  # type: ignore[misc]
    def __init__(self, apply_fn: Callable[[int, bytes], Any], handing_over: Callable[[], bool],
                 *args: Any, **kwargs: Any) -> None:
        self._raftmem_apply = apply_fn
        self._raftmem_handing_over = handing_over
        super().__init__(*args, **kwargs)

    def _applyCommand(self, command: Any, callback: Any, commandType: Any = None) -> None:
        """During a hand-over, commands that do not pass through
        RaftGroup.propose (a membership change, a proposal forwarded by a
        replica that lost leadership) are refused: appended after TimeoutNow
        they would leave the target's log behind."""
        if self._raftmem_handing_over():
            self._SyncObj__callErrCallback(FAIL_REASON.NOT_LEADER, callback)
            return
        super()._applyCommand(command, callback, commandType)

    @replicated  # type: ignore[untyped-decorator]
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
    # Fault injection: the first snapshot sent to a follower loses a chunk.
    torn_snapshot_transfer: bool = False
    # Negative control only: install received snapshots unchecked (no manifest
    # check; RocksDB creates an empty database where the files hold none).
    unsafe_unchecked_snapshots: bool = False
    # How long a ReadIndex waits for a quorum to confirm leadership.
    read_timeout_s: float = 5.0
    # Negative control only: a hand-over sends TimeoutNow at once and the leader
    # goes on appending (pysyncobj's own transfer), so under a write load the
    # target asks for votes with a log the others have outgrown.
    naive_transfer: bool = False


@dataclass
class _Handover:
    """A leadership hand-over in progress (Raft thesis 3.10, etcd's
    leadTransferee): proposals wait in `held` while the target catches up to
    the last entry, is told to campaign (TimeoutNow), and wins or not."""

    target: str
    term: int
    deadline: float
    on_done: Callable[[bool], None]
    revoked_before: int  # the lease's revoked term before this hand-over
    sent: bool = False
    held: list[tuple[bytes, Callable[[str, Any], None]]] = field(default_factory=list)


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
        self.snapshots = Snapshots(replica, spec.directory, spec.shard, ticker)
        self.snapshots.stage_delay_s = SLOW_DISK_STAGE_S if spec.slow_snapshot_disk else 0.0
        self.snapshots.stage_inline = spec.inline_snapshot_install
        self.snapshots.recover_interrupted_compaction(self.journal)
        self.leader_changes = 0
        self.role_since = time.monotonic()
        self.led_until = float("-inf")
        self._applied_seen = 0
        self._shipped_upto = 0
        self.inline_syncs = 0  # leader fsyncs on the loop before an apply (see _apply)
        self._handover: _Handover | None = None
        self.heartbeat_wanted = False
        self.read_rounds = 0  # append-entries rounds requested by ReadIndex (reads share them)
        assert ticker.loop is not None, "attach the ticker to the loop before building groups"
        self.waits = Waits(self, ticker.loop, spec.read_timeout_s)
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
        self.hooks = Hooks(raft, cluster_size=len(spec.peer_addresses) + 1, journal=self.journal, shard=spec.shard)
        self.hooks.prevote_enabled = not spec.disable_prevote
        self.hooks.on_quorum_ack = self.waits.quorum_acked
        self.hooks.snapshots = self.snapshots
        self.snapshots.hooks = self.hooks
        building.journal = self.journal
        self.poller_view = GroupPoller(ticker.poller)
        self.last_tick = 0.0
        building.poller = self.poller_view
        building.defer_sends = raft.fsync == "always"
        building.hooks = self.hooks
        try:
            self._obj = ShardSyncObj(
                self._apply, lambda: self._handover is not None, spec.self_address, spec.peer_addresses, conf,
                transportClass=Transport,
            )
        finally:
            building.journal = None
            building.poller = None
            building.defer_sends = False
            building.hooks = None
        self._transport: Transport = self._obj._SyncObj__transport
        self._match = DurableMatch(self._obj._SyncObj__raftMatchIndex)
        self._obj._SyncObj__raftMatchIndex = self._match
        # Off only for the negative control in test_raft_groups.
        self.commit_needs_own_fsync = raft.fsync == "always"
        self.durable_seen = 0
        self.hooks.obj = self._obj
        self.hooks.transport = self._transport
        self._followers: frozenset[str] = frozenset()
        self.sync_members()
        self.snapshots.obj = self._obj
        self.snapshots.verify = not spec.unsafe_unchecked_snapshots
        if spec.torn_snapshot_transfer:
            self.snapshots.arm_torn_transfer()
        ticker.add(self)

    def _on_state_changed(self, old: int, new: int) -> None:
        self.leader_changes += 1
        self.role_since = time.monotonic()
        if old == LEADER_STATE:
            self.led_until = self.role_since
            self.snapshots.cancel_transfers()
        term = self._obj.raftCurrentTerm
        log.info(
            "shard %d: %s -> %s at term %d", self.shard, ROLE_NAMES.get(old, old), ROLE_NAMES.get(new, new), term,
            extra={"shard": self.shard, "term": term, "index": self._obj.raftCommitIndex},
        )

    def _apply(self, index: int, payload: bytes) -> Any:
        assert index <= self._obj.raftCommitIndex, (index, self._obj.raftCommitIndex)
        if self.journal.durable_index < index and self._obj._isLeader():
            # Invariant: a leader applies (and so acknowledges) only what is
            # on its own disk. With
            # followers, `DurableMatch` holds the commit back until the fsync
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

        if self._handover is not None:
            self._handover.held.append((payload, on_done))  # appended or refused when it ends
            return
        self._append(payload, on_done)

    def _append(self, payload: bytes, on_done: Callable[[str, Any], None]) -> None:
        def callback(result: Any, error: int) -> None:
            if error == FAIL_REASON.SUCCESS:
                on_done(OK, result)
            else:
                on_done(FAIL_OUTCOME.get(error, UNKNOWN), error)

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

    # -- the Raft facts the read protocol needs (raftmem.reads.RaftFacts) ------------
    @property
    def applied_index(self) -> int:
        """Raft's applied index: it counts entries the state machine never sees
        (a leader's no-op, membership changes), unlike the state machine's."""
        return self.last_applied

    def lease_index(self, now: float) -> tuple[int, int] | None:
        """(commit index, term) to read at under a valid leader lease, or None.
        No network round trip: a quorum acknowledged a recent send, so no other
        leader can exist until the lease ends (leases.py)."""
        term = self.term
        if self.lease_remaining_s(now) <= 0:
            return None
        return self.commit_index, term

    def lease_valid(self, term: int, now: float) -> bool:
        """Re-checked after a lease read: a pause (GC, SIGSTOP) between the check
        and the read must not let an expired lease answer."""
        return self.term == term and self.lease_remaining_s(now) > 0

    async def read_index(self) -> int:
        return await self.waits.read_index()

    async def wait_applied(self, index: int, timeout_s: float) -> bool:
        return await self.waits.wait_applied(index, timeout_s)

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
            "role": ROLE_NAMES.get(obj._SyncObj__raftState, "follower"),
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

    def voter_addresses(self) -> list[str]:
        """The Raft addresses of the voters this replica has now, itself included."""
        return [n.address for n in self._obj.otherNodes] + [self.spec.self_address]

    def address_to_node(self) -> dict[str, str]:
        """Raft address -> node id, for every voter this replica has known."""
        return dict(self.spec.address_to_node)

    def counters(self) -> dict[str, Any]:
        """The adapter's own counters and sizes, for metrics (ShardStats)."""
        return {
            "log_entries": len(self.journal),
            "log_bytes": self.journal.bytes,
            "leader_changes": self.leader_changes,
            "journal_syncs": self.journal.syncs,
            "inline_syncs": self.inline_syncs,
            "read_rounds": self.read_rounds,
            "votes_ignored": self.hooks.votes_ignored,
            "stale_acks": self.hooks.stale_acks,
            "snapshot_installs": dict(self.snapshots.installs),
        }

    def replication_lag(self) -> dict[str, int]:
        """A leader's last log index minus each follower's match index, by node."""
        if not self._obj._isLeader():
            return {}
        last = self.journal.last_index()
        match = dict(self._obj._SyncObj__raftMatchIndex)
        return {self.spec.address_to_node.get(n.address, n.address): max(0, last - i) for n, i in match.items()}

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

    def transfer_leadership(self, node_address: str | None, on_done: Callable[[bool], None]) -> None:
        """Hand leadership to `node_address` (None: the most caught-up follower).
        `on_done(True)` once the target is told to campaign (TimeoutNow),
        False when refused or abandoned. Until the hand-over ends (leadership
        gone, or an election timeout without it) new proposals wait: a leader
        that went on appending after TimeoutNow left the target's log behind
        everyone's, it lost the election, and the old leader won it back at a
        higher term (under a steady write load, every time: 2026-12-07)."""

        def run() -> None:
            obj = self._obj
            target = node_address or self._most_caught_up()
            if self._handover is not None or not obj._isLeader() or target is None:
                on_done(False)
                return
            if not self.spec.naive_transfer and not self._caught_up(target):
                on_done(False)  # refused at once, as pysyncobj would: no write waits for it
                return
            # The target will be elected without waiting out our lease: stop
            # serving lease reads in this term from now on.
            revoked_before, self.hooks.lease.revoked_term = self.hooks.lease.revoked_term, obj.raftCurrentTerm
            if self.spec.naive_transfer:
                obj.transferLeadership(target, callback=lambda _r, err: on_done(err == FAIL_REASON.SUCCESS))
                return
            self._handover = _Handover(
                target, obj.raftCurrentTerm, time.monotonic() + self.hooks.min_timeout_s, on_done, revoked_before
            )
            self._handover_step()

        self.ticker.call_soon(run)

    def _connected_voters(self) -> list[Any]:
        obj = self._obj
        connected = obj._SyncObj__connectedNodes
        return [n for n in obj._SyncObj__otherNodes if n in connected]

    def _caught_up(self, address: str) -> bool:
        """A connected voter holding every committed entry: one replication
        round from holding the last."""
        commit = self._obj.raftCommitIndex
        return any(n.address == address and dict.get(self._match, n, 0) >= commit for n in self._connected_voters())

    def _most_caught_up(self) -> str | None:
        nodes = self._connected_voters()
        if not nodes:
            return None
        best = max(nodes, key=lambda n: dict.get(self._match, n, 0))
        return str(best.address)

    def _handover_step(self) -> None:
        """After each tick: tell the target to campaign once it holds every
        entry and nothing waits to be appended; end the hand-over when this
        replica no longer leads the term, or an election timeout passed without
        TimeoutNow, or one since it was sent."""
        handover = self._handover
        assert handover is not None
        obj = self._obj
        if not obj._isLeader() or obj.raftCurrentTerm != handover.term:
            self._end_handover()
            return
        now = time.monotonic()
        if now >= handover.deadline:
            log.info("shard %d: hand-over to %s abandoned", self.shard, handover.target, extra={"shard": self.shard})
            self._end_handover()
            return
        if handover.sent or len(obj._SyncObj__commandsQueue._FastQueue__queue):
            return
        outcome: list[bool] = []
        obj.transferLeadership(handover.target, callback=lambda _r, err: outcome.append(err == FAIL_REASON.SUCCESS))
        if outcome == [True]:  # sent: the target holds every entry
            handover.sent = True
            handover.deadline = max(handover.deadline, now + self.hooks.min_timeout_s)  # its election's time
            handover.on_done(True)

    def refuse_held(self) -> None:
        """On the loop thread, for a group that stops: a hand-over in progress
        ends, its held proposals refused."""
        if self._handover is not None:
            self._end_handover(leading=False)

    def _end_handover(self, leading: bool | None = None) -> None:
        """Held proposals are appended if this replica still leads, else refused
        (never in the log: the caller retries them at the new leader)."""
        handover, self._handover = self._handover, None
        assert handover is not None
        if not handover.sent:
            # Nobody was told to campaign early: this term's lease holds again.
            self.hooks.lease.revoked_term = handover.revoked_before
            handover.on_done(False)
        if leading is None:
            leading = bool(self._obj._isLeader())
        for payload, on_done in handover.held:
            if leading:
                self._append(payload, on_done)
            else:
                on_done(REJECTED, FAIL_REASON.NOT_LEADER)

    def sync_members(self) -> None:
        """Lease and pre-vote quorums follow the voters pysyncobj has now."""
        followers = frozenset(n.address for n in self._obj.otherNodes)
        if followers != self._followers:
            if self.spec.self_address in followers:
                # A peer that is this replica never answers, yet counts in every
                # quorum: with three replicas, all three must then answer.
                log.error(
                    "shard %d: this replica (%s) is among its own peers; voters: %s",
                    self.shard, self.spec.self_address, sorted(followers | {self.spec.self_address}),
                    extra={"shard": self.shard},
                )
            self._followers = followers
            self.hooks.lease.set_members(followers)
            self.hooks.prevote.cluster_size = len(followers) + 1

    def tick(self) -> None:
        """One pysyncobj tick. A leader ships entries it appended (or a wanted
        heartbeat) at once rather than at the next append-entries period. A
        hand-over moves on after it, even when the tick failed."""
        try:
            self._tick()
        finally:
            if self._handover is not None:
                self._handover_step()

    def _tick(self) -> None:
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
            self.waits.applied()

    def destroy(self) -> None:
        """Stop this replica's Raft membership on this node (its data stays)."""
        self.snapshots.closed = True
        self.ticker.remove(self)
        if self._handover is not None:  # on a worker thread: the loop refuses the held proposals
            assert self.ticker.loop is not None
            self.ticker.loop.call_soon_threadsafe(self.refuse_held)
        with self.ticker.lock:
            self._obj._doDestroy()

