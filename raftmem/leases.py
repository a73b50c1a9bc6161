"""Lease, ReadIndex, pre-vote and follower-freshness logic: pure, no sockets, no
threads, no pysyncobj, so tests drive it with numbers. The consensus package feeds it
events (a message sent, an acknowledgement echoed, an append received) and asks
it questions (is the lease valid, should this vote be ignored).

The facts it relies on (DESIGN.md section 2):
- The leader stamps every append-entries with (term, its monotonic send time);
  the follower echoes the latest stamp it accepted in its reply. So the leader
  knows, per follower, the latest of its sends that follower acknowledged.
- A follower that heard from a leader within the minimum election timeout
  ignores vote requests and refuses pre-votes (stickiness). So if a quorum
  acknowledged a send made at time t, no other leader can be elected before
  t + min election timeout, as measured by clocks that run at most
  `clock_drift_bound` slower: the lease ends at
      t_quorum + min_election_timeout * (1 - clock_drift_bound).
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Tolerance for comparing readings of one monotonic clock taken on two threads.
CLOCK_SLACK_S = 1e-3


def quorum_time(acks: list[float], cluster_size: int) -> float:
    """The latest time t such that a majority (the leader counts itself)
    acknowledged a send made at t or later; 0.0 if there is no such majority."""
    needed = cluster_size // 2  # followers needed besides the leader
    if needed == 0:
        return float("inf")
    if len(acks) < needed:
        return 0.0
    return sorted(acks, reverse=True)[needed - 1]


@dataclass
class LeaderLease:
    min_election_timeout_s: float
    clock_drift_bound: float
    cluster_size: int
    term: int = -1
    acked: dict[str, float] = field(default_factory=dict)
    quorum_ack: float = 0.0
    revoked_term: int = -1  # a leadership transfer was started in this term
    last_now: float = 0.0
    clock_resets: int = 0
    members: frozenset[str] | None = None  # the followers that vote; None: not told yet

    @property
    def duration_s(self) -> float:
        return self.min_election_timeout_s * (1.0 - self.clock_drift_bound)

    def reset(self, term: int) -> None:
        self.term = term
        self.acked = {}
        self.quorum_ack = 0.0

    def sync(self, term: int) -> None:
        """Stamps and acks of an earlier term say nothing about this one."""
        if term != self.term:
            self.reset(term)

    def set_members(self, followers: frozenset[str]) -> None:
        """The voters besides the leader changed (a membership change): quorums
        count the new voters, and a removed node's acknowledgements no longer
        count (it cannot vote, so its stickiness stops no election)."""
        self.members = followers
        self.cluster_size = len(followers) + 1
        self.acked = {n: t for n, t in self.acked.items() if n in followers}
        self.quorum_ack = min(self.quorum_ack, quorum_time(list(self.acked.values()), self.cluster_size))

    def check_clock(self, now: float) -> None:
        """A monotonic clock that ran backwards (or a stamp from the future) voids
        every stamp: they would stretch the lease. Fresh acks rebuild it. Called
        from tick passes only: readings from two threads interleave."""
        if now + CLOCK_SLACK_S < self.last_now or self.quorum_ack > now + CLOCK_SLACK_S:
            self.clock_resets += 1
            self.acked = {}
            self.quorum_ack = 0.0
        self.last_now = now

    def on_echo(self, node: str, term: int, stamp: float, now: float) -> bool:
        """An acknowledgement of our send stamped `stamp` in `term`. Returns
        whether the quorum-acknowledged time moved forward."""
        self.check_clock(now)
        if term != self.term or stamp > now + CLOCK_SLACK_S:
            return False
        if self.members is not None and node not in self.members:
            return False  # a removed node's late reply
        if stamp <= self.acked.get(node, 0.0):
            return False
        self.acked[node] = stamp
        quorum = quorum_time(list(self.acked.values()), self.cluster_size)
        if quorum > self.quorum_ack:
            self.quorum_ack = quorum
            return True
        return False

    def remaining_s(self, now: float, term: int) -> float:
        """Seconds of lease left for a leader in `term` (<= 0: no lease). Pure: safe
        to call from any thread."""
        if term != self.term or self.revoked_term == term or self.quorum_ack <= 0.0:
            return 0.0
        if self.quorum_ack > now + CLOCK_SLACK_S:
            return 0.0  # a stamp from our future: the clock ran backwards
        return self.quorum_ack + self.duration_s - now

    def heard_from_quorum_within(self, now: float, within_s: float) -> bool:
        return self.quorum_ack > 0.0 and now - self.quorum_ack < within_s


@dataclass
class FollowerView:
    """What a replica knows about its leader from the appends it accepted."""

    term: int = -1
    leader: str | None = None
    last_contact: float = float("-inf")  # local monotonic time of the last accepted append
    leader_commit: int = 0  # the leader's commit index in that append
    # min over appends of (local receive time - leader stamp): the leader's clock
    # offset plus the smallest one-way delay. stamp + offset is a lower bound on
    # "now" at the leader's send, so staleness computed from it is not understated
    # by more than that smallest delay.
    offset: float = float("inf")
    send_estimate: float = float("-inf")  # local-clock estimate of that append's send time
    stamps: dict[str, tuple[int, float]] = field(default_factory=dict)

    def on_append(
        self,
        node: str,
        term: int,
        stamp: tuple[int, float] | None,
        commit: int,
        now: float,
        commit_complete: bool = True,
    ) -> None:
        """`commit_complete`: the leader has committed an entry of its own term, so
        its commit index covers every write acknowledged before it sent this. A
        new leader's commit index may lag (it comes from a hint on disk); until
        then its appends keep us a follower but say nothing about freshness."""
        if term != self.term or node != self.leader:
            self.term, self.leader, self.offset, self.leader_commit = term, node, float("inf"), 0
            self.send_estimate = float("-inf")
        self.last_contact = now
        if stamp is not None:
            self.stamps[node] = stamp
            self.offset = min(self.offset, now - stamp[1])
        if not commit_complete:
            return
        self.leader_commit = max(self.leader_commit, commit)
        self.send_estimate = stamp[1] + self.offset if stamp is not None else now

    def heard_within(self, now: float, within_s: float) -> bool:
        return self.leader is not None and now - self.last_contact < within_s

    def staleness_s(self, now: float) -> float:
        return now - self.send_estimate


@dataclass
class PreVote:
    """A candidate first asks whether it *could* win (Raft thesis 9.6): peers
    that heard from a leader recently say no, so an isolated node never bumps
    its term and cannot depose a healthy leader when it comes back."""

    cluster_size: int
    round_term: int = -1
    grants: set[str] = field(default_factory=set)
    won_term: int = -1

    def start(self, next_term: int) -> None:
        self.round_term = next_term
        self.grants = set()
        self.won_term = -1

    def on_response(self, node: str, term: int, granted: bool) -> bool:
        """Returns True when this response completes a majority."""
        if term != self.round_term or not granted or self.won_term == term:
            return False
        self.grants.add(node)
        if len(self.grants) + 1 > self.cluster_size // 2:
            self.won_term = term
            return True
        return False

    def take_win(self, next_term: int) -> bool:
        if self.won_term == next_term:
            self.won_term = -1
            return True
        return False


def log_up_to_date(cand_term: int, cand_index: int, my_term: int, my_index: int) -> bool:
    return (cand_term, cand_index) >= (my_term, my_index)
