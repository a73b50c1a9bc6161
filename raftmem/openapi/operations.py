"""Operating a cluster: its view, health, readiness, metrics, this document,
and the admin endpoints (membership, leadership, backups, indexes, lifecycle)."""

from __future__ import annotations

from .. import validation as v
from ..config import Config
from .parts import (
    BASE_ERRORS,
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

OCTETS = "application/octet-stream"
PROMETHEUS = "text/plain"


def schemas(config: Config) -> dict[str, Schema]:
    del config  # nothing here depends on it
    node = obj({"id": v.name_schema(v.NODE_ID_CHARS_MAX), "host": {"type": "string"},
                "http_port": {"type": "integer"}, "raft_port_base": {"type": "integer"}, "zone": {"type": "string"}},
               ("id", "host", "http_port", "raft_port_base"))
    table = obj({"version": {"type": "integer"}, "factor": {"type": "integer"},
                 "nodes": {"type": "array", "items": node},
                 "assignment": {"type": "object", "additionalProperties": {"type": "array",
                                                                            "items": {"type": "string"}},
                                "description": "shard -> its replicas' node ids, the preferred leader first"}},
                ("version", "factor", "nodes", "assignment"))
    moves = {"type": "array", "items": {"type": "object"}, "description": "replicas that move"}
    index = obj({"ready": {"type": "boolean"}, "watermark": {"type": "integer"},
                 "lag_entries": {"type": "integer"}, "lag_ms": {"type": "integer"}, "waiting": {"type": "integer"},
                 "error": {"type": ["string", "null"]}, "documents": {"type": "integer"},
                 "search_idle": {"type": "boolean", "description": "no search used it for indexing.search_idle_s: "
                                 "its batches wait longer, and the next search waits for them"},
                 "engine_restarts": {"type": "integer", "description": "times its engines were opened again after "
                                     "the engine host died"},
                 "absorb_us_per_change": {"type": "integer", "description": "what absorbing a change took lately "
                                          "(wall time, commits included): a search-idle replica's batch goes once "
                                          "absorbing it would take indexing.idle_absorb_ms"}})
    return {
        "Readiness": obj({"ready": {"type": "boolean"}, "node": {"type": "string"},
                          "problems": {"type": "array", "items": {"type": "string"}}}, ("ready", "node", "problems")),
        "MembershipTable": table,
        "TableChange": obj({"table": ref("MembershipTable"), "moves": moves, "moved_fraction": {"type": "number"},
                            "dry_run": {"type": "boolean"}}, ("table",)),
        "IndexState": index,
        "Cluster": obj({
            "cluster": {"type": "string"}, "node": {"type": "string"}, "shard_count": {"type": "integer"},
            "replication_factor": {"type": "integer"}, "quorums": {"type": "object"}, "hash": {"type": "string"},
            "table_version": {"type": "integer"},
            "nodes": {"type": "array", "items": obj({"id": {"type": "string"}, "url": {"type": "string"},
                                                     "zone": {"type": "string"},
                                                     "raft_port_base": {"type": "integer"}})},
            "shards": {"type": "array", "items": obj({
                "shard": {"type": "integer"}, "replicas": {"type": "array", "items": {"type": "string"}},
                "role": {"type": "string"}, "leader": {"type": ["string", "null"]}, "term": {"type": "integer"},
                "commit_index": {"type": "integer"}, "applied_index": {"type": "integer"}, "index": ref("IndexState"),
            }, ("shard", "replicas"), description="this node's replica of the shard, when it holds one: role, "
                                                  "leader, term, indexes, lease, log")},
        }, ("cluster", "node", "shard_count", "replication_factor", "nodes", "shards"),
            description="and a section per subsystem (watch, lifecycle, coordination...)"),
    }


def paths(config: Config, p: Params) -> dict[str, Schema]:
    del p
    shard = param("shard", "path", v.int_schema(0, config.shards - 1))
    node_ids = sorted(n.id for n in config.nodes)
    policies = [policy.name for policy in config.lifecycle.policies]
    member = obj({"id": v.name_schema(v.NODE_ID_CHARS_MAX), "host": v.label_schema(v.HOST_CHARS_MAX),
                  "http_port": v.int_schema(1, 65535),
                  "raft_port_base": {**v.int_schema(1, 65535 - (config.shards - 1)),
                                     "description": "its shards' Raft ports follow it"},
                  "zone": {"anyOf": [v.label_schema(v.NODE_ID_CHARS_MAX), {"type": "null"}]}},
                 ("id", "host", "http_port", "raft_port_base"), closed=True)
    return {
        "/v1/cluster": {"get": {"summary": "Nodes, shards, leaders, terms, indexes, leases (this node's view)",
                                "responses": {"200": response("the view", ref("Cluster")), **errors(*BASE_ERRORS)}}},
        "/healthz": {"get": {"summary": "Liveness: the process answers", "security": [{}],
                             "responses": {"200": response("alive", obj({"status": {"const": "ok"},
                                                                         "node": {"type": "string"}},
                                                                        ("status", "node"))),
                                           **errors(400, 500)}}},
        "/readyz": {"get": {
            "summary": "Readiness: every local replica knows a leader (sync: and has applied what its leader "
                       "committed)", "security": [{}],
            "parameters": [query("sync", v.FLAG_SCHEMA)],
            "responses": {"200": response("ready", ref("Readiness")),
                          "503": response("not ready: `problems` say why", ref("Readiness"),
                                          headers={"Retry-After": True}),
                          **errors(400, 500)}}},
        "/metrics": {"get": {"summary": "Prometheus metrics (text exposition format)", "security": [{}],
                             "responses": {"200": response("the metrics", {"type": "string"}, media=PROMETHEUS),
                                           **errors(400, 500)}}},
        "/openapi.json": {"get": {"summary": "This document (built from the node's config)", "security": [{}],
                                  "responses": {"200": response("OpenAPI 3.1", {"type": "object"}),
                                                **errors(400, 500)}}},
        "/v1/admin/members": {
            "get": {"summary": "The membership table (read linearizably)",
                    "responses": {"200": response("the table", obj({"table": ref("MembershipTable")}, ("table",))),
                                  **errors(*READ_ERRORS)}},
            "post": {"summary": "Add a node (its shards move only with a rebalance)",
                     "requestBody": {"required": True, "content": {"application/json": {"schema": member}}},
                     "responses": {"200": response("the new table", obj({"table": ref("MembershipTable")},
                                                                        ("table",))),
                                   **errors(*WRITE_ERRORS, 409, _409="already a member, or its ports overlap "
                                                                     "another's on that host")}},
        },
        "/v1/admin/members/{node}": {
            "delete": {"summary": "Remove a node: its replicas move to the others",
                       "parameters": [param("node", "path", v.name_schema(v.NODE_ID_CHARS_MAX))],
                       "responses": {"200": response("the new table and the moves", ref("TableChange")),
                                     **errors(*WRITE_ERRORS, 404, 409, _404="not a member",
                                              _409="fewer nodes than the replication factor would remain")}},
        },
        "/v1/admin/rebalance": {
            "post": {"summary": "Re-place every shard by the ring (moving only what the ring changes)",
                     "parameters": [query("dry_run", v.FLAG_SCHEMA, "only say what would move")],
                     "responses": {"200": response("the table and the moves", ref("TableChange")),
                                   **errors(*WRITE_ERRORS, 409)}},
        },
        "/v1/admin/shards/{shard}/transfer-leader": {
            "post": {"summary": "Hand the shard's leadership to `to` (or the most caught-up follower); answers once "
                                "asked, poll /v1/cluster to see it land",
                     "parameters": [shard, query("to", {"type": "string", "enum": node_ids},
                                                 "a node holding a replica of the shard (400 otherwise: the "
                                                 "placement is state, these are the configured nodes)")],
                     "responses": {
                         "200": response("already there", obj({"shard": {"type": "integer"},
                                                               "leader": {"type": "string"},
                                                               "transferred": {"const": False}})),
                         "202": response("asked", obj({"shard": {"type": "integer"}, "from": {"type": "string"},
                                                       "to": {"type": ["string", "null"]},
                                                       "transferred": {"const": True}})),
                         **errors(*WRITE_ERRORS, _503="the shard has no leader, or the target is not connected "
                                                      "or not caught up yet: nothing was done, retry after "
                                                      "Retry-After (the CLI does)")}},
        },
        "/v1/admin/backup": {
            "get": {"summary": "An online backup of every shard (writes keep flowing)",
                    "responses": {"200": response("the backup file", {"type": "string",
                                                                      "contentMediaType": OCTETS},
                                                  headers={"Content-Disposition": True}, media=OCTETS),
                                  **errors(*READ_ERRORS)}},
        },
        "/v1/admin/restore": {
            "post": {"summary": "Load a backup through each shard's log: its memories replace those with the same "
                                "key, others stay",
                     "requestBody": {"required": True, "content": {OCTETS: {"schema": {
                         "type": "string", "contentMediaType": OCTETS, "description": "a file from /v1/admin/backup "
                                                                                      "(else 400)"}}}},
                     "responses": {"200": response("restored", obj({
                         "restored": {"type": "integer"}, "per_shard": {"type": "object"},
                         "backup_created_at": {"type": "integer"}, "cluster": {"type": "string"}},
                         ("restored", "per_shard"))), **errors(*WRITE_ERRORS)}},
        },
        "/v1/admin/reindex": {
            "post": {"summary": "Rebuild this node's derived indexes of a shard (default: all) from its store",
                     "parameters": [query("shard", v.int_schema(0, config.shards - 1)),
                                    query("wait", v.FLAG_SCHEMA, "answer once rebuilt")],
                     "responses": {"200": response("started (or rebuilt)", obj({
                         "node": {"type": "string"}, "shards": {"type": "array", "items": {"type": "integer"}},
                         "indexes": {"type": "object", "additionalProperties": {"anyOf": [ref("IndexState"),
                                                                                          {"type": "null"}]}}},
                         ("node", "shards", "indexes"))), **errors(*BASE_ERRORS)}},
        },
        "/v1/admin/indexes": {
            "get": {"summary": "This node's derived indexes: watermark, lag, queue",
                    "responses": {"200": response("per shard", obj({
                        "node": {"type": "string"},
                        "shards": {"type": "object", "additionalProperties": ref("IndexState")},
                        "engine_host": {"anyOf": [obj({
                            "pid": {"type": ["integer", "null"]}, "alive": {"type": "boolean"},
                            "restarts": {"type": "integer"}}), {"type": "null"}],
                            "description": "the process the engines run in (null: indexing.engines is thread)"}},
                        ("node", "shards"))), **errors(*BASE_ERRORS)}},
        },
        "/v1/admin/indexes/{shard}/check": {
            "get": {"summary": "This node's index of the shard against its store at the same index (pause writes "
                               "first)",
                    "parameters": [shard],
                    "responses": {"200": response("what differs", obj({
                        "node": {"type": "string"}, "shard": {"type": "integer"}, "applied": {"type": "integer"},
                        "watermark": {"type": "integer"}, "documents": {"type": "integer"},
                        "store": {"type": "integer"}, "missing": {"type": "array"}, "extra": {"type": "array"},
                        "duplicates": {"type": "integer"}, "stale": {"type": "array"},
                        "vectors": {"type": "object"}}, ("node", "shard"))),
                        **errors(*READ_ERRORS)}},
        },
        "/v1/admin/lifecycle/run": {
            "post": {"summary": "Run the pruning policies now on every shard leader (dry_run: only say what they "
                                "would remove)",
                     # Without configured policies there is no valid `policy=`: not offered (an empty
                     # enum is a parameter nothing satisfies, and generators send "" for it).
                     "parameters": [query("dry_run", v.FLAG_SCHEMA),
                                    *([query("policy", {"type": "string", "enum": policies},
                                             "one of the configured policies (lifecycle.policies)")]
                                      if policies else [])],
                     "responses": {"200": response("per shard and policy: candidates, removed", obj({
                         "dry_run": {"type": "boolean"},
                         "shards": {"type": "array", "items": obj({
                             "shard": {"type": "integer"}, "policies": {"type": "object"},
                             "error": {"type": "object"}}, ("shard",))}}, ("dry_run", "shards"))),
                         **errors(*WRITE_ERRORS)}},
        },
    }

