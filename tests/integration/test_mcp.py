"""The MCP server (raftmem/integrations/mcp.py) against a real 3-node cluster:
driven in-process by the `mcp` client, and over stdio as `raftmem mcp` in a
subprocess, as an agent host runs it."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.types import CallToolResult, TextResourceContents

from raftmem.client import AsyncClient
from raftmem.integrations.mcp import TOOLS, build_server

from .cluster import REPO, Cluster, free_port_block, wait_for

NS = "mcp-it"
T = TypeVar("T")


async def _eventually(call: Callable[[], Awaitable[T]], check: Callable[[T], bool], timeout_s: float = 10) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        result = await call()
        if check(result) or time.monotonic() > deadline:
            assert check(result), result
            return result
        await asyncio.sleep(0.05)


def _urls(cluster: Cluster, nodes: list[str] | None = None) -> list[str]:
    return [f"http://127.0.0.1:{cluster.http[n]}" for n in nodes or cluster.node_ids]


@asynccontextmanager
async def _connected(cluster: Cluster, namespace: str | None = NS, nodes: list[str] | None = None,
                     **kw: Any) -> AsyncIterator[Client]:
    server = build_server(AsyncClient(_urls(cluster, nodes)), namespace=namespace, **kw)
    async with Client(server) as client:
        yield client


def _ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def _error(result: CallToolResult) -> dict[str, Any]:
    assert result.is_error, result.structured_content
    assert result.structured_content is not None, result.content
    error: dict[str, Any] = result.structured_content["error"]
    # The text an LLM reads carries the same error.
    text = result.content[0].text  # type: ignore[union-attr]
    assert json.loads(text)["error"]["code"] == error["code"]
    return error


async def test_every_tool_is_listed_with_its_input_and_output_schema(cluster: Cluster) -> None:
    async with _connected(cluster) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == set(TOOLS)
    for tool in tools.values():
        assert tool.description and tool.output_schema, tool.name
        assert tool.input_schema["type"] == "object"
    get = tools["memory_get"].input_schema["properties"]
    assert get["consistency"]["enum"] == ["session", "strong", "linearizable", "causal", "bounded", "eventual"]
    assert get["consistency"]["default"] == "session"
    assert "linearizable" in get["consistency"]["description"] and "stale" not in tools["memory_get"].input_schema
    assert tools["memory_put"].input_schema["required"] == ["id", "content"]
    assert tools["memory_get"].annotations is not None and tools["memory_get"].annotations.read_only_hint
    assert "memory" in tools["memory_put"].output_schema["properties"]


async def test_memories_are_written_read_listed_and_deleted_through_the_tools(cluster: Cluster) -> None:
    async with _connected(cluster) as client:
        put = _ok(await client.call_tool("memory_put", {
            "id": "plan", "content": {"step": 1}, "tags": ["plan"], "kind": "fact", "agent_id": "planner",
            "metadata": {"source": "test"}}))
        memory = put["memory"]
        assert (memory["namespace"], memory["id"], memory["content"], memory["version"]) == (NS, "plan", {"step": 1}, 1)
        assert memory["tags"] == ["plan"] and memory["agent_id"] == "planner" and put["context"]

        got = _ok(await client.call_tool("memory_get", {"id": "plan"}))
        assert got["memory"]["content"] == {"step": 1} and got["consistency"] == "strong"  # just written
        assert got["served_by"] in cluster.node_ids
        linear = _ok(await client.call_tool("memory_get", {"id": "plan", "consistency": "linearizable"}))
        assert linear["consistency"] == "linearizable"

        # Compare-and-set: the old version is refused, the current one accepted.
        second = _ok(await client.call_tool("memory_put", {"id": "plan", "content": {"step": 2}, "if_match": 1}))
        assert second["memory"]["version"] == 2
        stale = _error(await client.call_tool("memory_put", {"id": "plan", "content": {"step": 3}, "if_match": 1}))
        assert stale["code"] == "precondition_failed" and stale["status"] == 412 and not stale["retryable"]
        exists = _error(await client.call_tool("memory_put", {"id": "plan", "content": 0, "create_only": True}))
        assert exists["code"] == "precondition_failed"

        for i in range(3):
            _ok(await client.call_tool("memory_put", {"id": f"note-{i}", "content": f"note {i}", "tags": ["note"]}))
        listed = _ok(await client.call_tool("memory_list", {"tag": "note", "limit": 2}))
        assert [m["id"] for m in listed["items"]] == ["note-0", "note-1"] and listed["cursor"]
        rest = _ok(await client.call_tool("memory_list", {"tag": "note", "cursor": listed["cursor"]}))
        assert [m["id"] for m in rest["items"]] == ["note-2"] and rest["cursor"] is None

        deleted = _ok(await client.call_tool("memory_delete", {"id": "plan"}))
        assert deleted["deleted"] and deleted["version"] is not None
        gone = _error(await client.call_tool("memory_get", {"id": "plan"}))
        assert (gone["code"], gone["status"]) == ("not_found", 404)
        again = _error(await client.call_tool("memory_delete", {"id": "plan"}))
        assert again["code"] == "not_found"

        # Another namespace than the default, named per call.
        other = _ok(await client.call_tool("memory_put", {"namespace": "mcp-it.other", "id": "x", "content": 1}))
        assert other["memory"]["namespace"] == "mcp-it.other"


async def test_bad_input_comes_back_as_a_tool_error_with_a_code_and_changes_nothing(cluster: Cluster) -> None:
    async with _connected(cluster) as client:
        cases: list[tuple[str, dict[str, Any]]] = [
            ("memory_put", {"id": "has space", "content": 1}),        # the id pattern
            ("memory_put", {"content": 1}),                            # id missing
            ("memory_put", {"id": "ttl", "content": 1, "ttl_s": 0.5}),  # below the schema's bound
            ("memory_get", {"id": "x", "consistency": "fresh"}),       # not a level
            ("memory_get", {"id": "x", "consistency": "bounded"}),     # bounded without its bound
            ("memory_list", {"limit": 5000}),
            ("lock_acquire", {"name": "l", "ttl_ms": 1000, "wait_ms": -1}),
        ]
        for tool, arguments in cases:
            error = _error(await client.call_tool(tool, arguments))
            assert (error["code"], error["status"], error["retryable"]) == ("invalid_request", 400, False), (
                tool, arguments, error)
        # Refused by the store itself (a malformed fence): its code and message come through.
        error = _error(await client.call_tool("memory_put", {"id": "fenced", "content": 1, "if_fence": "garbage"}))
        assert error["code"] == "invalid_request" and "If-Fence" in error["message"]
        assert _error(await client.call_tool("memory_get", {"id": "fenced"}))["code"] == "not_found"
        assert _error(await client.call_tool("memory_get", {"id": "ttl"}))["code"] == "not_found"
        unknown = await client.call_tool("no_such_tool", {})
        assert unknown.is_error

    # No default namespace: a tool without one says so.
    async with _connected(cluster, namespace=None) as client:
        error = _error(await client.call_tool("memory_get", {"id": "x"}))
        assert error["code"] == "invalid_request" and "namespace" in error["message"]


async def test_an_agent_reads_its_own_writes_whichever_node_serves_the_read(cluster: Cluster) -> None:
    """Every read right after a write, at the default level, sees that write,
    though replicas (followers included) serve most of them: the server passes
    its causal context with each request."""
    served: set[str] = set()
    async with _connected(cluster, recent_write_s=0) as client:  # session reads only, from any replica
        for i in range(40):
            put = _ok(await client.call_tool("memory_put", {"id": f"ryw-{i % 4}", "content": {"i": i}}))
            got = _ok(await client.call_tool("memory_get", {"id": f"ryw-{i % 4}"}))
            assert got["memory"]["content"] == {"i": i}, (i, got)
            assert got["memory"]["version"] == put["memory"]["version"]
            assert got["consistency"] == "session"
            served.add(got["served_by"])
    assert len(served) >= 2, served  # replicas answered, not only the leaders


async def test_a_read_right_after_a_write_is_served_by_the_leader(cluster: Cluster) -> None:
    """By default, for a moment after this server wrote to a shard, its session
    reads of the shard are strong reads at the leader, which has the write at
    once (a follower waits for the next heartbeat). The unit tests check the
    moment's end with a manual clock."""
    async with _connected(cluster) as client:
        _ok(await client.call_tool("memory_put", {"id": "fresh", "content": 1}))
        got = _ok(await client.call_tool("memory_get", {"id": "fresh"}))
        leader = cluster.leader_of(cluster.shard_of(NS, "fresh"))
        assert got["consistency"] == "strong" and got["served_by"] == leader


