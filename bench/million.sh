#!/usr/bin/env bash
# bench/wrk_compare.sh's large-keyspace phases (PRELOAD=N, e.g. `make bench-million`
# with N = 1,000,000): sourced by wrk_compare.sh after its clusters are up and its
# keyspace is written; uses bench/lib.sh's pids and helpers.
#
#   million_load     each target loads N memories of VALUE_BYTES through batches of
#                    64 from 32 clients (`raftmem bench --preload N`; etcd: txns of
#                    64 puts), while each server's RSS is sampled every second: load
#                    rate, peak RSS, RSS and disk per node after it (raftmem: also
#                    once its derived indexes have absorbed the load)
#   million_latency  one client, sequential: get and list-page p50/p99 (million_probe.py)
#   (wrk_compare.sh's workloads then run on the loaded clusters)
#   million_restart  kill -9 of every node, restart, seconds until every node answers
#                    and 200 random keys read back; RSS of a node just started
#   million_wipe     kill -9 of one node, its data directory removed, restarted:
#                    seconds until it has applied every shard's commit index
#                    (raftmem: a snapshot; etcd: the member removed and added back,
#                    as etcd requires), and the MB/s its disk filled at; raftmem:
#                    then until that node's derived indexes are rebuilt, its
#                    peak RSS meanwhile, and whether they then equal its store
#   million_report   the Markdown table ($OUT/million.md)
# Every phase appends one JSON line per target to $OUT/million.jsonl.

MILLION_BATCH=64
MILLION_CLIENTS=32
MILLION_LAST_NODE=2   # index of the node wiped (n3 / e3)

million_record() { printf '%s\n' "$1" >>"$OUT/million.jsonl"; }
# A number JSON can read (bc prints .5 for 0.5): calc EXPRESSION
calc() { printf '%.3f' "$(echo "scale=3; $1" | bc)"; }

