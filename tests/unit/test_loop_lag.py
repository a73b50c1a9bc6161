"""raftmem_event_loop_lag_seconds: the probe observes how late its timer ran,
so a callback that blocks the loop shows as at least that long a lag."""

from __future__ import annotations

import asyncio
import time

from raftmem.metrics import LoopLag

BLOCK_S = 0.2


async def test_a_blocked_loop_is_observed_as_lag() -> None:
    seen: list[float] = []
    probe = LoopLag(seen.append, period_s=0.01)
    loop = asyncio.get_running_loop()
    probe.start(loop)
    try:
        deadline = time.monotonic() + 5
        while len(seen) < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        before = len(seen)
        assert before >= 3, "the probe's timer never ran"
        loop.call_soon(time.sleep, BLOCK_S)  # a handler that blocks the loop
        while len(seen) < before + 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    finally:
        probe.stop()
    assert max(seen[before:]) >= BLOCK_S * 0.75, seen
    count = len(seen)
    await asyncio.sleep(0.05)
    assert len(seen) == count, "a stopped probe still observes"
