"""The examples run against a real cluster, as a user would run them."""

from __future__ import annotations

import subprocess
import sys

from .cluster import REPO, Cluster


def test_the_deployment_gate_example_runs(cluster: Cluster) -> None:
    urls = ",".join(f"http://127.0.0.1:{cluster.http[n]}" for n in cluster.node_ids)
    done = subprocess.run([sys.executable, "examples/deployment_gate.py", "--url", urls], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "stalled-deployer's write refused" in done.stdout and "fenced" in done.stdout
    assert "agents: gate closed, not deploying" in done.stdout
