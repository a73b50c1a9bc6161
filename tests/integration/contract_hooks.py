"""Schemathesis hooks for the contract test (tests/integration/test_contract.py),
loaded by `schemathesis run` through SCHEMATHESIS_HOOKS.

They touch only cases schemathesis means to be valid (positive), and only
where a rule relates a value to something JSON Schema cannot see: another
parameter, the path, or the store's state. Each such rule is also said in the
operation's description; without the hook, schemathesis would send a request
that the server rightly refuses with a 400 and report the document wrong.
Every rewrite keeps the value valid for its own schema.

- If-Fence (and a batch operation's if_fence) names a lock of the memory's
  namespace on the memory's shard: a relation to the path. The hook names the
  lock like the memory (`<ns>/<id>:<fence>`), which always lives on its shard.
- An atomic batch must fall on one shard (its keys hash to it; a create's id
  is the server's). The hook keeps the operations on the first one's shard.
- consistency=bounded needs max_staleness_ms (one parameter needs another).
- A namespace's embeddings share one dimension, its first embedding's (state):
  every generated embedding and search vector gets EMBEDDING_DIMS.
- A task's not_before is at most coordination.task_delay_ms_max ahead of the
  server's clock (time): a later one is moved to now (the test's nodes run on
  this machine's clock).
- A cursor must be one the server issued for that list or search (state): a
  made-up one is dropped (the stateful phase passes real ones along).

And two for the stateful phase, whose checks read a memory right after it was
written or deleted (ST302: a created resource is found; ST301: a deleted one
is not):
- A read at a level that may be stale (session or causal without the writer's
  tokens, bounded, eventual) may miss the write by design (DESIGN.md section
  3): in that phase, reads of memories are made at strong (linearizable kept).
  The coverage and fuzzing phases still send every level.
- A memory written with a TTL shorter than the chain of calls may expire
  before the next one: in that phase a TTL is at least STATEFUL_TTL_S_MIN.

And one for schemathesis itself: its coverage phase builds header values of
letters and digits only, so for a header whose pattern needs ':' or '/'
(X-Raftmem-Context, If-Fence, a quoted If-Match) it sends "0" as a valid
value. A positive case's header that does not match its own pattern is
dropped (absent is valid for each of them).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote

import orjson
import schemathesis
from schemathesis.generation import GenerationMode
from schemathesis.generation.meta import TestPhase

from raftmem import validation as v
from raftmem.config import LimitsConfig, canonical_level
from raftmem.shardhash import shard_for

SHARDS = int(os.environ.get("RAFTMEM_CONTRACT_SHARDS", "4"))
EMBEDDING_DIMS = 3
_FENCE = re.compile(r"^[^/]+/.+:([0-9]+)$")
_BOUNDED = ("bounded",)
_FRESH_LEVELS = ("strong", "linearizable")
STATEFUL_TTL_S_MIN = 600.0
_CURSOR_OPERATIONS = {("GET", "/v1/memories/{namespace}"), ("POST", "/v1/search")}
_HEADER_PATTERNS = {name: re.compile(schema["pattern"]) for name, schema in (
    ("X-Raftmem-Context", v.tokens_schema(SHARDS)), ("If-Fence", v.if_fence_schema(LimitsConfig())),
    ("If-Match", v.version_schema()))}


def _positive(case: Any) -> bool:
    meta = getattr(case, "meta", None)
    return meta is None or meta.generation.mode == GenerationMode.POSITIVE


def _fence_for(value: Any, namespace: str, lock: str) -> Any:
    """`value` renamed to a lock that guards `namespace/lock`, its fence kept."""
    match = _FENCE.match(value) if isinstance(value, str) else None
    return f"{namespace}/{lock}:{match.group(1)}" if match else value


def _sized(vector: Any) -> Any:
    if not isinstance(vector, list) or not vector:
        return vector
    return (vector * EMBEDDING_DIMS)[:EMBEDDING_DIMS]


def _memory_body(body: Any, stateful: bool) -> None:
    if not isinstance(body, dict):
        return
    if isinstance(body.get("embedding"), list):
        body["embedding"] = _sized(body["embedding"])
    ttl = body.get("ttl_s")
    if stateful and isinstance(ttl, int | float) and not isinstance(ttl, bool) and ttl < STATEFUL_TTL_S_MIN:
        body["ttl_s"] = STATEFUL_TTL_S_MIN


def _fresh_reads(query: Any, headers: Any) -> None:
    """A stateful read of a memory at strong, unless it asked for a fresh level."""
    for where, key in ((query, "consistency"), (headers, v.LEVEL_HEADER)):
        if where is not None and key in where and canonical_level(str(where[key])) not in _FRESH_LEVELS:
            where[key] = "strong"


def _one_shard(ops: list[Any]) -> list[Any]:
    keyed = [op for op in ops if isinstance(op, dict) and op.get("op") != "create" and "id" in op]
    if not keyed:
        return ops[:1]
    shard = shard_for(keyed[0]["namespace"], keyed[0]["id"], SHARDS)
    return [op for op in keyed if shard_for(op["namespace"], op["id"], SHARDS) == shard]


def _unique_watch_ids(watches: Any) -> None:
    """Watch ids are unique within a request (a rule JSON Schema cannot state
    for objects): a generated repeat gets a suffix."""
    if not isinstance(watches, list):
        return
    taken: set[str] = set()
    for n, watch in enumerate(watches):
        if isinstance(watch, dict) and isinstance(watch.get("id"), str):
            if watch["id"] in taken:
                watch["id"] = f"{watch['id'][:100]}~{n}"
            taken.add(watch["id"])


@schemathesis.deserializer("application/x-ndjson")
def ndjson(_context: Any, response: Any) -> Any:
    """A watch's NDJSON answer, as the document describes it: each line one
    WatchEvent. schemathesis validates the first (the stream is cut after it);
    every line read must be JSON."""
    events = [orjson.loads(line) for line in response.content.splitlines() if line.strip()]
    if not events:
        raise ValueError("a watch stream without an event (the first, a progress event, is sent at once)")
    return events[0]


@schemathesis.hook
def map_case(context: Any, case: Any) -> Any:
    del context
    if not _positive(case):
        return case
    method, path = case.operation.method.upper(), case.operation.path
    meta = getattr(case, "meta", None)
    stateful = meta is not None and meta.phase.name == TestPhase.STATEFUL
    params = case.path_parameters or {}
    # Headers come as a case-insensitive mapping, not a dict.
    headers = case.headers if isinstance(case.headers, MutableMapping) else None
    query = case.query if isinstance(case.query, MutableMapping) else None
    for name, pattern in _HEADER_PATTERNS.items():
        if headers and name in headers and not (isinstance(headers[name], str) and pattern.search(headers[name])):
            del headers[name]
    if headers and "If-Fence" in headers and "namespace" in params:
        # A path parameter the stateful phase took from an answer comes percent-encoded.
        headers["If-Fence"] = _fence_for(headers["If-Fence"], unquote(params["namespace"]),
                                         unquote(params.get("id", "lock")))
    if path.startswith("/v1/memories/") and method in ("PUT", "POST"):
        _memory_body(case.body, stateful)
    if path == "/v1/batch" and isinstance(case.body, dict) and isinstance(case.body.get("ops"), list):
        ops = case.body["ops"]
        for op in ops:
            if isinstance(op, dict):
                if "if_fence" in op:
                    op["if_fence"] = _fence_for(op["if_fence"], op.get("namespace", ""), op.get("id", "lock"))
                _memory_body(op.get("body"), stateful)
        if case.body.get("atomic") is True:
            case.body["ops"] = _one_shard(ops)
    if (method, path) == ("POST", "/v1/tasks/{namespace}") and isinstance(case.body, dict):
        not_before, now_ms = case.body.get("not_before"), int(time.time() * 1000)
        if isinstance(not_before, int | float) and not isinstance(not_before, bool) and not_before > now_ms:
            case.body["not_before"] = now_ms
    if (method, path) == ("POST", "/v1/watch") and isinstance(case.body, dict):
        _unique_watch_ids(case.body.get("watches"))
    if path == "/v1/search" and isinstance(case.body, dict) and isinstance(case.body.get("vector"), list):
        case.body["vector"] = _sized(case.body["vector"])
    if query is not None and (method, path) in _CURSOR_OPERATIONS:
        query.pop("cursor", None)
    if path == "/v1/search" and isinstance(case.body, dict):
        case.body.pop("cursor", None)
    if stateful and path.startswith("/v1/memories/") and method == "GET":
        _fresh_reads(query, headers)
    if query is not None and path.startswith("/v1/memories/") and method == "GET":
        level = query.get("consistency") or (headers or {}).get("X-Raftmem-Consistency")
        if level in _BOUNDED and "max_staleness_ms" not in query:
            query["max_staleness_ms"] = 1000
    return case
