"""Watch against real node processes (raw HTTP, as a curl user sees it): a
watch from a token sees exactly the later events, in log order per shard,
filtered; progress notifications; bad input; 410 past retention; a slow
consumer cut off and resumed; resumes across a disconnect, a leader kill, a
node restart and a snapshot install with no gap and no duplicate; a node that
holds no replica of a shard still serves its events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .cluster import Cluster, wait_for
from .feed import (
    Stream,
    Writer,
    fmt,
    identity,
    in_log_order_per_shard,
    resume_positions,
    seen,
    tokens,
)

NS = "feed"
SHARDS = 4
ZERO = {s: 0 for s in range(SHARDS)}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("watch"), shards=SHARDS)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


def _writes(w: Writer, prefix: str, count: int, **body: Any) -> None:
    for i in range(count):
        w.put(f"{prefix}{i}", {"content": i, **body})


def test_a_watch_from_a_token_sees_exactly_the_later_events(cluster: Cluster) -> None:
    w = Writer(cluster, NS + "-from")
    params = {"namespace": w.ns, "progress_ms": 200}
    live = Stream(cluster, "n2", params)  # from now
    try:
        start = tokens(live.wait("the first progress", lambda items: items)[0]["tokens"])
        _writes(w, "a", 6)
        w.delete("a1")
        middle = {a.shard: a.index for a in w.acked}  # where the first batch ended, per shard
        middle = {s: middle.get(s, start[s]) for s in range(SHARDS)}
        _writes(w, "b", 6)
        w.put("a2", {"content": "again"})
        from_zero = Stream(cluster, "n3", {**params, "after": fmt(ZERO)})
        from_middle = Stream(cluster, "n1", {**params, "after": fmt(middle)})
        try:
            everything = w.expected()
            assert seen(live.wait_events(len(everything))) == everything
            assert seen(from_zero.wait_events(len(everything))) == everything
            later = w.expected(middle)
            assert seen(from_middle.wait_events(len(later))) == later
            for stream in (live, from_zero, from_middle):
                assert in_log_order_per_shard(stream.events())
            # Nothing more comes: a progress after the last write, and still the same events.
            last = {a.shard: a.index for a in w.acked}
            from_middle.wait("a progress past the last write", lambda items: any(
                i["type"] == "progress" and all(tokens(i["tokens"])[s] >= x for s, x in last.items())
                for i in items))
            assert seen(from_middle.events()) == later
            # A put says which version it replaced; a record comes with it.
            again = [e for e in live.events() if e["id"] == "a2"][-1]
            assert (again["version"], again["prev_version"], again["record"]["content"]) == (2, 1, "again")
            deleted = next(e for e in live.events() if e["type"] == "delete")
            assert deleted["record"]["content"] == 1 and deleted["version"] == 1
        finally:
            from_zero.close()
            from_middle.close()
    finally:
        live.close()


def test_filters_by_namespace_prefix_agent_and_tag(cluster: Cluster) -> None:
    w1, w2 = Writer(cluster, "filt-a"), Writer(cluster, "filt-b")
    streams = {
        "prefix": Stream(cluster, "n1", {"namespace_prefix": "filt-", "after": fmt(ZERO)}),
        "agent": Stream(cluster, "n2", {"namespace": "filt-a", "agent_id": "al", "after": fmt(ZERO)}),
        "tag": Stream(cluster, "n3", {"tag": "hot", "namespace_prefix": "filt", "after": fmt(ZERO)}),
    }
    try:
        w1.put("x", {"content": 1, "agent_id": "al", "tags": ["hot"]})
        w1.put("y", {"content": 2, "agent_id": "bo"})
        w2.put("z", {"content": 3, "agent_id": "al", "tags": ["hot", "cold"]})
        got = {name: s.wait_events(n) for name, s, n in
               [("prefix", streams["prefix"], 3), ("agent", streams["agent"], 1), ("tag", streams["tag"], 2)]}
        assert sorted(e["id"] for e in got["prefix"]) == ["x", "y", "z"]
        assert [e["id"] for e in got["agent"]] == ["x"]
        assert sorted(e["id"] for e in got["tag"]) == ["x", "z"]
    finally:
        for s in streams.values():
            s.close()


def test_progress_notifications_move_past_writes_the_filter_hides_and_never_go_back(cluster: Cluster) -> None:
    quiet = Stream(cluster, "n1", {"namespace": "nobody-writes-here", "progress_ms": 100})
    try:
        w = Writer(cluster, "noise")
        _writes(w, "n", 8)
        last = {a.shard: a.index for a in w.acked}
        items = quiet.wait("progress past the noise", lambda items: any(
            all(tokens(i["tokens"])[s] >= x for s, x in last.items()) for i in items))
        assert all(i["type"] == "progress" for i in items)
        seq = [tokens(i["tokens"]) for i in items]
        for before, after in zip(seq, seq[1:], strict=False):
            assert all(after[s] >= before[s] for s in before), (before, after)
        # A resume from the last progress replays nothing.
        again = Stream(cluster, "n2", {"namespace": "noise", "after": items[-1]["tokens"], "progress_ms": 100})
        try:
            again.wait("two progress events", lambda got: len(got) >= 2)
            assert again.events() == []
        finally:
            again.close()
    finally:
        quiet.close()


def test_server_sent_events_frame_one_data_line_per_event(cluster: Cluster) -> None:
    w = Writer(cluster, "sse")
    s = Stream(cluster, "n3", {"namespace": "sse", "after": fmt(ZERO)}, sse=True)
    try:
        assert s.headers["Content-Type"].startswith("text/event-stream")
        w.put("a", {"content": "x"})
        s.wait_events(1)
        data = [line for line in s.raw if line.strip()]
        assert all(line.startswith(b"data: {") for line in data), data
    finally:
        s.close()


@pytest.mark.parametrize(("query", "field"), [
    ({"namespace": "a", "colour": "red"}, "fields"),
    ({"after": "0:x"}, "after"),
    ({"after": "12"}, "after"),
    ({"after": f"{SHARDS}:5"}, "after"),  # no such shard
    ({"after": "0:-3"}, "after"),
    ({"namespace_prefix": ".."}, "namespace_prefix"),  # both filters together hold both (test_watch_parts)
    ({"namespace": "bad/name"}, "namespace"),
    ({"progress_ms": "5"}, "progress_ms"),
    ({"progress_ms": "-1"}, "progress_ms"),
    ({"require_leader": "maybe"}, "require_leader"),
])
def test_bad_input_is_a_clear_400_and_the_node_carries_on(cluster: Cluster, query: dict[str, str],
                                                         field: str) -> None:
    s = Stream(cluster, "n1", query)
    assert s.status == 400, s.body
    error = s.body["error"]
    assert error["code"] == "invalid_request" and field in (error.get("field"), *error), error
    status, _, _ = cluster.request("n1", "GET", "/healthz")
    assert status == 200


def test_a_follower_asked_for_the_leader_serves_the_leaders_events(cluster: Cluster) -> None:
    w = Writer(cluster, "lead")
    shard = cluster.shard_of("lead", "k")
    leader = wait_for(lambda: cluster.leader_of(shard), 30, "a leader")
    follower = next(n for n in cluster.node_ids if n != leader)
    s = Stream(cluster, follower, {"namespace": "lead", "after": fmt(ZERO), "require_leader": "true"})
    try:
        w.put("k", {"content": 1})
        w.put("k", {"content": 2})
        assert seen(s.wait_events(2)) == w.expected()
    finally:
        s.close()


# -- clusters of their own ------------------------------------------------------------------
def test_a_resume_from_before_the_retention_is_410_with_the_oldest_token(tmp_path: Path) -> None:
    c = Cluster(tmp_path, shards=1, sections={"watch": {"retention_entries": 40}})
    try:
        c.start_all()
        w = Writer(c, "old")
        first = w.put("k0", {"content": 0})
        for i in range(1, 420):  # past 40 + the trim slack (256) of log indexes
            w.put(f"k{i}", {"content": i})
        s = Stream(c, "n2", {"after": f"0:{first.index}"})
        assert s.status == 410, s.body
        error = s.body["error"]
        assert error["code"] == "compacted"
        oldest = tokens(error["oldest"])[0]
        assert first.index < oldest < w.acked[-1].index
        # From the oldest token the stream works, and starts right after it.
        ok = Stream(c, "n2", {"after": error["oldest"]})
        try:
            got = ok.wait_events(len(w.expected({0: oldest})))
            assert seen(got) == w.expected({0: oldest})
        finally:
            ok.close()
    finally:
        c.stop_all()


@pytest.mark.parametrize("batch_ms", [1000, 0])
def test_changes_that_come_within_batch_ms_go_out_in_one_write(tmp_path: Path, batch_ms: int) -> None:
    """A stream takes the feed's changes at most every `watch.batch_ms`: 40
    sequential writes (an entry each) reach the watcher, whole and in order,
    in about one socket write per batch_ms. Control (0): one write per entry,
    which the same bound refuses unless the writes took half a minute."""
    c = Cluster(tmp_path, shards=2, sections={"watch": {"batch_ms": batch_ms}})
    try:
        c.start_all()
        w = Writer(c, "paced")
        s = Stream(c, "n1", {"namespace": "paced", "after": fmt({0: 0, 1: 0}), "progress_ms": 60_000})
        try:
            s.wait("the first progress", lambda items: items)
            before = c.cluster_view("n1")["watch"]
            began = time.monotonic()
            _writes(w, "k", 40)
            elapsed = time.monotonic() - began
            got = s.wait_events(len(w.expected()))
            assert seen(got) == w.expected() and in_log_order_per_shard(got)
            after = c.cluster_view("n1")["watch"]
            events, writes = after["events"] - before["events"], after["writes"] - before["writes"]
            assert events == 40
            assert after["fanout"]["following"] == 1 and after["fanout"]["resyncs"] == 0
            # The first at once, then one a second of writing; one more for a
            # follower applying the last entries later, one for slack.
            coalesced = writes <= elapsed + 3
            assert coalesced == (batch_ms > 0), (writes, events, f"{elapsed:.2f}s")
        finally:
            s.close()
    finally:
        c.stop_all()


def test_a_slow_consumer_is_cut_off_with_overflow_and_resumes_without_gap(tmp_path: Path) -> None:
    c = Cluster(tmp_path, shards=2, sections={"watch": {"buffer_events_max": 16}})
    try:
        c.start_all()
        w = Writer(c, "slow")
        s = Stream(c, "n1", {"namespace": "slow", "after": fmt({0: 0, 1: 0})}, receive_buffer=8192)
        count, blob = 200, "x" * 50_000
        # Read nothing while the writes fill the sockets' buffers and the stream's
        # queue (16 entries): the reader thread waits for the lock.
        def cut_off() -> bool:
            return bool(c.cluster_view("n1")["watch"]["ended"].get("overflow", 0) >= 1)

        i = 0
        with s._lock:
            while not cut_off():
                w.put(f"m{i}", {"content": f"{i}-{blob}"})
                i += 1
                assert i < count, "never cut off"
        for j in range(i, count):  # the rest after it was cut off
            w.put(f"m{j}", {"content": f"{j}-{blob}"})
        items = s.wait("the stream to end", lambda _got: s.ended)
        s.close()
        assert items[-1]["type"] == "overflow", items[-1]
        first = s.events()
        assert 0 < len(first) < count and in_log_order_per_shard(first)
        resumed = Stream(c, "n2", {"namespace": "slow", "after": items[-1]["tokens"]})
        try:
            rest = resumed.wait_events(len(w.expected(tokens(items[-1]["tokens"]))))
            together = [identity(e) for e in first + rest]
            assert len(together) == len(set(together)) == count
            assert sorted(seen(first + rest)) == sorted(w.expected())
        finally:
            resumed.close()
    finally:
        c.stop_all()


def test_resumes_across_a_disconnect_a_leader_kill_and_a_restart_with_no_gap_or_duplicate(tmp_path: Path) -> None:
    c = Cluster(tmp_path, shards=2)
    try:
        c.start_all()
        w = Writer(c, "life")
        received: list[dict[str, Any]] = []
        pos = {0: 0, 1: 0}

        def session(node: str, writes: Any, complete: bool = True) -> Stream:
            """A watch from `pos` while `writes` run; when `complete`, until a
            progress past every acknowledged write, then a disconnect."""
            nonlocal pos
            s = Stream(c, node, {"namespace": "life", "after": fmt(pos), "progress_ms": 100})
            writes()
            if complete:
                last = {a.shard: a.index for a in w.acked}
                s.wait("a progress past the writes", lambda got: any(
                    i["type"] == "progress" and all(tokens(i["tokens"])[sh] >= x for sh, x in last.items())
                    for i in got))
                s.close()
            return s

        def absorb(s: Stream) -> None:
            nonlocal pos
            items = s.snapshot()
            assert all(tokens(e["token"]).popitem()[1] > pos[tokens(e["token"]).popitem()[0]]
                       for e in s.events()), "an event at or before the token resumed from"
            received.extend(i for i in items if i["type"] != "progress")
            pos = {sh: max(pos[sh], resume_positions(items).get(sh, 0)) for sh in pos}

        absorb(session("n1", lambda: [w.put(f"a{i}", {"content": i}) for i in range(5)]))
        # The leader of shard 0 is killed while a watch runs on another node.
        leader = wait_for(lambda: c.leader_of(0), 30, "a leader of shard 0")
        other = next(n for n in c.node_ids if n != leader)

        def kill_leader() -> None:
            c.kill(leader)
            for i in range(5):
                w.put(f"b{i}", {"content": i}, node=other)

        absorb(session(other, kill_leader))
        c.start(leader)
        c.wait_ready([leader])
        # The node serving a watch is killed in the middle; writes go on elsewhere;
        # it restarts, and the watch resumes there from what it had.
        s = session(other, lambda: [w.put(f"c{i}", {"content": i}) for i in range(3)], complete=False)
        s.wait_events(3)
        c.kill(other)
        s.wait("the stream to break", lambda _got: s.ended)
        s.close()
        absorb(s)
        for i in range(3, 6):
            w.put(f"c{i}", {"content": i}, node=leader)
        c.start(other)
        c.wait_ready([other])
        absorb(session(other, lambda: [w.put(f"d{i}", {"content": i}) for i in range(3)]))
        got = [identity(e) for e in received]
        assert len(got) == len(set(got)), ("a duplicate event", [g for g in got if got.count(g) > 1])
        assert sorted(seen(received)) == sorted(w.expected())
    finally:
        c.stop_all()


def test_a_watch_follows_a_replica_through_a_snapshot_install(tmp_path: Path) -> None:
    c = Cluster(tmp_path, shards=2, raft={"log_compaction_entries": 100, "log_compaction_min_s": 3600},
                debug={"slow_snapshot_disk": True})
    try:
        c.start_all()
        w = Writer(c, "snap")
        _writes(w, "a", 5)
        c.stop("n3")
        i = 0
        while not all((s["log_first_index"] or 0) > 1 for n in ("n1", "n2") for s in c.cluster_view(n)["shards"]):
            w.put(f"b{i}", {"content": i}, node="n1")  # past the leaders' log compaction: n3 needs snapshots
            i += 1
            assert i < 3000, "the logs were never compacted"
        c.start("n3")
        wait_for(lambda: c.request("n3", "GET", "/healthz", timeout_s=2)[0] == 200, 60, "n3 answering")
        s = Stream(c, "n3", {"namespace": "snap", "after": fmt({0: 0, 1: 0})})
        try:
            everything = w.expected()
            try:
                got = s.wait_events(len(everything), timeout_s=120)
            except AssertionError:
                raise AssertionError((s.ended, s.snapshot()[-2:], c.log_text("n3")[-3000:])) from None
            assert seen(got) == everything
            assert in_log_order_per_shard(got)
            installs = sum(sum(sh["snapshot_installs"].values()) for sh in c.cluster_view("n3")["shards"])
            assert installs >= 1
        finally:
            s.close()
    finally:
        c.stop_all()


def test_a_node_without_a_replica_of_a_shard_serves_its_events(tmp_path: Path) -> None:
    c = Cluster(tmp_path, nodes=4, shards=4)
    try:
        c.start_all()
        missing = {n: [s for s in range(4) if n not in c.cluster_view(n)["shards"][s]["replicas"]]
                   for n in c.node_ids}
        node = next(n for n, shards in missing.items() if shards)
        w = Writer(c, "far")
        for i in range(16):
            w.put(f"k{i}", {"content": i})
        assert {a.shard for a in w.acked} & set(missing[node]), "no write on a shard the node lacks"
        s = Stream(c, node, {"namespace": "far", "after": fmt({s: 0 for s in range(4)})})
        try:
            assert seen(s.wait_events(16)) == w.expected()
            w.put("late", {"content": "live"})  # and live, fetched as it commits
            assert seen(s.wait_events(17)) == w.expected()
        finally:
            s.close()
    finally:
        c.stop_all()


def test_the_watchers_cap_answers_429(tmp_path: Path) -> None:
    c = Cluster(tmp_path, shards=1, sections={"watch": {"watchers_max": 2}})
    try:
        c.start_all()
        open_ = [Stream(c, "n1", {}) for _ in range(2)]
        try:
            refused = Stream(c, "n1", {})
            assert refused.status == 429 and refused.body["error"]["code"] == "overloaded"
        finally:
            for s in open_:
                s.close()
        # Closed streams give their places back (noticed within a second).
        wait_for(lambda: c.cluster_view("n1")["watch"]["open"] == 0, 10, "the streams to end")
        again = Stream(c, "n1", {})
        assert again.status == 200
        again.close()
    finally:
        c.stop_all()


def test_a_stopping_node_ends_its_streams_with_an_event_saying_so(tmp_path: Path) -> None:
    c = Cluster(tmp_path, shards=1)
    try:
        c.start_all()
        s = Stream(c, "n2", {})
        s.wait("the first progress", lambda items: items)
        started = time.monotonic()
        c.stop("n2")
        items = s.wait("the end", lambda _items: s.ended)
        s.close()
        assert items[-1]["type"] == "error" and items[-1]["code"] == "unavailable" and "tokens" in items[-1]
        assert time.monotonic() - started < 10
    finally:
        c.stop_all()


def test_control_a_server_that_drops_an_event_fails_the_same_check(tmp_path: Path) -> None:
    """debug.unsafe_watch_drop leaves out one event in a hundred: the check of
    the first test (exactly the acknowledged writes) sees the gap."""
    c = Cluster(tmp_path, shards=1, debug={"unsafe_watch_drop": True})
    try:
        c.start_all()
        w = Writer(c, "drop")
        _writes(w, "k", 120)
        s = Stream(c, "n1", {"namespace": "drop", "after": "0:0", "progress_ms": 100})
        try:
            last = w.acked[-1].index
            s.wait("a progress past the writes", lambda items: any(
                i["type"] == "progress" and tokens(i["tokens"])[0] >= last for i in items))
            got = seen(s.events())
            assert got != w.expected()
            assert len(got) == 119 and set(got) < set(w.expected())
        finally:
            s.close()
    finally:
        c.stop_all()


async def test_a_watch_keeps_up_with_32_concurrent_writers(cluster: Cluster) -> None:
    """Group commit packs several writes into an entry, and the stream's queue
    is rarely empty: every acknowledged write still arrives, exactly once.
    (Before its fix, a writer that found its progress due with a non-empty
    queue spun without sending: this stream stalled after a few hundred events.)"""
    from raftmem.client import AsyncClient

    stream = await asyncio.to_thread(Stream, cluster, "n2", {"namespace": "crowd", "progress_ms": 100})
    acked: list[tuple[str, str, str, int]] = []
    try:
        async with AsyncClient([f"http://127.0.0.1:{cluster.http[n]}" for n in cluster.node_ids]) as client:

            async def writer(w: int) -> None:
                for n in range(25):
                    body = await client.put("crowd", f"k{w}-{n % 5}", n)
                    acked.append((body["token"], "put", body["id"], body["version"]))

            await asyncio.gather(*(writer(w) for w in range(32)))
        got = await asyncio.to_thread(stream.wait_events, len(acked), 60)
        assert sorted(seen(got)) == sorted(acked)
        assert in_log_order_per_shard(got)
    finally:
        await asyncio.to_thread(stream.close)


def test_head_of_a_watch_is_405_and_the_connection_goes_on(tmp_path: Path) -> None:
    """A watch's body is a stream: HEAD is refused (405, Allow: GET) and
    nothing follows its head on the connection, which serves the next
    request."""
    import http.client

    c = Cluster(tmp_path, shards=2)
    try:
        c.start_all()
        conn = http.client.HTTPConnection("127.0.0.1", c.http["n1"], timeout=10)
        try:
            conn.request("HEAD", "/v1/watch?namespace=h")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 405 and "GET" in (resp.getheader("Allow") or "")
            conn.request("GET", "/healthz")
            assert conn.getresponse().status == 200
        finally:
            conn.close()
    finally:
        c.stop_all()
