//! The contract, end to end: the real binary between a raw HTTP client and a real upstream.
//!
//! Longer than 500 lines: one end-to-end test per row of the contract's core behaviour, sharing
//! one harness.

mod common;

use std::time::{Duration, Instant};

use common::*;

fn mailgun_proxy(upstream: &Upstream) -> Proxy {
    Proxy::start(&mailgun_config(
        upstream,
        "max_body_bytes: 1048576",
        "    upstream_path: /hooks/in\n",
    ))
}

#[test]
fn authentic_json_webhook_is_forwarded_compact_with_headers() {
    let up = Upstream::start();
    let proxy = mailgun_proxy(&up);
    let tok = token();
    let body = mg_json(&tok);
    let resp = post(
        proxy.port,
        "/mg?source=test",
        &[
            JSON,
            ("X-Forwarded-For", "203.0.113.9"),
            ("User-Agent", "mailgun/1"),
        ],
        &body,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    // The upstream's own response comes back unchanged.
    assert_eq!(resp.header("x-upstream"), Some("yes"));
    assert_eq!(resp.text(), "{\"ok\":true}");

    let got = up.received();
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.uri, "/hooks/in?source=test");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
    assert_eq!(r.header("x-webhook-provider"), Some("mailgun"));
    assert_eq!(r.header("x-webhook-route"), Some("mg"));
    assert_eq!(r.header("x-webhook-id"), Some(tok.as_str()));
    assert!(
        r.header("x-webhook-timestamp")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            .abs_diff(now())
            < 5
    );
    assert_eq!(r.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(r.header("user-agent"), Some("mailgun/1"));
    // Compact JSON, same value, key order kept.
    let compact: Vec<u8> = {
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        serde_json::to_vec(&v).unwrap()
    };
    assert_eq!(r.body, compact);
}

#[test]
fn every_rejection_row_of_the_contract() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "max_body_bytes: 4096", ""));
    let stale = mg_json_at(MG_KEY, now() - 301, &token(), "delivered");
    // Well past the window, so that a second ticking over between here and the proxy cannot
    // bring it back inside.
    let future = mg_json_at(MG_KEY, now() + 330, &token(), "delivered");
    let wrong_key = mg_json_at("another-key", now(), &token(), "delivered");
    let mut tampered = String::from_utf8(mg_json(&token())).unwrap();
    tampered = tampered.replacen("\"token\": \"tok", "\"token\": \"xok", 1);
    let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
        ("POST", "/nope", mg_json(&token()), 404, "no_route"),
        ("GET", "/mg", Vec::new(), 405, "method_not_allowed"),
        ("PUT", "/mg", mg_json(&token()), 405, "method_not_allowed"),
        ("POST", "/mg", vec![b'x'; 4097], 413, "body_too_large"),
        (
            "POST",
            "/mg",
            b"{\"event-data\":{}}".to_vec(),
            401,
            "missing_signature",
        ),
        (
            "POST",
            "/mg",
            b"not json at all".to_vec(),
            401,
            "missing_signature",
        ),
        ("POST", "/mg", stale, 401, "stale_timestamp"),
        ("POST", "/mg", future, 401, "stale_timestamp"),
        ("POST", "/mg", wrong_key, 401, "bad_signature"),
        ("POST", "/mg", tampered.into_bytes(), 401, "bad_signature"),
    ];
    for (method, path, body, status, code) in cases {
        let mut c = Conn::open(proxy.port).unwrap();
        c.write(&request_bytes(method, path, &[JSON], &body))
            .unwrap();
        let resp = c.read_response().unwrap();
        assert_eq!(
            (resp.status, resp.error().as_str()),
            (status, code),
            "{method} {path}"
        );
        assert_eq!(resp.header("content-type"), Some("application/json"));
        assert_eq!(
            resp.text(),
            format!("{{\"error\":\"{code}\"}}"),
            "nothing else in the body"
        );
    }
    assert_eq!(up.count(), 0, "no rejected request reached the upstream");
}

