#!/usr/bin/env python3
"""Makes fixtures/vectors/<provider>.json with the providers' own SDKs.

Each fixture holds cases: a request (path, headers, content type, body), the route options,
a fixed `now`, and the verdict hookguard must give (`expect`, plus `replay_key`/`timestamp` for
accepted ones). Valid requests are signed by the provider's SDK where it has a signer; every
case is also put to the provider's official verifier where one exists (`sdk_accepts`), and the
script stops if the SDK and the expected verdict disagree. Where hookguard is deliberately
stricter than an SDK (duplicated headers, a timestamp window the SDK does not check), the case
says so in `sdk_note` instead.

Run: scripts/vectors/run.sh (creates the venv and node_modules from the pinned versions).
"""

import base64
import datetime as dt
import hashlib
import hmac
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from unittest import mock

HERE = Path(__file__).resolve().parent
OUT = HERE.parent.parent / "fixtures" / "vectors"
WRONG = "wrong-secret-not-configured"


def node(op, **kw):
    out = subprocess.run(
        ["node", str(HERE / "node_sdk.mjs")],
        input=json.dumps({"op": op, **kw}).encode(),
        capture_output=True,
        check=True,
        cwd=HERE,
    )
    return json.loads(out.stdout)["result"]


NODE_VERSIONS = node(
    "versions",
    names=[
        "stripe",
        "@octokit/webhooks-methods",
        "@linear/sdk",
        "@paddle/paddle-node-sdk",
        "discord-interactions",
        "@sendgrid/eventwebhook",
    ],
)


def npm(name):
    return f"{name} {NODE_VERSIONS[name]} (npm)"


def pypi(name):
    return f"{name} {version(name)} (PyPI)"


def hmac_hex(alg, key, msg):
    return hmac.new(key.encode() if isinstance(key, str) else key, msg, alg).hexdigest()


def hmac_b64(alg, key, msg):
    raw = hmac.new(key.encode() if isinstance(key, str) else key, msg, alg).digest()
    return base64.b64encode(raw).decode()


# ------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------


def case(name, *, now, path, headers, body, content_type, route, expect, replay_key=None, timestamp=None):
    c = {
        "name": name,
        "now": now,
        "path": path,
        "headers": [list(h) for h in headers],
        "content_type": content_type,
        "body": body,
        "route": route,
        "expect": expect,
    }
    if expect == "ok":
        c["replay_key"] = replay_key
        c["timestamp"] = timestamp
    return c


def with_header(headers, name, value):
    return [(n, value if n.lower() == name.lower() else v) for n, v in headers]


def without_header(headers, name):
    return [(n, v) for n, v in headers if n.lower() != name.lower()]


def duplicated(headers, name):
    return headers + [(n, v) for n, v in headers if n.lower() == name.lower()]


def tamper(body):
    """The same body with one character changed (still the same media type)."""
    if '"' in body:
        i = body.rindex('"') - 1
        return body[:i] + ("X" if body[i] != "X" else "Y") + body[i + 1 :]
    return body + "x"


def standard_cases(valid, *, sig_header, secret, tolerance=None, malformed="not-a-signature", second_secret_route=None):
    """The usual set around one valid case: tampered body, wrong secret, second secret,
    stale and future timestamps (when `tolerance`), missing, malformed and duplicated header."""
    v = valid
    route = v["route"]
    other_route = dict(route, secrets=[WRONG])
    both_route = second_secret_route or dict(route, secrets=[WRONG, secret])
    base = {k: v[k] for k in ("now", "path", "headers", "body", "content_type", "route")}
    out = [v]
    out.append(case("tampered body", **dict(base, body=tamper(v["body"])), expect="bad_signature"))
    out.append(case("wrong secret", **dict(base, route=other_route), expect="bad_signature"))
    out.append(
        case(
            "second secret matches",
            **dict(base, route=both_route),
            expect="ok",
            replay_key=v["replay_key"],
            timestamp=v["timestamp"],
        )
    )
    if tolerance is not None:
        out.append(case("stale timestamp", **dict(base, now=v["now"] + tolerance + 1), expect="stale_timestamp"))
        out.append(case("future timestamp", **dict(base, now=v["now"] - tolerance - 1), expect="stale_timestamp"))
        out.append(
            case(
                "edge of the window",
                **dict(base, now=v["now"] + tolerance),
                expect="ok",
                replay_key=v["replay_key"],
                timestamp=v["timestamp"],
            )
        )
    out.append(
        case("missing signature header", **dict(base, headers=without_header(v["headers"], sig_header)), expect="missing_signature")
    )
    out.append(
        case("malformed signature header", **dict(base, headers=with_header(v["headers"], sig_header, malformed)), expect="missing_signature")
    )
    dup = case("duplicated signature header", **dict(base, headers=duplicated(v["headers"], sig_header)), expect="missing_signature")
    dup["sdk_note"] = "hookguard refuses a duplicated signature header as ambiguous; SDKs see one value"
    out.append(dup)
    return out


def header_map(headers):
    """Headers as an SDK sees them: a dict, the last value winning."""
    return {n: v for n, v in headers}


