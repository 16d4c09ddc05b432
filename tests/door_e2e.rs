//! The door holds (issue 11): one end-to-end test per replay or forgery hole the attacker's
//! review found, each asserting what the fixed hookguard must do: the real binary between a raw
//! HTTP client and a recording upstream, signatures computed here with the `hmac`, `sha1`,
//! `sha2` and `base64` crates (never with hookguard's own code).
//!
//! The contract these tests hold hookguard to: a copy of a message already delivered is
//! answered `200 {"status":"duplicate"}` and not forwarded (`replay.duplicate_status: 409`
//! restores 409); a copy of one still in flight gets `409 {"error":"replayed"}`; a replay key
//! names the message (signed material only, namespaced by provider and signing secret,
//! canonical whatever unsigned headers or the order of signatures).
//!
//! Longer than 500 lines: one or more tests per hole of issue 11, each self-contained (its own
//! proxy, upstream and signatures).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::Sha256;

/// hookguard's answer to a copy of a delivered message.
const DUPLICATE: &str = "{\"status\":\"duplicate\"}";

fn hmac_sha256(key: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn hmac_sha1(key: &str, parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha1>::new_from_slice(key.as_bytes()).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A fresh GUID-shaped delivery id.
fn uuid() -> String {
    let t = format!("{:0>32}", token().trim_start_matches("tok"));
    let t = &t[t.len() - 32..];
    format!(
        "{}-{}-{}-{}-{}",
        &t[0..8],
        &t[8..12],
        &t[12..16],
        &t[16..20],
        &t[20..32]
    )
}

/// A copy that must not reach the app: the upstream's count is unchanged, and the answer is
/// exactly hookguard's `200 {"status":"duplicate"}`.
fn assert_duplicate(resp: &HttpResponse, up: &Upstream, count: usize, what: &str) {
    assert_eq!(
        up.count(),
        count,
        "{what}: the copy was forwarded to the upstream again"
    );
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (200, DUPLICATE),
        "{what}: a copy of a delivered message is answered 200 duplicate"
    );
}

/// A request that must not reach the app, answered either as a duplicate (200) or 409.
fn assert_refused_copy(resp: &HttpResponse, up: &Upstream, count: usize, what: &str) {
    assert_eq!(
        up.count(),
        count,
        "{what}: the copy was forwarded to the upstream"
    );
    let text = resp.text();
    assert!(
        (resp.status, text.as_str()) == (200, DUPLICATE)
            || (resp.status, text.as_str()) == (409, "{\"error\":\"replayed\"}"),
        "{what}: answered {} {text}, want 200 duplicate or 409 replayed",
        resp.status
    );
}

fn requests_total(route: &str, provider: &str, outcome: &str) -> String {
    format!(
        "hookguard_requests_total{{outcome=\"{outcome}\",provider=\"{provider}\",route=\"{route}\"}}"
    )
}

// ------------------------------------------------------------------------------------------
// Hole 1: replay by dropping or changing the unsigned delivery id (GitHub, Shopify, Twilio)
// ------------------------------------------------------------------------------------------

/// One signed message of a provider whose delivery id is an unsigned header.
struct UnsignedIdCase<'a> {
    /// The route's lines after `path:` (provider and options), indented four spaces.
    route: String,
    path: &'a str,
    content_type: (&'a str, &'a str),
    body: Vec<u8>,
    /// The signature header and its value.
    signature: (&'a str, String),
    id_header: &'a str,
    /// An unsigned header describing the message, its original value and an edited one.
    event: (&'a str, &'a str, &'a str),
}

/// Delivers the message once with a delivery id, then sends the same body and signature
/// (a) without the id, (b) with another id, (c) with an edited unsigned header: none may be
/// forwarded, each is a duplicate.
fn unsigned_id_cannot_make_a_copy_new(case: UnsignedIdCase<'_>) {
    let up = Upstream::start();
    let proxy = Proxy::start(&format!(
        "upstream: \"{}\"\nroutes:\n  - name: r\n    path: {}\n{}",
        up.url(),
        case.path,
        case.route
    ));
    let (event, original_event, edited_event) = case.event;
    let id = uuid();
    let send = |id: Option<&str>, event_value: &str| {
        let mut headers = vec![
            case.content_type,
            (case.signature.0, case.signature.1.as_str()),
            (event, event_value),
        ];
        if let Some(id) = id {
            headers.push((case.id_header, id));
        }
        post(proxy.port, case.path, &headers, &case.body)
    };

    let first = send(Some(&id), original_event);
    assert_eq!(first.status, 200, "authentic delivery: {}", first.text());
    assert_eq!(up.count(), 1);

    let other = uuid();
    let copies = [
        (None, original_event, "(a) without the delivery id"),
        (
            Some(other.as_str()),
            original_event,
            "(b) with another delivery id",
        ),
        (
            Some(id.as_str()),
            edited_event,
            "(c) with an edited unsigned header",
        ),
    ];
    for (copy_id, value, what) in copies {
        let resp = send(copy_id, value);
        assert_duplicate(&resp, &up, 1, &format!("{} {what}", case.id_header));
    }
}

// Hole 1 (GitHub).
#[test]
fn github_copy_without_or_with_another_delivery_id_is_a_duplicate() {
    const KEY: &str = "gh-door-secret";
    let body = format!(r#"{{"zen":"Design for failure.","hook_id":"{}"}}"#, token()).into_bytes();
    let sig = format!("sha256={}", hex::encode(hmac_sha256(KEY, &[&body])));
    unsigned_id_cannot_make_a_copy_new(UnsignedIdCase {
        route: format!("    provider: github\n    secrets: [\"{KEY}\"]\n"),
        path: "/gh",
        content_type: JSON,
        body,
        signature: ("X-Hub-Signature-256", sig),
        id_header: "X-GitHub-Delivery",
        event: ("X-GitHub-Event", "push", "ping"),
    });
}

// Hole 1 (Shopify).
#[test]
fn shopify_copy_without_or_with_another_webhook_id_is_a_duplicate() {
    const KEY: &str = "shpss_door_secret";
    let body = format!(r#"{{"id":820982911946154508,"note":"{}"}}"#, token()).into_bytes();
    let sig = b64(&hmac_sha256(KEY, &[&body]));
    unsigned_id_cannot_make_a_copy_new(UnsignedIdCase {
        route: format!("    provider: shopify\n    secrets: [\"{KEY}\"]\n"),
        path: "/shop",
        content_type: JSON,
        body,
        signature: ("X-Shopify-Hmac-Sha256", sig),
        id_header: "X-Shopify-Webhook-Id",
        event: ("X-Shopify-Topic", "orders/create", "orders/delete"),
    });
}

// Hole 1 (Twilio).
#[test]
fn twilio_copy_without_or_with_another_idempotency_token_is_a_duplicate() {
    const KEY: &str = "twilio-door-auth-token";
    const PUBLIC_URL: &str = "http://example.com/tw";
    let sid = format!("SM{}", token());
    // Sent in any order; signed sorted by name, each name followed by its value.
    let fields = [
        ("To", "15557654321"),
        ("From", "15551234567"),
        ("Body", "hello"),
        ("MessageSid", sid.as_str()),
        ("AccountSid", "AC0123456789"),
    ];
    let body = fields
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes();
    let mut sorted = fields.to_vec();
    sorted.sort();
    let mut signed = PUBLIC_URL.to_owned();
    for (k, v) in sorted {
        signed.push_str(k);
        signed.push_str(v);
    }
    let sig = b64(&hmac_sha1(KEY, &[signed.as_bytes()]));
    unsigned_id_cannot_make_a_copy_new(UnsignedIdCase {
        route: format!(
            "    provider: twilio\n    secrets: [\"{KEY}\"]\n    public_url: \"{PUBLIC_URL}\"\n"
        ),
        path: "/tw",
        content_type: FORM,
        body,
        signature: ("X-Twilio-Signature", sig),
        id_header: "I-Twilio-Idempotency-Token",
        event: ("X-Home-Region", "us1", "ie1"),
    });
}

// ------------------------------------------------------------------------------------------
// Hole 2: `hmac` with an unsigned `id_header` / `timestamp_header`
// ------------------------------------------------------------------------------------------

fn check_config(route_options: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        format!(
            "upstream: \"http://127.0.0.1:3000\"\nroutes:\n  - name: h\n    path: /h\n    provider: hmac\n    secrets: [\"hmac-door-secret\"]\n    header: X-Sig\n{route_options}"
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hookguard"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .expect("run hookguard check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

// Hole 2: an id the payload does not sign cannot be the replay key: refused at load.
#[test]
fn hmac_unsigned_id_header_is_refused_at_load() {
    let (code, out) = check_config("    id_header: X-Id\n");
    assert_eq!(
        code,
        Some(1),
        "`id_header` not in the signed payload must be refused:\n{out}"
    );
    assert!(
        out.contains("id_header"),
        "the error names id_header:\n{out}"
    );
}

// Hole 2: a timestamp the payload does not sign gives no freshness: refused at load.
#[test]
fn hmac_unsigned_timestamp_header_is_refused_at_load() {
    let (code, out) = check_config("    timestamp_header: X-Ts\n    payload: \"{body}\"\n");
    assert_eq!(
        code,
        Some(1),
        "`timestamp_header` not in the signed payload must be refused:\n{out}"
    );
    assert!(
        out.contains("timestamp_header"),
        "the error names timestamp_header:\n{out}"
    );
}

// Hole 2 (positive): with the id and the timestamp signed, one message is delivered once.
#[test]
fn hmac_with_signed_id_and_timestamp_delivers_each_message_once() {
    const KEY: &str = "hmac-door-secret";
    let up = Upstream::start();
    let proxy = Proxy::start(&format!(
        "upstream: \"{}\"\nroutes:\n  - name: h\n    path: /h\n    provider: hmac\n    secrets: [\"{KEY}\"]\n    header: X-Sig\n    payload: \"{{header:X-Id}}.{{timestamp}}.{{body}}\"\n    id_header: X-Id\n    timestamp_header: X-Ts\n",
        up.url()
    ));
    let body = format!(r#"{{"event":"created","n":"{}"}}"#, token()).into_bytes();
    let id = token();
    let ts = now().to_string();
    let sig = hex::encode(hmac_sha256(
        KEY,
        &[id.as_bytes(), b".", ts.as_bytes(), b".", &body],
    ));
    let send = |id: &str| {
        post(
            proxy.port,
            "/h",
            &[JSON, ("X-Sig", &sig), ("X-Id", id), ("X-Ts", &ts)],
            &body,
        )
    };
    let first = send(&id);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(up.count(), 1);
    assert_eq!(up.received()[0].header("x-webhook-id"), Some(id.as_str()));

    let other = send(&token());
    assert_eq!(
        (other.status, other.error().as_str()),
        (401, "bad_signature"),
        "another X-Id breaks the signature"
    );
    assert_eq!(up.count(), 1);

    let copy = send(&id);
    assert_duplicate(&copy, &up, 1, "exact copy");
}

// ------------------------------------------------------------------------------------------
// Hole 3: Mailgun token reuse with a forged body
// ------------------------------------------------------------------------------------------

// Hole 3 (a): two routes with one signing key share replay; a token delivered on one cannot
// carry another body on the other.
#[test]
fn mailgun_token_delivered_on_one_route_is_refused_on_another_with_another_body() {
    let up = Upstream::start();
    let route = |name: &str| {
        format!("  - name: {name}\n    path: /{name}\n    provider: mailgun\n    secrets: [\"{MG_KEY}\"]\n")
    };
    let proxy = Proxy::start(&format!(
        "upstream: \"{}\"\nroutes:\n{}{}",
        up.url(),
        route("mg1"),
        route("mg2")
    ));
    let (ts, tok) = (now(), token());
    let genuine = mg_json_at(MG_KEY, ts, &tok, "delivered");
    let resp = post(proxy.port, "/mg1", &[JSON], &genuine);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.count(), 1);

    // Same timestamp, token and signature; another event-data.
    let forged = mg_json_at(MG_KEY, ts, &tok, "unsubscribed");
    assert_ne!(forged, genuine);
    let resp = post(proxy.port, "/mg2", &[JSON], &forged);
    assert_refused_copy(
        &resp,
        &up,
        1,
        "token of /mg1 reused on /mg2 with a forged body",
    );
}

// Hole 3 (b): a token released after a failed delivery may come back only with its own body.
#[test]
fn mailgun_token_released_after_a_failure_is_bound_to_its_body() {
    let up = Upstream::start();
    up.script([Reply::Status(500, "{\"down\":true}")]);
    let proxy = Proxy::start(&mailgun_config(&up, "", ""));
    let (ts, tok) = (now(), token());
    let genuine = mg_json_at(MG_KEY, ts, &tok, "delivered");
    let forged = mg_json_at(MG_KEY, ts, &tok, "complained");

    let first = post(proxy.port, "/mg", &[JSON], &genuine);
    assert_eq!(
        (first.status, first.text().as_str()),
        (500, "{\"down\":true}"),
        "the upstream's failure is passed back"
    );
    assert_eq!(up.count(), 1);

    let resp = post(proxy.port, "/mg", &[JSON], &forged);
    assert_eq!(
        up.count(),
        1,
        "the released token was forwarded with a forged body"
    );
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (409, "{\"error\":\"replayed\"}"),
        "the released token with another body is refused"
    );

    let retry = post(proxy.port, "/mg", &[JSON], &genuine);
    assert_eq!(
        (retry.status, retry.text().as_str()),
        (200, "{\"ok\":true}"),
        "the provider's genuine retry goes through"
    );
    assert_eq!(up.count(), 2);
    let original: serde_json::Value = serde_json::from_slice(&genuine).unwrap();
    for (i, r) in up.received().iter().enumerate() {
        assert_eq!(
            r.json(),
            original,
            "forwarded body {i} is the genuine event"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Hole 4: allow_ips behind a trusted proxy
// ------------------------------------------------------------------------------------------

fn allow_ips_proxy(up: &Upstream, allow: &str) -> Proxy {
    Proxy::start(&mailgun_config(
        up,
        "trusted_proxies: [\"127.0.0.0/8\"]",
        &format!("    allow_ips: [{allow}]\n"),
    ))
}

// Hole 4: several X-Forwarded-For lines are one list; the rightmost untrusted entry is the client.
#[test]
fn two_x_forwarded_for_lines_are_one_list_for_allow_ips() {
    let up = Upstream::start();
    let proxy = allow_ips_proxy(&up, "\"203.0.113.0/24\"");

    // Control: one line naming an allowed client.
    let ok = post(
        proxy.port,
        "/mg",
        &[JSON, ("X-Forwarded-For", "203.0.113.7")],
        &mg_json(&token()),
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(up.count(), 1);

    // The client is 198.51.100.9 (the last line, written by the trusted proxy).
    let resp = post(
        proxy.port,
        "/mg",
        &[
            JSON,
            ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-For", "198.51.100.9"),
        ],
        &mg_json(&token()),
    );
    assert_eq!(
        up.count(),
        1,
        "a client outside allow_ips reached the upstream"
    );
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (403, "{\"error\":\"ip_not_allowed\"}"),
        "the rightmost untrusted address of all X-Forwarded-For lines is the client"
    );
}

// Hole 4: an unreadable X-Forwarded-For never makes the trusted proxy itself the client.
#[test]
fn non_ascii_x_forwarded_for_is_not_the_proxys_own_address() {
    let up = Upstream::start();
    // Falling back to the peer (127.0.0.1) would pass this list.
    let proxy = allow_ips_proxy(&up, "\"203.0.113.0/24\", \"127.0.0.0/8\"");
    let body = mg_json(&token());
    let mut raw = format!(
        "POST /mg HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Forwarded-For: 203.0.113.7",
        body.len()
    )
    .into_bytes();
    raw.push(0xff);
    raw.extend_from_slice(b"\r\n\r\n");
    raw.extend_from_slice(&body);
    let mut c = Conn::open(proxy.port).unwrap();
    c.write(&raw).unwrap();
    let resp = c.read_response().unwrap();
    assert_eq!(
        up.count(),
        0,
        "an unreadable X-Forwarded-For let the request through as the proxy's own address"
    );
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (403, "{\"error\":\"ip_not_allowed\"}")
    );
}

// ------------------------------------------------------------------------------------------
// Hole 5: underscore spellings of X-Webhook-*, client-sent forwarding headers
// ------------------------------------------------------------------------------------------

// Hole 5.
#[test]
fn underscore_and_forwarding_header_spellings_never_reach_the_upstream() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "", ""));
    let tok = token();
    let resp = post(
        proxy.port,
        "/mg",
        &[
            JSON,
            ("X_Webhook_Id", "evil"),
            ("X_WEBHOOK_ROUTE", "evil"),
            ("x_webhook_provider", "evil"),
            ("X_Forwarded_For", "6.6.6.6"),
            ("Forwarded", "for=6.6.6.6"),
            ("X-Real-IP", "6.6.6.6"),
        ],
        &mg_json(&tok),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = up.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    // What CGI/WSGI/Rack make of a name: `_` and `-` are the same.
    let cgi = |name: &str| name.to_ascii_lowercase().replace('_', "-");
    for (name, value) in &r.headers {
        assert!(
            !(name.contains('_')
                && (cgi(name).starts_with("x-webhook-") || cgi(name) == "x-forwarded-for")),
            "the upstream got `{name}: {value}`"
        );
        assert!(
            !cgi(name).starts_with("x-webhook-") || value != "evil",
            "the upstream got `{name}: {value}`"
        );
    }
    for (name, want) in [
        ("x-webhook-id", tok.as_str()),
        ("x-webhook-route", "mg"),
        ("x-webhook-provider", "mailgun"),
    ] {
        let values: Vec<&str> = r
            .headers
            .iter()
            .filter(|(n, _)| cgi(n) == name)
            .map(|(_, v)| v.as_str())
            .collect();
        assert_eq!(values, [want], "{name}, under any spelling");
    }
    assert_eq!(r.header("forwarded"), None, "client-sent Forwarded");
    assert_eq!(r.header("x-real-ip"), None, "client-sent X-Real-IP");
    let xff = r.header("x-forwarded-for").unwrap_or_default();
    assert!(!xff.contains("6.6.6.6"), "x-forwarded-for: {xff}");
}

// ------------------------------------------------------------------------------------------
// Hole 6: credentials forwarded
// ------------------------------------------------------------------------------------------

// Hole 6.
#[test]
fn basic_auth_credentials_are_not_forwarded() {
    let up = Upstream::start();
    let proxy = Proxy::start(&format!(
        "upstream: \"{}\"\nroutes:\n  - name: ba\n    path: /ba\n    provider: basic_auth\n    username: hook\n    secrets: [\"pw\"]\n",
        up.url()
    ));
    let auth = format!("Basic {}", b64(b"hook:pw"));
    let body = format!(r#"{{"RecordType":"Delivery","MessageID":"{}"}}"#, token());
    let resp = post(
        proxy.port,
        "/ba",
        &[JSON, ("Authorization", &auth)],
        body.as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.count(), 1);
    let r = &up.received()[0];
    assert_eq!(
        r.header("authorization"),
        None,
        "the route's own password reached the app"
    );
}

// ------------------------------------------------------------------------------------------
// Hole 7: canonical replay key under key rotation
// ------------------------------------------------------------------------------------------

// Hole 7 (Stripe).
#[test]
fn stripe_replay_key_is_canonical_under_rotation() {
    const A: &str = "whsec_door_old";
    const B: &str = "whsec_door_new";
    let up = Upstream::start();
    let proxy = Proxy::start(&format!(
        "upstream: \"{}\"\nroutes:\n  - name: s\n    path: /s\n    provider: stripe\n    secrets: [\"{A}\", \"{B}\"]\n  - name: s2\n    path: /s2\n    provider: stripe\n    secrets: [\"{A}\"]\n",
        up.url()
    ));
    let body = format!(
        r#"{{"id":"evt_{}","object":"event","type":"invoice.paid"}}"#,
        token()
    )
    .into_bytes();
    let t = now().to_string();
    let sig = |key: &str| hex::encode(hmac_sha256(key, &[t.as_bytes(), b".", &body]));
    let (a, b) = (sig(A), sig(B));
    let send = |path: &str, header: String| {
        post(
            proxy.port,
            path,
            &[JSON, ("Stripe-Signature", &header)],
            &body,
        )
    };

    let first = send("/s", format!("t={t},v1={a},v1={b}"));
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(up.count(), 1);
    assert_duplicate(
        &send("/s", format!("t={t},v1={b},v1={a}")),
        &up,
        1,
        "the two v1 swapped",
    );
    assert_duplicate(
        &send("/s", format!("t={t},v1={b}")),
        &up,
        1,
        "only the v1 under the new secret",
    );
    assert_duplicate(
        &send("/s2", format!("t={t},v1={a}")),
        &up,
        1,
        "another route with the same provider and secret",
    );
}

// Hole 7, found by tests/adversary_model.rs: the first delivery fails; the attacker's copy
// with only the old signature goes to the route that knows only the old secret and is
// delivered there; a copy with only the new signature, to the route that knows both, must be
// the same message. (With keys under the signing secrets only, it was free and delivered
// again.)
#[test]
fn a_message_delivered_under_the_old_secret_is_a_duplicate_under_the_new() {
    const A: &str = "whsec_door_rot_old";
    const B: &str = "whsec_door_rot_new";
    let up = Upstream::start();
    up.script([Reply::Status(500, "{\"down\":true}")]);
    let proxy = Proxy::start_config(
        &TestConfig::new(&up)
            .route(TestRoute::new("s", "/s", "stripe").secrets(&[A, B]))
            .route(TestRoute::new("s2", "/s2", "stripe").secrets(&[A])),
    );
    let body = format!(r#"{{"id":"evt_{}","object":"event"}}"#, token()).into_bytes();
    let t = now().to_string();
    let sig = |key: &str| hex::encode(hmac_sha256(key, &[t.as_bytes(), b".", &body]));
    let (a, b) = (sig(A), sig(B));
    let send = |path: &str, header: String| {
        post(
            proxy.port,
            path,
            &[JSON, ("Stripe-Signature", &header)],
            &body,
        )
    };
    assert_eq!(send("/s", format!("t={t},v1={a},v1={b}")).status, 500);
    assert_eq!(send("/s2", format!("t={t},v1={a}")).status, 200);
    assert_eq!(up.count(), 2);
    assert_duplicate(
        &send("/s", format!("t={t},v1={b}")),
        &up,
        2,
        "only the new signature, after delivery under the old secret",
    );
}

// Hole 7 (`hmac`).
#[test]
fn hmac_replay_key_is_canonical_under_rotation() {
    const A: &str = "hmac-door-old";
    const B: &str = "hmac-door-new";
    let up = Upstream::start();
    let proxy = Proxy::start(&format!(
        "upstream: \"{}\"\nroutes:\n  - name: h\n    path: /h\n    provider: hmac\n    secrets: [\"{A}\", \"{B}\"]\n    header: X-Sig\n    prefix: \"sha256=\"\n    payload: \"{{body}}\"\n",
        up.url()
    ));
    let body = format!(r#"{{"event":"paid","n":"{}"}}"#, token()).into_bytes();
    let a = hex::encode(hmac_sha256(A, &[&body]));
    let b = hex::encode(hmac_sha256(B, &[&body]));
    let send = |header: String| post(proxy.port, "/h", &[JSON, ("X-Sig", &header)], &body);

    let first = send(format!("sha256={a},sha256={b}"));
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(up.count(), 1);
    assert_duplicate(
        &send(format!("sha256={b},sha256={a}")),
        &up,
        1,
        "the two signatures swapped",
    );
    assert_duplicate(
        &send(format!("sha256={b}")),
        &up,
        1,
        "only the signature under the new secret",
    );
    assert_duplicate(
        &send(format!("sha256={a}")),
        &up,
        1,
        "only the signature under the old secret",
    );
}

// ------------------------------------------------------------------------------------------
// Hole 8: unbounded parsing before the signature
// ------------------------------------------------------------------------------------------

// Hole 8 (a): a form of hundreds of thousands of fields is refused (`max_body_fields`,
// default 1000) before its signature is computed.
#[test]
fn a_form_with_too_many_fields_is_refused_as_too_large() {
    let up = Upstream::start();
    let proxy = Proxy::start(&format!(
        "upstream: \"{}\"\nmax_body_bytes: 2097152\nroutes:\n  - name: tw\n    path: /tw\n    provider: twilio\n    secrets: [\"twilio-door-auth-token\"]\n    public_url: \"http://example.com/tw\"\n",
        up.url()
    ));
    let body = "a=&".repeat(1024 * 1024 / 3).into_bytes();
    let bogus = b64(&[7u8; 20]);
    let resp = post(
        proxy.port,
        "/tw",
        &[FORM, ("X-Twilio-Signature", &bogus)],
        &body,
    );
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (413, "{\"error\":\"body_too_large\"}"),
        "349,525 form fields"
    );
    assert_eq!(up.count(), 0);
}

/// The process's peak resident set (`VmHWM`), in KiB.
fn peak_rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

// Hole 8 (b): unauthenticated field floods cost bounded memory.
#[test]
fn unsigned_field_floods_cost_bounded_memory() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "max_body_bytes: 2097152", ""));
    // Warm up: one authentic request through every code path.
    assert_eq!(
        post(proxy.port, "/mg", &[JSON], &mg_json(&token())).status,
        200
    );
    let before = peak_rss_kib(proxy.pid());
    let body = "a&".repeat(512 * 1024).into_bytes();
    let port = proxy.port;
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| post(port, "/mg", &[FORM], &body).status))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let after = peak_rss_kib(proxy.pid());
    let growth = after.saturating_sub(before);
    eprintln!(
        "peak RSS (VmHWM): before {before} KiB, after {after} KiB, growth {growth} KiB ({:.1} MiB) for 4 parallel 1 MiB `a&a&...` forms; answers {statuses:?}",
        growth as f64 / 1024.0
    );
    assert_eq!(up.count(), 1, "no flood reached the upstream");
    assert!(
        statuses.len() == 4 && statuses.iter().all(|s| (400..500).contains(s)),
        "{statuses:?}"
    );
    assert!(
        growth < 24 * 1024,
        "peak RSS grew by {growth} KiB (limit 24 MiB) for 4 unauthenticated 1 MiB bodies"
    );
}

// ------------------------------------------------------------------------------------------
// Hole 9: a POST re-sent after the upstream may have processed it
// ------------------------------------------------------------------------------------------

// Hole 9. (tests/core_e2e.rs::a_request_the_upstream_may_have_read_is_never_sent_twice
// asserts the old behaviour, the re-send.)
#[test]
fn a_post_that_may_have_reached_the_app_is_not_resent() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "", ""));
    let first = post(proxy.port, "/mg", &[JSON], &mg_json(&token()));
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(up.connections(), 1, "one pooled connection");

    // The upstream reads the next request whole, then closes without answering.
    up.script([Reply::Reset]);
    let body = mg_json(&token());
    let resp = post(proxy.port, "/mg", &[JSON], &body);
    assert_eq!(
        up.count(),
        2,
        "the POST was sent again after the upstream had read it"
    );
    assert_eq!(
        (resp.status, resp.text().as_str()),
        (502, "{\"error\":\"upstream_unavailable\"}")
    );

    // The provider retries: the key was released.
    let retry = post(proxy.port, "/mg", &[JSON], &body);
    assert_eq!(
        (retry.status, retry.text().as_str()),
        (200, "{\"ok\":true}"),
        "{}",
        proxy.log()
    );
    assert_eq!(up.count(), 3);
}

