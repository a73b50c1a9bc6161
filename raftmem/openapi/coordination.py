"""Locks with fences, and task queues."""

from __future__ import annotations

from .. import validation as v
from ..config import Config
from ..coordination import BACKOFF_MS_MAX, PRIORITY_MAX, STATES
from ..service import locks, tasks
from ..service.coordinating import READ_LEVELS
from .parts import (
    READ_ERRORS,
    WRITE_ERRORS,
    Params,
    Schema,
    errors,
    obj,
    param,
    query,
    ref,
    response,
)

WRITTEN = {"X-Raftmem-Token": True, "X-Raftmem-Served-By": True, "Idempotent-Replayed": False}
READ = {"X-Raftmem-Consistency": True, "X-Raftmem-Served-By": True, "X-Raftmem-Token": True}
HELD = "lock_held: another holder has it (`holder`, `expires_at`), after `wait_ms` if given; or " \
       "idempotency_key_reused"
FENCED = "fenced: the fence is not the current one (released, expired, taken over since); or " \
         "idempotency_key_reused"


def schemas(config: Config) -> dict[str, Schema]:
    nullable_int = {"type": ["integer", "null"]}
    fence = {**v.int_schema(0, v.FENCE_MAX), "description": "the lock's or claim's fence (it only grows)"}
    return {
        "Lock": obj({
            "namespace": {"type": "string"}, "name": {"type": "string"}, "holder": {"type": "string"},
            "fence": fence, "acquired_at": {"type": "integer"}, "expires_at": {"type": "integer"},
            "ttl_ms": {"type": "integer"}, "token": {"type": "string"},
            "shard": {"type": "integer", "description": "GET: the lock's shard"}},
            ("namespace", "name", "holder", "fence", "acquired_at", "expires_at", "ttl_ms")),
        "Released": obj({"namespace": {"type": "string"}, "name": {"type": "string"}, "token": {"type": "string"}},
                        ("token",)),
        "Task": obj({
            "namespace": {"type": "string"}, "id": {"type": "string"}, "payload": {"description": "any JSON"},
            "priority": {"type": "integer"}, "state": {"type": "string", "enum": list(STATES)},
            "attempts": {"type": "integer"}, "max_attempts": {"type": "integer"},
            "backoff_ms": {"type": "integer"}, "retain_ms": {"type": "integer"},
            "enqueued_at": {"type": "integer"}, "not_before": {"type": "integer"}, "ready_at": nullable_int,
            "claims": {"type": "integer"}, "worker": {"type": ["string", "null"]},
            "fence": {"anyOf": [fence, {"type": "null"}]}, "claimed_at": nullable_int,
            "claim_expires_at": nullable_int, "result": {"description": "any JSON"},
            "last_error": {"type": ["string", "null"]}, "finished_at": nullable_int, "purge_at": nullable_int,
            "token": {"type": "string", "description": "writes: the Raft index of the write"}},
            ("namespace", "id", "payload", "priority", "state", "attempts", "max_attempts", "fence", "worker")),
        "TaskPage": obj({"items": {"type": "array", "items": ref("Task")}, "count": {"type": "integer"},
                         "open": {"type": "integer", "description": "ready + claimed tasks of the queue"},
                         "cursor": {"type": "string", "description": "more follow: pass it as ?cursor="}},
                        ("items", "count", "open")),
    }


def _settle_links() -> dict[str, Schema]:
    """What a claim lets the worker do next, with the claim's id and fence (OpenAPI
    links: clients and schemathesis's stateful phase follow them)."""
    claim = {"namespace": "$request.path.namespace", "id": "$response.body#/id"}
    fence = {"fence": "$response.body#/fence"}
    return {f"{action.capitalize()}Claimed": {
        "operationRef": f"#/paths/~1v1~1tasks~1{{namespace}}~1{{id}}~1{action}/post",
        "parameters": claim, "requestBody": {**fence, **extra}}
        for action, extra in (("complete", {}), ("fail", {}), ("extend", {"lease_ms": 1000}))}


