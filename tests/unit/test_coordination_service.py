"""The lock and task services over a fake shard (no Raft): a wait that has to
start again here (the proposal was refused by a leadership change that came
back to this node) waits only what is left of `wait_ms`, not `wait_ms` again."""

from __future__ import annotations

import dataclasses
import time

import pytest

from raftmem.commands import ClaimTask, Command, Committed, Outcome, Result
from raftmem.errors import LockHeld, NoLeader
from raftmem.membership import Table
from raftmem.service import Call, MemoryService
from raftmem.shardhash import queue_shard

from .test_reads import CONFIG, MID, NS, SHARD, FakeForwarder, FakeShard

WAIT_MS = 600
STUMBLE_S = 0.3
CO_CONFIG = dataclasses.replace(CONFIG, coordination=dataclasses.replace(CONFIG.coordination, waiter_poll_ms=50))


class StumblingLeader(FakeShard):
    """Leads the shard; every proposal is busy (the lock held, no task ready),
    and the first one after STUMBLE_S is refused by a leadership change
    (NoLeader), after which this node leads again."""

    def __init__(self) -> None:
        from raftmem.clock import ManualClock

        super().__init__(ManualClock(), leading=True)
        self.started = time.monotonic()
        self.stumbled = False

    async def submit(self, command: Command) -> Committed:
        if not self.stumbled and time.monotonic() - self.started >= STUMBLE_S:
            self.stumbled = True
            raise NoLeader("leadership changed under the proposal")
        if isinstance(command, ClaimTask):
            return Committed(1, Result(Outcome.NO_TASK))
        return Committed(1, Result(Outcome.LOCK_HELD, coord={"holder": "x", "expires_at": 1 << 50}))


@pytest.mark.parametrize("what", ["lock", "claim"])
async def test_a_wait_restarted_here_waits_only_what_is_left(what: str, monkeypatch: pytest.MonkeyPatch) -> None:
    shard = StumblingLeader()
    shards = {SHARD: shard}
    if what == "claim":
        monkeypatch.setattr(shard, "shard", queue_shard(NS, CONFIG.shards))
        shards = {queue_shard(NS, CONFIG.shards): shard}
    service = MemoryService(CO_CONFIG, "n1", shards, Table.seed(CO_CONFIG), FakeForwarder(), shard.clock)
    started = time.monotonic()
    if what == "lock":
        call = Call("POST", f"/v1/locks/{NS}/{MID}", body=b'{"holder": "me", "ttl_ms": 1000, "wait_ms": %d}' % WAIT_MS)
        with pytest.raises(LockHeld):
            await service.locks.acquire(NS, MID, call)
    else:
        call = Call("POST", f"/v1/tasks/{NS}/claim", body=b'{"worker": "w", "lease_ms": 1000, "wait_ms": %d}' % WAIT_MS)
        assert (await service.tasks.claim(NS, call)).status == 204
    elapsed = time.monotonic() - started
    assert shard.stumbled and elapsed < WAIT_MS / 1000 + 0.2, elapsed
