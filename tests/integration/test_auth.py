"""Authentication on real nodes: every request checked at the node it reaches,
node-to-node hops (forwarding to leaders, list fan-out) carried by the cluster
token, and the client, the CLI and the status command passing a token. The
rest of the suite runs the same requests with auth off and sees them succeed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli import main as cli_main
from raftmem.client import Client, ClientError

from .cluster import Cluster

CLUSTER_TOKEN = "cluster-secret-0123456789"
READER = "reader-token-0123456789"
TEAM_A = "team-a-writer-0123456789"
ADMIN = "admin-token-0123456789"
AUTH = {
    "cluster_token": CLUSTER_TOKEN,
    "tokens": [
        {"name": "reader", "token": READER, "role": "read"},
        {"name": "team-a", "token": TEAM_A, "role": "write", "namespaces": ["team-a"]},
        {"name": "ops", "token": ADMIN, "role": "admin"},
    ],
}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    # The harness's own calls (readiness, cluster views) go with the admin token.
    c = Cluster(tmp_path_factory.mktemp("auth"), auth=AUTH, token=ADMIN)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


def as_(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {"Authorization": ""}


def test_without_a_token_only_probes_answer(secured: Cluster) -> None:
    status, headers, body = secured.request("n1", "GET", "/v1/memories/team-a/x", headers=as_(None))
    assert status == 401 and body["error"]["code"] == "unauthorized"
    assert headers["WWW-Authenticate"].startswith("Bearer")
    status, _, body = secured.request("n2", "PUT", "/v1/memories/team-a/x", {"content": 1},
                                      headers=as_("not-a-real-token-at-all"))
    assert status == 401 and body["error"]["code"] == "unauthorized"
    for path in ("/healthz", "/readyz", "/openapi.json"):
        status, _, _ = secured.request("n3", "GET", path, headers=as_(None))
        assert status == 200, path
    # Nothing was written by the refused requests.
    status, _, _ = secured.request("n1", "GET", "/v1/memories/team-a/x?consistency=linearizable")
    assert status == 404


def test_roles_and_namespaces_through_every_node(secured: Cluster) -> None:
    # A write through each node: most are forwarded to the shard's leader, a hop
    # the cluster token carries.
    for i, node in enumerate(secured.node_ids):
        status, _, body = secured.request(node, "PUT", f"/v1/memories/team-a/m{i}", {"content": i},
                                          headers=as_(TEAM_A))
        assert status == 201, body
    status, _, body = secured.request("n2", "PUT", "/v1/memories/team-b/m", {"content": 1}, headers=as_(TEAM_A))
    assert status == 403 and body["error"]["code"] == "forbidden"
    status, _, body = secured.request("n3", "PUT", "/v1/memories/team-a/m9", {"content": 1}, headers=as_(READER))
    assert status == 403
    # A list gathers every shard through the other nodes.
    status, _, page = secured.request("n1", "GET", "/v1/memories/team-a?consistency=linearizable",
                                      headers=as_(READER))
    assert status == 200 and sorted(m["id"] for m in page["items"]) == ["m0", "m1", "m2"]
    batch = {"ops": [{"op": "put", "namespace": "team-a", "id": "b1", "body": {"content": 1}},
                     {"op": "put", "namespace": "team-b", "id": "b2", "body": {"content": 2}}]}
    status, _, _ = secured.request("n1", "POST", "/v1/batch", batch, headers=as_(TEAM_A))
    assert status == 403
    status, _, body = secured.request("n1", "POST", "/v1/batch", batch, headers=as_(ADMIN))
    assert status == 200 and [r["status"] for r in body["results"]] == [201, 201]
    # Admin endpoints want an admin; internal ones, a node.
    assert secured.request("n2", "GET", "/v1/admin/members", headers=as_(TEAM_A))[0] == 403
    assert secured.request("n2", "GET", "/v1/admin/members", headers=as_(ADMIN))[0] == 200
    status, _, _ = secured.request("n2", "POST", "/v1/internal/members", {"nodes": []}, headers=as_(ADMIN))
    assert status == 403


def test_client_cli_and_status_pass_the_token(secured: Cluster, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    urls = [f"http://127.0.0.1:{secured.http[n]}" for n in secured.node_ids]
    with Client(urls, token=TEAM_A) as client:
        written = client.put("team-a", "via-client", {"content": "hi"})
        assert client.get("team-a", "via-client", consistency="linearizable")["version"] == written["version"]
    with Client(urls) as client, pytest.raises(ClientError) as refused:
        client.get("team-a", "via-client")
    assert refused.value.status == 401
    url = ",".join(urls)
    assert cli_main.main(["--url", url, "--token", TEAM_A, "--json", "put", "team-a", "via-cli",
                          "--content", "1"]) == 0
    capsys.readouterr()
    monkeypatch.delenv("RAFTMEM_TOKEN", raising=False)
    assert cli_main.main(["--url", url, "--json", "get", "team-a", "via-cli"]) == 1
    assert "401" in capsys.readouterr().err
    monkeypatch.setenv("RAFTMEM_TOKEN", READER)
    assert cli_main.main(["--url", url, "--json", "get", "team-a", "via-cli"]) == 0
    assert json.loads(capsys.readouterr().out)["content"] == 1
    assert cli_main.main(["--url", url, "--token", ADMIN, "--json", "status"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"]
    # From a file (kept out of `ps`): it wins over the environment's token.
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN + "\n")
    assert cli_main.main(["--url", url, "--token-file", str(token_file), "--json", "member", "list"]) == 0
    capsys.readouterr()
    assert cli_main.main(["--url", url, "--json", "member", "list"]) == 1  # the reader's token from the env
    assert "403" in capsys.readouterr().err
    monkeypatch.setenv("RAFTMEM_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(SystemExit):
        cli_main.main(["--url", url, "--json", "get", "team-a", "via-cli"])
    assert "--token-file" in capsys.readouterr().err
    monkeypatch.delenv("RAFTMEM_TOKEN_FILE")
    # A backup gathers every shard's snapshot from its leader: node-to-node calls.
    backup = tmp_path / "all.backup"
    assert cli_main.main(["--url", url, "--token", READER, "snapshot", "save", str(backup)]) == 1
    assert cli_main.main(["--url", url, "--token", ADMIN, "snapshot", "save", str(backup)]) == 0
    assert backup.stat().st_size > 0
