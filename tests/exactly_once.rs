//! Exactly-once delivery under a flapping upstream.
//!
//! N distinct signed Mailgun messages go through hookguard to an upstream that fails a random
//! share of requests: 500, connection reset, or a hang past `timeouts.upstream_read` (a hung
//! request never accepts the message); a few more it accepts slowly, within `upstream_read`
//! but after the client's shorter timeout on some attempts. The client retries like a provider: every failure,
//! every timeout of its own, and every 409 that may still hide an attempt in flight. At the
//! end the upstream must have *accepted* (answered 2xx for) every message exactly once.
//!
//! What the client may conclude from a 409: `replayed` means "delivered, or in flight". An
//! attempt whose response the client read is settled (hookguard settles the key before it
//! answers). An attempt the client abandoned (its own timeout) is settled at the latest
//! `upstream_connect + 2 x upstream_read` (plus a margin) after it was sent. So a 409 received
//! after every abandoned attempt's settle deadline means "delivered"; an earlier one means
//! "retry later", which is what a provider's retry schedule amounts to.
//!
//! Not covered, because no proxy can: an upstream that accepts but answers after hookguard's
//! timeout. hookguard answered 504 and freed the key, the provider retries, and the upstream
//! gets the message twice (at-least-once). See the README.
//!
//! `cargo test` runs N = 1500 per backend; `scripts/exactly_once.sh` (the ignored tests) runs
//! N = 10000 or `HOOKGUARD_EXACTLY_ONCE_N`.
//!
//! Longer than 500 lines: the exactly-once client, the flapping upstream and their accounting
//! are one machine.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::redis_server::{unique_prefix, TestRedis};
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

const UPSTREAM_CONNECT: Duration = Duration::from_secs(1);
const UPSTREAM_READ: Duration = Duration::from_secs(4);
/// A hung upstream request outlives hookguard's `upstream_read`, then answers 503.
const HANG: Duration = Duration::from_millis(4600);
/// A slow upstream accepts within `upstream_read` (with a wide margin), but after the
/// client's short timeout.
const SLOW_ACCEPT: Duration = Duration::from_millis(1200);
/// The client's patience on attempts it means to abandon (shorter than `upstream_read`).
const SHORT_CLIENT_TIMEOUT: Duration = Duration::from_millis(800);
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// An attempt hookguard received is settled this long after it was sent, at the latest:
/// connect + read, twice (a stale pooled connection is retried once), plus the Redis calls
/// (2 s each) and a margin for a loaded machine; below the in-flight TTL (1 + 2 x 3 + 10 s).
const SETTLE_BOUND: Duration = Duration::from_secs(14);
const WORKERS: usize = 64;

/// One run at a time: the two variants would otherwise share the two cores.
static SERIAL: Mutex<()> = Mutex::new(());

// ------------------------------------------------------------------------------------------
// A deterministic random source (xorshift64*), seeded per run and printed.
// ------------------------------------------------------------------------------------------

