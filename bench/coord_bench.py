"""Locks and task claims, raftmem against etcd, under the same load.

    python bench/coord_bench.py --target raftmem|etcd --url URL[,URL...] [--duration S] [--clients N] [--json]

Three measurements, one after the other:

- `uncontended`: one client acquires and releases a lock (one of 32 names, in
  turn, so every shard's leader is used), sequentially: latency of the pair,
  p50 / p99.
- `contended`: `--clients` clients loop acquire (waiting) + release on ONE
  lock: hand-overs per second (acquisitions completed), and the pair's p50/p99.
- `tasks`: the queue is filled with enough tasks first, then `--clients`
  workers loop claim + complete: completions per second.

raftmem: raftmem.client (`acquire_lock` with `wait_ms`, `release_lock`,
`claim_task`, `complete_task`; leader-routed, idempotency keys on).
etcd 3.4 through its JSON gateway: each client grants a lease (as `etcdctl
lock` does) and calls the v3lock service, `POST /v3/lock/lock {name, lease}`
(it blocks until acquired) and `/v3/lock/unlock {key}`. etcd has no task
queue: the workers do the usual compare-and-swap claim (range the queue, then
a txn that moves the first of a few random candidates to `claimed/` only if
its mod_revision is unchanged) and complete by deleting the claim.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli.bench import Histogram  # noqa: E402
from raftmem.client import AsyncClient, LockHeld  # noqa: E402

LOCK_TTL_MS = 10_000
# etcd leases (one per client, as `etcdctl lock` keeps one per session) outlive the
# run instead of being kept alive: keep-alive traffic would only cost etcd.
ETCD_LEASE_TTL_S = 600
WAIT_MS = 30_000
UNCONTENDED_NAMES = 32
CLAIM_CANDIDATES = 8
REQUEST_TIMEOUT_S = 35.0


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class Raftmem:
    def __init__(self, urls: list[str]) -> None:
        self.client = AsyncClient(urls)
        self.ns = f"bench-{uuid.uuid4().hex[:6]}"

    async def close(self) -> None:
        await self.client.close()

    async def lock_pair(self, worker: int, name: str) -> None:
        lease = await self.client.acquire_lock(self.ns, name, ttl_ms=LOCK_TTL_MS, holder=f"w{worker}",
                                               wait_ms=WAIT_MS)
        await self.client.release_lock(lease)

    async def fill(self, tasks: int, clients: int) -> None:
        queue = iter(range(tasks))

        async def one() -> None:
            for i in queue:
                await self.client.enqueue_task(self.ns, {"n": i})

        await asyncio.gather(*(one() for _ in range(clients)))

    async def claim_complete(self, worker: int) -> bool:
        task = await self.client.claim_task(self.ns, lease_ms=LOCK_TTL_MS, worker=f"w{worker}")
        if task is None:
            return False
        await self.client.complete_task(self.ns, task["id"], task["fence"], "ok")
        return True


class Etcd:
    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S))
        self.prefix = f"bench-{uuid.uuid4().hex[:6]}"
        self.leases: dict[int, str] = {}

    async def close(self) -> None:
        await self.session.close()

    async def post(self, worker: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(self.urls[worker % len(self.urls)] + path, json=body) as resp:
            out: dict[str, Any] = await resp.json(content_type=None)
            if resp.status != 200:
                raise RuntimeError(f"etcd {path}: {resp.status} {out}")
            return out

    async def lease(self, worker: int) -> str:
        if worker not in self.leases:
            granted = await self.post(worker, "/v3/lease/grant", {"TTL": ETCD_LEASE_TTL_S})
            self.leases[worker] = granted["ID"]
        return self.leases[worker]

    async def lock_pair(self, worker: int, name: str) -> None:
        lease = await self.lease(worker)
        locked = await self.post(worker, "/v3/lock/lock", {"name": b64(f"{self.prefix}/{name}"), "lease": lease})
        await self.post(worker, "/v3/lock/unlock", {"key": locked["key"]})

    async def fill(self, tasks: int, clients: int) -> None:
        queue = iter(range(tasks))

        async def one(worker: int) -> None:
            for i in queue:
                await self.post(worker, "/v3/kv/put", {"key": b64(f"{self.prefix}/q/{i:09d}"),
                                                        "value": b64(json.dumps({"n": i}))})

        await asyncio.gather(*(one(w) for w in range(clients)))

    async def claim_complete(self, worker: int) -> bool:
        start = f"{self.prefix}/q/"
        found = await self.post(worker, "/v3/kv/range", {"key": b64(start), "range_end": b64(start[:-1] + "0"),
                                                         "limit": CLAIM_CANDIDATES})
        kvs = found.get("kvs") or []
        if not kvs:
            return False
        kv = random.choice(kvs)
        claimed = b64(f"{self.prefix}/claimed/{base64.b64decode(kv['key']).decode()}")
        txn = await self.post(worker, "/v3/kv/txn", {
            "compare": [{"key": kv["key"], "target": "MOD", "result": "EQUAL", "mod_revision": kv["mod_revision"]}],
            "success": [{"request_delete_range": {"key": kv["key"]}},
                        {"request_put": {"key": claimed, "value": kv["value"], "lease": await self.lease(worker)}}],
        })
        if not txn.get("succeeded"):
            return True  # another worker took it: a claim attempt, not a completion (counted apart)
        await self.post(worker, "/v3/kv/deleterange", {"key": claimed})
        self.completed += 1
        return True

    completed = 0


async def timed(hist: Histogram, call: Callable[[], Awaitable[Any]]) -> None:
    started = time.perf_counter()
    await call()
    hist.record(time.perf_counter() - started)


async def uncontended(target: Raftmem | Etcd, duration_s: float) -> dict[str, Any]:
    hist = Histogram()
    deadline = time.monotonic() + duration_s
    names = itertools.cycle([f"solo-{i}" for i in range(UNCONTENDED_NAMES)])
    while time.monotonic() < deadline:
        name = next(names)
        await timed(hist, lambda: target.lock_pair(0, name))  # noqa: B023 (awaited at once)
    return {"pairs": hist.count, "p50_ms": hist.percentile(50) * 1000, "p99_ms": hist.percentile(99) * 1000}


async def contended(target: Raftmem | Etcd, clients: int, duration_s: float) -> dict[str, Any]:
    hist = Histogram()
    errors: dict[str, int] = {}
    deadline = time.monotonic() + duration_s

    async def client(worker: int) -> None:
        while time.monotonic() < deadline:
            try:
                await timed(hist, lambda: target.lock_pair(worker, "hot"))
            except (LockHeld, RuntimeError, aiohttp.ClientError, TimeoutError) as e:
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1

    started = time.monotonic()
    await asyncio.gather(*(client(w) for w in range(clients)))
    elapsed = time.monotonic() - started
    return {"handoffs": hist.count, "handoffs_per_s": hist.count / elapsed, "p50_ms": hist.percentile(50) * 1000,
            "p99_ms": hist.percentile(99) * 1000, "errors": errors}


async def tasks(target: Raftmem | Etcd, clients: int, duration_s: float, fill: int) -> dict[str, Any]:
    filled_at = time.monotonic()
    await target.fill(fill, clients)
    fill_s = time.monotonic() - filled_at
    done = 0
    attempts = 0
    deadline = time.monotonic() + duration_s

    async def worker(w: int) -> None:
        nonlocal done, attempts
        while time.monotonic() < deadline:
            attempts += 1
            if not await target.claim_complete(w):
                return
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(clients)))
    elapsed = time.monotonic() - started
    completed = target.completed if isinstance(target, Etcd) else done
    return {"completed": completed, "per_s": completed / elapsed, "claim_attempts": attempts,
            "filled": fill, "fill_per_s": fill / fill_s}


async def main(args: argparse.Namespace) -> dict[str, Any]:
    urls = [u.rstrip("/") for u in args.url.split(",") if u]
    target: Raftmem | Etcd = Raftmem(urls) if args.target == "raftmem" else Etcd(urls)
    try:
        out: dict[str, Any] = {"target": args.target, "clients": args.clients, "duration_s": args.duration,
                               "at": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
        await target.lock_pair(0, "warmup")
        out["uncontended"] = await uncontended(target, args.duration)
        out["contended"] = await contended(target, args.clients, args.duration)
        out["tasks"] = await tasks(target, args.clients, args.duration, args.fill)
        return out
    finally:
        await target.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=("raftmem", "etcd"), default="raftmem")
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--fill", type=int, default=6000, help="tasks enqueued before the workers start")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(main(args))
    print(json.dumps(result) if args.json else json.dumps(result, indent=1))
