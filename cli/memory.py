"""`raftmem put/get/delete/list`: one memory at a time from the shell, through the
blocking raftmem.client (shard-aware, bounded retries, idempotent writes).

Output is plain text (a table for `list`) unless the global `--json` is given.
Exit codes: 0 ok, 1 the request failed (4xx), 2 usage, 3 unavailable (nothing
happened; safe to retry), 4 indeterminate (a write that may or may not have
happened)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from raftmem.client import (
    CONSISTENCY_LEVELS,
    LIST_PAGE_DEFAULT,
    Client,
    ClientError,
)

from .common import (
    EXIT_FAILED,
    EXIT_INDETERMINATE,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    EXIT_USAGE,
    exit_code,
    global_options,
    report_error,
)
from .common import dump as _dump
from .common import urls as _urls

__all__ = ["EXIT_FAILED", "EXIT_INDETERMINATE", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE", "add_parsers",
           "exit_code", "print_table"]


LIST_PAGE_MAX = 1000  # the server's page limit
CONTENT_CELL_CHARS_MAX = 60
STDIN_BYTES_MAX = 1 << 20  # the server's body limit


class UsageError(Exception):
    pass


def _content(raw: str | None, stdin: TextIO, mode: str = "auto") -> Any:
    """The memory's content from the command line, as etcdctl and rqlite take a
    value: JSON when it parses as JSON, else the text as given (`mode` "auto");
    always the text ("text"); JSON or a usage error ("json")."""
    if raw is None:
        return None
    if raw == "-":
        raw = stdin.read(STDIN_BYTES_MAX + 1)
        if len(raw) > STDIN_BYTES_MAX:
            raise UsageError(f"--content -: stdin holds more than {STDIN_BYTES_MAX} bytes")
    if mode == "text":
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        if mode == "json":
            raise UsageError(
                f"--content is not JSON ({e.msg}); drop --json-content to store it as text"
            ) from None
        return raw


def _short(value: Any, chars_max: int = CONTENT_CELL_CHARS_MAX) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", " ")
    return text if len(text) <= chars_max else text[: chars_max - 1] + "…"


def _print_memory(memory: dict[str, Any], out: TextIO) -> None:
    for key in ("namespace", "id", "version", "token", "agent_id", "kind", "tags", "created_at",
                "updated_at", "expires_at", "metadata", "content"):
        if key not in memory:
            continue
        value = memory[key]
        if key == "tags":
            value = ",".join(value)
        elif not isinstance(value, str) and value is not None:
            value = json.dumps(value, ensure_ascii=False)
        out.write(f"{key + ':':<12}{'' if value is None else value}\n")


def print_table(rows: Iterable[dict[str, Any]], out: TextIO) -> int:
    header = ("ID", "VER", "AGENT", "KIND", "TAGS", "UPDATED", "CONTENT")
    cells = [
        (
            str(m.get("id", "")),
            str(m.get("version", "")),
            str(m.get("agent_id") or ""),
            str(m.get("kind") or ""),
            ",".join(m.get("tags") or ()),
            str(m.get("updated_at", "")),
            _short(m.get("content")),
        )
        for m in rows
    ]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]
    for line in [header, *cells]:
        out.write("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() + "\n")
    return len(cells)


# -- commands ----------------------------------------------------------------------------
def _put(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    if args.if_match is not None and args.create_only:
        raise UsageError("--if-match and --create-only exclude each other")
    memory = client.put(
        args.namespace,
        args.id,
        _content(args.content, sys.stdin, "text" if args.text else "json" if args.json_content else "auto"),
        agent_id=args.agent,
        kind=args.kind,
        tags=args.tag,
        ttl_s=args.ttl,
        ttl_refresh_on_read=args.sliding,
        actor=args.actor,
        if_match=args.if_match,
        if_none_match=args.create_only,
        if_fence=args.if_fence,
    )
    if args.json:
        _dump(memory, out)
    else:
        out.write(f"{memory['namespace']}/{memory['id']} version {memory['version']} token {memory['token']}\n")


def _get(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    consistency = args.consistency
    if args.after and consistency is None:
        consistency = "session"
    if args.max_staleness_ms is not None and consistency is None:
        consistency = "bounded"
    memory = client.get(
        args.namespace, args.id, consistency=consistency, after=args.after, max_staleness_ms=args.max_staleness_ms
    )
    if args.json:
        _dump(memory, out)
    else:
        _print_memory(memory, out)


def _delete(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    result = client.delete(args.namespace, args.id, if_match=args.if_match, if_fence=args.if_fence, actor=args.actor)
    if args.json:
        _dump(result, out)
    else:
        out.write(f"deleted {args.namespace}/{args.id} (version {result.get('version')}, token {result.get('token')})\n")


def _list(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    filters = {"agent_id": args.agent, "tag": args.tag}
    if args.all:
        items = list(client.list(args.namespace, page_size=LIST_PAGE_MAX, **filters))
        cursor = None
    else:
        page = client.list_page(args.namespace, limit=args.limit, **filters)
        items, cursor = page.get("items") or [], page.get("cursor")
    if args.json:
        body: dict[str, Any] = {"items": items, "count": len(items)}
        if cursor:
            body["cursor"] = cursor
        _dump(body, out)
        return
    print_table(items, out)
    if cursor:
        out.write("(more: --limit N to see more, or --all)\n")


def _run(command: Callable[[Client, argparse.Namespace, TextIO], None]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            with Client(_urls(args), token=args.token, ssl_context=args.ssl_context) as client:
                command(client, args, sys.stdout)
        except UsageError as e:
            print(f"raftmem: {e}", file=sys.stderr)
            return EXIT_USAGE
        except ClientError as e:
            return report_error(e, args)
        except ValueError as e:  # bad arguments the client refused before sending
            print(f"raftmem: {e}", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK

    return run


def _positive_int(text: str) -> int:
    value = int(text)
    if not 1 <= value <= LIST_PAGE_MAX:
        raise argparse.ArgumentTypeError(f"must be in [1, {LIST_PAGE_MAX}]")
    return value


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("put", parents=[global_options()], help="write a memory (upsert; idempotent retries)")
    p.add_argument("namespace")
    p.add_argument("id")
    p.add_argument("--content", help="the content: a JSON value if it parses as one (42, true, {\"k\": 1}, "
                                     "'\"quoted\"'), else the text as given; - reads it from stdin")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--text", action="store_true", help="store --content as text even if it parses as JSON")
    mode.add_argument("--json-content", action="store_true", help="--content must be JSON (else a usage error)")
    p.add_argument("--agent", help="agent_id")
    p.add_argument("--tag", action="append", help="a tag (repeatable)")
    p.add_argument("--kind", help="episodic, fact, ...")
    p.add_argument("--ttl", type=float, help="expire after this many seconds")
    p.add_argument("--sliding", action="store_true", help="with --ttl: reads extend the TTL (ttl_refresh_on_read)")
    p.add_argument("--actor", help="who writes it (kept in its history)")
    p.add_argument("--if-match", type=int, metavar="VERSION", help="write only if the version is VERSION")
    p.add_argument("--create-only", action="store_true", help="fail if the memory exists (If-None-Match: *)")
    p.add_argument("--if-fence", metavar="NS/LOCK:FENCE", help="write only while that lock is held with that fence")
    p.set_defaults(func=_run(_put))

    p = sub.add_parser("get", parents=[global_options()], help="read a memory")
    p.add_argument("namespace")
    p.add_argument("id")
    p.add_argument("--consistency", choices=CONSISTENCY_LEVELS, help="default: the server's policy")
    p.add_argument("--after", metavar="TOKEN", help="a write's token <shard>:<index> (implies session)")
    p.add_argument("--max-staleness-ms", type=int, metavar="N",
                   help="serve from a replica at most N ms behind its leader (implies bounded)")
    p.set_defaults(func=_run(_get))

    p = sub.add_parser("delete", parents=[global_options()], help="delete a memory")
    p.add_argument("namespace")
    p.add_argument("id")
    p.add_argument("--if-match", type=int, metavar="VERSION", help="delete only if the version is VERSION")
    p.add_argument("--if-fence", metavar="NS/LOCK:FENCE", help="delete only while that lock is held with that fence")
    p.add_argument("--actor", help="who deletes it (kept in its history)")
    p.set_defaults(func=_run(_delete))

    p = sub.add_parser("list", parents=[global_options()], help="list a namespace's memories, oldest first")
    p.add_argument("namespace")
    p.add_argument("--agent", help="only this agent_id's")
    p.add_argument("--tag", help="only memories with this tag")
    p.add_argument("--limit", type=_positive_int, default=LIST_PAGE_DEFAULT, help="one page of at most N")
    p.add_argument("--all", action="store_true", help="every page")
    p.set_defaults(func=_run(_list))
