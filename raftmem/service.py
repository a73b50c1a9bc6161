"""The memory service: validates requests, routes them to shards, and decides who
serves: a local shard leader, a local replica (stale-tolerant reads), or the
shard leader on another node (forwarding).

It knows nothing of aiohttp: the API layer hands it a `Call` and gets a `Reply`;
forwarding goes through the small `Forwarder` interface.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlencode

import orjson

from . import backup
from . import validation as v
from .clock import Clock
from .config import STALENESS_MS_MAX, Config, NodeConfig
from .errors import (
    Conflict,
    Indeterminate,
    InvalidRequest,
    NoLeader,
    NotFound,
    PreconditionFailed,
    RaftmemError,
    Unavailable,
    from_result,
)
from .membership import TABLE_SHARD, Table, moved_fraction, moves
from .routing import HASH_NAME, shard_for
from .shards import ShardReplica
from .statemachine import ListQuery
from .storage import Store

log = logging.getLogger(__name__)

FORWARDED_HEADER = "X-Raftmem-Forwarded"
FORWARD_HOPS_MAX = 2
LEADER_WAIT_POLL_S = 0.05
SESSION_WAIT_S = 0.5
FRESH_LEVELS = ("linearizable", "strong")
# An idempotency key that starts with a 13-digit millisecond time.
TIME_KEY_RE = re.compile(r"(\d{13})-")
SNAPSHOT_CONTENT_TYPE = "application/octet-stream"
# Under the node's data directory: backups and snapshots in transit (emptied at start).
SCRATCH_DIR = "scratch"
RESTORE_CHUNK_OPS = 200
TABLE_CAS_ATTEMPTS = 5
RESTORE_CHUNK_BYTES = 4 << 20
T = TypeVar("T")
FORWARD_HEADERS = ("If-Match", "If-None-Match", "Idempotency-Key", "X-Raftmem-Consistency", "Content-Type")


@dataclass
class Call:
    """A client request as the service sees it."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    hops: int = 0
    # Where a large answer (a snapshot) goes, here or when forwarded: a file, not memory.
    download: Path | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


@dataclass(frozen=True)
class FileBody:
    """A reply body on disk (snapshots, backups), streamed to the client."""

    path: Path


@dataclass
class Reply:
    status: int
    body: Any  # a JSON-able value, or bytes passed through from another node
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def json(self) -> Any:
        return orjson.loads(self.body) if isinstance(self.body, bytes | bytearray) else self.body


@dataclass
class _ListPart:
    """One shard's share of a list page."""

    items: list[dict[str, Any]]
    more: bool
    level: str
    token: str
    staleness_ms: int | None = None


class ForwardNotSent(Exception):
    """The request never reached the other node: nothing happened there."""


class ForwardLost(Exception):
    """The request may have reached the other node, but no answer came back."""


class Forwarder(Protocol):
    async def forward(self, node_id: str, call: Call, timeout_s: float) -> Reply: ...

    def set_urls(self, urls: dict[str, str]) -> None: ...


def public(rec: dict[str, Any], shard: int) -> dict[str, Any]:
    out = {k: val for k, val in rec.items() if k != "rev"}
    out["token"] = f"{shard}:{rec['rev']}"
    return out


