#!/usr/bin/env python3
"""Pre-generates uniquely signed webhook requests for bench/requests.lua (wrk has no HMAC).

One request per line: tab-separated `Name: value` header fields, then the body as the last
field, with backslash, tab, CR and LF escaped as \\\\, \\t, \\r, \\n (bodies may be pretty-printed
JSON). Every request carries a delivery identity of its own (Mailgun token, Stripe event id
inside the signed body, Standard Webhooks `webhook-id`), so hookguard's replay check passes
each of them exactly once: a file is good for one fresh hookguard process.

    gen.py KIND COUNT OUT --secret S [--tag T] [--size BYTES]

KIND: mailgun-form (legacy form post, ~1 KiB), mailgun-small (the three signature fields and
an event name only: for driving a million keys), stripe (pretty-printed JSON event, ~1 KiB,
`Stripe-Signature`), standard (compact JSON, ~1 KiB, `webhook-id/-timestamp/-signature`,
`whsec_` secret).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.parse


def esc(s: str) -> str:
    return (
        s.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")
    )


def pad_to(build, size):
    """build(padding) -> str; returns the padding length that brings the result to ~size."""
    base = len(build(""))
    return max(0, size - base)


def mailgun_form(args, ts, tokens):
    key = args.secret.encode()
    headers = "Content-Type: application/x-www-form-urlencoded"
    message_headers = json.dumps(
        [
            ["Received", "by luna.mailgun.net with SMTP mgrt 8734663311733; Fri, 03 May 2013 18:26:27 +0000"],
            ["Content-Type", ["multipart/alternative", {"boundary": "eb663d73ae0a4d6c9153cc0aec8b7520"}]],
            ["Mime-Version", "1.0"],
            ["Subject", "Test deliver webhook"],
            ["From", "Bob <bob@mg.example.com>"],
            ["To", "Alice <alice@example.com>"],
            ["Message-Id", "<20130503182626.18666.16540@mg.example.com>"],
        ]
    )

    def static(pad):
        return urllib.parse.urlencode(
            [
                ("event", "delivered"),
                ("recipient", "alice@example.com"),
                ("domain", "mg.example.com"),
                ("message-headers", message_headers),
                ("Message-Id", "<20130503182626.18666.16540@mg.example.com>"),
                ("X-Mailgun-Sid", "WyIwNzI5MCIsICJhbGljZUBleGFtcGxlLmNvbSIsICI2Il0="),
                ("user-variables", pad),
            ]
        )

    # The signature fields come last, as in Mailgun's posts; hex and digits need no escaping.
    tail_len = len(f"&timestamp={ts}&token={'0' * 50}&signature={'0' * 64}")
    prefix = static("x" * pad_to(lambda p: static(p), args.size - tail_len))
    for tok in tokens:
        sig = hmac.new(key, (ts + tok).encode(), hashlib.sha256).hexdigest()
        yield f"{headers}\t{prefix}&timestamp={ts}&token={tok}&signature={sig}"


def mailgun_small(args, ts, tokens):
    key = args.secret.encode()
    for tok in tokens:
        sig = hmac.new(key, (ts + tok).encode(), hashlib.sha256).hexdigest()
        yield (
            "Content-Type: application/x-www-form-urlencoded\t"
            f"event=delivered&timestamp={ts}&token={tok}&signature={sig}"
        )


def stripe_event(evt_id, pad):
    return {
        "id": evt_id,
        "object": "event",
        "api_version": "2024-06-20",
        "created": 1700000000,
        "data": {
            "object": {
                "id": "pi_3MtwBwLkdIwHu7ix28a3tqPa",
                "object": "payment_intent",
                "amount": 2000,
                "amount_received": 2000,
                "currency": "usd",
                "customer": "cus_NffrFeUfNV2Hib",
                "description": pad,
                "metadata": {"order_id": "6735"},
                "payment_method": "pm_1MtwBwLkdIwHu7ixik8DpfZ5",
                "status": "succeeded",
            }
        },
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": "req_xyz", "idempotency_key": None},
        "type": "payment_intent.succeeded",
    }


def stripe(args, ts, tokens):
    key = args.secret.encode()
    # Stripe sends its events pretty-printed (2-space indent).
    dump = lambda d: json.dumps(d, indent=2)
    pad = "x" * pad_to(lambda p: dump(stripe_event("evt_" + "0" * 50, p)), args.size)
    # The body differs only in its event id: split the template once.
    before, after = dump(stripe_event("evt_@ID@", pad)).split("@ID@")
    for tok in tokens:
        body = before + tok + after
        sig = hmac.new(key, f"{ts}.{body}".encode(), hashlib.sha256).hexdigest()
        yield f"Content-Type: application/json\tStripe-Signature: t={ts},v1={sig}\t" + esc(body)


def standard(args, ts, tokens):
    secret = args.secret
    key = base64.b64decode(secret[len("whsec_"):] if secret.startswith("whsec_") else secret)
    dump = lambda d: json.dumps(d, separators=(",", ":"))

    def event(pad):
        return {
            "type": "invoice.paid",
            "timestamp": "2023-11-14T22:13:20Z",
            "data": {"id": "inv_123", "customer": "cus_456", "amount": 4200, "note": pad},
        }

    pad = "x" * pad_to(lambda p: dump(event(p)), args.size)
    body = dump(event(pad))
    for tok in tokens:
        msg_id = "msg_" + tok
        sig = base64.b64encode(
            hmac.new(key, f"{msg_id}.{ts}.{body}".encode(), hashlib.sha256).digest()
        ).decode()
        yield (
            "Content-Type: application/json\t"
            f"webhook-id: {msg_id}\twebhook-timestamp: {ts}\twebhook-signature: v1,{sig}\t"
            + esc(body)
        )


KINDS = {
    "mailgun-form": mailgun_form,
    "mailgun-small": mailgun_small,
    "stripe": stripe,
    "standard": standard,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("count", type=int)
    p.add_argument("out")
    p.add_argument("--secret", required=True)
    p.add_argument("--tag", default="", help="token prefix; keeps files of one run disjoint")
    p.add_argument("--size", type=int, default=1024, help="approximate body size in bytes")
    args = p.parse_args()
    ts = str(int(time.time()))
    # 50 hex characters, like Mailgun's tokens: a per-file random part plus a counter.
    rnd = (args.tag.encode().hex() + os.urandom(16).hex())[:26]
    tokens = (f"{rnd}{i:024x}" for i in range(args.count))
    with open(args.out, "w", buffering=1 << 20) as f:
        for line in KINDS[args.kind](args, ts, tokens):
            f.write(line)
            f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
