"""Writing memories: put, create, delete, batches; each a typed command proposed
at its shard's leader."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
from typing import Any

import orjson

from .. import validation as v
from ..clock import Clock
from ..commands import Command, Delete, MemoryFields, Put, stamped
from ..config import Config
from ..errors import InvalidRequest, RaftmemError
from ..shard import Shard
from .calls import FORWARD_HEADERS, Call, Reply
from .leaders import Router
from .outcomes import write_reply
from .queries import Queries

# An idempotency key that starts with a 13-digit millisecond time.
TIME_KEY_RE = re.compile(r"(\d{13})-")
BATCH_KINDS = ("put", "get", "delete", "create")


class Memories:
    def __init__(self, config: Config, router: Router, queries: Queries, clock: Clock) -> None:
        self.config = config
        self.router = router
        self.queries = queries
        self.clock = clock
        self.limits = config.limits
        self.node_id = router.node_id

    async def write(self, shard: int, command: Command, call: Call) -> Reply:
        """Propose `command` at `shard`'s leader (here or forwarded)."""

        async def local(replica: Shard) -> Reply:
            # The leader chooses the time before proposing: apply stays deterministic.
            done = await replica.submit(stamped(command, self.clock.wall_ms()))
            return write_reply(self.node_id, shard, done)

        return await self.router.on_leader(shard, call, local, is_write=True)

    async def put(self, ns: str, mid: str, call: Call) -> Reply:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        v.name("id", mid, self.limits.id_chars_max)
        fields = v.memory_fields(v.parse_json(call.body, self.limits), self.limits)
        command = Put(
            namespace=ns,
            id=mid,
            fields=MemoryFields.from_wire(fields),
            if_match=v.version_header("If-Match", call.header("If-Match")),
            if_none_match=v.if_none_match(call.header("If-None-Match")),
            idempotency_key=v.idempotency_key(call.header("Idempotency-Key")),
        )
        return await self.write(self.router.shard_of(ns, mid), command, call)

    async def create(self, ns: str, call: Call) -> Reply:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        key = v.idempotency_key(call.header("Idempotency-Key"))
        if key is not None:
            # A retry must land on the same shard and id: derive the id from the key,
            # time-ordered when the key starts with its creation time in ms (the
            # bundled client's keys do).
            digest = hashlib.blake2b(f"{ns}\0{key}".encode(), digest_size=12).hexdigest()
            time_stamped = TIME_KEY_RE.match(key)
            mid = f"{time_stamped.group(1)}-{digest}" if time_stamped else f"i-{digest}"
        else:
            mid = f"{self.clock.wall_ms():013d}-{os.urandom(6).hex()}"
        # Canonical names: `call.headers` may be case-insensitive, a dict is not.
        headers = {name: value for name in FORWARD_HEADERS if (value := call.header(name)) is not None}
        headers["If-None-Match"] = "*"
        as_put = Call("PUT", f"/v1/memories/{ns}/{mid}", call.query, headers, call.body, call.hops)
        return await self.put(ns, mid, as_put)

    async def delete(self, ns: str, mid: str, call: Call) -> Reply:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        v.name("id", mid, self.limits.id_chars_max)
        command = Delete(
            namespace=ns,
            id=mid,
            if_match=v.version_header("If-Match", call.header("If-Match")),
            idempotency_key=v.idempotency_key(call.header("Idempotency-Key")),
        )
        return await self.write(self.router.shard_of(ns, mid), command, call)

    # -- batch ---------------------------------------------------------------------
    async def batch(self, call: Call) -> Reply:
        body = v.parse_json(call.body, self.limits)
        ops = body.get("ops") if isinstance(body, dict) else None
        if not isinstance(ops, list) or not ops:
            raise InvalidRequest('body must be {"ops": [...]} with at least one operation')
        if len(ops) > self.limits.batch_ops_max:
            raise InvalidRequest(f"at most {self.limits.batch_ops_max} operations per batch")
        calls = [self._batch_call(i, op, call) for i, op in enumerate(ops)]
        results = await asyncio.gather(*(self._batch_one(c) for c in calls))
        return Reply(200, {"results": results}, {"X-Raftmem-Served-By": self.node_id})

    def _batch_call(self, i: int, op: Any, call: Call) -> tuple[str, str, str | None, Call]:
        if not isinstance(op, dict):
            raise InvalidRequest(f"ops[{i}] must be an object")
        kind = op.get("op")
        if kind not in BATCH_KINDS:
            raise InvalidRequest(f"ops[{i}].op must be put, create, get or delete")
        ns = op.get("namespace")
        mid = op.get("id")
        if not isinstance(ns, str) or (kind != "create" and not isinstance(mid, str)):
            raise InvalidRequest(f"ops[{i}] needs a namespace and an id")
        headers: dict[str, str] = {}
        for key, header in (
            ("if_match", "If-Match"),
            ("if_none_match", "If-None-Match"),
            ("idempotency_key", "Idempotency-Key"),
        ):
            if op.get(key) is not None:
                headers[header] = str(op[key])
        query = {}
        for key in ("consistency", "after", "max_staleness_ms"):
            if op.get(key) is not None:
                query[key] = str(op[key])
        method = {"put": "PUT", "create": "POST", "get": "GET", "delete": "DELETE"}[kind]
        body = orjson.dumps(op.get("body", {})) if kind in ("put", "create") else b""
        path = f"/v1/memories/{ns}" + (f"/{mid}" if kind != "create" else "")
        return kind, ns, mid, Call(method, path, query, headers, body, call.hops)

    async def _batch_one(self, item: tuple[str, str, str | None, Call]) -> dict[str, Any]:
        kind, ns, mid, call = item
        try:
            if kind == "put":
                reply = await self.put(ns, str(mid), call)
            elif kind == "create":
                reply = await self.create(ns, call)
            elif kind == "get":
                reply = await self.queries.get(ns, str(mid), call)
            else:
                reply = await self.delete(ns, str(mid), call)
        except RaftmemError as e:
            return {"status": e.status, "body": e.body()}
        return {"status": reply.status, "body": reply.json()}
