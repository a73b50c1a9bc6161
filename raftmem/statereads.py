"""The read side of a shard replica's state: what every shard read runs on
(the `MemoryReader` seam of raftmem.shard), over the key layout of
raftmem.statekeys. `StateMachine` adds apply to it."""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from typing import Any

from . import codec, lifecycle
from .config import PolicyConfig
from .events import Change, ChangePage, Compacted
from .history import History
from .shard import TIME_MAX, ListQuery, RecordScan
from .statekeys import (
    CREATED_PREFIX,
    DIMS_PREFIX,
    EVENT_END,
    EVENT_PREFIX,
    EXPIRY_END,
    EXPIRY_PREFIX,
    MEMBERS_KEY,
    MEMORY_END,
    MEMORY_PREFIX,
    SEP,
    is_live,
    memory_key,
)
from .storage import Store


class StateReads:
    """Reads of one replica's state (no writes: apply is StateMachine's)."""

    store: Store
    shard: int
    history: History
    applied_index: int
    events_from: int

    def changes_after(self, after: int, limit: int) -> ChangePage:
        """The logged changes after index `after`, in log order: at least `limit`
        when there are that many, and never half an entry's. Raises Compacted
        when some changes after `after` are no longer kept."""
        if after + 1 < self.events_from:
            raise Compacted(self.shard, self.events_from - 1)
        out: list[Change] = []
        for key, raw in self.store.scan(EVENT_PREFIX + codec.u64(after + 1), EVENT_END):
            index = codec.from_u64(key[len(EVENT_PREFIX):len(EVENT_PREFIX) + 8])
            if len(out) >= limit and index != out[-1].index:
                return ChangePage(self.shard, out, out[-1].index, complete=False)
            out.append(Change.from_log(self.shard, index, codec.loads(raw)))
        return ChangePage(self.shard, out, self.applied_index, complete=True)

    def members_table(self) -> dict[str, Any] | None:
        raw = self.store.get(MEMBERS_KEY)
        return codec.loads(raw) if raw is not None else None

    def next_expiry_ms(self) -> int | None:
        """The earliest expiry of any stored memory (None: nothing expires)."""
        first = next(self.store.scan(EXPIRY_PREFIX, EXPIRY_END), None)
        return None if first is None else codec.from_u64(first[0][len(EXPIRY_PREFIX):len(EXPIRY_PREFIX) + 8])

    def get(self, ns: str, mid: str, now_ms: int) -> dict[str, Any] | None:
        raw = self.store.get(memory_key(ns, mid))
        if raw is None:
            return None
        rec: dict[str, Any] = codec.loads(raw)
        return rec if is_live(rec, now_ms) else None

    def history_of(self, ns: str, mid: str, limit: int) -> list[dict[str, Any]]:
        """The memory's versions, newest first (raftmem.history)."""
        return self.history.read(self.shard, ns, mid, limit)

    def history_compaction_due(self, cutoff_ms: int) -> bool:
        """Is a removed memory's history waiting to be compacted (removed at or before the cut-off)?"""
        return self.history.compaction_due(cutoff_ms)

    def prune_candidates(
        self, policy: PolicyConfig, cutoff_ms: int, now_ms: int, limit: int, scan_max: int,
    ) -> list[tuple[str, str, int]]:
        """What `policy` would remove now (a proposal: apply re-checks)."""
        def get(ns: str, mid: str) -> dict[str, Any] | None:
            return self.get(ns, mid, now_ms)

        if policy.rule == "idle":
            return lifecycle.select_idle(self.store, get, policy, cutoff_ms, limit, scan_max)
        return lifecycle.select_count(self.store, get, policy, limit, scan_max)

    def list(self, q: ListQuery, now_ms: int) -> list[dict[str, Any]]:
        ns = q.namespace.encode()
        if q.tag is not None:
            prefix = b"t\x00" + ns + SEP + q.tag.encode() + SEP
        elif q.agent_id is not None:
            prefix = b"a\x00" + ns + SEP + q.agent_id.encode() + SEP
        else:
            prefix = b"c\x00" + ns + SEP
        start = prefix + codec.u64(q.since_ms)
        if q.after is not None and q.after[0] >= q.since_ms:
            # Strictly after (created_at, id): the id byte string sorts after any
            # shorter prefix of itself, so appending NUL skips exactly that key.
            start = prefix + codec.u64(q.after[0]) + q.after[1].encode() + b"\x00"
        end = prefix + codec.u64(min(q.until_ms, TIME_MAX - 1) + 1)
        out: list[dict[str, Any]] = []
        for key, _ in self.store.scan(start, end):
            mid = key[len(prefix) + 8 :].decode()
            rec = self.get(q.namespace, mid, now_ms)
            if rec is None:
                continue
            if q.agent_id is not None and rec.get("agent_id") != q.agent_id:
                continue
            out.append(rec)
            if len(out) >= q.limit:
                break
        return out

    def iter_records(self) -> Iterator[dict[str, Any]]:
        for _, raw in self.store.scan(MEMORY_PREFIX, MEMORY_END):
            yield codec.loads(raw)

    def record_scan(self) -> RecordScan:
        """Every stored memory as of now, with the applied index they are the
        state of: a RocksDB snapshot, so it may be consumed slowly, on another
        thread, while apply goes on (derived indexes rebuild from it)."""
        return RecordScan(self.applied_index, self.store.snapshot_scan(MEMORY_PREFIX, MEMORY_END))

    def namespace_scan(self, ns: str) -> RecordScan:
        """The memories of one namespace here, as of now (a storage snapshot)."""
        start = MEMORY_PREFIX + ns.encode() + SEP
        return RecordScan(self.applied_index, self.store.snapshot_scan(start, MEMORY_PREFIX + ns.encode() + b"\x01"))

    def namespaces(self, prefix: str, after: str | None, limit: int) -> builtins.list[str]:
        """Namespaces holding memories here, in byte order, starting with
        `prefix`, strictly after `after`: one seek per namespace (the creation
        index has one run of keys per namespace)."""
        out: builtins.list[str] = []
        start = CREATED_PREFIX + (after.encode() + b"\x01" if after is not None else prefix.encode())
        end = CREATED_PREFIX + prefix.encode() + b"\xff"
        while len(out) < limit:
            first = next(self.store.scan(start, end), None)
            if first is None:
                break
            ns = first[0][len(CREATED_PREFIX):].split(SEP, 1)[0]
            out.append(ns.decode())
            start = CREATED_PREFIX + ns + b"\x01"
        return out

    def dims_of(self, ns: str) -> int | None:
        raw = self.store.get(DIMS_PREFIX + ns.encode())
        return None if raw is None else int(codec.loads(raw)["dims"])
