# Shared by bench/profile.sh and bench/syscalls.sh (sourced): a work directory whose processes
# are stopped on exit, free ports, the nginx upstream and the hookguard config they measure.

# bench_workdir NAME: sets WORK (a fresh temporary directory) and PIDS (processes to stop);
# on exit, stops them and removes WORK.
bench_workdir() {
    WORK=$(mktemp -d "/tmp/hookguard-$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
}
bench_cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}

# A TCP port on 127.0.0.1 that was free a moment ago.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# wait_up URL: until it answers 2xx (10 s at most).
wait_up() {
    for _ in $(seq 100); do curl -fs -o /dev/null "$1" && return; sleep 0.1; done
    echo "not up: $1" >&2
    exit 1
}

BENCH_SECRET=bench-mailgun-signing-key

# hookguard_config LISTEN ADMIN UPSTREAM MAX_ENTRIES: hookguard at threads 1 with the Mailgun
# route the benchmark's requests (bench/gen.py mailgun-form) are signed for.
hookguard_config() {
    cat <<CONF
listen: "127.0.0.1:$1"
admin_listen: "127.0.0.1:$2"
upstream: "http://127.0.0.1:$3"
threads: 1
replay:
  max_entries: $4 # every request of the run (a full store refuses: 503)
routes:
  - name: mailgun
    path: /webhooks/mailgun
    provider: mailgun
    secrets: ["$BENCH_SECRET"]
    tolerance: 6h
CONF
}

# nginx_head NAME: the top of an nginx config whose files live in WORK.
nginx_head() {
    printf 'daemon off;\npid %s/%s.pid;\nerror_log %s/%s-error.log warn;\nevents { worker_connections 4096; }\n' \
        "$WORK" "$1" "$WORK" "$1"
}
# nginx_temp_paths NAME: an http block's temporary paths, inside WORK.
nginx_temp_paths() {
    mkdir -p "$WORK/tmp-$1"
    printf '    client_body_temp_path %s/b; proxy_temp_path %s/p; fastcgi_temp_path %s/f; uwsgi_temp_path %s/u; scgi_temp_path %s/s;\n' \
        "$WORK/tmp-$1" "$WORK/tmp-$1" "$WORK/tmp-$1" "$WORK/tmp-$1" "$WORK/tmp-$1"
}

# upstream_nginx_conf PORT [STATUS_PORT]: the upstream, nginx `return 200` on 1 worker, with
# `stub_status` on STATUS_PORT when given (a port of its own, so counting is not load).
upstream_nginx_conf() {
    nginx_head up
    echo "worker_processes 1;"
    echo "http {"
    nginx_temp_paths up
    echo "    access_log off;"
    echo "    keepalive_requests 100000000;"
    echo "    keepalive_timeout 120s;"
    echo "    server { listen 127.0.0.1:$1 backlog=4096; location / { return 200; } }"
    [ -n "${2:-}" ] && echo "    server { listen 127.0.0.1:$2; location / { stub_status; } }"
    echo "}"
}
