//! The adversarial model: an attacker who captured genuine requests, against the real binary.
//!
//! Each case makes a few authentic messages (Mailgun on two routes sharing a signing key,
//! Stripe with a rotated secret on two routes, GitHub, Shopify, Twilio, the generic `hmac`
//! with two signatures, Standard Webhooks), then plays a random sequence of steps: the
//! provider's own deliveries (some of which the upstream fails with a 500) interleaved with an
//! attacker's variants of requests already sent (so already captured): exact copies; unsigned
//! headers dropped, changed, duplicated or respelt (`X_Webhook_Id`); a sibling route with the
//! same provider and secret; the signatures reordered or one dropped; Mailgun's unsigned
//! `event-data` replaced.
//!
//! What must hold, checked after every step against what the upstream recorded:
//! - each message is accepted by the upstream (answered 2xx) at most once;
//! - the upstream never receives a body the signature does not vouch for (every body it gets
//!   is one of the authentic messages, normalized), nor a spelling of `X-Webhook-*` it did not
//!   get from hookguard;
//! - a provider's retry after a failed delivery goes through: once the provider has sent a
//!   message and the upstream did not fail it, the message has been accepted exactly once.
//!
//! The server runs in-process, configured with the typed `TestConfig`. `cargo test` runs 48
//! cases; `HOOKGUARD_MODEL_CASES=2000 cargo test --release --test
//! adversary_model` (or `scripts/adversary_model.sh`) a larger run.
//!
//! Longer than 500 lines: a signer per provider, the attacker's variants and the oracle, which
//! only make sense together.

mod common;

use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sha1::Sha1;
use sha2::Sha256;

const MG: &str = "model-mailgun-signing-key";
const ST_OLD: &str = "whsec_model_old_secret";
const ST_NEW: &str = "whsec_model_new_secret";
const GH: &str = "model-github-secret";
const SH: &str = "model-shopify-secret";
const TW: &str = "model-twilio-token";
const TW_URL: &str = "https://hooks.example.com/model/twilio";
const HM_A: &str = "model-hmac-a";
const HM_B: &str = "model-hmac-b";
/// `whsec_` + base64 of 24 bytes.
const SW: &str = "whsec_bW9kZWwtc3RhbmRhcmQtd2ViaG9va3M=";
const SW_BYTES: &[u8] = b"model-standard-webhooks";

fn config(up: &Upstream) -> TestConfig {
    TestConfig::new(up)
        .route(TestRoute::mailgun("mg1", "/mg1", MG))
        .route(TestRoute::mailgun("mg2", "/mg2", MG))
        .route(TestRoute::new("st-both", "/st-both", "stripe").secrets(&[ST_OLD, ST_NEW]))
        .route(TestRoute::new("st-old", "/st-old", "stripe").secrets(&[ST_OLD]))
        .route(TestRoute::new("gh", "/gh", "github").secrets(&[GH]))
        .route(TestRoute::new("sh", "/sh", "shopify").secrets(&[SH]))
        .route(
            TestRoute::new("tw", "/tw", "twilio")
                .secrets(&[TW])
                .set("public_url", TW_URL),
        )
        .route(
            TestRoute::new("hm", "/hm", "hmac")
                .secrets(&[HM_A, HM_B])
                .set("header", "X-Sig")
                .set("prefix", "sha256="),
        )
        .route(TestRoute::new("sw", "/sw", "standard_webhooks").secrets(&[SW]))
}

fn hmac256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mailgun,
    Stripe,
    GitHub,
    Shopify,
    Twilio,
    Hmac,
    StandardWebhooks,
}

const KINDS: [Kind; 7] = [
    Kind::Mailgun,
    Kind::Stripe,
    Kind::GitHub,
    Kind::Shopify,
    Kind::Twilio,
    Kind::Hmac,
    Kind::StandardWebhooks,
];

/// One authentic message, as the provider sends it.
#[derive(Debug, Clone)]
struct Msg {
    kind: Kind,
    path: &'static str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// What the upstream must receive as the body (normalized JSON).
    normalized: serde_json::Value,
    /// Headers the provider does not sign.
    unsigned: &'static [&'static str],
    /// Where several signatures are carried: header name, the signatures, how they join.
    signatures: Option<(&'static str, Vec<String>, &'static str)>,
    /// A route with the same provider and secret, and the request as it would be sent there.
    sibling: Option<(&'static str, Vec<(String, String)>)>,
}

