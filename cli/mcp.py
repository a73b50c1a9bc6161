"""`raftmem mcp`: raftmem as a Model Context Protocol server for agents
(raftmem/integrations/mcp.py), over stdio (an agent host starts it as a
subprocess) or streamable HTTP (`--transport streamable-http`, on
127.0.0.1:8790/mcp by default).

Needs the optional dependency: `pip install 'raftmem[mcp]'`. Over stdio,
stdout carries the protocol: every message of ours goes to stderr."""

from __future__ import annotations

import argparse
import ipaddress
import sys
from typing import Any

from .common import EXIT_OK, EXIT_USAGE, global_options, urls

PORT_DEFAULT = 8790


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _mcp(args: argparse.Namespace) -> int:
    try:
        from raftmem.integrations.mcp import serve
    except ImportError as e:
        print(f"raftmem mcp needs the MCP SDK: pip install 'raftmem[mcp]' ({e})", file=sys.stderr)
        return EXIT_USAGE
    if args.transport == "streamable-http" and not _loopback(args.host):
        # The MCP endpoint has no authentication of its own: whoever reaches it
        # acts with this process's raftmem token.
        print(f"raftmem mcp: warning: serving MCP on {args.host}, beyond loopback, without authentication; "
              "anyone who reaches it uses raftmem with this process's token", file=sys.stderr)
    serve(urls(args), transport=args.transport, host=args.host, port=args.port, namespace=args.namespace,
          token=args.token, ssl_context=args.ssl_context)
    return EXIT_OK


def add_parser(sub: Any) -> None:
    tls = argparse.ArgumentParser(add_help=False)
    for flag, help_text in (("--cacert", "https nodes: the cluster's CA certificate"),
                            ("--cert", "https nodes that require one: a client certificate"),
                            ("--key", "the private key of --cert")):
        tls.add_argument(flag, default=argparse.SUPPRESS, help=help_text)
    p = sub.add_parser(
        "mcp", parents=[global_options(), tls],
        help="serve raftmem to agents over the Model Context Protocol (pip install 'raftmem[mcp]')",
        description="An MCP server whose tools read and write this cluster's memories, locks and tasks "
        "(memory_put, memory_get, memory_list, memory_delete, lock_*, task_*). Reads include the "
        "server's own writes (session consistency) by default.",
    )
    p.add_argument("--transport", choices=("stdio", "streamable-http"), default="stdio",
                   help="stdio (default: the agent host runs this command) or streamable-http")
    p.add_argument("--host", default="127.0.0.1", help="streamable-http: address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=PORT_DEFAULT,
                   help=f"streamable-http: port (default {PORT_DEFAULT}; the endpoint is /mcp)")
    p.add_argument("--namespace", help="the namespace tools use when the agent names none")
    p.set_defaults(func=_mcp)
