"""The OpenAPI 3.1 description of API v1, served at GET /openapi.json.

Built from the node's config and the definitions the server validates with
(raftmem.validation, the limits, the error tree), one file per area:

    parts          responses, errors, headers, shared parameters
    memories       memories, history, list, batch
    recall         search, namespaces, summaries
    watch          the change stream
    coordination   locks, task queues
    operations     cluster, health, readiness, metrics, admin

`/v1/internal/*` (what nodes ask each other) is not public and not described.
`tests/integration/test_contract.py` runs schemathesis against a real cluster
with this document: every request it generates from the document must be
answered as the document says.
"""

from __future__ import annotations

from typing import Any

from ..config import Config
from . import coordination, memories, operations, recall, watch
from .parts import Params, error_schema, headers

OPENAPI_VERSION = "3.1.0"
RULES = """Rules every operation follows, stated here once:
- A query parameter is given at most once and never empty (leave it out instead): 400 otherwise.
- Bad input is a 400 (413 too large, 408 too slow) with `{"error": {"code", "message", "field"}}`, and changes
  nothing.
- Relations JSON Schema cannot state are said in the operation's words (If-Fence and the path, an atomic batch's
  shard, consistency=bounded and max_staleness_ms, a task's not_before and the clock, a vector's dimension and
  the namespace's embeddings, cursors this server issued).
- Clusters with `auth.cluster_token` set ask for `Authorization: Bearer <token>` (401, 403); health, readiness,
  metrics and this document stay open.
- `/v1/internal/*` is how nodes talk to each other: not public, not described."""


def build(config: Config) -> dict[str, Any]:
    """The document for this config: the same for every node and at any time
    (a bound relative to the clock, a task's not_before, is said in words)."""
    p = Params(config)
    paths: dict[str, Any] = {
        **memories.paths(config, p),
        **watch.paths(config, p),
        **recall.paths(config, p),
        **coordination.paths(config, p),
        **operations.paths(config, p),
    }
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "raftmem", "version": "1", "description": RULES},
        "paths": paths,
        # Optional: only clusters with auth.cluster_token set check it.
        "security": [{}, {"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "headers": headers(config),
            "schemas": {
                "Error": error_schema(),
                **memories.schemas(config),
                **recall.schemas(config),
                **watch.schemas(config),
                **coordination.schemas(config),
                **operations.schemas(config),
            },
        },
    }


__all__ = ["OPENAPI_VERSION", "build"]
