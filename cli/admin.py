"""`raftmem member add/remove/list`, `rebalance`, `transfer-leader` and `snapshot
save/restore`: cluster administration over the `/v1/admin/...` endpoints.

A membership change (add, remove, rebalance) is one compare-and-set write of the
table; the replicas then move in the background, each shard leader adding or
removing one voter at a time. `--wait` polls every node's GET /v1/cluster until
each shard's leader has exactly the assigned voters, drawing a progress bar on
stderr (plain lines when stderr is not a terminal).

Exit codes as in common.py; a wait that runs out exits 4 (the change was
accepted and goes on in the background; `raftmem status` shows it, `~`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tarfile
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

from raftmem.client import NO_RETRY, ClientError

from . import status as status_mod
from .admin_client import AdminClient
from .common import (
    EXIT_FAILED,
    EXIT_INDETERMINATE,
    EXIT_OK,
    EXIT_USAGE,
    dump,
    global_options,
    render_table,
    report_error,
    urls,
)
from .progress import Progress

POLL_S = 0.25
MOVE_TIMEOUT_S_DEFAULT = 300.0
TRANSFER_TIMEOUT_S_DEFAULT = 30.0
BACKUP_TIMEOUT_S_DEFAULT = 600.0  # per socket operation, not in total
MANIFEST_BYTES_MAX = 1 << 20
BACKUP_FORMAT = "raftmem-backup-v1"


class UsageError(Exception):
    pass


class Failed(Exception):
    """A command failed for a reason of its own (not a request error): exit 1."""


def node_urls(table: Mapping[str, Any]) -> dict[str, str]:
    return {n["id"]: f"http://{n['host']}:{n['http_port']}" for n in table.get("nodes") or ()}


# -- convergence (pure) -------------------------------------------------------------------
def pending_shards(views: Mapping[str, Mapping[str, Any]], assignment: Mapping[str, Sequence[str]]) -> dict[int, str]:
    """Shards whose leader does not (yet) have exactly the assigned voters -> why."""
    leading = status_mod.leaders(views)
    pending = {}
    for key, want in assignment.items():
        shard = int(key)
        if shard not in leading:
            pending[shard] = "no leader answered"
            continue
        leader, entry = leading[shard]
        members = sorted(entry.get("members") or [])
        if members != sorted(want):
            pending[shard] = f"voters {','.join(members)}, want {','.join(sorted(want))}"
    return pending


def wait_converged(
    admin: AdminClient,
    probe_urls: Sequence[str],
    assignment: Mapping[str, Sequence[str]],
    watched: Sequence[int],
    timeout_s: float,
    progress: Progress,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[int, str]:
    """Poll until every shard converges or `timeout_s` passes; returns what is
    still pending (empty: converged). Progress counts the `watched` shards."""
    deadline = time.monotonic() + timeout_s
    while True:
        answers = admin.probe_all(probe_urls, "/v1/cluster")
        views = {a["node"]: a for a in answers.values() if isinstance(a, dict) and isinstance(a.get("node"), str)}
        pending = pending_shards(views, assignment) if views else {int(s): "no node answered" for s in assignment}
        done = sum(1 for s in watched if s not in pending)
        first = min(pending) if pending else None
        progress.update(done, f"shard {first}: {pending[first]}" if first is not None else "")
        if not pending or time.monotonic() >= deadline:
            return pending
        sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))


def _print_plan(body: Mapping[str, Any], out: TextIO, verb: str) -> None:
    moves = body.get("moves") or []
    assignment = body["table"]["assignment"]
    total = sum(len(r) for r in assignment.values())
    moved = sum(len(m["add"]) for m in moves)
    fraction = float(body.get("moved_fraction") or 0.0)
    out.write(f"{verb}: {moved} of {total} replicas move, moved fraction {fraction:.3f} ({fraction:.1%}); "
              f"table version {body['table']['version']}\n")
    if moves:
        render_table(
            ("SHARD", "ADD", "REMOVE", "REPLICAS AFTER"),
            [(m["shard"], ",".join(m["add"]) or None, ",".join(m["remove"]) or None,
              ",".join(assignment[str(m["shard"])])) for m in moves],
            out,
        )


def _wait_moves(
    admin: AdminClient, args: argparse.Namespace, body: dict[str, Any], label: str, extra: Mapping[str, str]
) -> int:
    """Wait for a table change's moves; adds `converged`, `waited_s`, `pending` to body."""
    table = body["table"]
    watched = [m["shard"] for m in body.get("moves") or []]
    progress = Progress(label, len(watched), sys.stderr)
    start = time.monotonic()
    probe = list(dict.fromkeys([*node_urls(table).values(), *extra.values(), *urls(args)]))
    pending = wait_converged(admin, probe, table["assignment"], watched, args.timeout, progress)
    body["converged"] = not pending
    body["waited_s"] = round(time.monotonic() - start, 3)
    if pending:
        body["pending"] = {str(s): why for s, why in sorted(pending.items())}
        progress.finish(f"not converged after {args.timeout:.0f}s; {len(pending)} shard(s) pending, the moves go on "
                        "in the background (see `raftmem status`)")
        return EXIT_INDETERMINATE
    progress.finish("every shard has its assigned voters")
    return EXIT_OK


