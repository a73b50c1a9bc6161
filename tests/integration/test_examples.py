"""The examples run against a real cluster, as a user would run them."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from .cluster import REPO, Cluster, _ports_free


def test_the_deployment_gate_example_runs(cluster: Cluster) -> None:
    urls = ",".join(f"http://127.0.0.1:{cluster.http[n]}" for n in cluster.node_ids)
    done = subprocess.run([sys.executable, "examples/deployment_gate.py", "--url", urls], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stalled-deployer's write refused" in done.stdout and "fenced" in done.stdout
    assert "agents: gate closed, not deploying" in done.stdout


def _cluster_up_ports(shards: int) -> tuple[int, int]:
    """Free ports for `raftmem cluster up --http-port-base H --raft-port-base R`
    (3 nodes: H..H+2, and R + 100 * node + shard)."""
    for _attempt in range(50):
        http_base = random.randrange(10000, 19000, 10)
        raft_base = random.randrange(20000, 29000, 10)
        ports = [http_base + i for i in range(3)] + [raft_base + 100 * i + s for i in range(3) for s in range(shards)]
        if _ports_free("127.0.0.1", ports):
            return http_base, raft_base
    raise RuntimeError("no free ports")


def test_the_agent_fleet_example_loses_nothing_when_a_node_dies_midway(tmp_path: Path) -> None:
    """As a user runs it against `make run`'s cluster (here started detached):
    a node is killed halfway through the fleet's work and restarted at the end."""
    data_dir = tmp_path / "data"
    http_base, raft_base = _cluster_up_ports(4)
    raftmem = [sys.executable, "-m", "cli.main", "cluster"]
    subprocess.run(raftmem + ["up", "--detach", "--nodes", "3", "--shards", "4", "--data-dir", str(data_dir),
                              "--http-port-base", str(http_base), "--raft-port-base", str(raft_base)],
                   cwd=REPO, check=True, capture_output=True, timeout=120)
    try:
        done = subprocess.run([sys.executable, "examples/agent_fleet.py", "--data-dir", str(data_dir)], cwd=REPO,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert "kill -9" in out and "restarted" in out, out
        assert "12/12 tasks done exactly once, 12 triage memories: nothing lost" in out, out
        assert "own replica caught up" in out, out
        assert "watcher  told of" in out and "of 12 triage memories" in out, out
        recalled = next(line for line in out.splitlines() if "searcher  'disk full':" in line)
        assert "r-00" in recalled and "r-10" in recalled and "category release: ['r-01', 'r-11']" in out, out
    finally:
        subprocess.run(raftmem + ["down", "--data-dir", str(data_dir)], cwd=REPO, capture_output=True, timeout=60)
