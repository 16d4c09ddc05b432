//! The spool (issue 14), end to end: the real binary between a raw HTTP client and a
//! recording upstream on 127.0.0.1, the spool in a temporary directory, signatures computed
//! here with the `hmac` crate.
//!
//! What is held: a verified message on a spooled route is answered `202` only once written;
//! a copy is answered `200 duplicate` and never spooled twice (Stripe: by its event id, across
//! fresh signatures); delivery carries `X-Webhook-Attempt` and `X-Webhook-First-Received`;
//! 5xx and a down upstream are retried (one probe per backoff step while it is down), 4xx
//! and the abort header dead-letter, `max_age` expires; SIGKILL loses nothing answered `202`
//! and a message interrupted mid-delivery is delivered again and counted; a full spool answers
//! 503 and takes messages again after a purge; on a slow disk (the debug build's fault
//! injection), a write that lands after its 503 settles its keys and the writer's queue is
//! bounded; `hookguard spool` works through the admin listener and on the file.
//!
//! Longer than 500 lines: one self-contained test per promise of the issue, each with its own
//! proxy, upstream and spool file.

mod common;

use std::time::{Duration, Instant};

use common::*;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A spooling config: one Mailgun route `/mg` with `spool: true`, the spool in `dir`, quick
/// retries.
fn spooled(upstream_url: &str, dir: &std::path::Path) -> TestConfig {
    let upstream = Upstream::start();
    TestConfig::new(&upstream)
        .set("upstream", upstream_url)
        .set("spool.path", dir.join("spool.redb").to_str().unwrap())
        .set("spool.backoff_initial", "100ms")
        .set("spool.backoff_max", "400ms")
        .set("spool.min_free_bytes", 1 << 20)
        .route(TestRoute::mailgun("mg", "/mg", MG_KEY).set("spool", true))
}

fn send(port: u16, token: &str) -> HttpResponse {
    post(port, "/mg", &[JSON], &mg_json(token))
}

fn messages(proxy: &Proxy) -> Vec<serde_json::Value> {
    let r = get(proxy.admin_port, "/spool/messages").expect("admin");
    assert_eq!(r.status, 200, "{}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    v["messages"].as_array().cloned().unwrap_or_default()
}

#[test]
fn a_verified_message_is_answered_202_and_delivered_with_its_attempt_headers() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_config(&spooled(&upstream.url(), dir.path()));
    let token = token();
    let body = mg_json(&token);

    let resp = post(proxy.port, "/mg", &[JSON], &body);
    let id = assert_queued(&resp);
    eventually(Duration::from_secs(5), "delivery", || upstream.count() == 1);
    let got = &upstream.received()[0];
    assert_eq!(got.header("x-webhook-id"), Some(id.as_str()));
    assert_eq!(got.header("x-webhook-attempt"), Some("1"));
    let first = got
        .header("x-webhook-first-received")
        .expect("first received");
    assert!(humantime::parse_rfc3339(first).is_ok(), "RFC 3339: {first}");
    assert_eq!(got.header("x-webhook-provider"), Some("mailgun"));
    assert_eq!(got.json()["event-data"]["event"], "delivered");

    // A copy, after delivery: a success answer, nothing spooled or delivered again.
    assert_duplicate(&post(proxy.port, "/mg", &[JSON], &body));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(upstream.count(), 1);
    eventually(Duration::from_secs(2), "the spool emptied", || {
        messages(&proxy).is_empty()
    });

    let m = proxy.metrics();
    assert_eq!(
        metric_value(&m, "hookguard_spool_enqueue_total{result=\"queued\"}"),
        1.0
    );
    assert_eq!(
        metric_value(&m, "hookguard_spool_enqueue_total{result=\"duplicate\"}"),
        1.0
    );
    assert_eq!(
        metric_value(
            &m,
            "hookguard_spool_delivery_attempts_total{result=\"delivered\"}"
        ),
        1.0
    );
    assert_eq!(
        metric_value(&m, "hookguard_spool_messages{state=\"queued\"}"),
        0.0
    );
    assert!(m.contains("hookguard_spool_commit_seconds_count"));
    assert!(m.contains("hookguard_spool_delivery_lag_seconds_count 1"));
}

