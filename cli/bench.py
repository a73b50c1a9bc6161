"""`raftmem bench`: drive a running cluster (raftmem, or etcd v3 through its JSON
gateway, for the side-by-side of DESIGN.md section 7) with N concurrent asyncio
clients sharing one aiohttp session, and report throughput and p50/p99/p99.9
latency per operation (per consistency level for reads) and errors by kind.

Load shape, the same for both targets: each client loops, picking read or write
by `--mix read:write` and a key uniformly from `--keys`; reads cycle through the
`--consistency` levels. raftmem only: a third share, `--mix read:write:search`,
issues searches (`--search text,vector,hybrid,filtered`, cycled) over
`--search-namespace` (a corpus preloaded by `bench/load_memories.py --corpus`),
and `--corpus` makes the benchmark's own writes corpus memories (text, tags,
`--dims` vectors) so that the derived indexes work under the write load. The
report then also says, from the nodes' /metrics over the measured window, how
far the indexes lagged (sampled each second) and the write amplification. The keyspace is written once before any read. The first
`--warmup` seconds are not measured. Every loop is bounded in time (`--duration`)
and count (`--ops-max` per client); every request has a timeout; no request is
retried (a failure is counted, by kind, and the client moves on).

raftmem requests are routed by raftmem.client (straight to the shard leader for
writes and linearizable/strong reads). etcd: `POST /v3/kv/put`, and
`POST /v3/kv/range` with `serializable: true` for `eventual`/`serializable`,
without it for `linearizable`; client i talks to endpoint i mod n, moving to the
next endpoint after a connection error.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import random
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
import orjson

from raftmem.client import (
    CONSISTENCY_LEVELS,
    NO_RETRY,
    AsyncClient,
    ClientError,
    Indeterminate,
    NotFound,
    Overloaded,
    RetryPolicy,
    Unavailable,
)

from . import corpus
from .benchindex import IndexWatch

CLIENTS_MAX = 4096
KEYS_MAX = 10_000_000
VALUE_BYTES_MAX = 1 << 20
DURATION_S_MAX = 24 * 3600.0
OPS_MAX_DEFAULT = 10_000_000  # per client, on top of the time bound
REQUEST_TIMEOUT_S_DEFAULT = 5.0
ERROR_PAUSE_S = 0.01  # after a failed request, so a dead endpoint is not hammered
PRELOAD_ATTEMPTS = 5
PASSING = (Overloaded, Unavailable, Indeterminate)  # a preload's failures worth sending again
BATCH_MAX = 128  # etcd's default --max-txn-ops
NAMESPACE = "bench"
SEARCH_KINDS = ("text", "vector", "hybrid", "filtered")
ETCD_LEVELS = {"linearizable": False, "serializable": True, "eventual": True}
ETCD_UNAVAILABLE_GRPC_CODES = {14}  # UNAVAILABLE
ETCD_TIMEOUT_GRPC_CODES = {4}  # DEADLINE_EXCEEDED: a put may still apply

# Latency histogram: log buckets 2 % apart from 1 µs to ~3 h, bounded memory.
HIST_MIN_S = 1e-6
HIST_RATIO = 1.02
HIST_BUCKETS = int(math.log(1e4 / HIST_MIN_S) / math.log(HIST_RATIO)) + 1


class Histogram:
    """Bounded log-bucket histogram: percentiles within 2 %."""

    def __init__(self) -> None:
        self.counts = [0] * HIST_BUCKETS
        self.count = 0
        self.max_s = 0.0
        self.sum_s = 0.0

    def record(self, seconds: float) -> None:
        index = 0 if seconds <= HIST_MIN_S else int(math.log(seconds / HIST_MIN_S) / math.log(HIST_RATIO)) + 1
        self.counts[min(index, HIST_BUCKETS - 1)] += 1
        self.count += 1
        self.sum_s += seconds
        self.max_s = max(self.max_s, seconds)

    def percentile(self, p: float) -> float:
        """Upper bound of the bucket holding the p-th percentile (0 < p <= 100)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(self.count * p / 100))
        seen = 0
        for index, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return min(self.max_s, HIST_MIN_S * HIST_RATIO**index)
        return self.max_s


