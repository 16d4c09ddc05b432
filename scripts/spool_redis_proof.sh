#!/usr/bin/env bash
# The long crash-safety proof of the shared spool (spool.backend: redis): two hookguard
# replicas on one redis-server, killed with SIGKILL in turn (default 20 times) while a client
# sends N messages (default 10000) at concurrency 32 and retries every one not answered 2xx.
# Checks: every message answered 2xx delivered; each enqueued once; extra deliveries at most
# the attempts counted ambiguous; the spool empty at the end. Prints the figures.
#
#   scripts/spool_redis_proof.sh [N [KILLS [CONCURRENCY]]]
#   SPOOL_PROOF_APP_DELAY_MS=20 scripts/spool_redis_proof.sh   (a slower app: more kills land
#                                                               mid-delivery)
#
# Starts its own redis-server (appendonly yes, appendfsync always: what the spool asks for in
# production) on a free loopback port, in a temporary directory removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)" >&2; exit 1; }

export SPOOL_PROOF_MESSAGES="${1:-${SPOOL_PROOF_MESSAGES:-10000}}"
export SPOOL_PROOF_KILLS="${2:-${SPOOL_PROOF_KILLS:-20}}"
export SPOOL_PROOF_CONCURRENCY="${3:-${SPOOL_PROOF_CONCURRENCY:-32}}"

dir="$(mktemp -d)"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly yes --appendfsync always \
  --dir "$dir" --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
cleanup() {
  redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT
for _ in $(seq 50); do
  redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && break
  sleep 0.1
done
export SPOOL_PROOF_REDIS_URL="redis://127.0.0.1:$port"

cargo test --release --locked --test spool_redis_e2e -- --ignored --nocapture --test-threads 1 \
  proof_two_replicas_killed_again_and_again_lose_nothing_and_enqueue_once
