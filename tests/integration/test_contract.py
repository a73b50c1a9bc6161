"""The API contract, checked from outside against a real 3-node cluster.

schemathesis reads /openapi.json from a node, generates requests from it (every
phase: examples, coverage, fuzzing, and the stateful phase that chains the
answers of one operation into the next) and checks every answer against the
document with all of its checks: no 5xx, only documented statuses, headers and
bodies that match their schemas, every request the document allows accepted,
every request it forbids refused with a 4xx. The document is built from the
definitions the server validates with (raftmem.validation), so a finding is a
server bug or a rule stated twice; both are fixed, not excluded.

Budget: `make test` runs RAFTMEM_CONTRACT_EXAMPLES examples per operation with
a fixed seed; `make fuzz` sets a larger budget (examples and a time limit) and
another seed when asked. The two operations schemathesis cannot drive
(membership changes and restore, see schemathesis.toml) are called here with
real values, and their answers are checked against the same document.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest

from .cluster import REPO, Cluster, free_port_block

EXAMPLES = int(os.environ.get("RAFTMEM_CONTRACT_EXAMPLES", "8"))
SEED = int(os.environ.get("RAFTMEM_CONTRACT_SEED", "18"))
# make fuzz: a time budget (seconds) over which fuzzing and the stateful phase repeat.
MAX_TIME_S = os.environ.get("RAFTMEM_CONTRACT_MAX_TIME_S")
RUN_TIMEOUT_S = float(os.environ.get("RAFTMEM_CONTRACT_TIMEOUT_S", "420"))
SHARDS = 4
# Checks left out of `--checks all`, each with its reason. Empty: every check runs.
EXCLUDED_CHECKS: dict[str, str] = {}
CONFIG = Path(__file__).with_name("schemathesis.toml")


# Waits (a lock's or a claim's wait_ms) bounded at 2 s: the document states the
# config's bound, so generated requests wait at most that, within schemathesis's
# response time limit (10 s) and request timeout.
CLUSTER_OPTIONS: dict[str, Any] = {"shards": SHARDS, "coordination": {"wait_ms_max": 2000, "waiter_poll_ms": 100}}


@pytest.fixture(scope="module")
def contract_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("contract"), **CLUSTER_OPTIONS)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


def _document(cluster: Cluster) -> dict[str, Any]:
    status, _, document = cluster.request("n1", "GET", "/openapi.json")
    assert status == 200
    return document


def _conforms(document: dict[str, Any], method: str, path: str, status: int, body: Any) -> None:
    """The answer `status`, `body` to `method path` is one the document gives, with its schema."""
    responses = document["paths"][path][method.lower()]["responses"]
    assert str(status) in responses, f"{method} {path}: {status} is not documented ({sorted(responses)})"
    content = responses[str(status)].get("content", {}).get("application/json")
    if content is not None:
        schema = {**content["schema"], "components": document["components"]}
        jsonschema_rs.Draft202012Validator(schema).validate(body)


def _failures(junit: Path) -> list[str]:
    if not junit.exists():
        return [f"no JUnit report at {junit}"]
    out = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        for bad in [*case.findall("failure"), *case.findall("error")]:
            text = (bad.get("message") or "") + "\n" + (bad.text or "")
            out.append(f"{case.get('name')}: {text.strip()[:1500]}")
    return out


@pytest.mark.timeout(RUN_TIMEOUT_S + 60)
def test_schemathesis_finds_nothing_against_a_real_cluster(contract_cluster: Cluster, tmp_path: Path) -> None:
    """Every phase and every check (EXCLUDED_CHECKS: none) over every public
    operation: 0 failures, 0 errors."""
    url = f"http://127.0.0.1:{contract_cluster.http['n1']}"
    junit = tmp_path / "junit.xml"
    command = [
        str(Path(sys.executable).with_name("schemathesis")), "--config-file", str(CONFIG), "--no-color",
        "run", f"{url}/openapi.json",
        "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(EXAMPLES), "--seed", str(SEED), "--workers", "1",
        "--report", "junit", "--report-junit-path", str(junit),
    ]
    if EXCLUDED_CHECKS:
        command += ["--exclude-checks", ",".join(EXCLUDED_CHECKS)]
    if MAX_TIME_S:
        command += ["--max-time", MAX_TIME_S]
    env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.integration.contract_hooks",
           "RAFTMEM_CONTRACT_SHARDS": str(SHARDS), "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    run = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    took_s = time.monotonic() - started
    failures = _failures(junit)
    summary = "\n".join(run.stdout.splitlines()[-40:])
    code = run.returncode
    assert code == 0 and not failures, (
        f"schemathesis (seed {SEED}, {EXAMPLES} examples, {took_s:.0f} s) exited {code} with "
        f"{len(failures)} failure(s):\n" + "\n\n".join(failures[:20]) + f"\n--- its summary:\n{summary}\n"
        f"{run.stderr[-2000:]}")
    print(f"schemathesis: seed {SEED}, {EXAMPLES} examples per operation, {took_s:.0f} s\n{summary}")


def test_membership_answers_match_the_document(contract_cluster: Cluster) -> None:
    """The membership changes schemathesis leaves out, with real values: a node
    added to the table (it holds nothing until a rebalance), removed again,
    and the refusals (already a member, not a member, below the replication
    factor, a bad spec), each answer as the document says."""
    c, document = contract_cluster, _document(contract_cluster)
    status, _, body = c.request("n1", "GET", "/v1/admin/members")
    _conforms(document, "GET", "/v1/admin/members", status, body)
    assert status == 200
    (http_port,), (raft_base,) = free_port_block(1, SHARDS)
    spec = {"id": "n9", "host": "127.0.0.1", "http_port": http_port, "raft_port_base": raft_base}
    status, _, body = c.request("n1", "POST", "/v1/admin/members", spec)
    _conforms(document, "POST", "/v1/admin/members", status, body)
    assert status == 200 and "n9" in {n["id"] for n in body["table"]["nodes"]}, body
    status, _, body = c.request("n2", "POST", "/v1/admin/members", spec)
    _conforms(document, "POST", "/v1/admin/members", status, body)
    assert status == 409, body
    status, _, body = c.request("n2", "DELETE", "/v1/admin/members/n9")
    _conforms(document, "DELETE", "/v1/admin/members/{node}", status, body)
    assert status == 200 and "n9" not in {n["id"] for n in body["table"]["nodes"]}, body
    for path, expected in (("/v1/admin/members/n9", 404), ("/v1/admin/members/n1", 409)):
        status, _, body = c.request("n3", "DELETE", path)
        _conforms(document, "DELETE", "/v1/admin/members/{node}", status, body)
        assert status == expected, body
    status, _, body = c.request("n1", "POST", "/v1/admin/members", {**spec, "http_port": 0})
    _conforms(document, "POST", "/v1/admin/members", status, body)
    assert status == 400, body


def test_restore_answers_match_the_document(contract_cluster: Cluster) -> None:
    """A backup restored (the one operation whose body JSON Schema cannot
    describe) and generated bytes refused, as the document says."""
    c, document = contract_cluster, _document(contract_cluster)
    status, _, _ = c.request("n1", "PUT", "/v1/memories/contract/restored", {"content": "kept"})
    assert status in (200, 201)
    conn = c.connection("n2", 30)
    try:
        conn.request("GET", "/v1/admin/backup")
        resp = conn.getresponse()
        backup = resp.read()
        assert resp.status == 200 and resp.getheader("Content-Disposition"), resp.status
    finally:
        conn.close()
    octets = {"Content-Type": "application/octet-stream"}
    status, _, body = c.request("n3", "POST", "/v1/admin/restore", raw=backup, headers=octets, timeout_s=60)
    _conforms(document, "POST", "/v1/admin/restore", status, body)
    assert status == 200 and body["restored"] >= 1, body
    status, _, body = c.request("n3", "POST", "/v1/admin/restore", raw=b"not a backup", headers=octets)
    _conforms(document, "POST", "/v1/admin/restore", status, body)
    assert status == 400, body
    status, _, body = c.request("n1", "GET", "/v1/memories/contract/restored")
    _conforms(document, "GET", "/v1/memories/{namespace}/{id}", status, body)
    assert status == 200 and body["content"] == "kept", body
