"""A memory's lifecycle in the state machine: access tracking, sliding TTL, and
the pruning policies' rules (which memories a policy selects, and the re-check
apply makes before removing one).

Record fields (public, written by apply):

    actor                the `actor` of the last write (who wrote it), when given
    last_accessed_at     the last read or write recorded (ms, the leader's clock
                         for writes, the serving replica's for reads)
    access_count         reads recorded
    ttl_s, ttl_refresh_on_read
                         a sliding TTL: reads push `expires_at` to ttl_s from
                         the leader's time, once `fraction` of it has passed

Reads are not log writes each: the node that served them coalesces them per
memory (raftmem.service.lifecycle) and sends one `Touch` per shard and flush;
apply (`touched`) raises the counters, and extends a sliding TTL when the
serving node found it due (`refresh_due`). Nothing here reads a clock: times
come from the command (chosen by the leader before proposing) or the record.

The state machine delegates its idle index to this module:

    r NUL a NUL ns NUL minute(8) id             -> ""   (memories by last access)

kept by the state machine's index maintenance (`idle_key` is one of a record's
index keys), so a policy `not_accessed_for` finds its candidates by a range
scan up to its cut-off, one namespace at a time. The key holds the minute of
the last access, not the millisecond: a memory read or written again within
the minute keeps its key (no index write), and selection checks the exact
time on the record.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from . import codec
from .commands import MemoryFields, Prune, TouchItem
from .config import PolicyConfig
from .storage import Store

IDLE_PREFIX, IDLE_END = b"r\x00a\x00", b"r\x00a\x01"
IDLE_BUCKET_MS = 60_000
AGENT_PREFIX = b"a\x00"
SEP = b"\x00"

Target = tuple[str, str, int]  # (namespace, id, version)
Getter = Callable[[str, str], dict[str, Any] | None]  # a live memory, or None


# -- records ---------------------------------------------------------------------------
def last_access_ms(rec: Mapping[str, Any]) -> int:
    """The last recorded read or write (records from before access tracking: the last write)."""
    return int(rec.get("last_accessed_at") or rec.get("updated_at") or rec.get("created_at") or 0)


def idle_key(rec: Mapping[str, Any]) -> bytes:
    minute = last_access_ms(rec) // IDLE_BUCKET_MS * IDLE_BUCKET_MS
    return IDLE_PREFIX + str(rec["namespace"]).encode() + SEP + codec.u64(minute) + str(rec["id"]).encode()


def idle_moved(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Does the record's idle key change (another minute of last access)?"""
    return last_access_ms(old) // IDLE_BUCKET_MS != last_access_ms(new) // IDLE_BUCKET_MS


def stamp_put(rec: dict[str, Any], fields: MemoryFields, old_live: Mapping[str, Any] | None, now_ms: int) -> None:
    """A put's lifecycle fields: written now, reads so far carried over."""
    if fields.actor is not None:
        rec["actor"] = fields.actor
    rec["last_accessed_at"] = now_ms
    rec["access_count"] = int(old_live.get("access_count") or 0) if old_live is not None else 0
    if fields.ttl_refresh_on_read and fields.ttl_s is not None:
        rec["ttl_s"] = fields.ttl_s
        rec["ttl_refresh_on_read"] = True


def refresh_due(rec: Mapping[str, Any], now_ms: int, fraction: float) -> bool:
    """Has `fraction` of a sliding TTL passed since its last refresh (or write)?
    Decided by the node serving the read; apply only carries it out."""
    if not rec.get("ttl_refresh_on_read") or rec.get("expires_at") is None or not rec.get("ttl_s"):
        return False
    ttl_ms = int(rec["ttl_s"] * 1000)
    refreshed_at = int(rec["expires_at"]) - ttl_ms
    return now_ms - refreshed_at >= fraction * ttl_ms


def touched(rec: Mapping[str, Any], item: TouchItem, now_ms: int) -> dict[str, Any]:
    """`rec` after the reads of `item`, recorded at the leader's `now_ms`: a
    read time ahead of the leader's (a fast clock) counts as now; a refresh
    moves the expiry to a whole TTL from now, never earlier."""
    out = dict(rec)
    out["access_count"] = int(rec.get("access_count") or 0) + max(0, item.reads)
    out["last_accessed_at"] = max(int(rec.get("last_accessed_at") or 0), min(item.last_ms, now_ms))
    if item.refresh and rec.get("ttl_refresh_on_read") and rec.get("ttl_s") and rec.get("expires_at") is not None:
        out["expires_at"] = max(int(rec["expires_at"]), now_ms + int(rec["ttl_s"] * 1000))
    return out


