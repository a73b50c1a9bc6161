"""A compact OpenAPI 3 description of API v1, served at GET /openapi.json."""

from __future__ import annotations

from typing import Any

from . import openapi_coordination as coordination

_ERR = {"$ref": "#/components/schemas/Error"}
_MEM = {"$ref": "#/components/schemas/Memory"}


def _resp(desc: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": desc, "content": {"application/json": {"schema": schema}}}


_ERRORS = {
    "400": _resp("invalid request", _ERR),
    "401": _resp("a bearer token is required (clusters with auth on)", _ERR),
    "403": _resp("the token's role or namespaces do not allow this", _ERR),
    "404": _resp("not found", _ERR),
    "409": _resp("conflict: fenced (If-Fence no longer current), idempotency_key_reused", _ERR),
    "412": _resp("precondition failed", _ERR),
    "413": _resp("body too large", _ERR),
    "429": _resp("overloaded, retry", _ERR),
    "503": _resp("no leader or not ready, retry (Retry-After)", _ERR),
    "504": _resp("indeterminate: the write may or may not have happened", _ERR),
}
_NS = {"name": "namespace", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,256}$"}}
_CONSISTENCY = {
    "name": "consistency",
    "in": "query",
    "schema": {"type": "string", "enum": ["linearizable", "strong", "session", "causal", "bounded", "eventual",
                                          "read-your-writes"]},
}
_CONTEXT = {
    "name": "X-Raftmem-Context",
    "in": "header",
    "description": "the caller's causal context (one <shard>:<index> token per shard); every memory response "
                   "returns it advanced",
    "schema": {"type": "string", "pattern": "^[0-9]+:[0-9]+(,[0-9]+:[0-9]+)*$"},
}
_WRITE_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/MemoryWrite"}}},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "raftmem", "version": "1"},
    "paths": {
        "/v1/memories/{namespace}/{id}": {
            "put": {
                "summary": "Upsert a memory (If-Match, If-None-Match: *, If-Fence, Idempotency-Key)",
                "parameters": [_NS, _ID, coordination.IF_FENCE],
                "requestBody": _WRITE_BODY,
                "responses": {"200": _resp("updated", _MEM), "201": _resp("created", _MEM), **_ERRORS},
            },
            "get": {
                "summary": "Read a memory",
                "parameters": [
                    _NS,
                    _ID,
                    _CONSISTENCY,
                    _CONTEXT,
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                    {"name": "max_staleness_ms", "in": "query", "schema": {"type": "integer"}},
                ],
                "responses": {"200": _resp("the memory", _MEM), **_ERRORS},
            },
            "delete": {
                "summary": "Delete a memory (If-Match, If-Fence)",
                "parameters": [_NS, _ID, coordination.IF_FENCE],
                "responses": {"200": _resp("deleted", {"type": "object"}), **_ERRORS},
            },
        },
        "/v1/memories/{namespace}": {
            "post": {
                "summary": "Create a memory with a server-chosen, time-ordered id (with If-Fence: on the lock's shard)",
                "parameters": [_NS, coordination.IF_FENCE],
                "requestBody": _WRITE_BODY,
                "responses": {"201": _resp("created", _MEM), **_ERRORS},
            },
            "get": {
                "summary": "List memories ordered by (created_at, id)",
                "parameters": [_NS, _CONSISTENCY]
                + [
                    {"name": n, "in": "query", "schema": {"type": t}}
                    for n, t in (("agent_id", "string"), ("tag", "string"), ("since", "integer"),
                                 ("until", "integer"), ("limit", "integer"), ("cursor", "string"))
                ],
                "responses": {"200": _resp("a page", {"type": "object"}), **_ERRORS},
            },
        },
        "/v1/batch": {
            "post": {
                "summary": "Many operations, per-operation results",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
                "responses": {"200": _resp("results", {"type": "object"}), **_ERRORS},
            }
        },
        "/v1/search": {
            "post": {
                "summary": "Recall: BM25 text, vector and field filters (hybrid: reciprocal-rank fusion), "
                           "gathered across shards; fresh=true waits until every shard's indexes absorbed "
                           "every acknowledged write (index_lag 0)",
                "parameters": [_CONTEXT],
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/SearchRequest"}}}},
                "responses": {"200": {**_resp("hits, best first", {"$ref": "#/components/schemas/SearchResult"}),
                                      "headers": {"X-Raftmem-Index-Lag": {
                                          "description": "entries=N; ms=M: how far the indexes were behind",
                                          "schema": {"type": "string"}}}}, **_ERRORS},
            }
        },
        "/v1/namespaces": {
            "get": {
                "summary": "Namespaces (LangGraph list_namespaces): dotted labels, * matches one label",
                "parameters": [
                    {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                    {"name": "suffix", "in": "query", "schema": {"type": "string"}},
                    {"name": "max_depth", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 64}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                ],
                "responses": {"200": _resp("a page", {"type": "object", "properties": {
                    "namespaces": {"type": "array", "items": {"type": "string"}}, "more": {"type": "boolean"}}}),
                    **_ERRORS},
            }
        },
        "/v1/namespaces/{namespace}/summary": {
            "get": {
                "summary": "Counts by kind and tag, time range, newest ids; stale flag and age",
                "parameters": [_NS, {"name": "agent_id", "in": "query", "schema": {"type": "string"}},
                               {"name": "refresh", "in": "query", "schema": {"type": "boolean"}}],
                "responses": {"200": _resp("the summary", {"type": "object"}), **_ERRORS},
            }
        },
        "/v1/admin/reindex": {
            "post": {
                "summary": "Rebuild this node's derived indexes from its RocksDB state",
                "parameters": [{"name": "shard", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                               {"name": "wait", "in": "query", "schema": {"type": "boolean"}}],
                "responses": {"200": _resp("rebuilt (or started)", {"type": "object"}), **_ERRORS},
            }
        },
        "/v1/admin/indexes": {"get": {"summary": "This node's derived indexes: watermark, lag, queue",
                                      "responses": {"200": _resp("per shard", {"type": "object"})}}},
        "/v1/cluster": {"get": {"summary": "Nodes, shards, leaders, terms, indexes", "responses": {"200": _resp("cluster", {"type": "object"})}}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _resp("alive", {"type": "object"})}}},
        "/readyz": {"get": {"summary": "Readiness", "responses": {"200": _resp("ready", {"type": "object"}), "503": _resp("not ready", _ERR)}}},
        **coordination.PATHS,
    },
    # Optional: only clusters with auth.cluster_token set check it.
    "security": [{}, {"bearer": []}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {"error": {"type": "object", "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
            },
            **coordination.SCHEMAS,
            "MemoryWrite": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "agent_id": {"type": "string"},
                    "kind": {"type": "string"},
                    "content": {},
                    "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 64},
                    "metadata": {"type": "object"},
                    "ttl_s": {"type": "number", "exclusiveMinimum": True, "minimum": 0},
                    "embedding": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4096,
                                  "description": "fixed dimension per namespace (its first embedding's)"},
                },
            },
            "SearchRequest": {
                "type": "object",
                "additionalProperties": False,
                "description": "one of namespace and namespace_prefix (label boundaries: team-a matches "
                               "team-a.x, never team-ab)",
                "properties": {
                    "namespace": {"type": "string"},
                    "namespace_prefix": {"type": "string"},
                    "query": {"type": "string", "maxLength": 4096},
                    "vector": {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": 4096},
                    "metric": {"type": "string", "enum": ["cosine", "dot", "l2"], "default": "cosine"},
                    "filter": {"type": "object", "description": "dotted paths (agent_id, kind, tags, namespace, id, "
                               "created_at, updated_at, version, content.<path>, metadata.<path>) to a value "
                               "(equality; tags: has) or {$eq $ne $gt $gte $lt $lte $in $nin $contains}; $and, $or, "
                               "$not; at most 8 levels and 256 conditions"},
                    "limit": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 10},
                    "offset": {"type": "integer", "minimum": 0, "maximum": 10000},
                    "cursor": {"type": "string"},
                    "fresh": {"type": "boolean", "default": False},
                    "consistency": {"type": "string", "enum": ["linearizable", "strong", "session", "causal",
                                                               "eventual"]},
                    "after": {"type": "string", "pattern": "^[0-9]+:[0-9]+(,[0-9]+:[0-9]+)*$"},
                    "order_by": {"type": "string", "enum": ["score", "updated_at", "-updated_at", "created_at",
                                                            "-created_at"]},
                    "with_embedding": {"type": "boolean"},
                    "rrf_k": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 60},
                },
            },
            "SearchResult": {
                "type": "object",
                "properties": {
                    "items": {"type": "array", "items": {"allOf": [_MEM, {"type": "object", "properties": {
                        "score": {"type": "number", "nullable": True}}}]}},
                    "more": {"type": "boolean"},
                    "cursor": {"type": "string", "nullable": True},
                    "index_lag": {"type": "object", "properties": {
                        "entries": {"type": "integer"}, "ms": {"type": "integer"}, "stale": {"type": "boolean"},
                        "shards": {"type": "object"}}},
                },
            },
            "Memory": {
                "type": "object",
                "properties": {
                    "namespace": {"type": "string"},
                    "id": {"type": "string"},
                    "agent_id": {"type": "string", "nullable": True},
                    "kind": {"type": "string", "nullable": True},
                    "content": {},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "metadata": {"type": "object"},
                    "created_at": {"type": "integer"},
                    "updated_at": {"type": "integer"},
                    "expires_at": {"type": "integer", "nullable": True},
                    "version": {"type": "integer"},
                    "token": {"type": "string"},
                },
            },
        }
    },
}
