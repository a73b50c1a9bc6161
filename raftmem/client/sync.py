"""The blocking facade: an AsyncClient run on a private event-loop thread."""

from __future__ import annotations

import asyncio
import builtins
import threading
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, TypeVar

from .aio import AsyncClient
from .coordination import SyncCoordination
from .routing import RouteTable
from .search import SyncSearchMixin
from .session import AsyncSession
from .types import BatchResult
from .watch import Progress, WatchEvent

T = TypeVar("T")


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


class Client(SyncCoordination, SyncSearchMixin):
    """A blocking client: the same logic as AsyncClient, run on a private event-loop
    thread. Use as a context manager or call `close()`."""

    def __init__(self, urls: Sequence[str], **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raftmem-client", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self._async = self._run(self._make(urls, kw))
        except BaseException:
            self._stop_loop()
            raise

    @staticmethod
    async def _make(urls: Sequence[str], kw: dict[str, Any]) -> AsyncClient:
        return AsyncClient(urls, **kw)

    def _run(self, awaitable: Awaitable[T]) -> T:
        if self._closed:
            if isinstance(awaitable, Coroutine):
                awaitable.close()
            raise RuntimeError("the client is closed")
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self._loop).result()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._async.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    @property
    def routes(self) -> RouteTable:
        return self._async.routes

    def put(self, namespace: str, memory_id: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        return self._run(self._async.put(namespace, memory_id, content, **kw))

    def create(self, namespace: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        return self._run(self._async.create(namespace, content, **kw))

    def get(self, namespace: str, memory_id: str, **kw: Any) -> dict[str, Any]:
        return self._run(self._async.get(namespace, memory_id, **kw))

    def delete(self, namespace: str, memory_id: str, **kw: Any) -> dict[str, Any]:
        return self._run(self._async.delete(namespace, memory_id, **kw))

    def list_page(self, namespace: str, **kw: Any) -> dict[str, Any]:
        return self._run(self._async.list_page(namespace, **kw))

    def list(self, namespace: str, **kw: Any) -> Iterator[dict[str, Any]]:
        pages = self._async.list(namespace, **kw)
        return self._blocking(pages, pages.aclose)

    def _blocking(self, source: AsyncIterator[T], close: Callable[[], Awaitable[Any]],
                  each: Callable[[], None] = lambda: None) -> Iterator[T]:
        """One of the async client's iterators, blocking (`each` after every
        item); closed when left."""
        try:
            while True:
                try:
                    item = self._run(source.__anext__())
                except StopAsyncIteration:
                    return
                each()
                yield item
        finally:
            if not self._closed:
                self._run(close())

    def batch(self, ops: Sequence[Mapping[str, Any]], **kw: Any) -> builtins.list[BatchResult]:
        return self._run(self._async.batch(ops, **kw))

    def history(self, namespace: str, memory_id: str, **kw: Any) -> builtins.list[dict[str, Any]]:
        return self._run(self._async.history(namespace, memory_id, **kw))

    def watch(self, **kw: Any) -> Iterator[WatchEvent | Progress]:
        """Changes as they commit (see AsyncClient.watch); `tokens_out`, if
        given, is a list the current resume tokens are kept in (its only item)."""
        tokens_out: builtins.list[str] | None = kw.pop("tokens_out", None)
        if tokens_out is None:
            tokens_out = []
        watch = self._async.watch(**kw)

        def keep() -> None:
            tokens_out[:] = [watch.tokens]

        return self._blocking(watch, watch.close, keep)

    def watch_many(self, watches: Mapping[str, Mapping[str, Any]],
                   **kw: Any) -> Iterator[tuple[str, WatchEvent | Progress]]:
        """Many watches on one connection (see AsyncClient.watch_many);
        `tokens_out`, if given, is a dict kept at each watch's resume tokens."""
        tokens_out: dict[str, str] | None = kw.pop("tokens_out", None)
        if tokens_out is None:
            tokens_out = {}
        group = self._async.watch_many(watches, **kw)
        return self._blocking(group, group.close, lambda: tokens_out.update(group.tokens))

    def cluster(self) -> dict[str, Any]:
        return self._run(self._async.cluster())

    def health(self) -> dict[str, dict[str, Any]]:
        """Per node URL: whether it answers, its latency estimate, its failures."""
        return self._run(self._health())

    async def _health(self) -> dict[str, dict[str, Any]]:
        return self._async.health()

    def refresh_routes(self) -> bool:
        return self._run(self._async.refresh_routes(force=True))

    def session(self, context: str | None = None) -> Session:
        """A session; `context` continues another agent's (see AsyncClient.session)."""
        return Session(self, self._async.session(context))


class Session:
    """The blocking face of AsyncSession."""

    def __init__(self, client: Client, inner: AsyncSession) -> None:
        self._client = client
        self._inner = inner

    @property
    def tokens(self) -> dict[int, int]:
        return self._inner.tokens

    @property
    def context(self) -> str | None:
        """The causal context to hand to another agent's `client.session(context=...)`."""
        return self._inner.context

    def put(self, namespace: str, memory_id: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        return self._client._run(self._inner.put(namespace, memory_id, content, **kw))

    def create(self, namespace: str, content: Any = None, **kw: Any) -> dict[str, Any]:
        return self._client._run(self._inner.create(namespace, content, **kw))

    def delete(self, namespace: str, memory_id: str, **kw: Any) -> dict[str, Any]:
        return self._client._run(self._inner.delete(namespace, memory_id, **kw))

    def get(self, namespace: str, memory_id: str, **kw: Any) -> dict[str, Any]:
        return self._client._run(self._inner.get(namespace, memory_id, **kw))

    def search(self, namespace: str | None = None, query: str | None = None, **kw: Any) -> dict[str, Any]:
        return self._client._run(self._inner.search(namespace, query, **kw))
