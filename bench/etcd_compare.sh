#!/usr/bin/env bash
# raftmem vs etcd 3.4 on this machine, under the same load (DESIGN.md section 7).
#
#   bench/etcd_compare.sh [DURATION_S]        (default 20)
#
# Environment: PYTHON (an interpreter with raftmem installed; default python3),
# CLIENTS (32), VALUE_BYTES (200), KEYS (1000), WARMUP_S (2), TRIES (3), PAIRS (4)
# and PAIR_S (10) for the interleaved runs, OUT
# (results directory; default bench/results/etcd-compare-<time>), KEEP_WORK=1 to
# keep the clusters' data and logs.
#
# 1. Installs Debian's etcd-server with apt-get when `etcd` is missing.
# 2. etcd phase: a 3-member etcd cluster on 127.0.0.1 (client ports 2379, 22379,
#    32379; peer ports 2380, 22380, 32380), then write-only, read-only
#    linearizable and read-only serializable runs of `raftmem bench --target etcd`,
#    then TRIES failovers (kill -9 the leader while writers loop; time to the first
#    successful write), then the cluster is stopped.
# 3. raftmem phase: a 3-node cluster (`raftmem cluster up`, fsync always) on
#    8781-8783 (Raft 9100-9307), write-only and read-only linearizable, strong and
#    eventual runs, TRIES failovers of shard 0's leader, then stop.
# 4. Both clusters again, and PAIRS pairs of PAIR_S-second runs (writes, lease vs
#    linearizable reads, eventual vs serializable reads) that alternate between
#    them (the machine's speed drifts; see below).
# 5. Prints a Markdown table (also saved as $OUT/table.md with every JSON report).
#
# Each phase runs alone so that one system's idle work does not tax the other.
# Everything this script starts is stopped on exit (trap EXIT), by pid.
set -euo pipefail

DURATION_S=${1:-${DURATION_S:-20}}
CLIENTS=${CLIENTS:-32}
VALUE_BYTES=${VALUE_BYTES:-200}
KEYS=${KEYS:-1000}
WARMUP_S=${WARMUP_S:-2}
TRIES=${TRIES:-3}
PAIRS=${PAIRS:-4}
PAIR_S=${PAIR_S:-10}
PYTHON=${PYTHON:-python3}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$REPO/bench/results/etcd-compare-$STAMP}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/etcd-compare.XXXXXX")
mkdir -p "$OUT" "$WORK/logs"

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
check_prereqs
ETCD_VERSION=$(etcd --version 2>/dev/null | sed -n 1p)  # not head: SIGPIPE under pipefail
LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)  # other work on the machine skews the numbers
check_ports_free

# -- runners ---------------------------------------------------------------------------
bench() { # TARGET NAME MIX LEVELS URLS PIDS...
    local target=$1 name=$2 mix=$3 levels=$4 urls=$5
    shift 5
    log "bench $target $name (${DURATION_S}s)"
    cpu_start "$@"
    (cd "$REPO" && "$PYTHON" -m cli.main bench --target "$target" --url "$urls" --clients "$CLIENTS" \
        --duration "$DURATION_S" --warmup "$WARMUP_S" --mix "$mix" --value-bytes "$VALUE_BYTES" \
        --keys "$KEYS" --consistency "$levels" --json) >"$OUT/$target-$name.json" \
        || log "bench $target $name failed (exit $?)"
    cpu_stop "$OUT/$target-$name.cpu.json"
}

failover() { # TARGET URLS: TRIES times: measure (bench/failover.py kills the leader), restart, wait ready
    local try line
    for try in $(seq 1 "$TRIES"); do
        line=$(cd "$REPO" && "$PYTHON" bench/failover.py --target "$1" --url "$2" --pids "$(pids_arg_"$1")") || true
        echo "$line" >>"$OUT/$1-failover.jsonl"
        log "failover $1 try $try: $line"
        "restart_dead_$1"
        "ready_$1" || die "$1 did not recover after failover try $try"
    done
}

# -- etcd ----------------------------------------------------------------------------------
log "etcd phase: $ETCD_VERSION"
start_etcd
bench etcd write 0:100 linearizable "$ETCD_URLS" "${ETCD_PID[@]}"
bench etcd read-linearizable 100:0 linearizable "$ETCD_URLS" "${ETCD_PID[@]}"
bench etcd read-serializable 100:0 serializable "$ETCD_URLS" "${ETCD_PID[@]}"
failover etcd "$ETCD_URLS"
stop_etcd