fn message(kind: Kind, n: &str) -> Msg {
    let ts = now();
    let event = format!(r#"{{"id":"evt_{n}","type":"model.event","data":{{"n":"{n}"}}}}"#);
    let json_ct = ("Content-Type".to_owned(), "application/json".to_owned());
    let normalized = |b: &[u8]| serde_json::from_slice(b).expect("JSON");
    match kind {
        Kind::Mailgun => {
            let token = format!("tok{n}");
            let body = mg_json_at(MG, ts, &token, "delivered");
            Msg {
                kind,
                path: "/mg1",
                headers: vec![json_ct.clone()],
                normalized: normalized(&body),
                body,
                unsigned: &["User-Agent"],
                signatures: None,
                sibling: Some(("/mg2", vec![json_ct])),
            }
        }
        Kind::Stripe => {
            let body = event.into_bytes();
            let sig = |k: &str| {
                hex::encode(hmac256(
                    k.as_bytes(),
                    &[ts.to_string().as_bytes(), b".", &body],
                ))
            };
            let (old, new) = (sig(ST_OLD), sig(ST_NEW));
            let header = format!("t={ts},v1={old},v1={new}");
            Msg {
                kind,
                path: "/st-both",
                headers: vec![json_ct.clone(), ("Stripe-Signature".into(), header)],
                normalized: normalized(&body),
                body,
                unsigned: &["User-Agent"],
                signatures: Some((
                    "Stripe-Signature",
                    vec![format!("t={ts}"), format!("v1={old}"), format!("v1={new}")],
                    ",",
                )),
                sibling: Some((
                    "/st-old",
                    vec![
                        json_ct,
                        ("Stripe-Signature".into(), format!("t={ts},v1={old}")),
                    ],
                )),
            }
        }
        Kind::GitHub => {
            let body = event.into_bytes();
            let sig = format!("sha256={}", hex::encode(hmac256(GH.as_bytes(), &[&body])));
            Msg {
                kind,
                path: "/gh",
                headers: vec![
                    json_ct,
                    ("X-Hub-Signature-256".into(), sig),
                    ("X-GitHub-Delivery".into(), format!("d-{n}")),
                    ("X-GitHub-Event".into(), "push".into()),
                ],
                normalized: normalized(&body),
                body,
                unsigned: &["X-GitHub-Delivery", "X-GitHub-Event"],
                signatures: None,
                sibling: None,
            }
        }
        Kind::Shopify => {
            let body = event.into_bytes();
            let sig = b64(&hmac256(SH.as_bytes(), &[&body]));
            Msg {
                kind,
                path: "/sh",
                headers: vec![
                    json_ct,
                    ("X-Shopify-Hmac-Sha256".into(), sig),
                    ("X-Shopify-Webhook-Id".into(), format!("w-{n}")),
                    ("X-Shopify-Topic".into(), "orders/create".into()),
                ],
                normalized: normalized(&body),
                body,
                unsigned: &["X-Shopify-Webhook-Id", "X-Shopify-Topic"],
                signatures: None,
                sibling: None,
            }
        }
        Kind::Twilio => {
            let sid = format!("SM{n}");
            let body = format!("Body=hi&MessageSid={sid}").into_bytes();
            let signed = format!("{TW_URL}BodyhiMessageSid{sid}");
            let mut mac = Hmac::<Sha1>::new_from_slice(TW.as_bytes()).unwrap();
            mac.update(signed.as_bytes());
            let sig = b64(&mac.finalize().into_bytes());
            Msg {
                kind,
                path: "/tw",
                headers: vec![
                    (
                        "Content-Type".into(),
                        "application/x-www-form-urlencoded".into(),
                    ),
                    ("X-Twilio-Signature".into(), sig),
                    ("I-Twilio-Idempotency-Token".into(), format!("i-{n}")),
                ],
                normalized: serde_json::json!({"Body": "hi", "MessageSid": sid}),
                body,
                unsigned: &["I-Twilio-Idempotency-Token"],
                signatures: None,
                sibling: None,
            }
        }
        Kind::Hmac => {
            let body = event.into_bytes();
            let a = hex::encode(hmac256(HM_A.as_bytes(), &[&body]));
            let b = hex::encode(hmac256(HM_B.as_bytes(), &[&body]));
            Msg {
                kind,
                path: "/hm",
                headers: vec![
                    json_ct,
                    ("X-Sig".into(), format!("sha256={a},sha256={b}")),
                    ("X-Event".into(), "created".into()),
                ],
                normalized: normalized(&body),
                body,
                unsigned: &["X-Event"],
                signatures: Some((
                    "X-Sig",
                    vec![format!("sha256={a}"), format!("sha256={b}")],
                    ",",
                )),
                sibling: None,
            }
        }
        Kind::StandardWebhooks => {
            let body = event.into_bytes();
            let id = format!("msg_{n}");
            let sig = b64(&hmac256(
                SW_BYTES,
                &[id.as_bytes(), b".", ts.to_string().as_bytes(), b".", &body],
            ));
            Msg {
                kind,
                path: "/sw",
                headers: vec![
                    json_ct,
                    ("webhook-id".into(), id),
                    ("webhook-timestamp".into(), ts.to_string()),
                    ("webhook-signature".into(), format!("v1,{sig}")),
                    ("X-Source".into(), "model".into()),
                ],
                normalized: normalized(&body),
                body,
                unsigned: &["X-Source"],
                signatures: None,
                sibling: None,
            }
        }
    }
}

/// What an attacker does with a captured request.
#[derive(Debug, Clone, Copy)]
enum Variant {
    Copy,
    DropUnsigned,
    ChangeUnsigned,
    DuplicateUnsigned,
    RespellAsserted,
    SiblingRoute,
    ReorderSignatures,
    DropOneSignature,
    ForgeUnsignedBody,
}

const VARIANTS: [Variant; 9] = [
    Variant::Copy,
    Variant::DropUnsigned,
    Variant::ChangeUnsigned,
    Variant::DuplicateUnsigned,
    Variant::RespellAsserted,
    Variant::SiblingRoute,
    Variant::ReorderSignatures,
    Variant::DropOneSignature,
    Variant::ForgeUnsignedBody,
];

#[derive(Debug, Clone, Copy)]
enum Step {
    /// The provider sends message `m`; the upstream fails it when `fail`.
    Provider { m: usize, fail: bool },
    /// The attacker sends variant `v` of message `m` (only once the provider has sent it).
    Attacker { m: usize, v: Variant },
}

fn steps(messages: usize) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        (0..messages, any::<bool>()).prop_map(|(m, fail)| Step::Provider { m, fail }),
        (0..messages, 0..VARIANTS.len()).prop_map(|(m, v)| Step::Attacker { m, v: VARIANTS[v] }),
    ];
    proptest::collection::vec(step, 4..24)
}

