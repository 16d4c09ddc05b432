#!/usr/bin/env bash
# hookguard's end-to-end benchmark: hookguard against nginx `proxy_pass`, plain Pingora and the
# upstream itself, side by side, in one run. See bench/README.md.
#
#   bench/run.sh [--rounds N] [--duration S] [--warmup S] [--connections N]
#                [--no-million | --only-million] [--million-threads N] [--million-keys N]
#                [--quick] [--keep] [--no-build] [--targets "hookguard-t1 hookguard-t1-alt ..."]
#                [--alt-binary PATH] [--alt-preload LIB] [--alt-label TEXT]
#
# Installs nginx-light, wrk, curl and cmake with apt-get when missing, builds the release binary
# and the Pingora passthrough example, then for each round measures every target with wrk
# (1 thread, same connections, warm-up, then the measured run) in a rotating order, and prints
# one table: medians over the rounds, the spread, and ratios to nginx taken per round.
# Everything listens on 127.0.0.1, on ports that were free a moment before.
#
# A/B: --alt-binary (another build of hookguard, e.g. from an optimization branch built with its
# own CARGO_TARGET_DIR) and/or --alt-preload (a malloc to LD_PRELOAD, e.g.
# /usr/lib/x86_64-linux-gnu/libjemalloc.so.2) add a row `hookguard-t1-alt`, measured in the same
# rounds, and a second million-key run with that variant.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"

ROUNDS=${BENCH_ROUNDS:-3}
DURATION=${BENCH_DURATION:-8}
WARMUP=${BENCH_WARMUP:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
# Upper bound on hookguard's rate, for sizing the files of once-only requests: above nginx
# `proxy_pass` at 1 worker on this machine (45-90 k rps), which hookguard may come close to. A
# row that runs out is flagged `ran out of requests` in the table (its rps would be too low).
RATE_CAP=${BENCH_RATE_CAP:-80000}
MILLION=${BENCH_MILLION:-1}
MILLION_KEYS=${BENCH_MILLION_KEYS:-1000000}
MILLION_THREADS=${BENCH_MILLION_THREADS:-2}
KEEP=0
BUILD=1
ALT_BINARY=""
ALT_PRELOAD=""
ALT_LABEL=""
ONLY_TARGETS=""

while [ $# -gt 0 ]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --warmup) WARMUP=$2; shift ;;
        --connections) CONNECTIONS=$2; shift ;;
        --no-million) MILLION=0 ;;
        --million-threads) MILLION_THREADS=$2; shift ;;
        --million-keys) MILLION_KEYS=$2; shift ;;
        --quick) ROUNDS=1; DURATION=3; WARMUP=1; MILLION=0 ;;
        --only-million) ROUNDS=0; MILLION=1 ;;
        --keep) KEEP=1 ;;
        --no-build) BUILD=0 ;; # use the binaries already in the target directory
        --alt-binary) ALT_BINARY=$(realpath "$2"); shift ;;
        --alt-preload) ALT_PRELOAD=$(realpath "$2"); shift ;;
        --alt-label) ALT_LABEL=$2; shift ;;
        --targets) ONLY_TARGETS=$2; shift ;; # a subset of the rows (nginx, the ratios' base, is kept)
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Tools and build
# ---------------------------------------------------------------------------------------------

need=()
command -v nginx >/dev/null || need+=(nginx-light)
command -v wrk >/dev/null || need+=(wrk)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v cmake >/dev/null || need+=(cmake) # Pingora's zlib-ng build
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx)

if [ "$BUILD" = 1 ]; then
    log "building (cargo build --release)"
    (cd "$ROOT" && cargo build --release --bin hookguard --example pingora_passthrough --features passthrough-example)
fi
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
HOOKGUARD="$TARGET_DIR/release/hookguard"
PASSTHROUGH="$TARGET_DIR/release/examples/pingora_passthrough"

# ---------------------------------------------------------------------------------------------
# Work directory, processes, ports
# ---------------------------------------------------------------------------------------------

WORK=$(mktemp -d /tmp/hookguard-bench.XXXXXX)
STAMP=$(date +%Y%m%d-%H%M%S)
OUT="$BENCH/results/$STAMP"
mkdir -p "$OUT"
RESULTS="$OUT/results.tsv"
META="$OUT/meta.txt"

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if declare -F stop_redis >/dev/null; then stop_redis; fi
    if [ "$KEEP" = 1 ]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