def cross_check(provider, cases, sdk_verify, *, checks_time=True, checks_future=True):
    """Records the SDK's verdict on every case and stops on a disagreement."""
    for c in cases:
        if "sdk_note" in c:
            continue
        if not checks_time and c["expect"] == "stale_timestamp":
            c["sdk_note"] = "the SDK checks no timestamp window; hookguard applies `tolerance`"
            continue
        if not checks_future and c["name"] == "future timestamp":
            c["sdk_note"] = "the SDK rejects only old timestamps; the contract's window is |now - t|"
            continue
        try:
            accepted = bool(sdk_verify(c))
        except Exception:  # an SDK that raises rejects
            accepted = False
        c["sdk_accepts"] = accepted
        if accepted != (c["expect"] == "ok"):
            sys.exit(f"{provider}: case {c['name']!r}: the SDK says {accepted}, hookguard expects {c['expect']}")
    return cases


def write(provider, signed_by, verified_by, cases, notes=None):
    doc = {
        "provider": provider,
        "signed_by": signed_by,
        "verified_by": verified_by,
        "generator": "scripts/vectors/generate.py",
        "cases": cases,
    }
    if notes:
        doc["notes"] = notes
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{provider}.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    print(f"{provider}: {len(cases)} cases")


class FrozenDatetime(dt.datetime):
    NOW = 0

    @classmethod
    def now(cls, tz=None):
        return dt.datetime.fromtimestamp(cls.NOW, tz=tz or dt.timezone.utc)


def frozen(now):
    FrozenDatetime.NOW = now
    return FrozenDatetime


# ------------------------------------------------------------------------------------------
# Providers
# ------------------------------------------------------------------------------------------

T = 1_700_000_000
JSON_CT = "application/json"
FORM_CT = "application/x-www-form-urlencoded"


def mailgun():
    from mailgun.security import SecurityGuard

    key = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
    token = "5c7f3a8d2b1e4f6a9c0d8e7b6a5f4e3d2c1b0a9f8e7d6c5b4a"
    ts = str(T)
    # The mailgun SDK has a verifier and no signer: the signature is Mailgun's documented
    # HMAC-SHA256(key, timestamp + token), which the SDK's verifier then accepts.
    sig = hmac_hex(hashlib.sha256, key, (ts + token).encode())
    body = json.dumps(
        {"signature": {"timestamp": ts, "token": token, "signature": sig}, "event-data": {"event": "delivered", "id": "ev1"}},
        separators=(",", ":"),
    )
    route = {"secrets": [key]}
    base = dict(now=T, path="/webhooks/mailgun", headers=[], content_type=JSON_CT, route=route)
    form = f"timestamp={ts}&token={token}&signature={sig}&event=opened"
    other = {"secrets": [WRONG]}
    cases = [
        case("valid JSON", **base, body=body, expect="ok", replay_key=token, timestamp=T),
        case("valid form", **dict(base, content_type=FORM_CT), body=form, expect="ok", replay_key=token, timestamp=T),
        case("tampered token", **base, body=body.replace(token, "x" + token[1:]), expect="bad_signature"),
        case("wrong secret", **dict(base, route=other), body=body, expect="bad_signature"),
        case("second secret matches", **dict(base, route={"secrets": [WRONG, key]}), body=body, expect="ok", replay_key=token, timestamp=T),
        case("stale timestamp", **dict(base, now=T + 301), body=body, expect="stale_timestamp"),
        case("future timestamp", **dict(base, now=T - 301), body=body, expect="stale_timestamp"),
        case("missing signature", **base, body='{"event-data":{}}', expect="missing_signature"),
        case("malformed signature", **base, body=body.replace(sig, "zz"), expect="missing_signature"),
        case(
            "duplicated form field",
            **dict(base, content_type=FORM_CT),
            body=form + f"&token={token}",
            expect="missing_signature",
        ),
    ]
    cases[-1]["sdk_note"] = "hookguard refuses a repeated signature field as ambiguous"

    def sdk(c):
        m = material(c)
        if m is None:
            return False
        ok_sig = any(
            SecurityGuard.verify_webhook(s, m["token"], m["timestamp"], m["signature"], max_age_seconds=0)
            for s in c["route"]["secrets"]
        )
        with mock.patch("time.time", return_value=float(c["now"])):
            fresh = SecurityGuard.verify_webhook(c["route"]["secrets"][-1], m["token"], m["timestamp"], m["signature"], max_age_seconds=300) or abs(c["now"] - int(m["timestamp"])) <= 300
        return ok_sig and fresh

    def material(c):
        if c["content_type"] == JSON_CT:
            doc = json.loads(c["body"])
            return doc.get("signature")
        from urllib.parse import parse_qs

        q = parse_qs(c["body"])
        return {k: q[k][0] for k in ("timestamp", "token", "signature")}

    write(
        "mailgun",
        "HMAC-SHA256(key, timestamp + token), as Mailgun documents (the mailgun SDK has no signer)",
        pypi("mailgun") + " SecurityGuard.verify_webhook",
        cross_check("mailgun", cases, sdk),
    )


