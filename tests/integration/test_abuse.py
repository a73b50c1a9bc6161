"""Clients that abuse a node: it keeps serving the others, its memory stays
bounded, and each abuser gets a clear 4xx or a closed connection.

Each abuse comes with its control: the well-behaved request that the node
must still answer while (or right after) it happens."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cluster import Cluster, wait_for

LIMITS = {"connections_max": 256, "header_timeout_ms": 1000, "idle_timeout_ms": 3000, "body_timeout_ms": 1500}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("abuse"), limits=LIMITS)
    try:
        c.start_all()
        yield c
    finally:
        c.stop_all()


def _rss_bytes(pid: int) -> int:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert match
    return int(match.group(1)) * 1024


def _connect(c: Cluster, node: str = "n1") -> socket.socket:
    s = socket.create_connection(("127.0.0.1", c.http[node]), timeout=10)
    return s


def _closed(s: socket.socket) -> bool:
    """True once the server closed (or reset) the connection; raises on a timeout."""
    try:
        return s.recv(65536) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def _served(c: Cluster, node: str = "n1") -> bool:
    return c.request(node, "GET", "/healthz", timeout_s=5)[0] == 200


def test_a_slowloris_is_cut_off_while_others_are_served(guarded: Cluster) -> None:
    socks = [_connect(guarded) for _ in range(20)]
    stop = threading.Event()
    cut: list[bool] = []

    def trickle(s: socket.socket) -> None:
        head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        try:
            for byte in head:
                if stop.is_set():
                    return
                s.sendall(bytes([byte]))
                time.sleep(0.2)  # the abuser's pace, not a synchronisation
        except OSError:
            cut.append(True)

    threads = [threading.Thread(target=trickle, args=(s,)) for s in socks]
    for t in threads:
        t.start()
    try:
        assert _served(guarded)  # control: served meanwhile
        wait_for(lambda: len(cut) == len(socks), 20, "every trickling connection cut off")
    finally:
        stop.set()
        for t in threads:
            t.join()
        for s in socks:
            s.close()
    assert _served(guarded)


def test_ten_thousand_idle_connections_neither_lock_out_a_client_nor_grow_memory(guarded: Cluster) -> None:
    pid = guarded.procs["n1"].pid
    before = _rss_bytes(pid)
    socks: list[socket.socket] = []
    try:
        for _ in range(10_000):
            try:
                socks.append(_connect(guarded))
            except OSError:
                break  # the client side ran out: still thousands held open
        assert len(socks) > 5000
        # A client with work to do gets in: the connection idle longest makes room.
        assert _served(guarded)
        grown = _rss_bytes(pid) - before
        assert grown < 64 << 20, f"RSS grew {grown >> 20} MiB with {len(socks)} idle connections"
    finally:
        for s in socks:
            s.close()
    assert _served(guarded)


def test_a_connection_idle_past_the_timeout_is_closed(guarded: Cluster) -> None:
    s = _connect(guarded)
    s.settimeout(LIMITS["idle_timeout_ms"] / 1000 * 4)
    try:
        assert _closed(s)
    finally:
        s.close()


def test_a_body_streamed_forever_gets_413_and_one_trickled_gets_408(guarded: Cluster) -> None:
    s = _connect(guarded)
    try:
        s.sendall(b"PUT /v1/memories/abuse/m HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (65536, b" " * 65536)
        status = None
        for _ in range(1000):  # 64 MiB at most: far past the 1 MiB limit
            try:
                s.sendall(chunk)
            except OSError:
                break
        s.settimeout(10)
        head = s.recv(4096)
        status = int(head.split()[1]) if head else None
        assert status in (None, 413), head[:200]
    finally:
        s.close()
    s = _connect(guarded)
    try:
        s.sendall(b"PUT /v1/memories/abuse/m HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100000\r\n\r\n{")
        s.settimeout(15)
        head = s.recv(4096)
        assert head.startswith(b"HTTP/1.1 408"), head[:200]
        assert b"request_timeout" in head
    finally:
        s.close()
    assert guarded.request("n1", "GET", "/v1/memories/abuse/m")[0] == 404  # nothing was written


def test_deeply_nested_json_is_a_clear_400(guarded: Cluster) -> None:
    depth = 10_000
    body = b'{"content": ' + b"[" * depth + b"]" * depth + b"}"
    status, _, answer = guarded.request("n1", "PUT", "/v1/memories/abuse/deep", raw=body,
                                        headers={"Content-Type": "application/json"})
    assert status == 400 and answer["error"]["code"] == "invalid_request"
    # Within the parser's limit (254) but too deep to store in a log entry: it once
    # failed the leader's flush, and every write queued behind it, for good.
    for depth in (251, 100):
        body = b'{"content": ' + b"[" * depth + b"]" * depth + b"}"
        status, _, answer = guarded.request("n1", "PUT", "/v1/memories/abuse/deep", raw=body,
                                            headers={"Content-Type": "application/json"})
        assert status == 400 and "deeper than 64" in answer["error"]["message"], (depth, answer)
    # Control: a nesting within the limit (64 levels, the body's object included) is stored.
    ok = b'{"content": ' + b"[" * 63 + b"]" * 63 + b"}"
    assert guarded.request("n1", "PUT", "/v1/memories/abuse/deep", raw=ok,
                           headers={"Content-Type": "application/json"})[0] == 201


def test_a_huge_number_of_query_parameters_is_refused(guarded: Cluster) -> None:
    s = _connect(guarded)
    try:
        query = "&".join(f"p{i}=1" for i in range(100_000))
        s.sendall(f"GET /v1/memories/abuse?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        s.settimeout(10)
        try:
            head = s.recv(4096)
        except ConnectionResetError:
            head = b""
        assert head == b"" or 400 <= int(head.split()[1]) < 500, head[:200]
    finally:
        s.close()
    assert _served(guarded)


def test_batches_at_the_operation_limit_from_32_clients_leave_the_node_serving(guarded: Cluster) -> None:
    pid = guarded.procs["n1"].pid
    before = _rss_bytes(pid)
    ops = [{"op": "put", "namespace": "abuse-batch", "id": f"m{i}", "body": {"content": "x" * 200}}
           for i in range(1000)]
    statuses: list[int] = []

    def hammer() -> None:
        for _ in range(2):
            try:
                statuses.append(guarded.request("n1", "POST", "/v1/batch", {"ops": ops}, timeout_s=60)[0])
            except OSError:
                statuses.append(0)

    threads = [threading.Thread(target=hammer) for _ in range(32)]
    for t in threads:
        t.start()
    try:
        started = time.monotonic()
        assert _served(guarded) and time.monotonic() - started < 5  # control: answered meanwhile
    finally:
        for t in threads:
            t.join()
    assert set(statuses) <= {200, 429, 503}, statuses
    grown = _rss_bytes(pid) - before
    assert grown < 256 << 20, f"RSS grew {grown >> 20} MiB"
    assert json.loads(json.dumps(guarded.request("n2", "GET", "/v1/memories/abuse-batch/m7")[2]))["content"]
