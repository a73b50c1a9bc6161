"""`raftmem status`: every node's view of every shard, in one picture.

A node's GET /v1/cluster describes only the replicas it holds (role, term,
indexes, and for a leader the followers' match indexes), so status asks every
node and merges the answers. Per shard the leader is the replica that says it
leads at the highest term; a follower's replication lag is that leader's last
log index minus the follower's match index.

Marks: `!` a shard without a leader, with a leader that has lost its quorum, or
in an election; `~` a shard whose voters differ from the membership table (a
replica move in progress). Exit 0 when every shard has a leader with a quorum,
1 otherwise, 3 when no node answered.

`collect` does the I/O; `summarize` and `render` are pure, and tested alone.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

from raftmem.client import ClientError

from .admin_client import AdminClient
from .common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    dump,
    global_options,
    render_table,
    report_error,
    urls,
)
from .feed import feed_summary, render_feed


@dataclass
class Snapshot:
    """What the nodes answered: node id -> its /v1/cluster view; node id -> why it
    did not answer; seed URLs that answered nothing and match no known node."""

    views: dict[str, dict[str, Any]] = field(default_factory=dict)
    nodes: dict[str, str] = field(default_factory=dict)  # id -> URL
    down: dict[str, str] = field(default_factory=dict)
    dead_seeds: dict[str, str] = field(default_factory=dict)


def collect(admin: AdminClient, seeds: Sequence[str], extra_nodes: Mapping[str, str] | None = None) -> Snapshot:
    """Ask the seeds, then every node they list (plus `extra_nodes`) that has not
    answered yet. Raises the first seed's error when no node answers at all."""
    snap = Snapshot()
    errors: dict[str, ClientError] = {}
    pending = list(dict.fromkeys([*seeds, *(extra_nodes or {}).values()]))
    asked: set[str] = set()
    while pending:
        asked.update(pending)
        for url, answer in admin.probe_all(pending, "/v1/cluster").items():
            if isinstance(answer, dict) and isinstance(answer.get("node"), str):
                snap.views.setdefault(answer["node"], answer)
                snap.nodes.setdefault(answer["node"], url)
            elif isinstance(answer, ClientError):
                errors[url] = answer
            else:
                errors[url] = ClientError(f"{url}: not a /v1/cluster answer", code="bad_response")
        for view in list(snap.views.values()):
            for node in view.get("nodes") or ():
                if isinstance(node, dict) and isinstance(node.get("id"), str) and isinstance(node.get("url"), str):
                    snap.nodes.setdefault(node["id"], node["url"].rstrip("/"))
        for node_id, url in (extra_nodes or {}).items():
            snap.nodes.setdefault(node_id, url)
        pending = [u for i, u in snap.nodes.items() if i not in snap.views and u not in asked]
    if not snap.views:
        raise next(iter(errors.values()))
    for node_id, url in snap.nodes.items():
        if node_id not in snap.views:
            snap.down[node_id] = str(errors.get(url, "no answer"))
    known = set(snap.nodes.values())
    snap.dead_seeds = {u: str(e) for u, e in errors.items() if u not in known}
    return snap


# -- pure ------------------------------------------------------------------------------
def shard_entries(views: Mapping[str, Mapping[str, Any]], shard: int) -> dict[str, dict[str, Any]]:
    """node id -> its replica of `shard` (nodes holding none are left out)."""
    out = {}
    for node_id, view in views.items():
        for entry in view.get("shards") or ():
            if isinstance(entry, dict) and entry.get("shard") == shard and entry.get("role"):
                out[node_id] = entry
    return out