def stripe():
    import stripe as stripe_py

    secret = "whsec_test_0123456789abcdefghijklmnopqrstuv"
    body = json.dumps({"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event", "type": "charge.succeeded", "data": {"object": {"id": "ch_1"}}}, indent=2)
    header = node("stripe_sign", payload=body, secret=secret, timestamp=T)
    v1 = header.split("v1=")[1]
    headers = [("Stripe-Signature", header)]
    route = {"secrets": [secret]}
    valid = case("valid", now=T, path="/webhooks/stripe", headers=headers, body=body, content_type=JSON_CT, route=route, expect="ok", replay_key=f"{T}.{v1}", timestamp=T)
    cases = standard_cases(valid, sig_header="Stripe-Signature", secret=secret, tolerance=300, malformed="t=abc")
    # Several v1 (rolling secrets): one of them matches.
    rolled = f"t={T},v1={'0' * 64},v1={v1},v0={'1' * 64}"
    cases.append(case("several v1, one matches", now=T, path="/webhooks/stripe", headers=[("Stripe-Signature", rolled)], body=body, content_type=JSON_CT, route=route, expect="ok", replay_key=f"{T}.{v1}", timestamp=T))

    def sdk(c):
        h = header_map(c["headers"]).get("Stripe-Signature")
        if h is None:
            return False
        node_ok = any(node("stripe_verify", payload=c["body"], header=h, secret=s, now=c["now"] * 1000) for s in c["route"]["secrets"])
        py_ok = False
        for s in c["route"]["secrets"]:
            with mock.patch("time.time", return_value=float(c["now"])):
                try:
                    stripe_py.WebhookSignature.verify_header(c["body"], h, s, tolerance=300)
                    py_ok = True
                except Exception:
                    pass
        if node_ok != py_ok:
            sys.exit(f"stripe: node and python SDKs disagree on {c['name']}")
        return node_ok

    write(
        "stripe",
        npm("stripe") + " webhooks.generateTestHeaderString",
        npm("stripe") + " webhooks.constructEvent (receivedAt = now) and " + pypi("stripe") + " WebhookSignature.verify_header",
        cross_check("stripe", cases, sdk, checks_future=False),
    )


def github():
    secret = "It's a Secret to Everybody"
    body = json.dumps({"zen": "Design for failure.", "hook_id": 1, "hook": {"type": "Repository"}})
    sig = node("github_sign", secret=secret, payload=body)
    headers = [("X-GitHub-Event", "ping"), ("X-GitHub-Delivery", "72d3162e-cc78-11e3-81ab-4c9367dc0958"), ("X-Hub-Signature-256", sig)]
    route = {"secrets": [secret]}
    # The delivery id is not signed: the message is named by its signature, with or without it.
    valid = case("valid", now=T, path="/webhooks/github", headers=headers, body=body, content_type=JSON_CT, route=route, expect="ok", replay_key=sig[len("sha256="):], timestamp=None)
    cases = standard_cases(valid, sig_header="X-Hub-Signature-256", secret=secret, malformed="sha1=" + "0" * 40)
    cases.append(
        case("no delivery id: the same message", now=T, path="/webhooks/github", headers=[("X-Hub-Signature-256", sig)], body=body, content_type=JSON_CT, route=route, expect="ok", replay_key=sig[len("sha256="):], timestamp=None)
    )
    cases.append(
        case("duplicated delivery id: not signed, not read", now=T, path="/webhooks/github", headers=headers + [("X-GitHub-Delivery", "other")], body=body, content_type=JSON_CT, route=route, expect="ok", replay_key=sig[len("sha256="):], timestamp=None)
    )

    def sdk(c):
        h = header_map(c["headers"]).get("X-Hub-Signature-256")
        if h is None:
            return False
        return any(node("github_verify", secret=s, payload=c["body"], signature=h) for s in c["route"]["secrets"])

    write("github", npm("@octokit/webhooks-methods") + " sign", npm("@octokit/webhooks-methods") + " verify", cross_check("github", cases, sdk))


def slack():
    from slack_sdk.signature import SignatureVerifier

    secret = "8f742231b10e8888abcd99yyyzzz85a5"
    body = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&command=%2Fweather&text=94070"
    ts = str(T)
    sig = SignatureVerifier(secret).generate_signature(timestamp=ts, body=body)
    headers = [("X-Slack-Request-Timestamp", ts), ("X-Slack-Signature", sig)]
    route = {"secrets": [secret]}
    valid = case("valid", now=T, path="/webhooks/slack", headers=headers, body=body, content_type=FORM_CT, route=route, expect="ok", replay_key=f"{T}.{sig[3:]}", timestamp=T)
    cases = standard_cases(valid, sig_header="X-Slack-Signature", secret=secret, tolerance=300, malformed="v0=xyz")
    cases.append(case("missing timestamp header", now=T, path="/webhooks/slack", headers=[("X-Slack-Signature", sig)], body=body, content_type=FORM_CT, route=route, expect="missing_signature"))

    class Clock:
        def __init__(self, now):
            self._now = now

        def now(self):
            return float(self._now)

    def sdk(c):
        h = header_map(c["headers"])
        return any(
            SignatureVerifier(s, clock=Clock(c["now"])).is_valid(c["body"], h.get("X-Slack-Request-Timestamp"), h.get("X-Slack-Signature"))
            for s in c["route"]["secrets"]
        )

    write("slack", pypi("slack_sdk") + " SignatureVerifier.generate_signature", pypi("slack_sdk") + " SignatureVerifier.is_valid (fixed clock)", cross_check("slack", cases, sdk))


def shopify():
    secret = "shpss_0123456789abcdef0123456789abcdef"
    body = json.dumps({"id": 820982911946154508, "email": "jon@example.com", "total_price": "199.65"})
    sig = hmac_b64(hashlib.sha256, secret, body.encode())
    headers = [("X-Shopify-Topic", "orders/create"), ("X-Shopify-Hmac-Sha256", sig), ("X-Shopify-Webhook-Id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043")]
    route = {"secrets": [secret]}
    # The webhook id is not signed: the message is named by its signature.
    valid = case("valid", now=T, path="/webhooks/shopify", headers=headers, body=body, content_type=JSON_CT, route=route, expect="ok", replay_key=sig, timestamp=None)
    cases = standard_cases(valid, sig_header="X-Shopify-Hmac-Sha256", secret=secret, malformed="%%%")

    def sdk(c):
        h = header_map(c["headers"]).get("X-Shopify-Hmac-Sha256")
        if h is None:
            return False
        # What Shopify documents (and @shopify/shopify-api's validateHmacString computes):
        # base64 HMAC-SHA256 of the raw body, compared in constant time.
        return any(hmac.compare_digest(hmac_b64(hashlib.sha256, s, c["body"].encode()), h) for s in c["route"]["secrets"])

    write(
        "shopify",
        "base64 HMAC-SHA256 of the body, as Shopify documents",
        "the same documented computation (the official @shopify/shopify-api verifier needs a full app and request adapter)",
        cross_check("shopify", cases, sdk),
    )


