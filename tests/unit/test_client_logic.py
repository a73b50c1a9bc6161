"""The client's pure parts: placement hash, route table, retry rules, error mapping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftmem import routing
from raftmem.client import (
    HASH_NAME,
    ClientError,
    Conflict,
    ConnectionFailed,
    Indeterminate,
    InvalidRequest,
    NotFound,
    Overloaded,
    PreconditionFailed,
    RetryPolicy,
    RouteTable,
    Unavailable,
    error_from_response,
    may_retry,
    parse_token,
    shard_for,
)

NAMES = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-", min_size=1, max_size=40)


@given(NAMES, NAMES, st.integers(min_value=1, max_value=256))
def test_shard_for_matches_the_server(ns: str, mid: str, shards: int) -> None:
    assert shard_for(ns, mid, shards) == routing.shard_for(ns, mid, shards)


def test_hash_name_matches_the_server() -> None:
    assert HASH_NAME == routing.HASH_NAME


def _cluster(node: str, leaders: dict[int, str | None], term: int, hash_name: str = HASH_NAME) -> dict[str, object]:
    return {
        "shard_count": 3,
        "hash": hash_name,
        "node": node,
        "nodes": [{"id": n, "url": f"http://{n}:1/"} for n in ("n1", "n2", "n3")],
        "shards": [{"shard": s, "leader": leader, "term": term} for s, leader in leaders.items()],
    }


def test_route_table_keeps_the_leader_of_the_highest_term() -> None:
    table = RouteTable()
    table.merge(_cluster("n1", {0: "n1", 1: None, 2: "n3"}, term=2))
    assert table.missing_leaders() == [1]
    table.merge(_cluster("n2", {0: "n2", 1: "n2", 2: "n3"}, term=1))
    assert table.leaders == {0: "n1", 1: "n2", 2: "n3"}
    assert table.leader_url(0) == "http://n1:1"  # trailing slash dropped
    table.merge(_cluster("n3", {0: "n3"}, term=3))
    assert table.leaders[0] == "n3"


def test_route_table_learns_and_forgets() -> None:
    table = RouteTable()
    table.merge(_cluster("n1", {0: "n1"}, term=1))
    table.learn_leader(0, "n2")
    assert table.leader_url(0) == "http://n2:1"
    table.learn_leader(0, "stranger")  # not a known node: ignored
    assert table.leaders[0] == "n2"
    table.forget_leader(0)
    assert table.leader_url(0) is None


def test_unknown_hash_disables_routing() -> None:
    table = RouteTable()
    table.merge(_cluster("n1", {0: "n1"}, term=1, hash_name="xxhash(ns/id)"))
    assert table.shard("ns", "id") is None


def test_merge_refuses_an_answer_without_shards() -> None:
    with pytest.raises(ValueError):
        RouteTable().merge({"nodes": []})


def test_retry_policy_is_validated() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(attempts_max=0)
    with pytest.raises(ValueError):
        RetryPolicy(deadline_s=0)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_initial_s=2, backoff_max_s=1)


def test_backoff_grows_to_a_cap_and_honours_retry_after_up_to_a_cap() -> None:
    policy = RetryPolicy(backoff_initial_s=0.1, backoff_max_s=0.4, retry_after_max_s=0.5)
    plain = Unavailable("x")
    assert policy.delay_s(0, plain, 0.999) == pytest.approx(0.1, abs=1e-3)
    assert policy.delay_s(0, plain, 0.0) == pytest.approx(0.05)
    assert policy.delay_s(5, plain, 0.999) == pytest.approx(0.4, abs=1e-3)
    assert policy.delay_s(0, Unavailable("x", retry_after_s=0.3), 0.0) == pytest.approx(0.3)
    assert policy.delay_s(0, Unavailable("x", retry_after_s=30), 0.0) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("error", "is_write", "keyed", "expected"),
    [
        (Unavailable("x", status=503), False, False, True),
        (Overloaded("x", status=429), False, False, True),
        (ConnectionFailed("x"), False, False, True),
        (NotFound("x", status=404), False, False, False),
        (Indeterminate("x", status=504), False, False, False),
        # A write without an Idempotency-Key is never retried, whatever happened.
        (Unavailable("x", status=503), True, False, False),
        (ConnectionFailed("x"), True, False, False),
        (Indeterminate("x"), True, False, False),
        # With one, a lost or indeterminate attempt is safe to repeat.
        (Unavailable("x", status=503), True, True, True),
        (Indeterminate("x"), True, True, True),
        (Indeterminate("x", status=504), True, True, True),
        (PreconditionFailed("x", status=412), True, True, False),
        (Conflict("x", status=409), True, True, False),
        (ClientError("x", status=500), True, True, False),
    ],
)
def test_may_retry(error: ClientError, is_write: bool, keyed: bool, expected: bool) -> None:
    assert may_retry(error, is_write, keyed) is expected


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (400, {"error": {"code": "invalid_request", "message": "m"}}, InvalidRequest, "invalid_request"),
        (413, {"error": {"code": "payload_too_large", "message": "m"}}, InvalidRequest, "payload_too_large"),
        (404, {"error": {"code": "not_found", "message": "m"}}, NotFound, "not_found"),
        (409, {"error": {"code": "idempotency_key_reused", "message": "m"}}, Conflict, "idempotency_key_reused"),
        (412, {"error": {"code": "precondition_failed", "message": "m"}}, PreconditionFailed, "precondition_failed"),
        (429, {"error": {"code": "overloaded", "message": "m"}}, Overloaded, "overloaded"),
        (503, {"error": {"code": "no_leader", "message": "m"}}, Unavailable, "no_leader"),
        (504, {"error": {"code": "indeterminate", "message": "m"}, "indeterminate": True}, Indeterminate, "indeterminate"),
        (500, {"error": {"code": "internal", "message": "m"}, "indeterminate": True}, Indeterminate, "internal"),
        (502, "not json", ClientError, "error"),
        (401, None, ClientError, "error"),
    ],
)
def test_error_from_response(status: int, body: object, cls: type[ClientError], code: str) -> None:
    error = error_from_response(status, body, {})
    assert type(error) is cls
    assert (error.status, error.code, error.body) == (status, code, body)


def test_retry_after_is_parsed() -> None:
    assert error_from_response(503, None, {"Retry-After": "2"}).retry_after_s == 2.0
    assert error_from_response(503, None, {"Retry-After": "soon"}).retry_after_s is None


def test_parse_token() -> None:
    assert parse_token("5:1207") == (5, 1207)
    assert parse_token("5") is None
    assert parse_token("a:b") is None


def test_idempotency_keys_are_time_ordered_and_match_the_server() -> None:
    from raftmem.client import _new_key
    from raftmem.service import TIME_KEY_RE

    keys = [_new_key() for _ in range(50)]
    assert all(TIME_KEY_RE.match(k) for k in keys)  # the server derives time-ordered ids from them
    assert [k[:13] for k in keys] == sorted(k[:13] for k in keys)
    assert len(set(keys)) == len(keys)
