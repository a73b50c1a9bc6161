"""One failover measurement, for bench/etcd_compare.sh.

Writers loop on keys of one shard (raftmem) or on the keyspace (etcd); once writes
flow, the process leading that shard (raftmem: the node leading the shard; etcd:
the Raft leader) is sent SIGKILL, and the time from the kill to the first
successful write issued after it is printed as JSON. The caller restarts the
victim. Only pids passed in --pids (processes the caller started) are signalled.

    python bench/failover.py --target raftmem --url http://127.0.0.1:8781,... \\
        --pids n1=123,n2=124,n3=125
    python bench/failover.py --target etcd --url http://127.0.0.1:2379,... \\
        --pids http://127.0.0.1:2379=200,...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

import aiohttp

from cli.bench import EtcdError, EtcdTarget
from raftmem.client import NO_RETRY, AsyncClient, ClientError, shard_for

WRITERS = 8
# Short, so that a writer stuck on a request the dead leader will never answer
# soon issues a fresh one (the measure counts writes issued after the kill).
REQUEST_TIMEOUT_S = 0.25  # well above a healthy write's p99.9 on either system
LEADER_POLL_S = 0.05
STEADY_WRITES = 20  # successes before the kill
STEADY_TIMEOUT_S = 20.0
RECOVERY_TIMEOUT_S = 60.0
ERROR_PAUSE_S = 0.005
SHARD = 0
KEYS = 16


class Writers:
    def __init__(self) -> None:
        self.successes = 0
        self.errors: dict[str, int] = {}
        self.kill_at: float | None = None
        self.recovered_at: float | None = None
        self.stop = asyncio.Event()

    async def loop(self, write: Any) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            began = time.monotonic()
            try:
                await write(n)
            except (ClientError, EtcdError, aiohttp.ClientError, TimeoutError) as e:
                kind = getattr(e, "kind", None) or getattr(e, "code", None) or e.__class__.__name__
                if self.kill_at is not None:
                    self.errors[kind] = self.errors.get(kind, 0) + 1
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            self.successes += 1
            if self.kill_at is not None and began >= self.kill_at and self.recovered_at is None:
                self.recovered_at = time.monotonic()
                self.stop.set()


async def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def raftmem_leader(client: AsyncClient) -> str:
    await client.refresh_routes(force=True)
    leader = client.routes.leaders.get(SHARD)
    if leader is None:
        raise RuntimeError(f"shard {SHARD} has no known leader")
    return leader


async def etcd_leader(session: aiohttp.ClientSession, urls: list[str]) -> str:
    """The client URL of the member that leads."""
    members: dict[str, str] = {}
    leader = None
    for url in urls:
        try:
            async with session.post(url + "/v3/maintenance/status", data=b"{}",
                                    timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)) as resp:
                body = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            continue  # a dead member: ask the others
        members[str(body["header"]["member_id"])] = url
        leader = str(body.get("leader", "0"))
    if leader not in members:
        raise RuntimeError(f"etcd leader {leader} is none of {members}")
    return members[leader]


async def poll_new_leader(find: Any, victim: str, deadline_s: float) -> float | None:
    """Seconds until `find()` names a leader other than `victim` (None: never)."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        try:
            leader = await find()
        except (RuntimeError, KeyError, aiohttp.ClientError, TimeoutError, ValueError):
            leader = None
        if leader is not None and leader != victim:
            return time.monotonic() - start
        await asyncio.sleep(LEADER_POLL_S)
    return None


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    urls = [u.strip().rstrip("/") for u in args.url.split(",") if u.strip()]
    pids = dict(item.rsplit("=", 1) for item in args.pids.split(","))
    writers = Writers()
    async with aiohttp.ClientSession() as session:
        if args.target == "raftmem":
            client = AsyncClient(urls, session=session, retry=NO_RETRY, timeout_s=REQUEST_TIMEOUT_S)
            await client.refresh_routes(force=True)
            ids = [f"f{i}" for i in range(100_000) if shard_for("failover", f"f{i}", client.routes.shard_count) == SHARD]

            async def write(n: int) -> None:
                await client.put_raw("failover", ids[n % KEYS], n)

            async def find_leader() -> str | None:
                fresh = AsyncClient(urls, session=session, retry=NO_RETRY, timeout_s=REQUEST_TIMEOUT_S)
                await fresh.refresh_routes(force=True)
                return fresh.routes.leaders.get(SHARD)

            victim = await raftmem_leader(client)
        else:
            etcd = EtcdTarget(urls, session, "x" * 200, ["linearizable"], REQUEST_TIMEOUT_S)

            async def write(n: int) -> None:
                await etcd.write(n % WRITERS, n % KEYS)

            async def find_leader() -> str | None:
                return await etcd_leader(session, urls)

            victim = await etcd_leader(session, urls)
        tasks = []
        for _ in range(WRITERS):  # staggered: some writer issues a fresh request every few ms
            tasks.append(asyncio.create_task(writers.loop(write)))
            await asyncio.sleep(REQUEST_TIMEOUT_S / WRITERS)
        try:
            await wait_until(lambda: writers.successes >= STEADY_WRITES, STEADY_TIMEOUT_S, "steady writes")
            if args.target == "raftmem":
                victim = await raftmem_leader(client)  # it may have moved meanwhile
            pid = int(pids[victim])
            writers.kill_at = time.monotonic()
            os.kill(pid, signal.SIGKILL)
            election = asyncio.create_task(poll_new_leader(find_leader, victim, RECOVERY_TIMEOUT_S))
            await asyncio.wait_for(writers.stop.wait(), RECOVERY_TIMEOUT_S)
            new_leader_s = await election
        finally:
            writers.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
    assert writers.kill_at is not None and writers.recovered_at is not None
    return {
        "target": args.target,
        "victim": victim,
        "pid": pid,
        "failover_s": round(writers.recovered_at - writers.kill_at, 3),
        "new_leader_s": None if new_leader_s is None else round(new_leader_s, 3),
        "errors_during": writers.errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("raftmem", "etcd"), required=True)
    parser.add_argument("--url", required=True, help="comma-separated client URLs")
    parser.add_argument("--pids", required=True, help="victim=pid,... (node id for raftmem, client URL for etcd)")
    args = parser.parse_args()
    try:
        result = asyncio.run(measure(args))
    except (TimeoutError, RuntimeError, KeyError, ClientError, aiohttp.ClientError) as e:
        print(json.dumps({"target": args.target, "error": f"{e.__class__.__name__}: {e}"}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