# A loopback port free a moment ago and not handed out before in this run (the kernel may
# return a just-released port twice, and Pingora's listeners share a port via SO_REUSEPORT).
free_port() {
    python3 - "$WORK/ports-given" <<'PY'
import socket, sys
path = sys.argv[1]
try:
    given = set(open(path).read().split())
except FileNotFoundError:
    given = set()
while True:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = str(s.getsockname()[1])
    s.close()
    if port not in given:
        break
open(path, "a").write(port + "\n")
print(port)
PY
}

wait_http() { # URL: until it answers 200, at most 10 s
    local i
    for i in $(seq 100); do
        if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "no answer from $1" >&2
    return 1
}

wait_port() { # PORT: until something accepts on 127.0.0.1:PORT
    local i
    for i in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    return 1
}

# PID plus its children (nginx master and workers), one per line.
tree() {
    echo "$1"
    ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' || true
}

rss_kib() { # PID: resident set of the process tree, KiB
    local sum=0 p v
    for p in $(tree "$1"); do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}

cpu_ticks() { # PID: user+system clock ticks of the process tree
    local sum=0 p v
    for p in $(tree "$1"); do
        v=$(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)
        sum=$((sum + ${v:-0}))
    done
    echo "$sum"
}
TICKS=$(getconf CLK_TCK)