# -- member --------------------------------------------------------------------------------
def _member_list(admin: AdminClient, args: argparse.Namespace, out: TextIO) -> int:
    body = admin.get("/v1/admin/members")
    if args.json:
        dump(body, out)
        return EXIT_OK
    table = body["table"]
    held: dict[str, list[int]] = {}
    for shard, reps in table["assignment"].items():
        for node in reps:
            held.setdefault(node, []).append(int(shard))
    out.write(f"table version {table['version']}, replication factor {table['factor']}, "
              f"{len(table['assignment'])} shards\n")
    render_table(
        ("NODE", "HOST", "HTTP", "RAFT_BASE", "ZONE", "REPLICAS", "SHARDS"),
        [(n["id"], n["host"], n["http_port"], n["raft_port_base"], n.get("zone") or None,
          len(held.get(n["id"], [])), ",".join(str(s) for s in sorted(held.get(n["id"], []))) or None)
         for n in table["nodes"]],
        out,
    )
    return EXIT_OK


def _member_add(admin: AdminClient, args: argparse.Namespace, out: TextIO) -> int:
    spec: dict[str, Any] = {"id": args.node, "host": args.host, "http_port": args.http_port,
                            "raft_port_base": args.raft_port_base}
    if args.zone is not None:
        spec["zone"] = args.zone
    if not args.no_check:
        url = f"http://{args.host}:{args.http_port}"
        try:
            health = admin.request("GET", "/healthz", is_write=False, url=url, retry=NO_RETRY)
        except ClientError as e:
            raise type(e)(
                f"{args.node} does not answer at {url}/healthz ({e}); start it first: raftmem serve --config "
                f"SEED.yaml --node {args.node} --host {args.host} --http-port {args.http_port} --raft-port-base "
                f"{args.raft_port_base}  (or pass --no-check)", status=e.status, code="node_not_running",
            ) from e
        if isinstance(health, dict) and health.get("node") not in (None, args.node):
            raise Failed(f"{url} is node {health.get('node')!r}, not {args.node!r}")
    body = admin.post("/v1/admin/members", spec)
    if args.json:
        dump(body, out)
    else:
        out.write(f"added {args.node} ({args.host}:{args.http_port}, Raft ports {args.raft_port_base}+shard); "
                  f"table version {body['table']['version']}.\n"
                  "It holds no replica yet: `raftmem rebalance` moves replicas onto it.\n")
    return EXIT_OK


