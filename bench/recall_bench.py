"""The recall benchmark (issue 13), on 3 local nodes and 8 shards, each phase on
a cluster of its own (started and stopped here, by pid):

  search   preload COUNT corpus memories (cli/corpus.py, DIMS-dimensional
           vectors) through bench/load_memories.py, wait until every replica's
           indexes caught up, measure vector searches' recall@10 against exact
           cosine (--recall-queries), then `raftmem bench --mix 0:0:100` cycling text,
           vector, hybrid and filtered searches (CLIENTS clients); then the
           32-client write load of corpus memories with vectors, reporting the
           indexes' lag under it
  writes   the 32-client write load (corpus memories, text only) three times,
           on fresh clusters: indexing off, tiers as configured (batched), and
           every change eager; writes/s and write amplification side by side

    python bench/recall_bench.py --out /tmp/recall-bench [--count 100000] [--dims 384]
        [--phases search,writes] [--duration 20] [--search-clients 8]

Prints one JSON object per measurement and a summary; everything lands in OUT.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
NODES = ("n1", "n2", "n3")
SHARDS = 8
READY_TIMEOUT_S = 90
CATCH_UP_TIMEOUT_S = 3600


def free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ports() -> tuple[list[int], list[int]]:
    for base in range(18700, 30000, 300):
        http = [base + i for i in range(3)]
        raft = [base + 10 + 20 * i for i in range(3)]
        if all(free(p) for p in http + [r + s for r in raft for s in range(SHARDS)]):
            return http, raft
    raise SystemExit("no free ports")


def get_json(url: str, timeout_s: float = 10) -> Any:
    with urllib.request.urlopen(url, timeout=timeout_s) as resp:  # noqa: S310 (127.0.0.1 only)
        return json.loads(resp.read())


class Cluster:
    def __init__(self, root: Path, indexing: dict[str, Any], reuse: bool = False) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.config = root / "cluster.yaml"
        self.procs: list[subprocess.Popen[bytes]] = []
        if reuse and self.config.exists():  # the same ports: the membership table names them
            existing = yaml.safe_load(self.config.read_text())
            nodes = existing["cluster"]["nodes"]
            self.http = [n["http_port"] for n in nodes]
            self.urls = [f"http://127.0.0.1:{p}" for p in self.http]
            # This run's indexing settings (--search-set) on the same data.
            existing["indexing"] = {k: v for k, v in indexing.items() if "." not in k}
            self.config.write_text(yaml.safe_dump(existing))
            return
        self.http, raft = ports()
        config = {
            "cluster": {"name": "bench", "shards": SHARDS, "nodes": [
                {"id": n, "host": "127.0.0.1", "http_port": self.http[i], "raft_port_base": raft[i]}
                for i, n in enumerate(NODES)]},
            "replication": {"factor": 3},
            "raft": {"election_timeout_ms_min": 400, "election_timeout_ms_max": 1000, "heartbeat_ms": 100,
                     "fsync": "always"},
            "storage": {"data_dir": str(root / "data")},
            "indexing": {k: v for k, v in indexing.items() if "." not in k},
        }
        for dotted, value in indexing.items():  # another section's setting: "limits.entries_in_flight_max"
            if "." in dotted:
                section, _, key = dotted.partition(".")
                config.setdefault(section, {})[key] = value
        self.config.write_text(yaml.safe_dump(config))
        self.urls = [f"http://127.0.0.1:{p}" for p in self.http]

    def start(self) -> None:
        for n in NODES:
            log = open(self.root / f"{n}.log", "ab")  # noqa: SIM115 (kept open for the process)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "cli.main", "serve", "--config", str(self.config), "--node", n],
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + READY_TIMEOUT_S
        for url in self.urls:
            while True:
                try:
                    with urllib.request.urlopen(url + "/readyz", timeout=2) as resp:  # noqa: S310
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{url} not ready")
                time.sleep(0.2)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    def caught_up(self) -> bool:
        for url in self.urls:
            shards = get_json(url + "/v1/admin/indexes")["shards"]
            if any(not s["ready"] or s["lag_entries"] > 0 for s in shards.values()):
                return False
        return True


def run(argv: list[str], out: Path, name: str) -> dict[str, Any]:
    started = time.strftime("%H:%M:%S")
    result = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    (out / f"{name}.stdout").write_text(result.stdout)
    (out / f"{name}.stderr").write_text(result.stderr)
    if result.returncode not in (0, 1):
        raise SystemExit(f"{name} failed ({result.returncode}): {result.stderr[-2000:]}")
    body = json.loads(result.stdout.strip().splitlines()[-1])
    body["started"] = started
    print(json.dumps({name: body}), flush=True)
    return dict(body)


def bench(cluster: Cluster, out: Path, name: str, *args: str) -> dict[str, Any]:
    return run([sys.executable, "-m", "cli.main", "bench", "--url", ",".join(cluster.urls), "--json", *args],
               out, name)


def measure_recall(cluster: Cluster, count: int, dims: int, queries: int) -> dict[str, Any]:
    """recall@10 of vector searches: the ids a search returns against the exact
    10 nearest by cosine over every preloaded memory's vector (regenerated from
    cli/corpus.py, as bench/load_memories.py wrote them)."""
    import random

    import numpy as np

    sys.path.insert(0, str(REPO))
    from cli import corpus

    vectors = np.asarray([corpus.memory(i, dims)["embedding"] for i in range(count)], dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    rng = random.Random(11)
    found = []
    for n in range(queries):
        body = corpus.search_body("vector", rng, "load", dims)
        request = urllib.request.Request(cluster.urls[n % len(cluster.urls)] + "/v1/search",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 (127.0.0.1 only)
            items = json.loads(resp.read())["items"]
        query = np.asarray(body["vector"], dtype=np.float32)
        truth = set(np.argpartition(-(vectors @ query), 10)[:10].tolist())
        ids = {int(item["id"].removeprefix("m-")) for item in items[:10]}
        found.append(len(truth & ids) / 10)
    return {"queries": queries, "recall_at_10": round(sum(found) / len(found), 3)}


def phase_search(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    reuse = args.reuse and (out / "search" / "data").exists()
    cluster = Cluster(out / "search", settings(args.search_set), reuse=reuse)
    cluster.start()
    try:
        t0 = time.monotonic()
        load: dict[str, Any] = {"reused": str(out / "search" / "data")}
        if not reuse:
            load = run([sys.executable, "bench/load_memories.py", "--url", ",".join(cluster.urls), "--count",
                        str(args.count), "--corpus", "--dims", str(args.dims), "--json"], out, "preload")
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while not cluster.caught_up():
            if time.monotonic() > deadline:
                raise SystemExit("the indexes did not catch up")
            time.sleep(2)
        caught_up_s = round(time.monotonic() - t0, 1)
        if args.skip_searches:
            writes = bench(cluster, out, "writes_with_vectors", "--mix", "0:100", "--clients", "32", "--duration",
                           str(args.duration), "--corpus", "--dims", str(args.dims), "--keys", "100000")
            return {"writes_with_vectors": writes}
        recall = measure_recall(cluster, args.count, args.dims, args.recall_queries) if args.recall_queries else None
        print(json.dumps({"recall": recall}), flush=True)
        searches = bench(cluster, out, "searches", "--mix", "0:0:100", "--search", "text,vector,hybrid,filtered",
                         "--clients", str(args.search_clients), "--duration", str(args.duration), "--dims",
                         str(args.dims), "--search-namespace", "load")
        fresh = bench(cluster, out, "fresh", "--mix", "0:0:100", "--search", "text,vector", "--search-fresh",
                      "--clients", str(args.search_clients), "--duration", str(args.duration / 2), "--dims",
                      str(args.dims))
        writes = bench(cluster, out, "writes_with_vectors", "--mix", "0:100", "--clients", "32", "--duration",
                       str(args.duration), "--corpus", "--dims", str(args.dims), "--keys", "100000")
        return {"preload": load, "preload_and_index_s": caught_up_s, "recall": recall, "searches": searches, "fresh": fresh,
                "writes_with_vectors": writes}
    finally:
        cluster.stop()


WRITE_MODES: dict[str, dict[str, Any]] = {"off": {"enabled": False}, "batched": {}, "eager": {"default_tier": "eager"}}


def settings(spec: str) -> dict[str, Any]:
    """key=value,... (values are YAML scalars)."""
    return {k: yaml.safe_load(v) for k, _, v in (kv.partition("=") for kv in spec.split(",") if kv)}


def write_modes(spec: str, variants: list[str]) -> dict[str, dict[str, Any]]:
    """--write-modes off,batched and --variant NAME:key=value,...: indexing
    settings by mode name (a variant's values are YAML scalars; a dotted key,
    `limits.entries_in_flight_max`, is another section's)."""
    modes = dict(WRITE_MODES)
    for variant in variants:
        name, _, spec_of = variant.partition(":")
        modes[name] = settings(spec_of)
    unknown = [m for m in spec.split(",") if m not in modes]
    if unknown:
        raise SystemExit(f"unknown write modes {unknown} (known: {sorted(modes)})")
    return {m: modes[m] for m in spec.split(",")}


def writes_per_s(result: dict[str, Any]) -> float | None:
    return next((r["ops_per_s"] for r in result.get("results", []) if r["op"] == "write"), None)


def phase_writes(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Each mode on a fresh cluster, `--rounds` times, the modes alternated
    (this machine drifts by up to 2x within minutes: compare within a round)."""
    modes = write_modes(args.write_modes, args.variant)
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        results = {}
        order = list(modes) if r % 2 == 0 else list(reversed(modes))
        for mode in order:
            name = f"{mode}-{r}" if args.rounds > 1 else mode
            cluster = Cluster(out / f"writes-{name}", modes[mode])
            cluster.start()
            try:
                results[mode] = bench(cluster, out, f"writes_{name}", "--mix", "0:100", "--clients", "32",
                                      "--duration", str(args.duration), "--corpus", "--keys", "100000")
            finally:
                cluster.stop()
        print(json.dumps({"round": r, "writes_per_s": {m: writes_per_s(v) for m, v in results.items()}}),
              flush=True)
        rounds.append(results)
    return rounds[0] if args.rounds == 1 else {"rounds": rounds}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--dims", type=int, default=384)
    p.add_argument("--duration", type=float, default=20)
    p.add_argument("--search-clients", type=int, default=8)
    p.add_argument("--phases", default="search,writes")
    p.add_argument("--skip-searches", action="store_true", help="search phase: only the write load with vectors")
    p.add_argument("--reuse", action="store_true", help="search: restart on OUT's preloaded data, no preload")
    p.add_argument("--search-set", default="", help="search: key=value,... indexing settings of its cluster "
                   "(with --reuse: an A/B on the same data, e.g. engines=thread)")
    p.add_argument("--recall-queries", type=int, default=200,
                   help="search: vector searches whose recall@10 is measured against exact cosine (0: none)")
    p.add_argument("--write-modes", default="off,batched,eager", help="writes: the modes, in order")
    p.add_argument("--variant", action="append", default=[],
                   help="writes: NAME:key=value,... an extra mode with these indexing settings")
    p.add_argument("--rounds", type=int, default=1, help="writes: the modes this many times, alternated")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "count": args.count, "dims": args.dims,
                              "cpus": os.cpu_count()}
    phases = args.phases.split(",")
    if "writes" in phases:
        report["writes"] = phase_writes(args, args.out)
    if "search" in phases:
        report["search"] = phase_search(args, args.out)
    (args.out / "report.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
