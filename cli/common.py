"""What every `raftmem` command shares: exit codes, the global options, JSON and
table output, and reporting a failed request.

Exit codes (scripts rely on them):

    0  ok
    1  failed: the request was refused (4xx, a corrupt file, an unhealthy cluster)
    2  usage: bad arguments; nothing was sent
    3  unavailable: no node answered, or 503/429; nothing happened, safe to retry
    4  indeterminate: a write whose answer was lost, or a change the cluster
       accepted but that had not landed when the wait ran out
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from raftmem.client import ClientError, Indeterminate, Unavailable

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_INDETERMINATE = 4


class Parser(argparse.ArgumentParser):
    """No abbreviated options: with prefixes on, a subcommand's `--to` collides
    with the global `--token`/`--token-file` (argparse checks every word against
    the top parser first), and a new global option could silently change what an
    old command line means. Subparsers inherit the class."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]


def global_options() -> argparse.ArgumentParser:
    """`--url` and `--json` again on a subcommand, so `raftmem status --json` works
    as well as `raftmem --json status`. SUPPRESS: absent, they leave the global
    value alone."""
    parent = Parser(add_help=False)
    parent.add_argument("--url", default=argparse.SUPPRESS, help="a node's API, or several, comma-separated "
                        "(env RAFTMEM_URL)")
    parent.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    parent.add_argument("--token", default=argparse.SUPPRESS, help="bearer token (env RAFTMEM_TOKEN)")
    parent.add_argument("--token-file", default=argparse.SUPPRESS,
                        help="read the bearer token from this file (env RAFTMEM_TOKEN_FILE)")
    return parent


def urls(args: argparse.Namespace) -> list[str]:
    return [u.strip().rstrip("/") for u in str(args.url).split(",") if u.strip()]


def dump(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, ensure_ascii=False, sort_keys=True) + "\n")


def render_table(header: Sequence[str], rows: Sequence[Sequence[Any]], out: TextIO) -> None:
    """Left-aligned columns two spaces apart; None prints as `-`."""
    cells = [[("-" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(header)]
    for line in [list(header), *cells]:
        out.write("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip() + "\n")


def exit_code(error: ClientError) -> int:
    if isinstance(error, Indeterminate):
        return EXIT_INDETERMINATE
    if isinstance(error, Unavailable):
        return EXIT_UNAVAILABLE
    return EXIT_FAILED


HINTS = {
    EXIT_UNAVAILABLE: " (nothing happened; safe to retry)",
    EXIT_INDETERMINATE: " (the write may or may not have happened; read it back)",
}


def report_error(error: ClientError, args: argparse.Namespace, hint: str | None = None) -> int:
    """Print a failed request (the server's error body on stdout with --json, a
    line on stderr always) and return its exit code."""
    code = exit_code(error)
    if getattr(args, "json", False):
        body = error.body if isinstance(error.body, dict) else {"error": {"code": error.code, "message": error.message}}
        dump(body, sys.stdout)
    print(f"raftmem: {error}{HINTS.get(code, '') if hint is None else hint}", file=sys.stderr)
    return code