# -- raftmem -------------------------------------------------------------------------------
log "raftmem phase: 3 nodes, fsync always"
start_raftmem
bench raftmem write 0:100 strong "$RM_URLS" "${RM_PID[@]}"
bench raftmem read-linearizable 100:0 linearizable "$RM_URLS" "${RM_PID[@]}"
bench raftmem read-strong 100:0 strong "$RM_URLS" "${RM_PID[@]}"
bench raftmem read-eventual 100:0 eventual "$RM_URLS" "${RM_PID[@]}"
failover raftmem "$RM_URLS"
stop_raftmem

# -- interleaved pairs ------------------------------------------------------------------
# This VM's speed drifts by up to 2x within minutes (a fixed Python loop took 0.39 s
# and 0.72 s in the same hour), so the phases above, minutes apart, can mislead.
# Here both clusters are up (each idle while the other is measured) and short
# runs of each workload alternate between them, the order flipping every pair.
if ((PAIRS > 0)); then
    log "interleaved pairs: $PAIRS x (etcd, raftmem) x 3 workloads, ${PAIR_S}s each"
    start_etcd
    restart_dead_raftmem
    ready_raftmem || die "raftmem did not come back for the pairs"
    wait_balanced
    # workload name, mix, etcd level, raftmem level
    PAIR_LOADS=("write 0:100 linearizable strong" "read 100:0 linearizable strong"
                "read-stale 100:0 serializable eventual")
    for pair in $(seq 1 "$PAIRS"); do
        if ((pair % 2)); then order=(etcd raftmem); else order=(raftmem etcd); fi
        for load in "${PAIR_LOADS[@]}"; do
            read -r name mix etcd_level rm_level <<<"$load"
            for target in "${order[@]}"; do
                if [[ $target == etcd ]]; then
                    DURATION_S=$PAIR_S bench etcd "pair$pair-$name" "$mix" "$etcd_level" "$ETCD_URLS" "${ETCD_PID[@]}"
                else
                    DURATION_S=$PAIR_S bench raftmem "pair$pair-$name" "$mix" "$rm_level" "$RM_URLS" "${RM_PID[@]}"
                fi
            done
        done
    done
    stop_etcd
    stop_raftmem
fi

# -- the table -------------------------------------------------------------------------------
"$PYTHON" - "$OUT" "$ETCD_VERSION" "$DURATION_S" "$CLIENTS" "$VALUE_BYTES" "$KEYS" "$TRIES" "$LOADAVG_BEFORE" <<'PY' | tee "$OUT/table.md"
import json, os, platform, statistics, sys, time
from pathlib import Path

out, etcd_version, duration, clients, value_bytes, keys, tries, loadavg = sys.argv[1:]
out = Path(out)


def report(name):
    path = out / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cells(name, op):
    r = report(name)
    if r is None:
        return ["failed", "", "", "", ""]
    row = next((x for x in r["results"] if x["op"] == op), None)
    if row is None:
        return ["no data", "", "", "", ""]
    errors = " ".join(f"{k}={v}" for k, v in sorted(row["errors"].items())) or "0"
    return [f"{row['ops_per_s']:.0f}", f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}", f"{row['p999_ms']:.1f}", errors]


def failover(target):
    path = out / f"{target}-failover.jsonl"
    try:
        runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return "failed", ""
    times = [r["failover_s"] for r in runs if "failover_s" in r]
    elected = [r["new_leader_s"] for r in runs if r.get("new_leader_s") is not None]
    if not times:
        return "failed", ""
    detail = "tries " + ", ".join(f"{t:.2f}" for t in times)
    if len(times) < int(tries):
        detail += f" ({int(tries) - len(times)} failed)"
    if elected:
        detail += f"; new leader seen after {statistics.median(elected):.2f} s (median)"
    return f"{statistics.median(times):.2f} s", detail


cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
print(f"### raftmem vs etcd, {time.strftime('%Y-%m-%d %H:%M %Z')}")
print()
print(f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}; "
      f"{etcd_version}; raftmem 3 nodes x 8 shards, fsync always; etcd 3 members, defaults (WAL fsync).")
print(f"Load: {clients} clients (one asyncio process, one aiohttp session), {value_bytes}-byte values, "
      f"{keys} keys, {duration} s measured after a warm-up; no retries; all processes on this machine "
      f"(load average before the run: {loadavg}).")
