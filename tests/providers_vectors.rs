//! Every vector in `fixtures/vectors/*.json` (made with the providers' own SDKs by
//! `scripts/vectors/generate.py`) gets the verdict the fixture expects, at the fixture's `now`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hookguard::body::Body;
use hookguard::providers::{Inbound, Provider, VerifyError};
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;
use serde_json::Value;

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/vectors");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures/vectors")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

fn build(provider: &str, route: &Value) -> std::sync::Arc<dyn Provider> {
    common::build_provider(provider, route)
}

fn code(r: &Result<hookguard::providers::Verified, VerifyError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(r) => r.code(),
    }
}

/// Runs one case; returns a description of what went wrong, if anything.
fn run(provider: &str, case: &Value) -> Option<String> {
    let name = case["name"].as_str().unwrap_or("?");
    let p = build(provider, &case["route"]);
    let mut headers = HeaderMap::new();
    for pair in case["headers"].as_array().expect("headers") {
        let n = pair[0].as_str().expect("header name");
        let v = pair[1].as_str().expect("header value");
        headers.append(
            HeaderName::from_bytes(n.as_bytes()).expect("name"),
            HeaderValue::from_str(v).expect("value"),
        );
    }
    let body = Body::new(
        Bytes::from(case["body"].as_str().expect("body").to_owned()),
        case["content_type"].as_str(),
    );
    let req = Inbound {
        path_and_query: case["path"].as_str().expect("path"),
        headers: &headers,
        body: &body,
        client_ip: None,
    };
    let now = UNIX_EPOCH + Duration::from_secs(case["now"].as_u64().expect("now"));
    let got = p.verify(&req, now);
    let expect = case["expect"].as_str().expect("expect");
    if code(&got) != expect {
        return Some(format!(
            "{provider} / {name}: got {}, expected {expect}",
            code(&got)
        ));
    }
    let Ok(v) = got else { return None };
    if Some(v.id.as_str()) != case["replay_key"].as_str() {
        return Some(format!(
            "{provider} / {name}: replay key {:?}, expected {}",
            v.id, case["replay_key"]
        ));
    }
    if v.timestamp != case["timestamp"].as_i64() {
        return Some(format!(
            "{provider} / {name}: timestamp {:?}, expected {}",
            v.timestamp, case["timestamp"]
        ));
    }
    if v.remember_for.is_zero() {
        return Some(format!("{provider} / {name}: remember_for is zero"));
    }
    match (&v.answer, case.get("answer")) {
        (None, None) => {}
        (Some(a), Some(expected)) => {
            let doc: Value = serde_json::from_slice(&a.body).expect("answer is JSON");
            if &doc != expected || a.status != 200 {
                return Some(format!(
                    "{provider} / {name}: answer {doc}, expected {expected}"
                ));
            }
        }
        (a, e) => return Some(format!("{provider} / {name}: answer {a:?}, expected {e:?}")),
    }
    None
}

#[test]
fn every_vector_gets_its_expected_verdict() {
    let files = fixtures();
    assert!(
        files.len() >= 16,
        "fixtures/vectors has {} files",
        files.len()
    );
    let mut failures = Vec::new();
    let mut total = 0;
    for file in &files {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(file).expect("read"))
            .expect("fixture is JSON");
        let provider = doc["provider"].as_str().expect("provider");
        let cases = doc["cases"].as_array().expect("cases");
        assert!(cases.len() >= 7, "{provider}: few cases");
        for case in cases {
            total += 1;
            failures.extend(run(provider, case));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} vectors failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_fixture_covers_the_matrix() {
    for file in fixtures() {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let provider = doc["provider"].as_str().unwrap();
        let verdicts: Vec<&str> = doc["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["expect"].as_str().unwrap())
            .collect();
        for needed in ["ok", "bad_signature", "missing_signature"] {
            assert!(verdicts.contains(&needed), "{provider}: no `{needed}` case");
        }
        assert!(doc["signed_by"].is_string() && doc["verified_by"].is_string());
    }
}

#[test]
fn sign_round_trips_through_verify_for_every_hmac_provider() {
    // One route per provider that `hookguard sign` supports, with its vector's options.
    let now = SystemTime::now();
    for file in fixtures() {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let provider = doc["provider"].as_str().unwrap();
        let first = &doc["cases"][0];
        let p = build(provider, &first["route"]);
        let url = "http://127.0.0.1:8080/hook";
        let body = first["body"].as_str().unwrap().as_bytes();
        let signed = match p.sign(&hookguard::providers::SignRequest { body, url }, now) {
            Ok(s) => s,
            Err(hookguard::providers::SignError::Unsupported) => {
                assert!(
                    matches!(provider, "sendgrid" | "discord"),
                    "{provider} should sign"
                );
                continue;
            }
            Err(e) => panic!("{provider}: {e}"),
        };
        let mut headers = HeaderMap::new();
        for (n, v) in &signed.headers {
            headers.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let body = Body::new(Bytes::from(signed.body.clone()), Some(&signed.content_type));
        let req = Inbound {
            path_and_query: "/hook",
            headers: &headers,
            body: &body,
            client_ip: None,
        };
        let v = p.verify(&req, now);
        assert!(
            v.is_ok(),
            "{provider}: sign() output does not verify: {v:?}"
        );
    }
}
