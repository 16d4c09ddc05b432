#!/usr/bin/env python3
"""Pre-generates uniquely signed webhook requests for bench/requests.lua (wrk has no HMAC).

The file holds complete, ready HTTP/1.1 requests, byte for byte as they go on the wire
(request line, `Host`, the provider's headers, `Content-Length`, CRLFs, the body), each one
followed by a NUL byte, which no request contains. requests.lua reads the file once and hands
the requests out as they are: no formatting per request, in Lua or elsewhere.

Every request carries a delivery identity of its own (Mailgun token, Stripe event id inside the
signed body, Standard Webhooks `webhook-id`), so hookguard's replay check passes each of them
exactly once: a file is good for one fresh hookguard process.

    gen.py KIND COUNT OUT --secret S [--tag T] [--size BYTES] [--path P] [--host H]

KIND: mailgun-form (legacy form post, ~1 KiB), mailgun-small (the three signature fields and
an event name only: for driving a million keys), stripe (pretty-printed JSON event, ~1 KiB,
`Stripe-Signature`), standard (compact JSON, ~1 KiB, `webhook-id/-timestamp/-signature`,
`whsec_` secret). The request path defaults to /webhooks/mailgun, /webhooks/stripe or
/webhooks/standard (the routes of bench/run.sh); requests.lua checks that it matches the URL
given to wrk. `Host` is fixed (127.0.0.1 by default): no target routes on it.

One process signs ~150,000 requests a second here; writing the file costs about as much again
(~4 s for 640,000 Mailgun requests, 735 MB). bench/run.sh runs one gen.py per file, all at
once. (A multiprocessing pool inside gen.py was slower on this 2-core machine: shipping the
chunks back to the writer cost more than the signing.)
"""

import argparse
import base64
import hashlib
import hmac
import itertools
import json
import os
import sys
import time
import urllib.parse

SEP = b"\0"  # follows every request; never occurs in one
CHUNK = 25_000  # requests per write


def pad_to(build, size):
    """build(padding) -> str; returns the padding length that brings the result to ~size."""
    base = len(build(""))
    return max(0, size - base)


def head(args, content_type, body_len, extra=()):
    """The request line and header block (through the blank line) as bytes."""
    lines = [
        f"POST {args.path} HTTP/1.1",
        f"Host: {args.host}",
        f"Content-Type: {content_type}",
        *extra,
        f"Content-Length: {body_len}",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def mailgun_form(args, ts, tokens):
    key = args.secret.encode()
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

    # The signature fields come last, as in Mailgun's posts. Timestamp, token (50 hex) and
    # signature (64 hex) have fixed lengths, so every body has the same length and the header
    # block is built once.
    tail_len = len(f"&timestamp={ts}&token={'0' * 50}&signature={'0' * 64}")
    prefix = static("x" * pad_to(lambda p: static(p), args.size - tail_len))
    h = head(args, "application/x-www-form-urlencoded", len(prefix) + tail_len)
    start = h + f"{prefix}&timestamp={ts}&token=".encode()
    ts_b = ts.encode()
    for tok in tokens:
        tok_b = tok.encode()
        sig = hmac.digest(key, ts_b + tok_b, "sha256").hex().encode()
        yield start + tok_b + b"&signature=" + sig + SEP


def mailgun_small(args, ts, tokens):
    key = args.secret.encode()
    ts_b = ts.encode()
    body_len = len(f"event=delivered&timestamp={ts}&token={'0' * 50}&signature={'0' * 64}")
    start = head(args, "application/x-www-form-urlencoded", body_len)
    start += f"event=delivered&timestamp={ts}&token=".encode()
    for tok in tokens:
        tok_b = tok.encode()
        sig = hmac.digest(key, ts_b + tok_b, "sha256").hex().encode()
        yield start + tok_b + b"&signature=" + sig + SEP


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
    # The body differs only in its event id (50 characters): split the template once, and
    # sign from a copy of the HMAC state that has taken the signed payload's fixed start.
    before, after = (s.encode() for s in dump(stripe_event("evt_@ID@", pad)).split("@ID@"))
    body_len = len(before) + 50 + len(after)
    mac = hmac.new(key, f"{ts}.".encode() + before, hashlib.sha256)
    for tok in tokens:
        tok_b = tok.encode()
        m = mac.copy()
        m.update(tok_b)
        m.update(after)
        h = head(args, "application/json", body_len,
                 (f"Stripe-Signature: t={ts},v1={m.hexdigest()}",))
        yield h + before + tok_b + after + SEP


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
    body = dump(event(pad)).encode()
    signed_tail = f".{ts}.".encode() + body
    for tok in tokens:
        msg_id = "msg_" + tok
        sig = base64.b64encode(hmac.digest(key, msg_id.encode() + signed_tail, "sha256")).decode()
        h = head(args, "application/json", len(body), (
            f"webhook-id: {msg_id}",
            f"webhook-timestamp: {ts}",
            f"webhook-signature: v1,{sig}",
        ))
        yield h + body + SEP


KINDS = {
    "mailgun-form": mailgun_form,
    "mailgun-small": mailgun_small,
    "stripe": stripe,
    "standard": standard,
}

DEFAULT_PATH = {
    "mailgun-form": "/webhooks/mailgun",
    "mailgun-small": "/webhooks/mailgun",
    "stripe": "/webhooks/stripe",
    "standard": "/webhooks/standard",
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=sorted(KINDS))
    p.add_argument("count", type=int)
    p.add_argument("out")
    p.add_argument("--secret", required=True)
    p.add_argument("--tag", default="", help="token prefix; keeps files of one run disjoint")
    p.add_argument("--size", type=int, default=1024, help="approximate body size in bytes")
    p.add_argument("--path", help="request path (default: the kind's route in bench/run.sh)")
    p.add_argument("--host", default="127.0.0.1", help="Host header")
    args = p.parse_args()
    args.path = args.path or DEFAULT_PATH[args.kind]
    ts = str(int(time.time()))
    # 50 hex characters, like Mailgun's tokens: a per-file random part plus a counter.
    rnd = (args.tag.encode().hex() + os.urandom(16).hex())[:26]
    tokens = (f"{rnd}{i:024x}" for i in range(args.count))
    reqs = KINDS[args.kind](args, ts, tokens)
    with open(args.out, "wb") as f:
        while True:
            block = b"".join(itertools.islice(reqs, CHUNK))
            if not block:
                break
            f.write(block)


if __name__ == "__main__":
    sys.exit(main())
