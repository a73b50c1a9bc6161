"""Rules across fields, checked before a node starts (etcd-io/raft's
Config.validate() in spirit): replica counts Raft cannot serve, timeouts out of
order, ports that clash or are taken, Raft ports off loopback without a password."""

from __future__ import annotations

import ipaddress
import os
import socket

from .schema import (
    CONSISTENCY_LEVELS,
    FSYNC_MODES,
    TLS_CLIENT_AUTH,
    WATCH_PROGRESS_MS_MAX,
    WATCH_PROGRESS_MS_MIN,
    WATCH_RETENTION_MAX,
    Config,
    ConfigError,
    NodeConfig,
)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


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
    if r.log_compaction_bytes < 1 << 20:
        raise ConfigError("raft.log_compaction_bytes: must be at least 1 MiB (a compaction packs a snapshot)")
    st = config.storage
    if st.memtable_bytes_max < 4 << 20:
        raise ConfigError("storage.memtable_bytes_max: must be at least 4 MiB")
    if st.block_cache_bytes < 1 << 20:
        raise ConfigError("storage.block_cache_bytes: must be at least 1 MiB")
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
    if config.consistency.default == "bounded":
        raise ConfigError(
            "consistency.default: bounded needs max_staleness_ms per request; use linearizable, strong, "
            "session (read-your-writes), causal or eventual"
        )
    _check_quorums(config)
    _check_tls(config)
    lim = config.limits
    _check_feed(config)
    if not 16 <= lim.connections_max <= 1_000_000:
        raise ConfigError("limits.connections_max: must be in [16, 1000000]")
    for name in ("header_timeout_ms", "body_timeout_ms", "idle_timeout_ms"):
        if not 100 <= getattr(lim, name) <= 3_600_000:
            raise ConfigError(f"limits.{name}: must be in [100, 3600000]")
    if not 1 <= lim.list_page_max <= 10000:
        raise ConfigError("limits.list_page_max: must be in [1, 10000]")
    if not 0 <= lim.relay_in_flight_max <= 64:
        raise ConfigError("limits.relay_in_flight_max: must be in [0, 64]")
    if lim.entries_in_flight_max < 1:
        raise ConfigError("limits.entries_in_flight_max: must be at least 1")
    if not 0 <= lim.group_commit_linger_ms <= 1000:
        raise ConfigError("limits.group_commit_linger_ms: must be in [0, 1000]")
    if lim.body_bytes_max < 1024:
        raise ConfigError("limits.body_bytes_max: must be at least 1024")
    if not 1 <= lim.group_commit_ops_max < GROUP_COMMIT_OPS_CEILING:
        # A fence is index * 2^16 + the command's position in its entry.
        raise ConfigError(f"limits.group_commit_ops_max: must be in [1, {GROUP_COMMIT_OPS_CEILING})")
    _check_coordination(config)


# Commands per log entry: below 2^16, the span of positions in a fence.
GROUP_COMMIT_OPS_CEILING = 1 << 16


def _check_coordination(config: Config) -> None:
    co = config.coordination
    if not 1 <= co.ttl_ms_min <= co.ttl_ms_max:
        raise ConfigError(
            f"coordination: ttl_ms_min ({co.ttl_ms_min}) must be at least 1 and at most ttl_ms_max ({co.ttl_ms_max})"
        )
    if co.wait_ms_max > config.limits.write_timeout_ms * 60:
        raise ConfigError("coordination.wait_ms_max: at most 60 write timeouts (a waiter holds a connection)")
    if not 1 <= co.waiters_per_key_max <= co.waiters_max:
        raise ConfigError("coordination: waiters_per_key_max must be in [1, waiters_max]")
    if not 10 <= co.waiter_poll_ms <= 10_000:
        raise ConfigError("coordination.waiter_poll_ms: must be in [10, 10000]")
    if not 1 <= co.task_attempts_default <= co.task_attempts_max:
        raise ConfigError("coordination: task_attempts_default must be in [1, task_attempts_max]")
    if co.task_payload_bytes_max > config.limits.body_bytes_max:
        raise ConfigError("coordination.task_payload_bytes_max: at most limits.body_bytes_max")
    for key in ("holder_chars_max", "tasks_open_max", "task_list_page_max", "task_retention_ms"):
        if getattr(co, key) < 1:
            raise ConfigError(f"coordination.{key}: must be at least 1")


