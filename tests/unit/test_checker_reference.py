"""The linearizability checker against histories with known verdicts.

102 Jepsen etcd register histories and 6 EDN key-value histories, from
``shared/testdata/linearizability`` (see its README). The checker must give exactly
the known verdict on every one; "unknown" (deadline) is a failure. The whole file
runs in a few seconds; the per-history deadline only guards against a regression
that would make the search blow up.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from jepsen_like.checker.history import Event
from jepsen_like.checker.linear import check_linearizable
from jepsen_like.checker.testdata_formats import load_verdicts, parse_edn_kv, parse_jepsen_log

# Generous next to the ~0.5 s the slowest history takes: "unknown" fails the test.
DEADLINE_S = 30.0
SHARED_ENV = "RAFTMEM_SHARED"


def _shared_dir() -> Path:
    env = os.environ.get(SHARED_ENV)
    if env:
        return Path(env)
    # tests/unit/this.py -> repo -> its parent holds shared/ (also in CI).
    return Path(__file__).resolve().parents[3] / "shared"


TESTDATA = _shared_dir() / "testdata" / "linearizability"
SUITES: dict[str, tuple[Callable[[Path], list[Event]], str]] = {
    "jepsen-etcd": (parse_jepsen_log, "register"),
    "kv": (parse_edn_kv, "kv"),
}


def _cases() -> list[object]:
    if not TESTDATA.is_dir():
        return [
            pytest.param(
                None,
                None,
                None,
                marks=pytest.mark.skip(
                    reason=f"reference histories not found at {TESTDATA} "
                    f"(set {SHARED_ENV} to the shared/ folder)"
                ),
                id="no-testdata",
            )
        ]
    cases: list[object] = []
    for suite in SUITES:
        for name, linearizable in sorted(load_verdicts(TESTDATA / suite / "VERDICTS").items()):
            cases.append(pytest.param(suite, name, linearizable, id=f"{suite}/{name}"))
    return cases


def test_reference_suites_are_complete() -> None:
    if not TESTDATA.is_dir():
        pytest.skip(f"reference histories not found at {TESTDATA}")
    counts = {suite: len(load_verdicts(TESTDATA / suite / "VERDICTS")) for suite in SUITES}
    assert counts == {"jepsen-etcd": 102, "kv": 6}


@pytest.mark.parametrize(("suite", "name", "linearizable"), _cases())
def test_reference_verdict(suite: str, name: str, linearizable: bool) -> None:
    parser, model = SUITES[suite]
    events = parser(TESTDATA / suite / name)
    assert events, f"{name} parsed to an empty history"
    result = check_linearizable(events, model, DEADLINE_S)
    assert result["valid"] is linearizable, (
        f"{suite}/{name}: expected {linearizable}, got {result['valid']!r} "
        f"(reason={result['reason']}, key={result['key']!r}, {result['elapsed_s']} s)"
    )
    if not linearizable:
        roles = [op["role"] for op in result["failure_window"]]
        assert roles.count("stuck") == 1, "a failure must name the op that could not fit"
