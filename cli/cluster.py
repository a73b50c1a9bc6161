"""`raftmem cluster up/down`: the local development cluster that `make run` uses.

`up` starts one `raftmem serve` process per node, waits until every node answers
/readyz, prints where they listen and a curl example, and stops them all cleanly
on Ctrl-C (or leaves them running with --detach; `down` stops them by pid)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

PIDS_FILE = "cluster.pids"
READY_TIMEOUT_S = 60.0


def local_config(nodes: int, shards: int, data_dir: str, base_http: int = 8781) -> dict[str, Any]:
    return {
        "cluster": {
            "name": "local",
            "shards": shards,
            "nodes": [
                {
                    "id": f"n{i + 1}",
                    "host": "127.0.0.1",
                    "http_port": base_http + i,
                    "raft_port_base": 9100 + 100 * i,
                    "zone": "abcdefghij"[i % 10],
                }
                for i in range(nodes)
            ],
        },
        "replication": {"factor": 3 if nodes >= 3 else 1},
        "raft": {
            "election_timeout_ms_min": 400,
            "election_timeout_ms_max": 1000,
            "heartbeat_ms": 100,
            "clock_drift_bound": 0.1,
            "fsync": "always",
        },
        "consistency": {
            "default": "strong",
            "overrides": [
                {"tags": ["critical", "lock"], "model": "linearizable"},
                {"tags": ["analytics", "metric"], "model": "eventual"},
            ],
        },
        "storage": {"data_dir": data_dir},
    }


def _get_json(url: str, timeout_s: float = 2.0) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def wait_ready(urls: list[str], timeout_s: float = READY_TIMEOUT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    pending = list(urls)
    while pending and time.monotonic() < deadline:
        for url in list(pending):
            try:
                status, _ = _get_json(url + "/readyz")
            except (OSError, ValueError):
                continue
            if status == 200:
                pending.remove(url)
        if pending:
            time.sleep(0.2)
    return not pending


def _up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    if args.config:
        config_path = Path(args.config)
        cfg = yaml.safe_load(config_path.read_text())
    else:
        cfg = local_config(args.nodes, args.shards, str(data_dir))
        config_path = data_dir / "cluster.yaml"
        config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    nodes = cfg["cluster"]["nodes"]
    procs: list[subprocess.Popen[bytes]] = []
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    for node in nodes:
        out = open(logs / f"{node['id']}.log", "ab")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "cli.main", "serve", "--config", str(config_path), "--node", node["id"]],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=args.detach,
            )
        )
    (data_dir / PIDS_FILE).write_text("\n".join(str(p.pid) for p in procs) + "\n")
    urls = [f"http://{n['host']}:{n['http_port']}" for n in nodes]
    ok = wait_ready(urls)
    for node, url in zip(nodes, urls, strict=True):
        print(f"  {node['id']}: API {url}  Raft {node['host']}:{node['raft_port_base']}+shard  log {logs / (node['id'] + '.log')}")
    if not ok:
        print(f"raftmem: the cluster did not become ready in {READY_TIMEOUT_S:.0f}s; see the logs", file=sys.stderr)
        _stop(procs)
        return 3
    print("\nready. Try:")
    print(f"  curl -s -X PUT {urls[0]}/v1/memories/team-a/m-1 -d '{{\"agent_id\": \"a1\", \"content\": \"hello\"}}'")
    print(f"  curl -s {urls[1]}/v1/memories/team-a/m-1")
    print(f"  curl -s {urls[2]}/v1/cluster")
    if args.detach:
        print(f"\nrunning in the background; stop with: raftmem cluster down --data-dir {data_dir}")
        return 0
    print("\nCtrl-C stops every node.")
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(0.5)
        print("raftmem: a node exited; stopping the others", file=sys.stderr)
        return_code = 1
    except KeyboardInterrupt:
        return_code = 0
    _stop(procs)
    return return_code


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    print("stopped every node.")


def _down(args: argparse.Namespace) -> int:
    pids_file = Path(args.data_dir) / PIDS_FILE
    if not pids_file.exists():
        print(f"raftmem: no {pids_file}; nothing to stop", file=sys.stderr)
        return 1
    pids = [int(x) for x in pids_file.read_text().split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 15
    for pid in pids:
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    pids_file.unlink()
    print(f"stopped {len(pids)} node(s).")
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("cluster", help="local development cluster")
    csub = p.add_subparsers(dest="cluster_command", required=True)
    up = csub.add_parser("up", help="start a local cluster (Ctrl-C stops it)")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--shards", type=int, default=8)
    up.add_argument("--config", help="use this cluster YAML instead of a generated one")
    up.add_argument("--data-dir", default="./data")
    up.add_argument("--detach", action="store_true", help="leave the nodes running")
    up.set_defaults(func=_up)
    down = csub.add_parser("down", help="stop a cluster started with --detach")
    down.add_argument("--data-dir", default="./data")
    down.set_defaults(func=_down)
