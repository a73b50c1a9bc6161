"""raftmem.client against a real 3-node cluster configured as `raftmem cluster up`
does, on free ports of 127.0.0.1. Node processes are started here, polled
on /readyz with a deadline, and always stopped by the fixture's finalizer. The
failover test kills a node with SIGKILL and restarts it; it runs last."""

from __future__ import annotations

import http.client
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cli.cluster import local_config
from raftmem.client import (
    Client,
    NotFound,
    PreconditionFailed,
    RetryPolicy,
    shard_for,
)

from .cluster import free_port_block, wait_for

REPO = Path(__file__).resolve().parents[2]
NODES = ("n1", "n2", "n3")
SHARDS = 4
HTTP_PORTS, RAFT_PORT_BASES = free_port_block(len(NODES), SHARDS)
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
FAILOVER_TIMEOUT_S = 20.0
URLS = [f"http://127.0.0.1:{p}" for p in HTTP_PORTS]



def _ready(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    finally:
        conn.close()


class LocalCluster:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_path = root / "cluster.yaml"
        config = local_config(len(NODES), SHARDS, str(root / "data"))
        for node, http_port, raft_base in zip(config["cluster"]["nodes"], HTTP_PORTS, RAFT_PORT_BASES, strict=True):
            node.update(http_port=http_port, raft_port_base=raft_base)
        self.config_path.write_text(yaml.safe_dump(config))
        (root / "logs").mkdir(exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, node: str) -> None:
        with open(self.root / "logs" / f"{node}.log", "ab") as log:
            self.procs[node] = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "serve", "--config", str(self.config_path), "--node", node],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self) -> None:
        for node, port in zip(NODES, HTTP_PORTS, strict=True):
            proc = self.procs[node]

            def up(proc: subprocess.Popen[bytes] = proc, port: int = port) -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"node exited with {proc.returncode}; see {self.root / 'logs'}")
                return _ready(port)

            wait_for(up, READY_TIMEOUT_S, f"{node} ready")

    def kill(self, node: str) -> None:
        proc = self.procs[node]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=STOP_TIMEOUT_S)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def local_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("client-cluster"))
    try:
        for node in NODES:
            cluster.start(node)
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture
def client(local_cluster: LocalCluster) -> Iterator[Client]:
    with Client(URLS[:1], retry=RetryPolicy(attempts_max=8, deadline_s=FAILOVER_TIMEOUT_S)) as c:
        yield c


def test_a_linearizable_read_on_a_quiet_shard(local_cluster: LocalCluster) -> None:
    """Regression: reads waited for the state machine to reach a commit index that
    counts pysyncobj's own no-op, so a shard with no write since its election
    answered 503 'apply is behind' after read_timeout_ms. First in the module: no
    shard has been written yet."""
    with Client(URLS[:1], retry=RetryPolicy(attempts_max=1)) as client:
        for level in ("linearizable", "strong"):
            with pytest.raises(NotFound):
                client.get("it-quiet", f"nothing-{level}", consistency=level)


def test_crud_and_preconditions(client: Client) -> None:
    first = client.put("it", "crud", {"n": 1}, agent_id="a1", kind="fact", tags=["t1"], metadata={"m": 1})
    assert first["version"] == 1 and first["token"].startswith(f"{shard_for('it', 'crud', SHARDS)}:")
    assert client.put("it", "crud", {"n": 2}, if_match=1)["version"] == 2
    with pytest.raises(PreconditionFailed) as info:
        client.put("it", "crud", {"n": 3}, if_match=1)
    assert info.value.status == 412 and info.value.code == "precondition_failed"
    with pytest.raises(PreconditionFailed):
        client.put("it", "crud", {"n": 3}, if_none_match=True)
    for level in ("linearizable", "strong", "eventual", None):
        # An eventual read may lag the write by a heartbeat: poll with a deadline.
        def caught_up(level: str | None = level) -> bool:
            return client.get("it", "crud", consistency=level)["version"] == 2

        assert wait_for(caught_up, 5, str(level))
    assert client.delete("it", "crud", if_match=2)["deleted"] is True
    with pytest.raises(NotFound):
        client.get("it", "crud", consistency="linearizable")
    with pytest.raises(NotFound):
        client.delete("it", "crud")
    created = client.create("it", "by the server")
    assert client.get("it", created["id"])["content"] == "by the server"


