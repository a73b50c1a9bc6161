"""Namespace summaries with stale flags (the design's lazily materialized
aggregates): counts by kind and tag, the time range, the last update and the
newest ids of a namespace (or of one agent in it), per shard replica.

A write does not recompute a summary: it marks the summaries of its namespace
stale (a dictionary lookup on the change's path). A background worker
recomputes stale summaries every `indexing.summary_refresh_ms`; a reader gets
the cached one with `stale` and its age, or asks `refresh=true` to have it
recomputed first. Only summaries somebody asked for are kept (at most
`SUMMARIES_MAX`, least recently asked dropped first).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import codec
from ..events import Change

SUMMARIES_MAX = 1000
TAGS_SHOWN_MAX = 100
NEWEST_MAX = 10
REFRESH_PER_ROUND_MAX = 32

Key = tuple[int, str, str | None]  # shard, namespace, agent


@dataclass
class Summary:
    """One shard's part of a namespace summary."""

    count: int = 0
    kinds: dict[str, int] = field(default_factory=dict)
    tags: dict[str, int] = field(default_factory=dict)
    first_created_at: int | None = None
    last_updated_at: int | None = None
    newest: list[tuple[int, str]] = field(default_factory=list)  # (updated_at, id), newest first
    applied: int = 0
    computed_s: float = 0.0
    stale: bool = False


def compute(records: Iterator[tuple[bytes, bytes]], agent: str | None, now_ms: int, applied: int) -> Summary:
    """Aggregate a namespace's records (expired ones not counted)."""
    s = Summary(applied=applied, computed_s=time.monotonic())
    for _key, raw in records:
        rec = codec.loads(raw)
        if agent is not None and rec.get("agent_id") != agent:
            continue
        expires = rec.get("expires_at")
        if expires is not None and expires <= now_ms:
            continue
        s.count += 1
        kind = rec.get("kind")
        if kind is not None:
            s.kinds[kind] = s.kinds.get(kind, 0) + 1
        for tag in rec.get("tags") or ():
            s.tags[tag] = s.tags.get(tag, 0) + 1
        created, updated = int(rec.get("created_at") or 0), int(rec.get("updated_at") or 0)
        s.first_created_at = created if s.first_created_at is None else min(s.first_created_at, created)
        s.last_updated_at = updated if s.last_updated_at is None else max(s.last_updated_at, updated)
        s.newest.append((updated, rec["id"]))
        if len(s.newest) > 4 * NEWEST_MAX:
            s.newest = sorted(s.newest, reverse=True)[:NEWEST_MAX]
    s.newest = sorted(s.newest, reverse=True)[:NEWEST_MAX]
    return s


def combine(parts: list[Summary], now_s: float) -> dict[str, Any]:
    """The namespace's summary from its shards' parts."""
    kinds: collections.Counter[str] = collections.Counter()
    tags: collections.Counter[str] = collections.Counter()
    newest: list[tuple[int, str]] = []
    for p in parts:
        kinds.update(p.kinds)
        tags.update(p.tags)
        newest.extend(p.newest)
    firsts = [p.first_created_at for p in parts if p.first_created_at is not None]
    lasts = [p.last_updated_at for p in parts if p.last_updated_at is not None]
    oldest = min((p.computed_s for p in parts), default=now_s)
    return {
        "count": sum(p.count for p in parts),
        "by_kind": dict(kinds.most_common()),
        "by_tag": dict(tags.most_common(TAGS_SHOWN_MAX)),
        "first_created_at": min(firsts) if firsts else None,
        "last_updated_at": max(lasts) if lasts else None,
        "newest_ids": [mid for _u, mid in sorted(newest, reverse=True)[:NEWEST_MAX]],
        "stale": any(p.stale for p in parts),
        "age_ms": int((now_s - oldest) * 1000),
    }


class Summaries:
    """The node's cache of per-shard summaries and its refresher."""

    def __init__(self, refresh_ms: int) -> None:
        self.refresh_s = refresh_ms / 1000
        self.cache: collections.OrderedDict[Key, Summary] = collections.OrderedDict()
        self._by_ns: dict[tuple[int, str], set[Key]] = {}
        self.refreshes = 0
        self.marked = 0
        self._task: asyncio.Task[None] | None = None

    def mark(self, change: Change) -> None:
        """A change makes its namespace's summaries (on its shard) stale."""
        keys = self._by_ns.get((change.shard, change.namespace))
        if keys:
            for key in keys:
                self.cache[key].stale = True
            self.marked += 1

    def get(self, key: Key) -> Summary | None:
        s = self.cache.get(key)
        if s is not None:
            self.cache.move_to_end(key)
        return s

    def put(self, key: Key, summary: Summary) -> None:
        self.cache[key] = summary
        self.cache.move_to_end(key)
        self._by_ns.setdefault((key[0], key[1]), set()).add(key)
        while len(self.cache) > SUMMARIES_MAX:
            old, _ = self.cache.popitem(last=False)
            self._by_ns.get((old[0], old[1]), set()).discard(old)

    def drop_shard(self, shard: int) -> None:
        for key in [k for k in self.cache if k[0] == shard]:
            del self.cache[key]
            self._by_ns.get((key[0], key[1]), set()).discard(key)

    def stale_keys(self) -> list[Key]:
        return [k for k, s in self.cache.items() if s.stale][:REFRESH_PER_ROUND_MAX]

    def start(self, refresh: Callable[[Key], Any]) -> None:
        async def loop() -> None:
            while True:
                await asyncio.sleep(self.refresh_s)
                for key in self.stale_keys():
                    try:
                        await refresh(key)
                        self.refreshes += 1
                    except Exception:  # noqa: BLE001 (a shard gone or busy: the next round tries again)
                        continue

        self._task = asyncio.create_task(loop(), name="summaries")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