rss_kb() { awk '/^VmRSS:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# rss_sampler FILE PIDS...: every second, "pid rss_kb" per pid, until killed.
rss_sampler() {
    local file=$1 pid; shift
    while :; do
        for pid in "$@"; do echo "$pid $(rss_kb "$pid")" >>"$file"; done
        sleep 1
    done
}

target_pids() { if [[ $1 == etcd ]]; then echo "${ETCD_PID[@]}"; else echo "${RM_PID[@]}"; fi; }
target_urls() { if [[ $1 == etcd ]]; then echo "$ETCD_URLS"; else echo "$RM_URLS"; fi; }
target_dirs() {
    if [[ $1 == etcd ]]; then printf "$WORK/etcd/%s " "${ETCD_NAMES[@]}"; else printf "$RM_DIR/%s " "${RM_NODES[@]}"; fi
}

# peak_mb_list FILE PIDS...: JSON list of each pid's peak RSS in MB in FILE (rss_sampler's), in PIDS' order.
peak_mb_list() {
    local file=$1 pid out=""; shift
    for pid in "$@"; do out+="$(awk -v p="$pid" '$1 == p && $2 > m {m = $2} END{print int(m / 1024)}' "$file"),"; done
    echo "[${out%,}]"
}

# JSON list of a number per node: RSS MB now, disk MB of each data directory.
rss_mb_list() { local pid out=""; for pid in $(target_pids "$1"); do out+="$(($(rss_kb "$pid") / 1024)),"; done; echo "[${out%,}]"; }
disk_mb_list() {
    local dir out=""
    for dir in $(target_dirs "$1"); do out+="$(du -sm "$dir" | cut -f1),"; done
    echo "[${out%,}]"
}

# raftmem's derived indexes have absorbed everything (every node's lag 0, or
# the given nodes').
index_lag() {
    local url total=0 lag
    for url in ${1:-${RM_URLS//,/ }}; do
        lag=$(curl -fsS --max-time 5 "$url/metrics" | awk '/^raftmem_index_lag_entries[{ ]/{s+=$2} END{print s+0}')
        total=$(echo "$total + $lag" | bc)
    done
    echo "$total"
}
wait_indexes() { # [URLS]
    local deadline=$((SECONDS + ${MILLION_INDEX_WAIT_S:-1800}))
    until [[ $(index_lag "${1:-}") == 0 ]]; do
        ((SECONDS < deadline)) || { log "indexes still lag after ${MILLION_INDEX_WAIT_S:-1800} s"; return 1; }
        sleep 1
    done
}

million_load() {
    local target sampler t0 t1 peak
    : >"$OUT/million.jsonl"
    for target in etcd raftmem; do
        log "loading $PRELOAD memories into $target"
        : >"$OUT/million-rss-$target.txt"
        # shellcheck disable=SC2046
        rss_sampler "$OUT/million-rss-$target.txt" $(target_pids "$target") &
        sampler=$!
        t0=$(date +%s.%N)
        (cd "$REPO" && "$PYTHON" -m cli.main bench --target "$target" --url "$(target_urls "$target")" \
            --preload "$PRELOAD" --preload-batch "$MILLION_BATCH" --clients "$MILLION_CLIENTS" \
            --value-bytes "$VALUE_BYTES" --mix 0:100 --duration 0.1 --warmup 0 --keys "$KEYS" --json \
            --consistency "$([[ $target == etcd ]] && echo linearizable || echo strong)") \
            >"$OUT/million-load-$target.json" 2>"$OUT/million-load-$target.err" \
            || { kill "$sampler"; die "loading $target failed: $(tail -3 "$OUT/million-load-$target.err")"; }
        t1=$(date +%s.%N)
        local indexed_s=null
        if [[ $target == raftmem ]]; then
            wait_indexes || true
            indexed_s=$(calc "$(date +%s.%N) - $t1")
        fi
        kill "$sampler"; wait "$sampler" 2>/dev/null || true
        # shellcheck disable=SC2046
        peak=$(peak_mb_list "$OUT/million-rss-$target.txt" $(target_pids "$target"))  # in the nodes' order
        million_record "$(printf '{"phase": "load", "target": "%s", "memories": %s, "load_s": %s, "indexes_absorbed_after_s": %s, "peak_rss_mb": %s, "rss_mb": %s, "disk_mb": %s}' \
            "$target" "$PRELOAD" "$(calc "$t1 - $t0")" "$indexed_s" "$peak" "$(rss_mb_list "$target")" \
            "$(disk_mb_list "$target")")"
    done
}

million_latency() {
    log "latency with $PRELOAD memories (one client, sequential)"
    (cd "$REPO" && "$PYTHON" bench/million_probe.py latency --raftmem "$RM_URLS" --etcd "$ETCD_URLS" \
        --keys "$PRELOAD") >"$OUT/million-latency.json" || die "the latency probe failed"
    million_record "$(printf '{"phase": "latency", "result": %s}' "$(cat "$OUT/million-latency.json")")"
}

# kill9 PIDS...: SIGKILL, then wait until each process is gone: a thread group's
# leader shows as a zombie while its other threads still exit holding the sockets
# (a restart at that moment finds its port in use), so wait for those threads too.
threads_left() { local tasks=(/proc/"$1"/task/*); [[ -e ${tasks[0]} ]] && echo "${#tasks[@]}" || echo 0; }
kill9() {
    local pid
    for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "$@"; do while alive "$pid" || (($(threads_left "$pid") > 1)); do sleep "$POLL_S"; done; done
}

ready_probe() { # TARGET: seconds until every node answers and sampled keys read back
    (cd "$REPO" && "$PYTHON" bench/million_probe.py ready "--$1" "$(target_urls "$1")" --keys "$PRELOAD" --timeout 300)
}

million_restart() {
    local target t0 probe_s
    for target in etcd raftmem; do
        log "kill -9 of every $target node, then a restart"
        # shellcheck disable=SC2046
        kill9 $(target_pids "$target")
        t0=$(date +%s.%N)
        if [[ $target == etcd ]]; then restart_dead_etcd; else restart_dead_raftmem; fi
        probe_s=$(ready_probe "$target") || die "$target not ready after a restart"
        million_record "$(printf '{"phase": "restart", "target": "%s", "ready_s": %s, "rss_mb": %s}' \
            "$target" "$(calc "$(date +%s.%N) - $t0")" "$(rss_mb_list "$target")")"
        log "$target ready (probe waited ${probe_s}s)"
    done
    wait_balanced
}

etcd_api() { curl -fsS --max-time 10 -X POST -H 'Content-Type: application/json' -d "$2" "$1"; }
# etcd_api_retry URL BODY: etcd refuses a reconfiguration (503 "unhealthy cluster")
# until its members have been connected for a while; retried with a deadline.
etcd_api_retry() {
    local deadline=$((SECONDS + 60))
    until etcd_api "$1" "$2" 2>/dev/null; do ((SECONDS < deadline)) || return 1; sleep 0.5; done
}

# The last member removed and added back with an empty data directory, as etcd
# requires of a member that lost its data (one restarted on an empty directory
# with its old identity is refused by its peers).
etcd_wipe_last() {
    local name=${ETCD_NAMES[$MILLION_LAST_NODE]} peer="http://127.0.0.1:${ETCD_PEER_PORTS[$MILLION_LAST_NODE]}" id
    id=$(etcd_api "http://127.0.0.1:${ETCD_CLIENT_PORTS[0]}/v3/cluster/member/list" '{}' \
        | "$PYTHON" -c "import json,sys; print(next(m['ID'] for m in json.load(sys.stdin)['members'] if m.get('name') == '$name'))")
    kill9 "${ETCD_PID[$name]}"
    rm -rf "${WORK:?}/etcd/$name"
    etcd_api_retry "http://127.0.0.1:${ETCD_CLIENT_PORTS[0]}/v3/cluster/member/remove" "{\"ID\": \"$id\"}" >/dev/null
    etcd_api_retry "http://127.0.0.1:${ETCD_CLIENT_PORTS[0]}/v3/cluster/member/add" "{\"peerURLs\": [\"$peer\"]}" >/dev/null
    ETCD_STATE=existing start_etcd_member "$MILLION_LAST_NODE"
}

# etcd: the member's revision (a serializable read) reaches the leader's.
etcd_caught_up() {
    local deadline=$((SECONDS + 1200)) want got
    local body="{\"key\": \"$(printf '%s' "bench/" | base64)\", \"serializable\": true, \"limit\": 1}"
    want=$(etcd_api "http://127.0.0.1:${ETCD_CLIENT_PORTS[0]}/v3/kv/range" "$body" | "$PYTHON" -c \
        "import json,sys; print(json.load(sys.stdin)['header']['revision'])")
    until got=$(etcd_api "http://127.0.0.1:${ETCD_CLIENT_PORTS[$MILLION_LAST_NODE]}/v3/kv/range" "$body" 2>/dev/null \
            | "$PYTHON" -c "import json,sys; print(json.load(sys.stdin)['header']['revision'])" 2>/dev/null) \
            && ((got >= want)); do
        ((SECONDS < deadline)) || return 1
        sleep "$POLL_S"
    done
}

million_wipe() {
    local target t0 t1 disk node dir url sampler
    for target in etcd raftmem; do
        log "$target: the last node's data wiped; catching up"
        if [[ $target == etcd ]]; then
            t0=$(date +%s.%N)
            etcd_wipe_last
            etcd_caught_up || die "etcd's wiped member did not catch up"
            dir="$WORK/etcd/${ETCD_NAMES[$MILLION_LAST_NODE]}"
        else
            node=${RM_NODES[$MILLION_LAST_NODE]} dir="$RM_DIR/${RM_NODES[$MILLION_LAST_NODE]}"
            url="http://127.0.0.1:${RM_HTTP_PORTS[$MILLION_LAST_NODE]}"
            kill9 "${RM_PID[$node]}"
            rm -rf "${dir:?}"
            t0=$(date +%s.%N)
            restart_dead_raftmem
            : >"$OUT/million-rss-wiped.txt"
            rss_sampler "$OUT/million-rss-wiped.txt" "${RM_PID[$node]}" &
            sampler=$!
            (cd "$REPO" && "$PYTHON" bench/million_probe.py caught-up --raftmem "$RM_URLS" \
                --node "$url") >/dev/null || die "raftmem's wiped node did not catch up"
        fi
        t1=$(date +%s.%N)
        disk=$(du -sm "$dir" | cut -f1)
        million_record "$(printf '{"phase": "wipe", "target": "%s", "catch_up_s": %s, "disk_mb": %s, "mb_per_s": %s}' \
            "$target" "$(calc "$t1 - $t0")" "$disk" "$(calc "$disk / ($t1 - $t0)")")"
        if [[ $target == raftmem ]]; then
            # The snapshot brings the records; the node then rebuilds its derived
            # indexes from them (searches on it wait or are stale until then).
            local indexed=null
            if MILLION_INDEX_WAIT_S=900 wait_indexes "$url"; then indexed=$(calc "$(date +%s.%N) - $t1"); fi
            kill "$sampler"; wait "$sampler" 2>/dev/null || true
            # ...and are they right: every shard's index against the node's store
            (cd "$REPO" && "$PYTHON" bench/million_probe.py index-check --node "$url" --timeout 600) \
                >"$OUT/million-index-check.json" || echo '{"consistent": null}' >"$OUT/million-index-check.json"
            million_record "$(printf '{"phase": "wipe-indexes", "target": "raftmem", "after_s": %s, "peak_rss_mb": %s, "check": %s}' \
                "$indexed" "$(peak_mb_list "$OUT/million-rss-wiped.txt" "${RM_PID[$node]}")" \
                "$(cat "$OUT/million-index-check.json")")"
        fi
    done
}

million_report() {
    "$PYTHON" - "$OUT/million.jsonl" "$PRELOAD" "$VALUE_BYTES" <<'PY' | tee "$OUT/million.md"
import json, sys, time
rows = [json.loads(line) for line in open(sys.argv[1])]
n, value_bytes = int(sys.argv[2]), int(sys.argv[3])
by = {(r["phase"], r.get("target")): r for r in rows}
lat = by.get(("latency", None), {}).get("result", {})


def nodes(values):
    return " / ".join(str(v) for v in values)


def cell(target, phase, fn):
    r = by.get((phase, target))
    try:
        return fn(r) if r else "n/a"
    except (KeyError, TypeError, ZeroDivisionError):
        return "n/a"


def pl(target, kind):
    p = lat.get(target, {}).get(kind)
    return f"{p['p50_ms']} / {p['p99_ms']}" if p else "n/a"


print(f"### {n:,} memories of {value_bytes} bytes, {time.strftime('%Y-%m-%d %H:%M %Z')}")
print()
print("| | raftmem (3 nodes x 8 shards) | etcd (3 members) |")
print("|---|--:|--:|")
lines = [
    ("load rate (memories/s, batches of 64, 32 clients)", "load", lambda r: f"{r['memories'] / r['load_s']:,.0f}"),
    ("derived indexes caught up, s after the load", "load", lambda r: f"{r['indexes_absorbed_after_s']:.1f}"
     if r["indexes_absorbed_after_s"] is not None else "-"),
    ("peak RSS during the load, MB per node", "load", lambda r: nodes(r["peak_rss_mb"])),
    ("RSS after the load, MB per node", "load", lambda r: nodes(r["rss_mb"])),
    ("disk after the load, MB per node", "load", lambda r: nodes(r["disk_mb"])),
    ("kill -9 of every node: restart to ready, s", "restart", lambda r: f"{r['ready_s']:.1f}"),
    ("RSS just restarted, MB per node", "restart", lambda r: nodes(r["rss_mb"])),
    ("a wiped node caught up, s", "wipe", lambda r: f"{r['catch_up_s']:.1f}"),
    ("its disk then, MB (MB/s)", "wipe", lambda r: f"{r['disk_mb']} ({r['mb_per_s']:.0f})"),
    ("then its derived indexes rebuilt, s", "wipe-indexes", lambda r: f"{r['after_s']:.1f}"
     if r["after_s"] is not None else "not in 900 s"),
    ("its peak RSS until then, MB", "wipe-indexes", lambda r: nodes(r["peak_rss_mb"])),
    ("its indexes against its store (documents / records)", "wipe-indexes",
     lambda r: f"{'equal' if r['check']['consistent'] else 'DIFFER'} ({r['check']['documents']:,} / "
               f"{r['check']['store']:,})"),
    # The wiped node's own store must hold every memory loaded (the workloads
    # only rewrite the first KEYS): anything less is data lost in the catch-up.
    ("its store holds every memory loaded", "wipe-indexes",
     lambda r: "yes" if r["check"]["store"] == n else f"NO: {n - r['check']['store']:,} missing"),
]
for label, phase, fn in lines:
    print(f"| {label} | {cell('raftmem', phase, fn)} | {cell('etcd', phase, fn)} |")
print(f"| get of a random key, p50 / p99 ms (strong / linearizable) | {pl('raftmem', 'get')} | {pl('etcd', 'get')} |")
print(f"| a page of 100 from a list, p50 / p99 ms | {pl('raftmem', 'list_page_100')} | "
      f"{pl('etcd', 'list_page_100')} |")
PY
}