stop_pid() { # PID: SIGTERM, wait, forget
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# ---------------------------------------------------------------------------------------------
# nginx: the upstream (`return 200`) and the proxy_pass peers
# ---------------------------------------------------------------------------------------------

nginx_common() { # NAME
    cat <<EOF
daemon off;
pid $WORK/$1.pid;
error_log $WORK/$1-error.log warn;
events { worker_connections 4096; }
EOF
}

nginx_temp_paths() { # NAME
    local d="$WORK/$1-tmp"
    mkdir -p "$d"
    cat <<EOF
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
EOF
}

start_nginx() { # NAME CONF: runs nginx in the foreground of a background job; sets LAST_PID
    "$NGINX" -p "$WORK" -c "$2" -e "$WORK/$1-error.log" >"$WORK/$1.out" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

UP_PORT=$(free_port)
cat >"$WORK/upstream.conf" <<EOF
$(nginx_common upstream)
worker_processes 1;
http {
$(nginx_temp_paths upstream)
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_max_body_size 2m;
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        location / { return 200; }
    }
}
EOF
start_nginx upstream "$WORK/upstream.conf"
UP_PID=$LAST_PID
wait_port "$UP_PORT"

# The peer: nginx as one would tune it for this job. Keep-alive to the upstream, the body
# buffered in memory (as hookguard buffers it), an access log line per request like hookguard's
# request log, written in 64 KiB batches.
nginx_proxy_conf() { # NAME PORT WORKERS
    cat <<EOF
$(nginx_common "$1")
worker_processes $3;
http {
$(nginx_temp_paths "$1")
    access_log $WORK/$1-access.log combined buffer=64k flush=1s;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_max_body_size 1m;
    client_body_buffer_size 1m;
    upstream app {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}

NGINX1_PORT=$(free_port)
nginx_proxy_conf nginx1 "$NGINX1_PORT" 1 >"$WORK/nginx1.conf"
start_nginx nginx1 "$WORK/nginx1.conf"
NGINX1_PID=$LAST_PID
NGINX2_PORT=$(free_port)
nginx_proxy_conf nginx2 "$NGINX2_PORT" 2 >"$WORK/nginx2.conf"
start_nginx nginx2 "$WORK/nginx2.conf"
NGINX2_PID=$LAST_PID
wait_port "$NGINX1_PORT"
wait_port "$NGINX2_PORT"

# ---------------------------------------------------------------------------------------------
# hookguard configs; which providers this build has
# ---------------------------------------------------------------------------------------------

MG_SECRET="bench-mailgun-signing-key"
STRIPE_SECRET="whsec_benchStripeEndpointSecret0123456789"
SW_SECRET="whsec_$(python3 -c 'import base64; print(base64.b64encode(bytes(range(32))).decode())')"

route_mailgun() {
    cat <<EOF
  - name: mailgun
    path: /webhooks/mailgun
    provider: mailgun
    secrets: ["$MG_SECRET"]
    tolerance: 6h
    forward_body: json
EOF
    if [ "$SPOOL" = 1 ]; then echo "    spool: true"; fi
}
route_stripe() {
    cat <<EOF
  - name: stripe
    path: /webhooks/stripe
    provider: stripe
    secrets: ["$STRIPE_SECRET"]
    tolerance: 6h
    forward_body: json
EOF
}
route_standard() {
    cat <<EOF
  - name: standard
    path: /webhooks/standard
    provider: standard_webhooks
    secrets: ["$SW_SECRET"]
    tolerance: 6h
    forward_body: json
EOF
}

# Stripe and Standard Webhooks are in the JSON workload once this build knows them
# (src/providers/mod.rs REGISTRY); until then their rows say `pending`.
HAVE_STRIPE=0
HAVE_STANDARD=0
probe() { # ROUTE-FUNCTION
    {
        printf 'listen: "127.0.0.1:1"\nadmin_listen: "127.0.0.1:2"\nupstream: "http://127.0.0.1:3"\nroutes:\n'
        "$1"
    } >"$WORK/probe.yaml"
    "$HOOKGUARD" check --config "$WORK/probe.yaml" >"$WORK/probe.out" 2>&1
}
if probe route_stripe; then HAVE_STRIPE=1; else
    log "stripe: pending (this build does not take the route: $(tail -1 "$WORK/probe.out"))"
fi
if probe route_standard; then HAVE_STANDARD=1; else
    log "standard_webhooks: pending (this build does not take the route: $(tail -1 "$WORK/probe.out"))"
fi

# replay.max_entries: a full store refuses new keys (503 `replay_store_full`), so it must hold
# every key a row can send: 1,000,000, or more when the request files are longer.
HG_MAX_ENTRIES=1000000
hookguard_conf() { # PORT ADMIN THREADS EXTRA_ROUTES
    cat <<EOF
listen: "127.0.0.1:$1"
admin_listen: "127.0.0.1:$2"
upstream: "http://127.0.0.1:$UP_PORT"
max_body_bytes: 1048576
threads: $3
replay:
  max_entries: $HG_MAX_ENTRIES
EOF
    # The shared spool's row: replay keys and the queue in the bench's redis-server (append-only
    # file synced at every write, as docs/spool.md asks), under a prefix of the row's own.
    if [ "$SPOOL" = redis ]; then
        printf '  backend: redis\n  redis_url: "redis://127.0.0.1:%s"\n  redis_prefix: "bench-%s:"\n' \
            "$REDIS_PORT" "$1"
        printf 'spool:\n  backend: redis\n  max_bytes: 8589934592\n'
        if [ -n "${BENCH_SPOOL_WORKERS:-}" ]; then printf '  workers: %s\n' "$BENCH_SPOOL_WORKERS"; fi
    fi
    # The spool row: every message written (fsync'd, group commit) before its 202. The file
    # lives beside the repository (a real disk; /tmp may be a tmpfs, where fsync is free).
    if [ "$SPOOL" = 1 ]; then
        printf 'spool:\n  path: "%s"\n  max_bytes: 8589934592\n' "$SPOOL_DIR/spool-$1.redb"
        if [ -n "${BENCH_SPOOL_WORKERS:-}" ]; then printf '  workers: %s\n' "$BENCH_SPOOL_WORKERS"; fi
    fi
    echo "routes:"
    local i
    for ((i = 1; i <= $4; i++)); do
        printf '  - name: filler-%04d\n    path: /filler/%04d\n    provider: mailgun\n    secrets: ["%s"]\n' \
            "$i" "$i" "$MG_SECRET"
    done
    route_mailgun
    if [ "$HAVE_STRIPE" = 1 ]; then route_stripe; fi
    if [ "$HAVE_STANDARD" = 1 ]; then route_standard; fi
}

# A redis-server for the shared spool's row, started fresh for each of its runs (nothing left
# from a previous round), durable as production should run it.
REDIS_PORT=""
REDIS_DIR=""
SPOOLED_ON_REDIS=0
start_redis() {
    REDIS_PORT=$(free_port)
    REDIS_DIR=$(mktemp -d "$WORK/redis.XXXX")
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly yes \
        --appendfsync always --dir "$REDIS_DIR" --daemonize yes \
        --pidfile "$REDIS_DIR/redis.pid" --logfile "$REDIS_DIR/redis.log"
    local i
    for ((i = 0; i < 100; i++)); do
        redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "redis-server did not start" >&2
    return 1
}
stop_redis() {
    [ -n "$REDIS_PORT" ] || return 0
    redis-cli -p "$REDIS_PORT" shutdown nosave >/dev/null 2>&1 || true
    rm -rf "$REDIS_DIR"
    REDIS_PORT=""
}

HAVE_ALT=0
if [ -n "$ALT_BINARY$ALT_PRELOAD" ]; then
    HAVE_ALT=1
    [ -n "$ALT_LABEL" ] || ALT_LABEL="${ALT_BINARY:-this build}${ALT_PRELOAD:+ with LD_PRELOAD=$(basename "$ALT_PRELOAD")}"
fi

# Starts hookguard (the alternative build or malloc when USE_ALT=1); sets LAST_PID, HG_PORT,
# HG_ADMIN.
USE_ALT=0
SPOOL=0
SPOOL_DIR="$ROOT/target/bench-spool"
start_hookguard() { # NAME THREADS EXTRA_ROUTES [ARGS...]
    local name=$1 threads=$2 extra=$3 bin=$HOOKGUARD preload=""
    shift 3
    if [ "$USE_ALT" = 1 ]; then
        bin=${ALT_BINARY:-$HOOKGUARD}
        preload=$ALT_PRELOAD
    fi
    HG_PORT=$(free_port)
    HG_ADMIN=$(free_port)
    hookguard_conf "$HG_PORT" "$HG_ADMIN" "$threads" "$extra" >"$WORK/$name.yaml"
    env ${preload:+LD_PRELOAD="$preload"} "$bin" --config "$WORK/$name.yaml" "$@" >"$WORK/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_http "http://127.0.0.1:$HG_ADMIN/readyz"
}

start_passthrough() { # NAME THREADS; sets LAST_PID, PT_PORT
    PT_PORT=$(free_port)
    "$PASSTHROUGH" --listen "127.0.0.1:$PT_PORT" --upstream "127.0.0.1:$UP_PORT" --threads "$2" \
        >"$WORK/$1.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    wait_port "$PT_PORT"
}

# hookguard_requests_total by outcome, as `outcome=count ...` (zero counts left out).
outcomes() { # ADMIN_PORT
    curl -fsS "http://127.0.0.1:$1/metrics" | awk '
        /^hookguard_requests_total\{/ {
            match($0, /outcome="[^"]*"/); o = substr($0, RSTART + 9, RLENGTH - 10);
            n[o] += $NF }
        END { for (o in n) if (n[o] > 0) printf "%s=%d ", o, n[o] }'
}

spool_queued() { # ADMIN_PORT
    curl -fsS "http://127.0.0.1:$1/metrics" |
        awk '/^hookguard_spool_messages\{state="queued"\}/ {print $2}'
}

# Waits until the spool has delivered its backlog; prints the seconds it took (at most 300).
spool_drain() { # ADMIN_PORT
    local t0 q
    t0=$(date +%s.%N)
    for _ in $(seq 3000); do
        q=$(spool_queued "$1")
        if [ "${q:-1}" = 0 ]; then break; fi
        sleep 0.1
    done
    python3 -c "print(f'{$(date +%s.%N) - $t0:.2f}')"
}

replay_entries() { # ADMIN_PORT
    curl -fsS "http://127.0.0.1:$1/metrics" | awk '/^hookguard_replay_entries / {print $2}'
}

# ---------------------------------------------------------------------------------------------
# Signed requests
# ---------------------------------------------------------------------------------------------

# Ready HTTP/1.1 requests, one file per workload for the warm-up and one for the measured run
# (disjoint: different tags). Every hookguard row is a fresh process with an empty replay
# cache, so the same once-only files serve every hookguard row of every round; the other rows
# cycle through the start of the same files. One gen.py per file, all at once.
MAIN_N=$((RATE_CAP * DURATION))
WARM_N=$((RATE_CAP * WARMUP))
if [ $((WARM_N + MAIN_N)) -gt "$HG_MAX_ENTRIES" ]; then HG_MAX_ENTRIES=$((WARM_N + MAIN_N)); fi
WORKLOADS=(mailgun)
[ "$HAVE_STRIPE" = 1 ] && WORKLOADS+=(stripe)
[ "$HAVE_STANDARD" = 1 ] && WORKLOADS+=(standard)
GEN_PIDS=()
if [ "$ROUNDS" -gt 0 ]; then
    log "generating signed requests ($WARM_N warm-up + $MAIN_N measured per workload: ${WORKLOADS[*]})"
    for w in "${WORKLOADS[@]}"; do
        case "$w" in
            mailgun) kind=mailgun-form; secret=$MG_SECRET ;;
            stripe) kind=stripe; secret=$STRIPE_SECRET ;;
            standard) kind=standard; secret=$SW_SECRET ;;
        esac
        python3 "$BENCH/gen.py" "$kind" "$WARM_N" "$WORK/$w-warm.req" --secret "$secret" --tag w &
        GEN_PIDS+=($!)
        python3 "$BENCH/gen.py" "$kind" "$MAIN_N" "$WORK/$w-main.req" --secret "$secret" --tag m &
        GEN_PIDS+=($!)
    done
    for pid in "${GEN_PIDS[@]}"; do
        wait "$pid" || { kill "${GEN_PIDS[@]}" 2>/dev/null; echo "gen.py failed" >&2; exit 1; }
    done
    log "generated: $(du -ch "$WORK"/*.req | tail -1 | cut -f1)"
fi

# ---------------------------------------------------------------------------------------------
# Measuring
# ---------------------------------------------------------------------------------------------

run_wrk() { # URL FILE MODE SECONDS RESULT-FILE
    WRK_THREADS=1 WRK_RESULT="$5" wrk -t1 -c"$CONNECTIONS" -d"$4s" --timeout 10s \
        -s "$BENCH/requests.lua" "$1" -- "$2" "$3" >"$5.out" 2>&1
}

{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml 2>/dev/null || echo ' (+ uncommitted changes in src/Cargo.toml)')"
    echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) cores; memory $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
    echo "kernel: $(uname -r); $("$NGINX" -v 2>&1); wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'); $(rustc --version)"
    echo "load: wrk -t1 -c$CONNECTIONS, ${WARMUP}s warm-up + ${DURATION}s measured, $ROUNDS round(s), ~1 KiB bodies"
    echo "loadavg at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$META"
