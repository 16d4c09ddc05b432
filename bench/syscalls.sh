#!/usr/bin/env bash
# Syscalls per request, on the proxy and on its upstream: hookguard (threads 1, Mailgun form
# bodies, verify + replay + JSON) and nginx `proxy_pass` (1 worker, keep-alive upstream), each in
# front of an nginx `return 200` upstream, under wrk -t1 -c32. `strace -c -f` attaches to the
# proxy's threads and to the upstream's worker for a few seconds; the request count is the
# upstream's own (`stub_status`), so both sides divide by the same number.
#
#   bench/syscalls.sh [--seconds N (wrk's run, default 4)] [--binary PATH] [--out DIR]
#
# strace slows every syscall down, so the rps during the trace mean nothing; the counts per
# request do not depend on it (a batched `epoll_wait` is the one exception: under strace it
# returns fewer events per call, so its count is an upper bound).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
SECONDS_=4
BINARY=""
OUTDIR="$BENCH/results/syscalls-$(date +%Y%m%d-%H%M%S)"
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_=$2; shift ;;
        --binary) BINARY=$2; shift ;;
        --out) OUTDIR=$2; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
for tool in strace nginx wrk curl; do
    command -v "$tool" >/dev/null || {
        echo "$tool is missing: apt-get install strace nginx-light wrk curl" >&2
        exit 1
    }
done
if [ -z "$BINARY" ]; then
    (cd "$ROOT" && cargo build --release --bin hookguard)
    BINARY="$ROOT/target/release/hookguard"
fi
mkdir -p "$OUTDIR"

# shellcheck source=bench/common.sh
. "$BENCH/common.sh"
bench_workdir syscalls
worker_of() { # master pid -> its one worker's pid
    for _ in $(seq 50); do
        local w
        w=$(pgrep -P "$1" | head -1 || true)
        [ -n "$w" ] && { echo "$w"; return; }
        sleep 0.1
    done
    echo "no nginx worker under $1" >&2
    exit 1
}

# The upstream, with stub_status on a second port so that the count is not part of the load.
UP=$(port)
STATUS=$(port)
upstream_nginx_conf "$UP" "$STATUS" >"$WORK/up.conf"
nginx -p "$WORK" -c "$WORK/up.conf" -e "$WORK/up-error.log" >/dev/null 2>&1 &
UP_MASTER=$!
PIDS+=("$UP_MASTER")
wait_up "http://127.0.0.1:$STATUS/"
UP_WORKER=$(worker_of "$UP_MASTER")
served() { curl -fsS "http://127.0.0.1:$STATUS/" | awk 'NR == 3 { print $3 }'; }

# The nginx peer, configured as in bench/run.sh.
NGX=$(port)
cat >"$WORK/proxy.conf" <<EOF
$(nginx_head proxy)
worker_processes 1;
http {
$(nginx_temp_paths proxy)
    access_log $WORK/proxy-access.log combined buffer=64k flush=1s;
    keepalive_requests 100000000;
    keepalive_timeout 120s;
    client_max_body_size 1m;
    client_body_buffer_size 1m;
    upstream app { server 127.0.0.1:$UP; keepalive 64; keepalive_requests 100000000; }
    server {
        listen 127.0.0.1:$NGX backlog=4096;
        location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
nginx -p "$WORK" -c "$WORK/proxy.conf" -e "$WORK/proxy-error.log" >/dev/null 2>&1 &
NGX_MASTER=$!
PIDS+=("$NGX_MASTER")
NGX_WORKER=$(worker_of "$NGX_MASTER")

HG=$(port)
ADMIN=$(port)
hookguard_config "$HG" "$ADMIN" "$UP" 2000000 >"$WORK/hg.yaml"
"$BINARY" --config "$WORK/hg.yaml" >"$WORK/hg.log" 2>&1 &
HG_PID=$!
PIDS+=("$HG_PID")
wait_up "http://127.0.0.1:$ADMIN/readyz"

N=$(((SECONDS_ + 2) * 80000))
python3 "$BENCH/gen.py" mailgun-form "$N" "$WORK/req.txt" --secret "$BENCH_SECRET"

# measure NAME PROXY_PID URL MODE: strace attached to both sides for a whole wrk run of
# SECONDS_ s, so that every request the upstream counts in between was traced on both sides.
measure() {
    local name=$1 pid=$2 url=$3 mode=$4
    strace -c -f -p "$pid" -o "$OUTDIR/$name-proxy.txt" 2>/dev/null &
    local s1=$!
    strace -c -f -p "$UP_WORKER" -o "$OUTDIR/$name-upstream.txt" 2>/dev/null &
    local s2=$!
    sleep 1 # attached
    local before after
    before=$(served)
    WRK_THREADS=1 wrk -t1 -c32 -d"${SECONDS_}s" -s "$BENCH/requests.lua" "$url" -- \
        "$WORK/req.txt" "$mode" >"$OUTDIR/$name-wrk.txt" 2>&1 || true
    sleep 0.5
    after=$(served)
    kill -INT "$s1" "$s2"
    wait "$s1" "$s2" || true
    # stub_status's own request is served by the same worker: one per reading.
    echo "$((after - before - 1))" >"$OUTDIR/$name-requests.txt"
}
measure hookguard "$HG_PID" "http://127.0.0.1:$HG/webhooks/mailgun" once
measure nginx "$NGX_WORKER" "http://127.0.0.1:$NGX/webhooks/mailgun" wrap

# One table: calls per request by syscall, for each side.
python3 - "$OUTDIR" <<'EOF' | tee "$OUTDIR/table.md"
import sys, os, re
out = sys.argv[1]
def counts(path):
    c = {}
    for line in open(path):
        f = line.split()
        # strace -c rows: % time, seconds, usecs/call, calls, [errors,] syscall
        if len(f) >= 5 and re.match(r"^[\d.]+$", f[0]) and f[-1] != "total":
            c[f[-1]] = c.get(f[-1], 0) + int(f[3])
    return c
print("| proxy | requests traced | side | syscalls/request | by syscall (calls/request, ≥ 0.01) |")
print("|---|---|---|---|---|")
for name in ("hookguard", "nginx"):
    n = int(open(os.path.join(out, name + "-requests.txt")).read().strip() or 0)
    for side in ("proxy", "upstream"):
        c = counts(os.path.join(out, "%s-%s.txt" % (name, side)))
        total = sum(c.values()) / n if n else float("nan")
        parts = ", ".join("%s %.2f" % (k, v / n) for k, v in sorted(c.items(), key=lambda kv: -kv[1]) if n and v / n >= 0.01)
        label = name if name == "nginx" else "hookguard"
        print("| %s | %d | %s | **%.2f** | %s |" % (label, n, side, total, parts))
EOF
echo "results in $OUTDIR"
