"""Memories: write, read, delete, list, history, batch."""

from __future__ import annotations

from .. import validation as v
from ..config import Config
from ..history import READ_LIMIT_MAX, VERSION_FIELDS
from ..service.batches import BATCH_KINDS, OP_FIELDS
from ..service.search import ORDERS
from .parts import (
    READ_ERRORS,
    WRITE_ERRORS,
    Params,
    Schema,
    errors,
    header,
    nullable,
    obj,
    query,
    ref,
    response,
)

WRITTEN = {"X-Raftmem-Token": True, "X-Raftmem-Served-By": True, "X-Raftmem-Context": True, "ETag": True,
           "Idempotent-Replayed": False}
READ = {"X-Raftmem-Consistency": True, "X-Raftmem-Served-By": True, "X-Raftmem-Token": True,
        "X-Raftmem-Context": True, "X-Raftmem-Staleness-Ms": False}
_MISSING_READ = {"X-Raftmem-Consistency": False, "X-Raftmem-Served-By": False, "X-Raftmem-Token": False,
                 "X-Raftmem-Context": False}


def schemas(config: Config) -> dict[str, Schema]:
    limits = config.limits
    token = {"type": "string", "pattern": f"^{v.token_pattern(config.shards)}$",
             "description": "<shard>:<index>: the Raft index of the memory's last write"}
    nullable_int = {"type": ["integer", "null"]}
    return {
        "MemoryWrite": v.memory_schema(limits),
        "Memory": obj({
            "namespace": {"type": "string"}, "id": {"type": "string"},
            "agent_id": {"type": ["string", "null"]}, "kind": {"type": ["string", "null"]},
            "content": {"description": "any JSON value"},
            "tags": {"type": "array", "items": {"type": "string"}}, "metadata": {"type": "object"},
            "created_at": {"type": "integer", "description": "ms since the epoch, the leader's clock"},
            "updated_at": {"type": "integer"},
            "expires_at": {**nullable_int, "description": "ms; null: never"},
            "version": {"type": "integer", "minimum": 1}, "token": token,
            "actor": {"type": "string", "description": "who wrote the last version, when said"},
            "last_accessed_at": {"type": "integer", "description": "the last read or write recorded"},
            "access_count": {"type": "integer", "minimum": 0, "description": "reads recorded"},
            "ttl_s": {"type": "number"}, "ttl_refresh_on_read": {"type": "boolean"},
        }, ("namespace", "id", "version", "created_at", "updated_at", "token")),
        "Deleted": obj({"namespace": {"type": "string"}, "id": {"type": "string"},
                        "version": {"type": "integer", "description": "the version deleted"},
                        "deleted": {"const": True}, "token": token},
                       ("namespace", "id", "version", "deleted", "token")),
        "Version": obj({
            "event": {"type": "string", "enum": ["put", "delete", "expire"]},
            "version": {"type": "integer"}, "token": token, "time": {"type": "integer"},
            "actor": {"type": ["string", "null"]}, "value": {"description": "the content then (null: removed)"},
            **{f: {} for f in VERSION_FIELDS},
        }, ("event", "version", "token", "time", "actor", "value")),
        "MemoryPage": obj({
            "items": {"type": "array", "items": ref("Memory")},
            "count": {"type": "integer", "minimum": 0},
            "cursor": {"type": "string", "description": "more follow: pass it as ?cursor= (with the same filters)"},
            "index_lag": {"description": "ordered lists (?order=) only: how far the indexes were behind"},
        }, ("items", "count")),
        "BatchRequest": _batch_request(config),
        "BatchResponse": obj({
            "results": {"type": "array", "items": obj({
                "status": {"type": "integer", "description": "the operation's own status, as its request would get"},
                "body": {"anyOf": [ref("Memory"), ref("Deleted"), ref("Error")]}}, ("status", "body"))},
            "applied": {"type": "boolean", "description": "atomic batches: whether everything applied"},
        }, ("results",)),
    }


def _batch_request(config: Config) -> Schema:
    limits = config.limits
    field = {
        "namespace": v.name_schema(limits.namespace_chars_max),
        "id": v.name_schema(limits.id_chars_max),
        "body": {"anyOf": [ref("MemoryWrite"), {"type": "null"}]},
        "if_match": {"anyOf": [v.int_schema(0, v.VERSION_MAX), v.version_schema()]},
        "if_none_match": v.IF_NONE_MATCH_SCHEMA,
        "idempotency_key": v.label_schema(v.IDEMPOTENCY_KEY_CHARS_MAX),
        "if_fence": {**v.if_fence_schema(limits), "description": "as the If-Fence header: a lock of the memory's "
                     "namespace, on its shard"},
        "consistency": v.consistency_schema(),
        "after": v.tokens_schema(config.shards),
        "max_staleness_ms": v.int_schema(0, v.STALENESS_MS_MAX),
        "actor": v.label_schema(v.AGENT_CHARS_MAX),
    }
    required = {"create": ("op", "namespace")}
    optional = {name: nullable(schema) if name not in ("namespace", "id", "body") else schema
                for name, schema in field.items()}  # null: left out
    ops = [obj({"op": {"const": kind}, **{name: optional[name] for name in sorted(OP_FIELDS[kind] - {"op"})}},
               required.get(kind, ("op", "namespace", "id")), closed=True) for kind in BATCH_KINDS]
    return obj({
        "ops": {"type": "array", "minItems": 1, "maxItems": limits.batch_ops_max, "items": {"oneOf": ops}},
        "atomic": {"type": "boolean", "default": False,
                   "description": "all or nothing; the operations must fall on one shard (their keys hash to it; "
                                  "a create's id is the server's), else 400: a relation JSON Schema cannot state"},
    }, ("ops",), closed=True, description="a malformed operation refuses the whole batch (400, nothing applied); "
                                          "without `atomic` each well-formed operation then succeeds or fails alone")


