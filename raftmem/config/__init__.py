"""Cluster configuration: one frozen, typed object loaded from YAML and validated.

The layout is the seed's (DESIGN.md section 5). Validation refuses to start on
anything Raft cannot honour, and says why: an even or oversized replica count,
timeouts out of order, a heartbeat not well under the election timeout, unknown
keys, duplicate ports, a non-loopback Raft port without a password.

`schema` (the dataclasses and limits), `load` (YAML to Config), `rules` (the
cross-field checks). This package imports nothing else of raftmem.
"""

from __future__ import annotations

from .load import LOCAL_3NODE_YAML, embedded_default, load, parse
from .rules import check_ports_free, check_tls_files, is_loopback, validate
from .schema import (
    AUTH_ROLES,
    AUTH_SECRET_CHARS_MIN,
    BATCH_OPS_MAX,
    BODY_BYTES_MAX,
    CONSISTENCY_LEVELS,
    EMBEDDING_DIMS_MAX,
    FSYNC_MODES,
    ID_CHARS_MAX,
    INDEX_TIERS,
    LEVEL_ALIASES,
    LIST_PAGE_MAX,
    NAMESPACE_CHARS_MAX,
    SHARDS_MAX,
    STALENESS_MS_MAX,
    TAG_CHARS_MAX,
    TAGS_MAX,
    WATCH_PROGRESS_MS_MAX,
    WATCH_PROGRESS_MS_MIN,
    ApiToken,
    AuthConfig,
    Config,
    ConfigError,
    ConsistencyConfig,
    CoordinationConfig,
    EmbedderConfig,
    HistoryConfig,
    IndexingConfig,
    LifecycleConfig,
    LimitsConfig,
    NodeConfig,
    PolicyConfig,
    RaftConfig,
    StorageConfig,
    TagOverride,
    TierRule,
    TlsConfig,
    WatchConfig,
    canonical_level,
)

__all__ = [
    "AUTH_ROLES", "AUTH_SECRET_CHARS_MIN", "BATCH_OPS_MAX", "BODY_BYTES_MAX", "CONSISTENCY_LEVELS",
    "FSYNC_MODES", "ID_CHARS_MAX", "LIST_PAGE_MAX", "LOCAL_3NODE_YAML", "NAMESPACE_CHARS_MAX",
    "SHARDS_MAX", "STALENESS_MS_MAX", "TAG_CHARS_MAX", "TAGS_MAX", "ApiToken", "AuthConfig",
    "Config", "ConfigError", "ConsistencyConfig", "CoordinationConfig", "HistoryConfig", "LifecycleConfig",
    "LimitsConfig", "NodeConfig", "PolicyConfig", "RaftConfig", "StorageConfig", "TagOverride", "TlsConfig",
    "WATCH_PROGRESS_MS_MAX", "WATCH_PROGRESS_MS_MIN", "WatchConfig", "check_tls_files", "LEVEL_ALIASES",
    "canonical_level", "check_ports_free", "embedded_default", "is_loopback", "load", "parse", "validate",
    "EMBEDDING_DIMS_MAX", "INDEX_TIERS", "EmbedderConfig", "IndexingConfig", "TierRule",
]
