"""Nemeses: the faults a scenario injects, each recorded in the history as a
``start`` and a ``stop`` nemesis event sharing an id.

- partitions (nftables grudges): isolate a node, random halves, majority ring,
  bridge; ``heal``
- processes: kill -9 and restart (one, several, all); SIGSTOP / SIGCONT
- clocks (``clock.py``): realtime jumps and strobes, monotonic rate skew within
  the drift bound and rate strobes
- disks: fill a small disk to ENOSPC and free it; power loss of every node
  (``powerfs``: unsynced writes are dropped)

Every system action runs in a worker thread, so the event loop (and the
clients) keep running while ``ip``, ``nft`` or a kill is in progress.
``heal_all`` undoes whatever is still in effect; the runner calls it when the
load phase ends, and teardown does not depend on it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jepsen_like import netns
from jepsen_like.cluster import Cluster
from jepsen_like.httpclient import HttpClient
from jepsen_like.recorder import Recorder

log = logging.getLogger(__name__)

LEADER_WAIT_S = 10.0
RESTART_READY_S = 30.0
STROBE_PERIOD_S = 0.1


MEMBERSHIP_REQUEST_S = 10.0
MEMBERSHIP_CONVERGE_S = 60.0


class Nemesis:
    def __init__(self, cluster: Cluster, client: HttpClient, recorder: Recorder, rng: random.Random,
                 stop: asyncio.Event) -> None:
        self.cluster = cluster
        self.client = client
        self.recorder = recorder
        self.rng = rng
        self.stop = stop
        self.open_faults: dict[int, dict[str, Any]] = {}
        self.started_at = time.monotonic()

    # -- bookkeeping -----------------------------------------------------------------
    def _start(self, fault: str, **info: Any) -> int:
        fid = self.recorder.fault_id()
        value = {"fault": fault, "id": fid, **info}
        self.open_faults[fid] = value
        self.recorder.nemesis("start", value)
        log.info("nemesis start %s", value)
        return fid

    def _stop(self, fid: int, **info: Any) -> None:
        value = self.open_faults.pop(fid, None)
        if value is None:
            return
        self.recorder.nemesis("stop", {"fault": value["fault"], "id": fid, **info})
        log.info("nemesis stop %s %s", value["fault"], fid)

    async def sleep(self, seconds: float) -> None:
        """Wait, unless the load phase ends first (then raise CancelledError so
        the schedule stops)."""
        if seconds <= 0:
            return
        try:
            await asyncio.wait_for(self.stop.wait(), seconds)
        except TimeoutError:
            return
        raise asyncio.CancelledError

    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    @staticmethod
    async def _io(fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.to_thread(fn, *args)

    # -- targets ---------------------------------------------------------------------
    async def leader(self) -> tuple[int, str]:
        """(shard, leader) of a random shard; waits for one to be known."""
        deadline = time.monotonic() + LEADER_WAIT_S
        while True:
            leaders = await self.cluster.leaders(self.client)
            if leaders:
                shard = self.rng.choice(sorted(leaders))
                return shard, leaders[shard]
            if time.monotonic() > deadline:
                node = self.rng.choice(self.cluster.node_ids)
                log.warning("no leader known after %.0fs; targeting %s", LEADER_WAIT_S, node)
                return -1, node
            await asyncio.sleep(0.1)

    async def least_leading_node(self) -> str:
        """A node leading as few shards as possible (a follower, ideally)."""
        leaders = await self.cluster.leaders(self.client)
        counts = {n: 0 for n in self.cluster.node_ids}
        for node in leaders.values():
            counts[node] = counts.get(node, 0) + 1
        fewest = min(counts.values())
        return self.rng.choice(sorted(n for n, c in counts.items() if c == fewest))

    # -- membership --------------------------------------------------------------------
    async def _admin(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        """An admin request to any seed node that answers; None if none did."""
        for node in self.rng.sample(self.cluster.seed_ids, len(self.cluster.seed_ids)):
            answer = await self.client.request(node, method, path, body=body, params=params,
                                               timeout_s=MEMBERSHIP_REQUEST_S)
            if answer.status == 200:
                return answer.body
        return None

    async def converged(self, table: dict[str, Any]) -> bool:
        """Every shard's leader reports exactly the voters the table assigns."""
        want = {int(s): sorted(reps) for s, reps in table["assignment"].items()}
        seen: dict[int, list[str]] = {}
        for view in (await self.cluster.views(self.client)).values():
            for entry in view.get("shards", []):
                if entry.get("role") == "leader":
                    seen[int(entry["shard"])] = sorted(entry.get("members") or [])
        return seen == want

    async def _wait_converged(self, table: dict[str, Any] | None) -> bool:
        deadline = time.monotonic() + MEMBERSHIP_CONVERGE_S
        while table is not None and time.monotonic() < deadline and not self.stop.is_set():
            if await self.converged(table):
                return True
            await asyncio.sleep(0.2)
        return False

    async def member_join(self, node: str) -> int:
        """Add a spare node and rebalance onto it, under load."""
        fid = self._start("member-join", nodes=[node])
        added = await self._admin("POST", "/v1/admin/members", body=self.cluster.member_spec(node))
        plan = await self._admin("POST", "/v1/admin/rebalance") if added is not None else None
        done = await self._wait_converged(plan["table"] if plan else None)
        self.recorder.nemesis("progress", {"fault": "member-join", "id": fid, "converged": done,
                                       "moved_fraction": plan and plan.get("moved_fraction")})
        return fid

    async def member_leave(self, fid: int, node: str) -> None:
        """Remove the node again: its replicas move back to the others."""
        removed = await self._admin("DELETE", f"/v1/admin/members/{node}")
        done = await self._wait_converged(removed["table"] if removed else None)
        self._stop(fid, converged=done)

    # -- partitions ------------------------------------------------------------------
    async def partition(self, kind: str, grudges: dict[str, set[str]], **info: Any) -> int:
        fid = self._start(kind, grudges={k: sorted(v) for k, v in grudges.items() if v}, **info)
        await self._io(self.cluster.network.apply_grudges, grudges)
        return fid

    async def heal(self, fid: int | None = None) -> None:
        await self._io(self.cluster.network.heal)
        for open_fid, value in list(self.open_faults.items()):
            if value.get("grudges") is not None and (fid is None or fid == open_fid):
                self._stop(open_fid)

    async def isolate_leader(self) -> int:
        shard, node = await self.leader()
        return await self.partition("isolate", netns.isolate(self.cluster.node_ids, node), nodes=[node], shard=shard)

    async def random_halves(self) -> int:
        nodes = list(self.cluster.node_ids)
        self.rng.shuffle(nodes)
        minority = nodes[: len(nodes) // 2]
        return await self.partition("halves", netns.halves(self.cluster.node_ids, minority), nodes=sorted(minority))

    async def majority_ring(self) -> int:
        nodes = list(self.cluster.node_ids)
        self.rng.shuffle(nodes)
        return await self.partition("majority-ring", netns.majority_ring(nodes), nodes=nodes)

    async def bridge(self) -> int:
        nodes = list(self.cluster.node_ids)
        self.rng.shuffle(nodes)
        middle = nodes[0]
        return await self.partition("bridge", netns.bridge(nodes, middle), nodes=[middle])

    # -- processes -------------------------------------------------------------------
    async def kill(self, nodes: list[str]) -> int:
        fid = self._start("kill", nodes=sorted(nodes))
        for node in nodes:
            await self._io(self.cluster.nodes[node].kill)
        return fid

    async def restart(self, fid: int, wait_ready: bool = True) -> None:
        nodes = self.open_faults.get(fid, {}).get("nodes", [])
        for node in nodes:
            if not self.cluster.nodes[node].alive:
                await self._io(self.cluster.nodes[node].start)
        self._stop(fid)
        if wait_ready:
            await self._wait_ready(nodes)

    async def _wait_ready(self, nodes: list[str]) -> None:
        try:
            await self.cluster.wait_ready(self.client, RESTART_READY_S, nodes)
        except (TimeoutError, RuntimeError) as exc:
            log.warning("after restart: %s", exc)

    async def pause(self, nodes: list[str], **info: Any) -> int:
        fid = self._start("pause", nodes=sorted(nodes), **info)
        for node in nodes:
            await self._io(self.cluster.nodes[node].pause)
        return fid

    async def resume(self, fid: int) -> None:
        for node in self.open_faults.get(fid, {}).get("nodes", []):
            await self._io(self.cluster.nodes[node].resume)
        self._stop(fid)

    async def pause_leader(self) -> int:
        shard, node = await self.leader()
        return await self.pause([node], shard=shard)

    # -- clocks ----------------------------------------------------------------------
    async def clock_fault(self, node: str, kind: str, apply: Callable[[], None], **info: Any) -> int:
        fid = self._start("clock", nodes=[node], kind=kind, **info)
        apply()
        return fid

    def clock_reset(self, fid: int) -> None:
        for node in self.open_faults.get(fid, {}).get("nodes", []):
            clock = self.cluster.clocks[node]
            state = clock.state()
            clock.reset()
            self._stop(fid, after=state)
            return
        self._stop(fid)

    async def clock_strobe(self, node: str, kind: str, duration_s: float,
                           flip: Callable[[int], None], **info: Any) -> None:
        """Call ``flip(i)`` every STROBE_PERIOD_S for ``duration_s``."""
        fid = self._start("clock", nodes=[node], kind=kind, duration_s=duration_s, **info)
        try:
            end = time.monotonic() + duration_s
            i = 0
            while time.monotonic() < end:
                flip(i)
                i += 1
                await self.sleep(STROBE_PERIOD_S)
        finally:
            self.clock_reset(fid)

    # -- disks -----------------------------------------------------------------------
    async def fill_disk(self, node: str) -> int:
        disk = self.cluster.small_disks[node]
        fid = self._start("disk-full", nodes=[node])
        written = await self._io(disk.fill)
        self.open_faults[fid]["filled_bytes"] = written
        return fid

    async def free_disk(self, fid: int) -> None:
        for node in self.open_faults.get(fid, {}).get("nodes", []):
            await self._io(self.cluster.small_disks[node].free)
        self._stop(fid)

    async def power_cut(self) -> int:
        """Every node loses power: processes die, unsynced writes are lost."""
        nodes = list(self.cluster.node_ids)
        fid = self._start("power-loss", nodes=nodes)

        def cut() -> None:
            self.cluster.kill_all()
            for disk in self.cluster.power_disks.values():
                disk.cut()

        await self._io(cut)
        return fid

    async def power_restore(self, fid: int) -> None:
        def restore() -> None:
            for disk in self.cluster.power_disks.values():
                if disk.proc is None:
                    disk.start()
            self.cluster.start_all()

        await self._io(restore)
        self._stop(fid)
        await self._wait_ready(list(self.cluster.node_ids))

    # -- the end -----------------------------------------------------------------------
    async def heal_all(self) -> list[str]:
        """Undo every fault still in effect; returns what was healed."""
        healed = []
        for fid, value in list(self.open_faults.items()):
            fault = value["fault"]
            healed.append(f"{fault}#{fid}")
            if value.get("grudges") is not None:
                await self.heal(fid)
            elif fault == "pause":
                await self.resume(fid)
            elif fault == "kill":
                await self.restart(fid, wait_ready=False)
            elif fault == "clock":
                self.clock_reset(fid)
            elif fault == "disk-full":
                await self.free_disk(fid)
            elif fault == "power-loss":
                await self.power_restore(fid)
            else:
                self._stop(fid)
        # Belt and braces: no cut, no stopped or dead process, no skewed clock.
        if self.cluster.network.cut_count():
            await self._io(self.cluster.network.heal)
        for node in self.cluster.node_ids:
            proc = self.cluster.nodes[node]
            if proc.paused:
                await self._io(proc.resume)
            if not proc.alive:
                await self._io(proc.start)
        for clock in self.cluster.clocks.values():
            clock.reset()
        for disk in self.cluster.small_disks.values():
            await self._io(disk.free)
        return healed


Schedule = Callable[[Nemesis, float], Awaitable[None]]
