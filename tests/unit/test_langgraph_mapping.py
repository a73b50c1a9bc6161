"""The LangGraph store's pure parts: how namespaces and keys become raftmem
names (reversibly, on label boundaries) and how a batch is split as LangGraph's
own stores run it."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langgraph.store.base import GetOp, InvalidNamespaceError, ListNamespacesOp, PutOp, SearchOp

from raftmem.integrations.langgraph import (
    _Core,
    _plan,
    item_key,
    memory_id,
    namespace_labels,
    namespace_name,
)

RAFTMEM_NAME = re.compile(r"[A-Za-z0-9._:-]+")  # raftmem/validation.py
labels = st.text(min_size=1, max_size=12).filter(lambda s: "." not in s and "\x00" not in s)
keys = st.text(min_size=1, max_size=20).filter(lambda s: "\x00" not in s)


def test_plain_labels_are_joined_by_dots_as_the_postgres_store_does() -> None:
    assert namespace_name(("users", "u-123", "memories")) == "users.u-123.memories"
    assert namespace_labels("users.u-123.memories") == ("users", "u-123", "memories")
    assert memory_id("pref.theme") == "pref.theme"


def test_other_characters_are_escaped_per_utf8_byte() -> None:
    assert namespace_name(("a b", "x@y.z"[:3])) == "a:20b.x:40y"
    assert namespace_name(("é",)) == ":C3:A9"
    assert namespace_name(("a:b",)) == "a:3Ab"  # the escape itself is escaped
    assert memory_id("a/b") == "a:2Fb"


@given(st.lists(labels, min_size=1, max_size=4))
def test_a_namespace_maps_to_a_raftmem_name_and_back(namespace: list[str]) -> None:
    name = namespace_name(namespace)
    assert RAFTMEM_NAME.fullmatch(name)
    assert name.count(".") == len(namespace) - 1  # label boundaries are the dots, and only they
    assert namespace_labels(name) == tuple(namespace)


@given(st.lists(labels, min_size=1, max_size=3), st.lists(labels, min_size=1, max_size=3))
def test_a_prefix_on_labels_is_a_prefix_on_label_boundaries_of_names(a: list[str], b: list[str]) -> None:
    """What a namespace-prefix search relies on: tuple prefix <=> dotted prefix."""
    name_a, name_b = namespace_name(a), namespace_name(b)
    on_boundary = name_b == name_a or name_b.startswith(name_a + ".")
    assert on_boundary == (tuple(b[: len(a)]) == tuple(a))


@given(keys)
def test_a_key_maps_to_a_memory_id_and_back(key: str) -> None:
    mid = memory_id(key)
    assert RAFTMEM_NAME.fullmatch(mid) and item_key(mid) == key


def test_names_written_by_others_read_as_they_are() -> None:
    assert namespace_labels("team:a.b") == ("team:a", "b") and item_key("x:zz:4") == "x:zz:4"


def test_an_empty_key_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty key"):
        memory_id("")


def test_a_batch_reads_before_it_writes_and_keeps_the_last_write_of_a_key() -> None:
    ops = [PutOp(("a",), "k", {"v": 1}), GetOp(("a",), "k"), PutOp(("a",), "j", {"v": 2}),
           PutOp(("a",), "k", None), SearchOp(("a",)), ListNamespacesOp()]
    plan = _plan(ops)
    assert plan.results == [None] * 6
    assert [i for i, _ in plan.gets] == [1] and [i for i, _ in plan.searches] == [4]
    assert [i for i, _ in plan.listings] == [5]
    assert [(k, op.value) for k, op in plan.puts.items()] == [((("a",), "j"), {"v": 2}), ((("a",), "k"), None)]
    writes = _Core("strong", None).write_ops(plan.puts)
    assert writes == [{"op": "put", "namespace": "a", "id": "j", "body": {"content": {"v": 2}}},
                      {"op": "delete", "namespace": "a", "id": "k"}]


def test_ops_with_bad_labels_are_refused_before_anything_is_sent() -> None:
    for op in (GetOp(("a.b",), "k"), PutOp(("",), "k", {}), SearchOp(("a.b",))):
        with pytest.raises(InvalidNamespaceError):
            _plan([op])


def test_ttl_in_minutes_becomes_seconds_and_session_reads_carry_the_stores_tokens() -> None:
    core = _Core("session", None)
    body = core.write_ops({(("a",), "k"): PutOp(("a",), "k", {}, ttl=1.5)})[0]["body"]
    assert body["ttl_s"] == 90.0 and body["ttl_refresh_on_read"] is True
    assert "after" not in core.get_ops([(0, GetOp(("a",), "k"))])[0]
    core.tokens.observe("2:40")
    core.tokens.observe("2:30")
    core.tokens.observe("0:7")
    assert core.get_ops([(0, GetOp(("a",), "k"))])[0] == {"op": "get", "namespace": "a", "id": "k",
                                                          "consistency": "session", "after": "0:7,2:40"}
    with pytest.raises(ValueError, match="consistency"):
        _Core("causal", None)