/// A copy of a delivered message is answered as providers expect a success (200, so they
/// stop retrying) and never reaches the upstream.
#[test]
fn a_replayed_token_is_a_duplicate_and_never_reaches_upstream_twice() {
    let up = Upstream::start();
    let proxy = mailgun_proxy(&up);
    let body = mg_json(&token());
    assert_eq!(post(proxy.port, "/mg", &[JSON], &body).status, 200);
    let again = post(proxy.port, "/mg", &[JSON], &body);
    assert_eq!(
        (again.status, again.text().as_str()),
        (200, "{\"status\":\"duplicate\"}")
    );
    assert_eq!(up.count(), 1);
}

#[test]
fn keep_alive_survives_a_401_and_a_duplicate() {
    let up = Upstream::start();
    let proxy = mailgun_proxy(&up);
    let mut c = Conn::open(proxy.port).unwrap();
    let bad = c
        .post("/mg", &[JSON], &mg_json_at("wrong", now(), &token(), "x"))
        .unwrap();
    assert_eq!(bad.status, 401);
    assert_ne!(bad.header("connection"), Some("close"));
    let body = mg_json(&token());
    assert_eq!(c.post("/mg", &[JSON], &body).unwrap().status, 200);
    let dup = c.post("/mg", &[JSON], &body).unwrap();
    assert_eq!(dup.text(), "{\"status\":\"duplicate\"}");
    assert_eq!(
        c.post("/mg", &[JSON], &mg_json(&token())).unwrap().status,
        200
    );
    assert_eq!(up.count(), 2);
}

#[test]
fn oversized_content_length_is_refused_before_reading_and_closes() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "max_body_bytes: 1000", ""));
    let mut c = Conn::open(proxy.port).unwrap();
    // Announce 10 MB, send none of it: the answer must come from the header alone.
    c.write(b"POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n")
        .unwrap();
    let resp = c.read_response().unwrap();
    assert_eq!(
        (resp.status, resp.error().as_str()),
        (413, "body_too_large")
    );
    assert_eq!(resp.header("connection"), Some("close"));
    assert!(c.is_closed());
    assert_eq!(up.count(), 0);
}

#[test]
fn endless_chunked_body_is_cut_at_the_cap() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "max_body_bytes: 10000", ""));
    let mut c = Conn::open(proxy.port).unwrap();
    c.write(b"POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let chunk = format!("400\r\n{}\r\n", "a".repeat(0x400));
    // Keep sending well past the cap; the proxy answers 413 once it passes 10000 bytes.
    for _ in 0..12 {
        if c.write(chunk.as_bytes()).is_err() {
            break;
        }
    }
    let resp = c.read_response().unwrap();
    assert_eq!(
        (resp.status, resp.error().as_str()),
        (413, "body_too_large")
    );
    assert_eq!(up.count(), 0);
}

#[test]
fn chunked_and_expect_continue_bodies_are_forwarded() {
    let up = Upstream::start();
    let proxy = mailgun_proxy(&up);

    // Chunked, in three pieces.
    let body = mg_json(&token());
    let (a, rest) = body.split_at(10);
    let (b, c2) = rest.split_at(rest.len() / 2);
    let mut raw = b"POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in [a, b, c2] {
        raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        raw.extend_from_slice(part);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let mut c = Conn::open(proxy.port).unwrap();
    c.write(&raw).unwrap();
    assert_eq!(c.read_response().unwrap().status, 200);

    // Expect: 100-continue: the client waits for 100 before sending the body.
    let body = mg_json(&token());
    let mut c = Conn::open(proxy.port).unwrap();
    c.write(
        format!(
            "POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    c.set_read_timeout(Duration::from_secs(2));
    let interim = c
        .read_response()
        .expect("100 Continue arrives without the body being sent");
    assert_eq!(interim.status, 100);
    c.write(&body).unwrap();
    let resp = c.read_response().unwrap();
    assert_eq!(resp.status, 200);

    let got = up.received();
    assert_eq!(got.len(), 2);
    for r in got {
        assert_eq!(r.header("transfer-encoding"), None);
        assert_eq!(r.header("expect"), None);
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        assert!(r.json()["signature"]["token"].is_string());
    }
}

#[test]
fn expect_continue_is_not_sent_for_a_request_refused_on_its_header() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "max_body_bytes: 1000", ""));
    let mut c = Conn::open(proxy.port).unwrap();
    c.write(
        b"POST /mg HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
    )
    .unwrap();
    let resp = c.read_response().unwrap();
    assert_eq!(
        resp.status, 413,
        "the refusal comes instead of 100 Continue"
    );
}

