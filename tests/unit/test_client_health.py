"""The client's node health table: latency estimates, back-off of nodes that stop
answering, probing them back in, and where stale-tolerant reads go."""

from __future__ import annotations

import random
from collections import Counter

from raftmem.client.health import BACKOFF_S_MAX, BACKOFF_S_MIN, HealthTable

URLS = ["http://a", "http://b", "http://c"]


def test_the_slowest_node_gets_no_stale_reads_while_two_others_answer() -> None:
    table = HealthTable(random.Random(7))
    for url, latency in zip(URLS, (0.002, 0.003, 0.400), strict=True):
        table.answered(url, latency)
    picks = Counter(table.pick(URLS, 0.0) for _ in range(300))
    assert picks["http://c"] == 0
    assert picks["http://a"] > 0 and picks["http://b"] > 0  # the load still spreads


def test_control_equal_nodes_share_the_reads() -> None:
    table = HealthTable(random.Random(7))
    for url in URLS:
        table.answered(url, 0.002)
    picks = Counter(table.pick(URLS, 0.0) for _ in range(300))
    assert min(picks.values()) > 50


def test_a_node_without_answers_is_backed_off_then_due_a_probe() -> None:
    table = HealthTable(random.Random(1))
    for url in URLS:
        table.answered(url, 0.001)
    table.no_answer("http://a", now=10.0, reason="timed out")
    assert not table.usable("http://a", 10.0)
    assert all(table.pick(URLS, 10.0) != "http://a" for _ in range(50))
    assert table.due_probe(URLS, 10.0 + BACKOFF_S_MIN / 2) == []
    assert table.due_probe(URLS, 10.0 + BACKOFF_S_MIN) == ["http://a"]
    # Failures in a row double the back-off, up to the cap.
    for _ in range(10):
        table.no_answer("http://a", now=20.0, reason="timed out")
    assert table.nodes["http://a"].down_until == 20.0 + BACKOFF_S_MAX
    # One answer (a probe or a request) brings it back.
    table.answered("http://a", 0.001)
    assert table.usable("http://a", 20.0) and table.snapshot(20.0)["http://a"]["failures_in_a_row"] == 0


def test_with_every_node_down_the_first_to_come_off_back_off_is_tried() -> None:
    table = HealthTable()
    table.no_answer("http://a", now=1.0, reason="refused")
    table.no_answer("http://b", now=0.0, reason="refused")
    table.no_answer("http://c", now=2.0, reason="refused")
    assert table.pick(URLS, 2.0) == "http://b"


def test_latency_is_a_moving_average() -> None:
    table = HealthTable()
    table.answered("http://a", 0.010)
    table.answered("http://a", 0.020)
    assert abs(table.snapshot(0.0)["http://a"]["latency_ms"] - 13.0) < 1e-6
