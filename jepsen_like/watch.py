"""The ``watch`` workload: writers put and delete memories of one namespace
while watchers follow GET /v1/watch in short sessions, each resumed from where
the last one ended (as etcd's robustness tests do; the checker is
``jepsen_like.checker.watch``).

- Writers (one per node) put a small set of keys with unique integer values,
  tagged ``even`` or ``odd`` by value, and now and then delete one. Each op is
  recorded with the token (``<shard>:<index>``) and version its answer gave.
- Watchers: one per node on the whole namespace, one that asks for
  ``tag=even`` and one that asks for the leader (``require_leader``), each
  bound to a node (and moving to the next one after a failure); and two
  (``m-all``, ``m-even``) that share one connection (POST /v1/watch, many
  watches on one connection), each judged as a watcher of its own. A watcher
  runs sessions of 1 to 4 s (NDJSON): a session is one operation, invoked
  with ``after`` (its positions, every shard from 0 the first time) and
  completed ``ok`` with what it received, in order: ``["e", shard, index,
  seq, type, id, version, content, last]`` per event, ``["p", {shard:
  index}]`` per progress, ``["x", type, {shard: index}]`` for a last event
  (overflow, compacted, error); ``fail`` when the stream did not start. The
  next session resumes from the tokens of the progress events, the events
  marked last and the last event: exactly what a client may resume from.
- After the faults heal, every watcher runs sessions until one reports
  progress past every acknowledged write (``final``), so every write is
  covered.

The negative control (``control-watch-drop``) runs the same workload on a
cluster that leaves out one event in a hundred (debug.unsafe_watch_drop).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jepsen_like.checker.watch import parse_tokens
from jepsen_like.workloads import Context, Workload, outcome

NDJSON = "application/x-ndjson"
PROGRESS_MS = 300
SESSION_S = (1.0, 4.0)
READ_TIMEOUT_S = 5.0  # no byte for this long (progress comes every 0.3 s): the node is gone
KEYS = 16


class WatchWorkload(Workload):
    name = "watch"
    namespace = "jwatch"

    def __init__(self, ctx: Context, mean_delay_s: float = 0.03, delete_share: float = 0.1) -> None:
        super().__init__(ctx)
        self.mean_delay_s = mean_delay_s
        self.delete_share = delete_share
        self.values = itertools.count(1)
        self.acked_positions: dict[int, int] = {}  # per shard: the highest token acknowledged
        nodes = ctx.node_ids
        self.watchers: list[dict[str, Any]] = [
            {"id": f"w{i}", "node": n, "filter": {}} for i, n in enumerate(nodes)
        ] + [
            {"id": "even", "node": nodes[0], "filter": {"tag": "even"}},
            {"id": "leader", "node": nodes[-1], "filter": {"require_leader": "true"}},
        ]
        shared = [{"id": "m-all", "node": nodes[1 % len(nodes)], "filter": {}},
                  {"id": "m-even", "node": nodes[1 % len(nodes)], "filter": {"tag": "even"}}]
        self.watchers += shared
        # The watchers of one connection: alone (GET /v1/watch), or together (POST).
        self.groups: list[list[dict[str, Any]]] = [[w] for w in self.watchers if w not in shared] + [shared]

    def workers(self) -> list[Callable[[], Awaitable[None]]]:
        writers = [(lambda node=node: self._writer(node)) for node in self.ctx.node_ids]
        watchers = [(lambda group=group: self._watcher(group)) for group in self.groups]
        return [*writers, *watchers]

    # -- writers ----------------------------------------------------------------------
    async def _writer(self, node: str) -> None:
        ctx = self.ctx
        process = ctx.recorder.new_process()
        while not ctx.stop.is_set():
            mid = f"k{self.rng.randrange(KEYS)}"
            key = f"{self.namespace}/{mid}"
            path = f"/v1/memories/{self.namespace}/{mid}"
            if self.rng.random() < self.delete_share:
                inv = self.invoke(process, "delete", key, None, node)
                answer = await ctx.client.request(node, "DELETE", path)
                etype, error = outcome(answer, (200,), fail_statuses=(404,))
            else:
                value = next(self.values)
                inv = self.invoke(process, "put", key, value, node)
                answer = await ctx.client.request(node, "PUT", path, body={
                    "content": value, "tags": ["even" if value % 2 == 0 else "odd"]})
                etype, error = outcome(answer, (200, 201))
            body = answer.body if isinstance(answer.body, dict) else {}
            if etype == "ok":
                token = body.get("token")
                for shard, index in parse_tokens(token).items():
                    self.acked_positions[shard] = max(self.acked_positions.get(shard, 0), index)
                self.complete(inv, "ok", inv.value, None, answer, version=self.version_of(answer), token=token)
            else:
                self.complete(inv, etype, inv.value, error, answer)
            if etype == "info":
                process = ctx.recorder.new_process()
            await self.pause(self.mean_delay_s, failed=etype != "ok")

    # -- watchers ---------------------------------------------------------------------
    async def _watcher(self, group: list[dict[str, Any]]) -> None:
        ctx = self.ctx
        positions = {w["id"]: {s: 0 for s in range(ctx.shards)} for w in group}
        node_index = ctx.node_ids.index(group[0]["node"])
        while not ctx.stop.is_set():
            duration = self.rng.uniform(*SESSION_S)
            node = ctx.node_ids[node_index % len(ctx.node_ids)]
            ok, positions, _ = await self.session(group, node, positions, duration)
            for watcher in group:
                watcher["resume"] = positions[watcher["id"]]
            if not ok:
                node_index += 1  # this node failed us: the next one
                await self.pause(0.2, failed=True)

    async def session(self, group: list[dict[str, Any]], node: str, positions: dict[str, dict[int, int]],
                      duration_s: float) -> tuple[bool, dict[str, dict[int, int]], dict[str, dict[int, int]]]:
        """One session of a connection's watchers (an operation each); (started?,
        where each one's next resumes, the progress each reached)."""
        ctx = self.ctx
        invs = {w["id"]: self.invoke(ctx.recorder.new_process(), "watch", None,  # a process each: ops at once
                                     {"after": positions[w["id"]], "filter": w["filter"]}, node, watcher=w["id"])
                for w in group}
        until = asyncio.get_running_loop().time() + duration_s
        params: dict[str, str] | None = None  # one watcher: GET /v1/watch
        body: dict[str, Any] | None = None  # together: POST
        if len(group) == 1:
            params = {"namespace": self.namespace, "after": _tokens(positions[group[0]["id"]]),
                      "progress_ms": str(PROGRESS_MS), **group[0]["filter"]}
        else:
            body = {"watches": [{"id": w["id"], "namespace": self.namespace, "after": _tokens(positions[w["id"]]),
                                 **w["filter"]} for w in group], "progress_ms": PROGRESS_MS}
        answer, lines = await ctx.client.lines(node, "/v1/watch", params=params, body=body,
                                               headers={"Accept": NDJSON}, read_timeout_s=READ_TIMEOUT_S, until=until)
        if answer.status != 200:
            etype, error = outcome(answer, ())
            for watcher_id, inv in invs.items():
                self.complete(inv, "fail" if etype == "info" else etype, None, error, answer, watcher=watcher_id)
            return False, positions, {w: {} for w in invs}
        items: dict[str, list[Any]] = {w: [] for w in invs}
        resume = {w: dict(positions[w]) for w in invs}
        progress: dict[str, dict[int, int]] = {w: {} for w in invs}
        for line in lines:
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if len(group) == 1:
                _absorb(item, items[group[0]["id"]], resume[group[0]["id"]], progress[group[0]["id"]])
            elif item.get("watch") in items:
                for one in item.get("events") or []:
                    _absorb(one, items[item["watch"]], resume[item["watch"]], progress[item["watch"]])
        for watcher_id, inv in invs.items():
            self.complete(inv, "ok", items[watcher_id], answer.error, answer, watcher=watcher_id)
        return answer.error is None or any(items.values()), resume, progress

    async def final(self) -> bool:
        """Every watcher until a session reports progress past every acknowledged write."""
        deadline = time.monotonic() + self.ctx.final_read_timeout_s
        target = dict(self.acked_positions)
        results = await asyncio.gather(*(self._final(group, target, deadline) for group in self.groups))
        return all(results)

    async def _final(self, group: list[dict[str, Any]], target: dict[int, int], deadline: float) -> bool:
        ctx = self.ctx
        positions = {w["id"]: dict(w.get("resume") or {s: 0 for s in range(ctx.shards)}) for w in group}
        for node in itertools.cycle(ctx.node_ids):
            if time.monotonic() > deadline:
                return False
            if node not in ctx.live_nodes():
                await asyncio.sleep(0.1)
                continue
            ok, positions, progress = await self.session(group, node, positions, 3.0)
            for watcher in group:
                watcher["resume"] = positions[watcher["id"]]
            if all(progress[w].get(s, 0) >= i for w in progress for s, i in target.items()):
                return True
            if not ok:
                await asyncio.sleep(0.2)
        return False


def _tokens(positions: dict[int, int]) -> str:
    return ",".join(f"{s}:{i}" for s, i in sorted(positions.items()))


def _absorb(item: dict[str, Any], items: list[Any], resume: dict[int, int], progress: dict[int, int]) -> None:
    """One event of a watcher's session, as the history records it; moves
    where its next session resumes, and the progress it reached."""
    kind = item.get("type")
    if kind in ("put", "delete", "expire"):
        shard, index = (int(x) for x in str(item["token"]).split(":"))
        content = (item.get("record") or {}).get("content") if kind == "put" else None
        items.append(["e", shard, index, item.get("seq", 0), kind, item.get("id"), item.get("version"),
                      content, bool(item.get("last"))])
        if item.get("last"):
            resume[shard] = max(resume.get(shard, 0), index)
    elif kind == "progress":
        tokens = parse_tokens(item.get("tokens"))
        items.append(["p", tokens])
        for shard, index in tokens.items():
            resume[shard] = max(resume.get(shard, 0), index)
            progress[shard] = max(progress.get(shard, 0), index)
    else:
        tokens = parse_tokens(item.get("tokens"))
        items.append(["x", kind, tokens])
        for shard, index in tokens.items():
            resume[shard] = max(resume.get(shard, 0), index)