/// A legacy form body padded with an `extra` field to exactly `size` bytes; also returns
/// the length of the padding.
fn padded_form(size: usize) -> (Vec<u8>, usize) {
    let mut body = mg_form(MG_KEY, &token(), "&extra=");
    let pad = size - body.len();
    body.extend(std::iter::repeat_n(b'p', pad));
    assert_eq!(body.len(), size);
    (body, pad)
}

#[test]
fn bodies_past_64k_and_of_exactly_max_body_bytes_are_forwarded() {
    let up = Upstream::start();
    let max = 300_000;
    let proxy = Proxy::start(&mailgun_config(&up, &format!("max_body_bytes: {max}"), ""));
    for size in [64 * 1024 + 1, max] {
        let (body, pad) = padded_form(size);
        let resp = post(proxy.port, "/mg", &[FORM], &body);
        assert_eq!(resp.status, 200, "size {size}: {}", resp.text());
        let last = up.received().pop().unwrap();
        assert_eq!(
            last.json()["extra"].as_str().unwrap().len(),
            pad,
            "size {size}: every byte arrived"
        );
    }
    let (over, _) = padded_form(max + 1);
    assert_eq!(post(proxy.port, "/mg", &[FORM], &over).status, 413);
    assert_eq!(up.count(), 2);
}

#[test]
fn a_failed_delivery_frees_the_key_for_the_providers_retry() {
    let up = Upstream::start();
    up.script([
        Reply::Status(500, "{\"down\":true}"),
        Reply::Status(503, "no"),
    ]);
    let proxy = mailgun_proxy(&up);
    let body = mg_json(&token());
    let first = post(proxy.port, "/mg", &[JSON], &body);
    assert_eq!(first.status, 500, "the upstream's answer is passed back");
    assert_eq!(first.text(), "{\"down\":true}");
    assert_eq!(post(proxy.port, "/mg", &[JSON], &body).status, 503);
    assert_eq!(post(proxy.port, "/mg", &[JSON], &body).status, 200);
    let dup = post(proxy.port, "/mg", &[JSON], &body);
    assert_eq!(dup.text(), "{\"status\":\"duplicate\"}");
    assert_eq!(up.count(), 3);
}

