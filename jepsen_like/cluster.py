"""A real raftmem cluster for one run: node processes, each in its own network
namespace, with optional clock shims, small disks or power-loss disks.

The harness talks to nodes over HTTP (their namespace addresses, through the
bridge) and signals only; it never imports the server. A node is started as

    nsenter --net=/run/netns/<ns> -- python -m cli.main serve --config C --node N

(``nsenter`` execs, so the pid we hold is the node's). ``kill`` is SIGKILL,
``pause``/``resume`` SIGSTOP/SIGCONT, ``start`` a fresh process on the same data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from jepsen_like.clock import ClockControl, build_shim
from jepsen_like.disks import PowerDisk, SmallDisk
from jepsen_like.httpclient import HttpClient
from jepsen_like.netns import Network
from jepsen_like.resources import Teardown

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
HTTP_PORT = 8781
RAFT_PORT_BASE = 9100
READY_TIMEOUT_S = 60.0
PROBE_TIMEOUT_S = 1.5
POLL_S = 0.1
STOP_WAIT_S = 10.0


@dataclass
class ClusterSpec:
    """What the scenario asks of the cluster."""

    nodes: int = 3
    shards: int = 4
    fsync: str = "always"
    debug: dict[str, bool] = field(default_factory=dict)
    disk: str = "plain"  # plain | small | power
    small_disk_mb: int = 256
    clock_shim: bool = False
    raft: dict[str, Any] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    # Extra nodes, not in the seed config: started as joining nodes, added and
    # removed by the membership nemesis.
    spare: int = 0


class NodeProcess:
    def __init__(self, node_id: str, argv: list[str], env: dict[str, str], log_path: Path,
                 pids: list[int] | None = None, on_start: Callable[[], None] | None = None) -> None:
        self.pids = pids if pids is not None else []  # every pid this node ever had
        self.on_start = on_start
        self.node_id = node_id
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.starts = 0

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.alive and self.proc is not None else None

    def start(self) -> None:
        assert not self.alive, f"{self.node_id} is already running"
        self.starts += 1
        with open(self.log_path, "ab") as log_fh:
            log_fh.write(f"\n---- harness: start #{self.starts} of {self.node_id} ----\n".encode())
            log_fh.flush()
            self.proc = subprocess.Popen(
                self.argv, cwd=str(REPO), env=self.env, stdout=log_fh, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pids.append(self.proc.pid)
        self.paused = False
        if self.on_start is not None:
            self.on_start()

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL and reap (works on a stopped process too)."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=STOP_WAIT_S)
        self.paused = False

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False


class Cluster:
    def __init__(self, spec: ClusterSpec, run_dir: Path, prefix: str, teardown: Teardown, subnet_hint: int = 0) -> None:
        self.spec = spec
        self.run_dir = run_dir
        self.prefix = prefix
        self.teardown = teardown
        self.node_ids = [f"n{i + 1}" for i in range(spec.nodes + spec.spare)]
        self.seed_ids = self.node_ids[: spec.nodes]
        self.network = Network(prefix, self.node_ids, teardown, subnet_hint)
        self.work = run_dir / "cluster"
        self.data_dir = self.work / "data"
        self.log_dir = run_dir / "logs"
        self.config_path = self.work / "cluster.yaml"
        self.state_path = self.work / "resources.json"
        self.nodes: dict[str, NodeProcess] = {}
        self.clocks: dict[str, ClockControl] = {}
        self.small_disks: dict[str, SmallDisk] = {}
        self.power_disks: dict[str, PowerDisk] = {}
        self.urls: dict[str, str] = {}
        # Every process the cluster started (nodes, powerfs), for the teardown checks.
        self.pids: list[int] = []

    # -- setup -----------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        spec = self.spec
        nodes = [
            {"id": n, "host": self.network.addresses[n], "http_port": HTTP_PORT,
             "raft_port_base": RAFT_PORT_BASE, "zone": f"z{i + 1}"}
            for i, n in enumerate(self.seed_ids)
        ]
        raft: dict[str, Any] = {
            "election_timeout_ms_min": 400,
            "election_timeout_ms_max": 1000,
            "heartbeat_ms": 100,
            "clock_drift_bound": 0.1,
            "fsync": spec.fsync,
            # Required outside loopback: pysyncobj encrypts Raft traffic with it.
            "password": secrets.token_hex(16),
            **spec.raft,
        }
        config: dict[str, Any] = {
            "cluster": {"name": self.prefix, "shards": spec.shards, "nodes": nodes},
            "replication": {"factor": min(3, spec.nodes)},
            "raft": raft,
            "storage": {"data_dir": str(self.data_dir)},
        }
        if spec.limits:
            config["limits"] = dict(spec.limits)
        if spec.debug:
            config["debug"] = dict(spec.debug)
        return config

    def create(self) -> None:
        """Network, disks, clocks and config; no process yet."""
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.save_state()
        self.network.create()
        self.urls = {n: f"http://{self.network.addresses[n]}:{HTTP_PORT}" for n in self.node_ids}
        self.config_path.write_text(yaml.safe_dump(self._config(), sort_keys=False))
        shim: Path | None = None
        if self.spec.clock_shim:
            shim = build_shim(self.work / "build")
        for node in self.node_ids:
            node_data = self.data_dir / node
            if self.spec.disk == "small":
                disk = SmallDisk(node_data, self.spec.small_disk_mb, self.teardown)
                disk.mount()
                self.small_disks[node] = disk
            elif self.spec.disk == "power":
                pdisk = PowerDisk(node_data, self.work / "backing" / node, self.log_dir / f"powerfs-{node}.log",
                                  self.teardown, self.pids)
                pdisk.start()
                self.power_disks[node] = pdisk
            else:
                node_data.mkdir(parents=True, exist_ok=True)
            env = {k: v for k, v in os.environ.items() if not k.startswith(("LD_PRELOAD", "RMJ_"))}
            env["PYTHONUNBUFFERED"] = "1"
            if shim is not None:
                clock = ClockControl(self.work / f"clock-{node}.ctl")
                self.clocks[node] = clock
                self.teardown.push(f"close clock of {node}", clock.close)
                env["LD_PRELOAD"] = str(shim)
                env["RMJ_CLOCK_FILE"] = str(clock.path)
            argv = [
                "nsenter", f"--net={self.network.netns_path(node)}", "--",
                sys.executable, "-m", "cli.main", "serve", "--config", str(self.config_path), "--node", node,
            ]
            if node not in self.seed_ids:
                argv += self.member_spec_args(node)
            self.nodes[node] = NodeProcess(node, argv, env, self.log_dir / f"{node}.log", self.pids,
                                           on_start=self.save_state)
            self.teardown.push(f"kill node {node}", self.nodes[node].kill)
        self.save_state()

    def member_spec(self, node: str) -> dict[str, Any]:
        """How a spare node joins (the body of POST /v1/admin/members)."""
        return {"id": node, "host": self.network.addresses[node], "http_port": HTTP_PORT,
                "raft_port_base": RAFT_PORT_BASE, "zone": f"z{self.node_ids.index(node) + 1}"}

    def member_spec_args(self, node: str) -> list[str]:
        spec = self.member_spec(node)
        return ["--host", spec["host"], "--http-port", str(spec["http_port"]),
                "--raft-port-base", str(spec["raft_port_base"]), "--zone", spec["zone"]]

    def save_state(self) -> None:
        """What this run created, for ``python -m jepsen_like cleanup --out DIR``
        should the harness die without tearing down (SIGKILL)."""
        state = {
            "harness_pid": os.getpid(),
            "prefix": self.prefix,
            "config": str(self.config_path),
            "namespaces": list(self.network.namespaces.values()),
            "links": [self.network.bridge, *self.network.veths.values()],
            "mounts": [str(d.path) for d in (*self.small_disks.values(), *self.power_disks.values())],
            "pids": list(self.pids),
        }
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.state_path)

    def start_all(self) -> None:
        for node in self.node_ids:
            if not self.nodes[node].alive:
                self.nodes[node].start()

    def kill_all(self) -> None:
        for node in self.node_ids:
            self.nodes[node].kill()

    # -- HTTP probes -------------------------------------------------------------------
    async def probe(self, client: HttpClient, node: str, path: str) -> Any:
        if not self.nodes[node].alive or self.nodes[node].paused:
            return None
        answer = await client.request(node, "GET", path, timeout_s=PROBE_TIMEOUT_S)
        return answer if answer.status > 0 else None

    async def views(self, client: HttpClient) -> dict[str, dict[str, Any]]:
        """GET /v1/cluster from every reachable node."""
        answers = await asyncio.gather(*(self.probe(client, n, "/v1/cluster") for n in self.node_ids))
        return {
            n: a.body for n, a in zip(self.node_ids, answers, strict=True)
            if a is not None and a.status == 200 and isinstance(a.body, dict)
        }

    async def leaders(self, client: HttpClient) -> dict[int, str]:
        """shard -> the node that says it leads it (highest term wins when two do)."""
        best: dict[int, tuple[int, str]] = {}
        for node, view in (await self.views(client)).items():
            for entry in view.get("shards", []):
                if entry.get("role") == "leader":
                    shard, term = int(entry["shard"]), int(entry.get("term") or 0)
                    if shard not in best or term > best[shard][0]:
                        best[shard] = (term, node)
        return {shard: node for shard, (_, node) in best.items()}

    async def wait_ready(self, client: HttpClient, timeout_s: float = READY_TIMEOUT_S,
                         nodes: list[str] | None = None) -> float:
        """Poll /readyz on the given (default: all running) nodes until every one
        answers 200; returns the seconds waited. Raises TimeoutError."""
        started = time.monotonic()
        deadline = started + timeout_s
        wanted = nodes or [n for n in self.node_ids if self.nodes[n].alive]
        pending = set(wanted)
        why: dict[str, Any] = {}
        while pending:
            for node in sorted(pending):
                if not self.nodes[node].alive:
                    raise RuntimeError(f"node {node} exited (code {self.nodes[node].proc.returncode if self.nodes[node].proc else None}); see {self.nodes[node].log_path}")
                answer = await self.probe(client, node, "/readyz")
                if answer is not None and answer.status == 200:
                    pending.discard(node)
                else:  # what it said last, for the report
                    why[node] = answer.body.get("problems") if answer is not None and isinstance(
                        answer.body, dict) else "no answer"
            if not pending:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nodes {sorted(pending)} not ready after {timeout_s:.0f}s: "
                    + "; ".join(f"{n}: {why.get(n)}" for n in sorted(pending))
                )
            await asyncio.sleep(POLL_S)
        return time.monotonic() - started

    def describe(self) -> dict[str, Any]:
        return {
            "prefix": self.prefix,
            "nodes": {n: {"address": self.network.addresses.get(n), "namespace": self.network.namespaces[n],
                          "starts": self.nodes[n].starts if n in self.nodes else 0}
                      for n in self.node_ids},
            "bridge": {"name": self.network.bridge, "address": self.network.bridge_address},
            "shards": self.spec.shards,
            "fsync": self.spec.fsync,
            "debug": self.spec.debug,
            "disk": self.spec.disk,
            "clock_shim": self.spec.clock_shim,
        }
