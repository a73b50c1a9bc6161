"""Search-idle replicas on a real cluster: a replica no search has used for
`indexing.search_idle_s` lets its batched changes wait (up to `idle_batch_ms`,
here a minute), and the first search that comes waits while it absorbs them,
so a search never sees more than the batched tier's bound of staleness.

The negative control runs the same with `debug.unsafe_search_no_wake`: the
search does not wake the replica, and misses the writes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from .cluster import Cluster, wait_for

INDEXING = {"batch_ms": 100, "search_idle_s": 3, "idle_batch_ms": 60_000}
WORD = "idlewakeq"
MEMORIES = 6


@pytest.fixture(scope="module", params=["checked", "unchecked-negative-control"])
def ic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, bool]]:
    control = request.param != "checked"
    c = Cluster(tmp_path_factory.mktemp("idle"), indexing=INDEXING,
                debug={"unsafe_search_no_wake": True} if control else None)
    try:
        c.start_all()
        yield c, control
    finally:
        c.stop_all()


def index_status(c: Cluster, node: str) -> list[dict[str, Any]]:
    status, _, view = c.request(node, "GET", "/v1/cluster")
    assert status == 200, view
    return [entry["index"] for entry in view["shards"]]


def search_ids(c: Cluster, node: str, body: dict[str, Any]) -> set[str]:
    status, _, answer = c.request(node, "POST", "/v1/search", body)
    assert status == 200, answer
    return {item["id"] for item in answer["items"]}


def test_a_search_on_a_search_idle_replica_sees_the_batched_writes_it_holds(ic: tuple[Cluster, bool]) -> None:
    c, control = ic
    ns = "idle"
    wait_for(lambda: all(i["ready"] and i["search_idle"] for i in index_status(c, "n2")), 30, "n2 search-idle")
    for i in range(MEMORIES):
        status, _, body = c.request("n1", "PUT", f"/v1/memories/{ns}/m{i}", {"content": f"{WORD} number {i}"})
        assert status in (200, 201), body
    # n2 has applied them and holds them, unabsorbed (idle_batch_ms is a minute).
    wait_for(lambda: sum(i["waiting"] for i in index_status(c, "n2")) >= MEMORIES, 20, "n2 received the writes")
    assert all(i["search_idle"] for i in index_status(c, "n2"))
    wakes_before = _wakes(c, "n2")
    # One search, no retry: the eventual level reads the replica's indexes as they are.
    found = search_ids(c, "n2", {"namespace": ns, "query": WORD, "consistency": "eventual", "limit": 50})
    if control:
        assert len(found) < MEMORIES, "without the wake the idle replica's batches wait: the control must miss"
        return
    assert found == {f"m{i}" for i in range(MEMORIES)}
    assert _wakes(c, "n2") > wakes_before
    assert not any(i["search_idle"] for i in index_status(c, "n2"))
    # Active now: a batched write is searchable within batch_ms again, without a wake.
    status, _, body = c.request("n1", "PUT", f"/v1/memories/{ns}/late", {"content": f"{WORD} late"})
    assert status in (200, 201), body
    wakes = _wakes(c, "n2")
    wait_for(lambda: "late" in search_ids(c, "n2", {"namespace": ns, "query": WORD, "consistency": "eventual",
                                                    "limit": 50}), 5, "the late write")
    assert _wakes(c, "n2") == wakes


def _wakes(c: Cluster, node: str) -> float:
    return sum(c.shard_counter(node, "raftmem_index_search_wakes", s) for s in range(c.shards))
