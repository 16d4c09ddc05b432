#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) each, one after the other, in a network
# namespace of its own, and prints each target's executions and duration.
# Build first: RUSTC_BOOTSTRAP=1 cargo fuzz build -s none -a
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-600}
bin=target/x86_64-unknown-linux-gnu/release
netns=(unshare -n)
[ "$(id -u)" = 0 ] || netns=(unshare -rn)
for t in form multipart json_normalize providers config; do
    mkdir -p "corpus/$t" "artifacts/$t"
    start=$(date +%s)
    "${netns[@]}" "$bin/$t" "corpus/$t" "seeds/$t" -max_total_time="$seconds" -timeout=10 \
        -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
        2> "artifacts/$t.log" || { echo "$t: FOUND A CRASH, see artifacts/$t.log"; continue; }
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "artifacts/$t.log" | grep -o '[0-9]*$')
    echo "$t: $execs executions in $(( $(date +%s) - start )) s"
done
