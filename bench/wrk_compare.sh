#!/usr/bin/env bash
# raftmem vs etcd 3.4 under a C load generator (wrk): what the servers sustain
# when the client costs little.
#
#   bench/wrk_compare.sh [RUN_S]        (default 10)
#
# Why this exists next to etcd_compare.sh: that script (and `raftmem bench`) drives
# both systems from one Python asyncio process, which on this 2-core machine
# spends about as much CPU per read as the servers do, so its read numbers are
# partly the client's ceiling. wrk spends a few microseconds per request. Both
# are still CPU-bound on the same two cores.
#
# Environment: PYTHON (an interpreter with raftmem installed; default python3),
# PAIRS (3), CONNS (11 connections per node or member: 33 in all, like 32 clients),
# KEYS (1000), VALUE_BYTES (200), OUT (default bench/results/wrk-compare-<time>),
# KEEP_WORK=1 to keep the clusters' data and logs, RM_SET="section.key=value ..." to change
# raftmem's config (e.g. limits.relay_in_flight_max=0: forwarded writes as HTTP requests).
#
# 1. Installs etcd-server and wrk with apt-get when missing.
# 2. Starts a 3-member etcd and a 3-node raftmem (fsync always, leaders balanced),
#    both on 127.0.0.1, and writes KEYS keys into each (bench/wrk_prep.py).
# 3. PAIRS pairs of RUN_S-second runs per workload, alternating etcd and raftmem
#    (the order flips every pair; the machine's speed drifts). A run is three wrk
#    processes, one per node or member, one thread and CONNS connections each, each
#    replaying random requests from its file (bench/wrk/requests.lua). raftmem's
#    files hold the keys the node leads (what the routing client does); etcd's
#    members get every key (they forward to the one leader, as etcd clients that
#    spread over endpoints cause).
#      health             GET /healthz       | GET /health: the HTTP floor
#      write              PUT a memory       | put
#      read-strong        strong (lease)     | linearizable read
#      read-linearizable  linearizable (ReadIndex) | linearizable read
#      read-eventual      eventual           | serializable read
#      write-sprayed      PUT, every node gets every key (it forwards) | put
#      batch              POST /v1/batch of 16 puts the node leads | txn of 16 puts
#      batch-sprayed      POST /v1/batch of 16 random puts, any node | txn of 16 puts
#    (WORKLOADS="write batch" runs a subset.)
#    With PRELOAD=N (`make bench-million`: N = 1,000,000), bench/million.sh first loads
#    N memories into each (load rate, RSS, disk, get and list latency), the workloads
#    then run on that much data (over random keys of the first KEYS, default 100,000), and after them every node is killed and restarted
#    and one node is wiped and catches up (timed); its table is $OUT/million.md.
# 4. Prints a Markdown table (also $OUT/table.md): medians over the pairs, the
#    range, server CPU per request, and raftmem's lease / ReadIndex ratio.
set -euo pipefail

RUN_S=${1:-${RUN_S:-10}}
PAIRS=${PAIRS:-3}
CONNS=${CONNS:-11}
PRELOAD=${PRELOAD:-0}
KEYS=${KEYS:-$((PRELOAD ? 100000 : 1000))}  # the workloads' random keys (of PRELOAD's, when set)
VALUE_BYTES=${VALUE_BYTES:-200}
PYTHON=${PYTHON:-python3}
WRK_TIMEOUT_S=5

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$REPO/bench/results/wrk-compare-$STAMP}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/wrk-compare.XXXXXX")
REQ=$WORK/requests
mkdir -p "$OUT" "$WORK/logs" "$REQ"

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
check_prereqs
ensure_command wrk wrk
ETCD_VERSION=$(etcd --version 2>/dev/null | sed -n 1p)
check_ports_free

log "starting etcd ($ETCD_VERSION) and raftmem"
start_etcd
start_raftmem
PREP_ARGS=()
if ((PRELOAD)); then
    # shellcheck source=bench/million.sh
    source "$REPO/bench/million.sh"
    million_load
    million_latency
    if ((PRELOAD >= KEYS)); then PREP_ARGS+=(--written); fi  # the preload wrote the workloads' keys