def standard_webhooks():
    import standardwebhooks
    import svix

    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = json.dumps({"type": "invoice.paid", "data": {"id": "inv_1"}})
    msg_id = "msg_2Lmz6p0dR7DYpE5yQ3bS0Kqf1Zs"
    sig = standardwebhooks.Webhook(secret).sign(msg_id, dt.datetime.fromtimestamp(T, tz=dt.timezone.utc), body)
    headers = [("webhook-id", msg_id), ("webhook-timestamp", str(T)), ("webhook-signature", sig)]
    route = {"secrets": [secret]}
    other_secret = "whsec_" + base64.b64encode(b"another-key-0123456789abcdef").decode()
    valid = case("valid", now=T, path="/webhooks/std", headers=headers, body=body, content_type=JSON_CT, route=route, expect="ok", replay_key=msg_id, timestamp=T)
    cases = standard_cases(
        valid,
        sig_header="webhook-signature",
        secret=secret,
        tolerance=300,
        malformed="v1,@@@",
        second_secret_route={"secrets": [other_secret, secret]},
    )
    for c in cases:
        if c["name"] == "wrong secret":
            c["route"] = {"secrets": [other_secret]}
    # Several signatures, space-separated; one matches.
    multi = f"v1,{base64.b64encode(bytes(32)).decode()} v1a,c29tZXRoaW5n {sig}"
    cases.append(case("several signatures, one matches", now=T, path="/webhooks/std", headers=with_header(headers, "webhook-signature", multi), body=body, content_type=JSON_CT, route=route, expect="ok", replay_key=msg_id, timestamp=T))
    # Svix headers, signed by the svix SDK.
    svix_sig = svix.Webhook(secret).sign(msg_id, dt.datetime.fromtimestamp(T, tz=dt.timezone.utc), body)
    svix_headers = [("svix-id", msg_id), ("svix-timestamp", str(T)), ("svix-signature", svix_sig)]
    cases.append(case("svix headers (svix SDK)", now=T, path="/webhooks/std", headers=svix_headers, body=body, content_type=JSON_CT, route=route, expect="ok", replay_key=msg_id, timestamp=T))
    cases.append(case("svix headers, tampered id", now=T, path="/webhooks/std", headers=with_header(svix_headers, "svix-id", "msg_other"), body=body, content_type=JSON_CT, route=route, expect="bad_signature"))

    def sdk(c):
        h = header_map(c["headers"])
        results = []
        for s in c["route"]["secrets"]:
            for lib in (standardwebhooks, svix):
                # svix wraps standardwebhooks, whose module reads the clock.
                with mock.patch("standardwebhooks.webhooks.datetime", frozen(c["now"])):
                    try:
                        lib.Webhook(s).verify(c["body"], h)
                        results.append(True)
                    except Exception:
                        results.append(False)
        return any(results)

    write(
        "standard_webhooks",
        pypi("standardwebhooks") + " Webhook.sign; " + pypi("svix") + " Webhook.sign for the svix-* case",
        pypi("standardwebhooks") + " and " + pypi("svix") + " Webhook.verify (clock fixed at now)",
        cross_check("standard_webhooks", cases, sdk),
    )