async def test_a_context_handed_to_another_agent_lets_it_read_what_the_first_wrote(cluster: Cluster) -> None:
    """Two MCP servers (two agents), each on its own node: the second reads
    causally with the first's context."""
    async with _connected(cluster, nodes=["n1"]) as writer, _connected(cluster, nodes=["n3"]) as reader:
        put = _ok(await writer.call_tool("memory_put", {"id": "handoff", "content": "from the writer"}))
        got = _ok(await reader.call_tool("memory_get", {"id": "handoff", "consistency": "causal",
                                                         "context": put["context"]}))
        assert got["memory"]["content"] == "from the writer"
        # The reader's own context now covers the writer's write.
        token_shard = put["memory"]["token"].split(":")[0]
        assert any(t.startswith(token_shard + ":") for t in got["context"].split(","))


async def test_an_agent_recalls_by_text_and_fields_and_finds_its_own_writes_at_once(cluster: Cluster) -> None:
    """Searches default to session: what this server just wrote is found at
    once, from whichever node serves the search."""
    ns = f"mcp-recall-{time.time_ns()}"
    async with _connected(cluster, namespace=ns) as client:
        notes = {"n1": ("the deploy of v42 was rolled back", ["deploy"], 3),
                 "n2": ("tea and cake at four", ["social"], 1),
                 "n3": ("rollback again: deploy v43 failed", ["deploy"], 2)}
        for mid, (text, tags, severity) in notes.items():
            _ok(await client.call_tool("memory_put", {"id": mid, "content": {"text": text, "severity": severity},
                                                      "tags": tags}))
        found = _ok(await client.call_tool("memory_search", {"query": "deploy rollback"}))
        assert {h["id"] for h in found["items"]} == {"n1", "n3"} and found["context"]
        assert all(h["score"] > 0 for h in found["items"]) and "index_lag" in found
        hits = _ok(await client.call_tool("memory_search", {"filter": {"tags": "deploy",
                                                                       "content.severity": {"$gte": 3}}}))
        assert [h["id"] for h in hits["items"]] == ["n1"]
        _ok(await client.call_tool("memory_put", {"namespace": f"{ns}.sub", "id": "n4",
                                                  "content": {"text": "deploy from below"}}))
        below = _ok(await client.call_tool("memory_search", {"namespace_prefix": ns, "query": "deploy",
                                                             "consistency": "linearizable", "limit": 1}))
        assert len(below["items"]) == 1 and below["more"] and below["cursor"]
        rest = _ok(await client.call_tool("memory_search", {"namespace_prefix": ns, "query": "deploy",
                                                            "cursor": below["cursor"], "limit": 10}))
        assert {h["id"] for h in below["items"] + rest["items"]} == {"n1", "n3", "n4"}
        bad = _error(await client.call_tool("memory_search", {"filter": {"content.x": {"$near": 1}}}))
        assert bad["code"] == "invalid_request" and "$near" in bad["message"]

        # Namespaces are listed by the nearest replicas: eventually.
        await _eventually(lambda: client.call_tool("namespace_list", {"prefix": ns}),
                          lambda r: _ok(r)["namespaces"] == [ns, f"{ns}.sub"])
        listed = await client.read_resource("raftmem://namespaces")
        contents = listed.contents[0]
        assert isinstance(contents, TextResourceContents) and ns in json.loads(contents.text)


