"""A small blocking HTTP client for what raftmem.client does not cover: the admin
endpoints (`/v1/admin/...`), `/v1/cluster` of one given node, `/readyz`, and
backup files streamed to and from disk.

Errors are raftmem.client's exception tree (`error_from_response` builds them
from the server's `{"error": {"code", "message"}}`), so these commands exit with
the same codes as put/get. Which node: any; the server forwards admin calls to
the node that must serve them.

Retries are bounded by a `raftmem.client.RetryPolicy`, and happen only where
they cannot do anything twice:
- a refused connection (the request was never sent): the next node is tried;
- an HTTP 503/429 answer (the server did nothing): after a backoff;
- a read whose answer was lost or timed out: the next node.
A write whose answer was lost raises Indeterminate and is not retried. Admin
writes are changes of the membership table, compare-and-set on the server; a
retried `member add` after an ambiguous 503 may answer "already a member".
"""

from __future__ import annotations

import http.client
import json
import random
import shutil
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlencode, urlsplit

from raftmem.client import (
    NO_RETRY,
    ClientError,
    ConnectionFailed,
    Indeterminate,
    RetryPolicy,
    Unavailable,
    bearer_headers,
    error_from_response,
)

REQUEST_TIMEOUT_S = 15.0  # one JSON request: above the server's 5 s write timeout + a forward
PROBE_TIMEOUT_S = 2.0  # one GET /v1/cluster or /healthz while polling
RESPONSE_BYTES_MAX = 64 << 20  # a JSON answer larger than this is refused
STREAM_CHUNK_BYTES = 1 << 16
PARALLEL_PROBES_MAX = 16
ADMIN_RETRY = RetryPolicy(attempts_max=6, deadline_s=30.0, backoff_initial_s=0.1, backoff_max_s=2.0)


class AdminClient:
    """Blocking JSON and streaming requests to any of `urls` (tried in turn)."""

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout_s: float = REQUEST_TIMEOUT_S,
        retry: RetryPolicy = ADMIN_RETRY,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        token: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.urls = [u.rstrip("/") for u in urls if u.strip()]
        self._ssl = ssl_context
        self._auth = bearer_headers(token)
        if not self.urls:
            raise ValueError("no node URL given (--url or RAFTMEM_URL)")
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"not an http(s) URL: {url!r}")
        self.timeout_s = timeout_s
        self.retry = retry
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._next = 0

    # -- JSON ------------------------------------------------------------------------
    def get(self, path: str, params: Mapping[str, str] | None = None, **kw: Any) -> Any:
        return self.request("GET", path, params=params, is_write=False, **kw)

    def post(self, path: str, body: Any = None, params: Mapping[str, str] | None = None, **kw: Any) -> Any:
        return self.request("POST", path, body=body, params=params, is_write=True, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, is_write=True, **kw)

    def request(
        self,
        method: str,
        path: str,
        *,
        is_write: bool,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        url: str | None = None,
        retry: RetryPolicy | None = None,
        timeout_s: float | None = None,
        upload: Path | None = None,
        download: IO[bytes] | None = None,
    ) -> Any:
        """One logical request with bounded retries; returns the decoded JSON body
        (None when streamed into `download`). `url`: only this node."""
        policy = retry or self.retry
        if params:
            path = path + "?" + urlencode(dict(params))
        data = None if body is None else json.dumps(body).encode()
        deadline = time.monotonic() + policy.deadline_s
        last: ClientError | None = None
        for attempt in range(policy.attempts_max):
            base = url or self._pick()
            try:
                return self._once(base, method, path, data, upload, download, timeout_s or self.timeout_s,
                                  is_write)
            except ClientError as e:
                last = e
                if not _may_retry(e, is_write) or (download is not None and not isinstance(e, ConnectionFailed)):
                    break  # a partly written download cannot be resumed
                if attempt + 1 >= policy.attempts_max:
                    break
                delay = 0.0 if isinstance(e, ConnectionFailed) and url is None and attempt + 1 < len(self.urls) \
                    else policy.delay_s(attempt, e, self._rng.random())
                if time.monotonic() + delay >= deadline:
                    break
                self._sleep(delay)
        assert last is not None
        raise last

    def _pick(self) -> str:
        url = self.urls[self._next % len(self.urls)]
        self._next += 1
        return url

    def _once(
        self,
        base: str,
        method: str,
        path: str,
        data: bytes | None,
        upload: Path | None,
        download: IO[bytes] | None,
        timeout_s: float,
        is_write: bool,
    ) -> Any:
        parts = urlsplit(base)
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout_s,
                                               blocksize=STREAM_CHUNK_BYTES, context=self._ssl)
        else:
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout_s,
                                              blocksize=STREAM_CHUNK_BYTES)
        prefix = parts.path.rstrip("/")
        try:
            try:
                conn.connect()
            except OSError as e:
                raise ConnectionFailed(f"{base}: {e}") from e
            headers = {"Accept": "application/json", **self._auth}
            try:
                if upload is not None:
                    headers["Content-Type"] = "application/octet-stream"
                    headers["Content-Length"] = str(upload.stat().st_size)
                    with open(upload, "rb") as f:
                        conn.request(method, prefix + path, body=f, headers=headers)
                        resp = conn.getresponse()
                else:
                    if data is not None:
                        headers["Content-Type"] = "application/json"
                    conn.request(method, prefix + path, body=data, headers=headers)
                    resp = conn.getresponse()
                if download is not None and 200 <= resp.status < 300:
                    shutil.copyfileobj(resp, download, STREAM_CHUNK_BYTES)
                    return None
                raw = resp.read(RESPONSE_BYTES_MAX + 1)
            except (OSError, http.client.HTTPException) as e:
                what = "timed out" if isinstance(e, TimeoutError) else f"lost ({e.__class__.__name__}: {e})"
                cls = Indeterminate if is_write else Unavailable
                raise cls(f"{method} {base}{path}: the answer {what}", code="no_answer") from e
        finally:
            conn.close()
        if len(raw) > RESPONSE_BYTES_MAX:
            raise ClientError(f"{method} {base}{path}: answer larger than {RESPONSE_BYTES_MAX} bytes",
                              status=resp.status, code="bad_response")
        try:
            decoded = json.loads(raw) if raw else None
        except ValueError:
            decoded = {"error": {"code": "bad_response", "message": raw[:200].decode(errors="replace")}}
        if resp.status >= 300:
            raise error_from_response(resp.status, decoded, resp.headers)
        return decoded

    # -- many nodes at once ---------------------------------------------------------------
    def probe_all(self, urls: Sequence[str], path: str) -> dict[str, Any]:
        """GET `path` from every URL at once, one attempt each: url -> decoded body,
        or the ClientError it failed with."""
        unique = list(dict.fromkeys(urls))
        if not unique:
            return {}

        def one(url: str) -> Any:
            try:
                return self.request("GET", path, is_write=False, url=url, retry=NO_RETRY, timeout_s=PROBE_TIMEOUT_S)
            except ClientError as e:
                return e

        with ThreadPoolExecutor(max_workers=min(len(unique), PARALLEL_PROBES_MAX)) as pool:
            return dict(zip(unique, pool.map(one, unique), strict=True))


def _may_retry(error: ClientError, is_write: bool) -> bool:
    if isinstance(error, ConnectionFailed):
        return True  # never sent
    if isinstance(error, Unavailable):
        return error.status != 0 or not is_write  # a 503/429 answer: nothing happened
    return False

