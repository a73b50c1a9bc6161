"""The one module that uses tantivy: a shard replica's full-text index and the
catalogue of its documents (which memory, which namespace, agent, kind, tags,
times), with BM25 ranking, tokenization and persisted segments.

One document per live memory, keyed by `namespace NUL id`. The index's
watermark (the Raft index it has absorbed) is a document of its own, written
in the same commit as the changes it covers: a crash leaves the index and its
watermark consistent, never a watermark ahead of what was committed.

Thread-safety: mutations and commits come from one worker thread at a time
(the replica's absorber serializes them); searches may run on any thread
(tantivy searchers are snapshots). tantivy releases the GIL while it commits
(measured: a 5 ms worst gap on a thread spinning beside a commit of 20,000
documents; raftmem/indexing/DESIGN.md).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tantivy

log = logging.getLogger(__name__)

ANALYZER = "raftmem"  # simple tokenizer, long tokens dropped, lowercased, English stems
TOKEN_CHARS_MAX = 40
META_KEY = "\x00meta"  # the watermark's document
WRITER_THREADS = 1
HITS_MAX = 100_000  # documents one search may return
COUNTS_CACHED_MAX = 256  # restrictions whose counts are kept between commits
ANY_TERMS_DISJUNCTION_MAX = 256  # "any of these terms" as a disjunction up to this many (`_any_term`)


@dataclass
class TextDoc:
    """What the index keeps of one memory."""

    namespace: str
    id: str
    text: str = ""
    agent_id: str | None = None
    kind: str | None = None
    tags: Sequence[str] = ()
    created_at: int = 0
    updated_at: int = 0
    vkey: int | None = None  # its key in the vector index, when it has an embedding
    rev: int = 0  # the Raft index of the record's write (checks compare it with the store's)

    @property
    def key(self) -> str:
        return doc_key(self.namespace, self.id)


def doc_key(namespace: str, mid: str) -> str:
    return f"{namespace}\x00{mid}"


def namespace_prefixes(namespace: str) -> list[str]:
    """`a.b.c` -> a, a.b, a.b.c: what a namespace_prefix matches on label boundaries."""
    labels = namespace.split(".")
    return [".".join(labels[: i + 1]) for i in range(len(labels))]


@dataclass(frozen=True)
class Restriction:
    """Exact conditions a document must meet (a filter's part that the index
    can check; the rest is checked on the records). Empty tuples: no condition."""

    namespace: str | None = None
    namespace_prefix: str | None = None
    agent_ids: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    tags_all: tuple[str, ...] = ()  # must carry each of these
    tags_any: tuple[str, ...] = ()  # must carry one of these
    with_vector: bool = False


@dataclass
class Hit:
    key: str
    score: float
    vkey: int | None = None


@dataclass
class _Files:
    """Sizes of the index's files, to count what each commit (and merge) wrote."""

    sizes: dict[str, int] = field(default_factory=dict)


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    sb.add_text_field("key", stored=True, tokenizer_name="raw")
    sb.add_text_field("ns", tokenizer_name="raw")
    sb.add_text_field("nsp", tokenizer_name="raw")
    sb.add_text_field("agent", tokenizer_name="raw")
    sb.add_text_field("kind", tokenizer_name="raw")
    sb.add_text_field("tag", tokenizer_name="raw")
    sb.add_text_field("text", tokenizer_name=ANALYZER)
    sb.add_unsigned_field("created", fast=True)
    sb.add_unsigned_field("updated", fast=True)
    sb.add_unsigned_field("vkey", stored=True, indexed=True, fast=True)
    sb.add_unsigned_field("wm", stored=True)
    sb.add_unsigned_field("rev", stored=True)
    return sb.build()


def analyzer() -> tantivy.TextAnalyzer:
    return (
        tantivy.TextAnalyzerBuilder(tantivy.Tokenizer.simple())
        .filter(tantivy.Filter.remove_long(TOKEN_CHARS_MAX))
        .filter(tantivy.Filter.lowercase())
        .filter(tantivy.Filter.stemmer("english"))
        .build()
    )


def bm25_idf(docs: int, doc_freq: int) -> float:
    """tantivy's BM25 idf (Lucene's): ln(1 + (N - n + 0.5) / (n + 0.5))."""
    return math.log(1.0 + (docs - doc_freq + 0.5) / (doc_freq + 0.5))


