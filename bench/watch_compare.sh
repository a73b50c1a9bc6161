#!/usr/bin/env bash
# Watch under write load, raftmem vs etcd 3.4 on this machine (issue 14's benchmark).
#
#   bench/watch_compare.sh [DURATION_S]        (default 15)
#
# Environment: PYTHON (an interpreter with raftmem installed; default python3),
# CLIENTS (32 writers), WATCHERS ("0 1 10 100": one run per count), VALUE_BYTES
# (200), KEYS (1000), WARMUP_S (3), RM_PER_CONNECTION (1: raftmem's watches
# K to a connection, POST /v1/watch, as etcd's own clients multiplex theirs;
# etcd's JSON gateway takes one a connection), OUT (results directory; default
# bench/results/watch-compare-<time>), KEEP_WORK=1 to keep data and logs.
#
# For each watcher count, each system alone (etcd, then raftmem, each started
# fresh for the run by bench/lib.sh, on empty data: 3 members/nodes on
# 127.0.0.1, fsync on every write, raftmem leaders balanced; so every count
# meets the same cluster, where one cluster for every count in turn gave the
# last count the most data, and the systems alternate as the machine drifts),
# one run of bench/watch_bench.py: CLIENTS writers put KEYS keys
# of one prefix while the watchers follow it (raftmem: GET /v1/watch NDJSON, spread
# over the nodes; etcd: POST /v3/watch on its JSON gateway, spread over the
# members). Reported per run: writes/s and their p50/p99, events/s delivered (all
# watchers, and per watcher), end-to-end latency from write acknowledged (and
# sent) to event received, p50/p99; and the write throughput with the most
# watchers against none. Prints a Markdown table (also $OUT/table.md, with every
# JSON report), with the servers' CPU per write over each run (what the watchers
# cost the servers, apart from this client) and how busy the whole machine was.
# Everything started here is stopped on exit, by pid.
set -euo pipefail

DURATION_S=${1:-${DURATION_S:-15}}
CLIENTS=${CLIENTS:-32}
WATCHERS=${WATCHERS:-"0 1 10 100"}
VALUE_BYTES=${VALUE_BYTES:-200}
KEYS=${KEYS:-1000}
WARMUP_S=${WARMUP_S:-3}
PYTHON=${PYTHON:-python3}
RM_PER_CONNECTION=${RM_PER_CONNECTION:-1}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$REPO/bench/results/watch-compare-$STAMP}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/watch-compare.XXXXXX")
mkdir -p "$OUT" "$WORK/logs"

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
check_prereqs
check_ports_free
LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)  # other work on the machine skews the numbers
ETCD_URL_LIST=$(printf 'http://127.0.0.1:%s,' "${ETCD_CLIENT_PORTS[@]}"); ETCD_URL_LIST=${ETCD_URL_LIST%,}

measure() { # TARGET WATCHERS URLS PIDS...
    local target=$1 w=$2 urls=$3 per=1
    shift 3
    [ "$target" = raftmem ] && per=$RM_PER_CONNECTION
    log "$target: $CLIENTS writers, $w watcher(s), ${DURATION_S}s"
    cpu_start "$@"
    "$PYTHON" "$REPO/bench/watch_bench.py" --target "$target" --url "$urls" --clients "$CLIENTS" \
        --watchers "$w" --per-connection "$per" --duration "$DURATION_S" --warmup "$WARMUP_S" --value-bytes "$VALUE_BYTES" \
        --keys "$KEYS" --json "$OUT/$target-$w.json" >/dev/null
    cpu_stop "$OUT/$target-$w.cpu.json"
}

log "etcd: $(etcd --version 2>/dev/null | sed -n 1p)"
for w in $WATCHERS; do
    rm -rf "$WORK/etcd"
    start_etcd
    measure etcd "$w" "$ETCD_URL_LIST" "${ETCD_PID[@]}"
    stop_etcd

    rm -rf "$RM_DIR"
    mkdir -p "$RM_DIR/logs"
    start_raftmem
    measure raftmem "$w" "$RM_URLS" "${RM_PID[@]}"
    stop_raftmem
done

"$PYTHON" - "$OUT" "$WATCHERS" "$LOADAVG_BEFORE" <<'EOF' | tee "$OUT/table.md"
import json, sys
from pathlib import Path
out, counts, load = Path(sys.argv[1]), sys.argv[2].split(), sys.argv[3]
def row(target, w):
    r = json.loads((out / f"{target}-{w}.json").read_text())
    cpu = json.loads((out / f"{target}-{w}.cpu.json").read_text())
    # The servers' CPU over the whole run (warm-up and drain included) per write measured.
    writes = r["writes_per_s"] * r["duration_s"]
    r["cpu_ms_per_write"] = round(cpu["server_cpu_s"] * 1000 / writes, 2) if writes else None
    r["machine_busy"] = round(cpu["machine_busy_cpu_s"] / cpu["wall_s"], 2)
    cell = lambda k: "" if r.get(k) is None else f"{r[k]:,}"
    return (f"| {target} | {w} | {cell('writes_per_s')} | {cell('write_p99_ms')} | {cell('events_per_s')} | "
            f"{cell('events_per_watcher_per_s')} | {cell('e2e_from_ack_p50_ms')} | {cell('e2e_from_ack_p99_ms')} | "
            f"{cell('e2e_from_send_p99_ms')} | {cell('events_vs_writes')} | {cell('cpu_ms_per_write')} | "
            f"{cell('machine_busy')} |")
print(f"load average before: {load}\n")
print("| system | watchers | writes/s | write p99 ms | events/s (all) | events/s per watcher | ack->event p50 ms "
      "| ack->event p99 ms | send->event p99 ms | events / (writes x watchers) | server CPU ms per write "
      "| machine busy (cores) |")
print("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
for target in ("raftmem", "etcd"):
    for w in counts:
        print(row(target, w))
most = max(counts, key=int)
for target in ("raftmem", "etcd"):
    none = json.loads((out / f"{target}-0.json").read_text())["writes_per_s"] if "0" in counts else None
    busy = json.loads((out / f"{target}-{most}.json").read_text())["writes_per_s"]
    if none:
        print(f"\n{target}: writes/s with {most} watchers / with none = {busy / none:.2f}")
EOF
log "reports in $OUT"
