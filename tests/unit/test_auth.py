"""Bearer-token authentication and role/namespace authorization, as a pure function
of the request (the integration test drives it through real nodes)."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import orjson
import pytest
import yaml

from raftmem.auth import Authenticator, need_for
from raftmem.config import LOCAL_3NODE_YAML, AuthConfig, ConfigError, parse
from raftmem.errors import Forbidden, Unauthorized

CLUSTER = "c" * 32
READER = "r" * 20
WRITER_A = "a" * 20
ADMIN = "z" * 20


def auth_config() -> AuthConfig:
    d = yaml.safe_load(LOCAL_3NODE_YAML)
    d["auth"] = {
        "cluster_token": CLUSTER,
        "tokens": [
            {"name": "reader", "token": READER, "role": "read"},
            {"name": "team-a", "token_sha256": hashlib.sha256(WRITER_A.encode()).hexdigest(), "role": "write",
             "namespaces": ["team-a"]},
            {"name": "ops", "token": ADMIN, "role": "admin"},
        ],
    }
    return parse(d).auth


def check(token: str | None, method: str, path: str, params: dict[str, str] | None = None, body: Any = None) -> str:
    raw = orjson.dumps(body) if body is not None else b""
    try:
        Authenticator(auth_config()).check(f"Bearer {token}" if token else None, method, path, params or {}, raw)
    except Unauthorized:
        return "401"
    except Forbidden:
        return "403"
    return "ok"


def test_open_paths_need_nothing() -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert check(None, "GET", path) == "ok"


def test_no_or_unknown_token_is_401() -> None:
    mem = ("GET", "/v1/memories/team-a/x", {"namespace": "team-a", "id": "x"})
    assert check(None, *mem) == "401"
    assert check("nope-nope-nope-nope", *mem) == "401"
    assert check(None, "GET", "/v1/cluster") == "401"
    assert check(None, "GET", "/v1/nothing") == "401"  # no probing of paths without a token
    with pytest.raises(Unauthorized):
        Authenticator(auth_config()).check(f"Basic {READER}", *mem)


def test_roles_and_namespaces() -> None:
    a = {"namespace": "team-a", "id": "x"}
    b = {"namespace": "team-b", "id": "x"}
    assert check(READER, "GET", "/v1/memories/team-a/x", a) == "ok"
    assert check(READER, "GET", "/v1/memories/team-b", {"namespace": "team-b"}) == "ok"
    assert check(READER, "PUT", "/v1/memories/team-a/x", a) == "403"
    assert check(WRITER_A, "PUT", "/v1/memories/team-a/x", a) == "ok"
    assert check(WRITER_A, "DELETE", "/v1/memories/team-a/x", a) == "ok"
    assert check(WRITER_A, "POST", "/v1/memories/team-a", {"namespace": "team-a"}) == "ok"
    assert check(WRITER_A, "GET", "/v1/memories/team-b/x", b) == "403"
    assert check(WRITER_A, "GET", "/v1/cluster") == "ok"  # topology: any role
    assert check(WRITER_A, "GET", "/v1/admin/members") == "403"
    assert check(ADMIN, "POST", "/v1/admin/members") == "ok"
    assert check(ADMIN, "PUT", "/v1/memories/team-b/x", b) == "ok"


def test_locks_and_tasks_need_write_to_change_and_read_to_look_in_their_namespace() -> None:
    lock = {"namespace": "team-a", "name": "deploy"}
    queue = {"namespace": "team-a"}
    task = {"namespace": "team-a", "id": "t1", "action": "complete"}
    for method, path, params in (("POST", "/v1/locks/team-a/deploy", lock),
                                 ("POST", "/v1/locks/team-a/deploy/renew", lock),
                                 ("DELETE", "/v1/locks/team-a/deploy", lock),
                                 ("POST", "/v1/tasks/team-a", queue), ("POST", "/v1/tasks/team-a/claim", queue),
                                 ("POST", "/v1/tasks/team-a/t1/complete", task)):
        assert check(READER, method, path, params) == "403", path
        assert check(WRITER_A, method, path, params) == "ok", path
        assert check(WRITER_A, method, path.replace("team-a", "team-b"), {**params, "namespace": "team-b"}) == "403"
    for path, params in (("/v1/locks/team-a/deploy", lock), ("/v1/tasks/team-a", queue),
                         ("/v1/tasks/team-a/t1", {"namespace": "team-a", "id": "t1"})):
        assert check(READER, "GET", path, params) == "ok"
        assert check(None, "GET", path, params) == "401"


def test_batches_are_judged_by_every_operation() -> None:
    reads = {"ops": [{"op": "get", "namespace": "team-a", "id": "x"}]}
    mixed = {"ops": [{"op": "get", "namespace": "team-a", "id": "x"}, {"op": "put", "namespace": "team-a", "id": "y"}]}
    across = {"ops": [{"op": "put", "namespace": "team-a", "id": "x"}, {"op": "put", "namespace": "team-b", "id": "y"}]}
    assert check(READER, "POST", "/v1/batch", body=reads) == "ok"
    assert check(READER, "POST", "/v1/batch", body=mixed) == "403"
    assert check(WRITER_A, "POST", "/v1/batch", body=mixed) == "ok"
    assert check(WRITER_A, "POST", "/v1/batch", body=across) == "403"
    assert check(READER, "POST", "/v1/batch", body={"ops": 5}) == "ok"  # the handler refuses it (400)


def test_many_watches_on_one_connection_are_judged_by_every_watch() -> None:
    mine = {"watches": [{"id": "a", "namespace": "team-a"}, {"id": "b", "namespace": "team-a", "tag": "t"}]}
    across = {"watches": [{"id": "a", "namespace": "team-a"}, {"id": "b", "namespace": "team-b"}]}
    unnamed = {"watches": [{"id": "a", "namespace": "team-a"}, {"id": "b", "namespace_prefix": "team-a"}]}
    assert check(WRITER_A, "POST", "/v1/watch", body=mine) == "ok"
    assert check(WRITER_A, "POST", "/v1/watch", body=across) == "403"
    assert check(WRITER_A, "POST", "/v1/watch", body=unnamed) == "403"  # a watch of any namespace
    assert check(READER, "POST", "/v1/watch", body=unnamed) == "ok"
    assert check(None, "POST", "/v1/watch", body=mine) == "401"
    assert check(READER, "POST", "/v1/watch", body={"watches": 5}) == "ok"  # the handler refuses it (400)


def test_internal_endpoints_take_the_cluster_token_only() -> None:
    path = "/v1/internal/members"
    assert check(ADMIN, "POST", path) == "403"
    assert check(CLUSTER, "POST", path) == "ok"
    assert check(CLUSTER, "PUT", "/v1/memories/team-b/x", {"namespace": "team-b"}) == "ok"


def test_cluster_token_rotation_accepts_the_next_one() -> None:
    d = yaml.safe_load(LOCAL_3NODE_YAML)
    d["auth"] = {"cluster_token": CLUSTER, "cluster_tokens_also_accepted": ["n" * 24]}
    rotating = Authenticator(parse(d).auth)
    internal = ("POST", "/v1/internal/members", {})
    rotating.check(f"Bearer {'n' * 24}", *internal)
    rotating.check(f"Bearer {CLUSTER}", *internal)
    assert rotating.cluster_headers() == {"Authorization": f"Bearer {CLUSTER}"}  # sends the current one
    with pytest.raises(Unauthorized):
        rotating.check(f"Bearer {'m' * 24}", *internal)


def test_off_by_default() -> None:
    off = Authenticator(AuthConfig())
    assert not off.enabled and off.cluster_headers() == {}
    off.check(None, "POST", "/v1/internal/members", {})
    assert need_for("GET", "/healthz", {}) is None
    assert Authenticator(auth_config()).cluster_headers() == {"Authorization": f"Bearer {CLUSTER}"}


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ({"cluster_token": "short"}, "at least 16"),
        ({"tokens": []}, "cluster_token"),
        ({"cluster_token": CLUSTER, "tokens": [{"name": "x", "role": "read"}]}, "exactly one of"),
        ({"cluster_token": CLUSTER, "tokens": [{"name": "x", "token": READER, "token_sha256": "00", "role": "read"}]},
         "exactly one of"),
        ({"cluster_token": CLUSTER, "tokens": [{"name": "x", "token_sha256": "xyz", "role": "read"}]}, "64 hex"),
        ({"cluster_token": CLUSTER, "tokens": [{"name": "x", "token": READER, "role": "root"}]}, "role"),
        ({"cluster_token": CLUSTER, "tokens": [{"name": "x", "token": ADMIN, "role": "admin",
                                                 "namespaces": ["a"]}]}, "whole cluster"),
        ({"cluster_token": CLUSTER, "tokens": [{"name": "x", "token": READER, "role": "read"},
                                                {"name": "y", "token": READER, "role": "write"}]}, "twice"),
        ({"cluster_token": CLUSTER, "tokens": [{"name": "x", "token": CLUSTER, "role": "read"}]}, "twice"),
        ({"cluster_token": CLUSTER, "surprise": 1}, "unknown key"),
        ({"cluster_token": CLUSTER + " "}, "no spaces"),
        ({"cluster_token": CLUSTER, "tokens": [{"name": "x", "token": "tab\there-0123456789", "role": "read"}]},
         "no spaces"),
        ({"cluster_token": CLUSTER, "cluster_tokens_also_accepted": ["short"]}, "at least 16"),
    ],
)
def test_auth_config_is_validated(auth: dict[str, Any], message: str) -> None:
    d = copy.deepcopy(yaml.safe_load(LOCAL_3NODE_YAML))
    d["auth"] = auth
    with pytest.raises(ConfigError, match=message):
        parse(d)
