"""One shard replica's engines: its full-text index (raftmem.textindex) and a
vector index per embedding dimension (raftmem.vectorindex), and every
operation the replica's absorber and its searches ask of them.

Where they run is the caller's choice (raftmem/indexing/DESIGN.md, "The
engines in a process of their own"): `ReplicaEngines` is the engines
themselves, in the calling process; `host.RemoteEngines` has the same methods
and runs them in the node's engine host process, so that neither the Python
that turns records into documents nor tantivy-py's calls (which hold the GIL)
stall the node's event loop. Both answer writes with an `EngineState`: the
watermarks and counters the replica keeps a copy of, so nothing on the loop
has to ask the engines.

Thread-safety: writes (write, begin_rebuild, commit, save_vectors, close)
come from one thread at a time per replica (the absorber serializes them);
reads from any thread.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .. import codec, embeddings
from ..errors import Unavailable
from ..textindex import Hit, Restriction, TextDoc, TextIndex, doc_key
from ..vectorindex import VectorIndex

VECTOR_FILE_PREFIX = "vectors-"
VECTOR_FILE_SUFFIX = ".usearch"
GC_EVERY_COMMITS = 64
VKEY_MASK = (1 << 63) - 1
# A vector search among at most this many candidates is exact over their
# stored vectors (raftmem/indexing/search.py).
EXACT_CANDIDATES_MAX = 5000

# (exact, no more candidates, the first candidates as (document key, score),
# the rest as (vector key, score))
Nearest = tuple[bool, bool, list[tuple[str, float | None]], list[tuple[int, float]]]


class EngineLost(Unavailable):
    """The engine host died (or its connection broke) during a call."""


class EngineError(RuntimeError):
    """An engine call failed inside the engine host (its text)."""


def vkey_of(namespace: str, mid: str) -> int:
    """A memory's key in the vector indexes (64-bit hash; a collision at 100k
    memories per replica has odds of about 1 in 10^9)."""
    digest = hashlib.blake2b(doc_key(namespace, mid).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & VKEY_MASK


def text_doc(rec: Mapping[str, Any]) -> TextDoc:
    emb = rec.get("emb")
    return TextDoc(
        namespace=rec["namespace"], id=rec["id"], text=embeddings.text_of(rec.get("content")),
        agent_id=rec.get("agent_id"), kind=rec.get("kind"), tags=tuple(rec.get("tags") or ()),
        created_at=int(rec.get("created_at") or 0), updated_at=int(rec.get("updated_at") or 0),
        vkey=vkey_of(rec["namespace"], rec["id"]) if emb else None, rev=int(rec.get("rev") or 0),
    )


@dataclass
class EngineState:
    """What the replica keeps of its engines after each write."""

    text_watermark: int = 0
    vector_watermarks: dict[int, int] = field(default_factory=dict)  # per dimension
    vector_counts: dict[int, int] = field(default_factory=dict)
    vectors_dirty: bool = False  # vectors changed since the last save
    documents: int = 0
    text_bytes: int = 0
    vector_bytes: int = 0

    def durable(self) -> int:
        """Where recovery starts: the lowest of the text index's and the vector indexes' watermarks."""
        return min([self.text_watermark, *self.vector_watermarks.values()])

    def vectors_behind(self) -> int:
        return self.text_watermark - min(self.vector_watermarks.values(), default=self.text_watermark)


class Engines(Protocol):
    """What a replica asks of its engines (ReplicaEngines, host.RemoteEngines)."""

    remote: bool

    def state(self) -> EngineState: ...
    def lost(self) -> bool: ...
    def write(self, records: Sequence[Mapping[str, Any]], gone: Sequence[tuple[str, str]],
              raw: Sequence[bytes] = ()) -> None: ...
    def begin_rebuild(self) -> None: ...
    def commit(self, watermark: int) -> EngineState: ...
    def save_vectors(self) -> EngineState: ...
    def close(self, save: bool) -> None: ...
    def search(self, restriction: Restriction, terms: Sequence[tuple[str, float]], limit: int,
               order_by: str | None = None, descending: bool = True) -> list[Hit]: ...
    def term_stats(self, terms: Sequence[str]) -> tuple[int, list[int]]: ...
    def nearest(self, query: np.ndarray, restriction: Restriction, metric: str, count: int,
                first: int) -> Nearest | None: ...
    def resolve(self, vkeys: Sequence[int]) -> dict[int, str]: ...
    def revs(self) -> list[tuple[str, int]]: ...
    def vectors_held(self, keys: dict[int, list[int]]) -> dict[int, tuple[int, int]]: ...
    def all_keys(self) -> list[str]: ...


class ReplicaEngines:
    """The engines themselves, in this process."""

    remote = False

    def __init__(self, directory: Path, heap_bytes: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.text = TextIndex(directory / "text", heap_bytes)
        self.vectors: dict[int, VectorIndex] = {}
        for path in directory.iterdir():
            dims = _vector_file_dims(path.name)
            if dims is not None:
                self.vectors[dims] = VectorIndex(path, dims)
        self.dirty = False
        self._commits = 0
        self._fresh: dict[int, VectorIndex] | None = None  # a rebuild's vector indexes, until its commit

    def lost(self) -> bool:
        return False

    def state(self) -> EngineState:
        return EngineState(
            text_watermark=self.text.watermark,
            vector_watermarks={d: v.watermark for d, v in self.vectors.items()},
            vector_counts={d: len(v) for d, v in self.vectors.items()},
            vectors_dirty=self.dirty, documents=self.text.documents(),
            text_bytes=self.text.bytes_written, vector_bytes=sum(v.bytes_written for v in self.vectors.values()),
        )

    # -- writes -------------------------------------------------------------------------
    def write(self, records: Sequence[Mapping[str, Any]], gone: Sequence[tuple[str, str]],
              raw: Sequence[bytes] = ()) -> None:
        """Into the text index and the vector indexes (a rebuild's new ones
        while it runs): `records` live (and `raw`, the same stored as JSON),
        the memories of `gone` removed. Searchable at the next commit."""
        recs = [*records, *(codec.loads(r) for r in raw)]
        rebuilding = self._fresh is not None
        live = self._fresh if self._fresh is not None else self.vectors
        docs = [text_doc(r) for r in recs]
        self.text.upsert(docs)
        self.text.delete(doc_key(ns, mid) for ns, mid in gone)
        by_dims: dict[int, tuple[list[int], list[list[float]]]] = {}
        unvectored: list[int] = [vkey_of(ns, mid) for ns, mid in gone]
        for rec, doc in zip(recs, docs, strict=True):
            if doc.vkey is None:
                unvectored.append(vkey_of(rec["namespace"], rec["id"]))
                continue
            vector = embeddings.unpack(rec["emb"])
            keys, rows = by_dims.setdefault(len(vector), ([], []))
            keys.append(doc.vkey)
            rows.append(vector)
        for dims, (keys, rows) in by_dims.items():
            index = live.get(dims)
            if index is None:
                index = VectorIndex(self.directory / f"{VECTOR_FILE_PREFIX}{dims}{VECTOR_FILE_SUFFIX}", dims,
                                    empty=rebuilding)
                if not rebuilding:
                    # Empty, it covers everything before this batch: saving that
                    # now keeps a restart from replaying from index 0.
                    index.save(self.text.watermark)
                live[dims] = index
            for other in live.values():
                if other is not index:
                    other.remove(keys)
            index.upsert(keys, np.asarray(rows, dtype=np.float32))
            self.dirty = True
        if unvectored:
            for index in live.values():
                index.remove(unvectored)
            self.dirty = self.dirty or bool(live)

    def begin_rebuild(self) -> None:
        """What follows is the whole store: the text index is emptied (at the
        commit) and the vectors go into new indexes, swapped in at the commit."""
        self.text.clear()
        self._fresh = {}

    def commit(self, watermark: int) -> EngineState:
        """Everything written so far, durable and searchable, with the
        watermark it reaches (a rebuild's vector indexes saved and swapped in)."""
        self.text.commit(watermark)
        fresh = self._fresh
        if fresh is not None:
            self._fresh = None
            for dims, old in self.vectors.items():
                if dims not in fresh:
                    old.remove_file()
            for v in fresh.values():
                v.save(watermark)
            self.vectors = fresh
            self.dirty = False
        else:
            self._commits += 1
            if self._commits % GC_EVERY_COMMITS == 0:
                self.text.garbage_collect()
        return self.state()

    def save_vectors(self) -> EngineState:
        for v in self.vectors.values():
            v.save(self.text.watermark)
        self.dirty = False
        return self.state()

    def close(self, save: bool) -> None:
        if save and self.dirty:
            self.save_vectors()
        self.text.close()

    # -- reads --------------------------------------------------------------------------
    def search(self, restriction: Restriction, terms: Sequence[tuple[str, float]], limit: int,
               order_by: str | None = None, descending: bool = True) -> list[Hit]:
        return self.text.search(restriction, terms, limit, order_by, descending)

    def term_stats(self, terms: Sequence[str]) -> tuple[int, list[int]]:
        return self.text.term_stats(terms)

    def resolve(self, vkeys: Sequence[int]) -> dict[int, str]:
        return self.text.resolve(vkeys)

    def nearest(self, query: np.ndarray, restriction: Restriction, metric: str, count: int,
                first: int) -> Nearest | None:
        """The best `count` candidates for `query` (None: no vector of its
        dimension): exact over the stored vectors of at most
        EXACT_CANDIDATES_MAX candidates, else from the graph; the first `first` as document keys."""
        vectors = self.vectors.get(len(query))
        if vectors is None or not len(vectors):
            return None
        text = self.text
        # The count (cached per commit) chooses; the candidates themselves come from
        # one searcher, asked for one more than the exact path takes: a commit between
        # the two calls must not leave the oldest candidates out of an answer that
        # says it saw them all.
        vkeys = text.vkeys(restriction, EXACT_CANDIDATES_MAX + 1) if text.count(restriction) <= EXACT_CANDIDATES_MAX else None
        if vkeys is not None and len(vkeys) <= EXACT_CANDIDATES_MAX:
            near = vectors.exact(query, vkeys, metric)[:count]
            exact, done = True, count >= len(vkeys)
        else:
            near = vectors.search(query, count)
            if metric != "cosine":
                near = vectors.exact(query, [k for k, _ in near], metric)
            exact, done = False, count >= len(vectors)
        keys = text.resolve([k for k, _ in near[:first]])
        return exact, done, [(keys[k], s) for k, s in near[:first] if k in keys], near[first:]

    def revs(self) -> list[tuple[str, int]]:
        return self.text.all_revs()

    def vectors_held(self, keys: dict[int, list[int]]) -> dict[int, tuple[int, int]]:
        """Per dimension: (vectors in the index, how many of `keys` it holds)."""
        return {d: (len(self.vectors[d]), self.vectors[d].held(ks)) if d in self.vectors else (0, 0)
                for d, ks in keys.items()}

    def all_keys(self) -> list[str]:
        """Every memory's key (tests)."""
        return self.text.all_keys()


def _vector_file_dims(name: str) -> int | None:
    if not (name.startswith(VECTOR_FILE_PREFIX) and name.endswith(VECTOR_FILE_SUFFIX)):
        return None
    middle = name[len(VECTOR_FILE_PREFIX):-len(VECTOR_FILE_SUFFIX)]
    return int(middle) if middle.isdigit() else None
