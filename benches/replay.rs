//! The replay guard: reserve a fresh key and commit it (a delivered webhook), reserve and drop
//! (a failed delivery, the key released), and a refused duplicate; in an empty guard and in
//! one already holding a million keys. (The guard never evicts a live key: its bound is set
//! above what the measurement adds.)
//!
//!     cargo bench --bench replay

mod common;

use std::fmt::Write;
use std::sync::Arc;
use std::time::Duration;

use common::Clock;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use hookguard::message::{MessageKey, SignerId};
use hookguard::replay::ReplayGuard;
use std::hint::black_box;

const TTL: Duration = Duration::from_secs(360);
const IN_FLIGHT: Duration = Duration::from_secs(80);

/// Mailgun-like 50-character tokens, each new.
struct Keys {
    n: u64,
    buf: String,
}

impl Keys {
    fn new(prefix: u64) -> Self {
        Keys {
            n: prefix << 40,
            buf: String::with_capacity(64),
        }
    }

    /// The key of the next token, as a Mailgun route derives it (hashing included).
    fn next(&mut self) -> [MessageKey; 1] {
        self.n += 1;
        self.buf.clear();
        let _ = write!(self.buf, "9e1a3c7f0b2d4e6a8c0e2f4a6{:025x}", self.n);
        key(&self.buf)
    }
}

fn key(token: &str) -> [MessageKey; 1] {
    [MessageKey::new(
        "mailgun",
        SignerId::of(b"bench-signing-key"),
        token.as_bytes(),
    )]
}

/// Resident set of this process, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn filled(n: u64) -> Arc<ReplayGuard> {
    let before = rss_kib();
    let guard = Arc::new(ReplayGuard::new(100_000_000, IN_FLIGHT));
    let mut keys = Keys::new(0xfff);
    for _ in 0..n {
        ready(
            ready(guard.reserve(&keys.next(), None, TTL))
                .unwrap()
                .commit(),
        );
    }
    let held = guard.len();
    if n > 0 {
        // What the RSS target (256 MiB with a million keys) is up against: the guard alone.
        let grown = rss_kib().saturating_sub(before);
        eprintln!(
            "replay guard holding {held} keys: RSS grew by {:.1} MiB ({} bytes per key)",
            grown as f64 / 1024.0,
            grown * 1024 / held.max(1)
        );
    }
    guard
}

fn replay(c: &mut Criterion<Clock>) {
    let mut group = c.benchmark_group("replay");
    for (label, preload) in [("empty", 0u64), ("1M-keys", 1_000_000)] {
        let guard = filled(preload);
        let mut keys = Keys::new(1);
        group.bench_function(BenchmarkId::new("reserve+commit", label), |b| {
            b.iter(|| {
                let r = ready(guard.reserve(&keys.next(), None, TTL)).expect("a new key");
                ready(r.commit());
            })
        });
        group.bench_function(BenchmarkId::new("reserve+release", label), |b| {
            b.iter(|| {
                let r = ready(guard.reserve(&keys.next(), None, TTL)).expect("a new key");
                drop(black_box(r));
            })
        });
        ready(
            ready(guard.reserve(&key("dup"), None, TTL))
                .unwrap()
                .commit(),
        );
        group.bench_function(BenchmarkId::new("duplicate-refused", label), |b| {
            b.iter(|| black_box(ready(guard.reserve(&key("dup"), None, TTL)).is_err()))
        });
    }
    group.finish();
}

/// The memory backend's futures never wait: poll once, without a runtime in the measurement.
fn ready<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => v,
        std::task::Poll::Pending => panic!("the memory replay guard never waits"),
    }
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = replay
}
criterion_main!(benches);
