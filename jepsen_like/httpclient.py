"""The harness's HTTP client: one request per operation, never a silent retry.

aiohttp (>= 3.10) resends an idempotent request (GET, PUT, DELETE) once when the
connection drops before the answer; for a harness that would turn one recorded
operation into two applied ones, so the session is built with that retry off.
Outcomes are reported as an ``Answer``:

- ``status`` > 0: an HTTP answer (body decoded as JSON when it is JSON);
- ``NOT_SENT``: the connection could not be opened: the request certainly never
  reached the node;
- ``LOST``: sent (or maybe sent) and no answer: a timeout or a dropped
  connection. The operation may or may not have happened.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import aiohttp

NOT_SENT = -1
LOST = -2
CONNECTIONS_MAX = 512


@dataclass(slots=True)
class Answer:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    @property
    def sent_and_lost(self) -> bool:
        return self.status == LOST


class HttpClient:
    def __init__(self, urls: dict[str, str], timeout_s: float) -> None:
        self.urls = urls
        self.timeout_s = timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpClient:
        connector = aiohttp.TCPConnector(limit=CONNECTIONS_MAX, limit_per_host=CONNECTIONS_MAX, force_close=False)
        self._session = aiohttp.ClientSession(connector=connector)
        # No resend of a PUT whose connection dropped (see the module docstring).
        self._session._retry_connection = False
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self,
        node: str,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> Answer:
        assert self._session is not None
        url = self.urls[node] + path
        data = json.dumps(body).encode() if body is not None else None
        hdrs = dict(headers or {})
        if data is not None:
            hdrs["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s, connect=min(2.0, timeout_s or self.timeout_s))
        try:
            async with self._session.request(
                method, url, params=params, data=data, headers=hdrs, timeout=timeout
            ) as resp:
                raw = await resp.read()
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:
                    parsed = raw.decode(errors="replace")[:200]
                return Answer(resp.status, parsed, dict(resp.headers))
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            return Answer(NOT_SENT, error=f"not sent: {type(exc).__name__}")
        except TimeoutError:
            return Answer(LOST, error="timeout")
        except aiohttp.ClientError as exc:
            return Answer(LOST, error=f"lost: {type(exc).__name__}: {exc}"[:200])

    async def lines(
        self,
        node: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        read_timeout_s: float,
        until: float,
        line_bytes_max: int = 4 << 20,
        body: Any = None,
    ) -> tuple[Answer, list[bytes]]:
        """A streaming GET (a POST of `body` as JSON, when given) read line by
        line until `until` (the event loop's
        time), the end of the stream, or `read_timeout_s` without a byte.
        Returns the answer (status; the body when not 200; `error` when the
        stream ended or broke) and the complete lines read (a line cut off by a
        break is dropped)."""
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=2.0, sock_read=read_timeout_s)
        got: list[bytes] = []
        buffer = b""
        answer: Answer | None = None
        try:
            method = "GET" if body is None else "POST"
            async with self._session.request(method, self.urls[node] + path, params=params, headers=headers,
                                             json=body, timeout=timeout) as resp:
                if resp.status != 200:
                    raw = await resp.read()
                    try:
                        body = json.loads(raw) if raw else None
                    except ValueError:
                        body = raw.decode(errors="replace")[:200]
                    return Answer(resp.status, body, dict(resp.headers)), got
                answer = Answer(200, None, dict(resp.headers))
                while True:
                    remaining = until - asyncio.get_running_loop().time()
                    if remaining <= 0:
                        return answer, got
                    try:
                        chunk = await asyncio.wait_for(resp.content.readany(), remaining)
                    except TimeoutError:
                        return answer, got  # our own deadline, not the server's silence
                    if not chunk:
                        answer.error = "ended"
                        return answer, got
                    buffer += chunk
                    *complete, buffer = buffer.split(b"\n")
                    got.extend(line for line in complete if line.strip())
                    if len(buffer) > line_bytes_max:
                        answer.error = "line too long"
                        return answer, got
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            return Answer(NOT_SENT, error=f"not sent: {type(exc).__name__}"), got
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            if answer is None:
                return Answer(LOST, error=f"lost: {type(exc).__name__}"), got
            answer.error = f"broken: {type(exc).__name__}"
            return answer, got
