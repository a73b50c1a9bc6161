"""Helpers of the watch and history tests: a watch stream read on a thread from
a real node (raw HTTP: what a curl user sees), and writes that remember what
was acknowledged at which token."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from .cluster import POLL_S, Cluster

NDJSON = "application/x-ndjson"


class Stream(threading.Thread):
    """GET /v1/watch on `node`; every JSON line (NDJSON) or `data:` line (SSE) as it comes.
    With `watches` (many on one connection, POST /v1/watch, `params` in the
    body): each line's events, each with its line's `"watch"` added."""

    def __init__(self, c: Cluster, node: str, params: dict[str, Any], sse: bool = False,
                 timeout_s: float = 60.0, receive_buffer: int | None = None,
                 watches: list[dict[str, Any]] | None = None) -> None:
        """`receive_buffer`: the socket's receive buffer, fixed (a slow reader's
        window stays small instead of growing to many megabytes)."""
        super().__init__(daemon=True)
        self.sse = sse
        self.items: list[dict[str, Any]] = []
        self.raw: list[bytes] = []
        self.ended = False
        self._lock = threading.Lock()
        self.conn = http.client.HTTPConnection("127.0.0.1", c.http[node], timeout=timeout_s)
        self._own_sock: socket.socket | None = None
        if receive_buffer is not None:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect: no autotuning
            sock.settimeout(timeout_s)
            sock.connect(("127.0.0.1", c.http[node]))
            self.conn.sock = self._own_sock = sock
        accept = {"Accept": "text/event-stream" if sse else NDJSON}
        if watches is not None:
            self.conn.request("POST", "/v1/watch", body=json.dumps({"watches": watches, **params}),
                              headers={**accept, "Content-Type": "application/json"})
        else:
            query = urlencode({k: v for k, v in params.items() if v is not None})
            self.conn.request("GET", f"/v1/watch?{query}", headers=accept)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = dict(self.resp.getheaders())
        self.body: Any = None
        if self.status != 200:
            self.body = json.loads(self.resp.read())
            self._close_connection()
            self.ended = True
            return
        self.start()

    def run(self) -> None:
        try:
            while True:
                line = self.resp.readline()
                if not line:
                    break
                with self._lock:
                    self.raw.append(line)
                text = line.strip()
                if self.sse:
                    if not text.startswith(b"data: "):
                        continue
                    text = text[len(b"data: "):]
                if text:
                    item = json.loads(text)
                    got = [{**e, "watch": item["watch"]} for e in item["events"]] if "watch" in item else [item]
                    with self._lock:
                        self.items.extend(got)
        except (OSError, http.client.HTTPException, ValueError, AttributeError):
            pass  # the connection broke or was closed (AttributeError: http.client closing under us)
        finally:
            self.ended = True

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.items)

    def events(self, watch: str | None = None) -> list[dict[str, Any]]:
        return [i for i in self.of(watch) if i["type"] in ("put", "delete", "expire")]

    def of(self, watch: str | None) -> list[dict[str, Any]]:
        """What came for one watch of many (None: everything)."""
        return [i for i in self.snapshot() if watch is None or i.get("watch") == watch]

    def wait(self, what: str, condition: Any, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            items = self.snapshot()
            if condition(items):
                return items
            if self.ended:
                break
            time.sleep(POLL_S)
        raise AssertionError(f"timed out (or ended) waiting for {what}; got {self.snapshot()[-5:]}")

    def wait_events(self, count: int, timeout_s: float = 30.0, watch: str | None = None) -> list[dict[str, Any]]:
        self.wait(f"{count} events", lambda items: len(self.events(watch)) >= count, timeout_s)
        return self.events(watch)

    def _close_connection(self) -> None:
        self.resp.close()
        self.conn.close()
        if self._own_sock is not None:
            self._own_sock.close()

    def close(self) -> None:
        sock = self._own_sock or self.conn.sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self.is_alive():
            self.join(10)
        self._close_connection()


def tokens(value: str) -> dict[int, int]:
    out = {}
    for part in value.split(","):
        if part:
            shard, index = part.split(":")
            out[int(shard)] = int(index)
    return out


def fmt(positions: dict[int, int]) -> str:
    return ",".join(f"{s}:{i}" for s, i in sorted(positions.items()))


def resume_positions(items: list[dict[str, Any]]) -> dict[int, int]:
    """Where a client that saw `items` has every change: the tokens of progress
    (and overflow, error) events, and of events marked last in their entry."""
    pos: dict[int, int] = {}
    for item in items:
        if "tokens" in item:
            for s, i in tokens(item["tokens"]).items():
                pos[s] = max(pos.get(s, 0), i)
        if item.get("last"):
            shard, index = (int(x) for x in item["token"].split(":"))
            pos[shard] = max(pos.get(shard, 0), index)
    return pos


def identity(event: dict[str, Any]) -> tuple[str, int, str, str, int | None]:
    return (event["token"], event["seq"], event["type"], event["id"], event["version"])


@dataclass
class Acked:
    """A write the cluster acknowledged: where it is in the log, what it did."""

    token: str
    kind: str
    id: str
    version: int

    @property
    def shard(self) -> int:
        return int(self.token.split(":")[0])

    @property
    def index(self) -> int:
        return int(self.token.split(":")[1])


@dataclass
class Writer:
    c: Cluster
    ns: str
    acked: list[Acked] = field(default_factory=list)

    def put(self, mid: str, body: dict[str, Any], node: str | None = None) -> Acked:
        return self._write("PUT", mid, body, node)

    def delete(self, mid: str, node: str | None = None) -> Acked:
        return self._write("DELETE", mid, None, node)

    def _write(self, method: str, mid: str, body: Any, node: str | None) -> Acked:
        deadline = time.monotonic() + 60
        while True:
            target = node or next(n for n in self.c.node_ids if self.c.alive(n))
            try:
                status, _, answer = self.c.request(target, method, f"/v1/memories/{self.ns}/{mid}", body,
                                                   headers={"Idempotency-Key": f"{method}-{mid}-{len(self.acked)}"})
            except (OSError, http.client.HTTPException):
                status, answer = -1, None
            if status in (200, 201):
                done = Acked(answer["token"], "put" if method == "PUT" else "delete", mid, answer["version"])
                self.acked.append(done)
                return done
            assert status in (-1, 503, 504), (status, answer)
            assert time.monotonic() < deadline, f"{method} {mid} never acknowledged: {status} {answer}"
            time.sleep(POLL_S)

    def expected(self, after: dict[int, int] | None = None) -> list[tuple[str, str, str, int]]:
        """The acknowledged writes after `after` (per shard), as (token, type, id, version), in log order."""
        after = after or {}
        rows = [(a.shard, a.index, a) for a in self.acked if a.index > after.get(a.shard, 0)]
        return [(a.token, a.kind, a.id, a.version) for _s, _i, a in sorted(rows, key=lambda r: (r[0], r[1]))]


def seen(events: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    """Events as (token, type, id, version), in log order per shard (stable across shards)."""
    rows = [(tokens(e["token"]), e) for e in events]
    ordered = sorted(rows, key=lambda r: next(iter(r[0].items())))
    return [(e["token"], e["type"], e["id"], e["version"]) for _t, e in ordered]


def in_log_order_per_shard(events: list[dict[str, Any]]) -> bool:
    last: dict[int, tuple[int, int]] = {}
    for e in events:
        shard, index = (int(x) for x in e["token"].split(":"))
        key = (index, e["seq"])
        if shard in last and key <= last[shard]:
            return False
        last[shard] = key
    return True
