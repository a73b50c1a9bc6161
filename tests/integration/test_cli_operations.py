"""Operating a live cluster with the CLI, under a write load: a rolling restart
gated on `/readyz?sync=true`, and growing 3 -> 4 nodes (`member add`,
`rebalance --wait`) then shrinking back (`member remove --wait`). The invariant:
no acknowledged write is lost (every one read back linearizably at the end), and
no request failed except with a retryable answer."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import cli.main as cli_main

from .cluster import Cluster, wait_for
from .test_cli_commands import run_cli, run_json, url_of
from .test_durability import WriteLoad, assert_all_present

ALLOWED_STATUSES = {200, 201, 503, 504, -1}  # -1: connection refused or lost (a node restarting)


class NotYet:
    """A falsy poll result that says why, for wait_for's timeout message."""

    def __init__(self, why: object) -> None:
        self.why = why

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"not yet: {self.why}"


def synced(c: Cluster, node: str) -> bool | NotYet:
    status, _, body = c.request(node, "GET", "/readyz?sync=true", timeout_s=2)
    return status == 200 or NotYet(body)


def all_led(urls: str, capsys: pytest.CaptureFixture[str]) -> bool | NotYet:
    """`raftmem status` exits 0: every shard has a leader with a quorum."""
    code = cli_main.main(["--url", urls, "--json", "status"])
    out = capsys.readouterr().out
    return code == 0 or NotYet(f"exit {code}: {json.loads(out).get('problems') if out else None}")


def more_acked(load: WriteLoad, count: int) -> bool | NotYet:
    return load.acked_count() >= count or NotYet(f"{load.acked_count()} acked, statuses {load.statuses}")


def test_rolling_restart_under_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = Cluster(tmp_path)
    load = WriteLoad(c, writers=4)
    try:
        c.start_all()
        load.start()
        wait_for(lambda: more_acked(load, 50), 60, "writes flowing")
        every = url_of(c, *c.node_ids)
        for node in list(c.node_ids):
            c.stop(node)  # SIGTERM
            c.start(node)
            wait_for(lambda n=node: synced(c, n), 60, f"{node} restarted and caught up (readyz?sync=true)")
            # Every shard led again, seen through the CLI, before the next node goes down.
            wait_for(lambda: all_led(every, capsys), 60, "every shard has a leader with a quorum")
            acked = load.acked_count()
            wait_for(lambda a=acked: more_acked(load, a + 30), 60, f"writes after restarting {node}")
        code, summary = run_json(c, capsys, "status")
        assert code == 0 and all(n["up"] for n in summary["nodes"]), summary["problems"]
        load.stop()
        assert not set(load.statuses) - ALLOWED_STATUSES, load.statuses
        assert load.acked_count() >= 140
        assert_all_present(c, load.acked, "n2")
    finally:
        load.stop()
        c.stop_all()


def test_grow_and_shrink_with_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    c = Cluster(tmp_path, spare=1)
    load = WriteLoad(c, writers=2)
    try:
        c.start_all()
        load.start()
        wait_for(lambda: more_acked(load, 30), 60, "writes flowing")
        spec = c.start_joining("n4")
        wait_for(lambda: c.request("n4", "GET", "/healthz", timeout_s=2)[0] == 200, 30, "n4 up")

        code, out, err = run_cli(c, capsys, "member", "add", "n4", "--host", spec["host"], "--http-port",
                                 str(spec["http_port"]), "--raft-port-base", str(spec["raft_port_base"]),
                                 "--zone", "d")
        assert code == 0, err
        assert "added n4" in out and "raftmem rebalance" in out
        code, plan = run_json(c, capsys, "rebalance", "--dry-run", nodes=("n2",))
        assert code == 0 and plan["dry_run"] and plan["moves"]

        code, out, err = run_cli(c, capsys, "rebalance", "--wait", "--timeout", "120", nodes=("n3", "n1"))
        assert code == 0, out + err
        fraction = float(re.search(r"moved fraction (\d+\.\d+)", out).group(1))  # type: ignore[union-attr]
        assert 0.15 <= fraction <= 0.4, out
        assert [m["shard"] for m in plan["moves"]] == [int(line.split()[0]) for line in out.splitlines()[2:]]
        assert "rebalance: every shard has its assigned voters" in err  # the progress on stderr
        assert re.search(r"rebalance \[#+\] (\d+)/\1 ", err), err
        code, summary = run_json(c, capsys, "status")
        assert code == 0 and "n4" in [n["id"] for n in summary["nodes"]]
        assert any("n4" in (s["members"] or []) for s in summary["shards"])
        assert not any(s["moving"] for s in summary["shards"])
        acked = load.acked_count()
        wait_for(lambda: more_acked(load, acked + 30), 60, "writes after the grow")

        code, removed = run_json(c, capsys, "member", "remove", "n4", "--wait", "--timeout", "120")
        assert code == 0, removed
        assert removed["converged"] is True and 0.15 <= removed["moved_fraction"] <= 0.4
        assert all("n4" not in reps for reps in removed["table"]["assignment"].values())
        code, summary = run_json(c, capsys, "status")
        assert code == 0 and [n["id"] for n in summary["nodes"]] == ["n1", "n2", "n3"]
        assert not any("n4" in (s["members"] or []) for s in summary["shards"])
        c.stop("n4")
        assert run_cli(c, capsys, "status")[0] == 0

        load.stop()
        assert not set(load.statuses) - ALLOWED_STATUSES, load.statuses
        assert_all_present(c, load.acked, "n1")
    finally:
        load.stop()
        c.stop_all()
