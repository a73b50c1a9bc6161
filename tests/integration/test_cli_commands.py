"""Every `raftmem` admin command against a real 3-node cluster: tables by default,
`--json` parsed, and the exit codes scripts rely on (1 refused, 2 usage,
3 unavailable). Uses the module's shared cluster (conftest `cluster`)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

import cli.main as cli_main
from tests.unit.fake_raftmem import free_port

from .cluster import REPO, Cluster, wait_for


def url_of(c: Cluster, *nodes: str) -> str:
    return ",".join(f"http://127.0.0.1:{c.http[n]}" for n in nodes or c.node_ids[:1])


def run_cli(c: Cluster, capsys: pytest.CaptureFixture[str], *argv: str, nodes: tuple[str, ...] = ()) -> tuple[int, str, str]:
    """`raftmem --url <nodes> ARGV` in-process: (exit code, stdout, stderr)."""
    code = cli_main.main(["--url", url_of(c, *nodes), *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_json(c: Cluster, capsys: pytest.CaptureFixture[str], *argv: str, nodes: tuple[str, ...] = ()) -> tuple[int, Any]:
    code, out, _ = run_cli(c, capsys, *argv, "--json", nodes=nodes)
    return code, json.loads(out)


def test_status_table_and_json(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(cluster, capsys, "status")
    assert code == 0, out
    assert "4/4 shards have a leader with a quorum; 3/3 nodes answered" in out
    assert out.splitlines()[0].split() == ["NODE", "URL", "STATE", "TABLE", "LEADS", "REPLICAS"]

    code, summary = run_json(cluster, capsys, "status", nodes=("n2",))
    assert code == 0 and summary["ok"] is True and summary["problems"] == []
    assert [(n["id"], n["up"]) for n in summary["nodes"]] == [("n1", True), ("n2", True), ("n3", True)]
    assert sum(n["leads"] for n in summary["nodes"]) == 4
    for shard in summary["shards"]:
        assert shard["leader"] in ("n1", "n2", "n3") and shard["has_quorum"] is True
        assert sorted(shard["members"]) == sorted(shard["assigned"]) == ["n1", "n2", "n3"]
        roles = {r["node"]: r for r in shard["replicas"]}
        assert roles[shard["leader"]]["role"] == "leader"
        assert roles[shard["leader"]]["lease_remaining_ms"] is not None
        followers = [r for r in shard["replicas"] if r["role"] == "follower"]
        assert len(followers) == 2
        for f in followers:
            assert isinstance(f["lag"], int) and f["lag"] >= 0
            assert f["commit_index"] >= 1 and f["applied_index"] >= 0


def test_status_against_a_dead_url_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli_main.main(["--url", url, "status"]) == 3
    assert "Connection refused" in capsys.readouterr().err
    # The installed entry point, as a script would run it; --json keeps stdout parseable.
    proc = subprocess.run([sys.executable, "-m", "cli.main", "--url", url, "--json", "status"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert json.loads(proc.stdout)["error"]["code"] == "connection_failed"


def test_status_skips_a_dead_seed(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    code = cli_main.main(["--url", f"{dead},{url_of(cluster, 'n3')}", "--json", "status"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary["ok"]
    assert any(dead in p for p in summary["problems"])


def test_memory_commands_still_work(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    code, put = run_json(cluster, capsys, "put", "cli", "m1", "--content", '{"x": 1}', "--tag", "t")
    assert code == 0 and put["version"] == 1
    code, got = run_json(cluster, capsys, "get", "cli", "m1", "--consistency", "linearizable", nodes=("n3",))
    assert code == 0 and got["content"] == {"x": 1}
    for extra in (["--max-staleness-ms", "60000"], ["--consistency", "bounded", "--max-staleness-ms", "0"]):
        code, got = run_json(cluster, capsys, "get", "cli", "m1", *extra, nodes=("n2",))
        assert code == 0 and got["content"] == {"x": 1}, extra
    code, page = run_json(cluster, capsys, "list", "cli")
    assert code == 0 and [m["id"] for m in page["items"]] == ["m1"]
    assert run_cli(cluster, capsys, "delete", "cli", "m1")[0] == 0
    assert run_cli(cluster, capsys, "get", "cli", "m1")[0] == 1


def test_member_list(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    code, body = run_json(cluster, capsys, "member", "list")
    assert code == 0
    table = body["table"]
    assert [n["id"] for n in table["nodes"]] == ["n1", "n2", "n3"]
    assert [n["http_port"] for n in table["nodes"]] == [cluster.http[n] for n in ("n1", "n2", "n3")]
    assert set(table["assignment"]) == {"0", "1", "2", "3"}
    code, out, _ = run_cli(cluster, capsys, "member", "list", nodes=("n3",))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"table version {table['version']}, replication factor 3, 4 shards")
    assert lines[1].split() == ["NODE", "HOST", "HTTP", "RAFT_BASE", "ZONE", "REPLICAS", "SHARDS"]
    assert [line.split()[0] for line in lines[2:]] == ["n1", "n2", "n3"]
    assert lines[2].split()[-2:] == ["4", "0,1,2,3"]


def test_member_add_and_remove_refusals(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, _, err = run_cli(cluster, capsys, "member", "add", "n9", "--host", "127.0.0.1", "--http-port", str(port),
                           "--raft-port-base", str(port + 1))
    assert code == 3 and "start it first" in err  # nothing sent: the node does not run
    code, body = run_json(cluster, capsys, "member", "remove", "n9")
    assert code == 1 and "not a member" in body["error"]["message"]
    code, _, err = run_cli(cluster, capsys, "member", "add", "n9", "--host", "127.0.0.1", "--http-port",
                           str(cluster.http["n1"]), "--raft-port-base", str(port))
    assert code == 1 and "is node 'n1'" in err  # someone else answers there
    assert [n["id"] for n in run_json(cluster, capsys, "member", "list")[1]["table"]["nodes"]] == ["n1", "n2", "n3"]


def test_rebalance_dry_run_changes_nothing(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    version = run_json(cluster, capsys, "member", "list")[1]["table"]["version"]
    code, out, _ = run_cli(cluster, capsys, "rebalance", "--dry-run")
    assert code == 0
    assert re.search(r"plan \(dry run: nothing changed\): 0 of 12 replicas move, moved fraction 0\.000", out), out
    code, plan = run_json(cluster, capsys, "rebalance", "--dry-run", nodes=("n2",))
    assert code == 0 and plan["dry_run"] is True and plan["moves"] == [] and plan["moved_fraction"] == 0
    assert run_json(cluster, capsys, "member", "list")[1]["table"]["version"] == version


def _leader(c: Cluster, shard: int) -> str:
    return wait_for(lambda: c.leader_of(shard), 20, f"a leader of shard {shard}")


def test_transfer_leader(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    shard = 1
    before = _leader(cluster, shard)
    target = next(n for n in cluster.node_ids if n != before)
    code, body = run_json(cluster, capsys, "transfer-leader", str(shard), "--to", target)
    assert code == 0, body
    assert body["transferred"] is True and body["from"] == before and body["leader"] == target
    assert cluster.leader_of(shard) == target

    code, out, _ = run_cli(cluster, capsys, "transfer-leader", str(shard), "--to", target)
    assert code == 0 and f"{target} already leads it" in out

    code, out, _ = run_cli(cluster, capsys, "transfer-leader", str(shard), nodes=("n3",))
    assert code == 0, out
    moved = re.search(rf"shard {shard}: leader {target} -> (n\d) \(term \d+\)", out)
    assert moved and moved.group(1) != target

    code, body = run_json(cluster, capsys, "transfer-leader", str(shard), "--to", "n9")
    assert code == 1 and "n9" in body["error"]["message"]
    code, _, err = run_cli(cluster, capsys, "transfer-leader", "99")
    assert code == 1 and "no shard 99" in err


def test_snapshot_save_restore_and_a_corrupt_file(
    cluster: Cluster, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for i in range(20):
        assert run_cli(cluster, capsys, "put", "snap", f"k{i}", "--content", str(i))[0] == 0
    path = tmp_path / "cluster.backup"
    code, saved = run_json(cluster, capsys, "snapshot", "save", str(path), nodes=("n2",))
    assert code == 0, saved
    assert saved["bytes"] == path.stat().st_size and len(saved["manifest"]["shards"]) == 4
    assert not path.with_name(path.name + ".part").exists()
    code, _, err = run_cli(cluster, capsys, "snapshot", "save", str(path))
    assert code == 1 and "--force" in err
    code, out, _ = run_cli(cluster, capsys, "snapshot", "save", str(path), "--force")
    assert code == 0 and out.startswith(f"saved {path}: ") and "4 shards of cluster 'test'" in out

    # Lose some memories, then restore them from the file.
    for i in range(5):
        assert run_cli(cluster, capsys, "delete", "snap", f"k{i}")[0] == 0
    code, body = run_json(cluster, capsys, "snapshot", "restore", str(path), nodes=("n3",))
    assert code == 0, body
    assert body["restored"] >= 20 and sum(body["per_shard"].values()) == body["restored"]
    for i in range(20):
        code, got = run_json(cluster, capsys, "get", "snap", f"k{i}", "--consistency", "linearizable")
        assert code == 0 and got["content"] == i

    # A flipped byte inside a shard's snapshot: refused with the server's message, nothing changed.
    with tarfile.open(path) as tar:
        offset = next(m for m in tar.getmembers() if m.name.endswith(".snapshot") and m.size > 0).offset_data
    data = bytearray(path.read_bytes())
    data[offset + 100] ^= 0xFF
    bad = tmp_path / "corrupt.backup"
    bad.write_bytes(bytes(data))
    assert run_cli(cluster, capsys, "delete", "snap", "k0")[0] == 0
    code, _, err = run_cli(cluster, capsys, "snapshot", "restore", str(bad))
    assert code == 1 and "corrupt backup: checksum mismatch" in err
    code, body = run_json(cluster, capsys, "snapshot", "restore", str(bad))
    assert code == 1 and "corrupt" in body["error"]["message"]
    bad.write_bytes(path.read_bytes()[: path.stat().st_size // 3])  # truncated
    code, _, err = run_cli(cluster, capsys, "snapshot", "restore", str(bad))
    assert code == 1 and "corrupt" in err
    assert run_cli(cluster, capsys, "get", "snap", "k0")[0] == 1  # still deleted
    assert run_cli(cluster, capsys, "snapshot", "restore", str(tmp_path / "missing"))[0] == 2