/// A request the attacker sends.
struct Forged {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body is one the signature does not vouch for.
    forged_body: bool,
}

/// The request an attacker sends, or `None` when the variant does not apply to the message.
fn variant(msg: &Msg, v: Variant) -> Option<Forged> {
    let mut headers = msg.headers.clone();
    let mut path = msg.path.to_owned();
    let mut body = msg.body.clone();
    let mut forged = false;
    let first_unsigned = msg.unsigned.first().copied();
    match v {
        Variant::Copy => {}
        Variant::DropUnsigned => {
            let name = first_unsigned?;
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        }
        Variant::ChangeUnsigned => {
            let name = first_unsigned?;
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            headers.push((name.into(), "attacker-chose-this".into()));
        }
        Variant::DuplicateUnsigned => {
            let name = first_unsigned?;
            headers.push((name.into(), "second-copy".into()));
        }
        Variant::RespellAsserted => {
            headers.push(("X_Webhook_Id".into(), "evil".into()));
            headers.push(("X_WEBHOOK_ROUTE".into(), "evil".into()));
            headers.push(("X-Webhook-Provider".into(), "evil".into()));
            headers.push(("X_Forwarded_For".into(), "6.6.6.6".into()));
        }
        Variant::SiblingRoute => {
            let (p, h) = msg.sibling.clone()?;
            path = p.into();
            headers = h;
        }
        Variant::ReorderSignatures | Variant::DropOneSignature => {
            let (name, parts, sep) = msg.signatures.clone()?;
            let mut parts = parts;
            // Keep a leading `t=` in place; reorder or drop among the signatures.
            let fixed = usize::from(parts[0].starts_with("t="));
            match v {
                Variant::ReorderSignatures => parts[fixed..].reverse(),
                _ => {
                    parts.remove(fixed);
                }
            }
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            headers.push((name.into(), parts.join(sep)));
        }
        Variant::ForgeUnsignedBody => {
            if msg.kind != Kind::Mailgun {
                return None;
            }
            let mut doc: serde_json::Value = serde_json::from_slice(&body).ok()?;
            doc["event-data"] =
                serde_json::json!({"event": "failed", "recipient": "evil@example.com"});
            body = serde_json::to_vec(&doc).ok()?;
            forged = true;
        }
    }
    Some(Forged {
        path,
        headers,
        body,
        forged_body: forged,
    })
}

