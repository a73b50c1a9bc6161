"""`raftmem cluster up`, the dev cluster `make run` starts, as a new user meets it:
kill a node and the others carry on (then `cluster restart` brings it back), and
every way of stopping it (SIGTERM, SIGHUP, SIGINT even when the shell ignored
it for a background job) leaves no node process and no bound port behind."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .cluster import REPO, _ephemeral_low, _ports_free, wait_for

NODES, SHARDS = 3, 2


def _ports() -> tuple[int, int]:
    """An API port base and a Raft port base (node i: +100*i) with every port free."""
    for _attempt in range(50):
        http = random.randrange(10000, max(_ephemeral_low(), 20000) - 1000, 10)
        raft = http + 100
        wanted = [http + i for i in range(NODES)] + [raft + 100 * i + s for i in range(NODES) for s in range(SHARDS)]
        if _ports_free("127.0.0.1", wanted):
            return http, raft
    raise RuntimeError("no free ports")


class DevCluster:
    def __init__(self, root: Path, ignore_sigint: bool = False) -> None:
        self.data = root / "data"
        self.http, self.raft = _ports()
        self.output = root / "up.out"
        argv = [sys.executable, "-m", "cli.main", "cluster", "up", "--nodes", str(NODES), "--shards", str(SHARDS),
                "--data-dir", str(self.data), "--http-port-base", str(self.http), "--raft-port-base", str(self.raft)]
        preexec = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if ignore_sigint else None
        with open(self.output, "wb") as out:
            self.proc = subprocess.Popen(argv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, preexec_fn=preexec)
        self.node_pids: dict[str, int] = {}

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_ready(self) -> None:
        wait_for(lambda: "ready. Try" in self.text() or self.proc.poll() is not None, 90, "the cluster ready")
        assert self.proc.poll() is None, self.text()
        state = json.loads((self.data / "cluster.json").read_text())
        self.node_pids = {n: v["pid"] for n, v in state["nodes"].items()}

    def ports(self) -> list[int]:
        return [self.http + i for i in range(NODES)] + [
            self.raft + 100 * i + s for i in range(NODES) for s in range(SHARDS)
        ]

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.http + i}"

    def cleanup(self) -> None:
        """Whatever the test did: no process of ours left (by exact pid)."""
        for pid in [self.proc.pid, *self.node_pids.values()]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait(timeout=10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _put(url: str, mid: str) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{url}/v1/memories/dev/{mid}", data=b'{"content": 1}', method="PUT")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def _run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cli.main", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def _unbound(ports: list[int]) -> bool:
    """No socket listens on them (connections in TIME_WAIT may remain: a server
    binding with SO_REUSEADDR, as a node does, gets the port all the same)."""
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _no_trace(dev: DevCluster) -> Any:
    return not any(_alive(p) for p in dev.node_pids.values()) and _unbound(dev.ports())


def test_killing_a_node_leaves_the_others_serving_and_restart_brings_it_back(tmp_path: Path) -> None:
    dev = DevCluster(tmp_path)
    try:
        dev.wait_ready()
        os.kill(dev.node_pids["n1"], signal.SIGKILL)
        wait_for(lambda: "node n1 exited (killed by SIGKILL)" in dev.text(), 20, "the death of n1 reported")
        assert "n2, n3 still serving" in dev.text()
        assert "raftmem cluster restart n1" in dev.text()
        assert dev.proc.poll() is None  # the supervisor carries on
        # Writes through a survivor succeed once the shards n1 led have elected anew.
        wait_for(lambda: _put(dev.url(1), "after-kill") in (200, 201), 30, "a write through n2")
        restarted = _run_cli("cluster", "restart", "n1", "--data-dir", str(dev.data))
        assert restarted.returncode == 0, restarted.stdout + restarted.stderr
        state = json.loads((dev.data / "cluster.json").read_text())
        assert state["nodes"]["n1"]["pid"] != dev.node_pids["n1"]
        dev.node_pids["n1"] = state["nodes"]["n1"]["pid"]
        assert _put(dev.url(0), "after-restart") in (200, 201)
        down = _run_cli("cluster", "down", "--data-dir", str(dev.data))
        assert down.returncode == 0, down.stderr
        dev.proc.wait(timeout=30)
        wait_for(lambda: _no_trace(dev), 20, "no node process and no bound port")
    finally:
        dev.cleanup()


@pytest.mark.parametrize(
    ("sig", "ignore_sigint"),
    [(signal.SIGTERM, False), (signal.SIGHUP, False), (signal.SIGINT, True)],
    ids=["SIGTERM", "SIGHUP", "SIGINT-in-a-background-job"],
)
def test_a_stop_signal_stops_every_node_and_frees_every_port(
    tmp_path: Path, sig: signal.Signals, ignore_sigint: bool
) -> None:
    dev = DevCluster(tmp_path, ignore_sigint=ignore_sigint)
    try:
        dev.wait_ready()
        dev.proc.send_signal(sig)
        assert dev.proc.wait(timeout=30) == 0, dev.text()
        assert "stopped every node." in dev.text()
        wait_for(lambda: _no_trace(dev), 20, "no node process and no bound port")
    finally:
        dev.cleanup()


def test_the_data_goes_where_data_dir_says_even_with_a_config(tmp_path: Path) -> None:
    """`make run` passes a config whose data_dir is ./data and --data-dir: --data-dir wins."""
    http, raft = _ports()
    config = tmp_path / "c.yaml"
    config.write_text(json.dumps({
        "cluster": {"name": "x", "shards": 1, "nodes": [
            {"id": "n1", "host": "127.0.0.1", "http_port": http, "raft_port_base": raft}]},
        "replication": {"factor": 1}, "storage": {"data_dir": str(tmp_path / "elsewhere")},
    }))
    out = tmp_path / "up.out"
    with open(out, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "cluster", "up", "--config", str(config),
                                 "--data-dir", str(tmp_path / "here")], cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "ready. Try" in out.read_text() or proc.poll() is not None, 60, "ready")
        assert (tmp_path / "here" / "n1").is_dir() and not (tmp_path / "elsewhere").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert _unbound([http, raft])


def test_nodes_or_shards_that_contradict_the_config_are_refused(tmp_path: Path) -> None:
    config = REPO / "configs" / "local-3node.yaml"
    refused = _run_cli("cluster", "up", "--config", str(config), "--shards", "4", "--data-dir", str(tmp_path))
    assert refused.returncode == 2 and "--shards 4 contradicts" in refused.stderr
    assert not (tmp_path / "cluster.json").exists()  # nothing started
