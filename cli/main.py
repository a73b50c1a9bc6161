"""The `raftmem` command. Everything but `serve` is an HTTP client of the nodes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from . import admin as admin_cmd
from . import bench as bench_cmd
from . import cluster as cluster_cmd
from . import coordination as coordination_cmd
from . import feed as feed_cmd
from . import logfmt
from . import mcp as mcp_cmd
from . import memory as memory_cmd
from . import search as search_cmd
from . import status as status_cmd
from .common import EXIT_FAILED, EXIT_INDETERMINATE, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE, Parser

DEFAULT_URL = os.environ.get("RAFTMEM_URL", "http://127.0.0.1:8781")

# Exit codes that mean something to scripts: see common.py.
__all__ = ["EXIT_FAILED", "EXIT_INDETERMINATE", "EXIT_OK", "EXIT_UNAVAILABLE", "EXIT_USAGE", "build_parser", "main"]


def _serve(args: argparse.Namespace) -> int:
    from raftmem.config import ConfigError, NodeConfig, embedded_default, load
    from raftmem.node import serve

    logfmt.configure(args.node, args.log_level, args.log_format)
    try:
        config = load(args.config) if args.config else embedded_default()
        me = None
        if args.http_port is not None:
            # A node joining a running cluster: not in the seed config.
            if args.raft_port_base is None:
                raise ConfigError("a joining node needs --host, --http-port and --raft-port-base")
            me = NodeConfig(args.node, args.host, args.http_port, args.raft_port_base, args.zone)
        else:
            config.node(args.node)
    except ConfigError as e:
        print(f"raftmem: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        serve(config, args.node, me)
    except ConfigError as e:
        print(f"raftmem: {e}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="raftmem",
        description="raftmem: replicated memory for agents",
        epilog="exit codes: 0 ok, 1 failed, 2 usage, 3 unavailable (nothing happened; safe to retry), "
        "4 indeterminate (a write may or may not have happened, or a change had not landed when the wait ran out)",
    )
    parser.add_argument("--url", default=DEFAULT_URL,
                        help=f"a node's API, or several comma-separated (env RAFTMEM_URL; default {DEFAULT_URL})")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--token", default=os.environ.get("RAFTMEM_TOKEN") or None,
                        help="bearer token, for clusters with auth on (env RAFTMEM_TOKEN; "
                        "`ps` shows it: prefer --token-file or the environment)")
    parser.add_argument("--token-file", default=os.environ.get("RAFTMEM_TOKEN_FILE") or None,
                        help="read the bearer token from this file, over --token (env RAFTMEM_TOKEN_FILE)")
    parser.add_argument("--cacert", default=os.environ.get("RAFTMEM_CACERT") or None,
                        help="https nodes: the cluster's CA certificate (env RAFTMEM_CACERT)")
    parser.add_argument("--cert", default=os.environ.get("RAFTMEM_CERT") or None,
                        help="https nodes that require one: a client certificate (env RAFTMEM_CERT)")
    parser.add_argument("--key", default=os.environ.get("RAFTMEM_KEY") or None,
                        help="the private key of --cert (env RAFTMEM_KEY)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run one node")
    p.add_argument("--config", help="cluster YAML (default: the embedded local 3-node config)")
    p.add_argument("--node", required=True, help="this node's id in the config")
    p.add_argument("--log-level", default="info")
    p.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="json: one object per line with node, shard, term, index")
    p.add_argument("--host", default="127.0.0.1", help="joining node: address to listen on")
    p.add_argument("--http-port", type=int, help="joining node (not in --config): its API port")
    p.add_argument("--raft-port-base", type=int, help="joining node: first Raft port (one per shard)")
    p.add_argument("--zone", default="", help="joining node: its zone")
    p.set_defaults(func=_serve)

    cluster_cmd.add_parsers(sub)
    status_cmd.add_parser(sub)
    admin_cmd.add_parsers(sub)
    memory_cmd.add_parsers(sub)
    coordination_cmd.add_parsers(sub)
    search_cmd.add_parsers(sub)
    feed_cmd.add_parsers(sub)
    bench_cmd.add_parser(sub)
    mcp_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "token_file", None):
        try:
            args.token = Path(args.token_file).read_text().strip() or None
        except OSError as e:
            parser.error(f"--token-file: {e.strerror}: {args.token_file}")
    args.ssl_context = None
    if args.cacert or args.cert:
        from raftmem.client import tls_context

        try:
            args.ssl_context = tls_context(args.cacert, args.cert, args.key)
        except (OSError, ValueError) as e:
            parser.error(f"--cacert/--cert/--key: {e}")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`raftmem get ... | head`): stop quietly, as cat does.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
