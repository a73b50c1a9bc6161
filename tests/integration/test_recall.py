"""Recall on a real 3-node cluster: POST /v1/search over real tantivy and usearch
indexes, fed by real Raft groups. Ranking, filters against a reference
evaluation, hybrid fusion, namespace boundaries, tiers, fresh searches under
load, pagination, summaries, bad input."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_search_filters import filters_strategy, ref_match

from .cluster import Cluster, wait_for

INDEXING = {
    "batch_ms": 100,
    "lazy_idle_ms": 1500,
    "summary_refresh_ms": 1000,
    "tiers": [{"tags": ["critical", "lock"], "tier": "eager"}, {"tags": ["slow"], "tier": "lazy"}],
}
ALL_LEVELS_FRESH = {"fresh": True}


@pytest.fixture(scope="module")
def rc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("recall"), indexing=INDEXING)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


def search(c: Cluster, node: str, body: dict[str, Any]) -> tuple[int, dict[str, str], Any]:
    return c.request(node, "POST", "/v1/search", body)


def ok_search(c: Cluster, node: str, body: dict[str, Any]) -> dict[str, Any]:
    status, _, answer = search(c, node, body)
    assert status == 200, answer
    return dict(answer)


def ids(answer: dict[str, Any]) -> list[str]:
    return [item["id"] for item in answer["items"]]


def load(c: Cluster, ns: str, docs: list[tuple[str, dict[str, Any]]]) -> None:
    for start in range(0, len(docs), 100):
        ops = [{"op": "put", "namespace": ns, "id": mid, "body": body} for mid, body in docs[start:start + 100]]
        status, _, answer = c.request("n1", "POST", "/v1/batch", {"ops": ops})
        assert status == 200 and all(r["status"] in (200, 201) for r in answer["results"]), answer


# -- ranking ------------------------------------------------------------------------------
FILLER = ("agent memory note session review deploy cache latency queue worker retry plan task result "
          "user question answer context tool call error budget").split()


def test_the_relevant_document_ranks_first_for_term_queries(rc: Cluster) -> None:
    rng = random.Random(7)
    topics = [f"zeta{i}x" for i in range(40)]
    docs = []
    for i in range(400):
        words = [rng.choice(FILLER) for _ in range(rng.randint(8, 30))]
        if i < len(topics):
            words.insert(rng.randrange(len(words)), topics[i])
        docs.append((f"d{i}", {"content": " ".join(words), "agent_id": f"a{i % 4}"}))
    # Distractors: the topic word once in a long document, the target has it in a short one.
    for i in range(10):
        long_text = " ".join([rng.choice(FILLER) for _ in range(200)] + [topics[i]])
        docs.append((f"long{i}", {"content": long_text}))
    load(rc, "rank", docs)
    for i, topic in enumerate(topics):
        answer = ok_search(rc, "n2", {"namespace": "rank", "query": topic, "limit": 3, **ALL_LEVELS_FRESH})
        assert ids(answer)[0] == f"d{i}", (topic, answer["items"][:2])
        assert answer["items"][0]["score"] > 0
    # Two rare terms beat one; a term nobody used finds nothing.
    both = ok_search(rc, "n3", {"namespace": "rank", "query": f"{topics[1]} {topics[2]} deploy", "limit": 2})
    assert set(ids(both)) == {"d1", "d2"}
    assert ids(ok_search(rc, "n1", {"namespace": "rank", "query": "qqqnothing"})) == []
    # Scores compare across shards: the best match of a shard-spread query is the same from every node.
    orders = {tuple(ids(ok_search(rc, n, {"namespace": "rank", "query": "zeta3x deploy", "limit": 5})))
              for n in rc.node_ids}
    assert len(orders) == 1


# -- filters ----------------------------------------------------------------------------------
FILTER_DOCS = [
    (f"f{i}", {
        "agent_id": ["a1", "a2", "a3"][i % 3],
        "kind": ["episodic", "fact", None][i % 3 if i % 5 else 2],
        "tags": [t for j, t in enumerate(["x", "y", "z", "critical"]) if (i >> j) & 1],
        "content": {"n": [1, 2.5, -3, True, None, 0][i % 6], "s": ["deploy", "cache", "alpha", ""][i % 4],
                    "l": list(range(i % 4))} if i % 7 else ["deploy", "cache"][i % 2],
        "metadata": {"p": i % 4} if i % 2 else {"q": "alpha"},
    })
    for i in range(60)
]


@pytest.fixture(scope="module")
def filter_docs(rc: Cluster) -> dict[str, dict[str, Any]]:
    load(rc, "filt", FILTER_DOCS)
    # Fresh on every node: the filter test searches at the default level (the
    # eager tier's guarantee only) on any of them.
    for node in rc.node_ids:
        answer = ok_search(rc, node, {"namespace": "filt", "limit": 1000, **ALL_LEVELS_FRESH})
        assert len(answer["items"]) == len(FILTER_DOCS)
    return {item["id"]: item for item in answer["items"]}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=filters_strategy, node=st.sampled_from(["n1", "n2", "n3"]))
def test_filters_with_every_operator_match_a_reference_evaluation(
    rc: Cluster, filter_docs: dict[str, dict[str, Any]], raw: dict[str, Any], node: str,
) -> None:
    expected = sorted(mid for mid, rec in filter_docs.items() if ref_match(raw, rec))
    answer = ok_search(rc, node, {"namespace": "filt", "filter": raw, "limit": 1000})
    assert sorted(ids(answer)) == expected, raw


def test_a_filtered_text_search_ranks_only_matches(rc: Cluster, filter_docs: dict[str, dict[str, Any]]) -> None:
    answer = ok_search(rc, "n2", {"namespace": "filt", "query": "deploy", "filter": {"agent_id": {"$in": ["a1", "a2"]},
                                  "tags": "z"}, "limit": 100})
    assert ids(answer)
    expected = {m for m, r in filter_docs.items() if r["agent_id"] in ("a1", "a2") and "z" in r["tags"]
                and "deploy" in str(r["content"])}
    assert set(ids(answer)) == expected


# -- hybrid ----------------------------------------------------------------------------------
def test_hybrid_search_fuses_the_two_rankings_by_reciprocal_rank(rc: Cluster) -> None:
    docs = [
        ("h0", {"content": "rollback rollback rollback plan", "embedding": [0.0, 1.0, 0.0]}),
        ("h1", {"content": "rollback plan for the deploy", "embedding": [0.9, 0.1, 0.0]}),
        ("h2", {"content": "a note about caches", "embedding": [1.0, 0.0, 0.0]}),
        ("h3", {"content": "rollback once in a long sentence about many other things entirely",
                "embedding": [0.7, 0.7, 0.0]}),
    ]
    load(rc, "hyb", docs)
    base = {"namespace": "hyb", "limit": 10, **ALL_LEVELS_FRESH}
    text = ids(ok_search(rc, "n1", {**base, "query": "rollback"}))
    vector = ids(ok_search(rc, "n1", {**base, "vector": [1.0, 0.0, 0.0]}))
    fused = ok_search(rc, "n2", {**base, "query": "rollback", "vector": [1.0, 0.0, 0.0]})
    expected: dict[str, float] = {}
    for ranking in (text, vector):
        for rank, mid in enumerate(ranking, start=1):
            expected[mid] = expected.get(mid, 0.0) + 1 / (60 + rank)
    assert ids(fused) == sorted(expected, key=lambda m: (-expected[m], m))
    for item in fused["items"]:
        assert item["score"] == pytest.approx(expected[item["id"]])
    assert "embedding" not in fused["items"][0]
    with_vec = ok_search(rc, "n2", {**base, "vector": [1.0, 0.0, 0.0], "with_embedding": True, "limit": 1})
    assert with_vec["items"][0]["embedding"] == [1.0, 0.0, 0.0]


# -- namespaces ----------------------------------------------------------------------------------
def test_a_namespace_prefix_matches_on_label_boundaries_only(rc: Cluster) -> None:
    for ns in ("team-a", "team-a.reviews", "team-a.reviews.old", "team-ab", "team-a-b", "team"):
        assert rc.request("n1", "PUT", f"/v1/memories/{ns}/m", {"content": f"boundary probe {ns}"})[0] in (200, 201)
    answer = ok_search(rc, "n3", {"namespace_prefix": "team-a", "query": "boundary probe", "limit": 50,
                                  **ALL_LEVELS_FRESH})
    assert sorted(item["namespace"] for item in answer["items"]) == ["team-a", "team-a.reviews", "team-a.reviews.old"]
    exact = ok_search(rc, "n3", {"namespace": "team-a", "query": "boundary probe", "limit": 50})
    assert [item["namespace"] for item in exact["items"]] == ["team-a"]
    status, _, body = rc.request("n2", "GET", "/v1/namespaces?prefix=team-a")
    assert status == 200 and body["namespaces"] == ["team-a", "team-a.reviews", "team-a.reviews.old"]
    body = rc.request("n2", "GET", "/v1/namespaces?prefix=team-a&max_depth=2")[2]
    assert body["namespaces"] == ["team-a", "team-a.reviews"]
    body = rc.request("n2", "GET", "/v1/namespaces?prefix=team-a.*&suffix=old")[2]
    assert body["namespaces"] == ["team-a.reviews.old"]
    body = rc.request("n2", "GET", "/v1/namespaces?prefix=team-a&limit=1&offset=1")[2]
    assert body == {"namespaces": ["team-a.reviews"], "more": True}
    assert rc.request("n2", "GET", "/v1/namespaces?prefix=team")[2]["namespaces"] == ["team"]


# -- tiers ---------------------------------------------------------------------------------------------
def _write_then_search(c: Cluster, ns: str, mid: str, tags: list[str], writer: str, reader: str,
                       level: dict[str, Any]) -> bool:
    word = f"w{mid.replace('-', '')}q"
    status, _, body = c.request(writer, "PUT", f"/v1/memories/{ns}/{mid}", {"content": word, "tags": tags})
    assert status in (200, 201), body
    return mid in ids(ok_search(c, reader, {"namespace": ns, "query": word, **level}))


def test_an_eager_write_is_searchable_as_soon_as_it_is_acknowledged(rc: Cluster) -> None:
    """Control: the same with batched writes misses some (so the check can fail)."""
    eager_misses = sum(not _write_then_search(rc, "tier-e", f"e{i}", ["critical"], rc.node_ids[i % 3],
                                              rc.node_ids[(i + 1) % 3], {}) for i in range(20))
    batched_misses = sum(not _write_then_search(rc, "tier-e", f"b{i}", [], rc.node_ids[i % 3],
                                                rc.node_ids[(i + 1) % 3], {}) for i in range(20))
    assert eager_misses == 0
    assert batched_misses > 0


def test_a_batched_write_is_searchable_within_its_bound(rc: Cluster) -> None:
    for i in range(5):
        word = f"batchbound{i}q"
        rc.request("n1", "PUT", f"/v1/memories/tier-b/m{i}", {"content": word})
        started = time.monotonic()
        wait_for(lambda w=word: ids(ok_search(rc, "n2", {"namespace": "tier-b", "query": w,
                                                          "consistency": "eventual"})), 5, word)
        # batch_ms (0.1 s) plus replication, the request and this machine's noise
        assert time.monotonic() - started < 1.5


def test_a_lazy_write_waits_for_idle_or_a_fresh_search(rc: Cluster) -> None:
    eventual = {"consistency": "eventual"}
    assert not _write_then_search(rc, "tier-l", "l1", ["slow"], "n1", "n1", eventual)
    assert "l1" in ids(ok_search(rc, "n1", {"namespace": "tier-l", "query": "wl1q", **ALL_LEVELS_FRESH}))
    # Another lazy one: while the shard keeps changing it waits; once idle it is absorbed.
    shard = rc.shard_of("tier-l", "l2")
    same_shard = [f"busy{i}" for i in range(2000) if rc.shard_of("tier-l", f"busy{i}") == shard][:12]
    assert not _write_then_search(rc, "tier-l", "l2", ["slow"], "n2", "n2", eventual)
    for mid in same_shard:
        rc.request("n2", "PUT", f"/v1/memories/tier-l/{mid}", {"content": "keeps the shard busy"})
        assert "l2" not in ids(ok_search(rc, "n2", {"namespace": "tier-l", "query": "wl2q", **eventual}))
        time.sleep(0.2)  # a write every 0.2 s: never idle for lazy_idle_ms (1.5 s)
    wait_for(lambda: "l2" in ids(ok_search(rc, "n2", {"namespace": "tier-l", "query": "wl2q", **eventual})),
             10, "the lazy write absorbed once idle")


# -- freshness under load -------------------------------------------------------------------------
def test_fresh_searches_see_every_write_acknowledged_before_they_were_sent(rc: Cluster) -> None:
    acked: list[tuple[float, str]] = []
    tokens: dict[str, tuple[str, int]] = {}  # id -> its write's token: (shard, index)
    stop = threading.Event()
    lock = threading.Lock()

    def writer(w: int) -> None:
        n = 0
        # At most 4 x 240 writes: every one fits in the search's page of 1,000
        # (the newest first: past it, the oldest acknowledged ones would fall off).
        while not stop.is_set() and n < 240:
            mid = f"w{w}-{n}"
            status, headers, _ = rc.request(rc.node_ids[w % 3], "PUT", f"/v1/memories/fresh/{mid}",
                                            {"content": f"fresh load {mid}", "tags": ["load"]})
            if status in (200, 201):
                with lock:
                    acked.append((time.monotonic(), mid))
                    shard, index = headers["X-Raftmem-Token"].split(":")
                    tokens[mid] = (shard, int(index))
            n += 1

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    checks = 0
    try:
        # 6 s of load, and at least 5 searches however slow the machine is (a
        # fixed window alone did 4 on a starved machine), within a minute.
        deadline, latest = time.monotonic() + 6, time.monotonic() + 60
        while (time.monotonic() < deadline or checks < 5) and time.monotonic() < latest:
            sent = time.monotonic()
            with lock:
                before = {mid for at, mid in acked if at < sent}
            answer = ok_search(rc, rc.node_ids[checks % 3], {"namespace": "fresh", "filter": {"tags": "load"},
                                                             "limit": 1000, **ALL_LEVELS_FRESH})
            assert answer["index_lag"]["entries"] == 0 and not answer["more"]
            shards = answer["index_lag"]["shards"]
            assert all(part["at"] >= part["barrier"] for part in shards.values()), shards
            # The barrier of each shard covers every write acknowledged before the search was sent.
            with lock:
                uncovered = [(mid, tokens[mid]) for mid in before if tokens[mid][1] > shards[tokens[mid][0]]["barrier"]]
            assert not uncovered, (uncovered[:5], shards)
            missing = before - set(ids(answer))
            by_shard: dict[int, list[str]] = {}
            for mid in sorted(missing):
                by_shard.setdefault(rc.shard_of("fresh", mid), []).append(mid)
            # Each missed write's token against its shard's `at` (what the indexes
            # had absorbed) and `barrier`: a token at or below `at` is an index that
            # claimed a change it had not absorbed; above the barrier, a barrier that
            # did not cover an acknowledged write.
            assert not missing, ("fresh search missed, by shard: "
                                 + "; ".join(f"{s}: {len(m)} ({[(x, tokens.get(x)) for x in m[:5]]})"
                                             for s, m in sorted(by_shard.items()))
                                 + f"; per shard {answer['index_lag'].get('shards')}; served by "
                                 + f"{rc.node_ids[checks % 3]}; leaders now {({s: rc.leader_of(s) for s in by_shard})}")
            checks += 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert checks >= 5 and len(acked) > 50


# -- paging, summaries, bad input ----------------------------------------------------------------------
def test_pages_follow_the_cursor_without_repeats(rc: Cluster) -> None:
    load(rc, "pages", [(f"p{i:02d}", {"content": f"page item {i}"}) for i in range(25)])
    seen: list[str] = []
    body: dict[str, Any] = {"namespace": "pages", "query": "page item", "limit": 10, **ALL_LEVELS_FRESH}
    for _ in range(5):
        answer = ok_search(rc, "n1", body)
        seen += ids(answer)
        if not answer["more"]:
            break
        body = {**body, "cursor": answer["cursor"]}
    assert sorted(seen) == sorted(f"p{i:02d}" for i in range(25)) and len(seen) == 25
    # Fresh: n2's replicas may not have absorbed the load yet (this is about order, not lag).
    by_time = ok_search(rc, "n2", {"namespace": "pages", "order_by": "-updated_at", "limit": 3, **ALL_LEVELS_FRESH})
    assert [it["score"] for it in by_time["items"]] == [None, None, None]
    times = [it["updated_at"] for it in by_time["items"]]
    assert times == sorted(times, reverse=True)


def test_a_list_orders_by_updated_at(rc: Cluster) -> None:
    for mid in ("u1", "u2", "u3"):
        rc.request("n1", "PUT", f"/v1/memories/ordered/{mid}", {"content": mid, "agent_id": "a"})
    rc.request("n1", "PUT", "/v1/memories/ordered/u1", {"content": "touched last", "agent_id": "a"})
    status, _, body = rc.request("n2", "GET", "/v1/memories/ordered?order=-updated_at&agent_id=a&limit=2")
    assert status == 200 and [it["id"] for it in body["items"]] == ["u1", "u3"] and body["cursor"]
    rest = rc.request("n2", "GET", f"/v1/memories/ordered?order=-updated_at&agent_id=a&cursor={body['cursor']}")[2]
    assert [it["id"] for it in rest["items"]] == ["u2"]
    default = rc.request("n3", "GET", "/v1/memories/ordered")[2]
    assert [it["id"] for it in default["items"]] == ["u1", "u2", "u3"]  # (created_at, id), as before
    assert rc.request("n3", "GET", "/v1/memories/ordered?order=score")[0] == 400


def test_a_summary_is_marked_stale_by_a_write_and_refreshed(rc: Cluster) -> None:
    load(rc, "summ", [(f"s{i}", {"content": "x", "kind": "fact" if i % 2 else "episodic", "tags": ["t"]})
                      for i in range(10)])
    first = rc.request("n1", "GET", "/v1/namespaces/summ/summary?refresh=true")[2]
    assert first["count"] == 10 and first["by_kind"] == {"fact": 5, "episodic": 5} and first["stale"] is False
    rc.request("n1", "PUT", "/v1/memories/summ/s99", {"content": "y", "kind": "fact"})
    wait_for(lambda: rc.request("n1", "GET", "/v1/namespaces/summ/summary")[2]["stale"]
             or rc.request("n1", "GET", "/v1/namespaces/summ/summary")[2]["count"] == 11, 5, "stale or refreshed")
    refreshed = rc.request("n1", "GET", "/v1/namespaces/summ/summary?refresh=true")[2]
    assert refreshed["count"] == 11 and refreshed["stale"] is False and refreshed["newest_ids"][0] == "s99"
    rc.request("n1", "PUT", "/v1/memories/summ/s100", {"content": "z"})
    wait_for(lambda: rc.request("n1", "GET", "/v1/namespaces/summ/summary")[2]["count"] == 12, 10,
             "the background worker refreshed it")
    by_agent = rc.request("n2", "GET", "/v1/namespaces/summ/summary?agent_id=nobody&refresh=true")[2]
    assert by_agent["count"] == 0


@pytest.mark.parametrize("body, words", [
    ({"namespace": "bad", "vector": [1.0, 2.0]}, "dimensions"),
    ({"namespace": "bad", "filter": {"kind": {"$like": "x"}}}, "unknown operator"),
    ({"namespace": "bad", "filter": {"$not": {"$not": {"$not": {"$not": {"$not": {"$not": {"$not": {"$not": {
        "kind": "x"}}}}}}}}}}, "nested deeper"),
    ({"namespace": "bad", "query": "x" * 5000}, "longer than"),
    ({"namespace": "bad", "query": "x", "cursor": "bm9wZQ"}, "cursor"),
    ({"namespace": "bad", "namespace_prefix": "bad"}, "one of namespace"),
    ({"namespace": "bad", "limit": 0}, "limit"),
    ({"namespace": "bad", "metric": "hamming", "vector": [1.0, 2.0, 3.0]}, "metric"),
    ({"namespace": "bad", "surprise": 1}, "unknown field"),
])
def test_bad_searches_get_a_clear_400(rc: Cluster, body: dict[str, Any], words: str) -> None:
    rc.request("n1", "PUT", "/v1/memories/bad/m", {"content": "x", "embedding": [1.0, 2.0, 3.0]})
    status, _, answer = search(rc, "n2", body)
    assert status == 400 and words in answer["error"]["message"], answer


def test_a_write_with_the_wrong_dimension_is_refused_and_changes_nothing(rc: Cluster) -> None:
    status, _, first = rc.request("n1", "PUT", "/v1/memories/dims/m", {"content": "a", "embedding": [1.0, 0.0]})
    assert status in (200, 201)
    status, _, answer = rc.request("n2", "PUT", "/v1/memories/dims/m", {"content": "b", "embedding": [1.0, 0.0, 0.0]})
    assert status == 400 and "dimensions" in answer["error"]["message"]
    status, _, now = rc.request("n3", "GET", "/v1/memories/dims/m")
    assert status == 200 and now["version"] == first["version"] and now["content"] == "a"
    for bad in ([], ["x"], [float("nan")] if False else [1e400], list(range(5000))):
        status, _, answer = rc.request("n1", "PUT", "/v1/memories/dims/m2", {"content": "c", "embedding": bad})
        assert status == 400, (bad, answer)


def test_search_status_and_metrics_report_the_indexes(rc: Cluster) -> None:
    view = rc.cluster_view("n1")
    assert all(entry["index"]["ready"] for entry in view["shards"])


def metrics_text(c: Cluster, node: str) -> str:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", c.http[node], timeout=5)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_write_amplification_is_measured(rc: Cluster) -> None:
    text = metrics_text(rc, "n2")
    for name in ("raftmem_index_logical_bytes_total", 'raftmem_index_physical_bytes_total{part="rocksdb_wal"',
                 'part="text"', "raftmem_index_write_amplification", "raftmem_index_queue_depth",
                 "raftmem_index_absorb_seconds_count", "raftmem_index_batch_docs"):
        assert name in text.replace('{shard="0",part="rocksdb_wal"', '{part="rocksdb_wal"'), name


# -- clients and the command line ------------------------------------------------------------------
def test_the_python_client_searches_and_its_session_reads_its_writes(rc: Cluster) -> None:
    from raftmem.client import Client

    urls = [f"http://127.0.0.1:{rc.http[n]}" for n in rc.node_ids]
    with Client(urls) as client:
        session = client.session()
        for i in range(5):
            # Lengths apart: each hit's score stands clear of the others' (a cursor
            # is an offset into a ranking made again for each page; near-ties of
            # shards' BM25 swap when an index absorbs anything between two pages).
            session.put("cli-ns", f"c{i}", f"client note {i} lazyword" + " pad" * (3 * i), tags=["slow"])
            # read-your-writes: the session's context makes the search wait for its own writes
            found = session.search("cli-ns", "lazyword", limit=10)
            assert f"c{i}" in [it["id"] for it in found["items"]]
        items = list(client.search_all("cli-ns", "client note", limit=2, fresh=True))
        assert sorted(it["id"] for it in items) == [f"c{i}" for i in range(5)]
        assert "cli-ns" in client.list_namespaces(prefix="cli-ns")
        client.put("cli-vec", "v1", "with a vector", embedding=[0.0, 1.0])
        assert client.search("cli-vec", vector=[0.1, 1.0], fresh=True)["items"][0]["id"] == "v1"
        assert client.namespace_summary("cli-ns", refresh=True)["count"] == 5


def test_the_command_line_searches_lists_summarizes_and_reindexes(rc: Cluster) -> None:
    import json as _json
    import subprocess
    import sys

    url = ",".join(f"http://127.0.0.1:{rc.http[n]}" for n in rc.node_ids)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "cli.main", "--url", url, *args], capture_output=True,
                              text=True, timeout=120, cwd=str(Path(__file__).resolve().parents[2]))

    rc.request("n1", "PUT", "/v1/memories/cli-b/one", {"content": "the command line finds this", "tags": ["t"]})
    out = cli("--json", "search", "cli-b", "command line", "--fresh")
    assert out.returncode == 0, out.stderr
    assert [it["id"] for it in _json.loads(out.stdout)["items"]] == ["one"]
    out = cli("search", "cli-b", "command", "--prefix", "--fresh", "--filter", '{"tags": "t"}')
    assert out.returncode == 0 and "one" in out.stdout and "index lag 0 entries" in out.stdout, out
    bad = cli("search", "cli-b", "x", "--filter", '{"kind": {"$nope": 1}}')
    assert bad.returncode == 1 and "unknown operator" in bad.stderr
    assert cli("namespaces", "--prefix", "cli-b").stdout.split() == ["cli-b"]
    summary = _json.loads(cli("--json", "summary", "cli-b", "--refresh").stdout)
    assert summary["count"] == 1 and summary["by_tag"] == {"t": 1}
    out = cli("--json", "reindex", "--shard", "0")
    assert out.returncode == 0, out.stderr
    assert all(r["shards"] == [0] for r in _json.loads(out.stdout)["nodes"].values())
    status = cli("status")
    assert "INDEX_LAG" in status.stdout
