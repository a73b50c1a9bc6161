"""The lock and task services over a fake shard (no Raft): a wait that has to
start again here (the proposal was refused by a leadership change that came
back to this node) waits only what is left of `wait_ms`, not `wait_ms` again;
If-Fence on a read is refused, not ignored; a node warns of its debug
switches (unsafe_skip_fence_check among them)."""

from __future__ import annotations

import dataclasses
import time

import orjson
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


async def test_if_fence_on_a_read_is_a_400_not_ignored() -> None:
    """A read is not fenced: If-Fence on a GET, a list or a batch's get was
    silently ignored (a client could believe its read was checked)."""
    from raftmem.clock import ManualClock
    from raftmem.errors import InvalidRequest

    shard = FakeShard(ManualClock(), leading=True)
    service = MemoryService(CONFIG, "n1", {SHARD: shard}, Table.seed(CONFIG), FakeForwarder(), shard.clock)
    fence = {"If-Fence": f"{NS}/{MID}:{5 << 16}"}
    path = f"/v1/memories/{NS}/{MID}"
    with pytest.raises(InvalidRequest, match="If-Fence"):
        await service.queries.get(NS, MID, Call("GET", path, {"consistency": "eventual"}, fence))
    with pytest.raises(InvalidRequest, match="If-Fence"):
        await service.queries.list(NS, Call("GET", f"/v1/memories/{NS}", {}, fence))

    def batch(**extra: str) -> Call:
        op = {"op": "get", "namespace": NS, "id": MID, "consistency": "eventual", **extra}
        return Call("POST", "/v1/batch", body=orjson.dumps({"ops": [op]}))

    with pytest.raises(InvalidRequest, match="if_fence"):  # a malformed operation refuses the batch
        await service.batches.batch(batch(if_fence=fence["If-Fence"]))
    # Controls: the same reads without it are served.
    assert (await service.queries.get(NS, MID, Call("GET", path, {"consistency": "eventual"}))).status == 200
    assert (await service.batches.batch(batch())).json()["results"][0]["status"] == 200


def test_a_node_warns_of_every_debug_switch_that_is_on() -> None:
    from raftmem.config.load import _DEBUG_KEYS
    from raftmem.node import DEBUG_EFFECTS, debug_warnings

    assert set(DEBUG_EFFECTS) == _DEBUG_KEYS  # each says what it does
    unsafe = dataclasses.replace(CONFIG, debug={"unsafe_skip_fence_check": True, "disable_prevote": False})
    (warning,) = debug_warnings(unsafe)
    assert "unsafe_skip_fence_check" in warning and "fences are not checked" in warning
    assert debug_warnings(CONFIG) == []