async def test_an_agent_waits_for_changes_and_reads_a_memorys_history(cluster: Cluster) -> None:
    ns = f"mcp-feed-{time.time_ns()}"
    async with _connected(cluster, namespace=ns) as watcher, _connected(cluster, namespace=ns) as writer:
        idle = _ok(await watcher.call_tool("memory_watch", {"timeout_ms": 300}))
        assert idle["timed_out"] and idle["changes"] == [] and idle["tokens"]  # where "now" was
        _ok(await writer.call_tool("memory_put", {"id": "a", "content": 1, "agent_id": "w"}))
        _ok(await writer.call_tool("memory_put", {"id": "a", "content": 2, "agent_id": "w"}))
        _ok(await writer.call_tool("memory_put", {"id": "b", "content": 3, "tags": ["x"]}))
        _ok(await writer.call_tool("memory_delete", {"id": "b"}))
        seen: list[dict[str, Any]] = []
        tokens = idle["tokens"]
        while len(seen) < 4:
            got = _ok(await watcher.call_tool("memory_watch", {"after": tokens, "timeout_ms": 5000,
                                                               "max_changes": 1 if not seen else 20}))
            assert not got["timed_out"], (seen, got)
            seen += got["changes"]
            tokens = got["tokens"]
        # Each change once, in log order per shard (so per memory).
        assert [(c["type"], c["version"]) for c in seen if c["id"] == "a"] == [("put", 1), ("put", 2)]
        assert [(c["type"], c["version"]) for c in seen if c["id"] == "b"] == [("put", 1), ("delete", 1)]
        assert len(seen) == 4 and [c["record"]["content"] for c in seen if c["id"] == "a"] == [1, 2]
        quiet = _ok(await watcher.call_tool("memory_watch", {"after": tokens, "timeout_ms": 300}))
        assert quiet["timed_out"] and quiet["changes"] == []  # nothing again, nothing twice

        history = _ok(await writer.call_tool("memory_history", {"id": "a"}))
        assert [(v["event"], v["version"], v["value"]) for v in history["versions"]] == [
            ("put", 2, 2), ("put", 1, 1)]
        assert history["versions"][0]["actor"] == "w"
        gone = _ok(await writer.call_tool("memory_history", {"id": "b", "limit": 1}))
        assert [v["event"] for v in gone["versions"]] == ["delete"]
        assert _error(await writer.call_tool("memory_history", {"id": "never"}))["code"] == "not_found"

        sliding = _ok(await writer.call_tool("memory_put", {"id": "s", "content": 1, "ttl_s": 60,
                                                            "ttl_sliding": True}))
        assert sliding["memory"]["ttl_refresh_on_read"] is True


