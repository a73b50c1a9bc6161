from __future__ import annotations

import copy
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml

from raftmem.config import (
    LOCAL_3NODE_YAML,
    ConfigError,
    check_ports_free,
    embedded_default,
    load,
    parse,
)


def base() -> dict[str, Any]:
    return copy.deepcopy(yaml.safe_load(LOCAL_3NODE_YAML))


def test_embedded_default_is_the_design_card_layout() -> None:
    c = embedded_default()
    assert c.shards == 8 and c.replication_factor == 3
    assert [n.http_port for n in c.nodes] == [8781, 8782, 8783]
    assert c.raft.fsync == "always"
    assert c.consistency.level_for_tags(["lock"]) == "linearizable"
    assert c.consistency.level_for_tags(["metric", "critical"]) == "linearizable"  # strictest wins
    assert c.consistency.level_for_tags(["metric"]) == "eventual"
    assert c.consistency.level_for_tags(["other"]) is None
    assert c.raft.leader_fallback_timeout_s == pytest.approx(0.3)


def test_a_bounded_tag_policy_carries_its_bound() -> None:
    d = base()
    d["consistency"]["overrides"] += [
        {"tags": ["dash"], "model": "bounded", "max_staleness_ms": 500},
        {"tags": ["board"], "model": "bounded", "max_staleness_ms": 200},
    ]
    c = parse(d)
    assert c.consistency.level_for_tags(["dash"]) == "bounded"
    assert c.consistency.bound_for_tags(["dash", "board"]) == 200  # the tightest bound
    assert c.consistency.level_for_tags(["dash", "lock"]) == "linearizable"
    assert c.consistency.bound_for_tags(["lock"]) is None


def test_heartbeat_ms_paces_the_leader() -> None:
    assert embedded_default().raft.append_period_ms == 50  # twice per heartbeat_ms (100)
    d = base()
    d["raft"].update(heartbeat_ms=300, election_timeout_ms_min=1000, election_timeout_ms_max=2000)
    assert parse(d).raft.append_period_ms == 150
    d["raft"].update(append_entries_period_ms=40)
    assert parse(d).raft.append_period_ms == 40


def test_shipped_config_file_matches_embedded(tmp_path: Any) -> None:
    assert load("configs/local-3node.yaml").nodes == embedded_default().nodes


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["replication"].update(factor=2), "even"),
        (lambda d: d["replication"].update(factor=5), "at least that many nodes"),
        (lambda d: d["raft"].update(election_timeout_ms_min=1000, election_timeout_ms_max=900), "below"),
        (lambda d: d["raft"].update(heartbeat_ms=300), "third"),
        (lambda d: d["raft"].update(fsync="sometimes"), "fsync"),
        (lambda d: d["raft"].update(surprise=1), "unknown key"),
        (lambda d: d.update(extra={}), "unknown key"),
        (lambda d: d["cluster"]["nodes"][1].update(http_port=8781), "also used"),
        (lambda d: d["cluster"]["nodes"][1].update(id="n1"), "duplicate"),
        (lambda d: d["cluster"]["nodes"][0].update(host="10.0.0.5"), "password"),
        (lambda d: d["consistency"].update(default="psychic"), "unknown model"),
        (lambda d: d["consistency"].update(default="bounded"), "per request"),
        (lambda d: d["cluster"].update(shards=0), "out of range"),
        (lambda d: d["cluster"]["nodes"][0].pop("http_port"), "missing http_port"),
        (lambda d: d["raft"].update(heartbeat_ms="fast"), "integer"),
        (lambda d: d["consistency"]["overrides"].append({"tags": ["x"], "model": "bounded"}), "needs an integer"),
        (lambda d: d["consistency"]["overrides"].append({"tags": ["x"], "model": "session"}), "token per request"),
        (lambda d: d["consistency"]["overrides"].append(
            {"tags": ["x"], "model": "eventual", "max_staleness_ms": 5}), "only for model bounded"),
        (lambda d: d.update(coordination={"ttl_ms_min": 5000, "ttl_ms_max": 100}), "ttl_ms_min"),
        (lambda d: d.update(coordination={"waiters_per_key_max": 10, "waiters_max": 5}), "waiters_per_key_max"),
        (lambda d: d.update(coordination={"lease_ms": 5}), "unknown key"),
        (lambda d: d.update(coordination={"task_payload_bytes_max": 1 << 30}), "body_bytes_max"),
        (lambda d: d.update(limits={"group_commit_ops_max": 1 << 16}), "group_commit_ops_max"),
        (lambda d: d.update(debug={"unsafe_skip_fence_checks": True}), "unknown key"),
    ],
)
def test_validation_refuses_with_a_clear_message(mutate: Any, message: str) -> None:
    d = base()
    mutate(d)
    with pytest.raises(ConfigError, match=message):
        parse(d)


def test_non_loopback_with_password_is_accepted() -> None:
    d = base()
    for n in d["cluster"]["nodes"]:
        n["host"] = "10.0.0.5" if n["id"] == "n1" else n["host"]
    d["raft"]["password"] = "s3cret"
    assert parse(d).raft.password == "s3cret"


def test_port_in_use_is_named() -> None:
    d = base()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        d["cluster"]["nodes"][0]["http_port"] = port
        with pytest.raises(ConfigError, match=f"http_port 127.0.0.1:{port} is not available"):
            c = parse(d)
            check_ports_free(c, c.node("n1"))


def test_unknown_node_is_named() -> None:
    with pytest.raises(ConfigError, match="n9"):
        embedded_default().node("n9")


