//! The forgery matrix: every provider × every way of forging or bending a request, each
//! rejected with the right code (or, where the provider's scheme does not cover something,
//! accepted for a stated reason).
//!
//! Rows come from two tables:
//! - `bases()`: one authentic request per provider: the `valid` case of its SDK-made vector
//!   in `fixtures/vectors/` (or, for providers without an SDK, a request its own `sign` made);
//! - `ATTACKS`: generic mutations applied to every base (tampered body, wrong key, stale,
//!   future, replay, material moved to another header or to the query, duplicated material
//!   headers, content-type confusion, header-name case), plus `extra_rows` for what only one
//!   provider has (Mailgun's body fields).
//!
//! What each provider is expected to do is in `expected()`: a default per attack, then the
//! provider facts (`TIMESTAMPED`, `BODY_NOT_SIGNED`, `READS_FIELDS`). A new provider needs its
//! vector file (or a line in `self_signed_bases`) and, if its scheme differs, a fact line.
//! Every mismatch of the whole matrix is reported at once. The same forgeries through the real
//! binary are in `tests/forgery_e2e.rs`.
//!
//! Longer than 500 lines: mostly the table of attacks and each provider's expected verdicts.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hookguard::body::Body;
use hookguard::providers::{Inbound, Provider, SignRequest, Verified, VerifyError, NAMES};
use hookguard::replay::ReplayGuard;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use serde_json::{json, Value};

// ------------------------------------------------------------------------------------------
// Requests and verdicts
// ------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
struct Req {
    path: String,
    headers: Vec<(String, String)>,
    content_type: Option<String>,
    body: Vec<u8>,
    /// Unix seconds at which it is verified.
    now: i64,
}

impl Req {
    fn without(&self, name: &str) -> Req {
        let mut r = self.clone();
        r.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        r
    }

