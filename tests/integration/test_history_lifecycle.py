"""History and the lifecycle against real node processes, real time: versions
after overwrites, deletes, expiry, restarts and a snapshot install; a sliding
TTL kept alive by reads on followers (and its control, a fixed TTL read the
same way); reads counted without a log entry each; a pruning policy that
never removes a memory read after its cut-off (and its control, with access
tracking off, which does)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .cluster import Cluster, wait_for
from .feed import Stream, Writer

HISTORY = {"history": {"versions_max": 4}}


def _history(c: Cluster, node: str, ns: str, mid: str, level: str = "linearizable") -> list[dict[str, Any]]:
    status, _, body = c.request(node, "GET", f"/v1/memories/{ns}/{mid}/history?consistency={level}")
    assert status in (200, 404), body
    return list(body["versions"]) if status == 200 else []


def _exists(c: Cluster, ns: str, mid: str) -> bool:
    """Without reading it (a read is an access: it would slide a TTL, or keep it from pruning)."""
    status, _, body = c.request("n1", "GET", f"/v1/memories/{ns}?consistency=linearizable")
    assert status == 200, body
    return mid in [m["id"] for m in body["items"]]


def _brief(versions: list[dict[str, Any]]) -> list[tuple[str, int, Any, str | None]]:
    return [(v["event"], v["version"], v["value"], v["actor"]) for v in versions]


def test_history_after_overwrites_deletes_expiry_restarts_and_a_snapshot_install(tmp_path: Path) -> None:
    c = Cluster(tmp_path, shards=2, raft={"log_compaction_entries": 100, "log_compaction_min_s": 3600},
                sections=HISTORY)
    try:
        c.start_all()
        w = Writer(c, "hist")
        w.put("m", {"content": "one", "actor": "planner"})
        w.put("m", {"content": "two", "actor": "worker"})
        status, _, _ = c.request("n2", "DELETE", "/v1/memories/hist/m?actor=janitor")
        assert status == 200
        w.put("m", {"content": "short", "ttl_s": 1})
        wait_for(lambda: _history(c, "n1", "hist", "m")[0]["event"] == "expire", 30, "the expiry in the history")
        expected = [("expire", 1, None, None), ("put", 1, "short", None), ("delete", 2, None, "janitor"),
                    ("put", 2, "two", "worker")]  # four versions kept: the first is gone
        assert _brief(_history(c, "n1", "hist", "m")) == expected
        status, _, body = c.request("n1", "GET", "/v1/memories/hist/never/history")
        assert status == 404 and body["error"]["code"] == "not_found"
        status, _, body = c.request("n1", "GET", "/v1/memories/hist/m/history?colour=red")
        assert status == 400
        # Every node restarts: the history is on disk with the data.
        for node in c.node_ids:
            c.stop(node)
        for node in c.node_ids:
            c.start(node)
        c.wait_ready()
        assert _brief(_history(c, "n2", "hist", "m")) == expected
        # n3 loses everything and catches up by snapshot: the history comes with it.
        c.stop("n3")
        c.wipe("n3")
        i = 0
        while not all((s["log_first_index"] or 0) > 1 for n in ("n1", "n2") for s in c.cluster_view(n)["shards"]):
            w.put(f"filler{i}", {"content": i}, node="n1")
            i += 1
            assert i < 3000
        c.start("n3")
        c.wait_ready(["n3"])
        wait_for(lambda: _brief(_history(c, "n3", "hist", "m", "eventual")) == expected, 60,
                 "n3's own replica holding the history")
        assert sum(sum(s["snapshot_installs"].values()) for s in c.cluster_view("n3")["shards"]) >= 1
    finally:
        c.stop_all()


def _metric(c: Cluster, node: str, series: str) -> float:
    text = c.metrics_text(node)
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(series + " "))


def _get(c: Cluster, node: str, ns: str, mid: str, level: str = "eventual", after: str = "") -> tuple[int, Any]:
    # A parameter is left out rather than sent empty (an empty one is a 400).
    status, _, body = c.request(node, "GET", f"/v1/memories/{ns}/{mid}?consistency={level}"
                                + (f"&after={after}" if after else ""))
    return status, body


def test_reads_on_followers_keep_a_sliding_ttl_alive_and_a_fixed_one_expires(tmp_path: Path) -> None:
    c = Cluster(tmp_path, shards=2, sections={"lifecycle": {"touch_flush_ms": 100, "ttl_refresh_fraction": 0.5}})
    try:
        c.start_all()
        w = Writer(c, "ttl")
        sliding = w.put("sliding", {"content": 1, "ttl_s": 2, "ttl_refresh_on_read": True})
        w.put("fixed", {"content": 2, "ttl_s": 2})
        leader = wait_for(lambda: c.leader_of(sliding.shard), 30, "a leader")
        followers = [n for n in c.node_ids if n != leader]
        started = time.monotonic()
        while time.monotonic() - started < 5.0:  # well past the TTL, reading every 0.4 s
            for mid in ("sliding", "fixed"):
                _get(c, followers[0], "ttl", mid)
            time.sleep(0.4)
        status, body = _get(c, followers[1], "ttl", "sliding", "linearizable")
        assert status == 200, "reads kept it alive past its 2 s TTL"
        assert body["access_count"] >= 5 and body["expires_at"] > body["updated_at"] + 2000
        assert not _exists(c, "ttl", "fixed")  # control: read as often, not sliding
        # Reads stop: it expires within its TTL plus a flush and the reaper's period.
        stopped = time.monotonic()
        wait_for(lambda: not _exists(c, "ttl", "sliding"), 10, "the sliding TTL to run out")
        assert time.monotonic() - stopped < 2 + 0.1 + 1 + 1.5
    finally:
        c.stop_all()


def test_reads_are_counted_without_a_log_entry_each(tmp_path: Path) -> None:
    c = Cluster(tmp_path, shards=1, sections={"lifecycle": {"touch_flush_ms": 500}})
    try:
        c.start_all()
        w = Writer(c, "count")
        token = w.put("hot", {"content": 1}).token
        before = c.cluster_view("n1")["shards"][0]["commit_index"]
        for i in range(60):
            assert _get(c, c.node_ids[i % 3], "count", "hot", "session", token)[0] == 200
        wait_for(lambda: _get(c, "n1", "count", "hot", "linearizable")[1]["access_count"] >= 60, 15,
                 "60 reads counted")
        entries = c.cluster_view("n1")["shards"][0]["commit_index"] - before
        assert entries < 20, f"{entries} log entries for 60 reads"
        body = _get(c, "n2", "count", "hot", "linearizable")[1]
        assert body["last_accessed_at"] >= body["updated_at"] and body["version"] == 1
    finally:
        c.stop_all()


RUN_EVERY_MS = 500


def _pruning_cluster(tmp_path: Path, track_access: bool) -> Cluster:
    return Cluster(tmp_path, shards=2, sections={"lifecycle": {
        "track_access": track_access, "touch_flush_ms": 5000,  # reads wait for the run to collect them
        "run_every_ms": RUN_EVERY_MS,
        "policies": [{"name": "idle-3s", "namespace": "prune", "not_accessed_for": "3s"}],
    }})


def _read_one_keep_the_other_idle(c: Cluster, w: Writer) -> tuple[bool, bool]:
    """`read` is read on followers every 0.5 s; `idle` never. Returns (read kept, idle kept) once
    `idle` is gone and every shard's leader has run its policies since (two runs of
    `run_every_ms`: the two memories may be on different shards, whose runs do not
    line up), or after 12 s."""
    for mid in ("read", "idle"):
        w.put(mid, {"content": mid})
    watch = Stream(c, "n1", {"namespace": "prune", "progress_ms": 200})
    try:
        deadline = time.monotonic() + 12
        settled_at = None
        while time.monotonic() < deadline:
            for node in ("n2", "n3"):
                _get(c, node, "prune", "read")
            if settled_at is None and not _exists(c, "prune", "idle"):
                settled_at = time.monotonic() + 2 * RUN_EVERY_MS / 1000
            if settled_at is not None and time.monotonic() >= settled_at:
                break
            time.sleep(0.25)
        kept = (_exists(c, "prune", "read"), _exists(c, "prune", "idle"))
        if not kept[1]:
            expired = watch.wait("the expire event", lambda items: any(i["type"] == "expire" for i in items))
            event = next(i for i in expired if i["type"] == "expire")
            assert event["id"] == "idle" or not kept[0]
        return kept
    finally:
        watch.close()


def test_pruning_never_removes_a_memory_read_after_the_cutoff(tmp_path: Path) -> None:
    c = _pruning_cluster(tmp_path, track_access=True)
    try:
        c.start_all()
        w = Writer(c, "prune")
        assert _read_one_keep_the_other_idle(c, w) == (True, False)
        versions = _history(c, "n1", "prune", "idle")
        assert (versions[0]["event"], versions[0]["actor"]) == ("expire", "policy:idle-3s")
        # Reported per node and in a dry run of the admin endpoint.
        removed = sum(c.cluster_view(n)["lifecycle"]["policies"]["idle-3s"]["removed"] for n in c.node_ids)
        assert removed >= 1
        scraped = sum(_metric(c, n, 'raftmem_lifecycle_pruned_total{policy="idle-3s"}') for n in c.node_ids)
        assert scraped == removed
        w.put("later", {"content": 1})
        status, _, dry = c.request("n2", "POST", "/v1/admin/lifecycle/run?dry_run=true")
        assert status == 200 and dry["dry_run"] is True
        assert _exists(c, "prune", "later")
        status, _, bad = c.request("n2", "POST", "/v1/admin/lifecycle/run?policy=nope")
        assert status == 400, bad
    finally:
        c.stop_all()


def test_control_with_access_tracking_off_the_read_memory_is_pruned_too(tmp_path: Path) -> None:
    c = _pruning_cluster(tmp_path, track_access=False)
    try:
        c.start_all()
        assert _read_one_keep_the_other_idle(c, Writer(c, "prune")) == (False, False)
    finally:
        c.stop_all()
