"""Probes for bench/million.sh: latency with a large keyspace loaded, and the
waits that time a restart and a wiped node's catch-up.

    python bench/million_probe.py latency --raftmem URLS --etcd URLS --keys N [--gets 2000] [--pages 300]
    python bench/million_probe.py ready --raftmem URLS --keys N [--samples 200] [--timeout 600]
    python bench/million_probe.py ready --etcd URLS --keys N ...
    python bench/million_probe.py caught-up --raftmem URLS --node URL [--timeout 1200]
    python bench/million_probe.py index-check --node URL

`latency`: one client, sequential (latency, not throughput): `--gets` gets of
random keys of `raftmem bench --preload N`'s keyspace (raftmem `strong`, the
lease read; etcd linearizable), then `--pages` pages of 100 of a list walked
from its start (raftmem `GET /v1/memories/bench?limit=100` following cursors,
at `strong`; etcd a linearizable range over the prefix with limit 100, each
from after the last key). Prints JSON: p50/p99/max ms per target and kind.

`ready`: polls until every node answers and `--samples` random keys all read
back (any missing key is an error, not a wait: exit 1); prints the seconds.

`index-check`: `--node`'s derived indexes against its store, every shard
(`GET /v1/admin/indexes/{shard}/check`, no writes running): prints JSON with
the documents indexed, the records stored, and whether every shard matches
(nothing missing, extra, stale or duplicated; watermark at the applied index).

`caught-up`: with no writes running, reads every shard leader's commit index
(from the other nodes' /v1/cluster), then polls `--node`'s /v1/cluster until
its replica of every shard has applied at least that much; prints the seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.bench import NAMESPACE, key_id  # noqa: E402 - raftmem bench's keyspace
from raftmem.client import AsyncClient, ClientError, NotFound  # noqa: E402

POLL_S = 0.2
TIMEOUT = aiohttp.ClientTimeout(total=10)
PAGE = 100


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    if not ms:
        return {"count": 0}
    return {"count": len(ms), "p50_ms": round(ms[len(ms) // 2], 2),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 2), "max_ms": round(ms[-1], 2)}


async def etcd_post(session: aiohttp.ClientSession, url: str, path: str, body: dict[str, Any]) -> Any:
    async with session.post(url + path, json=body, timeout=TIMEOUT) as resp:
        answer = await resp.json(content_type=None)
        if resp.status != 200:
            raise RuntimeError(f"{url}{path}: HTTP {resp.status}: {answer}")
        return answer


async def timed(samples: list[float], coro: Any) -> Any:
    t0 = time.perf_counter()
    out = await coro
    samples.append(time.perf_counter() - t0)
    return out


async def raftmem_latency(urls: list[str], keys: int, gets: int, pages: int, rng: random.Random) -> dict[str, Any]:
    async with AsyncClient(urls) as client:
        await client.refresh_routes(force=True)
        get_s: list[float] = []
        for _ in range(gets):
            await timed(get_s, client.get_raw(NAMESPACE, key_id(rng.randrange(keys)), consistency="strong"))
        list_s: list[float] = []
        cursor = None
        for _ in range(pages):
            page = await timed(list_s, client.list_page(NAMESPACE, limit=PAGE, cursor=cursor, consistency="strong"))
            if page["count"] != PAGE:
                raise RuntimeError(f"a list page held {page['count']} memories, not {PAGE}")
            cursor = page.get("cursor")
    return {"get": percentiles(get_s), "list_page_100": percentiles(list_s)}


async def etcd_latency(urls: list[str], keys: int, gets: int, pages: int, rng: random.Random) -> dict[str, Any]:
    prefix = f"{NAMESPACE}/"
    end = b64(prefix[:-1] + chr(ord(prefix[-1]) + 1))
    async with aiohttp.ClientSession() as session:
        get_s: list[float] = []
        for i in range(gets):
            answer = await timed(get_s, etcd_post(session, urls[i % len(urls)], "/v3/kv/range",
                                                  {"key": b64(prefix + key_id(rng.randrange(keys)))}))
            if not answer.get("kvs"):
                raise RuntimeError("etcd: a preloaded key is missing")
        list_s: list[float] = []
        start = b64(prefix)
        for i in range(pages):
            answer = await timed(list_s, etcd_post(session, urls[i % len(urls)], "/v3/kv/range",
                                                   {"key": start, "range_end": end, "limit": PAGE}))
            kvs = answer.get("kvs") or []
            if len(kvs) != PAGE:
                raise RuntimeError(f"etcd: a range page held {len(kvs)} keys, not {PAGE}")
            start = b64(base64.b64decode(kvs[-1]["key"]).decode() + "\0")
    return {"get": percentiles(get_s), "list_page_100": percentiles(list_s)}


async def latency(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"keys": args.keys, "one_client_sequential": True}
    args.pages = min(args.pages, args.keys // PAGE)  # full pages only
    if args.raftmem:
        out["raftmem"] = await raftmem_latency(args.raftmem, args.keys, args.gets, args.pages, random.Random(1))
    if args.etcd:
        out["etcd"] = await etcd_latency(args.etcd, args.keys, args.gets, args.pages, random.Random(1))
    return out


async def _raftmem_sample_ok(urls: list[str], keys: list[int]) -> bool:
    """Every key reads back (strong); False while the cluster cannot answer yet."""
    try:
        async with AsyncClient(urls, timeout_s=5) as client:
            if not await client.refresh_routes(force=True):
                return False
            for key in keys:
                await client.get_raw(NAMESPACE, key_id(key), consistency="strong")
    except NotFound as e:
        raise SystemExit(f"raftmem: preloaded memory {e} is missing after the restart") from e
    except (ClientError, aiohttp.ClientError, OSError, TimeoutError):
        return False
    return True


async def _etcd_sample_ok(urls: list[str], keys: list[int]) -> bool:
    try:
        async with aiohttp.ClientSession() as session:
            for i, key in enumerate(keys):
                answer = await etcd_post(session, urls[i % len(urls)], "/v3/kv/range",
                                         {"key": b64(f"{NAMESPACE}/{key_id(key)}")})
                if not answer.get("kvs"):
                    raise SystemExit(f"etcd: preloaded key {key} is missing after the restart")
    except (RuntimeError, aiohttp.ClientError, OSError, TimeoutError):
        return False
    return True


async def ready(args: argparse.Namespace) -> float:
    t0 = time.monotonic()
    sample = random.Random(2).sample(range(args.keys), min(args.samples, args.keys))
    check = _raftmem_sample_ok if args.raftmem else _etcd_sample_ok
    urls = args.raftmem or args.etcd
    while not await check(urls, sample):
        if time.monotonic() - t0 > args.timeout:
            raise SystemExit(f"not ready after {args.timeout} s")
        await asyncio.sleep(POLL_S)
    return time.monotonic() - t0


async def _view(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    try:
        async with session.get(url + "/v1/cluster", timeout=TIMEOUT) as resp:
            return await resp.json() if resp.status == 200 else None
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None


async def caught_up(args: argparse.Namespace) -> float:
    t0 = time.monotonic()
    node = args.node.rstrip("/")
    async with aiohttp.ClientSession() as session:
        target: dict[int, int] = {}
        for url in (u for u in args.raftmem if u.rstrip("/") != node):
            view = await _view(session, url)
            for entry in (view or {}).get("shards", []):
                if entry.get("role") == "leader":
                    target[entry["shard"]] = max(target.get(entry["shard"], 0), int(entry["commit_index"]))
        if not target:
            raise SystemExit("no leader's commit index could be read")
        while True:
            view = await _view(session, node)
            applied = {e["shard"]: e.get("applied_index") or 0 for e in (view or {}).get("shards", [])}
            if all(applied.get(s, 0) >= c for s, c in target.items()):
                return time.monotonic() - t0
            if time.monotonic() - t0 > args.timeout:
                raise SystemExit(f"{node} not caught up after {args.timeout} s: applied {applied}, leaders {target}")
            await asyncio.sleep(POLL_S)


async def index_check(args: argparse.Namespace) -> dict[str, Any]:
    node = args.node.rstrip("/")
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    out: dict[str, Any] = {"documents": 0, "store": 0, "consistent": True, "problems": []}
    async with aiohttp.ClientSession(timeout=timeout) as session:
        view = await _view(session, node)
        for shard in range(int((view or {}).get("shard_count") or 0)):
            async with session.get(f"{node}/v1/admin/indexes/{shard}/check") as resp:
                body = await resp.json(content_type=None)
            if resp.status != 200:
                out["consistent"] = False
                out["problems"].append({"shard": shard, "status": resp.status, "body": body})
                continue
            out["documents"] += body["documents"]
            out["store"] += body["store"]
            vectors_ok = all(v["held"] == v["store"] == v["index"] for v in body["vectors"].values())
            if (body["missing"] or body["extra"] or body["stale"] or body["duplicates"] or not vectors_ok
                    or body["watermark"] < body["applied"]):
                out["consistent"] = False
                out["problems"].append({"shard": shard, "missing": len(body["missing"]), "extra": len(body["extra"]),
                                        "stale": len(body["stale"]), "duplicates": body["duplicates"],
                                        "watermark": body["watermark"], "applied": body["applied"]})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("latency", "ready", "caught-up", "index-check"):
        p = sub.add_parser(name)
        p.add_argument("--raftmem", type=lambda s: s.split(","), default=[])
        p.add_argument("--etcd", type=lambda s: s.split(","), default=[])
        p.add_argument("--keys", type=int, default=0)
        p.add_argument("--timeout", type=float, default=1200.0)
    sub.choices["latency"].add_argument("--gets", type=int, default=2000)
    sub.choices["latency"].add_argument("--pages", type=int, default=300)
    sub.choices["ready"].add_argument("--samples", type=int, default=200)
    sub.choices["caught-up"].add_argument("--node", required=True)
    sub.choices["index-check"].add_argument("--node", required=True)
    args = parser.parse_args()
    if args.cmd == "latency":
        print(json.dumps(asyncio.run(latency(args))))
    elif args.cmd == "index-check":
        print(json.dumps(asyncio.run(index_check(args))))
    elif args.cmd == "ready":
        print(f"{asyncio.run(ready(args)):.2f}")
    else:
        print(f"{asyncio.run(caught_up(args)):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
