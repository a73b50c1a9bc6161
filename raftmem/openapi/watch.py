"""Watch: committed changes, streamed as Server-Sent Events or NDJSON."""

from __future__ import annotations

from .. import validation as v
from ..config import WATCH_PROGRESS_MS_MAX, WATCH_PROGRESS_MS_MIN, Config
from ..service.watch import WATCH_ID_CHARS_MAX
from ..service.watchstream import NDJSON, SSE
from .parts import BASE_ERRORS, Params, Schema, errors, obj, query, ref


def schemas(config: Config) -> dict[str, Schema]:
    tokens = {**v.tokens_schema(config.shards), "description": "where to resume: one <shard>:<index> per shard"}
    token = {"type": "string", "pattern": f"^{v.token_pattern(config.shards)}$"}
    change = obj({
        "type": {"type": "string", "enum": ["put", "delete", "expire"]},
        "token": {**token, "description": "<shard>:<index> of the change's log entry"},
        "seq": {"type": "integer", "minimum": 0, "description": "the change's place in its entry"},
        "last": {"const": True, "description": "the last event of its entry this stream sends"},
        "namespace": {"type": "string"}, "id": {"type": "string"}, "version": {"type": "integer"},
        "prev_version": {"type": ["integer", "null"], "description": "put: the version it replaced"},
        "time": {"type": "integer"}, "record": {"anyOf": [ref("Memory"), {"type": "null"}]},
    }, ("type", "token", "seq", "namespace", "id", "version", "time", "record"), closed=True)
    return {
        "WatchLine": obj({"watch": {"type": "string", "description": "the watch's id, as the request named it"},
                          "events": {"type": "array", "items": ref("WatchEvent"), "minItems": 1}},
                         ("watch", "events"), closed=True,
                         description="one watch's events, in its order (POST /v1/watch)"),
        "WatchEvent": {"oneOf": [
            change,
            obj({"type": {"const": "progress"}, "tokens": tokens}, ("type", "tokens"), closed=True,
                description="every position is written up to these tokens"),
            obj({"type": {"const": "overflow"}, "tokens": tokens}, ("type", "tokens"), closed=True,
                description="the last event: the client fell behind; resume from the tokens"),
            obj({"type": {"const": "compacted"}, "shard": {"type": "integer"}, "oldest": token, "tokens": tokens},
                ("type", "shard", "oldest", "tokens"), closed=True,
                description="the last event: the change log no longer holds what follows"),
            obj({"type": {"const": "error"}, "code": {"type": "string"}, "message": {"type": "string"},
                 "tokens": tokens}, ("type", "code", "message", "tokens"), closed=True,
                description="the last event: the stream had to end (the node stops, no leader...)"),
        ]},
    }


def paths(config: Config, p: Params) -> dict[str, Schema]:
    limits = config.limits
    del p
    sse_event = obj({"data": {"type": "string", "contentMediaType": "application/json",
                              "contentSchema": ref("WatchEvent")}}, ("data",),
                    description="one Server-Sent Event per change, its data a WatchEvent")
    sse_line = obj({"data": {"type": "string", "contentMediaType": "application/json",
                             "contentSchema": ref("WatchLine")}}, ("data",),
                   description="one Server-Sent Event per write of a watch, its data a WatchLine")
    filters = {
        "namespace": v.name_schema(limits.namespace_chars_max),
        "namespace_prefix": v.name_schema(limits.namespace_chars_max),
        "agent_id": v.label_schema(v.AGENT_CHARS_MAX),
        "tag": v.label_schema(limits.tag_chars_max),
    }
    one_watch = obj({"id": {**v.label_schema(WATCH_ID_CHARS_MAX), "description": "unique in the request"},
                     **filters,
                     "after": {**v.tokens_schema(config.shards),
                               "description": "per shard, the token to resume after; shards not named start from now"}},
                    ("id",), closed=True)
    many = obj({"watches": {"type": "array", "items": one_watch, "minItems": 1,
                            "maxItems": config.watch.watchers_max},
                "progress_ms": {**v.int_schema(WATCH_PROGRESS_MS_MIN, WATCH_PROGRESS_MS_MAX),
                                "default": config.watch.progress_ms},
                "require_leader": {"type": "boolean", "default": False}},
               ("watches",), closed=True)
    served_by = {"X-Raftmem-Served-By": {"$ref": "#/components/headers/X-Raftmem-Served-By", "required": True}}
    return {
        "/v1/watch": {
            "get": {
                "summary": "Stream committed changes: per shard in log order, resumable from tokens; progress "
                           "events say where the stream is; the last event of a stream that must end (overflow, "
                           "compacted, error) carries the tokens to resume from. NDJSON with Accept: "
                           "application/x-ndjson. Filters given together must all hold.",
                "parameters": [
                    query("namespace", v.name_schema(limits.namespace_chars_max)),
                    query("namespace_prefix", v.name_schema(limits.namespace_chars_max)),
                    query("agent_id", v.label_schema(v.AGENT_CHARS_MAX)),
                    query("tag", v.label_schema(limits.tag_chars_max)),
                    query("after", v.tokens_schema(config.shards),
                          "per shard, the token to resume after; shards not named start from now"),
                    query("progress_ms", {**v.int_schema(WATCH_PROGRESS_MS_MIN, WATCH_PROGRESS_MS_MAX),
                                          "default": config.watch.progress_ms}),
                    query("require_leader", v.FLAG_SCHEMA,
                          "every shard's events from its leader's replica (default: any replica)"),
                ],
                "responses": {
                    "200": {"description": "the stream (it ends when the client goes, or with a last event)",
                            "headers": served_by,
                            "content": {SSE: {"schema": sse_event},
                                        NDJSON: {"schema": ref("WatchEvent"),
                                                 "description": "one WatchEvent per line"}}},
                    **errors(*BASE_ERRORS, 410, 429, 503),
                },
            },
            "post": {
                "summary": "Many watches on one connection (as etcd's clients carry a process's watches on one "
                           "stream): each its own filter and tokens, each seeing exactly what a GET watch of its "
                           "own would; every line names its watch and carries its events (the same WatchEvents, "
                           "progress and last events included). A watch that ends (its last event) ends alone; "
                           "the response ends when every watch has. A watch from before the retention fails the "
                           "request (410, `watch` names it). Each watch counts against watch.watchers_max.",
                "requestBody": {"required": True, "content": {"application/json": {"schema": many}}},
                "responses": {
                    "200": {"description": "the stream: one WatchLine per Server-Sent Event (per line with "
                                           "Accept: application/x-ndjson)",
                            "headers": served_by,
                            "content": {NDJSON: {"schema": ref("WatchLine"), "description": "one WatchLine per line"},
                                        SSE: {"schema": sse_line}}},
                    **errors(*BASE_ERRORS, 408, 410, 413, 429, 503),
                },
            },
        },
    }