#[test]
fn upstream_down_is_502_and_slow_is_504_and_both_free_the_key() {
    // Nothing listens on this port.
    let dead = free_port();
    let proxy = Proxy::start(&format!(
        "upstream: \"http://127.0.0.1:{dead}\"\ntimeouts:\n  upstream_read: 500ms\nroutes:\n  - name: mg\n    path: /mg\n    provider: mailgun\n    secrets: [\"{MG_KEY}\"]\n"
    ));
    let body = mg_json(&token());
    let resp = post(proxy.port, "/mg", &[JSON], &body);
    assert_eq!(
        (resp.status, resp.error().as_str()),
        (502, "upstream_unavailable")
    );
    let resp = post(proxy.port, "/mg", &[JSON], &body);
    assert_eq!(
        resp.status, 502,
        "key released: the retry is tried again, not 409"
    );

    let up = Upstream::start();
    up.script([Reply::Slow(Duration::from_secs(3), 200)]);
    let proxy = Proxy::start(&mailgun_config(
        &up,
        "timeouts:\n  upstream_read: 500ms",
        "",
    ));
    let started = Instant::now();
    let resp = post(proxy.port, "/mg", &[JSON], &body);
    assert_eq!(
        (resp.status, resp.error().as_str()),
        (504, "upstream_timeout")
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(
        post(proxy.port, "/mg", &[JSON], &body).status,
        200,
        "retry after timeout passes"
    );

    let up = Upstream::start();
    up.script([Reply::Reset]);
    let proxy = mailgun_proxy(&up);
    let resp = post(proxy.port, "/mg", &[JSON], &body);
    assert_eq!(
        (resp.status, resp.error().as_str()),
        (502, "upstream_unavailable")
    );
    assert_eq!(post(proxy.port, "/mg", &[JSON], &body).status, 200);
}

#[test]
fn a_concurrent_duplicate_gets_409_while_the_first_is_in_flight() {
    let up = Upstream::start();
    up.script([Reply::Slow(Duration::from_millis(1500), 200)]);
    let proxy = mailgun_proxy(&up);
    let body = mg_json(&token());
    let port = proxy.port;
    let b2 = body.clone();
    let first = std::thread::spawn(move || post(port, "/mg", &[JSON], &b2));
    // Wait until the first is at the upstream.
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.count() == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let dup = post(port, "/mg", &[JSON], &body);
    assert_eq!((dup.status, dup.error().as_str()), (409, "replayed"));
    assert_eq!(first.join().unwrap().status, 200);
    assert_eq!(up.count(), 1);
}

#[test]
fn spoofed_webhook_headers_are_stripped() {
    let up = Upstream::start();
    let proxy = mailgun_proxy(&up);
    let tok = token();
    let resp = post(
        proxy.port,
        "/mg",
        &[
            JSON,
            ("X-Webhook-Provider", "stripe"),
            ("X-Webhook-Id", "forged-id"),
            ("x-webhook-verified", "true"),
            ("X-WEBHOOK-ROUTE", "admin"),
        ],
        &mg_json(&tok),
    );
    assert_eq!(resp.status, 200);
    let r = &up.received()[0];
    assert_eq!(r.header("x-webhook-provider"), Some("mailgun"));
    assert_eq!(r.header("x-webhook-id"), Some(tok.as_str()));
    assert_eq!(r.header("x-webhook-route"), Some("mg"));
    assert_eq!(r.header("x-webhook-verified"), None);
    for name in ["x-webhook-provider", "x-webhook-id", "x-webhook-route"] {
        assert_eq!(r.header_count(name), 1, "{name}");
    }
}

#[test]
fn form_with_repeated_fields_becomes_arrays() {
    let up = Upstream::start();
    let proxy = mailgun_proxy(&up);
    let body = mg_form(
        MG_KEY,
        &token(),
        "&event=opened&tag=a&tag=b+c&tag=%E2%9C%93&recipient=x%40y.z",
    );
    assert_eq!(post(proxy.port, "/mg", &[FORM], &body).status, 200);
    let v = up.received()[0].json();
    assert_eq!(v["event"], "opened");
    assert_eq!(v["tag"], serde_json::json!(["a", "b c", "✓"]));
    assert_eq!(v["recipient"], "x@y.z");
    assert!(v["timestamp"].is_string());
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        [
            "timestamp",
            "token",
            "signature",
            "event",
            "tag",
            "recipient"
        ],
        "arrival order"
    );
}