@dataclass
class OpStats:
    hist: Histogram = field(default_factory=Histogram)
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def error_kind(error: BaseException) -> str:
    if isinstance(error, Indeterminate):
        return "timeout" if error.status == 0 else "indeterminate"
    if isinstance(error, Overloaded):
        return "overloaded"
    if isinstance(error, Unavailable):
        if error.status:
            return "unavailable"
        return "connection" if error.code == "connection_failed" else "timeout"
    if isinstance(error, NotFound):
        return "not_found"
    if isinstance(error, ClientError):
        return f"http_{error.status}" if error.status else error.code
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, aiohttp.ClientConnectorError):
        return "connection"
    if isinstance(error, aiohttp.ClientError):
        return "connection"
    return error.__class__.__name__


# -- targets -------------------------------------------------------------------------
class Target(Protocol):
    levels: list[str]
    searches: list[str]

    async def write(self, worker: int, key: int) -> None: ...

    async def write_batch(self, worker: int, keys: list[int]) -> None: ...

    async def read(self, worker: int, key: int, level: str) -> None: ...

    async def search(self, worker: int, kind: str, rng: random.Random) -> None: ...


def key_id(key: int) -> str:
    return f"k{key:08d}"


class RaftmemTarget:
    def __init__(
        self, urls: list[str], session: aiohttp.ClientSession, value: str, levels: list[str],
        timeout_s: float, idempotent: bool, token: str | None = None, spray: bool = False,
    ) -> None:
        """`spray`: client i talks only to node i mod n, as a plain HTTP client
        or a load balancer would (the node forwards to leaders); otherwise the
        bundled client routes every request to its shard's leader."""
        unknown = [lv for lv in levels if lv not in CONSISTENCY_LEVELS]
        if unknown:
            raise ValueError(f"raftmem has no consistency level {', '.join(unknown)} (known: {', '.join(CONSISTENCY_LEVELS)})")
        self.levels = levels
        self.searches: list[str] = []
        self.search_namespace = "load"
        self.dims = 0
        self.corpus = False
        self.fresh = False
        self.value = value
        self.clients = [
            AsyncClient(part, session=session, retry=NO_RETRY, timeout_s=timeout_s, idempotent=idempotent,
                        token=token, route_direct=not spray)
            for part in ([[u] for u in urls] if spray else [urls])
        ]
        self.preload_client = AsyncClient(
            urls, session=session, retry=RetryPolicy(attempts_max=PRELOAD_ATTEMPTS), timeout_s=timeout_s, token=token
        )

    async def start(self) -> None:
        if not await self.preload_client.refresh_routes(force=True):
            raise ConnectionError("no node answered GET /v1/cluster")
        for client in self.clients:
            client.routes = self.preload_client.routes

    def _client(self, worker: int) -> AsyncClient:
        return self.clients[worker % len(self.clients)]

    async def preload(self, key: int) -> None:
        await self.preload_client.put_raw(NAMESPACE, key_id(key), self.value, agent_id="bench")

    async def preload_batch(self, keys: list[int]) -> None:
        """Operations that failed for a passing reason (overload, no leader, an
        outcome unknown) are sent again: a put of the same value is harmless twice."""
        for attempt in range(PRELOAD_ATTEMPTS):
            failures = await _batch_put(self.preload_client, keys, self.value)
            if not failures:
                return
            if attempt + 1 == PRELOAD_ATTEMPTS or not all(isinstance(e, PASSING) for _, e in failures):
                raise failures[0][1]
            keys = [k for k, _ in failures]
            await asyncio.sleep(ERROR_PAUSE_S * 2**attempt)

    async def write(self, worker: int, key: int) -> None:
        if self.corpus:
            body = corpus.memory(key, self.dims)
            await self._client(worker).put_raw(NAMESPACE, key_id(key), body.pop("content"), **body)
            return
        await self._client(worker).put_raw(NAMESPACE, key_id(key), self.value, agent_id="bench")

    async def write_batch(self, worker: int, keys: list[int]) -> None:
        await _batch_ok(self._client(worker), keys, self.value)

    async def read(self, worker: int, key: int, level: str) -> None:
        await self._client(worker).get_raw(NAMESPACE, key_id(key), consistency=level)

    async def search(self, worker: int, kind: str, rng: random.Random) -> None:
        body = corpus.search_body(kind, rng, self.search_namespace, self.dims)
        if self.fresh:
            body["fresh"] = True
        namespace = body.pop("namespace")
        query = body.pop("query", None)
        await self._client(worker).search_raw(namespace, query, **body)


