//! The shared spool (`spool.backend: redis`), end to end: real hookguard processes on one real
//! redis-server, a recording upstream, a raw HTTP client.
//!
//! What is held: a message is answered `202` once its script has returned, delivered, and a
//! copy is `200 duplicate`, also when the copy goes to another replica; a replica killed
//! mid-delivery has its message (an entry pending to it in the consumer group) taken over by
//! the other when the lease ends, the interrupted attempt counted ambiguous; nothing is left on
//! the streams once delivered; a down upstream's backlog does not hold up another upstream's
//! messages; while the app is down, one probe per backoff step, then the backlog drains, each
//! message once; two replicas probe a down upstream once per step between them, not each (and
//! the shared record's protocol: found down, claimed, let go of, failed, up); a message queued by the previous version (one sorted set) is delivered after
//! the upgrade; Redis SIGKILLed and restarted on its append-only file loses no queued message;
//! after a Redis restarted without its data, the group is made again and new messages are
//! delivered; replicas gone are removed from the group, never one with entries pending;
//! Redis without an append-only file is refused at start (unless
//! allowed), `appendfsync everysec` is warned about, a Redis that denies CONFIG is said to be
//! unchecked; `spool.backend: redis` without the replay guard's Redis is refused at load.
//! The long proof (ignored; `scripts/spool_redis_proof.sh`): thousands of messages, two
//! replicas killed with SIGKILL again and again, a client retrying what was not answered 2xx.
//!
//! Longer than 500 lines: one self-contained test per promise of the shared spool, each with
//! its own Redis, replicas and upstream, and the long proof's client and accounting.

mod common;

use std::collections::{HashMap, HashSet};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_server::{unique_prefix, TestRedis};
use common::*;

/// The lease the tests configure: longer than an attempt can last with their timeouts
/// (0.5 s connect + 3 × 1 s read + 1 s Redis = 4.5 s).
const LEASE: &str = "5s";

/// A replica: one Mailgun route `/mg` with `spool: true` on the shared spool in `redis` under
/// `prefix`, forwarding to `upstream_url`, quick retries and short timeouts.
fn replica(upstream_url: &str, redis: &str, prefix: &str) -> TestConfig {
    let upstream = Upstream::start();
    TestConfig::new(&upstream)
        .set("upstream", upstream_url)
        .set("timeouts.upstream_connect", "500ms")
        .set("timeouts.upstream_read", "1s")
        .set("replay.backend", "redis")
        .set("replay.redis_url", redis)
        .set("replay.redis_prefix", prefix)
        .set("replay.redis_timeout", "1s")
        .set("spool.backend", "redis")
        .set("spool.redis_lease", LEASE)
        .set("spool.backoff_initial", "100ms")
        .set("spool.backoff_max", "400ms")
        .route(TestRoute::mailgun("mg", "/mg", MG_KEY).set("spool", true))
}

/// A replica on a Redis that keeps no append-only file (the test servers): allowed.
fn volatile_replica(upstream_url: &str, redis: &str, prefix: &str) -> TestConfig {
    replica(upstream_url, redis, prefix).set("spool.redis_allow_volatile", true)
}

fn send(port: u16, token: &str) -> HttpResponse {
    post(port, "/mg", &[JSON], &mg_json(token))
}

/// `/spool/stats` of a replica.
fn stats(proxy: &Proxy) -> serde_json::Value {
    let r = get(proxy.admin_port, "/spool/stats").expect("admin");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).expect("JSON")
}

/// The ids the upstream received, in order.
fn ids(upstream: &Upstream) -> Vec<String> {
    upstream
        .received()
        .iter()
        .map(|r| r.header("x-webhook-id").unwrap_or("").to_owned())
        .collect()
}

