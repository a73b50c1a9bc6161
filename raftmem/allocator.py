"""glibc's malloc, tuned for a node: the one module that calls `mallopt`.

Two things a node's threads do that glibc's defaults handle badly:

- **Arenas.** glibc gives each thread that allocates its own arena (up to 8 per
  core), and memory freed in one is rarely returned: the derived indexes'
  threads (tantivy's and usearch's native ones included) grew a node's RSS by
  ~280 MiB under tests/integration/test_memory_bound.py's load, ~110 MiB with
  two arenas. `MALLOC_ARENAS_MAX`.
- **tantivy's per-commit buffers.** Every text index commit ends its segment
  writer and starts another, which allocates its indexing buffers afresh
  (a hash table sized from `indexing.text_heap_bytes`, ~14 MiB at the default).
  Above glibc's mmap threshold (128 KiB, adapting up to the largest chunk
  freed) each is a fresh mapping, page-faulted in and zeroed page by page, and
  unmapped at the next commit: 3,480 page faults per commit, about half of a
  commit's CPU (measured with `perf` on 3-document commits, 2026-12-06:
  14.5-15.6 ms of CPU and 3,484 faults per commit by default; 6.4-9.8 ms and
  80-160 faults with the thresholds below). With the mmap threshold at glibc's
  maximum (32 MiB) and a trim threshold of 16 MiB, a freed buffer stays in the
  heap and the next commit reuses it. What that keeps is at most the trim
  threshold per arena beyond what is in use (2 arenas: 32 MiB), and the
  buffers are within the budget `text_heap_bytes` already counts.

Set before any thread starts. The environment's own settings still win
(`MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_`), and
`RAFTMEM_MALLOC=default` leaves glibc as it is (to compare).
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

ENV_VAR = "RAFTMEM_MALLOC"
MIB = 1 << 20
MALLOC_ARENAS_MAX = 2
MMAP_THRESHOLD = 32 * MIB  # glibc's largest allowed (64-bit)
TRIM_THRESHOLD = 16 * MIB

# glibc's mallopt parameter numbers (malloc.h), with the variable that overrides each
_SETTINGS = (
    (-8, "MALLOC_ARENA_MAX", MALLOC_ARENAS_MAX),  # M_ARENA_MAX
    (-3, "MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD),  # M_MMAP_THRESHOLD
    (-1, "MALLOC_TRIM_THRESHOLD_", TRIM_THRESHOLD),  # M_TRIM_THRESHOLD
)


def tune() -> dict[str, int]:
    """Apply the settings the environment does not make; what was set."""
    if os.environ.get(ENV_VAR) == "default":
        return {}
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return {}  # not glibc: nothing to tune
    done: dict[str, int] = {}
    for param, env, value in _SETTINGS:
        if os.environ.get(env):
            continue
        if libc.mallopt(param, value) == 1:
            done[env] = value
        else:
            log.warning("mallopt(%d, %d) refused", param, value)
    return done
