#!/usr/bin/env bash
# Shared by bench/etcd_compare.sh and bench/wrk_compare.sh: starting, checking and
# stopping a 3-member etcd cluster and a 3-node raftmem cluster on 127.0.0.1, by
# pid, and CPU accounting. The caller sets REPO, PYTHON, OUT and WORK (a scratch
# directory, removed on exit unless KEEP_WORK=1), then sources this file; the EXIT
# trap stops every process started here.

READY_TIMEOUT_S=60
STOP_TIMEOUT_S=15
POLL_S=0.2

ETCD_NAMES=(e1 e2 e3)
ETCD_CLIENT_PORTS=(2379 22379 32379)
ETCD_PEER_PORTS=(2380 22380 32380)
RM_NODES=(n1 n2 n3)
RM_HTTP_PORTS=(8781 8782 8783)
ETCD_URLS=$(printf 'http://127.0.0.1:%s,' "${ETCD_CLIENT_PORTS[@]}"); ETCD_URLS=${ETCD_URLS%,}
RM_URLS=$(printf 'http://127.0.0.1:%s,' "${RM_HTTP_PORTS[@]}"); RM_URLS=${RM_URLS%,}

declare -A ETCD_PID=() RM_PID=()

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# A pid is alive unless it is gone or a zombie (killed children linger as zombies
# until reaped; orphans may never be).
alive() {
    local stat
    stat=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [[ $stat != Z* ]]
}

stop_pids() {
    local pid deadline
    for pid in "$@"; do alive "$pid" && kill -TERM "$pid" 2>/dev/null || true; done
    deadline=$((SECONDS + STOP_TIMEOUT_S))
    for pid in "$@"; do
        while alive "$pid" && ((SECONDS < deadline)); do sleep "$POLL_S"; done
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
}

