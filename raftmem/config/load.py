"""Loading the YAML config: keys checked against the schema, types converted,
then the cross-field rules applied (`rules.validate`)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from .rules import validate
from .schema import (
    AUTH_ROLES,
    AUTH_SECRET_CHARS_MIN,
    EMBEDDING_DIMS_MAX,
    INDEX_ENGINES,
    INDEX_TIERS,
    LIFECYCLE_ORDERS,
    RAFT_PORT_OFFSET,
    SHARDS_MAX,
    STALENESS_MS_MAX,
    TOKEN_LEVELS,
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

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_SECRET_RE = re.compile(r"[!-~]+")

_TOP_KEYS = {
    "cluster", "replication", "raft", "consistency", "storage", "limits", "watch", "history", "lifecycle", "auth",
    "tls", "debug", "coordination", "indexing",
}
_CLUSTER_KEYS = {"name", "shards", "nodes"}
_NODE_KEYS = {"id", "host", "http_port", "raft_port_base", "zone", "port", "role"}
# The design's node roles. In a Raft cluster every node holds replicas and each
# shard elects its leader, so a role changes nothing; it is accepted and shown.
NODE_ROLES = ("primary", "replica", "secondary", "voter")
_DEBUG_KEYS = {
    "unsafe_local_reads", "unsafe_early_ack", "disable_prevote",
    "slow_snapshot_disk", "inline_snapshot_install", "unsafe_skip_fence_check", "unsafe_watch_drop",
    "torn_snapshot_transfer", "unsafe_unchecked_snapshots",
    # Negative control of leadership hand-overs: pysyncobj's own transfer.
    "naive_transfer",
    # Negative control of search freshness: fresh=true answers without its barrier.
    "unsafe_search_no_barrier",
    # Negative control of search-idle replicas: a search does not wake one (its
    # batched changes keep waiting up to indexing.idle_batch_ms).
    "unsafe_search_no_wake",
    # Negative control of the engine host's death: the replicas' indexes resume
    # from what they had claimed, not from the engines' durable watermark (the
    # vectors absorbed since the last save are lost).
    "unsafe_engines_resume_claimed",
}
_POLICY_KEYS = {"name", "namespace", "tag", "not_accessed_for", "max_per_agent", "order"}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


def _check_keys(section: str, data: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(
            f"{section}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


def _mapping(section: str, value: Any) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{section}: must be a mapping, got {type(value).__name__}")
    return value


def _int(section: str, key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{section}.{key}: must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise ConfigError(f"{section}.{key}: {value} is out of range [{lo}, {hi}]")
    return value


def _dataclass_from(section: str, cls: type, data: Mapping[str, Any]) -> Any:
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    _check_keys(section, data, set(fields))
    kwargs = {}
    for key, value in data.items():
        default = fields[key].default
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{section}.{key}: must be true or false, got {value!r}")
        elif isinstance(default, int):
            value = _int(section, key, value, 0, 1 << 40)
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{section}.{key}: must be a number, got {value!r}")
            value = float(value)
        kwargs[key] = value
    return cls(**kwargs)


def parse(data: Any, source: str = "<embedded>") -> Config:
    """Build and validate a Config from the parsed YAML document."""
    top = _mapping("config", data)
    _check_keys("config", top, _TOP_KEYS)
    cluster = _mapping("cluster", top.get("cluster"))
    _check_keys("cluster", cluster, _CLUSTER_KEYS)
    name = str(cluster.get("name", "local"))
    shards = _int("cluster", "shards", cluster.get("shards", 8), 1, SHARDS_MAX)
    raw_nodes = cluster.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise ConfigError("cluster.nodes: must be a non-empty list of nodes")
    nodes = [_node(f"cluster.nodes[{i}]", raw) for i, raw in enumerate(raw_nodes)]
    replication = _mapping("replication", top.get("replication"))
    _check_keys("replication", replication, {"factor", "write_quorum", "read_quorum"})
    factor = _int("replication", "factor", replication.get("factor", 3), 1, 7)
    quorums = {
        key: None if replication.get(key) is None else _int("replication", key, replication[key], 1, 7)
        for key in ("write_quorum", "read_quorum")
    }
    raft = _dataclass_from("raft", RaftConfig, _mapping("raft", top.get("raft")))
    cons = _mapping("consistency", top.get("consistency"))
    _check_keys("consistency", cons, {"default", "overrides"})
    overrides = []
    for i, raw in enumerate(cons.get("overrides") or []):
        section = f"consistency.overrides[{i}]"
        raw = _mapping(section, raw)
        _check_keys(section, raw, {"tags", "model", "max_staleness_ms"})
        tags = raw.get("tags")
        if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
            raise ConfigError(f"{section}.tags: must be a non-empty list of strings")
        model = canonical_level(str(raw.get("model")))
        bound = raw.get("max_staleness_ms")
        if model in TOKEN_LEVELS:
            raise ConfigError(
                f"{section}: {model} needs a token per request (after= or X-Raftmem-Context); it cannot be "
                f"a tag policy (make it the default instead)"
            )
        if model == "bounded":
            if isinstance(bound, bool) or not isinstance(bound, int) or not 0 <= bound <= STALENESS_MS_MAX:
                raise ConfigError(
                    f"{section}.max_staleness_ms: model bounded needs an integer in [0, {STALENESS_MS_MAX}]"
                )
        elif bound is not None:
            raise ConfigError(f"{section}.max_staleness_ms: only for model bounded")
        overrides.append(TagOverride(tags=tuple(tags), model=model, max_staleness_ms=bound))
    consistency = ConsistencyConfig(
        default=canonical_level(str(cons.get("default", "strong"))), overrides=tuple(overrides)
    )
    storage = _mapping("storage", top.get("storage"))
    _check_keys("storage", storage, {"data_dir", *StorageConfig.__dataclass_fields__})
    storage_config = _dataclass_from("storage", StorageConfig, {k: v for k, v in storage.items() if k != "data_dir"})
    limits = _dataclass_from("limits", LimitsConfig, _mapping("limits", top.get("limits")))
    debug = dict(_mapping("debug", top.get("debug")))
    _check_keys("debug", debug, _DEBUG_KEYS)
    config = Config(
        name=name,
        shards=shards,
        nodes=tuple(nodes),
        replication_factor=factor,
        write_quorum=quorums["write_quorum"],
        read_quorum=quorums["read_quorum"],
        raft=raft,
        consistency=consistency,
        data_dir=str(storage.get("data_dir", "./data")),
        storage=storage_config,
        limits=limits,
        watch=_dataclass_from("watch", WatchConfig, _mapping("watch", top.get("watch"))),
        history=_dataclass_from("history", HistoryConfig, _mapping("history", top.get("history"))),
        lifecycle=_parse_lifecycle(_mapping("lifecycle", top.get("lifecycle"))),
        auth=_parse_auth(_mapping("auth", top.get("auth"))),
        tls=_dataclass_from("tls", TlsConfig, _mapping("tls", top.get("tls"))),
        coordination=_dataclass_from("coordination", CoordinationConfig, _mapping("coordination", top.get("coordination"))),
        indexing=_parse_indexing(_mapping("indexing", top.get("indexing"))),
        debug={k: bool(v) for k, v in debug.items()},
        source=source,
    )
    validate(config)
    return config


def _node(section: str, raw: Any) -> NodeConfig:
    """One node entry: raftmem's layout (`http_port`, `raft_port_base`) or the
    design's (`port`, and `role`, which Raft elects: accepted, no effect)."""
    raw = _mapping(section, raw)
    _check_keys(section, raw, _NODE_KEYS)
    if "port" in raw and "http_port" in raw:
        raise ConfigError(f"{section}: give port or http_port, not both (port is the design's name for http_port)")
    http_key = "port" if "port" in raw else "http_port"
    for key in ("id", "host", http_key):
        if key not in raw:
            raise ConfigError(f"{section}: missing {key}")
    if "raft_port_base" not in raw and http_key == "http_port":
        raise ConfigError(f"{section}: missing raft_port_base")
    role = raw.get("role")
    if role is not None and role not in NODE_ROLES:
        raise ConfigError(f"{section}.role: {role!r} is not one of {', '.join(NODE_ROLES)} (and has no effect: "
                          f"Raft elects each shard's leader)")
    http_port = _int(section, http_key, raw[http_key], 1, 65535)
    raft_base = raw.get("raft_port_base", http_port + RAFT_PORT_OFFSET)
    return NodeConfig(
        id=str(raw["id"]),
        host=str(raw["host"]),
        http_port=http_port,
        raft_port_base=_int(section, "raft_port_base", raft_base, 1, 65535),
        zone=str(raw.get("zone", "")),
    )


