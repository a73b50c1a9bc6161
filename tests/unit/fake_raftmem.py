"""An in-process fake raftmem cluster for client unit tests: a few aiohttp test
servers that answer the v1 API from one dict, record every request, and can be
scripted to fail (status, delay, or both) before answering normally.

It models only what the client sees: who leads which shard (/v1/cluster), who
served a request (X-Raftmem-Served-By), tokens, versions and list cursors.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from raftmem.client import HASH_NAME, shard_for

SHARDS = 4


@dataclass
class Fault:
    """One scripted answer: wait `delay_s`, then answer `status` with `body` (status
    0: after the delay, answer normally)."""

    status: int = 0
    delay_s: float = 0.0
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    node: str | None = None  # only on this node (None: whichever node comes first)
    path_prefix: str = "/v1/memories"


@dataclass
class Seen:
    node: str
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


def free_port() -> int:
    """A port nothing listens on (for connection-refused tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class FakeCluster:
    def __init__(self, node_ids: tuple[str, ...] = ("n1", "n2", "n3")) -> None:
        self.node_ids = node_ids
        self.servers: dict[str, TestServer] = {}
        self.urls: dict[str, str] = {}
        self.leaders: dict[int, str] = {s: node_ids[s % len(node_ids)] for s in range(SHARDS)}
        self.terms: dict[int, int] = {s: 1 for s in range(SHARDS)}
        self.faults: deque[Fault] = deque()
        self.always: Fault | None = None  # answer every data request like this
        self.batch_refusals = 0  # this many of the next batch operations are answered 429 (back-pressure)
        self.seen: list[Seen] = []
        self.cluster_calls = 0
        self.data: dict[tuple[str, str], dict[str, Any]] = {}
        self.index: dict[int, int] = {s: 0 for s in range(SHARDS)}
        self.forwarding = True  # followers "forward": Served-By names the leader
        self.extra_nodes: dict[str, str] = {}  # listed in /v1/cluster, not served
        self.searches: list[dict[str, Any]] = []  # bodies of POST /v1/search

    async def start(self) -> FakeCluster:
        for node in self.node_ids:
            server = TestServer(self._app(node), host="127.0.0.1")
            await server.start_server()
            self.servers[node] = server
            self.urls[node] = str(server.make_url("")).rstrip("/")
        return self

    async def close(self) -> None:
        for server in self.servers.values():
            await server.close()

    def url_list(self) -> list[str]:
        return [self.urls[n] for n in self.node_ids]

    def node_of(self, url: str) -> str:
        return next(n for n, u in {**self.urls, **self.extra_nodes}.items() if u == url)

    def data_requests(self) -> list[Seen]:
        return [s for s in self.seen if s.path != "/v1/cluster"]

    # -- the app ---------------------------------------------------------------------
    def _app(self, node: str) -> web.Application:
        async def cluster(request: web.Request) -> web.Response:
            return await self._cluster(node, request)

        async def memory(request: web.Request) -> web.Response:
            return await self._memory(node, request)

        async def namespace(request: web.Request) -> web.Response:
            return await self._namespace(node, request)

        async def batch(request: web.Request) -> web.Response:
            return await self._batch(node, request)

        async def search(request: web.Request) -> web.Response:
            self.searches.append(await request.json())
            return web.json_response({"items": [], "more": False, "cursor": None,
                                      "index_lag": {"entries": 0, "ms": 0, "stale": False, "shards": {}}})

        app = web.Application()
        app.router.add_get("/v1/cluster", cluster)
        app.router.add_route("*", "/v1/memories/{ns}/{id}", memory)
        app.router.add_route("*", "/v1/memories/{ns}", namespace)
        app.router.add_post("/v1/batch", batch)
        app.router.add_post("/v1/search", search)
        return app

    async def _record(self, node: str, request: web.Request) -> Seen:
        seen = Seen(node, request.method, request.path, dict(request.query), dict(request.headers), await request.read())
        self.seen.append(seen)
        return seen

    async def _fault(self, node: str, path: str) -> web.Response | None:
        fault = self.always
        if fault is None and self.faults:
            head = self.faults[0]
            if (head.node is None or head.node == node) and path.startswith(head.path_prefix):
                fault = self.faults.popleft()
        if fault is None or (fault.node is not None and fault.node != node):
            return None
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if not fault.status:
            return None
        body = fault.body if fault.body is not None else {"error": {"code": f"e{fault.status}", "message": "scripted"}}
        return web.json_response(body, status=fault.status, headers=fault.headers, dumps=lambda o: orjson.dumps(o).decode())

    async def _cluster(self, node: str, request: web.Request) -> web.Response:
        await self._record(node, request)
        self.cluster_calls += 1
        nodes = [{"id": n, "url": u} for n, u in {**self.urls, **self.extra_nodes}.items()]
        shards = [
            {"shard": s, "replicas": list(self.node_ids), "leader": self.leaders.get(s), "term": self.terms[s]}
            for s in range(SHARDS)
        ]
        return _json(200, {"shard_count": SHARDS, "hash": HASH_NAME, "node": node, "nodes": nodes, "shards": shards})

    def _served_by(self, node: str, shard: int, level: str | None) -> str:
        if level in ("session", "bounded", "eventual") or not self.forwarding:
            return node
        return self.leaders.get(shard) or node

    def _write(self, shard: int) -> int:
        self.index[shard] += 1
        return self.index[shard]

    async def _memory(self, node: str, request: web.Request) -> web.Response:
        seen = await self._record(node, request)
        faulted = await self._fault(node, request.path)
        if faulted is not None:
            return faulted
        ns, mid = request.match_info["ns"], request.match_info["id"]
        shard = shard_for(ns, mid, SHARDS)
        level = request.query.get("consistency")
        served_by = self._served_by(node, shard, None if request.method != "GET" else level)
        key = (ns, mid)
        if request.method == "PUT":
            body = orjson.loads(seen.body)
            old = self.data.get(key)
            if request.headers.get("If-None-Match") == "*" and old is not None:
                return _json(412, {"error": {"code": "precondition_failed", "message": "exists"}})
            if_match = request.headers.get("If-Match")
            if if_match is not None and (old is None or str(old["version"]) != if_match):
                return _json(412, {"error": {"code": "precondition_failed", "message": "version"}})
            index = self._write(shard)
            rec = {"namespace": ns, "id": mid, **body, "version": (old["version"] + 1) if old else 1,
                   "created_at": index, "token": f"{shard}:{index}"}
            self.data[key] = rec
            return _json(201 if old is None else 200, rec, {"X-Raftmem-Token": rec["token"], "X-Raftmem-Served-By": served_by})
        if request.method == "DELETE":
            if key not in self.data:
                return _json(404, {"error": {"code": "not_found", "message": "absent"}})
            old = self.data.pop(key)
            token = f"{shard}:{self._write(shard)}"
            return _json(200, {"deleted": True, "version": old["version"], "token": token},
                         {"X-Raftmem-Token": token, "X-Raftmem-Served-By": served_by})
        token = f"{shard}:{self.index[shard]}"
        headers = {"X-Raftmem-Token": token, "X-Raftmem-Served-By": served_by, "X-Raftmem-Consistency": level or "strong"}
        if key not in self.data:
            return _json(404, {"error": {"code": "not_found", "message": "absent", "token": token}}, headers)
        return _json(200, self.data[key], headers)

    async def _namespace(self, node: str, request: web.Request) -> web.Response:
        seen = await self._record(node, request)
        faulted = await self._fault(node, request.path)
        if faulted is not None:
            return faulted
        ns = request.match_info["ns"]
        if request.method == "POST":
            key = request.headers.get("Idempotency-Key", str(len(self.data)))
            mid = "i-" + key[:12]
            shard = shard_for(ns, mid, SHARDS)
            index = self._write(shard)
            rec = {"namespace": ns, "id": mid, **orjson.loads(seen.body), "version": 1, "created_at": index,
                   "token": f"{shard}:{index}"}
            self.data[(ns, mid)] = rec
            return _json(201, rec, {"X-Raftmem-Token": rec["token"], "X-Raftmem-Served-By": node})
        items = sorted((r for (n, _), r in self.data.items() if n == ns), key=lambda r: r["id"])
        after = request.query.get("cursor")
        if after:
            items = [r for r in items if r["id"] > after]
        limit = int(request.query.get("limit", "100"))
        body: dict[str, Any] = {"items": items[:limit], "count": len(items[:limit])}
        if len(items) > limit:
            body["cursor"] = items[limit - 1]["id"]
        return _json(200, body)

    async def _batch(self, node: str, request: web.Request) -> web.Response:
        seen = await self._record(node, request)
        faulted = await self._fault(node, request.path)
        if faulted is not None:
            return faulted
        results = []
        for op in orjson.loads(seen.body)["ops"]:
            if self.batch_refusals:
                self.batch_refusals -= 1
                results.append({"status": 429, "body": {"error": {"code": "overloaded", "message": "scripted"}}})
            else:
                results.append({"status": 200, "body": {"op": op["op"]}})
        return _json(200, {"results": results})


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), headers=headers, content_type="application/json")
