#!/usr/bin/env python3
"""Turns bench/run.sh's results.tsv into the one markdown table (medians over rounds, spread,
ratios to nginx taken round by round, so that both sides of a ratio ran under the same load).

    report.py results.tsv meta.txt
"""

import csv
import statistics
import sys

DESCRIBE = {
    "direct": "upstream direct: nginx `return 200` (the ceiling)",
    "nginx": "nginx `proxy_pass`, 1 worker, no verification (the peer)",
    "nginx-2w": "nginx `proxy_pass`, 2 workers",
    "pingora-t1": "Pingora `ProxyHttp` passthrough, threads 1, no verification",
    "hookguard-t1": "**hookguard threads 1**: Mailgun form, verify + replay + JSON",
    "hookguard-t1-nolog": "hookguard threads 1, request log off (`--log-level warn`)",
    "hookguard-t2": "hookguard threads 2",
    "hookguard-t1-1000routes": "hookguard threads 1, 1,000 routes",
    "hookguard-t1-spool": "hookguard threads 1, `spool: true` (each message fsync'd before its 202; delivered after)",
    "hookguard-t1-alt": "hookguard threads 1, alternative: {alt}",
    "hookguard-t1-spool-alt": "hookguard threads 1, `spool: true`, alternative: {alt}",
    "hookguard-t1-spool-redis": "hookguard threads 1, `spool: true` on Redis (replay and queue in a local redis-server, `appendfsync always`; CPU includes the redis-server's)",
    "hookguard-t1-stripe": "hookguard threads 1, Stripe JSON (pretty-printed), verify + replay + JSON",
    "hookguard-t1-standard": "hookguard threads 1, Standard Webhooks JSON, verify + replay + JSON",
}
ORDER = list(DESCRIBE)


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs, fmt):
    if len(xs) < 2:
        return ""
    return f" ({fmt.format(min(xs))}–{fmt.format(max(xs))})"


