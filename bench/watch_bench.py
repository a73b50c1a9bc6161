"""Watch under write load, against raftmem (GET /v1/watch, NDJSON) or etcd
(POST /v3/watch through its JSON gateway): CLIENTS writers put KEYS keys of one
prefix as fast as they are answered while WATCHERS watchers follow the prefix.

    python bench/watch_bench.py --target raftmem|etcd --url URL[,URL] [--clients 32]
        [--watchers 10] [--duration 15] [--warmup 3] [--value-bytes 200] [--keys 1000] [--rate 0] [--json FILE]

Reports write throughput and latency, events delivered per second (all
watchers together, and per watcher), and end-to-end latency from the write's
acknowledgement (and from its send) to the event's arrival, p50/p99. Every
write carries its own id in its value; watchers decode a sample of their
events (every event up to 10 watchers, fewer beyond: decoding 100 streams
would make this one process the bottleneck) and count the rest. Writers go to
the key's leader for raftmem (the bundled client), round robin for etcd (its
members forward to the leader). `--rate N` holds the writers to N writes a
second in all (a fixed load, so the servers' CPU per write with and without
watchers compares at the same rate; 0: as fast as answered). Watchers are spread over the nodes. Client and
servers share the machine: the numbers are the machine's, not the servers'
alone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raftmem.client import AsyncClient  # noqa: E402

PREFIX = "wbench"
SAMPLE_ALL_UP_TO = 10  # watchers; above, each decodes one event in SAMPLE_EVERY
SAMPLE_EVERY = 10
LINE_BYTES_MAX = 8 << 20


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


@dataclass
class Stats:
    measuring: bool = False
    writes: int = 0
    write_errors: int = 0
    write_latency_s: list[float] = field(default_factory=list)
    sent: dict[str, float] = field(default_factory=dict)  # write id -> send time
    acked: dict[str, float] = field(default_factory=dict)  # write id -> ack time
    events: list[int] = field(default_factory=list)  # per watcher, while measuring
    from_ack_s: list[float] = field(default_factory=list)
    from_send_s: list[float] = field(default_factory=list)
    stream_errors: int = 0

    def answered(self, write_id: str, started: float, ok: bool) -> None:
        if not ok:
            self.write_errors += 1
            return
        done = time.monotonic()
        self.acked[write_id] = done
        if self.measuring:
            self.writes += 1
            self.write_latency_s.append(done - started)

    def saw(self, write_id: str, at: float) -> None:
        sent = self.sent.get(write_id)
        if sent is None or not self.measuring:
            return
        self.from_send_s.append(at - sent)
        acked = self.acked.get(write_id)
        # An event may come before the writer has its answer: 0 from the ack then.
        self.from_ack_s.append(max(0.0, at - acked) if acked is not None else 0.0)


# -- writers ------------------------------------------------------------------------------
class Pace:
    """A writer's n-th write goes no sooner than `interval_s` × n after it began
    (0: no pacing)."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.began = time.monotonic()

    async def wait(self, n: int) -> None:
        if self.interval_s:
            delay = self.began + n * self.interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


async def raftmem_writer(client: AsyncClient, worker: int, keys: int, pad: str, stats: Stats,
                         stop: asyncio.Event, pace: Pace) -> None:
    for n in itertools.count():
        await pace.wait(n)
        if stop.is_set():
            return
        write_id = f"{worker}-{n}"
        started = time.monotonic()
        stats.sent[write_id] = started
        try:
            await client.put(PREFIX, f"k{(worker * 7919 + n) % keys}", {"w": write_id, "p": pad})
            ok = True
        except Exception:  # noqa: BLE001 (counted; the load goes on)
            ok = False
        stats.answered(write_id, started, ok)


