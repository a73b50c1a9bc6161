"""Apply, alone: CPU per put applied by one shard replica's state machine.

    python bench/apply_bench.py [--per-entry 16] [--entries 4000] [--keys 1000]
                                [--history-versions 10] [--events-retention 100000]
                                [--wal] [--profile]

A real RocksDB (on tmpfs, with the node's memory budget at its defaults) and the
real StateMachine; entries of `--per-entry` puts of 200-byte values over
`--keys` keys (1000: overwrites, as the wrk benchmark; 1,000,000: mostly new
memories, as the million load). The CPU is the process's (user + system, RocksDB's
background threads included, its memtable flushed at the end so the flush is
counted), per put. What a batched memory costs each of the three replicas; the
levers of raftmem/DESIGN.md ("A batched memory's CPU") were measured with it.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raftmem.commands import MemoryFields, Put, encode_entry  # noqa: E402
from raftmem.config import StorageConfig  # noqa: E402
from raftmem.statemachine import StateMachine  # noqa: E402
from raftmem.storage import MemoryBudget, Store  # noqa: E402

WARM_ENTRIES = 500
VALUE_CHARS = 200


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--per-entry", type=int, default=16)
    p.add_argument("--entries", type=int, default=4000)
    p.add_argument("--keys", type=int, default=1000)
    p.add_argument("--history-versions", type=int, default=10)
    p.add_argument("--events-retention", type=int, default=100_000)
    p.add_argument("--wal", action="store_true", help="RocksDB's own WAL on (storage.rocksdb_wal)")
    p.add_argument("--no-bloom", action="store_true", help="tables without bloom filters (before 2026-12-07)")
    p.add_argument("--profile", action="store_true", help="cProfile the run (its times are inflated)")
    args = p.parse_args()

    directory = tempfile.mkdtemp(prefix="apply-bench-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
    defaults = StorageConfig()
    budget = MemoryBudget(defaults.memtable_bytes_max, defaults.block_cache_bytes,
                          **({"bloom_bits_per_key": 0} if args.no_bloom else {}))
    store = Store(directory, budget, wal=args.wal)
    sm = StateMachine(store, 0, publish=lambda changes: None, events_retention=args.events_retention,
                      history_versions_max=args.history_versions)
    rng = random.Random(1)
    value = "".join(rng.choice("abcdefghij ") for _ in range(VALUE_CHARS))
    now = 1_800_000_000_000
    entries = [
        encode_entry([Put("bench", f"k{rng.randrange(args.keys)}", MemoryFields(content=value), now_ms=now + e)
                      for _ in range(args.per_entry)])
        for e in range(WARM_ENTRIES + args.entries)
    ]
    for i in range(WARM_ENTRIES):
        sm.apply(i + 1, entries[i])

    def run() -> None:
        for i in range(WARM_ENTRIES, WARM_ENTRIES + args.entries):
            sm.apply(i + 1, entries[i])

    cpu0, wall0 = _cpu_s(), time.perf_counter()
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(run)
    else:
        run()
    wall = time.perf_counter() - wall0
    store.flush()  # the memtable's flush counted too
    cpu = _cpu_s() - cpu0
    puts = args.entries * args.per_entry
    print(f"{cpu / puts * 1e6:.1f} us CPU per put ({wall / puts * 1e6:.1f} us wall; {args.per_entry} per entry, "
          f"{args.keys} keys, history {args.history_versions}, RocksDB WAL {'on' if args.wal else 'off'}, "
          f"bloom filters {'off' if args.no_bloom else 'on'})")
    store.close()
    shutil.rmtree(directory, ignore_errors=True)
    if args.profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(20)


if __name__ == "__main__":
    main()
