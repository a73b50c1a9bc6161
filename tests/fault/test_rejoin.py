"""A follower cut off for several election timeouts comes back without deposing
the healthy leaders (pre-vote + stickiness): no shard changes leader or term.
The negative control turns pre-vote off; the cut-off node then bumps its terms
and its return forces new elections, which the same test sees."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from jepsen_like import netns
from jepsen_like.cluster import Cluster, ClusterSpec
from jepsen_like.httpclient import HttpClient
from jepsen_like.resources import Teardown

from .conftest import poll_until, requires_harness

pytestmark = requires_harness

CUT_OFF_MS = 4000  # several election timeouts (400-1000 ms)


async def _leaders_and_terms(cluster: Cluster, client: HttpClient) -> dict[int, tuple[str, int]]:
    out: dict[int, tuple[str, int]] = {}
    for node, view in (await cluster.views(client)).items():
        for entry in view.get("shards", []):
            if entry.get("role") == "leader":
                out[int(entry["shard"])] = (node, int(entry["term"]))
    return out


async def _cut_off_a_follower_and_heal(tmp_path: Path, debug: dict[str, bool]) -> tuple[dict[int, Any], dict[int, Any]]:
    teardown = Teardown("rejoin")
    spec = ClusterSpec(debug=debug)
    cluster = Cluster(spec, tmp_path, prefix=f"rmr{os.getpid() % 100000}", teardown=teardown)
    try:
        cluster.create()
        cluster.start_all()
        async with HttpClient(cluster.urls, 5.0) as client:
            await cluster.wait_ready(client)

            async def all_led() -> dict[int, Any] | None:
                got = await _leaders_and_terms(cluster, client)
                return got if len(got) == spec.shards else None

            before = await poll_until(all_led, 30, "a leader for every shard")
            leading = {node for node, _ in before.values()}
            victim = next((n for n in cluster.node_ids if n not in leading), None)
            if victim is None:
                counts = {n: sum(1 for v in before.values() if v[0] == n) for n in cluster.node_ids}
                victim = min(counts, key=counts.__getitem__)
                before = {s: v for s, v in before.items() if v[0] != victim}
            cluster.network.apply_grudges(netns.isolate(cluster.node_ids, victim))

            async def cut_off_long_enough() -> bool:
                answer = await cluster.probe(client, victim, "/v1/cluster")
                if answer is None:
                    return False
                # A shard the victim led has no leader to be in contact with: skip it.
                contacts = [e["since_leader_ms"] for e in answer.body["shards"] if e.get("since_leader_ms") is not None]
                return bool(contacts) and all(c >= CUT_OFF_MS for c in contacts)

            try:
                await poll_until(cut_off_long_enough, 30, f"{victim} cut off for {CUT_OFF_MS} ms")
            finally:
                cluster.network.heal()

            async def victim_following_again() -> bool:
                answer = await cluster.probe(client, victim, "/v1/cluster")
                if answer is None:
                    return False
                # Every replica it does not lead follows someone (a candidate does not).
                others = [e for e in answer.body["shards"] if e.get("role") != "leader"]
                return all(
                    e.get("role") == "follower" and (e.get("last_contact_ms") or 10**9) < 500 for e in others
                )

            await poll_until(victim_following_again, 60, f"{victim} following a leader again")
            after = await poll_until(all_led, 30, "a leader for every shard after the heal")
            return before, {s: after[s] for s in before}
    finally:
        teardown.run()


def test_a_rejoining_follower_does_not_depose_a_healthy_leader(tmp_path: Path) -> None:
    before, after = asyncio.run(_cut_off_a_follower_and_heal(tmp_path, {}))
    assert after == before, f"leaders or terms changed: {before} -> {after}"


def test_negative_control_without_prevote_the_rejoin_deposes_leaders(tmp_path: Path) -> None:
    before, after = asyncio.run(_cut_off_a_follower_and_heal(tmp_path, {"disable_prevote": True}))
    assert after != before, "with pre-vote off the rejoin changed nothing: the test cannot see the failure"
    assert any(after[s][1] > before[s][1] for s in before)
