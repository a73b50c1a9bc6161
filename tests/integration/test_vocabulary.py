"""The design's own vocabulary against real nodes: its cluster config starts a
cluster as written, its level names work wherever a level is given, and causal
contexts handed from one agent to another make the second see what the first
wrote and saw."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from raftmem.client import AsyncClient

from .cluster import REPO, Cluster, wait_for


def _start_spine(tmp_path: Path) -> list[subprocess.Popen[bytes]]:
    config = REPO / "configs" / "memory-spine-3node.yaml"
    procs = []
    for node in ("spine-1", "spine-2", "spine-3"):
        with open(tmp_path / f"{node}.log", "wb") as log:
            procs.append(subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--config", str(config),
                                           "--node", node], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT))
    return procs


def test_raftmem_serve_starts_a_cluster_from_the_designs_config(tmp_path: Path) -> None:
    import http.client

    def get(port: int, path: str) -> tuple[int, dict]:  # type: ignore[type-arg]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    procs = _start_spine(tmp_path)
    try:
        for port in (8788, 8798, 8808):
            wait_for(lambda p=port: get(p, "/readyz")[0] == 200, 60, f"spine node on {port} ready")
        status, view = get(8798, "/v1/cluster")
        assert status == 200 and view["cluster"] == "production-memory"
        assert view["quorums"]["write"] == 2 and view["quorums"]["read"] == 1
        assert (tmp_path / "data-spine" / "spine-1").is_dir()
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def test_the_alias_works_in_the_query_and_the_header_and_the_canonical_level_is_reported(cluster: Cluster) -> None:
    status, _, body = cluster.request("n1", "PUT", "/v1/memories/vocab/a", {"content": 1})
    assert status == 201
    token = body["token"]  # read-your-writes: the reads carry the write's token
    for headers, path in [
        ({}, f"/v1/memories/vocab/a?consistency=read-your-writes&after={token}"),
        ({"X-Raftmem-Consistency": "read-your-writes"}, f"/v1/memories/vocab/a?after={token}"),
        ({"X-Raftmem-Context": token}, "/v1/memories/vocab/a?consistency=read-your-writes"),
        ({}, "/v1/memories/vocab?consistency=read-your-writes"),
    ]:
        status, got, _ = cluster.request("n2", "GET", path, headers=headers)
        assert status == 200, path
        assert got["X-Raftmem-Consistency"] in ("session", "linearizable", "strong"), got
        assert got["X-Raftmem-Consistency"] != "read-your-writes"
    status, _, body = cluster.request("n2", "GET", "/v1/memories/vocab/a?consistency=psychic")
    assert status == 400 and "read-your-writes" in body["error"]["message"]


def test_a_malformed_context_is_a_clear_400_and_changes_nothing(cluster: Cluster) -> None:
    status, _, body = cluster.request("n1", "PUT", "/v1/memories/vocab/ctx", {"content": 1},
                                      headers={"X-Raftmem-Context": "zero:one"})
    assert status == 400 and "X-Raftmem-Context" in body["error"]["message"]
    assert cluster.request("n1", "GET", "/v1/memories/vocab/ctx")[0] == 404


def test_every_memory_response_returns_the_callers_context_advanced(cluster: Cluster) -> None:
    shard = cluster.shard_of("vocab", "c")
    other = (shard + 1) % cluster.shards
    status, headers, body = cluster.request("n1", "PUT", "/v1/memories/vocab/c", {"content": 1},
                                            headers={"X-Raftmem-Context": f"{other}:7"})
    assert status == 201
    context = dict(t.split(":") for t in headers["X-Raftmem-Context"].split(","))
    assert context[str(other)] == "7" and context[str(shard)] == body["token"].split(":")[1]


@pytest.mark.parametrize("trial", range(3))
async def test_an_agent_handed_a_context_sees_what_the_first_wrote_and_saw(cluster: Cluster, trial: int) -> None:
    """A writes through n1 and reads a key A did not write; B, on n3 only, is
    handed A's context and reads both causally, right away, every time."""
    urls = {n: f"http://127.0.0.1:{cluster.http[n]}" for n in cluster.node_ids}
    async with AsyncClient([urls["n1"]], route_direct=False) as a_client, \
            AsyncClient([urls["n3"]], route_direct=False) as b_client:
        a = a_client.session()
        for i in range(20):
            seen = await a.put("causal", f"seen-{trial}-{i}", {"v": i})
            await a.get("causal", f"seen-{trial}-{i}")
            written = await a.put("causal", f"k-{trial}-{i}", {"v": i, "after": seen["version"]})
            b = b_client.session(context=a.context)
            got = await b.get("causal", f"k-{trial}-{i}", consistency="causal")
            assert got["version"] >= written["version"] and got["content"]["v"] == i
            also = await b.get("causal", f"seen-{trial}-{i}", consistency="causal")
            assert also["content"] == {"v": i}
