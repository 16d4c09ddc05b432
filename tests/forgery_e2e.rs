//! The forgery matrix, end to end: the same kinds of forgeries as `tests/forgery_matrix.rs`,
//! through the real binary between a raw HTTP client and a recording upstream, for Mailgun
//! (body fields) and for the header-signed providers (Stripe): every forgery gets its code,
//! nothing forged reaches the upstream, and the authentic requests do.

mod common;

use common::*;

/// Mailgun through the proxy: the status and `error` of each forgery, and only the
/// authentic requests reach the upstream.
#[test]
fn mailgun_forgeries_end_to_end() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "", ""));
    let tok = token();
    let valid = mg_json(&tok);
    let ts = now().to_string();
    let moved_tok = token();
    let moved_sig = mg_sig(MG_KEY, &ts, &moved_tok);
    let moved: Vec<(String, String)> = vec![
        ("X-Mailgun-Timestamp".into(), ts.clone()),
        ("X-Mailgun-Token".into(), moved_tok.clone()),
        ("X-Mailgun-Signature".into(), moved_sig),
    ];
    let mut tampered = String::from_utf8(mg_json(&token())).unwrap();
    tampered = tampered.replacen("\"token\": \"tok", "\"token\": \"tak", 1);
    let upper_ct = ("CONTENT-TYPE", "APPLICATION/JSON");
    type Case = (
        &'static str,
        Vec<(String, String)>,
        Vec<u8>,
        u16,
        &'static str,
    );
    let h = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    let cases: Vec<Case> = vec![
        (
            "authentic, header names upper case",
            h(&[upper_ct]),
            valid.clone(),
            200,
            "",
        ),
        ("replay", h(&[JSON]), valid.clone(), 200, "duplicate"),
        (
            "JSON body labelled as a form",
            h(&[FORM]),
            mg_json(&token()),
            401,
            "missing_signature",
        ),
        (
            "form body labelled as JSON",
            h(&[JSON]),
            mg_form(MG_KEY, &token(), ""),
            401,
            "missing_signature",
        ),
        (
            "JSON body labelled text/plain",
            h(&[("Content-Type", "text/plain")]),
            mg_json(&token()),
            401,
            "missing_signature",
        ),
        (
            "material in headers, not the body",
            [h(&[JSON]), moved].concat(),
            b"{\"event-data\":{}}".to_vec(),
            401,
            "missing_signature",
        ),
        (
            "wrong key",
            h(&[JSON]),
            mg_json_at("not-the-key", now(), &token(), "x"),
            401,
            "bad_signature",
        ),
        (
            "token changed",
            h(&[JSON]),
            tampered.into_bytes(),
            401,
            "bad_signature",
        ),
        (
            "stale",
            h(&[JSON]),
            mg_json_at(MG_KEY, now() - 3600, &token(), "x"),
            401,
            "stale_timestamp",
        ),
        (
            "future",
            h(&[JSON]),
            mg_json_at(MG_KEY, now() + 3600, &token(), "x"),
            401,
            "stale_timestamp",
        ),
        (
            "form: token repeated",
            h(&[FORM]),
            mg_form(MG_KEY, &token(), "&token=evil"),
            401,
            "missing_signature",
        ),
    ];
    let mut forwarded = 0;
    for (what, headers, body, status, code) in cases {
        let hs: Vec<(&str, &str)> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let resp = post(proxy.port, "/mg", &hs, &body);
        assert_eq!(resp.status, status, "{what}: {}", resp.text());
        if code == "duplicate" {
            assert_eq!(resp.text(), "{\"status\":\"duplicate\"}", "{what}");
        } else if status == 200 {
            forwarded += 1;
        } else {
            assert_eq!(resp.error(), code, "{what}");
        }
    }
    assert_eq!(
        up.count(),
        forwarded,
        "only authentic requests reached the upstream"
    );
    assert_eq!(up.received()[0].header("x-webhook-id"), Some(tok.as_str()));
}

const STRIPE_KEY: &str = "whsec_e2e_forgery_matrix";

