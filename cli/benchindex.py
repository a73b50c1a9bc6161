"""What `raftmem bench` reports of the derived indexes: their lag, sampled from
every node's /metrics each second of the measured window, and the write
amplification over that window (the difference of the counters at its two
ends: physical bytes RocksDB and the indexes wrote, per logical byte)."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict
from typing import Any

import aiohttp

SAMPLE_S = 1.0
_LINE = re.compile(r"^(raftmem_index_[a-z_]+)(\{[^}]*\})? (\S+)$", re.M)
_PART = re.compile(r'part="([a-z_]+)"')


def parse(text: str) -> dict[str, Any]:
    """Sums over shards of the index metrics in a /metrics text."""
    out: dict[str, Any] = {"lag": [], "age": [], "logical": 0.0, "physical": defaultdict(float)}
    for name, labels, value in _LINE.findall(text):
        v = float(value)
        if name == "raftmem_index_lag_entries":
            out["lag"].append(v)
        elif name == "raftmem_index_queue_age_seconds":
            out["age"].append(v)
        elif name == "raftmem_index_logical_bytes_total":
            out["logical"] += v
        elif name == "raftmem_index_physical_bytes_total":
            part = _PART.search(labels or "")
            if part:
                out["physical"][part.group(1)] += v
    return out


class IndexWatch:
    def __init__(self, session: aiohttp.ClientSession, urls: list[str]) -> None:
        self.session = session
        self.urls = urls
        self.lags: list[float] = []
        self.ages: list[float] = []
        self._first: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def _scrape(self) -> list[dict[str, Any]]:
        async def one(url: str) -> dict[str, Any]:
            try:
                async with self.session.get(url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    return parse(await resp.text())
            except (aiohttp.ClientError, TimeoutError):
                return parse("")

        return list(await asyncio.gather(*(one(u) for u in self.urls)))

    async def start(self, after_s: float) -> None:
        async def sample() -> None:
            await asyncio.sleep(after_s)
            self._first = await self._scrape()
            while True:
                await asyncio.sleep(SAMPLE_S)
                for node in await self._scrape():
                    self.lags.extend(node["lag"])
                    self.ages.extend(node["age"])

        self._task = asyncio.create_task(sample())

    async def stop(self) -> dict[str, Any] | None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if not self._first:
            return None
        last = await self._scrape()
        logical = sum(b["logical"] - a["logical"] for a, b in zip(self._first, last, strict=True))
        physical: dict[str, float] = defaultdict(float)
        for a, b in zip(self._first, last, strict=True):
            for part, value in b["physical"].items():
                physical[part] += value - a["physical"].get(part, 0.0)
        total = sum(physical.values())
        return {
            "lag_entries_max": max(self.lags, default=0), "lag_entries_mean": round(sum(self.lags) / len(self.lags), 1)
            if self.lags else 0, "queue_age_s_max": round(max(self.ages, default=0.0), 3),
            "logical_bytes": int(logical), "physical_bytes": {k: int(v) for k, v in sorted(physical.items())},
            "write_amplification": round(total / logical, 2) if logical else None,
        }