async def _batch_put(client: AsyncClient, keys: list[int], value: str) -> list[tuple[int, ClientError]]:
    """One POST /v1/batch of puts; the keys whose put failed, with the error."""
    results = await client.batch([
        {"op": "put", "namespace": NAMESPACE, "id": key_id(k), "body": {"content": value, "agent_id": "bench"}}
        for k in keys
    ])
    return [(k, r.error) for k, r in zip(keys, results, strict=True) if r.error is not None]


async def _batch_ok(client: AsyncClient, keys: list[int], value: str) -> None:
    """One POST /v1/batch of puts; raises the first operation's error, if any."""
    failures = await _batch_put(client, keys, value)
    if failures:
        raise failures[0][1]


class EtcdError(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


class EtcdTarget:
    """etcd v3 through the grpc-gateway (JSON, base64 keys and values)."""

    def __init__(
        self, urls: list[str], session: aiohttp.ClientSession, value: str, levels: list[str], timeout_s: float
    ) -> None:
        unknown = [lv for lv in levels if lv not in ETCD_LEVELS]
        if unknown:
            raise ValueError(
                f"etcd has no consistency level {', '.join(unknown)} (use linearizable, or serializable/eventual)"
            )
        self.urls = [u.rstrip("/") for u in urls]
        self.session = session
        self.levels = levels
        self.value_b64 = base64.b64encode(value.encode()).decode()
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.endpoint: dict[int, int] = {}
        self.searches: list[str] = []

    async def start(self) -> None:
        await self._post(0, "/v3/maintenance/status", {})

    @staticmethod
    def key_b64(key: int) -> str:
        return base64.b64encode(f"{NAMESPACE}/{key_id(key)}".encode()).decode()

    async def _post(self, worker: int, path: str, body: dict[str, Any]) -> Any:
        index = self.endpoint.get(worker, worker % len(self.urls))
        url = self.urls[index]
        try:
            async with self.session.post(url + path, data=orjson.dumps(body), timeout=self.timeout) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectorError as e:
            self.endpoint[worker] = (index + 1) % len(self.urls)
            raise EtcdError("connection", str(e)) from e
        except (aiohttp.ClientError, TimeoutError) as e:
            self.endpoint[worker] = (index + 1) % len(self.urls)
            raise EtcdError("timeout" if isinstance(e, TimeoutError) else "connection", str(e)) from e
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            answer = None
        if status != 200 or (isinstance(answer, dict) and "error" in answer):
            code = answer.get("code") if isinstance(answer, dict) else None
            if isinstance(answer, dict):
                message = answer.get("message") or answer.get("error")
            else:
                message = raw[:200].decode(errors="replace")
            if code in ETCD_UNAVAILABLE_GRPC_CODES:
                kind = "unavailable"
            elif code in ETCD_TIMEOUT_GRPC_CODES:
                kind = "indeterminate"
            else:
                kind = f"http_{status}"
            raise EtcdError(kind, f"{url}{path}: {message}")
        return answer

    async def preload(self, key: int) -> None:
        for attempt in range(PRELOAD_ATTEMPTS):
            try:
                await self.write(key, key)
                return
            except EtcdError:
                if attempt + 1 == PRELOAD_ATTEMPTS:
                    raise
                await asyncio.sleep(ERROR_PAUSE_S * 2**attempt)

    async def write(self, worker: int, key: int) -> None:
        await self._post(worker, "/v3/kv/put", {"key": self.key_b64(key), "value": self.value_b64})

    async def search(self, worker: int, kind: str, rng: random.Random) -> None:
        raise EtcdError("unsupported", "etcd has no search")

    async def write_batch(self, worker: int, keys: list[int]) -> None:
        """One txn of puts (etcd refuses a key twice in a txn: the keys are distinct)."""
        puts = [{"requestPut": {"key": self.key_b64(k), "value": self.value_b64}} for k in keys]
        await self._post(worker, "/v3/kv/txn", {"success": puts})

    async def preload_batch(self, keys: list[int]) -> None:
        for attempt in range(PRELOAD_ATTEMPTS):
            try:
                await self.write_batch(0, keys)
                return
            except EtcdError:
                if attempt + 1 == PRELOAD_ATTEMPTS:
                    raise
                await asyncio.sleep(ERROR_PAUSE_S * 2**attempt)

    async def read(self, worker: int, key: int, level: str) -> None:
        body: dict[str, Any] = {"key": self.key_b64(key)}
        if ETCD_LEVELS[level]:
            body["serializable"] = True
        answer = await self._post(worker, "/v3/kv/range", body)
        if not answer.get("kvs"):
            raise EtcdError("not_found", f"key {key} not found")


# -- the load --------------------------------------------------------------------------
@dataclass(frozen=True)
class Load:
    clients: int
    duration_s: float
    warmup_s: float
    read_share: float  # 0..1
    keys: int
    ops_max: int
    seed: int
    batch: int = 1  # puts per write request (a batch; an etcd txn)
    search_share: float = 0.0  # 0..1, raftmem only


async def run_load(target: Target, load: Load) -> tuple[dict[tuple[str, str], OpStats], float]:
    stats: dict[tuple[str, str], OpStats] = defaultdict(OpStats)
    start = time.monotonic()
    measure_from = start + load.warmup_s
    stop_at = measure_from + load.duration_s

    async def worker(i: int) -> None:
        rng = random.Random(load.seed * 100_003 + i)
        levels = target.levels
        for n in range(load.ops_max):
            began = time.monotonic()
            if began >= stop_at:
                return
            key = rng.randrange(load.keys)
            roll = rng.random()
            if roll < load.read_share:
                level = levels[n % len(levels)]
                op_key = ("read", level)
                call = target.read(i, key, level)
            elif roll < load.read_share + load.search_share:
                kind = target.searches[n % len(target.searches)]
                op_key = ("search", kind)
                call = target.search(i, kind, rng)
            elif load.batch > 1:
                op_key = ("write", f"batch{load.batch}")
                call = target.write_batch(i, rng.sample(range(load.keys), min(load.batch, load.keys)))
            else:
                op_key = ("write", "-")
                call = target.write(i, key)
            t0 = time.perf_counter()
            try:
                await call
            except (ClientError, EtcdError, aiohttp.ClientError, TimeoutError) as e:
                if began >= measure_from:
                    stats[op_key].errors[e.kind if isinstance(e, EtcdError) else error_kind(e)] += 1
                await asyncio.sleep(ERROR_PAUSE_S)
                continue
            if began >= measure_from:
                stats[op_key].hist.record(time.perf_counter() - t0)

    await asyncio.gather(*(worker(i) for i in range(load.clients)))
    # Ops started in [measure_from, stop_at) count; the window ends early only if
    # every client hit --ops-max first.
    return stats, max(1e-9, min(time.monotonic(), stop_at) - measure_from)


async def preload(target: RaftmemTarget | EtcdTarget, keys: int, concurrency: int, batch: int = 1) -> None:
    """Keys 0 .. keys-1 written once, `batch` per request."""
    queue = iter(range(0, keys, batch))

    async def loader() -> None:
        for first in queue:
            if batch == 1:
                await target.preload(first)
            else:
                await target.preload_batch(list(range(first, min(first + batch, keys))))

    await asyncio.gather(*(loader() for _ in range(max(1, concurrency))))


def summarize(stats: dict[tuple[str, str], OpStats], measured_s: float) -> list[dict[str, Any]]:
    rows = []
    total = Histogram()
    total_errors: dict[str, int] = defaultdict(int)
    for (op, level), st in sorted(stats.items()):
        rows.append(_row(op, level, st.hist, dict(st.errors), measured_s))
        for i, n in enumerate(st.hist.counts):
            total.counts[i] += n
        total.count += st.hist.count
        total.sum_s += st.hist.sum_s
        total.max_s = max(total.max_s, st.hist.max_s)
        for kind, n in st.errors.items():
            total_errors[kind] += n
    rows.append(_row("all", "-", total, dict(total_errors), measured_s))
    return rows


def _batch_size(level: str) -> int:
    return int(level[len("batch"):]) if level.startswith("batch") else 1


def _row(op: str, level: str, hist: Histogram, errors: dict[str, int], measured_s: float) -> dict[str, Any]:
    return {
        "op": op,
        "consistency": level,
        "count": hist.count,
        "ops_per_s": round(hist.count / measured_s, 1),
        "memory_ops_per_s": round(hist.count * _batch_size(level) / measured_s, 1),
        "p50_ms": round(hist.percentile(50) * 1000, 2),
        "p99_ms": round(hist.percentile(99) * 1000, 2),
        "p999_ms": round(hist.percentile(99.9) * 1000, 2),
        "max_ms": round(hist.max_s * 1000, 2),
        "mean_ms": round(hist.sum_s / hist.count * 1000, 2) if hist.count else 0.0,
        "errors": errors,
    }


def print_report(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(
        f"raftmem bench  target={cfg['target']}  clients={cfg['clients']}  duration={cfg['duration_s']}s "
        f"warmup={cfg['warmup_s']}s  mix(read:write)={cfg['mix']}  value={cfg['value_bytes']}B  keys={cfg['keys']}"
    )
    if report.get("preload_memories_per_s"):
        print(f"preloaded {cfg['preload']} memories at {report['preload_memories_per_s']:.0f}/s")
    header = ("op", "consistency", "count", "ops/s", "memory ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms",
              "errors")
    lines = [header]
    for r in report["results"]:
        errors = " ".join(f"{k}={v}" for k, v in sorted(r["errors"].items())) or "0"
        lines.append((r["op"], r["consistency"], str(r["count"]), f"{r['ops_per_s']:.0f}",
                      f"{r['memory_ops_per_s']:.0f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                      f"{r['p999_ms']:.2f}", f"{r['max_ms']:.2f}", errors))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for line in lines:
        print("  ".join(v.rjust(w) if 2 <= i <= 8 else v.ljust(w)
                        for i, (v, w) in enumerate(zip(line, widths, strict=True))).rstrip())
    index = report.get("index")
    if index:
        print(f"indexes: lag max {index['lag_entries_max']:.0f} entries (mean {index['lag_entries_mean']}), oldest "
              f"waiting {index['queue_age_s_max']} s; write amplification {index['write_amplification']} "
              f"({sum(index['physical_bytes'].values()):,} physical / {index['logical_bytes']:,} logical bytes: "
              + ", ".join(f"{k} {v:,}" for k, v in index["physical_bytes"].items()) + ")")


def mix_shares(text: str) -> tuple[float, float]:
    """(read share, search share) of `read:write` or `read:write:search`."""
    try:
        parts = [float(x) for x in text.split(":")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError("--mix must look like read:write or read:write:search, e.g. 90:10")
    read, write, search = parts[0], parts[1], parts[2] if len(parts) == 3 else 0.0
    if min(read, write, search) < 0 or read + write + search <= 0:
        raise argparse.ArgumentTypeError("--mix needs non-negative shares, not all zero")
    total = read + write + search
    return read / total, search / total


def parse_mix(text: str) -> float:
    return mix_shares(text)[0]


def _bounded(kind: type[int] | type[float], lo: float, hi: float) -> Any:
    def parse(text: str) -> int | float:
        value = kind(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}]")
        return value

    return parse


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    urls = [u.strip() for u in (args.bench_url or args.url).split(",") if u.strip()]
    levels = [lv.strip() for lv in args.consistency.split(",") if lv.strip()]
    read_share, search_share = mix_shares(args.mix)
    searches = [k.strip() for k in args.search.split(",") if k.strip()]
    unknown = [k for k in searches if k not in SEARCH_KINDS]
    if unknown or (search_share and not searches):
        raise ValueError(f"--search takes {', '.join(SEARCH_KINDS)}")
    if search_share and args.target != "raftmem":
        raise ValueError("searches are raftmem's only (--target raftmem)")
    value = ("0123456789abcdef" * (args.value_bytes // 16 + 1))[: args.value_bytes]
    load = Load(args.clients, args.duration, args.warmup, read_share, args.keys, args.ops_max, args.seed,
                args.batch, search_share)
    cpu_start_s = time.process_time()
    connector = aiohttp.TCPConnector(limit=max(CLIENTS_MAX, args.clients * 2), limit_per_host=0,
                                     ssl=getattr(args, "ssl_context", None) or True)
    async with aiohttp.ClientSession(connector=connector) as session:
        target: RaftmemTarget | EtcdTarget
        if args.target == "etcd":
            target = EtcdTarget(urls, session, value, levels, args.timeout)
        else:
            target = RaftmemTarget(urls, session, value, levels, args.timeout, args.idempotent, args.token,
                                   spray=args.spray)
            target.searches, target.search_namespace = searches, args.search_namespace
            target.dims, target.corpus, target.fresh = args.dims, args.corpus, args.search_fresh
        await target.start()
        preload_s = 0.0
        t0 = time.monotonic()
        if args.preload:
            await preload(target, args.preload, args.clients, args.preload_batch)
        if read_share > 0 and args.preload < args.keys:
            await preload(target, args.keys, args.clients)
        preload_s = time.monotonic() - t0
        # The indexes' lag and write amplification under writes. Not without
        # writes: its scrapes of every node's /metrics each second (each a few
        # ms of a node's loop) would sit in the searches' and reads' tails.
        writes = read_share + search_share < 1
        watch = IndexWatch(session, urls) if args.target == "raftmem" and writes else None
        if watch is not None:
            await watch.start(load.warmup_s)
        stats, measured_s = await run_load(target, load)
        index = await watch.stop() if watch is not None else None
    return {
        "config": {
            "target": args.target, "urls": urls, "clients": args.clients, "duration_s": args.duration,
            "warmup_s": args.warmup, "mix": args.mix, "value_bytes": args.value_bytes, "keys": args.keys,
            "consistency": levels, "idempotent": bool(args.idempotent) if args.target == "raftmem" else None,
            "timeout_s": args.timeout, "batch": args.batch, "spray": bool(args.spray), "preload": args.preload,
            "search": searches if search_share else [], "corpus": args.corpus, "dims": args.dims,
        },
        "preload_memories_per_s": round(args.preload / preload_s, 1) if args.preload and preload_s else None,
        "preload_s": round(preload_s, 2),
        "measured_s": round(measured_s, 3),
        "client_cpu_s": round(time.process_time() - cpu_start_s, 2),  # this process, preload included
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "results": summarize(stats, measured_s),
        "index": index,
    }


def _run(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(bench(args))
    except (ValueError, argparse.ArgumentTypeError) as e:
        print(f"raftmem bench: {e}", file=sys.stderr)
        return 2
    except (ConnectionError, ClientError, EtcdError, aiohttp.ClientError, TimeoutError) as e:
        print(f"raftmem bench: the target is not answering: {e}", file=sys.stderr)
        return 3
    if args.json or args.bench_json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("bench", help="load a running cluster (raftmem or etcd) and report latency")
    p.add_argument("--url", dest="bench_url", help="node URLs, comma-separated (default: the global --url)")
    p.add_argument("--target", choices=("raftmem", "etcd"), default="raftmem")
    p.add_argument("--clients", type=_bounded(int, 1, CLIENTS_MAX), default=32, help="concurrent clients")
    p.add_argument("--duration", type=_bounded(float, 0.1, DURATION_S_MAX), default=20.0, help="measured seconds")
    p.add_argument("--warmup", type=_bounded(float, 0, DURATION_S_MAX), default=2.0, help="unmeasured seconds first")
    p.add_argument("--mix", default="90:10", help="read:write shares, e.g. 90:10, 100:0, 0:100")
    p.add_argument("--value-bytes", type=_bounded(int, 1, VALUE_BYTES_MAX), default=200)
    p.add_argument(
        "--consistency", default="strong",
        help="read levels, comma-separated, cycled (raftmem: linearizable,strong,session,bounded,eventual; "
        "etcd: linearizable, serializable (= eventual))",
    )
    p.add_argument("--keys", type=_bounded(int, 1, KEYS_MAX), default=1000, help="keyspace size")
    p.add_argument("--ops-max", type=_bounded(int, 1, 10**12), default=OPS_MAX_DEFAULT, help="per client")
    p.add_argument("--timeout", type=_bounded(float, 0.01, 600), default=REQUEST_TIMEOUT_S_DEFAULT, help="per request, s")
    p.add_argument("--idempotent", action="store_true", help="raftmem: send an Idempotency-Key with each write")
    p.add_argument("--batch", type=_bounded(int, 1, BATCH_MAX), default=1,
                   help="puts per write request: a POST /v1/batch (etcd: a txn), distinct keys")
    p.add_argument("--spray", action="store_true",
                   help="raftmem: client i talks only to node i mod n (no routing to leaders), as etcd's clients do")
    p.add_argument("--preload", type=_bounded(int, 0, KEYS_MAX), default=0,
                   help="first write keys 0..N-1 in batches (--preload-batch) and report the rate")
    p.add_argument("--preload-batch", type=_bounded(int, 1, BATCH_MAX), default=64)
    p.add_argument("--search", default="text", help=f"search kinds for the mix's third share, cycled "
                   f"({', '.join(SEARCH_KINDS)})")
    p.add_argument("--search-namespace", default="load", help="where searches look (bench/load_memories.py --corpus)")
    p.add_argument("--search-fresh", action="store_true", help="searches ask fresh: true (lag 0)")
    p.add_argument("--corpus", action="store_true", help="raftmem: writes are corpus memories (cli/corpus.py)")
    p.add_argument("--dims", type=_bounded(int, 0, 4096), default=0,
                   help="vector dimension: of searches' vectors and (with --corpus) of written embeddings")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", dest="bench_json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_run)