print()
print("| workload | raftmem ops/s | p50 ms | p99 ms | p99.9 ms | errors | etcd ops/s | p50 ms | p99 ms | p99.9 ms | errors |")
print("|---|--:|--:|--:|--:|---|--:|--:|--:|--:|---|")
rows = [
    ("write (put)", "raftmem-write", "write", "etcd-write", "write"),
    ("read linearizable (ReadIndex)", "raftmem-read-linearizable", "read", "etcd-read-linearizable", "read"),
    ("read strong (raftmem lease) / n.a.", "raftmem-read-strong", "read", None, None),
    ("read eventual / etcd serializable", "raftmem-read-eventual", "read", "etcd-read-serializable", "read"),
]
for label, rm, rm_op, et, et_op in rows:
    right = cells(et, et_op) if et else ["n/a", "", "", "", ""]
    print("| " + " | ".join([label] + cells(rm, rm_op) + right) + " |")
print()
print("CPU during each run (servers' CPU per completed op; CPU used by other processes on the machine, "
      "which skews a run when it is not near 0):")
print()
print("| run | ops | server CPU ms/op | bench client CPU s | other processes, % of the machine |")
print("|---|--:|--:|--:|--:|")
ncpu = os.cpu_count() or 1
for name in ("raftmem-write", "raftmem-read-linearizable", "raftmem-read-strong", "raftmem-read-eventual",
             "etcd-write", "etcd-read-linearizable", "etcd-read-serializable"):
    r, c = report(name), None
    try:
        c = json.loads((out / f"{name}.cpu.json").read_text())
    except (OSError, ValueError):
        pass
    if r is None or c is None:
        continue
    total = next(x for x in r["results"] if x["op"] == "all")
    # The servers also worked for the warm-up and the preload: divide by an estimate of every op.
    cfg = r["config"]
    preloaded = cfg["keys"] if r.get("preload_s", 0) > 0 else 0
    ops_est = max(1, total["ops_per_s"] * (cfg["warmup_s"] + cfg["duration_s"]) + preloaded)
    other = (c["machine_busy_cpu_s"] - c["server_cpu_s"] - r.get("client_cpu_s", 0)) / (c["wall_s"] * ncpu) * 100
    print(f"| {name} | {total['count']} | {c['server_cpu_s'] * 1000 / ops_est:.2f} | {r.get('client_cpu_s', 0):.1f} | "
          f"{max(0.0, other):.0f} |")
rm_f, rm_d = failover("raftmem")
et_f, et_d = failover("etcd")
print()
print(f"Failover, kill -9 of the leader while 8 writers loop (0.25 s request timeout), time to the first successful "
      f"write issued after the kill "
      f"(median of {tries}):")
print()
print("| | median | detail |")
print("|---|--:|---|")
print(f"| raftmem (shard 0's leader node) | {rm_f} | {rm_d} |")
print(f"| etcd (the leader member) | {et_f} | {et_d} |")

def pair_row(name, op):
    r = report(name)
    row = next((x for x in r["results"] if x["op"] == op), None) if r else None
    return (row["ops_per_s"], row["p99_ms"]) if row else (None, None)


PAIR_LOADS = [
    ("write", "write", "writes: raftmem vs etcd"),
    ("read", "read", "reads: raftmem `strong` (lease) vs etcd linearizable"),
    ("read-stale", "read", "reads: raftmem `eventual` vs etcd serializable"),
]
for load, op, title in PAIR_LOADS:
    pairs = []
    for n in range(1, 1000):
        rm, et = pair_row(f"raftmem-pair{n}-{load}", op), pair_row(f"etcd-pair{n}-{load}", op)
        if rm[0] is None and et[0] is None:
            break
        pairs.append((n, rm, et))
    if not pairs:
        continue
    print()
    print(f"Interleaved runs, {title} (both clusters up, each idle while the other is measured; "
          "the order flips every pair):")
    print()
    print("| pair | raftmem ops/s | p99 ms | etcd ops/s | p99 ms | raftmem / etcd |")
    print("|--:|--:|--:|--:|--:|--:|")
    ratios, rm_p99, et_p99 = [], [], []
    for n, (rm, rm99), (et, et99) in pairs:
        ratio = rm / et if rm and et else None
        if ratio is not None:
            ratios.append(ratio)
            rm_p99.append(rm99)
            et_p99.append(et99)
        cells_ = [f"{rm or 0:.0f}", f"{rm99 or 0:.1f}", f"{et or 0:.0f}", f"{et99 or 0:.1f}",
                  f"{ratio:.2f}" if ratio else "n/a"]
        print(f"| {n} | " + " | ".join(cells_) + " |")
    if ratios:
        print(f"| median | | {statistics.median(rm_p99):.1f} | | {statistics.median(et_p99):.1f} | "
              f"**{statistics.median(ratios):.2f}** |")
PY
log "results in $OUT"