def twilio():
    from twilio.request_validator import RequestValidator

    token = "12345"
    public_url = "https://mycompany.com/myapp.php"
    params = {"CallSid": "CA1234567890ABCDE", "Caller": "+12349013030", "Digits": "1234", "From": "+12349013030", "To": "+18005551212"}
    from urllib.parse import urlencode

    body = urlencode(params)
    url = public_url + "?foo=1&bar=2"
    sig = RequestValidator(token).compute_signature(url, params)
    headers = [("X-Twilio-Signature", sig), ("I-Twilio-Idempotency-Token", "ab6b7e8b-6b38-4e9e-8b49-5a4f1b2f6c01")]
    route = {"secrets": [token], "public_url": public_url}
    path = "/webhooks/twilio?foo=1&bar=2"
    # The idempotency token is not signed: the message is named by its signature.
    valid = case("valid form", now=T, path=path, headers=headers, body=body, content_type=FORM_CT, route=route, expect="ok", replay_key=sig, timestamp=None)
    cases = standard_cases(valid, sig_header="X-Twilio-Signature", secret=token, malformed="abc")
    cases.append(case("no idempotency token: the same message", now=T, path=path, headers=[("X-Twilio-Signature", sig)], body=body, content_type=FORM_CT, route=route, expect="ok", replay_key=sig, timestamp=None))
    cases.append(case("query string changed", now=T, path="/webhooks/twilio?foo=1&bar=3", headers=headers, body=body, content_type=FORM_CT, route=route, expect="bad_signature"))
    # Signed with the port: the SDK accepts it for a URL without one, and so does hookguard.
    port_sig = RequestValidator(token).compute_signature("https://mycompany.com:443/myapp.php?foo=1&bar=2", params)
    cases.append(case("signed with :443", now=T, path=path, headers=[("X-Twilio-Signature", port_sig)], body=body, content_type=FORM_CT, route=route, expect="ok", replay_key=port_sig, timestamp=None))
    # Repeated fields: the SDK sorts a name's distinct values (a MultiDict/QueryDict `getlist`).
    class QueryDict(dict):
        def getlist(self, k):
            return self[k]

    rep = QueryDict({"To": ["+1"], "MediaUrl": ["b", "a"]})
    rep_body = "To=%2B1&MediaUrl=b&MediaUrl=a"
    rep_sig = RequestValidator(token).compute_signature(public_url, rep)
    cases.append(case("repeated field", now=T, path="/webhooks/twilio", headers=[("X-Twilio-Signature", rep_sig)], body=rep_body, content_type=FORM_CT, route=route, expect="ok", replay_key=rep_sig, timestamp=None))
    # A JSON body: signed through bodySHA256 in the URL.
    jbody = json.dumps({"ProductName": "Twilio Event Streams", "Status": "delivered"})
    jhash = hashlib.sha256(jbody.encode()).hexdigest()
    jurl = f"{public_url}?bodySHA256={jhash}"
    jsig = RequestValidator(token).compute_signature(jurl, {})
    jpath = f"/webhooks/twilio?bodySHA256={jhash}"
    cases.append(case("JSON body with bodySHA256", now=T, path=jpath, headers=[("X-Twilio-Signature", jsig)], body=jbody, content_type=JSON_CT, route=route, expect="ok", replay_key=jsig, timestamp=None))
    cases.append(case("JSON body tampered", now=T, path=jpath, headers=[("X-Twilio-Signature", jsig)], body=tamper(jbody), content_type=JSON_CT, route=route, expect="bad_signature"))
    nohash = case("JSON body without bodySHA256", now=T, path="/webhooks/twilio", headers=[("X-Twilio-Signature", jsig)], body=jbody, content_type=JSON_CT, route=route, expect="missing_signature")
    cases.append(nohash)

    def sdk(c):
        from urllib.parse import parse_qsl

        h = header_map(c["headers"]).get("X-Twilio-Signature")
        if h is None:
            return False
        query = c["path"].split("?", 1)[1] if "?" in c["path"] else ""
        url = c["route"]["public_url"] + ("?" + query if query else "")
        if c["content_type"] == FORM_CT:
            params = QueryDict()
            for k, v in parse_qsl(c["body"], keep_blank_values=True):
                params.setdefault(k, []).append(v)
        else:
            params = c["body"]
            if "bodySHA256" not in query:
                return False  # the SDK cannot tell what to check; hookguard refuses it
        return any(RequestValidator(s).validate(url, params, h) for s in c["route"]["secrets"])

    write(
        "twilio",
        pypi("twilio") + " RequestValidator.compute_signature",
        pypi("twilio") + " RequestValidator.validate",
        cross_check("twilio", cases, sdk),
    )


def sendgrid():
    from ellipticcurve.curve import prime256v1  # SendGrid's curve (P-256), not the library's default
    from ellipticcurve.ecdsa import Ecdsa
    from ellipticcurve.privateKey import PrivateKey

    # Fixed key pairs, so that the fixture is stable (SendGrid keeps its own private key).
    from sendgrid.helpers.eventwebhook import EventWebhook

    priv = PrivateKey(curve=prime256v1, secret=0x1B6E45DCA2F28DAB0E4AAF6298C9D5983C4CBB0FF5DA8BB64DE52FB25DF13DA3)
    pub_der_b64 = base64.b64encode(priv.publicKey().toDer()).decode()
    other = PrivateKey(curve=prime256v1, secret=0x2C7F56EDB3039EBC1F5BB073A9DAE6A94D5DCC10060EB9CC75EF630C36E24EB4)
    other_b64 = base64.b64encode(other.publicKey().toDer()).decode()
    body = json.dumps([{"email": "example@test.com", "timestamp": T, "event": "processed", "sg_event_id": "sg1", "sg_message_id": "m1"}]) + "\r\n"
    ts = str(T)
    sig = Ecdsa.sign(ts + body, priv).toBase64()
    headers = [("X-Twilio-Email-Event-Webhook-Signature", sig), ("X-Twilio-Email-Event-Webhook-Timestamp", ts)]
    route = {"public_key": pub_der_b64}
    # The replay key is the low-S, fixed-size form of the signature.
    from ellipticcurve.signature import Signature as StarkSig

    s = StarkSig.fromBase64(sig)
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    low_s = min(s.s, n - s.s)
    key = f"{ts}." + base64.b64encode(s.r.to_bytes(32, "big") + low_s.to_bytes(32, "big")).decode()
    valid = case("valid", now=T, path="/webhooks/sendgrid", headers=headers, body=body, content_type=JSON_CT, route=route, expect="ok", replay_key=key, timestamp=T)
    cases = standard_cases(
        valid,
        sig_header="X-Twilio-Email-Event-Webhook-Signature",
        secret=None,
        tolerance=300,
        malformed="bm90IGEgc2lnbmF0dXJl",
        second_secret_route={"public_key": [other_b64, pub_der_b64]},
    )
    for c in cases:
        if c["name"] == "wrong secret":
            c["name"] = "wrong public key"
            c["route"] = {"public_key": other_b64}
        if c["name"] == "second secret matches":
            c["name"] = "second public key matches"
    cases.append(case("missing timestamp header", now=T, path="/webhooks/sendgrid", headers=headers[:1], body=body, content_type=JSON_CT, route=route, expect="missing_signature"))
    cases.append(case("timestamp changed", now=T, path="/webhooks/sendgrid", headers=[headers[0], ("X-Twilio-Email-Event-Webhook-Timestamp", str(T + 1))], body=body, content_type=JSON_CT, route=route, expect="bad_signature"))

    def sdk(c):
        h = header_map(c["headers"])
        sig, ts = h.get("X-Twilio-Email-Event-Webhook-Signature"), h.get("X-Twilio-Email-Event-Webhook-Timestamp")
        if sig is None or ts is None:
            return False
        keys = c["route"]["public_key"]
        keys = keys if isinstance(keys, list) else [keys]
        py = any(EventWebhook().verify_signature(c["body"], sig, ts, EventWebhook().convert_public_key_to_ecdsa(k)) for k in keys)
        js = any(node("sendgrid_verify", key=k, body=c["body"], signature=sig, timestamp=ts) for k in keys)
        if py != js:
            sys.exit(f"sendgrid: python and node SDKs disagree on {c['name']}")
        return py

    write(
        "sendgrid",
        pypi("starkbank-ecdsa") + " Ecdsa.sign (the ECDSA library the sendgrid SDK verifies with; SendGrid keeps its private key)",
        pypi("sendgrid") + " EventWebhook.verify_signature and " + npm("@sendgrid/eventwebhook") + " verifySignature",
        cross_check("sendgrid", cases, sdk, checks_time=False),
    )


