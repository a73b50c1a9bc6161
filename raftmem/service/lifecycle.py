"""The lifecycle of memories, on the node: reads recorded without a log entry
each (access tracking and sliding TTL), and pruning policies run by each shard
leader through the log. The rules apply decides by are raftmem.lifecycle's.

Reads. A node that serves a read of a memory notes it here (`saw`): per shard
and memory, how many reads, the latest, and whether its sliding TTL is due (a
`ttl_refresh_fraction` of it has passed since its last refresh). Every
`touch_flush_ms` it sends each shard's notes to the shard's leader as one
`Touch` command (a memory read a thousand times: one item), which the leader
proposes like any write. At most `touch_keys_max` memories wait at once; reads
of more are dropped and counted. A flush that fails keeps its notes for the
next one (merged, within the same bound).

Pruning. Every `run_every_ms` the leader of each shard, for each policy:
1. collects the reads every other replica holds but has not sent yet
   (POST /v1/internal/shards/{s}/touches/drain on each voter) and proposes
   them with its own: a read served anywhere before the run started is
   recorded before anything is selected. A voter that does not answer defers
   the run (its unsent reads could be lost);
2. selects candidates from its applied state (StateMachine.prune_candidates);
3. proposes a `Prune` with the rule's parameters (cut-off, keep) chosen now;
   apply re-checks every target against them (never a memory accessed after
   the cut-off, as recorded in the log up to that entry).
Histories of removed memories are compacted the same way, `retain_removed_s`
after the removal. `POST /v1/admin/lifecycle/run[?dry_run=true&policy=]` runs
it now on every shard leader (dry: only says what it would remove).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from .. import lifecycle
from .. import validation as v
from ..clock import Clock
from ..commands import TOUCH_ITEMS_MAX, Prune, Touch, TouchItem
from ..config import Config, PolicyConfig
from ..errors import InvalidRequest, NoLeader, RaftmemError, from_result
from ..shard import Shard
from .calls import Call, Forwarder, ForwardLost, ForwardNotSent, Reply
from .leaders import Router
from .memories import Memories

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 2.0
DRY_RUN_SAMPLE_MAX = 20  # candidates listed per policy and shard in a dry run


class TouchBuffer:
    """Reads served here and not yet sent, per shard and memory (bounded)."""

    def __init__(self, keys_max: int) -> None:
        self.keys_max = keys_max
        self.pending: dict[int, dict[tuple[str, str], list[Any]]] = {}
        self.count = 0
        self.recorded = 0
        self.dropped = 0

    def add(self, shard: int, ns: str, mid: str, reads: int, last_ms: int, refresh: bool) -> None:
        notes = self.pending.setdefault(shard, {})
        item = notes.get((ns, mid))
        if item is None:
            if self.count >= self.keys_max:
                self.dropped += reads
                return
            notes[(ns, mid)] = [reads, last_ms, refresh]
            self.count += 1
        else:
            item[0] += reads
            item[1] = max(item[1], last_ms)
            item[2] = item[2] or refresh
        self.recorded += reads

    def take(self, shard: int) -> list[TouchItem]:
        notes = self.pending.pop(shard, {})
        self.count -= len(notes)
        return [TouchItem(ns, mid, reads, last_ms, refresh) for (ns, mid), (reads, last_ms, refresh) in notes.items()]

    def put_back(self, shard: int, items: list[TouchItem]) -> None:
        for item in items:
            self.add(shard, item.namespace, item.id, item.reads, item.last_ms, item.refresh)
            self.recorded -= item.reads  # counted once, when first seen


@dataclass
class PolicyStats:
    runs: int = 0
    deferred: int = 0
    removed: int = 0
    last_run_ms: int | None = None
    last_removed: int = 0
    last_error: str | None = None


@dataclass
class TouchStats:
    entries: int = 0  # Touch commands sent
    failed: int = 0  # flushes that failed (their reads were kept)


@dataclass
class LifecycleStats:
    policies: dict[str, PolicyStats] = field(default_factory=dict)
    touches: TouchStats = field(default_factory=TouchStats)
    histories_compacted: int = 0


class Lifecycle:
    def __init__(self, config: Config, router: Router, memories: Memories, forwarder: Forwarder,
                 clock: Clock) -> None:
        self.config = config
        self.settings = config.lifecycle
        self.router = router
        self.memories = memories
        self.forwarder = forwarder
        self.clock = clock
        self.buffer = TouchBuffer(self.settings.touch_keys_max)
        self.stats = LifecycleStats(policies={p.name: PolicyStats() for p in self.settings.policies})

    # -- reads ---------------------------------------------------------------------------
    def saw(self, shard: int, rec: Mapping[str, Any]) -> None:
        """A read of `rec` was served here."""
        now = self.clock.wall_ms()
        refresh = lifecycle.refresh_due(rec, now, self.settings.ttl_refresh_fraction)
        if self.settings.track_access or refresh:
            self.buffer.add(shard, str(rec["namespace"]), str(rec["id"]), 1, now, refresh)

    async def flush_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.touch_flush_ms / 1000)
            await self.flush_all()

    async def flush_all(self) -> None:
        for shard in sorted(self.buffer.pending):
            await self.flush(shard)

    async def flush(self, shard: int) -> None:
        """Send a shard's notes to its leader; keep them when that fails."""
        items = self.buffer.take(shard)
        for start in range(0, len(items), TOUCH_ITEMS_MAX):
            chunk = items[start:start + TOUCH_ITEMS_MAX]
            try:
                await self._propose_touch(shard, chunk)
            except RaftmemError as e:
                self.stats.touches.failed += 1
                log.debug("shard %d: %d read(s) not sent yet: %s", shard, len(chunk), e.message)
                self.buffer.put_back(shard, items[start:])
                return

    async def _propose_touch(self, shard: int, items: list[TouchItem]) -> None:
        body = orjson.dumps({"items": [i.to_wire() for i in items]})
        call = Call("POST", f"/v1/internal/shards/{shard}/touch", {}, {"Content-Type": "application/json"}, body)
        await self.memories.write(shard, Touch(tuple(items)), call)
        self.stats.touches.entries += 1

    async def touch(self, shard: int, call: Call) -> Reply:
        """Internal: another node's notes, proposed here (the leader)."""
        self._check_shard(shard)
        body = v.parse_json(call.body, self.config.limits)
        raw = body.get("items") if isinstance(body, dict) else None
        try:
            command = Touch.from_wire({"items": raw, "now": 0})
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidRequest(f"touch items: {e}") from None
        return await self.memories.write(shard, command, call)

    async def drain(self, shard: int) -> Reply:
        """Internal: hand this node's unsent notes of `shard` to its leader."""
        self._check_shard(shard)
        return Reply(200, {"items": [i.to_wire() for i in self.buffer.take(shard)]})

    def _check_shard(self, shard: int) -> None:
        if not 0 <= shard < self.config.shards:
            raise InvalidRequest(f"no shard {shard}")

    # -- pruning -----------------------------------------------------------------------------
    async def run_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.run_every_ms / 1000)
            for shard in sorted(self.router.shards):
                replica = self.router.local(shard)
                if replica is None or not replica.role().leading:
                    continue
                try:
                    await self.run_shard(replica, dry_run=False)
                except RaftmemError as e:
                    log.debug("shard %d: lifecycle run deferred: %s", shard, e.message)

    async def _collect_reads(self, replica: Shard) -> bool:
        """Propose every replica's unsent reads of this shard; False when a
        voter did not answer (a run must not prune without its reads)."""
        shard = replica.shard
        items = self.buffer.take(shard)
        complete = True
        for node in replica.voters():
            if node == self.router.node_id:
                continue
            call = Call("POST", f"/v1/internal/shards/{shard}/touches/drain", {}, {}, b"", 0)
            try:
                reply = await self.forwarder.forward(node, call, DRAIN_TIMEOUT_S)
            except (ForwardNotSent, ForwardLost):
                complete = False
                continue
            if reply.status != 200:
                complete = False
                continue
            items.extend(TouchItem.from_wire(i) for i in reply.json()["items"])
        for start in range(0, len(items), TOUCH_ITEMS_MAX):
            done = await replica.submit(Touch(tuple(items[start:start + TOUCH_ITEMS_MAX]), self.clock.wall_ms()))
            if not done.result.outcome.ok:
                raise from_result(done.result.to_wire())
        return complete

    async def run_shard(self, replica: Shard, dry_run: bool, only: str | None = None) -> dict[str, Any]:
        """One run of the policies (or `only` one) on a shard this node leads."""
        if not replica.role().leading:
            raise NoLeader(f"node {self.router.node_id} does not lead shard {replica.shard}", shard=replica.shard)
        policies = [p for p in self.settings.policies if only is None or p.name == only]
        # Reads are collected first only when something may be pruned on their account.
        complete = True if dry_run or not policies else await self._collect_reads(replica)
        report: dict[str, Any] = {}
        for policy in policies:
            stats = self.stats.policies[policy.name]
            if not complete:
                stats.deferred += 1
                report[policy.name] = {"deferred": "a replica did not hand over its unsent reads"}
                continue
            report[policy.name] = await self._run_policy(replica, policy, dry_run, stats)
        if not dry_run and only is None:
            await self._compact_histories(replica)
        return report

    async def _run_policy(self, replica: Shard, policy: PolicyConfig, dry_run: bool,
                          stats: PolicyStats) -> dict[str, Any]:
        now = self.clock.wall_ms()
        cutoff = now - (policy.idle_ms or 0)
        settings = self.settings
        targets, _ = await replica.read("eventual", lambda state: state.prune_candidates(
            policy, cutoff, now, settings.prune_batch_max, settings.scan_keys_max))
        if dry_run:
            return {"candidates": len(targets), "sample": [f"{ns}/{mid}" for ns, mid, _v in targets[:DRY_RUN_SAMPLE_MAX]]}
        removed = 0
        if targets:
            command = Prune(policy.name, policy.rule, cutoff_ms=cutoff, keep=policy.max_per_agent or 0,
                            tag=policy.tag, targets=tuple(targets), now_ms=now)
            done = await replica.submit(command)
            removed = done.result.expired
        stats.runs += 1
        stats.removed += removed
        stats.last_removed = removed
        stats.last_run_ms = now
        return {"candidates": len(targets), "removed": removed}

    async def _compact_histories(self, replica: Shard) -> None:
        retain_ms = self.config.history.retain_removed_s * 1000
        now = self.clock.wall_ms()
        due, _ = await replica.read("eventual", lambda state: state.history_compaction_due(now - retain_ms))
        if due:
            done = await replica.submit(Prune("", "history", cutoff_ms=now - retain_ms, now_ms=now))
            self.stats.histories_compacted += done.result.expired

    async def run_here(self, shard: int, call: Call) -> Reply:
        """Internal: run at this shard's leader (the admin run's far end)."""
        self._check_shard(shard)
        dry_run, only = self._run_params(call)

        async def local(replica: Shard) -> Reply:
            return Reply(200, {"shard": shard, "policies": await self.run_shard(replica, dry_run, only)})

        return await self.router.on_leader(shard, call, local, is_write=not dry_run)

    async def run_all(self, call: Call) -> Reply:
        """POST /v1/admin/lifecycle/run: every shard, at its leader."""
        dry_run, only = self._run_params(call)
        query = {"dry_run": "true" if dry_run else "false", **({"policy": only} if only else {})}

        async def one(shard: int) -> dict[str, Any]:
            inner = Call("POST", f"/v1/internal/shards/{shard}/lifecycle", query, {}, b"", call.hops)
            try:
                reply = await self.run_here(shard, inner)
            except RaftmemError as e:
                return {"shard": shard, "error": e.body()["error"]}
            body: dict[str, Any] = reply.json()
            return body

        shards = await asyncio.gather(*(one(s) for s in range(self.config.shards)))
        return Reply(200, {"dry_run": dry_run, "shards": list(shards)})

    def _run_params(self, call: Call) -> tuple[bool, str | None]:
        dry = v.flag("dry_run", call.query.get("dry_run"))
        only = call.query.get("policy")
        if only is not None and only not in self.stats.policies:
            raise InvalidRequest(f"no policy {only!r} (known: {', '.join(self.stats.policies) or 'none'})",
                                 field="policy")
        return dry, only

    def status(self) -> dict[str, Any]:
        """This node's share (as the leader of some shards), for GET /v1/cluster."""
        return {
            "policies": {name: asdict(stats) for name, stats in self.stats.policies.items()},
            "touches": {**asdict(self.stats.touches), "recorded": self.buffer.recorded,
                        "dropped": self.buffer.dropped, "pending": self.buffer.count},
            "histories_compacted": self.stats.histories_compacted,
            "at_ms": self.clock.wall_ms(),
        }
