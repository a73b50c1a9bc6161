"""Recall: search, namespaces, namespace summaries."""

from __future__ import annotations

from .. import embeddings
from .. import validation as v
from ..config import Config
from ..indexing import filters
from ..service import recall, search
from ..vectorindex import METRICS
from .parts import READ_ERRORS, Params, Schema, errors, obj, query, ref, response


def _or_null(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def schemas(config: Config) -> dict[str, Schema]:
    limits = config.limits
    optional = {  # null is the same as leaving the field out
        "query": {"type": "string", "maxLength": search.QUERY_CHARS_MAX,
                  "description": f"BM25 over the memories' text (its first {search.QUERY_TOKENS_MAX} terms)"},
        "vector": {**embeddings.vector_schema(), "description": "the namespace's embeddings' dimension (400 "
                   "otherwise: the namespace's state, not stated here)"},
        "metric": {"type": "string", "enum": list(METRICS), "default": "cosine"},
        "filter": {**filters.schema_ref(), "description": "dotted paths (agent_id, kind, tags, namespace, id, "
                   "created_at, updated_at, version, content.<path>, metadata.<path>) to a value (equality; tags: "
                   "has) or to operators ($eq $ne $gt $gte $lt $lte $in $nin $contains); $and, $or, $not; at most "
                   f"{filters.DEPTH_MAX} levels (stated) and {filters.NODES_MAX} conditions (not stated)"},
        "limit": {**v.int_schema(1, search.SEARCH_LIMIT_MAX), "default": search.LIMIT_DEFAULT},
        "offset": v.int_schema(0, search.OFFSET_MAX),
        "cursor": {"type": "string", "description": "from the previous page of this same search (else 400)"},
        "fresh": {"type": "boolean", "default": False,
                  "description": "wait until every shard's indexes absorbed every acknowledged write (lag 0)"},
        "consistency": v.consistency_schema(search.SEARCH_LEVELS),
        "after": v.tokens_schema(config.shards),
        "order_by": {"type": "string", "enum": list(search.ORDERS),
                     "description": "default: score with a query or a vector, else -updated_at"},
        "with_embedding": {"type": "boolean", "default": False},
        "rrf_k": {**v.int_schema(1, search.RRF_K_MAX), "default": search.RRF_K_DEFAULT},
    }
    names = {"namespace": v.name_schema(limits.namespace_chars_max),
             "namespace_prefix": {**v.name_schema(limits.namespace_chars_max),
                                  "description": "label boundaries: team-a matches team-a and team-a.x, never "
                                                 "team-ab"}}
    return {
        **filters.schema_levels(),
        "SearchRequest": {
            **obj({**{k: _or_null(s) for k, s in names.items()}, **{k: _or_null(s) for k, s in optional.items()}},
                  closed=True, description="exactly one of namespace and namespace_prefix"),
            "oneOf": [{"properties": {k: {"type": "string"}}, "required": [k]} for k in names],
            "allOf": [
                {"if": {"properties": {"order_by": {"const": "score"}}, "required": ["order_by"]},
                 "then": {"anyOf": [{"properties": {"query": {"type": "string"}}, "required": ["query"]},
                                    {"properties": {"vector": {"type": "array"}}, "required": ["vector"]}]},
                 "description": "ordered by score: a query or a vector"},
                {"if": {"properties": {"vector": {"type": "array"}}, "required": ["vector"]},
                 "then": {"properties": {"order_by": {"enum": ["score", None]}}},
                 "description": "a vector search is ordered by score"},
            ],
        },
        "SearchResult": obj({
            "items": {"type": "array", "items": {"allOf": [ref("Memory"), obj({
                "score": {"type": ["number", "null"]},
                "embedding": {"type": "array", "items": {"type": "number"}, "description": "with_embedding"}})]}},
            "more": {"type": "boolean"},
            "cursor": {"type": ["string", "null"]},
            "index_lag": ref("IndexLag"),
        }, ("items", "more", "cursor", "index_lag")),
        "IndexLag": obj({
            "entries": {"type": "integer", "minimum": 0}, "ms": {"type": "integer", "minimum": 0},
            "stale": {"type": "boolean"},
            "shards": {"type": "object", "additionalProperties": obj({
                "entries": {"type": "integer"}, "ms": {"type": "integer"},
                "at": {"type": "integer", "description": "every change of the shard at or below this index was "
                                                        "in the indexes that answered"},
                "barrier": {"type": "integer", "description": "the index the level made them reach first (the "
                                                             "default level: its eager changes); absent for eventual"},
            }, ("entries", "ms", "at"))}},
            ("entries", "ms", "stale", "shards")),
    }


def paths(config: Config, p: Params) -> dict[str, Schema]:
    limits = config.limits
    label = f"[A-Za-z0-9_:-]{{1,{limits.namespace_chars_max}}}"
    labels = {"type": "string", "pattern": f"^(?:[*]|{label})(?:[.](?:[*]|{label}))*$",
              "description": "dotted labels, * for any one label"}
    return {
        "/v1/search": {
            "post": {
                "summary": "Recall: BM25 text, vector and field filters (hybrid: reciprocal-rank fusion), gathered "
                           "across shards",
                "parameters": [p.context],
                "requestBody": {"required": True,
                                "content": {"application/json": {"schema": ref("SearchRequest")}}},
                "responses": {
                    "200": response("hits, best first", ref("SearchResult"), headers={
                        "X-Raftmem-Index-Lag": True, "X-Raftmem-Consistency": True, "X-Raftmem-Served-By": True}),
                    **errors(*READ_ERRORS, 408, 413, 429)},
            },
        },
        "/v1/namespaces": {
            "get": {
                "summary": "Namespaces (LangGraph's list_namespaces): label-wise prefix and suffix, truncated to "
                           "max_depth labels",
                "parameters": [
                    query("prefix", labels), query("suffix", labels),
                    query("max_depth", v.int_schema(1, recall.NAMESPACE_DEPTH_MAX)),
                    query("limit", {**v.int_schema(1, recall.NAMESPACES_PAGE_MAX), "default": 100}),
                    query("offset", v.int_schema(0, recall.NAMESPACES_OFFSET_MAX)),
                ],
                "responses": {"200": response("a page", obj({
                    "namespaces": {"type": "array", "items": v.name_schema(limits.namespace_chars_max)},
                    "more": {"type": "boolean"}}, ("namespaces", "more")),
                    headers={"X-Raftmem-Consistency": True, "X-Raftmem-Served-By": True}),
                    **errors(*READ_ERRORS)},
            },
        },
        "/v1/namespaces/{namespace}/summary": {
            "get": {
                "summary": "Counts by kind and tag, time range, newest ids; stale flag and age",
                "parameters": [p.namespace, query("agent_id", v.label_schema(v.AGENT_CHARS_MAX)),
                               query("refresh", v.FLAG_SCHEMA, "recompute from a replica that has every "
                                                               "acknowledged write")],
                "responses": {"200": response("the summary", obj({
                    "namespace": {"type": "string"}, "agent_id": {"type": ["string", "null"]},
                    "count": {"type": "integer", "minimum": 0},
                    "by_kind": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "by_tag": {"type": "object", "additionalProperties": {"type": "integer"}},
                    "first_created_at": {"type": ["integer", "null"]},
                    "last_updated_at": {"type": ["integer", "null"]},
                    "newest_ids": {"type": "array", "items": {"type": "string"}},
                    "stale": {"type": "boolean"}, "age_ms": {"type": "integer", "minimum": 0}},
                    ("namespace", "agent_id", "count", "by_kind", "by_tag", "first_created_at", "last_updated_at",
                     "newest_ids", "stale", "age_ms")), headers={"X-Raftmem-Served-By": True}),
                    **errors(*READ_ERRORS)},
            },
        },
    }
