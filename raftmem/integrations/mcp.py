"""raftmem as a Model Context Protocol server: an agent's memory, locks and task
queue as MCP tools (`raftmem mcp --url ...`, or `build_server(...)` in Python).

The one module of raftmem that imports the `mcp` package (`pip install
'raftmem[mcp]'`, major version pinned: 2.x). It is a client of the HTTP API
through `raftmem.client` and imports nothing of the server.

- **Tools** take typed arguments (JSON schemas with descriptions an LLM reads)
  and return structured results (TypedDicts: clients get `structured_content`,
  checked against each tool's output schema). `TOOLS` lists them.
- **Errors** never crash the server. Whatever the store refuses, and arguments
  that do not fit a tool's schema, come back as a tool error (`is_error`) whose
  text and `structured_content` are `{"error": {"code", "status", "message",
  "retryable", "hint", "details"?}}` with raftmem's error code (`not_found`,
  `precondition_failed`, `fenced`, `lock_held`, `invalid_request`,
  `unavailable`, `indeterminate`, ...). A bug in a tool is MCP's generic
  "Error executing tool" (logged here with its traceback).
- **Read-your-writes by default.** The server keeps one causal context (the
  highest token per shard of everything written or read through it) and sends
  it with every request (`X-Raftmem-Context`); reads default to `session`,
  which any replica that has applied those tokens may serve. So an agent always
  reads what it wrote, whichever node answers. The context is the server
  process's, shared by its MCP sessions: over stdio a process serves one
  client, and MCP's 2026 protocol has no sessions over HTTP to key it by;
  sharing makes reads monotonic across every client of the process, at the cost
  of a replica sometimes waiting (at most 0.5 s, then the leader answers) for a
  write another client made. Every result carries `context`; pass it as a
  tool's `context` argument in another agent (another server) to continue it
  (causal consistency across agents).
- **Resources**: `raftmem://memory/{namespace}/{id}` (the memory as JSON, read
  as `memory_get` reads it) and `raftmem://namespaces` (a JSON list).
- **Waiting for changes** (`memory_watch`) is a bounded long poll over the
  watch API: it returns at the first changes (and what follows within 50 ms),
  whole log entries only, with the tokens to continue from, so successive calls
  see every change once.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal, NotRequired, cast

import orjson
from mcp.server.mcpserver import MCPServer, ResourceSecurity
from mcp.server.mcpserver.context import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp.types import CallToolResult, InputRequiredResult, TextContent, ToolAnnotations
from pydantic import ConfigDict, Field, ValidationError, with_config
from typing_extensions import TypedDict  # pydantic refuses typing's below Python 3.12

from raftmem.client import (
    HEADER_CONSISTENCY,
    HEADER_CONTEXT,
    AsyncClient,
    AsyncSession,
    ClientError,
    Indeterminate,
    Lease,
    NotFound,
    Response,
    Unavailable,
    WatchEvent,
    default_holder,
    parse_token,
)

log = logging.getLogger(__name__)

SERVER_NAME = "raftmem"
LIST_LIMIT_DEFAULT = 20
LIST_LIMIT_MAX = 1000  # the server's page limit
# A lock acquisition or a task claim waits at the server; an MCP call should not
# hang an agent for long (the server bounds it too: coordination.wait_ms_max).
WAIT_MS_MAX = 60_000
SEARCH_LIMIT_MAX = 1000  # the server's
NAMESPACES_RESOURCE_MAX = 1000  # GET /v1/namespaces' page limit
WATCH_CHANGES_MAX = 100
WATCH_GATHER_S = 0.05  # after the first change, what arrives this soon comes in the same answer
HISTORY_LIMIT_MAX = 100
NAME_PATTERN = r"^[A-Za-z0-9._:-]+$"
# For this long after a write to a shard, the server's session reads of that
# shard go to its leader (see Tools._read_level): ten default heartbeats.
RECENT_WRITE_S = 1.0  # raftmem's names (raftmem/validation.py)

# -- the tools' arguments: types an LLM reads as JSON schema ---------------------------------
Level = Literal["session", "strong", "linearizable", "causal", "bounded", "eventual"]

CONSISTENCY_HELP = (
    "How fresh the answer must be. 'session' (default): includes everything written or read "
    "through this server and the context you pass; any replica may answer, so it is fast. Use it "
    "unless you have a reason not to. 'strong': the latest committed value, from the shard's "
    "leader. 'linearizable': the latest committed value, confirmed by a majority of replicas at "
    "the time of the read; slowest, no clock assumptions: use it for decisions others must not "
    "contradict (gates, locks, money). 'causal': like 'session', for a context another agent "
    "handed you (pass it as `context`). 'bounded': at most `max_staleness_ms` old. 'eventual': "
    "whatever the nearest replica holds; may miss recent writes, cheapest."
)
SEARCH_CONSISTENCY_HELP = (
    "'session' (default): finds everything written through this server (and the context you pass), "
    "and others' writes once indexed (normally within a fraction of a second; `index_lag` says how far "
    "behind the indexes were). 'linearizable': finds every write acknowledged anywhere before the "
    "search (waits for the indexes to catch up: slower). 'eventual': the nearest replica's indexes as "
    "they are; cheapest."
)
FILTER_HELP = (
    "Only memories matching all of these conditions. Keys are fields: agent_id, kind, tags, namespace, "
    "id, created_at, updated_at, content.<path>, metadata.<path> (dotted). A plain value means equal "
    "(for tags: has the tag); or an object of operators: $eq $ne $gt $gte $lt $lte $in $nin $contains; "
    "combine with $and, $or (lists) and $not. Example: {\"tags\": \"deploy\", \"content.severity\": "
    "{\"$gte\": 2}}."
)
LIST_CONSISTENCY_HELP = (
    "'strong' (default) or 'linearizable': every shard's leader answers, so the list includes "
    "every write acknowledged before it, yours included. 'eventual': the nearest replicas; may "
    "miss recent writes, cheapest."
)

Namespace = Annotated[str | None, Field(
    description="The namespace: dotted labels of letters, digits and . _ : - (e.g. 'team-a.notes'). "
    "May be left out when the server has a default namespace.", pattern=NAME_PATTERN, max_length=128)]
MemoryId = Annotated[str, Field(
    description="The memory's id within its namespace: letters, digits and . _ : - (e.g. 'deploy-plan').",
    pattern=NAME_PATTERN, min_length=1, max_length=256)]
Content = Annotated[Any, Field(description="The memory's value: any JSON (text, number, object, list).")]
Tags = Annotated[list[str] | None, Field(
    description="Labels to find it by (memory_list's `tag`), e.g. ['deploy', 'critical'].", max_length=64)]
ContextIn = Annotated[str | None, Field(
    description="A causal context another agent gave you (the `context` of one of its results): "
    "this call then sees everything that agent wrote and saw. Optional.")]
IfFence = Annotated[str | None, Field(
    description="A lock's `if_fence` (from lock_acquire, 'namespace/lock:fence'): the write happens "
    "only while you still hold that lock, else it fails with code 'fenced'.")]
LockName = Annotated[str, Field(description="The lock's name within its namespace, e.g. 'deploy'.",
                                pattern=NAME_PATTERN, min_length=1, max_length=256)]
TaskId = Annotated[str, Field(description="The claimed task's id.", pattern=NAME_PATTERN, max_length=256)]
Fence = Annotated[int, Field(description="The fence lock_acquire or task_claim returned.", ge=1)]
WaitMs = Annotated[int, Field(description="How long to wait for it, in milliseconds (0: do not wait).",
                              ge=0, le=WAIT_MS_MAX)]


# -- the tools' results --------------------------------------------------------------------
@with_config(ConfigDict(extra="allow"))
class Memory(TypedDict):
    """A memory as the store keeps it (fields added by newer servers are kept)."""

    namespace: str
    id: str
    content: Any
    version: int
    token: NotRequired[str]
    agent_id: NotRequired[str | None]
    kind: NotRequired[str | None]
    tags: NotRequired[list[str]]
    metadata: NotRequired[dict[str, Any]]
    created_at: NotRequired[int]
    updated_at: NotRequired[int]
    expires_at: NotRequired[int | None]


class PutResult(TypedDict):
    memory: Memory
    context: str | None


class GetResult(TypedDict):
    memory: Memory
    consistency: str | None
    served_by: str | None
    context: str | None


class ListResult(TypedDict):
    items: list[Memory]
    count: int
    cursor: str | None
    consistency: str | None


@with_config(ConfigDict(extra="allow"))
class Hit(TypedDict):
    """A memory found by a search, with its `score` (null when ordered by time)."""

    namespace: str
    id: str
    content: Any
    version: int
    score: float | None
    agent_id: NotRequired[str | None]
    kind: NotRequired[str | None]
    tags: NotRequired[list[str]]
    updated_at: NotRequired[int]


class SearchResult(TypedDict):
    items: list[Hit]
    more: bool
    cursor: str | None
    index_lag: dict[str, Any]
    context: str | None


class NamespacesResult(TypedDict):
    namespaces: list[str]


class Change(TypedDict):
    """A committed change: `type` put, delete or expire; `record` the memory as
    written (put) or as removed; `token` where it sits in its shard's log."""

    type: str
    namespace: str
    id: str
    version: int | None
    prev_version: int | None
    token: str
    time_ms: int
    record: dict[str, Any] | None