def paths(config: Config, p: Params) -> dict[str, Schema]:
    limits = config.limits
    ns, mid = p.namespace, p.id
    if_match = header("If-Match", v.version_schema(), "compare and set: the write applies only at this version "
                                                       "(the ETag); else 412")
    if_none_match = header("If-None-Match", v.IF_NONE_MATCH_SCHEMA, "create only: 412 if it exists")
    write_body = {"required": True, "content": {"application/json": {"schema": ref("MemoryWrite")}}}
    reads = [*p.consistency(), p.after, p.staleness, p.context]
    conflicts = {"_409": "fenced (If-Fence no longer current), idempotency_key_reused"}
    return {
        "/v1/memories/{namespace}/{id}": {
            "put": {
                "summary": "Upsert a memory",
                "parameters": [ns, mid, if_match, if_none_match, p.idempotency_key, p.if_fence, p.context],
                "requestBody": write_body,
                "responses": {"200": response("updated", ref("Memory"), headers=WRITTEN),
                              "201": response("created", ref("Memory"), headers=WRITTEN),
                              **errors(*WRITE_ERRORS, 409, 412, **conflicts)},
            },
            "get": {
                "summary": "Read a memory at a consistency level (bounded needs max_staleness_ms: 400 without, a "
                           "relation between parameters JSON Schema cannot state)",
                "parameters": [ns, mid, *reads],
                "responses": {"200": response("the memory", ref("Memory"), headers={**READ, "ETag": True}),
                              "404": response("not found (`token`: how far the replica had applied)", ref("Error"),
                                              headers=_MISSING_READ),
                              **errors(*READ_ERRORS)},
            },
            "delete": {
                "summary": "Delete a memory",
                "parameters": [ns, mid, if_match, p.idempotency_key, p.if_fence, p.context,
                               query("actor", v.label_schema(v.AGENT_CHARS_MAX), "who deletes it (kept in its history)")],
                "responses": {"200": response("deleted", ref("Deleted"), headers={**WRITTEN, "ETag": False}),
                              **errors(*WRITE_ERRORS, 404, 409, 412, **conflicts)},
            },
        },
        "/v1/memories/{namespace}": {
            "post": {
                "summary": "Create a memory with a server-chosen, time-ordered id (from the Idempotency-Key when "
                           "given, so a retry lands on the same id; with If-Fence, on the lock's shard)",
                "parameters": [ns, p.idempotency_key, p.if_fence, p.context],
                "requestBody": write_body,
                "responses": {"201": response("created", ref("Memory"), headers=WRITTEN),
                              **errors(*WRITE_ERRORS, 409, 412, **conflicts)},
            },
            "get": {
                "summary": "List memories ordered by (created_at, id), gathered across shards; with `order`, by "
                           "a time, from the derived indexes",
                "parameters": [
                    ns,
                    query("agent_id", v.label_schema(v.AGENT_CHARS_MAX)),
                    query("tag", v.label_schema(limits.tag_chars_max)),
                    query("since", v.int_schema(0, v.TIME_MS_MAX), "created at or after (ms)"),
                    query("until", v.int_schema(0, v.TIME_MS_MAX), "created at or before (ms)"),
                    query("limit", {**v.int_schema(1, limits.list_page_max), "default": v.LIST_PAGE_DEFAULT}),
                    query("cursor", {"type": "string"}, "from the previous page (a cursor this server issued for "
                                                        "this list, else 400)"),
                    query("order", {"type": "string", "enum": [o for o in ORDERS if o != "score"]}),
                    *p.consistency(), p.after, p.context,
                ],
                "responses": {"200": response("a page", ref("MemoryPage"), headers={
                    "X-Raftmem-Consistency": True, "X-Raftmem-Served-By": True, "X-Raftmem-Token": False,
                    "X-Raftmem-Context": False, "X-Raftmem-Staleness-Ms": False, "X-Raftmem-Index-Lag": False}),
                    **errors(*READ_ERRORS, 429)},
            },
        },
        "/v1/memories/{namespace}/{id}/history": {
            "get": {
                "summary": "A memory's last versions, newest first (history.versions_max of them), read like the "
                           "memory; not an access",
                "parameters": [ns, mid, *reads, query("limit", v.int_schema(1, READ_LIMIT_MAX))],
                "responses": {"200": response("the versions", obj({
                    "namespace": {"type": "string"}, "id": {"type": "string"},
                    "versions": {"type": "array", "minItems": 1, "items": ref("Version")}},
                    ("namespace", "id", "versions")), headers=READ),
                    "404": response("no history", ref("Error"), headers=_MISSING_READ),
                    **errors(*READ_ERRORS)},
            },
        },
        "/v1/batch": {
            "post": {
                "summary": "Many operations in one request, grouped by shard (one log entry per shard); "
                           "per-operation results",
                "parameters": [p.context],
                "requestBody": {"required": True, "content": {"application/json": {"schema": ref("BatchRequest")}}},
                "responses": {"200": response("per-operation results, in order", ref("BatchResponse"),
                                              headers={"X-Raftmem-Served-By": True, "X-Raftmem-Context": False}),
                              **errors(*WRITE_ERRORS)},
            },
        },
    }

