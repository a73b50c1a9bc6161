"""Lifecycle commands: reads recorded (sliding TTLs, access counts) and
memories pruned by policy (applied with raftmem.lifecycle)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .wire import opt_str, req_int, req_str

TOUCH_ITEMS_MAX = 1000
PRUNE_TARGETS_MAX = 1000


@dataclass(frozen=True)
class TouchItem:
    """The reads of one memory a replica served since its last flush."""

    namespace: str
    id: str
    reads: int
    last_ms: int  # the latest read, on the serving node's clock
    refresh: bool  # its sliding TTL is due for a refresh

    def to_wire(self) -> list[Any]:
        return [self.namespace, self.id, self.reads, self.last_ms, 1 if self.refresh else 0]

    @classmethod
    def from_wire(cls, value: Any) -> TouchItem:
        ns, mid, reads, last_ms, refresh = value
        if not isinstance(ns, str) or not isinstance(mid, str):
            raise TypeError(f"touch item must be [namespace, id, reads, last_ms, refresh], got {value!r:.80}")
        return cls(ns, mid, req_int({"reads": reads}, "reads"), req_int({"last": last_ms}, "last"), bool(refresh))


@dataclass(frozen=True)
class Touch:
    """Record coalesced reads (access counts, last access, sliding-TTL
    refreshes): one log entry per shard and node and flush, not one per read."""

    TAG: ClassVar[str] = "touch"
    items: tuple[TouchItem, ...]
    now_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "items": [i.to_wire() for i in self.items], "now": self.now_ms}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Touch:
        items = d["items"]
        if not isinstance(items, list) or len(items) > TOUCH_ITEMS_MAX:
            raise TypeError(f"items must be a list of at most {TOUCH_ITEMS_MAX}")
        return cls(tuple(TouchItem.from_wire(i) for i in items), req_int(d, "now"))


@dataclass(frozen=True)
class Prune:
    """Remove memories a lifecycle policy selected, re-checked in apply against
    the rule the leader chose before proposing: `idle` (last access at or before
    `cutoff_ms`), `count` (while the agent has more than `keep`), or `history`
    (compact the histories of memories removed at or before `cutoff_ms`)."""

    TAG: ClassVar[str] = "prune"
    RULES: ClassVar[tuple[str, ...]] = ("idle", "count", "history")
    policy: str
    rule: str
    cutoff_ms: int = 0
    keep: int = 0
    tag: str | None = None
    targets: tuple[tuple[str, str, int], ...] = ()  # (namespace, id, version)
    now_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {"t": self.TAG, "policy": self.policy, "rule": self.rule, "cutoff": self.cutoff_ms,
                "keep": self.keep, "tag": self.tag, "targets": [list(t) for t in self.targets], "now": self.now_ms}

    @classmethod
    def from_wire(cls, d: Mapping[str, Any]) -> Prune:
        rule = req_str(d, "rule")
        if rule not in cls.RULES:
            raise ValueError(f"unknown prune rule {rule!r}")
        targets = d["targets"]
        if not isinstance(targets, list) or len(targets) > PRUNE_TARGETS_MAX:
            raise TypeError(f"targets must be a list of at most {PRUNE_TARGETS_MAX}")
        clean = []
        for ns, mid, version in targets:
            if not isinstance(ns, str) or not isinstance(mid, str):
                raise TypeError("a target is [namespace, id, version]")
            clean.append((ns, mid, req_int({"v": version}, "v")))
        return cls(req_str(d, "policy"), rule, req_int(d, "cutoff"), req_int(d, "keep"), opt_str(d, "tag"),
                   tuple(clean), req_int(d, "now"))
