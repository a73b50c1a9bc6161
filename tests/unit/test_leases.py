"""Lease, pre-vote and follower-freshness arithmetic, driven with plain numbers."""

from __future__ import annotations

import pytest

from raftmem.leases import FollowerView, LeaderLease, PreVote, log_up_to_date, quorum_time


def test_quorum_time_needs_a_majority() -> None:
    assert quorum_time([], 3) == 0.0
    assert quorum_time([5.0], 3) == 5.0  # leader + one follower of three
    assert quorum_time([5.0, 7.0], 3) == 7.0
    assert quorum_time([5.0], 5) == 0.0  # needs two followers of four
    assert quorum_time([5.0, 7.0, 6.0], 5) == 6.0
    assert quorum_time([], 1) == float("inf")


def lease() -> LeaderLease:
    lease = LeaderLease(min_election_timeout_s=0.4, clock_drift_bound=0.1, cluster_size=3)
    lease.sync(term=2)
    return lease


def test_lease_ends_min_timeout_times_drift_after_the_quorum_send() -> None:
    lz = lease()
    assert lz.remaining_s(now=10.0, term=2) == 0.0  # no ack yet: no lease
    assert lz.on_echo("n2", term=2, stamp=10.0, now=10.01)
    assert lz.remaining_s(now=10.01, term=2) == pytest.approx(0.36 - 0.01)
    assert lz.remaining_s(now=10.37, term=2) < 0  # expired
    assert lz.remaining_s(now=10.01, term=3) == 0.0  # another term: nothing


def test_stale_and_foreign_echoes_do_not_extend_the_lease() -> None:
    lz = lease()
    lz.on_echo("n2", 2, 10.0, 10.01)
    assert not lz.on_echo("n2", 2, 9.0, 10.02)  # older stamp
    assert not lz.on_echo("n3", 1, 10.5, 10.6)  # previous term's stamp
    assert lz.quorum_ack == 10.0
    lz.sync(3)  # new term: nothing carried over
    assert lz.remaining_s(10.02, 3) == 0.0


def test_membership_changes_move_the_quorum() -> None:
    lz = lease()  # leader + n2 + n3
    lz.on_echo("n2", 2, 10.0, 10.01)
    lz.on_echo("n3", 2, 10.2, 10.21)
    assert lz.quorum_ack == 10.2  # one follower besides the leader is a majority of 3
    # n3 removed: its acknowledgement no longer holds up the lease.
    lz.set_members(frozenset({"n2"}))
    assert lz.quorum_ack == 10.0
    # n4 and n5 added (5 voters): two followers must have acknowledged.
    lz.set_members(frozenset({"n2", "n4", "n5"}))
    assert lz.quorum_ack == 0.0 and lz.remaining_s(10.3, 2) == 0.0
    lz.on_echo("n4", 2, 10.3, 10.31)
    assert lz.quorum_ack == 10.0  # the older of the two latest
    assert not lz.on_echo("n3", 2, 10.4, 10.41)  # a removed node's late reply counts for nothing
    assert lz.quorum_ack == 10.0


def test_clock_running_backwards_voids_the_lease() -> None:
    lz = lease()
    lz.on_echo("n2", 2, 10.0, 10.01)
    assert lz.remaining_s(now=10.05, term=2) > 0
    assert lz.remaining_s(now=5.0, term=2) == 0.0  # the clock jumped back 5 s
    lz.check_clock(5.0)  # the tick thread notices
    assert lz.clock_resets == 1
    assert lz.on_echo("n2", 2, 5.01, 5.02)  # fresh acks rebuild it
    assert lz.remaining_s(now=5.03, term=2) > 0


def test_transfer_revokes_the_lease_for_the_term() -> None:
    lz = lease()
    lz.on_echo("n2", 2, 10.0, 10.0)
    lz.revoked_term = 2
    assert lz.remaining_s(10.01, 2) == 0.0


def test_follower_staleness_uses_the_leader_stamp() -> None:
    view = FollowerView()
    view.on_append("L", term=1, stamp=(1, 100.0), commit=5, now=500.002)  # offset 400.002
    view.on_append("L", term=1, stamp=(1, 100.1), commit=7, now=500.103)
    assert view.offset == pytest.approx(400.002)
    assert view.leader_commit == 7
    assert view.staleness_s(500.2) == pytest.approx(500.2 - (100.1 + 400.002))
    # A message delayed in the network looks as old as it is, not as fresh as its arrival.
    view.on_append("L", term=1, stamp=(1, 100.2), commit=8, now=503.0)
    assert view.staleness_s(503.0) == pytest.approx(503.0 - (100.2 + 400.002))
    assert view.heard_within(503.1, 0.4) and not view.heard_within(504.0, 0.4)
    view.on_append("M", term=2, stamp=(2, 7.0), commit=3, now=504.0)  # new leader: fresh estimate
    assert view.leader_commit == 3 and view.staleness_s(504.0) == pytest.approx(0.0)


def test_prevote_needs_a_majority_of_the_cluster() -> None:
    pv = PreVote(cluster_size=3)
    pv.start(5)
    assert not pv.on_response("n2", 5, False)
    assert not pv.on_response("n2", 4, True)  # an older round
    assert pv.on_response("n3", 5, True)
    assert pv.take_win(5) and not pv.take_win(5)
    five = PreVote(cluster_size=5)
    five.start(2)
    assert not five.on_response("a", 2, True)
    assert five.on_response("b", 2, True)


def test_log_up_to_date() -> None:
    assert log_up_to_date(3, 10, 3, 10)
    assert log_up_to_date(4, 1, 3, 10)
    assert not log_up_to_date(3, 9, 3, 10)
    assert not log_up_to_date(2, 99, 3, 10)


def test_a_new_leaders_commit_index_says_nothing_until_its_term_commits() -> None:
    view = FollowerView()
    view.on_append("L", term=3, stamp=(3, 50.0), commit=2, now=60.0, commit_complete=False)
    assert view.heard_within(60.1, 0.4)  # a follower still: stickiness holds
    assert view.staleness_s(60.1) == float("inf") and view.leader_commit == 0  # but not fresh
    view.on_append("L", term=3, stamp=(3, 50.1), commit=9, now=60.1, commit_complete=True)
    assert view.leader_commit == 9 and view.staleness_s(60.1) == pytest.approx(0.0)
