"""Pure parts of the harness (no root): partition shapes, the client's
routing, checking and plotting a mixed-workload history."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jepsen_like import netns, report
from jepsen_like.checker.history import HistoryBuilder, dump_jsonl
from jepsen_like.workloads import id_on_shard, shard_of
from raftmem.routing import shard_for

REPO = Path(__file__).resolve().parents[2]
NODES = ["n1", "n2", "n3"]


def _hears(grudges: dict[str, set[str]], a: str, b: str) -> bool:
    return b not in grudges.get(a, set())


def test_isolate_cuts_the_victim_both_ways() -> None:
    g = netns.isolate(NODES, "n2")
    assert not _hears(g, "n1", "n2") and not _hears(g, "n2", "n1") and not _hears(g, "n2", "n3")
    assert _hears(g, "n1", "n3") and _hears(g, "n3", "n1")


def test_halves_split_in_two() -> None:
    g = netns.halves(NODES, ["n3"])
    assert g == {"n3": {"n1", "n2"}, "n1": {"n3"}, "n2": {"n3"}}


@pytest.mark.parametrize("nodes", [NODES, ["a", "b", "c", "d", "e"]])
def test_majority_ring_gives_each_node_a_different_majority(nodes: list[str]) -> None:
    g = netns.majority_ring(nodes)
    majority = len(nodes) // 2 + 1
    seen = {frozenset(set(nodes) - g[n]) for n in nodes}
    assert all(len(set(nodes) - g[n]) == majority for n in nodes)
    assert len(seen) == len(nodes)


def test_bridge_keeps_the_middle_connected() -> None:
    g = netns.bridge(NODES, "n2")
    assert _hears(g, "n1", "n2") and _hears(g, "n3", "n2") and _hears(g, "n2", "n1")
    assert not _hears(g, "n1", "n3") and not _hears(g, "n3", "n1")


def test_the_harness_routes_keys_like_the_server() -> None:
    for i in range(200):
        assert shard_of("ns", f"k{i}", 8) == shard_for("ns", f"k{i}", 8)
    for shard in range(4):
        assert shard_for("jreg", id_on_shard("jreg", "r0-1", shard, 4), 4) == shard


def _mixed_history(lost: bool) -> HistoryBuilder:
    h = HistoryBuilder()
    h.nemesis("start", {"fault": "kill", "id": 1, "nodes": ["n1"]})
    h.invoke(0, "write", "jreg/k", 1, workload="register")
    h.ok(0, version=1)
    h.invoke(1, "add", "jset", 1, workload="set")
    h.ok(1)
    h.nemesis("stop", {"fault": "kill", "id": 1})
    h.invoke(0, "read", "jreg/k", workload="register", consistency="linearizable")
    h.ok(0, 1, version=1)
    h.invoke(1, "read", "jset", workload="set")
    h.ok(1, [] if lost else [1])
    h.invoke(2, "write", "jses/s2-0", 5, workload="session")
    h.ok(2, version=1)
    h.invoke(2, "read", "jses/s2-0", workload="session", consistency="session")
    h.ok(2, 5, version=1)
    h.invoke(3, "write", "jstale/t0", 9, workload="stale")
    h.ok(3, version=1)
    h.invoke(4, "read", "jstale/t0", workload="stale", consistency="bounded", max_staleness_ms=100)
    h.ok(4, 9, version=1)
    return h


def test_check_run_splits_by_workload_and_finds_the_lost_add() -> None:
    good = report.check_run(_mixed_history(lost=False).events)
    assert good["valid"] is True, good
    assert set(good["workloads"]) == {"register", "set", "session", "stale"}
    bad = report.check_run(_mixed_history(lost=True).events)
    assert bad["valid"] is False
    (failure,) = bad["failures"]
    assert failure["checker"] == "set"
    roles = [entry["role"] for entry in failure["window"]]
    assert roles == ["lost-add", "read-without-it"]


def test_fault_windows_pair_starts_and_stops() -> None:
    windows = report.fault_windows(_mixed_history(lost=False).events)
    assert len(windows) == 1 and windows[0]["fault"] == "kill"
    assert 0 <= windows[0]["start_s"] < windows[0]["stop_s"]


def test_plots_are_written(tmp_path: Path) -> None:
    written = report.plot(_mixed_history(lost=False).events, tmp_path, "test")
    assert sorted(Path(p).name for p in written) == ["latency.png", "rate.png"]
    assert all(Path(p).stat().st_size > 1000 for p in written)


@pytest.mark.parametrize(("lost", "code", "word"), [(False, 0, "VALID"), (True, 1, "INVALID")])
def test_cli_check_reads_a_harness_history(tmp_path: Path, lost: bool, code: int, word: str) -> None:
    path = tmp_path / "history.jsonl"
    dump_jsonl(_mixed_history(lost).events, path)
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "jepsen_like", "check", str(path), "--results", str(results)],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert proc.stdout.startswith(word)
    assert json.loads(results.read_text())["valid"] is (not lost)
