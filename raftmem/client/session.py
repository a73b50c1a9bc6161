"""Sessions: read-your-writes, monotonic reads and causal contexts over an
AsyncClient (the blocking `Session` wraps one)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import NotFound
from .types import HEADER_CONTEXT, Response, parse_token

# How long after its write a session reads a shard at its leader (see AsyncSession.get).
RECENT_WRITE_S = 1.0

if TYPE_CHECKING:
    from .aio import AsyncClient


class AsyncSession:
    """Read-your-writes, monotonic reads, and causal consistency across agents:
    remembers the highest token seen per shard (its writes and reads: its causal
    context), sends it with every request (X-Raftmem-Context) and reads with
    `consistency=session`, which any replica that has applied those tokens may
    serve. `context` is the context as a string, to hand to another agent, whose
    `client.session(context=...)` then sees all this session wrote and saw."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.tokens: dict[int, int] = {}
        # Per shard: when this session last wrote there (the client's clock).
        self.wrote_at: dict[int, float] = {}

    @property
    def context(self) -> str | None:
        """This session's causal context: one token per shard."""
        return ",".join(f"{s}:{i}" for s, i in sorted(self.tokens.items())) or None

    def observe(self, token: str | None) -> None:
        parsed = parse_token(token) if token else None
        if parsed is not None:
            shard, index = parsed
            if index > self.tokens.get(shard, -1):
                self.tokens[shard] = index

    def observe_context(self, context: str | None) -> None:
        for token in (context or "").split(","):
            self.observe(token.strip())

    def _observe_response(self, response: Response) -> None:
        """A write's answer: its token, and when it was seen (see `get`)."""
        self.observe(response.token)
        self.observe_context(response.headers.get(HEADER_CONTEXT))
        written = response.body.get("token") if isinstance(response.body, dict) else None
        self.observe(written)
        parsed = parse_token(written) if isinstance(written, str) else None
        if parsed is not None:
            self.wrote_at[parsed[0]] = self.client._clock()

    def after(self, shard: int | None) -> str | None:
        if shard is None:  # routes unknown: send every token, the server picks its shard's
            return self.context
        index = self.tokens.get(shard)
        return None if index is None else f"{shard}:{index}"

    async def put(self, namespace: str, memory_id: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        response = await self.client.put_raw(namespace, memory_id, content, context=self.context, **kw)
        self._observe_response(response)
        body: dict[str, Any] = response.body
        return body

    async def create(self, namespace: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        response = await self.client.create_raw(namespace, content, context=self.context, **kw)
        self._observe_response(response)
        body: dict[str, Any] = response.body
        return body

    async def delete(self, namespace: str, memory_id: str, **kw: Any) -> dict[str, Any]:
        response = await self.client.delete_raw(namespace, memory_id, context=self.context, **kw)
        self._observe_response(response)
        body: dict[str, Any] = response.body
        return body

    async def search(self, namespace: str | None = None, query: str | None = None, **kw: Any) -> dict[str, Any]:
        """A search that sees this session's writes (its context: read your writes)."""
        response = await self.client.search_raw(namespace, query, context=self.context, **kw)
        self.observe_context(response.headers.get(HEADER_CONTEXT))
        body: dict[str, Any] = response.body
        return body

    async def get(self, namespace: str, memory_id: str, *, consistency: str | None = None, **kw: Any) -> dict[str, Any]:
        """Session read (or the given level); NotFound also advances the session."""
        await self.client._ensure_routes()
        shard = self.client.shard_of(namespace, memory_id)
        leader = False
        if consistency is None:
            consistency = "session"
            kw.setdefault("after", self.after(shard))
            # Right after this session wrote to the shard, its followers learn of the
            # commit only with the leader's next message (tens of ms; measured 50 ms
            # median through MCP): the leader has it at once, and serves a session
            # read from its applied state, without a round.
            wrote = self.wrote_at.get(shard) if shard is not None else None
            leader = wrote is not None and self.client._clock() - wrote < RECENT_WRITE_S
        try:
            response = await self.client.get_raw(
                namespace, memory_id, consistency=consistency, context=self.context, leader=leader, **kw
            )
        except NotFound as e:
            if isinstance(e.body, dict) and isinstance(e.body.get("error"), dict):
                self.observe(e.body["error"].get("token"))
            raise
        self.observe(response.token)
        self.observe_context(response.headers.get(HEADER_CONTEXT))
        body: dict[str, Any] = response.body
        return body
