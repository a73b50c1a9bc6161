"""Prepare bench/wrk_compare.sh's load: write the keyspace into both clusters and
the request files that bench/wrk/requests.lua replays.

    python bench/wrk_prep.py --raftmem URL [--etcd URL,URL,URL] --out DIR [--keys N] [--value-bytes N]

The keys and values are `raftmem bench`'s (namespace "bench", ids k00000000...,
200-byte values), so the two benchmarks measure the same data. For raftmem, each
node's files hold only the keys whose shard that node leads (what the routing
client does: no forwarding hop); a file per node and workload. For etcd, every
member gets every key (etcd has one leader; members forward to it, as etcd
clients spread over endpoints do).

A request file has one request per line: METHOD, TAB, PATH, TAB, BODY (may be empty).
Prints, per file, how many requests it holds."""

from __future__ import annotations

import argparse
import base64
import json
import random
import sys
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.bench import NAMESPACE, key_id  # noqa: E402 - the same keyspace as raftmem bench
from raftmem.client import Client, shard_for  # noqa: E402

TIMEOUT_S = 5.0
BATCH = 16  # puts per batch request (raftmem POST /v1/batch, etcd txn)
BATCH_LINES = 1000
RM_READ_LEVELS = ("strong", "linearizable", "eventual")
ETCD_READ_LEVELS = {"linearizable": False, "serializable": True}


def cluster_view(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/v1/cluster", timeout=TIMEOUT_S) as resp:
        return json.load(resp)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def etcd_put(url: str, key: str, value: str) -> None:
    body = json.dumps({"key": b64(key), "value": b64(value)}).encode()
    req = urllib.request.Request(f"{url}/v3/kv/put", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=TIMEOUT_S) as resp:
        resp.read()


def write_lines(path: Path, lines: list[str]) -> None:
    if not lines:
        raise SystemExit(f"{path.name}: no requests (does that node lead no shard?)")
    path.write_text("\n".join(lines) + "\n")
    print(f"{path.name}: {len(lines)} requests")


def prep_raftmem(url: str, keys: int, value: str, out: Path, write: bool = True) -> None:
    view = cluster_view(url)
    shards = len(view["shards"])
    leaders = {s["shard"]: s["leader"] for s in view["shards"]}
    if None in leaders.values():
        raise SystemExit(f"raftmem: a shard has no leader: {leaders}")
    node_urls = {n["id"]: n["url"].rstrip("/") for n in view["nodes"]}
    body = json.dumps({"content": value, "agent_id": "bench"})
    by_node: dict[str, list[str]] = {n: [] for n in node_urls}
    with Client([url]) as client:
        for key in range(keys):
            mid = key_id(key)
            if write:
                client.put(NAMESPACE, mid, value, agent_id="bench")
            by_node[leaders[shard_for(NAMESPACE, mid, shards)]].append(f"/v1/memories/{NAMESPACE}/{mid}")
    every = [f"/v1/memories/{NAMESPACE}/{key_id(key)}" for key in range(keys)]
    rng = random.Random(7)
    for index, node in enumerate(sorted(node_urls)):
        paths = by_node[node]
        (out / f"raftmem-{index}.url").write_text(node_urls[node] + "\n")
        write_lines(out / f"raftmem-{index}-write.req", [f"PUT\t{p}\t{body}" for p in paths])
        # Sprayed: every node gets every key, as a plain HTTP client or a load balancer sends them.
        write_lines(out / f"raftmem-{index}-write-sprayed.req", [f"PUT\t{p}\t{body}" for p in every])
        mine = [p.rsplit("/", 1)[1] for p in paths]
        for name, pool in (("batch", mine), ("batch-sprayed", [p.rsplit("/", 1)[1] for p in every])):
            write_lines(out / f"raftmem-{index}-{name}.req", [
                "POST\t/v1/batch\t" + json.dumps({"ops": [
                    {"op": "put", "namespace": NAMESPACE, "id": mid, "body": {"content": value, "agent_id": "bench"}}
                    for mid in rng.sample(pool, min(BATCH, len(pool)))]})
                for _ in range(BATCH_LINES)])
        for level in RM_READ_LEVELS:
            write_lines(out / f"raftmem-{index}-read-{level}.req", [f"GET\t{p}?consistency={level}\t" for p in paths])
        write_lines(out / f"raftmem-{index}-health.req", ["GET\t/healthz\t"])


def prep_etcd(urls: list[str], keys: int, value: str, out: Path, write: bool = True) -> None:
    names = [f"{NAMESPACE}/{key_id(key)}" for key in range(keys)]
    for name in names if write else ():
        etcd_put(urls[0], name, value)
    for index, url in enumerate(urls):
        (out / f"etcd-{index}.url").write_text(url + "\n")
        write_lines(out / f"etcd-{index}-write.req",
                    [f"POST\t/v3/kv/put\t{json.dumps({'key': b64(n), 'value': b64(value)})}" for n in names])
        for level, serializable in ETCD_READ_LEVELS.items():
            write_lines(out / f"etcd-{index}-read-{level}.req",
                        [f"POST\t/v3/kv/range\t{json.dumps({'key': b64(n), 'serializable': serializable})}"
                         for n in names])
        write_lines(out / f"etcd-{index}-health.req", ["GET\t/health\t"])
        rng = random.Random(7 + index)
        write_lines(out / f"etcd-{index}-txn.req", [
            "POST\t/v3/kv/txn\t" + json.dumps({"success": [
                {"requestPut": {"key": b64(n), "value": b64(value)}} for n in rng.sample(names, BATCH)]})
            for _ in range(BATCH_LINES)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--raftmem", required=True, help="one raftmem node's API")
    parser.add_argument("--etcd", help="the etcd members' client URLs, comma-separated (none: raftmem only)")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--keys", type=int, default=1000)
    parser.add_argument("--value-bytes", type=int, default=200)
    parser.add_argument("--written", action="store_true",
                        help="the keys are already written (raftmem bench --preload): only make the files")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    value = "x" * args.value_bytes
    prep_raftmem(args.raftmem.rstrip("/"), args.keys, value, args.out, write=not args.written)
    if args.etcd:
        prep_etcd([u.rstrip("/") for u in args.etcd.split(",")], args.keys, value, args.out, write=not args.written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
