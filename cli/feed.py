"""`raftmem watch`, `raftmem history` and `raftmem prune`: the change feed, a
memory's versions, and the lifecycle policies from the shell.

`watch` prints one line per change (`--json`: one JSON object per line, as the
server sends it) until `--count` changes or `--for` seconds, or Ctrl-C; it
resumes by itself when its node goes away, and says on stderr where to resume
(`--after TOKENS`). `prune` runs the policies now on every shard leader;
`--dry-run` only lists what they would remove."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from raftmem.client import CONSISTENCY_LEVELS, Client, ClientError, Progress, WatchEvent

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
from .memory import _run, _short

PROGRESS_MS = 1000  # the CLI's watch wakes at least this often (for --for)


def _event_line(e: WatchEvent) -> str:
    rec = e.record or {}
    was = f" (was v{e.prev_version})" if e.type == "put" and e.prev_version is not None else ""
    actor = f" by {rec['actor']}" if rec.get("actor") else ""
    value = f"  {_short(rec.get('content'))}" if e.type == "put" else ""
    return f"{e.type:<6} {e.namespace}/{e.id} v{e.version}{was} {e.token}{actor}{value}"


def _watch(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    deadline = time.monotonic() + args.for_s if args.for_s is not None else None
    tokens: list[str] = []
    given = 0
    try:
        for item in client.watch(namespace=args.namespace, namespace_prefix=args.prefix, agent_id=args.agent,
                                 tag=args.tag, after=args.after, require_leader=args.require_leader,
                                 progress=True, progress_ms=PROGRESS_MS, tokens_out=tokens):
            if isinstance(item, WatchEvent):
                given += 1
                if args.json:
                    dump({"type": item.type, "token": item.token, "seq": item.seq, "namespace": item.namespace,
                          "id": item.id, "version": item.version, "prev_version": item.prev_version,
                          "time": item.time_ms, "record": item.record}, out)
                else:
                    out.write(_event_line(item) + "\n")
            elif args.progress:
                out.write(json.dumps({"type": "progress", "tokens": _tokens(item)}) + "\n" if args.json
                          else f"progress {_tokens(item)}\n")
            out.flush()
            if (args.count is not None and given >= args.count) or (
                    deadline is not None and time.monotonic() >= deadline):
                return
    finally:
        if tokens:
            print(f"raftmem: resume with --after {tokens[0]}", file=sys.stderr)


def _tokens(progress: Progress) -> str:
    return ",".join(f"{s}:{i}" for s, i in sorted(progress.tokens.items()))


def _history(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    versions = client.history(args.namespace, args.id, consistency=args.consistency, limit=args.limit)
    if args.json:
        dump({"namespace": args.namespace, "id": args.id, "versions": versions}, out)
        return
    render_table(("EVENT", "VERSION", "TOKEN", "TIME", "ACTOR", "VALUE"),
                 [(v["event"], v["version"], v["token"], v["time"], v.get("actor"),
                   _short(v.get("value")) if v["event"] == "put" else None) for v in versions], out)


def feed_summary(views: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """`raftmem status`'s lifecycle and watch lines, from every node's view
    (each reports the runs of the shards it led; pure)."""
    policies: dict[str, dict[str, Any]] = {}
    watches = 0
    for view in views.values():
        watches += int((view.get("watch") or {}).get("open") or 0)
        for name, stats in ((view.get("lifecycle") or {}).get("policies") or {}).items():
            total = policies.setdefault(name, {"runs": 0, "deferred": 0, "removed": 0, "last_run_ms": None})
            for key in ("runs", "deferred", "removed"):
                total[key] += int(stats.get(key) or 0)
            if stats.get("last_run_ms") is not None:
                total["last_run_ms"] = max(total["last_run_ms"] or 0, int(stats["last_run_ms"]))
    return {"policies": policies, "watch_streams": watches}


def render_feed(summary: Mapping[str, Any], out: TextIO) -> None:
    policies = summary.get("policies") or {}
    if policies:
        out.write("\n")
        render_table(("POLICY", "RUNS", "DEFERRED", "REMOVED", "LAST_RUN_MS"),
                     [(name, p["runs"], p["deferred"], p["removed"], p["last_run_ms"])
                      for name, p in sorted(policies.items())], out)
    if summary.get("watch_streams"):
        out.write(f"{summary['watch_streams']} watch stream(s) open\n")


def prune_rows(answer: Mapping[str, Any]) -> list[Sequence[Any]]:
    """Per shard and policy: what a run selected and removed (pure, for tests)."""
    rows: list[Sequence[Any]] = []
    for shard in answer.get("shards") or ():
        if "error" in shard:
            rows.append((shard["shard"], None, None, None, f"error: {shard['error'].get('message')}"))
            continue
        for name, report in sorted((shard.get("policies") or {}).items()):
            note = report.get("deferred") or ", ".join(report.get("sample") or ())
            rows.append((shard["shard"], name, report.get("candidates"), report.get("removed"), note or None))
    return rows


def _prune(args: argparse.Namespace) -> int:
    params = {"dry_run": "true" if args.dry_run else "false"}
    if args.policy:
        params["policy"] = args.policy
    try:
        answer = AdminClient(urls(args), token=args.token, ssl_context=args.ssl_context).post(
            "/v1/admin/lifecycle/run", params=params)
    except ValueError as e:  # a bad --url
        print(f"raftmem: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as e:
        return report_error(e, args)
    if args.json:
        dump(answer, sys.stdout)
        return EXIT_OK
    rows = prune_rows(answer)
    render_table(("SHARD", "POLICY", "CANDIDATES", "REMOVED", "NOTE"), rows, sys.stdout)
    if args.dry_run:
        print("(dry run: nothing removed)")
    return EXIT_FAILED if any(r[1] is None for r in rows) else EXIT_OK


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("watch", parents=[global_options()], help="print changes as they commit (resumable)",
                       description="Committed changes, in log order per shard, from --after TOKENS or from now; "
                       "resumes by itself when its node goes away, and says on exit where to resume.")
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--namespace", help="only this namespace")
    scope.add_argument("--prefix", help="only namespaces starting with this")
    p.add_argument("--agent", help="only this agent_id's memories")
    p.add_argument("--tag", help="only memories with this tag")
    p.add_argument("--after", metavar="TOKENS", help="resume after these tokens (<shard>:<index>,...)")
    p.add_argument("--require-leader", action="store_true", help="every shard's changes from its leader")
    p.add_argument("--progress", action="store_true", help="also print progress (where the watch is)")
    p.add_argument("--count", type=int, metavar="N", help="stop after N changes")
    p.add_argument("--for", dest="for_s", type=float, metavar="SECONDS", help="stop after this long")
    p.set_defaults(func=_run(_watch))

    p = sub.add_parser("history", parents=[global_options()], help="a memory's last versions, newest first")
    p.add_argument("namespace")
    p.add_argument("id")
    p.add_argument("--limit", type=int, metavar="N", help="at most N versions")
    p.add_argument("--consistency", choices=CONSISTENCY_LEVELS, help="default: the server's")
    p.set_defaults(func=_run(_history))

    p = sub.add_parser("prune", parents=[global_options()],
                       help="run the lifecycle policies now (--dry-run: only list what they would remove)")
    p.add_argument("--dry-run", action="store_true", help="remove nothing; list the candidates")
    p.add_argument("--policy", help="only this policy")
    p.set_defaults(func=_prune)