async def test_locks_fence_writes_and_tasks_are_claimed_once_through_the_tools(cluster: Cluster) -> None:
    async with _connected(cluster) as agent_a, _connected(cluster) as agent_b:
        lock = _ok(await agent_a.call_tool("lock_acquire", {"name": "deploy", "ttl_ms": 10_000}))
        assert lock["fence"] >= 1 and lock["if_fence"] == f"{NS}/deploy:{lock['fence']}"
        # The gate memory lives with its lock (same name, same shard): fenced writes are checked.
        _ok(await agent_a.call_tool("memory_put", {"id": "deploy", "content": "go", "if_fence": lock["if_fence"]}))
        held = _error(await agent_b.call_tool("lock_acquire", {"name": "deploy", "ttl_ms": 1000, "holder": "b"}))
        assert held["code"] == "lock_held" and held["status"] == 409
        assert held["details"]["holder"] == lock["holder"]
        renewed = _ok(await agent_a.call_tool("lock_renew", {"name": "deploy", "fence": lock["fence"],
                                                             "ttl_ms": 20_000}))
        assert renewed["fence"] == lock["fence"] and renewed["expires_at"] >= lock["expires_at"]
        released = _ok(await agent_a.call_tool("lock_release", {"name": "deploy", "fence": lock["fence"]}))
        assert released["released"]
        late = _error(await agent_a.call_tool("memory_put", {"id": "deploy", "content": "late",
                                                             "if_fence": lock["if_fence"]}))
        assert late["code"] == "fenced" and "no longer yours" in late["hint"]
        assert _error(await agent_a.call_tool("lock_release", {"name": "deploy", "fence": lock["fence"]}))[
            "code"] == "fenced"

        added = _ok(await agent_a.call_tool("task_add", {"namespace": "mcp-it.q", "payload": {"job": 1},
                                                         "priority": 5}))
        assert added["state"] == "ready"
        claim = _ok(await agent_b.call_tool("task_claim", {"namespace": "mcp-it.q", "lease_ms": 10_000}))
        assert claim["claimed"] and claim["task"]["id"] == added["id"] and claim["task"]["payload"] == {"job": 1}
        none = _ok(await agent_a.call_tool("task_claim", {"namespace": "mcp-it.q", "lease_ms": 1000,
                                                          "wait_ms": 200}))
        assert none == {"claimed": False, "task": None}
        wrong = _error(await agent_a.call_tool("task_complete", {"namespace": "mcp-it.q", "task_id": added["id"],
                                                                 "fence": claim["task"]["fence"] + 1000}))
        assert wrong["code"] == "fenced"
        done = _ok(await agent_b.call_tool("task_complete", {"namespace": "mcp-it.q", "task_id": added["id"],
                                                             "fence": claim["task"]["fence"], "result": "ok"}))
        assert done["state"] == "done"

        _ok(await agent_a.call_tool("task_add", {"namespace": "mcp-it.q", "payload": 2, "max_attempts": 1}))
        claim = _ok(await agent_b.call_tool("task_claim", {"namespace": "mcp-it.q", "lease_ms": 10_000}))
        failed = _ok(await agent_b.call_tool("task_fail", {"namespace": "mcp-it.q", "task_id": claim["task"]["id"],
                                                           "fence": claim["task"]["fence"], "error": "no",
                                                           "retry": False}))
        assert failed["state"] == "dead"