fi
(cd "$REPO" && "$PYTHON" bench/wrk_prep.py --raftmem "${RM_URLS%%,*}" --etcd "$ETCD_URLS" --out "$REQ" \
    --keys "$KEYS" --value-bytes "$VALUE_BYTES" "${PREP_ARGS[@]}") >"$OUT/prep.log" \
    || die "preparing the keyspace failed: $(cat "$OUT/prep.log")"
if ((PRELOAD)); then wait_balanced; fi

# request file per workload and target (etcd has no lease read: its linearizable read stands in)
declare -A FILE=(
    [raftmem.health]=health [raftmem.write]=write [raftmem.read-strong]=read-strong
    [raftmem.read-linearizable]=read-linearizable [raftmem.read-eventual]=read-eventual
    [etcd.health]=health [etcd.write]=write [etcd.read-strong]=read-linearizable
    [etcd.read-linearizable]=read-linearizable [etcd.read-eventual]=read-serializable
    [raftmem.write-sprayed]=write-sprayed [etcd.write-sprayed]=write
    [raftmem.batch]=batch [etcd.batch]=txn [raftmem.batch-sprayed]=batch-sprayed [etcd.batch-sprayed]=txn
)
read -r -a WORKLOADS <<<"${WORKLOADS:-health write read-strong read-linearizable read-eventual write-sprayed batch batch-sprayed}"

run() { # TARGET WORKLOAD PAIR: three wrk processes at once, then CPU accounting
    local target=$1 load=$2 pair=$3 i pids=() wrk_pids=()
    local name="$target-$load-pair$pair"
    if [[ $target == etcd ]]; then pids=("${ETCD_PID[@]}"); else pids=("${RM_PID[@]}"); fi
    log "wrk $name (${RUN_S}s)"
    cpu_start "${pids[@]}"
    for i in 0 1 2; do
        wrk -t1 -c"$CONNS" -d"${RUN_S}s" --timeout "${WRK_TIMEOUT_S}s" -s "$REPO/bench/wrk/requests.lua" \
            "$(cat "$REQ/$target-$i.url")" -- "$REQ/$target-$i-${FILE[$target.$load]}.req" >"$OUT/$name.$i.txt" 2>&1 &
        wrk_pids+=($!)
    done
    for i in "${wrk_pids[@]}"; do wait "$i" || log "a wrk of $name failed (exit $?)"; done
    cpu_stop "$OUT/$name.cpu.json"
}

for pair in $(seq 1 "$PAIRS"); do
    if ((pair % 2)); then order=(etcd raftmem); else order=(raftmem etcd); fi
    for load in "${WORKLOADS[@]}"; do
        for target in "${order[@]}"; do run "$target" "$load" "$pair"; done
    done
done

# -- the table -------------------------------------------------------------------------------
"$PYTHON" - "$OUT" "$ETCD_VERSION" "$RUN_S" "$PAIRS" "$CONNS" "$KEYS" "$VALUE_BYTES" <<'PY' | tee "$OUT/table.md"
import json, os, platform, statistics, sys, time
from pathlib import Path

out, etcd_version, run_s, pairs, conns, keys, value_bytes = sys.argv[1:]
out, pairs = Path(out), int(pairs)
LOADS = [
    ("health", "GET /healthz", "GET /health"),
    ("write", "write (put)", "put"),
    ("read-strong", "read `strong` (lease)", "linearizable read"),
    ("read-linearizable", "read `linearizable` (ReadIndex)", "linearizable read"),
    ("read-eventual", "read `eventual`", "serializable read"),
    ("write-sprayed", "write, every node sprayed (forwarded)", "put"),
    ("batch", "batch of 16 puts to their leader (memory ops/s = 16x)", "txn of 16 puts"),
    ("batch-sprayed", "batch of 16 puts, any node (memory ops/s = 16x)", "txn of 16 puts"),
]


