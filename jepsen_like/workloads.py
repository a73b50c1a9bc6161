"""Workloads: client processes that drive the cluster through the HTTP API and
record every operation (invoke, then ok / fail / info).

Rules shared by all workloads (see ``outcome``):

- ``ok``: the API answered with success; ``fail``: it answered 503 or 429
  (nothing happened), 412 for a compare-and-set, or the connection could not
  even be opened; ``info``: everything else, above all a timeout, a dropped
  connection or a 504, which leave the outcome unknown.
- A process that got ``info`` is retired; its worker continues as a new
  process (a fresh id), as in Jepsen, so that no process has two operations
  in flight.
- Each worker is bound to one node (Jepsen's clients are too): reads at a node
  that wrongly believes it leads are what catches stale reads.
- No request is ever retried by the client.

Workloads:

- ``register``: groups of workers (one per node) share a key and do read
  (linearizable or strong), write and cas on it; after ``ops_per_key``
  operations the group moves to a fresh key on the next shard, which keeps
  every key's history small enough to check. Written values are unique, so a
  cas by value is done with ``If-Match: <version of that value>`` (the version
  the worker last saw with it); a cas on an absent key uses ``If-None-Match: *``.
- ``set``: unique adds (one memory per element), periodic full reads (list at
  ``linearizable``) and a final read after the faults heal.
- ``session``: each process writes and reads its own keys with
  ``consistency=session&after=<tokens>``, carrying the highest token it saw per
  shard (write tokens and the replicas' ``X-Raftmem-Token``). Keys are per
  process, so the history is also linearizable.
- ``stale``: writers overwrite a few keys; readers on every node do
  ``consistency=bounded&max_staleness_ms=N`` reads.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from jepsen_like.checker.history import Event
from jepsen_like.httpclient import LOST, NOT_SENT, Answer, HttpClient
from jepsen_like.recorder import Recorder
from raftmem.shardhash import shard_for

# Back-off after an operation that did not succeed, so a dead node is not spun on.
BACKOFF_S = 0.1
LIST_PAGE_LIMIT = 1000
LIST_PAGES_MAX = 1000
FINAL_READ_TIMEOUT_S = 30.0


# The server's routing function, from the one leaf module that holds it (the
# harness imports nothing else of raftmem: it talks HTTP and sends signals).
shard_of = shard_for


def id_on_shard(namespace: str, stem: str, shard: int, shards: int) -> str:
    """A memory id starting with ``stem`` that lands on ``shard``."""
    for salt in itertools.count():
        candidate = f"{stem}.{salt}"
        if shard_of(namespace, candidate, shards) == shard:
            return candidate
    raise AssertionError("unreachable")


def outcome(answer: Answer, ok_statuses: tuple[int, ...], fail_statuses: tuple[int, ...] = ()) -> tuple[str, str | None]:
    """(event type, error) for an answer."""
    if answer.status in ok_statuses:
        return "ok", None
    if answer.status == NOT_SENT:
        return "fail", answer.error
    if answer.status == LOST:
        return "info", answer.error
    code = None
    if isinstance(answer.body, dict) and isinstance(answer.body.get("error"), dict):
        code = answer.body["error"].get("code")
    error = f"{answer.status} {code or ''}".strip()
    if answer.status in (503, 429) or answer.status in fail_statuses:
        return "fail", error
    return "info", error


@dataclass
class Context:
    recorder: Recorder
    client: HttpClient
    node_ids: list[str]
    shards: int
    rng: random.Random
    stop: asyncio.Event
    op_timeout_s: float = 8.0
    final_read_timeout_s: float = FINAL_READ_TIMEOUT_S
    # The cluster's live nodes: the final reads go to those.
    live_nodes: Callable[[], list[str]] = field(default=lambda: [])


class Workload:
    name = "base"

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.rng = random.Random(ctx.rng.random())

    def workers(self) -> list[Callable[[], Awaitable[None]]]:
        raise NotImplementedError

    async def final(self) -> bool | None:
        """After the faults heal: reads that need a whole cluster. False: they
        never succeeded; None: nothing to do."""
        return None

    # -- helpers ---------------------------------------------------------------------
    def invoke(self, process: int, f: str, key: str | None, value: Any, node: str, **extra: Any) -> Event:
        return self.ctx.recorder.invoke(process, f, key, value, node, workload=self.name, **extra)

    def complete(self, invoke: Event, etype: str, value: Any, error: str | None, answer: Answer,
                 **extra: Any) -> None:
        served = answer.headers.get("X-Raftmem-Served-By")
        if served:
            extra["node"] = served
        self.ctx.recorder.complete(invoke, etype, value, error, **extra)

    async def pause(self, mean_s: float, failed: bool = False) -> None:
        delay = self.rng.uniform(0, 2 * mean_s) + (BACKOFF_S if failed else 0.0)
        if delay > 0:
            try:
                await asyncio.wait_for(self.ctx.stop.wait(), delay)
            except TimeoutError:
                pass

    @staticmethod
    def version_of(answer: Answer) -> int | None:
        if isinstance(answer.body, dict) and isinstance(answer.body.get("version"), int):
            return int(answer.body["version"])
        return None


class RegisterWorkload(Workload):
    name = "register"
    namespace = "jreg"

    def __init__(self, ctx: Context, groups: int = 3, readers_per_node: int = 1, ops_per_key: int = 200,
                 mean_delay_s: float = 0.02) -> None:
        super().__init__(ctx)
        self.groups = groups
        self.readers_per_node = readers_per_node
        self.ops_per_key = ops_per_key
        self.mean_delay_s = mean_delay_s
        self.generation = [0] * groups
        self.ops_on_key = [0] * groups
        self.keys = [self._key(g, 0) for g in range(groups)]
        self.values = itertools.count(1)

    def _key(self, group: int, generation: int) -> str:
        shard = (group + generation) % self.ctx.shards
        return id_on_shard(self.namespace, f"r{group}-{generation}", shard, self.ctx.shards)

    def _next_key(self, group: int) -> str:
        self.ops_on_key[group] += 1
        if self.ops_on_key[group] > self.ops_per_key:
            self.generation[group] += 1
            self.ops_on_key[group] = 1
            self.keys[group] = self._key(group, self.generation[group])
        return self.keys[group]

    def workers(self) -> list[Callable[[], Awaitable[None]]]:
        nodes = self.ctx.node_ids
        writers = [(lambda g=g, node=node: self._worker(g, node, 0.5)) for g in range(self.groups) for node in nodes]
        # Read-only workers keep reading at every node while the read-write ones
        # wait out a write that cannot commit: a node serving stale reads is
        # caught within the fault, not only at its edges.
        readers = [
            (lambda g=g, node=node: self._worker(g, node, 1.0))
            for g in range(self.groups) for node in nodes for _ in range(self.readers_per_node)
        ]
        return [*writers, *readers]

    async def _worker(self, group: int, node: str, read_share: float) -> None:
        ctx = self.ctx
        process = ctx.recorder.new_process()
        seen: dict[str, tuple[Any, int | None]] = {}  # key -> (value, version) last seen
        cas_above = read_share + (1 - read_share) / 2
        while not ctx.stop.is_set():
            mid = self._next_key(group)
            key = f"{self.namespace}/{mid}"
            path = f"/v1/memories/{self.namespace}/{mid}"
            roll = self.rng.random()
            if roll < read_share or (roll >= cas_above and key not in seen):
                etype = await self._read(process, node, key, path, seen)
            elif roll < cas_above:
                etype = await self._write(process, node, key, path, seen)
            else:
                etype = await self._cas(process, node, key, path, seen)
            if etype == "info":
                process = ctx.recorder.new_process()
                seen.clear()
            await self.pause(self.mean_delay_s, failed=etype != "ok")

    async def _read(self, process: int, node: str, key: str, path: str, seen: dict[str, Any]) -> str:
        level = self.rng.choice(("linearizable", "strong"))
        inv = self.invoke(process, "read", key, None, node, consistency=level)
        answer = await self.ctx.client.request(node, "GET", path, params={"consistency": level})
        if answer.status == 404:
            self.complete(inv, "ok", None, None, answer)
            seen[key] = (None, None)
            return "ok"
        etype, error = outcome(answer, (200,))
        if etype == "ok":
            value, version = answer.body.get("content"), self.version_of(answer)
            self.complete(inv, "ok", value, None, answer, version=version)
            seen[key] = (value, version)
        else:
            self.complete(inv, etype, None, error, answer)
        return etype

    async def _write(self, process: int, node: str, key: str, path: str, seen: dict[str, Any]) -> str:
        value = next(self.values)
        inv = self.invoke(process, "write", key, value, node)
        answer = await self.ctx.client.request(node, "PUT", path, body={"content": value})
        etype, error = outcome(answer, (200, 201))
        if etype == "ok":
            version = self.version_of(answer)
            self.complete(inv, "ok", value, None, answer, version=version)
            seen[key] = (value, version)
        else:
            self.complete(inv, etype, value, error, answer)
            seen.pop(key, None)
        return etype

    async def _cas(self, process: int, node: str, key: str, path: str, seen: dict[str, Any]) -> str:
        expected, version = seen[key]
        new = next(self.values)
        if expected is None:
            headers = {"If-None-Match": "*"}
        elif version is None:
            return await self._read(process, node, key, path, seen)
        else:
            headers = {"If-Match": str(version)}
        inv = self.invoke(process, "cas", key, [expected, new], node)
        answer = await self.ctx.client.request(node, "PUT", path, body={"content": new}, headers=headers)
        etype, error = outcome(answer, (200, 201), fail_statuses=(412,))
        if etype == "ok":
            new_version = self.version_of(answer)
            self.complete(inv, "ok", [expected, new], None, answer, version=new_version)
            seen[key] = (new, new_version)
        else:
            self.complete(inv, etype, [expected, new], error, answer)
            seen.pop(key, None)
        return etype


class SetWorkload(Workload):
    name = "set"
    namespace = "jset"

    def __init__(self, ctx: Context, adders_per_node: int = 1, mean_delay_s: float = 0.02,
                 read_every_s: float = 5.0) -> None:
        super().__init__(ctx)
        self.adders_per_node = adders_per_node
        self.mean_delay_s = mean_delay_s
        self.read_every_s = read_every_s
        self.elements = itertools.count(1)
        self.key = self.namespace

    def workers(self) -> list[Callable[[], Awaitable[None]]]:
        adders = [
            (lambda node=node: self._adder(node))
            for _ in range(self.adders_per_node) for node in self.ctx.node_ids
        ]
        return [*adders, self._reader]

    async def _adder(self, node: str) -> None:
        ctx = self.ctx
        process = ctx.recorder.new_process()
        while not ctx.stop.is_set():
            element = next(self.elements)
            inv = self.invoke(process, "add", self.key, element, node)
            answer = await ctx.client.request(
                node, "PUT", f"/v1/memories/{self.namespace}/e{element}", body={"content": element}
            )
            etype, error = outcome(answer, (200, 201))
            self.complete(inv, etype, element, error, answer)
            if etype == "info":
                process = ctx.recorder.new_process()
            await self.pause(self.mean_delay_s, failed=etype != "ok")

    async def _reader(self) -> None:
        ctx = self.ctx
        process = ctx.recorder.new_process()
        nodes = itertools.cycle(ctx.node_ids)
        while not ctx.stop.is_set():
            await self.pause(self.read_every_s / 2)
            if ctx.stop.is_set():
                break
            etype = await self.read(process, next(nodes))
            if etype == "info":
                process = ctx.recorder.new_process()
            await self.pause(self.read_every_s / 2)

    async def read(self, process: int, node: str) -> str:
        """One full read of the set (all pages, linearizable)."""
        ctx = self.ctx
        inv = self.invoke(process, "read", self.key, None, node, consistency="linearizable")
        started = time.monotonic()
        items: list[int] = []
        cursor: str | None = None
        answer = Answer(0)
        for _page in range(LIST_PAGES_MAX):
            params = {"limit": str(LIST_PAGE_LIMIT), "consistency": "linearizable"}
            if cursor:
                params["cursor"] = cursor
            remaining = ctx.op_timeout_s * 2 - (time.monotonic() - started)
            if remaining <= 0.1:
                answer = Answer(LOST, error="timeout (pages)")
                break
            answer = await ctx.client.request(node, "GET", f"/v1/memories/{self.namespace}", params=params,
                                              timeout_s=remaining)
            if answer.status != 200:
                break
            body = answer.body if isinstance(answer.body, dict) else {}
            items.extend(int(item["content"]) for item in body.get("items", []))
            cursor = body.get("cursor")
            if not cursor:
                break
        etype, error = outcome(answer, (200,))
        self.complete(inv, etype, sorted(items) if etype == "ok" else None, error, answer)
        return etype

    async def final(self) -> bool:
        """Read until one full read succeeds (or the deadline passes)."""
        ctx = self.ctx
        process = ctx.recorder.new_process()
        deadline = time.monotonic() + ctx.final_read_timeout_s
        for node in itertools.cycle(ctx.node_ids):
            if time.monotonic() > deadline:
                return False
            if node not in ctx.live_nodes():
                await asyncio.sleep(0.1)
                continue
            etype = await self.read(process, node)
            if etype == "ok":
                return True
            if etype == "info":
                process = ctx.recorder.new_process()
            await asyncio.sleep(0.5)


class SessionWorkload(Workload):
    name = "session"
    namespace = "jses"

    def __init__(self, ctx: Context, workers_per_node: int = 1, keys_per_process: int = 2,
                 mean_delay_s: float = 0.02) -> None:
        super().__init__(ctx)
        self.workers_per_node = workers_per_node
        self.keys_per_process = keys_per_process
        self.mean_delay_s = mean_delay_s
        self.values = itertools.count(1)

    def workers(self) -> list[Callable[[], Awaitable[None]]]:
        return [
            (lambda node=node: self._worker(node))
            for _ in range(self.workers_per_node) for node in self.ctx.node_ids
        ]

    @staticmethod
    def _absorb(tokens: dict[int, int], token: Any) -> None:
        if not isinstance(token, str) or ":" not in token:
            return
        shard_s, index_s = token.split(":", 1)
        try:
            shard, index = int(shard_s), int(index_s)
        except ValueError:
            return
        tokens[shard] = max(tokens.get(shard, 0), index)

    async def _worker(self, node: str) -> None:
        ctx = self.ctx
        while not ctx.stop.is_set():
            process = ctx.recorder.new_process()
            # Keys of this process only (see the module docstring).
            keys = [f"s{process}-{j}" for j in range(self.keys_per_process)]
            tokens: dict[int, int] = {}
            while not ctx.stop.is_set():
                mid = self.rng.choice(keys)
                key = f"{self.namespace}/{mid}"
                path = f"/v1/memories/{self.namespace}/{mid}"
                if self.rng.random() < 0.4:
                    value = next(self.values)
                    inv = self.invoke(process, "write", key, value, node)
                    answer = await ctx.client.request(node, "PUT", path, body={"content": value})
                    etype, error = outcome(answer, (200, 201))
                    if etype == "ok":
                        self._absorb(tokens, answer.body.get("token") if isinstance(answer.body, dict) else None)
                        self.complete(inv, "ok", value, None, answer, version=self.version_of(answer))
                    else:
                        self.complete(inv, etype, value, error, answer)
                else:
                    after = ",".join(f"{s}:{i}" for s, i in sorted(tokens.items()))
                    params = {"consistency": "session"}
                    if after:
                        params["after"] = after
                    inv = self.invoke(process, "read", key, None, node, consistency="session")
                    answer = await ctx.client.request(node, "GET", path, params=params)
                    if answer.status == 404:
                        etype, error = "ok", None
                        self.complete(inv, "ok", None, None, answer)
                    else:
                        etype, error = outcome(answer, (200,))
                        if etype == "ok":
                            self.complete(inv, "ok", answer.body.get("content"), None, answer,
                                          version=self.version_of(answer))
                        else:
                            self.complete(inv, etype, None, error, answer)
                    if etype == "ok":
                        self._absorb(tokens, answer.headers.get("X-Raftmem-Token"))
                await self.pause(self.mean_delay_s, failed=etype != "ok")
                if etype == "info":
                    break  # retire the process; its keys go with it


class StaleWorkload(Workload):
    name = "stale"
    namespace = "jstale"
    BOUNDS_MS = (250, 1000, 3000)

    def __init__(self, ctx: Context, keys: int = 4, writers: int = 2, readers_per_node: int = 1,
                 mean_delay_s: float = 0.02) -> None:
        super().__init__(ctx)
        self.key_ids = [id_on_shard(self.namespace, f"t{i}", i % ctx.shards, ctx.shards) for i in range(keys)]
        self.writers = writers
        self.readers_per_node = readers_per_node
        self.mean_delay_s = mean_delay_s
        self.values = itertools.count(1)

    def workers(self) -> list[Callable[[], Awaitable[None]]]:
        nodes = self.ctx.node_ids
        targets = [nodes[i % len(nodes)] for i in range(self.writers)]
        writers = [(lambda node=node: self._writer(node)) for node in targets]
        readers = [(lambda node=node: self._reader(node)) for _ in range(self.readers_per_node) for node in nodes]
        return [*writers, *readers]

    async def _writer(self, node: str) -> None:
        ctx = self.ctx
        process = ctx.recorder.new_process()
        while not ctx.stop.is_set():
            mid = self.rng.choice(self.key_ids)
            value = next(self.values)
            inv = self.invoke(process, "write", f"{self.namespace}/{mid}", value, node)
            answer = await ctx.client.request(node, "PUT", f"/v1/memories/{self.namespace}/{mid}",
                                              body={"content": value})
            etype, error = outcome(answer, (200, 201))
            if etype == "ok":
                self.complete(inv, "ok", value, None, answer, version=self.version_of(answer))
            else:
                self.complete(inv, etype, value, error, answer)
            if etype == "info":
                process = ctx.recorder.new_process()
            await self.pause(self.mean_delay_s, failed=etype != "ok")

    async def _reader(self, node: str) -> None:
        ctx = self.ctx
        process = ctx.recorder.new_process()
        while not ctx.stop.is_set():
            mid = self.rng.choice(self.key_ids)
            bound = self.rng.choice(self.BOUNDS_MS)
            inv = self.invoke(process, "read", f"{self.namespace}/{mid}", None, node,
                              consistency="bounded", max_staleness_ms=bound)
            answer = await ctx.client.request(
                node, "GET", f"/v1/memories/{self.namespace}/{mid}",
                params={"consistency": "bounded", "max_staleness_ms": str(bound)},
            )
            if answer.status == 404:
                etype = "ok"
                self.complete(inv, "ok", None, None, answer)
            else:
                etype, error = outcome(answer, (200,))
                if etype == "ok":
                    self.complete(inv, "ok", answer.body.get("content"), None, answer,
                                  version=self.version_of(answer))
                else:
                    self.complete(inv, etype, None, error, answer)
            if etype == "info":
                process = ctx.recorder.new_process()
            await self.pause(self.mean_delay_s, failed=etype != "ok")


# Workloads in modules of their own build on Workload above.
from jepsen_like.causal import BlindCausalWorkload, CausalWorkload  # noqa: E402
from jepsen_like.search import SearchWorkload  # noqa: E402
from jepsen_like.watch import WatchWorkload  # noqa: E402

WORKLOAD_CLASSES: dict[str, type[Workload]] = {
    "register": RegisterWorkload,
    "set": SetWorkload,
    "session": SessionWorkload,
    "stale": StaleWorkload,
    "causal": CausalWorkload,
    "causal-blind": BlindCausalWorkload,
    "search": SearchWorkload,
    "watch": WatchWorkload,
}

# Which checkers of jepsen_like.checker judge each harness workload.
WORKLOAD_CHECKS: dict[str, str] = {
    "register": "register",
    "set": "set",
    "session": "session",
    "stale": "stale",
    "causal": "causal",
    "causal-blind": "causal",
    "search": "search",
    "watch": "watch",
}
