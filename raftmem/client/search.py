"""Recall from the client: search, list namespaces, namespace summaries.

`SearchMixin` adds the calls to AsyncClient (its `_send` does routing and
retries: a search changes nothing, so it is retried like a read);
`SyncSearchMixin` is their blocking face on Client. A search goes to any node,
which gathers it across shards; `fresh=True` makes that node wait for every
shard's indexes to absorb everything acknowledged before it (lag 0).
"""

from __future__ import annotations

import builtins
from collections.abc import AsyncGenerator, Awaitable, Iterator, Mapping, Sequence
from typing import Any, Protocol, TypeVar
from urllib.parse import quote

import orjson

from .retry import RetryPolicy
from .types import HEADER_CONTEXT, Response, _Request

T = TypeVar("T")
SEARCH_PAGES_MAX = 10_000  # an iterator never follows more cursors than this
HEADER_INDEX_LAG = "X-Raftmem-Index-Lag"


def search_body(
    namespace: str | None, namespace_prefix: str | None, query: str | None, vector: Sequence[float] | None,
    options: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON of POST /v1/search (None values left out)."""
    if (namespace is None) == (namespace_prefix is None):
        raise ValueError("give one of namespace and namespace_prefix")
    body: dict[str, Any] = {"namespace": namespace, "namespace_prefix": namespace_prefix, "query": query,
                            "vector": list(vector) if vector is not None else None, **options}
    return {k: v for k, v in body.items() if v is not None and v is not False}


class _Sender(Protocol):
    async def _send(self, request: _Request, retry: RetryPolicy | None = None) -> Response: ...


class SearchMixin:
    """Search calls of AsyncClient."""

    async def search_raw(
        self: _Sender, namespace: str | None = None, query: str | None = None, *,
        namespace_prefix: str | None = None, vector: Sequence[float] | None = None, metric: str | None = None,
        filter: Mapping[str, Any] | None = None, limit: int | None = None, offset: int | None = None,  # noqa: A002
        cursor: str | None = None, fresh: bool = False, consistency: str | None = None, after: str | None = None,
        order_by: str | None = None, with_embedding: bool = False, context: str | None = None,
        retry: RetryPolicy | None = None,
    ) -> Response:
        options = {"metric": metric, "filter": dict(filter) if filter is not None else None, "limit": limit,
                   "offset": offset, "cursor": cursor, "fresh": fresh, "consistency": consistency, "after": after,
                   "order_by": order_by, "with_embedding": with_embedding}
        body = search_body(namespace, namespace_prefix, query, vector, options)
        headers = {"Content-Type": "application/json", **({HEADER_CONTEXT: context} if context else {})}
        request = _Request("POST", "/v1/search", is_write=False, headers=headers, body=orjson.dumps(body),
                           stale_tolerant=consistency == "eventual")
        return await self._send(request, retry)

    async def search(self, namespace: str | None = None, query: str | None = None, **kw: Any) -> dict[str, Any]:
        """One page: `{"items" (each the memory plus "score"), "more", "cursor", "index_lag"}`.
        Keywords: namespace_prefix, vector, metric, filter, limit, offset, cursor,
        fresh, consistency, after, order_by, with_embedding, context, retry."""
        body: dict[str, Any] = (await self.search_raw(namespace, query, **kw)).body  # type: ignore[misc]
        return body

    async def search_all(
        self, namespace: str | None = None, query: str | None = None, *, max_items: int | None = None, **kw: Any,
    ) -> AsyncGenerator[dict[str, Any], None]:
        """Every hit, following cursors (at most `max_items`)."""
        seen = 0
        for _ in range(SEARCH_PAGES_MAX):
            page = await self.search(namespace, query, **kw)
            for item in page.get("items") or ():
                if max_items is not None and seen >= max_items:
                    return
                yield item
                seen += 1
            if not page.get("more") or not page.get("cursor"):
                return
            kw["cursor"] = page["cursor"]

    async def list_namespaces(
        self: _Sender, *, prefix: str | None = None, suffix: str | None = None, max_depth: int | None = None,
        limit: int = 100, offset: int = 0, retry: RetryPolicy | None = None,
    ) -> builtins.list[str]:
        """Namespaces (dotted labels; `*` matches one label in prefix and suffix), as
        LangGraph's list_namespaces."""
        params = {"limit": str(limit), "offset": str(offset)}
        for name, value in (("prefix", prefix), ("suffix", suffix), ("max_depth", max_depth)):
            if value is not None:
                params[name] = str(value)
        request = _Request("GET", "/v1/namespaces", is_write=False, params=params, stale_tolerant=True)
        body = (await self._send(request, retry)).body
        return [str(n) for n in body.get("namespaces") or ()]

    async def namespace_summary(
        self: _Sender, namespace: str, *, agent_id: str | None = None, refresh: bool = False,
        retry: RetryPolicy | None = None,
    ) -> dict[str, Any]:
        """Counts by kind and tag, time range, newest ids; `stale` and `age_ms` say how old."""
        params = {"refresh": "true"} if refresh else {}
        if agent_id is not None:
            params["agent_id"] = agent_id
        request = _Request("GET", f"/v1/namespaces/{quote(namespace, safe='')}/summary", is_write=False,
                           params=params)
        body: dict[str, Any] = (await self._send(request, retry)).body
        return body


class _Runner(Protocol):
    _async: Any

    def _run(self, awaitable: Awaitable[T]) -> T: ...


class SyncSearchMixin:
    """The blocking face of SearchMixin (on Client)."""

    def search(self: _Runner, namespace: str | None = None, query: str | None = None, **kw: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._run(self._async.search(namespace, query, **kw))
        return result

    def search_all(self: _Runner, namespace: str | None = None, query: str | None = None,
                   **kw: Any) -> Iterator[dict[str, Any]]:
        pages = self._async.search_all(namespace, query, **kw)
        try:
            while True:
                try:
                    item: dict[str, Any] = self._run(pages.__anext__())
                except StopAsyncIteration:
                    return
                yield item
        finally:
            self._run(pages.aclose())

    def list_namespaces(self: _Runner, **kw: Any) -> builtins.list[str]:
        result: builtins.list[str] = self._run(self._async.list_namespaces(**kw))
        return result

    def namespace_summary(self: _Runner, namespace: str, **kw: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._run(self._async.namespace_summary(namespace, **kw))
        return result