def test_memory_budgets_are_config_and_checked() -> None:
    d = base()
    d["storage"].update(memtable_bytes_max=64 << 20, block_cache_bytes=8 << 20)
    d["raft"]["log_compaction_bytes"] = 2 << 20
    c = parse(d)
    assert (c.storage.memtable_bytes_max, c.storage.block_cache_bytes, c.raft.log_compaction_bytes) == (
        64 << 20, 8 << 20, 2 << 20)
    assert embedded_default().storage.memtable_bytes_max == 32 << 20  # the default
    for section, key, value, message in [
        ("storage", "memtable_bytes_max", 1 << 20, "at least 4 MiB"),
        ("storage", "block_cache_bytes", 1000, "at least 1 MiB"),
        ("raft", "log_compaction_bytes", 1000, "at least 1 MiB"),
        ("storage", "memtable_bytes", 1 << 20, "unknown key"),
    ]:
        bad = base()
        bad[section][key] = value
        with pytest.raises(ConfigError, match=message):
            parse(bad)


def test_the_designs_cluster_config_loads_as_written() -> None:
    c = load(Path(__file__).resolve().parents[2] / "configs" / "memory-spine-3node.yaml")
    assert c.name == "production-memory" and [n.id for n in c.nodes] == ["spine-1", "spine-2", "spine-3"]
    assert [(n.http_port, n.raft_port_base) for n in c.nodes] == [(8788, 8888), (8798, 8898), (8808, 8908)]
    assert c.consistency.default == "session"  # read-your-writes
    assert c.quorums() == {"replicas": 3, "write": 2, "read": 1, "writes_tolerate_failures": 1,
                           "reads_tolerate_failures": 2}


def _seed() -> dict[str, Any]:
    return {
        "cluster": {"name": "p", "nodes": [
            {"id": f"spine-{i}", "host": "127.0.0.1", "port": 8788 + 10 * i, "role": "primary" if i == 1 else "replica"}
            for i in (1, 2, 3)]},
        "replication": {"factor": 3, "write_quorum": 2, "read_quorum": 1},
        "consistency": {"default": "read-your-writes",
                        "overrides": [{"tags": ["critical"], "model": "strong"}, {"tags": ["metric"], "model": "eventual"}]},
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["replication"].update(write_quorum=1), "cannot be honoured.*majority \\(2\\).*use write_quorum: 2"),
        (lambda d: d["replication"].update(write_quorum=3), "not supported.*use write_quorum: 2"),
        (lambda d: d["replication"].update(read_quorum=2), "makes every read linearizable.*eventual, session"),
        (lambda d: d["replication"].update(read_quorum=4), "exceeds the 3 replicas"),
        (lambda d: (d["cluster"]["nodes"].extend(
            {"id": f"spine-{i}", "host": "127.0.0.1", "port": 8788 + 10 * i} for i in (4, 5)),
            d.update(replication={"factor": 5, "read_quorum": 2})), "means nothing in Raft"),
        (lambda d: d["cluster"]["nodes"][0].update(role="leader"), "no effect: Raft elects"),
        (lambda d: d["cluster"]["nodes"][0].update(http_port=9000), "port or http_port, not both"),
        (lambda d: d["consistency"].update(default="psychic"), "unknown model"),
    ],
)
def test_the_designs_quorums_and_names_are_checked_against_raft(change: Any, message: str) -> None:
    d = _seed()
    parse(copy.deepcopy(d))  # the seed itself loads
    change(d)
    with pytest.raises(ConfigError, match=message):
        parse(d)


def test_a_majority_read_quorum_with_fresh_levels_only_loads() -> None:
    d = _seed()
    d["replication"]["read_quorum"] = 2
    d["consistency"] = {"default": "linearizable", "overrides": [{"tags": ["critical"], "model": "strong"}]}
    assert parse(d).quorums()["read"] == 2


@pytest.mark.parametrize(
    ("tls", "raft", "message"),
    [
        ({"cert_file": "c.pem", "key_file": "k.pem", "ca_file": "ca.pem"}, {}, "raft.password: required with TLS"),
        ({"cert_file": "c.pem", "ca_file": "ca.pem"}, {"password": "p" * 20}, "tls.key_file"),
        ({"cert_file": "c.pem", "key_file": "k.pem"}, {"password": "p" * 20}, "tls.ca_file"),
        ({"key_file": "k.pem"}, {}, "cert_file is needed"),
        ({"cert_file": "c.pem", "key_file": "k.pem", "ca_file": "ca.pem", "client_auth": "maybe"},
         {"password": "p" * 20}, "client_auth"),
    ],
)
def test_tls_settings_are_checked(tls: dict[str, Any], raft: dict[str, Any], message: str) -> None:
    d = base()
    d["tls"] = tls
    d.setdefault("raft", {}).update(raft)
    with pytest.raises(ConfigError, match=message):
        parse(d)


def test_tls_paths_name_each_node_and_urls_become_https() -> None:
    d = base()
    d["tls"] = {"cert_file": "/c/{node}.pem", "key_file": "/c/{node}.key", "ca_file": "/c/ca.pem"}
    d.setdefault("raft", {})["password"] = "p" * 20
    c = parse(d)
    assert c.tls.for_node("n2").cert_file == "/c/n2.pem" and c.tls.for_node("n2").ca_file == "/c/ca.pem"
    assert c.url_of(c.nodes[0]).startswith("https://127.0.0.1:")


def test_coordination_limits_are_config() -> None:
    d = base()
    d["coordination"] = {"ttl_ms_max": 60_000, "waiters_max": 100, "waiters_per_key_max": 50, "task_attempts_default": 5}
    d["debug"] = {"unsafe_skip_fence_check": True}
    config = parse(d)
    assert config.coordination.ttl_ms_max == 60_000 and config.coordination.task_attempts_default == 5
    assert config.coordination.wait_ms_max == 60_000  # a default
    assert config.debug == {"unsafe_skip_fence_check": True}
