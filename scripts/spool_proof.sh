#!/usr/bin/env bash
# The spool's long proofs (issue 14), release build, figures printed:
#   kill9_cycles        N messages (default 10000) at concurrency 32, ~20 SIGKILL/restarts
#   app_down_for_hours  the app down for a scaled 20 hours, hookguard killed mid-outage, then the
#                       backlog drained (its rate printed); N messages
#   disk_full           the spool on a 48 MiB tmpfs (needs root to mount; skipped otherwise)
#
#   scripts/spool_proof.sh [N]    SPOOL_PROOF_CYCLES, SPOOL_PROOF_CONCURRENCY,
#                                 SPOOL_PROOF_OUTAGE_SECS change the rest
set -euo pipefail
cd "$(dirname "$0")/.."
export SPOOL_PROOF_MESSAGES="${1:-${SPOOL_PROOF_MESSAGES:-10000}}"
exec cargo test --release --test spool_proof -- --ignored --nocapture --test-threads 1
