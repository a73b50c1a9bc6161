"""How long an index worker thread keeps the event loop from running: an
asyncio loop with the node's loop-lag probe (a timer every 2 ms) while a
worker thread, as a replica index's absorber does, builds and indexes corpus
memories in batches, one step more per mode:

    python bench/gil_probe.py [--docs 30000] [--batch 1000] [--modes idle docs upsert commit reload]

  idle    the worker sleeps (the probe's floor)
  docs    builds each batch's TextDocs (pure Python)
  upsert  ... and adds them to the tantivy writer
  commit  ... and commits the writer
  reload  ... and reloads the index's searchers (TextIndex.commit does all four)

Prints the lag the probe saw (mean, p99, max). raftmem/indexing/DESIGN.md,
"What a document costs", has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cli import corpus  # noqa: E402
from raftmem.indexing.engines import text_doc  # noqa: E402
from raftmem.metrics import LoopLag  # noqa: E402
from raftmem.textindex import TextIndex  # noqa: E402

MODES = ("idle", "docs", "upsert", "commit", "reload")


async def probe(mode: str, records: list[dict], batch: int, directory: Path) -> list[float]:
    loop = asyncio.get_running_loop()
    seen: list[float] = []
    lag = LoopLag(seen.append, period_s=0.002)
    where = Path(tempfile.mkdtemp(dir=directory))
    index = TextIndex(where, 16_000_000)
    step = MODES.index(mode)

    def work() -> None:
        for start in range(0, len(records), batch):
            if step == 0:
                time.sleep(0.01)
                continue
            docs = [text_doc(r) for r in records[start:start + batch]]
            if step >= 2:
                index.upsert(docs)
            if step >= 3:
                index.writer.commit()
            if step >= 4:
                index.index.reload()

    lag.start(loop)
    try:
        await loop.run_in_executor(None, work)
    finally:
        lag.stop()
        index.close()
        shutil.rmtree(where, ignore_errors=True)
    return sorted(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--dir", type=Path, default=Path("/dev/shm") if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args()
    records = [{"namespace": "bench.a", "id": f"m{i}", "content": corpus.memory(i)["content"],
                "created_at": 1, "updated_at": 1, "rev": i + 1} for i in range(args.docs)]
    for mode in args.modes:
        seen = asyncio.run(probe(mode, records, args.batch, args.dir or Path(tempfile.gettempdir())))
        if not seen:
            print(f"{mode}: the probe never ran")
            continue
        print(f"{mode}: {len(seen)} samples, loop late by mean {1e3 * sum(seen) / len(seen):.2f} ms, "
              f"p99 {1e3 * seen[int(len(seen) * 0.99)]:.2f} ms, max {1e3 * seen[-1]:.2f} ms")


if __name__ == "__main__":
    main()