printf 'round\ttarget\tworkload\trps\tp50_ms\tp99_ms\trss_kib\trss_idle_kib\tcpu_us_per_req\tnon2xx\tsock_err\texhausted\toutcomes\tloadavg\tdrain_s\tduration_s\n' >"$RESULTS"

# One measurement: warm-up, measured run, RSS, CPU, and for hookguard its own outcome counts.
# measure ROUND TARGET
measure() {
    local round=$1 target=$2 kind pid port admin="" workload=mailgun mode=wrap idle=0 path
    case "$target" in
        direct) kind=static; pid=$UP_PID; port=$UP_PORT ;;
        nginx) kind=static; pid=$NGINX1_PID; port=$NGINX1_PORT ;;
        nginx-2w) kind=static; pid=$NGINX2_PID; port=$NGINX2_PORT ;;
        pingora-t1) kind=pingora ;;
        hookguard-t1) kind=hookguard ;;
        hookguard-t1-nolog) kind=hookguard ;;
        hookguard-t2) kind=hookguard ;;
        hookguard-t1-1000routes) kind=hookguard ;;
        hookguard-t1-alt) kind=hookguard ;;
        hookguard-t1-spool) kind=hookguard ;;
        hookguard-t1-spool-alt) kind=hookguard ;;
        hookguard-t1-spool-redis) kind=hookguard ;;
        hookguard-t1-stripe) kind=hookguard; workload=stripe ;;
        hookguard-t1-standard) kind=hookguard; workload=standard ;;
        *) echo "unknown target $target" >&2; return 1 ;;
    esac
    case "$kind" in
        pingora)
            start_passthrough "$target" 1
            pid=$LAST_PID; port=$PT_PORT ;;
        hookguard)
            local threads=1 extra=0 args=()
            case "$target" in
                *-t2) threads=2 ;;
                *-1000routes) extra=999 ;;
                *-nolog) args=(--log-level warn) ;;
            esac
            USE_ALT=0
            case "$target" in *-alt) USE_ALT=1 ;; esac
            case "$target" in
                *-spool | *-spool-alt) SPOOL=1; mkdir -p "$SPOOL_DIR" ;;
                *-spool-redis) SPOOL=redis; SPOOLED_ON_REDIS=1; start_redis ;;
            esac
            start_hookguard "$target" "$threads" "$extra" "${args[@]}"
            USE_ALT=0
            SPOOL=0
            pid=$LAST_PID; port=$HG_PORT; admin=$HG_ADMIN; mode=once
            sleep 0.3
            idle=$(rss_kib "$pid") ;;
    esac
    case "$workload" in
        mailgun) path=/webhooks/mailgun ;;
        stripe) path=/webhooks/stripe ;;
        standard) path=/webhooks/standard ;;
    esac
    local url="http://127.0.0.1:$port$path" r="$WORK/r-$round-$target"
    run_wrk "$url" "$WORK/$workload-warm.req" "$mode" "$WARMUP" "$r.warm"
    # A spooled row answers before it delivers: the warm-up's backlog is delivered before the
    # measured run, and the measured run's after it, inside the CPU window (the delivery is
    # part of each request's cost). drain_s: how long that took after wrk stopped.
    local spooled=0 drain=-
    case "$target" in *-spool | *-spool-alt | *-spool-redis) spooled=1 ;; esac
    if [ "$spooled" = 1 ]; then spool_drain "$admin" >/dev/null; fi
    # The Redis row's CPU counts the redis-server's too: it does the spool's work there.
    local t0 t1 rpid=""
    if [ "$SPOOLED_ON_REDIS" = 1 ]; then rpid=$(cat "$REDIS_DIR/redis.pid"); fi
    ticks() { if [ -n "$rpid" ]; then echo $(($(cpu_ticks "$pid") + $(cpu_ticks "$rpid"))); else cpu_ticks "$pid"; fi; }
    t0=$(ticks)
    run_wrk "$url" "$WORK/$workload-main.req" "$mode" "$DURATION" "$r"
    local spool_note=""
    if [ "$spooled" = 1 ]; then
        drain=$(spool_drain "$admin")
        spool_note=", backlog delivered $drain s after wrk stopped"
    fi
    t1=$(ticks)
    local rss
    rss=$(rss_kib "$pid")
    local res outs=""
    res=$(cat "$r")
    get() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$res"; }
    if [ "$kind" = hookguard ]; then outs=$(outcomes "$admin"); fi
    local reqs cpu
    reqs=$(get requests)
    cpu=$(python3 -c "print(f'{($t1-$t0)/$TICKS*1e6/max(1,$reqs):.1f}')")
    local sockerr=$(($(get connect_err) + $(get read_err) + $(get write_err) + $(get timeout)))
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
        "$round" "$target" "$workload" "$(get rps)" "$(get p50_ms)" "$(get p99_ms)" "$rss" "$idle" \
        "$cpu" "$(get non2xx)" "$sockerr" "$(get exhausted)" "${outs:--}" \
        "$(cut -d' ' -f1 /proc/loadavg)" "$drain" "$(get duration_s)" >>"$RESULTS"
    log "round $round $target: $(get rps) rps, p99 $(get p99_ms) ms, non-2xx $(get non2xx)${outs:+, $outs}$spool_note"
    if [ "$kind" != static ]; then
        stop_pid "$pid"
        rm -f "$WORK/$target.log"
        rm -rf "$SPOOL_DIR"
        stop_redis
        SPOOLED_ON_REDIS=0
    fi
}