// ------------------------------------------------------------------------------------------
// Hole 10: a full replay store fails closed
// ------------------------------------------------------------------------------------------

// Hole 10.
#[test]
fn a_full_replay_store_fails_closed() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "replay:\n  max_entries: 4", ""));
    let messages: Vec<Vec<u8>> = (0..5).map(|_| mg_json(&token())).collect();
    for (i, m) in messages[..4].iter().enumerate() {
        let resp = post(proxy.port, "/mg", &[JSON], m);
        assert_eq!(resp.status, 200, "message {}: {}", i + 1, resp.text());
    }
    assert_eq!(up.count(), 4);

    let fifth = post(proxy.port, "/mg", &[JSON], &messages[4]);
    assert_eq!(
        up.count(),
        4,
        "a 5th key was accepted into a full store (one that can still pass its window is forgotten)"
    );
    assert_eq!(
        (fifth.status, fifth.text().as_str()),
        (503, "{\"error\":\"replay_store_full\"}")
    );

    let again = post(proxy.port, "/mg", &[JSON], &messages[0]);
    assert_duplicate(&again, &up, 4, "message 1 after the store filled");
    assert_eq!(
        proxy.metric(&requests_total("mg", "mailgun", "replay_store_full")),
        1.0
    );
}

// ------------------------------------------------------------------------------------------
// Hole 11 (the issue's "answer duplicates the way providers expect")
// ------------------------------------------------------------------------------------------