class WatchResult(TypedDict):
    changes: list[Change]
    tokens: str | None
    timed_out: bool


@with_config(ConfigDict(extra="allow"))
class Version(TypedDict):
    """One version of a memory: `event` put, delete or expire, who wrote it
    (`actor`), when (`time`), and its `value`."""

    event: str
    version: int | None
    token: NotRequired[str]
    time: NotRequired[int]
    actor: NotRequired[str | None]
    value: NotRequired[Any]


class HistoryResult(TypedDict):
    namespace: str
    id: str
    versions: list[Version]


class DeleteResult(TypedDict):
    deleted: bool
    namespace: str
    id: str
    version: int | None
    context: str | None


class LockResult(TypedDict):
    namespace: str
    name: str
    holder: NotRequired[str]
    fence: int
    expires_at: int
    ttl_ms: int
    if_fence: str


@with_config(ConfigDict(extra="allow"))
class ReleaseResult(TypedDict):
    released: bool
    namespace: str
    name: str
    fence: int


@with_config(ConfigDict(extra="allow"))
class Task(TypedDict):
    """A task as the queue keeps it (fields added by newer servers are kept)."""

    namespace: str
    id: str
    state: str
    payload: Any
    priority: NotRequired[int]
    attempts: NotRequired[int]
    fence: NotRequired[int | None]
    worker: NotRequired[str | None]


