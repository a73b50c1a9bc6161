"""The OpenAPI document and the server agree, without a cluster.

- Every public route the app registers is described, and every described
  operation is served (raftmem.api.ROUTES against openapi.build).
- Each rule raftmem.validation states as a check and as a JSON Schema gives
  the same verdict on the same value: hypothesis draws values that match the
  schema's pattern and values that do not, and asks both. The schema is
  evaluated as OpenAPI clients evaluate it (ECMA-262 regular expressions, where
  "$" does not match before a final newline: jsonschema_rs, schemathesis's own).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import jsonschema_rs
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from raftmem import openapi
from raftmem import validation as v
from raftmem.api import ROUTES, add_routes
from raftmem.auth import INTERNAL_PREFIX
from raftmem.config import LimitsConfig, embedded_default
from raftmem.errors import InvalidRequest

METHODS = ("get", "put", "post", "delete", "patch")
LIMITS = LimitsConfig()
SHARDS = 4


class _Handlers:
    """Any Api method name, as a handler (the routes only)."""

    def __getattr__(self, _name: str) -> Callable[[web.Request], Any]:
        async def handler(_request: web.Request) -> web.Response:
            return web.Response()

        return handler


def _served() -> set[tuple[str, str]]:
    app = web.Application()
    add_routes(app.router, _Handlers())
    out = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if route.method in ("HEAD",) or path.startswith(INTERNAL_PREFIX):
            continue
        out.add((route.method, path))
    return out


def _template(path: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")


def test_every_public_route_is_described_and_every_described_operation_is_served() -> None:
    document = openapi.build(embedded_default())
    described = {(method.upper(), path) for path, item in document["paths"].items() for method in item
                 if method in METHODS}
    served = _served()
    assert len(ROUTES) > len(served)  # the internal ones are there, and left out of both
    undescribed = {(m, p) for m, p in served
                   if not any(m == dm and _template(p).match(dp) for dm, dp in described)}
    assert not undescribed, f"served but not in /openapi.json: {sorted(undescribed)}"
    unserved = {(m, p) for m, p in described if not any(m == sm and _template(sp).match(p) for sm, sp in served)}
    assert not unserved, f"in /openapi.json but not served: {sorted(unserved)}"
    assert not any(p.startswith(INTERNAL_PREFIX) for _, p in described)


def _accepts(check: Callable[[Any], Any], value: Any) -> bool:
    try:
        check(value)
    except InvalidRequest:
        return False
    return True


def _agree(schema: dict[str, Any], check: Callable[[Any], Any], value: Any) -> None:
    by_schema = jsonschema_rs.Draft202012Validator(schema).is_valid(value)
    by_server = _accepts(check, value)
    assert by_schema == by_server, f"{value!r}: the document says {by_schema}, the server {by_server}"


def _strings(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """Values that match the schema's pattern (mostly valid), mixed with any text
    (mostly not). Header values come without surrounding whitespace (HTTP drops it)."""
    matching = st.from_regex(schema["pattern"], fullmatch=True) if "pattern" in schema else st.nothing()
    return st.one_of(matching, st.text(max_size=80), st.text(alphabet="0123456789:,/\"*.-aZ_", max_size=40))


NAME = v.name_schema(32)
LABEL = v.label_schema(32)
TOKENS = v.tokens_schema(SHARDS)
VERSION = v.version_schema()
FENCE = v.if_fence_schema(LIMITS)
LEVEL = v.consistency_schema()


@settings(max_examples=300, deadline=None)
@given(_strings(NAME))
def test_names_agree(value: str) -> None:
    _agree(NAME, lambda x: v.name("namespace", x, 32), value)


@settings(max_examples=300, deadline=None)
@given(_strings(LABEL))
def test_labels_agree(value: str) -> None:
    _agree(LABEL, lambda x: v.label("agent_id", x, 32), value)


@settings(max_examples=300, deadline=None)
@given(_strings(TOKENS))
def test_tokens_agree(value: str) -> None:
    _agree(TOKENS, lambda x: v.tokens(x, SHARDS), value)


@settings(max_examples=300, deadline=None)
@given(_strings(VERSION).filter(lambda s: s == s.strip()))
def test_versions_agree(value: str) -> None:
    _agree(VERSION, lambda x: v.version_header("If-Match", x), value)


@settings(max_examples=300, deadline=None)
@given(_strings(FENCE).filter(lambda s: s == s.strip()))
def test_fences_agree(value: str) -> None:
    _agree(FENCE, lambda x: v.if_fence(x, LIMITS), value)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.sampled_from(LEVEL["enum"]), st.text(max_size=20)))
def test_levels_agree(value: str) -> None:
    _agree(LEVEL, v.consistency, value)


_JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**9), st.floats(allow_nan=False,
                       allow_infinity=False), st.text(max_size=8))
_JSON = st.recursive(_JSON_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                         st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                     max_leaves=6)
_FIELD_VALUES = {
    "agent_id": st.one_of(_strings(LABEL), _JSON),
    "kind": st.one_of(_strings(LABEL), _JSON),
    "content": _JSON,
    "tags": st.one_of(st.lists(_strings(LABEL), max_size=LIMITS.tags_max + 1), _JSON),
    "metadata": _JSON,
    "ttl_s": st.one_of(st.floats(0, 2 * v.TTL_S_MAX), st.integers(-5, 2 * v.TTL_S_MAX), _JSON),
    "ttl_refresh_on_read": st.one_of(st.booleans(), _JSON),
    "actor": st.one_of(_strings(LABEL), _JSON),
    "embedding": st.one_of(st.lists(st.floats(-1e39, 1e39, allow_nan=False), min_size=0, max_size=4), _JSON),
}


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({}, optional={**_FIELD_VALUES, "unknown": _JSON}))
def test_memory_bodies_agree(body: dict[str, Any]) -> None:
    """A memory as written: the document's MemoryWrite and memory_fields."""
    _agree(v.memory_schema(LIMITS), lambda x: v.memory_fields(x, LIMITS), body)


def test_every_link_names_an_operation_of_the_document() -> None:
    document = openapi.build(embedded_default())
    links = [(name, link) for item in document["paths"].values() for op in item.values() if isinstance(op, dict)
             for answer in op.get("responses", {}).values() for name, link in answer.get("links", {}).items()]
    assert links
    for name, link in links:
        _, paths, path, method = link["operationRef"].split("/")
        assert paths == "paths", name
        operation = document["paths"][path.replace("~1", "/").replace("~0", "~")][method]
        declared = {p["name"] for p in operation.get("parameters", [])}
        assert set(link["parameters"]) <= declared, name
