#!/usr/bin/env bash
# Where a write's CPU goes, by stage (issue 17): the wrk write load of
# bench/wrk_compare.sh against a 3-node raftmem, with py-spy sampling every node
# for the whole run, and the samples sorted into stages by bench/stages.py.
#
#   bench/profile_writes.sh [RUN_S]        (default 20)
#
# Environment: PYTHON (an interpreter with raftmem installed; default python3),
# LOAD (write: PUTs to their leader | write-sprayed: every node gets every key |
# batch: 16 puts to their leader), CONNS (11 per node), KEYS (1000), RATE (py-spy
# samples/s per node, 250), OUT (default bench/results/profile-writes-<time>),
# KEEP_WORK=1 to keep the cluster's data and logs.
#
# py-spy is a measuring tool, not a dependency: it is pip-installed into PYTHON's
# environment when missing. It samples with --nonblocking (the nodes are not paused,
# at the price of an occasional torn stack) and without idle threads, so a sample is
# a thread on a CPU or runnable. Every node's samples are weighed by that node's CPU
# seconds over the run (from /proc), and the table gives each stage's share and its
# microseconds per write (server CPU per request x share).
set -euo pipefail

RUN_S=${1:-${RUN_S:-20}}
LOAD=${LOAD:-write}
CONNS=${CONNS:-11}
KEYS=${KEYS:-1000}
RATE=${RATE:-250}
PYTHON=${PYTHON:-python3}

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-$REPO/bench/results/profile-writes-$STAMP}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/profile-writes.XXXXXX")
REQ=$WORK/requests
mkdir -p "$OUT" "$WORK/logs" "$REQ"

# shellcheck source=bench/lib.sh
source "$REPO/bench/lib.sh"
check_prereqs
ensure_command wrk wrk
PYSPY=$(dirname "$(command -v "$PYTHON")")/py-spy
[[ -x $PYSPY ]] || "$PYTHON" -m pip install -q py-spy >"$WORK/logs/pip-py-spy.log" 2>&1 \
    || die "installing py-spy failed: $(tail -3 "$WORK/logs/pip-py-spy.log")"
check_ports_free

log "starting raftmem"
start_raftmem
(cd "$REPO" && "$PYTHON" bench/wrk_prep.py --raftmem "${RM_URLS%%,*}" --out "$REQ" \
    --keys "$KEYS") >"$OUT/prep.log" || die "preparing the keyspace failed: $(cat "$OUT/prep.log")"

spy_pids=() wrk_pids=()
log "wrk $LOAD for ${RUN_S}s, py-spy on ${RM_PID[*]}"
cpu_start "${RM_PID[@]}"
declare -A TICKS0=() FAULTS0=()
minor_faults() { awk '{print $10}' "/proc/$1/stat" 2>/dev/null || echo 0; }  # every thread's, dead ones too
for node in "${RM_NODES[@]}"; do
    TICKS0[$node]=$(pids_ticks "${RM_PID[$node]}")
    FAULTS0[$node]=$(minor_faults "${RM_PID[$node]}")
done
# Every thread's CPU ticks by name (py-spy sees Python threads only: RocksDB's and
# tantivy's own threads show here).
thread_ticks() { # SUFFIX
    local node
    for node in "${RM_NODES[@]}"; do
        for stat in /proc/"${RM_PID[$node]}"/task/*/stat; do
            # comm may hold spaces: it is between the first "(" and the last ")".
            { sed -E 's/^[0-9]+ \((.*)\) [A-Za-z] (([^ ]+ ){10})([0-9]+) ([0-9]+).*/\1\t\4\t\5/' "$stat" 2>/dev/null \
                | awk -v node="$node" -F'\t' '{print node "\t" $1 "\t" $2 + $3}'; } || true  # a thread may end meanwhile
        done
    done >"$OUT/threads-$1.tsv"
}
# Every node's /metrics before and after (index commits, budget slots, relay...).
metrics_dump() { # SUFFIX
    local i=0 url urls
    IFS=, read -ra urls <<<"$RM_URLS"
    for url in "${urls[@]}"; do
        curl -s --max-time 5 "$url/metrics" >"$OUT/${RM_NODES[$i]}.metrics-$1" || true
        i=$((i + 1))
    done
}
# A counter summed over every node and label, in one dump (before | after).
metric_sum() { # SUFFIX NAME
    cat "$OUT"/*.metrics-"$1" | awk -v m="$2" '$1 == m || index($1, m "{") == 1 {s += $2} END {print s + 0}'
}
metric_delta() { # NAME: after minus before
    echo "$(metric_sum after "$1") - $(metric_sum before "$1")" | bc
}
metrics_dump before
thread_ticks before
for i in 0 1 2; do
    node=${RM_NODES[$i]}
    "$PYSPY" record --pid "${RM_PID[$node]}" --duration "$RUN_S" --rate "$RATE" --nonblocking --threads \
        --format raw --output "$OUT/$node.collapsed" >"$OUT/$node.py-spy.log" 2>&1 &
    spy_pids+=($!)
    wrk -t1 -c"$CONNS" -d"${RUN_S}s" --timeout 5s -s "$REPO/bench/wrk/requests.lua" \
        "$(cat "$REQ/raftmem-$i.url")" -- "$REQ/raftmem-$i-$LOAD.req" >"$OUT/wrk.$i.txt" 2>&1 &
    wrk_pids+=($!)
done
for pid in "${wrk_pids[@]}"; do wait "$pid" || log "a wrk failed (exit $?)"; done
cpu_stop "$OUT/cpu.json"
thread_ticks after
metrics_dump after
for node in "${RM_NODES[@]}"; do
    echo "$node $(echo "scale=2; ($(pids_ticks "${RM_PID[$node]}") - ${TICKS0[$node]}) / $CLK_TCK" | bc)"
done >"$OUT/node-cpu.txt"
faults=0
for node in "${RM_NODES[@]}"; do faults=$((faults + $(minor_faults "${RM_PID[$node]}") - ${FAULTS0[$node]})); done
for pid in "${spy_pids[@]}"; do wait "$pid" || log "a py-spy failed (exit $?)"; done

(cd "$REPO" && "$PYTHON" bench/stages.py --dir "$OUT" --load "$LOAD" --nodes "${RM_NODES[*]}") | tee "$OUT/stages.md"
echo "text index commits (all replicas): $(metric_delta raftmem_index_absorb_seconds_count)," \
    "budget slots $(metric_delta raftmem_index_commit_slots_total)," \
    "delayed $(metric_delta raftmem_index_commit_slots_delayed_total); minor page faults (all nodes): $faults" \
    | tee -a "$OUT/stages.md"