def _check_feed(config: Config) -> None:
    """Watch, history and lifecycle bounds."""
    w, lc = config.watch, config.lifecycle
    if not 0 <= w.retention_entries <= WATCH_RETENTION_MAX:
        raise ConfigError(f"watch.retention_entries: must be in [0, {WATCH_RETENTION_MAX}]")
    for key, value, lo, hi in (
        ("watch.watchers_max", w.watchers_max, 1, 100_000),
        ("watch.buffer_events_max", w.buffer_events_max, 16, 1_000_000),
        ("watch.buffer_bytes_max", w.buffer_bytes_max, 64 << 10, 1 << 30),
        ("watch.progress_ms", w.progress_ms, WATCH_PROGRESS_MS_MIN, WATCH_PROGRESS_MS_MAX),
        ("watch.page_events_max", w.page_events_max, 1, 100_000),
        ("watch.batch_ms", w.batch_ms, 0, 1000),
        ("history.versions_max", config.history.versions_max, 0, 1000),
        ("lifecycle.touch_flush_ms", lc.touch_flush_ms, 10, 600_000),
        ("lifecycle.touch_keys_max", lc.touch_keys_max, 1, 10_000_000),
        ("lifecycle.run_every_ms", lc.run_every_ms, 100, 86_400_000),
        ("lifecycle.prune_batch_max", lc.prune_batch_max, 1, 1000),  # a Prune command's targets, at most
        ("lifecycle.scan_keys_max", lc.scan_keys_max, 1, 100_000_000),
    ):
        if not lo <= value <= hi:
            raise ConfigError(f"{key}: must be in [{lo}, {hi}]")
    if not 0.0 <= lc.ttl_refresh_fraction <= 1.0:
        raise ConfigError("lifecycle.ttl_refresh_fraction: must be in [0, 1]")


def _check_quorums(config: Config) -> None:
    """The design's W and R against what Raft does: every write waits for a
    majority (no more, no fewer); a read is served by one replica (stale-
    tolerant levels) or confirmed by a majority (linearizable)."""
    n, majority = config.replication_factor, config.majority
    w, r = config.write_quorum, config.read_quorum
    if w is not None and w < majority:
        raise ConfigError(
            f"replication.write_quorum: {w} of {n} cannot be honoured: Raft acknowledges a write once a "
            f"majority ({majority}) has it, because an entry on fewer replicas can be overwritten by a leader "
            f"elected without them, losing an acknowledged write; use write_quorum: {majority}"
        )
    if w is not None and w > majority:
        raise ConfigError(
            f"replication.write_quorum: {w} of {n} is not supported: Raft acknowledges a write once a "
            f"majority ({majority}) has it durably, and waiting for more replicas would only make writes stop "
            f"when one is down; use write_quorum: {majority} (the others receive it right after)"
        )
    if r is None:
        return
    if r > n:
        raise ConfigError(f"replication.read_quorum: {r} exceeds the {n} replicas")
    if 1 < r < majority:
        raise ConfigError(
            f"replication.read_quorum: {r} of {n} means nothing in Raft: a read is served by one replica "
            f"(read_quorum: 1, the stale-tolerant levels) or confirmed by a majority (read_quorum: {majority}, "
            f"linearizable)"
        )
    stale = [lv for lv in [config.consistency.default, *(o.model for o in config.consistency.overrides)]
             if lv not in ("linearizable", "strong")]
    if r >= majority and stale:
        raise ConfigError(
            f"replication.read_quorum: {r} (a majority) makes every read linearizable, but consistency "
            f"asks for {', '.join(sorted(set(stale)))}; use read_quorum: 1, or only linearizable/strong"
        )


def _check_tls(config: Config) -> None:
    tls = config.tls
    if tls.client_auth not in TLS_CLIENT_AUTH:
        raise ConfigError(f"tls.client_auth: {tls.client_auth!r} is not one of {', '.join(TLS_CLIENT_AUTH)}")
    if not tls.enabled:
        if tls.key_file or tls.ca_file or tls.client_auth != "none":
            raise ConfigError("tls: cert_file is needed to turn TLS on (key_file, ca_file and client_auth need it)")
        return
    if not tls.key_file:
        raise ConfigError("tls.key_file: the private key of cert_file is needed")
    if not tls.ca_file:
        raise ConfigError("tls.ca_file: needed to verify the other nodes (and client certificates)")
    if not config.raft.password:
        raise ConfigError(
            "raft.password: required with TLS on. The Raft ports do not speak TLS; pysyncobj encrypts and "
            "authenticates their traffic with this shared secret instead (see the README)"
        )


def check_tls_files(config: Config, node_id: str) -> None:
    """At a node's start: its TLS files exist and are readable (a clear message, not a traceback)."""
    tls = config.tls.for_node(node_id)
    for name in ("cert_file", "key_file", "ca_file"):
        path = getattr(tls, name)
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"tls.{name}: {path} is not a readable file")


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