TARGETS=(direct nginx nginx-2w pingora-t1 hookguard-t1 hookguard-t1-nolog hookguard-t2
    hookguard-t1-1000routes hookguard-t1-spool)
command -v redis-server >/dev/null && TARGETS+=(hookguard-t1-spool-redis)
[ "$HAVE_ALT" = 1 ] && TARGETS+=(hookguard-t1-alt hookguard-t1-spool-alt)
[ "$HAVE_STRIPE" = 1 ] && TARGETS+=(hookguard-t1-stripe)
[ "$HAVE_STANDARD" = 1 ] && TARGETS+=(hookguard-t1-standard)
if [ -n "$ONLY_TARGETS" ]; then
    kept=()
    for t in "${TARGETS[@]}"; do
        [[ $t == nginx || " $ONLY_TARGETS " == *" $t "* ]] && kept+=("$t")
    done
    TARGETS=("${kept[@]}")
fi

for ((round = 1; round <= ROUNDS; round++)); do
    log "round $round/$ROUNDS (loadavg $(cut -d' ' -f1-3 /proc/loadavg))"
    n=${#TARGETS[@]}
    for ((i = 0; i < n; i++)); do
        # Rotate the order each round, so no target always runs first or after the same one.
        measure "$round" "${TARGETS[$(((i + round - 1) % n))]}"
    done
done

# ---------------------------------------------------------------------------------------------
# RSS holding a million replay keys
# ---------------------------------------------------------------------------------------------

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# Drives MILLION_KEYS unique requests through a fresh hookguard with replay.max_entries
# MILLION_KEYS and reads its RSS; sets MILLION_LINE.
million_run() {
    HG_MAX_ENTRIES=$MILLION_KEYS
    start_hookguard million "$MILLION_THREADS" 0
    local pid=$LAST_PID
    sleep 0.3
    local idle
    idle=$(rss_kib "$pid")
    log "driving $MILLION_KEYS unique requests through hookguard (threads $MILLION_THREADS; idle RSS $(mib "$idle") MiB)"
    local started
    started=$(date +%s.%N)
    WRK_THREADS=1 WRK_RESULT="$WORK/million.res" wrk -t1 -c"$CONNECTIONS" -d3600s --timeout 10s \
        -s "$BENCH/requests.lua" "http://127.0.0.1:$HG_PORT/webhooks/mailgun" -- \
        "$WORK/million.req" once >"$WORK/million.out" 2>&1 &
    local wrk_pid=$!
    PIDS+=("$wrk_pid")
    # wrk waits out its whole duration even when the requests ran out: stop it once all are in
    # (or the file ran out: requests.lua then sends /__bench_exhausted__, a `no_route`).
    local done_n
    while kill -0 "$wrk_pid" 2>/dev/null; do
        sleep 0.5
        done_n=$(curl -fsS "http://127.0.0.1:$HG_ADMIN/metrics" | awk '
            /^hookguard_requests_total\{.*outcome="forwarded"/ {s += $NF}
            /^hookguard_requests_total\{.*outcome="no_route"/ && $NF > 0 {out = 1}
            END {print (out ? "out" : s + 0)}')
        if [ "$done_n" = out ] || [ "$done_n" -ge "$MILLION_KEYS" ]; then break; fi
    done
    kill -INT "$wrk_pid" 2>/dev/null || true
    wait "$wrk_pid" 2>/dev/null || true
    stop_pid "$wrk_pid"
    local elapsed entries outs rss hwm
    elapsed=$(python3 -c "import time; print(f'{time.time() - $started:.0f}')")
    sleep 1
    entries=$(replay_entries "$HG_ADMIN")
    outs=$(outcomes "$HG_ADMIN")
    rss=$(rss_kib "$pid")
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
    MILLION_LINE="threads $MILLION_THREADS: idle $(mib "$idle") MiB; holding $entries replay keys (max_entries $MILLION_KEYS): RSS $(mib "$rss") MiB (peak $(mib "$hwm") MiB); driven in ${elapsed}s; outcomes: $outs"
    log "$MILLION_LINE"
    stop_pid "$pid"
}

MILLION_LINE="(skipped: --no-million)"
ALT_MILLION_LINE=""
if [ "$MILLION" = 1 ]; then
    # Exactly MILLION_KEYS requests are sent (one more is generated: wrk calls request() once to
    # check it and never sends that one): the store is then full, and a single request more
    # would be refused (`replay_store_full`). Once they are used up requests.lua sends a few
    # /__bench_exhausted__ (`no_route` in the outcomes) until wrk is stopped.
    log "generating $MILLION_KEYS small signed requests"
    python3 "$BENCH/gen.py" mailgun-small "$((MILLION_KEYS + 1))" "$WORK/million.req" \
        --secret "$MG_SECRET" --tag M
    million_run
    if [ "$HAVE_ALT" = 1 ]; then
        first=$MILLION_LINE
        USE_ALT=1
        million_run
        USE_ALT=0
        ALT_MILLION_LINE=$MILLION_LINE
        MILLION_LINE=$first
    fi
fi
echo "million: $MILLION_LINE" >>"$META"
if [ "$HAVE_ALT" = 1 ]; then
    echo "alt: $ALT_LABEL" >>"$META"
    [ -n "$ALT_MILLION_LINE" ] && echo "million (alt): $ALT_MILLION_LINE" >>"$META"
fi
echo "stripe: $([ "$HAVE_STRIPE" = 1 ] && echo "in this build's REGISTRY" || echo pending)" >>"$META"
echo "standard_webhooks: $([ "$HAVE_STANDARD" = 1 ] && echo "in this build's REGISTRY" || echo pending)" >>"$META"
echo "loadavg at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$META"

python3 "$BENCH/report.py" "$RESULTS" "$META" | tee "$OUT/table.md"
log "results in $OUT"
