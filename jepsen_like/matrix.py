"""The scenario matrix: run scenarios one after the other, then write
``matrix.json`` and ``matrix.md`` (scenario, expected, verdict, operations
checked, faults, times, date) in the output directory.

The matrix passes only when every scenario came out as expected: a pass for a
normal scenario, INVALID for a negative control. A negative control that passes
means the harness cannot see the bug it was built to catch: the matrix fails.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jepsen_like import scenarios
from jepsen_like.runner import RunOutcome, run_scenario


def run_matrix(names: Sequence[str], out_dir: Path, seed: int, quick: bool,
               time_limit_s: float | None = None, deadline_s: float = 60.0,
               echo: Any = print) -> tuple[bool, list[RunOutcome]]:
    out_dir.mkdir(parents=True, exist_ok=True)
    outcomes: list[RunOutcome] = []
    started = dt.datetime.now(dt.UTC)
    for name in names:
        scenario = scenarios.get(name)
        limit = time_limit_s or (scenario.quick_time_limit_s if quick else scenario.time_limit_s)
        outcome = run_scenario(scenario, seed, limit, out_dir / name, deadline_s=deadline_s)
        outcomes.append(outcome)
        mark = "ok  " if outcome.as_expected else "BAD "
        echo(f"{mark}{outcome.line}", flush=True)
        _write(out_dir, outcomes, started, seed, quick)
    passed = all(o.as_expected for o in outcomes)
    return passed, outcomes


def _row(o: RunOutcome) -> dict[str, Any]:
    r = o.results
    return {
        "scenario": o.scenario,
        "expected": "pass" if o.expected_valid else "FAIL (control)",
        "verdict": "VALID" if o.valid is True else ("INVALID" if o.valid is False else "UNKNOWN"),
        "as_expected": o.as_expected,
        "ops_checked": r.get("ops_checked", {}),
        "faults": len(r.get("faults", [])),
        "load_s": r.get("load_s"),
        "run_s": r.get("run_s"),
        "check_s": r.get("check_s"),
        "out": str(o.out_dir),
    }


def _write(out_dir: Path, outcomes: list[RunOutcome], started: dt.datetime, seed: int, quick: bool) -> None:
    rows = [_row(o) for o in outcomes]
    meta = {
        "date": started.date().isoformat(),
        "started_at": started.isoformat(timespec="seconds"),
        "seed": seed,
        "quick": quick,
        "machine": f"{platform.machine()} {platform.node()} python {platform.python_version()}",
        "passed": all(o.as_expected for o in outcomes),
    }
    (out_dir / "matrix.json").write_text(json.dumps({**meta, "runs": rows}, indent=1) + "\n")
    # One column of counts per workload checked anywhere in the matrix, in order of appearance.
    names = list(dict.fromkeys(w for row in rows for w in row["ops_checked"]))
    lines = [
        f"# jepsen_like matrix, {meta['date']} ({'quick' if quick else 'full'}, seed {seed})",
        "",
        f"| scenario | expected | verdict | ops checked ({'/'.join(names)}) | faults | load s | run s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ops = row["ops_checked"]
        ops_text = "/".join(str(ops.get(w, "-")) for w in names)
        verdict = row["verdict"] + ("" if row["as_expected"] else " (NOT AS EXPECTED)")
        lines.append(f"| {row['scenario']} | {row['expected']} | {verdict} | {ops_text} | {row['faults']} | "
                     f"{row['load_s']} | {row['run_s']} |")
    (out_dir / "matrix.md").write_text("\n".join(lines) + "\n")