/// Runs hookguard on `config` expecting it to exit by itself (refusing to start); its exit
/// code and output. Killed after 30 s if it does not.
fn start_expecting_exit(config: &TestConfig) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config.yaml()).unwrap();
    let log = dir.path().join("log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_hookguard"))
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::from(file.try_clone().unwrap()))
        .stderr(Stdio::from(file))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (code, std::fs::read_to_string(&log).unwrap_or_default())
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn a_message_is_answered_202_delivered_once_and_a_copy_is_a_duplicate() {
    let Some(redis) =
        TestRedis::shared("a_message_is_answered_202_delivered_once_and_a_copy_is_a_duplicate")
    else {
        return;
    };
    let upstream = Upstream::start();
    let prefix = unique_prefix("spool-basic");
    let proxy = Proxy::start_config(&volatile_replica(&upstream.url(), &redis.url, &prefix));
    let body = mg_json(&token());
    let id = assert_queued(&post(proxy.port, "/mg", &[JSON], &body));
    // A copy while it may still be queued, and after delivery: never spooled twice.
    assert_duplicate(&post(proxy.port, "/mg", &[JSON], &body));
    eventually(Duration::from_secs(5), "delivery", || upstream.count() == 1);
    let got = &upstream.received()[0];
    assert_eq!(got.header("x-webhook-id"), Some(id.as_str()));
    assert_eq!(got.header("x-webhook-attempt"), Some("1"));
    assert_eq!(got.json()["event-data"]["event"], "delivered");
    assert_duplicate(&post(proxy.port, "/mg", &[JSON], &body));
    eventually(Duration::from_secs(3), "recorded as delivered", || {
        stats(&proxy)["delivered_total"] == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(upstream.count(), 1);
    let s = stats(&proxy);
    assert_eq!(s["enqueued_total"], 1, "{s}");
    assert_eq!(s["queued"], 0, "{s}");
    assert_eq!(s["queued_bytes"], 0, "{s}");

    // The keys are in Redis, under the replay prefix plus `spool:`, with dedup_ttl.
    let mut conn = redis.conn();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}spool:d:*"))
        .query(&mut conn)
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query(&mut conn).unwrap();
    assert!(ttl > 6 * 24 * 3600 * 1000, "dedup_ttl (7 days): {ttl}");
    // A delivered message leaves nothing on the streams: its entry acknowledged and deleted,
    // nothing pending in the consumer group.
    assert_streams_empty(&mut conn, &prefix);

    // Dead letters are kept, listed, retried and purged as with the embedded store.
    upstream.script([Reply::WithHeader(500, "x-webhook-abort", "no")]);
    assert_queued(&send(proxy.port, &token()));
    eventually(Duration::from_secs(5), "a dead letter", || {
        stats(&proxy)["dead"] == 1
    });
    let cfg = proxy.config_path();
    let cfg = cfg.to_str().unwrap();
    let (code, out, err) = proxy.cli(&["spool", "-c", cfg, "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dead (aborted)"), "{out}");
    let (code, out, err) = proxy.cli(&["spool", "-c", cfg, "retry", "--state", "dead"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 message(s) queued again"), "{out}");
    eventually(Duration::from_secs(5), "the retried one delivered", || {
        stats(&proxy)["delivered_total"] == 2
    });
    assert_eq!(stats(&proxy)["dead"], 0);

    // Purged: a dead letter, and a message waiting in its upstream's schedule (the app said
    // to come back in a minute). Nothing of either is left: record, schedule, stream entry.
    upstream.script([
        Reply::WithHeader(500, "x-webhook-abort", "no"),
        Reply::WithHeader(503, "retry-after", "60"),
    ]);
    assert_queued(&send(proxy.port, &token()));
    eventually(Duration::from_secs(5), "a dead letter", || {
        stats(&proxy)["dead"] == 1
    });
    assert_queued(&send(proxy.port, &token()));
    eventually(Duration::from_secs(5), "waiting a minute", || {
        upstream.count() == 5
    });
    let schedule = format!(
        "{prefix}spool:at:{}",
        upstream.url().trim_start_matches("http://")
    );
    eventually(Duration::from_secs(3), "in its schedule", || {
        redis::cmd("ZCARD")
            .arg(&schedule)
            .query::<u64>(&mut redis.conn())
            .unwrap()
            == 1
    });
    let (code, out, err) = proxy.cli(&["spool", "-c", cfg, "purge", "--all"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 message(s) purged"), "{out}");
    let s = stats(&proxy);
    assert_eq!(
        (s["queued"].clone(), s["dead"].clone()),
        (0.into(), 0.into()),
        "{s}"
    );
    assert_eq!(s["queued_bytes"], 0, "{s}");
    let left: u64 = redis::cmd("ZCARD").arg(&schedule).query(&mut conn).unwrap();
    assert_eq!(left, 0, "the schedule");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}spool:m:*"))
        .query(&mut conn)
        .unwrap();
    assert!(keys.is_empty(), "records left: {keys:?}");
    assert_streams_empty(&mut conn, &prefix);
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn a_copy_sent_to_another_replica_is_a_duplicate() {
    let Some(redis) = TestRedis::shared("a_copy_sent_to_another_replica_is_a_duplicate") else {
        return;
    };
    // The application is down at first: the message stays queued.
    let port = free_port();
    let app = format!("http://127.0.0.1:{port}");
    let prefix = unique_prefix("spool-copy");
    let a = Proxy::start_config(&volatile_replica(&app, &redis.url, &prefix));
    let b = Proxy::start_config(&volatile_replica(&app, &redis.url, &prefix));
    let body = mg_json(&token());
    let id = assert_queued(&post(a.port, "/mg", &[JSON], &body));
    assert_duplicate(&post(b.port, "/mg", &[JSON], &body));
    // Both replicas see the one message.
    assert_eq!(stats(&a)["queued"], 1);
    assert_eq!(stats(&b)["queued"], 1);
    let cfg = b.config_path();
    let (code, out, err) = b.cli(&["spool", "-c", cfg.to_str().unwrap(), "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id) && out.contains("1 message(s)"), "{out}");

    let upstream = Upstream::on_port(port, Reply::Status(200, "{}"));
    eventually(Duration::from_secs(10), "delivered", || {
        upstream.count() >= 1
    });
    eventually(Duration::from_secs(3), "the spool emptied", || {
        stats(&b)["queued"] == 0
    });
    assert_duplicate(&post(b.port, "/mg", &[JSON], &body));
    assert_duplicate(&post(a.port, "/mg", &[JSON], &body));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ids(&upstream), [id], "delivered once, by one replica");
    assert_eq!(stats(&a)["enqueued_total"], 1);

    // With no replica running, `hookguard spool` asks Redis itself.
    let (mut a, mut b) = (a, b);
    a.kill9();
    b.kill9();
    let (code, out, err) = b.cli(&["spool", "-c", cfg.to_str().unwrap(), "stats"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 enqueued, 1 delivered"), "{out}");
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn a_replica_killed_mid_delivery_has_its_message_taken_over_and_counted() {
    let Some(redis) =
        TestRedis::shared("a_replica_killed_mid_delivery_has_its_message_taken_over_and_counted")
    else {
        return;
    };
    let upstream = Upstream::start();
    // The first attempt hangs: its replica is killed while the application has the message.
    upstream.script([Reply::Slow(Duration::from_secs(30), 200)]);
    let prefix = unique_prefix("spool-takeover");
    let mut a = Proxy::start_config(&volatile_replica(&upstream.url(), &redis.url, &prefix));
    let mut b = Proxy::start_config(&volatile_replica(&upstream.url(), &redis.url, &prefix));
    let id = assert_queued(&send(a.port, &token()));
    eventually(Duration::from_secs(5), "mid-delivery", || {
        upstream.count() == 1
    });
    upstream.clear_script();
    // Whichever replica took it (most likely the one that queued it) is killed.
    let mut conn = redis.conn();
    let holder: String = redis::cmd("HGET")
        .arg(format!("{prefix}spool:m:1"))
        .arg("holder")
        .query(&mut conn)
        .unwrap();
    let killed_a = holder.contains(&format!("-{}-", a.pid()));
    assert!(
        killed_a || holder.contains(&format!("-{}-", b.pid())),
        "holder {holder}"
    );
    // The message is an entry pending to that replica in the consumer group.
    let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(format!("{prefix}spool:s:new"))
        .arg("deliver")
        .arg("-")
        .arg("+")
        .arg(10)
        .query(&mut conn)
        .unwrap();
    assert_eq!(pending.len(), 1, "{pending:?}");
    assert_eq!(pending[0].1, holder, "pending to the replica delivering it");
    let (dead, survivor) = if killed_a { (&mut a, &b) } else { (&mut b, &a) };
    let killed_at = Instant::now();
    dead.kill9();

    // Not before the lease ends (5 s from the start of the attempt), then by the survivor.
    eventually(Duration::from_secs(15), "taken over", || {
        upstream.count() == 2
    });
    assert!(
        killed_at.elapsed() >= Duration::from_secs(3),
        "taken over after {:?}, before the lease ended",
        killed_at.elapsed()
    );
    let again = &upstream.received()[1];
    assert_eq!(again.header("x-webhook-id"), Some(id.as_str()));
    assert_eq!(again.header("x-webhook-attempt"), Some("2"));
    eventually(Duration::from_secs(3), "recorded", || {
        stats(survivor)["delivered_total"] == 1
    });
    let s = stats(survivor);
    assert_eq!(s["ambiguous_total"], 1, "the interrupted attempt: {s}");
    assert_eq!(s["queued"], 0, "{s}");
    assert_eq!(
        survivor.metric("hookguard_spool_ambiguous_deliveries_total"),
        1.0
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(upstream.count(), 2);
    assert_streams_empty(&mut conn, &prefix);
}

/// Nothing left on either stream, nothing pending in the group.
fn assert_streams_empty(conn: &mut redis::Connection, prefix: &str) {
    for stream in ["s:new", "s:due"] {
        let key = format!("{prefix}spool:{stream}");
        let len: u64 = redis::cmd("XLEN").arg(&key).query(conn).unwrap();
        assert_eq!(len, 0, "{stream}: entries left");
        let summary: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
            .arg(&key)
            .arg("deliver")
            .query(conn)
            .unwrap();
        assert_eq!(summary.0, 0, "{stream}: entries pending");
    }
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn a_down_upstreams_backlog_does_not_hold_up_the_other_upstreams() {
    let Some(redis) =
        TestRedis::shared("a_down_upstreams_backlog_does_not_hold_up_the_other_upstreams")
    else {
        return;
    };
    // Route /mg spools to an upstream that is down and keeps getting messages; route /ok to
    // one that is up but answers its message's first attempt 429, so the message is due again
    // a second later. With 1 worker, a scheduler that looked at the oldest due messages of
    // every upstream together saw only the down upstream's, and /ok's retry waited for it.
    let down = free_port();
    let up = Upstream::start();
    up.script([Reply::Status(429, "{}")]);
    let prefix = unique_prefix("spool-hol");
    let config = volatile_replica(&format!("http://127.0.0.1:{down}"), &redis.url, &prefix)
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

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn a_message_queued_by_the_previous_version_is_delivered_after_the_upgrade() {
    let Some(redis) = TestRedis::shared(
        "a_message_queued_by_the_previous_version_is_delivered_after_the_upgrade",
    ) else {
        return;
    };
    // The previous version kept every queued message in one sorted set `due` (by due time)
    // and had no streams. One message written as it wrote them, due now.
    let upstream = Upstream::start();
    let prefix = unique_prefix("spool-upgrade");
    let address = upstream.url().trim_start_matches("http://").to_owned();
    let now_ms = now() * 1000;
    let envelope = serde_json::json!({
        "route": "mg", "provider": "mailgun", "id": "old-message-1", "received_ms": now_ms,
        "upstream": address, "method": "POST", "target": "/mg",
        "headers": [["content-type", "YXBwbGljYXRpb24vanNvbg=="], ["x-webhook-id", "b2xkLW1lc3NhZ2UtMQ=="]],
    });
    let mut conn = redis.conn();
    let p = format!("{prefix}spool:");
    let _: () = redis::cmd("HSET")
        .arg(format!("{p}m:1"))
        .arg(&[
            ("env", envelope.to_string()),
            ("body", "{\"old\":true}".into()),
            ("upstream", address.clone()),
            ("state", "queued".into()),
            ("attempts", "0".into()),
            ("finished", "0".into()),
            ("client_errors", "0".into()),
            ("ambiguous", "0".into()),
            ("next_ms", now_ms.to_string()),
            ("received", now_ms.to_string()),
            ("bytes", "12".into()),
            ("holder", String::new()),
        ])
        .query(&mut conn)
        .unwrap();
    let member = format!("{:020}", 1);
    let _: () = redis::cmd("ZADD")
        .arg(format!("{p}due"))
        .arg(now_ms)
        .arg(&member)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("ZADD")
        .arg(format!("{p}queued"))
        .arg(1)
        .arg(&member)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{p}meta"))
        .arg(&[
            ("next_seq", 1),
            ("queued", 1),
            ("queued_bytes", 12),
            ("enqueued_total", 1),
        ])
        .query(&mut conn)
        .unwrap();

    let proxy = Proxy::start_config(&volatile_replica(&upstream.url(), &redis.url, &prefix));
    eventually(Duration::from_secs(5), "the old message delivered", || {
        upstream.count() == 1
    });
    let got = &upstream.received()[0];
    assert_eq!(got.header("x-webhook-id"), Some("old-message-1"));
    assert_eq!(got.body, b"{\"old\":true}");
    eventually(Duration::from_secs(3), "recorded", || {
        stats(&proxy)["delivered_total"] == 1
    });
    let old: bool = redis::cmd("EXISTS")
        .arg(format!("{p}due"))
        .query(&mut conn)
        .unwrap();
    assert!(!old, "the old sorted set is gone");
    // New messages go on as usual, numbered after it.
    let id = assert_queued(&send(proxy.port, &token()));
    eventually(Duration::from_secs(5), "a new one delivered", || {
        upstream.count() == 2
    });
    assert_eq!(
        upstream.received()[1].header("x-webhook-id"),
        Some(id.as_str())
    );
    // The result is recorded (and the entry let go of) once the application has answered.
    eventually(Duration::from_secs(3), "recorded", || {
        stats(&proxy)["delivered_total"] == 2
    });
    assert_streams_empty(&mut conn, &prefix);
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn a_redis_without_an_append_only_file_is_refused_at_start_unless_allowed() {
    // Its directory given at start (`dir` cannot be changed at run time): the append-only
    // file is turned on below.
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = TestRedis::private_args(
        "a_redis_without_an_append_only_file_is_refused_at_start_unless_allowed",
        &["--dir", dir.path().to_str().unwrap()],
    ) else {
        return;
    };
    let upstream = Upstream::start();
    let prefix = unique_prefix("spool-aof");
    // A password in the URL: it never shows.
    let mut conn = redis.conn();
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("pw-sekrit-9")
        .query(&mut conn)
        .unwrap();
    let port = redis.port.unwrap();
    let url = format!("redis://:pw-sekrit-9@127.0.0.1:{port}");
    let (code, log) = start_expecting_exit(&replica(&upstream.url(), &url, &prefix));
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("appendonly no"), "{log}");
    assert!(log.contains("redis_allow_volatile"), "{log}");
    assert!(!log.contains("pw-sekrit-9"), "{log}");

    // Allowed: it starts, and says what it accepted.
    let proxy = Proxy::start_config(&volatile_replica(&upstream.url(), &url, &prefix));
    proxy.log_when(|l| l.contains("allowed by spool.redis_allow_volatile"));
    assert_queued(&send(proxy.port, &token()));
    drop(proxy);

    // With an append-only file synced once a second: it starts, with a warning.
    let mut conn = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    for (k, v) in [("appendonly", "yes"), ("appendfsync", "everysec")] {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg(k)
            .arg(v)
            .query(&mut conn)
            .unwrap();
    }
    let proxy = Proxy::start_config(&replica(&upstream.url(), &url, &prefix));
    let log = proxy.log_when(|l| l.contains("appendfsync everysec"));
    assert!(log.contains("1 s"), "{log}");
    assert!(!log.contains("pw-sekrit-9"), "{log}");
    drop(proxy);

    // A Redis that does not let hookguard read its config: started, said to be unchecked.
    let _: () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-config")
        .query(&mut conn)
        .unwrap();
    let proxy = Proxy::start_config(&replica(&upstream.url(), &url, &prefix));
    proxy.log_when(|l| l.contains("could not check Redis's persistence"));
    assert_queued(&send(proxy.port, &token()));
}

#[test]
fn spool_backend_redis_without_the_replay_redis_is_refused_at_load() {
    let upstream = Upstream::start();
    let config = TestConfig::new(&upstream)
        .set("spool.backend", "redis")
        .set("spool.path", "/tmp/nowhere.redb")
        .set("spool.redis_lease", "1s")
        .route(TestRoute::mailgun("mg", "/mg", MG_KEY).set("spool", true));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, config.yaml()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hookguard"))
        .args(["check", "--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(1), "{text}");
    // Every error at once, each with its position.
    assert!(
        text.contains("`spool.backend: redis` needs `replay.backend: redis`"),
        "{text}"
    );
    assert!(text.contains("`spool.path` applies only with"), "{text}");
    assert!(
        text.contains("`spool.redis_lease` must be longer than an attempt"),
        "{text}"
    );
    assert!(text.contains("config.yaml:"), "positioned: {text}");
}

// ------------------------------------------------------------------------------------------
// The long proof
// ------------------------------------------------------------------------------------------

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One POST with bounded waits; `None` when the replica did not answer (killed, restarting).
fn try_post(port: u16, body: &[u8]) -> Option<u16> {
    let stream = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .ok()?;
    drop(stream);
    let mut conn = Conn::open(port).ok()?;
    conn.set_read_timeout(Duration::from_secs(10));
    conn.post("/mg", &[JSON], body).ok().map(|r| r.status)
}

/// Two replicas on one redis-server, killed with SIGKILL in turn while a client sends
/// thousands of messages at concurrency 32 and retries every one not answered 2xx (on the
/// other replica, or the same once it is back). Sized by `SPOOL_PROOF_MESSAGES` (10000),
/// `SPOOL_PROOF_CONCURRENCY` (32), `SPOOL_PROOF_KILLS` (20), `SPOOL_PROOF_APP_DELAY_MS` (0: how
/// long the application takes to answer, so that more kills land mid-delivery); Redis from
/// `SPOOL_PROOF_REDIS_URL` (else the test Redis). Holds: every message answered 2xx is delivered; each is enqueued
/// once (`enqueued_total` = messages); deliveries beyond one per message are at most the
/// attempts counted ambiguous; the spool is empty at the end.
#[ignore = "long (10,000 messages, 20 SIGKILLs), needs redis-server: scripts/spool_redis_proof.sh runs it"]
#[test]
fn proof_two_replicas_killed_again_and_again_lose_nothing_and_enqueue_once() {
    let messages = env_or("SPOOL_PROOF_MESSAGES", 10_000);
    let concurrency = env_or("SPOOL_PROOF_CONCURRENCY", 32);
    let kills = env_or("SPOOL_PROOF_KILLS", 20);
    let delay = env_or("SPOOL_PROOF_APP_DELAY_MS", 0);
    let shared;
    let url = match std::env::var("SPOOL_PROOF_REDIS_URL") {
        Ok(url) => url,
        Err(_) => {
            let Some(r) = TestRedis::shared("proof") else {
                return;
            };
            shared = r;
            shared.url.clone()
        }
    };
    let upstream = match delay {
        0 => Upstream::start(),
        ms => Upstream::with_default(Reply::Slow(Duration::from_millis(ms as u64), 200)),
    };
    let prefix = unique_prefix("spool-proof");
    let config = |allow: bool| {
        replica(&upstream.url(), &url, &prefix)
            .set("spool.redis_allow_volatile", allow)
            .set("spool.workers", 16)
            .set("replay.redis_timeout", "2s")
            .set("spool.redis_lease", "8s")
            .set("threads", 2)
    };
    // A durable Redis (the script's) is checked like production; the test Redis is allowed.
    let allow = std::env::var("SPOOL_PROOF_REDIS_URL").is_err();
    let mut replicas = [
        Proxy::start_config(&config(allow)),
        Proxy::start_config(&config(allow)),
    ];
    let ports: Vec<u16> = replicas.iter().map(|p| p.port).collect();
    let admin_ports: Vec<u16> = replicas.iter().map(|p| p.admin_port).collect();

    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let answered: Arc<Mutex<HashSet<String>>> = Arc::default();
    let not_2xx = Arc::new(AtomicUsize::new(0));
    // The answers that were not 2xx, by status ("none": no answer, the replica was dead).
    let by_status: Arc<Mutex<std::collections::BTreeMap<String, usize>>> = Arc::default();
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..concurrency)
        .map(|c| {
            let (next, answered, not_2xx, by_status, done, ports) = (
                next.clone(),
                answered.clone(),
                not_2xx.clone(),
                by_status.clone(),
                done.clone(),
                ports.clone(),
            );
            std::thread::spawn(move || loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                if i >= messages {
                    break;
                }
                let token = format!("proof{i:06}x{}", token());
                let body = mg_json(&token);
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut tries = 0usize;
                loop {
                    let port = ports[(i + c + tries) % ports.len()];
                    match try_post(port, &body) {
                        Some(200 | 202) => break,
                        other => {
                            not_2xx.fetch_add(1, Ordering::Relaxed);
                            let status =
                                other.map_or_else(|| "none".to_string(), |s| s.to_string());
                            *by_status.lock().unwrap().entry(status).or_default() += 1;
                            assert!(Instant::now() < deadline, "{token} never answered 2xx");
                            tries += 1;
                            std::thread::sleep(Duration::from_millis(20));
                        }
                    }
                }
                answered.lock().unwrap().insert(token);
                done.fetch_add(1, Ordering::SeqCst);
            })
        })
        .collect();

    // SIGKILL and restart, in turn, spread over the sending.
    let mut killed = 0;
    while killed < kills {
        let sent = done.load(Ordering::SeqCst);
        let due = messages * (killed + 1) / (kills + 1);
        if sent < due && sent < messages {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let victim = &mut replicas[killed % 2];
        victim.kill9();
        std::thread::sleep(Duration::from_millis(150));
        victim.restart();
        killed += 1;
    }
    for c in clients {
        c.join().expect("client");
    }
    let sent_for = started.elapsed();

    // Everything delivered and the spool empty (the last takeovers wait for their leases).
    let stats_of = |port: u16| -> serde_json::Value {
        let r = get(port, "/spool/stats").expect("stats");
        serde_json::from_slice(&r.body).expect("JSON")
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = stats_of(admin_ports[0]);
        if s["queued"] == 0 && s["delivered_total"].as_u64() == Some(messages as u64) {
            break;
        }
        assert!(Instant::now() < deadline, "never emptied: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let elapsed = started.elapsed();
    let s = stats_of(admin_ports[1]);
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for id in ids(&upstream) {
        *per_id.entry(id).or_default() += 1;
    }
    let answered = answered.lock().unwrap();
    let deliveries: usize = per_id.values().sum();
    let extra = deliveries - per_id.len();
    let ambiguous = s["ambiguous_total"].as_u64().unwrap() as usize;
    println!(
        "spool redis proof: {messages} messages at concurrency {concurrency}, app answering \
         after {delay} ms, {kills} SIGKILLs (alternating between 2 replicas), {} requests not answered 2xx and retried ({:?}); \
         {deliveries} deliveries of {} distinct messages, {extra} extra; {ambiguous} attempts \
         counted ambiguous; enqueued_total {}, delivered_total {}, dead {}, queued {}; \
         sending took {:.1} s, all delivered after {:.1} s",
        not_2xx.load(Ordering::Relaxed),
        by_status.lock().unwrap(),
        per_id.len(),
        s["enqueued_total"],
        s["delivered_total"],
        s["dead"],
        s["queued"],
        sent_for.as_secs_f64(),
        elapsed.as_secs_f64(),
    );
    assert_eq!(answered.len(), messages);
    let missing: Vec<_> = answered
        .iter()
        .filter(|t| !per_id.contains_key(*t))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "answered 2xx, never delivered: {missing:?}"
    );
    assert_eq!(
        s["enqueued_total"].as_u64(),
        Some(messages as u64),
        "each enqueued once"
    );
    assert!(
        extra <= ambiguous,
        "{extra} extra deliveries, {ambiguous} counted ambiguous"
    );
    assert_eq!(s["queued"], 0);
    assert_eq!(s["dead"], 0);
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn while_the_app_is_down_one_probe_per_step_then_the_backlog_drains_once() {
    let Some(redis) =
        TestRedis::shared("while_the_app_is_down_one_probe_per_step_then_the_backlog_drains_once")
    else {
        return;
    };
    // The application answers 503 until the script is cleared.
    let upstream = Upstream::start();
    upstream.script(std::iter::repeat_n(Reply::Status(503, "{}"), 1000));
    let prefix = unique_prefix("spool-outage");
    let config = volatile_replica(&upstream.url(), &redis.url, &prefix)
        .set("spool.workers", 4)
        .set("spool.backoff_initial", "100ms")
        .set("spool.backoff_max", "400ms");
    let proxy = Proxy::start_config(&config);
    let mut queued = Vec::new();
    for _ in 0..20 {
        queued.push(assert_queued(&send(proxy.port, &token())));
    }
    proxy.log_when(|l| l.contains("delivery stops"));
    let outage = Instant::now();
    std::thread::sleep(Duration::from_millis(2500));
    // At most the first wave (the 4 workers' attempts before the upstream counted as down)
    // and one probe per backoff step: 100 ms, 200 ms, then 400 ms (less 20% of jitter). Each
    // of the 20 messages retried on its own backoff would be over a hundred.
    let during = upstream.count();
    let steps = 2 + outage.elapsed().as_millis() as usize / 320;
    assert!(
        during <= 4 + steps,
        "{during} attempts in {:?} of outage",
        outage.elapsed()
    );
    upstream.clear_script();
    assert_backlog_drains_once(&upstream, during, &[&proxy], 20, &redis, &prefix);
    for id in &queued {
        assert!(ids(&upstream).contains(id), "{id} never tried");
    }
}

/// Once the application answers again: the backlog of `total` messages is delivered, each
/// message once after the first `during` attempts, none queued at any of the `replicas`, and
/// nothing left on the streams.
fn assert_backlog_drains_once(
    upstream: &Upstream,
    during: usize,
    replicas: &[&Proxy],
    total: u64,
    redis: &TestRedis,
    prefix: &str,
) {
    eventually(Duration::from_secs(10), "the backlog drained", || {
        stats(replicas[0])["delivered_total"] == total
    });
    let after: Vec<String> = ids(upstream)[during..].to_vec();
    let once: HashSet<&String> = after.iter().collect();
    assert_eq!(once.len(), after.len(), "each delivered once: {after:?}");
    for proxy in replicas {
        assert_eq!(stats(proxy)["queued"], 0);
    }
    let mut conn = redis.conn();
    assert_streams_empty(&mut conn, prefix);
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn two_replicas_probe_a_down_upstream_once_per_step_between_them() {
    let Some(redis) =
        TestRedis::shared("two_replicas_probe_a_down_upstream_once_per_step_between_them")
    else {
        return;
    };
    let upstream = Upstream::start();
    upstream.script(std::iter::repeat_n(Reply::Status(503, "{}"), 1000));
    let prefix = unique_prefix("spool-shared-probe");
    let config = || volatile_replica(&upstream.url(), &redis.url, &prefix).set("spool.workers", 4);
    let a = Proxy::start_config(&config());
    let b = Proxy::start_config(&config());
    // Both replicas take messages (new ones are read by whichever asks first) and see the
    // upstream fail.
    for i in 0..20 {
        let port = if i % 2 == 0 { a.port } else { b.port };
        assert_queued(&send(port, &token()));
    }
    // The backoff is at its ceiling by then (100 ms, 200 ms, then 400 ms).
    std::thread::sleep(Duration::from_millis(1000));
    let before = upstream.count();
    let window = Instant::now();
    std::thread::sleep(Duration::from_millis(2400));
    let probes = upstream.count() - before;
    let elapsed = window.elapsed();
    // One probe per step for the upstream, whichever replica sends it: steps are at least
    // 320 ms apart (400 ms less 20% of jitter). Each replica probing on its own sends about
    // twice as many.
    let bound = 1 + elapsed.as_millis() as usize / 320;
    assert!(
        probes <= bound,
        "{probes} probes in {elapsed:?} (at most {bound}: one per step)"
    );
    assert!(probes >= 2, "the upstream was probed: {probes}");
    let during = upstream.count();
    upstream.clear_script();
    // Whichever replica's probe finds it back, both deliver again: the backlog drains, each
    // message once.
    assert_backlog_drains_once(&upstream, during, &[&a, &b], 20, &redis, &prefix);
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn redis_killed_and_restarted_loses_no_queued_message() {
    // Redis as the spool asks for it: every write in the append-only file before it answers.
    let dir = tempfile::tempdir().unwrap();
    let dir_arg = dir.path().to_str().unwrap().to_owned();
    let Some(mut redis) = TestRedis::private_args(
        "redis_killed_and_restarted_loses_no_queued_message",
        &[
            "--dir",
            &dir_arg,
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ],
    ) else {
        return;
    };
    // The application is down while the messages are queued, taken and set back.
    let port = free_port();
    let prefix = unique_prefix("spool-redis-restart");
    let proxy = Proxy::start_config(&replica(
        &format!("http://127.0.0.1:{port}"),
        &redis.url,
        &prefix,
    ));
    let mut queued = Vec::new();
    for _ in 0..10 {
        queued.push(assert_queued(&send(proxy.port, &token())));
    }
    proxy.log_when(|l| l.contains("delivery stops"));
    std::thread::sleep(Duration::from_millis(300));

    // SIGKILL, then the same server started again on its file.
    redis.stop();
    std::thread::sleep(Duration::from_millis(500));
    redis.start();
    let upstream = Upstream::on_port(port, Reply::Status(200, "{}"));
    // (The replica's connection comes back by itself; a call meanwhile may fail.)
    eventually(Duration::from_secs(15), "every message delivered", || {
        get(proxy.admin_port, "/spool/stats")
            .ok()
            .filter(|r| r.status == 200)
            .and_then(|r| serde_json::from_slice::<serde_json::Value>(&r.body).ok())
            .is_some_and(|s| s["delivered_total"] == 10)
    });
    let got = ids(&upstream);
    for id in &queued {
        assert_eq!(
            got.iter().filter(|g| *g == id).count(),
            1,
            "{id} delivered once: {got:?}"
        );
    }
    let s = stats(&proxy);
    assert_eq!(s["queued"], 0, "{s}");
    assert_eq!(s["enqueued_total"], 10, "{s}");
    let mut conn = redis.conn();
    assert_streams_empty(&mut conn, &prefix);
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn after_a_redis_restarted_without_its_data_new_messages_are_delivered() {
    // A Redis without persistence (allowed by `spool.redis_allow_volatile`) loses the streams
    // and their consumer group when it restarts: the replica makes them again instead of
    // accepting messages it would never deliver.
    let Some(mut redis) =
        TestRedis::private("after_a_redis_restarted_without_its_data_new_messages_are_delivered")
    else {
        return;
    };
    let upstream = Upstream::start();
    let prefix = unique_prefix("spool-volatile-restart");
    let proxy = Proxy::start_config(&volatile_replica(&upstream.url(), &redis.url, &prefix));
    assert_queued(&send(proxy.port, &token()));
    eventually(Duration::from_secs(5), "the first delivered", || {
        upstream.count() == 1
    });
    redis.stop();
    redis.start();
    // The first tries may meet the connection coming back: 503, which a provider retries.
    let body = mg_json(&token());
    let deadline = Instant::now() + Duration::from_secs(10);
    let id = loop {
        let r = post(proxy.port, "/mg", &[JSON], &body);
        if r.status == 202 {
            break assert_queued(&r);
        }
        assert!(
            Instant::now() < deadline,
            "not accepted again: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    eventually(
        Duration::from_secs(10),
        "the message after the restart",
        || ids(&upstream).contains(&id),
    );
    proxy.log_when(|l| l.contains("consumer group was missing"));
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn replicas_gone_are_removed_from_the_group_but_never_with_entries_pending() {
    let Some(redis) = TestRedis::shared(
        "replicas_gone_are_removed_from_the_group_but_never_with_entries_pending",
    ) else {
        return;
    };
    let prefix = unique_prefix("spool-consumers");
    let settings = hookguard::config::RedisSettings {
        url: hookguard::secret::Secret::new(redis.url.clone()),
        display: "test redis".into(),
        prefix: prefix.clone(),
        timeout: Duration::from_secs(1),
        tls: Default::default(),
    };
    let spool = hookguard::spool::RedisSpool::open(
        &settings,
        &hookguard::config::SpoolSettings::default(),
        Box::new(|_| {}),
    )
    .expect("open");
    // Two replicas gone: one holding an entry it read and never finished, one holding nothing.
    let stream = format!("{prefix}spool:s:new");
    let mut conn = redis.conn();
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg("seq")
        .arg(999)
        .arg("up")
        .arg("127.0.0.1:9")
        .query(&mut conn)
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("deliver")
        .arg("gone-with-pending")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&stream)
        .arg(">")
        .query(&mut conn)
        .unwrap();
    let _: i64 = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&stream)
        .arg("deliver")
        .arg("gone-idle")
        .query(&mut conn)
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let forget = |idle| runtime.block_on(spool.forget_gone_consumers(idle)).unwrap();
    assert_eq!(forget(Duration::from_secs(60)), 0, "none idle that long");
    assert_eq!(forget(Duration::from_millis(10)), 1);
    let consumers: Vec<Vec<redis::Value>> = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&stream)
        .arg("deliver")
        .query(&mut conn)
        .unwrap();
    let names: Vec<String> = consumers
        .iter()
        .filter_map(|c| match c.get(1) {
            Some(redis::Value::BulkString(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(
        names,
        ["gone-with-pending"],
        "the one holding an entry stays"
    );
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn the_replicas_shared_down_record_gives_each_probe_to_one_replica() {
    use hookguard::spool::{Health, HealthChange, SharedDown, SpoolBackend};
    let Some(redis) =
        TestRedis::shared("the_replicas_shared_down_record_gives_each_probe_to_one_replica")
    else {
        return;
    };
    let prefix = unique_prefix("spool-health");
    let settings = hookguard::config::RedisSettings {
        url: hookguard::secret::Secret::new(redis.url.clone()),
        display: "test redis".into(),
        prefix,
        timeout: Duration::from_secs(1),
        tls: Default::default(),
    };
    let open = || {
        hookguard::spool::RedisSpool::open(
            &settings,
            &hookguard::config::SpoolSettings::default(),
            Box::new(|_| {}),
        )
        .expect("open")
    };
    let (a, b) = (open(), open());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let up = "127.0.0.1:9";
    let change = |spool: &hookguard::spool::RedisSpool, c| {
        runtime
            .block_on(spool.upstream_health(up, c))
            .unwrap()
            .expect("shared")
    };
    let now = hookguard::spool::now_ms();
    let hold_ms = 60_000;
    let claim = HealthChange::Claim { hold_ms };

    assert_eq!(change(&a, claim), Health::Up, "nothing recorded: up");
    // A finds it down first; B's own first failure adopts A's time and step.
    let first = SharedDown {
        next_ms: now + 100,
        step: 1,
    };
    assert_eq!(
        change(&a, HealthChange::FoundDown { next_ms: now + 100 }),
        Health::Down(first)
    );
    assert_eq!(
        change(&b, HealthChange::FoundDown { next_ms: now + 999 }),
        Health::Down(first)
    );
    assert_eq!(change(&b, claim), Health::Down(first), "not due yet");
    let listed = runtime
        .block_on(b.down_upstreams())
        .unwrap()
        .expect("shared");
    assert_eq!(listed.get(up), Some(&first));
    // Due: the first to claim probes; the other waits for the claim's hold.
    std::thread::sleep(Duration::from_millis(120));
    let Health::Claimed(held) = change(&b, claim) else {
        panic!("B's claim")
    };
    assert!(held.next_ms >= now + hold_ms, "{held:?}");
    assert_eq!(change(&a, claim), Health::Down(held));
    // B's probe ended without an answer: the next may go at once, from A.
    change(&b, HealthChange::Release);
    assert!(matches!(change(&a, claim), Health::Claimed(_)));
    // A's probe failed: the next step, at its time, for both.
    let second = SharedDown {
        next_ms: now + 60_000,
        step: 2,
    };
    assert_eq!(
        change(
            &a,
            HealthChange::ProbeFailed {
                next_ms: second.next_ms,
                step: 2
            }
        ),
        Health::Down(second)
    );
    assert_eq!(change(&b, claim), Health::Down(second));
    // Answered: up for both, and the record is gone.
    assert_eq!(change(&a, HealthChange::Up), Health::Up);
    assert_eq!(change(&b, claim), Health::Up);
    let listed = runtime
        .block_on(b.down_upstreams())
        .unwrap()
        .expect("shared");
    assert!(listed.is_empty(), "{listed:?}");
}
