"""The scenario matrix: a cluster shape, a nemesis schedule, and what must come
out (a pass, or for a negative control a FAIL).

Schedules take the load time ``T`` and scale their waits to it, so a quick run
and a full run inject the same faults, at different lengths. Every scenario
runs all five workloads at once (register, set, session, stale, causal), on
separate namespaces; a control may run only the workload it breaks.

Names are fixed so that runs compare over time:

=====================  ==================================================  ======
name                   faults                                              expect
=====================  ==================================================  ======
none                   none                                                pass
leader-isolate         the leader of a random shard cut off, healed; again pass
halves                 random halves (minority | majority), twice          pass
leader-pause           SIGSTOP of a shard leader past its lease, SIGCONT   pass
kill-rolling           kill -9 + restart of each node in turn, then all    pass
clock                  on a leader: realtime +/- jumps and strobe,         pass
                       monotonic skew and strobe within the drift bound
disk-full              a follower's disk filled to ENOSPC, freed, node     pass
                       restarted (recovery from what is on disk)
power-loss             every node loses power (unsynced writes dropped),   pass
                       twice, with fsync: always
majority-ring          each node sees a different majority, twice          pass
bridge                 two sides joined by one node, twice                 pass
disk-full-failover     a follower's disk full; then commits need its       pass
                       acknowledgements; then it and the leader die
membership             a 4th node joins (rebalance) and leaves, under      pass
                       load, twice
control-local-reads    leader-isolate with debug.unsafe_local_reads        FAIL
control-no-fsync       power-loss with raft.fsync: never                   FAIL
control-early-ack      kill-rolling with debug.unsafe_early_ack            FAIL
control-causal-blind   causal chains that never send their context         FAIL
control-watch-drop     watch streams leave out one event in a hundred      FAIL
                       (debug.unsafe_watch_drop), no faults
coord-leader-pause     leader-pause, running the lock and task workloads   pass
coord-leader-isolate   leader-isolate, lock and task workloads             pass
coord-kill-rolling     kill-rolling, lock and task workloads               pass
coord-clock            clock faults on leaders, lock and task workloads    pass
coord-power-loss       power-loss, lock and task workloads                 pass
control-no-fence       coord-kill-rolling with the fence checks skipped    FAIL
                       (debug.unsafe_skip_fence_check): Jepsen's etcd-lock
                       unsafety, and tasks completed twice

The ``watch`` workload (``watch.py``: watchers resumed session after session,
checked as etcd's robustness suite checks watches) joins the default five in
leader-isolate, halves, kill-rolling and power-loss.

The ``coord-`` scenarios run only the ``lock`` and ``task`` workloads
(``coordworkloads.py``): their holders also pause past their leases by
themselves, under every fault, which is the fault locks are for.
control-search-        fresh searches answered without their barrier       FAIL
  no-barrier           (debug.unsafe_search_no_barrier)
=====================  ==================================================  ======

``leader-isolate`` and ``kill-rolling`` also run the ``search`` workload
(fresh searches never miss an acknowledged write, never return a deleted one).

"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jepsen_like import netns
from jepsen_like.cluster import ClusterSpec
from jepsen_like.nemesis import Nemesis, Schedule

DRIFT_BOUND = 0.1  # the cluster config's raft.clock_drift_bound (cluster.py)
SKEW_OF_BOUND = 0.8  # monotonic skew injected, as a fraction of the bound
DEFAULT_WORKLOADS = ("register", "set", "session", "stale", "causal")
# The scenarios the watch workload joins (the issue's: kill-rolling, leader-isolate, halves, power-loss).
WITH_WATCH = (*DEFAULT_WORKLOADS, "watch")
COORDINATION = ("lock", "task")  # the workloads of the coord- scenarios (coordworkloads.py)


def _clamp(value: float, lo: float, hi: float) -> float:
    return max(lo, min(hi, value))


async def schedule_none(nem: Nemesis, t: float) -> None:
    return None


async def _cycles(nem: Nemesis, t: float, start_fault: Any, heal: Any, hold: float, gap: float,
                  rounds: int | None = None) -> None:
    done = 0
    while nem.elapsed() + gap + hold <= t - 2 and (rounds is None or done < rounds):
        await nem.sleep(gap)
        fid = await start_fault()
        try:
            await nem.sleep(hold)
        finally:
            await heal(fid)
        done += 1


async def schedule_leader_isolate(nem: Nemesis, t: float) -> None:
    await _cycles(nem, t, nem.isolate_leader, nem.heal, hold=_clamp(0.25 * t, 5, 10), gap=_clamp(0.1 * t, 3, 8))


async def schedule_control_local_reads(nem: Nemesis, t: float) -> None:
    """Leader isolation held long enough that the majority side has elected a
    new leader and acknowledged writes while the cut-off leader (which, with
    the naive 30 s step-down, still believes it leads) answers reads. Requests
    forwarded to the cut-off leader stall for a write timeout first (about
    6 s), so a short cut shows little; the hold stays under the 30 s step-down."""
    await _cycles(nem, t, nem.isolate_leader, nem.heal, hold=_clamp(0.6 * t, 9, 20), gap=2)


async def schedule_halves(nem: Nemesis, t: float) -> None:
    await _cycles(nem, t, nem.random_halves, nem.heal, hold=_clamp(0.25 * t, 4, 15),
                  gap=_clamp(0.12 * t, 2, 8), rounds=2)


async def schedule_majority_ring(nem: Nemesis, t: float) -> None:
    await _cycles(nem, t, nem.majority_ring, nem.heal, hold=_clamp(0.25 * t, 4, 15),
                  gap=_clamp(0.12 * t, 2, 8), rounds=2)


async def schedule_bridge(nem: Nemesis, t: float) -> None:
    await _cycles(nem, t, nem.bridge, nem.heal, hold=_clamp(0.25 * t, 4, 15), gap=_clamp(0.12 * t, 2, 8), rounds=2)


async def schedule_leader_pause(nem: Nemesis, t: float) -> None:
    # Well past the election timeout (and so any lease): 3 s or more.
    await _cycles(nem, t, nem.pause_leader, nem.resume, hold=_clamp(0.12 * t, 3, 8), gap=_clamp(0.1 * t, 3, 8))


async def schedule_kill_rolling(nem: Nemesis, t: float) -> None:
    gap, down = _clamp(0.06 * t, 2, 6), _clamp(0.05 * t, 1.5, 5)
    nodes = list(nem.cluster.node_ids)
    nem.rng.shuffle(nodes)
    for node in nodes:
        await nem.sleep(gap)
        fid = await nem.kill([node])
        await nem.sleep(down)
        await nem.restart(fid)
    await nem.sleep(gap)
    fid = await nem.kill(list(nem.cluster.node_ids))
    await nem.sleep(down)
    await nem.restart(fid)


async def schedule_clock(nem: Nemesis, t: float) -> None:
    gap, hold = _clamp(0.04 * t, 1.5, 3), _clamp(0.08 * t, 2, 6)
    jump_s = 6.0
    slow, fast = 1 - SKEW_OF_BOUND * DRIFT_BOUND, 1 + SKEW_OF_BOUND * DRIFT_BOUND

    async def step(kind: str, apply: Any, **info: Any) -> None:
        await nem.sleep(gap)
        shard, node = await nem.leader()
        clock = nem.cluster.clocks[node]
        fid = await nem.clock_fault(node, kind, lambda: apply(clock), shard=shard, **info)
        try:
            await nem.sleep(hold)
        finally:
            nem.clock_reset(fid)

    async def strobe(kind: str, flip: Any, **info: Any) -> None:
        await nem.sleep(gap)
        shard, node = await nem.leader()
        clock = nem.cluster.clocks[node]
        await nem.clock_strobe(node, kind, hold, lambda i: flip(clock, i), shard=shard, **info)

    await step("realtime-jump", lambda c: c.jump_realtime(jump_s), delta_s=jump_s)
    await step("realtime-jump", lambda c: c.jump_realtime(-jump_s), delta_s=-jump_s)
    await strobe("realtime-strobe", lambda c, i: c.set_realtime_offset(jump_s if i % 2 == 0 else -jump_s),
                 delta_s=jump_s)
    await step("monotonic-rate", lambda c: c.set_monotonic_rate(slow), rate=slow)
    await step("monotonic-rate", lambda c: c.set_monotonic_rate(fast), rate=fast)
    await strobe("monotonic-rate-strobe", lambda c, i: c.set_monotonic_rate(slow if i % 2 == 0 else fast),
                 rates=[slow, fast])


async def schedule_disk_full(nem: Nemesis, t: float) -> None:
    gap, hold = _clamp(0.1 * t, 2, 8), _clamp(0.2 * t, 4, 15)
    rounds = 0
    while nem.elapsed() + gap + hold + 6 <= t - 2 and rounds < 2:
        await nem.sleep(gap)
        node = await nem.least_leading_node()
        fid = await nem.fill_disk(node)
        try:
            await nem.sleep(hold)
        finally:
            await nem.free_disk(fid)
        # Space is back: the node must recover from whatever it wrote to disk.
        await nem.sleep(1.0)
        kid = await nem.kill([node])
        await nem.restart(kid)
        rounds += 1


async def schedule_disk_full_failover(nem: Nemesis, t: float) -> None:
    """A harsher disk-full: make the full node's acknowledgements matter. X (a
    follower) runs out of space; when space returns the other follower Y is cut
    off, so commits need X's acknowledgements; then X and the leader L die, Y
    comes back, and X restarts: X and Y must still hold every acknowledged
    write, from what X wrote to disk around the full moment."""
    gap, hold = _clamp(0.1 * t, 2, 6), _clamp(0.15 * t, 3, 10)
    await nem.sleep(gap)
    leaders = await nem.cluster.leaders(nem.client)
    counts = {n: 0 for n in nem.cluster.node_ids}
    for node in leaders.values():
        counts[node] += 1
    x = await nem.least_leading_node()
    others = sorted((n for n in nem.cluster.node_ids if n != x), key=lambda n: -counts[n])
    leader, y = others[0], others[1]
    fid = await nem.fill_disk(x)
    try:
        await nem.sleep(hold)
    finally:
        cut = await nem.partition("isolate", netns.isolate(nem.cluster.node_ids, y), nodes=[y])
        await nem.free_disk(fid)
    # Long enough for X to catch up and acknowledge (alone with L) new commits.
    await nem.sleep(_clamp(0.12 * t, 4, 8))
    kill_x = await nem.kill([x])
    kill_leader = await nem.kill([leader])
    await nem.heal(cut)
    await nem.restart(kill_x)
    await nem.sleep(_clamp(0.05 * t, 2, 4))
    await nem.restart(kill_leader)


async def schedule_power_loss(nem: Nemesis, t: float) -> None:
    gap, down = _clamp(0.25 * t, 3, 15), 1.0
    for _ in range(2):
        if nem.elapsed() + gap + down + 5 > t:
            break
        await nem.sleep(gap)
        fid = await nem.power_cut()
        try:
            await nem.sleep(down)
        finally:
            await nem.power_restore(fid)


async def schedule_membership(nem: Nemesis, t: float) -> None:
    gap = _clamp(0.08 * t, 2, 6)
    spare = nem.cluster.node_ids[-1]
    for _round in range(2):
        if nem.elapsed() + gap + 10 > t:
            break
        await nem.sleep(gap)
        fid = await nem.member_join(spare)
        await nem.sleep(gap)
        await nem.member_leave(fid, spare)




@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    schedule: Schedule
    expect_valid: bool = True
    cluster: dict[str, Any] = field(default_factory=dict)
    quick_time_limit_s: float = 25.0
    time_limit_s: float = 60.0
    workloads: tuple[str, ...] = DEFAULT_WORKLOADS

    def cluster_spec(self) -> ClusterSpec:
        return ClusterSpec(**self.cluster)

    @property
    def is_control(self) -> bool:
        return not self.expect_valid


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("none", "no faults", schedule_none, quick_time_limit_s=15),
        Scenario("leader-isolate", "the leader of a random shard isolated, healed, repeated",
                 schedule_leader_isolate, quick_time_limit_s=25, workloads=(*WITH_WATCH, "search")),
        Scenario("halves", "random halves, twice", schedule_halves, workloads=WITH_WATCH),
        Scenario("leader-pause", "a shard leader SIGSTOPped past its lease, SIGCONT, repeated",
                 schedule_leader_pause),
        Scenario("kill-rolling", "kill -9 and restart of each node in turn, then of all nodes",
                 schedule_kill_rolling, quick_time_limit_s=30, workloads=(*WITH_WATCH, "search")),
        Scenario("clock", "clock jumps, strobes and skew within the drift bound on shard leaders",
                 schedule_clock, cluster={"clock_shim": True}, time_limit_s=60),
        Scenario("disk-full", "a follower's disk full, freed, the node restarted",
                 schedule_disk_full, cluster={"disk": "small"}),
        Scenario("disk-full-failover", "a follower's disk full, then its acknowledgements decide commits, "
                 "then it and the leader are killed", schedule_disk_full_failover, cluster={"disk": "small"}),
        Scenario("power-loss", "power loss of every node (unsynced writes dropped), fsync always",
                 schedule_power_loss, cluster={"disk": "power"}, workloads=WITH_WATCH),
        Scenario("majority-ring", "each node sees a different majority, twice", schedule_majority_ring),
        Scenario("membership", "a 4th node added, replicas rebalanced onto it, then removed, twice, under load",
                 schedule_membership, cluster={"spare": 1, "shards": 8}, quick_time_limit_s=30),
        Scenario("bridge", "two sides joined by one node, twice", schedule_bridge),
        Scenario("control-local-reads", "NEGATIVE CONTROL: unsafe local reads under leader-isolate",
                 schedule_control_local_reads, expect_valid=False,
                 cluster={"debug": {"unsafe_local_reads": True}}, quick_time_limit_s=20),
        Scenario("control-no-fsync", "NEGATIVE CONTROL: fsync never under power loss",
                 schedule_power_loss, expect_valid=False,
                 cluster={"disk": "power", "fsync": "never"}, quick_time_limit_s=20),
        Scenario("control-early-ack", "NEGATIVE CONTROL: writes acknowledged before commit under kill-rolling",
                 schedule_kill_rolling, expect_valid=False,
                 cluster={"debug": {"unsafe_early_ack": True}}, quick_time_limit_s=20),
        Scenario("control-causal-blind", "NEGATIVE CONTROL: agents pass causal chains without the context",
                 schedule_none, expect_valid=False, workloads=("causal-blind",), quick_time_limit_s=15),
        Scenario("control-watch-drop", "NEGATIVE CONTROL: watch streams leave out one event in a hundred",
                 schedule_none, expect_valid=False, workloads=("watch",),
                 cluster={"debug": {"unsafe_watch_drop": True}}, quick_time_limit_s=15),
        Scenario("coord-leader-pause", "locks and tasks: a shard leader SIGSTOPped past its lease, SIGCONT",
                 schedule_leader_pause, workloads=COORDINATION),
        Scenario("coord-leader-isolate", "locks and tasks: the leader of a random shard isolated, healed",
                 schedule_leader_isolate, workloads=COORDINATION),
        Scenario("coord-kill-rolling", "locks and tasks: kill -9 and restart of each node in turn, then all",
                 schedule_kill_rolling, workloads=COORDINATION, quick_time_limit_s=30),
        Scenario("coord-clock", "locks and tasks: clock jumps, strobes and skew on shard leaders",
                 schedule_clock, cluster={"clock_shim": True}, workloads=COORDINATION),
        Scenario("coord-power-loss", "locks and tasks: power loss of every node, fsync always",
                 schedule_power_loss, cluster={"disk": "power"}, workloads=COORDINATION),
        Scenario("control-no-fence", "NEGATIVE CONTROL: fence checks skipped (locks and task claims) under "
                 "kill-rolling", schedule_kill_rolling, expect_valid=False, workloads=COORDINATION,
                 cluster={"debug": {"unsafe_skip_fence_check": True}}, quick_time_limit_s=25),
        Scenario("control-search-no-barrier", "NEGATIVE CONTROL: fresh searches answered without their barrier",
                 schedule_none, expect_valid=False, workloads=("search",), quick_time_limit_s=15,
                 cluster={"debug": {"unsafe_search_no_barrier": True}}),
    )
}

# The scenarios the issue fixes (make jepsen); extras run after them.
REQUIRED = ("none", "leader-isolate", "halves", "leader-pause", "kill-rolling", "clock", "disk-full",
            "power-loss", "membership", "control-local-reads", "control-no-fsync", "control-early-ack",
            "control-causal-blind", "control-search-no-barrier", "control-watch-drop")
COORDINATION_MATRIX = ("coord-leader-pause", "coord-leader-isolate", "coord-kill-rolling", "coord-clock",
                       "coord-power-loss", "control-no-fence")
FULL_MATRIX = (*REQUIRED, "majority-ring", "bridge", "disk-full-failover", *COORDINATION_MATRIX)
# make jepsen-quick (CI): a short subset, with negative controls that must FAIL.
QUICK_MATRIX = ("none", "leader-isolate", "kill-rolling", "power-loss", "control-local-reads",
                "control-early-ack", "control-no-fsync", "control-causal-blind", "coord-kill-rolling",
                "control-no-fence", "control-search-no-barrier", "control-watch-drop")


def get(name: str) -> Scenario:
    if name not in SCENARIOS:
        raise KeyError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return SCENARIOS[name]


__all__ = ["FULL_MATRIX", "QUICK_MATRIX", "REQUIRED", "SCENARIOS", "Scenario", "get"]
