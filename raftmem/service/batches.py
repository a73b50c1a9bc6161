"""Batches: many operations in one request, grouped by shard.

A batch's operations are grouped by shard, keeping their order. Each shard's
group runs at the shard's leader as ONE log entry (one RocksDB batch per
replica), its commands applied in the order given, so operations on one key
take effect in order and a `get` sees the batch's earlier writes of its key.
The receiving node sends each leader node one request carrying every group it
leads (`POST /v1/internal/batch`), not one per operation.

- A malformed operation (a bad name, an unknown field, a value of the wrong
  type) refuses the whole batch with a 400, atomic or not: nothing applies, as
  for a malformed request (DynamoDB's BatchWriteItem does the same; what can
  only be known when applied, a precondition, is per operation).
- Not atomic (the default): each operation has its own result; a failed
  precondition fails that operation only. A group's operations share one
  entry's fate: applied together, or (leader lost, timeout) all failed (503)
  or all indeterminate (504 for writes; a read with no answer is 503).
- `"atomic": true`: the batch must fall on one shard (operations on several
  shards cannot commit together in a sharded Raft store) and is all or none:
  if any operation fails, none applies (the others answer 409 `aborted`).
- A group with no writes is read as a plain read would be (its level), never
  through the log; a group with writes reads through the log (linearizable).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable
from dataclasses import dataclass, replace
from typing import Any

import orjson

from .. import validation as v
from ..clock import Clock
from ..commands import Committed, Delete, Get, MemoryFields, Outcome, Put, Txn, TxnOp
from ..config import STALENESS_MS_MAX, Config
from ..errors import Indeterminate, InvalidRequest, NotFound, Overloaded, RaftmemError, Unavailable
from ..shard import Shard
from .calls import Call, ForwardLost, ForwardNotSent, Reply, public
from .leaders import Router
from .memories import WriteHooks, checked_fence, derived_id, fenced_id
from .outcomes import error_for, write_reply
from .queries import Queries, not_fenced

BATCH_KINDS = ("put", "get", "delete", "create")
BATCH_FIELDS = frozenset({"ops", "atomic"})
INTERNAL_BATCH_PATH = "/v1/internal/batch"
PLAN_YIELD_EVERY = 64
_OP_HEADERS = (("if_match", "If-Match"), ("if_none_match", "If-None-Match"), ("idempotency_key", "Idempotency-Key"),
               ("if_fence", "If-Fence"))
_OP_QUERY = ("consistency", "after", "max_staleness_ms", "actor")
# What each kind of operation takes (the request it stands for: a put's body
# and headers, a get's query...); anything else refuses the batch.
OP_FIELDS = {
    "put": frozenset({"op", "namespace", "id", "body", "if_match", "if_none_match", "idempotency_key", "if_fence"}),
    "create": frozenset({"op", "namespace", "body", "idempotency_key", "if_fence"}),
    "get": frozenset({"op", "namespace", "id", "consistency", "after", "max_staleness_ms"}),
    "delete": frozenset({"op", "namespace", "id", "if_match", "idempotency_key", "if_fence", "actor"}),
}
# The JSON types of the values an operation carries as a header or a parameter.
_OP_VALUE_TYPES: dict[str, tuple[type, ...]] = {
    "if_match": (int, str), "if_none_match": (str,), "idempotency_key": (str,), "if_fence": (str,),
    "consistency": (str,), "after": (str,), "max_staleness_ms": (int,), "actor": (str,),
}


@dataclass
class _Op:
    """One operation, validated: its shard and command (None: a get)."""

    pos: int
    kind: str  # put, delete or get (a create became a put here)
    namespace: str
    id: str
    shard: int
    command: Put | Delete | None
    call: Call  # the operation as a request of its own (a get's level, headers)
    wire: dict[str, Any]  # the operation as forwarded to a leader


Result = dict[str, Any]  # {"status": int, "body": {...}}


def _error(e: RaftmemError) -> Result:
    return {"status": e.status, "body": e.body()}


class Batches:
    def __init__(self, config: Config, router: Router, queries: Queries, clock: Clock,
                 hooks: WriteHooks | None = None) -> None:
        """`hooks`: the derived indexes' part of a write (memories.WriteHooks)."""
        self.hooks = hooks
        self.config = config
        self.router = router
        self.queries = queries
        self.clock = clock
        self.limits = config.limits
        self.node_id = router.node_id
        self.ops_in_flight = 0  # operations of client batches being planned or run on this node

    # -- the client's batch ------------------------------------------------------------
    async def batch(self, call: Call) -> Reply:
        body = v.known_fields(v.parse_json(call.body, self.limits), BATCH_FIELDS)
        ops = body.get("ops")
        if not isinstance(ops, list) or not ops:
            raise InvalidRequest('body must be {"ops": [...]} with at least one operation')
        if len(ops) > self.limits.batch_ops_max:
            raise InvalidRequest(f"at most {self.limits.batch_ops_max} operations per batch")
        atomic = body.get("atomic", False)
        if not isinstance(atomic, bool):
            raise InvalidRequest("atomic must be true or false", field="atomic")
        if self.ops_in_flight + len(ops) > self.limits.batch_ops_in_flight_max:
            raise Overloaded(f"{self.ops_in_flight} batched operations in flight on this node; retry")
        self.ops_in_flight += len(ops)
        try:
            return await self._batch(call, ops, atomic)
        finally:
            self.ops_in_flight -= len(ops)

    async def _batch(self, call: Call, ops: list[Any], atomic: bool) -> Reply:
        results: list[Result | None] = [None] * len(ops)
        planned: list[_Op] = []
        for i, raw in enumerate(ops):
            if i and i % PLAN_YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a large batch does not hold the loop: others are answered between
            try:
                planned.append(self._plan(i, raw, call))
            except InvalidRequest as e:
                # A malformed operation refuses the whole batch: nothing applies (as a
                # malformed request would), atomic or not.
                raise InvalidRequest(f"ops[{i}]: {e.message}; the batch applies nothing",
                                     **({"field": f"ops[{i}].{e.details['field']}"} if "field" in e.details
                                        else {})) from None
        if atomic and len({op.shard for op in planned}) > 1:
            raise InvalidRequest(
                "an atomic batch must stay on one shard (its memories' namespace and id hash to several); "
                "split it, or drop atomic"
            )
        for op, result in zip(planned, await self._run_all(planned, atomic, call), strict=True):
            results[op.pos] = result
        out: dict[str, Any] = {"results": results}
        if atomic:  # a get that finds nothing does not undo the others
            out["applied"] = all(r is not None and (r["status"] < 300 or (op.kind == "get" and r["status"] == 404))
                                 for op, r in zip(planned, results, strict=True))
        return Reply(200, out, {"X-Raftmem-Served-By": self.node_id})

    def _plan(self, i: int, raw: Any, call: Call) -> _Op:
        """Validate one operation; a create gets its id here, so a forwarded or
        retried batch names the same memory."""
        _check_shape(i, raw)
        kind, ns, mid = raw["op"], raw["namespace"], raw.get("id")
        v.name("namespace", ns, self.limits.namespace_chars_max)
        headers = {header: str(raw[key]) for key, header in _OP_HEADERS if raw.get(key) is not None}
        query = {key: str(raw[key]) for key in _OP_QUERY if raw.get(key) is not None}
        idem = v.idempotency_key(headers.get("Idempotency-Key"))
        if kind == "create":
            mid = fenced_id(ns, derived_id(ns, idem, self.clock), headers.get("If-Fence"), self.limits,
                            self.config.shards)
            kind = "put"
            headers["If-None-Match"] = "*"
        assert isinstance(mid, str)
        v.name("id", mid, self.limits.id_chars_max)
        wire = {"op": kind, "namespace": ns, "id": mid, **{k: raw[k] for k, _ in _OP_HEADERS if raw.get(k) is not None},
                **{k: raw[k] for k in _OP_QUERY if raw.get(k) is not None}}
        if "If-None-Match" in headers:
            wire["if_none_match"] = headers["If-None-Match"]
        command: Put | Delete | None = None
        if kind == "put":
            body = raw.get("body")
            fields = v.memory_fields({} if body is None else body, self.limits)
            wire["body"] = {} if body is None else body
            command = Put(ns, mid, MemoryFields.from_wire(fields),
                          if_match=v.version_header("If-Match", headers.get("If-Match")),
                          if_none_match=v.if_none_match(headers.get("If-None-Match")), idempotency_key=idem,
                          if_fence=checked_fence(self.router, self.limits, ns, mid, headers.get("If-Fence")))
        elif kind == "delete":
            actor = query.get("actor")
            command = Delete(ns, mid, if_match=v.version_header("If-Match", headers.get("If-Match")),
                             idempotency_key=idem,
                             if_fence=checked_fence(self.router, self.limits, ns, mid, headers.get("If-Fence")),
                             actor=v.actor(actor) if actor is not None else None)
        else:
            not_fenced(headers.get("If-Fence"))
            v.consistency(query.get("consistency"))
            v.tokens(query.get("after"), self.config.shards)
            v.int_param("max_staleness_ms", query.get("max_staleness_ms"), -1, 0, STALENESS_MS_MAX)
        op_call = Call("GET", f"/v1/memories/{ns}/{mid}", query, headers, b"", call.hops)
        return _Op(i, kind, ns, mid, self.router.shard_of(ns, mid), command, op_call, wire)

    async def _run_all(self, ops: list[_Op], atomic: bool, call: Call) -> list[Result]:
        """Every group at its leader: this node's groups here, the others in one
        request per leader node."""
        groups: dict[int, list[_Op]] = defaultdict(list)
        for op in ops:
            groups[op.shard].append(op)
        by_node: dict[str | None, list[int]] = defaultdict(list)
        for shard in groups:
            by_node[self.router.leader_of(shard)].append(shard)
        jobs: list[Awaitable[dict[int, list[Result]]]] = []
        for node, shards in by_node.items():
            if node == self.node_id or node is None or call.hops >= 1:
                jobs.extend(self._run_group(s, groups[s], atomic, call.hops) for s in shards)
            else:
                jobs.append(self._send(node, {s: groups[s] for s in shards}, atomic, call.hops))
        done: dict[int, list[Result]] = {}
        for part in await asyncio.gather(*jobs):
            done.update(part)
        index = {op.pos: n for n, op in enumerate(ops)}
        out: list[Result] = [{}] * len(ops)
        for shard, results in done.items():
            for op, result in zip(groups[shard], results, strict=True):
                out[index[op.pos]] = result
        return out

    async def _send(self, node: str, groups: dict[int, list[_Op]], atomic: bool, hops: int) -> dict[int, list[Result]]:
        """One request to `node` with every group it leads. Never sent: each
        group finds its leader the usual way (an election may be under way)."""
        payload = {"atomic": atomic, "groups": [{"shard": s, "ops": [op.wire for op in g]} for s, g in groups.items()]}
        call = Call("POST", INTERNAL_BATCH_PATH, {}, {"Content-Type": "application/json"}, orjson.dumps(payload),
                    hops + 1)
        try:
            reply = await self.router.forwarder.forward(node, call, self.limits.write_timeout_ms / 1000 + 1)
        except ForwardNotSent:
            parts = await asyncio.gather(*(self._run_group(s, g, atomic, hops) for s, g in groups.items()))
            return {k: r for part in parts for k, r in part.items()}
        except ForwardLost:
            return {s: [_lost(op) for op in g] for s, g in groups.items()}
        body = reply.json()
        if reply.status != 200 or not isinstance(body, dict):
            error = body if isinstance(body, dict) else {"error": {"code": "internal", "message": str(body)[:200]}}
            return {s: [{"status": reply.status, "body": error} for _ in g] for s, g in groups.items()}
        return {int(part["shard"]): list(part["results"]) for part in body["groups"]}

    # -- a leader's share ------------------------------------------------------------------
    async def internal(self, call: Call) -> Reply:
        """Groups sent by the node a client reached: run each at its leader."""
        body = v.parse_json(call.body, self.limits)
        atomic = bool(body.get("atomic"))
        jobs: list[Awaitable[dict[int, list[Result]]]] = []
        for group in body.get("groups") or ():
            shard = int(group["shard"])
            ops = []
            for i, raw in enumerate(group["ops"]):
                if i and i % PLAN_YIELD_EVERY == 0:
                    await asyncio.sleep(0)
                ops.append(self._plan(i, raw, call))
            if any(op.shard != shard for op in ops):
                raise InvalidRequest(f"an operation of the group for shard {shard} is not on it")
            jobs.append(self._run_group(shard, ops, atomic, call.hops))
        parts = await asyncio.gather(*jobs)
        return Reply(200, {"groups": [{"shard": s, "results": r} for part in parts for s, r in part.items()]})

    async def _run_group(self, shard: int, ops: list[_Op], atomic: bool, hops: int) -> dict[int, list[Result]]:
        writes = any(op.command is not None for op in ops)
        if not writes:
            return {shard: list(await asyncio.gather(*(self._read(op) for op in ops)))}
        payload = {"atomic": atomic, "groups": [{"shard": shard, "ops": [op.wire for op in ops]}]}
        call = Call("POST", INTERNAL_BATCH_PATH, {}, {"Content-Type": "application/json"}, orjson.dumps(payload), hops)

        async def local(replica: Shard) -> Reply:
            return Reply(200, {"groups": [{"shard": shard, "results": await self._propose(replica, ops, atomic)}]})

        try:
            reply = await self.router.on_leader(shard, call, local, is_write=True)
        except RaftmemError as e:
            return {shard: [_failed(op, e) for op in ops]}
        body = reply.json()
        if reply.status != 200:
            return {shard: [{"status": reply.status, "body": body} for _ in ops]}
        return {shard: list(body["groups"][0]["results"])}

    async def _read(self, op: _Op) -> Result:
        try:
            reply = await self.queries.get(op.namespace, op.id, op.call)
        except RaftmemError as e:
            return _error(e)
        return {"status": reply.status, "body": reply.json()}

    async def _propose(self, replica: Shard, ops: list[_Op], atomic: bool) -> list[Result]:
        hooks = self.hooks
        writes: list[Put | Delete | None] = [op.command for op in ops]
        if hooks is not None:
            hooks.admit(replica.shard)
            for i, c in enumerate(writes):
                if isinstance(c, Put):
                    prepared = await hooks.prepare(c)  # a Put again (with its embedding)
                    assert isinstance(prepared, Put)
                    writes[i] = prepared
        now = self.clock.wall_ms()
        # The leader chooses the time before proposing (apply stays deterministic).
        commands: list[TxnOp] = [
            replace(w, now_ms=now) if w is not None else Get(op.namespace, op.id, now)
            for op, w in zip(ops, writes, strict=True)
        ]
        if atomic:
            (done,) = await replica.submit_many([Txn(tuple(commands))])
            committed = [Committed(done.index, r) for r in done.result.results] or [done] * len(ops)
        else:
            committed = await replica.submit_many(commands)
        if hooks is not None:
            await asyncio.gather(*(hooks.settle(replica.shard, w, c)
                                   for w, c in zip(writes, committed, strict=True) if w is not None))
        return [self._result(replica.shard, op, c) for op, c in zip(ops, committed, strict=True)]

    def _result(self, shard: int, op: _Op, done: Committed) -> Result:
        token = f"{shard}:{done.index}"
        if op.command is None:  # a get, read in the entry
            if done.result.outcome is Outcome.READ and done.result.memory is not None:
                return {"status": 200, "body": public(done.result.memory, shard)}
            if done.result.outcome is Outcome.NOT_FOUND:
                return _error(NotFound(f"memory {op.namespace}/{op.id} not found", token=token))
            return _error(error_for(done.result))
        try:
            return {"status": (reply := write_reply(self.node_id, shard, done)).status, "body": reply.json()}
        except RaftmemError as e:
            return _error(e)


