#!/usr/bin/env bash
# Profiles hookguard (threads 1) under the benchmark's load: nginx `return 200` upstream, wrk
# with uniquely signed ~1 KiB Mailgun form bodies, `perf record` on the hookguard process.
#
#   bench/profile.sh [--seconds N] [--binary PATH] [--log-level LEVEL] [--spool] [--out DIR]
#
# --spool: the route spools (`spool: true`, the file under target/bench-spool, a real disk).
#
# perf samples on `cpu-clock` (a software timer: works in VMs without hardware counters) and
# unwinds with DWARF (.eh_frame), so the plain release binary gives call chains; for inlined
# frames and source lines build one with debug info in a separate target directory, e.g.
#   CARGO_PROFILE_RELEASE_DEBUG=line-tables-only CARGO_TARGET_DIR=/tmp/hg-prof \
#       cargo build --release --bin hookguard
# and pass --binary /tmp/hg-prof/release/hookguard. Without perf (`perf stat true` fails), use
# valgrind --tool=callgrind instead (see bench/README.md).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BENCH="$ROOT/bench"
SECONDS_=10
BINARY=""
LOG_LEVEL=""
SPOOL=0
OUTDIR="$BENCH/results/profile-$(date +%Y%m%d-%H%M%S)"
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_=$2; shift ;;
        --binary) BINARY=$2; shift ;;
        --log-level) LOG_LEVEL=$2; shift ;;
        --spool) SPOOL=1 ;;
        --out) OUTDIR=$2; shift ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

command -v perf >/dev/null || {
    echo "perf is missing: apt-get install linux-perf" >&2
    exit 1
}
if [ -z "$BINARY" ]; then
    (cd "$ROOT" && cargo build --release --bin hookguard)
    BINARY="$ROOT/target/release/hookguard"
fi
mkdir -p "$OUTDIR"
# A copy: the shared target directory may be rebuilt while perf still needs the symbols.
cp "$BINARY" "$OUTDIR/hookguard"
BINARY="$OUTDIR/hookguard"

# shellcheck source=bench/common.sh
. "$BENCH/common.sh"
bench_workdir profile

UP=$(port)
upstream_nginx_conf "$UP" >"$WORK/up.conf"
nginx -p "$WORK" -c "$WORK/up.conf" -e "$WORK/up-error.log" >/dev/null 2>&1 &
PIDS+=($!)

HG=$(port)
ADMIN=$(port)
hookguard_config "$HG" "$ADMIN" "$UP" $(((SECONDS_ + 5) * 80000)) >"$WORK/hg.yaml"
if [ "$SPOOL" = 1 ]; then
    rm -rf "$ROOT/target/bench-spool" && mkdir -p "$ROOT/target/bench-spool"
    printf '    spool: true\nspool:\n  path: "%s"\n  max_bytes: 8589934592\n' \
        "$ROOT/target/bench-spool/profile.redb" >>"$WORK/hg.yaml"
fi
args=(--config "$WORK/hg.yaml")
[ -n "$LOG_LEVEL" ] && args+=(--log-level "$LOG_LEVEL")
"$BINARY" "${args[@]}" >"$WORK/hg.log" 2>&1 &
HG_PID=$!
PIDS+=("$HG_PID")
wait_up "http://127.0.0.1:$ADMIN/readyz"

N=$(((SECONDS_ + 5) * 80000)) # enough at 80 k rps (bench/run.sh's RATE_CAP)
python3 "$BENCH/gen.py" mailgun-form "$N" "$WORK/req.txt" --secret "$BENCH_SECRET"
WRK_THREADS=1 wrk -t1 -c32 -d"$((SECONDS_ + 4))s" -s "$BENCH/requests.lua" \
    "http://127.0.0.1:$HG/webhooks/mailgun" -- "$WORK/req.txt" once >"$OUTDIR/wrk.txt" 2>&1 &
WRK_PID=$!
PIDS+=("$WRK_PID")
sleep 4 # wrk loads its requests, then warm-up
# Every thread by id: on this kernel/perf pair, `-p PID` only sampled one thread.
TIDS=$(ls "/proc/$HG_PID/task" | paste -sd,)
perf record -e cpu-clock -F 1999 --call-graph dwarf,16384 -t "$TIDS" -o "$OUTDIR/perf.data" \
    -- sleep "$SECONDS_" 2>"$OUTDIR/perf-record.txt"
wait "$WRK_PID" || true
curl -fsS "http://127.0.0.1:$ADMIN/metrics" | grep '^hookguard_requests_total' | grep -v ' 0$' \
    >"$OUTDIR/outcomes.txt" || true
curl -fsS "http://127.0.0.1:$ADMIN/metrics" | grep '^hookguard_spool' >"$OUTDIR/spool.txt" || true

perf report -i "$OUTDIR/perf.data" --no-children --sort symbol --stdio --percent-limit 0.5 \
    -g none 2>/dev/null >"$OUTDIR/self.txt"
perf report -i "$OUTDIR/perf.data" --children --sort symbol --stdio --percent-limit 2 \
    -g none 2>/dev/null >"$OUTDIR/children.txt"
perf report -i "$OUTDIR/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null \
    >"$OUTDIR/dso.txt"
perf report -i "$OUTDIR/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null \
    >"$OUTDIR/threads.txt"
perf script -i "$OUTDIR/perf.data" -F tid,ip,sym 2>/dev/null >"$OUTDIR/perf.script"
python3 "$BENCH/perf_categories.py" "$OUTDIR/perf.script" --threads --top 12 >"$OUTDIR/categories.txt"
echo "profile in $OUTDIR (categories.txt, self.txt, children.txt, dso.txt, threads.txt, wrk.txt, outcomes.txt)"
sed -n '1,25p' "$OUTDIR/categories.txt"
grep -E '^ +[0-9]' "$OUTDIR/self.txt" | head -30
