"""Load many memories through POST /v1/batch and watch each node's memory.

    python bench/load_memories.py --url http://127.0.0.1:8781,... --count 1000000 \
        [--batch 64] [--concurrency 16] [--value-bytes 200] [--pids-from data/cluster.json]

Writes `count` memories (ids m-0 ... in namespace `load`; with --corpus the
texts, agents, tags and --dims vectors of cli/corpus.py), `batch` puts per
request, `concurrency` requests in flight, spread over the nodes. Operations refused for
back-pressure (429), no leader (503) or of unknown outcome (504), and requests
that failed whole, are sent again (to the next node, after a pause that
doubles, at most 8 times): the same put twice is harmless. Every second
it samples each node's resident memory (VmRSS in /proc/<pid>/status, pids from
`raftmem cluster up`'s cluster.json) and prints, at the end, the load rate, the
peak and final RSS per node, and what each node's /metrics says holds memory
(memtables, block cache, Raft log bytes). JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from cli import corpus

SAMPLE_S = 1.0
RETRY_STATUSES = (429, 503, 504)  # back-pressure, no leader, outcome unknown: sent again
ATTEMPTS_MAX = 8
RETRY_PAUSE_S, RETRY_PAUSE_S_MAX = 0.05, 2.0
PIECES = (
    "raftmem_node_memtable_bytes",
    "raftmem_node_block_cache_bytes",
    "process_resident_memory_bytes",
)


def rss_bytes(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(match.group(1)) * 1024 if match else None


async def metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=10)) as resp:
        text = await resp.text()
    out: dict[str, float] = {}
    for name in PIECES:
        match = re.search(rf"^{name} (\S+)$", text, re.M)
        if match:
            out[name] = float(match.group(1))
    out["raft_log_bytes"] = sum(float(v) for v in re.findall(r"^raftmem_shard_log_bytes\{[^}]*\} (\S+)$", text, re.M))
    return out


async def load(args: argparse.Namespace) -> dict[str, Any]:
    urls = [u.rstrip("/") for u in args.url.split(",")]
    pids: dict[str, int] = {}
    if args.pids_from:
        state = json.loads(Path(args.pids_from).read_text())
        pids = {node: info["pid"] for node, info in state["nodes"].items() if info.get("pid")}
    peaks = {node: 0 for node in pids}
    value = "x" * args.value_bytes
    batches = (args.count + args.batch - 1) // args.batch
    next_batch = itertools.count()
    errors = 0
    written = 0
    retried = 0

    async def send(session: aiohttp.ClientSession, url: str, ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One POST /v1/batch; the operations worth sending again (refused for
        back-pressure or no leader, or of unknown outcome: a put of the same body
        twice is harmless). Counts what was written and what failed for good."""
        nonlocal errors, written
        try:
            async with session.post(url + "/v1/batch", data=orjson.dumps({"ops": ops}),
                                    timeout=aiohttp.ClientTimeout(total=60)) as resp:
                body = orjson.loads(await resp.read())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return ops
        if resp.status != 200:
            if resp.status in RETRY_STATUSES:
                return ops
            errors += len(ops)
            return []
        again = []
        for op, result in zip(ops, body["results"], strict=True):
            if result["status"] in (200, 201):
                written += 1
            elif result["status"] in RETRY_STATUSES:
                again.append(op)
            else:
                errors += 1
        return again

    async def worker(session: aiohttp.ClientSession, wid: int) -> None:
        nonlocal errors, retried
        while (b := next(next_batch)) < batches:
            first = b * args.batch
            ops = [{"op": "put", "namespace": args.namespace, "id": f"m-{i}",
                    "body": corpus.memory(i, args.dims) if args.corpus else {"content": value}}
                   for i in range(first, min(first + args.batch, args.count))]
            for attempt in range(ATTEMPTS_MAX):
                if attempt:
                    retried += len(ops)
                    await asyncio.sleep(min(RETRY_PAUSE_S_MAX, RETRY_PAUSE_S * 2**attempt))
                ops = await send(session, urls[(b + wid + attempt) % len(urls)], ops)
                if not ops:
                    break
            errors += len(ops)

    async def sampler() -> None:
        while True:
            for node, pid in pids.items():
                rss = rss_bytes(pid)
                if rss is not None:
                    peaks[node] = max(peaks[node], rss)
            await asyncio.sleep(SAMPLE_S)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency * 2)) as session:
        sampling = asyncio.create_task(sampler())
        started = time.monotonic()
        await asyncio.gather(*(worker(session, w) for w in range(args.concurrency)))
        took = time.monotonic() - started
        sampling.cancel()
        pieces = {u: await metrics(session, u) for u in urls}
    return {
        "count": args.count, "written": written, "errors": errors, "sent_again": retried, "seconds": round(took, 1),
        "ops_per_s": round(written / took) if took else 0,
        "peak_rss_mb": {n: round(v / 2**20, 1) for n, v in peaks.items()},
        "final_rss_mb": {n: round((rss_bytes(p) or 0) / 2**20, 1) for n, p in pids.items()},
        "metrics_mb": {u: {k: round(v / 2**20, 1) for k, v in m.items()} for u, m in pieces.items()},
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8781,http://127.0.0.1:8782,http://127.0.0.1:8783")
    p.add_argument("--count", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--value-bytes", type=int, default=200)
    p.add_argument("--namespace", default="load")
    p.add_argument("--corpus", action="store_true",
                   help="memories of cli/corpus.py (text, agents, kinds, tags) instead of --value-bytes of x")
    p.add_argument("--dims", type=int, default=0, help="with --corpus: an embedding of this many dimensions each")
    p.add_argument("--pids-from", help="cluster.json of `raftmem cluster up` (for RSS)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    result = asyncio.run(load(args))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['written']:,} memories in {result['seconds']} s ({result['ops_per_s']:,}/s), "
              f"{result['errors']} errors, {result['sent_again']} operations sent again")
        for node in result["peak_rss_mb"]:
            print(f"  {node}: RSS peak {result['peak_rss_mb'][node]} MB, now {result['final_rss_mb'][node]} MB")
        for url, m in result["metrics_mb"].items():
            print(f"  {url}: " + ", ".join(f"{k} {v} MB" for k, v in m.items()))
    return 0 if result["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
