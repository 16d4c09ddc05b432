//! The spool's long proofs (issue 14), `#[ignore]`d in `cargo test`: `scripts/spool_proof.sh`
//! runs them in release mode and prints their figures. Each is the real binary between a
//! retrying client and a recording upstream on 127.0.0.1.
//!
//! - `kill9_cycles`: messages sent at a concurrency while hookguard is SIGKILLed and started
//!   again many times: every message answered 2xx is delivered, each is enqueued once, extra
//!   deliveries are at most the ambiguous attempts the spool counted, the spool ends empty;
//! - `app_down_for_hours`: the application down for a scaled "hours" (backoff capped at
//!   `backoff_max`, so the schedule scales with it), hookguard killed in the middle: all
//!   accepted, a bounded number of attempts during the outage, the backlog drained after (its
//!   rate printed);
//! - `disk_full`: the spool on a small tmpfs (needs root to mount; skipped with a message
//!   otherwise): 503 once full, never a 2xx without a record, the file opens after a SIGKILL,
//!   messages accepted again after a purge.
//!
//! Sizes come from the environment (`SPOOL_PROOF_MESSAGES`, `SPOOL_PROOF_CYCLES`,
//! `SPOOL_PROOF_CONCURRENCY`, `SPOOL_PROOF_OUTAGE_SECS`).

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn spool_config(upstream_port: u16, dir: &std::path::Path) -> TestConfig {
    let placeholder = Upstream::start();
    TestConfig::new(&placeholder)
        .set("upstream", format!("http://127.0.0.1:{upstream_port}"))
        .set("threads", 2)
        .set("spool.path", dir.join("spool.redb").to_str().unwrap())
        .set("spool.min_free_bytes", 1 << 20)
        .set("spool.workers", 16)
        .route(TestRoute::mailgun("mg", "/mg", MG_KEY).set("spool", true))
}

/// The spool's durable figures (`/spool/stats`).
fn stats(admin_port: u16) -> serde_json::Value {
    let r = get(admin_port, "/spool/stats").expect("admin");
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).expect("JSON")
}

