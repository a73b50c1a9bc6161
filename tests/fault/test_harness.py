"""The harness end to end on a real cluster, kept short: a fault-free run and a
leader isolation must pass; the negative controls must FAIL (a control that
passes means the harness cannot see the bug it exists to catch). After every
run nothing may be left: no namespace, link, mount or process of the run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from jepsen_like import scenarios
from jepsen_like.runner import run_scenario

from .conftest import requires_fuse, requires_harness

pytestmark = requires_harness

REPO = Path(__file__).resolve().parents[2]
CLI_TIMEOUT_S = 240
OUTPUT_FILES = ("history.jsonl", "results.json", "latency.png", "rate.png")


def assert_torn_down(results: dict[str, Any], out_dir: Path) -> None:
    prefix = results["cluster"]["prefix"]
    namespaces = [n for n in os.listdir("/run/netns") if n.startswith(prefix)] if os.path.isdir("/run/netns") else []
    links = [n for n in os.listdir("/sys/class/net") if n.startswith(prefix)]
    assert not namespaces, f"namespaces left behind: {namespaces}"
    assert not links, f"links left behind: {links}"
    assert results["pids"], "the run recorded no process"
    alive = [pid for pid in results["pids"] if os.path.exists(f"/proc/{pid}")]
    assert not alive, f"processes left behind: {alive}"
    root = str(out_dir.resolve())
    with open("/proc/self/mounts", encoding="utf-8") as fh:
        mounts = [line.split()[1] for line in fh if line.split()[1].startswith(root)]
    assert not mounts, f"mounts left behind: {mounts}"
    assert not results["harness_errors"], results["harness_errors"]


def assert_outputs(out_dir: Path) -> None:
    for name in OUTPUT_FILES:
        assert (out_dir / name).stat().st_size > 0, f"{name} missing or empty"


def test_none_passes_through_the_cli(tmp_path: Path) -> None:
    out = tmp_path / "none"
    proc = subprocess.run(
        [sys.executable, "-m", "jepsen_like", "run", "--scenario", "none", "--seed", "3",
         "--time-limit", "6", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False,
    )
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("VALID none seed=3"), proc.stdout
    assert_outputs(out)
    results = json.loads((out / "results.json").read_text())
    assert results["valid"] is True
    assert results["ops_checked"]["register"] > 100
    assert set(results["workloads"]) == {"register", "set", "session", "stale", "causal"}
    assert_torn_down(results, out)


def test_leader_isolate_passes(tmp_path: Path) -> None:
    outcome = run_scenario(scenarios.get("leader-isolate"), 7, 14, tmp_path / "li")
    assert outcome.valid is True, outcome.line
    assert any(f["fault"] == "isolate" for f in outcome.results["faults"]), outcome.results["faults"]
    assert_outputs(outcome.out_dir)
    assert_torn_down(outcome.results, outcome.out_dir)


def test_membership_change_under_load_passes(tmp_path: Path) -> None:
    outcome = run_scenario(scenarios.get("membership"), 5, 30, tmp_path / "mb")
    assert outcome.valid is True, outcome.line
    joins = [f for f in outcome.results["faults"] if f["fault"] == "member-join"]
    assert joins, outcome.results["faults"]
    assert_torn_down(outcome.results, outcome.out_dir)


def test_control_local_reads_fails(tmp_path: Path) -> None:
    outcome = run_scenario(scenarios.get("control-local-reads"), 7, 16, tmp_path / "clr")
    assert outcome.valid is False, f"the control passed: the harness is broken: {outcome.line}"
    failures = outcome.results["failures"]
    assert failures and failures[0]["window"], failures
    assert_torn_down(outcome.results, outcome.out_dir)


def test_control_early_ack_fails(tmp_path: Path) -> None:
    outcome = run_scenario(scenarios.get("control-early-ack"), 7, 12, tmp_path / "cea")
    assert outcome.valid is False, f"the control passed: the harness is broken: {outcome.line}"
    assert_torn_down(outcome.results, outcome.out_dir)


@requires_fuse
def test_control_no_fsync_fails(tmp_path: Path) -> None:
    outcome = run_scenario(scenarios.get("control-no-fsync"), 7, 12, tmp_path / "cnf")
    assert outcome.valid is False, f"the control passed: the harness is broken: {outcome.line}"
    assert any(f["fault"] == "power-loss" for f in outcome.results["faults"])
    assert_torn_down(outcome.results, outcome.out_dir)


def test_unknown_scenario_is_a_usage_error() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "jepsen_like", "run", "--scenario", "nope", "--out", "/nonexistent"],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 2
    assert "nope" in proc.stderr


@pytest.mark.parametrize("name", scenarios.REQUIRED)
def test_required_scenarios_exist(name: str) -> None:
    scenario = scenarios.get(name)
    assert scenario.time_limit_s >= 60
    assert scenario.expect_valid is (not name.startswith("control-"))


def _cmdlines_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                if text.encode() in fh.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def test_sigterm_mid_run_tears_everything_down(tmp_path: Path) -> None:
    out = tmp_path / "interrupted"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jepsen_like", "run", "--scenario", "none", "--time-limit", "120",
         "--out", str(out)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 90
        history = out / "history.jsonl"
        # Wait (polling) until the load phase has recorded operations.
        while not (history.exists() and history.stat().st_size > 20_000):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "the run never started its load phase"
            time.sleep(0.1)
        prefix = f"rmj{proc.pid}"
        assert [n for n in os.listdir("/run/netns") if n.startswith(prefix)], "no namespace seen"
        assert _cmdlines_mentioning(str(out)), "no node process seen"
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stdout + stderr
    assert "INTERRUPTED" in stdout
    assert not [n for n in os.listdir("/run/netns") if n.startswith(prefix)]
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith(prefix)]
    assert not _cmdlines_mentioning(str(out)), "node processes survived the interrupt"


def test_cleanup_after_a_sigkilled_harness(tmp_path: Path) -> None:
    """SIGKILL cannot be caught: `cleanup --out DIR` removes exactly what the
    run's resources.json lists."""
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "jepsen_like", "run", "--scenario", "none", "--time-limit", "120",
         "--out", str(out)],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    prefix = f"rmj{proc.pid}"
    try:
        deadline = time.monotonic() + 90
        while not ((out / "history.jsonl").exists() and (out / "history.jsonl").stat().st_size > 0):
            assert proc.poll() is None, "the run ended early"
            assert time.monotonic() < deadline, "the run never started its load phase"
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()
    assert [n for n in os.listdir("/run/netns") if n.startswith(prefix)], "nothing to clean up?"
    cleanup = subprocess.run(
        [sys.executable, "-m", "jepsen_like", "cleanup", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert cleanup.returncode == 0, cleanup.stdout + cleanup.stderr
    assert not [n for n in os.listdir("/run/netns") if n.startswith(prefix)]
    assert not [n for n in os.listdir("/sys/class/net") if n.startswith(prefix)]
    # SIGKILLed node processes are reaped by init; poll until they are gone.
    deadline = time.monotonic() + 30
    while _cmdlines_mentioning(str(out)):
        assert time.monotonic() < deadline, "node processes survived cleanup"
        time.sleep(0.1)
