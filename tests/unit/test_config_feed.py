"""The config sections of watch, history and lifecycle: defaults, policies
with their durations, and clear refusals of what cannot work."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from raftmem.config import LOCAL_3NODE_YAML, ConfigError, PolicyConfig, embedded_default, parse


def with_sections(**sections: Any) -> dict[str, Any]:
    d = copy.deepcopy(yaml.safe_load(LOCAL_3NODE_YAML))
    d.update(sections)
    return d


def test_defaults() -> None:
    c = embedded_default()
    assert (c.watch.watchers_max, c.watch.buffer_events_max, c.watch.progress_ms) == (1000, 1000, 5000)
    assert c.history.versions_max == 10
    assert c.lifecycle.track_access and c.lifecycle.policies == ()
    assert c.lifecycle.ttl_refresh_fraction == 0.5


def test_policies_load_with_their_rules_and_durations() -> None:
    c = parse(with_sections(lifecycle={"touch_flush_ms": 200, "policies": [
        {"name": "stale", "namespace": "team-a", "not_accessed_for": "30d"},
        {"name": "quick", "tag": "scratch", "not_accessed_for": "90s"},
        {"name": "plain-seconds", "namespace": "x", "not_accessed_for": 5},
        {"name": "cap", "namespace": "team-a", "tag": "note", "max_per_agent": 100, "order": "least_accessed"},
    ]}))
    assert c.lifecycle.policies == (
        PolicyConfig("stale", namespace="team-a", idle_ms=30 * 86_400_000),
        PolicyConfig("quick", tag="scratch", idle_ms=90_000),
        PolicyConfig("plain-seconds", namespace="x", idle_ms=5000),
        PolicyConfig("cap", namespace="team-a", tag="note", max_per_agent=100, order="least_accessed"),
    )
    assert [p.rule for p in c.lifecycle.policies] == ["idle", "idle", "idle", "count"]
    assert c.lifecycle.touch_flush_ms == 200


@pytest.mark.parametrize(("policy", "message"), [
    ({"name": "p", "not_accessed_for": "1d"}, "name a namespace, a tag, or both"),
    ({"name": "p", "namespace": "a"}, "exactly one rule"),
    ({"name": "p", "namespace": "a", "not_accessed_for": "1d", "max_per_agent": 3}, "exactly one rule"),
    ({"name": "p", "namespace": "a", "not_accessed_for": "a while"}, "a duration like 30d"),
    ({"name": "p", "namespace": "a", "not_accessed_for": "0s"}, "longer than 0"),
    ({"name": "p", "namespace": "a", "max_per_agent": 3, "order": "newest"}, "order: one of oldest"),
    ({"name": "p", "namespace": "a", "not_accessed_for": "1d", "order": "oldest"}, "only with max_per_agent"),
    ({"name": "p", "namespace": "a", "max_per_agent": -1}, "out of range"),
    ({"name": "no spaces", "namespace": "a", "max_per_agent": 1}, "name: 1 to 64 characters"),
    ({"name": "p", "namespace": "a", "max_per_agent": 1, "colour": "red"}, "unknown key\\(s\\) colour"),
])
def test_a_bad_policy_is_refused_with_a_reason(policy: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(with_sections(lifecycle={"policies": [policy]}))


def test_policy_names_are_unique() -> None:
    twice = {"name": "p", "namespace": "a", "max_per_agent": 1}
    with pytest.raises(ConfigError, match="used twice"):
        parse(with_sections(lifecycle={"policies": [twice, twice]}))


@pytest.mark.parametrize(("section", "values", "message"), [
    ("watch", {"watchers_max": 0}, r"watch.watchers_max: must be in \[1"),
    ("watch", {"progress_ms": 10}, r"watch.progress_ms: must be in \[50"),
    ("watch", {"buffer_events_max": 2}, "watch.buffer_events_max"),
    ("history", {"versions_max": 5000}, "history.versions_max"),
    ("lifecycle", {"ttl_refresh_fraction": 1.5}, "ttl_refresh_fraction"),
    ("lifecycle", {"prune_batch_max": 5000}, "prune_batch_max"),
    ("history", {"depth": 3}, "unknown key"),
])
def test_bounds_are_checked(section: str, values: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(with_sections(**{section: values}))
