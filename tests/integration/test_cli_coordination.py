"""`raftmem lock ...` and `raftmem task ...` against a real cluster, in
process: what scripts see (the fence to pass on, JSON, exit codes)."""

from __future__ import annotations

import uuid

import pytest

from .cluster import Cluster
from .test_cli_commands import run_cli, run_json


@pytest.fixture(scope="module")
def cluster(coordination_cluster: Cluster) -> Cluster:
    return coordination_cluster


def test_a_script_holds_a_lock_by_its_fence(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    ns = f"cli-{uuid.uuid4().hex[:6]}"
    code, lock = run_json(cluster, capsys, "lock", "acquire", ns, "deploy", "--ttl-ms", "30000", "--holder", "ci")
    assert code == 0 and lock["holder"] == "ci" and lock["if_fence"] == f"{ns}/deploy:{lock['fence']}"
    code, out, err = run_cli(cluster, capsys, "lock", "acquire", ns, "deploy", "--ttl-ms", "1000", "--holder", "x")
    assert code == 1 and "lock_held" in err
    code, out, _ = run_cli(cluster, capsys, "put", ns, "deploy", "--content", "open", "--if-fence", lock["if_fence"])
    assert code == 0, out
    code, out, _ = run_cli(cluster, capsys, "lock", "show", ns, "deploy", nodes=("n3",))
    assert code == 0 and f"fence {lock['fence']} holder ci" in out
    code, _, _ = run_cli(cluster, capsys, "lock", "renew", ns, "deploy", "--fence", str(lock["fence"]),
                         "--ttl-ms", "30000")
    assert code == 0
    code, out, _ = run_cli(cluster, capsys, "lock", "release", ns, "deploy", "--fence", str(lock["fence"]))
    assert code == 0 and "released" in out
    code, _, err = run_cli(cluster, capsys, "put", ns, "deploy", "--content", "late", "--if-fence", lock["if_fence"])
    assert code == 1 and "fenced" in err
    code, _, err = run_cli(cluster, capsys, "lock", "show", ns, "deploy")
    assert code == 1 and "not held" in err
    code, _, err = run_cli(cluster, capsys, "lock", "acquire", ns, "deploy", "--ttl-ms", "-3")
    assert code == 1 and "ttl_ms" in err


def test_a_script_works_a_queue(cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    ns = f"cli-{uuid.uuid4().hex[:6]}"
    code, task = run_json(cluster, capsys, "task", "add", ns, "--payload", '{"n": 1}', "--priority", "2")
    assert code == 0 and task["payload"] == {"n": 1} and task["state"] == "ready"
    code, claimed = run_json(cluster, capsys, "task", "claim", ns, "--lease-ms", "10000", "--worker", "sh")
    assert code == 0 and claimed["id"] == task["id"] and claimed["worker"] == "sh"
    code, out, _ = run_cli(cluster, capsys, "task", "claim", ns, "--lease-ms", "10000")
    assert code == 1
    fence = str(claimed["fence"])
    code, out, _ = run_cli(cluster, capsys, "task", "complete", ns, task["id"], "--fence", fence, "--result", "42")
    assert code == 0 and "done" in out
    code, _, err = run_cli(cluster, capsys, "task", "complete", ns, task["id"], "--fence", fence)
    assert code == 1 and "fenced" in err
    code, out, _ = run_cli(cluster, capsys, "task", "list", ns)
    assert code == 0 and task["id"] in out and "done" in out and "(0 open" in out
    code, page = run_json(cluster, capsys, "task", "list", ns, "--state", "done")
    assert [t["result"] for t in page["items"]] == [42]
    code, other = run_json(cluster, capsys, "task", "add", ns, "--payload", "x", "--max-attempts", "1")
    code, claimed = run_json(cluster, capsys, "task", "claim", ns, "--lease-ms", "10000")
    code, dead = run_json(cluster, capsys, "task", "fail", ns, other["id"], "--fence", str(claimed["fence"]),
                          "--error", "no")
    assert code == 0 and dead["state"] == "dead" and dead["last_error"] == "no"
