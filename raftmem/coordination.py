"""Locks and task claims: how applying their commands changes a shard's state,
their keys, and reading them back. The state machine's dispatcher calls
`Coordination.apply` (and `fence_refusal` for a write carrying `If-Fence`);
nothing else touches these keys.

Every decision replicas must agree on is made here, deterministically, from
the command and the stored state: who holds a lock, whether a fence passes,
which task a claim takes, whether a lease or claim has run out. Time is the
leader's `now_ms`, chosen before proposing and carried in the log, never a
clock read here. Since a new leader's clock may be behind its predecessor's,
the time used is the latest the shard has applied (`m NUL coord_clock`), so
that a lease that was over stays over; but never more than
`CLOCK_STEP_BACK_MS_MAX` ahead of the command's own time (`shard_now`): one
leader stamping a day ahead (a clock step) must not hold every later lease a
day longer. So the shard's time is monotonic while leaders' clocks agree
within that bound (the clock-offset assumption), and a forward step of a
clock lengthens leases granted after its correction by at most the bound.

- **A lock is held** while its record exists and `expires_at > now`. A lease
  that ran out is free for the next acquisition at once (deciding it needs no
  separate entry); `ExpireLeases`, which the leader proposes when its clock
  passes a deadline, removes records and wakes waiters.
- **Fences** are `raft index * FENCE_SPAN + position in the entry` of the
  acquisition or claim: they grow strictly with every acquisition and claim of
  the shard (group commit packs several commands in one entry, so the index
  alone does not), and `fence // FENCE_SPAN` is the Raft index.
- **A fence passes** only if the lock is held now with exactly that fence: a
  newer acquisition, a release or an expiry all refuse it (`fenced`).
- **A claim** takes the highest-priority, then oldest, ready task. Delayed
  tasks (`not_before`, retry back-off) wait in the deadline index and join the
  ready queue when they come due, before the claim looks. A claim, a
  completion, a failure or an extension needs the claim's fence, and a claim
  that ran out is requeued with `attempts` + 1 (dead once `max_attempts` is
  used up).

Key layout (namespaces, lock names and task ids are `[A-Za-z0-9._:-]`, so NUL,
0x01 and 0x02 never occur in them; times are 8-byte big-endian ms):

    L NUL ns NUL name                        -> lock (JSON)
    J NUL ns NUL id                          -> task (JSON)
    J NUL ns NUL 0x01 state NUL id           -> ""   (tasks by state: r c d x)
    J NUL ns NUL 0x02                        -> {"n": open tasks} (ready + claimed)
    W NUL ns NUL rank(4) order(8) id         -> ""   (ready queue: rank = PRIORITY_MAX - priority)
    Z NUL due(8) kind ns NUL name-or-id      -> ""   (deadlines: L lease, C claim, D delay, R retention)
    m NUL coord_clock                        -> {"ms": the shard's time (the latest decided by)}
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Protocol

from . import codec
from .commands import (
    EXPIRE_OPS_MAX,
    AcquireLock,
    ClaimTask,
    CoordinationCommand,
    EnqueueTask,
    ExpireLeases,
    Fence,
    Outcome,
    ReleaseLock,
    RenewLock,
    Result,
    SettleTask,
)
from .storage import Store

FENCE_SPAN = 1 << 16  # commands per log entry are bounded below this (config rule)
# How far the shard's time may be ahead of a command's own time (the leader's
# clock): leaders' clocks are assumed to agree within this (NTP keeps them within
# milliseconds); a step ahead of it is forgotten once the clock is corrected,
# instead of holding every lease that long. A constant, not config: replicas
# must decide alike.
CLOCK_STEP_BACK_MS_MAX = 60_000
PRIORITY_MAX = 1_000_000
BACKOFF_MS_MAX = 3_600_000
# Due deadlines a claim decides before it looks at the queue (the rest: ExpireLeases).
CLAIM_EXPIRE_OPS_MAX = 64
# Stale queue entries a claim may step over (earlier commands of its own entry
# took them) before it gives up.
CLAIM_SCAN_MAX = 1024

LOCK_PREFIX = b"L\x00"
TASK_PREFIX = b"J\x00"
READY_PREFIX = b"W\x00"
DUE_PREFIX, DUE_END = b"Z\x00", b"Z\x01"
CLOCK_KEY = b"m\x00coord_clock"
SEP = b"\x00"
BY_STATE, OPEN_COUNT = b"\x01", b"\x02"
STATES = {"ready": b"r", "claimed": b"c", "done": b"d", "dead": b"x"}
LEASE, CLAIM, DELAY, RETENTION = b"L", b"C", b"D", b"R"

Record = dict[str, Any]
Notice = tuple[str, str, str]  # ("lock", ns, name) freed; ("tasks", ns, "") ready to claim


class Writes(Protocol):
    def put(self, key: bytes, value: bytes) -> None: ...

    def delete(self, key: bytes) -> None: ...


class Work(Protocol):
    """One entry's apply in progress (the state machine's): its batch, what it
    wrote so far (later commands of the entry see earlier ones), and the
    wake-ups it owes waiters once it is written."""

    index: int

    @property
    def batch(self) -> Writes: ...

    overlay: dict[bytes, dict[str, Any] | None]
    notices: list[Notice]


def lock_key(ns: str, name: str) -> bytes:
    return LOCK_PREFIX + ns.encode() + SEP + name.encode()


def task_key(ns: str, tid: str) -> bytes:
    return TASK_PREFIX + ns.encode() + SEP + tid.encode()


def _state_key(ns: str, state: str, tid: str) -> bytes:
    return TASK_PREFIX + ns.encode() + SEP + BY_STATE + STATES[state] + SEP + tid.encode()


def _count_key(ns: str) -> bytes:
    return TASK_PREFIX + ns.encode() + SEP + OPEN_COUNT


def _ready_key(rec: Record) -> bytes:
    rank = (PRIORITY_MAX - int(rec["priority"])).to_bytes(4, "big")
    ns, tid = str(rec["namespace"]), str(rec["id"])
    return READY_PREFIX + ns.encode() + SEP + rank + codec.u64(int(rec["order"])) + tid.encode()


def _due_key(due: int, kind: bytes, ns: str, name: str) -> bytes:
    return DUE_PREFIX + codec.u64(due) + kind + ns.encode() + SEP + name.encode()


def shard_now(stamped_ms: int, clock_ms: int) -> int:
    """The time a command stamped `stamped_ms` decides by, given the shard's
    latest applied time `clock_ms`: never before it, unless it is more than
    CLOCK_STEP_BACK_MS_MAX ahead of the stamp."""
    return min(max(stamped_ms, clock_ms), stamped_ms + CLOCK_STEP_BACK_MS_MAX)


def is_held(lock: Record | None, now_ms: int) -> bool:
    return lock is not None and lock["expires_at"] > now_ms


def lock_view(lock: Record) -> dict[str, Any]:
    return {k: lock[k] for k in ("namespace", "name", "holder", "fence", "acquired_at", "expires_at", "ttl_ms")}


def task_view(task: Record) -> dict[str, Any]:
    return {k: v for k, v in task.items() if k != "order"}


class Coordination:
    def __init__(self, store: Store, unsafe_skip_fence_check: bool = False) -> None:
        """`unsafe_skip_fence_check`: a negative control for the harness only
        (every lock fence passes, and a task is settled whoever's claim it is
        under), never for production."""
        self.store = store
        self.unsafe_skip_fence_check = unsafe_skip_fence_check

    # -- state access through the entry's overlay --------------------------------
    def _get(self, work: Work, key: bytes) -> Record | None:
        if key in work.overlay:
            return work.overlay[key]
        raw = self.store.get(key)
        return codec.loads(raw) if raw is not None else None

    def _put(self, work: Work, key: bytes, rec: Record) -> None:
        work.overlay[key] = rec
        work.batch.put(key, codec.dumps(rec))

    def _delete(self, work: Work, key: bytes) -> None:
        work.overlay[key] = None
        work.batch.delete(key)

    def _now(self, work: Work, now_ms: int) -> int:
        """The time the command stamped `now_ms` decides by (`shard_now`),
        which becomes the shard's time."""
        clock = self._get(work, CLOCK_KEY)
        latest = int(clock["ms"]) if clock else 0
        now = shard_now(now_ms, latest)
        if now != latest:
            self._put(work, CLOCK_KEY, {"ms": now})
        return now

    # -- dispatch ---------------------------------------------------------------------
    def apply(self, work: Work, seq: int, command: CoordinationCommand) -> Result:
        fence = work.index * FENCE_SPAN + seq
        now = self._now(work, command.now_ms)
        if isinstance(command, ExpireLeases):
            return Result(Outcome.APPLIED, expired=self._expire_due(work, now, command.limit))
        if isinstance(command, AcquireLock):
            return self._acquire(work, command, now, fence)
        if isinstance(command, RenewLock):
            return self._renew(work, command, now)
        if isinstance(command, ReleaseLock):
            return self._release(work, command, now)
        if isinstance(command, EnqueueTask):
            return self._enqueue(work, command, now, fence)
        if isinstance(command, ClaimTask):
            return self._claim(work, command, now, fence)
        return self._settle(work, command, now)

    def replayed(self, work: Work, command: AcquireLock | ClaimTask, first: Result) -> Result:
        """What a retry with the Idempotency-Key of a first acquisition or claim
        is answered: the first answer only while what it won still holds (the
        lock held, the task claimed, with its fence), with the lease as it is
        now. Else `fenced`: the acquisition was released, given back (its
        waiter went away while it was in the log) or ran out, and the lock or
        task may be someone else's; a new acquisition needs a new key. Not
        stored for the key (the state machine stores first answers only)."""
        coord = first.coord or {}
        if first.outcome not in (Outcome.ACQUIRED, Outcome.CLAIMED) or "fence" not in coord:
            return first
        now = self._now(work, command.now_ms)
        fence = int(coord["fence"])
        over = f"is over (released, given back or expired), fence {fence} with it"
        if isinstance(command, AcquireLock):
            lock = self._get(work, lock_key(command.namespace, command.name))
            if is_held(lock, now) and lock is not None and lock["fence"] == fence:
                return replace(first, coord=lock_view(lock))
            held = lock if is_held(lock, now) else None
            now_is = "held by a later acquisition" if held is not None else "not held"
            return Result(Outcome.FENCED, f"the acquisition this Idempotency-Key made {over}; lock "
                          f"{command.namespace}/{command.name} is {now_is}: acquire with a new key",
                          coord=lock_view(held) if held is not None else {})
        task = self._get(work, task_key(command.namespace, str(coord["id"])))
        if task is not None and task["state"] == "claimed" and task["fence"] == fence \
                and task["claim_expires_at"] > now:
            return replace(first, coord=task_view(task))
        state = "gone" if task is None else str(task["state"])
        return Result(Outcome.FENCED, f"the claim this Idempotency-Key made {over}; task "
                      f"{command.namespace}/{coord['id']} is {state}: claim with a new key",
                      coord=task_view(task) if task is not None else {})

    # -- locks ------------------------------------------------------------------------
    def _acquire(self, work: Work, op: AcquireLock, now: int, fence: int) -> Result:
        key = lock_key(op.namespace, op.name)
        old = self._get(work, key)
        if is_held(old, now):
            assert old is not None
            mine = " (by this holder: renew with its fence, or retry with the same Idempotency-Key)"
            return Result(Outcome.LOCK_HELD, f"lock {op.namespace}/{op.name} is held"
                          + (mine if old["holder"] == op.holder else ""), coord=lock_view(old))
        if old is not None:  # its lease ran out and nobody removed it yet
            work.batch.delete(_due_key(old["expires_at"], LEASE, op.namespace, op.name))
        lock: Record = {"namespace": op.namespace, "name": op.name, "holder": op.holder, "fence": fence,
                        "acquired_at": now, "expires_at": now + op.ttl_ms, "ttl_ms": op.ttl_ms}
        self._put(work, key, lock)
        work.batch.put(_due_key(now + op.ttl_ms, LEASE, op.namespace, op.name), b"")
        return Result(Outcome.ACQUIRED, coord=lock_view(lock))

    def _held_with(self, work: Work, ns: str, name: str, fence: int, now: int) -> tuple[Record | None, Result | None]:
        """The lock if it is held with `fence` now; else the refusal."""
        lock = self._get(work, lock_key(ns, name))
        if is_held(lock, now) and lock is not None and lock["fence"] == fence:
            return lock, None
        if is_held(lock, now) and lock is not None:
            # The current fence is never told: a refused writer must not adopt it.
            why = "held with a newer fence" if lock["fence"] > fence else "held with another fence"
            return None, Result(Outcome.FENCED, f"lock {ns}/{name} is {why}, not {fence}", coord=lock_view(lock))
        return None, Result(Outcome.FENCED, f"lock {ns}/{name} is not held (released or expired)", coord={})

    def _renew(self, work: Work, op: RenewLock, now: int) -> Result:
        lock, refusal = self._held_with(work, op.namespace, op.name, op.fence, now)
        if lock is None:
            assert refusal is not None
            return refusal
        work.batch.delete(_due_key(lock["expires_at"], LEASE, op.namespace, op.name))
        lock = {**lock, "expires_at": now + op.ttl_ms, "ttl_ms": op.ttl_ms}
        self._put(work, lock_key(op.namespace, op.name), lock)
        work.batch.put(_due_key(lock["expires_at"], LEASE, op.namespace, op.name), b"")
        return Result(Outcome.RENEWED, coord=lock_view(lock))

    def _release(self, work: Work, op: ReleaseLock, now: int) -> Result:
        lock, refusal = self._held_with(work, op.namespace, op.name, op.fence, now)
        if lock is None:
            assert refusal is not None
            return refusal
        self._free_lock(work, lock)
        return Result(Outcome.RELEASED, coord={**lock_view(lock), "released_at": now})

    def _free_lock(self, work: Work, lock: Record) -> None:
        ns, name = lock["namespace"], lock["name"]
        self._delete(work, lock_key(ns, name))
        work.batch.delete(_due_key(lock["expires_at"], LEASE, ns, name))
        work.notices.append(("lock", ns, name))

    def fence_refusal(self, work: Work, fence: Fence, now_ms: int) -> Result | None:
        """None when a write carrying `fence` may apply now; else why not. Checked
        in the write's own apply, so the check and the write are one step."""
        if self.unsafe_skip_fence_check:
            return None
        now = self._now(work, now_ms)
        return self._held_with(work, fence.namespace, fence.name, fence.fence, now)[1]

    # -- tasks ------------------------------------------------------------------------
    def _set_state(self, work: Work, old: Record | None, rec: Record) -> None:
        """Write `rec` over `old` (None: new), keeping the state index, the ready
        queue, the deadlines and the open count in step."""
        ns, tid = rec["namespace"], rec["id"]
        if old is not None:
            work.batch.delete(_state_key(ns, old["state"], tid))
            for key in self._side_keys(old):
                work.batch.delete(key)
        work.batch.put(_state_key(ns, rec["state"], tid), b"")
        for key in self._side_keys(rec):
            work.batch.put(key, b"")
            if key.startswith(READY_PREFIX):
                work.overlay[key] = {}  # so that a later claim of this entry sees it (see _claim)
        opened = (rec["state"] in ("ready", "claimed")) - (old is not None and old["state"] in ("ready", "claimed"))
        if opened:
            count = self._get(work, _count_key(ns))
            self._put(work, _count_key(ns), {"n": (count["n"] if count else 0) + opened})
        self._put(work, task_key(ns, tid), rec)

    def _side_keys(self, rec: Record) -> Iterator[bytes]:
        ns, tid, state = rec["namespace"], rec["id"], rec["state"]
        if state == "ready" and rec["ready_at"] is not None:
            yield _due_key(rec["ready_at"], DELAY, ns, tid)
        elif state == "ready":
            yield _ready_key(rec)
        elif state == "claimed":
            yield _due_key(rec["claim_expires_at"], CLAIM, ns, tid)
        else:
            yield _due_key(rec["purge_at"], RETENTION, ns, tid)

    def _open_tasks(self, work: Work, ns: str) -> int:
        count = self._get(work, _count_key(ns))
        return int(count["n"]) if count else 0

    def _enqueue(self, work: Work, op: EnqueueTask, now: int, order: int) -> Result:
        ns, spec = op.namespace, op.spec
        old = self._get(work, task_key(ns, op.id))
        if old is not None:
            return Result(Outcome.TASK_EXISTS, f"task {ns}/{op.id} exists ({old['state']})", coord=task_view(old))
        if self._open_tasks(work, ns) >= spec.open_max:
            return Result(Outcome.QUEUE_FULL, f"queue {ns} holds {spec.open_max} open tasks, its limit")
        not_before = max(spec.not_before_ms, now + spec.delay_ms)
        rec: Record = {
            "namespace": ns, "id": op.id, "payload": spec.payload, "priority": spec.priority, "state": "ready",
            "attempts": 0, "max_attempts": spec.max_attempts, "backoff_ms": spec.backoff_ms,
            "retain_ms": spec.retain_ms, "enqueued_at": now, "order": order, "not_before": not_before,
            "ready_at": not_before if not_before > now else None,
            "claims": 0, "worker": None, "fence": None, "claimed_at": None, "claim_expires_at": None,
            "result": None, "last_error": None, "finished_at": None, "purge_at": None,
        }
        self._set_state(work, None, rec)
        if rec["ready_at"] is None:
            work.notices.append(("tasks", ns, ""))
        return Result(Outcome.ENQUEUED, coord=task_view(rec))

    def _claim(self, work: Work, op: ClaimTask, now: int, fence: int) -> Result:
        self._expire_due(work, now, CLAIM_EXPIRE_OPS_MAX)
        prefix = READY_PREFIX + op.namespace.encode() + SEP
        end = prefix[:-1] + b"\x01"
        # The queue as stored, and what earlier commands of this entry added to it
        # (tasks that came due just now, or were given back); stale keys of either
        # are stepped over by the record check below.
        added = sorted(k for k, v in work.overlay.items() if v is not None and prefix <= k < end)
        stored = (key for key, _ in self.store.scan(prefix, end))
        for scanned, key in enumerate(heapq.merge(stored, added)):
            if scanned >= CLAIM_SCAN_MAX:
                break
            tid = key[len(prefix) + 12:].decode()
            old = self._get(work, task_key(op.namespace, tid))
            if old is None or old["state"] != "ready" or old["ready_at"] is not None or _ready_key(old) != key:
                continue  # taken (or moved) by an earlier command of this entry
            rec = {**old, "state": "claimed", "worker": op.worker, "fence": fence, "claimed_at": now,
                   "claim_expires_at": now + op.lease_ms, "claims": old["claims"] + 1}
            self._set_state(work, old, rec)
            return Result(Outcome.CLAIMED, coord=task_view(rec))
        return Result(Outcome.NO_TASK, f"no task of {op.namespace} is ready")

    def _settle(self, work: Work, op: SettleTask, now: int) -> Result:
        old = self._get(work, task_key(op.namespace, op.id))
        if old is None:
            return Result(Outcome.NOT_FOUND, f"task {op.namespace}/{op.id} not found")
        stale = old["state"] != "claimed" or old["fence"] != op.fence or old["claim_expires_at"] <= now
        if stale and not self.unsafe_skip_fence_check:
            why = ("its claim ran out" if old["state"] == "claimed" and old["fence"] == op.fence
                   else f"it is {old['state']}" + (" under a newer claim" if old["state"] == "claimed" else ""))
            return Result(Outcome.FENCED, f"task {op.namespace}/{op.id} is not claimed with fence {op.fence}: {why}",
                          coord=task_view(old))
        if op.action == "extend":
            rec = {**old, "claim_expires_at": now + op.lease_ms}
        elif op.action == "complete":
            rec = self._finished(old, "done", now, result=op.result)
        else:
            rec = self._failed(work, old, now, str(op.result) if op.result is not None else None, op.retry, op.charge)
        self._set_state(work, old, rec)
        return Result(Outcome.SETTLED, coord=task_view(rec))

    @staticmethod
    def _finished(old: Record, state: str, now: int, **fields: Any) -> Record:
        return {**old, **fields, "state": state, "finished_at": now, "purge_at": now + old["retain_ms"],
                "claim_expires_at": None}

    def _failed(self, work: Work, old: Record, now: int, error: str | None, retry: bool, charge: bool) -> Record:
        """A failed or lapsed claim: back to the queue after a back-off, or dead."""
        attempts = old["attempts"] + (1 if charge else 0)
        if not retry or attempts >= old["max_attempts"]:
            return self._finished(old, "dead", now, attempts=attempts, last_error=error)
        backoff = min(old["backoff_ms"] << max(0, attempts - 1), BACKOFF_MS_MAX) if charge else 0
        if backoff == 0:
            work.notices.append(("tasks", old["namespace"], ""))
        return {**old, "state": "ready", "attempts": attempts, "last_error": error, "claim_expires_at": None,
                "ready_at": now + backoff if backoff else None}

    # -- deadlines --------------------------------------------------------------------
    def _expire_due(self, work: Work, now: int, limit: int) -> int:
        """Decide what is due at `now`: leases out, claims requeued, delayed tasks
        ready, finished tasks purged. At most `limit`; returns how many."""
        done = 0
        for key, _ in self.store.scan(DUE_PREFIX, DUE_PREFIX + codec.u64(now + 1)):
            if done >= min(limit, EXPIRE_OPS_MAX):
                break
            due = codec.from_u64(key[2:10])
            kind = key[10:11]
            ns_raw, name_raw = key[11:].split(SEP, 1)
            ns, name = ns_raw.decode(), name_raw.decode()
            if kind == LEASE:
                lock = self._get(work, lock_key(ns, name))
                if lock is not None and lock["expires_at"] == due:
                    self._free_lock(work, lock)
                    done += 1
                else:
                    work.batch.delete(key)  # changed by an earlier command of this entry
                continue
            old = self._get(work, task_key(ns, name))
            if old is None or due != {CLAIM: old["claim_expires_at"], DELAY: old["ready_at"],
                                      RETENTION: old["purge_at"]}.get(kind):
                work.batch.delete(key)  # changed by an earlier command of this entry
                continue
            done += 1
            if kind == RETENTION:
                self._delete(work, task_key(ns, name))
                work.batch.delete(_state_key(ns, old["state"], name))
                work.batch.delete(key)
            elif kind == CLAIM:
                self._set_state(work, old, self._failed(work, old, now, "claim expired", True, True))
            else:
                self._set_state(work, old, {**old, "ready_at": None})
                work.notices.append(("tasks", ns, ""))
        return done

    # -- reads ----------------------------------------------------------------------------
    def lock(self, ns: str, name: str, now_ms: int) -> dict[str, Any] | None:
        """The lock if it is held at `now_ms` (the reader's clock, as a command
        stamped then would decide: `now_ms`)."""
        raw = self.store.get(lock_key(ns, name))
        lock = codec.loads(raw) if raw is not None else None
        return lock_view(lock) if lock is not None and is_held(lock, self.now_ms(now_ms)) else None

    def task(self, ns: str, tid: str) -> dict[str, Any] | None:
        raw = self.store.get(task_key(ns, tid))
        return task_view(codec.loads(raw)) if raw is not None else None

    def tasks(self, ns: str, state: str | None, after: str | None, limit: int) -> list[dict[str, Any]]:
        """Tasks of a queue by id, strictly after `after`, in one state or all
        (at most `limit`: the caller bounds it)."""
        base = TASK_PREFIX + ns.encode() + SEP
        prefix = base + BY_STATE + STATES[state] + SEP if state is not None else base
        # Record keys: an id byte (0x2d and up) after `base`, past the 0x01/0x02 keys.
        start = prefix + after.encode() + b"\x00" if after is not None else (prefix + b"\x03" if state is None
                                                                            else prefix)
        end = prefix[:-1] + b"\x01"
        out: list[dict[str, Any]] = []
        for key, raw in self.store.scan(start, end):
            if len(out) >= limit:
                break
            if state is None:
                out.append(task_view(codec.loads(raw)))
                continue
            task = self.task(ns, key[len(prefix):].decode())
            if task is not None:
                out.append(task)
        return out

    def open_tasks(self, ns: str) -> int:
        raw = self.store.get(_count_key(ns))
        return int(codec.loads(raw)["n"]) if raw is not None else 0

    def clock_ms(self) -> int:
        """The shard's latest applied time."""
        raw = self.store.get(CLOCK_KEY)
        return int(codec.loads(raw)["ms"]) if raw is not None else 0

    def now_ms(self, wall_ms: int) -> int:
        """The time a command stamped `wall_ms` would decide by now."""
        return shard_now(wall_ms, self.clock_ms())

    def next_deadline_ms(self) -> int | None:
        """The earliest lease, claim, delay or retention deadline (None: none)."""
        first = next(self.store.scan(DUE_PREFIX, DUE_END), None)
        return None if first is None else codec.from_u64(first[0][2:10])