struct Rng(AtomicU64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(AtomicU64::new(seed | 1))
    }
    /// A value in [0, 1000).
    fn permille(&self) -> u64 {
        let mut x = self.0.load(Ordering::Relaxed);
        loop {
            let mut n = x;
            n ^= n >> 12;
            n ^= n << 25;
            n ^= n >> 27;
            match self
                .0
                .compare_exchange_weak(x, n, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return n.wrapping_mul(0x2545_f491_4f6c_dd1d) % 1000,
                Err(cur) => x = cur,
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The flapping upstream
// ------------------------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Shares {
    /// Per mille of requests answered 500, reset, hung; and accepted slowly (but in time).
    error500: u64,
    reset: u64,
    hang: u64,
    slow_accept: u64,
}

#[derive(Default)]
struct Tally {
    /// Per message id: requests received, and 2xx answered.
    received: HashMap<String, u32>,
    accepted: HashMap<String, u32>,
    answered_500: u64,
    resets: u64,
    hangs: u64,
    slow_accepts: u64,
}

struct FlakyUpstream {
    port: u16,
    tally: Arc<Mutex<Tally>>,
    _runtime: tokio::runtime::Runtime,
}

impl FlakyUpstream {
    fn start(shares: Shares, rng: Arc<Rng>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let std_listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let port = std_listener.local_addr().expect("addr").port();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let t = tally.clone();
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (t, rng) = (t.clone(), rng.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (t, rng) = (t.clone(), rng.clone());
                        async move {
                            let id = req
                                .headers()
                                .get("x-webhook-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_owned();
                            let _ = req.into_body().collect().await;
                            let roll = rng.permille();
                            let mode = if roll < shares.error500 {
                                500
                            } else if roll < shares.error500 + shares.reset {
                                0
                            } else if roll < shares.error500 + shares.reset + shares.hang {
                                1
                            } else if roll
                                < shares.error500 + shares.reset + shares.hang + shares.slow_accept
                            {
                                2
                            } else {
                                200
                            };
                            {
                                let mut t = t.lock().unwrap();
                                *t.received.entry(id.clone()).or_default() += 1;
                                match mode {
                                    500 => t.answered_500 += 1,
                                    0 => t.resets += 1,
                                    1 => t.hangs += 1,
                                    // Accepted: counted before the answer goes out.
                                    2 => {
                                        t.slow_accepts += 1;
                                        *t.accepted.entry(id).or_default() += 1;
                                    }
                                    _ => *t.accepted.entry(id).or_default() += 1,
                                }
                            }
                            let status = match mode {
                                0 => return Err("reset".to_owned()),
                                1 => {
                                    // Never accepts: by the time it answers, hookguard has
                                    // given up on it.
                                    tokio::time::sleep(HANG).await;
                                    503
                                }
                                2 => {
                                    tokio::time::sleep(SLOW_ACCEPT).await;
                                    200
                                }
                                s => s,
                            };
                            Ok(Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from_static(b"{}")))
                                .unwrap())
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FlakyUpstream {
            port,
            tally,
            _runtime: runtime,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

// ------------------------------------------------------------------------------------------
// The provider-like client
// ------------------------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    attempts: AtomicUsize,
    ok: AtomicUsize,
    conflict: AtomicUsize,
    conflict_conclusive: AtomicUsize,
    status_5xx: AtomicUsize,
    abandoned: AtomicUsize,
    concurrent_pairs: AtomicUsize,
    gave_up: AtomicUsize,
}

enum Attempt {
    Status(u16),
    /// No (complete) response: the client's own timeout, or a broken connection.
    Abandoned,
}

struct Client {
    ports: Vec<u16>,
    next: AtomicUsize,
    rng: Arc<Rng>,
    stats: Stats,
}

impl Client {
    /// Round-robin over the proxies.
    fn port(&self) -> u16 {
        self.ports[self.next.fetch_add(1, Ordering::Relaxed) % self.ports.len()]
    }

    fn send(&self, port: u16, body: &[u8], conns: &mut HashMap<u16, Conn>) -> Attempt {
        self.stats.attempts.fetch_add(1, Ordering::Relaxed);
        // One attempt in four gives up early, as a provider with a short timeout would; it
        // only matters when the upstream hangs (everything else answers in milliseconds).
        let timeout = if self.rng.permille() < 250 {
            SHORT_CLIENT_TIMEOUT
        } else {
            CLIENT_TIMEOUT
        };
        let conn = match conns.remove(&port) {
            Some(c) => Ok(c),
            None => Conn::open(port),
        };
        let Ok(mut conn) = conn else {
            return Attempt::Abandoned;
        };
        conn.set_read_timeout(timeout);
        match conn.post("/mg", &[JSON], body) {
            Ok(r) => {
                if r.header("connection") != Some("close") {
                    conns.insert(port, conn);
                }
                Attempt::Status(r.status)
            }
            // A reused connection the proxy had closed, or our own timeout: either way the
            // connection is done, and the attempt may or may not have reached hookguard.
            Err(_) => Attempt::Abandoned,
        }
    }

    /// Delivers one message, retrying until it is known to be accepted.
    fn deliver(&self, body: &[u8], conns: &mut HashMap<u16, Conn>) {
        let started = Instant::now();
        // Until then, an attempt of ours may still be in flight inside hookguard.
        let mut unsettled_until = Instant::now();
        let mut backoff = Duration::from_millis(20);
        // Some messages start with two copies at once (to two replicas, with Redis).
        if self.rng.permille() < 100 {
            self.stats.concurrent_pairs.fetch_add(1, Ordering::Relaxed);
            let (p1, p2) = (self.port(), self.port());
            let results = std::thread::scope(|s| {
                let h = s.spawn(|| self.send(p2, body, &mut HashMap::new()));
                let first = self.send(p1, body, conns);
                (first, h.join().unwrap_or(Attempt::Abandoned))
            });
            let sent = Instant::now();
            for r in [results.0, results.1] {
                match r {
                    Attempt::Status(200) => {
                        self.stats.ok.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Attempt::Abandoned => {
                        self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                        unsettled_until = unsettled_until.max(sent + SETTLE_BOUND);
                    }
                    Attempt::Status(409) => {
                        self.stats.conflict.fetch_add(1, Ordering::Relaxed);
                    }
                    Attempt::Status(_) => {
                        self.stats.status_5xx.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        loop {
            if started.elapsed() > Duration::from_secs(300) {
                self.stats.gave_up.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let sent = Instant::now();
            match self.send(self.port(), body, conns) {
                Attempt::Status(s) if (200..300).contains(&s) => {
                    self.stats.ok.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Attempt::Status(409) => {
                    self.stats.conflict.fetch_add(1, Ordering::Relaxed);
                    if Instant::now() > unsettled_until {
                        // Nothing of ours can be in flight: the key is committed.
                        self.stats
                            .conflict_conclusive
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    backoff = Duration::from_millis(500);
                }
                Attempt::Status(_) => {
                    self.stats.status_5xx.fetch_add(1, Ordering::Relaxed);
                    backoff = (backoff * 2).min(Duration::from_millis(200));
                }
                Attempt::Abandoned => {
                    self.stats.abandoned.fetch_add(1, Ordering::Relaxed);
                    unsettled_until = unsettled_until.max(sent + SETTLE_BOUND);
                    backoff = Duration::from_millis(20);
                }
            }
            std::thread::sleep(backoff);
        }
    }
}

// ------------------------------------------------------------------------------------------
// The run
// ------------------------------------------------------------------------------------------

fn proxy_config(upstream: &FlakyUpstream, replay: &str) -> String {
    format!(
        "upstream: \"{}\"\ntimeouts:\n  upstream_connect: {}ms\n  upstream_read: {}ms\n{replay}\nroutes:\n  - name: mg\n    path: /mg\n    provider: mailgun\n    secrets: [\"{MG_KEY}\"]\n    tolerance: 1h\n",
        upstream.url(),
        UPSTREAM_CONNECT.as_millis(),
        UPSTREAM_READ.as_millis(),
    )
}

fn seed() -> u64 {
    std::env::var("HOOKGUARD_EXACTLY_ONCE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// Sends `n` messages through the proxies made by `proxies` and checks exactly-once.
fn run(label: &str, n: usize, proxies: impl FnOnce(&FlakyUpstream) -> Vec<Proxy>) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let seed = seed();
    let rng = Arc::new(Rng::new(seed));
    let shares = Shares {
        error500: 150,
        reset: 100,
        hang: 40,
        slow_accept: 30,
    };
    let upstream = FlakyUpstream::start(shares, rng.clone());
    let proxies = proxies(&upstream);
    let client = Client {
        ports: proxies.iter().map(|p| p.port).collect(),
        next: AtomicUsize::new(0),
        rng,
        stats: Stats::default(),
    };

    let tokens: Vec<String> = (0..n).map(|_| token()).collect();
    let bodies: Vec<Vec<u8>> = tokens.iter().map(|t| mg_json(t)).collect();
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                let mut conns = HashMap::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        break;
                    }
                    client.deliver(&bodies[i], &mut conns);
                }
            });
        }
    });
    let duration = started.elapsed();

    let tally = upstream.tally.lock().unwrap();
    let mut lost = 0;
    let mut duplicated = 0;
    for t in &tokens {
        match tally.accepted.get(t).copied().unwrap_or(0) {
            0 => lost += 1,
            1 => {}
            _ => duplicated += 1,
        }
    }
    let accepted: u32 = tally.accepted.values().sum();
    let received: u32 = tally.received.values().sum();
    let st = &client.stats;
    let report = format!(
        "exactly-once [{label}] seed {seed}: N {n}, accepted {accepted} ({} distinct), lost {lost}, duplicated {duplicated}; \
         upstream received {received} (500: {}, resets: {}, hangs: {}, slow accepts: {}); client attempts {} (retries {}), 2xx {}, 409 {} ({} conclusive), 5xx {}, abandoned {}, concurrent pairs {}, gave up {}; {:.1} s",
        tally.accepted.len(),
        tally.answered_500,
        tally.resets,
        tally.hangs,
        tally.slow_accepts,
        st.attempts.load(Ordering::Relaxed),
        st.attempts.load(Ordering::Relaxed).saturating_sub(n),
        st.ok.load(Ordering::Relaxed),
        st.conflict.load(Ordering::Relaxed),
        st.conflict_conclusive.load(Ordering::Relaxed),
        st.status_5xx.load(Ordering::Relaxed),
        st.abandoned.load(Ordering::Relaxed),
        st.concurrent_pairs.load(Ordering::Relaxed),
        st.gave_up.load(Ordering::Relaxed),
        duration.as_secs_f64(),
    );
    // On the terminal even when the test passes (libtest captures only print! and eprint!).
    let _ = writeln!(std::io::stderr(), "{report}");
    let logs: String = proxies
        .iter()
        .filter(|_| lost + duplicated > 0)
        .map(|p| {
            p.log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect();
    assert_eq!(st.gave_up.load(Ordering::Relaxed), 0, "{report}");
    assert_eq!((lost, duplicated), (0, 0), "{report}\n{logs}");
    assert_eq!(accepted as usize, n, "{report}");
    assert!(
        tally.answered_500 > 0 && tally.resets > 0 && tally.hangs > 0,
        "every failure mode occurred: {report}"
    );
}

fn n_long() -> usize {
    std::env::var("HOOKGUARD_EXACTLY_ONCE_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000)
}

fn memory(n: usize) {
    run("memory, 1 proxy", n, |up| {
        vec![Proxy::start(&proxy_config(
            up,
            "replay:\n  max_entries: 1000000",
        ))]
    });
}

fn redis(test: &str, n: usize) {
    let Some(redis) = TestRedis::shared(test) else {
        return;
    };
    let prefix = unique_prefix("exactly-once");
    run("redis, 2 proxies", n, |up| {
        let replay = format!(
            "replay:\n  backend: redis\n  redis_url: \"{}\"\n  redis_prefix: \"{prefix}\"\n  redis_timeout: 2s",
            redis.url
        );
        let proxies: Vec<Proxy> = (0..2)
            .map(|_| Proxy::start(&proxy_config(up, &replay)))
            .collect();
        // Both replicas talk to Redis before the run starts.
        for p in &proxies {
            let deadline = Instant::now() + Duration::from_secs(20);
            while p.metric("hookguard_replay_store_errors_total{op=\"reserve\"}") > 0.0
                || !p.log().contains("replay store connected")
            {
                assert!(
                    Instant::now() < deadline,
                    "proxy never connected:\n{}",
                    p.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        proxies
    });
}

#[test]
fn exactly_once_memory_backend_under_a_flapping_upstream() {
    memory(1500);
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[test]
fn exactly_once_redis_backend_two_replicas_under_a_flapping_upstream() {
    redis(
        "exactly_once_redis_backend_two_replicas_under_a_flapping_upstream",
        1500,
    );
}

#[test]
#[ignore = "long run: scripts/exactly_once.sh"]
fn exactly_once_long_memory() {
    memory(n_long());
}

#[test]
#[ignore = "long run: scripts/exactly_once.sh"]
fn exactly_once_long_redis() {
    redis("exactly_once_long_redis", n_long());
}