def paddle():
    from paddle_billing.Notifications import Secret, Verifier
    from paddle_billing.Notifications.PaddleSignature import PaddleSignature

    secret = "pdl_ntfset_01gkpjp8bkm3tm53kdgkx6sms7_6h3qd3uFSi9Ym5ofJnTPPrTqp9Cl4nm6"
    body = json.dumps({"event_id": "evt_01h8441jx8x2q4n4sbg5d4bbm8", "event_type": "transaction.paid", "occurred_at": "2023-11-14T22:13:20.000000Z", "notification_id": "ntf_01h8441jz6z6x0f8y8s0yb8ehd", "data": {"id": "txn_1"}})
    # Neither Paddle SDK has a signer: h1 is HMAC-SHA256(secret, "{ts}:{body}"), as documented.
    h1 = hmac_hex(hashlib.sha256, secret, f"{T}:{body}".encode())
    header = f"ts={T};h1={h1}"
    headers = [("Paddle-Signature", header)]
    route = {"secrets": [secret]}
    valid = case("valid", now=T, path="/webhooks/paddle", headers=headers, body=body, content_type=JSON_CT, route=route, expect="ok", replay_key="ntf_01h8441jz6z6x0f8y8s0yb8ehd", timestamp=T)
    cases = standard_cases(valid, sig_header="Paddle-Signature", secret=secret, tolerance=5, malformed="ts=abc;h1=zz")
    rotated = f"ts={T};h1={'0' * 64};h1={h1}"
    cases.append(case("several h1, one matches", now=T, path="/webhooks/paddle", headers=[("Paddle-Signature", rotated)], body=body, content_type=JSON_CT, route=route, expect="ok", replay_key="ntf_01h8441jz6z6x0f8y8s0yb8ehd", timestamp=T))

    class Req:
        def __init__(self, headers, body):
            self.headers = headers
            self.body = body.encode()

    def sdk(c):
        h = header_map(c["headers"])
        if "Paddle-Signature" not in h:
            return False
        with mock.patch("paddle_billing.Notifications.Verifier.time", return_value=float(c["now"])):
            try:
                return Verifier().verify(Req(h, c["body"]), [Secret(s) for s in c["route"]["secrets"]])
            except Exception:
                return False

    write(
        "paddle",
        "HMAC-SHA256(secret, ts + ':' + body), as Paddle documents (its SDKs have no signer)",
        pypi("paddle-python-sdk") + " Notifications.Verifier (maximum_variance 5 s, clock fixed at now)",
        cross_check("paddle", cases, sdk),
        notes=f"{npm('@paddle/paddle-node-sdk')} Webhooks.isSignatureValid accepts the valid case too (checked by generate.py); it tries only the last h1 and does not reject future timestamps.",
    )
    if not node("paddle_verify", body=body, secret=secret, header=header, now=T):
        sys.exit("paddle: the node SDK rejects the valid vector")
    _ = PaddleSignature


def twitch():
    secret = "s3cre7-twitch-eventsub-0123456789"
    msg_id = "e76c6bd4-55c9-4987-8304-da1588d8988b"
    ts_text = "2023-11-14T22:13:20.123456789Z"
    body = json.dumps({"subscription": {"id": "f1c2a387-161a-49f9-a165-0f21d7a4e1c4", "type": "channel.follow", "version": "2"}, "event": {"user_id": "1337"}})
    # Twitch has no official SDK; this is the computation its EventSub documentation gives.
    sig = "sha256=" + hmac_hex(hashlib.sha256, secret, (msg_id + ts_text + body).encode())
    headers = [("Twitch-Eventsub-Message-Id", msg_id), ("Twitch-Eventsub-Message-Timestamp", ts_text), ("Twitch-Eventsub-Message-Type", "notification"), ("Twitch-Eventsub-Message-Signature", sig)]
    route = {"secrets": [secret]}
    valid = case("valid", now=T, path="/webhooks/twitch", headers=headers, body=body, content_type=JSON_CT, route=route, expect="ok", replay_key=msg_id, timestamp=T)
    cases = standard_cases(valid, sig_header="Twitch-Eventsub-Message-Signature", secret=secret, tolerance=600, malformed="sha256=xyz")
    cases.append(case("message id changed", now=T, path="/webhooks/twitch", headers=with_header(headers, "Twitch-Eventsub-Message-Id", "other"), body=body, content_type=JSON_CT, route=route, expect="bad_signature"))
    write("twitch", "HMAC-SHA256(secret, id + timestamp + body), as Twitch's EventSub documentation gives (no official SDK)", "none (no official verifier)", cases)


