"""Derived indexes across crashes, rebuilds and a server-side embedder, on real
node processes: kill -9 mid-absorption leaves no document missing or
duplicated (checked against the store at the same index, with a control that
plants a watermark the index never absorbed), `reindex` reproduces the same
results, and memories written without an embedding are embedded by a local
OpenAI-compatible server the test runs."""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from raftmem.statemachine import StateMachine
from raftmem.storage import Store
from raftmem.textindex import TextIndex

from .cluster import Cluster, wait_for
from .test_durability import _compacted_everywhere

# idle_batch_ms as it was before the cost bound (5 s): search-idle replicas still absorb within seconds
SLOW_BATCHES = {"batch_ms": 1500, "checkpoint_s": 3600, "lazy_idle_ms": 60_000, "idle_batch_ms": 5000}


def load_while(c: Cluster, stop: threading.Event, seed: int, counter: list[int]) -> None:
    rng = random.Random(seed)
    n = 0
    while not stop.is_set():
        ops: list[dict[str, Any]] = []
        for _ in range(20):
            mid = f"m{rng.randrange(400)}"
            if rng.random() < 0.15:
                ops.append({"op": "delete", "namespace": "crash", "id": mid})
            else:
                ops.append({"op": "put", "namespace": "crash", "id": mid, "body": {
                    "content": f"crash text {mid} {rng.choice(['alpha', 'beta', 'gamma'])} {n}",
                    "tags": [rng.choice(["x", "y"])], "embedding": [rng.random(), rng.random(), 1.0]}})
        node = c.node_ids[1 + n % 2]
        try:
            c.request(node, "POST", "/v1/batch", {"ops": ops}, timeout_s=10)
        except OSError:
            pass
        n += 1
        counter[0] = n


def checks(c: Cluster, node: str) -> list[dict[str, Any]]:
    out = []
    for shard in range(c.shards):
        status, _, body = c.request(node, "GET", f"/v1/admin/indexes/{shard}/check", timeout_s=30)
        assert status == 200, body
        out.append(body)
    return out


def consistent(body: dict[str, Any]) -> bool:
    vectors_ok = all(v["held"] == v["store"] == v["index"] for v in body["vectors"].values())
    return (not body["missing"] and not body["extra"] and not body["stale"] and body["duplicates"] == 0
            and vectors_ok)


def searches(c: Cluster, node: str) -> list[Any]:
    """Results to compare before and after a rebuild: whole answers (every match:
    the namespace holds at most 400), ranked exactly for vectors and time, as sets
    for BM25 (its statistics count deleted documents until tantivy merges them
    away, and a rebuild has none: scores move a little, matches do not)."""
    bodies = [
        {"query": "alpha"}, {"query": "gamma beta"}, {"vector": [0.2, 0.9, 1.0]},
        {"filter": {"tags": "x"}, "order_by": "-updated_at"}, {"query": "crash", "vector": [0.9, 0.1, 1.0]},
    ]
    out: list[Any] = []
    for body in bodies:
        status, _, answer = c.request(node, "POST", "/v1/search", {"namespace": "crash", "limit": 1000,
                                                                     "consistency": "eventual", **body})
        assert status == 200 and not answer["more"], answer
        if "query" in body:
            out.append(sorted(it["id"] for it in answer["items"]))
        else:
            out.append([(it["id"], round(it["score"] or 0.0, 5)) for it in answer["items"]])
    return out


@pytest.fixture
def crash_cluster(tmp_path: Path) -> Iterator[Cluster]:
    c = Cluster(tmp_path, indexing=SLOW_BATCHES)
    try:
        yield c
    finally:
        c.stop_all()


@contextmanager
def loading(c: Cluster, seeds: int = 2) -> Iterator[list[int]]:
    """`load_while` on `seeds` threads while the block runs; yields the batch counter."""
    stop = threading.Event()
    counter = [0]
    writers = [threading.Thread(target=load_while, args=(c, stop, s, counter)) for s in range(seeds)]
    for w in writers:
        w.start()
    try:
        yield counter
    finally:
        stop.set()
        for w in writers:
            w.join()


def _crash_under_load(c: Cluster) -> None:
    with loading(c) as counter:
        wait_for(lambda: counter[0] > 15, 30, "load under way")
        c.kill("n1")  # mid-absorption: batches are 1.5 s apart, so changes wait unabsorbed
        wait_for(lambda: counter[0] > 30, 30, "load goes on without n1")
        c.start("n1")
        c.wait_ready(["n1"])
        wait_for(lambda: counter[0] > 45, 30, "load goes on with n1 back")


