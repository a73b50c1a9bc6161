"""The ``causal`` workload: agents hand their causal context to each other.

A chain is a message passed from process to process, each on the next node
(agent A on n1 hands it to agent B on n2, B to C on n3, ...), as agents of a
fleet pass work along. The message carries A's causal context (the
``X-Raftmem-Context`` the server returned to A: one token per shard) and the
dependencies it covers: every key a sender wrote or read on the way, with the
version written or seen. Each hop

1. reads every dependency with ``consistency=causal`` and the context, at its
   own node, right away (a follower that has not applied the context's token
   must wait for it or hand the read to the leader); the invoke carries the
   ``floor`` (the version the context covers) for the causal checker;
2. writes a key of its own, and passes on the context the server returned
   (advanced by its reads and its write) with the dependencies.

A chain restarts (empty context) after ``hops`` hops, or after any operation
that did not succeed (an unknown write leaves its version unknown).

``causal-blind`` is the negative control: the same chains, but the context is
never sent, so a follower answers at once from whatever it has applied; the
causal checker must catch the reads that miss what the sender wrote.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable

from jepsen_like.workloads import Context, Workload, outcome

CONTEXT_HEADER = "X-Raftmem-Context"


class CausalWorkload(Workload):
    name = "causal"
    namespace = "jcausal"
    send_context = True

    def __init__(self, ctx: Context, chains_per_node: int = 1, hops: int = 4, mean_delay_s: float = 0.02) -> None:
        super().__init__(ctx)
        self.chains_per_node = chains_per_node
        self.hops = hops
        self.mean_delay_s = mean_delay_s
        self.keys = itertools.count(1)
        self.values = itertools.count(1)

    def workers(self) -> list[Callable[[], Awaitable[None]]]:
        starts = [i for _ in range(self.chains_per_node) for i in range(len(self.ctx.node_ids))]
        return [(lambda start=start: self._chain(start)) for start in starts]

    async def _chain(self, start: int) -> None:
        ctx = self.ctx
        nodes = ctx.node_ids
        hop = 0
        while not ctx.stop.is_set():
            context: str | None = None
            deps: dict[str, int] = {}  # key -> version the context covers
            for _ in range(self.hops):
                node = nodes[(start + hop) % len(nodes)]
                hop += 1
                context = await self._hop(node, context, deps)
                if context is None or ctx.stop.is_set():
                    break
                await self.pause(self.mean_delay_s)

    async def _hop(self, node: str, context: str | None, deps: dict[str, int]) -> str | None:
        """One agent's turn; the context to pass on (None: the chain breaks)."""
        ctx = self.ctx
        process = ctx.recorder.new_process()  # one agent per hop
        headers = {CONTEXT_HEADER: context} if context and self.send_context else {}
        for key, floor in sorted(deps.items()):
            inv = self.invoke(process, "read", key, None, node, consistency="causal", floor=floor)
            answer = await ctx.client.request(node, "GET", f"/v1/memories/{key}", params={"consistency": "causal"},
                                              headers=headers)
            if answer.status == 404:
                self.complete(inv, "ok", None, None, answer, version=0)
            else:
                etype, error = outcome(answer, (200,))
                if etype != "ok":
                    self.complete(inv, etype, None, error, answer)
                    await self.pause(self.mean_delay_s, failed=True)
                    return None
                version = self.version_of(answer)
                self.complete(inv, "ok", answer.body.get("content"), None, answer, version=version)
                deps[key] = max(floor, version or 0)
            context = answer.headers.get(CONTEXT_HEADER, context)
        key = f"{self.namespace}/c{next(self.keys)}"
        value = next(self.values)
        inv = self.invoke(process, "write", key, value, node)
        answer = await ctx.client.request(node, "PUT", f"/v1/memories/{key}", body={"content": value},
                                          headers=headers)
        etype, error = outcome(answer, (200, 201))
        version = self.version_of(answer)
        if etype != "ok" or version is None:
            self.complete(inv, etype, value, error, answer)
            await self.pause(self.mean_delay_s, failed=True)
            return None
        self.complete(inv, "ok", value, None, answer, version=version)
        deps[key] = version
        return answer.headers.get(CONTEXT_HEADER) or context


class BlindCausalWorkload(CausalWorkload):
    """Negative control: the same chains, the context never sent (recorded as
    the ``causal`` workload, so the same checker judges it)."""

    send_context = False