/// Checks what the upstream received since the start of the case: only authentic bodies, no
/// respelt `X-Webhook-*`, and each message accepted at most once. Returns acceptances by
/// message.
fn audit(up: &Upstream, from: usize, msgs: &[Msg], accepted_at: &[bool]) -> Vec<usize> {
    let mut accepted = vec![0usize; msgs.len()];
    for (i, r) in up.received().iter().enumerate().skip(from) {
        let body: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON upstream body");
        let m = msgs
            .iter()
            .position(|m| m.normalized == body)
            .unwrap_or_else(|| panic!("the upstream got a body no signature vouches for: {body}"));
        for (name, _) in &r.headers {
            let c = name.to_ascii_lowercase().replace('_', "-");
            assert!(
                (!c.starts_with("x-webhook-") && c != "x-forwarded-for") || *name == c,
                "a respelt `{name}` reached the upstream"
            );
        }
        assert_eq!(r.header_count("x-webhook-id"), 1);
        if accepted_at[i] {
            accepted[m] += 1;
        }
    }
    for (m, n) in accepted.iter().enumerate() {
        assert!(
            *n <= 1,
            "message {m} ({:?}) accepted {n} times",
            msgs[m].kind
        );
    }
    accepted
}

fn play(proxy: &InProcess, up: &Upstream, kinds: &[Kind], steps: &[Step]) {
    static CASE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let case = CASE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let msgs: Vec<Msg> = kinds
        .iter()
        .enumerate()
        .map(|(i, k)| message(*k, &format!("{}x{case}x{i}", token())))
        .collect();
    let from = up.count();
    // Whether each upstream receipt (by index) was answered 2xx.
    let mut accepted_at: Vec<bool> = vec![false; from];
    let mut sent = vec![false; msgs.len()];
    // The provider sent the message and the upstream did not fail that attempt.
    let mut settled = vec![false; msgs.len()];
    for step in steps {
        let before = up.count();
        let (resp, failing) = match *step {
            Step::Provider { m, fail } => {
                if fail {
                    up.script([Reply::Status(500, "{\"down\":true}")]);
                }
                let h: Vec<(&str, &str)> = msgs[m]
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let resp = post(proxy.port, msgs[m].path, &h, &msgs[m].body);
                sent[m] = true;
                (resp, fail)
            }
            Step::Attacker { m, v } => {
                if !sent[m] {
                    continue; // nothing captured yet
                }
                let Some(Forged {
                    path,
                    headers,
                    body,
                    forged_body: forged,
                }) = variant(&msgs[m], v)
                else {
                    continue;
                };
                let h: Vec<(&str, &str)> = headers
                    .iter()
                    .map(|(n, v)| (n.as_str(), v.as_str()))
                    .collect();
                let resp = post(proxy.port, &path, &h, &body);
                if forged {
                    assert_eq!(
                        up.count(),
                        before,
                        "a forged Mailgun body reached the upstream"
                    );
                }
                (resp, false)
            }
        };
        up.clear_script();
        let reached = up.count() - before;
        assert!(reached <= 1, "one request, {reached} upstream receipts");
        if reached == 1 {
            // The upstream answered 500 when told to fail, else 200.
            accepted_at.push(!failing);
        }
        let accepted = audit(up, from, &msgs, &accepted_at);
        if let Step::Provider { m, fail } = *step {
            if !fail {
                settled[m] = true;
            }
            if settled[m] {
                assert_eq!(
                    resp.status,
                    200,
                    "the provider's delivery of {:?}: {}",
                    msgs[m].kind,
                    resp.text()
                );
            }
        }
        for (m, done) in settled.iter().enumerate() {
            if *done {
                assert_eq!(
                    accepted[m], 1,
                    "{:?} sent by the provider and not failed, so delivered once",
                    msgs[m].kind
                );
            }
        }
    }
}

#[test]
fn captured_requests_never_reach_the_app_twice_nor_forged() {
    let up = Upstream::start();
    let proxy = InProcess::start(&config(&up));
    let cases = std::env::var("HOOKGUARD_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(48);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy = proptest::collection::vec(0..KINDS.len(), 1..4).prop_flat_map(|kinds| {
        let n = kinds.len();
        (Just(kinds), steps(n))
    });
    let result = runner.run(&strategy, |(kinds, steps)| {
        let kinds: Vec<Kind> = kinds.iter().map(|k| KINDS[*k]).collect();
        play(&proxy, &up, &kinds, &steps);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
