"""Writes with and without watchers on ONE raftmem cluster, alternated (issue
14's ratio read without the spread between fresh clusters, which is larger
than the effect measured).

    python bench/watch_alternate.py [--sequence "0 100 0 100/100"] [--rate 0] [--duration 15]
        [--set watch.batch_ms=25 ...] [--json FILE]

A count N/K runs N watchers K to a connection (POST /v1/watch: many watches
on one connection); N alone, one each.

Starts a 3-node cluster (8 shards, fsync always, like bench/recall_bench.py)
on empty data, waits until every shard is led by its preferred replica (the
placement's spread, where the balancer leaves it), then runs
bench/watch_bench.py once per count in `--sequence` (32 writers; `--rate` 0:
as fast as answered, else a fixed load). Per run: writes/s, the servers' CPU
per write (all three nodes, the whole run), the client process's CPU (cores),
events per socket write, ack->event p50/p99, the nodes' RSS after it, how often their event loops ran over 100 ms late,
and whether any shard's leader or
term changed during it (a hand-over or an election in a run skews it). Then,
for each run with watchers, its writes against the mean of the runs without
watchers beside it. Everything started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load_memories import rss_bytes  # noqa: E402
from recall_bench import REPO, Cluster, get_json  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def leaders(url: str) -> list[tuple[str | None, int]]:
    return [(s.get("leader"), int(s.get("term", 0))) for s in get_json(url + "/v1/cluster")["shards"]]


def loop_stalls(urls: list[str], over_s: str = "0.1") -> int:
    """How many of the nodes' event-loop lag probes (every 100 ms) ran more
    than `over_s` late, so far (raftmem_event_loop_lag_seconds)."""
    total = 0
    for url in urls:
        with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:  # noqa: S310 (loopback)
            lines = resp.read().decode().splitlines()
        count = le = 0.0
        for line in lines:
            if line.startswith("raftmem_event_loop_lag_seconds_count"):
                count = float(line.split()[-1])
            elif line.startswith(f'raftmem_event_loop_lag_seconds_bucket{{le="{over_s}"}}'):
                le = float(line.split()[-1])
        total += int(count - le)
    return total


def socket_writes(urls: list[str]) -> tuple[int, int]:
    """(events, socket writes) of every node's watch streams so far."""
    views = [get_json(u + "/v1/cluster")["watch"] for u in urls]
    return sum(v["events"] for v in views), sum(v.get("writes", 0) for v in views)


def one(cluster: Cluster, count: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    watchers, _, per = count.partition("/")
    urls = cluster.urls
    before_leaders, (events0, writes0), stalls0 = leaders(urls[0]), socket_writes(urls), loop_stalls(urls)
    servers0, started = sum(cpu_s(p.pid) for p in cluster.procs), time.monotonic()
    report = out / f"run-{watchers}-{time.monotonic_ns()}.json"
    timing = out / "time.txt"
    subprocess.run(
        ["/usr/bin/time", "-f", "%U %S", "-o", str(timing), sys.executable, str(REPO / "bench" / "watch_bench.py"),
         "--target", "raftmem", "--url", ",".join(urls), "--clients", str(args.clients), "--watchers", watchers,
         "--per-connection", per or "1",
         "--duration", str(args.duration), "--warmup", str(args.warmup), "--value-bytes", "200", "--keys", "1000",
         "--rate", str(args.rate), "--json", str(report)],
        cwd=REPO, check=True, capture_output=True)
    wall = time.monotonic() - started
    servers = sum(cpu_s(p.pid) for p in cluster.procs) - servers0
    events1, writes1 = socket_writes(urls)
    result = json.loads(report.read_text())
    writes = result["writes_per_s"] * result["duration_s"]
    user, system = (float(x) for x in timing.read_text().split()[-2:])
    return {
        "run": count, "watchers": int(watchers), "writes_per_s": result["writes_per_s"],
        "events_vs_writes": result["events_vs_writes"],
        "server_us_per_write": round(servers * 1e6 / writes) if writes else None,
        "client_cores": round((user + system) / wall, 2),
        "events_per_socket_write": round((events1 - events0) / max(1, writes1 - writes0), 1),
        "ack_event_p50_ms": result["e2e_from_ack_p50_ms"], "ack_event_p99_ms": result["e2e_from_ack_p99_ms"],
        "leaders_changed": [[i, a, b] for i, (a, b) in enumerate(zip(before_leaders, leaders(urls[0]), strict=True))
                            if a != b],
        "nodes_rss_mb": round(sum(rss_bytes(p.pid) or 0 for p in cluster.procs) / 2**20),
        "loop_lags_over_100ms": loop_stalls(urls) - stalls0,
    }


def ratios(runs: list[dict[str, Any]]) -> list[float | None]:
    """Each run with watchers against the mean of the runs without beside it."""
    out: list[float | None] = []
    for i, run in enumerate(runs):
        beside = [runs[j]["writes_per_s"] for j in (i - 1, i + 1)
                  if 0 <= j < len(runs) and runs[j]["watchers"] == 0]
        out.append(round(run["writes_per_s"] / (sum(beside) / len(beside)), 3)
                   if run["watchers"] and beside else None)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sequence", default="0 100 0 100",
                        help="watcher counts (N, or N/K: K a connection), one run each, in this order")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a node setting (YAML value), e.g. watch.batch_ms=50")
    parser.add_argument("--json", type=Path, help="also write the runs here")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's data and logs (printed)")
    args = parser.parse_args()
    settings = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if "." not in key:
            parser.error(f"--set {item}: SECTION.KEY=VALUE")
        settings[key] = yaml.safe_load(value)
    out = Path(tempfile.mkdtemp(prefix="watch-alternate-"))
    cluster = Cluster(out / "cluster", settings)
    try:
        cluster.start()
        # Every shard led by its preferred leader: the balancer's hand-overs would land in a run.
        subprocess.run([sys.executable, str(REPO / "bench" / "wait_balanced.py"), cluster.urls[0], "90"], cwd=REPO,
                       check=False)
        runs = []
        for count in args.sequence.split():
            runs.append(one(cluster, count, args, out))
            print(json.dumps(runs[-1]), flush=True)
    finally:
        cluster.stop()
        if args.keep:
            print(f"data and logs kept in {out}")
        else:
            shutil.rmtree(out, ignore_errors=True)
    for run, ratio in zip(runs, ratios(runs), strict=True):
        run["against_none_beside"] = ratio
    none = [r for r in runs if not r["watchers"]]
    for kind in dict.fromkeys(r["run"] for r in runs if r["watchers"]):
        with_watchers = [r for r in runs if r["run"] == kind]
        if none:
            pooled = (sum(r["writes_per_s"] for r in with_watchers) / len(with_watchers)) / (
                sum(r["writes_per_s"] for r in none) / len(none))
            print(f"{kind} / none, pooled: {pooled:.3f}; per run: "
                  f"{[r['against_none_beside'] for r in with_watchers]}")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
