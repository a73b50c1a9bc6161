"""The memory API against a real 3-node cluster: CRUD, preconditions, idempotent
retries, CAS races, lists across shards, batch, forwarding from every node, and
bad input that must change nothing."""

from __future__ import annotations

import threading
import uuid

import pytest

from .cluster import Cluster


def _ns() -> str:
    return "t-" + uuid.uuid4().hex[:10]


def test_crud_from_every_node(cluster: Cluster) -> None:
    ns = _ns()
    for i, node in enumerate(cluster.node_ids):
        mid = f"m-{i}"
        status, headers, body = cluster.request(
            node, "PUT", f"/v1/memories/{ns}/{mid}", {"agent_id": "a1", "content": {"n": i}, "tags": ["x"]}
        )
        assert status == 201, body
        assert body["version"] == 1 and body["content"] == {"n": i}
        shard, index = body["token"].split(":")
        assert int(shard) == cluster.shard_of(ns, mid) and int(index) > 0
        assert headers["X-Raftmem-Token"] == body["token"]
        # Every node reads it back, linearizably, whoever leads the shard.
        for reader in cluster.node_ids:
            status, headers, got = cluster.request(reader, "GET", f"/v1/memories/{ns}/{mid}?consistency=linearizable")
            assert status == 200, got
            assert got["content"] == {"n": i}
            assert headers["X-Raftmem-Consistency"] == "linearizable"
    # Update bumps the version and keeps created_at.
    status, _, first = cluster.request("n1", "GET", f"/v1/memories/{ns}/m-0")
    status, _, updated = cluster.request("n2", "PUT", f"/v1/memories/{ns}/m-0", {"content": "new"})
    assert status == 200 and updated["version"] == 2
    assert updated["created_at"] == first["created_at"]
    # Delete, then 404 everywhere.
    status, _, body = cluster.request("n3", "DELETE", f"/v1/memories/{ns}/m-0")
    assert status == 200 and body["deleted"] is True
    for node in cluster.node_ids:
        status, _, body = cluster.request(node, "GET", f"/v1/memories/{ns}/m-0")
        assert status == 404 and body["error"]["code"] == "not_found"
    status, _, body = cluster.request("n1", "DELETE", f"/v1/memories/{ns}/m-0")
    assert status == 404


def test_preconditions(cluster: Cluster) -> None:
    ns = _ns()
    path = f"/v1/memories/{ns}/p"
    assert cluster.request("n1", "PUT", path, {"content": 1}, {"If-None-Match": "*"})[0] == 201
    status, _, body = cluster.request("n2", "PUT", path, {"content": 2}, {"If-None-Match": "*"})
    assert status == 412 and body["error"]["code"] == "precondition_failed"
    status, _, body = cluster.request("n3", "PUT", path, {"content": 3}, {"If-Match": "7"})
    assert status == 412 and body["error"]["version"] == 1
    assert cluster.request("n1", "PUT", path, {"content": 4}, {"If-Match": "1"})[0] == 200
    assert cluster.request("n2", "DELETE", path, headers={"If-Match": "1"})[0] == 412
    assert cluster.request("n2", "DELETE", path, headers={"If-Match": "2"})[0] == 200
    status, _, body = cluster.request("n3", "GET", path)
    assert status == 404


