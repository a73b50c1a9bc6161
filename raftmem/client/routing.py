"""Shard -> leader routing from GET /v1/cluster answers: pure, no I/O (the client
feeds it). The key hash is the server's own (raftmem.shardhash, a leaf module)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..shardhash import HASH_NAME, shard_for

__all__ = ["HASH_NAME", "RouteTable", "shard_for"]


@dataclass
class RouteTable:
    """Shard -> leader URL, from GET /v1/cluster answers. No I/O: the client feeds it."""

    shard_count: int = 0
    node_urls: dict[str, str] = field(default_factory=dict)
    leaders: dict[int, str] = field(default_factory=dict)  # shard -> node id
    terms: dict[int, int] = field(default_factory=dict)
    hash_ok: bool = False

    @property
    def loaded(self) -> bool:
        return self.shard_count > 0 and bool(self.node_urls)

    def merge(self, cluster: Mapping[str, Any]) -> None:
        """Fold one node's view in; per shard, a known leader at the highest term wins."""
        count = int(cluster.get("shard_count") or 0)
        if count <= 0:
            raise ValueError("cluster answer has no shard_count")
        if count != self.shard_count:
            self.shard_count, self.leaders, self.terms = count, {}, {}
        self.hash_ok = cluster.get("hash") == HASH_NAME
        for node in cluster.get("nodes") or ():
            if isinstance(node, dict) and isinstance(node.get("id"), str) and isinstance(node.get("url"), str):
                self.node_urls[node["id"]] = node["url"].rstrip("/")
        for entry in cluster.get("shards") or ():
            if not isinstance(entry, dict):
                continue
            shard, leader, term = entry.get("shard"), entry.get("leader"), int(entry.get("term") or 0)
            if not isinstance(shard, int) or not isinstance(leader, str):
                continue
            if term >= self.terms.get(shard, -1):
                self.leaders[shard] = leader
                self.terms[shard] = term

    def missing_leaders(self) -> list[int]:
        return [s for s in range(self.shard_count) if s not in self.leaders]

    def shard(self, namespace: str, memory_id: str) -> int | None:
        if not self.loaded or not self.hash_ok:
            return None
        return shard_for(namespace, memory_id, self.shard_count)

    def leader_url(self, shard: int | None) -> str | None:
        if shard is None:
            return None
        node = self.leaders.get(shard)
        return self.node_urls.get(node) if node is not None else None

    def learn_leader(self, shard: int, node_id: str) -> None:
        """A leader-bound request was served by `node_id`: it leads (or led) `shard`."""
        if node_id in self.node_urls:
            self.leaders[shard] = node_id

    def forget_leader(self, shard: int) -> None:
        self.leaders.pop(shard, None)

