#!/usr/bin/env bash
# The long exactly-once run: N distinct signed messages (default 10000) through hookguard to an
# upstream that fails a random share of requests (500, resets, hangs past upstream_read),
# with a client that retries like a provider; checks every message was accepted exactly once.
# Memory backend (1 proxy), then Redis backend (2 proxies, round-robin). Prints the figures.
#
#   scripts/exactly_once.sh [N]        HOOKGUARD_EXACTLY_ONCE_SEED=... to replay a run
#
# Redis: HOOKGUARD_TEST_REDIS_URL if set, else a private redis-server if on PATH, else the
# Redis run is skipped (with a message).
set -euo pipefail
cd "$(dirname "$0")/.."
export HOOKGUARD_EXACTLY_ONCE_N="${1:-${HOOKGUARD_EXACTLY_ONCE_N:-10000}}"
exec cargo test --test exactly_once -- --ignored --nocapture --test-threads 1