def test_idempotent_retry_returns_first_result(cluster: Cluster) -> None:
    ns = _ns()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    status1, _, first = cluster.request("n1", "PUT", f"/v1/memories/{ns}/i", {"content": "once"}, key)
    status2, headers, second = cluster.request("n3", "PUT", f"/v1/memories/{ns}/i", {"content": "once"}, key)
    assert (status1, status2) == (201, 201)
    assert second["version"] == first["version"] == 1
    assert headers.get("Idempotent-Replayed") == "true"
    status, _, body = cluster.request("n2", "PUT", f"/v1/memories/{ns}/i", {"content": "other"}, key)
    assert status == 409 and body["error"]["code"] == "idempotency_key_reused"
    # POST with a key: a retry creates nothing new.
    status, _, a = cluster.request("n1", "POST", f"/v1/memories/{ns}", {"content": "c"}, {"Idempotency-Key": "post-1"})
    status_b, _, b = cluster.request("n2", "POST", f"/v1/memories/{ns}", {"content": "c"}, {"Idempotency-Key": "post-1"})
    assert status == status_b == 201 and a["id"] == b["id"] and b["version"] == 1
    # Header names are case-insensitive (HTTP/2 gateways and fetch send them lowercased),
    # through forwarding too: every node answers the retry with the first result.
    lower = {"idempotency-key": uuid.uuid4().hex}
    replies = [cluster.request(n, "POST", f"/v1/memories/{ns}", {"content": "c"}, lower) for n in cluster.node_ids]
    assert [r[0] for r in replies] == [201] * len(replies), replies
    assert len({r[2]["id"] for r in replies}) == 1 and all(r[2]["version"] == 1 for r in replies), replies
    status, _, body = cluster.request("n2", "POST", f"/v1/memories/{ns}", {"content": "d"}, lower)
    assert status == 409 and body["error"]["code"] == "idempotency_key_reused", body
    # A key that starts with its time (the bundled client's do) gives a time-ordered id.
    stamped = {"Idempotency-Key": "1763700000123-" + uuid.uuid4().hex}
    _, _, first = cluster.request("n1", "POST", f"/v1/memories/{ns}", {"content": "t"}, stamped)
    _, _, again = cluster.request("n3", "POST", f"/v1/memories/{ns}", {"content": "t"}, stamped)
    assert first["id"].startswith("1763700000123-") and again["id"] == first["id"]


def test_cas_race_exactly_one_wins(cluster: Cluster) -> None:
    ns = _ns()
    path = f"/v1/memories/{ns}/lock"
    assert cluster.request("n1", "PUT", path, {"content": "free"})[0] == 201
    results: list[int] = []
    lock = threading.Lock()

    def contender(i: int) -> None:
        node = cluster.node_ids[i % 3]
        status, _, _ = cluster.request(node, "PUT", path, {"content": f"owner-{i}"}, {"If-Match": "1"})
        with lock:
            results.append(status)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results).count(200) == 1, results
    assert sorted(results).count(412) == 11, results
    status, _, body = cluster.request("n2", "GET", path)
    assert body["version"] == 2 and body["content"].startswith("owner-")


def test_list_across_shards_with_pagination(cluster: Cluster) -> None:
    ns = _ns()
    ids = [f"m{i:03d}" for i in range(30)]
    for i, mid in enumerate(ids):
        tags = ["even"] if i % 2 == 0 else ["odd"]
        agent = "alice" if i < 10 else "bob"
        status, _, _ = cluster.request(cluster.node_ids[i % 3], "PUT", f"/v1/memories/{ns}/{mid}",
                                       {"agent_id": agent, "content": i, "tags": tags})
        assert status == 201
    assert len({cluster.shard_of(ns, m) for m in ids}) == cluster.shards  # really spread
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        path = f"/v1/memories/{ns}?limit=7" + (f"&cursor={cursor}" if cursor else "")
        status, _, page = cluster.request(cluster.node_ids[pages % 3], "GET", path)
        assert status == 200, page
        seen += [m["id"] for m in page["items"]]
        pages += 1
        cursor = page.get("cursor")
        if not cursor:
            break
    assert seen == ids  # created in this order: (created_at, id) order
    assert pages == 5
    status, _, page = cluster.request("n2", "GET", f"/v1/memories/{ns}?tag=even&limit=100")
    assert [m["id"] for m in page["items"]] == ids[0::2]
    status, _, page = cluster.request("n3", "GET", f"/v1/memories/{ns}?agent_id=alice&consistency=eventual")
    assert status == 200 and len(page["items"]) <= 10
    status, _, page = cluster.request("n1", "GET", f"/v1/memories/{ns}?agent_id=alice")
    assert [m["id"] for m in page["items"]] == ids[:10]
    created = page["items"][3]["created_at"]
    status, _, page = cluster.request("n1", "GET", f"/v1/memories/{ns}?agent_id=alice&since={created}")
    assert [m["id"] for m in page["items"]] == ids[3:10]