def quiesce(c: Cluster) -> None:
    """Until no write lands any more: a batch whose answer the load gave up on
    (a timeout while n1 was down) may still commit a little later."""
    def applied() -> list[int]:
        return [int(s.get("applied_index") or 0) for n in c.node_ids for s in c.cluster_view(n)["shards"]]

    last: list[int] = []
    stable_since = time.monotonic()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = applied()
        if now != last:
            last, stable_since = now, time.monotonic()
        elif time.monotonic() - stable_since > 2.0:
            return
        time.sleep(0.2)
    raise AssertionError("writes kept landing")


def test_a_crash_mid_absorption_leaves_no_document_missing_or_duplicated(crash_cluster: Cluster) -> None:
    c = crash_cluster
    c.start_all()
    _crash_under_load(c)
    quiesce(c)
    for node in c.node_ids:
        for body in checks(c, node):
            assert body["watermark"] >= body["applied"] and consistent(body), (node, body)
            assert body["store"] > 0
    before = searches(c, "n1")
    assert all(before)
    status, _, answer = c.request("n1", "POST", "/v1/admin/reindex?wait=true", timeout_s=120)
    assert status == 200 and answer["shards"] == list(range(c.shards)), answer
    after = searches(c, "n1")
    for i, (a, b) in enumerate(zip(before, after, strict=True)):
        assert a == b, (i, sorted(set(map(str, a)) ^ set(map(str, b)))[:10])
    assert all(consistent(b) for b in checks(c, "n1"))


def test_control_a_watermark_claimed_beyond_what_was_absorbed_loses_documents(crash_cluster: Cluster) -> None:
    """The check above can fail: plant, in a killed node's index, a watermark it
    never absorbed (what the node had applied before the kill: without RocksDB's
    WAL its store comes back at its last flush, and applies the rest again from
    the journal) and the changes in between are missing after the restart."""
    c = crash_cluster
    c.start_all()
    stop = threading.Event()
    counter = [0]
    writer = threading.Thread(target=load_while, args=(c, stop, 9, counter))
    writer.start()
    try:
        wait_for(lambda: counter[0] > 10, 30, "load under way")
    finally:
        stop.set()
        writer.join()
    applied_before = {s["shard"]: s["sm_applied_index"] for s in c.cluster_view("n1")["shards"]}
    c.kill("n1")
    planted = 0
    for shard in range(c.shards):
        directory = c.data_dir("n1") / f"shard-{shard:03d}"
        store = Store(directory)
        applied = max(StateMachine(store, shard).applied_index, applied_before[shard])
        store.close()
        index = TextIndex(directory / "index" / "text", 16_000_000)
        if index.watermark < applied:
            planted += 1
            index.commit(applied)  # the lie: claims every change through `applied`
        index.close()
        del index
        for vectors in (directory / "index").glob("vectors-*.usearch"):
            vectors.unlink()
    assert planted
    c.start("n1")
    c.wait_ready(["n1"])
    results = checks(c, "n1")
    assert not all(consistent(b) for b in results), results
    # And reindex repairs it.
    c.request("n1", "POST", "/v1/admin/reindex?wait=true", timeout_s=120)
    assert all(consistent(b) for b in checks(c, "n1"))


