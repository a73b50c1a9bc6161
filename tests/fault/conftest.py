"""Fault tests run the jepsen_like harness on a real cluster: node processes in
network namespaces, nftables cuts, FUSE and tmpfs mounts. They need root and
the `ip`, `nft`, `nsenter` binaries; without them they are skipped, saying why."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from typing import Any

import pytest

from jepsen_like.__main__ import preflight


def harness_problem() -> str | None:
    return preflight()


def fuse_problem() -> str | None:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    try:
        import ctypes.util

        if ctypes.util.find_library("fuse3") is None and ctypes.util.find_library("fuse") is None:
            return "libfuse not installed (apt-get install -y fuse3)"
        import importlib.util

        if importlib.util.find_spec("mfusepy") is None:
            return "python package mfusepy not installed"
    except OSError as exc:
        return f"libfuse unusable: {exc}"
    return None


def compiler_problem() -> str | None:
    return None if (shutil.which("cc") or shutil.which("gcc")) else "no C compiler (cc) for the clock shim"


requires_harness = pytest.mark.skipif(harness_problem() is not None, reason=f"fault harness: {harness_problem()}")
requires_fuse = pytest.mark.skipif(fuse_problem() is not None, reason=f"power-loss disk: {fuse_problem()}")
requires_compiler = pytest.mark.skipif(compiler_problem() is not None, reason=str(compiler_problem()))


POLL_S = 0.1


async def poll_until(condition: Any, timeout_s: float, what: str) -> Any:
    """Await `condition()` every POLL_S until it returns something truthy (returned);
    fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