def zoom():
    secret = "zoom-webhook-secret-token-0123456789"
    body = json.dumps({"event": "meeting.started", "payload": {"account_id": "a1", "object": {"id": "85642953419"}}, "event_ts": 1700000000123}, separators=(",", ":"))
    ts = str(T)
    sig = "v0=" + hmac_hex(hashlib.sha256, secret, f"v0:{ts}:{body}".encode())
    headers = [("x-zm-request-timestamp", ts), ("x-zm-signature", sig)]
    route = {"secrets": [secret]}
    valid = case("valid", now=T, path="/webhooks/zoom", headers=headers, body=body, content_type=JSON_CT, route=route, expect="ok", replay_key=f"{ts}.{sig[3:]}", timestamp=T)
    cases = standard_cases(valid, sig_header="x-zm-signature", secret=secret, tolerance=300, malformed="v0=nothex")
    challenge = json.dumps({"payload": {"plainToken": "qgg8vlvZRS6UYooatFL8Aw"}, "event_ts": 1654503849680, "event": "endpoint.url_validation"}, separators=(",", ":"))
    csig = "v0=" + hmac_hex(hashlib.sha256, secret, f"v0:{ts}:{challenge}".encode())
    c = case("url_validation is answered", now=T, path="/webhooks/zoom", headers=[("x-zm-request-timestamp", ts), ("x-zm-signature", csig)], body=challenge, content_type=JSON_CT, route=route, expect="ok", replay_key=f"{ts}.{csig[3:]}", timestamp=T)
    c["answer"] = {"plainToken": "qgg8vlvZRS6UYooatFL8Aw", "encryptedToken": hmac_hex(hashlib.sha256, secret, b"qgg8vlvZRS6UYooatFL8Aw")}
    cases.append(c)
    write(
        "zoom",
        "HMAC-SHA256(secret, 'v0:' + ts + ':' + body), as Zoom documents; the challenge answer as @zoom/rivet's hashUrlValidationEvent",
        "none callable: @zoom/rivet verifies inside its HTTP receiver only",
        cases,
    )


def square():
    from square.utils.webhooks_helper import verify_signature

    key = "Ffy8nTk2H2BNuhDEqVjA2w"
    public_url = "https://example.com/webhooks/square"
    body = json.dumps({"merchant_id": "6SSW7HV8K2ST5", "type": "payment.updated", "event_id": "13b867cf-db3d-4b1c-90b6-2f32a9d78124", "data": {"type": "payment", "id": "p1"}})
    sig = hmac_b64(hashlib.sha256, key, (public_url + body).encode())
    headers = [("x-square-hmacsha256-signature", sig)]
    route = {"secrets": [key], "public_url": public_url}
    valid = case("valid", now=T, path="/webhooks/square", headers=headers, body=body, content_type=JSON_CT, route=route, expect="ok", replay_key="13b867cf-db3d-4b1c-90b6-2f32a9d78124", timestamp=None)
    cases = standard_cases(valid, sig_header="x-square-hmacsha256-signature", secret=key, malformed="***")
    cases.append(case("URL differs (query)", now=T, path="/webhooks/square?x=1", headers=headers, body=body, content_type=JSON_CT, route=route, expect="bad_signature"))

    def sdk(c):
        h = header_map(c["headers"]).get("x-square-hmacsha256-signature")
        if h is None:
            return False
        query = c["path"].split("?", 1)[1] if "?" in c["path"] else ""
        url = c["route"]["public_url"] + ("?" + query if query else "")
        return any(verify_signature(request_body=c["body"], signature_header=h, signature_key=s, notification_url=url) for s in c["route"]["secrets"])

    write("square", "HMAC-SHA256(key, notification URL + body), as Square documents (its SDK has no signer)", pypi("squareup") + " square.utils.webhooks_helper.verify_signature", cross_check("square", cases, sdk))


def discord():
    import nacl.signing
    from discord_interactions import verify_key

    sk = nacl.signing.SigningKey(bytes(range(32)))
    pk = sk.verify_key.encode().hex()
    other = nacl.signing.SigningKey(bytes(range(1, 33))).verify_key.encode().hex()
    body = json.dumps({"application_id": "1190000000000000000", "id": "1180000000000000001", "type": 1, "token": "tok", "version": 1}, separators=(",", ":"))
    ts = str(T)
    sig = sk.sign((ts + body).encode()).signature.hex()
    headers = [("X-Signature-Ed25519", sig), ("X-Signature-Timestamp", ts)]
    route = {"public_key": pk}
    valid = case("valid PING", now=T, path="/webhooks/discord", headers=headers, body=body, content_type=JSON_CT, route=route, expect="ok", replay_key="1180000000000000001", timestamp=T)
    cases = standard_cases(valid, sig_header="X-Signature-Ed25519", secret=None, tolerance=300, malformed="00ff", second_secret_route={"public_key": [other, pk]})
    for c in cases:
        if c["name"] == "wrong secret":
            c["name"] = "wrong public key"
            c["route"] = {"public_key": other}
        if c["name"] == "second secret matches":
            c["name"] = "second public key matches"

    def sdk(c):
        h = header_map(c["headers"])
        sig, ts = h.get("X-Signature-Ed25519"), h.get("X-Signature-Timestamp")
        if sig is None or ts is None:
            return False
        keys = c["route"]["public_key"]
        keys = keys if isinstance(keys, list) else [keys]
        py = any(verify_key(c["body"].encode(), sig, ts, k) for k in keys)
        js = any(node("discord_verify", body=c["body"], signature=sig, timestamp=ts, key=k) for k in keys)
        if py != js:
            sys.exit(f"discord: python and node SDKs disagree on {c['name']}")
        return py

    write(
        "discord",
        pypi("PyNaCl") + " SigningKey.sign (Discord keeps its private key)",
        pypi("discord-interactions") + " verify_key and " + npm("discord-interactions") + " verifyKey",
        cross_check("discord", cases, sdk, checks_time=False),
    )


