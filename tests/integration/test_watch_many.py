"""Many watches on one connection (POST /v1/watch) against real node processes:
each watch sees exactly what a stream of its own would (its filter, its
tokens, log order per shard), every line names its watch, a batch for many
watches goes out in one socket write, bad input is a clear 400."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cluster import Cluster
from .feed import Stream, Writer, fmt, in_log_order_per_shard, seen, tokens

SHARDS = 4
ZERO = {s: 0 for s in range(SHARDS)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("watch-many"), shards=SHARDS)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


@pytest.mark.parametrize("sse", [False, True])
def test_each_watch_on_one_connection_sees_exactly_its_own_events(cluster: Cluster, sse: bool) -> None:
    ns, p = f"many-{'sse' if sse else 'nd'}", "s" if sse else "n"  # (idempotency keys name the id only)
    w = Writer(cluster, ns)
    for i in range(6):
        w.put(f"{p}{i}", {"content": i, "tags": ["hot"] if i % 2 else []})
    middle = {s: 0 for s in range(SHARDS)} | {a.shard: a.index for a in w.acked}
    watches = [
        {"id": "all", "namespace": ns, "after": fmt(ZERO)},
        {"id": "hot", "namespace": ns, "tag": "hot", "after": fmt(ZERO)},
        {"id": "later", "namespace": ns, "after": fmt(middle)},
        {"id": "quiet", "namespace": "nobody-writes-here"},
    ]
    s = Stream(cluster, "n2", {"progress_ms": 200}, sse=sse, watches=watches)
    assert s.status == 200, s.body
    try:
        for i in range(6, 12):
            w.put(f"{p}{i}", {"content": i, "tags": ["hot"] if i % 2 else []})
        w.delete(f"{p}1")
        everything = w.expected()
        hot = [row for row in everything if row[1] == "put" and int(row[2][1:]) % 2] + \
            [row for row in everything if row[1] == "delete"]
        assert seen(s.wait_events(len(everything), watch="all")) == everything
        assert sorted(seen(s.wait_events(len(hot), watch="hot"))) == sorted(hot)
        later = w.expected(middle)
        assert seen(s.wait_events(len(later), watch="later")) == later
        for watch in ("all", "hot", "later"):
            assert in_log_order_per_shard(s.events(watch))
        # Nothing more comes: progress past the last write, per watch, never going back.
        last = {a.shard: a.index for a in w.acked}
        for watch in ("all", "quiet"):
            s.wait(f"{watch}: progress past the last write", lambda _items, watch=watch: any(
                i["type"] == "progress" and all(tokens(i["tokens"]).get(sh, 0) >= x for sh, x in last.items())
                for i in s.of(watch)))
            marks = [tokens(i["tokens"]) for i in s.of(watch) if i["type"] == "progress"]
            assert all(b[k] >= a[k] for a, b in zip(marks, marks[1:], strict=False) for k in a)
        assert s.events("quiet") == [] and seen(s.events("all")) == everything
        assert {i["watch"] for i in s.snapshot()} == {"all", "hot", "later", "quiet"}
        lines = [line.strip() for line in s.raw if line.strip()]
        lead = b'data: {"watch":' if sse else b'{"watch":'
        assert all(line.startswith(lead) and line.endswith(b"]}") for line in lines), lines[:3]
        assert s.headers["Content-Type"].startswith("text/event-stream" if sse else "application/x-ndjson")
    finally:
        s.close()


@pytest.mark.parametrize(("body", "field"), [
    ({}, "watches"),
    ({"watches": []}, "watches"),
    ({"watches": "all"}, "watches"),
    ({"watches": [{"id": "a", "colour": "red"}]}, "fields"),
    ({"watches": [{"namespace": "x"}]}, "watches[0].id"),
    ({"watches": [{"id": "a"}, {"id": "a"}]}, "id"),
    ({"watches": [{"id": "a", "after": "0:x"}]}, "after"),
    ({"watches": [{"id": "a", "after": f"{SHARDS}:5"}]}, "after"),  # no such shard
    ({"watches": [{"id": "a", "namespace": 5}]}, "namespace"),
    ({"watches": [{"id": "a", "namespace": "bad/name"}]}, "namespace"),
    ({"watches": ["a"]}, "watches[0]"),
    ({"watches": [{"id": "a"}], "progress_ms": 5}, "progress_ms"),
    ({"watches": [{"id": "a"}], "require_leader": "yes"}, "require_leader"),
    ({"watches": [{"id": "a"}], "tag": "x"}, "fields"),
    ({"watches": [{"id": f"w{i}"} for i in range(1001)]}, "watches"),  # past watch.watchers_max
])
def test_bad_input_is_a_clear_400_and_the_node_carries_on(cluster: Cluster, body: dict[str, Any],
                                                         field: str) -> None:
    status, _, answer = cluster.request("n1", "POST", "/v1/watch", body)
    assert status == 400, answer
    error = answer["error"]
    assert error["code"] == "invalid_request" and (field in (error.get("field"), *error)
                                                   or field in error["message"]), error
    assert cluster.request("n1", "GET", "/healthz")[0] == 200


def test_bad_bodies_and_query_parameters_are_400(cluster: Cluster) -> None:
    for raw in (b"", b"not json", b"[1, 2]"):
        status, _, answer = cluster.request("n1", "POST", "/v1/watch", raw=raw)
        assert status == 400 and answer["error"]["code"] == "invalid_request", (raw, answer)
    status, _, answer = cluster.request("n1", "POST", "/v1/watch?namespace=a", {"watches": [{"id": "a"}]})
    assert status == 400 and "query" in answer["error"]["message"], answer


def test_a_batch_for_many_watches_goes_out_in_one_write(tmp_path: Path) -> None:
    """With `watch.batch_ms` 1000, 40 sequential writes reach 20 watches of
    one connection in about one socket write per second, all 20 watches' events
    in each. Control: the same 20 watches as 20 connections take at least 20
    writes a batch, which the same bound refuses."""
    c = Cluster(tmp_path, shards=2, sections={"watch": {"batch_ms": 1000}})
    try:
        c.start_all()
        for one_connection in (True, False):
            w = Writer(c, f"fan-{one_connection}")
            key = "m" if one_connection else "s"  # (idempotency keys name the id only)
            params = {"namespace": w.ns, "after": fmt({0: 0, 1: 0}), "progress_ms": 60_000}
            if one_connection:
                streams = [Stream(c, "n1", {"progress_ms": 60_000},
                                  watches=[{"id": f"w{i}", "namespace": w.ns, "after": params["after"]}
                                           for i in range(20)])]
                names: list[str | None] = [f"w{i}" for i in range(20)]
            else:
                streams = [Stream(c, "n1", params) for _ in range(20)]
                names = [None]
            try:
                for s in streams:
                    s.wait("the first progress of every watch",
                           lambda _items, s=s, names=names: all(any(i["type"] == "progress" for i in s.of(n))
                                                               for n in names))
                before = c.cluster_view("n1")["watch"]
                began = time.monotonic()
                for i in range(40):
                    w.put(f"{key}{i}", {"content": i})
                elapsed = time.monotonic() - began
                for s in streams:
                    for name in names:
                        got = s.wait_events(40, watch=name)
                        assert seen(got) == w.expected() and in_log_order_per_shard(got)
                after = c.cluster_view("n1")["watch"]
                events, writes = after["events"] - before["events"], after["writes"] - before["writes"]
                assert events == 800
                coalesced = writes <= elapsed + 3
                assert coalesced == one_connection, (one_connection, writes, f"{elapsed:.2f}s")
            finally:
                for s in streams:
                    s.close()
    finally:
        c.stop_all()
