"""The admin CLI without a cluster: argument parsing and --help, the progress bar,
convergence, backup file checks, and the admin HTTP client's retries and error
mapping against a scripted stdlib HTTP server."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import cli.main as cli_main
from cli.admin import Failed, pending_shards, read_backup
from cli.admin_client import AdminClient
from cli.progress import Progress
from raftmem import backup as server_backup  # the server's file format, to check the CLI reads it
from raftmem.client import ConnectionFailed, Indeterminate, InvalidRequest, RetryPolicy, Unavailable
from tests.unit.fake_raftmem import free_port

COMMANDS = [
    [], ["status"], ["member"], ["member", "add"], ["member", "remove"], ["member", "list"], ["rebalance"],
    ["transfer-leader"], ["snapshot"], ["snapshot", "save"], ["snapshot", "restore"], ["put"], ["get"],
    ["delete"], ["list"], ["bench"], ["cluster"], ["cluster", "up"], ["cluster", "down"], ["serve"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "raftmem")
def test_help_on_every_command(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli_main.main([*command, "--help"])
    assert e.value.code == 0
    assert "usage: raftmem" in capsys.readouterr().out


def test_global_options_before_or_after_the_command() -> None:
    parser = cli_main.build_parser()
    args = parser.parse_args(["status", "--json", "--url", "http://x:1"])
    assert args.json is True and args.url == "http://x:1"
    args = parser.parse_args(["--json", "--url", "http://y:1", "status"])
    assert args.json is True and args.url == "http://y:1"
    args = parser.parse_args(["status"])
    assert args.json is False and args.url == cli_main.DEFAULT_URL
    args = parser.parse_args(["rebalance", "--no-wait", "--dry-run"])
    assert args.wait is False and args.dry_run is True
    assert parser.parse_args(["rebalance"]).wait is True
    args = parser.parse_args(["get", "ns", "id", "--json"])
    assert args.json is True


def test_subcommand_options_that_prefix_a_global_option() -> None:
    """`--to` is a prefix of the global `--token` and `--token-file`: with argparse's
    abbreviations on, the top parser rejects it as ambiguous before the subcommand
    sees it (this broke `transfer-leader --to`). Abbreviations are off everywhere."""
    parser = cli_main.build_parser()
    args = parser.parse_args(["transfer-leader", "1", "--to", "n2", "--token", "t"])
    assert args.to == "n2" and args.token == "t"
    for argv in (["--jso", "status"], ["status", "--jso"], ["rebalance", "--dry"]):
        with pytest.raises(SystemExit) as e:
            parser.parse_args(argv)
        assert e.value.code == 2, argv


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["member", "add", "n4"], ["transfer-leader", "x"], ["rebalance", "--timeout", "-1"]):
        with pytest.raises(SystemExit) as e:
            cli_main.main(argv)
        assert e.value.code == 2
    assert cli_main.main(["--url", "ftp://nope", "status"]) == 2
    assert cli_main.main(["--url", "http://127.0.0.1:1", "snapshot", "restore", "/nonexistent/file"]) == 2
    capsys.readouterr()


def test_progress_plain_when_not_a_tty() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = Progress("rebalance", 4, out, tty=False, clock=lambda: now[0])
    bar.update(0, "shard 1: waiting")
    bar.update(0, "shard 1: still waiting")  # no change: no new line
    now[0] = 3.0
    bar.update(2)
    bar.finish("done")
    assert out.getvalue().splitlines() == [
        "rebalance [..............................] 0/4 0s shard 1: waiting",
        "rebalance [###############...............] 2/4 3s",
        "rebalance: done (3.0s)",
    ]


def test_progress_redraws_one_line_on_a_tty() -> None:
    out = io.StringIO()
    bar = Progress("moving", 2, out, tty=True, clock=lambda: 0.0)
    bar.update(0, "a long detail here")
    bar.update(1)
    bar.finish("ok")
    text = out.getvalue()
    assert text.count("\n") == 1 and text.startswith("\rmoving [") and "\r" in text[1:]
    assert text.endswith("moving: ok (0.0s)\n")


def _leader_view(node: str, members_by_shard: dict[int, list[str]]) -> dict[str, Any]:
    return {"node": node, "shard_count": 2, "nodes": [], "shards": [
        {"shard": s, "role": "leader", "term": 1, "members": m} for s, m in members_by_shard.items()]}


def test_pending_shards() -> None:
    views = {"n1": _leader_view("n1", {0: ["n3", "n1", "n2"], 1: ["n1", "n2", "n3", "n4"]})}
    assignment = {"0": ["n1", "n2", "n3"], "1": ["n1", "n2", "n4"]}
    assert pending_shards(views, assignment) == {1: "voters n1,n2,n3,n4, want n1,n2,n4"}
    views = {"n1": {"node": "n1", "shard_count": 2, "nodes": [], "shards": [
        {"shard": 0, "role": "leader", "term": 1, "members": ["n1", "n2", "n3"]},
        {"shard": 1, "role": "follower", "term": 1, "members": ["n1", "n2", "n4"]}]}}
    assert pending_shards(views, assignment) == {1: "no leader answered"}


def _backup_file(tmp_path: Path) -> Path:
    parts = {}
    for shard, (applied, data) in {0: (5, b"zero" * 100), 1: (7, b"one" * 100)}.items():
        snap = tmp_path / f"s{shard}"
        snap.write_bytes(data)
        parts[shard] = (applied, snap)
    path = tmp_path / "b.backup"
    server_backup.build_file(path, "c", 2, parts, 1_700_000_000_000)
    assert not any(p.exists() for _, p in parts.values())  # streamed in, then removed
    return path


def test_read_backup_checks_every_checksum(tmp_path: Path) -> None:
    path = _backup_file(tmp_path)
    manifest = read_backup(path)
    assert [e["applied_index"] for e in manifest["shards"]] == [5, 7]
    with tarfile.open(path) as tar:
        offset = tar.getmember(server_backup.shard_member(1)).offset_data
    data = bytearray(path.read_bytes())
    data[offset + 10] ^= 0xFF
    bad = tmp_path / "bad.backup"
    bad.write_bytes(bytes(data))
    with pytest.raises(Failed, match="checksum mismatch for shard 1"):
        read_backup(bad)
    bad.write_bytes(path.read_bytes()[:700])
    with pytest.raises(Failed, match="corrupt or truncated"):
        read_backup(bad)
    bad.write_bytes(b"not a tar at all")
    with pytest.raises(Failed, match="corrupt or truncated"):
        read_backup(bad)


# -- the admin HTTP client against a scripted server ----------------------------------------
class Script:
    """Answers to give, in order (then 200 {"ok": true}); every request seen."""

    def __init__(self) -> None:
        self.answers: list[tuple[int, Any] | str] = []
        self.seen: list[tuple[str, str, bytes]] = []
        self.lock = threading.Lock()


@pytest.fixture
def server() -> Iterator[tuple[str, Script]]:
    script = Script()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: Any) -> None:
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with script.lock:
                script.seen.append((self.command, self.path, body))
                answer = script.answers.pop(0) if script.answers else (200, {"ok": True})
            if answer == "drop":  # close without answering: a lost answer
                self.close_connection = True
                return
            assert isinstance(answer, tuple)
            status, payload = answer
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _answer

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", script
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


FAST = RetryPolicy(attempts_max=4, deadline_s=5.0, backoff_initial_s=0.0, backoff_max_s=0.0)


def test_retries_503_then_succeeds_and_skips_a_dead_node(server: tuple[str, Script]) -> None:
    url, script = server
    script.answers = [(503, {"error": {"code": "unavailable", "message": "no leader"}})]
    admin = AdminClient([f"http://127.0.0.1:{free_port()}", url], retry=FAST)
    assert admin.post("/v1/admin/rebalance", params={"dry_run": "true"}) == {"ok": True}
    assert [(m, p) for m, p, _ in script.seen] == [("POST", "/v1/admin/rebalance?dry_run=true")] * 2


def test_errors_map_to_the_client_tree(server: tuple[str, Script]) -> None:
    url, script = server
    admin = AdminClient([url], retry=FAST)
    script.answers = [(400, {"error": {"code": "invalid_request", "message": "corrupt backup: x"}})]
    with pytest.raises(InvalidRequest, match="corrupt backup"):
        admin.post("/v1/admin/restore", {"a": 1})
    assert len(script.seen) == 1 and json.loads(script.seen[0][2]) == {"a": 1}  # not retried

    script.answers = ["drop"]
    with pytest.raises(Indeterminate):  # a write whose answer was lost: never retried
        admin.delete("/v1/admin/members/n4")
    assert len(script.seen) == 2

    script.answers = ["drop"]
    assert admin.get("/v1/admin/members") == {"ok": True}  # a read: retried
    script.answers = [(503, {"error": {"code": "unavailable", "message": "x"}})] * 4
    with pytest.raises(Unavailable):
        admin.get("/v1/admin/members")
    with pytest.raises(ConnectionFailed):
        AdminClient([f"http://127.0.0.1:{free_port()}"], retry=FAST).get("/healthz")


def test_upload_and_download_stream_files(server: tuple[str, Script], tmp_path: Path) -> None:
    url, script = server
    src = tmp_path / "up.bin"
    src.write_bytes(bytes(range(256)) * 1000)
    admin = AdminClient([url], retry=FAST)
    assert admin.request("POST", "/v1/admin/restore", is_write=True, upload=src) == {"ok": True}
    assert script.seen[-1][2] == src.read_bytes()
    sink = io.BytesIO()
    assert admin.request("GET", "/v1/admin/backup", is_write=False, download=sink) is None
    assert json.loads(sink.getvalue()) == {"ok": True}
