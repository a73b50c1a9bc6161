"""``python -m jepsen_like SUBCOMMAND ...``.

A subcommand is one entry in ``SUBCOMMANDS``: its help, a function adding its
arguments to its parser, and a function running it that returns the exit code.

- ``run --scenario NAME --seed N --time-limit S --out DIR``: one scenario on a
  real cluster; exit 0 only when every checker says valid.
- ``matrix [--quick] --out DIR``: the scenario matrix (``make jepsen`` /
  ``make jepsen-quick``); exit 0 only when every scenario came out as expected
  (negative controls must be INVALID).
- ``check HISTORY.jsonl``: check a recorded history (a harness history with
  several workloads, or one workload's with ``--workload``).
- ``cleanup``: remove namespaces and links left by a harness that was killed.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from jepsen_like.checker import (
    EXIT_BAD_INPUT,
    EXIT_INVALID,
    EXIT_UNKNOWN,
    EXIT_VALID,
    add_check_arguments,
    run_check,
)
from jepsen_like.checker.history import HistoryError, load_jsonl

# `run` exits with this when the harness itself could not run (not root, no `ip`...).
EXIT_HARNESS = 5
EXIT_INTERRUPTED = 130
REQUIRED_BINARIES = ("ip", "nft", "nsenter", "mount", "umount")


class Subcommand(NamedTuple):
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


def _exit_code(valid: object) -> int:
    if valid is True:
        return EXIT_VALID
    return EXIT_INVALID if valid is False else EXIT_UNKNOWN


def preflight() -> str | None:
    """Why the harness cannot run here, or None."""
    if os.geteuid() != 0:
        return "the harness needs root (network namespaces, nftables, mounts)"
    missing = [b for b in REQUIRED_BINARIES if shutil.which(b) is None]
    if missing:
        return f"missing binaries: {', '.join(missing)} (apt-get install -y iproute2 nftables util-linux mount)"
    return None


def scenario_problem(scenario: object) -> str | None:
    """What a scenario needs beyond ``preflight``: FUSE for the power-loss disk,
    a C compiler for the clock shim."""
    import ctypes.util
    import importlib.util

    spec = scenario.cluster_spec()  # type: ignore[attr-defined]
    if spec.disk == "power":
        if not os.path.exists("/dev/fuse"):
            return "no /dev/fuse for the power-loss disk"
        if ctypes.util.find_library("fuse3") is None:
            return "libfuse3 missing for the power-loss disk (apt-get install -y fuse3)"
        if importlib.util.find_spec("mfusepy") is None:
            return "python package mfusepy missing for the power-loss disk (pip install mfusepy)"
    if spec.clock_shim and shutil.which("cc") is None and shutil.which("gcc") is None:
        return "no C compiler for the clock shim (apt-get install -y gcc)"
    return None


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# -- check ------------------------------------------------------------------------
def add_check_any_arguments(parser: argparse.ArgumentParser) -> None:
    add_check_arguments(parser)
    # No default workload: a harness history names its workloads itself.
    parser.set_defaults(workload=None)


def run_check_any(args: argparse.Namespace) -> int:
    from jepsen_like import report

    if args.workload is not None:
        return run_check(args)
    try:
        events = load_jsonl(args.history)
    except (OSError, HistoryError) as exc:
        print(f"BAD-INPUT {args.history}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not report.workloads_in(events):
        args.workload = "register"
        return run_check(args)
    try:
        result = report.check_run(events, deadline_s=args.deadline)
    except (HistoryError, ValueError) as exc:
        print(f"BAD-INPUT {args.history}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.results is not None:
        args.results.write_text(json.dumps(result, indent=1, default=repr) + "\n")
    print(f"{report.verdict_word(result['valid'])} {args.history}: "
          + "; ".join(report.summary(w, r) for w, r in result["workloads"].items()))
    return _exit_code(result["valid"])


# -- run ----------------------------------------------------------------------------
def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    from jepsen_like.scenarios import SCENARIOS

    parser.add_argument("--scenario", required=True, choices=sorted(SCENARIOS), metavar="NAME",
                        help="one of: " + ", ".join(SCENARIOS))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                        help="seconds of load (default: the scenario's full length, 60)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--deadline", type=float, default=60.0, metavar="S",
                        help="seconds for the linearizability search (out of time is UNKNOWN)")
    parser.add_argument("--keep-data", action="store_true", help="keep the nodes' data directories")
    parser.add_argument("-v", "--verbose", action="store_true")


def _ready_to_run(verbose: bool) -> bool:
    """Logging, the preflight check (said on stderr when it fails) and the signal
    handlers that tear a run down: what `run` and `matrix` need before starting."""
    from jepsen_like.resources import install_signal_handlers

    _logging(verbose)
    problem = preflight()
    if problem:
        print(f"jepsen_like: cannot run: {problem}", file=sys.stderr)
        return False
    install_signal_handlers()
    return True


def run_run(args: argparse.Namespace) -> int:
    from jepsen_like import scenarios
    from jepsen_like.runner import run_scenario

    if not _ready_to_run(args.verbose):
        return EXIT_HARNESS
    scenario = scenarios.get(args.scenario)
    problem = scenario_problem(scenario)
    if problem:
        print(f"jepsen_like: cannot run {scenario.name}: {problem}", file=sys.stderr)
        return EXIT_HARNESS
    limit = args.time_limit if args.time_limit is not None else scenario.time_limit_s
    try:
        outcome = run_scenario(scenario, args.seed, limit, args.out, deadline_s=args.deadline,
                               keep_data=args.keep_data)
    except KeyboardInterrupt:
        print(f"INTERRUPTED {scenario.name}: torn down; partial history in {args.out}", flush=True)
        return EXIT_INTERRUPTED
    print(outcome.line, flush=True)
    return _exit_code(outcome.valid)


# -- matrix -------------------------------------------------------------------------
def add_matrix_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DIR")
    parser.add_argument("--quick", action="store_true", help="the short CI subset")
    parser.add_argument("--scenarios", default=None, metavar="A,B,...", help="run only these")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=None, metavar="S",
                        help="seconds of load per scenario (default: per scenario; 60 full)")
    parser.add_argument("--deadline", type=float, default=60.0, metavar="S")
    parser.add_argument("-v", "--verbose", action="store_true")


def run_matrix_cmd(args: argparse.Namespace) -> int:
    from jepsen_like import scenarios
    from jepsen_like.matrix import run_matrix

    if not _ready_to_run(args.verbose):
        return EXIT_HARNESS
    if args.scenarios:
        names = [n.strip() for n in args.scenarios.split(",") if n.strip()]
        for name in names:
            scenarios.get(name)
    else:
        names = list(scenarios.QUICK_MATRIX if args.quick else scenarios.FULL_MATRIX)
    problems = {n: scenario_problem(scenarios.get(n)) for n in names}
    for name, problem in problems.items():
        if problem:
            print(f"jepsen_like: cannot run {name}: {problem}", file=sys.stderr)
    if any(problems.values()):
        return EXIT_HARNESS
    try:
        passed, outcomes = run_matrix(names, args.out, args.seed, args.quick, args.time_limit, args.deadline)
    except KeyboardInterrupt:
        print(f"matrix INTERRUPTED: torn down; partial results in {args.out}", flush=True)
        return EXIT_INTERRUPTED
    bad = [o.scenario for o in outcomes if not o.as_expected]
    print(f"matrix {'PASSED' if passed else 'FAILED'}: {len(outcomes) - len(bad)}/{len(outcomes)} as expected"
          + (f"; not as expected: {', '.join(bad)}" if bad else "") + f" -> {args.out / 'matrix.md'}")
    return 0 if passed else 1


# -- cleanup ------------------------------------------------------------------------
def add_cleanup_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                        help="a run (or matrix) directory: remove exactly what its resources.json lists "
                             "(processes, mounts, namespaces, links)")
    parser.add_argument("--prefix", default="rmj",
                        help="without --out: namespaces and links starting with this whose harness "
                             "process is gone (default rmj; runs use rmj<pid><letter>)")
    parser.add_argument("--dry-run", action="store_true")


def _cleanup_state(state_path: Path, dry_run: bool) -> list[str]:
    """Undo one run from its resources.json; returns what failed."""
    import signal as signal_mod

    from jepsen_like import netns
    from jepsen_like.disks import unmount

    state = json.loads(state_path.read_text())
    if os.path.exists(f"/proc/{state['harness_pid']}"):
        with open(f"/proc/{state['harness_pid']}/cmdline", "rb") as fh:
            harness_cmdline = fh.read()
        if b"jepsen_like" in harness_cmdline or b"pytest" in harness_cmdline:
            return [f"{state_path}: its harness (pid {state['harness_pid']}) is still running"]
    markers = (state["config"].encode(), b"jepsen_like.powerfs")
    failed: list[str] = []
    for pid in state["pids"]:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue  # gone
        if not any(m in cmdline for m in markers):
            continue  # the pid was reused by something else: not ours
        print(f"kill {pid}")
        if not dry_run:
            try:
                os.kill(pid, signal_mod.SIGKILL)
            except OSError as exc:
                failed.append(f"kill {pid}: {exc}")
    for mount in state["mounts"]:
        print(f"unmount {mount}")
        if not dry_run:
            try:
                unmount(Path(mount))
            except Exception as exc:
                failed.append(f"unmount {mount}: {exc}")
    print(f"delete namespaces {state['namespaces']} and links {state['links']}")
    if not dry_run:
        failed += netns.delete_leftovers(state["namespaces"], state["links"])
    return failed


def run_cleanup(args: argparse.Namespace) -> int:
    """Remove what a killed harness left behind."""
    import re

    from jepsen_like import netns

    if args.out is not None:
        states = sorted(args.out.glob("cluster/resources.json")) + sorted(args.out.glob("*/cluster/resources.json"))
        if not states:
            print(f"no resources.json under {args.out}", file=sys.stderr)
            return 1
        failed = [f for path in states for f in _cleanup_state(path, args.dry_run)]
    else:
        found = netns.list_leftovers(args.prefix)
        pattern = re.compile(r"^rmj(\d+)")

        def orphan(name: str) -> bool:
            m = pattern.match(name)
            return m is None or not os.path.exists(f"/proc/{m.group(1)}")

        namespaces = [n for n in found["namespaces"] if orphan(n)]
        links = [n for n in found["links"] if orphan(n)]
        print(f"orphaned namespaces: {namespaces or 'none'}; links: {links or 'none'}")
        failed = [] if args.dry_run else netns.delete_leftovers(namespaces, links)
    for line in failed:
        print(f"failed: {line}", file=sys.stderr)
    return 1 if failed else 0


SUBCOMMANDS: dict[str, Subcommand] = {
    "check": Subcommand(
        "check a recorded history (JSONL); exit 0 only if every checker passes",
        add_check_any_arguments,
        run_check_any,
    ),
    "run": Subcommand(
        "run one scenario on a real cluster; exit 0 only if every checker passes",
        add_run_arguments,
        run_run,
    ),
    "matrix": Subcommand(
        "run the scenario matrix (--quick: the CI subset); exit 0 only if all came out as expected",
        add_matrix_arguments,
        run_matrix_cmd,
    ),
    "cleanup": Subcommand(
        "remove namespaces and links left behind by a killed harness",
        add_cleanup_arguments,
        run_cleanup,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jepsen_like", description="raftmem fault-injection harness"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, sub in SUBCOMMANDS.items():
        sub_parser = subparsers.add_parser(name, help=sub.help, description=sub.help)
        sub.add_arguments(sub_parser)
        sub_parser.set_defaults(run=sub.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