async def test_a_memory_is_a_resource(cluster: Cluster) -> None:
    async with _connected(cluster) as client:
        templates = (await client.list_resource_templates()).resource_templates
        assert [t.uri_template for t in templates] == ["raftmem://memory/{namespace}/{id}"]
        assert [str(r.uri) for r in (await client.list_resources()).resources] == ["raftmem://namespaces"]
        _ok(await client.call_tool("memory_put", {"id": "as-resource", "content": {"k": "v"}}))
        read = await client.read_resource(f"raftmem://memory/{NS}/as-resource")
        contents = read.contents[0]
        assert isinstance(contents, TextResourceContents) and contents.mime_type == "application/json"
        assert json.loads(contents.text)["content"] == {"k": "v"}
        with pytest.raises(Exception, match="no memory"):
            await client.read_resource(f"raftmem://memory/{NS}/absent")


async def test_raftmem_mcp_serves_over_stdio_as_a_subprocess(cluster: Cluster, tmp_path: Any) -> None:
    """As an agent host runs it: `raftmem mcp --url ... --namespace ...`, MCP on
    its stdin and stdout (nothing else may be written there)."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "cli.main", "mcp", "--url", ",".join(_urls(cluster)), "--namespace", "mcp-stdio"],
        cwd=str(REPO), env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    with open(tmp_path / "stderr.log", "w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=60) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert names == set(TOOLS)
            put = _ok(await client.call_tool("memory_put", {"id": "s-1", "content": "over stdio"}))
            assert put["memory"]["namespace"] == "mcp-stdio"
            got = _ok(await client.call_tool("memory_get", {"id": "s-1"}))
            assert got["memory"]["content"] == "over stdio"
            error = _error(await client.call_tool("memory_get", {"id": "s-2"}))
            assert error["code"] == "not_found"
            error = _error(await client.call_tool("memory_put", {"id": "bad id", "content": 1}))
            assert error["code"] == "invalid_request"
    # Its log went to stderr, never into the protocol on stdout.
    assert "Traceback" not in (tmp_path / "stderr.log").read_text()


async def test_raftmem_mcp_serves_streamable_http_on_loopback(cluster: Cluster, tmp_path: Any) -> None:
    port = free_port_block(1, 1)[0][0]
    with open(tmp_path / "mcp.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "mcp", "--url", ",".join(_urls(cluster)), "--namespace", "mcp-http",
             "--transport", "streamable-http", "--port", str(port)],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _listening(port), 30, "the MCP endpoint to listen")
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            put = _ok(await client.call_tool("memory_put", {"id": "h-1", "content": "over http"}))
            assert put["memory"]["namespace"] == "mcp-http"
            got = _ok(await client.call_tool("memory_get", {"id": "h-1"}))
            assert got["memory"]["content"] == "over http"
            assert _error(await client.call_tool("memory_get", {"id": "h-2"}))["code"] == "not_found"
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_raftmem_mcp_acts_with_the_token_of_its_token_file(tmp_path: Any) -> None:
    """Against a cluster with auth on: the server's requests carry the token
    read from --token-file, so the store's own refusals (a namespace the token
    may not write, no token at all) come back as tool errors with their codes."""
    admin, team_a = "admin-token-0123456789", "team-a-writer-0123456789"
    auth = {"cluster_token": "cluster-secret-0123456789", "tokens": [
        {"name": "ops", "token": admin, "role": "admin"},
        {"name": "team-a", "token": team_a, "role": "write", "namespaces": ["team-a"]}]}
    secured = Cluster(tmp_path / "cluster", auth=auth, token=admin)
    token_file = tmp_path / "token"
    token_file.write_text(team_a + "\n")
    try:
        secured.start_all()
        for args, expect in ((["--token-file", str(token_file)], "forbidden"), ([], "unauthorized")):
            params = StdioServerParameters(
                command=sys.executable, cwd=str(REPO),
                args=["-m", "cli.main", "mcp", "--url", ",".join(_urls(secured)), "--namespace", "team-a", *args])
            with open(tmp_path / "stderr.log", "a") as errlog:
                async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=60) as client:
                    put = await client.call_tool("memory_put", {"id": "t-1", "content": 1})
                    if expect == "forbidden":
                        assert _ok(put)["memory"]["namespace"] == "team-a"
                        put = await client.call_tool("memory_put", {"namespace": "team-b", "id": "t-1",
                                                                    "content": 1})
                    error = _error(put)
                    assert error["code"] == expect and error["status"] in (401, 403), error
                    assert "token" in error["hint"]
    finally:
        secured.stop_all()
