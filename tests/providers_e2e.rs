//! The providers end to end: the real binary between a raw HTTP client and a real upstream.
//! Signatures here are computed with the `hmac`, `sha2`, `p256` and `base64` crates directly,
//! independently of hookguard's provider code.
//!
//! Longer than 500 lines: one end-to-end test per provider, each with the signing code it
//! needs.

mod common;

use std::process::Command;

use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

const STRIPE_KEY: &str = "whsec_e2e_stripe_signing_secret";
const GITHUB_KEY: &str = "e2e-github-webhook-secret";
/// `whsec_` + base64("e2e-standard-webhooks-key-32byte").
const STD_KEY: &str = "whsec_ZTJlLXN0YW5kYXJkLXdlYmhvb2tzLWtleS0zMmJ5dGU=";
const STD_KEY_BYTES: &[u8] = b"e2e-standard-webhooks-key-32byte";
const TWILIO_TOKEN: &str = "e2e-twilio-auth-token";
const TWILIO_URL: &str = "https://hooks.example.com/twilio/sms";
const ZOOM_KEY: &str = "e2e-zoom-secret-token";
/// A fixed P-256 scalar for the SendGrid test key (the real one stays with SendGrid).
const SENDGRID_SCALAR: [u8; 32] = [7; 32];

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn hmac256(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn hmac1(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha1>::new_from_slice(key).unwrap();
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().to_vec()
}

fn sendgrid_key() -> p256::ecdsa::SigningKey {
    p256::ecdsa::SigningKey::from_slice(&SENDGRID_SCALAR).unwrap()
}

fn sendgrid_public_der_b64() -> String {
    use p256::pkcs8::EncodePublicKey;
    b64(sendgrid_key()
        .verifying_key()
        .to_public_key_der()
        .unwrap()
        .as_bytes())
}

/// One proxy with a route per provider under test.
fn providers_proxy(up: &Upstream) -> Proxy {
    Proxy::start(&format!(
        r#"upstream: "{up}"
routes:
  - name: stripe
    path: /stripe
    provider: stripe
    secrets: ["whsec_old_rotated_out", "{STRIPE_KEY}"]
  - name: github
    path: /github
    provider: github
    secrets: ["{GITHUB_KEY}"]
  - name: std
    path: /std
    provider: standard_webhooks
    secrets: ["{STD_KEY}"]
  - name: svix
    path: /svix
    provider: svix
    secrets: ["{STD_KEY}"]
  - name: twilio
    path: /twilio
    provider: twilio
    secrets: ["{TWILIO_TOKEN}"]
    public_url: "{TWILIO_URL}"
  - name: sendgrid
    path: /sendgrid
    provider: sendgrid
    public_key: "{sg}"
  - name: zoom
    path: /zoom
    provider: zoom
    secrets: ["{ZOOM_KEY}"]
"#,
        up = up.url(),
        sg = sendgrid_public_der_b64(),
    ))
}

fn stripe_header(key: &str, t: u64, body: &[u8]) -> (String, String) {
    let v1 = hex::encode(hmac256(
        key.as_bytes(),
        &[t.to_string().as_bytes(), b".", body],
    ));
    (format!("t={t},v1={v1}"), format!("{t}.{v1}"))
}

fn event(id: &str) -> Vec<u8> {
    format!(r#"{{"id": "{id}", "type": "test.event", "data": {{"n": 1}}}}"#).into_bytes()
}

/// Asserts a rejection's status and code.
fn rejected(resp: &HttpResponse, status: u16, code: &str) {
    assert_eq!(
        (resp.status, resp.error().as_str()),
        (status, code),
        "{}",
        resp.text()
    );
}

#[test]
fn stripe_forwarded_forged_rejected_and_malformed_body_releases_its_key() {
    let up = Upstream::start();
    let proxy = providers_proxy(&up);
    let body = event(&token());
    let t = now();
    let (header, key) = stripe_header(STRIPE_KEY, t, &body);
    let resp = post(
        proxy.port,
        "/stripe",
        &[JSON, ("Stripe-Signature", &header)],
        &body,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = up.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].header("x-webhook-id"), Some(key.as_str()));
    assert_eq!(got[0].header("x-webhook-provider"), Some("stripe"));
    assert_eq!(
        got[0].header("x-webhook-timestamp"),
        Some(t.to_string().as_str())
    );

    // The same delivery again: replayed.
    let again = post(
        proxy.port,
        "/stripe",
        &[JSON, ("Stripe-Signature", &header)],
        &body,
    );
    assert_duplicate(&again);

    // Forged: another secret, a tampered body, an old timestamp, no header.
    let (forged, _) = stripe_header("whsec_attacker", t, &body);
    rejected(
        &post(
            proxy.port,
            "/stripe",
            &[JSON, ("Stripe-Signature", &forged)],
            &body,
        ),
        401,
        "bad_signature",
    );
    let tampered = event("evt_attacker");
    rejected(
        &post(
            proxy.port,
            "/stripe",
            &[JSON, ("Stripe-Signature", &header)],
            &tampered,
        ),
        401,
        "bad_signature",
    );
    let (old, _) = stripe_header(STRIPE_KEY, t - 3600, &body);
    rejected(
        &post(
            proxy.port,
            "/stripe",
            &[JSON, ("Stripe-Signature", &old)],
            &body,
        ),
        401,
        "stale_timestamp",
    );
    rejected(
        &post(proxy.port, "/stripe", &[JSON], &body),
        401,
        "missing_signature",
    );

    // Correctly signed, declared JSON, not JSON: 400 malformed_body, and the key is released,
    // so the same request gets 400 again rather than 409.
    let broken = b"{\"id\": \"evt_broken\", ".to_vec();
    let (bh, _) = stripe_header(STRIPE_KEY, t, &broken);
    rejected(
        &post(
            proxy.port,
            "/stripe",
            &[JSON, ("Stripe-Signature", &bh)],
            &broken,
        ),
        400,
        "malformed_body",
    );
    rejected(
        &post(
            proxy.port,
            "/stripe",
            &[JSON, ("Stripe-Signature", &bh)],
            &broken,
        ),
        400,
        "malformed_body",
    );
    assert_eq!(up.count(), 1, "no rejected request reached the upstream");
}

#[test]
fn github_forwarded_with_its_signature_as_id_and_forgery_rejected() {
    let up = Upstream::start();
    let proxy = providers_proxy(&up);
    let body = event(&token());
    let sig = format!(
        "sha256={}",
        hex::encode(hmac256(GITHUB_KEY.as_bytes(), &[&body]))
    );
    let delivery = format!("d-{}", token());
    let headers = [
        JSON,
        ("X-GitHub-Event", "push"),
        ("X-GitHub-Delivery", delivery.as_str()),
        ("X-Hub-Signature-256", sig.as_str()),
    ];
    assert_eq!(post(proxy.port, "/github", &headers, &body).status, 200);
    let got = up.received();
    assert_eq!(
        got[0].header("x-webhook-id"),
        Some(sig.trim_start_matches("sha256="))
    );
    assert_eq!(got[0].header("x-github-delivery"), Some(delivery.as_str()));
    assert_eq!(got[0].header("x-webhook-timestamp"), None);
    assert_eq!(got[0].header("x-github-event"), Some("push"));
    assert_duplicate(&post(proxy.port, "/github", &headers, &body));

    let forged_sig = format!("sha256={}", hex::encode(hmac256(b"guess", &[&body])));
    let forged = [
        JSON,
        ("X-GitHub-Delivery", "d-forged"),
        ("X-Hub-Signature-256", forged_sig.as_str()),
    ];
    rejected(
        &post(proxy.port, "/github", &forged, &body),
        401,
        "bad_signature",
    );
    let dup = [
        JSON,
        ("X-GitHub-Delivery", "d-dup"),
        ("X-Hub-Signature-256", sig.as_str()),
        ("X-Hub-Signature-256", sig.as_str()),
    ];
    rejected(
        &post(proxy.port, "/github", &dup, &body),
        401,
        "missing_signature",
    );
    assert_eq!(up.count(), 1);
}

fn std_headers(id: &str, ts: u64, body: &[u8]) -> String {
    let mac = hmac256(
        STD_KEY_BYTES,
        &[id.as_bytes(), b".", ts.to_string().as_bytes(), b".", body],
    );
    format!("v1,{}", b64(&mac))
}

#[test]
fn standard_webhooks_and_svix_forwarded_with_the_message_id() {
    let up = Upstream::start();
    let proxy = providers_proxy(&up);
    let body = event(&token());
    let ts = now();
    let id = format!("msg_{}", token());
    let sig = std_headers(&id, ts, &body);
    // Two signatures, the first from a retired key: the second matches.
    let both = format!("v1,{} {sig}", b64(&[0u8; 32]));
    let ts_text = ts.to_string();
    let h = [
        JSON,
        ("webhook-id", id.as_str()),
        ("webhook-timestamp", ts_text.as_str()),
        ("webhook-signature", both.as_str()),
    ];
    assert_eq!(post(proxy.port, "/std", &h, &body).status, 200);
    let svix_id = format!("msg_{}", token());
    let svix_sig = std_headers(&svix_id, ts, &body);
    let s = [
        JSON,
        ("svix-id", svix_id.as_str()),
        ("svix-timestamp", ts_text.as_str()),
        ("svix-signature", svix_sig.as_str()),
    ];
    assert_eq!(post(proxy.port, "/svix", &s, &body).status, 200);
    let got = up.received();
    assert_eq!(got[0].header("x-webhook-id"), Some(id.as_str()));
    assert_eq!(got[1].header("x-webhook-id"), Some(svix_id.as_str()));
    assert_eq!(
        got[1].header("x-webhook-provider"),
        Some("standard_webhooks")
    );

    // Forged: the id is signed, so a fresh id on a captured signature fails.
    let forged = [
        JSON,
        ("webhook-id", "msg_new"),
        ("webhook-timestamp", ts_text.as_str()),
        ("webhook-signature", sig.as_str()),
    ];
    rejected(
        &post(proxy.port, "/std", &forged, &body),
        401,
        "bad_signature",
    );
    assert_eq!(up.count(), 2);
}

#[test]
fn twilio_form_forwarded_named_by_its_signature() {
    let up = Upstream::start();
    let proxy = providers_proxy(&up);
    let sid = format!("SM{}", token());
    let form = format!("MessageSid={sid}&From=%2B15551230000&To=%2B15559870000&Body=Hello+there");
    // URL (with the request's query) + fields sorted by name, each name then its value.
    let url = format!("{TWILIO_URL}?account=a1");
    let signed = format!("{url}BodyHello thereFrom+15551230000MessageSid{sid}To+15559870000");
    let sig = b64(&hmac1(TWILIO_TOKEN.as_bytes(), &[signed.as_bytes()]));
    let idem = token();
    let h = [
        FORM,
        ("X-Twilio-Signature", sig.as_str()),
        ("I-Twilio-Idempotency-Token", idem.as_str()),
    ];
    let resp = post(proxy.port, "/twilio?account=a1", &h, form.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = up.received();
    assert_eq!(got[0].header("x-webhook-id"), Some(sig.as_str()));
    assert_eq!(
        got[0].header("i-twilio-idempotency-token"),
        Some(idem.as_str())
    );
    assert_eq!(got[0].json()["MessageSid"], sid.as_str());

    // The query string is signed; the fields are signed.
    rejected(
        &post(proxy.port, "/twilio?account=a2", &h, form.as_bytes()),
        401,
        "bad_signature",
    );
    let more = format!("{form}&Extra=1");
    rejected(
        &post(proxy.port, "/twilio?account=a1", &h, more.as_bytes()),
        401,
        "bad_signature",
    );
    assert_eq!(up.count(), 1);
}

#[test]
fn sendgrid_ecdsa_forwarded_and_forgery_rejected() {
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    let up = Upstream::start();
    let proxy = providers_proxy(&up);
    let body = format!(
        r#"[{{"email":"a@example.com","event":"delivered","sg_event_id":"{}"}}]"#,
        token()
    )
    .into_bytes();
    let ts = now().to_string();
    let digest = Sha256::new()
        .chain_update(ts.as_bytes())
        .chain_update(&body)
        .finalize();
    let sig: p256::ecdsa::Signature = sendgrid_key().sign_prehash(&digest).unwrap();
    let sig_b64 = b64(sig.to_der().as_bytes());
    let h = [
        JSON,
        ("X-Twilio-Email-Event-Webhook-Signature", sig_b64.as_str()),
        ("X-Twilio-Email-Event-Webhook-Timestamp", ts.as_str()),
    ];
    let resp = post(proxy.port, "/sendgrid", &h, &body);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let got = up.received();
    let low_s = sig.normalize_s().unwrap_or(sig);
    assert_eq!(
        got[0].header("x-webhook-id"),
        Some(format!("{ts}.{}", b64(&low_s.to_bytes())).as_str())
    );
    // The high-S twin of the same signature is the same delivery.
    let (r, s) = sig.split_scalars();
    let twin = p256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
    let twin_b64 = b64(twin.to_der().as_bytes());
    let h2 = [
        JSON,
        ("X-Twilio-Email-Event-Webhook-Signature", twin_b64.as_str()),
        ("X-Twilio-Email-Event-Webhook-Timestamp", ts.as_str()),
    ];
    assert_duplicate(&post(proxy.port, "/sendgrid", &h2, &body));

    let other = p256::ecdsa::SigningKey::from_slice(&[9; 32]).unwrap();
    let forged: p256::ecdsa::Signature = other.sign_prehash(&digest).unwrap();
    let forged_b64 = b64(forged.to_der().as_bytes());
    let h3 = [
        JSON,
        (
            "X-Twilio-Email-Event-Webhook-Signature",
            forged_b64.as_str(),
        ),
        ("X-Twilio-Email-Event-Webhook-Timestamp", ts.as_str()),
    ];
    rejected(
        &post(proxy.port, "/sendgrid", &h3, &body),
        401,
        "bad_signature",
    );
    assert_eq!(up.count(), 1);
}

#[test]
fn zoom_url_validation_is_answered_by_the_proxy() {
    let up = Upstream::start();
    let proxy = providers_proxy(&up);
    let body = br#"{"payload":{"plainToken":"qgg8vlvZRS6UYooatFL8Aw"},"event_ts":1654503849680,"event":"endpoint.url_validation"}"#;
    let ts = now().to_string();
    let sig = format!(
        "v0={}",
        hex::encode(hmac256(
            ZOOM_KEY.as_bytes(),
            &[b"v0:", ts.as_bytes(), b":", body]
        ))
    );
    let h = [
        JSON,
        ("x-zm-request-timestamp", ts.as_str()),
        ("x-zm-signature", sig.as_str()),
    ];
    let resp = post(proxy.port, "/zoom", &h, body);
    assert_eq!(resp.status, 200, "{}", resp.text());
    let doc: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(doc["plainToken"], "qgg8vlvZRS6UYooatFL8Aw");
    assert_eq!(
        doc["encryptedToken"],
        hex::encode(hmac256(ZOOM_KEY.as_bytes(), &[b"qgg8vlvZRS6UYooatFL8Aw"])).as_str()
    );
    assert_eq!(up.count(), 0, "the challenge never reaches the upstream");
    let forged = [
        JSON,
        ("x-zm-request-timestamp", ts.as_str()),
        ("x-zm-signature", "v0=00"),
    ];
    rejected(
        &post(proxy.port, "/zoom", &forged, body),
        401,
        "missing_signature",
    );
}

/// `hookguard sign` prints a curl command; run it against the running proxy.
fn sign_and_send(proxy: &Proxy, route: &str, body: &str) -> String {
    let file = proxy.dir.path().join(format!("{route}.body"));
    std::fs::write(&file, body).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hookguard"))
        .arg("sign")
        .arg("--config")
        .arg(proxy.config_path())
        .args(["--route", route, "--body"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{route}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cmd = String::from_utf8(out.stdout).unwrap();
    assert!(cmd.starts_with("curl "), "{cmd}");
    let run = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
    String::from_utf8_lossy(&run.stdout).into_owned()
}

#[test]
fn hookguard_sign_output_is_forwarded_for_every_hmac_provider() {
    let up = Upstream::start();
    let secret_routes = [
        ("stripe", ""),
        ("github", ""),
        ("slack", ""),
        ("shopify", ""),
        ("standard_webhooks", ""),
        ("twilio", "    public_url: \"https://example.com/t\"\n"),
        ("hmac", "    header: X-Signature\n    prefix: \"sha256=\"\n    payload: \"{timestamp}.{body}\"\n    timestamp_header: X-Timestamp\n"),
        ("mandrill", "    public_url: \"https://example.com/m\"\n"),
        ("paddle", "    tolerance: 1m\n"),
        ("twitch", ""),
        ("zoom", ""),
        ("square", "    public_url: \"https://example.com/sq\"\n"),
        ("linear", ""),
        ("intercom", ""),
        ("basic_auth", "    username: hooks\n"),
        ("mailgun", ""),
    ];
    let mut config = format!("upstream: \"{}\"\nroutes:\n", up.url());
    for (p, extra) in secret_routes {
        let secret = if p == "standard_webhooks" {
            STD_KEY
        } else {
            "e2e-sign-secret"
        };
        config.push_str(&format!(
            "  - name: {p}\n    path: /{p}\n    provider: {p}\n    secrets: [\"{secret}\"]\n{extra}"
        ));
    }
    let proxy = Proxy::start(&config);
    for (p, _) in secret_routes {
        let body = match p {
            "twilio" => "MessageSid=SM1&Body=hi".to_owned(),
            "mandrill" => r#"[{"event":"send"}]"#.to_owned(),
            _ => format!(r#"{{"id":"{}","note":"it's signed"}}"#, token()),
        };
        let out = sign_and_send(&proxy, p, &body);
        assert!(out.starts_with("HTTP/1.1 200"), "{p}: {out}");
    }
    let got = up.received();
    assert_eq!(got.len(), secret_routes.len());
    for (r, (p, _)) in got.iter().zip(secret_routes) {
        assert_eq!(r.header("x-webhook-route"), Some(p));
    }
}

#[test]
fn twilio_json_bodies_are_signed_through_the_url_and_mandrill_head_probes_are_answered() {
    let up = Upstream::start();
    let proxy = Proxy::start(&format!(
        "upstream: \"{}\"\nroutes:\n  - name: twilio\n    path: /twilio\n    provider: twilio\n    secrets: [\"twilio-auth-token\"]\n    public_url: \"https://example.com/twilio\"\n  - name: mandrill\n    path: /mandrill\n    provider: mandrill\n    secrets: [\"mandrill-key\"]\n    public_url: \"https://example.com/mandrill\"\n  - name: stripe\n    path: /stripe\n    provider: stripe\n    secrets: [\"{STRIPE_KEY}\"]\n",
        up.url()
    ));
    let out = sign_and_send(
        &proxy,
        "twilio",
        r#"{"EventType":"com.twilio.messaging.message.delivered"}"#,
    );
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let got = up.received();
    assert_eq!(got.len(), 1);
    assert!(
        got[0].uri.starts_with("/twilio?bodySHA256="),
        "{}",
        got[0].uri
    );

    // Mandrill validates a webhook URL with an unsigned HEAD: answered here, not forwarded.
    let mut c = Conn::open(proxy.port).unwrap();
    c.write(b"HEAD /mandrill HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let head = c.read_head_response().unwrap();
    assert_eq!(head.status, 200);
    // Other providers still refuse it.
    c.write(b"HEAD /stripe HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(c.read_head_response().unwrap().status, 405);
    assert_eq!(up.count(), 1);
}

/// GitHub, Shopify and Twilio name a delivery with a header they do not sign. A captured
/// request resent under a fresh id must still be refused; the provider's own retry (same id,
/// same signature) after a failed delivery must pass.
#[test]
fn a_captured_delivery_resent_under_a_new_unsigned_id_is_refused() {
    let up = Upstream::start();
    up.script([Reply::Status(500, "{}")]);
    let proxy = providers_proxy(&up);
    let body = event(&token());
    let sig = format!(
        "sha256={}",
        hex::encode(hmac256(GITHUB_KEY.as_bytes(), &[&body]))
    );
    let send = |delivery: &str| {
        post(
            proxy.port,
            "/github",
            &[
                JSON,
                ("X-GitHub-Event", "push"),
                ("X-GitHub-Delivery", delivery),
                ("X-Hub-Signature-256", sig.as_str()),
            ],
            &body,
        )
    };
    assert_eq!(
        send("d-original").status,
        500,
        "first attempt fails upstream"
    );
    assert_eq!(
        send("d-original").status,
        200,
        "GitHub's retry passes: both keys were released"
    );
    assert_duplicate(&send("d-original"));
    assert_duplicate(&send("d-attacker-chose-this"));
    assert_eq!(up.count(), 2);
    // X-Webhook-Id names the message by what is signed: the signature, not the delivery id.
    let id = sig.trim_start_matches("sha256=");
    assert_eq!(up.received()[1].header("x-webhook-id"), Some(id));
    assert_eq!(
        up.received()[1].header("x-github-delivery"),
        Some("d-original"),
        "the provider's own header passes through"
    );
}

/// Discord signs with Ed25519 (no shared secret, so `hookguard sign` cannot make these): an
/// application command and a PING are forwarded (the application answers PONG itself); a
/// signature by another key, a tampered body, a stale timestamp and a resent interaction are
/// refused before the upstream.
#[test]
fn discord_interactions_and_ping_forwarded_forgeries_refused() {
    use ed25519_dalek::{Signer, SigningKey};
    let app_key = SigningKey::from_bytes(&[5; 32]);
    let up = Upstream::start();
    let proxy = Proxy::start(&format!(
        "upstream: \"{}\"\nroutes:\n  - name: discord\n    path: /discord\n    provider: discord\n    public_key: \"{}\"\n",
        up.url(),
        hex::encode(app_key.verifying_key().to_bytes()),
    ));
    let signed = |key: &SigningKey, ts: u64, body: &[u8]| {
        let ts = ts.to_string();
        let mut message = ts.clone().into_bytes();
        message.extend_from_slice(body);
        (hex::encode(key.sign(&message).to_bytes()), ts)
    };
    let send = |sig: &str, ts: &str, body: &[u8]| {
        let h = [
            JSON,
            ("X-Signature-Ed25519", sig),
            ("X-Signature-Timestamp", ts),
        ];
        post(proxy.port, "/discord", &h, body)
    };

    let command_id = token();
    let command = format!(r#"{{"id":"{command_id}","type":2,"data":{{"name":"ping"}}}}"#);
    let (sig, ts) = signed(&app_key, now(), command.as_bytes());
    let resp = send(&sig, &ts, command.as_bytes());
    assert_eq!(resp.status, 200, "{}", resp.text());
    let ping_id = token();
    let ping = format!(r#"{{"id":"{ping_id}","type":1}}"#);
    let (ping_sig, ping_ts) = signed(&app_key, now(), ping.as_bytes());
    assert_eq!(send(&ping_sig, &ping_ts, ping.as_bytes()).status, 200);
    let got = up.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].header("x-webhook-provider"), Some("discord"));
    assert_eq!(got[0].header("x-webhook-id"), Some(command_id.as_str()));
    assert_eq!(got[0].body, command.as_bytes());
    assert_eq!(got[1].header("x-webhook-id"), Some(ping_id.as_str()));

    // The same interaction again: a replay.
    assert_duplicate(&send(&sig, &ts, command.as_bytes()));
    // Signed by a key that is not the application's.
    let fresh = format!(r#"{{"id":"{}","type":2}}"#, token());
    let (forged, fts) = signed(&SigningKey::from_bytes(&[6; 32]), now(), fresh.as_bytes());
    rejected(&send(&forged, &fts, fresh.as_bytes()), 401, "bad_signature");
    // A genuine signature over another body.
    let (good, gts) = signed(&app_key, now(), fresh.as_bytes());
    let tampered = fresh.replace(r#""type":2"#, r#""type":3"#);
    rejected(
        &send(&good, &gts, tampered.as_bytes()),
        401,
        "bad_signature",
    );
    // A genuine signature, ten minutes old.
    let (old, ots) = signed(&app_key, now() - 600, fresh.as_bytes());
    rejected(&send(&old, &ots, fresh.as_bytes()), 401, "stale_timestamp");
    assert_eq!(up.count(), 2, "no refused request reached the upstream");
}