def run(target, load, pair):
    """Totals of one run's three wrk processes, or None if any is missing."""
    name = f"{target}-{load}-pair{pair}"
    parts = []
    for i in range(3):
        try:
            text = (out / f"{name}.{i}.txt").read_text()
            parts.append(json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1]))
        except (OSError, ValueError, IndexError):
            return None
    cpu = json.loads((out / f"{name}.cpu.json").read_text())
    requests = sum(p["requests"] for p in parts)
    return {
        "rate": sum(p["requests"] / (p["duration_us"] / 1e6) for p in parts),
        "p50": statistics.median(p["p50_us"] for p in parts) / 1000,
        "p99": max(p["p99_us"] for p in parts) / 1000,
        "errors": sum(p["non_2xx"] + p["socket_errors"] for p in parts),
        "cpu_ms": cpu["server_cpu_s"] * 1000 / max(1, requests),
    }


def summary(target, load):
    runs = {p: r for p in range(1, pairs + 1) if (r := run(target, load, p))}
    if not runs:
        return None
    rates = [r["rate"] for r in runs.values()]
    return {
        "rate": statistics.median(rates), "lo": min(rates), "hi": max(rates),
        "p50": statistics.median(r["p50"] for r in runs.values()),
        "p99": statistics.median(r["p99"] for r in runs.values()),
        "cpu_ms": statistics.median(r["cpu_ms"] for r in runs.values()),
        "errors": sum(r["errors"] for r in runs.values()),
        "by_pair": {p: r["rate"] for p, r in runs.items()},
    }


def cells(s):
    if s is None:
        return ["failed", "", "", "", ""]
    return [f"{s['rate']:,.0f} ({s['lo']:,.0f}-{s['hi']:,.0f})", f"{s['p50']:.1f}", f"{s['p99']:.1f}",
            f"{s['cpu_ms']:.2f}", str(s["errors"])]


def ratio(a, b):
    """Median and range of per-pair ratios a/b (pairs ran minutes apart at most)."""
    if a is None or b is None:
        return "n/a"
    rs = [a["by_pair"][p] / b["by_pair"][p] for p in a["by_pair"] if p in b["by_pair"] and b["by_pair"][p]]
    return f"**{statistics.median(rs):.2f}** ({min(rs):.2f}-{max(rs):.2f})" if rs else "n/a"


cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
print(f"### raftmem vs etcd under wrk, {time.strftime('%Y-%m-%d %H:%M %Z')}")
print()
print(f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}; {etcd_version}; "
      f"raftmem 3 nodes x 8 shards, fsync always; etcd 3 members, defaults. Load: 3 wrk processes "
      f"(one per node), 1 thread and {conns} connections each, random keys of {keys}, {value_bytes}-byte "
      f"values; {pairs} interleaved pairs of {run_s} s runs. Medians (range) over the pairs; p99 is the "
      f"worst of the three wrk processes; CPU is the servers' per request.")
print()
print("| workload | raftmem req/s | p50 ms | p99 ms | CPU ms | errors | etcd | etcd req/s | p50 ms | p99 ms | CPU ms "
      "| errors | raftmem / etcd |")
print("|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|")
got = {}
for load, rm_label, etcd_label in LOADS:
    rm, et = summary("raftmem", load), summary("etcd", load)
    if rm is None and et is None:
        continue  # not run (WORKLOADS)
    got[load] = rm
    print("| " + " | ".join([rm_label, *cells(rm), etcd_label, *cells(et), ratio(rm, et)]) + " |")
print()
if {"read-strong", "read-linearizable", "health"} <= set(got):
    print(f"raftmem lease (`strong`) / ReadIndex (`linearizable`) reads, per pair: "
          f"{ratio(got['read-strong'], got['read-linearizable'])}; "
          f"`strong` / the HTTP floor (`/healthz`): {ratio(got['read-strong'], got['health'])}.")
for load in ("batch", "batch-sprayed"):
    if got.get(load):
        print(f"{load}: {16 * got[load]['rate']:,.0f} memory ops/s (median).")
PY

if ((PRELOAD)); then
    million_restart
    million_wipe
    million_report
fi
