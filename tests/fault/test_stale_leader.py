"""A shard leader cut off from both peers (a real partition, nftables in network
namespaces) never answers a strong or linearizable read with a value the new
majority has overwritten. The negative control switches the lease logic off
(`debug.unsafe_local_reads`: whoever believes it leads answers from its own
state, and steps down as late as pysyncobj's default); the same test then sees
the stale value.

This is the deterministic form of the stale-leader scenario: a paused (SIGSTOP)
leader cannot show it any more, because on SIGCONT the event loop handles the
Raft messages queued in its sockets (the new leader's higher term) before the
read queued behind them (tests/integration/test_reads.py keeps the pause tests)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from jepsen_like import netns
from jepsen_like.cluster import Cluster, ClusterSpec
from jepsen_like.httpclient import HttpClient
from jepsen_like.resources import Teardown
from jepsen_like.workloads import shard_of

from .conftest import poll_until, requires_harness

pytestmark = requires_harness

NAMESPACE = "stale"


async def _read_from_cut_off_leader(tmp_path: Path, debug: dict[str, bool]) -> list[tuple[int, Any]]:
    """Write "old", isolate the key's shard leader, write "new" through the leader
    the majority elects, then read the key from the isolated node at both fresh
    levels. Returns (status, content or error code) per read."""
    teardown = Teardown("stale-leader")
    spec = ClusterSpec(debug=debug)
    cluster = Cluster(spec, tmp_path, prefix=f"rms{os.getpid() % 100000}", teardown=teardown)
    mid = "k"
    shard = shard_of(NAMESPACE, mid, spec.shards)
    path = f"/v1/memories/{NAMESPACE}/{mid}"
    try:
        cluster.create()
        cluster.start_all()
        async with HttpClient(cluster.urls, 5.0) as client:
            await cluster.wait_ready(client)

            async def leader() -> str | None:
                return (await cluster.leaders(client)).get(shard)

            old_leader = await poll_until(leader, 30, f"a leader for shard {shard}")
            put = await client.request(old_leader, "PUT", path, body={"content": "old"})
            assert put.status == 201, put
            cluster.network.apply_grudges(netns.isolate(cluster.node_ids, old_leader))
            try:
                async def new_leader() -> str | None:
                    # The cut-off node may still say it leads, in its older term.
                    current = await leader()
                    return current if current != old_leader else None

                successor = await poll_until(new_leader, 30, "a leader on the majority side")
                write = await client.request(successor, "PUT", path, body={"content": "new"})
                assert write.status == 200, write
                results = []
                for level in ("strong", "linearizable"):
                    answer = await client.request(old_leader, "GET", path, params={"consistency": level}, timeout_s=3.0)
                    body = answer.body if isinstance(answer.body, dict) else {}
                    value = body.get("content") if answer.status == 200 else (body.get("error") or {}).get("code")
                    results.append((answer.status, value))
                return results
            finally:
                cluster.network.heal()
    finally:
        teardown.run()


def test_a_cut_off_leader_never_serves_stale_fresh_reads(tmp_path: Path) -> None:
    results = asyncio.run(_read_from_cut_off_leader(tmp_path, {}))
    assert all(value != "old" for _, value in results), results
    # It refuses (no quorum, or no reachable leader), or answers "new" once it has it.
    assert all(status in (200, 503, 504) or status <= 0 for status, _ in results), results


def test_negative_control_a_naive_store_serves_the_stale_value(tmp_path: Path) -> None:
    results = asyncio.run(_read_from_cut_off_leader(tmp_path, {"unsafe_local_reads": True}))
    assert ("old" in [value for _, value in results]), (
        f"the unsafe switch did not produce a stale read: the test proves nothing: {results}"
    )