def linear():
    secret = "lin_wh_0123456789abcdefghijklmnopqrstuvwxyz"
    body = json.dumps({"action": "create", "type": "Issue", "data": {"id": "i1", "title": "Bug"}, "webhookTimestamp": T * 1000 + 250, "webhookId": "w1"})
    sig = hmac_hex(hashlib.sha256, secret, body.encode())
    headers = [("Linear-Delivery", "234d1a4e-b617-4388-90fe-adc3633d6b72"), ("Linear-Event", "Issue"), ("Linear-Signature", sig)]
    route = {"secrets": [secret]}
    valid = case("valid", now=T, path="/webhooks/linear", headers=headers, body=body, content_type=JSON_CT, route=route, expect="ok", replay_key=f"{T * 1000 + 250}.{sig}", timestamp=T)
    cases = standard_cases(valid, sig_header="Linear-Signature", secret=secret, tolerance=None, malformed="xyz")
    cases.append(case("stale timestamp", now=T + 61, path="/webhooks/linear", headers=headers, body=body, content_type=JSON_CT, route=route, expect="stale_timestamp"))
    cases.append(case("future timestamp", now=T - 60, path="/webhooks/linear", headers=headers, body=body, content_type=JSON_CT, route=route, expect="stale_timestamp"))
    nots = json.dumps({"action": "create", "type": "Issue"})
    cases.append(case("no webhookTimestamp", now=T, path="/webhooks/linear", headers=[("Linear-Signature", hmac_hex(hashlib.sha256, secret, nots.encode()))], body=nots, content_type=JSON_CT, route=route, expect="missing_signature"))

    def sdk(c):
        h = header_map(c["headers"]).get("Linear-Signature")
        if h is None:
            return False
        return any(node("linear_verify", body=c["body"], secret=s, signature=h, now=c["now"]) for s in c["route"]["secrets"])

    write("linear", "HMAC-SHA256(secret, body), as Linear documents (its SDK has no signer)", npm("@linear/sdk") + " LinearWebhooks.verify (clock fixed at now)", cross_check("linear", cases, sdk))


def intercom():
    secret = "intercom-client-secret-0123456789"
    body = json.dumps({"type": "notification_event", "app_id": "a1", "topic": "conversation.user.created", "id": "notif_ccd8a4d0-f965-11e3-a367-c779cae3e1b3", "data": {"item": {"type": "conversation"}}})
    sig = "sha1=" + hmac_hex(hashlib.sha1, secret, body.encode())
    headers = [("X-Hub-Signature", sig)]
    route = {"secrets": [secret]}
    valid = case("valid", now=T, path="/webhooks/intercom", headers=headers, body=body, content_type=JSON_CT, route=route, expect="ok", replay_key="notif_ccd8a4d0-f965-11e3-a367-c779cae3e1b3", timestamp=None)
    cases = standard_cases(valid, sig_header="X-Hub-Signature", secret=secret, malformed="sha256=00")
    write("intercom", "HMAC-SHA1(client secret, body), as Intercom documents (no official verifier)", "none (no official verifier)", cases)


def mandrill():
    key = "mandrill-webhook-key-0123456789"
    public_url = "https://example.com/webhooks/mandrill"
    events = json.dumps([{"event": "send", "_id": "exampleaaaaaaaaaaaaaaaaaaaaaaaaa", "ts": T, "msg": {"email": "a@example.com"}}])
    from urllib.parse import urlencode

    body = urlencode({"mandrill_events": events})
    # Mandrill's documented algorithm: URL, then each POST key and value, keys sorted.
    sig = hmac_b64(hashlib.sha1, key, (public_url + "mandrill_events" + events).encode())
    headers = [("X-Mandrill-Signature", sig)]
    route = {"secrets": [key], "public_url": public_url}
    valid = case("valid", now=T, path="/webhooks/mandrill", headers=headers, body=body, content_type=FORM_CT, route=route, expect="ok", replay_key=sig, timestamp=None)
    cases = standard_cases(valid, sig_header="X-Mandrill-Signature", secret=key, malformed="abc")
    write("mandrill", "HMAC-SHA1 base64 of URL + sorted POST fields, as Mandrill documents (mailchimp-transactional has no verifier)", "none (no official verifier)", cases)


def main():
    only = set(sys.argv[1:])
    for fn in (mailgun, stripe, github, slack, shopify, standard_webhooks, twilio, sendgrid, paddle, twitch, zoom, square, discord, linear, intercom, mandrill):
        if not only or fn.__name__ in only:
            fn()


if __name__ == "__main__":
    main()