def test_writes_go_straight_to_the_shard_leader(client: Client) -> None:
    cluster = client.cluster()
    leaders = {s["shard"]: s["leader"] for s in cluster["shards"]}
    for shard in range(SHARDS):
        mid = next(f"r{i}" for i in range(10_000) if shard_for("it", f"r{i}", SHARDS) == shard)
        response = client._run(client._async.put_raw("it", mid, shard))
        assert response.served_by == leaders[shard]
        assert client.routes.leader_url(shard) == dict((n["id"], n["url"]) for n in cluster["nodes"])[leaders[shard]]


def test_a_retried_key_applies_once(client: Client) -> None:
    client.put("it", "idem", 0)
    first = client.put("it", "idem", 1, idempotency_key="it-idem-1")
    again = client.put("it", "idem", 1, idempotency_key="it-idem-1")
    assert first["version"] == again["version"] == 2


def test_session_reads_see_the_sessions_writes(local_cluster: LocalCluster) -> None:
    # Seeded with a node that follows most shards: session reads are served by any replica.
    with Client(URLS) as client:
        session = client.session()
        for i in range(20):
            written = session.put("it-session", f"s{i}", i)
            read = session.get("it-session", f"s{i}")
            assert read["version"] == written["version"] and read["content"] == i


def test_list_gathers_every_shard_across_pages(client: Client) -> None:
    ids = {f"l{i:02d}" for i in range(25)}
    for mid in sorted(ids):
        client.put("it-list", mid, mid, agent_id="lister", tags=["even" if int(mid[1:]) % 2 == 0 else "odd"])
    assert {m["id"] for m in client.list("it-list", page_size=7)} == ids
    assert {m["id"] for m in client.list("it-list", tag="even", page_size=4)} == {i for i in ids if int(i[1:]) % 2 == 0}
    assert len(list(client.list("it-list", page_size=10, max_items=12))) == 12


def test_batch(client: Client) -> None:
    results = client.batch(
        [
            {"op": "put", "namespace": "it-batch", "id": "b1", "body": {"content": 1}},
            {"op": "create", "namespace": "it-batch", "body": {"content": 2}},
            {"op": "get", "namespace": "it-batch", "id": "nope"},
        ]
    )
    assert [r.status for r in results] == [201, 201, 404]
    assert isinstance(results[2].error, NotFound)


def test_failover_keyed_writes_continue(local_cluster: LocalCluster, client: Client) -> None:
    """Kill -9 the node leading a shard while writing to it: keyed writes keep
    succeeding (retried on the new leader), and the routes follow. Runs last."""
    shard = 0
    mid = next(f"f{i}" for i in range(10_000) if shard_for("it", f"f{i}", SHARDS) == shard)
    client.refresh_routes()
    victim = client.routes.leaders[shard]
    client.put("it", mid, "before")
    local_cluster.kill(victim)
    try:
        start = time.monotonic()
        # Keyed writes: an attempt lost with the old leader is retried, never doubled.
        versions = [client.put("it", mid, i)["version"] for i in range(5)]
        elapsed = time.monotonic() - start
        assert versions == sorted(versions) and len(set(versions)) == 5
        assert elapsed < FAILOVER_TIMEOUT_S
        assert client.routes.leaders.get(shard) not in (None, victim)
        assert client.get("it", mid, consistency="linearizable")["content"] == 4
    finally:
        local_cluster.start(victim)
        local_cluster.wait_ready()
