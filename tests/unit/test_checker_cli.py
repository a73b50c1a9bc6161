"""check_history, main_check and `python -m jepsen_like check`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jepsen_like.__main__ import main
from jepsen_like.checker import (
    EXIT_BAD_INPUT,
    EXIT_INVALID,
    EXIT_UNKNOWN,
    EXIT_VALID,
    check_history,
    combine_verdicts,
    main_check,
)
from jepsen_like.checker.history import HistoryBuilder, dump_jsonl

REPO = Path(__file__).resolve().parents[2]
SUBPROCESS_TIMEOUT_S = 60


def _register_history(tmp_path: Path, read_value: int) -> Path:
    h = HistoryBuilder()
    h.nemesis("start", {"fault": "kill", "nodes": ["n1"]})
    h.invoke(0, "write", "k", 1)
    h.ok(0, version=1)
    h.invoke(0, "read", "k")
    h.ok(0, read_value, version=1)
    h.nemesis("stop", {"fault": "kill"})
    path = tmp_path / "history.jsonl"
    dump_jsonl(h.events, path)
    return path


def test_combine_verdicts() -> None:
    assert combine_verdicts([True, True]) is True
    assert combine_verdicts([True, "unknown"]) == "unknown"
    assert combine_verdicts(["unknown", False]) is False


def test_check_history_register(tmp_path: Path) -> None:
    result = check_history(_register_history(tmp_path, 1), "register", 5.0)
    assert result["valid"] is True and list(result["checkers"]) == ["linear"]
    assert result["events"] == 6


def test_session_workload_runs_session_and_linear(tmp_path: Path) -> None:
    h = HistoryBuilder()
    h.invoke(0, "write", "k", 1)
    h.ok(0, version=1)
    h.invoke(1, "read", "k")
    h.ok(1, None, version=0)  # another session: fine for sessions, not linearizable
    result = check_history(h.events, "session", 5.0)
    assert result["checkers"]["session"]["valid"] is True
    assert result["checkers"]["linear"]["valid"] is False
    assert result["valid"] is False


def test_unknown_workload() -> None:
    with pytest.raises(ValueError, match="workload"):
        check_history([], "nope")


def test_main_check_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results.json"
    good = _register_history(tmp_path, 1)
    assert main_check([str(good), "--results", str(results)]) == EXIT_VALID
    assert capsys.readouterr().out.startswith("VALID register")
    assert json.loads(results.read_text())["valid"] is True
    bad = _register_history(tmp_path, 2)
    assert main_check([str(bad), "--workload", "register"]) == EXIT_INVALID
    line = capsys.readouterr().out
    assert line.startswith("INVALID") and line.count("\n") == 1 and "key='k'" in line
    assert main_check([str(tmp_path / "missing.jsonl")]) == EXIT_BAD_INPUT


def test_main_check_unknown_on_deadline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = HistoryBuilder()
    writers = 18
    for p in range(writers):
        h.invoke(p, "write", "k", p)
    h.invoke(writers, "read", "k")
    h.ok(writers, -1)
    for p in range(writers):
        h.ok(p)
    path = tmp_path / "hard.jsonl"
    dump_jsonl(h.events, path)
    assert main_check([str(path), "--deadline", "0.05"]) == EXIT_UNKNOWN
    assert capsys.readouterr().out.startswith("UNKNOWN")


def test_package_main_dispatches_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(_register_history(tmp_path, 1))]) == EXIT_VALID
    with pytest.raises(SystemExit):
        main([])
    capsys.readouterr()


def test_python_dash_m(tmp_path: Path) -> None:
    path = _register_history(tmp_path, 2)
    proc = subprocess.run(
        [sys.executable, "-m", "jepsen_like", "check", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
        check=False,
    )
    assert proc.returncode == EXIT_INVALID, proc.stderr
    assert proc.stdout.startswith("INVALID")
