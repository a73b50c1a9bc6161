"""What every area of the OpenAPI document shares: responses, errors, the
headers raftmem sends and takes, and parameters. Numbers, patterns and enums
come from the definitions the server validates with (raftmem.validation, the
config's limits, the error tree); nothing here restates one."""

from __future__ import annotations

from typing import Any

from .. import validation as v
from ..commands import Outcome
from ..config import CONSISTENCY_LEVELS, STALENESS_MS_MAX, Config
from ..errors import RaftmemError

Schema = dict[str, Any]
JSON = "application/json"
NULL: Schema = {"type": "null"}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, NULL]}


def obj(properties: dict[str, Schema], required: tuple[str, ...] = (), *, closed: bool = False,
        description: str | None = None) -> Schema:
    """A JSON object; `closed`: the server refuses other keys (additionalProperties: false)."""
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    if closed:
        out["additionalProperties"] = False
    if description:
        out["description"] = description
    return out


def response(description: str, schema: Schema | None = None, *, headers: dict[str, bool] | None = None,
             media: str = JSON) -> Schema:
    """A response; `headers`: names from components.headers, with whether they are always sent."""
    out: Schema = {"description": description}
    if schema is not None:
        out["content"] = {media: {"schema": schema}}
    if headers:
        out["headers"] = {name: {"$ref": f"#/components/headers/{name}", **({"required": True} if always else {})}
                          for name, always in headers.items()}
    return out


# What each error status means, in every operation that can answer it.
ERROR_TEXT = {
    400: "invalid request (the message names the field); nothing changed",
    401: "a bearer token is required (clusters with auth.cluster_token set)",
    403: "the token's role or namespaces do not allow this",
    404: "not found",
    408: "the body did not arrive within limits.body_timeout_ms; nothing changed",
    409: "conflict with the current state (the code says which); nothing changed",
    410: "compacted: a token older than the change log keeps (`oldest` says where to resume)",
    412: "precondition failed (If-Match, If-None-Match); nothing changed",
    413: "body larger than limits.body_bytes_max; nothing changed",
    429: "overloaded: nothing was done, retry after Retry-After",
    500: "internal error (see the node's log)",
    503: "no leader or not ready: nothing was done, retry after Retry-After",
    504: "indeterminate: the write may or may not have happened; retry with the same Idempotency-Key",
}
_ERROR_HEADERS = {401: {"WWW-Authenticate": True}, 429: {"Retry-After": True}, 503: {"Retry-After": True}}
# Every operation: a bad parameter, authentication, and the store's own fault.
BASE_ERRORS = (400, 401, 403, 500)
READ_ERRORS = (*BASE_ERRORS, 503)
WRITE_ERRORS = (*BASE_ERRORS, 408, 413, 429, 503, 504)


def errors(*statuses: int, **texts: str) -> dict[str, Schema]:
    """Error responses by status (`texts`: `_409="lock_held: ..."` replaces the usual words)."""
    out: dict[str, Schema] = {}
    for status in sorted(set(statuses)):
        text = texts.get(f"_{status}", ERROR_TEXT[status])
        out[str(status)] = response(text, ref("Error"), headers=_ERROR_HEADERS.get(status))
    return out


def _error_codes() -> list[str]:
    """Every `error.code` the server sends: its error classes' and its command outcomes'."""
    classes: list[type[RaftmemError]] = [RaftmemError]
    codes: set[str] = {"method_not_allowed"}
    while classes:
        cls = classes.pop()
        codes.add(cls.code)
        classes.extend(cls.__subclasses__())
    codes.update(o.value for o in Outcome if not o.ok)
    return sorted(codes)


def error_schema() -> Schema:
    return obj({"error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string", "enum": _error_codes()}, "message": {"type": "string"},
                       "field": {"type": "string", "description": "the field, parameter or header at fault"},
                       "fields": {"type": "array", "items": {"type": "string"}},
                       "indeterminate": {"const": True}},
        "description": "more details by code: `token` (404 of a read), `version` (412), `holder` and "
                       "`expires_at` (lock_held), `lock` or `task` (fenced), `oldest` (compacted), "
                       "`allowed` (method_not_allowed), `shard`"},
        "indeterminate": {"const": True, "description": "504 only: the write's fate is unknown"}},
        ("error",))