def duration_ms(where: str, value: Any) -> int:
    """`30d`, `12h`, `15m`, `90s`, `250ms`, or a number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: a duration like 30d, 12h, 15m or 90s, got {value!r}")
    match = _DURATION_RE.fullmatch(str(value).strip())
    if match is None:
        raise ConfigError(f"{where}: a duration like 30d, 12h, 15m or 90s, got {value!r}")
    ms = int(float(match.group(1)) * _DURATION_MS[match.group(2)])
    if ms <= 0:
        raise ConfigError(f"{where}: must be longer than 0")
    return ms


def _parse_lifecycle(raw: Mapping[str, Any]) -> LifecycleConfig:
    scalars = {k: v for k, v in raw.items() if k != "policies"}
    base: LifecycleConfig = _dataclass_from("lifecycle", LifecycleConfig, scalars)
    raw_policies = raw.get("policies") or []
    if not isinstance(raw_policies, list):
        raise ConfigError("lifecycle.policies: must be a list")
    policies: list[PolicyConfig] = []
    for i, item in enumerate(raw_policies):
        section = f"lifecycle.policies[{i}]"
        item = _mapping(section, item)
        _check_keys(section, item, _POLICY_KEYS)
        name = item.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
            raise ConfigError(f"{section}.name: 1 to 64 characters of [A-Za-z0-9._-]")
        if any(p.name == name for p in policies):
            raise ConfigError(f"{section}.name: {name!r} is used twice")
        selector = {k: item.get(k) for k in ("namespace", "tag")}
        if not any(selector.values()):
            raise ConfigError(f"{section}: name a namespace, a tag, or both (which memories it applies to)")
        for key, value in selector.items():
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"{section}.{key}: a non-empty string")
        if ("not_accessed_for" in item) == ("max_per_agent" in item):
            raise ConfigError(f"{section}: give exactly one rule: not_accessed_for (e.g. 30d) or max_per_agent")
        idle = duration_ms(f"{section}.not_accessed_for", item["not_accessed_for"]) if "not_accessed_for" in item \
            else None
        keep = _int(section, "max_per_agent", item["max_per_agent"], 0, 1 << 31) if "max_per_agent" in item else None
        order = item.get("order", "oldest")
        if order not in LIFECYCLE_ORDERS:
            raise ConfigError(f"{section}.order: one of {', '.join(LIFECYCLE_ORDERS)}")
        if "order" in item and keep is None:
            raise ConfigError(f"{section}.order: only with max_per_agent")
        policies.append(PolicyConfig(name, selector["namespace"], selector["tag"], idle, keep, order))
    fields = {k: getattr(base, k) for k in LifecycleConfig.__dataclass_fields__ if k != "policies"}
    return LifecycleConfig(**fields, policies=tuple(policies))


def _parse_auth(raw: Mapping[str, Any]) -> AuthConfig:
    _check_keys("auth", raw, {"cluster_token", "cluster_tokens_also_accepted", "tokens"})
    if not raw:
        return AuthConfig()
    cluster_token = raw.get("cluster_token")
    if not isinstance(cluster_token, str) or len(cluster_token) < AUTH_SECRET_CHARS_MIN:
        raise ConfigError(
            f"auth.cluster_token: a secret of at least {AUTH_SECRET_CHARS_MIN} characters "
            f"(nodes present it to each other) is needed to turn authentication on"
        )
    _check_secret("auth.cluster_token", cluster_token)
    also = raw.get("cluster_tokens_also_accepted") or []
    if not isinstance(also, list) or not all(isinstance(t, str) for t in also):
        raise ConfigError("auth.cluster_tokens_also_accepted: a list of secrets")
    for i, secret in enumerate(also):
        _check_secret(f"auth.cluster_tokens_also_accepted[{i}]", secret)
    tokens: list[ApiToken] = []
    raw_tokens = raw.get("tokens") or []
    if not isinstance(raw_tokens, list):
        raise ConfigError("auth.tokens: must be a list")
    for i, item in enumerate(raw_tokens):
        section = f"auth.tokens[{i}]"
        item = _mapping(section, item)
        _check_keys(section, item, {"name", "token", "token_sha256", "role", "namespaces"})
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{section}.name: a non-empty string")
        if ("token" in item) == ("token_sha256" in item):
            raise ConfigError(f"{section}: give exactly one of token and token_sha256")
        if "token" in item:
            token = item["token"]
            if not isinstance(token, str):
                raise ConfigError(f"{section}.token: a string")
            _check_secret(f"{section}.token", token)
            digest = hashlib.sha256(token.encode()).hexdigest()
        else:
            digest = str(item["token_sha256"]).lower()
            if not _SHA256_HEX.fullmatch(digest):
                raise ConfigError(f"{section}.token_sha256: 64 hex digits (sha256 of the token)")
        role = item.get("role")
        if role not in AUTH_ROLES:
            raise ConfigError(f"{section}.role: one of {', '.join(AUTH_ROLES)}")
        namespaces = item.get("namespaces")
        if namespaces is not None:
            if role == "admin":
                raise ConfigError(f"{section}.namespaces: an admin token acts on the whole cluster")
            if not isinstance(namespaces, list) or not namespaces or not all(
                isinstance(n, str) and n for n in namespaces
            ):
                raise ConfigError(f"{section}.namespaces: a non-empty list of namespace names")
            namespaces = tuple(namespaces)
        if any(t.sha256 == digest for t in tokens) or digest == hashlib.sha256(cluster_token.encode()).hexdigest():
            raise ConfigError(f"{section}: the same token is configured twice")
        tokens.append(ApiToken(name=name, sha256=digest, role=role, namespaces=namespaces))
    return AuthConfig(cluster_token=cluster_token, cluster_tokens_also_accepted=tuple(also), tokens=tuple(tokens))


def _parse_indexing(raw: Mapping[str, Any]) -> IndexingConfig:
    """`indexing:` (tiers in the shape of the consistency overrides)."""
    section = "indexing"
    plain = {k: v for k, v in raw.items() if k not in ("tiers", "embedder", "default_tier")}
    base: IndexingConfig = _dataclass_from(section, IndexingConfig, plain)
    tiers = base.tiers
    if "tiers" in raw:
        rules = []
        for i, item in enumerate(raw.get("tiers") or []):
            where = f"{section}.tiers[{i}]"
            item = _mapping(where, item)
            _check_keys(where, item, {"tags", "tier"})
            tags = item.get("tags")
            if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
                raise ConfigError(f"{where}.tags: must be a non-empty list of strings")
            if item.get("tier") not in INDEX_TIERS:
                raise ConfigError(f"{where}.tier: one of {', '.join(INDEX_TIERS)}")
            rules.append(TierRule(tuple(tags), str(item["tier"])))
        tiers = tuple(rules)
    default_tier = raw.get("default_tier", base.default_tier)
    if default_tier not in INDEX_TIERS:
        raise ConfigError(f"{section}.default_tier: one of {', '.join(INDEX_TIERS)}")
    embedder = None
    if raw.get("embedder") is not None:
        emb = _mapping(f"{section}.embedder", raw["embedder"])
        _check_keys(f"{section}.embedder", emb, {"url", "model", "dims", "timeout_ms"})
        if not isinstance(emb.get("url"), str) or not str(emb["url"]).startswith(("http://", "https://")):
            raise ConfigError(f"{section}.embedder.url: an http(s) URL of an OpenAI-compatible server")
        if not isinstance(emb.get("model"), str) or not emb["model"]:
            raise ConfigError(f"{section}.embedder.model: the model name to ask for")
        embedder = EmbedderConfig(
            url=str(emb["url"]).rstrip("/"), model=str(emb["model"]),
            dims=_int(f"{section}.embedder", "dims", emb.get("dims"), 1, EMBEDDING_DIMS_MAX),
            timeout_ms=_int(f"{section}.embedder", "timeout_ms", emb.get("timeout_ms", 5000), 1, 600_000),
        )
    config = replace(base, tiers=tiers, default_tier=str(default_tier), embedder=embedder)
    if config.batch_docs < 1 or config.batch_docs > config.batch_docs_max:
        raise ConfigError(f"{section}.batch_docs: must be in [1, batch_docs_max ({config.batch_docs_max})]")
    if config.queue_docs_max < config.batch_docs:
        raise ConfigError(f"{section}.queue_docs_max: must be at least batch_docs ({config.batch_docs})")
    if config.queue_bytes_max < 1 << 20:
        raise ConfigError(f"{section}.queue_bytes_max: at least 1 MiB (a record is up to a MiB)")
    if config.text_heap_bytes < 15_000_000:
        raise ConfigError(f"{section}.text_heap_bytes: tantivy needs at least 15000000")
    if config.checkpoint_s < 1:
        raise ConfigError(f"{section}.checkpoint_s: at least 1")
    if not 0 <= config.commits_per_s <= 10_000:
        raise ConfigError(f"{section}.commits_per_s: in [0, 10000] (0: no budget)")
    if not 1 <= config.commits_burst <= 10_000:
        raise ConfigError(f"{section}.commits_burst: in [1, 10000]")
    if not 0 <= config.search_idle_s <= 86_400:
        raise ConfigError(f"{section}.search_idle_s: in [0, 86400] (0: never idle)")
    if not 0 <= config.engine_nice <= 19:
        raise ConfigError(f"{section}.engine_nice: in [0, 19]")
    if config.engines not in INDEX_ENGINES:
        raise ConfigError(f"{section}.engines: one of {', '.join(INDEX_ENGINES)}")
    if not 0 <= config.idle_batch_ms <= 600_000:
        raise ConfigError(f"{section}.idle_batch_ms: in [0, 600000] (below batch_ms: batch_ms)")
    if not 1 <= config.idle_absorb_ms <= 60_000:
        raise ConfigError(f"{section}.idle_absorb_ms: in [1, 60000]")
    return config


def _check_secret(where: str, secret: str) -> None:
    # Clients' tokens arrive stripped, in a header: only printable ASCII without
    # spaces can ever match.
    if len(secret) < AUTH_SECRET_CHARS_MIN or not _SECRET_RE.fullmatch(secret):
        raise ConfigError(
            f"{where}: at least {AUTH_SECRET_CHARS_MIN} printable ASCII characters, no spaces"
        )


def load(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e.strerror}") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return parse(data, source=str(path))


LOCAL_3NODE_YAML = """\
cluster:
  name: local
  shards: 8
  nodes:
    - {id: n1, host: 127.0.0.1, http_port: 8781, raft_port_base: 9100, zone: a}
    - {id: n2, host: 127.0.0.1, http_port: 8782, raft_port_base: 9200, zone: b}
    - {id: n3, host: 127.0.0.1, http_port: 8783, raft_port_base: 9300, zone: c}
replication: {factor: 3}
raft: {election_timeout_ms_min: 400, election_timeout_ms_max: 1000, heartbeat_ms: 100,
       clock_drift_bound: 0.1, fsync: always}
consistency:
  default: strong
  overrides:
    - {tags: [critical, lock], model: linearizable}
    - {tags: [analytics, metric], model: eventual}
storage: {data_dir: ./data}
"""


def embedded_default() -> Config:
    return parse(yaml.safe_load(LOCAL_3NODE_YAML), source="<embedded local-3node>")