async def etcd_writer(session: aiohttp.ClientSession, urls: list[str], worker: int, keys: int, pad: str,
                      stats: Stats, stop: asyncio.Event, pace: Pace) -> None:
    url = urls[worker % len(urls)]
    for n in itertools.count():
        await pace.wait(n)
        if stop.is_set():
            return
        write_id = f"{worker}-{n}"
        key = base64.b64encode(f"{PREFIX}/k{(worker * 7919 + n) % keys}".encode()).decode()
        value = base64.b64encode(orjson.dumps({"w": write_id, "p": pad})).decode()
        started = time.monotonic()
        stats.sent[write_id] = started
        try:
            async with session.post(url + "/v3/kv/put", data=orjson.dumps({"key": key, "value": value}),
                                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
                await resp.read()
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ok = False
        stats.answered(write_id, started, ok)


# -- watchers -----------------------------------------------------------------------------
def raftmem_ids(line: bytes) -> list[str]:
    item = orjson.loads(line)
    if item.get("type") != "put":
        return []
    return [str(((item.get("record") or {}).get("content") or {}).get("w"))]


def etcd_ids(line: bytes) -> list[str]:
    out = []
    for event in (orjson.loads(line).get("result") or {}).get("events") or ():
        value = (event.get("kv") or {}).get("value")
        if value:
            out.append(str(orjson.loads(base64.b64decode(value)).get("w")))
    return out


async def watcher(session: aiohttp.ClientSession, target: str, url: str, index: int, sample_every: int,
                  stats: Stats, stop: asyncio.Event, started: asyncio.Event) -> None:
    if target == "raftmem":
        request = session.get(url + "/v1/watch", params={"namespace": PREFIX, "progress_ms": "5000"},
                              headers={"Accept": "application/x-ndjson"},
                              timeout=aiohttp.ClientTimeout(total=None, sock_read=30))
        marker, decode = b'"type":"put"', raftmem_ids
    else:
        body = {"create_request": {"key": base64.b64encode(f"{PREFIX}/".encode()).decode(),
                                   "range_end": base64.b64encode(f"{PREFIX}0".encode()).decode()}}
        request = session.post(url + "/v3/watch", data=orjson.dumps(body),
                               timeout=aiohttp.ClientTimeout(total=None, sock_read=30))
        marker, decode = b'"kv"', etcd_ids
    buffer = b""
    lines = 0
    try:
        async with request as resp:
            started.set()
            while not stop.is_set():
                chunk = await resp.content.readany()
                if not chunk:
                    break
                buffer += chunk
                *complete, buffer = buffer.split(b"\n")
                for line in complete:
                    count = line.count(marker)
                    if not count:
                        continue
                    if stats.measuring:
                        stats.events[index] += count
                    lines += 1
                    if lines % sample_every == 0:
                        now = time.monotonic()
                        for write_id in decode(line):
                            stats.saw(write_id, now)
                if len(buffer) > LINE_BYTES_MAX:
                    break
    except (aiohttp.ClientError, TimeoutError, asyncio.CancelledError):
        if not stop.is_set():
            stats.stream_errors += 1
    finally:
        started.set()


# -- a run --------------------------------------------------------------------------------
async def run(args: argparse.Namespace) -> dict[str, Any]:
    urls = [u.strip().rstrip("/") for u in args.url.split(",") if u.strip()]
    pad = "x" * max(0, args.value_bytes - 40)
    stats = Stats(events=[0] * args.watchers)
    stop = asyncio.Event()
    sample_every = 1 if args.watchers <= SAMPLE_ALL_UP_TO else SAMPLE_EVERY
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        watches_up = [asyncio.Event() for _ in range(args.watchers)]
        watchers = [asyncio.create_task(watcher(session, args.target, urls[i % len(urls)], i, sample_every, stats,
                                                stop, watches_up[i])) for i in range(args.watchers)]
        for up in watches_up:
            await asyncio.wait_for(up.wait(), 30)
        client: AsyncClient | None = None

        def pace() -> Pace:
            return Pace(args.clients / args.rate if args.rate else 0.0)

        if args.target == "raftmem":
            client = AsyncClient(urls)
            await client.refresh_routes(force=True)
            writers = [asyncio.create_task(raftmem_writer(client, w, args.keys, pad, stats, stop, pace()))
                       for w in range(args.clients)]
        else:
            writers = [asyncio.create_task(etcd_writer(session, urls, w, args.keys, pad, stats, stop, pace()))
                       for w in range(args.clients)]
        await asyncio.sleep(args.warmup)
        stats.measuring = True
        measured_from = time.monotonic()
        await asyncio.sleep(args.duration)
        stats.measuring = False
        measured_s = time.monotonic() - measured_from
        stop.set()
        if writers:  # --clients 0: watchers only (a load from elsewhere)
            await asyncio.wait(writers, timeout=15)
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)
        if client is not None:
            await client.close()
    events = sum(stats.events)
    expected = stats.writes * args.watchers

    def ms(values: list[float], p: float) -> float | None:
        value = percentile(values, p)
        return None if value is None else round(value * 1000, 2)

    return {
        "target": args.target, "clients": args.clients, "watchers": args.watchers,
        "duration_s": round(measured_s, 2), "value_bytes": args.value_bytes, "keys": args.keys, "rate": args.rate,
        "writes_per_s": round(stats.writes / measured_s, 1), "write_errors": stats.write_errors,
        "write_p50_ms": ms(stats.write_latency_s, 50), "write_p99_ms": ms(stats.write_latency_s, 99),
        "events_per_s": round(events / measured_s, 1),
        "events_per_watcher_per_s": round(events / measured_s / args.watchers, 1) if args.watchers else None,
        "events_vs_writes": round(events / expected, 3) if expected else None,
        "e2e_from_ack_p50_ms": ms(stats.from_ack_s, 50), "e2e_from_ack_p99_ms": ms(stats.from_ack_s, 99),
        "e2e_from_send_p50_ms": ms(stats.from_send_s, 50), "e2e_from_send_p99_ms": ms(stats.from_send_s, 99),
        "latency_samples": len(stats.from_ack_s), "stream_errors": stats.stream_errors,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=("raftmem", "etcd"), required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--watchers", type=int, default=1)
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--value-bytes", type=int, default=200)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.0, help="writes a second in all (0: as fast as answered)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    text = json.dumps(report)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