def _member_remove(admin: AdminClient, args: argparse.Namespace, out: TextIO) -> int:
    before = admin.get("/v1/admin/members")["table"]
    extra = {k: v for k, v in node_urls(before).items() if k == args.node}
    body = admin.delete(f"/v1/admin/members/{quote(args.node, safe='')}")
    if not args.json:
        _print_plan(body, out, f"removed {args.node}")
        out.flush()
    code = EXIT_OK
    if args.wait:
        code = _wait_moves(admin, args, body, f"moving {args.node}'s replicas away", extra)
    if args.json:
        dump(body, out)
    elif code == EXIT_OK:
        out.write(f"{args.node} is out of the table" + (" and holds no voter any more; its process can be stopped.\n"
                                                        if args.wait else "; its replicas move in the background "
                                                        "(--wait to follow).\n"))
    return code


# -- rebalance -----------------------------------------------------------------------------
def _rebalance(admin: AdminClient, args: argparse.Namespace, out: TextIO) -> int:
    body = admin.post("/v1/admin/rebalance", params={"dry_run": "true" if args.dry_run else "false"})
    if not args.json:
        _print_plan(body, out, "plan (dry run: nothing changed)" if args.dry_run else "rebalance")
        out.flush()
    code = EXIT_OK
    if not args.dry_run and args.wait:
        code = _wait_moves(admin, args, body, "rebalance", {})
    if args.json:
        dump(body, out)
    return code


# -- transfer-leader ---------------------------------------------------------------------------
def _transfer_leader(admin: AdminClient, args: argparse.Namespace, out: TextIO) -> int:
    params = {"to": args.to} if args.to else None
    body = admin.post(f"/v1/admin/shards/{args.shard}/transfer-leader", params=params)
    if not body.get("transferred"):
        body["waited_s"] = 0.0
        if args.json:
            dump(body, out)
        else:
            out.write(f"shard {args.shard}: {body.get('leader')} already leads it\n")
        return EXIT_OK
    source = body.get("from")
    start = time.monotonic()
    deadline = start + args.timeout
    seeds = urls(args)
    leader: str | None = None
    term: Any = None
    while True:
        snap = status_mod.collect(admin, seeds)
        entries = status_mod.shard_entries(snap.views, args.shard)
        leader = status_mod.leader_of(entries)
        term = entries[leader].get("term") if leader is not None else None
        landed = leader is not None and (leader == args.to if args.to else leader != source)
        if landed or time.monotonic() >= deadline:
            break
        time.sleep(POLL_S)
    body.update({"leader": leader, "term": term, "waited_s": round(time.monotonic() - start, 3)})
    if args.json:
        dump(body, out)
    if not landed:
        print(f"raftmem: shard {args.shard}: the transfer from {source} was sent, but after {args.timeout:.0f}s "
              f"the leader is {leader or 'unknown'}", file=sys.stderr)
        return EXIT_INDETERMINATE
    if not args.json:
        out.write(f"shard {args.shard}: leader {source} -> {leader} (term {term})\n")
    return EXIT_OK


# -- snapshot -----------------------------------------------------------------------------------
def read_backup(path: Path) -> dict[str, Any]:
    """The manifest of a backup file, after checking every shard's size and SHA-256."""
    try:
        with tarfile.open(path, mode="r:") as tar:
            member = tar.extractfile("manifest.json")
            if member is None:
                raise Failed("not a raftmem backup: no manifest.json")
            manifest = json.loads(member.read(MANIFEST_BYTES_MAX))
            if not isinstance(manifest, dict) or manifest.get("format") != BACKUP_FORMAT:
                raise Failed(f"unknown backup format {manifest.get('format') if isinstance(manifest, dict) else None!r}")
            for entry in manifest["shards"]:
                data = tar.extractfile(entry["file"])
                if data is None:
                    raise Failed(f"backup is missing {entry['file']}")
                digest, size = hashlib.sha256(), 0
                while chunk := data.read(1 << 20):
                    digest.update(chunk)
                    size += len(chunk)
                if size != entry["bytes"] or digest.hexdigest() != entry["sha256"]:
                    raise Failed(f"corrupt backup: checksum mismatch for shard {entry['shard']}")
    except (tarfile.TarError, ValueError, KeyError, TypeError, EOFError) as e:
        raise Failed(f"corrupt or truncated backup file: {e}") from None
    return manifest