# -- pruning: the rules apply re-checks ----------------------------------------------
def matches(policy_tag: str | None, rec: Mapping[str, Any]) -> bool:
    return policy_tag is None or policy_tag in (rec.get("tags") or ())


def idle_removable(rec: Mapping[str, Any], op: Prune, version: int) -> bool:
    """An `idle` target is removed only if it is the version the leader
    selected, still carries the policy's tag, and was not accessed (read or
    written, as recorded) after the cut-off."""
    return int(rec["version"]) == version and matches(op.tag, rec) and last_access_ms(rec) <= op.cutoff_ms


def order_key(order: str) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    if order == "least_accessed":
        return lambda r: (int(r.get("access_count") or 0), last_access_ms(r), int(r["created_at"]), r["id"])
    return lambda r: (int(r["created_at"]), r["id"])


# -- pruning: selection on the leader (a proposal: apply decides) --------------------------
def _namespaces(store: Store, prefix: bytes, only: str | None) -> Iterator[str]:
    """Namespaces present under an index `prefix` (skip-scan), or just `only`."""
    if only is not None:
        yield only
        return
    start = prefix
    end = prefix[:-1] + bytes([prefix[-1] + 1])
    while True:
        first = next(store.scan(start, end), None)
        if first is None:
            return
        ns = first[0][len(prefix):].split(SEP, 1)[0]
        yield ns.decode()
        start = prefix + ns + b"\x01"  # past every key of that namespace


def select_idle(store: Store, get: Getter, policy: PolicyConfig, cutoff_ms: int, limit: int,
                scan_max: int) -> list[Target]:
    """Memories the policy covers whose last access is at or before the cut-off."""
    out: list[Target] = []
    scanned = 0
    for ns in _namespaces(store, IDLE_PREFIX, policy.namespace):
        prefix = IDLE_PREFIX + ns.encode() + SEP
        for key, _ in store.scan(prefix, prefix + codec.u64(cutoff_ms + 1)):
            scanned += 1
            rec = get(ns, key[len(prefix) + 8:].decode())
            if rec is not None and matches(policy.tag, rec) and last_access_ms(rec) <= cutoff_ms:
                out.append((ns, rec["id"], int(rec["version"])))
            if len(out) >= limit or scanned >= scan_max:
                return out
    return out


def agent_memories(store: Store, get: Getter, ns: str, agent: str, tag: str | None) -> list[dict[str, Any]]:
    """An agent's live memories in a namespace (the policy's tag only, when it names one)."""
    prefix = AGENT_PREFIX + ns.encode() + SEP + agent.encode() + SEP
    recs = (get(ns, key[len(prefix) + 8:].decode()) for key, _ in store.scan(prefix, prefix[:-1] + b"\x01"))
    return [r for r in recs if r is not None and matches(tag, r)]


def select_count(store: Store, get: Getter, policy: PolicyConfig, limit: int, scan_max: int) -> list[Target]:
    """Per agent, the memories past the policy's `max_per_agent`, in its order."""
    keep = policy.max_per_agent or 0
    out: list[Target] = []
    scanned = 0
    for ns in _namespaces(store, AGENT_PREFIX, policy.namespace):
        prefix = AGENT_PREFIX + ns.encode() + SEP
        start = prefix
        while len(out) < limit and scanned < scan_max:
            first = next(store.scan(start, prefix[:-1] + b"\x01"), None)
            if first is None:
                break
            agent = first[0][len(prefix):].split(SEP, 1)[0].decode()
            recs = agent_memories(store, get, ns, agent, policy.tag)
            scanned += len(recs) + 1
            if len(recs) > keep:
                recs.sort(key=order_key(policy.order))
                out.extend((ns, r["id"], int(r["version"])) for r in recs[: len(recs) - keep])
            start = prefix + agent.encode() + b"\x01"
        if len(out) >= limit or scanned >= scan_max:
            break
    return out[:limit]
