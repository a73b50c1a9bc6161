"""The configuration's shape: one frozen, typed object (`Config`) and the named
limits with their defaults. No I/O, no validation (see `rules`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

CONSISTENCY_LEVELS = ("linearizable", "strong", "session", "causal", "bounded", "eventual")
# The design's own names for levels, accepted wherever a level is (config,
# `consistency=`, the header); responses report the canonical name.
LEVEL_ALIASES = {"read-your-writes": "session"}
# Levels that need the caller's tokens (after= or X-Raftmem-Context).
TOKEN_LEVELS = ("session", "causal")
# A node given only `port` (the design's layout) gets its Raft ports from here.
RAFT_PORT_OFFSET = 100


def canonical_level(name: str) -> str:
    return LEVEL_ALIASES.get(name, name)
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
    # Compact a replica's log (snapshot + truncate) once it holds this many bytes,
    # whatever its entry count: the log is held in memory, and batch entries are
    # large (64 memories of 200 bytes: ~15 KB), so entries alone do not bound it.
    log_compaction_bytes: int = 4 << 20
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
    # Client connections (raftmem/httpserver.py): at most this many open (past
    # it, the one idle longest makes room); a request's head must arrive within
    # header_timeout_ms of its first byte, its body within body_timeout_ms; a
    # connection idle between requests is closed after idle_timeout_ms.
    # Operations of client batches a node plans and runs at once; past it, 429.
    batch_ops_in_flight_max: int = 8 * BATCH_OPS_MAX
    # Single writes reaching a node that does not lead their shard go to the
    # leader's node as commands, several per request, with at most this many
    # requests under way per node (raftmem/service/relay.py); 0: each is
    # forwarded as an HTTP request of its own.
    relay_in_flight_max: int = 2
    connections_max: int = 4096
    header_timeout_ms: int = 10_000
    body_timeout_ms: int = 30_000
    idle_timeout_ms: int = 120_000


@dataclass(frozen=True)
class CoordinationConfig:
    """Locks and task claims: named limits. The leader carries the ones apply
    decides by (a task's retry policy, retention, queue bound) in the log."""

    ttl_ms_min: int = 100  # lock leases and task claims
    ttl_ms_max: int = 3_600_000
    wait_ms_max: int = 60_000  # how long an acquire or a claim may wait
    # Waiting requests, on the leader of the lock or queue; past either: 429.
    waiters_per_key_max: int = 256
    waiters_max: int = 4096
    # A waiter at the head of its queue tries again at least this often (it is
    # also woken when the lock is freed or a task is ready).
    waiter_poll_ms: int = 500
    holder_chars_max: int = 256  # lock holders and task workers
    task_payload_bytes_max: int = 64 * 1024  # a payload, result or error, as JSON
    task_attempts_max: int = 100
    task_attempts_default: int = 3
    task_backoff_ms_default: int = 1000
    task_delay_ms_max: int = 30 * 24 * 3600 * 1000  # not_before at most this far ahead
    task_retention_ms: int = 7 * 24 * 3600 * 1000  # done and dead tasks are kept this long
    tasks_open_max: int = 100_000  # ready + claimed tasks per queue
    task_list_page_max: int = 1000


AUTH_ROLES = ("read", "write", "admin")  # each includes the ones before it
AUTH_SECRET_CHARS_MIN = 16


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
class StorageConfig:
    """RocksDB memory, bounded per node (every replica of the node shares it)."""

    # Memtables of all the node's replicas together (one RocksDB write buffer
    # manager): past ~90 % of it, RocksDB flushes the largest.
    memtable_bytes_max: int = 32 << 20
    # One LRU block cache for all the node's replicas (index, filter and data blocks).
    block_cache_bytes: int = 16 << 20
    # RocksDB's own write-ahead log. Off: the Raft journal is the durable log,
    # and after a crash apply replays it from the last memtable flush (every
    # snapshot flushes, so the journal always reaches back that far).
    # The argument: raftmem/consensus/DESIGN.md ("RocksDB runs without its own
    # WAL"); the measurement: raftmem/DESIGN.md ("A batched memory's CPU").
    rocksdb_wal: bool = False


TLS_CLIENT_AUTH = ("none", "request", "require")


@dataclass(frozen=True)
class TlsConfig:
    """HTTPS for the API and between nodes (forwarding, fan-out, admin). Paths
    may hold `{node}`, replaced by the node's id (one config for every node,
    a certificate each). Off unless cert_file is set."""

    cert_file: str | None = None
    key_file: str | None = None
    ca_file: str | None = None  # verifies peers (and clients, under client_auth)
    client_auth: str = "none"  # none | request | require (a client certificate from ca_file)

    @property
    def enabled(self) -> bool:
        return self.cert_file is not None

    def for_node(self, node_id: str) -> TlsConfig:
        def fill(path: str | None) -> str | None:
            return None if path is None else path.replace("{node}", node_id)

        return TlsConfig(fill(self.cert_file), fill(self.key_file), fill(self.ca_file), self.client_auth)


WATCH_RETENTION_MAX = 10_000_000
# A watch's progress notifications: at most this often, at least this rarely.
WATCH_PROGRESS_MS_MIN = 50
WATCH_PROGRESS_MS_MAX = 600_000


@dataclass(frozen=True)
class WatchConfig:
    """The change log each replica keeps (in its RocksDB, written by apply):
    what watches resume from and derived indexes replay after a crash; and the
    bounds of the watch streams a node serves (raftmem.service.watch)."""

    # Raft indexes of changes kept per shard; a resume from before them is 410
    # compacted (0: keep no log, and no watch is served).
    retention_entries: int = 100_000
    # Open watch streams per node; past it a new watch answers 429.
    watchers_max: int = 1000
    # Entries held for one watcher when they cannot go straight to its socket's
    # queue (and items of that queue: entries queued together, a live batch's or
    # a log page's); a watcher that falls this far behind is cut off with an
    # `overflow` event and resumes from its token.
    buffer_events_max: int = 1000
    # ... or this many bytes of events (an event alone may be larger): a node's
    # watches hold at most watchers_max times this.
    buffer_bytes_max: int = 1 << 20
    # A watch with nothing to send says where it is (progress) this often, unless
    # it asks otherwise (progress_ms=).
    progress_ms: int = 5000
    # Changes read from the change log at once (catching up, or fetched from
    # another node for a shard this node holds no replica of).
    page_events_max: int = 500
    # A stream takes the node's new changes at most this often: changes that
    # come faster go out together (one wake-up and one write per stream per
    # batch_ms), a change after a quiet spell goes at once (0: every change as
    # it comes).
    batch_ms: int = 25


@dataclass(frozen=True)
class HistoryConfig:
    """Per-memory version history (GET /v1/memories/{ns}/{id}/history), written
    by apply in each entry's batch (raftmem.history)."""

    # Versions kept per memory, newest first (0: no history).
    versions_max: int = 10
    # The history of a deleted or expired memory is compacted this long after.
    retain_removed_s: int = 7 * 24 * 3600


LIFECYCLE_ORDERS = ("oldest", "least_accessed")


@dataclass(frozen=True)
class PolicyConfig:
    """One pruning policy: which memories (a namespace, a tag, or both) and one
    rule: remove those not accessed (read or written) for `idle_ms`, or keep at
    most `max_per_agent` per agent, removing the oldest or least accessed first."""

    name: str
    namespace: str | None = None
    tag: str | None = None
    idle_ms: int | None = None
    max_per_agent: int | None = None
    order: str = "oldest"

    @property
    def rule(self) -> str:
        return "idle" if self.idle_ms is not None else "count"


@dataclass(frozen=True)
class LifecycleConfig:
    """Access tracking, sliding TTL and pruning (raftmem.lifecycle)."""

    # Reads update last_accessed_at and access_count (coalesced, through the log).
    track_access: bool = True
    # A node sends the reads it served to each shard leader this often, as one
    # `touch` log entry per shard (a memory read many times: one item).
    touch_flush_ms: int = 1000
    # Memories with reads waiting to be sent, per node; past it more are dropped
    # (counted: raftmem_touches_dropped).
    touch_keys_max: int = 10_000
    # A read extends a sliding TTL (ttl_refresh_on_read) through the log only
    # once this fraction of the TTL has passed since the last refresh.
    ttl_refresh_fraction: float = 0.5
    # Each shard leader runs the policies this often.
    run_every_ms: int = 60_000
    # Memories one policy removes per run and shard, at most; index keys it
    # scans to find them, at most (the next run goes on).
    prune_batch_max: int = 500
    scan_keys_max: int = 100_000
    policies: tuple[PolicyConfig, ...] = ()


INDEX_TIERS = ("eager", "batched", "lazy")  # strictest first
INDEX_ENGINES = ("process", "thread")  # where the derived indexes' engines run
EMBEDDING_DIMS_MAX = 4096


@dataclass(frozen=True)
class TierRule:
    """Changes to memories with any of `tags` are indexed in `tier`."""

    tags: tuple[str, ...]
    tier: str


@dataclass(frozen=True)
class EmbedderConfig:
    """An OpenAI-compatible embeddings endpoint (POST {url}/v1/embeddings)."""

    url: str
    model: str
    dims: int
    timeout_ms: int = 5000


@dataclass(frozen=True)
class IndexingConfig:
    """Derived indexes (text, vector, summaries) of each shard replica
    (raftmem/indexing/DESIGN.md)."""

    enabled: bool = True
    default_tier: str = "batched"
    tiers: tuple[TierRule, ...] = (TierRule(("critical", "lock"), "eager"),)
    # A batched change is due within batch_ms, or sooner once batch_docs wait.
    batch_ms: int = 200
    # The node's text index commits a second (after a burst of commits_burst),
    # shared by its replicas in turn; batched and lazy absorption only (eager
    # changes and waiting readers never wait for it). 0: no budget.
    # raftmem/indexing/budget.py.
    commits_per_s: float = 5.0
    commits_burst: int = 10
    # A replica index no search has used for search_idle_s is search-idle (as
    # Elasticsearch's shards are): its batched changes wait up to idle_batch_ms
    # (or batch_docs_max of them, or half the queue's bytes), or until absorbing
    # them would take about idle_absorb_ms at the replica's own recent cost per
    # change (what the first search that comes waits while it absorbs them).
    # 0: never idle. raftmem/indexing/DESIGN.md, "Search-idle replicas".
    search_idle_s: float = 30.0
    idle_batch_ms: int = 30_000
    idle_absorb_ms: int = 250
    batch_docs: int = 512
    # Changes waiting per replica index, and the bytes of their records (an
    # embedding of 384 dimensions is 2 KB); past either, writes to the shard answer 429.
    queue_docs_max: int = 20_000
    queue_bytes_max: int = 8 << 20
    # Batches grow (up to batch_docs_max) while the oldest waiting change is older than this.
    queue_age_target_ms: int = 1000
    batch_docs_max: int = 4096
    # A lazy change is absorbed once the index has been idle this long (or on demand).
    lazy_idle_ms: int = 2000
    # The vector index is saved (its durable watermark advanced) at most this often.
    checkpoint_s: int = 30
    # tantivy's indexing memory per replica (its minimum is 15 MB).
    text_heap_bytes: int = 16_000_000
    # Where the replicas' engines (tantivy, usearch) run: "process", the node's
    # engine host (their work never holds the node's GIL), or "thread", in the
    # node. raftmem/indexing/DESIGN.md, "The engines in a process of their own".
    engines: str = "process"
    # The engine host's nice value (0-19): above 0, the node's own threads (HTTP,
    # Raft, apply) win the CPU when both want it, and indexing takes what is left
    # (10: writes p99 80-86 ms against 92-121 at 0 under the recall bench's load;
    # raftmem/indexing/DESIGN.md, "The engines in a process of their own").
    engine_nice: int = 10
    # Summaries marked stale by writes are recomputed this often.
    summary_refresh_ms: int = 1000
    embedder: EmbedderConfig | None = None

    def tier_for_tags(self, tags: tuple[str, ...] | list[str] | None) -> str:
        """The strictest tier any of the tags asks for, else the default."""
        found = [r.tier for r in self.tiers if tags and any(t in r.tags for t in tags)]
        return min(found, key=INDEX_TIERS.index) if found else self.default_tier


@dataclass(frozen=True)
class Config:
    name: str
    shards: int
    nodes: tuple[NodeConfig, ...]
    replication_factor: int = 3
    # The design's quorum vocabulary, checked against what Raft does (rules.py):
    # None when the config does not say.
    write_quorum: int | None = None
    read_quorum: int | None = None
    raft: RaftConfig = field(default_factory=RaftConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    data_dir: str = "./data"
    storage: StorageConfig = field(default_factory=StorageConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    coordination: CoordinationConfig = field(default_factory=CoordinationConfig)
    indexing: IndexingConfig = field(default_factory=IndexingConfig)
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

    @property
    def scheme(self) -> str:
        return "https" if self.tls.enabled else "http"

    def url_of(self, node: NodeConfig) -> str:
        """A node's API, as this cluster speaks it (https when TLS is on)."""
        return f"{self.scheme}://{node.host}:{node.http_port}"

    def node_data_dir(self, node_id: str) -> Path:
        return Path(self.data_dir) / node_id

    @property
    def majority(self) -> int:
        return self.replication_factor // 2 + 1

    def quorums(self) -> dict[str, int]:
        """The effective quorums (shown by /v1/cluster and `raftmem status`): a
        write waits for a majority; a read is confirmed by a majority at
        `linearizable`, and served by one replica at stale-tolerant levels."""
        n = self.replication_factor
        read = self.read_quorum if self.read_quorum is not None else (
            self.majority if self.consistency.default in ("linearizable", "strong") else 1)
        return {"replicas": n, "write": self.majority, "read": read,
                "writes_tolerate_failures": n - self.majority, "reads_tolerate_failures": n - read}