fn stripe_header(key: &str, t: u64, body: &[u8]) -> String {
    use hmac::Mac;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// A header-signed provider (Stripe) through the proxy: header-name case does not matter,
/// the header's place and count do.
#[test]
fn header_signed_forgeries_end_to_end() {
    let up = Upstream::start();
    let proxy = Proxy::start(&format!(
        "upstream: \"{}\"\nroutes:\n  - name: st\n    path: /st\n    provider: stripe\n    secrets: [\"{STRIPE_KEY}\"]\n",
        up.url()
    ));
    let body = |n: usize| format!(r#"{{"id":"evt_{n}","type":"charge.succeeded"}}"#).into_bytes();
    let t = now();
    let b0 = body(0);
    let s0 = stripe_header(STRIPE_KEY, t, &b0);
    type Case = (
        &'static str,
        String,
        Vec<(String, String)>,
        Vec<u8>,
        u16,
        &'static str,
    );
    let sig = |name: &str, b: &[u8]| vec![(name.to_owned(), stripe_header(STRIPE_KEY, t, b))];
    let cases: Vec<Case> = vec![
        (
            "lower-case header name",
            "/st".into(),
            vec![("stripe-signature".into(), s0.clone())],
            b0.clone(),
            200,
            "",
        ),
        (
            "the same again",
            "/st".into(),
            vec![("Stripe-Signature".into(), s0.clone())],
            b0.clone(),
            200,
            "duplicate",
        ),
        (
            "upper-case header name",
            "/st".into(),
            sig("STRIPE-SIGNATURE", &body(1)),
            body(1),
            200,
            "",
        ),
        (
            "mixed-case header name",
            "/st".into(),
            sig("sTrIpE-sIgNaTuRe", &body(2)),
            body(2),
            200,
            "",
        ),
        (
            "signature in another header",
            "/st".into(),
            sig("X-Stripe-Signature", &body(3)),
            body(3),
            401,
            "missing_signature",
        ),
        (
            "signature in the query",
            format!(
                "/st?stripe-signature={}",
                stripe_header(STRIPE_KEY, t, &body(4)).replace(',', "%2C")
            ),
            vec![],
            body(4),
            401,
            "missing_signature",
        ),
        (
            "header duplicated",
            "/st".into(),
            [
                sig("Stripe-Signature", &body(5)),
                sig("stripe-signature", &body(5)),
            ]
            .concat(),
            body(5),
            401,
            "missing_signature",
        ),
        (
            "tampered body",
            "/st".into(),
            sig("Stripe-Signature", &body(6)),
            body(7),
            401,
            "bad_signature",
        ),
        (
            "wrong key",
            "/st".into(),
            vec![(
                "Stripe-Signature".into(),
                stripe_header("whsec_other", t, &body(8)),
            )],
            body(8),
            401,
            "bad_signature",
        ),
        (
            "stale",
            "/st".into(),
            vec![(
                "Stripe-Signature".into(),
                stripe_header(STRIPE_KEY, t - 3600, &body(9)),
            )],
            body(9),
            401,
            "stale_timestamp",
        ),
        (
            "JSON labelled as a form (the bytes are what is signed)",
            "/st".into(),
            sig("Stripe-Signature", &body(10)),
            body(10),
            200,
            "",
        ),
    ];
    let mut forwarded = 0;
    for (i, (what, path, headers, b, status, code)) in cases.into_iter().enumerate() {
        let ct = if i == 10 { FORM } else { JSON };
        let mut hs: Vec<(&str, &str)> = vec![ct];
        hs.extend(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let resp = post(proxy.port, &path, &hs, &b);
        if i == 10 {
            // The content type is not signed: the request verifies and is normalized as
            // what it claims to be. Every byte string is a form, so the upstream gets the
            // JSON text as one field name (with `forward_body: original` it gets the bytes).
            assert_eq!(resp.status, 200, "{what}: {}", resp.text());
            let last = up.received().pop().unwrap();
            let text = String::from_utf8(b).unwrap();
            assert_eq!(last.json(), serde_json::json!({ text: "" }), "{what}");
            forwarded += 1;
            continue;
        }
        assert_eq!(resp.status, status, "{what}: {}", resp.text());
        if code == "duplicate" {
            assert_eq!(resp.text(), "{\"status\":\"duplicate\"}", "{what}");
        } else if status == 200 {
            forwarded += 1;
        } else {
            assert_eq!(resp.error(), code, "{what}");
        }
    }
    assert_eq!(up.count(), forwarded);
}