def test_batch_per_operation_results(cluster: Cluster) -> None:
    ns = _ns()
    ops = [
        {"op": "put", "namespace": ns, "id": "a", "body": {"content": 1}},
        {"op": "put", "namespace": ns, "id": "b", "body": {"content": 2}},
        {"op": "create", "namespace": ns, "body": {"content": 3}},
        {"op": "get", "namespace": ns, "id": "missing"},
        {"op": "put", "namespace": ns, "id": "c", "body": {"content": 4}, "if_match": 7},
    ]
    status, _, body = cluster.request("n2", "POST", "/v1/batch", {"ops": ops})
    assert status == 200, body
    statuses = [r["status"] for r in body["results"]]
    assert statuses == [201, 201, 201, 404, 412]
    status, _, got = cluster.request("n1", "GET", f"/v1/memories/{ns}/b")
    assert got["content"] == 2


def test_a_malformed_operation_refuses_the_whole_batch(cluster: Cluster) -> None:
    """Malformed (what the document's schema refuses) is the request's fault: a
    400 naming the operation, and nothing applies, atomic or not."""
    ns = _ns()
    ops = [{"op": "put", "namespace": ns, "id": "a", "body": {"content": 1}},
           {"op": "put", "namespace": ns, "id": "c", "body": {"bogus": 1}}]
    status, _, body = cluster.request("n2", "POST", "/v1/batch", {"ops": ops})
    assert status == 400 and body["error"]["message"].startswith("ops[1]"), body
    assert cluster.request("n1", "GET", f"/v1/memories/{ns}/a")[0] == 404


def test_ttl_expires(cluster: Cluster) -> None:
    from .cluster import wait_for

    ns = _ns()
    status, _, body = cluster.request("n1", "PUT", f"/v1/memories/{ns}/t", {"content": 1, "ttl_s": 1})
    assert status == 201 and body["expires_at"] == body["created_at"] + 1000
    wait_for(lambda: cluster.request("n2", "GET", f"/v1/memories/{ns}/t")[0] == 404, 10, "expiry")