    fn value(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct Base {
    provider: &'static str,
    /// Route options (as in the vector).
    route: Value,
    /// The same options with another key (secret or public key).
    wrong_route: Value,
    req: Req,
}

fn build(provider: &str, route: &Value) -> Arc<dyn Provider> {
    common::build_provider(provider, route)
}

fn at(secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs as u64)
}

fn verify(p: &dyn Provider, r: &Req) -> Result<Verified, VerifyError> {
    let mut headers = HeaderMap::new();
    for (n, v) in &r.headers {
        headers.append(
            HeaderName::from_bytes(n.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    if let Some(ct) = &r.content_type {
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_str(ct).unwrap(),
        );
    }
    let body = Body::new(Bytes::from(r.body.clone()), r.content_type.as_deref());
    p.verify(
        &Inbound {
            path_and_query: &r.path,
            headers: &headers,
            body: &body,
            client_ip: None,
        },
        at(r.now),
    )
}

fn code(r: &Result<Verified, VerifyError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

// ------------------------------------------------------------------------------------------
// One authentic request per provider
// ------------------------------------------------------------------------------------------

fn bases() -> Vec<Base> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vectors");
    let mut out = Vec::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures/vectors")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for file in files {
        let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
        let name = doc["provider"].as_str().unwrap();
        let provider = common::canonical_provider(name);
        let cases = doc["cases"].as_array().unwrap();
        let valid = cases
            .iter()
            .find(|c| c["expect"] == "ok" && c["name"].as_str().unwrap().starts_with("valid"))
            .unwrap_or_else(|| panic!("{name}: a valid case"));
        let wrong = cases
            .iter()
            .find(|c| {
                let n = c["name"].as_str().unwrap();
                n == "wrong secret" || n == "wrong public key"
            })
            .unwrap_or_else(|| panic!("{name}: a wrong-key case"));
        out.push(Base {
            provider,
            route: valid["route"].clone(),
            wrong_route: wrong["route"].clone(),
            req: Req {
                path: valid["path"].as_str().unwrap().to_owned(),
                headers: valid["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
                    .collect(),
                content_type: valid["content_type"].as_str().map(str::to_owned),
                body: valid["body"].as_str().unwrap().as_bytes().to_vec(),
                now: valid["now"].as_i64().unwrap(),
            },
        });
    }
    out.extend(self_signed_bases());
    out
}

/// Providers with no SDK signer to make vectors with: their own `sign` makes the base.
fn self_signed_bases() -> Vec<Base> {
    const T: i64 = 1_700_000_000;
    let rows: [(&'static str, Value, Value); 2] = [
        (
            "hmac",
            json!({"secrets": ["generic-key"], "header": "X-Signature", "prefix": "sha256=",
                   "payload": "{timestamp}.{header:x-id}.{body}", "timestamp_header": "X-Timestamp",
                   "id_header": "X-Id"}),
            json!({"secrets": ["not-the-key"], "header": "X-Signature", "prefix": "sha256=",
                   "payload": "{timestamp}.{header:x-id}.{body}", "timestamp_header": "X-Timestamp",
                   "id_header": "X-Id"}),
        ),
        (
            "basic_auth",
            json!({"username": "hook", "secrets": ["s3cret-pass"]}),
            json!({"username": "hook", "secrets": ["another-pass"]}),
        ),
    ];
    rows.into_iter()
        .map(|(provider, route, wrong_route)| {
            let p = build(provider, &route);
            let body = br#"{"event":"created","data":{"id":42}}"#;
            let signed = p
                .sign(
                    &SignRequest {
                        body,
                        url: "https://example.com/webhooks/x",
                    },
                    at(T),
                )
                .unwrap_or_else(|e| panic!("{provider} signs: {e}"));
            let mut headers = signed.headers.clone();
            if provider == "hmac" && !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("x-id")) {
                headers.push(("X-Id".into(), "delivery-1".into()));
            }
            Base {
                provider: common::canonical_provider(provider),
                route,
                wrong_route,
                req: Req {
                    path: "/webhooks/x".into(),
                    headers,
                    content_type: Some(signed.content_type),
                    body: signed.body,
                    now: T,
                },
            }
        })
        .collect()
}

// ------------------------------------------------------------------------------------------
// Provider facts and expectations
// ------------------------------------------------------------------------------------------

/// Providers that sign a timestamp: outside the window is `stale_timestamp`.
const TIMESTAMPED: &[&str] = &[
    "mailgun",
    "stripe",
    "slack",
    "standard_webhooks",
    "sendgrid",
    "twitch",
    "zoom",
    "paddle",
    "linear",
    "discord",
    "hmac",
];

/// Providers whose signature does not cover the body (stated in their docs): a changed body
/// passes verification, and the replay key (one use per delivery) is what limits it.
const BODY_NOT_SIGNED: &[&str] = &["mailgun", "basic_auth"];

/// Providers that read signed material from the body's fields according to its content type
/// (a body declared as another type has no material, or different material).
const READS_FIELDS: &[&str] = &["mailgun", "twilio", "mandrill"];

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    Code(&'static str),
    /// Any rejection (which of missing/bad depends on the scheme's parse order).
    Rejected,
}

fn expected(provider: &str, attack: &str) -> Expect {
    use Expect::*;
    let timestamped = TIMESTAMPED.contains(&provider);
    match attack {
        "valid" | "header names upper case" | "header names mixed case" => Code("ok"),
        "replay" => Code("replayed"),
        "wrong key" => Code("bad_signature"),
        "tampered body" if BODY_NOT_SIGNED.contains(&provider) => Code("ok"),
        "tampered body" => Rejected,
        "stale" | "future" if timestamped => Code("stale_timestamp"),
        "stale" | "future" => Code("ok"),
        "material moved to another header" | "material moved to the query" => {
            Code("missing_signature")
        }
        "material header duplicated" => Code("missing_signature"),
        "material header duplicated with a forged value" => Rejected,
        "content type: none" | "content type: text/plain" | "content type: swapped"
            if READS_FIELDS.contains(&provider) =>
        {
            Rejected
        }
        // Header-signed providers sign the bytes, whatever they are labelled.
        "content type: none" | "content type: text/plain" | "content type: swapped" => Code("ok"),
        other => panic!("no expectation for attack {other}"),
    }
}

// ------------------------------------------------------------------------------------------
// The attacks
// ------------------------------------------------------------------------------------------

/// Headers whose absence makes the valid request fail: the signature material.
fn material_headers(p: &dyn Provider, base: &Req) -> Vec<String> {
    base.headers
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| verify(p, &base.without(n)).is_err())
        .collect()
}

fn tamper(req: &Req) -> Req {
    let mut r = req.clone();
    let is_json = r
        .content_type
        .as_deref()
        .is_some_and(|c| c.contains("json"));
    if is_json {
        let mut v: Value = serde_json::from_slice(&r.body).expect("JSON body");
        if let Some(obj) = v.as_object_mut() {
            obj.insert("forged".into(), json!(true));
        }
        r.body = serde_json::to_vec(&v).unwrap();
        if r.body == req.body {
            r.body.push(b' ');
        }
    } else {
        r.body.extend_from_slice(b"&forged=1");
    }
    r
}

/// One row: the attack's name, a label for the variant, the request, and the route options
/// to verify it with when not the base's.
type Row = (&'static str, String, Req, Option<Value>);

fn attacks(base: &Base, p: &dyn Provider) -> Vec<Row> {
    let r = &base.req;
    let mut rows: Vec<Row> = vec![
        ("valid", String::new(), r.clone(), None),
        (
            "wrong key",
            String::new(),
            r.clone(),
            Some(base.wrong_route.clone()),
        ),
        ("tampered body", String::new(), tamper(r), None),
        (
            "stale",
            "+1 day".into(),
            Req {
                now: r.now + 86_400,
                ..r.clone()
            },
            None,
        ),
        (
            "future",
            "-1 day".into(),
            Req {
                now: r.now - 86_400,
                ..r.clone()
            },
            None,
        ),
    ];
    let upper = Req {
        headers: r
            .headers
            .iter()
            .map(|(n, v)| (n.to_uppercase(), v.clone()))
            .collect(),
        ..r.clone()
    };
    rows.push(("header names upper case", String::new(), upper, None));
    let mixed = Req {
        headers: r
            .headers
            .iter()
            .map(|(n, v)| {
                let n: String = n
                    .chars()
                    .enumerate()
                    .map(|(i, c)| {
                        if i % 2 == 0 {
                            c.to_ascii_lowercase()
                        } else {
                            c.to_ascii_uppercase()
                        }
                    })
                    .collect();
                (n, v.clone())
            })
            .collect(),
        ..r.clone()
    };
    rows.push(("header names mixed case", String::new(), mixed, None));

    for h in material_headers(p, r) {
        let v = r.value(&h).unwrap().to_owned();
        let mut moved = r.without(&h);
        moved.headers.push((format!("X-Forwarded-{h}"), v.clone()));
        rows.push(("material moved to another header", h.clone(), moved, None));

        let mut query = r.without(&h);
        let sep = if query.path.contains('?') { '&' } else { '?' };
        query.path = format!(
            "{}{sep}{}={}",
            query.path,
            h.to_ascii_lowercase(),
            form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>()
        );
        rows.push(("material moved to the query", h.clone(), query, None));

        let mut dup = r.clone();
        dup.headers.push((h.clone(), v.clone()));
        rows.push(("material header duplicated", h.clone(), dup, None));

        let mut forged = r.clone();
        forged.headers.push((h.clone(), "forged".into()));
        rows.push((
            "material header duplicated with a forged value",
            h.clone(),
            forged,
            None,
        ));
        let mut forged_first = r.without(&h);
        forged_first.headers.push((h.clone(), "forged".into()));
        forged_first.headers.push((h.clone(), v));
        rows.push((
            "material header duplicated with a forged value",
            format!("{h} (forged first)"),
            forged_first,
            None,
        ));
    }

    let swapped = match r.content_type.as_deref() {
        Some(ct) if ct.contains("json") => "application/x-www-form-urlencoded",
        _ => "application/json",
    };
    rows.push((
        "content type: swapped",
        swapped.into(),
        Req {
            content_type: Some(swapped.into()),
            ..r.clone()
        },
        None,
    ));
    rows.push((
        "content type: text/plain",
        String::new(),
        Req {
            content_type: Some("text/plain".into()),
            ..r.clone()
        },
        None,
    ));
    let is_json = r
        .content_type
        .as_deref()
        .is_some_and(|c| c.contains("json"));
    if !is_json {
        // A JSON body without a content type is still read as JSON: only forms can be
        // confused by dropping it.
        rows.push((
            "content type: none",
            String::new(),
            Req {
                content_type: None,
                ..r.clone()
            },
            None,
        ));
    }
    rows
}

/// Rows only one provider has, with their expected code.
fn extra_rows(base: &Base) -> Vec<(String, Req, Expect)> {
    match base.provider {
        "mailgun" => mailgun_rows(&base.req),
        _ => Vec::new(),
    }
}

/// Mailgun keeps its material in the body: the "header" attacks become field attacks.
fn mailgun_rows(r: &Req) -> Vec<(String, Req, Expect)> {
    use Expect::*;
    let doc: Value = serde_json::from_slice(&r.body).unwrap();
    let sig = doc["signature"].clone();
    let with_body = |v: &Value| Req {
        body: serde_json::to_vec(v).unwrap(),
        ..r.clone()
    };
    let mut rows = Vec::new();

    // Signature object flattened to the top level, or renamed, or with renamed fields.
    let mut flat = doc.clone();
    flat.as_object_mut().unwrap().remove("signature");
    for k in ["timestamp", "token", "signature"] {
        flat[k] = sig[k].clone();
    }
    rows.push((
        "signature fields at the top level".into(),
        with_body(&flat),
        Code("missing_signature"),
    ));
    for renamed in ["Signature", "SIGNATURE", "signatures"] {
        let mut d = doc.clone();
        let obj = d.as_object_mut().unwrap();
        let s = obj.remove("signature").unwrap();
        obj.insert(renamed.into(), s);
        rows.push((
            format!("object renamed `{renamed}`"),
            with_body(&d),
            Code("missing_signature"),
        ));
    }
    for (field, renamed) in [
        ("token", "Token"),
        ("timestamp", "TIMESTAMP"),
        ("signature", "sig"),
    ] {
        let mut d = doc.clone();
        let s = d["signature"].as_object_mut().unwrap();
        let v = s.remove(field).unwrap();
        s.insert(renamed.into(), v);
        rows.push((
            format!("field `{field}` renamed `{renamed}`"),
            with_body(&d),
            Code("missing_signature"),
        ));
    }
    // Material in a header instead of the body.
    let mut in_header = doc.clone();
    in_header.as_object_mut().unwrap().remove("signature");
    let mut moved = with_body(&in_header);
    for k in ["timestamp", "token", "signature"] {
        moved.headers.push((
            format!("X-Mailgun-{k}"),
            sig[k].as_str().unwrap().to_owned(),
        ));
    }
    rows.push((
        "material in headers".into(),
        moved,
        Code("missing_signature"),
    ));
    // Duplicated `signature` key in the JSON text: ambiguous, so unsigned.
    let text = String::from_utf8(r.body.clone()).unwrap();
    let forged_sig = r#""signature":{"timestamp":"1","token":"forged","signature":"00"},"#;
    rows.push((
        "`signature` key duplicated (forged first)".into(),
        Req {
            body: text
                .replacen('{', &format!("{{{forged_sig}"), 1)
                .into_bytes(),
            ..r.clone()
        },
        Code("missing_signature"),
    ));
    // Signed values changed.
    let mut tok = doc.clone();
    tok["signature"]["token"] = json!(format!("{}x", sig["token"].as_str().unwrap()));
    rows.push((
        "token changed".into(),
        with_body(&tok),
        Code("bad_signature"),
    ));
    for (label, ts) in [
        (
            "timestamp as a float",
            json!(format!("{}.0", sig["timestamp"].as_str().unwrap())),
        ),
        (
            "timestamp with a sign",
            json!(format!("+{}", sig["timestamp"].as_str().unwrap())),
        ),
        ("timestamp empty", json!("")),
        ("timestamp null", Value::Null),
    ] {
        let mut d = doc.clone();
        d["signature"]["timestamp"] = ts;
        rows.push((label.into(), with_body(&d), Code("missing_signature")));
    }
    let mut upper = doc.clone();
    upper["signature"]["signature"] = json!(sig["signature"].as_str().unwrap().to_uppercase());
    // Hex digits in either case decode to the same MAC.
    rows.push((
        "signature hex in upper case".into(),
        with_body(&upper),
        Code("ok"),
    ));

    // The same material as a form: repeated fields are ambiguous.
    let form = |extra: &str| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for k in ["timestamp", "token", "signature"] {
            s.append_pair(k, sig[k].as_str().unwrap());
        }
        Req {
            body: format!("{}{extra}", s.finish()).into_bytes(),
            content_type: Some("application/x-www-form-urlencoded".into()),
            ..r.clone()
        }
    };
    rows.push(("as a form".into(), form(""), Code("ok")));
    rows.push((
        "form: token repeated".into(),
        form("&token=evil"),
        Code("missing_signature"),
    ));
    rows.push((
        "form: signature repeated".into(),
        form("&signature=00"),
        Code("missing_signature"),
    ));
    rows.push((
        "form: field names in upper case".into(),
        {
            let mut f = form("");
            f.body = String::from_utf8(f.body)
                .unwrap()
                .replace("token=", "TOKEN=")
                .into_bytes();
            f
        },
        Code("missing_signature"),
    ));
    let mut as_multipart = form("");
    as_multipart.content_type = Some("multipart/form-data; boundary=XX".into());
    rows.push((
        "form labelled multipart".into(),
        as_multipart,
        Code("missing_signature"),
    ));
    rows
}

// ------------------------------------------------------------------------------------------
// The matrix
// ------------------------------------------------------------------------------------------

fn check(got: &Result<Verified, VerifyError>, want: Expect) -> bool {
    match want {
        Expect::Code(c) => code(got) == c,
        Expect::Rejected => got.is_err(),
    }
}

#[test]
fn forgery_matrix() {
    let mut failures = Vec::new();
    let mut table: Vec<String> = Vec::new();
    let mut covered = Vec::new();
    for base in bases() {
        let p = build(base.provider, &base.route);
        covered.push(base.provider);
        let mut rows_run = 0;
        for (attack, label, req, route) in attacks(&base, p.as_ref()) {
            let got = match &route {
                Some(route) => verify(build(base.provider, route).as_ref(), &req),
                None => verify(p.as_ref(), &req),
            };
            let want = expected(base.provider, attack);
            rows_run += 1;
            if !check(&got, want) {
                failures.push(format!(
                    "{} / {attack} {label}: got {}, expected {want:?}",
                    base.provider,
                    code(&got)
                ));
            }
        }
        // Replay: the same delivery names the same key twice, and the guard refuses the
        // second once the first was delivered.
        let (Ok(first), Ok(second)) =
            (verify(p.as_ref(), &base.req), verify(p.as_ref(), &base.req))
        else {
            failures.push(format!(
                "{} / replay: the base does not verify",
                base.provider
            ));
            continue;
        };
        assert_eq!(first.keys, second.keys, "{}", base.provider);
        assert_eq!(first.id, second.id, "{}", base.provider);
        assert!(!first.keys.is_empty(), "{}: a replay key", base.provider);
        assert!(!first.id.is_empty(), "{}: an id", base.provider);
        let guard = Arc::new(ReplayGuard::new(100, Duration::from_secs(60)));
        let replay = block_on(async {
            guard
                .reserve(&first.keys, None, first.remember_for)
                .await
                .expect("first delivery")
                .commit()
                .await;
            guard.reserve(&second.keys, None, second.remember_for).await
        });
        let got = if replay.is_err() { "replayed" } else { "ok" };
        if Expect::Code(got) != expected(base.provider, "replay") {
            failures.push(format!("{} / replay: got {got}", base.provider));
        }
        rows_run += 1;
        for (label, req, want) in extra_rows(&base) {
            let got = verify(p.as_ref(), &req);
            rows_run += 1;
            if !check(&got, want) {
                failures.push(format!(
                    "{} / {label}: got {}, expected {want:?}",
                    base.provider,
                    code(&got)
                ));
            }
        }
        table.push(format!(
            "{:<18} {rows_run:>3} rows; material headers: {:?}",
            base.provider,
            material_headers(p.as_ref(), &base.req)
        ));
    }
    eprintln!("forgery matrix:\n{}", table.join("\n"));
    let missing: Vec<&str> = NAMES
        .iter()
        .map(|(name, _)| *name)
        .filter(|n| !covered.contains(n))
        .collect();
    assert!(
        missing.is_empty(),
        "providers without rows in the forgery matrix (add a vector or a self-signed base): {missing:?}"
    );
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Runs the (memory-backed, never waiting) replay guard's futures to completion.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}
