"""Watch under write load, against raftmem (GET /v1/watch, NDJSON) or etcd
(POST /v3/watch through its JSON gateway): CLIENTS writers put KEYS keys of one
prefix as fast as they are answered while WATCHERS watchers follow the prefix.

    python bench/watch_bench.py --target raftmem|etcd --url URL[,URL] [--clients 32]
        [--watchers 10] [--per-connection 1] [--duration 15] [--warmup 3] [--value-bytes 200] [--keys 1000]
        [--rate 0] [--json FILE]

Reports write throughput and latency, events delivered per second (all
watchers together, and per watcher), and end-to-end latency from the write's
acknowledgement (and from its send) to the event's arrival, p50/p99. Every
write carries its own id in its value; the first 10 watchers decode every
event (the latency samples, spread over the nodes like the rest) and the others
count their events by a marker, reading their sockets with no HTTP client
library (see `Stream`): decoding 100 streams would make this one process, which
shares the machine with the servers, the cost being measured. Writers go to
the key's leader for raftmem (the bundled client), round robin for etcd (its
members forward to the leader). `--rate N` holds the writers to N writes a
second in all (a fixed load, so the servers' CPU per write with and without
watchers compares at the same rate; 0: as fast as answered). `--per-connection K`
(raftmem only) carries K watches on each connection (POST /v1/watch, as
etcd's own clients carry a process's watches on one gRPC stream), but for
the first watcher, which has a connection of its own and decodes every event
(the latency samples: a connection of many would have to be undone whole to
find one watch's lines). Watchers (connections) are spread over the nodes.
Client and
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
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raftmem import eventloop  # noqa: E402
from raftmem.client import AsyncClient  # noqa: E402

PREFIX = "wbench"
DECODING_WATCHERS = 10  # the first ten decode every event (the latency samples); the rest count them
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
WRITE_ID = b'"w":"'  # how a write's id starts in its JSON value (orjson, no spaces)


def write_ids(text: bytes) -> list[str]:
    """The write ids in `text` (the benchmark's own values, found by their key:
    cheaper than decoding every event, which is this process's cost, not the
    servers')."""
    out = []
    at = text.find(WRITE_ID)
    while at >= 0:
        start = at + len(WRITE_ID)
        end = text.find(b'"', start)
        out.append(text[start:end].decode())
        at = text.find(WRITE_ID, end)
    return out


def raftmem_ids(line: bytes) -> list[str]:
    return write_ids(line) if b'"type":"put"' in line else []


def etcd_ids(line: bytes) -> list[str]:
    out = []
    for event in (orjson.loads(line).get("result") or {}).get("events") or ():
        value = (event.get("kv") or {}).get("value")
        if value:
            out.extend(write_ids(base64.b64decode(value)))
    return out


class Stream(asyncio.Protocol):
    """One watch stream read straight off its socket: the request written once,
    the response head checked (200), chunked framing undone, and the events in
    each block of complete lines counted by their marker in one `bytes.count`.
    Only a watcher that decodes (`decode` set) splits lines. No HTTP client
    library: with aiohttp's reader (a task woken per chunk) and asyncio's loop,
    100 watchers at 500 writes/s cost this process 0.19 of a core, more than
    they cost the three servers (0.10); with these readers on uvloop, 0.08
    (2026-12-07)."""

    def __init__(self, request: bytes, marker: bytes, decode: Callable[[bytes], list[str]] | None,
                 index: int, stats: Stats, up: asyncio.Event) -> None:
        self.request, self.marker, self.decode = request, marker, decode
        self.index, self.stats, self.up = index, stats, up
        self.head: bytes | None = b""  # None once the head is read
        self.chunked = False
        self.raw = bytearray()  # framed bytes not yet undone
        self.tail = b""  # a counting watcher's last bytes (a marker may straddle two pieces)
        self.servers_frame_whole_lines = False  # raftmem: its chunks hold whole lines (see `count`)
        self.text = bytearray()  # payload after the last complete line
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.failed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        if self.head is not None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = self.head[:end].lower(), self.head[end + 4:]
            self.head = None
            if not head.startswith(b"http/1.1 200"):
                self.fail()
                return
            self.chunked = b"transfer-encoding: chunked" in head
            self.up.set()
        if self.decode is None and self.servers_frame_whole_lines:
            self.count(data)
            return
        if not self.chunked:
            self.payload(data)
            return
        raw = self.raw
        raw += data
        at = 0
        while True:
            eol = raw.find(b"\r\n", at)
            if eol < 0:
                break
            size = int(bytes(raw[at:eol]).split(b";")[0], 16)
            if size == 0:
                self.fail()  # the server ended the stream
                return
            if len(raw) < eol + 2 + size + 2:
                break
            self.payload(raw[eol + 2:eol + 2 + size])
            at = eol + 2 + size + 2
        del raw[:at]
        if len(raw) > LINE_BYTES_MAX:
            self.fail()

    def count(self, data: bytes) -> None:
        """The events in a piece of the body, counted as it comes: no copy, no
        framing undone. Exact because the body's framing never cuts an event
        (raftmem writes whole lines per chunk, so a chunk's size line never
        falls inside a marker; etcd's Go server cuts chunks where its buffer
        fills, so its streams are undone as before); a marker split between
        two pieces is found in the last bytes of one and the first of the next."""
        stats, marker, tail = self.stats, self.marker, self.tail
        if stats.measuring:
            stats.events[self.index] += data.count(marker) + (tail + data[:len(marker) - 1]).count(marker)
        self.tail = data[-(len(marker) - 1):]

    def payload(self, data: bytes | bytearray) -> None:
        text = self.text
        text += data
        last = text.rfind(b"\n")
        if last < 0:
            if len(text) > LINE_BYTES_MAX:
                self.fail()
            return
        block = bytes(text[:last + 1])
        del text[:last + 1]
        stats = self.stats
        if stats.measuring:
            stats.events[self.index] += block.count(self.marker)
        if self.decode is not None:
            now = time.monotonic()
            for line in block.split(b"\n"):
                if self.marker in line:
                    for write_id in self.decode(line):
                        stats.saw(write_id, now)

    def fail(self) -> None:
        self.failed = True
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.up.set()
        if not self.closed.done():
            self.closed.set_result(None)


async def watcher(target: str, url: str, index: int, decodes: bool, stats: Stats, stop: asyncio.Event,
                  up: asyncio.Event, watches: int = 1) -> None:
    """One connection: one watch, or `watches` of them (raftmem, POST /v1/watch)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise SystemExit(f"watchers read plain http only: {url}")
    host = f"{parts.hostname}:{parts.port or 80}"
    if target == "raftmem" and watches > 1:
        body = orjson.dumps({"watches": [{"id": str(i), "namespace": PREFIX} for i in range(watches)],
                             "progress_ms": 5000})
        request = (f"POST /v1/watch HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                   f"Accept: application/x-ndjson\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
        marker, decode = b'"type":"put"', raftmem_ids
    elif target == "raftmem":
        request = (f"GET /v1/watch?namespace={PREFIX}&progress_ms=5000 HTTP/1.1\r\nHost: {host}\r\n"
                   "Accept: application/x-ndjson\r\n\r\n").encode()
        marker, decode = b'"type":"put"', raftmem_ids
    else:
        body = orjson.dumps({"create_request": {"key": base64.b64encode(f"{PREFIX}/".encode()).decode(),
                                                "range_end": base64.b64encode(f"{PREFIX}0".encode()).decode()}})
        request = (f"POST /v3/watch HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n").encode() + body
        marker, decode = b'"kv"', etcd_ids
    loop = asyncio.get_running_loop()
    stream = Stream(request, marker, decode if decodes else None, index, stats, up)
    stream.servers_frame_whole_lines = target == "raftmem"
    try:
        await loop.create_connection(lambda: stream, parts.hostname, parts.port or 80)
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([stream.closed, stopped], return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
    except OSError:
        stream.failed = True
    finally:
        up.set()
        if stream.transport is not None:
            stream.transport.close()
    if stream.failed or not stop.is_set():
        stats.stream_errors += 1


# -- a run --------------------------------------------------------------------------------
async def run(args: argparse.Namespace) -> dict[str, Any]:
    urls = [u.strip().rstrip("/") for u in args.url.split(",") if u.strip()]
    pad = "x" * max(0, args.value_bytes - 40)
    if args.per_connection > 1 and args.target != "raftmem":
        raise SystemExit("--per-connection: raftmem only (etcd's JSON gateway carries one watch a connection)")
    per = args.per_connection
    sizes = [min(per, args.watchers - at) for at in range(0, args.watchers, per)] if per <= 1 else (
        [1] + [min(per, args.watchers - 1 - at) for at in range(0, args.watchers - 1, per)])
    stats = Stats(events=[0] * len(sizes))  # per connection
    stop = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        watches_up = [asyncio.Event() for _ in sizes]
        decodes = [size == 1 and i < DECODING_WATCHERS for i, size in enumerate(sizes)]
        watchers = [asyncio.create_task(watcher(args.target, urls[i % len(urls)], i, decodes[i], stats,
                                                stop, watches_up[i], size)) for i, size in enumerate(sizes)]
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
        "target": args.target, "clients": args.clients, "watchers": args.watchers, "connections": len(sizes),
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
    parser.add_argument("--per-connection", type=int, default=1, help="watches per connection (raftmem)")
    parser.add_argument("--duration", type=float, default=15.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--value-bytes", type=int, default=200)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--rate", type=float, default=0.0, help="writes a second in all (0: as fast as answered)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    report = eventloop.run(run(args))  # uvloop, like the nodes: this process shares the machine with them
    text = json.dumps(report)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
