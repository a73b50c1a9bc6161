"""The LangGraph store (raftmem/integrations/langgraph.py) against a real
3-node cluster: a differential test against LangGraph's own InMemoryStore on
generated sequences of batches, a graph compiled with the store that recalls
across two runs, the async store, and TTL.

Deliberate differences from InMemoryStore (the differential test allows for
exactly these, and raftmem/integrations/langgraph.py documents them):
- `created_at` is when the memory was created; InMemoryStore resets it on
  every put. raftmem's timestamps are the leader's clock in milliseconds.
- An empty key is refused (a memory needs an id).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from typing import Any, TypedDict

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langgraph.graph import END, START, StateGraph
from langgraph.store.base import BaseStore, GetOp, Item, Op, PutOp, Result
from langgraph.store.memory import InMemoryStore

from raftmem.integrations.langgraph import AsyncRaftmemStore, RaftmemStore

from .cluster import Cluster, wait_for

_examples = itertools.count()


def _urls(cluster: Cluster) -> list[str]:
    return [f"http://127.0.0.1:{cluster.http[n]}" for n in cluster.node_ids]


@pytest.fixture(scope="module")
def store(cluster: Cluster) -> Iterator[RaftmemStore]:
    with RaftmemStore(_urls(cluster)) as s:
        yield s


# -- the differential test -------------------------------------------------------------------
# Labels and keys with characters raftmem names do not have (escaped by the store).
LABELS = ["users", "u 1", "bob@example", "é", "a:b", "x-y_z"]
KEYS = ["k", "k.2", "key with space", "ключ", "a/b", "10"]
json_scalars = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=8)
values = st.dictionaries(st.sampled_from(["a", "b", "text", "n"]),
                         json_scalars | st.lists(json_scalars, max_size=3), max_size=4)
namespaces = st.lists(st.sampled_from(LABELS), min_size=1, max_size=3).map(tuple)
ops = st.one_of(
    st.builds(GetOp, namespaces, st.sampled_from(KEYS)),
    st.builds(PutOp, namespaces, st.sampled_from(KEYS), values, index=st.none(), ttl=st.none()),
    st.builds(PutOp, namespaces, st.sampled_from(KEYS), st.none(), index=st.none(), ttl=st.none()),  # a delete
)
batches = st.lists(st.lists(ops, min_size=1, max_size=6), min_size=1, max_size=6)


def _rooted(op: Op, root: str) -> Op:
    """The op under this example's own root label (the cluster outlives examples)."""
    if isinstance(op, GetOp):
        return op._replace(namespace=(root, *op.namespace))
    if isinstance(op, PutOp):
        return op._replace(namespace=(root, *op.namespace))
    return op


def _comparable(result: Result) -> Any:
    if isinstance(result, Item):
        return (result.namespace, result.key, result.value)
    return result


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches)
def test_the_store_answers_as_langgraphs_in_memory_store_on_generated_batches(
        store: RaftmemStore, sequence: list[list[Op]]) -> None:
    root = f"diff-{time.time_ns()}-{next(_examples)}"
    reference = InMemoryStore()
    for batch in sequence:
        rooted = [_rooted(op, root) for op in batch]
        expected = reference.batch(rooted)
        got = store.batch(rooted)
        assert [_comparable(r) for r in got] == [_comparable(r) for r in expected], rooted
        for result in got:
            if isinstance(result, Item):
                assert result.created_at <= result.updated_at
    # Everything written is there at the end, read one by one through the public API.
    for (namespace, key), value in _final(reference).items():
        item = store.get(namespace, key)
        assert item is not None and item.value == value


def _final(reference: InMemoryStore) -> dict[tuple[tuple[str, ...], str], dict[str, Any]]:
    return {(ns, key): item.value for ns, items in reference._data.items() for key, item in items.items()}


