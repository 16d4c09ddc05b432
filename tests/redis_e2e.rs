//! Replicas sharing one Redis replay store, end to end: two real hookguard processes, one
//! real Redis, one upstream.

mod common;

use std::time::{Duration, Instant};

use common::redis_server::{unique_prefix, TestRedis};
use common::*;

/// A Mailgun route on `upstream` with the Redis backend; the URL comes in through `${ENV}`.
fn redis_proxy(upstream: &Upstream, url: &str, prefix: &str, on_error: &str) -> Proxy {
    let top = format!(
        "timeouts:\n  upstream_read: 3s\nreplay:\n  backend: redis\n  redis_url: \"${{HG_TEST_REDIS}}\"\n  redis_prefix: \"{prefix}\"\n  redis_timeout: 2s\n  on_store_error: {on_error}\n"
    );
    Proxy::start_with(
        &mailgun_config(upstream, &top, ""),
        &[],
        &[("HG_TEST_REDIS", url)],
    )
}

/// Waits until the proxy forwards (its store connection is up): some signed message passes.
fn wait_connected(proxy: &Proxy) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = post(proxy.port, "/mg", &[JSON], &mg_json(&token()));
        if r.status == 200 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "proxy never reached Redis: {} {}\n{}",
            r.status,
            r.text(),
            proxy.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn the_same_message_sent_to_two_replicas_at_once_is_forwarded_once() {
    let Some(redis) =
        TestRedis::shared("the_same_message_sent_to_two_replicas_at_once_is_forwarded_once")
    else {
        return;
    };
    let up = Upstream::start();
    let prefix = unique_prefix("e2e-once");
    let a = redis_proxy(&up, &redis.url, &prefix, "reject");
    let b = redis_proxy(&up, &redis.url, &prefix, "reject");
    wait_connected(&a);
    wait_connected(&b);
    let warmup = up.count();

    for round in 0..5 {
        // Slow enough that both copies are in flight together.
        up.script([Reply::Slow(Duration::from_millis(500), 200)]);
        let body = mg_json(&token());
        let (pa, pb) = (a.port, b.port);
        let (ba, bb) = (body.clone(), body);
        let ta = std::thread::spawn(move || post(pa, "/mg", &[JSON], &ba));
        let tb = std::thread::spawn(move || post(pb, "/mg", &[JSON], &bb));
        let (ra, rb) = (ta.join().unwrap(), tb.join().unwrap());
        let mut statuses = [ra.status, rb.status];
        statuses.sort();
        assert_eq!(
            statuses,
            [200, 409],
            "round {round}: {} / {}",
            ra.text(),
            rb.text()
        );
        let loser = if ra.status == 409 { &ra } else { &rb };
        assert_eq!(loser.error(), "replayed");
    }
    assert_eq!(
        up.count() - warmup,
        5,
        "each message reached the upstream once"
    );
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn after_a_500_through_one_replica_the_retry_through_the_other_is_forwarded() {
    let Some(redis) = TestRedis::shared(
        "after_a_500_through_one_replica_the_retry_through_the_other_is_forwarded",
    ) else {
        return;
    };
    let up = Upstream::start();
    let prefix = unique_prefix("e2e-retry");
    let a = redis_proxy(&up, &redis.url, &prefix, "reject");
    let b = redis_proxy(&up, &redis.url, &prefix, "reject");
    wait_connected(&a);
    wait_connected(&b);

    let body = mg_json(&token());
    up.script([Reply::Status(500, "{\"down\":true}")]);
    assert_eq!(post(a.port, "/mg", &[JSON], &body).status, 500);
    let retry = post(b.port, "/mg", &[JSON], &body);
    assert_eq!(retry.status, 200, "{}", retry.text());
    for port in [a.port, b.port] {
        assert_duplicate(&post(port, "/mg", &[JSON], &body));
    }
    // A reset through b (the upstream read the request, then dropped the connection: it is
    // not sent again) frees the key for a's retry too.
    let body = mg_json(&token());
    up.script([Reply::Reset]);
    assert_eq!(post(b.port, "/mg", &[JSON], &body).status, 502);
    assert_eq!(post(a.port, "/mg", &[JSON], &body).status, 200);
}

#[test]
fn an_unreachable_store_answers_503_with_reject_and_forwards_with_allow() {
    let port = free_port(); // nobody listens here
    let url = format!("redis://:pw-SECRETVALUE@127.0.0.1:{port}");
    let up = Upstream::start();
    let reject = redis_proxy(&up, &url, "x:", "reject");
    let allow = redis_proxy(&up, &url, "x:", "allow");

    let r = post(reject.port, "/mg", &[JSON], &mg_json(&token()));
    assert_eq!(
        (r.status, r.error().as_str()),
        (503, "replay_store_unavailable")
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.text(), "{\"error\":\"replay_store_unavailable\"}");
    assert_eq!(up.count(), 0, "nothing forwarded unprotected");
    assert_eq!(
        reject.metric("hookguard_requests_total{outcome=\"replay_store_unavailable\",provider=\"mailgun\",route=\"mg\"}"),
        1.0
    );
    assert!(reject.metric("hookguard_replay_store_errors_total{op=\"reserve\"}") >= 1.0);
    // A forgery is still refused before the store is consulted.
    let forged = post(
        reject.port,
        "/mg",
        &[JSON],
        &mg_json_at("wrong", now(), &token(), "x"),
    );
    assert_eq!(forged.status, 401);

    let ok = post(allow.port, "/mg", &[JSON], &mg_json(&token()));
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(up.count(), 1);
    assert!(allow.metric("hookguard_replay_store_errors_total{op=\"reserve\"}") >= 1.0);
    let log = allow.log_when(|l| l.contains("WITHOUT replay protection"));
    assert!(
        log.contains(&format!("redis://127.0.0.1:{port}/0")),
        "{log}"
    );
    for proxy in [&reject, &allow] {
        assert!(
            !proxy
                .log_when(|l| l.contains("hookguard::request"))
                .contains("SECRETVALUE"),
            "the password is never logged"
        );
    }
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn redis_stopping_turns_requests_into_503_until_it_is_back() {
    let Some(mut redis) =
        TestRedis::private("redis_stopping_turns_requests_into_503_until_it_is_back")
    else {
        return;
    };
    let up = Upstream::start();
    let prefix = unique_prefix("e2e-stop");
    let proxy = redis_proxy(&up, &redis.url, &prefix, "reject");
    wait_connected(&proxy);
    let delivered = mg_json(&token());
    assert_eq!(post(proxy.port, "/mg", &[JSON], &delivered).status, 200);
    let before = up.count();

    redis.stop();
    let r = post(proxy.port, "/mg", &[JSON], &mg_json(&token()));
    assert_eq!(
        (r.status, r.error().as_str()),
        (503, "replay_store_unavailable")
    );
    // Delivered through this replica: refused from the local cache, no Redis needed.
    assert_duplicate(&post(proxy.port, "/mg", &[JSON], &delivered));
    assert_eq!(up.count(), before);

    redis.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = mg_json(&token());
    loop {
        let r = post(proxy.port, "/mg", &[JSON], &body);
        if r.status == 200 {
            break;
        }
        assert_eq!(r.error(), "replay_store_unavailable");
        assert!(Instant::now() < deadline, "no recovery:\n{}", proxy.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(up.count(), before + 1);
}

#[test]
fn check_shows_the_store_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(
        &path,
        "upstream: http://127.0.0.1:3000\nreplay:\n  backend: redis\n  redis_url: \"redis://:hunter2-secret@10.1.2.3:6380/2\"\nroutes:\n  - name: mg\n    path: /mg\n    provider: mailgun\n    secrets: [\"k\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookguard"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("replay redis redis://10.1.2.3:6380/2"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");

    std::fs::write(
        &path,
        "upstream: http://127.0.0.1:3000\nreplay:\n  backend: redis\n  redis_url: \"http://:hunter2-secret@host\"\n  redis_timeout: 0s\nroutes:\n  - name: mg\n    path: /mg\n    provider: mailgun\n    secrets: [\"k\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_hookguard"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("config.yaml:4:14: `replay.redis_url`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("config.yaml:5:18: `replay.redis_timeout` must be more than 0"),
        "{stdout}"
    );
    assert!(!stdout.contains("hunter2"), "{stdout}");
}

/// `rediss://` with a private CA and a client certificate (a Redis with `tls-auth-clients
/// yes`): two replicas share the store over TLS. A replica that does not trust the CA, or
/// has no client certificate, cannot reach the store and refuses with 503 rather than
/// forwarding unguarded; nothing it refuses reaches the upstream.
#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn replicas_share_a_tls_redis_and_an_untrusted_server_is_not_used() {
    let Some(redis) =
        TestRedis::private_tls("replicas_share_a_tls_redis_and_an_untrusted_server_is_not_used")
    else {
        return;
    };
    let tls = redis.tls.as_ref().expect("TLS files");
    let up = Upstream::start();
    let prefix = unique_prefix("e2e-tls");
    let proxy = |ca: bool, client_cert: bool| {
        let mut top = format!(
            "timeouts:\n  upstream_read: 3s\nreplay:\n  backend: redis\n  redis_url: \"${{HG_TEST_REDIS}}\"\n  redis_prefix: \"{prefix}\"\n  redis_timeout: 1s\n  on_store_error: reject\n"
        );
        if ca {
            top.push_str(&format!(
                "  redis_tls_ca_cert_file: \"{}\"\n",
                tls.ca_cert.display()
            ));
        }
        if client_cert {
            top.push_str(&format!(
                "  redis_tls_cert_file: \"{}\"\n  redis_tls_key_file: \"{}\"\n",
                tls.client_cert.display(),
                tls.client_key.display()
            ));
        }
        Proxy::start_with(
            &mailgun_config(&up, &top, ""),
            &[],
            &[("HG_TEST_REDIS", redis.url.as_str())],
        )
    };
    let a = proxy(true, true);
    let b = proxy(true, true);
    wait_connected(&a);
    wait_connected(&b);
    let body = mg_json(&token());
    assert_eq!(post(a.port, "/mg", &[JSON], &body).status, 200);
    // The second replica saw the first one's key through the TLS store.
    assert_duplicate(&post(b.port, "/mg", &[JSON], &body));
    let forwarded = up.count();

    // The system's roots do not include the test CA: the server's certificate is refused.
    let untrusting = proxy(false, true);
    // A trusted server, but no client certificate for it to accept.
    let anonymous = proxy(true, false);
    for (who, p) in [("untrusting", &untrusting), ("anonymous", &anonymous)] {
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            let r = post(p.port, "/mg", &[JSON], &mg_json(&token()));
            assert_eq!(
                (r.status, r.error().as_str()),
                (503, "replay_store_unavailable"),
                "{who}: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    assert_eq!(
        up.count(),
        forwarded,
        "no refused request reached the upstream"
    );
    // And for the reasons meant (rustls's words), not, say, a wrong port.
    assert!(
        untrusting.log().contains("UnknownIssuer"),
        "{}",
        untrusting.log()
    );
    assert!(
        anonymous.log().contains("CertificateRequired"),
        "{}",
        anonymous.log()
    );
}
