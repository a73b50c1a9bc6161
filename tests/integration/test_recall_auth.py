"""Recall with authentication on: a search of one namespace needs that
namespace; a namespace-prefix search and the namespace list answer only from
the namespaces the token holds (control: an unscoped token sees them all);
the internal search and barrier calls between nodes carry the cluster token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from raftmem.auth import need_for

from .cluster import Cluster

CLUSTER_TOKEN = "cluster-secret-0123456789"
SCOPED = "scoped-reader-0123456789"
ADMIN = "admin-token-0123456789"
AUTH = {
    "cluster_token": CLUSTER_TOKEN,
    "tokens": [
        {"name": "scoped", "token": SCOPED, "role": "read", "namespaces": ["team-a", "team-a.mine"]},
        {"name": "ops", "token": ADMIN, "role": "admin"},
    ],
}


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("recall-auth"), auth=AUTH, token=ADMIN)
    try:
        c.start_all()
        for ns in ("team-a", "team-a.mine", "team-a.theirs", "team-b"):
            status, _, body = c.request("n1", "PUT", f"/v1/memories/{ns}/m", {"content": "secret plans"})
            assert status in (200, 201), body
        yield c
    finally:
        c.stop_all()


def found(c: Cluster, token: str, body: dict[str, object]) -> tuple[int, list[str]]:
    status, _, answer = c.request("n2", "POST", "/v1/search", {**body, "fresh": True},
                                  headers={"Authorization": f"Bearer {token}"})
    return status, sorted(it["namespace"] for it in answer.get("items", []))


def test_a_prefix_search_answers_only_from_the_tokens_namespaces(secured: Cluster) -> None:
    assert found(secured, SCOPED, {"namespace_prefix": "team-a", "query": "secret"}) == (
        200, ["team-a", "team-a.mine"])
    # Control: a token for every namespace sees the third one too.
    assert found(secured, ADMIN, {"namespace_prefix": "team-a", "query": "secret"}) == (
        200, ["team-a", "team-a.mine", "team-a.theirs"])
    assert found(secured, SCOPED, {"namespace": "team-a.mine", "query": "secret"}) == (200, ["team-a.mine"])
    assert found(secured, SCOPED, {"namespace": "team-a.theirs", "query": "secret"})[0] == 403
    assert found(secured, SCOPED, {"namespace_prefix": "team-b", "query": "secret"}) == (200, [])


def test_the_namespace_list_is_scoped_too(secured: Cluster) -> None:
    status, _, body = secured.request("n3", "GET", "/v1/namespaces", headers={"Authorization": f"Bearer {SCOPED}"})
    assert status == 200 and body["namespaces"] == ["team-a", "team-a.mine"]
    status, _, body = secured.request("n3", "GET", "/v1/namespaces")
    assert body["namespaces"] == ["team-a", "team-a.mine", "team-a.theirs", "team-b"]


def test_what_a_search_needs() -> None:
    assert need_for("POST", "/v1/search", {}, b'{"namespace": "x"}').namespaces == frozenset({"x"})
    prefix = need_for("POST", "/v1/search", {}, b'{"namespace_prefix": "x"}')
    assert prefix is not None and prefix.role == "read" and not prefix.namespaces
    assert need_for("POST", "/v1/admin/reindex", {}).role == "admin"  # type: ignore[union-attr]
    assert need_for("GET", "/v1/internal/shards/1/barrier", {}).internal  # type: ignore[union-attr]