# -- headers ---------------------------------------------------------------------------------------
def headers(config: Config) -> dict[str, Schema]:
    """components.headers: what responses say of how they were served."""
    tokens = v.tokens_schema(config.shards)
    return {
        "X-Raftmem-Served-By": {"description": "the node that served the request",
                                "schema": v.name_schema(v.NODE_ID_CHARS_MAX)},
        "X-Raftmem-Consistency": {"description": "the level the read was served at (its canonical name)",
                                  "schema": {"type": "string", "enum": list(CONSISTENCY_LEVELS)}},
        "X-Raftmem-Token": {"description": "<shard>:<index>: how far the serving replica had applied (a "
                                           "write: its own index); a list gives one per shard",
                            "schema": tokens},
        "X-Raftmem-Staleness-Ms": {"description": "stale levels: how old the replica's view may be",
                                   "schema": {"type": "integer", "minimum": 0}},
        "X-Raftmem-Context": {"description": "the caller's causal context advanced by this answer",
                              "schema": tokens},
        "X-Raftmem-Index-Lag": {"description": "how far the derived indexes were behind",
                                "schema": {"type": "string", "pattern": "^entries=[0-9]+; ms=[0-9]+$"}},
        "ETag": {"description": "the memory's version (what If-Match takes)",
                 "schema": {"type": "string", "pattern": "^[0-9]+$"}},
        "Idempotent-Replayed": {"description": "the first answer to this Idempotency-Key, replayed",
                                "schema": {"type": "string", "enum": ["true"]}},
        "Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer", "minimum": 0}},
        "WWW-Authenticate": {"description": "the bearer challenge", "schema": {"type": "string"}},
        "Content-Disposition": {"description": "the file name to save it as", "schema": {"type": "string"}},
    }


# -- parameters -----------------------------------------------------------------------------------
def param(name: str, where: str, schema: Schema, description: str | None = None, *,
          required: bool = False) -> Schema:
    out: Schema = {"name": name, "in": where, "required": required or where == "path", "schema": schema}
    if description:
        out["description"] = description
    return out


def text(schema: Schema) -> Schema:
    """A string query parameter: never empty (an absent one is left out)."""
    return {"minLength": 1, **schema} if schema.get("type") == "string" else schema


def query(name: str, schema: Schema, description: str | None = None) -> Schema:
    return param(name, "query", text(schema), description)


def header(name: str, schema: Schema, description: str | None = None) -> Schema:
    return param(name, "header", schema, description)


class Params:
    """The parameters many operations share, for one cluster's config."""

    def __init__(self, config: Config) -> None:
        limits = config.limits
        self.namespace = param("namespace", "path", v.name_schema(limits.namespace_chars_max))
        self.id = param("id", "path", v.name_schema(limits.id_chars_max))
        self.shards = config.shards
        self.if_fence = header(
            "If-Fence", v.if_fence_schema(limits),
            "<namespace>/<lock>:<fence>: the write applies only while that lock is held with that fence "
            "(409 fenced otherwise), checked atomically with the write. The lock must be of this memory's "
            "namespace and live on its shard (a lock named like the memory always does), else 400: a relation "
            "to the path that JSON Schema cannot state")
        self.idempotency_key = header(
            "Idempotency-Key", v.label_schema(v.IDEMPOTENCY_KEY_CHARS_MAX),
            "a retry with the same key gets the first answer (Idempotent-Replayed: true); the key reused for "
            "another request is 409 idempotency_key_reused")
        self.context = header(
            "X-Raftmem-Context", v.tokens_schema(config.shards),
            "the caller's causal context (one <shard>:<index> per shard); the answer returns it advanced")
        self.after = query("after", v.tokens_schema(config.shards),
                           "tokens (<shard>:<index>, comma-separated) the read must see: session and causal levels")
        self.staleness = query("max_staleness_ms", v.int_schema(0, STALENESS_MS_MAX),
                               "the bound of a bounded read (required with consistency=bounded)")

    def consistency(self, allowed: tuple[str, ...] = CONSISTENCY_LEVELS, default: str | None = None) -> list[Schema]:
        """`consistency=` and its header form (the parameter wins when both are given)."""
        schema = v.consistency_schema(allowed)
        said = f" (default: {default})" if default else " (default: the tags' policy, else consistency.default)"
        return [query("consistency", schema, "the read's level" + said),
                header("X-Raftmem-Consistency", schema, "the read's level, as a header")]