#[test]
fn a_copy_still_queued_is_a_duplicate_and_a_forgery_is_never_spooled() {
    // The upstream is down: the message stays queued.
    let down = free_port();
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_config(&spooled(&format!("http://127.0.0.1:{down}"), dir.path()));
    let body = mg_json(&token());
    assert_queued(&post(proxy.port, "/mg", &[JSON], &body));
    assert_duplicate(&post(proxy.port, "/mg", &[JSON], &body));

    let forged = mg_json_at("not-the-key", now(), &token(), "delivered");
    assert_eq!(post(proxy.port, "/mg", &[JSON], &forged).status, 401);
    assert_eq!(
        messages(&proxy).len(),
        1,
        "one record: the copy and the forgery added none"
    );
}

/// One Mailgun signing key on two routes, one spooled (`/mg`) and one forwarding directly
/// (`/direct`): they share replay (a message is named by provider, key and token, not by its
/// route or by whether it is spooled). A token delivered on either may not come back on the
/// other carrying another body: Mailgun's signature does not cover the body.
#[test]
fn a_mailgun_token_taken_on_one_path_is_refused_on_the_other_with_another_body() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let config =
        spooled(&upstream.url(), dir.path()).route(TestRoute::mailgun("direct", "/direct", MG_KEY));
    let proxy = Proxy::start_config(&config);

    // Spooled and delivered, then its token with another body on the direct route.
    let (ts, tok) = (now(), token());
    assert_queued(&post(
        proxy.port,
        "/mg",
        &[JSON],
        &mg_json_at(MG_KEY, ts, &tok, "delivered"),
    ));
    eventually(Duration::from_secs(5), "delivery", || upstream.count() == 1);
    let forged = mg_json_at(MG_KEY, ts, &tok, "unsubscribed");
    let resp = post(proxy.port, "/direct", &[JSON], &forged);
    assert_duplicate(&resp);

    // Forwarded directly, then its token with another body on the spooled route.
    let (ts, tok) = (now(), token());
    let resp = post(
        proxy.port,
        "/direct",
        &[JSON],
        &mg_json_at(MG_KEY, ts, &tok, "delivered"),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(upstream.count(), 2);
    let forged = mg_json_at(MG_KEY, ts, &tok, "complained");
    assert_duplicate(&post(proxy.port, "/mg", &[JSON], &forged));

    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(upstream.count(), 2, "no forged body reached the app");
    assert!(messages(&proxy).is_empty(), "nothing forged was spooled");
}

/// A slow disk, simulated by the debug build's fault injection: each commit takes 600 ms.
const SLOW_DISK: (&str, &str) = ("HOOKGUARD_FAULT_SPOOL_COMMIT_DELAY_MS", "600");

#[test]
fn a_write_that_lands_after_its_503_settles_the_keys_it_wrote() {
    // The provider is answered 503 at `commit_timeout` (it retries), but the message's keys
    // wait for the write's result. Released at the answer (before), a copy sent to a direct
    // route with the same secret reached the app, and the spool delivered the message too.
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let config = spooled(&upstream.url(), dir.path())
        .set("spool.commit_timeout", "100ms")
        .route(TestRoute::mailgun("direct", "/direct", MG_KEY));
    let proxy = Proxy::start_config_env(&config, &[SLOW_DISK]);

    let body = mg_json_at(MG_KEY, now(), &token(), "delivered");
    let resp = post(proxy.port, "/mg", &[JSON], &body);
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(resp.text().contains("spool_unavailable"), "{}", resp.text());
    // The write is still under way: a copy, on either route, is in flight.
    let copy = post(proxy.port, "/direct", &[JSON], &body);
    assert_eq!(copy.status, 409, "{}", copy.text());
    // The write lands: the spool delivers the message, once; the provider's retry and the
    // copy are duplicates.
    eventually(Duration::from_secs(15), "delivery from the spool", || {
        upstream.count() == 1
    });
    assert_duplicate(&post(proxy.port, "/mg", &[JSON], &body));
    assert_duplicate(&post(proxy.port, "/direct", &[JSON], &body));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(upstream.count(), 1, "the app got the message once");
}