#[test]
fn multipart_with_attachment_becomes_base64_objects() {
    let up = Upstream::start();
    let proxy = mailgun_proxy(&up);
    let ts = now().to_string();
    let tok = token();
    let sig = mg_sig(MG_KEY, &ts, &tok);
    let attachment: Vec<u8> = (0u8..=255).collect();
    let mut body = Vec::new();
    for (name, value) in [
        ("timestamp", ts.as_str()),
        ("token", tok.as_str()),
        ("signature", sig.as_str()),
        ("subject", "Hi ✓"),
    ] {
        body.extend_from_slice(
            format!(
                "--BOUNDARY\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        b"--BOUNDARY\r\nContent-Disposition: form-data; name=\"attachment-1\"; filename=\"report.bin\"\r\nContent-Type: application/octet-stream\r\n\r\n",
    );
    body.extend_from_slice(&attachment);
    body.extend_from_slice(b"\r\n--BOUNDARY--\r\n");
    let resp = post(
        proxy.port,
        "/mg",
        &[("Content-Type", "multipart/form-data; boundary=BOUNDARY")],
        &body,
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let r = &up.received()[0];
    assert_eq!(r.header("content-type"), Some("application/json"));
    let v = r.json();
    assert_eq!(v["subject"], "Hi ✓");
    assert_eq!(v["token"], tok.as_str());
    let file = &v["attachment-1"];
    assert_eq!(file["filename"], "report.bin");
    assert_eq!(file["content_type"], "application/octet-stream");
    assert_eq!(file["size"], 256);
    use base64::Engine;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(file["content_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(decoded, attachment);
}

#[test]
fn forward_body_original_passes_bytes_and_type_unchanged() {
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "", "    forward_body: original\n"));
    let body = mg_form(MG_KEY, &token(), "&tag=a&tag=b");
    assert_eq!(post(proxy.port, "/mg", &[FORM], &body).status, 200);
    let r = &up.received()[0];
    assert_eq!(r.body, body);
    assert_eq!(
        r.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
}

#[test]
fn request_metrics_move_by_exactly_one() {
    let up = Upstream::start();
    let proxy = mailgun_proxy(&up);
    let series = |outcome: &str| {
        format!(
            "hookguard_requests_total{{outcome=\"{outcome}\",provider=\"mailgun\",route=\"mg\"}}"
        )
    };
    let before = proxy.metrics();
    assert_eq!(metric_value(&before, &series("forwarded")), 0.0);
    post(proxy.port, "/mg", &[JSON], &mg_json(&token()));
    post(proxy.port, "/mg", &[JSON], b"{}");
    post(proxy.port, "/nope", &[JSON], b"{}");
    let after = proxy.metrics();
    assert_eq!(metric_value(&after, &series("forwarded")), 1.0);
    assert_eq!(metric_value(&after, &series("missing_signature")), 1.0);
    assert_eq!(metric_value(&after, &series("bad_signature")), 0.0);
    assert_eq!(
        metric_value(
            &after,
            "hookguard_requests_total{outcome=\"no_route\",provider=\"\",route=\"\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(&after, "hookguard_verify_duration_seconds_count"),
        2.0
    );
    assert_eq!(
        metric_value(
            &after,
            "hookguard_upstream_duration_seconds_count{route=\"mg\"}"
        ),
        1.0
    );
    assert_eq!(metric_value(&after, "hookguard_replay_entries"), 1.0);
    assert!(after.contains("# HELP hookguard_requests_total"));
    assert!(after.contains("hookguard_config_reloads_total{result=\"ok\"} 0"));
}

#[test]
fn health_and_readiness() {
    let up = Upstream::start();
    let proxy = mailgun_proxy(&up);
    assert_eq!(get(proxy.admin_port, "/healthz").unwrap().status, 200);
    assert_eq!(get(proxy.admin_port, "/readyz").unwrap().status, 200);
    assert_eq!(get(proxy.admin_port, "/nope").unwrap().status, 404);
    // The admin endpoints are not on the public port.
    assert_eq!(get(proxy.port, "/metrics").unwrap().status, 404);
}

#[test]
fn sigterm_finishes_the_request_in_flight_then_exits_zero() {
    for sig in ["TERM", "INT"] {
        let up = Upstream::start();
        up.script([Reply::Slow(Duration::from_millis(1500), 200)]);
        let mut proxy = mailgun_proxy(&up);
        let port = proxy.port;
        let body = mg_json(&token());
        let in_flight = std::thread::spawn(move || post(port, "/mg", &[JSON], &body));
        let deadline = Instant::now() + Duration::from_secs(5);
        while up.count() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        proxy.signal(sig);
        let signalled = Instant::now();
        // Readiness drops and the public listener closes promptly (polled: the machine may be
        // loaded); the request in flight is served to the end regardless.
        let eventually = |what: &str, cond: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(3);
            while !cond() {
                assert!(Instant::now() < deadline, "SIG{sig}: {what}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        eventually("not ready while draining", &|| {
            get(proxy.admin_port, "/readyz").map_or(true, |r| r.status == 503)
        });
        eventually("no new requests once shutdown began", &|| {
            Conn::open(port)
                .and_then(|mut c| c.post("/mg", &[JSON], &mg_json(&token())))
                .is_err()
        });
        assert_eq!(
            in_flight.join().unwrap().status,
            200,
            "SIG{sig}: the request in flight completes"
        );
        let code = proxy.wait_exit(Duration::from_secs(5));
        assert_eq!(code, Some(0), "SIG{sig}: exit 0\n{}", proxy.log());
        assert!(
            signalled.elapsed() < Duration::from_secs(4),
            "prompt exit: {:?}",
            signalled.elapsed()
        );
    }
}

#[test]
fn logs_one_line_per_request_without_secrets_or_bodies() {
    let up = Upstream::start();
    let proxy = Proxy::start_with(&mailgun_config(&up, "", ""), &["--log-format", "json"], &[]);
    let tok = token();
    post(proxy.port, "/mg", &[JSON], &mg_json(&tok));
    post(
        proxy.port,
        "/mg",
        &[JSON],
        &mg_json_at("bad", now(), &token(), "x"),
    );
    let log = proxy.log_when(|log| log.matches("\"target\":\"hookguard::request\"").count() >= 2);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["target"] == "hookguard::request")
        .collect();
    assert_eq!(lines.len(), 2, "{log}");
    // Each line is written once its response has gone out, so the second request's line may
    // come first.
    let line = |outcome: &str| {
        lines
            .iter()
            .find(|l| l["outcome"] == outcome)
            .unwrap_or_else(|| panic!("no {outcome} line in {log}"))
    };
    let forwarded = line("forwarded");
    assert_eq!(forwarded["status"], 200);
    assert_eq!(forwarded["replay_key"], tok.as_str());
    assert_eq!(forwarded["route"], "mg");
    assert_eq!(forwarded["client"], "127.0.0.1");
    assert_eq!(line("bad_signature")["status"], 401);
    assert!(!log.contains(MG_KEY), "the signing key is never logged");
    assert!(
        !log.contains("alice@example.com"),
        "bodies are never logged"
    );
}

/// An upstream that reads a request on a kept-alive connection and then drops the connection
/// without answering (it may have acted on the request: crashed mid-way, or its idle timeout
/// fired just then). The request is not sent again (RFC 9112 §9.3.1): the provider gets 502,
/// the key is released, and the provider's own retry is delivered once. Re-sending it
/// ourselves would deliver it twice if the upstream had acted on it.
#[test]
fn a_request_the_upstream_may_have_read_is_never_sent_twice() {
    let up = Upstream::start();
    let proxy = mailgun_proxy(&up);
    let first = post(proxy.port, "/mg", &[JSON], &mg_json(&token()));
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(up.connections(), 1);
    // The next request arrives on the pooled connection, which the upstream then drops.
    up.script([Reply::Reset]);
    let body = mg_json(&token());
    let second = post(proxy.port, "/mg", &[JSON], &body);
    assert_eq!(
        (second.status, second.error().as_str()),
        (502, "upstream_unavailable"),
        "{}",
        proxy.log()
    );
    assert_eq!(up.count(), 2, "the request reached the upstream once");
    let retry = post(proxy.port, "/mg", &[JSON], &body);
    assert_eq!(retry.status, 200, "the provider's retry is delivered");
    assert_eq!(up.count(), 3);
}
