"""Search filters: the server's evaluator against a reference written here
from the documented rules (hypothesis-generated filters and records), parse
errors, and the pushdown's promise (a superset of the matches)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftmem.errors import InvalidRequest
from raftmem.indexing import filters

AGENTS = ["a1", "a2", "a3"]
KINDS = ["episodic", "fact", None]
TAGS = ["x", "y", "z", "critical"]
WORDS = ["deploy", "cache", "alpha", ""]

records = st.fixed_dictionaries({
    "namespace": st.sampled_from(["team-a", "team-b"]),
    "id": st.text("abc", min_size=1, max_size=3),
    "agent_id": st.sampled_from(AGENTS + [None]),
    "kind": st.sampled_from(KINDS),
    "tags": st.lists(st.sampled_from(TAGS), unique=True, max_size=3),
    "version": st.integers(1, 5),
    "updated_at": st.integers(0, 100),
    "content": st.one_of(
        st.sampled_from(WORDS),
        st.fixed_dictionaries({"n": st.one_of(st.integers(-3, 3), st.floats(-3, 3), st.booleans(), st.none()),
                               "s": st.sampled_from(WORDS), "l": st.lists(st.integers(0, 3), max_size=3)}),
    ),
    "metadata": st.dictionaries(st.sampled_from(["p", "q"]), st.one_of(st.integers(0, 3), st.sampled_from(WORDS)),
                                max_size=2),
})

PATHS = ["agent_id", "kind", "tags", "version", "updated_at", "content", "content.n", "content.s", "content.l",
         "metadata.p", "metadata.q", "content.missing"]
SCALARS = st.one_of(st.integers(-3, 5), st.sampled_from(WORDS + AGENTS + TAGS + ["episodic", "fact"]),
                    st.booleans(), st.none(), st.floats(-3, 3, allow_nan=False))


def comparisons() -> st.SearchStrategy[dict[str, Any]]:
    op = st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$contains"])

    def build(path: str, o: str, value: Any, values: list[Any]) -> dict[str, Any]:
        if o in ("$in", "$nin"):
            return {path: {o: values}}
        return {path: {o: value}}

    plain = st.builds(lambda p, v: {p: v}, st.sampled_from(PATHS), SCALARS)
    return st.one_of(plain, st.builds(build, st.sampled_from(PATHS), op, SCALARS, st.lists(SCALARS, max_size=3)))


filters_strategy = st.recursive(
    comparisons(),
    lambda inner: st.one_of(
        st.builds(lambda xs: {"$and": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda xs: {"$or": xs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda x: {"$not": x}, inner),
    ),
    max_leaves=6,
)


# -- the reference: the docstring's rules, written again ------------------------------
_MISSING = object()


def ref_get(rec: dict[str, Any], path: str) -> Any:
    parts = path.split(".")
    value: Any = rec.get(parts[0], _MISSING)
    for p in parts[1:]:
        value = value[p] if isinstance(value, dict) and p in value else _MISSING
    if parts[0] in ("agent_id", "kind") and value is None:
        return _MISSING
    return value


def ref_eq(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def ref_order(a: Any, b: Any, op: str) -> bool:
    num = all(isinstance(x, int | float) and not isinstance(x, bool) for x in (a, b))
    if not (num or (isinstance(a, str) and isinstance(b, str))):
        return False
    return {"$gt": a > b, "$gte": a >= b, "$lt": a < b, "$lte": a <= b}[op]


def ref_cmp(rec: dict[str, Any], path: str, op: str, operand: Any) -> bool:
    if op == "$ne":
        return not ref_cmp(rec, path, "$eq", operand)
    if op == "$nin":
        return not ref_cmp(rec, path, "$in", operand)
    value = ref_get(rec, path)
    if value is _MISSING:
        return False
    if path == "tags":
        if op in ("$eq", "$contains"):
            return operand in [t for t in value if ref_eq(t, operand)] or (op == "$eq" and value == operand
                                                                             and isinstance(operand, list))
        if op == "$in":
            return any(ref_eq(t, o) for t in value for o in operand)
        return any(ref_order(t, operand, op) for t in value)
    if op == "$eq":
        return ref_eq(value, operand) if not isinstance(value, list | dict) else value == operand
    if op == "$in":
        return any(ref_eq(value, o) for o in operand)
    if op == "$contains":
        if isinstance(value, list):
            return any(ref_eq(x, operand) for x in value)
        return isinstance(value, str) and isinstance(operand, str) and operand in value
    return ref_order(value, operand, op)


def ref_match(f: dict[str, Any], rec: dict[str, Any]) -> bool:
    for key, value in f.items():
        if key == "$and":
            ok = all(ref_match(x, rec) for x in value)
        elif key == "$or":
            ok = any(ref_match(x, rec) for x in value)
        elif key == "$not":
            ok = not ref_match(value, rec)
        elif isinstance(value, dict) and any(k.startswith("$") for k in value):
            ok = all(ref_cmp(rec, key, op, operand) for op, operand in value.items())
        else:
            ok = ref_cmp(rec, key, "$eq", value)
        if not ok:
            return False
    return True


@settings(max_examples=400, deadline=None)
@given(filters_strategy, st.lists(records, min_size=1, max_size=8))
def test_the_evaluator_agrees_with_the_reference(raw: dict[str, Any], recs: list[dict[str, Any]]) -> None:
    node = filters.parse(raw)
    for rec in recs:
        assert filters.matches(node, rec) == ref_match(raw, rec), (raw, rec)


@settings(max_examples=300, deadline=None)
@given(filters_strategy, st.lists(records, min_size=1, max_size=8))
def test_the_pushdown_keeps_every_match(raw: dict[str, Any], recs: list[dict[str, Any]]) -> None:
    node = filters.parse(raw)
    down = filters.pushdown(node)
    for rec in recs:
        if not filters.matches(node, rec):
            continue
        assert not down.agent_ids or rec["agent_id"] in down.agent_ids
        assert not down.kinds or rec["kind"] in down.kinds
        assert all(t in rec["tags"] for t in down.tags_all)
        assert not down.tags_any or any(t in rec["tags"] for t in down.tags_any)


def test_the_reference_is_not_trivial() -> None:
    """A control for the two tests above: the reference disagrees with a wrong
    evaluator (booleans taken for numbers, as Python's == does)."""
    rec = {"content": {"n": 1}, "tags": []}
    assert not ref_match({"content.n": True}, rec)
    assert rec["content"]["n"] == True  # noqa: E712 (the trap the evaluator must avoid)
    assert not filters.matches(filters.parse({"content.n": True}), rec)


@pytest.mark.parametrize("raw, words", [
    ({"kind": {"$regex": "x"}}, "unknown operator '$regex'"),
    ({"$xor": []}, "unknown operator '$xor'"),
    ({"nope": 1}, "unknown field 'nope'"),
    ({"agent_id.x": 1}, "has no sub-fields"),
    ({"$and": []}, "non-empty list"),
    ({"kind": {"$in": "x"}}, "must be a list"),
    ({"kind": {"$in": list(range(1001))}}, "more than 1000"),
    ({"content.a..b": 1}, "dot-separated"),
    ([1], "must be an object"),
])
def test_bad_filters_are_refused_with_a_reason(raw: Any, words: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        filters.parse(raw)
    assert words in e.value.message


def test_nesting_and_size_are_bounded() -> None:
    deep: dict[str, Any] = {"kind": "x"}
    for _ in range(filters.DEPTH_MAX):
        deep = {"$not": deep}
    with pytest.raises(InvalidRequest, match="nested deeper"):
        filters.parse(deep)
    filters.parse({"$not": {"$not": {"kind": "x"}}})
    with pytest.raises(InvalidRequest, match="more than 256 conditions"):
        filters.parse({"$or": [{"kind": str(i)} for i in range(300)]})