#[test]
fn messages_waiting_for_a_slow_writer_are_bounded_by_max_pending_bytes() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    // One byte: a message goes through alone, a second one waits for nothing.
    let config = spooled(&upstream.url(), dir.path()).set("spool.max_pending_bytes", 1);
    let proxy = Proxy::start_config_env(&config, &[SLOW_DISK]);

    let port = proxy.port;
    let first = std::thread::spawn(move || send(port, &token()));
    std::thread::sleep(Duration::from_millis(200));
    let second = mg_json_at(MG_KEY, now(), &token(), "opened");
    let resp = post(proxy.port, "/mg", &[JSON], &second);
    assert_eq!(resp.status, 503, "{}", resp.text());
    assert!(resp.text().contains("spool_unavailable"), "{}", resp.text());
    assert_queued(&first.join().unwrap());
    // Nothing of the refused one was kept: its retry is written.
    assert_queued(&post(proxy.port, "/mg", &[JSON], &second));
    eventually(Duration::from_secs(15), "both delivered", || {
        upstream.count() == 2
    });
}

fn stripe_header(secret: &str, ts: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{ts}.").as_bytes());
    mac.update(body);
    format!("t={ts},v1={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn stripe_retries_signed_afresh_are_one_message_by_event_id() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let secret = "whsec_spooltest";
    let config = spooled(&upstream.url(), dir.path()).route(
        TestRoute::new("stripe", "/stripe", "stripe")
            .secrets(&[secret])
            .set("spool", true),
    );
    let proxy = Proxy::start_config(&config);
    let body = br#"{"id":"evt_spool_1","object":"event","type":"invoice.paid"}"#;
    // Stripe's retry of the same event: a new timestamp, so a new signature.
    let first = stripe_header(secret, now() - 20, body);
    let retry = stripe_header(secret, now(), body);
    assert_queued(&post(
        proxy.port,
        "/stripe",
        &[JSON, ("Stripe-Signature", &first)],
        body,
    ));
    let again = post(
        proxy.port,
        "/stripe",
        &[JSON, ("Stripe-Signature", &retry)],
        body,
    );
    assert_duplicate(&again);
    // Another event is another message.
    let other = br#"{"id":"evt_spool_2","object":"event","type":"invoice.paid"}"#;
    let sig = stripe_header(secret, now(), other);
    assert_queued(&post(
        proxy.port,
        "/stripe",
        &[JSON, ("Stripe-Signature", &sig)],
        other,
    ));
    eventually(Duration::from_secs(5), "two deliveries", || {
        upstream.count() == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(upstream.count(), 2);
}

#[test]
fn server_errors_are_retried_honouring_retry_after_then_delivered_once() {
    let upstream = Upstream::start();
    upstream.script([
        Reply::Status(500, "{}"),
        Reply::WithHeader(503, "retry-after", "1"),
        Reply::Status(200, "{}"),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let proxy = Proxy::start_config(&spooled(&upstream.url(), dir.path()));
    let started = Instant::now();
    assert_queued(&send(proxy.port, &token()));
    eventually(Duration::from_secs(8), "three attempts", || {
        upstream.count() == 3
    });
    // The third attempt waited for Retry-After (1 s), not the 200 ms backoff.
    assert!(started.elapsed() >= Duration::from_millis(1000));
    let attempts: Vec<_> = upstream
        .received()
        .iter()
        .map(|r| r.header("x-webhook-attempt").unwrap().to_owned())
        .collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    let ids: Vec<_> = upstream
        .received()
        .iter()
        .map(|r| r.header("x-webhook-id").unwrap().to_owned())
        .collect();
    assert!(
        ids.iter().all(|i| *i == ids[0]),
        "a stable X-Webhook-Id: {ids:?}"
    );
    eventually(Duration::from_secs(2), "the spool emptied", || {
        messages(&proxy).is_empty()
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(upstream.count(), 3, "nothing after the 2xx");
    assert_eq!(
        proxy.metric("hookguard_spool_delivery_attempts_total{result=\"retry\"}"),
        2.0
    );
}

#[test]
fn client_errors_dead_letter_after_a_few_tries_and_the_abort_header_at_once() {
    let upstream = Upstream::with_default(Reply::Status(422, "{}"));
    let dir = tempfile::tempdir().unwrap();
    let config = spooled(&upstream.url(), dir.path()).set("spool.client_error_attempts", 3);
    let proxy = Proxy::start_config(&config);
    assert_queued(&send(proxy.port, &token()));
    eventually(Duration::from_secs(5), "a dead letter", || {
        messages(&proxy)
            .first()
            .is_some_and(|m| m["state"] == "dead")
    });
    assert_eq!(upstream.count(), 3, "client_error_attempts tries");
    let m = &messages(&proxy)[0];
    assert_eq!(m["reason"], "client_error");
    assert_eq!(
        proxy.metric("hookguard_spool_dead_letters_total{reason=\"client_error\"}"),
        1.0
    );

    // The application refuses the next one for good.
    upstream.script([Reply::WithHeader(500, "x-webhook-abort", "bad tenant")]);
    let before = upstream.count();
    assert_queued(&send(proxy.port, &token()));
    eventually(Duration::from_secs(5), "an aborted dead letter", || {
        proxy.metric("hookguard_spool_dead_letters_total{reason=\"aborted\"}") == 1.0
    });
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(upstream.count(), before + 1, "one try only");

    // Retried by hand (the CLI, through the admin listener) once the application is fixed.
    upstream.script(std::iter::repeat_n(Reply::Status(200, "{}"), 2));
    let config_path = proxy.config_path();
    let cfg = config_path.to_str().unwrap();
    let (code, out, err) = proxy.cli(&["spool", "--config", cfg, "retry", "--state", "dead"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 message(s) queued again"), "{out}");
    eventually(Duration::from_secs(5), "both delivered", || {
        messages(&proxy).is_empty()
    });
    assert_eq!(upstream.count(), before + 3);
}

#[test]
fn while_the_app_is_down_one_probe_per_backoff_step_then_the_backlog_drains_in_order() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    // 8 workers: the scheduler's batch (4 per worker) holds the whole backlog of 30, so no
    // newest share is interleaved, and arrival order holds up to the workers in parallel.
    let config = spooled(&format!("http://127.0.0.1:{port}"), dir.path()).set("spool.workers", 8);
    let proxy = Proxy::start_config(&config);
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(assert_queued(&send(proxy.port, &token())));
    }
    std::thread::sleep(Duration::from_millis(2000));
    // 30 messages, 2 s of outage, backoff 100 ms doubling to 400 ms: a handful of probes, not
    // one attempt per message per step.
    let tried = proxy.metric("hookguard_spool_delivery_attempts_total{result=\"retry\"}");
    assert!(
        (1.0..=10.0).contains(&tried),
        "{tried} attempts during the outage"
    );
    proxy.log_when(|l| l.contains("delivery stops"));

    let upstream = Upstream::on_port(port, Reply::Status(200, "{}"));
    eventually(Duration::from_secs(10), "the backlog drained", || {
        upstream.count() >= 30
    });
    std::thread::sleep(Duration::from_millis(300));
    let got: Vec<_> = upstream
        .received()
        .iter()
        .map(|r| r.header("x-webhook-id").unwrap().to_owned())
        .collect();
    assert_eq!(got.len(), 30, "each once");
    let mut sorted = got.clone();
    sorted.sort_by_key(|id| ids.iter().position(|i| i == id));
    assert_eq!(sorted, ids);
    // The first delivered is the probe that found the application back: whichever message
    // the last probe took (each failed probe's message waits for its own backoff, so the
    // probes walk through the backlog). The rest drain in arrival order, up to the number of
    // workers delivering in parallel.
    let probe = &got[0];
    let rest: Vec<&String> = ids.iter().filter(|id| *id != probe).collect();
    let displaced = got[1..]
        .iter()
        .enumerate()
        .map(|(i, id)| rest.iter().position(|x| *x == id).unwrap().abs_diff(i))
        .max()
        .unwrap();
    assert!(
        displaced <= 8,
        "out of arrival order by {displaced}: {got:?}"
    );
    proxy.log_when(|l| l.contains("delivery to the upstream resumes"));
    let r = get(proxy.admin_port, "/readyz").unwrap();
    assert_eq!(r.status, 200, "readiness does not depend on the app");
}

#[test]
fn a_down_upstreams_backlog_does_not_hold_up_the_other_upstreams() {
    // Route /mg spools to an upstream that is down and keeps getting messages; route /ok to
    // one that is up but answers its message's first attempt 429, so the message is due again
    // a second later. With 1 worker the scheduler looks at the 4 oldest due messages and the
    // newest one: before, those were always the down upstream's, and /ok's retry waited for
    // the down upstream to come back.
    let down = free_port();
    let up = Upstream::start();
    up.script([Reply::Status(429, "{}")]);
    let dir = tempfile::tempdir().unwrap();
    let config = spooled(&format!("http://127.0.0.1:{down}"), dir.path())
        .set("spool.workers", 1)
        .set("spool.backoff_initial", "1s")
        .set("spool.backoff_max", "1s")
        .route(
            TestRoute::mailgun("ok", "/ok", MG_KEY)
                .set("spool", true)
                .set("upstream", up.url()),
        );
    let proxy = Proxy::start_config(&config);
    assert_a_down_backlog_does_not_hold_up_another_upstream(&proxy, &up);
}

#[test]
fn sigkill_loses_nothing_answered_and_redelivers_what_was_mid_delivery() {
    let upstream = Upstream::start();
    // The first attempt hangs: hookguard is killed while the app has the message.
    upstream.script([Reply::Slow(Duration::from_secs(30), 200)]);
    let dir = tempfile::tempdir().unwrap();
    let config = spooled(&upstream.url(), dir.path()).set("timeouts.upstream_read", "60s");
    let mut proxy = Proxy::start_config(&config);
    let first = assert_queued(&send(proxy.port, &token()));
    eventually(Duration::from_secs(5), "mid-delivery", || {
        upstream.count() == 1
    });
    // More messages: delivered by the other workers, or after the restart.
    let mut queued = vec![first.clone()];
    for _ in 0..20 {
        queued.push(assert_queued(&send(proxy.port, &token())));
    }
    proxy.kill9();
    upstream.clear_script();
    let before = upstream.count();
    proxy.restart();
    eventually(Duration::from_secs(10), "everything delivered", || {
        messages(&proxy).is_empty()
    });
    let all: Vec<_> = upstream
        .received()
        .iter()
        .map(|r| r.header("x-webhook-id").unwrap().to_owned())
        .collect();
    for id in &queued {
        assert!(all.contains(id), "{id} never delivered");
    }
    let after: Vec<_> = upstream.received()[before..]
        .iter()
        .map(|r| {
            (
                r.header("x-webhook-id").unwrap().to_owned(),
                r.header("x-webhook-attempt").unwrap().to_owned(),
            )
        })
        .collect();
    let again = after.iter().find(|(i, _)| *i == first).unwrap();
    assert_eq!(again.1, "2", "the interrupted attempt counts");
    assert!(
        proxy.metric("hookguard_spool_ambiguous_deliveries_total") >= 1.0,
        "the interrupted attempt is counted as ambiguous"
    );
}

#[test]
fn messages_past_max_age_are_dead_lettered_as_expired() {
    let upstream = Upstream::with_default(Reply::Status(503, "{}"));
    let dir = tempfile::tempdir().unwrap();
    let config = spooled(&upstream.url(), dir.path()).set("spool.max_age", "1s");
    let proxy = Proxy::start_config(&config);
    assert_queued(&send(proxy.port, &token()));
    eventually(Duration::from_secs(6), "expired", || {
        messages(&proxy)
            .first()
            .is_some_and(|m| m["reason"] == "expired")
    });
    assert_eq!(
        proxy.metric("hookguard_spool_dead_letters_total{reason=\"expired\"}"),
        1.0
    );
}

#[test]
fn a_full_spool_answers_503_and_takes_messages_again_after_a_purge() {
    let down = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config =
        spooled(&format!("http://127.0.0.1:{down}"), dir.path()).set("spool.max_bytes", 4000);
    let proxy = Proxy::start_config(&config);
    let mut accepted = 0;
    let full = loop {
        let r = send(proxy.port, &token());
        if r.status != 202 {
            break r;
        }
        accepted += 1;
        assert!(accepted < 100, "never full");
    };
    assert_eq!(full.status, 503);
    assert_eq!(full.error(), "spool_full");
    assert!(accepted >= 2, "{accepted} accepted before full");
    assert_eq!(
        messages(&proxy).len(),
        accepted,
        "every 202 has its record, no more"
    );
    assert!(proxy.metric("hookguard_spool_enqueue_total{result=\"full\"}") >= 1.0);

    let cfg = proxy.config_path();
    let (code, out, err) = proxy.cli(&["spool", "-c", cfg.to_str().unwrap(), "purge", "--all"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{accepted} message(s) purged")),
        "{out}"
    );
    assert_queued(&send(proxy.port, &token()));
}

#[test]
fn the_cli_works_on_the_file_when_hookguard_is_stopped() {
    let down = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut proxy = Proxy::start_config(&spooled(&format!("http://127.0.0.1:{down}"), dir.path()));
    let ids: Vec<_> = (0..3)
        .map(|_| assert_queued(&send(proxy.port, &token())))
        .collect();
    proxy.kill9();
    let cfg = proxy.config_path();
    let cfg = cfg.to_str().unwrap();

    let (code, out, err) = proxy.cli(&["spool", "-c", cfg, "list", "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    let listed: Vec<_> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["envelope"]["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids);

    let seq = v["messages"][0]["seq"].as_u64().unwrap().to_string();
    let (code, out, _) = proxy.cli(&["spool", "-c", cfg, "show", &seq]);
    assert_eq!(code, 0);
    assert!(
        out.contains(&ids[0]) && out.contains("\"event\":\"delivered\""),
        "{out}"
    );

    let (code, out, _) = proxy.cli(&["spool", "-c", cfg, "list"]);
    assert_eq!(code, 0);
    assert!(out.contains("3 message(s)"), "{out}");

    let (code, out, err) = proxy.cli(&["spool", "-c", cfg, "purge", "--seq", &seq]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 message(s) purged"));
    let (code, _, err) = proxy.cli(&["spool", "-c", cfg, "purge"]);
    assert_eq!(code, 1, "no filter, no --all");
    assert!(err.contains("--all"), "{err}");

    // Started again, it delivers what is left (not the purged one), once the app is up.
    let upstream = Upstream::on_port(down, Reply::Status(200, "{}"));
    proxy.restart();
    eventually(Duration::from_secs(10), "two delivered", || {
        upstream.count() == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut got: Vec<_> = upstream
        .received()
        .iter()
        .map(|r| r.header("x-webhook-id").unwrap().to_owned())
        .collect();
    // Two workers: either order.
    got.sort();
    let mut want = ids[1..].to_vec();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn the_admin_endpoints_require_the_token_when_one_is_set() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let config = spooled(&upstream.url(), dir.path()).set("spool.admin_token", "op-secret-42");
    let proxy = Proxy::start_config(&config);
    let r = get(proxy.admin_port, "/spool/messages").unwrap();
    assert_eq!(r.status, 403);
    let cfg = proxy.config_path();
    let (code, out, err) = proxy.cli(&["spool", "-c", cfg.to_str().unwrap(), "stats"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("queued 0"), "{out}");
    // The token is never printed by `check`.
    let (_, out, _) = proxy.cli(&["check", "-c", cfg.to_str().unwrap()]);
    assert!(!out.contains("op-secret-42"), "{out}");
}

#[test]
fn routes_whose_provider_needs_the_apps_answer_refuse_spool_at_load() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let config = spooled(&upstream.url(), dir.path()).route(
        TestRoute::new("slash", "/slack", "slack")
            .secrets(&["slack-secret"])
            .set("spool", true),
    );
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config.yaml()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookguard"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("spool") && text.contains("slack"), "{text}");
}

#[test]
fn a_reload_cannot_start_the_spool() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().unwrap();
    let plain = TestConfig::new(&upstream).route(TestRoute::mailgun("mg", "/mg", MG_KEY));
    let proxy = Proxy::start_config(&plain);
    // The same ports, now spooling: it would need a spool the process never started.
    let mut spooling: serde_yaml::Value = serde_yaml::from_str(&plain.yaml()).unwrap();
    spooling["routes"][0]["spool"] = true.into();
    spooling["spool"] =
        serde_yaml::from_str(&format!("path: {}", dir.path().join("s.redb").display())).unwrap();
    std::fs::write(
        proxy.config_path(),
        serde_yaml::to_string(&spooling).unwrap(),
    )
    .unwrap();
    proxy.signal("HUP");
    proxy.log_when(|l| l.contains("restart to spool"));
    let r = send(proxy.port, &token());
    assert_eq!(r.status, 200, "still forwarded directly: {}", r.text());
    assert_eq!(upstream.count(), 1);
}