stop_etcd() { ((${#ETCD_PID[@]})) && stop_pids "${ETCD_PID[@]}"; ETCD_PID=(); }
stop_raftmem() { ((${#RM_PID[@]})) && stop_pids "${RM_PID[@]}"; RM_PID=(); }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_etcd || true
    stop_raftmem || true
    if [[ ${KEEP_WORK:-0} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'log "failed (exit $?) at line $LINENO: $BASH_COMMAND"' ERR

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
check_ports_free() {
    local port
    for port in "${ETCD_CLIENT_PORTS[@]}" "${ETCD_PEER_PORTS[@]}" "${RM_HTTP_PORTS[@]}"; do
        port_in_use "$port" && die "port $port is in use"
    done
    return 0
}

# wait_http URL SUBSTRING: poll until the body contains SUBSTRING, with a deadline.
wait_http() {
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    local body
    # No `| grep -q`: with pipefail, grep quitting early can fail curl with SIGPIPE.
    until body=$(curl -fsS --max-time 2 "$1" 2>/dev/null) && [[ $body == *"$2"* ]]; do
        ((SECONDS < deadline)) || return 1
        sleep "$POLL_S"
    done
}

# ensure_command COMMAND PACKAGE: install Debian's PACKAGE with apt-get when COMMAND is missing.
ensure_command() {
    local command=$1 package=$2 apt_log="$WORK/logs/apt-$2.log" sudo=""
    command -v "$command" >/dev/null && return 0
    [[ $(id -u) == 0 ]] || sudo=sudo
    log "installing $package with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y --no-install-recommends "$package" >"$apt_log" 2>&1; then
        $sudo apt-get update >>"$apt_log" 2>&1
        $sudo apt-get install -y --no-install-recommends "$package" >>"$apt_log" 2>&1 \
            || { cat "$apt_log" >&2; die "could not install $package"; }
    fi
}

# check_prereqs: the interpreter can import raftmem; curl and bc exist; etcd is
# installed (Debian's etcd-server) when missing.
check_prereqs() {
    "$PYTHON" -c 'import raftmem.client, cli.bench, aiohttp' 2>/dev/null \
        || die "$PYTHON cannot import raftmem (set PYTHON=/path/to/venv/bin/python)"
    command -v curl >/dev/null || die "curl is needed"
    command -v bc >/dev/null || die "bc is needed"
    ensure_command etcd etcd-server
}

CLK_TCK=$(getconf CLK_TCK)
# CPU accounting, to tell what the servers cost per operation and whether other
# work on the machine ran during a measurement: busy ticks of the whole machine,
# and ticks of the given pids.
machine_busy_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9; exit}' /proc/stat; }
pids_ticks() {
    local pid total=0 ticks
    for pid in "$@"; do
        ticks=$(awk '{print $14+$15}' "/proc/$pid/stat" 2>/dev/null) || ticks=0
        total=$((total + ${ticks:-0}))
    done
    echo "$total"
}

# cpu_start PIDS...; (the measured run); cpu_stop FILE: wall time, busy CPU of the
# machine and CPU of PIDS over the run, as JSON in FILE.
cpu_start() {
    CPU_PIDS=("$@"); CPU_BUSY0=$(machine_busy_ticks); CPU_SRV0=$(pids_ticks "$@"); CPU_T0=$(date +%s.%N)
}
cpu_stop() {
    printf '{"wall_s": %s, "machine_busy_cpu_s": %s, "server_cpu_s": %s}\n' \
        "$(echo "$(date +%s.%N) - $CPU_T0" | bc)" \
        "$(echo "scale=2; ($(machine_busy_ticks) - $CPU_BUSY0) / $CLK_TCK" | bc)" \
        "$(echo "scale=2; ($(pids_ticks "${CPU_PIDS[@]}") - $CPU_SRV0) / $CLK_TCK" | bc)" >"$1"
}

# -- etcd ------------------------------------------------------------------------------
ETCD_INITIAL=""
for i in 0 1 2; do ETCD_INITIAL+="${ETCD_NAMES[$i]}=http://127.0.0.1:${ETCD_PEER_PORTS[$i]},"; done
ETCD_INITIAL=${ETCD_INITIAL%,}

# spawn LOG CMD...: start CMD detached from this shell's job table (so a kill -9
# by the failover helper prints no job notice), and print its pid.
spawn() {
    local out=$1; shift
    ( "$@" >>"$out" 2>&1 </dev/null & echo $! )
}

start_etcd_member() { # INDEX
    local i=$1 name=${ETCD_NAMES[$1]}
    ETCD_PID[$name]=$(spawn "$WORK/logs/etcd-$name.log" etcd --name "$name" --data-dir "$WORK/etcd/$name" \
        --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
        --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
        --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
        --initial-cluster "$ETCD_INITIAL" --initial-cluster-token raftmem-bench \
        --initial-cluster-state "${ETCD_STATE:-new}" --logger zap --log-outputs stderr --log-level warn)
}

ready_etcd() {
    local port
    for port in "${ETCD_CLIENT_PORTS[@]}"; do
        wait_http "http://127.0.0.1:$port/health" '"health":"true"' || return 1
    done
}

restart_dead_etcd() { # same flags: with a data dir in place, etcd ignores --initial-*
    local i pid
    for i in 0 1 2; do
        pid=${ETCD_PID[${ETCD_NAMES[$i]}]:-}
        alive "$pid" || start_etcd_member "$i"
    done
}

pids_arg_etcd() {
    local i out=""
    for i in 0 1 2; do out+="http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}=${ETCD_PID[${ETCD_NAMES[$i]}]},"; done
    echo "${out%,}"
}

start_etcd() { # all three members (restart_dead_etcd starts any that is not running), healthy
    restart_dead_etcd
    ready_etcd || die "etcd did not become healthy in ${READY_TIMEOUT_S}s (logs: $WORK/logs)"
}

# -- raftmem ---------------------------------------------------------------------------
RM_DIR=$WORK/raftmem

ready_raftmem() {
    local port
    for port in "${RM_HTTP_PORTS[@]}"; do
        wait_http "http://127.0.0.1:$port/readyz" '"ready":true' || return 1
    done
}

restart_dead_raftmem() {
    local n
    for n in "${RM_NODES[@]}"; do
        alive "${RM_PID[$n]:-}" && continue
        RM_PID[$n]=$(cd "$REPO" && spawn "$RM_DIR/logs/$n.log" \
            "$PYTHON" -m cli.main serve --config "$RM_DIR/cluster.yaml" --node "$n")
    done
}

pids_arg_raftmem() {
    local n out=""
    for n in "${RM_NODES[@]}"; do out+="$n=${RM_PID[$n]},"; done
    echo "${out%,}"
}

# start_raftmem: `raftmem cluster up` in $RM_DIR (with RM_SET's settings), ready, leaders balanced.
start_raftmem() {
    local up_pid deadline pids i setting sets=()
    # RM_SET: settings for the nodes' config, space-separated (limits.relay_in_flight_max=0 ...)
    for setting in ${RM_SET:-}; do sets+=(--set "$setting"); done
    (cd "$REPO" && "$PYTHON" -m cli.main cluster up --data-dir "$RM_DIR" --detach "${sets[@]}" \
        >"$WORK/logs/raftmem-up.log" 2>&1) &
    up_pid=$!
    # Record the node pids as soon as they exist, so the trap can stop them even if
    # `cluster up` fails or is interrupted while waiting for readiness.
    deadline=$((SECONDS + READY_TIMEOUT_S))
    until [[ -s $RM_DIR/cluster.pids ]] || ! alive "$up_pid"; do
        ((SECONDS < deadline)) || break
        sleep "$POLL_S"
    done
    if [[ -s $RM_DIR/cluster.pids ]]; then
        mapfile -t pids <"$RM_DIR/cluster.pids"
        for i in 0 1 2; do RM_PID[${RM_NODES[$i]}]=${pids[$i]}; done
    fi
    wait "$up_pid" || die "raftmem cluster up failed (log: $WORK/logs/raftmem-up.log)"
    ready_raftmem || die "raftmem did not become ready"
    wait_balanced
}

# Every shard led by its preferred leader before measuring (etcd has one leader; raftmem
# moves shard leaders to their preferred nodes 10 s after an election).
wait_balanced() {
    (cd "$REPO" && "$PYTHON" bench/wait_balanced.py "${RM_URLS%%,*}" 60) || log "raftmem leaders not balanced; measuring anyway"
}