def _check_shape(i: int, raw: Any) -> None:
    if not isinstance(raw, dict):
        raise InvalidRequest(f"ops[{i}] must be an object")
    kind = raw.get("op")
    if kind not in BATCH_KINDS:
        raise InvalidRequest(f"ops[{i}].op must be put, create, get or delete")
    v.known_fields(raw, OP_FIELDS[kind], f"ops[{i}] ({kind})")
    if not isinstance(raw.get("namespace"), str) or (kind != "create" and not isinstance(raw.get("id"), str)):
        raise InvalidRequest(f"ops[{i}] needs a namespace and an id")
    for key, types in _OP_VALUE_TYPES.items():
        value = raw.get(key)
        if value is None:
            continue
        if int in types and v.integral(value) is not None:
            raw[key] = v.integral(value)  # 3.0 is the JSON integer 3
        elif isinstance(value, bool) or not isinstance(value, types):
            raise InvalidRequest(f"ops[{i}].{key} must be a {' or '.join(t.__name__ for t in types)}", field=key)


def _failed(op: _Op, error: RaftmemError) -> Result:
    """A group's fate for one of its operations: a read is never indeterminate."""
    if isinstance(error, Indeterminate) and op.command is None:
        return _error(Unavailable(f"no answer for the read: {error.message}"))
    return _error(error)


def _lost(op: _Op) -> Result:
    return _failed(op, Indeterminate("the leader did not answer; the write may still apply"))

