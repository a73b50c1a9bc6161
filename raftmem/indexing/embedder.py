"""Server-side embedding through an OpenAI-compatible endpoint
(`indexing.embedder: {url, model, dims}`): POST {url}/v1/embeddings with
`{"model", "input": [text]}`, the vector from `data[0].embedding`.

A memory written without an `embedding` and with text is embedded at the
shard leader before the write is proposed, so the vector is part of the
replicated record (every replica indexes the same one, and a rebuild from the
store finds it). The embedder being down makes such writes fail with 503
(nothing written), never succeed without their vector.
"""

from __future__ import annotations

import aiohttp

from ..config import EmbedderConfig
from ..embeddings import check_vector
from ..errors import InvalidRequest, Unavailable


class Embedder:
    def __init__(self, config: EmbedderConfig) -> None:
        self.config = config
        self.calls = 0
        self.failures = 0
        self._session: aiohttp.ClientSession | None = None

    async def embed(self, texts: list[str]) -> list[list[float]]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        self.calls += 1
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_ms / 1000)
        try:
            async with self._session.post(
                self.config.url + "/v1/embeddings", json={"model": self.config.model, "input": texts},
                timeout=timeout,
            ) as resp:
                body = await resp.json(content_type=None)
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            self.failures += 1
            raise Unavailable(f"the embedder at {self.config.url} did not answer: {e}") from e
        if status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
            self.failures += 1
            raise Unavailable(f"the embedder at {self.config.url} answered {status}")
        out = []
        for item in sorted(body["data"], key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0):
            try:
                vector = check_vector("embedder answer", item.get("embedding") if isinstance(item, dict) else None)
            except InvalidRequest as e:
                self.failures += 1
                raise Unavailable(f"the embedder at {self.config.url}: {e.message}") from e
            if len(vector) != self.config.dims:
                self.failures += 1
                raise Unavailable(f"the embedder returned {len(vector)} dimensions, indexing.embedder.dims "
                                  f"is {self.config.dims}")
            out.append(vector)
        if len(out) != len(texts):
            raise Unavailable(f"the embedder returned {len(out)} vectors for {len(texts)} texts")
        return out

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
