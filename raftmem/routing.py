"""Keys to shards, and shard replicas to nodes.

Pure functions, stable across processes and Python versions. The key hash lives
in `shardhash` (a leaf module the client and the harness share); it is published
in GET /v1/cluster as `hash`, so other clients may reimplement it.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from .shardhash import HASH_NAME, h64, shard_for

__all__ = ["HASH_NAME", "Ring", "placement", "shard_for"]

VNODES_PER_NODE = 64


class Ring:
    """Consistent-hash ring with virtual nodes: each shard's replicas are the first
    `factor` distinct nodes clockwise from the shard's point. Adding a node moves
    only the replicas whose arc it takes over (about 1/N of them)."""

    def __init__(self, node_ids: Sequence[str], vnodes: int = VNODES_PER_NODE) -> None:
        points = []
        for node_id in node_ids:
            for v in range(vnodes):
                points.append((h64(f"{node_id}#{v}".encode()), node_id))
        points.sort()
        self._points = points
        self._keys = [p for p, _ in points]
        self._nodes = sorted(set(node_ids))

    def replicas(self, shard: int, factor: int) -> list[str]:
        if factor > len(self._nodes):
            raise ValueError(f"factor {factor} exceeds {len(self._nodes)} nodes")
        start = bisect.bisect(self._keys, h64(f"shard-{shard}".encode()))
        chosen: list[str] = []
        i = start
        while len(chosen) < factor:
            node_id = self._points[i % len(self._points)][1]
            if node_id not in chosen:
                chosen.append(node_id)
            i += 1
        return chosen


def placement(node_ids: Sequence[str], shards: int, factor: int) -> dict[int, list[str]]:
    """Shard -> replica node ids. The first replica is the preferred leader; with
    every node holding every shard (3 nodes, factor 3) the preferred leaders are
    rotated so that leadership spreads evenly."""
    ring = Ring(node_ids)
    table = {s: ring.replicas(s, factor) for s in range(shards)}
    if factor == len(set(node_ids)):
        ordered = sorted(set(node_ids))
        for s, reps in table.items():
            first = ordered[s % len(ordered)]
            table[s] = [first] + [n for n in reps if n != first]
    return table