# -- the public API, consistency and TTL ---------------------------------------------------------
def test_put_get_delete_and_timestamps_through_the_public_api(store: RaftmemStore) -> None:
    ns = ("lg-api", "user@example")
    store.put(ns, "pref", {"theme": "dark"})
    first = store.get(ns, "pref")
    assert first is not None and first.value == {"theme": "dark"} and first.namespace == ns
    store.put(ns, "pref", {"theme": "light"})
    second = store.get(ns, "pref")
    assert second is not None and second.value == {"theme": "light"}
    assert second.created_at == first.created_at and second.updated_at >= first.updated_at
    store.delete(ns, "pref")
    assert store.get(ns, "pref") is None
    store.delete(ns, "pref")  # deleting what is not there is not an error


@pytest.mark.parametrize("consistency", ["linearizable", "session", "eventual"])
def test_every_consistency_level_reads_through_the_store(cluster: Cluster, consistency: str) -> None:
    with RaftmemStore(_urls(cluster), consistency=consistency) as s:  # type: ignore[arg-type]
        s.put(("lg-levels", consistency), "k", {"v": 1})
        if consistency == "eventual":
            wait_for(lambda: s.get(("lg-levels", consistency), "k"), 10, "the write on the nearest replica")
        item = s.get(("lg-levels", consistency), "k")
        assert item is not None and item.value == {"v": 1}


def test_a_ttl_in_minutes_expires_the_item(store: RaftmemStore) -> None:
    store.put(("lg-ttl",), "brief", {"v": 1}, ttl=1 / 60)  # one second
    store.put(("lg-ttl",), "kept", {"v": 2})
    assert store.get(("lg-ttl",), "brief") is not None
    wait_for(lambda: store.get(("lg-ttl",), "brief") is None, 20, "the item to expire")
    assert store.get(("lg-ttl",), "kept") is not None


async def test_the_async_store_and_its_blocking_calls_from_another_thread(cluster: Cluster) -> None:
    async with AsyncRaftmemStore(_urls(cluster), consistency="session") as s:
        await s.aput(("lg-async",), "k", {"v": 1})
        item = await s.aget(("lg-async",), "k")
        assert item is not None and item.value == {"v": 1}
        # A blocking call on the store's own loop would deadlock: refused.
        with pytest.raises(RuntimeError, match="deadlock"):
            s.get(("lg-async",), "k")
        # From another thread it runs on the store's loop.
        other = await asyncio.get_running_loop().run_in_executor(None, s.get, ("lg-async",), "k")
        assert other is not None and other.value == {"v": 1}
        await s.adelete(("lg-async",), "k")
        assert await s.aget(("lg-async",), "k") is None


# -- a graph ------------------------------------------------------------------------------------
class _State(TypedDict):
    user: str
    said: str
    recalled: list[str]


def _remember(state: _State, *, store: BaseStore) -> dict[str, Any]:
    namespace = ("lg-graph", state["user"], "memories")
    recalled = sorted(item.value["text"] for item in
                      (store.get(namespace, key) for key in ("first", "second")) if item is not None)
    key = "first" if not recalled else "second"
    store.put(namespace, key, {"text": state["said"]})
    return {"recalled": recalled}


def test_a_graph_compiled_with_the_store_recalls_across_runs(cluster: Cluster) -> None:
    builder = StateGraph(_State)
    builder.add_node("remember", _remember)
    builder.add_edge(START, "remember")
    builder.add_edge("remember", END)
    user = f"ada@example-{time.time_ns()}"
    with RaftmemStore(_urls(cluster)) as s:
        graph = builder.compile(store=s)
        first = graph.invoke({"user": user, "said": "I like tea", "recalled": []})
        assert first["recalled"] == []
    # Another run, another store object and process state: the memory is in the cluster.
    with RaftmemStore(_urls(cluster)[::-1]) as s:
        graph = builder.compile(store=s)
        second = graph.invoke({"user": user, "said": "and cake", "recalled": []})
        assert second["recalled"] == ["I like tea"]
        stored = [s.get(("lg-graph", user, "memories"), key) for key in ("first", "second")]
        assert [i.value["text"] if i else None for i in stored] == ["I like tea", "and cake"]
