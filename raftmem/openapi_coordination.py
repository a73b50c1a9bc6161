"""The OpenAPI description of locks and task queues (merged into
raftmem.openapi's document): every endpoint with its constraints and errors."""

from __future__ import annotations

from typing import Any

_ERR = {"$ref": "#/components/schemas/Error"}
_NAME = "^[A-Za-z0-9._:-]{1,256}$"


def _resp(desc: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    if schema is None:
        return {"description": desc}
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


def _errors(*extra: tuple[str, str]) -> dict[str, Any]:
    out = {
        "400": _resp("invalid request (bad name, negative or huge ttl_ms, malformed fence); nothing changed", _ERR),
        "401": _resp("a bearer token is required (clusters with auth on)", _ERR),
        "403": _resp("the token's role or namespaces do not allow this", _ERR),
        "429": _resp("overloaded (too many waiters, a full queue): nothing changed, retry", _ERR),
        "503": _resp("no leader, retry (Retry-After)", _ERR),
        "504": _resp("indeterminate: the write may or may not have happened; retry with the same "
                     "Idempotency-Key", _ERR),
    }
    out.update({code: _resp(desc, _ERR) for code, desc in extra})
    return out


def _param(name: str, where: str = "path", schema: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {"name": name, "in": where, "required": where == "path",
            "schema": schema or {"type": "string", "pattern": _NAME}, **kw}


def _body(schema: dict[str, Any], required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


_NS = _param("namespace", schema={"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"})
_LOCK = _param("name", description="the lock lives on the shard of the memory `namespace/name`")
_ID = _param("id")
_FENCE = {"type": "integer", "minimum": 0, "description": "a lock's or claim's fence (it only grows)"}
_TTL = {"type": "integer", "minimum": 100, "maximum": 3_600_000,
        "description": "ms; bounds: coordination.ttl_ms_min / ttl_ms_max"}
_WAIT = {"type": "integer", "minimum": 0, "maximum": 60_000,
         "description": "ms to wait in turn (FIFO per lock or queue, at its leader); 0: do not wait"}
_CONSISTENCY = _param("consistency", "query", {"type": "string", "enum": ["linearizable", "strong", "eventual"],
                                              "default": "linearizable"})
_IDEM = _param("Idempotency-Key", "header", {"type": "string", "maxLength": 256},
               description="a retry with the same key gets the first answer (a busy one is tried again)")
_LOCK_REF = {"$ref": "#/components/schemas/Lock"}
_TASK_REF = {"$ref": "#/components/schemas/Task"}
_HELD = ("409", "lock_held: another holder has it (`holder`, `expires_at`), after `wait_ms` if given; or "
                "idempotency_key_reused")
_FENCED = ("409", "fenced: the fence is not the current one (released, expired, taken over since)")


def _settle(summary: str, fields: dict[str, Any]) -> dict[str, Any]:
    return {"post": {
        "summary": summary, "parameters": [_NS, _ID, _IDEM],
        "requestBody": _body({"type": "object", "required": ["fence"], "additionalProperties": False,
                              "properties": {"fence": _FENCE, **fields}}),
        "responses": {"200": _resp("the task after it", _TASK_REF), "404": _resp("no such task", _ERR),
                      **_errors(_FENCED)},
    }}


PATHS: dict[str, Any] = {
    "/v1/locks/{namespace}/{name}": {
        "post": {
            "summary": "Acquire a lock for `ttl_ms` (waiting in turn up to `wait_ms`)",
            "parameters": [_NS, _LOCK, _IDEM],
            "requestBody": _body({"type": "object", "required": ["holder", "ttl_ms"], "additionalProperties": False,
                                  "properties": {"holder": {"type": "string", "maxLength": 256}, "ttl_ms": _TTL,
                                                 "wait_ms": _WAIT}}),
            "responses": {"201": _resp("acquired: the fence to present with writes", _LOCK_REF), **_errors(_HELD)},
        },
        "get": {
            "summary": "Who holds the lock (404 when nobody does)",
            "parameters": [_NS, _LOCK, _CONSISTENCY],
            "responses": {"200": _resp("held", _LOCK_REF), "404": _resp("not held", _ERR), **_errors()},
        },
        "delete": {
            "summary": "Release the lock held with `fence` (`?fence=` or a JSON body)",
            "parameters": [_NS, _LOCK, _param("fence", "query", {"type": "integer", "minimum": 0}), _IDEM],
            "requestBody": _body({"type": "object", "properties": {"fence": _FENCE}}, required=False),
            "responses": {"200": _resp("released", _LOCK_REF), **_errors(_FENCED)},
        },
    },
    "/v1/locks/{namespace}/{name}/renew": {
        "post": {
            "summary": "Extend the lease of the holder of `fence` to `ttl_ms` from now (the fence stays)",
            "parameters": [_NS, _LOCK, _IDEM],
            "requestBody": _body({"type": "object", "required": ["fence", "ttl_ms"], "additionalProperties": False,
                                  "properties": {"fence": _FENCE, "ttl_ms": _TTL}}),
            "responses": {"200": _resp("renewed", _LOCK_REF), **_errors(_FENCED)},
        },
    },
    "/v1/tasks/{namespace}": {
        "post": {
            "summary": "Enqueue a task (the queue of a namespace lives on one shard)",
            "parameters": [_NS, _IDEM],
            "requestBody": _body({"type": "object", "additionalProperties": False, "properties": {
                "id": {"type": "string", "pattern": _NAME, "description": "default: time-ordered, from the "
                       "Idempotency-Key when given"},
                "payload": {"description": "any JSON, at most coordination.task_payload_bytes_max"},
                "priority": {"type": "integer", "minimum": -1_000_000, "maximum": 1_000_000, "default": 0},
                "not_before": {"type": "integer", "description": "wall-clock ms before which it is not claimed"},
                "delay_ms": {"type": "integer", "minimum": 0},
                "max_attempts": {"type": "integer", "minimum": 1, "maximum": 100, "default": 3},
                "backoff_ms": {"type": "integer", "minimum": 0, "maximum": 3_600_000, "default": 1000,
                               "description": "doubled after each failed attempt"}}}),
            "responses": {"201": _resp("enqueued", _TASK_REF),
                          **_errors(("409", "task_exists (or idempotency_key_reused)"))},
        },
        "get": {
            "summary": "List tasks by id, in one state or all",
            "parameters": [_NS, _CONSISTENCY,
                           _param("state", "query", {"type": "string", "enum": ["ready", "claimed", "done", "dead"]}),
                           _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}),
                           _param("cursor", "query")],
            "responses": {"200": _resp("a page: items, count, open, cursor", {"type": "object"}), **_errors()},
        },
    },
    "/v1/tasks/{namespace}/claim": {
        "post": {
            "summary": "Claim the highest-priority, oldest ready task for `lease_ms` (waiting in turn up to `wait_ms`)",
            "parameters": [_NS, _IDEM],
            "requestBody": _body({"type": "object", "required": ["worker", "lease_ms"], "additionalProperties": False,
                                  "properties": {"worker": {"type": "string", "maxLength": 256}, "lease_ms": _TTL,
                                                 "wait_ms": _WAIT}}),
            "responses": {"200": _resp("claimed: the task and the claim's fence", _TASK_REF),
                          "204": _resp("no task was ready within wait_ms"), **_errors()},
        },
    },
    "/v1/tasks/{namespace}/{id}": {
        "get": {"summary": "Read a task", "parameters": [_NS, _ID, _CONSISTENCY],
                "responses": {"200": _resp("the task", _TASK_REF), "404": _resp("no such task", _ERR), **_errors()}},
    },
    "/v1/tasks/{namespace}/{id}/complete": _settle("Complete a claimed task", {"result": {}}),
    "/v1/tasks/{namespace}/{id}/fail": _settle(
        "Fail a claimed task: back to the queue after the back-off, or dead after max_attempts (or retry: false)",
        {"error": {"type": "string", "maxLength": 4096}, "retry": {"type": "boolean", "default": True}}),
    "/v1/tasks/{namespace}/{id}/extend": _settle("Extend a claim to `lease_ms` from now", {"lease_ms": _TTL}),
}

SCHEMAS: dict[str, Any] = {
    "Lock": {"type": "object", "properties": {
        "namespace": {"type": "string"}, "name": {"type": "string"}, "holder": {"type": "string"},
        "fence": _FENCE, "acquired_at": {"type": "integer"}, "expires_at": {"type": "integer"},
        "ttl_ms": {"type": "integer"}, "token": {"type": "string"}}},
    "Task": {"type": "object", "properties": {
        "namespace": {"type": "string"}, "id": {"type": "string"}, "payload": {},
        "priority": {"type": "integer"},
        "state": {"type": "string", "enum": ["ready", "claimed", "done", "dead"]},
        "attempts": {"type": "integer"}, "max_attempts": {"type": "integer"}, "fence": _FENCE,
        "worker": {"type": "string", "nullable": True}, "claim_expires_at": {"type": "integer", "nullable": True},
        "not_before": {"type": "integer"}, "result": {}, "last_error": {"type": "string", "nullable": True}}},
}

# Memory writes (PUT, DELETE, POST, and batch operations as `if_fence`) take If-Fence.
IF_FENCE = _param("If-Fence", "header", {"type": "string", "pattern": r"^[A-Za-z0-9._:-]+/[A-Za-z0-9._:-]+:\d+$"},
                  description="<namespace>/<lock>:<fence>: the write applies only while that lock is held with "
                  "that fence (409 fenced otherwise), checked with the write; the lock must be of the memory's "
                  "namespace and on its shard (400 otherwise)")
