"""The MCP server's own logic against the in-process fake cluster: the tools'
schemas, how errors come back (codes, hints, never a crash), and the causal
context every request carries (read-your-writes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from mcp import Client
from mcp.types import CallToolResult

from raftmem.client import NO_RETRY, AsyncClient, LockHeld
from raftmem.integrations.mcp import TOOLS, Tools, build_server, client_error_payload
from tests.unit.fake_raftmem import FakeCluster, Fault, free_port


@pytest.fixture
async def fake() -> AsyncIterator[FakeCluster]:
    cluster = await FakeCluster().start()
    try:
        yield cluster
    finally:
        await cluster.close()


def _error(result: CallToolResult) -> dict[str, Any]:
    assert result.is_error and result.structured_content is not None, result
    error: dict[str, Any] = result.structured_content["error"]
    return error


def _ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error and result.structured_content is not None, result.content
    return result.structured_content


async def test_the_tools_have_schemas_that_explain_consistency_in_words() -> None:
    server = build_server(AsyncClient([f"http://127.0.0.1:{free_port()}"]), namespace="ns")
    async with Client(server) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert list(tools) == list(TOOLS)
    for tool in tools.values():
        assert tool.description and tool.output_schema and tool.annotations is not None, tool.name
    level = tools["memory_get"].input_schema["properties"]["consistency"]
    assert level["enum"] == ["session", "strong", "linearizable", "causal", "bounded", "eventual"]
    for word in ("read", "leader", "majority", "recent writes", "context"):
        assert word in level["description"], word
    assert tools["memory_put"].input_schema["required"] == ["id", "content"]
    assert tools["memory_get"].annotations.read_only_hint  # type: ignore[union-attr]
    assert tools["memory_delete"].annotations.destructive_hint  # type: ignore[union-attr]


async def test_a_store_that_does_not_answer_is_a_retryable_tool_error_and_the_server_carries_on() -> None:
    server = build_server(AsyncClient([f"http://127.0.0.1:{free_port()}"]), namespace="ns")
    async with Client(server) as client:
        for _ in range(2):
            error = _error(await client.call_tool("memory_get", {"id": "x"}))
            assert error["code"] == "connection_failed" and error["retryable"] and error["status"] == 0
            assert "safe to try again" in error["hint"]


async def test_an_indeterminate_write_says_so_and_how_to_find_out(fake: FakeCluster) -> None:
    server = build_server(AsyncClient(fake.url_list(), retry=NO_RETRY), namespace="ns")
    fake.always = Fault(504, body={"error": {"code": "timeout", "message": "lost the leader"}, "indeterminate": True})
    async with Client(server) as client:
        error = _error(await client.call_tool("memory_put", {"id": "x", "content": 1}))
    assert error["status"] == 504 and not error["retryable"]
    assert "may or may not have happened" in error["hint"]


def test_a_refusal_keeps_what_the_store_said_beyond_its_code() -> None:
    held = LockHeld("held by b", status=409, code="lock_held",
                    body={"error": {"code": "lock_held", "message": "held by b", "holder": "b", "expires_at": 5}})
    payload = client_error_payload(held)["error"]
    assert payload["code"] == "lock_held" and payload["details"] == {"holder": "b", "expires_at": 5}
    assert "wait" in payload["hint"] and not payload["retryable"]


async def test_every_request_carries_the_servers_causal_context_and_reads_default_to_session(
        fake: FakeCluster) -> None:
    server = build_server(AsyncClient(fake.url_list()), namespace="ns", recent_write_s=0)
    async with Client(server) as client:
        put = _ok(await client.call_tool("memory_put", {"id": "a", "content": 1}))
        token = put["memory"]["token"]
        assert put["context"] == token
        _ok(await client.call_tool("memory_get", {"id": "a"}))
        # Another agent's context is merged in, and kept.
        _ok(await client.call_tool("memory_get", {"id": "a", "context": "3:999"}))
        got = _ok(await client.call_tool("memory_get", {"id": "a", "consistency": "eventual"}))
    gets = [s for s in fake.data_requests() if s.method == "GET"]
    assert gets[0].query["consistency"] == "session" and gets[0].headers["X-Raftmem-Context"] == token
    assert "3:999" in gets[1].headers["X-Raftmem-Context"]
    assert gets[2].query["consistency"] == "eventual" and "3:999" in gets[2].headers["X-Raftmem-Context"]
    assert "3:999" in got["context"]


async def test_a_session_read_of_a_shard_written_a_moment_ago_is_a_strong_read(fake: FakeCluster) -> None:
    now = [100.0]
    tools = Tools(AsyncClient(fake.url_list()), "ns", recent_write_s=1.0, clock=lambda: now[0])
    try:
        await tools.memory_put("a", 1)
        shard = tools.client.shard_of("ns", "a")
        other = next(f"b{i}" for i in range(100) if tools.client.shard_of("ns", f"b{i}") != shard)
        now[0] += 1.5
        await tools.memory_put(other, 2)
        now[0] += 1.5
        await tools.memory_put("a", 3)
        assert (await tools.memory_get("a"))["consistency"] == "strong"
        assert (await tools.memory_get(other))["consistency"] == "session"  # its shard was written long ago
        now[0] += 1.5
        assert (await tools.memory_get("a"))["consistency"] == "session"
        assert (await tools.memory_get("a", consistency="linearizable"))["consistency"] == "linearizable"
    finally:
        await tools.client.close()