class MemoryService:
    def __init__(
        self,
        config: Config,
        node_id: str,
        replicas: dict[int, ShardReplica],
        table: Table,
        forwarder: Forwarder,
        clock: Clock,
    ) -> None:
        self.config = config
        self.node_id = node_id
        self.replicas = replicas
        self.table = table
        # Leaders of shards this node holds no replica of, learned from peers.
        self.remote_leaders: dict[int, str] = {}
        self.forwarder = forwarder
        self.clock = clock
        self.limits = config.limits
        self.unsafe_local_reads = bool(config.debug.get("unsafe_local_reads"))

    # -- routing -----------------------------------------------------------------
    def shard_of(self, ns: str, mid: str) -> int:
        return shard_for(ns, mid, self.config.shards)

    @property
    def placement(self) -> dict[int, list[str]]:
        return self.table.assignment

    def set_table(self, table: Table) -> None:
        if table.version < self.table.version:
            return
        self.table = table
        self.forwarder.set_urls({n: table.http_url(n) for n in table.nodes})

    def leader_of(self, shard: int) -> str | None:
        replica = self.replicas.get(shard)
        if replica is None:
            # Not ours: the last leader a peer reported, else any assigned node
            # (which forwards on to its leader).
            hint = self.remote_leaders.get(shard)
            if hint is not None and hint in self.table.nodes:
                return hint
            holders = [n for n in self.table.assignment.get(shard, []) if n != self.node_id]
            return holders[0] if holders else None
        if replica.group.is_leader():
            return self.node_id
        return replica.group.leader_node()

    async def _on_leader(
        self,
        shard: int,
        call: Call,
        local: Callable[[ShardReplica], Awaitable[Reply]],
        is_write: bool,
    ) -> Reply:
        """Run `local` where this node leads `shard`, else forward `call` to the
        leader; wait a little for an election, retry a proposal that a leadership
        change rejected (it certainly did not happen)."""
        timeout_s = (self.limits.write_timeout_ms if is_write else self.limits.read_timeout_ms) / 1000
        deadline = time.monotonic() + timeout_s
        while True:
            leader = self.leader_of(shard)
            if leader == self.node_id:
                try:
                    return await local(self.replicas[shard])
                except NoLeader:
                    if time.monotonic() >= deadline:
                        raise
            elif leader is not None and call.hops < FORWARD_HOPS_MAX:
                try:
                    return await self.forwarder.forward(leader, call, max(0.1, deadline - time.monotonic()) + 1)
                except ForwardNotSent:
                    if time.monotonic() >= deadline:
                        raise NoLeader(f"shard {shard}: leader {leader} unreachable", shard=shard) from None
                except ForwardLost:
                    if is_write:
                        raise Indeterminate(
                            f"shard {shard}: leader {leader} did not answer; the write may still apply",
                            shard=shard,
                        ) from None
                    raise Unavailable(f"shard {shard}: leader {leader} did not answer", shard=shard) from None
            if time.monotonic() >= deadline:
                raise NoLeader(f"shard {shard} has no reachable leader", shard=shard, leader=leader)
            await asyncio.sleep(LEADER_WAIT_POLL_S)

    # -- writes --------------------------------------------------------------------
    async def put(self, ns: str, mid: str, call: Call) -> Reply:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        v.name("id", mid, self.limits.id_chars_max)
        fields = v.memory_fields(v.parse_json(call.body, self.limits), self.limits)
        op = {
            "t": "put",
            "ns": ns,
            "id": mid,
            "fields": fields,
            "if_match": v.version_header("If-Match", call.header("If-Match")),
            "if_none_match": v.if_none_match(call.header("If-None-Match")),
            "idem": v.idempotency_key(call.header("Idempotency-Key")),
        }
        return await self._write(self.shard_of(ns, mid), op, call)

    async def create(self, ns: str, call: Call) -> Reply:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        key = v.idempotency_key(call.header("Idempotency-Key"))
        if key is not None:
            # A retry must land on the same shard and id: derive the id from the key,
            # time-ordered when the key starts with its creation time in ms (the
            # bundled client's keys do).
            digest = hashlib.blake2b(f"{ns}\0{key}".encode(), digest_size=12).hexdigest()
            stamped = TIME_KEY_RE.match(key)
            mid = f"{stamped.group(1)}-{digest}" if stamped else f"i-{digest}"
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
        op = {
            "t": "delete",
            "ns": ns,
            "id": mid,
            "if_match": v.version_header("If-Match", call.header("If-Match")),
            "idem": v.idempotency_key(call.header("Idempotency-Key")),
        }
        return await self._write(self.shard_of(ns, mid), op, call)

    async def _write(self, shard: int, op: dict[str, Any], call: Call) -> Reply:
        async def local(replica: ShardReplica) -> Reply:
            # The leader chooses the time before proposing: apply stays deterministic.
            done = await replica.submit({**op, "now": self.clock.wall_ms()})
            return self._write_reply(shard, done)

        return await self._on_leader(shard, call, local, is_write=True)

    def _write_reply(self, shard: int, done: dict[str, Any]) -> Reply:
        result = done["result"]
        token = f"{shard}:{done['index']}"
        headers = {"X-Raftmem-Token": token, "X-Raftmem-Served-By": self.node_id}
        if "error" in result:
            raise from_result(result)
        body: dict[str, Any] = {"token": token}
        if "memory" in result:
            body = public(result["memory"], shard)
            headers["ETag"] = str(result["memory"]["version"])
        elif "deleted" in result:
            body.update(result["deleted"])
            body["deleted"] = True
        elif "table" in result:
            body["table"] = result["table"]
        if result.get("replayed"):
            headers["Idempotent-Replayed"] = "true"
        return Reply(result["status"], body, headers)

    # -- reads ---------------------------------------------------------------------
    def _read_headers(self, replica: ShardReplica, level: str) -> dict[str, str]:
        return {
            "X-Raftmem-Consistency": level,
            "X-Raftmem-Served-By": self.node_id,
            "X-Raftmem-Token": replica.token,
        }

    async def _fresh(self, replica: ShardReplica, level: str) -> tuple[str, int | None]:
        """Bring the local leader replica up to date for a fresh read. Returns the
        level served and, for a lease read, the term to re-check after reading."""
        if self.unsafe_local_reads:
            return level, None  # negative control: whoever believes it leads answers
        if level == "strong":
            lease = replica.lease_read_index()
            if lease is not None:
                index, term = lease
                if await replica.wait_applied(index, self.limits.read_timeout_ms / 1000):
                    replica.lease_reads += 1
                    return "strong", term
        replica.read_index_reads += 1
        index = await replica.read_index()
        if not await replica.wait_applied(index, self.limits.read_timeout_ms / 1000):
            raise Unavailable(f"shard {replica.shard}: apply is behind", shard=replica.shard)
        return "linearizable", None

    async def _leader_read(self, replica: ShardReplica, level: str, read: Callable[[], T]) -> tuple[T, str]:
        served, lease_term = await self._fresh(replica, level)
        value = read()
        if lease_term is not None and not replica.lease_still_valid(lease_term):
            # The lease ran out while we read (a pause): confirm with ReadIndex.
            served, _ = await self._fresh(replica, "linearizable")
            value = read()
        return value, served

    async def get(self, ns: str, mid: str, call: Call) -> Reply:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        v.name("id", mid, self.limits.id_chars_max)
        shard = self.shard_of(ns, mid)
        q = call.query
        level = v.consistency(q.get("consistency") or call.header("X-Raftmem-Consistency"))
        replica = self.replicas.get(shard)
        tag_bound_ms = -1
        if level is None:
            policy = self.config.consistency
            local_rec = replica.sm.get(ns, mid, self.clock.wall_ms()) if replica else None
            tagged = policy.level_for_tags(local_rec["tags"]) if local_rec else None
            bound = policy.bound_for_tags(local_rec["tags"]) if local_rec and tagged == "bounded" else None
            tag_bound_ms = -1 if bound is None else bound
            level = tagged or policy.default
        after = v.tokens(q.get("after"), self.config.shards).get(shard, 0)
        bound_ms = v.int_param("max_staleness_ms", q.get("max_staleness_ms"), tag_bound_ms, 0, STALENESS_MS_MAX)
        if level == "bounded" and bound_ms < 0:
            raise InvalidRequest("consistency=bounded needs max_staleness_ms", field="max_staleness_ms")
        if replica is not None and level == "eventual":
            return self._record_reply(replica, ns, mid, "eventual", self._staleness_ms(replica))
        if replica is not None and not replica.group.is_leader():
            if level == "session" and await replica.wait_applied(after, SESSION_WAIT_S):
                return self._record_reply(replica, ns, mid, "session", self._staleness_ms(replica))
            if level == "bounded":
                staleness_ms = await self._bounded_ready(replica, bound_ms)
                if staleness_ms is not None:
                    return self._record_reply(replica, ns, mid, "bounded", staleness_ms)

        async def local(replica: ShardReplica) -> Reply:
            rec, served = await self._leader_read(
                replica, level, lambda: replica.sm.get(ns, mid, self.clock.wall_ms())
            )
            return self._reply_for(replica, ns, mid, rec, served, 0 if served not in FRESH_LEVELS else None)

        return await self._on_leader(shard, call, local, is_write=False)

    def _staleness_ms(self, replica: ShardReplica) -> int | None:
        if replica.group.is_leader():
            return 0
        staleness, _ = replica.group.follower_freshness(time.monotonic())
        return None if staleness == float("inf") else max(0, int(staleness * 1000))

    async def _bounded_ready(self, replica: ShardReplica, bound_ms: int) -> int | None:
        """Can this follower serve a read at most `bound_ms` stale? It must have
        heard from its leader within the bound and applied the commit index it
        learned then. Returns the staleness, or None (the read goes to the leader)."""
        staleness, commit = replica.group.follower_freshness(time.monotonic())
        if staleness * 1000 > bound_ms:
            return None
        budget_s = min(SESSION_WAIT_S, bound_ms / 1000 - staleness)
        if not await replica.wait_applied(commit, max(0.0, budget_s)):
            return None
        staleness, _ = replica.group.follower_freshness(time.monotonic())
        if staleness * 1000 > bound_ms:
            return None
        return max(0, int(staleness * 1000))

    def _record_reply(
        self, replica: ShardReplica, ns: str, mid: str, level: str, staleness_ms: int | None = None
    ) -> Reply:
        rec = replica.sm.get(ns, mid, self.clock.wall_ms())
        return self._reply_for(replica, ns, mid, rec, level, staleness_ms)

    def _reply_for(
        self,
        replica: ShardReplica,
        ns: str,
        mid: str,
        rec: dict[str, Any] | None,
        level: str,
        staleness_ms: int | None,
    ) -> Reply:
        headers = self._read_headers(replica, level)
        if staleness_ms is not None and level not in FRESH_LEVELS:
            headers["X-Raftmem-Staleness-Ms"] = str(staleness_ms)
        if rec is None:
            # A reply, not a raise: a miss carries the read headers too (the level
            # served, and the token that says how far this replica had applied).
            missing = NotFound(f"memory {ns}/{mid} not found", token=replica.token)
            return Reply(missing.status, missing.body(), headers)
        headers["ETag"] = str(rec["version"])
        return Reply(200, public(rec, replica.shard), headers)

    # -- lists ---------------------------------------------------------------------
    def _list_query(self, ns: str, call: Call) -> ListQuery:
        q = call.query
        agent = q.get("agent_id") or None
        tag = q.get("tag") or None
        return ListQuery(
            namespace=ns,
            agent_id=agent,
            tag=tag,
            since_ms=v.int_param("since", q.get("since"), 0, 0, (1 << 63) - 1),
            until_ms=v.int_param("until", q.get("until"), (1 << 63) - 1, 0, (1 << 63) - 1),
            after=v.decode_cursor(q.get("cursor")),
            limit=v.int_param("limit", q.get("limit"), 100, 1, self.limits.list_page_max),
        )

    def _list_level(self, call: Call, tag: str | None) -> str:
        level = v.consistency(call.query.get("consistency") or call.header("X-Raftmem-Consistency"))
        if level is None and tag is not None:
            level = self.config.consistency.level_for_tags([tag])
        return level or self.config.consistency.default

    async def list(self, ns: str, call: Call) -> Reply:
        v.name("namespace", ns, self.limits.namespace_chars_max)
        query = self._list_query(ns, call)
        level = self._list_level(call, query.tag)
        parts = await asyncio.gather(
            *(self._list_shard(s, query, level, call) for s in range(self.config.shards))
        )
        items: list[dict[str, Any]] = []
        served: set[str] = set()
        more = False
        tokens: list[str] = []
        stalest: int | None = None
        for part in parts:
            items.extend(part.items)
            more = more or part.more
            served.add(part.level)
            tokens.append(part.token)
            if part.staleness_ms is not None:
                stalest = max(stalest or 0, part.staleness_ms)
        items.sort(key=lambda m: (m["created_at"], m["id"]))
        if len(items) > query.limit:
            items, more = items[: query.limit], True
        body: dict[str, Any] = {"items": items, "count": len(items)}
        if more and items:
            body["cursor"] = v.encode_cursor(items[-1]["created_at"], items[-1]["id"])
        level_served = next((lv for lv in ("eventual", "strong", "linearizable") if lv in served), level)
        # One token per shard (what `after=` takes), and the stalest shard's staleness.
        headers = {
            "X-Raftmem-Consistency": level_served,
            "X-Raftmem-Served-By": self.node_id,
            "X-Raftmem-Token": ",".join(tokens),
        }
        if level_served == "eventual" and stalest is not None:
            headers["X-Raftmem-Staleness-Ms"] = str(stalest)
        return Reply(200, body, headers)

    async def _list_shard(self, shard: int, query: ListQuery, level: str, call: Call) -> _ListPart:
        replica = self.replicas.get(shard)
        if level == "eventual" and replica is not None:
            items, more = self._list_local(replica, query)
            return _ListPart(items, more, "eventual", replica.token, self._staleness_ms(replica))

        async def local(replica: ShardReplica) -> Reply:
            (items, more), served = await self._leader_read(
                replica, level if level == "strong" else "linearizable", lambda: self._list_local(replica, query)
            )
            return Reply(200, {"items": items, "more": more, "level": served, "token": replica.token}, {})

        params = dict(call.query)
        params["consistency"] = "strong" if level == "strong" else "linearizable"
        path = f"/v1/internal/shards/{shard}/list/{quote(query.namespace)}"
        shard_call = Call("GET", path, params, {}, b"", call.hops)
        reply = await self._on_leader(shard, shard_call, local, is_write=False)
        body = reply.json()
        if reply.status != 200:
            raise from_result(body)
        return _ListPart(body["items"], body["more"], body.get("level", "linearizable"), body.get("token", f"{shard}:0"))

    def _list_local(self, replica: ShardReplica, query: ListQuery) -> tuple[list[dict[str, Any]], bool]:
        probe = ListQuery(**{**query.__dict__, "limit": query.limit + 1})
        recs = replica.sm.list(probe, self.clock.wall_ms())
        more = len(recs) > query.limit
        return [public(r, replica.shard) for r in recs[: query.limit]], more

    async def list_shard(self, shard: int, ns: str, call: Call) -> Reply:
        """Internal: one shard's page, served at its leader (the fan-out's far end)."""
        if not 0 <= shard < self.config.shards:
            raise InvalidRequest(f"no shard {shard}")
        v.name("namespace", ns, self.limits.namespace_chars_max)
        query = self._list_query(ns, call)
        level = "strong" if call.query.get("consistency") == "strong" else "linearizable"
        part = await self._list_shard(shard, query, level, call)
        return Reply(200, {"items": part.items, "more": part.more, "level": part.level, "token": part.token}, {})

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
        if kind not in ("put", "get", "delete", "create"):
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
                reply = await self.get(ns, str(mid), call)
            else:
                reply = await self.delete(ns, str(mid), call)
        except RaftmemError as e:
            return {"status": e.status, "body": e.body()}
        return {"status": reply.status, "body": reply.json()}

    # -- admin ---------------------------------------------------------------------
    async def transfer_leader(self, shard: int, call: Call) -> Reply:
        """Hand a shard's leadership to `to` (a node id) or to the most caught-up
        follower. Answers once the request is sent; poll /v1/cluster to see it land."""
        if not 0 <= shard < self.config.shards:
            raise InvalidRequest(f"no shard {shard}")
        target = call.query.get("to") or None
        if target is not None and target not in self.placement[shard]:
            raise InvalidRequest(f"node {target!r} holds no replica of shard {shard}", field="to")

        async def local(replica: ShardReplica) -> Reply:
            if target == self.node_id:
                return Reply(200, {"shard": shard, "leader": self.node_id, "transferred": False})
            address = None
            if target is not None:
                address = self.table.raft_address(target, shard)
            ok = await replica.transfer_leadership(address)
            if not ok:
                raise Unavailable(
                    f"shard {shard}: transfer refused (target not connected or not caught up); retry",
                    shard=shard,
                )
            return Reply(202, {"shard": shard, "from": self.node_id, "to": target, "transferred": True})

        return await self._on_leader(shard, call, local, is_write=True)

    async def shard_snapshot(self, shard: int, call: Call) -> Reply:
        """Internal: one shard's consistent snapshot, taken at its leader, into
        `call.download` (here, or streamed there from the leader)."""
        if not 0 <= shard < self.config.shards:
            raise InvalidRequest(f"no shard {shard}")
        dest = call.download
        assert dest is not None, "a snapshot needs a file to go to"

        async def local(replica: ShardReplica) -> Reply:
            applied = await replica.snapshot_to(dest)
            return Reply(200, FileBody(dest), {"X-Raftmem-Applied-Index": str(applied)}, SNAPSHOT_CONTENT_TYPE)

        return await self._on_leader(shard, call, local, is_write=False)

    async def backup(self, call: Call, workdir: Path) -> Reply:
        """An online backup of every shard (writes keep flowing while it runs),
        built in `workdir`: disk, not memory, in proportion to the data."""
        async def one(shard: int) -> tuple[int, tuple[int, Path]]:
            dest = workdir / f"shard-{shard:03d}.snapshot"
            path = f"/v1/internal/shards/{shard}/snapshot"
            reply = await self.shard_snapshot(shard, Call("GET", path, {}, {}, b"", call.hops, download=dest))
            if reply.status != 200:
                raise from_result({"status": reply.status, **reply.json()})
            return shard, (int(reply.headers.get("X-Raftmem-Applied-Index", 0)), dest)

        parts = dict(await asyncio.gather(*(one(s) for s in range(self.config.shards))))
        out = workdir / "raftmem.backup"
        await asyncio.to_thread(
            backup.build_file, out, self.config.name, self.config.shards, parts, self.clock.wall_ms()
        )
        headers = {"Content-Disposition": "attachment; filename=raftmem.backup"}
        return Reply(200, FileBody(out), headers, SNAPSHOT_CONTENT_TYPE)

    def scratch(self) -> tempfile.TemporaryDirectory[str]:
        """A private directory for a large transfer, on the node's data disk (not /tmp,
        which may be small or in memory); removed when the context ends."""
        root = Path(self.config.node_data_dir(self.node_id)) / SCRATCH_DIR
        root.mkdir(parents=True, exist_ok=True)
        return tempfile.TemporaryDirectory(prefix="xfer-", dir=root)

    async def restore(self, path: Path, workdir: Path) -> Reply:
        """Load a backup file into this cluster through the Raft log of each shard
        (so every replica gets it, durably). Memories in the backup replace those
        with the same key; others are left alone."""
        manifest = backup.verify(path, self.config.shards, workdir)
        restored: dict[int, int] = {}
        for entry in manifest["shards"]:
            shard = entry["shard"]
            count = 0
            chunk: list[dict[str, Any]] = []
            chunk_bytes = 0
            records = Store.scan_snapshot(workdir / entry["file"], b"d\x00", b"d\x01", workdir / "scan")
            for _key, raw in records:
                chunk.append({"t": "restore", "rec": orjson.loads(raw)})
                chunk_bytes += len(raw)
                if len(chunk) >= RESTORE_CHUNK_OPS or chunk_bytes >= RESTORE_CHUNK_BYTES:
                    count += await self._restore_chunk(shard, chunk)
                    chunk, chunk_bytes = [], 0
            if chunk:
                count += await self._restore_chunk(shard, chunk)
            restored[shard] = count
        return Reply(200, {"restored": sum(restored.values()), "per_shard": {str(k): n for k, n in restored.items()},
                           "backup_created_at": manifest["created_at"], "cluster": manifest["cluster"]})

    async def _restore_chunk(self, shard: int, ops: list[dict[str, Any]]) -> int:
        call = Call("POST", f"/v1/internal/shards/{shard}/restore", {}, {}, orjson.dumps({"ops": ops}))
        reply = await self.apply_restore(shard, call)
        body = reply.json()
        if reply.status != 200:
            raise from_result({"status": reply.status, **body})
        return int(body["applied"])

    async def apply_restore(self, shard: int, call: Call) -> Reply:
        """Internal: propose restore operations on the shard leader."""
        if not 0 <= shard < self.config.shards:
            raise InvalidRequest(f"no shard {shard}")
        try:
            body = orjson.loads(call.body)
        except orjson.JSONDecodeError as e:
            raise InvalidRequest(f"body is not valid JSON: {e}") from None
        ops = body.get("ops") if isinstance(body, dict) else None
        if not isinstance(ops, list) or not all(isinstance(o, dict) and o.get("t") == "restore" for o in ops):
            raise InvalidRequest("restore takes only restore operations")
        for op in ops:
            rec = op.get("rec")
            if not isinstance(rec, dict) or self.shard_of(str(rec.get("namespace")), str(rec.get("id"))) != shard:
                raise InvalidRequest("a restored memory does not belong to this shard")

        async def local(replica: ShardReplica) -> Reply:
            results = await asyncio.gather(*(replica.submit(op) for op in ops))
            return Reply(200, {"applied": sum(1 for r in results if r["result"].get("restored"))})

        return await self._on_leader(shard, call, local, is_write=True)

    # -- membership ----------------------------------------------------------------
    async def members(self, call: Call) -> Reply:
        """The membership table, read linearizably from shard 0's leader."""

        async def local(replica: ShardReplica) -> Reply:
            stored, _ = await self._leader_read(replica, "linearizable", replica.sm.members_table)
            table = Table.from_json(stored) if stored else self.table_seed()
            return Reply(200, {"table": table.to_json()})

        return await self._on_leader(TABLE_SHARD, Call("GET", "/v1/admin/members", {}, {}, b"", call.hops),
                                     local, is_write=False)

    def table_seed(self) -> Table:
        return Table.seed(self.config)

    async def current_table(self, call: Call) -> Table:
        reply = await self.members(call)
        body = reply.json()
        if reply.status != 200:
            raise from_result({"status": reply.status, **body})
        return Table.from_json(body["table"])

    async def write_table(self, table: Table, if_version: int, call: Call) -> Table:
        op = {"t": "members", "table": table.to_json(), "if_version": if_version}
        body = orjson.dumps({"table": op["table"], "if_version": if_version})
        reply = await self._write(TABLE_SHARD, op, Call("POST", "/v1/internal/members", {}, {}, body, call.hops))
        result = reply.json()
        if reply.status != 200:
            raise from_result({"status": reply.status, **result})
        written = Table.from_json(result["table"])
        self.set_table(written)
        return written

    async def internal_write_table(self, call: Call) -> Reply:
        body = v.parse_json(call.body, self.limits)
        try:
            table = Table.from_json(body["table"])
            if_version = int(body["if_version"])
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidRequest(f"bad membership table: {e}") from None
        op = {"t": "members", "table": table.to_json(), "if_version": if_version}
        return await self._write(TABLE_SHARD, op, call)

    async def _change_table(self, call: Call, change: Callable[[Table], Table]) -> tuple[Table, Table]:
        for _attempt in range(TABLE_CAS_ATTEMPTS):
            current = await self.current_table(call)
            try:
                new = change(current)
            except ValueError as e:
                raise InvalidRequest(str(e)) from None
            try:
                return current, await self.write_table(new, current.version, call)
            except PreconditionFailed:
                continue  # someone else changed it: re-read and re-apply
        raise Conflict("the membership table kept changing; retry")

    async def member_add(self, call: Call) -> Reply:
        body = v.parse_json(call.body, self.limits)
        if not isinstance(body, dict):
            raise InvalidRequest("body must be a JSON object")
        unknown = sorted(set(body) - {"id", "host", "http_port", "raft_port_base", "zone"})
        if unknown:
            raise InvalidRequest(f"unknown field(s): {', '.join(unknown)}")
        try:
            node = NodeConfig(
                id=v.name("id", str(body["id"]), 64),
                host=str(body["host"]),
                http_port=int(body["http_port"]),
                raft_port_base=int(body["raft_port_base"]),
                zone=str(body.get("zone", "")),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise InvalidRequest(f"member add needs id, host, http_port, raft_port_base: {e}") from None
        if not (0 < node.http_port < 65536 and 0 < node.raft_port_base and node.raft_port(self.config.shards - 1) < 65536):
            raise InvalidRequest("ports out of range")
        _, new = await self._change_table(call, lambda t: t.with_node(node))
        return Reply(200, {"table": new.to_json()})

    async def member_remove(self, node_id: str, call: Call) -> Reply:
        old, new = await self._change_table(call, lambda t: t.without_node(node_id))
        return Reply(200, {"table": new.to_json(), "moves": moves(old, new),
                           "moved_fraction": moved_fraction(old, new)})

    async def rebalance(self, call: Call) -> Reply:
        dry_run = call.query.get("dry_run", "").lower() in ("1", "true", "yes")
        current = await self.current_table(call)
        planned = current.rebalanced()
        if dry_run or not moves(current, planned):
            # Nothing to write: report the plan against the current version.
            old, new = current, Table(current.version, planned.nodes, planned.assignment, planned.factor)
        else:
            old, new = await self._change_table(call, lambda t: t.rebalanced())
        return Reply(200, {"dry_run": dry_run, "table": new.to_json(), "moves": moves(old, new),
                           "moved_fraction": moved_fraction(old, new)})

    # -- cluster -------------------------------------------------------------------
    def cluster(self) -> Reply:
        shards = []
        for s in range(self.config.shards):
            entry: dict[str, Any] = {"shard": s, "replicas": self.placement.get(s, [])}
            replica = self.replicas.get(s)
            if replica is not None:
                entry.update(replica.group.status())
            shards.append(entry)
        nodes = [
            {"id": n.id, "url": n.http_url, "zone": n.zone, "raft_port_base": n.raft_port_base}
            for n in sorted(self.table.nodes.values(), key=lambda n: n.id)
        ]
        body = {
            "cluster": self.config.name,
            "node": self.node_id,
            "shard_count": self.config.shards,
            "replication_factor": self.config.replication_factor,
            "hash": HASH_NAME,
            "table_version": self.table.version,
            "nodes": nodes,
            "shards": shards,
        }
        return Reply(200, body)

    def readiness(self, sync: bool = False) -> tuple[bool, list[str]]:
        """Every local replica knows a leader; with `sync`, every follower replica
        has also applied the commit index its leader last told it (useful to gate
        each step of a rolling restart)."""
        problems = []
        now = time.monotonic()
        for s, replica in self.replicas.items():
            if self.leader_of(s) is None:
                st = replica.group.status()
                problems.append(
                    f"shard {s}: no known leader ({st['role']} at term {st['term']}, "
                    f"voters {','.join(st['members'])}, log to {st['commit_index']}/{st['applied_index']})"
                )
                continue
            if sync and not replica.group.is_leader():
                staleness, commit = replica.group.follower_freshness(now)
                if staleness > self.config.raft.election_timeout_ms_max / 1000:
                    problems.append(f"shard {s}: no recent contact with the leader")
                elif replica.applied_index < commit:
                    problems.append(f"shard {s}: applied {replica.applied_index} of {commit}")
        return not problems, problems

    def forward_path(self, call: Call) -> str:
        if not call.query:
            return call.path
        return call.path + "?" + urlencode(dict(call.query))