// Hole 11: a delivered copy is 200 duplicate, counted as replayed.
#[test]
fn a_delivered_copy_is_answered_200_duplicate_and_counted_as_replayed() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "", ""));
    let body = mg_json(&token());
    assert_eq!(post(proxy.port, "/mg", &[JSON], &body).status, 200);
    let replayed = requests_total("mg", "mailgun", "replayed");
    let before = proxy.metric(&replayed);

    let copy = post(proxy.port, "/mg", &[JSON], &body);
    assert_duplicate(&copy, &up, 1, "a delivered message sent again");
    assert_eq!(copy.header("content-type"), Some("application/json"));
    assert_eq!(proxy.metric(&replayed), before + 1.0);
}

// Hole 11: a copy while the first is in flight stays 409; once delivered, a copy is 200.
#[test]
fn an_in_flight_copy_is_409_and_a_later_copy_is_a_duplicate() {
    let up = Upstream::start();
    up.script([Reply::Slow(Duration::from_millis(1500), 200)]);
    let proxy = Proxy::start(&mailgun_config(&up, "", ""));
    let body = mg_json(&token());
    let port = proxy.port;
    let b2 = body.clone();
    let first = std::thread::spawn(move || post(port, "/mg", &[JSON], &b2));
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.count() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let in_flight = post(port, "/mg", &[JSON], &body);
    assert_eq!(
        (in_flight.status, in_flight.text().as_str()),
        (409, "{\"error\":\"replayed\"}"),
        "the first may still fail: the provider must come back"
    );
    assert_eq!(first.join().unwrap().status, 200);
    let later = post(port, "/mg", &[JSON], &body);
    assert_duplicate(&later, &up, 1, "a copy after delivery");
}

// Hole 11: `replay.duplicate_status: 409` keeps 409 for delivered copies.
#[test]
fn duplicate_status_409_restores_409_for_delivered_copies() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "replay:\n  duplicate_status: 409", ""));
    let body = mg_json(&token());
    assert_eq!(post(proxy.port, "/mg", &[JSON], &body).status, 200);
    let copy = post(proxy.port, "/mg", &[JSON], &body);
    assert_eq!(up.count(), 1);
    assert_eq!(
        (copy.status, copy.text().as_str()),
        (409, "{\"error\":\"replayed\"}")
    );
}
