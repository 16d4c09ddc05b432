//! hookguard in-process (`server::run` on a thread of the test), configured with the typed
//! [`TestConfig`] builder: it serves, it answers as the binary does, and `run` returns once
//! it is told to stop (the library never exits the process).

mod common;

use std::time::{Duration, Instant};

use common::*;

fn config(up: &Upstream) -> TestConfig {
    TestConfig::new(up)
        .set("timeouts.shutdown_grace", "1s")
        .route(TestRoute::mailgun("mg", "/mg", MG_KEY).set("upstream_path", "/hooks/mg"))
}

#[test]
fn serves_then_returns_when_stopped() {
    let up = Upstream::start();
    let server = InProcess::start(&config(&up));
    let body = mg_json(&token());
    let resp = post(server.port, "/mg", &[JSON], &body);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(up.received()[0].uri, "/hooks/mg");
    assert_duplicate(&post(server.port, "/mg", &[JSON], &body));
    let metrics = String::from_utf8(get(server.admin_port, "/metrics").unwrap().body).unwrap();
    assert!(metrics.contains("hookguard_requests_total"), "{metrics}");

    let port = server.port;
    let started = Instant::now();
    assert_eq!(server.stop(), Ok(()), "run returns Ok");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        Conn::open(port).is_err(),
        "the listener is closed once run has returned"
    );
}

/// The builder writes what the loader reads: the same config through the binary.
#[test]
fn the_builders_yaml_runs_the_binary_too() {
    let up = Upstream::start();
    let proxy = Proxy::start_config(
        &config(&up)
            .set("replay.duplicate_status", 409)
            .set("max_body_fields", 10),
    );
    let body = mg_json(&token());
    assert_eq!(post(proxy.port, "/mg", &[JSON], &body).status, 200);
    let again = post(proxy.port, "/mg", &[JSON], &body);
    assert_eq!((again.status, again.error().as_str()), (409, "replayed"));
}
