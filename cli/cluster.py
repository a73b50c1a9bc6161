"""`raftmem cluster up/restart/down`: the local development cluster `make run` uses.

`up` starts one `raftmem serve` process per node, waits until every node answers
/readyz, prints where they listen and a curl example, then supervises them:
- a node that dies is reported (which node, and how it ended) while the others
  go on serving; `raftmem cluster restart NODE` (from another terminal) starts
  it again, or `up --auto-restart` does so by itself after a back-off;
- Ctrl-C, SIGTERM (systemd, containers, CI) and SIGHUP (a closed terminal) stop
  every node cleanly and leave no process and no bound port behind; so does
  SIGINT when the shell started `make run` in the background (which sets SIGINT
  to ignored: the handler is installed anyway).
`--detach` leaves the nodes running with no supervisor; `down` stops them by pid.

The supervisor keeps `<data-dir>/cluster.json`: its own pid and each node's
command and pid. `restart` asks a live supervisor through a request file in
`<data-dir>/control/` and waits for the node to be ready; with no supervisor
(`--detach`) it starts the node itself, detached.
"""

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

PIDS_FILE = "cluster.pids"
STATE_FILE = "cluster.json"
CONTROL_DIR = "control"
READY_TIMEOUT_S = 60.0
SUPERVISE_POLL_S = 0.2
STOP_TIMEOUT_S = 15.0
RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def local_config(
    nodes: int, shards: int, data_dir: str, base_http: int = 8781, base_raft: int = 9100
) -> dict[str, Any]:
    return {
        "cluster": {
            "name": "local",
            "shards": shards,
            "nodes": [
                {
                    "id": f"n{i + 1}",
                    "host": "127.0.0.1",
                    "http_port": base_http + i,
                    "raft_port_base": base_raft + 100 * i,
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


def _is_ready(url: str) -> bool:
    try:
        status, _ = _get_json(url + "/readyz")
    except (OSError, ValueError):
        return False
    return status == 200


def wait_ready(urls: list[str], timeout_s: float = READY_TIMEOUT_S, stop: Any = lambda: False) -> bool:
    deadline = time.monotonic() + timeout_s
    pending = list(urls)
    while pending and time.monotonic() < deadline and not stop():
        pending = [url for url in pending if not _is_ready(url)]
        if pending:
            time.sleep(0.2)
    return not pending


def how_it_ended(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class _Node:
    id: str
    url: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    reported: bool = False  # its death was announced
    restarts: int = 0
    restart_at: float | None = None  # --auto-restart: when to try again

    def start(self, detach: bool) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=detach)
        self.reported = False
        self.restart_at = None


@dataclass
class Supervisor:
    """The dev cluster's node processes, and what to do when one dies."""

    data_dir: Path
    nodes: list[_Node]
    auto_restart: bool = False
    out: TextIO = field(default_factory=lambda: sys.stdout)
    err: TextIO = field(default_factory=lambda: sys.stderr)
    stopping: bool = False

    @property
    def control(self) -> Path:
        return self.data_dir / CONTROL_DIR

    def save_state(self, detached: bool = False) -> None:
        state = {
            "supervisor_pid": None if detached else os.getpid(),
            "nodes": {n.id: {"pid": n.proc.pid if n.proc else None, "argv": n.argv, "url": n.url, "log": str(n.log)}
                      for n in self.nodes},
        }
        tmp = self.data_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        os.replace(tmp, self.data_dir / STATE_FILE)
        pids = [str(n.proc.pid) for n in self.nodes if n.proc is not None]
        (self.data_dir / PIDS_FILE).write_text("\n".join(pids) + "\n")

    def start_all(self, detach: bool) -> None:
        self.control.mkdir(exist_ok=True)
        for request in self.control.iterdir():
            request.unlink(missing_ok=True)  # left by an earlier run
        for node in self.nodes:
            node.start(detach)
        self.save_state(detached=detach)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.stopping = True

    def install_signal_handlers(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def supervise(self) -> None:
        """Until a stop signal: report deaths, serve restart requests."""
        while not self.stopping:
            self.step(time.monotonic())
            time.sleep(SUPERVISE_POLL_S)

    def step(self, now: float) -> None:
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is not None and not node.reported:
                self._report_death(node, now)
            if node.restart_at is not None and now >= node.restart_at:
                self._restart(node, "by --auto-restart")
        for request in sorted(self.control.glob("restart-*")):
            node_id = request.name.removeprefix("restart-")
            request.unlink(missing_ok=True)
            node = next((n for n in self.nodes if n.id == node_id), None)
            if node is None:
                print(f"raftmem: restart asked for unknown node {node_id!r}", file=self.err, flush=True)
                continue
            self._restart(node, "on request")

    def _report_death(self, node: _Node, now: float) -> None:
        assert node.proc is not None and node.proc.returncode is not None
        node.reported = True
        others = [n.id for n in self.nodes if n is not node and n.proc is not None and n.proc.poll() is None]
        line = (f"raftmem: node {node.id} exited ({how_it_ended(node.proc.returncode)}); "
                f"{', '.join(others) or 'no node'} still serving. ")
        if self.auto_restart:
            delay = RESTART_BACKOFF_S[min(node.restarts, len(RESTART_BACKOFF_S) - 1)]
            node.restart_at = now + delay
            line += f"Restarting it in {delay:.0f}s (--auto-restart)."
        else:
            line += f"Restart it with: raftmem cluster restart {node.id} --data-dir {self.data_dir}"
        print(line, file=self.err, flush=True)

    def _restart(self, node: _Node, why: str) -> None:
        if node.proc is not None and node.proc.poll() is None:
            _stop([node.proc])
        node.restarts += 1
        node.start(detach=False)
        self.save_state()
        assert node.proc is not None
        print(f"raftmem: restarted {node.id} {why} (pid {node.proc.pid}); log {node.log}", file=self.out, flush=True)

    def stop_all(self) -> None:
        _stop([n.proc for n in self.nodes if n.proc is not None])
        (self.data_dir / PIDS_FILE).unlink(missing_ok=True)
        (self.data_dir / STATE_FILE).unlink(missing_ok=True)
        print("stopped every node.", file=self.out, flush=True)


def _set(cfg: dict[str, Any], setting: str) -> None:
    """`section.key=value` into the config (the value read as YAML: 0, false, [a, b])."""
    path, sep, raw = setting.partition("=")
    keys = path.split(".")
    if not sep or not all(keys):
        raise ValueError("give it as section.key=value, e.g. limits.relay_in_flight_max=0")
    node = cfg
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"{key} is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def _up(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    state = _load_state(data_dir)
    if state and state.get("supervisor_pid") and _alive(int(state["supervisor_pid"])):
        print(f"raftmem: a cluster is already running from {data_dir} (supervisor pid {state['supervisor_pid']})",
              file=sys.stderr)
        return 1
    if args.config:
        cfg = yaml.safe_load(Path(args.config).read_text())
        fixed = {"--nodes": len(cfg["cluster"]["nodes"]), "--shards": cfg["cluster"].get("shards", 8)}
        for option, given in (("--nodes", args.nodes), ("--shards", args.shards)):
            if given is not None and given != fixed[option]:
                print(f"raftmem: {option} {given} contradicts {args.config}, which has {fixed[option]}; "
                      f"drop {option} or change the file", file=sys.stderr)
                return 2
    else:
        cfg = local_config(args.nodes or 3, args.shards or 8, str(data_dir), args.http_port_base, args.raft_port_base)
    for setting in args.set or ():
        try:
            _set(cfg, setting)
        except ValueError as e:
            print(f"raftmem: --set {setting}: {e}", file=sys.stderr)
            return 2
    # --data-dir is where the data goes, whatever the config file says.
    cfg.setdefault("storage", {})["data_dir"] = str(data_dir)
    config_path = data_dir / "cluster.yaml"
    config_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    nodes = [
        _Node(
            id=n["id"],
            url=f"http://{n['host']}:{n['http_port']}",
            argv=[sys.executable, "-m", "cli.main", "serve", "--config", str(config_path), "--node", n["id"]],
            log=logs / f"{n['id']}.log",
        )
        for n in cfg["cluster"]["nodes"]
    ]
    sup = Supervisor(data_dir, nodes, auto_restart=args.auto_restart)
    if not args.detach:
        # Before the first child starts: a signal now must still stop them all.
        sup.install_signal_handlers()
    sup.start_all(detach=args.detach)
    ok = wait_ready([n.url for n in nodes], stop=lambda: sup.stopping)
    for node, spec in zip(nodes, cfg["cluster"]["nodes"], strict=True):
        print(f"  {node.id}: API {node.url}  Raft {spec['host']}:{spec['raft_port_base']}+shard  log {node.log}")
    if not ok or sup.stopping:
        if not sup.stopping:
            print(f"raftmem: the cluster did not become ready in {READY_TIMEOUT_S:.0f}s; see the logs",
                  file=sys.stderr)
        sup.stop_all()
        return 0 if sup.stopping else 3
    urls = [n.url for n in nodes]
    print("\nready. Try:")
    print(f"  curl -s -X PUT {urls[0]}/v1/memories/team-a/m-1 -d '{{\"agent_id\": \"a1\", \"content\": \"hello\"}}'")
    print(f"  curl -s {urls[-1]}/v1/memories/team-a/m-1")
    print(f"  curl -s {urls[-1]}/v1/cluster")
    if args.detach:
        print(f"\nrunning in the background; stop with: raftmem cluster down --data-dir {data_dir}")
        return 0
    print(f"\nKill a node (kill -9 <pid>; pids in {data_dir / STATE_FILE}): the others carry on.")
    print(f"Bring it back: raftmem cluster restart <node> --data-dir {data_dir}. Ctrl-C stops every node.",
          flush=True)
    sup.supervise()
    sup.stop_all()
    return 0


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _load_state(data_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((data_dir / STATE_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return state


def _restart_cmd(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    state = _load_state(data_dir)
    if state is None:
        print(f"raftmem: no cluster started from {data_dir} ({STATE_FILE} missing)", file=sys.stderr)
        return 1
    node = state["nodes"].get(args.node)
    if node is None:
        print(f"raftmem: no node {args.node!r} (nodes: {', '.join(sorted(state['nodes']))})", file=sys.stderr)
        return 2
    supervisor = state.get("supervisor_pid")
    old_pid = node.get("pid")
    if supervisor and _alive(int(supervisor)):
        (data_dir / CONTROL_DIR).mkdir(exist_ok=True)
        (data_dir / CONTROL_DIR / f"restart-{args.node}").write_text("")
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            fresh = _load_state(data_dir) or state
            pid = fresh["nodes"][args.node].get("pid")
            if pid != old_pid and _is_ready(node["url"]):
                print(f"restarted {args.node} (pid {pid}); ready on {node['url']}")
                return 0
            time.sleep(0.2)
        print(f"raftmem: {args.node} was not ready within {READY_TIMEOUT_S:.0f}s; see {node['log']}",
              file=sys.stderr)
        return 3
    # No supervisor (--detach): start it ourselves, detached like the others.
    if old_pid and _alive(int(old_pid)):
        os.kill(int(old_pid), signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while _alive(int(old_pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
    with open(node["log"], "ab") as out:
        proc = subprocess.Popen(node["argv"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    node["pid"] = proc.pid
    (data_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    (data_dir / PIDS_FILE).write_text("\n".join(str(n["pid"]) for n in state["nodes"].values() if n["pid"]) + "\n")
    ok = wait_ready([node["url"]])
    print(f"restarted {args.node} (pid {proc.pid}); {'ready' if ok else 'not ready yet'} on {node['url']}")
    return 0 if ok else 3


def _down(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir)
    pids_file = data_dir / PIDS_FILE
    state = _load_state(data_dir)
    supervisor = state.get("supervisor_pid") if state else None
    if supervisor and _alive(int(supervisor)):
        # A supervised cluster: let the supervisor stop its nodes.
        os.kill(int(supervisor), signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S + 5
        while _alive(int(supervisor)) and time.monotonic() < deadline:
            time.sleep(0.1)
        print("stopped the cluster (through its supervisor).")
        return 0
    if not pids_file.exists():
        print(f"raftmem: no {pids_file}; nothing to stop", file=sys.stderr)
        return 1
    pids = [int(x) for x in pids_file.read_text().split()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for pid in pids:
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
    pids_file.unlink()
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    print(f"stopped {len(pids)} node(s).")
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("cluster", help="local development cluster")
    csub = p.add_subparsers(dest="cluster_command", required=True)
    up = csub.add_parser("up", help="start a local cluster and supervise it (Ctrl-C or SIGTERM stops it)")
    up.add_argument("--nodes", type=int, help="nodes of the generated config (default 3); with --config, "
                                               "must agree with it")
    up.add_argument("--shards", type=int, help="shards of the generated config (default 8); with --config, "
                                                "must agree with it")
    up.add_argument("--config", help="use this cluster YAML instead of a generated one (its data_dir is "
                                     "replaced by --data-dir)")
    up.add_argument("--data-dir", default="./data", help="where every node's data, the logs and the "
                                                         "cluster's state go")
    up.add_argument("--http-port-base", type=int, default=8781, help="the first node's API port (generated config)")
    up.add_argument("--raft-port-base", type=int, default=9100,
                    help="the first node's first Raft port; node i uses +100*i (generated config)")
    up.add_argument("--auto-restart", action="store_true",
                    help="restart a node that died, after a back-off (1 s, doubling to 30 s)")
    up.add_argument("--detach", action="store_true", help="leave the nodes running, with no supervisor")
    up.add_argument("--set", action="append", metavar="SECTION.KEY=VALUE",
                    help="change one setting of the config (repeatable; the value is YAML), "
                         "e.g. --set limits.relay_in_flight_max=0")
    up.set_defaults(func=_up)
    restart = csub.add_parser("restart", help="start a node of a local cluster again (or restart a live one)")
    restart.add_argument("node")
    restart.add_argument("--data-dir", default="./data")
    restart.set_defaults(func=_restart_cmd)
    down = csub.add_parser("down", help="stop a local cluster (detached, or through its supervisor)")
    down.add_argument("--data-dir", default="./data")
    down.set_defaults(func=_down)