@pytest.mark.parametrize(
    ("method", "path", "raw", "headers", "status", "code"),
    [
        ("PUT", "/v1/memories/NS/x", b"{not json", {}, 400, "invalid_request"),
        ("PUT", "/v1/memories/NS/x", b"[1,2]", {}, 400, "invalid_request"),
        ("PUT", "/v1/memories/NS/x", b'{"tags": "nope"}', {}, 400, "invalid_request"),
        ("PUT", "/v1/memories/NS/x", b'{"tags": [1]}', {}, 400, "invalid_request"),
        ("PUT", "/v1/memories/NS/x", b'{"surprise": 1}', {}, 400, "invalid_request"),
        ("PUT", "/v1/memories/NS/x", b'{"ttl_s": -1}', {}, 400, "invalid_request"),
        ("PUT", "/v1/memories/NS/x", b'{"ttl_s": 1.8e-06}', {}, 400, "invalid_request"),
        ("PUT", "/v1/memories/NS/x", b'{"metadata": 3}', {}, 400, "invalid_request"),
        ("PUT", "/v1/memories/NS/x", b'{"tags": ["t"]}', {"If-Match": "abc"}, 400, "invalid_request"),
        ("PUT", "/v1/memories/NS/x", b'{"content": 1}', {"If-None-Match": "v1"}, 400, "invalid_request"),
        ("PUT", "/v1/memories/N%20S/x", b'{"content": 1}', {}, 400, "invalid_request"),
        ("PUT", "/v1/memories/NS/" + "y" * 300, b'{"content": 1}', {}, 400, "invalid_request"),
        ("PUT", "/v1/memories/NS/x%0A", b'{"content": 1}', {}, 400, "invalid_request"),
        ("PUT", "/v1/memories/NS/x", b'{"content": "' + b"z" * (1 << 20) + b'"}', {}, 413, "payload_too_large"),
        ("GET", "/v1/memories/NS/x?consistency=psychic", b"", {}, 400, "invalid_request"),
        ("GET", "/v1/memories/NS?limit=0", b"", {}, 400, "invalid_request"),
        ("GET", "/v1/memories/NS?cursor=garbage", b"", {}, 400, "invalid_request"),
        ("GET", "/v1/memories/NS/x?consistency=session&after=zz", b"", {}, 400, "invalid_request"),
        ("POST", "/v1/batch", b'{"ops": 5}', {}, 400, "invalid_request"),
        ("POST", "/v1/batch", b"not gzip", {"Content-Encoding": "gzip"}, 400, "invalid_request"),
        ("PUT", "/v1/memories/NS/x", b'{"content": 1}', {"X-Raftmem-Forwarded": "-5"}, 400, "invalid_request"),
        ("POST", "/v1/batch", b'{"ops": [{"op": "nuke"}]}', {}, 400, "invalid_request"),
        ("GET", "/v1/nothing", b"", {}, 404, "not_found"),
        ("PATCH", "/v1/memories/NS/x", b"{}", {}, 405, "method_not_allowed"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(
    cluster: Cluster, method: str, path: str, raw: bytes, headers: dict[str, str], status: int, code: str
) -> None:
    ns = _ns()
    path = path.replace("NS", ns)
    got_status, got_headers, body = cluster.request("n1", method, path, raw=raw, headers=headers)
    assert got_status == status, body
    assert body["error"]["code"] == code and body["error"]["message"]
    if status == 405:  # RFC 9110: a 405 says what is allowed
        assert set(got_headers["Allow"].split(", ")) >= {"GET", "PUT", "DELETE"}, got_headers
    # Nothing was written anywhere in the namespace.
    for node in cluster.node_ids:
        s, _, page = cluster.request(node, "GET", f"/v1/memories/{ns}?consistency=linearizable")
        assert s == 200 and page["items"] == []
    # And the node still serves.
    assert cluster.request("n1", "GET", "/healthz")[0] == 200


def test_cluster_health_and_metrics(cluster: Cluster) -> None:
    view = cluster.cluster_view("n2")
    assert view["shard_count"] == cluster.shards
    leaders = [s.get("leader") for s in view["shards"]]
    assert all(leaders), view
    for s in view["shards"]:
        assert s["applied_index"] <= s["commit_index"]
    status, headers, _ = cluster.request("n1", "GET", "/readyz")
    assert status == 200
    status, _, spec = cluster.request("n3", "GET", "/openapi.json")
    assert status == 200 and "/v1/memories/{namespace}/{id}" in spec["paths"]


def test_metrics_are_prometheus_text(cluster: Cluster) -> None:
    import http.client

    ns = _ns()
    cluster.request("n1", "PUT", f"/v1/memories/{ns}/m", {"content": 1})
    cluster.request("n1", "GET", f"/v1/memories/{ns}/m")
    conn = http.client.HTTPConnection("127.0.0.1", cluster.http["n1"], timeout=10)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.status == 200 and resp.getheader("Content-Type").startswith("text/plain")
    for name in ("raftmem_shard_term", "raftmem_shard_commit_index", "raftmem_shard_applied_index",
                 "raftmem_http_request_seconds_bucket", "raftmem_shard_lease_reads_total",
                 "raftmem_shard_commit_seconds_count", "raftmem_node_replicas", "raftmem_shard_db_bytes",
                 "raftmem_raft_fsync_rounds_total", "raftmem_shard_snapshot_installs_total",
                 "raftmem_watch_fanout_following", "raftmem_watch_fanout_resyncs_total"):
        assert name in text, name
    assert 'route="/v1/memories/{namespace}/{id}"' in text
    # The write was fsynced on n1 (it holds every shard's replica): timed.
    fsyncs = next(line for line in text.splitlines() if line.startswith("raftmem_raft_fsync_seconds_count"))
    assert float(fsyncs.split()[-1]) >= 1 and 'raftmem_raft_fsync_seconds_bucket{le="+Inf"}' in text


def test_readyz_sync(cluster: Cluster) -> None:
    from .cluster import wait_for

    for node in cluster.node_ids:
        wait_for(lambda n=node: cluster.request(n, "GET", "/readyz?sync=true")[0] == 200, 20, f"{node} in sync")


def test_header_names_are_case_insensitive(cluster: Cluster) -> None:
    ns = _ns()
    path = f"/v1/memories/{ns}/ci"
    assert cluster.request("n1", "PUT", path, {"content": 1}, {"if-none-match": "*"})[0] == 201
    assert cluster.request("n2", "PUT", path, {"content": 2}, {"IF-NONE-MATCH": "*"})[0] == 412
    assert cluster.request("n3", "PUT", path, {"content": 3}, {"if-match": "5"})[0] == 412
    status, headers, _ = cluster.request("n1", "GET", path, headers={"x-raftmem-consistency": "eventual"})
    assert status == 200 and headers["X-Raftmem-Consistency"] == "eventual"