class ClaimResult(TypedDict):
    claimed: bool
    task: Task | None


# -- errors ---------------------------------------------------------------------------------
class ToolInputError(ToolError):
    """Arguments that fit the schema but not each other (answered as invalid_request)."""


HINTS = {
    "invalid_request": "Fix the arguments as the message says; nothing was changed.",
    "not_found": "There is no such memory, lock or task (or it expired).",
    "precondition_failed": "The memory changed since the version you gave (if_match), or already exists "
    "(create_only): read it again and decide.",
    "fenced": "Your lock or task claim is no longer yours (it ran out or moved on): stop the work it guarded.",
    "lock_held": "Another holder has the lock: wait for it (wait_ms) or try again later.",
    "conflict": "The request conflicts with the store's state; read it again and decide.",
    "unauthorized": "This MCP server's raftmem token is missing or unknown: its operator must fix it.",
    "forbidden": "This MCP server's raftmem token may not do this (its role or namespaces).",
    "indeterminate": "The write may or may not have happened: read it back (consistency 'linearizable') "
    "before trying again.",
}
RETRY_HINT = "Nothing happened; it is safe to try again shortly."


def error_payload(code: str, status: int, message: str, *, retryable: bool = False, hint: str | None = None,
                  details: dict[str, Any] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "status": status, "message": message, "retryable": retryable,
                             "hint": hint if hint is not None else HINTS.get(code, "")}
    if details:
        error["details"] = details
    return {"error": error}


def client_error_payload(e: ClientError) -> dict[str, Any]:
    """A raftmem.client error as a tool's error: its code, what the store said
    beyond it, and what to do (by the error's kind first: a lost answer to a
    write is indeterminate whatever its code)."""
    body = e.body.get("error") if isinstance(e.body, dict) else None
    details = {k: v for k, v in body.items() if k not in ("code", "message")} if isinstance(body, dict) else None
    if isinstance(e, Indeterminate):
        hint = HINTS["indeterminate"]
    elif isinstance(e, Unavailable):
        hint = RETRY_HINT
    else:
        hint = HINTS.get(e.code, "")
    return error_payload(e.code, e.status, e.message, retryable=isinstance(e, Unavailable), hint=hint,
                         details=details)


def error_result(payload: dict[str, Any]) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=orjson.dumps(payload).decode())],
                          structured_content=payload, is_error=True)


def _invalid(e: Exception) -> dict[str, Any]:
    if isinstance(e, ValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'arguments'}: {err['msg']}"
                             for err in e.errors())
        return error_payload("invalid_request", 400, problems)
    return error_payload("invalid_request", 400, str(e))


class RaftmemMCPServer(MCPServer[None]):
    """MCPServer whose tool failures are answered with raftmem's error codes
    (`call_tool` is MCPServer's documented entry for every tool call)."""

    async def call_tool(self, name: str, arguments: dict[str, Any],
                        context: Context[None, Any] | None = None) -> CallToolResult | InputRequiredResult:
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as e:
            cause = e.__cause__
            if isinstance(cause, ClientError):
                log.info("tool %s: %s", name, cause)
                return error_result(client_error_payload(cause))
            if isinstance(cause, ValidationError | ToolInputError | ValueError):
                log.info("tool %s: bad arguments: %s", name, cause)
                return error_result(_invalid(cause))
            raise


# -- the tools --------------------------------------------------------------------------------
def _lease_view(lease: Lease) -> LockResult:
    return {"namespace": lease.namespace, "name": lease.name, "fence": lease.fence, "expires_at": lease.expires_at,
            "ttl_ms": lease.ttl_ms, "if_fence": lease.if_fence}


