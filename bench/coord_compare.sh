#!/usr/bin/env bash
# Locks and task claims: raftmem vs etcd 3.4's lock on this machine, same load
# (bench/coord_bench.py: uncontended acquire+release latency, hand-overs per
# second with CLIENTS clients on one lock, task claim+complete per second with
# CLIENTS workers).
#
#   bench/coord_compare.sh [DURATION_S]        (default 10; per measurement)
#
# Environment: PYTHON (an interpreter with raftmem installed), CLIENTS (32),
# FILL (tasks queued before the workers start; 6000), OUT (results directory;
# default bench/results/coord-compare-<time>), KEEP_WORK=1 to keep data and logs.
# Each system runs alone (etcd, then raftmem, each stopped after), on the ports
# of bench/lib.sh (etcd 2379/22379/32379, raftmem 8781-8783). Everything started
# here is stopped on exit, by pid.
set -euo pipefail

DURATION_S=${1:-${DURATION_S:-10}}
CLIENTS=${CLIENTS:-32}
FILL=${FILL:-6000}
PYTHON=${PYTHON:-python3}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$REPO/bench/results/coord-compare-$STAMP}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/coord-compare.XXXXXX")
mkdir -p "$OUT" "$WORK/logs"

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
check_prereqs
LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
check_ports_free

run() { # TARGET URLS PIDS...
    local target=$1 urls=$2
    shift 2
    log "$target: uncontended, contended ($CLIENTS clients), tasks ($CLIENTS workers), ${DURATION_S}s each"
    cpu_start "$@"
    (cd "$REPO" && "$PYTHON" bench/coord_bench.py --target "$target" --url "$urls" --clients "$CLIENTS" \
        --duration "$DURATION_S" --fill "$FILL" --json) >"$OUT/$target.json" || log "$target failed (exit $?)"
    cpu_stop "$OUT/$target.cpu.json"
}

start_etcd
run etcd "$ETCD_URLS" "${ETCD_PID[@]}"
stop_etcd
start_raftmem
run raftmem "$RM_URLS" "${RM_PID[@]}"
stop_raftmem

"$PYTHON" - "$OUT" "$LOADAVG_BEFORE" <<'PY' | tee "$OUT/table.md"
import json, sys
from pathlib import Path

out, loadavg = Path(sys.argv[1]), sys.argv[2]
r = {}
for t in ("raftmem", "etcd"):
    try:
        r[t] = json.loads((out / f"{t}.json").read_text())
    except (OSError, ValueError):
        pass  # that run failed: its cells say so


def cell(target, *path, fmt="{:.1f}"):
    value = r.get(target)
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return "failed" if value is None else fmt.format(value)


first = next(iter(r.values()), {})
print(f"### locks and task claims, raftmem vs etcd, {first.get('at', '?')}")
print()
print(f"{first.get('clients', '?')} clients, {first.get('duration_s', '?')} s per measurement; load average before: {loadavg}.")
print()
print("| measurement | raftmem | etcd |")
print("|---|--:|--:|")
for label, path, fmt in (
    ("uncontended acquire+release p50 ms", ("uncontended", "p50_ms"), "{:.1f}"),
    ("uncontended acquire+release p99 ms", ("uncontended", "p99_ms"), "{:.1f}"),
    ("contended hand-overs/s (one lock)", ("contended", "handoffs_per_s"), "{:.0f}"),
    ("contended acquire+release p99 ms", ("contended", "p99_ms"), "{:.0f}"),
    ("task claim+complete/s", ("tasks", "per_s"), "{:.0f}"),
):
    print(f"| {label} | {cell('raftmem', *path, fmt=fmt)} | {cell('etcd', *path, fmt=fmt)} |")
PY
