//! Every provider in `providers::REGISTRY` against arbitrary requests: headers (names drawn
//! from the ones providers read, or arbitrary), content type, body, clock. `verify` must never
//! panic, and a request signed by the provider's own `sign` must verify within 5 s (unless
//! the fuzzer changed it afterwards).
//!
//! A new provider needs at most one line in `OPTIONS` (only if it needs more than `secrets`)
//! and, to help the fuzzer, its header names in `KNOWN_HEADERS`.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arbitrary::Arbitrary;
use bytes::Bytes;
use hookguard::body::Body;
use hookguard::providers::{self, mailgun, Inbound, Provider, SignRequest, REGISTRY};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

/// The URL the fuzzed requests are sent to (for providers that sign the URL).
const URL: &str = "http://127.0.0.1:8080/hook?x=1";
const PATH: &str = "/hook?x=1";
/// "Now" for signing: 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000;

/// Route options for providers that need more than `secrets: [...]`, as YAML under a route.
/// Every other provider is built with `DEFAULT_OPTIONS`.
const OPTIONS: &[(&str, &str)] = &[
    ("mailgun", "secrets: [\"fuzz-key-1\", \"fuzz-key-2\"]\ntolerance: 5m"),
    ("standard_webhooks", "secrets: [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]"),
    ("twilio", "secrets: [\"fuzz-key-1\"]\npublic_url: http://127.0.0.1:8080/hook"),
    ("square", "secrets: [\"fuzz-key-1\"]\npublic_url: http://127.0.0.1:8080/hook"),
    ("mandrill", "secrets: [\"fuzz-key-1\"]\npublic_url: http://127.0.0.1:8080/hook"),
    (
        "sendgrid",
        "public_key: MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEeL4AuPhpEEGUWV3Vpj28k4b746w1pBt7uzONFtmmI5F4fJAtyw0ckP07uF1boCa3iZFMMWCwbORmv4Q+xGwtQg==",
    ),
    (
        "discord",
        "public_key: 03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
    ),
    (
        "basic_auth",
        "username: hook\nsecrets: [\"fuzz-key-1\"]",
    ),
    (
        "hmac",
        "secrets: [\"fuzz-key-1\"]\nheader: X-Signature\nalgorithm: sha256\nencoding: hex\n\
         prefix: \"sha256=\"\npayload: \"{timestamp}.{header:x-id}.{url}.{body}\"\n\
         timestamp_header: X-Timestamp\nid_header: X-Id\npublic_url: http://127.0.0.1:8080/hook",
    ),
];
const DEFAULT_OPTIONS: &str = "secrets: [\"fuzz-key-1\", \"fuzz-key-2\"]";

/// Header names providers read; the fuzzer picks from these by index, or names its own.
const KNOWN_HEADERS: &[&str] = &[
    "content-type",
    "stripe-signature",
    "x-hub-signature-256",
    "x-hub-signature",
    "x-github-delivery",
    "x-github-event",
    "x-slack-signature",
    "x-slack-request-timestamp",
    "x-shopify-hmac-sha256",
    "x-shopify-webhook-id",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "svix-id",
    "svix-timestamp",
    "svix-signature",
    "x-twilio-signature",
    "i-twilio-idempotency-token",
    "x-twilio-email-event-webhook-signature",
    "x-twilio-email-event-webhook-timestamp",
    "x-mandrill-signature",
    "paddle-signature",
    "twitch-eventsub-message-id",
    "twitch-eventsub-message-timestamp",
    "twitch-eventsub-message-signature",
    "x-zm-signature",
    "x-zm-request-timestamp",
    "x-square-hmacsha256-signature",
    "x-signature-ed25519",
    "x-signature-timestamp",
    "linear-signature",
    "linear-delivery",
    "x-postmark-signature",
    "x-signature",
    "x-timestamp",
    "x-webhook-id",
    "x-id",
    "authorization",
    "x-twilio-webhooks-signature-settings",
    "x-gitlab-token",
    "x-delivery",
];