def leader_of(entries: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The replica saying it leads, at the highest term."""
    claims = [(int(e.get("term") or 0), node) for node, e in entries.items() if e.get("role") == "leader"]
    return max(claims)[1] if claims else None


def leaders(views: Mapping[str, Mapping[str, Any]]) -> dict[int, tuple[str, dict[str, Any]]]:
    """shard -> (leader node, its entry), for every shard some answering node leads."""
    out = {}
    for shard in range(shard_count(views)):
        entries = shard_entries(views, shard)
        leader = leader_of(entries)
        if leader is not None:
            out[shard] = (leader, entries[leader])
    return out


def shard_count(views: Mapping[str, Mapping[str, Any]]) -> int:
    return max((int(v.get("shard_count") or 0) for v in views.values()), default=0)


def last_index(entry: Mapping[str, Any]) -> int | None:
    """A leader's last log index: its journal's first index plus its length."""
    first, count = entry.get("log_first_index"), entry.get("log_entries")
    if isinstance(first, int) and isinstance(count, int) and count > 0:
        return first + count - 1
    commit = entry.get("commit_index")
    return commit if isinstance(commit, int) else None


def _assignment(views: Mapping[str, Mapping[str, Any]]) -> dict[int, list[str]]:
    """Shard -> assigned nodes, from the view with the newest membership table."""
    newest = max(views.values(), key=lambda v: int(v.get("table_version") or 0))
    return {e["shard"]: list(e.get("replicas") or []) for e in newest.get("shards") or () if isinstance(e, dict)}


def summarize(snap: Snapshot) -> dict[str, Any]:
    views = snap.views
    assignment = _assignment(views) if views else {}
    shards = []
    problems: list[str] = []
    led: dict[str, int] = {}
    for shard in range(shard_count(views)):
        entries = shard_entries(views, shard)
        leader = leader_of(entries)
        lead = entries.get(leader) if leader is not None else None
        top_term = max((int(e.get("term") or 0) for e in entries.values()), default=0)
        issues = []
        if lead is None:
            seen = sorted({str(e["leader"]) for e in entries.values() if e.get("leader")})
            issues.append("no leader" + (f" (replicas last heard from {', '.join(seen)})" if seen else ""))
        else:
            led[leader or ""] = led.get(leader or "", 0) + 1
            if int(lead.get("term") or 0) < top_term:
                issues.append(f"{leader} leads term {lead.get('term')} but a replica is at term {top_term}: "
                              "election in progress")
            if lead.get("has_quorum") is False:
                issues.append(f"leader {leader} has no quorum")
        members = sorted(lead.get("members") or []) if lead is not None else None
        assigned = assignment.get(shard)
        moving = members is not None and assigned is not None and members != sorted(assigned)
        last = last_index(lead) if lead is not None else None
        match = (lead or {}).get("match_index") or {}
        order = ([leader] if leader else []) + sorted(set(entries) - {leader}) + sorted(
            (set(members or []) | set(assigned or [])) - set(entries)
        )
        replicas = []
        for node in order:
            entry = entries.get(node)
            lag = last - match[node] if last is not None and node in match and node != leader else None
            if entry is None:
                replicas.append({"node": node, "role": "down" if node in snap.down else "missing", "lag": lag})
                continue
            replicas.append({
                "node": node,
                "role": entry.get("role"),
                "leader": entry.get("leader"),
                "term": entry.get("term"),
                "commit_index": entry.get("commit_index"),
                "applied_index": entry.get("applied_index"),
                "lag": None if lag is None else max(0, lag),
                "lease_remaining_ms": entry.get("lease_remaining_ms"),
                "last_contact_ms": entry.get("last_contact_ms"),
                "index_lag": (entry.get("index") or {}).get("lag_entries"),
                "index_lag_ms": (entry.get("index") or {}).get("lag_ms"),
            })
        shards.append({
            "shard": shard,
            "leader": leader,
            "term": lead.get("term") if lead is not None else top_term or None,
            "has_quorum": lead.get("has_quorum") if lead is not None else None,
            "available": lead is not None and lead.get("has_quorum") is not False,
            "members": members,
            "assigned": assigned,
            "moving": moving,
            "problems": issues,
            "replicas": replicas,
        })
        problems += [f"shard {shard}: {p}" for p in issues]
    nodes = []
    for node_id, url in sorted(snap.nodes.items()):
        view = views.get(node_id)
        row: dict[str, Any] = {"id": node_id, "url": url, "up": view is not None}
        if view is None:
            row["error"] = snap.down.get(node_id, "no answer")
            problems.append(f"node {node_id} ({url}) did not answer: {row['error']}")
        else:
            row["table_version"] = view.get("table_version")
            row["replicas"] = sum(1 for e in view.get("shards") or () if isinstance(e, dict) and e.get("role"))
            row["leads"] = led.get(node_id, 0)
        nodes.append(row)
    for url, error in sorted(snap.dead_seeds.items()):
        problems.append(f"{url} did not answer: {error}")
    return {
        **feed_summary(views),
        "ok": all(s["available"] for s in shards) and bool(shards),
        "cluster": next(iter(views.values())).get("cluster") if views else None,
        "quorums": next(iter(views.values())).get("quorums") if views else None,
        "shard_count": len(shards),
        "nodes": nodes,
        "shards": shards,
        "problems": problems,
    }


def render(summary: Mapping[str, Any], out: TextIO) -> None:
    render_table(
        ("NODE", "URL", "STATE", "TABLE", "LEADS", "REPLICAS"),
        [
            (n["id"], n["url"], "up" if n["up"] else "DOWN",
             f"v{n['table_version']}" if n.get("table_version") is not None else None,
             n.get("leads"), n.get("replicas"))
            for n in summary["nodes"]
        ],
        out,
    )
    out.write("\n")
    render_table(
        ("", "SHARD", "LEADER", "TERM", "QUORUM", "VOTERS", "ASSIGNED"),
        [
            ("!" if s["problems"] else "~" if s["moving"] else "", s["shard"], s["leader"], s["term"],
             {True: "yes", False: "NO", None: None}[s["has_quorum"]],
             ",".join(s["members"]) if s["members"] is not None else None,
             ",".join(s["assigned"]) if s["assigned"] is not None else None)
            for s in summary["shards"]
        ],
        out,
    )
    out.write("\n")
    rows = []
    for s in summary["shards"]:
        for i, r in enumerate(s["replicas"]):
            rows.append((s["shard"] if i == 0 else "", r["node"], r["role"], r.get("term"), r.get("commit_index"),
                         r.get("applied_index"), r["lag"], r.get("lease_remaining_ms"), r.get("last_contact_ms"),
                         _index_lag(r)))
    render_table(("SHARD", "NODE", "ROLE", "TERM", "COMMIT", "APPLIED", "LAG", "LEASE_MS", "CONTACT_MS", "INDEX_LAG"),
                 rows, out)
    out.write("\n")
    for problem in summary["problems"]:
        out.write(f"! {problem}\n")
    shards = summary["shards"]
    up = sum(1 for n in summary["nodes"] if n["up"])
    moving = sum(1 for s in shards if s["moving"])
    out.write(
        f"{sum(1 for s in shards if s['available'])}/{len(shards)} shards have a leader with a quorum; "
        f"{up}/{len(summary['nodes'])} nodes answered"
        + (f"; {moving} shard(s) moving replicas (~)" if moving else "")
        + "\n"
    )
    render_feed(summary, out)
    q = summary.get("quorums")
    if q:
        out.write(
            f"quorums: writes wait for {q['write']} of {q['replicas']} replicas (tolerate {q['writes_tolerate_failures']} "
            f"down); reads at the default level need {q['read']} (tolerate {q['reads_tolerate_failures']} down)\n"
        )


def _index_lag(replica: Mapping[str, Any]) -> str | None:
    """`entries/ms` the replica's derived indexes are behind it (None: no index there)."""
    entries = replica.get("index_lag")
    return None if entries is None else f"{entries}/{replica.get('index_lag_ms') or 0}ms"


def _status(args: argparse.Namespace) -> int:
    try:
        snap = collect(AdminClient(urls(args), token=args.token, ssl_context=args.ssl_context), urls(args))
    except ValueError as e:  # a bad --url
        print(f"raftmem: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ClientError as e:
        return report_error(e, args, hint=" (no node answered)")
    summary = summarize(snap)
    if args.json:
        dump(summary, sys.stdout)
    else:
        render(summary, sys.stdout)
    return EXIT_OK if summary["ok"] else EXIT_FAILED


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        parents=[global_options()],
        help="every shard's leader, term, indexes, lag, lease and contact, per node",
        description="Ask every node for its replicas and show them merged: `!` marks a shard without a "
        "leader or quorum, `~` one moving replicas. Exit 0 when every shard has a leader with a quorum, 1 "
        "otherwise, 3 when no node answered.",
    )
    p.set_defaults(func=_status)