def paths(config: Config, p: Params) -> dict[str, Schema]:
    co, limits = config.coordination, config.limits
    ns = p.namespace
    not_claim = {**v.name_schema(limits.id_chars_max), "pattern": f"^(?!{tasks.CLAIM_PATH_ID}$)"
                 + v.name_schema(limits.id_chars_max)["pattern"][1:]}  # GET .../claim is not a task
    task_id = {**p.id, "schema": not_claim}
    lock = param("name", "path", v.name_schema(limits.id_chars_max),
                 "the lock lives on the shard of the memory `namespace/name`")
    fence = v.int_schema(0, v.FENCE_MAX)
    ttl = {**v.int_schema(co.ttl_ms_min, co.ttl_ms_max), "description": "ms"}
    wait = {**v.int_schema(0, co.wait_ms_max), "description": "ms to wait in turn (FIFO per lock or queue, at its "
                                                              "leader); 0: do not wait"}
    holder = v.label_schema(co.holder_chars_max)
    reads = p.consistency(READ_LEVELS, default="linearizable")

    def body(fields: dict[str, Schema], required: tuple[str, ...], needed: bool = True) -> Schema:
        return {"required": needed,
                "content": {"application/json": {"schema": obj(fields, required, closed=True)}}}

    def settle(summary: str, fields: dict[str, Schema], required: tuple[str, ...] = ("fence",)) -> Schema:
        return {"post": {
            "summary": summary, "parameters": [ns, task_id, p.idempotency_key],
            "requestBody": body({"fence": fence, **fields}, required),
            "responses": {"200": response("the task after it", ref("Task"), headers=WRITTEN),
                          **errors(*WRITE_ERRORS, 404, 409, _404="no such task", _409=FENCED)},
        }}

    return {
        "/v1/locks/{namespace}/{name}": {
            "post": {
                "summary": "Acquire a lock for `ttl_ms` (waiting in turn up to `wait_ms`)",
                "parameters": [ns, lock, p.idempotency_key],
                "requestBody": body({"holder": holder, "ttl_ms": ttl, "wait_ms": wait}, ("holder", "ttl_ms")),
                "responses": {"201": response("acquired: the fence to present with writes", ref("Lock"),
                                              headers=WRITTEN),
                              **errors(*WRITE_ERRORS, 409, _409=HELD)},
            },
            "get": {
                "summary": "Who holds the lock (404 when nobody does)",
                "parameters": [ns, lock, *reads],
                "responses": {"200": response("held", ref("Lock"), headers=READ),
                              **errors(*READ_ERRORS, 404, _404="not held")},
            },
            "delete": {
                "summary": "Release the lock held with `fence` (also read from a JSON body {\"fence\": F} without "
                           "?fence=, for clients that cannot send a query; not both: 400)",
                "parameters": [ns, lock, {**query("fence", fence), "required": True}, p.idempotency_key],
                "responses": {"200": response("released", ref("Released"), headers=WRITTEN),
                              **errors(*WRITE_ERRORS, 409, _409=FENCED)},
            },
        },
        "/v1/locks/{namespace}/{name}/renew": {
            "post": {
                "summary": "Extend the lease of the holder of `fence` to `ttl_ms` from now (the fence stays)",
                "parameters": [ns, lock, p.idempotency_key],
                "requestBody": body({"fence": fence, "ttl_ms": ttl}, ("fence", "ttl_ms")),
                "responses": {"200": response("renewed", ref("Lock"), headers=WRITTEN),
                              **errors(*WRITE_ERRORS, 409, _409=FENCED)},
            },
        },
        "/v1/tasks/{namespace}": {
            "post": {
                "summary": "Enqueue a task (the queue of a namespace lives on one shard)",
                "parameters": [ns, p.idempotency_key],
                "requestBody": body({
                    "id": {**not_claim, "description": "default: time-ordered, from the Idempotency-Key when given"},
                    "payload": {"description": f"any JSON, at most {co.task_payload_bytes_max} bytes (413)"},
                    "priority": {**v.int_schema(-PRIORITY_MAX, PRIORITY_MAX), "default": 0},
                    "not_before": {**v.int_schema(0, v.TIME_MS_MAX),
                                   "description": "wall-clock ms before which it is not claimed; at most "
                                                  f"{co.task_delay_ms_max} ms ahead of the server's clock (else "
                                                  "400: a relation to the time, which JSON Schema cannot state)"},
                    "delay_ms": v.int_schema(0, co.task_delay_ms_max),
                    "max_attempts": {**v.int_schema(1, co.task_attempts_max), "default": co.task_attempts_default},
                    "backoff_ms": {**v.int_schema(0, BACKOFF_MS_MAX), "default": co.task_backoff_ms_default,
                                   "description": "doubled after each failed attempt"}}, (), needed=True),
                "responses": {"201": response("enqueued", ref("Task"), headers=WRITTEN),
                              **errors(*WRITE_ERRORS, 409, _409="task_exists, or idempotency_key_reused")},
            },
            "get": {
                "summary": "List tasks by id, in one state or all",
                "parameters": [ns, *reads, query("state", {"type": "string", "enum": list(STATES)}),
                               query("limit", {**v.int_schema(1, co.task_list_page_max), "default": 100}),
                               query("cursor", v.name_schema(limits.id_chars_max), "the last id of the previous page")],
                "responses": {"200": response("a page", ref("TaskPage"), headers=READ), **errors(*READ_ERRORS)},
            },
        },
        "/v1/tasks/{namespace}/claim": {
            "post": {
                "summary": "Claim the highest-priority, oldest ready task for `lease_ms` (waiting in turn up to "
                           "`wait_ms`)",
                "parameters": [ns, p.idempotency_key],
                "requestBody": body({"worker": holder, "lease_ms": ttl, "wait_ms": wait}, ("worker", "lease_ms")),
                "responses": {"200": {**response("claimed: the task and the claim's fence", ref("Task"),
                                                 headers=WRITTEN), "links": _settle_links()},
                              "204": response("no task was ready within wait_ms",
                                              headers={"X-Raftmem-Served-By": True}),
                              **errors(*WRITE_ERRORS, 409, _409="fenced (a keyed retry of a claim since given back), "
                                                                "or idempotency_key_reused")},
            },
        },
        "/v1/tasks/{namespace}/{id}": {
            "get": {"summary": "Read a task", "parameters": [ns, task_id, *reads],
                    "responses": {"200": response("the task", ref("Task"), headers=READ),
                                  **errors(*READ_ERRORS, 404, _404="no such task")}},
        },
        "/v1/tasks/{namespace}/{id}/complete": settle("Complete a claimed task", {"result": {
            "description": f"any JSON, at most {co.task_payload_bytes_max} bytes (413)"}}),
        "/v1/tasks/{namespace}/{id}/fail": settle(
            "Fail a claimed task: back to the queue after the back-off, or dead after max_attempts (or retry: false)",
            {"error": {"anyOf": [v.label_schema(tasks.ERROR_CHARS_MAX), {"type": "null"}]},
             "retry": {"type": "boolean", "default": True}}),
        "/v1/tasks/{namespace}/{id}/extend": settle("Extend a claim to `lease_ms` from now", {"lease_ms": ttl},
                                                    ("fence", "lease_ms")),
    }


__all__ = ["locks", "paths", "schemas"]