/// Sends messages `0..n` (each its own token, signed once: a retry is the same message) from
/// `concurrency` threads; each is re-sent until answered 2xx (202 queued or 200 duplicate),
/// as a provider retries. `tick` is called after each 2xx with the number answered so far.
/// Returns the ids answered and the number of non-2xx answers or connection errors seen.
fn send_all(
    port: u16,
    n: usize,
    concurrency: usize,
    tick: impl Fn(usize) + Send + Sync + 'static,
) -> (HashSet<String>, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(Mutex::new(HashSet::new()));
    let failures = Arc::new(AtomicUsize::new(0));
    let tick = Arc::new(tick);
    let threads: Vec<_> = (0..concurrency)
        .map(|_| {
            let (next, answered, failures, tick) = (
                next.clone(),
                answered.clone(),
                failures.clone(),
                tick.clone(),
            );
            std::thread::spawn(move || {
                let mut conn: Option<Conn> = None;
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    if i >= n {
                        return;
                    }
                    let token = token();
                    let body = mg_json(&token);
                    loop {
                        let c = match conn.take() {
                            Some(c) => c,
                            None => match Conn::open(port) {
                                Ok(c) => c,
                                Err(_) => {
                                    failures.fetch_add(1, Ordering::SeqCst);
                                    std::thread::sleep(Duration::from_millis(50));
                                    continue;
                                }
                            },
                        };
                        let mut c = c;
                        match c.post("/mg", &[JSON], &body) {
                            Ok(r) if r.status == 202 || r.status == 200 => {
                                conn = Some(c);
                                let total = {
                                    let mut a = answered.lock().unwrap();
                                    a.insert(token.clone());
                                    a.len()
                                };
                                tick(total);
                                break;
                            }
                            Ok(_) => {
                                conn = Some(c);
                                failures.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(20));
                            }
                            Err(_) => {
                                failures.fetch_add(1, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(20));
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let answered = answered.lock().unwrap().clone();
    (answered, failures.load(Ordering::SeqCst))
}

fn wait_empty(admin_port: u16, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let s = stats(admin_port);
        if s["queued"] == 0 && s["dead"] == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "the spool never emptied: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Deliveries by `X-Webhook-Id`: (all, distinct).
fn deliveries(upstream: &Upstream) -> (Vec<String>, HashSet<String>) {
    let all: Vec<String> = upstream
        .received()
        .iter()
        .filter_map(|r| r.header("x-webhook-id").map(str::to_owned))
        .collect();
    let distinct = all.iter().cloned().collect();
    (all, distinct)
}

#[test]
#[ignore = "long run: scripts/spool_proof.sh"]
fn kill9_cycles() {
    let n = env("SPOOL_PROOF_MESSAGES", 10_000);
    let cycles = env("SPOOL_PROOF_CYCLES", 20);
    let concurrency = env("SPOOL_PROOF_CONCURRENCY", 32);
    // The application takes a moment per message, so that kills land mid-delivery.
    let upstream = Upstream::with_default(Reply::Slow(Duration::from_millis(3), 200));
    let dir = tempfile::tempdir().unwrap();
    let proxy = Arc::new(Mutex::new(Proxy::start_config(&spool_config(
        upstream.port,
        dir.path(),
    ))));
    let (port, admin_port) = {
        let p = proxy.lock().unwrap();
        (p.port, p.admin_port)
    };
    let started = Instant::now();
    // A kill each time another n/(cycles+1) messages have been answered.
    let kills = Arc::new(AtomicUsize::new(0));
    let (k, p) = (kills.clone(), proxy.clone());
    let step = n / (cycles + 1);
    let (answered, failures) = send_all(port, n, concurrency, move |total| {
        let due = total / step.max(1);
        if due > k.load(Ordering::SeqCst) && k.load(Ordering::SeqCst) < cycles {
            if let Ok(mut proxy) = p.try_lock() {
                if due > k.load(Ordering::SeqCst) {
                    k.fetch_add(1, Ordering::SeqCst);
                    proxy.kill9();
                    proxy.restart();
                }
            }
        }
    });
    let sent_in = started.elapsed();
    wait_empty(admin_port, Duration::from_secs(120));
    if std::env::var("SPOOL_PROOF_LOG").is_ok() {
        let log = proxy.lock().unwrap().log();
        for l in log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .take(40)
        {
            println!("{l}");
        }
    }
    let s = stats(admin_port);
    let (all, distinct) = deliveries(&upstream);
    let extra = all.len() - distinct.len();
    println!(
        "kill9_cycles: {n} messages, concurrency {concurrency}, {} SIGKILL/restart cycles, sent in {:.1}s ({} non-2xx answers or connection errors retried); \
         {} deliveries of {} distinct messages ({} extra); spool: enqueued_total {}, delivered_total {}, ambiguous_total {}; total {:.1}s",
        kills.load(Ordering::SeqCst),
        sent_in.as_secs_f64(),
        failures,
        all.len(),
        distinct.len(),
        extra,
        s["enqueued_total"],
        s["delivered_total"],
        s["ambiguous_total"],
        started.elapsed().as_secs_f64()
    );
    assert_eq!(answered.len(), n, "every message answered 2xx in the end");
    let lost: Vec<_> = answered.difference(&distinct).collect();
    assert!(lost.is_empty(), "answered 2xx, never delivered: {lost:?}");
    assert_eq!(s["enqueued_total"], n, "each message enqueued once");
    assert!(
        extra as u64 <= s["ambiguous_total"].as_u64().unwrap(),
        "{extra} extra deliveries, only {} ambiguous attempts counted",
        s["ambiguous_total"]
    );
    assert!(kills.load(Ordering::SeqCst) >= cycles.min(n / step.max(1)) - 1);
}

#[test]
#[ignore = "long run: scripts/spool_proof.sh"]
fn app_down_for_hours() {
    let n = env("SPOOL_PROOF_MESSAGES", 10_000);
    let concurrency = env("SPOOL_PROOF_CONCURRENCY", 32);
    let outage = Duration::from_secs(env("SPOOL_PROOF_OUTAGE_SECS", 30) as u64);
    // The schedule scaled 1:2400: backoff_max 250 ms stands for 10 minutes, so 30 s of
    // outage stands for 20 hours.
    let backoff_max = Duration::from_millis(250);
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = spool_config(port, dir.path())
        .set("spool.backoff_initial", "10ms")
        .set("spool.backoff_max", "250ms")
        .set("spool.max_bytes", 4u64 << 30);
    let mut proxy = Proxy::start_config(&config);
    let started = Instant::now();
    let (answered, _) = send_all(proxy.port, n / 2, concurrency, |_| {});
    let mut sending = started.elapsed();
    // hookguard dies in the middle of the outage and comes back.
    std::thread::sleep(outage / 2);
    proxy.kill9();
    proxy.restart();
    let second = Instant::now();
    let (more, _) = send_all(proxy.port, n - n / 2, concurrency, |_| {});
    sending += second.elapsed();
    std::thread::sleep(outage.saturating_sub(started.elapsed()));
    // Attempts made during the outage: the records keep them across the restart.
    let list = get(proxy.admin_port, "/spool/messages").expect("admin");
    let list: serde_json::Value = serde_json::from_slice(&list.body).unwrap();
    let messages = list["messages"].as_array().unwrap();
    let attempts: u64 = messages
        .iter()
        .map(|m| m["attempts"].as_u64().unwrap())
        .sum();
    assert_eq!(messages.len(), n, "everything accepted is queued");
    assert!(messages.iter().all(|m| m["state"] == "queued"));

    let upstream = Upstream::on_port(port, Reply::Status(200, "{}"));
    let up_at = Instant::now();
    wait_empty(proxy.admin_port, Duration::from_secs(600));
    let drained_in = up_at.elapsed();
    let (all, distinct) = deliveries(&upstream);
    let s = stats(proxy.admin_port);
    // One probe per backoff step, each step at most backoff_max (±20%): the bound, with
    // room for the restart (a new process starts its steps again).
    let steps = outage.as_secs_f64() / (backoff_max.as_secs_f64() * 0.8);
    let bound = 2 * steps as u64 + 40;
    println!(
        "app_down_for_hours: {n} messages accepted ({:.1}s of sending) during a {}s outage (x2400: {} h), hookguard SIGKILLed mid-outage; \
         {attempts} attempts during the outage (bound {bound}); backlog of {n} drained in {:.2}s ({:.0} msg/s); \
         {} deliveries, {} distinct, ambiguous_total {}",
        sending.as_secs_f64(),
        outage.as_secs(),
        outage.as_secs() * 2400 / 3600,
        drained_in.as_secs_f64(),
        n as f64 / drained_in.as_secs_f64(),
        all.len(),
        distinct.len(),
        s["ambiguous_total"]
    );
    assert!(attempts <= bound, "{attempts} attempts during the outage");
    let answered: HashSet<_> = answered.union(&more).cloned().collect();
    assert_eq!(answered.len(), n);
    assert!(
        answered.is_subset(&distinct),
        "every accepted message delivered"
    );
    assert!((all.len() - distinct.len()) as u64 <= s["ambiguous_total"].as_u64().unwrap());
}

/// A tmpfs of `mib` MiB at a fresh directory; `None` when mounting is not permitted.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().ok()?.keep();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// A Mailgun message of about `size` bytes.
fn big_message(size: usize) -> Vec<u8> {
    let token = token();
    let ts = now();
    let sig = mg_sig(MG_KEY, &ts.to_string(), &token);
    let pad = "x".repeat(size);
    format!(
        r#"{{"signature": {{"timestamp": "{ts}", "token": "{token}", "signature": "{sig}"}}, "event-data": {{"event": "delivered", "pad": "{pad}"}}}}"#
    )
    .into_bytes()
}

/// Fills the spool until refused; returns (accepted, the refusal).
fn fill(port: u16) -> (usize, HttpResponse) {
    let mut accepted = 0;
    loop {
        let r = post(port, "/mg", &[JSON], &big_message(100_000));
        if r.status != 202 {
            return (accepted, r);
        }
        accepted += 1;
        assert!(accepted < 10_000, "never refused");
    }
}

fn queued(admin_port: u16) -> usize {
    // 503 while the spool reopens its file after a failed write (a second or so).
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        let r = get(admin_port, "/spool/messages?limit=100000").expect("admin");
        if r.status == 200 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r.status, 200, "listing: {}", r.text());
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("JSON");
    v["messages"].as_array().map_or(0, Vec::len)
}

#[test]
#[ignore = "long run: scripts/spool_proof.sh (needs root to mount a tmpfs)"]
fn disk_full() {
    let down = free_port();
    for (label, min_free) in [("free-space bound", 8u64 << 20), ("real ENOSPC", 0)] {
        let Some(fs) = Tmpfs::mount(48) else {
            println!("disk_full: SKIPPED: cannot mount a tmpfs here (not root?)");
            return;
        };
        let dir = fs.0.join("spool");
        let config = spool_config(down, &dir)
            .set("spool.min_free_bytes", min_free)
            .set("spool.max_bytes", 1u64 << 40);
        let mut proxy = Proxy::start_config(&config);
        let (accepted, refusal) = fill(proxy.port);
        let error = refusal.error();
        if std::env::var("SPOOL_PROOF_LOG").is_ok() {
            let log = proxy.log();
            std::thread::sleep(Duration::from_millis(7000));
            let log = if log.is_empty() { log } else { proxy.log() };
            let tail: Vec<_> = log
                .lines()
                .filter(|l| !l.contains("status=202"))
                .rev()
                .take(15)
                .collect();
            println!("{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
        }
        assert_eq!(refusal.status, 503, "{label}: {}", refusal.text());
        if min_free > 0 {
            assert_eq!(error, "spool_full", "{label}: the reserve is kept");
        }
        assert_eq!(
            queued(proxy.admin_port),
            accepted,
            "{label}: a record per 202"
        );
        // Still refusing, still consistent, after a SIGKILL: the file opens and holds them all.
        proxy.kill9();
        proxy.restart();
        assert_eq!(queued(proxy.admin_port), accepted, "{label}: after SIGKILL");
        let again = post(proxy.port, "/mg", &[JSON], &big_message(100_000));
        assert_eq!(again.status, 503, "{label}: still full");
        // Purged, it takes messages again.
        let cfg = proxy.config_path();
        let (code, out, err) = proxy.cli(&["spool", "-c", cfg.to_str().unwrap(), "purge", "--all"]);
        assert_eq!(code, 0, "{out}{err}");
        // The provider's retries: the space the purge freed is reused once redb has committed
        // past it (and, after a failed write, reopened the file).
        let mut tries = 0;
        let after = loop {
            tries += 1;
            let r = post(proxy.port, "/mg", &[JSON], &big_message(100_000));
            if r.status == 202 || tries == 20 {
                break r;
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        println!(
            "disk_full ({label}): 48 MiB tmpfs, 100 kB messages: {accepted} accepted, then 503 {error}; \
             {accepted} records after SIGKILL; after purge: {} (try {tries})",
            after.status
        );
        assert_eq!(
            after.status,
            202,
            "{label}: accepting after a purge: {}",
            after.text()
        );
    }
}
