"""Drives every Raft group of the process on the asyncio event loop thread, with
one fsync thread for group commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable

from .group import HEARTBEAT_GAP_MIN_S, RaftGroup
from .journal import SyncTimes
from .poller import EpollPoller

log = logging.getLogger(__name__)


class Ticker:
    """Drives every Raft group of the process on the asyncio event loop thread
    (pysyncobj with autoTick=False): Raft socket events, proposals and a periodic
    timer schedule a tick pass; fsync runs on a thread of its own, in group-commit
    rounds, and held messages leave once their journal is durable.

    One thread for HTTP and Raft: with two, every socket call handed the GIL to
    the other thread and waited to get it back (measured: ~15 context switches
    per write, a quarter of a shard's commit latency)."""

    # A timer looks for groups due a tick every TICK_PERIOD_S. A leader is ticked
    # at least that often (its heartbeats leave up to that late), a follower at
    # least every FOLLOWER_TICK_S (election deadlines and pre-vote: an election
    # starts up to that much later, never earlier, so leases are unaffected). At
    # 10 ms for every group, timer wake-ups and idle ticks cost an idle 3-node
    # cluster 0.24 cores; at these values 0.14.
    TICK_PERIOD_S = 0.02
    FOLLOWER_TICK_S = 0.05
    def __init__(self, fsync: str, fsync_batch_ms: int = 10, log_compaction_bytes: int = 4 << 20) -> None:
        """`log_compaction_bytes`: compact a group's log early when it holds this
        many bytes (held in memory), whatever its entry count."""
        self.log_compaction_bytes = log_compaction_bytes
        self.poller = EpollPoller()
        self.fsync = fsync
        self.fsync_batch_s = fsync_batch_ms / 1000.0
        self.groups: list[RaftGroup] = []
        # Held by every tick pass; other threads take it to touch pysyncobj state.
        self.lock = threading.RLock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._calls: list[Callable[[], None]] = []
        self._last_sync = time.monotonic()
        self._scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._heartbeat_timer: asyncio.TimerHandle | None = None
        self._stopped = False
        self._sync_wanted = threading.Condition()
        self._sync_requested = False
        self._sync_stop = threading.Event()
        self._sync_thread: threading.Thread | None = None
        self.tick_errors = 0
        self.passes = 0
        self.sync_rounds = 0
        self.fsync_times = SyncTimes()  # every journal fsync of the node's groups

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind to the running loop; call on its thread before creating groups."""
        self.loop = loop
        self._loop_thread = threading.get_ident()

    def add(self, group: RaftGroup) -> None:
        group.journal.observe_sync = self.fsync_times.observe
        with self.lock:
            self.groups.append(group)

    def remove(self, group: RaftGroup) -> None:
        with self.lock:
            self.groups = [g for g in self.groups if g is not group]

    def wake(self) -> None:
        """Ask for a tick pass soon (from any thread)."""
        if threading.get_ident() == self._loop_thread:
            self._schedule()
        elif self.loop is not None and not self._stopped:
            with contextlib.suppress(RuntimeError):  # loop closed at shutdown
                self.loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        if not self._scheduled and not self._stopped:
            self._scheduled = True
            assert self.loop is not None
            self.loop.call_soon(self._pass)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run `fn` in the next tick pass, on the loop thread (pysyncobj state is
        not thread-safe)."""
        with self.lock:
            self._calls.append(fn)
        self.wake()

    def start(self) -> None:
        loop = self.loop
        assert loop is not None and threading.get_ident() == self._loop_thread, "attach() first, on the loop"
        loop.add_reader(self.poller.fileno(), self._on_raft_io)
        self._timer = loop.call_later(self.TICK_PERIOD_S, self._periodic)
        if self.fsync != "never":
            self._sync_thread = threading.Thread(target=self._sync_loop, name="raft-fsync", daemon=True)
            self._sync_thread.start()
        self._schedule()

    def _on_raft_io(self) -> None:
        try:
            with self.lock:
                self.poller.poll(0.0)
        except Exception:
            self.tick_errors += 1
            log.exception("raft socket event failed")
        self._schedule()

    def _periodic(self) -> None:
        if self._stopped:
            return
        assert self.loop is not None
        self._timer = self.loop.call_later(self.TICK_PERIOD_S, self._periodic)
        self._schedule()

    def _sync_loop(self) -> None:
        """The fsync thread: the loop goes on serving and ticking while journals
        reach the disk; held messages leave when theirs is durable."""
        while not self._sync_stop.is_set():
            with self._sync_wanted:
                while not self._sync_requested and not self._sync_stop.is_set():
                    self._sync_wanted.wait(0.5)
                self._sync_requested = False
            self.sync_rounds += 1
            for journal in [g.journal for g in self.groups]:
                try:
                    journal.sync()
                except OSError:
                    # A failed fsync stops the node (journal.stop_the_process);
                    # where that is replaced (tests), nothing waiting on it leaves.
                    log.exception("journal fsync failed")
                    self._sync_stop.wait(0.05)
            self.wake()

    def _request_sync(self) -> None:
        with self._sync_wanted:
            self._sync_requested = True
            self._sync_wanted.notify()

    def _pass(self) -> None:
        """Tick every group with socket activity, a proposal, a wanted heartbeat, or
        no tick for its role's period; then start an fsync round and send what is durable."""
        self._scheduled = False
        if self._stopped:
            return
        self.passes += 1
        try:
            with self.lock:
                calls, self._calls = self._calls, []
                for fn in calls:
                    try:
                        fn()
                    except Exception:  # one failing call must not drop the others
                        self.tick_errors += 1
                        log.exception("raft call failed")
                now = time.monotonic()
                for group in self.groups:
                    leading = group.is_leader()
                    if (
                        not group.poller_view.active
                        and not group.heartbeat_wanted
                        and not (leading and group.journal.durable_index != group.durable_seen)
                        and now - group.last_tick < (self.TICK_PERIOD_S if leading else self.FOLLOWER_TICK_S)
                    ):
                        continue
                    group.poller_view.active = False
                    group.last_tick = now
                    try:
                        group.sync_members()
                        group.hooks.lease.check_clock(now)
                        group.hooks.prevote_gate(now)
                        group.tick()
                        if group.journal.bytes > self.log_compaction_bytes:
                            group._obj.forceLogCompaction()
                    except Exception:
                        # pysyncobj retries a failing apply on the next tick (e.g.
                        # disk full): count it, log it, and go on with the other
                        # shards, their fsyncs and their messages.
                        self.tick_errors += 1
                        log.exception("shard %d: raft tick failed", group.shard)
                now = time.monotonic()
                dirty = any(g.journal.dirty for g in self.groups)
                if dirty and (
                    self.fsync == "always"
                    or (self.fsync == "batch" and now - self._last_sync >= self.fsync_batch_s)
                ):
                    self._request_sync()
                    self._last_sync = now
                for group in self.groups:
                    group._transport.flush_outbox()
                wanted = any(g.heartbeat_wanted for g in self.groups)
        except Exception:
            self.tick_errors += 1
            log.exception("raft tick pass failed")
            return
        if wanted and self._heartbeat_timer is None:
            # An on-demand heartbeat not yet due (HEARTBEAT_GAP_MIN_S): come back for it.
            assert self.loop is not None
            self._heartbeat_timer = self.loop.call_later(HEARTBEAT_GAP_MIN_S, self._heartbeat_due)

    def _heartbeat_due(self) -> None:
        self._heartbeat_timer = None
        self._schedule()

    def stop(self) -> None:
        """On the loop thread: stop ticking, finish the fsync thread, close every group."""
        self._stopped = True
        for timer in (self._timer, self._heartbeat_timer):
            if timer is not None:
                timer.cancel()
        if self.loop is not None:
            self.loop.remove_reader(self.poller.fileno())
        self._sync_stop.set()
        self._request_sync()
        if self._sync_thread is not None:
            self._sync_thread.join(timeout=5)
        with self.lock:
            for group in self.groups:
                group.refuse_held()  # a hand-over's held proposals: refused, never in the log
                try:
                    group._obj._doDestroy()
                except Exception:
                    log.exception("shard %d: destroy failed", group.shard)
        self.poller.close()