class TextIndex:
    def __init__(self, directory: Path, heap_bytes: int) -> None:
        self.directory = directory
        self.schema = _schema()
        self.analyzer = analyzer()
        self.index = self._open(heap_bytes)
        self.writer = self.index.writer(heap_size=heap_bytes, num_threads=WRITER_THREADS)
        self._files = _Files()
        self.bytes_written = 0
        self._scan_files()  # what is there already was not written by us
        self.bytes_written = 0
        self.watermark = self._read_watermark()
        # Counts of documents per restriction, valid until the next commit: a
        # vector search asks one per shard to choose exact or graph search.
        self._generation = 0
        self._counts: dict[Restriction, tuple[int, int]] = {}

    def _open(self, heap_bytes: int) -> tantivy.Index:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = str(self.directory)
        try:
            index = tantivy.Index(self.schema, path=path, reuse=True)
        except ValueError as e:
            # Another schema (an older raftmem) or a damaged directory: it is
            # derived data, so start again (the replica rebuilds it).
            log.warning("text index %s unusable (%s): starting it again", path, e)
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory.mkdir(parents=True)
            index = tantivy.Index(self.schema, path=path, reuse=False)
        # Our reload after each commit is the only one. tantivy's default reader
        # also reloads from a thread that polls meta.json, and two reloads are not
        # ordered: one that read an older commit's metas could publish its
        # searcher after ours, and searches would miss a commit whose watermark
        # the replica already claims (a fresh search missed acknowledged writes
        # once that way, most likely; raftmem/indexing/DESIGN.md, "Known limits").
        index.config_reader(reload_policy="manual")
        index.register_tokenizer(ANALYZER, self.analyzer)
        return index

    def _read_watermark(self) -> int:
        self.index.reload()
        searcher = self.index.searcher()
        hits = searcher.search(tantivy.Query.term_query(self.schema, "key", META_KEY), 1).hits
        if not hits:
            return 0
        value = searcher.doc(hits[0][1]).get_first("wm")
        return int(value or 0)

    # -- writes (one thread at a time) ------------------------------------------------
    def upsert(self, docs: Iterable[TextDoc]) -> None:
        for d in docs:
            self.writer.delete_documents_by_term("key", d.key)
            doc = tantivy.Document()
            doc.add_text("key", d.key)
            doc.add_text("ns", d.namespace)
            for prefix in namespace_prefixes(d.namespace):
                doc.add_text("nsp", prefix)
            if d.agent_id is not None:
                doc.add_text("agent", d.agent_id)
            if d.kind is not None:
                doc.add_text("kind", d.kind)
            for tag in d.tags:
                doc.add_text("tag", tag)
            if d.text:
                doc.add_text("text", d.text)
            doc.add_unsigned("created", max(0, int(d.created_at)))
            doc.add_unsigned("updated", max(0, int(d.updated_at)))
            if d.vkey is not None:
                doc.add_unsigned("vkey", d.vkey)
            doc.add_unsigned("rev", max(0, d.rev))
            self.writer.add_document(doc)

    def delete(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.writer.delete_documents_by_term("key", key)

    def clear(self) -> None:
        self.writer.delete_all_documents()

    def commit(self, watermark: int) -> None:
        """Make everything written so far durable and searchable, with the
        watermark it reaches (in the same commit)."""
        self.writer.delete_documents_by_term("key", META_KEY)
        meta = tantivy.Document()
        meta.add_text("key", META_KEY)
        meta.add_unsigned("wm", watermark)
        self.writer.add_document(meta)
        self.writer.commit()
        self.index.reload()
        self._generation += 1  # after the reload: a count cached under it saw the new segments
        self.watermark = watermark
        self._scan_files()

    def _scan_files(self) -> None:
        """Count bytes that appeared since the last look: tantivy's segment files
        never change once written, so a new name or a grown size is new bytes
        (its meta.json is rewritten whole: counted whole)."""
        seen = self._files.sizes
        now: dict[str, int] = {}
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            try:
                size = os.path.getsize(self.directory / name)
            except OSError:
                continue
            now[name] = size
            before = seen.get(name)
            if before is None or name.endswith(".json"):
                self.bytes_written += size if before is None or size != before or name == "meta.json" else 0
            elif size > before:
                self.bytes_written += size - before
        self._files.sizes = now

    def garbage_collect(self) -> None:
        self.writer.garbage_collect_files()

    def close(self) -> None:
        try:
            self.writer.wait_merging_threads()
        except ValueError:
            pass

    # -- reads (any thread) ---------------------------------------------------------------
    def tokens(self, text: str) -> list[str]:
        return self.analyzer.analyze(text)

    def term_stats(self, terms: Sequence[str]) -> tuple[int, list[int]]:
        """(documents, each term's document frequency) for global BM25 statistics."""
        searcher = self.index.searcher()
        return searcher.num_docs, [searcher.doc_freq("text", t) for t in terms]

    def _any_term(self, field: str, values: Sequence[Any]) -> tantivy.Query:
        """Documents with any of `values` in `field`. tantivy's term-set query
        costs about 0.3 ms however few the terms (0.29 ms for 10); a disjunction
        of term queries 0.04 ms for 10, 0.42 for 160, and loses past a few
        hundred (2.8 ms against 1.6 for 640; measured on a shard of 12,900)."""
        q = tantivy.Query
        if len(values) == 1:
            return q.term_query(self.schema, field, values[0])
        if len(values) <= ANY_TERMS_DISJUNCTION_MAX:
            return q.boolean_query([(tantivy.Occur.Should, q.term_query(self.schema, field, v)) for v in values])
        return q.term_set_query(self.schema, field, list(values))

    def _restricted(self, restriction: Restriction) -> list[tantivy.Query]:
        q = tantivy.Query
        out: list[tantivy.Query] = []
        if restriction.namespace is not None:
            out.append(q.term_query(self.schema, "ns", restriction.namespace))
        if restriction.namespace_prefix is not None:
            out.append(q.term_query(self.schema, "nsp", restriction.namespace_prefix))
        if restriction.agent_ids:
            out.append(self._any_term("agent", list(restriction.agent_ids)))
        if restriction.kinds:
            out.append(self._any_term("kind", list(restriction.kinds)))
        for tag in restriction.tags_all:
            out.append(q.term_query(self.schema, "tag", tag))
        if restriction.tags_any:
            out.append(self._any_term("tag", list(restriction.tags_any)))
        if restriction.with_vector:
            out.append(q.exists_query("vkey"))
        # Conditions select; they do not score.
        return [q.const_score_query(c, 0.0) for c in out]

    def _query(self, restriction: Restriction, terms: Sequence[tuple[str, float]]) -> tantivy.Query:
        q = tantivy.Query
        clauses = [(tantivy.Occur.Must, c) for c in self._restricted(restriction)]
        if terms:
            should = [
                (tantivy.Occur.Should, q.boost_query(q.term_query(self.schema, "text", t), boost))
                for t, boost in terms
            ]
            clauses.append((tantivy.Occur.Must, q.boolean_query(should)))
        if not clauses:
            return q.all_query()
        return q.boolean_query(clauses)

    def search(
        self, restriction: Restriction, terms: Sequence[tuple[str, float]], limit: int,
        order_by: str | None = None, descending: bool = True,
    ) -> list[Hit]:
        """The best `limit` documents: by BM25 over `terms` (each (token, boost)),
        or, with no terms, by `order_by` (a time field: created, updated)."""
        searcher = self.index.searcher()
        limit = max(1, min(limit, HITS_MAX))
        query = self._query(restriction, terms)
        if terms or order_by is None:
            result = searcher.search(query, limit, count=False)
        else:
            order = tantivy.Order.Desc if descending else tantivy.Order.Asc
            result = searcher.search(query, limit, count=False, order_by_field=order_by, order=order)
        out = []
        for score, address in result.hits:
            doc = searcher.doc(address)
            key = doc.get_first("key")
            if key is None or key == META_KEY:
                continue
            vkey = doc.get_first("vkey")
            out.append(Hit(str(key), float(score) if terms else 0.0, None if vkey is None else int(vkey)))
        return out

    def vkeys(self, restriction: Restriction, limit: int) -> list[int]:
        """Vector keys of up to `limit` documents that meet `restriction`, the
        last updated first (read from the fast field: no stored document is
        fetched)."""
        searcher = self.index.searcher()
        query = self._query(restriction, ())
        hits = searcher.search(query, max(1, min(limit, HITS_MAX)), count=False, order_by_field="updated",
                               order=tantivy.Order.Desc).hits
        values = searcher.fast_field_values("vkey", [address for _score, address in hits])
        return [int(v) for v in values if v is not None]

    def count(self, restriction: Restriction) -> int:
        """Documents that meet `restriction` (cached until the next commit)."""
        generation = self._generation
        cached = self._counts.get(restriction)
        if cached is not None and cached[0] == generation:
            return cached[1]
        searcher = self.index.searcher()
        result = searcher.search(self._query(restriction, ()), 1, count=True)
        count = getattr(result, "count", None)
        value = int(count) if count is not None else len(result.hits)
        if len(self._counts) >= COUNTS_CACHED_MAX:
            self._counts.clear()
        self._counts[restriction] = (generation, value)
        return value

    def resolve(self, vkeys: Sequence[int]) -> dict[int, str]:
        """Document keys of vector keys (those the index holds)."""
        if not vkeys:
            return {}
        searcher = self.index.searcher()
        query = self._any_term("vkey", list(vkeys))
        out: dict[int, str] = {}
        for _score, address in searcher.search(query, len(vkeys), count=False).hits:
            doc = searcher.doc(address)
            vkey, key = doc.get_first("vkey"), doc.get_first("key")
            if vkey is not None and key is not None:
                out[int(vkey)] = str(key)
        return out

    def documents(self) -> int:
        """Memories indexed (the watermark's document not counted)."""
        return max(0, self.index.searcher().num_docs - (1 if self.watermark or self._has_meta() else 0))

    def _has_meta(self) -> bool:
        searcher = self.index.searcher()
        return bool(searcher.search(tantivy.Query.term_query(self.schema, "key", META_KEY), 1).hits)

    def all_keys(self) -> list[str]:
        """Every memory's key (for checks and tests; reads the whole index)."""
        return sorted(key for key, _rev in self.all_revs())

    def all_revs(self) -> list[tuple[str, int]]:
        """Every memory's key and the Raft index of the version indexed."""
        searcher = self.index.searcher()
        total = searcher.num_docs
        if total == 0:
            return []
        out = []
        for _score, address in searcher.search(tantivy.Query.all_query(), total, count=False).hits:
            doc = searcher.doc(address)
            key = doc.get_first("key")
            if key is not None and key != META_KEY:
                out.append((str(key), int(doc.get_first("rev") or 0)))
        return out
