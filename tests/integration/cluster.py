"""A real cluster for integration tests: node processes (`raftmem serve`) on
127.0.0.1, free ports, real RocksDB under a temp dir. Synchronise by polling with
deadlines (`wait_for`), never by sleeping a fixed time."""

from __future__ import annotations

import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
REPO = Path(__file__).resolve().parents[2]
POLL_S = 0.05


def wait_for(condition: Callable[[], T], timeout_s: float, what: str) -> T:
    """Poll `condition` until it returns a truthy value; fail the test past the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (OSError, http.client.HTTPException, ValueError) as e:
            last = e
        else:
            if last:
                return last
        time.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


def _ephemeral_low() -> int:
    """Bottom of the kernel's ephemeral port range. Test clusters live below it: a node
    killed and restarted must get its ports back, and a port in the ephemeral range can
    be taken meanwhile as the local end of any outgoing connection (the write load opens
    hundreds), which made a restarted node fail to bind (CI, 2026-11-21)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _ports_free(host: str, ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_port_block(nodes: int, shards: int) -> tuple[list[int], list[int]]:
    """HTTP ports and Raft port bases for `nodes` nodes, all free on 127.0.0.1 and
    below the ephemeral range, at a random place (parallel runs and a dev cluster
    on the default ports do not collide)."""
    for _attempt in range(50):
        base = random.randrange(10000, max(_ephemeral_low(), 20000) - 100, 100)
        http_ports = [base + i for i in range(nodes)]
        raft_bases = [base + 10 + i * (shards + 2) for i in range(nodes)]
        if _ports_free("127.0.0.1", http_ports + [b + s for b in raft_bases for s in range(shards)]):
            return http_ports, raft_bases
    raise RuntimeError("no free port range found")


class Cluster:
    def __init__(
        self,
        root: Path,
        nodes: int = 3,
        shards: int = 4,
        raft: dict[str, Any] | None = None,
        limits: dict[str, Any] | None = None,
        debug: dict[str, Any] | None = None,
        storage: dict[str, Any] | None = None,
        spare: int = 0,
        auth: dict[str, Any] | None = None,
        token: str | None = None,
        tls: dict[str, Any] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        coordination: dict[str, Any] | None = None,
        indexing: dict[str, Any] | None = None,
        sections: dict[str, Any] | None = None,
    ) -> None:
        """`spare`: extra nodes with reserved ports, started later with `start_joining`.
        `auth`: the config's auth section; `token`: sent by `request` unless told otherwise.
        `tls`: the config's tls section (a raft password is set with it); `ssl_context`:
        what `request` connects with (https). `sections`: more top-level config
        sections as they are (watch, history, lifecycle...)."""
        self.root = root
        self.ssl_context = ssl_context
        self.auth_headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.shards = shards
        self.node_ids = [f"n{i + 1}" for i in range(nodes)]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.http: dict[str, int] = {}
        node_cfgs = []
        total = nodes + spare
        http_ports, raft_bases = free_port_block(total, shards)
        self.spare: dict[str, tuple[int, int]] = {}
        for i in range(nodes, total):
            node_id = f"n{i + 1}"
            self.http[node_id] = http_ports[i]
            self.spare[node_id] = (http_ports[i], raft_bases[i])
        for i, node_id in enumerate(self.node_ids):
            self.http[node_id] = http_ports[i]
            node_cfgs.append(
                {"id": node_id, "host": "127.0.0.1", "http_port": http_ports[i], "raft_port_base": raft_bases[i]}
            )
        config: dict[str, Any] = {
            "cluster": {"name": "test", "shards": shards, "nodes": node_cfgs},
            "replication": {"factor": min(3, nodes)},
            "raft": {"election_timeout_ms_min": 400, "election_timeout_ms_max": 1000, "heartbeat_ms": 100,
                     "fsync": "always", **(raft or {})},
            "consistency": {
                "default": "strong",
                "overrides": [
                    {"tags": ["critical", "lock"], "model": "linearizable"},
                    {"tags": ["analytics", "metric"], "model": "eventual"},
                    {"tags": ["dashboard"], "model": "bounded", "max_staleness_ms": 5000},
                ],
            },
            "storage": {"data_dir": str(root / "data"), **(storage or {})},
        }
        if limits:
            config["limits"] = limits
        if debug:
            config["debug"] = debug
        if auth:
            config["auth"] = auth
        if tls:
            config["tls"] = tls
            config["raft"]["password"] = "a raft secret for the tls tests"
        if coordination:
            config["coordination"] = coordination
        if indexing:
            config["indexing"] = indexing
        config.update(sections or {})
        root.mkdir(parents=True, exist_ok=True)
        self.config_path = root / "cluster.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        (root / "logs").mkdir(parents=True, exist_ok=True)

    # -- processes -------------------------------------------------------------
    def start(self, node_id: str) -> None:
        assert node_id not in self.procs or self.procs[node_id].poll() is not None
        with open(self.root / "logs" / f"{node_id}.log", "ab") as log:
            self.procs[node_id] = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "serve", "--config", str(self.config_path), "--node", node_id],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def start_joining(self, node_id: str) -> dict[str, Any]:
        """Start a spare node that is not in the seed config; returns its member spec."""
        http_port, raft_base = self.spare[node_id]
        with open(self.root / "logs" / f"{node_id}.log", "ab") as log:
            self.procs[node_id] = subprocess.Popen(
                [sys.executable, "-m", "cli.main", "serve", "--config", str(self.config_path), "--node", node_id,
                 "--host", "127.0.0.1", "--http-port", str(http_port), "--raft-port-base", str(raft_base)],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
            )
        if node_id not in self.node_ids:
            self.node_ids.append(node_id)
        return {"id": node_id, "host": "127.0.0.1", "http_port": http_port, "raft_port_base": raft_base}

    def start_all(self) -> None:
        for node_id in self.node_ids:
            self.start(node_id)
        self.wait_ready()

    def kill(self, node_id: str) -> None:
        proc = self.procs[node_id]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)

    def stop(self, node_id: str) -> None:
        proc = self.procs[node_id]
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop_all(self) -> None:
        for node_id in list(self.procs):
            self.stop(node_id)

    def alive(self, node_id: str) -> bool:
        return node_id in self.procs and self.procs[node_id].poll() is None

    def wipe(self, node_id: str) -> None:
        assert not self.alive(node_id)
        shutil.rmtree(self.root / "data" / node_id, ignore_errors=True)

    def data_dir(self, node_id: str) -> Path:
        return self.root / "data" / node_id

    def log_text(self, node_id: str) -> str:
        return (self.root / "logs" / f"{node_id}.log").read_text(errors="replace")

    # -- HTTP ------------------------------------------------------------------
    def connection(self, node_id: str, timeout_s: float = 15.0,
                   context: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
        """To the node's API: https with `context` (or the cluster's), else http."""
        context = context or self.ssl_context
        if context is not None:
            return http.client.HTTPSConnection("127.0.0.1", self.http[node_id], timeout=timeout_s, context=context)
        return http.client.HTTPConnection("127.0.0.1", self.http[node_id], timeout=timeout_s)

    def request(
        self,
        node_id: str,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        timeout_s: float = 15.0,
    ) -> tuple[int, dict[str, str], Any]:
        conn = self.connection(node_id, timeout_s)
        try:
            data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
            conn.request(method, path, body=data, headers={**self.auth_headers, **(headers or {})})
            resp = conn.getresponse()
            payload = resp.read()
            parsed = json.loads(payload) if payload else None
            return resp.status, dict(resp.getheaders()), parsed
        finally:
            conn.close()

    def ready(self, node_id: str) -> bool:
        status, _, _ = self.request(node_id, "GET", "/readyz", timeout_s=2)
        return status == 200

    def wait_ready(self, node_ids: list[str] | None = None, timeout_s: float = 60) -> None:
        for node_id in node_ids or [n for n in self.node_ids if self.alive(n)]:
            try:
                wait_for(lambda n=node_id: self.ready(n), timeout_s, f"{node_id} ready")
            except AssertionError as e:
                # Say why: a node that exited, or what it logged last, beats "connection refused".
                proc = self.procs.get(node_id)
                exit_code = proc.poll() if proc is not None else None
                tail = "\n".join(self.log_text(node_id).splitlines()[-40:])
                raise AssertionError(f"{e}; exit code {exit_code}; log tail:\n{tail}") from None

    def cluster_view(self, node_id: str) -> dict[str, Any]:
        status, _, body = self.request(node_id, "GET", "/v1/cluster", timeout_s=5)
        assert status == 200, body
        return body

    def metrics_text(self, node_id: str) -> str:
        """The node's /metrics (Prometheus text)."""
        conn = self.connection(node_id, 5)
        try:
            conn.request("GET", "/metrics")
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def shard_counter(self, node_id: str, name: str, shard: int) -> float:
        """A per-shard counter from the node's /metrics (`name` without `_total`)."""
        text = self.metrics_text(node_id)
        match = re.search(rf'^{name}_total{{shard="{shard}"}} (\S+)$', text, re.M)
        assert match, f"{name} for shard {shard} not in {node_id}'s /metrics"
        return float(match.group(1))

    def metric(self, node_id: str, name: str) -> float:
        """An unlabelled gauge or counter from the node's /metrics."""
        match = re.search(rf"^{name} (\S+)$", self.metrics_text(node_id), re.M)
        assert match, f"{name} not in {node_id}'s /metrics"
        return float(match.group(1))

    def leader_of(self, shard: int) -> str | None:
        """The node that reports itself leader of `shard` (asking itself)."""
        for node_id in self.node_ids:
            if not self.alive(node_id):
                continue
            try:
                view = self.cluster_view(node_id)
            except (OSError, AssertionError, http.client.HTTPException):
                continue
            if view["shards"][shard].get("role") == "leader":
                return node_id
        return None

    def shard_of(self, ns: str, mid: str) -> int:
        from raftmem.routing import shard_for  # a pure function; the tests' own router

        return shard_for(ns, mid, self.shards)


def env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")
