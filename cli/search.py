"""`raftmem search`, `raftmem namespaces`, `raftmem summary`, `raftmem reindex`:
recall from the shell (through raftmem.client), and rebuilding every node's
derived indexes from its RocksDB state (through each node's admin API).

Exit codes as everywhere (cli/common.py): 0 ok, 1 refused (a 4xx: a bad filter,
a wrong vector dimension), 2 usage, 3 unavailable (safe to retry)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from raftmem.client import Client, ClientError

from .admin_client import AdminClient
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    dump,
    global_options,
    render_table,
    report_error,
    urls,
)
from .memory import UsageError, print_table
from .memory import _run as _client_command
from .status import collect

SEARCH_LEVELS = ("linearizable", "strong", "session", "causal", "eventual")
REINDEX_TIMEOUT_S = 600.0


def _json_arg(what: str, raw: str | None) -> Any:
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise UsageError(f"{what} is not JSON: {e.msg}") from None


def _search(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    answer = client.search(
        None if args.prefix else args.namespace, args.query, namespace_prefix=args.namespace if args.prefix else None,
        vector=_json_arg("--vector", args.vector), metric=args.metric, filter=_json_arg("--filter", args.filter),
        limit=args.limit, cursor=args.cursor, fresh=args.fresh, consistency=args.consistency,
        order_by=args.order_by,
    )
    if args.json:
        dump(answer, out)
        return
    items = answer["items"]
    print_table(items, out)
    lag = answer["index_lag"]
    out.write(f"{len(items)} hit(s); index lag {lag['entries']} entries, {lag['ms']} ms"
              + (" (stale)" if lag["stale"] else "") + "\n")
    if answer.get("more"):
        out.write(f"(more: --cursor {answer['cursor']})\n")


def _namespaces(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    names = client.list_namespaces(prefix=args.prefix, suffix=args.suffix, max_depth=args.max_depth,
                                   limit=args.limit, offset=args.offset)
    if args.json:
        dump({"namespaces": names}, out)
    else:
        for name in names:
            out.write(name + "\n")


def _summary(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    summary = client.namespace_summary(args.namespace, agent_id=args.agent, refresh=args.refresh)
    if args.json:
        dump(summary, out)
        return
    for key in ("namespace", "agent_id", "count", "by_kind", "by_tag", "first_created_at", "last_updated_at",
                "newest_ids", "stale", "age_ms"):
        value = summary.get(key)
        out.write(f"{key + ':':<18}{json.dumps(value) if not isinstance(value, str) else value}\n")


def _reindex(args: argparse.Namespace) -> int:
    """Every node's indexes of the shard (or all) rebuilt from its own store."""
    try:
        admin = AdminClient(urls(args), token=args.token)
        snap = collect(admin, urls(args))
    except ValueError as e:
        print(f"raftmem: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as e:
        return report_error(e, args, hint=" (no node answered)")
    params = {"wait": "true" if args.wait else "false"}
    if args.shard is not None:
        params["shard"] = str(args.shard)
    results: dict[str, Any] = {}
    failed = False
    for node, url in sorted(snap.nodes.items()):
        if node not in snap.views:
            results[node] = {"error": snap.down.get(node, "no answer")}
            failed = True
            continue
        try:
            results[node] = admin.request("POST", "/v1/admin/reindex", params=params, url=url, is_write=True,
                                          timeout_s=REINDEX_TIMEOUT_S)
        except ClientError as e:
            results[node] = {"error": str(e)}
            failed = True
    if args.json:
        dump({"nodes": results}, sys.stdout)
    else:
        rows = []
        for node, r in results.items():
            shards = r.get("shards") if isinstance(r, dict) else None
            rows.append((node, ",".join(map(str, shards)) if shards else None, r.get("error") if isinstance(r, dict) else None))
        render_table(("NODE", "REBUILT", "ERROR"), rows, sys.stdout)
    return EXIT_FAILED if failed else EXIT_OK


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("search", parents=[global_options()], help="recall memories by text, vector and fields")
    p.add_argument("namespace", help="a namespace (or, with --prefix, a namespace prefix on label boundaries)")
    p.add_argument("query", nargs="?", help="text, ranked by BM25")
    p.add_argument("--prefix", action="store_true", help="NAMESPACE is a prefix: team-a matches team-a.x, not team-ab")
    p.add_argument("--vector", help="a JSON list of floats (ranked by --metric; with a query: fused by rank)")
    p.add_argument("--metric", choices=("cosine", "dot", "l2"))
    p.add_argument("--filter", help='JSON, e.g. \'{"agent_id": "a1", "tags": "deploy", "content.n": {"$gt": 2}}\'')
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--cursor", help="the next page (from a previous answer)")
    p.add_argument("--fresh", action="store_true", help="wait until every shard's index has absorbed every "
                   "acknowledged write (lag 0)")
    p.add_argument("--consistency", choices=SEARCH_LEVELS)
    p.add_argument("--order-by", choices=("score", "updated_at", "-updated_at", "created_at", "-created_at"))
    p.set_defaults(func=_client_command(_search))

    p = sub.add_parser("namespaces", parents=[global_options()], help="list namespaces (dotted labels)")
    p.add_argument("--prefix", help="labels the namespace starts with (* matches any one)")
    p.add_argument("--suffix", help="labels it ends with")
    p.add_argument("--max-depth", type=int, help="truncate to this many labels")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--offset", type=int, default=0)
    p.set_defaults(func=_client_command(_namespaces))

    p = sub.add_parser("summary", parents=[global_options()], help="a namespace's summary (counts, times, newest)")
    p.add_argument("namespace")
    p.add_argument("--agent", help="only this agent_id's memories")
    p.add_argument("--refresh", action="store_true", help="recompute it now (else the cached one, maybe stale)")
    p.set_defaults(func=_client_command(_summary))

    p = sub.add_parser("reindex", parents=[global_options()],
                       help="rebuild every node's derived indexes (text, vectors) from its RocksDB state")
    p.add_argument("--shard", type=int, help="only this shard (default: all)")
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                   help="wait until rebuilt (default) or return at once")
    p.set_defaults(func=_reindex)