fn built() -> &'static [(&'static str, Arc<dyn Provider>)] {
    static BUILT: OnceLock<Vec<(&'static str, Arc<dyn Provider>)>> = OnceLock::new();
    BUILT.get_or_init(|| {
        REGISTRY
            .iter()
            .map(|entry| {
                let yaml = OPTIONS
                    .iter()
                    .find(|(n, _)| *n == entry.name)
                    .map_or(DEFAULT_OPTIONS, |(_, y)| y);
                let value: serde_yaml::Value = serde_yaml::from_str(yaml).expect("options YAML");
                match (entry.build)(value) {
                    Ok(p) => (entry.name, p),
                    Err(_) => panic!(
                        "fuzz/fuzz_targets/providers.rs: provider `{}` needs a line in OPTIONS",
                        entry.name
                    ),
                }
            })
            .collect()
    })
}

#[derive(Arbitrary, Debug)]
enum Name {
    Known(u8),
    Raw(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    provider: u8,
    /// Sign the body with the provider's own `sign` first, then apply the changes below.
    sign_first: bool,
    content_type: Option<String>,
    headers: Vec<(Name, Vec<u8>)>,
    /// Seconds between signing and verifying.
    skew: i32,
    body: Vec<u8>,
}

fn at(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

fuzz_target!(|input: Input| {
    let providers = built();
    if providers.is_empty() {
        return;
    }
    let (name, provider) = &providers[input.provider as usize % providers.len()];

    let mut headers = HeaderMap::new();
    let mut body = input.body.clone();
    let mut content_type = input.content_type.clone();
    let mut signed = false;
    let mut path = PATH.to_owned();
    if input.sign_first {
        let req = SignRequest {
            body: &input.body,
            url: URL,
        };
        if let Ok(s) = provider.sign(&req, at(T0 as i64)) {
            for (n, v) in &s.headers {
                headers.append(
                    HeaderName::from_bytes(n.as_bytes()).expect("sign gives valid header names"),
                    HeaderValue::from_str(v).expect("sign gives valid header values"),
                );
            }
            body = s.body;
            content_type = content_type.or(Some(s.content_type));
            // Where the signature covers a query of its own (Twilio's `bodySHA256`), the
            // request goes to that query instead, as `hookguard sign` sends it.
            if let Some(q) = s.query {
                path = format!("{}?{q}", PATH.split('?').next().unwrap_or(PATH));
            }
            signed = true;
        }
    }
    let untouched = signed && input.headers.is_empty() && input.content_type.is_none();
    for (n, v) in &input.headers {
        let name = match n {
            Name::Known(i) => {
                HeaderName::from_static(KNOWN_HEADERS[*i as usize % KNOWN_HEADERS.len()])
            }
            Name::Raw(s) => match HeaderName::from_bytes(s.as_bytes()) {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        let Ok(value) = HeaderValue::from_bytes(v) else {
            continue;
        };
        headers.append(name, value);
    }
    if let Some(ct) = &content_type {
        if let Ok(v) = HeaderValue::from_str(ct) {
            headers.insert(http::header::CONTENT_TYPE, v);
        }
    }
    let ct_header = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = Body::new(Bytes::from(body), ct_header.as_deref());
    let inbound = Inbound {
        path_and_query: &path,
        headers: &headers,
        body: &body,
        client_ip: Some(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    };
    let now = T0 as i64 + i64::from(input.skew);
    let verdict = provider.verify(&inbound, at(now));
    if *name == "mailgun" {
        let _ = mailgun::material(&body);
    }
    if let Ok(v) = &verdict {
        let _ = providers::unix_now(at(now));
        assert!(
            v.remember_for > Duration::ZERO,
            "{name}: a key is remembered"
        );
    }
    // A request exactly as the provider signed it, verified within 5 s (the smallest default
    // tolerance: Paddle's), passes.
    if untouched && input.skew.unsigned_abs() <= 5 {
        assert!(
            verdict.is_ok(),
            "{name}: its own signature does not verify: {verdict:?}"
        );
    }
});
