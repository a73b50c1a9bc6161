"""`raftmem lock acquire|renew|release|show` and `raftmem task
add|claim|complete|fail|extend|list|show`, through the blocking raftmem.client
(routed to the lock's or queue's leader, idempotent retries).

A shell script holds a lock by its fence: `acquire` prints it, `renew` and
`release` take it, and guarded writes pass it (`raftmem put ... --if-fence
NS/NAME:FENCE`). Exit codes as for every command: 0 ok, 1 refused (lock_held,
fenced, no task ready, not held), 2 usage, 3 unavailable (nothing happened),
4 indeterminate (it may have happened: `lock show` or `task show` tells)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from raftmem.client import Client, Lease, NotFound, default_holder

from .common import dump, global_options, render_table
from .memory import _content, _run

PAYLOAD_CELL_CHARS_MAX = 50


def _lease(args: argparse.Namespace) -> Lease:
    return Lease(args.namespace, args.name, "", args.fence, 0, getattr(args, "ttl_ms", 0) or 0, 0.0)


def _print_lock(lock: dict[str, Any], out: TextIO, args: argparse.Namespace) -> None:
    if args.json:
        dump(lock, out)
        return
    out.write(f"{lock['namespace']}/{lock['name']} fence {lock['fence']} holder {lock['holder']} "
              f"expires_at {lock['expires_at']}\n")


# -- locks ------------------------------------------------------------------------------
def _acquire(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    lease = client.acquire_lock(args.namespace, args.name, ttl_ms=args.ttl_ms, holder=args.holder or default_holder(),
                                wait_ms=args.wait_ms)
    lock = {"namespace": lease.namespace, "name": lease.name, "holder": lease.holder, "fence": lease.fence,
            "expires_at": lease.expires_at, "ttl_ms": lease.ttl_ms, "if_fence": lease.if_fence}
    _print_lock(lock, out, args)


def _renew(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    lease = client.renew_lock(_lease(args), args.ttl_ms)
    if args.json:
        dump({"fence": lease.fence, "expires_at": lease.expires_at, "ttl_ms": lease.ttl_ms}, out)
    else:
        out.write(f"{args.namespace}/{args.name} fence {lease.fence} renewed, expires_at {lease.expires_at}\n")


def _release(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    result = client.release_lock(_lease(args))
    if args.json:
        dump(result, out)
    else:
        out.write(f"released {args.namespace}/{args.name} (fence {args.fence})\n")


def _show_lock(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    lock = client.get_lock(args.namespace, args.name, args.consistency)
    if lock is None:
        if args.json:
            dump(None, out)
        raise NotFound(f"{args.namespace}/{args.name} is not held", code="not_held")
    _print_lock(lock, out, args)


# -- tasks ---------------------------------------------------------------------------------
def _task_line(task: dict[str, Any]) -> str:
    payload = json.dumps(task.get("payload"), ensure_ascii=False)
    if len(payload) > PAYLOAD_CELL_CHARS_MAX:
        payload = payload[: PAYLOAD_CELL_CHARS_MAX - 1] + "…"
    return payload


def _print_task(task: dict[str, Any], out: TextIO, args: argparse.Namespace) -> None:
    if args.json:
        dump(task, out)
        return
    fence = f" fence {task['fence']}" if task.get("state") == "claimed" else ""
    out.write(f"{task['namespace']}/{task['id']} {task['state']}{fence} attempts {task['attempts']}/"
              f"{task['max_attempts']} payload {_task_line(task)}\n")


def _add(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    task = client.enqueue_task(args.namespace, _content(args.payload, sys.stdin, "auto"), priority=args.priority,
                               task_id=args.id, delay_ms=args.delay_ms, max_attempts=args.max_attempts,
                               backoff_ms=args.backoff_ms)
    _print_task(task, out, args)


def _claim(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    task = client.claim_task(args.namespace, lease_ms=args.lease_ms, worker=args.worker or default_holder(),
                             wait_ms=args.wait_ms)
    if task is None:
        if args.json:
            dump(None, out)
        raise NotFound(f"no task of {args.namespace} was ready" + (f" within {args.wait_ms} ms" if args.wait_ms else ""),
                       code="no_task")
    _print_task(task, out, args)


def _complete(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    result = _content(args.result, sys.stdin, "auto")
    _print_task(client.complete_task(args.namespace, args.id, args.fence, result), out, args)


def _fail(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    _print_task(client.fail_task(args.namespace, args.id, args.fence, args.error, retry=not args.no_retry), out, args)


def _extend(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    _print_task(client.extend_task(args.namespace, args.id, args.fence, args.lease_ms), out, args)


def _show_task(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    _print_task(client.get_task(args.namespace, args.id, args.consistency), out, args)


def _list(client: Client, args: argparse.Namespace, out: TextIO) -> None:
    page = client.list_tasks(args.namespace, state=args.state, limit=args.limit, cursor=args.cursor)
    if args.json:
        dump(page, out)
        return
    rows = [(t["id"], t["state"], t["priority"], f"{t['attempts']}/{t['max_attempts']}", t.get("worker"),
             _task_line(t)) for t in page["items"]]
    render_table(("ID", "STATE", "PRIO", "ATTEMPTS", "WORKER", "PAYLOAD"), rows, out)
    out.write(f"({page['open']} open in the queue" + (f"; more: --cursor {page['cursor']}" if page.get("cursor")
                                                        else "") + ")\n")


def add_parsers(sub: Any) -> None:
    lock = sub.add_parser("lock", help="locks with fencing tokens: acquire, renew, release, show")
    lock_sub = lock.add_subparsers(dest="lock_command", required=True)

    def lock_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = lock_sub.add_parser(name, parents=[global_options()], help=help_text)
        p.add_argument("namespace")
        p.add_argument("name")
        return p

    p = lock_parser("acquire", "take a lock for --ttl-ms (prints its fence)")
    p.add_argument("--ttl-ms", type=int, required=True, help="the lease; renew well within it")
    p.add_argument("--holder", help="who holds it (default: host:pid:random)")
    p.add_argument("--wait-ms", type=int, default=0, help="wait in turn for it this long (default: do not wait)")
    p.set_defaults(func=_run(_acquire))
    p = lock_parser("renew", "extend the lease of the holder of --fence")
    p.add_argument("--fence", type=int, required=True)
    p.add_argument("--ttl-ms", type=int, required=True)
    p.set_defaults(func=_run(_renew))
    p = lock_parser("release", "release the lock held with --fence")
    p.add_argument("--fence", type=int, required=True)
    p.set_defaults(func=_run(_release))
    p = lock_parser("show", "who holds the lock (exit 1: nobody)")
    p.add_argument("--consistency", choices=("linearizable", "strong", "eventual"))
    p.set_defaults(func=_run(_show_lock))

    task = sub.add_parser("task", help="task queues: add, claim, complete, fail, extend, list, show")
    task_sub = task.add_subparsers(dest="task_command", required=True)

    def task_parser(name: str, help_text: str, with_id: bool = False) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = task_sub.add_parser(name, parents=[global_options()], help=help_text)
        p.add_argument("namespace", help="the queue")
        if with_id:
            p.add_argument("id")
        return p

    p = task_parser("add", "enqueue a task")
    p.add_argument("--payload", help="JSON if it parses as JSON, else text; - reads stdin")
    p.add_argument("--priority", type=int, default=0, help="higher first (default 0)")
    p.add_argument("--id", help="the task's id (default: time-ordered)")
    p.add_argument("--delay-ms", type=int, help="not claimable before this many ms from now")
    p.add_argument("--max-attempts", type=int, help="dead-lettered after this many failed attempts")
    p.add_argument("--backoff-ms", type=int, help="wait before a retry, doubled each attempt")
    p.set_defaults(func=_run(_add))
    p = task_parser("claim", "claim the highest-priority, oldest ready task (exit 1: none)")
    p.add_argument("--lease-ms", type=int, required=True, help="the claim; complete or extend within it")
    p.add_argument("--worker", help="who claims it (default: host:pid:random)")
    p.add_argument("--wait-ms", type=int, default=0, help="wait in turn for a task this long")
    p.set_defaults(func=_run(_claim))
    p = task_parser("complete", "complete a claimed task", with_id=True)
    p.add_argument("--fence", type=int, required=True, help="the claim's fence")
    p.add_argument("--result", help="JSON if it parses as JSON, else text; - reads stdin")
    p.set_defaults(func=_run(_complete))
    p = task_parser("fail", "fail a claimed task (retried after a back-off, or dead-lettered)", with_id=True)
    p.add_argument("--fence", type=int, required=True)
    p.add_argument("--error", help="why")
    p.add_argument("--no-retry", action="store_true", help="dead-letter it now")
    p.set_defaults(func=_run(_fail))
    p = task_parser("extend", "extend a claim", with_id=True)
    p.add_argument("--fence", type=int, required=True)
    p.add_argument("--lease-ms", type=int, required=True)
    p.set_defaults(func=_run(_extend))
    p = task_parser("list", "list a queue's tasks by id")
    p.add_argument("--state", choices=("ready", "claimed", "done", "dead"))
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--cursor", help="the last id of the previous page")
    p.set_defaults(func=_run(_list))
    p = task_parser("show", "one task", with_id=True)
    p.add_argument("--consistency", choices=("linearizable", "strong", "eventual"))
    p.set_defaults(func=_run(_show_task))
