"""One run: start a cluster, load it while a nemesis schedule injects faults,
heal, read what must be read, tear everything down, check, report.

Phases (all bounded):

1. setup: namespaces, disks, clocks, node processes; wait until every node is
   ready (``READY_TIMEOUT_S``).
2. load: the workloads' workers run for ``time_limit`` seconds while the
   scenario's schedule runs; at the end the schedule is stopped.
3. heal: every fault still in effect is undone; workers finish their current
   operation (bounded by the operation timeout) and stop.
4. recovery: every node must become ready again within ``RECOVERY_TIMEOUT_S``,
   and the final reads (the set's) must succeed. Failing that is a FAIL of the
   ``recovery`` check: a store that never comes back has lost availability
   for good, and its unread writes cannot be vouched for.
5. teardown (always, also on Ctrl-C and errors), then the checkers.

Outputs in ``out_dir``: history.jsonl, results.json, latency.png, rate.png,
logs/ (node and powerfs logs), cluster/ (config, data).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import json
import logging
import os
import random
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jepsen_like import report
from jepsen_like.checker import combine_verdicts
from jepsen_like.checker.linear import DEADLINE_S_DEFAULT
from jepsen_like.cluster import Cluster
from jepsen_like.coordworkloads import COORDINATION_CHECKS, COORDINATION_WORKLOADS
from jepsen_like.httpclient import HttpClient
from jepsen_like.nemesis import Nemesis
from jepsen_like.recorder import Recorder
from jepsen_like.resources import Teardown
from jepsen_like.scenarios import Scenario
from jepsen_like.workloads import (
    FINAL_READ_TIMEOUT_S,
    WORKLOAD_CHECKS,
    WORKLOAD_CLASSES,
    Context,
    Workload,
)

log = logging.getLogger(__name__)

OP_TIMEOUT_S = 8.0
READY_TIMEOUT_S = 60.0
RECOVERY_TIMEOUT_S = 60.0
# Workers finish their operation in flight within this after the load phase.
DRAIN_TIMEOUT_S = 2 * OP_TIMEOUT_S + 5
CONTROL_FINAL_READ_TIMEOUT_S = 10.0
_run_counter = itertools.count()


@dataclass
class RunOutcome:
    scenario: str
    valid: Any
    expected_valid: bool
    out_dir: Path
    results: dict[str, Any]
    line: str

    @property
    def as_expected(self) -> bool:
        if self.expected_valid:
            return self.valid is True
        return self.valid is False


def run_prefix() -> str:
    """``rmj<pid><letter>``: unique per run on this machine (pid) and per run in
    this process (letter); short enough for interface names."""
    n = next(_run_counter)
    letters = "abcdefghijklmnopqrstuvwxyz"
    suffix = letters[n % 26] + (letters[(n // 26) % 26] if n >= 26 else "")
    return f"rmj{os.getpid()}{suffix}"


async def _run_async(scenario: Scenario, seed: int, time_limit_s: float, out_dir: Path,
                     recorder: Recorder, teardown: Teardown, info: dict[str, Any]) -> None:
    rng = random.Random(seed)
    prefix = run_prefix()
    info["prefix"] = prefix
    cluster = Cluster(scenario.cluster_spec(), out_dir, prefix, teardown, subnet_hint=os.getpid() + seed)
    info["cluster_obj"] = cluster
    t = time.monotonic()
    await asyncio.to_thread(cluster.create)
    cluster.start_all()
    info["cluster"] = cluster.describe()
    async with HttpClient(cluster.urls, OP_TIMEOUT_S) as client:
        await cluster.wait_ready(client, READY_TIMEOUT_S)
        info["setup_s"] = round(time.monotonic() - t, 2)
        stop = asyncio.Event()
        ctx = Context(recorder=recorder, client=client, node_ids=cluster.node_ids, shards=cluster.spec.shards,
                      rng=rng, stop=stop, op_timeout_s=OP_TIMEOUT_S,
                      # A negative control's store may never serve again; its
                      # verdict does not depend on waiting long for it.
                      final_read_timeout_s=CONTROL_FINAL_READ_TIMEOUT_S if scenario.is_control else FINAL_READ_TIMEOUT_S,
                      live_nodes=lambda: [n for n in cluster.node_ids if cluster.nodes[n].alive])
        classes = {**WORKLOAD_CLASSES, **COORDINATION_WORKLOADS}
        workloads: list[Workload] = [classes[name](ctx) for name in scenario.workloads]
        nemesis = Nemesis(cluster, client, recorder, random.Random(rng.random()), stop)
        load_started = time.monotonic()
        workers = [asyncio.create_task(w()) for wl in workloads for w in wl.workers()]
        schedule = asyncio.create_task(scenario.schedule(nemesis, time_limit_s))
        done, _ = await asyncio.wait({schedule}, timeout=time_limit_s)
        if schedule in done and schedule.exception() is not None:
            stop.set()
            raise RuntimeError(f"nemesis schedule failed: {schedule.exception()!r}") from schedule.exception()
        if schedule in done:
            # The schedule is over early: keep loading until the time limit.
            await asyncio.sleep(max(0.0, time_limit_s - (time.monotonic() - load_started)))
        stop.set()
        if not schedule.done():
            schedule.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await schedule
        info["load_s"] = round(time.monotonic() - load_started, 2)
        info["healed"] = await nemesis.heal_all()
        _, stuck = await asyncio.wait(workers, timeout=DRAIN_TIMEOUT_S)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for task in workers:
            if not task.cancelled() and task.exception() is not None:
                info.setdefault("harness_errors", []).append(f"worker: {task.exception()!r}")
        recovery: dict[str, Any] = {"valid": True}
        t = time.monotonic()
        try:
            await cluster.wait_ready(client, RECOVERY_TIMEOUT_S, list(cluster.node_ids))
            recovery["ready_after_s"] = round(time.monotonic() - t, 2)
        except (TimeoutError, RuntimeError) as exc:
            recovery.update(valid=False, reason=f"cluster did not recover after healing: {exc}")
        for wl in workloads:
            if await wl.final() is False and recovery["valid"] is True:
                recovery.update(valid=False, reason=f"the final read of {wl.name} never succeeded")
        info["recovery"] = recovery


def run_scenario(scenario: Scenario, seed: int, time_limit_s: float, out_dir: Path,
                 deadline_s: float = DEADLINE_S_DEFAULT, keep_data: bool = False) -> RunOutcome:
    """Run one scenario; always tears down; returns the checked outcome."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started_at = dt.datetime.now(dt.UTC)
    started = time.monotonic()
    recorder = Recorder(out_dir / "history.jsonl")
    teardown = Teardown(f"run {scenario.name}")
    info: dict[str, Any] = {}
    harness_error: str | None = None
    try:
        asyncio.run(_run_async(scenario, seed, time_limit_s, out_dir, recorder, teardown, info))
    except KeyboardInterrupt:
        harness_error = "interrupted"
        raise
    except Exception as exc:
        harness_error = f"{type(exc).__name__}: {exc}"
        log.error("run %s failed: %s", scenario.name, traceback.format_exc())
    finally:
        recorder.close()
        failures = teardown.run()
        cluster_obj = info.pop("cluster_obj", None)
        if cluster_obj is not None:
            info["pids"] = list(cluster_obj.pids)
        if failures:
            info.setdefault("harness_errors", []).extend(f"teardown: {f}" for f in failures)
        if not keep_data:
            shutil.rmtree(out_dir / "cluster" / "data", ignore_errors=True)
            shutil.rmtree(out_dir / "cluster" / "backing", ignore_errors=True)
    run_s = time.monotonic() - started
    t = time.monotonic()
    events = recorder.events
    checked = report.check_run(events, [{**WORKLOAD_CHECKS, **COORDINATION_CHECKS}[w] for w in scenario.workloads], deadline_s)
    check_s = time.monotonic() - t
    recovery = info.get("recovery", {"valid": "unknown", "reason": "the run did not get that far"})
    harness_errors = list(info.get("harness_errors", []))
    if harness_error:
        harness_errors.insert(0, harness_error)
    verdicts = [checked["valid"], recovery["valid"]]
    if harness_errors:
        verdicts.append("unknown")
    valid = combine_verdicts(verdicts)
    windows = report.fault_windows(events)
    results: dict[str, Any] = {
        "scenario": scenario.name,
        "description": scenario.description,
        "seed": seed,
        "time_limit_s": time_limit_s,
        "valid": valid,
        "expected_valid": scenario.expect_valid,
        "as_expected": (valid is True) if scenario.expect_valid else (valid is False),
        "started_at": started_at.isoformat(timespec="seconds"),
        "run_s": round(run_s, 1),
        "check_s": round(check_s, 1),
        "setup_s": info.get("setup_s"),
        "load_s": info.get("load_s"),
        "events": len(events),
        "ops": report.op_stats(events),
        "ops_checked": {w: report.ops_checked(r) for w, r in checked["workloads"].items()},
        "recovery": recovery,
        "harness_errors": harness_errors,
        "healed_at_end": info.get("healed", []),
        "faults": windows,
        "cluster": info.get("cluster"),
        "pids": info.get("pids", []),
        "workloads": checked["workloads"],
        "failures": checked["failures"],
    }
    try:
        results["plots"] = report.plot(events, out_dir, f"{scenario.name} seed={seed}")
    except Exception as exc:  # a plot is not worth losing the verdict for
        results["plots"] = []
        results["harness_errors"].append(f"plot: {exc!r}")
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=repr) + "\n")
    total_ops = sum(results["ops_checked"].values())
    expect = "" if scenario.expect_valid else " (negative control: must be INVALID)"
    line = (
        f"{report.verdict_word(valid)} {scenario.name} seed={seed} ops_checked={total_ops} "
        f"faults={len(windows)} run={run_s:.0f}s check={check_s:.0f}s{expect}: "
        + "; ".join(report.summary(w, r) for w, r in checked["workloads"].items())
        + ("" if recovery.get("valid") is True else f"; recovery={recovery.get('valid')}({recovery.get('reason')})")
        + ("" if not harness_errors else f"; harness_errors={harness_errors[:2]}")
        + f" -> {out_dir}"
    )
    return RunOutcome(scenario.name, valid, scenario.expect_valid, out_dir, results, line)
