#!/usr/bin/env python3
"""Sorts the samples of a hookguard `perf record --call-graph dwarf` profile by what the
request was doing (the innermost hookguard/Pingora operation on the stack) and by what the CPU
was doing at the leaf (kernel, allocator, memcpy, other code).

    perf script -i perf.data -F tid,ip,sym > perf.script
    perf_categories.py perf.script [--threads] [--top N]

Categories are matched innermost-first: a malloc inside the JSON serializer inside the
normalizer counts as `normalize`; a TCP send inside hyper's client connection counts as
`upstream I/O`. Frames of the runtime (tokio, Pingora's stream wrappers) only decide when
nothing more specific is on the stack.
"""

import re
import sys
from collections import Counter, defaultdict

SPECIFIC = [
    ("request log (tracing)", r"tracing_core::|tracing_subscriber::|tracing::|hookguard::proxy::record|tracing_log::"),
    ("replay guard (moka)", r"hookguard::replay::|moka::|crossbeam_epoch::"),
    ("metrics (prometheus)", r"prometheus::|hookguard::metrics::"),
    ("normalize to JSON", r"hookguard::normalize::|serde_json::ser|indexmap::"),
    ("verify (body parse + HMAC)", r"Provider>::verify|providers::mailgun::|hookguard::body::|form_urlencoded::|percent_encoding::|hmac::|sha2::|serde_json::de"),
    ("upstream header build/clone", r"hookguard::proxy::headers::|hookguard::proxy::upstream::downstream_response|<pingora_http::(RequestHeader|ResponseHeader) as core::clone::Clone>"),
    # hyper's dispatcher is one generic type for both ends: its `Client`/`Server` role parameter
    # and the connection futures (`client::conn`, `server::conn`) tell them apart.
    ("upstream I/O (hyper client)", r"hookguard::proxy::upstream::|hyper::client::|hyper::proto::h1::role::Client|dispatch::Client|pingora_core::protocols::http::v1::client::|pingora_core::connectors::|pingora_pool::"),
    ("client I/O (hyper server)", r"hyper::server::|hyper::proto::h1::role::Server|dispatch::Server|hookguard::proxy::serve|hookguard::proxy::body_read::|hookguard::proxy::respond::|pingora_core::protocols::http::v1::server::|pingora_core::apps::|HttpServerApp"),
    ("hookguard handler (other)", r"hookguard::"),
]
GENERIC = [
    ("runtime (tokio, Pingora timers, listeners)", r"tokio::|mio::|pingora_timeout::|pingora_core::|pingora_runtime::"),
]

ALLOC = re.compile(r"^(_int_malloc|_int_free|malloc|free|cfree|realloc|calloc|__libc_malloc|__libc_free|"
                   r"__GI___libc_malloc|__GI___libc_free|unlink_chunk|malloc_consolidate|__rdl_|__rust_alloc|"
                   r"__rust_dealloc|__rust_realloc|_int_realloc|tcache|arena_|sysmalloc|systrim|"
                   r"mi_|je_|tikv_jemalloc)")
MEMCPY = re.compile(r"(memmove|memcpy|memset|memcmp|__memcpy|__memmove|__memset)")


def samples(path):
    tid, frames = None, []
    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if not line.strip():
            if tid is not None:
                yield tid, frames
            tid, frames = None, []
            continue
        if not line.startswith("\t") and not line.startswith(" " * 8):
            tid = line.split()[0]
            frames = []
            continue
        parts = line.strip().split(None, 1)
        ip = parts[0]
        sym = parts[1] if len(parts) > 1 else "[unknown]"
        frames.append((ip, sym))
    if tid is not None:
        yield tid, frames


def leaf_kind(frames):
    if not frames:
        return "other code"
    ip, sym = frames[0]
    if len(ip) >= 16 and ip.startswith("ffffffff"):
        return "kernel"
    if ALLOC.search(sym):
        return "allocator"
    if MEMCPY.search(sym):
        return "memcpy"
    return "other code"


def operation(frames):
    for _, sym in frames:
        for name, rx in SPECIFIC:
            if re.search(rx, sym):
                return name
    for _, sym in frames:
        for name, rx in GENERIC:
            if re.search(rx, sym):
                return name
    if frames and len(frames[0][0]) >= 16 and frames[0][0].startswith("ffffffff"):
        return "kernel (no user frame)"
    return "other"


def main():
    path = sys.argv[1]
    by_thread = "--threads" in sys.argv
    top = int(sys.argv[sys.argv.index("--top") + 1]) if "--top" in sys.argv else 0
    leaves = defaultdict(Counter)
    threads = Counter()
    table = defaultdict(Counter)
    total = 0
    names = {}
    for tid, frames in samples(path):
        total += 1
        threads[tid] += 1
        op = operation(frames)
        table[op][leaf_kind(frames)] += 1
        leaves[op][frames[0][1] if frames else "?"] += 1
    kinds = ["kernel", "allocator", "memcpy", "other code"]
    print(f"{total} samples")
    if by_thread:
        for t, n in threads.most_common():
            print(f"  thread {t}: {100 * n / total:.1f}%")
    print()
    print("| operation | total | kernel | allocator | memcpy | other code |")
    print("|---|---|---|---|---|---|")
    rows = sorted(table.items(), key=lambda kv: -sum(kv[1].values()))
    col = Counter()
    for op, c in rows:
        n = sum(c.values())
        col.update(c)
        cells = " | ".join(f"{100 * c[k] / total:.1f}" for k in kinds)
        print(f"| {op} | **{100 * n / total:.1f}** | {cells} |")
    cells = " | ".join(f"**{100 * col[k] / total:.1f}**" for k in kinds)
    print(f"| all | 100 | {cells} |")
    if top:
        for op, c in rows:
            print(f"\n{op}:")
            for sym, n in leaves[op].most_common(top):
                print(f"  {100 * n / total:5.2f}%  {sym[:150]}")


if __name__ == "__main__":
    main()
