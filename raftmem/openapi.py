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
_TOKENS = "^[0-9]+:[0-9]+(,[0-9]+:[0-9]+)*$"
_EVENT = {"$ref": "#/components/schemas/WatchEvent"}
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
                "parameters": [_NS, _ID, coordination.IF_FENCE,
                               {"name": "actor", "in": "query", "schema": {"type": "string"},
                                "description": "who deletes it (kept in its history)"}],
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
        "/v1/memories/{namespace}/{id}/history": {
            "get": {
                "summary": "A memory's last versions, newest first (history.versions_max of them); read like the "
                           "memory (consistency, after, max_staleness_ms); not an access",
                "parameters": [_NS, _ID, _CONSISTENCY, _CONTEXT,
                               {"name": "after", "in": "query", "schema": {"type": "string"}},
                               {"name": "max_staleness_ms", "in": "query", "schema": {"type": "integer"}},
                               {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}}],
                "responses": {"200": _resp("the versions", {"type": "object", "properties": {
                    "namespace": {"type": "string"}, "id": {"type": "string"},
                    "versions": {"type": "array", "items": {"$ref": "#/components/schemas/Version"}}}}),
                    **_ERRORS},
            }
        },
        "/v1/watch": {
            "get": {
                "summary": "Stream committed changes (Server-Sent Events, or NDJSON with Accept: "
                           "application/x-ndjson): per shard in log order, resumable from tokens; progress "
                           "events say where the stream is; the last event of a stream that must end "
                           "(overflow, compacted, error) carries the tokens to resume from",
                "parameters": [
                    {"name": "namespace", "in": "query", "schema": {"type": "string"}},
                    {"name": "namespace_prefix", "in": "query", "schema": {"type": "string"}},
                    {"name": "agent_id", "in": "query", "schema": {"type": "string"}},
                    {"name": "tag", "in": "query", "schema": {"type": "string"}},
                    {"name": "after", "in": "query", "schema": {"type": "string", "pattern": _TOKENS},
                     "description": "per shard, the token to resume after; shards not named start from now"},
                    {"name": "progress_ms", "in": "query", "schema": {"type": "integer", "minimum": 50}},
                    {"name": "require_leader", "in": "query", "schema": {"type": "boolean"},
                     "description": "every shard's events from its leader's replica (default: any replica)"},
                ],
                "responses": {
                    "200": {"description": "the stream, one event per line (SSE: one data: line per event)",
                            "content": {"text/event-stream": {"schema": _EVENT},
                                        "application/x-ndjson": {"schema": _EVENT}}},
                    "410": _resp("compacted: a token older than the change log keeps; `oldest` says where "
                                 "to resume", _ERR),
                    **{k: v for k, v in _ERRORS.items() if k in ("400", "401", "403", "429", "503")},
                },
            }
        },
        "/v1/admin/lifecycle/run": {
            "post": {
                "summary": "Run the pruning policies now on every shard leader (dry_run: only say what they would "
                           "remove)",
                "parameters": [{"name": "dry_run", "in": "query", "schema": {"type": "boolean"}},
                               {"name": "policy", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": _resp("per shard and policy: candidates, removed", {"type": "object"}),
                              **_ERRORS},
            }
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
                    "ttl_refresh_on_read": {"type": "boolean", "description": "a sliding TTL: reads extend it"},
                    "actor": {"type": "string", "description": "who writes it (kept in its history)"},
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
            "WatchEvent": {
                "type": "object",
                "properties": {
                    "type": {"type": "string", "enum": ["put", "delete", "expire", "progress", "overflow",
                                                        "compacted", "error"]},
                    "token": {"type": "string", "description": "<shard>:<index> of the change's log entry"},
                    "seq": {"type": "integer", "description": "the change's place in its entry"},
                    "last": {"type": "boolean", "description": "the last event of its entry this stream sends"},
                    "namespace": {"type": "string"}, "id": {"type": "string"},
                    "version": {"type": "integer"}, "prev_version": {"type": "integer", "nullable": True},
                    "time": {"type": "integer"}, "record": _MEM,
                    "tokens": {"type": "string", "description": "progress, overflow, compacted, error: where to "
                                                                "resume (one token per shard)"},
                    "oldest": {"type": "string"}, "code": {"type": "string"}, "message": {"type": "string"},
                },
            },
            "Version": {
                "type": "object",
                "properties": {
                    "event": {"type": "string", "enum": ["put", "delete", "expire"]},
                    "version": {"type": "integer"}, "token": {"type": "string"}, "time": {"type": "integer"},
                    "actor": {"type": "string", "nullable": True}, "value": {},
                    "agent_id": {"type": "string", "nullable": True}, "kind": {"type": "string", "nullable": True},
                    "tags": {"type": "array", "items": {"type": "string"}}, "metadata": {"type": "object"},
                    "expires_at": {"type": "integer", "nullable": True},
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
                    "actor": {"type": "string", "description": "who wrote the last version, when said"},
                    "last_accessed_at": {"type": "integer", "description": "the last read or write recorded"},
                    "access_count": {"type": "integer", "description": "reads recorded"},
                    "ttl_s": {"type": "number"}, "ttl_refresh_on_read": {"type": "boolean"},
                },
            },
        }
    },
}
