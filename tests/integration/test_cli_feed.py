"""`raftmem watch`, `history`, `prune` and the lifecycle lines of `status`
against a real cluster (in-process CLI, real nodes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .cluster import Cluster
from .test_cli_commands import run_cli

POLICY = {"name": "stale", "namespace": "clip", "not_accessed_for": "1d"}


def test_watch_history_prune_and_status_from_the_shell(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = Cluster(tmp_path, shards=2, sections={"lifecycle": {"policies": [POLICY], "run_every_ms": 500}})
    try:
        c.start_all()
        code, out, _ = run_cli(c, capsys, "put", "clip", "m", "--content", "one", "--actor", "planner",
                               "--ttl", "60", "--sliding")
        assert code == 0, out
        assert run_cli(c, capsys, "put", "clip", "m", "--content", "two")[0] == 0
        assert run_cli(c, capsys, "delete", "clip", "m", "--actor", "janitor")[0] == 0

        code, out, err = run_cli(c, capsys, "watch", "--namespace", "clip", "--after", "0:0,1:0", "--count", "3")
        assert code == 0, err
        lines = out.splitlines()
        assert [line.split()[0] for line in lines] == ["put", "put", "delete"]
        assert "by planner" in lines[0] and "(was v1)" in lines[1]
        assert "resume with --after " in err

        code, out, _ = run_cli(c, capsys, "watch", "--json", "--namespace", "clip", "--after", "0:0,1:0",
                               "--count", "1")
        assert code == 0 and json.loads(out.splitlines()[0])["type"] == "put"
        # --for ends a watch that sees nothing.
        code, out, _ = run_cli(c, capsys, "watch", "--namespace", "nothing-here", "--for", "1.5")
        assert code == 0 and out == ""

        code, out, _ = run_cli(c, capsys, "history", "clip", "m")
        assert code == 0
        assert [line.split()[0] for line in out.splitlines()] == ["EVENT", "delete", "put", "put"]
        assert run_cli(c, capsys, "history", "clip", "never")[0] == 1  # not found

        code, out, _ = run_cli(c, capsys, "prune", "--dry-run")
        assert code == 0, out
        assert out.splitlines()[0].split() == ["SHARD", "POLICY", "CANDIDATES", "REMOVED", "NOTE"]
        assert "(dry run: nothing removed)" in out
        assert run_cli(c, capsys, "prune", "--policy", "nope")[0] == 1

        code, out, _ = run_cli(c, capsys, "status")
        assert "POLICY" in out and "stale" in out
        code, out, _ = run_cli(c, capsys, "status", "--json")
        assert json.loads(out)["policies"]["stale"]["runs"] >= 0
        code, _, err = run_cli(c, capsys, "watch", "--after", "nonsense", "--count", "1")
        assert code == 2 and "token" in err
    finally:
        c.stop_all()