def _when(ms: Any) -> str:
    if not isinstance(ms, int | float):
        return "?"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _snapshot_save(admin: AdminClient, args: argparse.Namespace, out: TextIO) -> int:
    dest = Path(args.file)
    if dest.exists() and not args.force:
        raise Failed(f"{dest} exists; pass --force to overwrite it")
    part = dest.with_name(dest.name + ".part")
    try:
        with open(part, "wb") as f:
            admin.request("GET", "/v1/admin/backup", is_write=False, download=f, timeout_s=args.timeout)
            f.flush()
            os.fsync(f.fileno())
        try:
            manifest = read_backup(part)
        except Failed as e:
            raise Failed(f"the backup received from the cluster does not check out: {e}") from None
        os.replace(part, dest)
    finally:
        part.unlink(missing_ok=True)
    size = dest.stat().st_size
    if args.json:
        dump({"file": str(dest), "bytes": size, "manifest": manifest}, out)
    else:
        out.write(f"saved {dest}: {size} bytes, {len(manifest['shards'])} shards of cluster "
                  f"{manifest.get('cluster')!r}, taken {_when(manifest.get('created_at'))}\n")
        render_table(("SHARD", "APPLIED_INDEX", "BYTES", "SHA256"),
                     [(e["shard"], e["applied_index"], e["bytes"], e["sha256"][:16]) for e in manifest["shards"]], out)
    return EXIT_OK


def _snapshot_restore(admin: AdminClient, args: argparse.Namespace, out: TextIO) -> int:
    src = Path(args.file)
    if not src.is_file():
        raise UsageError(f"{src}: no such file")
    body = admin.request("POST", "/v1/admin/restore", is_write=True, upload=src, timeout_s=args.timeout)
    if args.json:
        dump(body, out)
    else:
        per_shard = body.get("per_shard") or {}
        out.write(f"restored {body.get('restored')} memories from the backup of cluster {body.get('cluster')!r} "
                  f"taken {_when(body.get('backup_created_at'))}\n")
        render_table(("SHARD", "RESTORED"), sorted(((int(s), n) for s, n in per_shard.items())), out)
    return EXIT_OK