def _covered(changes: list[WatchEvent], positions: dict[int, int]) -> bool:
    return all(positions.get(c.shard, -1) >= c.index for c in changes)


def _change(event: WatchEvent) -> Change:
    return {"type": event.type, "namespace": event.namespace, "id": event.id, "version": event.version,
            "prev_version": event.prev_version, "token": event.token, "time_ms": event.time_ms,
            "record": event.record}


def _memory(body: Any) -> Memory:
    if not isinstance(body, dict):
        raise TypeError(f"the store answered {body!r} where a memory was expected")
    return cast(Memory, body)


class Tools:
    """The tools and resources, over one AsyncClient and one causal context."""

    def __init__(self, client: AsyncClient, namespace: str | None = None, *,
                 recent_write_s: float = RECENT_WRITE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.namespace = namespace
        self.session: AsyncSession = client.session()  # holds the context; requests go through the client
        self.holder = default_holder()  # lock holder and task worker unless told
        self._clock = clock
        self.recent_write_s = recent_write_s
        self._wrote_at: dict[int, float] = {}  # shard -> when this server last wrote to it

    def _read_level(self, namespace: str, memory_id: str, level: str) -> str:
        """A session read of a shard this server wrote to a moment ago goes to its
        leader as a strong read, which has the write at once (a follower learns
        of it only with the leader's next heartbeat: measured, a session read
        right after a write took 50 ms at the median, a strong one 0.5 ms).
        Strong includes all a session read promises."""
        if level != "session":
            return level
        shard = self.client.shard_of(namespace, memory_id)
        wrote_at = self._wrote_at.get(shard) if shard is not None else None
        recent = wrote_at is not None and self._clock() - wrote_at < self.recent_write_s
        return "strong" if recent else level

    def _wrote(self, response: Response) -> None:
        self._observe(response)
        parsed = parse_token(response.token) if response.token else None
        if parsed is not None:
            self._wrote_at[parsed[0]] = self._clock()

    def _ns(self, namespace: str | None) -> str:
        ns = namespace or self.namespace
        if not ns:
            raise ToolInputError("namespace is required (this server has no default namespace)")
        return ns

    def _continue(self, context: str | None) -> str | None:
        """The context to send: this server's, advanced by the one given."""
        if context:
            self.session.observe_context(context)
        return self.session.context

    def _observe(self, response: Response) -> None:
        self.session.observe(response.token)
        self.session.observe_context(response.headers.get(HEADER_CONTEXT))
        if isinstance(response.body, dict):
            self.session.observe(response.body.get("token"))

    # -- memories -------------------------------------------------------------------------
    async def memory_put(
        self,
        id: MemoryId,
        content: Content,
        namespace: Namespace = None,
        tags: Tags = None,
        kind: Annotated[str | None, Field(description="What sort of memory: e.g. 'episodic', 'fact', "
                                          "'plan'.", max_length=64)] = None,
        agent_id: Annotated[str | None, Field(description="Who wrote it (your agent's name).",
                                              max_length=256)] = None,
        metadata: Annotated[dict[str, Any] | None, Field(description="Any JSON object of extra fields.")] = None,
        ttl_s: Annotated[float | None, Field(description="Delete it this many seconds after this write "
                                             "(at least 1).", ge=1)] = None,
        ttl_sliding: Annotated[bool, Field(description="With ttl_s: every read extends it again (it expires "
                                           "ttl_s after it was last read or written).")] = False,
        if_match: Annotated[int | None, Field(description="Write only if the memory is still at this "
                                              "version (compare-and-set; else 'precondition_failed').",
                                              ge=1)] = None,
        create_only: Annotated[bool, Field(description="Write only if no memory has this id yet "
                                           "(else 'precondition_failed').")] = False,
        if_fence: IfFence = None,
        context: ContextIn = None,
    ) -> PutResult:
        """Store a memory (create it, or replace its content) under namespace/id. The write is
        replicated to a majority of nodes before this returns, so it survives any single
        node failure. Returns the memory with its new `version` (pass it as `if_match` for a
        safe read-modify-write) and this server's causal `context`."""
        response = await self.client.put_raw(
            self._ns(namespace), id, content, agent_id=agent_id, kind=kind, tags=tags, metadata=metadata,
            ttl_s=ttl_s, ttl_refresh_on_read=ttl_sliding and ttl_s is not None, actor=agent_id, if_match=if_match,
            if_none_match=create_only, if_fence=if_fence,
            context=self._continue(context),
        )
        self._wrote(response)
        return {"memory": _memory(response.body), "context": self.session.context}

    async def memory_get(
        self,
        id: MemoryId,
        namespace: Namespace = None,
        consistency: Annotated[Level, Field(description=CONSISTENCY_HELP)] = "session",
        max_staleness_ms: Annotated[int | None, Field(description="With consistency 'bounded': how old "
                                                      "the answer may be, in ms.", ge=0)] = None,
        context: ContextIn = None,
    ) -> GetResult:
        """Read one memory by namespace and id. By default (consistency 'session') it includes
        every write made through this server, whichever node answers. Fails with code
        'not_found' when there is no such memory."""
        if consistency == "bounded" and max_staleness_ms is None:
            raise ToolInputError("consistency 'bounded' needs max_staleness_ms")
        ns = self._ns(namespace)
        sent = self._continue(context)
        try:
            response = await self.client.get_raw(
                ns, id, consistency=self._read_level(ns, id, consistency),
                max_staleness_ms=max_staleness_ms if consistency == "bounded" else None, context=sent,
            )
        except NotFound as e:
            # What the answering replica had applied: later reads see no older state.
            if isinstance(e.body, dict) and isinstance(e.body.get("error"), dict):
                self.session.observe(e.body["error"].get("token"))
            raise
        self._observe(response)
        return {"memory": _memory(response.body), "consistency": response.headers.get(HEADER_CONSISTENCY),
                "served_by": response.served_by, "context": self.session.context}

    async def memory_list(
        self,
        namespace: Namespace = None,
        tag: Annotated[str | None, Field(description="Only memories with this tag.")] = None,
        agent_id: Annotated[str | None, Field(description="Only memories written by this agent.")] = None,
        since: Annotated[int | None, Field(description="Only memories created at or after this time "
                                           "(ms since the epoch).", ge=0)] = None,
        until: Annotated[int | None, Field(description="Only memories created before this time "
                                           "(ms since the epoch).", ge=0)] = None,
        limit: Annotated[int, Field(description="At most this many.", ge=1,
                                    le=LIST_LIMIT_MAX)] = LIST_LIMIT_DEFAULT,
        cursor: Annotated[str | None, Field(description="The `cursor` of the previous page, for the next.")]
        = None,
        consistency: Annotated[Literal["strong", "linearizable", "eventual"] | None,
                               Field(description=LIST_CONSISTENCY_HELP)] = None,
    ) -> ListResult:
        """List the memories of a namespace, oldest first (by creation time), optionally those
        with a tag or by an agent. A page holds at most `limit`; when `cursor` is not null,
        pass it back for the next page."""
        page = await self.client.list_page(
            self._ns(namespace), agent_id=agent_id, tag=tag, since=since, until=until, limit=limit,
            cursor=cursor, consistency=consistency,
        )
        items = [_memory(m) for m in page.get("items") or ()]
        return {"items": items, "count": len(items), "cursor": page.get("cursor"), "consistency": consistency}

    async def memory_delete(
        self,
        id: MemoryId,
        namespace: Namespace = None,
        if_match: Annotated[int | None, Field(description="Delete only if the memory is still at this "
                                              "version (else 'precondition_failed').", ge=1)] = None,
        if_fence: IfFence = None,
        context: ContextIn = None,
    ) -> DeleteResult:
        """Delete a memory. Fails with code 'not_found' when there is no such memory."""
        ns = self._ns(namespace)
        response = await self.client.delete_raw(ns, id, if_match=if_match, if_fence=if_fence,
                                                context=self._continue(context))
        self._wrote(response)
        body = response.body if isinstance(response.body, dict) else {}
        return {"deleted": bool(body.get("deleted", True)), "namespace": ns, "id": id,
                "version": body.get("version"), "context": self.session.context}

    # -- recall ------------------------------------------------------------------------------
    async def memory_search(
        self,
        query: Annotated[str | None, Field(description="Words to look for (full-text, best match first). "
                                           "Leave out to list by filter, newest first.", max_length=4096)] = None,
        namespace: Namespace = None,
        namespace_prefix: Annotated[str | None, Field(
            description="Search this namespace and every namespace below it ('team-a' covers 'team-a.notes', "
            "never 'team-ab'), instead of one namespace.", pattern=NAME_PATTERN, max_length=128)] = None,
        filter: Annotated[dict[str, Any] | None, Field(description=FILTER_HELP)] = None,
        limit: Annotated[int, Field(description="At most this many.", ge=1, le=SEARCH_LIMIT_MAX)] = 10,
        cursor: Annotated[str | None, Field(description="The `cursor` of the previous page, for the next.")]
        = None,
        consistency: Annotated[Literal["session", "linearizable", "eventual"],
                               Field(description=SEARCH_CONSISTENCY_HELP)] = "session",
        context: ContextIn = None,
    ) -> SearchResult:
        """Recall memories by what they say (full-text search, best match first) and/or by their
        fields (filter), in a namespace or under a namespace prefix. Each hit is the memory with
        its `score`. When `more` is true, pass `cursor` back for the next page."""
        # 'session' is the server's default when the request carries a context.
        response = await self.client.search_raw(
            None if namespace_prefix else self._ns(namespace), query, namespace_prefix=namespace_prefix or None,
            filter=filter, limit=limit, cursor=cursor, fresh=consistency == "linearizable",
            consistency="eventual" if consistency == "eventual" else None, context=self._continue(context))
        self.session.observe_context(response.headers.get(HEADER_CONTEXT))
        body = response.body if isinstance(response.body, dict) else {}
        return {"items": cast(list[Hit], body.get("items") or []), "more": bool(body.get("more")),
                "cursor": body.get("cursor"), "index_lag": body.get("index_lag") or {},
                "context": self.session.context}

    async def namespace_list(
        self,
        prefix: Annotated[str | None, Field(description="Only namespaces starting with these labels "
                                            "('team-a' or 'team-a.*': '*' is any one label).",
                                            max_length=128)] = None,
        max_depth: Annotated[int | None, Field(description="Cut names to this many labels (deduplicated).",
                                               ge=1, le=64)] = None,
        limit: Annotated[int, Field(description="At most this many.", ge=1, le=1000)] = 100,
    ) -> NamespacesResult:
        """The namespaces that hold memories (dotted labels), in order. Served by the nearest
        replicas: one created a moment ago may take a moment to be listed."""
        return {"namespaces": await self.client.list_namespaces(prefix=prefix, max_depth=max_depth, limit=limit)}

    # -- changes -----------------------------------------------------------------------------
    async def memory_watch(
        self,
        namespace: Namespace = None,
        namespace_prefix: Annotated[str | None, Field(
            description="Watch this namespace and every namespace below it, instead of one namespace.",
            pattern=NAME_PATTERN, max_length=128)] = None,
        agent_id: Annotated[str | None, Field(description="Only changes to memories of this agent.")] = None,
        tag: Annotated[str | None, Field(description="Only changes to memories with this tag.")] = None,
        after: Annotated[str | None, Field(
            description="The `tokens` of your previous memory_watch: continue exactly where it left off "
            "(no change missed or repeated). Leave out to start from now.")] = None,
        timeout_ms: Annotated[int, Field(description="How long to wait for a change, in ms.", ge=0,
                                         le=WAIT_MS_MAX)] = 10_000,
        max_changes: Annotated[int, Field(description="Return at most this many changes.", ge=1,
                                          le=WATCH_CHANGES_MAX)] = 20,
    ) -> WatchResult:
        """Wait for the next changes to memories (puts, deletes, expiries), committed ones only,
        in log order: returns as soon as some arrive, or with none (timed_out) after timeout_ms.
        Call again with `after` set to the returned `tokens` to wait for the ones after those."""
        where = {"namespace_prefix": namespace_prefix} if namespace_prefix else (
            {"namespace": self._ns(namespace)} if namespace or self.namespace else {})
        watch = self.client.watch(**where, agent_id=agent_id, tag=tag, after=after or None, progress=True,
                                  outage_s=timeout_ms / 1000 + 1)
        changes: list[WatchEvent] = []
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_ms / 1000
        try:
            while len(changes) < max_changes:
                # The first change may take until the deadline; the rest of a burst, a moment.
                wait_s = deadline - loop.time() if not changes else min(WATCH_GATHER_S, deadline - loop.time())
                if wait_s <= 0:
                    break
                try:
                    item = await asyncio.wait_for(watch.__anext__(), wait_s)
                except (TimeoutError, StopAsyncIteration):
                    if changes and not _covered(changes, watch.positions):
                        continue  # finish the log entry under way (its last event), then stop
                    break
                if isinstance(item, WatchEvent):
                    changes.append(item)
        finally:
            await watch.close()
        # Only whole log entries: those the tokens cover (the rest comes with the next call).
        given = [c for c in changes if watch.positions.get(c.shard, -1) >= c.index]
        return {"changes": [_change(c) for c in given], "tokens": watch.tokens or after or None,
                "timed_out": not given}

    async def memory_history(
        self,
        id: MemoryId,
        namespace: Namespace = None,
        consistency: Annotated[Literal["strong", "linearizable", "eventual"], Field(
            description="'strong' (default): the shard leader's history, every write included; "
            "'linearizable': the same, confirmed by a majority; 'eventual': the nearest replica's.")] = "strong",
        limit: Annotated[int | None, Field(description="At most this many versions, newest first.", ge=1,
                                           le=HISTORY_LIMIT_MAX)] = None,
    ) -> HistoryResult:
        """The last versions of a memory, newest first: each write (put), delete and expiry, with
        its value, who wrote it and when. Fails with code 'not_found' when it has none."""
        ns = self._ns(namespace)
        versions = await self.client.history(ns, id, consistency=consistency, limit=limit)
        return {"namespace": ns, "id": id, "versions": cast(list[Version], versions)}

    # -- locks ------------------------------------------------------------------------------
    async def lock_acquire(
        self,
        name: LockName,
        ttl_ms: Annotated[int, Field(description="How long the lock is yours unless renewed, in ms.",
                                     ge=1)],
        namespace: Namespace = None,
        wait_ms: WaitMs = 0,
        holder: Annotated[str | None, Field(description="Your name as the holder (default: this "
                                            "server's).", max_length=256)] = None,
    ) -> LockResult:
        """Take a lock for ttl_ms, waiting in turn up to wait_ms while someone else holds it
        (then it fails with code 'lock_held', naming the holder). Returns a `fence`: pass the
        returned `if_fence` to memory_put/memory_delete to make writes that fail once the lock is
        no longer yours, and the fence to lock_release when done."""
        lease = await self.client.acquire_lock(self._ns(namespace), name, ttl_ms=ttl_ms,
                                               holder=holder or self.holder, wait_ms=wait_ms)
        return {**_lease_view(lease), "holder": lease.holder}

    async def lock_renew(
        self,
        name: LockName,
        fence: Fence,
        ttl_ms: Annotated[int, Field(description="The new lease, from now, in ms.", ge=1)],
        namespace: Namespace = None,
    ) -> LockResult:
        """Extend a lock you hold (same fence). Fails with code 'fenced' when it is no longer yours."""
        ns = self._ns(namespace)
        return _lease_view(await self.client.renew_lock(Lease(ns, name, "", fence, 0, ttl_ms, 0.0), ttl_ms))

    async def lock_release(
        self,
        name: LockName,
        fence: Fence,
        namespace: Namespace = None,
    ) -> ReleaseResult:
        """Release a lock you hold. Fails with code 'fenced' when it was no longer yours."""
        ns = self._ns(namespace)
        body = await self.client.release_lock(Lease(ns, name, "", fence, 0, 0, 0.0))
        return {**body, "released": True, "namespace": ns, "name": name, "fence": fence}  # type: ignore[typeddict-item]

    # -- tasks ------------------------------------------------------------------------------
    async def task_add(
        self,
        payload: Annotated[Any, Field(description="What the task is: any JSON.")],
        namespace: Namespace = None,
        priority: Annotated[int, Field(description="Higher is claimed first.", ge=0, le=1_000_000)] = 0,
        delay_ms: Annotated[int | None, Field(description="Not claimable before this many ms from now.",
                                              ge=0)] = None,
        max_attempts: Annotated[int | None, Field(description="Claims before it is dead-lettered.",
                                                  ge=1)] = None,
        task_id: Annotated[str | None, Field(description="Its id (default: chosen by the store); adding "
                                             "the same id twice adds it once.", pattern=NAME_PATTERN,
                                             max_length=256)] = None,
    ) -> Task:
        """Put a task on the namespace's queue, for a worker to claim with task_claim."""
        body = await self.client.enqueue_task(self._ns(namespace), payload, priority=priority, task_id=task_id,
                                              delay_ms=delay_ms, max_attempts=max_attempts)
        return cast(Task, body)

    async def task_claim(
        self,
        lease_ms: Annotated[int, Field(description="How long the task is yours to finish, in ms; unfinished "
                                       "by then, it goes back to the queue.", ge=1)],
        namespace: Namespace = None,
        wait_ms: WaitMs = 0,
        worker: Annotated[str | None, Field(description="Your name as the worker (default: this server's).",
                                            max_length=256)] = None,
    ) -> ClaimResult:
        """Claim the next task (highest priority, then oldest): it is yours alone for lease_ms.
        Returns claimed=false when none is ready within wait_ms. Finish it with task_complete
        (or task_fail) passing its `id` and `fence`."""
        body = await self.client.claim_task(self._ns(namespace), lease_ms=lease_ms, worker=worker or self.holder,
                                            wait_ms=wait_ms)
        return {"claimed": body is not None, "task": cast(Task | None, body)}

    async def task_complete(
        self,
        task_id: TaskId,
        fence: Fence,
        namespace: Namespace = None,
        result: Annotated[Any, Field(description="What came of it: any JSON.")] = None,
    ) -> Task:
        """Mark a task you claimed done. Fails with code 'fenced' when your claim ran out and the
        task moved on (someone else may be doing it: do not report it done)."""
        body = await self.client.complete_task(self._ns(namespace), task_id, fence, result)
        return cast(Task, body)

    async def task_fail(
        self,
        task_id: TaskId,
        fence: Fence,
        namespace: Namespace = None,
        error: Annotated[str | None, Field(description="What went wrong.", max_length=4096)] = None,
        retry: Annotated[bool, Field(description="Put it back on the queue (after a back-off) rather "
                                     "than dead-lettering it.")] = True,
    ) -> Task:
        """Give a claimed task up: back to the queue (or dead once out of attempts, or with
        retry=false). Fails with code 'fenced' when your claim had already run out."""
        body = await self.client.fail_task(self._ns(namespace), task_id, fence, error, retry)
        return cast(Task, body)

    # -- resources --------------------------------------------------------------------------
    async def namespaces_resource(self) -> str:
        """Every namespace holding memories, as a JSON list."""
        try:
            names = await self.client.list_namespaces(limit=NAMESPACES_RESOURCE_MAX)
        except (ClientError, ValueError) as e:
            raise ResourceError(str(e)) from e
        return orjson.dumps(names).decode()

    async def memory_resource(self, namespace: str, id: str) -> str:
        """A memory as JSON, read at 'session' consistency (it includes this server's writes)."""
        try:
            response = await self.client.get_raw(namespace, id, consistency=self._read_level(namespace, id, "session"),
                                                 context=self.session.context)
        except NotFound as e:
            raise ResourceNotFoundError(f"no memory {namespace}/{id}") from e
        except (ClientError, ValueError) as e:
            raise ResourceError(str(e)) from e
        self._observe(response)
        return orjson.dumps(response.body).decode()


READ_ONLY = ToolAnnotations(read_only_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False,
                        open_world_hint=False)
OVERWRITE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True,
                            open_world_hint=False)
