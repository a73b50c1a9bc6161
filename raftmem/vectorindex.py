"""The one module that uses usearch: a shard replica's vector index for one
dimension (an HNSW graph, cosine distance, vectors held as bfloat16),
persisted as one file.

Why usearch (raftmem/indexing/DESIGN.md has the measurements): a wheel for
this platform (hnswlib 0.8.0 is a source package that needs a C++ build),
removal by key, save to and restore from a buffer, and it releases the GIL
while it adds and searches (a 28 ms worst gap on a thread spinning beside
20,000 inserts). It has no filtered search from Python: a search restricted to
few candidates (a namespace, an agent) is exact over their vectors instead
(`exact`), and a broad one asks the graph for more than it needs and filters.

The file is `header + usearch's own bytes`, the header holding the watermark
(the Raft index the saved graph covers), written atomically (temp file, fsync,
rename): a crash leaves the previous save or the new one. Saving holds the GIL
(about 3 ms per MB of index, measured), so it is done rarely
(`indexing.checkpoint_s`) and per shard replica; between saves the change log
is the write-ahead log (recovery replays it from the saved watermark).

Thread-safety: one lock around every call into usearch (adds, removes and
searches from the absorber and from search threads).
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from usearch.index import Index

# RMVX2: vectors stored as bfloat16 (RMVX1 held float32; such a file is not
# loaded, and the replica rebuilds its graph from the store).
MAGIC = b"RMVX2\n"
_HEADER = struct.Struct("<6sQI")  # magic, watermark, dims
METRICS = ("cosine", "dot", "l2")
CONNECTIVITY = 16
EXPANSION_ADD = 64  # usearch's default 128 doubles insert time for little recall at this size
# bfloat16 distances (AVX-512 BF16 here) cost a quarter of float32 ones, so the
# search can look twice as far for less than before: 12,900 vectors of 384
# dimensions, recall@10 0.957 at 0.81 ms (f32, 64) -> 0.989 at 0.32 ms (bf16,
# 128); raftmem/indexing/DESIGN.md, "Vectors in bfloat16".
DTYPE = "bf16"
EXPANSION_SEARCH = 128


def _new_index(dims: int) -> Index:
    return Index(ndim=dims, metric="cos", dtype=DTYPE, connectivity=CONNECTIVITY,
                 expansion_add=EXPANSION_ADD, expansion_search=EXPANSION_SEARCH)


def scores(metric: str, query: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Higher is better: cosine similarity, dot product, or minus the L2 distance."""
    out: np.ndarray
    if metric == "dot":
        out = vectors @ query
    elif metric == "l2":
        out = -np.linalg.norm(vectors - query, axis=1)
    else:
        norms = np.linalg.norm(vectors, axis=1) * (np.linalg.norm(query) or 1.0)
        out = (vectors @ query) / np.where(norms == 0, 1.0, norms)
    return out


class VectorIndex:
    def __init__(self, path: Path, dims: int, empty: bool = False) -> None:
        """`empty`: start a new graph (a rebuild), whatever the file holds."""
        self.path = path
        self.dims = dims
        self.watermark = 0  # of the last save (what a restart resumes from)
        self.bytes_written = 0
        self._lock = threading.Lock()
        self._index = _new_index(dims) if empty else self._load()

    def _load(self) -> Index:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return _new_index(self.dims)
        if len(raw) < _HEADER.size:
            return _new_index(self.dims)
        magic, watermark, dims = _HEADER.unpack_from(raw)
        if magic != MAGIC or dims != self.dims:
            return _new_index(self.dims)
        index = _new_index(self.dims)
        try:
            index.load(memoryview(raw)[_HEADER.size:])
        except (RuntimeError, ValueError):
            return _new_index(self.dims)  # damaged: derived data, the replica rebuilds it
        index.expansion_search = EXPANSION_SEARCH  # type: ignore[misc]  # ours, whatever the file says (usearch has the setter; its stub does not)
        self.watermark = watermark
        return index

    def __len__(self) -> int:
        with self._lock:
            return len(self._index)

    def upsert(self, keys: Sequence[int], vectors: np.ndarray) -> None:
        if not len(keys):
            return
        k = np.asarray(keys, dtype=np.uint64)
        with self._lock:
            self._index.remove(k)
            self._index.add(k, np.asarray(vectors, dtype=np.float32), threads=1)

    def remove(self, keys: Sequence[int]) -> None:
        if keys:
            with self._lock:
                self._index.remove(np.asarray(keys, dtype=np.uint64))

    def held(self, keys: Sequence[int]) -> int:
        """How many of these keys the index holds."""
        if not keys:
            return 0
        with self._lock:
            return int(np.count_nonzero(self._index.contains(np.asarray(keys, dtype=np.uint64))))

    def clear(self) -> None:
        with self._lock:
            self._index = _new_index(self.dims)

    def search(self, query: np.ndarray, count: int) -> list[tuple[int, float]]:
        """Approximate nearest neighbours by cosine: (key, similarity), best first."""
        with self._lock:
            if len(self._index) == 0:
                return []
            matches = self._index.search(np.asarray(query, dtype=np.float32), min(count, len(self._index)),
                                         threads=1)
        return [(int(k), 1.0 - float(d)) for k, d in zip(matches.keys, matches.distances, strict=True)]

    def vectors(self, keys: Sequence[int]) -> tuple[list[int], np.ndarray]:
        """The stored vectors of those keys the index holds."""
        if not keys:
            return [], np.zeros((0, self.dims), dtype=np.float32)
        with self._lock:
            got: Any = self._index.get(np.asarray(keys, dtype=np.uint64))
        found = [(k, v) for k, v in zip(keys, got, strict=True) if v is not None]
        if not found:
            return [], np.zeros((0, self.dims), dtype=np.float32)
        return [k for k, _ in found], np.vstack([v for _, v in found]).astype(np.float32)

    def exact(self, query: np.ndarray, keys: Sequence[int], metric: str) -> list[tuple[int, float]]:
        """Exact scores of the given candidates, best first."""
        held, vectors = self.vectors(keys)
        if not held:
            return []
        s = scores(metric, np.asarray(query, dtype=np.float32), vectors)
        order = np.argsort(-s, kind="stable")
        return [(held[i], float(s[i])) for i in order]

    def save(self, watermark: int) -> None:
        """Persist the graph with the watermark it covers, atomically."""
        with self._lock:
            body = self._index.save()
        assert body is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(_HEADER.pack(MAGIC, watermark, self.dims))
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(str(self.path.parent), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.watermark = watermark
        self.bytes_written += _HEADER.size + len(body)

    def remove_file(self) -> None:
        self.path.unlink(missing_ok=True)
