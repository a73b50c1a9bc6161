"""History checkers of the jepsen_like harness.

- ``history``: the JSONL event format, ``pair_operations``.
- ``linear``: linearizability (register and kv models), with a deadline.
- ``setcheck``: lost / phantom elements of a set.
- ``session``: read-your-writes and monotonic reads per client session.
- ``stale``: bounded-staleness reads.
- ``causal``: reads with a causal context handed between agents see what it covers.
- ``watch``: watch streams against the acknowledged writes (etcd's watch checks).
- ``coordination``: the registers locks guard, fences that never go back, and
  task queues (every task completed once or dead-lettered).
- ``search``: fresh searches see every acknowledged write and no deleted memory.
- ``testdata_formats``: readers for the reference Jepsen/EDN histories.

``check_history`` runs the checkers a workload needs and folds their verdicts:
False if any says False, else "unknown" if any says "unknown", else True.
"unknown" (a deadline ran out, nothing could be checked) is never a pass.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jepsen_like.checker.causal import check_causal
from jepsen_like.checker.coordination import check_fences, check_lock_register, check_tasks
from jepsen_like.checker.history import Event, HistoryError, load_jsonl
from jepsen_like.checker.linear import DEADLINE_S_DEFAULT, check_linearizable
from jepsen_like.checker.search import check_search
from jepsen_like.checker.session import check_session
from jepsen_like.checker.setcheck import check_set
from jepsen_like.checker.stale import check_stale
from jepsen_like.checker.watch import check_watch

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_INVALID",
    "EXIT_UNKNOWN",
    "EXIT_VALID",
    "WORKLOADS",
    "add_check_arguments",
    "check_history",
    "main_check",
    "run_check",
]

# Exit codes of `python -m jepsen_like check` (argparse itself exits 2 on bad usage).
EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_UNKNOWN = 3
EXIT_BAD_INPUT = 4

Checker = Callable[[Sequence[Event], float | None], dict[str, Any]]

_CHECKERS: dict[str, Checker] = {
    "linear": lambda events, deadline_s: check_linearizable(events, "register", deadline_s),
    "linear-kv": lambda events, deadline_s: check_linearizable(events, "kv", deadline_s),
    "set": lambda events, _deadline_s: check_set(events),
    "session": lambda events, _deadline_s: check_session(events),
    "stale": lambda events, _deadline_s: check_stale(events),
    "causal": lambda events, _deadline_s: check_causal(events),
    "linear-lock": check_lock_register,
    "fences": lambda events, _deadline_s: check_fences(events),
    "tasks": lambda events, _deadline_s: check_tasks(events),
    "search": lambda events, _deadline_s: check_search(events),
    "watch": lambda events, _deadline_s: check_watch(events),
}

# Which checkers apply to each workload. The session workload's reads and writes
# are also register operations, so they must be linearizable too.
WORKLOADS: dict[str, tuple[str, ...]] = {
    "register": ("linear",),
    "kv": ("linear-kv",),
    "set": ("set",),
    "session": ("session", "linear"),
    "stale": ("stale",),
    "causal": ("causal",),
    "lock": ("linear-lock", "fences"),
    "task": ("tasks",),
    "search": ("search",),
    "watch": ("watch",),
}


def combine_verdicts(verdicts: Sequence[Any]) -> bool | str:
    """False beats "unknown" beats True; anything but a literal True is not a pass."""
    if any(v is False for v in verdicts):
        return False
    if all(v is True for v in verdicts):
        return True
    return "unknown"


def check_history(
    path_or_events: str | Path | Sequence[Event],
    workload: str = "register",
    deadline_s: float | None = DEADLINE_S_DEFAULT,
) -> dict[str, Any]:
    """Run the checkers of ``workload`` on a history file or event list.

    Returns ``{"valid", "workload", "history", "events", "checkers": {name:
    result}}``. ``deadline_s`` bounds the linearizability search; None means
    none. Raises HistoryError for a malformed history, ValueError for an unknown
    workload.
    """
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; known: {sorted(WORKLOADS)}")
    source: str | None = None
    if isinstance(path_or_events, (str, Path)):
        source = str(path_or_events)
        events: Sequence[Event] = load_jsonl(path_or_events)
    else:
        events = path_or_events
    results = {name: _CHECKERS[name](events, deadline_s) for name in WORKLOADS[workload]}
    return {
        "valid": combine_verdicts([r["valid"] for r in results.values()]),
        "workload": workload,
        "history": source,
        "events": len(events),
        "checkers": results,
    }


def _summary(name: str, result: dict[str, Any]) -> str:
    """A few words per checker for the one-line verdict."""
    valid = result["valid"]
    if name.startswith("linear"):
        extra = f"ops={result['ops_checked']} {result.get('elapsed_s', 0)}s"
        if valid is False:
            extra += f" key={result['key']!r}"
        elif valid is not True:
            extra += f" {result['reason']} key={result['key']!r}"
    elif name == "set":
        extra = f"lost={result['lost_count']} phantom={result['phantom_count']}"
    elif name == "session":
        counts = result["anomaly_counts"]
        extra = " ".join(f"{kind}={n}" for kind, n in counts.items())
    else:
        extra = f"violations={result['violation_count']} reads={result['reads_checked']}"
    return f"{name}={valid} ({extra})"


def verdict_line(result: dict[str, Any]) -> str:
    valid = result["valid"]
    word = "VALID" if valid is True else ("INVALID" if valid is False else "UNKNOWN")
    parts = [_summary(name, r) for name, r in result["checkers"].items()]
    return f"{word} {result['workload']} {result['history'] or ''}: " + "; ".join(parts)


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the ``check`` subcommand."""
    parser.add_argument("history", type=Path, help="history file (JSONL)")
    parser.add_argument(
        "--workload", default="register", choices=sorted(WORKLOADS), help="default: register"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=DEADLINE_S_DEFAULT,
        metavar="S",
        help=f"seconds for the linearizability search (default {DEADLINE_S_DEFAULT:g}); "
        "running out gives UNKNOWN, which is not a pass",
    )
    parser.add_argument(
        "--results", type=Path, metavar="FILE", help="also write the full results as JSON"
    )


def run_check(args: argparse.Namespace) -> int:
    """Check one history; print a one-line verdict; return the exit code:
    EXIT_VALID only if every checker said True."""
    try:
        result = check_history(args.history, args.workload, args.deadline)
    except (OSError, HistoryError) as exc:
        print(f"BAD-INPUT {args.history}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.results is not None:
        args.results.write_text(json.dumps(result, indent=2, default=repr) + "\n")
    print(verdict_line(result))
    if result["valid"] is True:
        return EXIT_VALID
    return EXIT_INVALID if result["valid"] is False else EXIT_UNKNOWN


def main_check(argv: Sequence[str] | None = None) -> int:
    """``python -m jepsen_like check`` without the subcommand word; returns the
    exit code (the caller passes it to ``sys.exit``)."""
    parser = argparse.ArgumentParser(
        prog="python -m jepsen_like check", description="Check a recorded history."
    )
    add_check_arguments(parser)
    return run_check(parser.parse_args(argv))