def main():
    rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
    meta = open(sys.argv[2]).read().strip().splitlines()
    alt = next((l[len("alt: "):] for l in meta if l.startswith("alt: ")), "")
    DESCRIBE["hookguard-t1-alt"] = DESCRIBE["hookguard-t1-alt"].format(alt=alt)
    DESCRIBE["hookguard-t1-spool-alt"] = DESCRIBE["hookguard-t1-spool-alt"].format(alt=alt)
    by = {}
    for r in rows:
        by.setdefault(r["target"], []).append(r)
    nginx_by_round = {r["round"]: r for r in by.get("nginx", [])}

    def ratios(target, field, base="nginx"):
        base_by_round = {r["round"]: r for r in by.get(base, [])}
        out = []
        for r in by.get(target, []):
            b = base_by_round.get(r["round"])
            if b and float(b[field]) > 0:
                out.append(float(r[field]) / float(b[field]))
        return out

    out = []
    if not rows:
        out.extend(f"- {line}" for line in meta)
        print("\n".join(out))
        return
    out.append("| target | rps median (min–max) | rps ÷ nginx | p50 ms | p99 ms (min–max) | "
               "p99 ÷ nginx | CPU µs/req | RSS MiB idle → loaded | checks |")
    out.append("|---|---|---|---|---|---|---|---|---|")
    for t in sorted(by, key=lambda t: ORDER.index(t) if t in ORDER else 99):
        rs = by[t]
        rps = [float(r["rps"]) for r in rs]
        p50 = [float(r["p50_ms"]) for r in rs]
        p99 = [float(r["p99_ms"]) for r in rs]
        cpu = [float(r["cpu_us_per_req"]) for r in rs]
        rss = [int(r["rss_kib"]) / 1024 for r in rs]
        idle = [int(r["rss_idle_kib"]) / 1024 for r in rs if int(r["rss_idle_kib"]) > 0]
        rr = ratios(t, "rps")
        pr = ratios(t, "p99_ms")
        non2xx = sum(int(r["non2xx"] or 0) for r in rs)
        sock = sum(int(r["sock_err"] or 0) for r in rs)
        exhausted = any(r["exhausted"] == "1" for r in rs)
        checks = [f"non-2xx {non2xx}"]
        if sock:
            checks.append(f"socket errors {sock}")
        if exhausted:
            checks.append("**ran out of requests: raise BENCH_RATE_CAP**")
        drains = [float(r["drain_s"]) for r in rs if r.get("drain_s", "-") not in ("-", "")]
        if drains:
            # Accepted and delivered: the requests of the run over the run and the time its
            # backlog took to be delivered after it.
            sustained = [float(r["rps"]) * float(r["duration_s"])
                         / (float(r["duration_s"]) + float(r["drain_s"]))
                         for r in rs if r.get("drain_s", "-") not in ("-", "")]
            checks.append(f"backlog delivered {med(drains):.1f} s after the run"
                          f"{spread(drains, '{:.1f}')}: **{med(sustained):,.0f} rps accepted "
                          f"and delivered**{spread(sustained, '{:,.0f}')}")
        if t.startswith("hookguard"):
            bad = sorted({kv.split("=")[0] for r in rs for kv in r["outcomes"].split()
                          if not kv.startswith(("forwarded=", "queued="))})
            checks.append("all `forwarded` (`queued` on the spool row)" if not bad else "**outcomes: " + ", ".join(bad) + "**")
        out.append(
            "| {d} | {rps:,.0f}{rs} | {rr} | {p50:.2f} | {p99:.2f}{ps} | {pr} | {cpu:.0f} | {rss} | {c} |".format(
                d=DESCRIBE.get(t, t),
                rps=med(rps),
                rs=spread(rps, "{:,.0f}"),
                rr=(f"{med(rr):.2f}×" + spread(rr, "{:.2f}")) if rr else "",
                p50=med(p50),
                p99=med(p99),
                ps=spread(p99, "{:.1f}"),
                pr=(f"{med(pr):.2f}×" + spread(pr, "{:.2f}")) if pr else "",
                cpu=med(cpu),
                rss=(f"{med(idle):.1f} → " if idle else "") + f"{med(rss):.1f}",
                c="; ".join(checks),
            )
        )
    for name in ("stripe", "standard_webhooks"):
        for line in meta:
            if line.startswith(name + ": pending"):
                out.append(f"| hookguard threads 1, {name} JSON | pending: the provider is not in "
                           "this build's REGISTRY yet | | | | | | | |")

    out.append("")
    notes = []

    def done(x):
        """Requests per second; for a spooled row, accepted *and delivered*."""
        if x.get("drain_s", "-") not in ("-", ""):
            return float(x["rps"]) * float(x["duration_s"]) / (
                float(x["duration_s"]) + float(x["drain_s"]))
        return float(x["rps"])

    def rel(a, b, label):
        r = []
        ra = {x["round"]: done(x) for x in by.get(a, [])}
        for x in by.get(b, []):
            if x["round"] in ra and ra[x["round"]] > 0:
                r.append(done(x) / ra[x["round"]])
        if r:
            notes.append(f"- {label}: {med(r):.2f}×{spread(r, '{:.2f}')}")

    rel("hookguard-t1", "hookguard-t2", "scaling, hookguard threads 2 ÷ threads 1")
    rel("nginx", "nginx-2w", "scaling, nginx 2 workers ÷ 1 worker")
    rel("hookguard-t1", "hookguard-t1-1000routes", "routes, 1,000 ÷ 1 (1.00× = flat)")
    rel("hookguard-t1", "hookguard-t1-nolog", "request log off ÷ on")
    rel("pingora-t1", "hookguard-t1", "hookguard ÷ plain Pingora passthrough")
    rel("hookguard-t1", "hookguard-t1-alt", "alternative ÷ hookguard threads 1")
    rel("hookguard-t1", "hookguard-t1-spool", "spool on ÷ off (the spool issue's target: ≥ 0.8×)")
    rel("hookguard-t1-spool", "hookguard-t1-spool-alt", "spool, alternative ÷ this build")
    rel("hookguard-t1", "hookguard-t1-spool-redis", "spool on Redis ÷ spool off (embedded replay)")
    out.extend(notes)
    out.append("")
    out.append("Ratios are taken within each round (both sides under the same background load), "
               "then the median over rounds; (min–max) is the spread over rounds. CPU µs/req: "
               "user+system time of the server process tree during the measured run ÷ requests.")
    out.append("")
    out.extend(f"- {line}" for line in meta)
    print("\n".join(out))


if __name__ == "__main__":
    main()