# -- wiring ----------------------------------------------------------------------------------------
def _run(command: Callable[[AdminClient, argparse.Namespace, TextIO], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            admin = AdminClient(urls(args), token=args.token, ssl_context=args.ssl_context)
        except ValueError as e:  # a bad --url
            print(f"raftmem: {e}", file=sys.stderr)
            return EXIT_USAGE
        try:
            return command(admin, args, sys.stdout)
        except UsageError as e:
            print(f"raftmem: {e}", file=sys.stderr)
            return EXIT_USAGE
        except Failed as e:
            if args.json:
                dump({"error": {"code": "failed", "message": str(e)}}, sys.stdout)
            print(f"raftmem: {e}", file=sys.stderr)
            return EXIT_FAILED
        except ClientError as e:
            hint = " (restoring the same file again is safe)" if getattr(args, "admin_command", "") == "restore" \
                and e.code == "no_answer" else None
            return report_error(e, args, hint)

    return run


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 24 * 3600:
        raise argparse.ArgumentTypeError("must be in (0, 86400] seconds")
    return value


def add_parsers(sub: Any) -> None:
    common = global_options()

    p = sub.add_parser("member", help="add, remove or list cluster members",
                       description="Change which nodes hold which shard replicas.")
    msub = p.add_subparsers(dest="member_command", required=True)
    m = msub.add_parser("list", parents=[common], help="the membership table: nodes and the shards they hold")
    m.set_defaults(func=_run(_member_list))
    m = msub.add_parser(
        "add", parents=[common], help="add a running node to the table (then `raftmem rebalance`)",
        description="Add a node to the membership table. Its process must already run: raftmem serve --config "
        "SEED.yaml --node NODE --host H --http-port P --raft-port-base R. It holds no replica until a rebalance.",
    )
    m.add_argument("node", help="the new node's id")
    m.add_argument("--host", required=True)
    m.add_argument("--http-port", type=int, required=True)
    m.add_argument("--raft-port-base", type=int, required=True, help="first Raft port (one per shard)")
    m.add_argument("--zone", help="its zone (placement spreads replicas over zones)")
    m.add_argument("--no-check", action="store_true", help="do not check that the node answers /healthz first")
    m.set_defaults(func=_run(_member_add))
    m = msub.add_parser(
        "remove", parents=[common], help="remove a node; its replicas move to the others",
        description="Remove a node from the table; the shards it held get a replacement, one voter change at a "
        "time. The node's process keeps running until you stop it (after --wait).",
    )
    m.add_argument("node")
    m.add_argument("--wait", action="store_true", help="wait until its replicas have moved (progress on stderr)")
    m.add_argument("--timeout", type=_seconds, default=MOVE_TIMEOUT_S_DEFAULT, help="seconds to wait (default 300)")
    m.set_defaults(func=_run(_member_remove))

    p = sub.add_parser(
        "rebalance", parents=[common], help="move replicas to match the consistent-hash placement",
        description="Compute the placement over the current members and move only the replicas that must move "
        "(a 4th node joining 3 takes about a quarter). Prints the plan, then waits for the moves.",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                   help="wait for the moves with a progress bar on stderr (default: wait)")
    p.add_argument("--timeout", type=_seconds, default=MOVE_TIMEOUT_S_DEFAULT, help="seconds to wait (default 300)")
    p.set_defaults(func=_run(_rebalance))

    p = sub.add_parser(
        "transfer-leader", parents=[common], help="hand a shard's leadership to another replica",
        description="Ask the shard's leader to hand over (to NODE, or the most caught-up follower), retrying "
        "while it refuses (503), then wait until the new leader shows.",
    )
    p.add_argument("shard", type=int)
    p.add_argument("--to", metavar="NODE", help="the node to lead (default: the most caught-up follower)")
    p.add_argument("--timeout", type=_seconds, default=TRANSFER_TIMEOUT_S_DEFAULT,
                   help="seconds to wait for the new leader (default 30)")
    p.set_defaults(func=_run(_transfer_leader))

    p = sub.add_parser("snapshot", help="online backup of every shard, and restore",
                       description="A consistent online backup (writes keep flowing) into one file with a manifest "
                       "and per-shard SHA-256, and its restore.")
    ssub = p.add_subparsers(dest="admin_command", required=True)
    s = ssub.add_parser("save", parents=[common], help="write a backup of every shard to FILE")
    s.add_argument("file")
    s.add_argument("--force", action="store_true", help="overwrite FILE if it exists")
    s.add_argument("--timeout", type=_seconds, default=BACKUP_TIMEOUT_S_DEFAULT,
                   help="seconds without progress before giving up (default 600)")
    s.set_defaults(func=_run(_snapshot_save))
    s = ssub.add_parser("restore", parents=[common], help="load a backup FILE (a corrupt file is refused)",
                        description="Load every memory of a backup through each shard's Raft log; memories with the "
                        "same key are replaced, others kept. A corrupt file is refused and changes nothing.")
    s.add_argument("file")
    s.add_argument("--timeout", type=_seconds, default=BACKUP_TIMEOUT_S_DEFAULT,
                   help="seconds to wait for the answer (default 600)")
    s.set_defaults(func=_run(_snapshot_restore))
