"""Cluster configuration: one frozen, typed object loaded from YAML and validated.

The layout is the seed's (DESIGN.md section 5). Validation refuses to start on
anything Raft cannot honour, and says why: an even or oversized replica count,
timeouts out of order, a heartbeat not well under the election timeout, unknown
keys, duplicate ports, a non-loopback Raft port without a password.

This module imports nothing from the package.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

CONSISTENCY_LEVELS = ("linearizable", "strong", "session", "bounded", "eventual")
FSYNC_MODES = ("always", "batch", "never")
# The largest max_staleness_ms a bounded read (or a bounded tag policy) may ask for.
STALENESS_MS_MAX = 3_600_000

# Limits (DESIGN.md section 4). Defaults here, overridable under `limits:`.
NAMESPACE_CHARS_MAX = 128
ID_CHARS_MAX = 256
BODY_BYTES_MAX = 1 << 20
TAGS_MAX = 64
TAG_CHARS_MAX = 128
LIST_PAGE_MAX = 1000
BATCH_OPS_MAX = 1000
SHARDS_MAX = 256


class ConfigError(ValueError):
    """The configuration cannot be used; the message says what and why."""


@dataclass(frozen=True)
class NodeConfig:
    id: str
    host: str
    http_port: int
    raft_port_base: int
    zone: str = ""

    def raft_port(self, shard: int) -> int:
        return self.raft_port_base + shard

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"


@dataclass(frozen=True)
class RaftConfig:
    election_timeout_ms_min: int = 400
    election_timeout_ms_max: int = 1000
    heartbeat_ms: int = 100
    clock_drift_bound: float = 0.1
    fsync: str = "always"
    fsync_batch_ms: int = 10
    # `heartbeat_ms` is the longest a follower goes without hearing from a live
    # leader. The leader sends its periodic append-entries (heartbeat, lease
    # renewal) twice as often, so one lost message does not break that promise.
    # New entries do not wait for it (the ticker ships them at once), nor do
    # ReadIndex reads (they ask for a round), so it only paces idle traffic.
    append_entries_period_ms: int = 0  # 0: heartbeat_ms / 2

    @property
    def append_period_ms(self) -> int:
        return self.append_entries_period_ms or max(1, self.heartbeat_ms // 2)
    # A leader that heard from no quorum for this long steps down (pysyncobj's
    # default of 30 s would let a cut-off leader accept writes for 30 s).
    leader_fallback_timeout_ms: int = 0  # 0: derive from election_timeout_ms_min
    log_compaction_entries: int = 5000
    log_compaction_min_s: int = 300
    password: str | None = None

    @property
    def leader_fallback_timeout_s(self) -> float:
        if self.leader_fallback_timeout_ms:
            return self.leader_fallback_timeout_ms / 1000.0
        # Step down before any follower may vote for someone else, so a cut-off
        # leader stops accepting writes (and followers' reads from it stop being
        # fresh) before a new leader can exist.
        return 0.75 * self.election_timeout_ms_min / 1000.0


@dataclass(frozen=True)
class TagOverride:
    tags: tuple[str, ...]
    model: str
    max_staleness_ms: int | None = None  # bounded only


@dataclass(frozen=True)
class ConsistencyConfig:
    default: str = "strong"
    overrides: tuple[TagOverride, ...] = ()

    def level_for_tags(self, tags: tuple[str, ...] | list[str]) -> str | None:
        """The strictest override that any of the tags asks for, or None."""
        found: list[str] = []
        for override in self.overrides:
            if any(t in override.tags for t in tags):
                found.append(override.model)
        if not found:
            return None
        return min(found, key=CONSISTENCY_LEVELS.index)

    def bound_for_tags(self, tags: tuple[str, ...] | list[str]) -> int | None:
        """The tightest `max_staleness_ms` of the bounded overrides the tags match."""
        bounds = [
            o.max_staleness_ms for o in self.overrides
            if o.max_staleness_ms is not None and any(t in o.tags for t in tags)
        ]
        return min(bounds) if bounds else None


@dataclass(frozen=True)
class LimitsConfig:
    namespace_chars_max: int = NAMESPACE_CHARS_MAX
    id_chars_max: int = ID_CHARS_MAX
    body_bytes_max: int = BODY_BYTES_MAX
    tags_max: int = TAGS_MAX
    tag_chars_max: int = TAG_CHARS_MAX
    list_page_max: int = LIST_PAGE_MAX
    batch_ops_max: int = BATCH_OPS_MAX
    # Proposals waiting for the log, per shard; past it writes answer 429.
    pending_writes_max: int = 10000
    # Uncommitted log entries per shard at once; more writes wait for the next entry.
    entries_in_flight_max: int = 1
    # Commands packed into one Raft log entry (group commit).
    group_commit_ops_max: int = 256
    group_commit_bytes_max: int = 512 * 1024
    # After an entry commits, wait up to this long for as many writes as it
    # answered (plus those already queued) before proposing the next one; 0: never.
    group_commit_linger_ms: float = 4.0
    write_timeout_ms: int = 5000
    read_timeout_ms: int = 5000
    idempotency_keys_max: int = 100000
    forward_timeout_ms: int = 6000


AUTH_ROLES = ("read", "write", "admin")  # each includes the ones before it
AUTH_SECRET_CHARS_MIN = 16
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_SECRET_RE = re.compile(r"[!-~]+")


@dataclass(frozen=True)
class ApiToken:
    name: str
    sha256: str  # hex digest of the bearer token; the token itself need not be stored
    role: str
    namespaces: tuple[str, ...] | None = None  # None: every namespace


@dataclass(frozen=True)
class AuthConfig:
    """API authentication: off unless `cluster_token` is set. Clients present
    `Authorization: Bearer <token>`; nodes present the cluster token to each other."""

    cluster_token: str | None = None  # what this node sends to the others
    cluster_tokens_also_accepted: tuple[str, ...] = ()  # for a rolling rotation
    tokens: tuple[ApiToken, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.cluster_token is not None


@dataclass(frozen=True)
class Config:
    name: str
    shards: int
    nodes: tuple[NodeConfig, ...]
    replication_factor: int = 3
    raft: RaftConfig = field(default_factory=RaftConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    data_dir: str = "./data"
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    # Debug switches that make the store unsafe, for the harness's negative
    # controls only. Never set them in production.
    debug: Mapping[str, bool] = field(default_factory=dict)
    source: str = "<embedded>"

    def node(self, node_id: str) -> NodeConfig:
        for n in self.nodes:
            if n.id == node_id:
                return n
        known = ", ".join(n.id for n in self.nodes)
        raise ConfigError(f"node {node_id!r} is not in the cluster config (known: {known})")

    def node_data_dir(self, node_id: str) -> Path:
        return Path(self.data_dir) / node_id


_TOP_KEYS = {"cluster", "replication", "raft", "consistency", "storage", "limits", "auth", "debug"}
_CLUSTER_KEYS = {"name", "shards", "nodes"}
_NODE_KEYS = {"id", "host", "http_port", "raft_port_base", "zone"}
_DEBUG_KEYS = {
    "unsafe_local_reads", "unsafe_early_ack", "disable_prevote",
    "slow_snapshot_disk", "inline_snapshot_install",
}


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
    fields = cls.__dataclass_fields__
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


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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
    nodes = []
    for i, raw in enumerate(raw_nodes):
        section = f"cluster.nodes[{i}]"
        raw = _mapping(section, raw)
        _check_keys(section, raw, _NODE_KEYS)
        for key in ("id", "host", "http_port", "raft_port_base"):
            if key not in raw:
                raise ConfigError(f"{section}: missing {key}")
        nodes.append(
            NodeConfig(
                id=str(raw["id"]),
                host=str(raw["host"]),
                http_port=_int(section, "http_port", raw["http_port"], 1, 65535),
                raft_port_base=_int(section, "raft_port_base", raw["raft_port_base"], 1, 65535),
                zone=str(raw.get("zone", "")),
            )
        )
    replication = _mapping("replication", top.get("replication"))
    _check_keys("replication", replication, {"factor"})
    factor = _int("replication", "factor", replication.get("factor", 3), 1, 7)
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
        model = str(raw.get("model"))
        bound = raw.get("max_staleness_ms")
        if model == "session":
            raise ConfigError(f"{section}: session needs a token per request (after=); it cannot be a tag policy")
        if model == "bounded":
            if isinstance(bound, bool) or not isinstance(bound, int) or not 0 <= bound <= STALENESS_MS_MAX:
                raise ConfigError(
                    f"{section}.max_staleness_ms: model bounded needs an integer in [0, {STALENESS_MS_MAX}]"
                )
        elif bound is not None:
            raise ConfigError(f"{section}.max_staleness_ms: only for model bounded")
        overrides.append(TagOverride(tags=tuple(tags), model=model, max_staleness_ms=bound))
    consistency = ConsistencyConfig(default=str(cons.get("default", "strong")), overrides=tuple(overrides))
    storage = _mapping("storage", top.get("storage"))
    _check_keys("storage", storage, {"data_dir"})
    limits = _dataclass_from("limits", LimitsConfig, _mapping("limits", top.get("limits")))
    debug = dict(_mapping("debug", top.get("debug")))
    _check_keys("debug", debug, _DEBUG_KEYS)
    config = Config(
        name=name,
        shards=shards,
        nodes=tuple(nodes),
        replication_factor=factor,
        raft=raft,
        consistency=consistency,
        data_dir=str(storage.get("data_dir", "./data")),
        limits=limits,
        auth=_parse_auth(_mapping("auth", top.get("auth"))),
        debug={k: bool(v) for k, v in debug.items()},
        source=source,
    )
    validate(config)
    return config


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


def _check_secret(where: str, secret: str) -> None:
    # Clients' tokens arrive stripped, in a header: only printable ASCII without
    # spaces can ever match.
    if len(secret) < AUTH_SECRET_CHARS_MIN or not _SECRET_RE.fullmatch(secret):
        raise ConfigError(
            f"{where}: at least {AUTH_SECRET_CHARS_MIN} printable ASCII characters, no spaces"
        )


def validate(config: Config) -> None:
    """Rules across fields, in the manner of etcd-io/raft's Config.validate()."""
    r = config.raft
    if config.replication_factor % 2 == 0:
        raise ConfigError(
            f"replication.factor: {config.replication_factor} is even; Raft needs a majority, so an "
            f"even count tolerates no more failures than one less replica: use an odd factor"
        )
    if config.replication_factor > len(config.nodes):
        raise ConfigError(
            f"replication.factor: {config.replication_factor} replicas need at least that many "
            f"nodes, the cluster has {len(config.nodes)}"
        )
    ids = [n.id for n in config.nodes]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"cluster.nodes: duplicate node ids in {ids}")
    for n in config.nodes:
        if not n.id or not all(c.isalnum() or c in "-_." for c in n.id):
            raise ConfigError(f"cluster.nodes: node id {n.id!r} must be [A-Za-z0-9._-]+")
    endpoints: dict[tuple[str, int], str] = {}
    for n in config.nodes:
        ports = [("http_port", n.http_port)] + [
            (f"raft port of shard {s}", n.raft_port(s)) for s in range(config.shards)
        ]
        if n.raft_port(config.shards - 1) > 65535:
            raise ConfigError(
                f"node {n.id}: raft_port_base {n.raft_port_base} + {config.shards} shards exceeds 65535"
            )
        for what, port in ports:
            key = (n.host, port)
            if key in endpoints:
                raise ConfigError(
                    f"node {n.id}: {what} {n.host}:{port} is also used by {endpoints[key]}"
                )
            endpoints[key] = f"node {n.id} ({what})"
    if not 50 <= r.election_timeout_ms_min < r.election_timeout_ms_max:
        raise ConfigError(
            f"raft: election_timeout_ms_min ({r.election_timeout_ms_min}) must be >= 50 and below "
            f"election_timeout_ms_max ({r.election_timeout_ms_max})"
        )
    if r.heartbeat_ms * 3 > r.election_timeout_ms_min:
        raise ConfigError(
            f"raft: heartbeat_ms ({r.heartbeat_ms}) must be at most a third of "
            f"election_timeout_ms_min ({r.election_timeout_ms_min}), or followers start "
            f"elections against a live leader"
        )
    if not 0 <= r.append_entries_period_ms <= r.heartbeat_ms:
        raise ConfigError(
            f"raft: append_entries_period_ms ({r.append_entries_period_ms}) must not exceed "
            f"heartbeat_ms ({r.heartbeat_ms})"
        )
    if r.leader_fallback_timeout_ms and not (
        2 * r.heartbeat_ms < r.leader_fallback_timeout_ms <= r.election_timeout_ms_min
    ):
        raise ConfigError(
            f"raft.leader_fallback_timeout_ms ({r.leader_fallback_timeout_ms}) must be above two "
            f"heartbeats and at most election_timeout_ms_min ({r.election_timeout_ms_min})"
        )
    if not 0.0 <= r.clock_drift_bound < 0.5:
        raise ConfigError(f"raft: clock_drift_bound {r.clock_drift_bound} must be in [0, 0.5)")
    if r.fsync not in FSYNC_MODES:
        raise ConfigError(f"raft.fsync: {r.fsync!r} is not one of {', '.join(FSYNC_MODES)}")
    if r.log_compaction_entries < 100:
        raise ConfigError("raft.log_compaction_entries: must be at least 100")
    if r.password is None:
        for n in config.nodes:
            if not is_loopback(n.host):
                raise ConfigError(
                    f"node {n.id}: host {n.host} is not loopback and raft.password is not set; "
                    f"pysyncobj unpickles every Raft frame and accepts admin commands from any "
                    f"connection, so Raft ports must be encrypted outside loopback"
                )
    for level in [config.consistency.default] + [o.model for o in config.consistency.overrides]:
        if level not in CONSISTENCY_LEVELS:
            raise ConfigError(
                f"consistency: unknown model {level!r} (known: {', '.join(CONSISTENCY_LEVELS)})"
            )
    if config.consistency.default in ("session", "bounded"):
        raise ConfigError(
            "consistency.default: session and bounded need per-request parameters "
            "(after=, max_staleness_ms=); use linearizable, strong or eventual"
        )
    lim = config.limits
    if not 1 <= lim.list_page_max <= 10000:
        raise ConfigError("limits.list_page_max: must be in [1, 10000]")
    if lim.entries_in_flight_max < 1:
        raise ConfigError("limits.entries_in_flight_max: must be at least 1")
    if not 0 <= lim.group_commit_linger_ms <= 1000:
        raise ConfigError("limits.group_commit_linger_ms: must be in [0, 1000]")
    if lim.body_bytes_max < 1024:
        raise ConfigError("limits.body_bytes_max: must be at least 1024")


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


def check_ports_free(config: Config, node: NodeConfig) -> None:
    """Refuse to start when one of this node's ports is taken, naming it."""
    wanted = [("http_port", node.http_port)] + [
        (f"raft port of shard {s}", node.raft_port(s)) for s in range(config.shards)
    ]
    for what, port in wanted:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((node.host, port))
            except OSError as e:
                raise ConfigError(
                    f"node {node.id}: {what} {node.host}:{port} is not available: {e.strerror}"
                ) from e


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
