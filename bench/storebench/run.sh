#!/usr/bin/env bash
# Runs each variant 3 times, alternating, and appends RESULT lines to "$OUT".
set -euo pipefail
cd "$(dirname "$0")"
DATA=${DATA:-data}
ROUNDS=${ROUNDS:-3000}
PRELOAD=${PRELOAD:-500000}
OUT=${OUT:-results.txt}
mkdir -p "$DATA"
df -T "$DATA" | tee -a "$OUT"
cargo build --release
for i in 1 2 3; do
  for v in redb sqlite-full sqlite-normal; do
    echo "# iteration $i $v $(date -Is)" | tee -a "$OUT"
    ./target/release/storebench "$v" "$DATA" "$ROUNDS" "$PRELOAD" 2>&1 | tee -a "$OUT"
  done
done
rm -rf "$DATA"
