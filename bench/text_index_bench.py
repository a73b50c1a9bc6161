"""One replica's text index alone: the CPU per corpus memory of `TextIndex.upsert`
and `commit` in batches, split into the calling thread (Python building tantivy
documents) and tantivy's own threads (indexing, serializing segments, merges).

    python bench/text_index_bench.py [--docs 30000] [--batch 600 3000 ...] [--dir /dev/shm]

Fitting `background = a + c / batch` over two batch sizes gives tantivy's cost
per document (a) and per commit (c); raftmem/indexing/DESIGN.md, "What a
document costs", has the figures.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli import corpus  # noqa: E402
from raftmem.indexing.engines import text_doc  # noqa: E402
from raftmem.textindex import TextIndex  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(docs: int, batch: int, directory: Path) -> dict[str, float]:
    records = []
    for i in range(docs):
        m = corpus.memory(i)
        records.append({"namespace": m.get("namespace", "bench"), "id": f"m{i}", "content": m["content"],
                        "agent_id": m.get("agent_id"), "kind": m.get("kind"), "tags": m.get("tags", []),
                        "created_at": 1, "updated_at": 1, "rev": i + 1})
    text_docs = [text_doc(r) for r in records]
    where = Path(tempfile.mkdtemp(dir=directory))
    try:
        index = TextIndex(where, 16_000_000)
        thread0, cpu0 = time.thread_time(), _cpu()
        commit_s = 0.0
        for start in range(0, docs, batch):
            index.upsert(text_docs[start:start + batch])
            t = time.perf_counter()
            index.commit(start + batch)
            commit_s += time.perf_counter() - t
        thread, cpu = time.thread_time() - thread0, _cpu() - cpu0
        index.close()
    finally:
        shutil.rmtree(where, ignore_errors=True)
    commits = -(-docs // batch)
    return {"cpu_us": 1e6 * cpu / docs, "caller_us": 1e6 * thread / docs,
            "tantivy_us": 1e6 * (cpu - thread) / docs, "commit_ms": 1e3 * commit_s / commits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=30_000)
    parser.add_argument("--batch", type=int, nargs="+", default=[600, 3000])
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    results = {}
    for batch in args.batch:
        r = results[batch] = run(args.docs, batch, args.dir or Path(tempfile.gettempdir()))
        print(f"batch {batch}: {r['cpu_us']:.1f} us CPU per document (calling thread {r['caller_us']:.1f}, "
              f"tantivy's threads {r['tantivy_us']:.1f}); {r['commit_ms']:.1f} ms per commit call")
    if len(results) >= 2:
        (b1, r1), (b2, r2) = sorted(results.items())[:2]
        per_commit_us = (r1["tantivy_us"] - r2["tantivy_us"]) / (1 / b1 - 1 / b2)
        per_doc = r2["tantivy_us"] - per_commit_us / b2
        print(f"fit: tantivy {per_doc:.1f} us per document + {per_commit_us / 1000:.1f} ms per commit")


if __name__ == "__main__":
    main()