DELETE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False,
                         open_world_hint=False)
# name -> annotations: every tool this server offers.
TOOLS: dict[str, ToolAnnotations] = {
    "memory_put": OVERWRITE,
    "memory_get": READ_ONLY,
    "memory_list": READ_ONLY,
    "memory_delete": DELETE,
    "memory_watch": READ_ONLY,
    "memory_history": READ_ONLY,
    "memory_search": READ_ONLY,
    "namespace_list": READ_ONLY,
    "lock_acquire": WRITE,
    "lock_renew": WRITE,
    "lock_release": WRITE,
    "task_add": WRITE,
    "task_claim": WRITE,
    "task_complete": WRITE,
    "task_fail": WRITE,
}


def instructions(namespace: str | None) -> str:
    default = (f"The default namespace is '{namespace}': tools use it when `namespace` is left out."
               if namespace else "There is no default namespace: give `namespace` to every tool.")
    return (
        "raftmem: memory shared by a fleet of agents, replicated on several nodes (a write is kept once "
        "it returns). Memories live under a namespace and an id. Reads include your own writes by "
        "default. To coordinate, take a lock (lock_acquire, then write with its if_fence) or claim a "
        f"task (task_claim, then task_complete). Errors carry a code and a hint. {default}"
    )


def build_server(client: AsyncClient, *, namespace: str | None = None, name: str = SERVER_NAME,
                 close_client: bool = True, recent_write_s: float = RECENT_WRITE_S) -> RaftmemMCPServer:
    """The MCP server over `client`. With `close_client`, the client is closed
    when the server's lifespan ends (it reopens its connections if used again).
    `recent_write_s`: see Tools._read_level (0: session reads stay session reads)."""

    @asynccontextmanager
    async def lifespan(_server: MCPServer[None]) -> AsyncIterator[None]:
        try:
            yield None
        finally:
            if close_client:
                await client.close()

    tools = Tools(client, namespace, recent_write_s=recent_write_s)
    server = RaftmemMCPServer(name, instructions=instructions(namespace), lifespan=lifespan)
    for tool, hints in TOOLS.items():
        server.add_tool(getattr(tools, tool), name=tool, annotations=hints, structured_output=True)
    server.resource("raftmem://namespaces", name="namespaces", mime_type="application/json",
                    description="Every namespace that holds memories (a JSON list).")(tools.namespaces_resource)
    server.resource("raftmem://memory/{namespace}/{id}", name="memory", mime_type="application/json",
                    description="A memory as JSON (read-your-writes).",
                    # Names are raftmem's ([A-Za-z0-9._:-]) and never paths: '..' is a fine id.
                    security=ResourceSecurity(exempt_params={"namespace", "id"}))(tools.memory_resource)
    return server


def serve(urls: Sequence[str], *, transport: Literal["stdio", "streamable-http"] = "stdio",
          host: str = "127.0.0.1", port: int = 8790, namespace: str | None = None, token: str | None = None,
          ssl_context: ssl.SSLContext | None = None) -> None:
    """Run the server until its transport ends (stdin closes, or a signal)."""
    client = AsyncClient(urls, token=token, ssl_context=ssl_context)
    server = build_server(client, namespace=namespace)
    if transport == "stdio":
        server.run("stdio")
    else:
        server.run("streamable-http", host=host, port=port)
