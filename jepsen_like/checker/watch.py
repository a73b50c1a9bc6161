"""Watch checker, modelled on etcd's robustness suite (tests/robustness/
validate/watch.go: ordered, unique, atomic, bookmarkable, reliable,
resumable), over the ``watch`` workload's history (see jepsen_like/watch.py
for the event shapes).

An event is identified by (shard, index, seq): its log entry and its place in
the entry. Per watcher (its sessions, each resumed from the last one's end):

- ordered: within a session, per shard, identities strictly increase;
- resumable: a session never sends an event at or before the token it was
  resumed from (no duplicate across sessions), and a session resumed from a
  token that is still kept starts (``fail`` 410 compacted is a violation: the
  runs are far below the retention);
- atomic: an event marked last ends its entry: nothing more of that entry
  follows in the session;
- bookmarkable: a progress token is never followed by an event at or before
  it, and never goes back (within a session, or below the session's start);
- filtered: every event matches the watcher's filter;
- agreement: every watcher that got an identity got the same change (type,
  key, version, value): one history, whoever serves it, before or after a
  leader change;
- reliable: every acknowledged write whose token falls in a range a watcher
  covered (from a session's start to the last token it reported complete)
  and that matches its filter is in what that watcher received, exactly once,
  with the version the write returned (and its value); a write that failed
  never appears.

Verdict: False on any violation, "unknown" when no acknowledged write was
covered (nothing exercised), True otherwise.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from jepsen_like.checker.history import Event, pair_operations

SAMPLES_MAX = 10
Identity = tuple[int, int, int]


def parse_tokens(value: Any) -> dict[int, int]:
    """`"<shard>:<index>,..."` (or a mapping of them) as {shard: index}; bad parts are skipped."""
    if isinstance(value, Mapping):
        return {int(s): int(i) for s, i in value.items()}
    out: dict[int, int] = {}
    for part in str(value or "").split(","):
        shard, _, index = part.partition(":")
        if shard.isdigit() and index.isdigit():
            out[int(shard)] = int(index)
    return out


def _tagged(content: Any, tag: str) -> bool:
    return isinstance(content, int) and ("even" if content % 2 == 0 else "odd") == tag


def _allowed(flt: Mapping[str, Any], kind: str, content: Any) -> bool:
    """May this event reach a watcher with this filter? (A delete's record is
    the one removed, whose tags the event does not show here: any may.)"""
    tag = flt.get("tag")
    return tag is None or kind != "put" or _tagged(content, tag)


def _judged(flt: Mapping[str, Any], kind: str, written: Any) -> bool:
    """Must this acknowledged write reach a watcher with this filter? A
    filtered watcher is judged on puts only (a delete's tags are the removed
    record's, not in the write)."""
    tag = flt.get("tag")
    return tag is None or (kind == "put" and _tagged(written, tag))


class _Report:
    def __init__(self) -> None:
        self.counts: dict[str, int] = defaultdict(int)
        self.samples: list[dict[str, Any]] = []

    def add(self, kind: str, **detail: Any) -> None:
        self.counts[kind] += 1
        if len(self.samples) < SAMPLES_MAX:
            self.samples.append({"violation": kind, **detail})


def check_watch(events: Sequence[Event]) -> dict[str, Any]:
    report = _Report()
    ops = pair_operations([e for e in events if e.process != "nemesis"], keep_failed=True)
    acked: dict[tuple[int, int, str], list[tuple[str, int | None, Any]]] = defaultdict(list)
    failed_values: set[Any] = set()
    sessions: dict[str, list[Any]] = defaultdict(list)
    for op in ops:
        if op.f in ("put", "delete") and op.complete is not None:
            if op.status == "ok":
                for shard, index in parse_tokens(op.complete.extra.get("token")).items():
                    acked[(shard, index, str(op.key).split("/", 1)[1])].append((op.f, op.complete.version, op.value))
            elif op.status == "fail" and op.f == "put":
                failed_values.add(op.value)
        elif op.f == "watch":
            sessions[str(op.invoke.extra.get("watcher"))].append(op)
    seen: dict[Identity, tuple[Any, ...]] = {}  # identity -> the change, from the first watcher that got it
    covered_writes = 0
    events_checked = 0
    for watcher, ops_of in sorted(sessions.items()):
        received: dict[Identity, tuple[Any, ...]] = {}
        covered: dict[int, list[tuple[int, int]]] = defaultdict(list)  # shard -> [(after, through)]
        flt: Mapping[str, Any] = {}
        for op in ops_of:
            value = op.invoke.value if isinstance(op.invoke.value, dict) else {}
            flt = value.get("filter") or {}
            after = parse_tokens(value.get("after"))
            if op.status != "ok" or op.complete is None:
                if op.complete is not None and "410" in str(op.complete.error or ""):
                    report.add("compacted", watcher=watcher, after=after, node=op.invoke.node)
                continue
            through = _session(report, watcher, op.invoke.node, after, flt, op.complete.value or [], received,
                               failed_values)
            events_checked += sum(1 for item in op.complete.value or [] if item[0] == "e")
            for shard, index in through.items():
                if index > after.get(shard, 0):
                    covered[shard].append((after.get(shard, 0), index))
        for identity, change in received.items():
            other = seen.setdefault(identity, change)
            if other != change:
                report.add("disagreement", watcher=watcher, token=f"{identity[0]}:{identity[1]}", seq=identity[2],
                           got=list(change), other=list(other))
        by_entry: dict[tuple[int, int, str], list[tuple[Any, ...]]] = defaultdict(list)
        for (shard, index, _seq), change in received.items():
            by_entry[(shard, index, str(change[1]))].append(change)
        for (shard, index, key), writes in acked.items():
            if not any(lo < index <= hi for lo, hi in covered.get(shard, ())):
                continue
            for kind, version, written in writes:
                if not _judged(flt, kind, written):
                    continue
                covered_writes += 1
                found = [c for c in by_entry.get((shard, index, key), []) if c[0] == kind and c[2] == version]
                if len(found) != 1:
                    report.add("lost" if not found else "duplicate", watcher=watcher, token=f"{shard}:{index}",
                               key=key, type=kind, version=version, value=written, found=len(found))
                elif kind == "put" and found[0][3] != written:
                    report.add("wrong-value", watcher=watcher, token=f"{shard}:{index}", key=key,
                               version=version, written=written, got=found[0][3])
    valid: bool | str = False if report.counts else (True if covered_writes else "unknown")
    return {
        "valid": valid,
        "watchers": len(sessions),
        "sessions": sum(len(v) for v in sessions.values()),
        "events_checked": events_checked,
        "reads_checked": events_checked,
        "writes_checked": covered_writes,
        "ops_checked": covered_writes,
        "violation_count": sum(report.counts.values()),
        "violations_by_kind": dict(report.counts),
        "violations": report.samples,
    }


def _session(report: _Report, watcher: str, node: str | None, after: dict[int, int], flt: Mapping[str, Any],
             items: Sequence[Any], received: dict[Identity, tuple[Any, ...]], failed_values: set[Any]) -> dict[int, int]:
    """Check one session's items; add its events to `received`; return per shard
    the last token it reported complete (its coverage ends there)."""
    last: dict[int, Identity] = {}
    ended: set[tuple[int, int]] = set()  # entries whose last event came
    bookmark = dict(after)  # per shard: nothing at or before it may come any more
    through = dict(after)
    where = {"watcher": watcher, "node": node}
    for item in items:
        if item[0] == "e":
            _, shard, index, seq, kind, key, version, content, is_last = item
            identity = (shard, index, seq)
            if index <= bookmark.get(shard, 0):
                report.add("before-resume-or-progress", **where, token=f"{shard}:{index}", seq=seq,
                           bookmark=bookmark.get(shard, 0), resumed_from=after.get(shard, 0))
            if shard in last and identity <= last[shard]:
                report.add("unordered", **where, token=f"{shard}:{index}", seq=seq,
                           after_event=f"{last[shard][0]}:{last[shard][1]}/{last[shard][2]}")
            if (shard, index) in ended:
                report.add("atomic", **where, token=f"{shard}:{index}", seq=seq)
            if not _allowed(flt, kind, content):
                report.add("filter", **where, token=f"{shard}:{index}", value=content, filter=dict(flt))
            if kind == "put" and content in failed_values:
                report.add("failed-write-seen", **where, token=f"{shard}:{index}", value=content)
            last[shard] = identity
            change = (kind, key, version, content)
            if received.setdefault(identity, change) != change:
                report.add("disagreement", **where, token=f"{shard}:{index}", seq=seq, got=list(change),
                           other=list(received[identity]))
            if is_last:
                ended.add((shard, index))
                through[shard] = max(through.get(shard, 0), index)
        else:
            tokens = parse_tokens(item[1] if item[0] == "p" else item[2])
            for shard, index in tokens.items():
                if index < bookmark.get(shard, 0) and item[0] == "p":
                    report.add("progress-backwards", **where, shard=shard, progress=index,
                               before=bookmark.get(shard, 0))
                bookmark[shard] = max(bookmark.get(shard, 0), index)
                through[shard] = max(through.get(shard, 0), index)
    return through