@pytest.mark.parametrize("engines", ["process", "thread"])
def test_a_wiped_node_rebuilds_indexes_that_match_its_store_under_writes(tmp_path: Path, engines: str) -> None:
    """A node whose data is gone catches up by snapshots (every log is
    compacted) while writes rewrite the same keys, with subscriptions small
    enough (2 documents a batch: 8 changes) that the rebuilds' long absorbs cut
    them off. Its indexes must end up equal to its store, at a watermark it
    absorbed (a wiped node under the 1M-memory benchmark stopped its indexes
    with "changes arrive in log order": the resume after a cut replayed changes
    of keys still waiting in its queue).

    With the engines in the node (`thread`) the rebuilds' absorbs hold the
    node's GIL long enough that the feed always outruns them: that run must
    see subscriptions cut off. In the engine host they may keep up; that run
    must see the rebuilds."""
    c = Cluster(tmp_path, indexing={"batch_docs": 2, "checkpoint_s": 3600, "engines": engines},
                raft={"log_compaction_entries": 100, "log_compaction_min_s": 3600})
    stop = threading.Event()
    counter = [0]
    writers = [threading.Thread(target=load_while, args=(c, stop, s, counter)) for s in range(2)]
    try:
        c.start_all()
        for w in writers:
            w.start()
        wait_for(lambda: _compacted_everywhere(c, ["n1", "n2"]), 120, "every log compacted on n1 and n2")
        c.kill("n3")
        c.wipe("n3")
        c.start("n3")
        c.wait_ready(["n3"])
        done = counter[0] + 40
        wait_for(lambda: counter[0] > done, 60, "writes go on while n3 catches up")
    finally:
        stop.set()
        for w in writers:
            w.join()
    try:
        quiesce(c)
        wait_for(lambda: all(b["watermark"] >= b["applied"] for b in checks(c, "n3")), 60, "n3's indexes caught up")
        for body in checks(c, "n3"):
            assert consistent(body) and body["store"] > 0, json.dumps(body)[:1500]
        # Not vacuous: n3 rebuilt from snapshots and (in the node) had subscriptions cut off.
        recoveries = recovery_counts(c, "n3")
        assert recoveries["rebuild"] >= 1 and (recoveries["overflow"] >= 1 or engines == "process"), recoveries
    finally:
        c.stop_all()


def recovery_counts(c: Cluster, node: str) -> dict[str, float]:
    """raftmem_index_recoveries_total summed over shards, by kind."""
    text = c.metrics_text(node)
    out: dict[str, float] = {}
    for kind, value in re.findall(r'^raftmem_index_recoveries_total\{[^}]*kind="([a-z_]+)"[^}]*\} (\S+)$', text, re.M):
        out[kind] = out.get(kind, 0.0) + float(value)
    return out


# -- server-side embeddings --------------------------------------------------------------------
EMBED_DIMS = 16


def hashed_embedding(text: str) -> list[float]:
    """Deterministic bag of words: each word adds 1 to a hashed dimension."""
    vector = [0.0] * EMBED_DIMS
    for word in re.findall(r"[a-z]+", text.lower()):
        vector[int(hashlib.blake2b(word.encode(), digest_size=2).hexdigest(), 16) % EMBED_DIMS] += 1.0
    norm = math.sqrt(sum(x * x for x in vector)) or 1.0
    return [x / norm for x in vector]


class _Embeddings(BaseHTTPRequestHandler):
    calls = 0

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).calls += 1
        data = [{"index": i, "embedding": hashed_embedding(t)} for i, t in enumerate(body["input"])]
        raw = json.dumps({"object": "list", "data": data, "model": body["model"]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *_args: Any) -> None:
        pass


def test_memories_without_an_embedding_are_embedded_by_the_configured_server(tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Embeddings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    c = Cluster(tmp_path, indexing={"embedder": {"url": url, "model": "hashed-bow", "dims": EMBED_DIMS}})
    try:
        c.start_all()
        texts = {"cat": "the cat sat on the mat", "deploy": "the deploy failed at night",
                 "lunch": "lunch with the team on friday"}
        for mid, text in texts.items():
            status, _, body = c.request("n2", "PUT", f"/v1/memories/emb/{mid}", {"content": text})
            assert status in (200, 201), body
        assert _Embeddings.calls >= 3
        status, _, answer = c.request("n3", "POST", "/v1/search", {
            "namespace": "emb", "vector": hashed_embedding("night deploy failed"), "fresh": True, "limit": 3})
        assert status == 200 and answer["items"][0]["id"] == "deploy", answer
        # The agent's own embedding wins over the server's.
        own = [0.0] * EMBED_DIMS
        own[0] = 1.0
        c.request("n1", "PUT", "/v1/memories/emb/own", {"content": "unrelated words", "embedding": own})
        answer = c.request("n1", "POST", "/v1/search", {"namespace": "emb", "vector": own, "fresh": True,
                                                         "limit": 1, "with_embedding": True})[2]
        assert answer["items"][0]["id"] == "own" and answer["items"][0]["embedding"] == own
        # The embedder down: a write that needs it is refused (503), nothing written.
        server.shutdown()
        server.server_close()
        status, _, body = c.request("n1", "PUT", "/v1/memories/emb/late", {"content": "written while it is down"})
        assert status == 503, body
        assert c.request("n1", "GET", "/v1/memories/emb/late")[0] == 404
    finally:
        c.stop_all()
        server.server_close()
    assert time.monotonic() > 0
