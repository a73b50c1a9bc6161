"""`raftmem put/get/delete/list` against an in-process fake cluster: output, JSON
mode and exit codes."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import Iterator

import pytest

import cli.main as cli_main
from cli import memory
from raftmem.client import ConnectionFailed, Indeterminate, NotFound, Overloaded, PreconditionFailed
from tests.unit.fake_raftmem import FakeCluster, Fault, free_port


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    cluster = asyncio.run_coroutine_threadsafe(FakeCluster().start(), loop).result()
    try:
        yield cluster
    finally:
        asyncio.run_coroutine_threadsafe(cluster.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()


def run(fake: FakeCluster, *argv: str, use_json: bool = False) -> int:
    head = ["--url", ",".join(fake.url_list())] + (["--json"] if use_json else [])
    return cli_main.main(head + list(argv))


def test_exit_codes_match_the_cli() -> None:
    assert (memory.EXIT_OK, memory.EXIT_FAILED, memory.EXIT_USAGE, memory.EXIT_UNAVAILABLE, memory.EXIT_INDETERMINATE) == (
        cli_main.EXIT_OK, cli_main.EXIT_FAILED, cli_main.EXIT_USAGE, cli_main.EXIT_UNAVAILABLE, cli_main.EXIT_INDETERMINATE,
    )
    assert memory.exit_code(NotFound("x", status=404)) == 1
    assert memory.exit_code(PreconditionFailed("x", status=412)) == 1
    assert memory.exit_code(Overloaded("x", status=429)) == 3
    assert memory.exit_code(ConnectionFailed("x")) == 3
    assert memory.exit_code(Indeterminate("x", status=504)) == 4


def test_put_get_list_delete(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "put", "ns", "a", "--content", '{"x": 1}', "--agent", "ag", "--tag", "t1", "--tag", "t2", "--kind", "fact") == 0
    assert "ns/a version 1 token" in capsys.readouterr().out
    put_body = json.loads(fake.data_requests()[-1].body)
    assert put_body == {"content": {"x": 1}, "agent_id": "ag", "kind": "fact", "tags": ["t1", "t2"]}

    assert run(fake, "get", "ns", "a") == 0
    out = capsys.readouterr().out
    assert "agent_id:   ag" in out and 'content:    {"x": 1}' in out

    assert run(fake, "get", "ns", "a", "--after", "0:1") == 0
    assert fake.data_requests()[-1].query == {"consistency": "session", "after": "0:1"}
    capsys.readouterr()

    assert run(fake, "get", "ns", "a", use_json=True) == 0
    assert json.loads(capsys.readouterr().out)["content"] == {"x": 1}

    assert run(fake, "put", "ns", "b", "--content", '"text"') == 0
    assert run(fake, "list", "ns") == 0
    lines = capsys.readouterr().out.splitlines()[-3:]
    assert lines[0].split() == ["ID", "VER", "AGENT", "KIND", "TAGS", "UPDATED", "CONTENT"]
    assert lines[1].split()[:2] == ["a", "1"] and lines[2].split()[0] == "b"

    assert run(fake, "list", "ns", "--limit", "1", use_json=True) == 0
    page = json.loads(capsys.readouterr().out)
    assert page["count"] == 1 and page["cursor"]
    assert run(fake, "list", "ns", "--all", use_json=True) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 2

    assert run(fake, "delete", "ns", "a", "--if-match", "1") == 0
    assert fake.data_requests()[-1].headers["If-Match"] == "1"
    assert run(fake, "get", "ns", "a") == 1
    assert "not_found" in capsys.readouterr().err


def test_put_reads_content_from_stdin(fake: FakeCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('[1, 2, 3]'))
    assert run(fake, "put", "ns", "s", "--content", "-", "--ttl", "30", "--create-only") == 0
    seen = fake.data_requests()[-1]
    assert json.loads(seen.body) == {"content": [1, 2, 3], "ttl_s": 30.0}
    assert seen.headers["If-None-Match"] == "*"


def test_usage_errors(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(fake, "put", "ns", "a", "--content", "not json", "--json-content") == 2
    assert "drop --json-content" in capsys.readouterr().err
    assert run(fake, "put", "ns", "a", "--if-match", "1", "--create-only") == 2
    assert fake.data_requests() == []


@pytest.mark.parametrize(
    ("argv", "stored"),
    [
        (["--content", "hello"], "hello"),  # not JSON: the text as given, as etcdctl takes a value
        (["--content", "hello world"], "hello world"),
        (["--content", "42"], 42),
        (["--content", '{"x": 1}'], {"x": 1}),
        (["--content", "42", "--text"], "42"),
        (["--content", '"quoted"'], "quoted"),
    ],
)
def test_put_takes_a_plain_value_as_text(fake: FakeCluster, argv: list[str], stored: object) -> None:
    assert run(fake, "put", "ns", "a", *argv) == 0
    assert json.loads(fake.data_requests()[-1].body)["content"] == stored


def test_failures_map_to_exit_codes(fake: FakeCluster, capsys: pytest.CaptureFixture[str]) -> None:
    fake.faults.append(Fault(412, body={"error": {"code": "precondition_failed", "message": "version is 2"}}))
    assert run(fake, "put", "ns", "a", "--content", "1", "--if-match", "1", use_json=True) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "precondition_failed"

    fake.always = Fault(503)
    assert run(fake, "get", "ns", "a") == 3
    assert "safe to retry" in capsys.readouterr().err

    fake.always = Fault(504, body={"error": {"code": "indeterminate", "message": "m"}, "indeterminate": True})
    assert run(fake, "delete", "ns", "a") == 4


def test_nothing_listening_is_unavailable(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli_main.main(["--url", url, "get", "ns", "a", "--consistency", "eventual"]) == 3
    assert "connection" in capsys.readouterr().err.lower()
