//! Fixtures shared by the criterion benches: signed Mailgun bodies (JSON, form, multipart) of a
//! given size, and a Mailgun provider built from a config, as hookguard builds it.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::Criterion;
use hookguard::config::{self, expand::ProcessEnv};
use hookguard::providers::{mailgun, Provider};

/// What the benches measure: by default the CPU time of the bench thread
/// (`CLOCK_THREAD_CPUTIME_ID`), so that other processes on a busy machine (parallel builds) do
/// not inflate the numbers; on a quiet machine it equals wall time for these single-threaded
/// benches. `HOOKGUARD_BENCH_WALL=1` measures wall-clock time instead.
pub struct Clock {
    wall: bool,
    origin: Instant,
}

pub fn criterion() -> Criterion<Clock> {
    let wall = std::env::var_os("HOOKGUARD_BENCH_WALL").is_some_and(|v| v != "0" && !v.is_empty());
    eprintln!(
        "measuring {}",
        if wall {
            "wall-clock time"
        } else {
            "thread CPU time (HOOKGUARD_BENCH_WALL=1 for wall-clock)"
        }
    );
    Criterion::default().with_measurement(Clock {
        wall,
        origin: Instant::now(),
    })
}

impl Clock {
    fn now(&self) -> Duration {
        if self.wall {
            return self.origin.elapsed();
        }
        // CPU time of this thread (CLOCK_THREAD_CPUTIME_ID), through the cpu-time crate.
        cpu_time::ThreadTime::now().as_duration()
    }
}

static WALL: WallTime = WallTime;

impl Measurement for Clock {
    type Intermediate = Duration;
    type Value = Duration;
    fn start(&self) -> Duration {
        self.now()
    }
    fn end(&self, start: Duration) -> Duration {
        self.now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, value: &Duration) -> f64 {
        value.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Values are nanoseconds, as with wall time: reuse its formatting.
        WALL.formatter()
    }
}

pub const KEY: &str = "bench-mailgun-signing-key";
pub const TIMESTAMP: u64 = 1_700_000_000;
pub const TOKEN: &str = "9e1a3c7f0b2d4e6a8c0e2f4a6b8d0f2e4a6c8e0b2d4f6a8c0e";

/// The sizes the benches run at.
pub const SIZES: &[(&str, usize)] = &[("1KiB", 1 << 10), ("64KiB", 64 << 10), ("1MiB", 1 << 20)];

/// The instant the fixtures are signed for (well inside the window).
pub fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(TIMESTAMP + 10)
}

/// A Mailgun provider with one secret, as `config::load_str` builds it for a route.
pub fn provider() -> Arc<dyn Provider> {
    let yaml = format!(
        "listen: \"127.0.0.1:1\"\nadmin_listen: \"127.0.0.1:2\"\nupstream: \"http://127.0.0.1:3\"\n\
         routes:\n  - name: mailgun\n    path: /m\n    provider: mailgun\n    secrets: [\"{KEY}\"]\n"
    );
    let config =
        config::load_str(&yaml, "bench.yaml", &ProcessEnv).unwrap_or_else(|e| panic!("{e}"));
    let route = config.routes.lookup("/m").expect("the route");
    Arc::clone(&route.provider)
}

pub fn signature() -> String {
    mailgun::sign(KEY, &TIMESTAMP.to_string(), TOKEN)
}

/// Realistic filler text: words, punctuation, a few characters that need escaping.
fn prose(len: usize) -> String {
    const WORDS: &[&str] = &[
        "Hello",
        "Alice,",
        "your",
        "order",
        "#4711",
        "has",
        "shipped",
        "&",
        "will",
        "arrive",
        "on",
        "Tuesday.",
        "Questions?",
        "Reply",
        "to",
        "this",
        "e-mail",
        "\"quoted\"",
        "100%",
        "ümlaut",
        "tab\there",
        "line\nbreak",
    ];
    let mut out = String::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.push_str(WORDS[i % WORDS.len()]);
        out.push(' ');
        i += 1;
    }
    out
}

/// Bytes that are not UTF-8 (an attachment).
fn binary(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            (x >> 24) as u8
        })
        .collect()
}

/// A Mailgun JSON webhook (`signature` object beside `event-data`) of about `size` bytes,
/// compact or pretty-printed.
pub fn json(size: usize, pretty: bool) -> Bytes {
    let sig = signature();
    let mut items = Vec::new();
    let mut doc = serde_json::json!({
        "signature": {"timestamp": TIMESTAMP.to_string(), "token": TOKEN, "signature": sig},
        "event-data": {
            "event": "delivered",
            "timestamp": 1_700_000_000.123_f64,
            "recipient": "alice@example.com",
            "message": {"headers": {"message-id": "20130503182626.18666.16540@mg.example.com"}},
            "items": [],
        }
    });
    let render = |d: &serde_json::Value| {
        if pretty {
            serde_json::to_vec_pretty(d).unwrap()
        } else {
            serde_json::to_vec(d).unwrap()
        }
    };
    let mut i = 0u64;
    loop {
        let out = render(&doc);
        if out.len() >= size {
            return Bytes::from(out);
        }
        // Grow in steps of ~1/16 of what is missing, so the result lands close to `size`.
        let missing = size - out.len();
        let n = (missing / 16 / 120).max(1);
        for _ in 0..n {
            items.push(serde_json::json!({
                "id": i, "sku": format!("SKU-{i:06}"), "qty": i % 7 + 1, "price": 12.5,
                "tags": ["a", "b"], "note": prose(40)
            }));
            i += 1;
        }
        doc["event-data"]["items"] = serde_json::Value::Array(items.clone());
    }
}

/// A legacy Mailgun form post of about `size` bytes: event fields, a large `body-plain`, many
/// small fields, and the signature fields last.
pub fn form(size: usize) -> Bytes {
    fn pair(out: &mut String, name: &str, value: &str) {
        if !out.is_empty() {
            out.push('&');
        }
        out.extend(form_urlencoded::byte_serialize(name.as_bytes()));
        out.push('=');
        out.extend(form_urlencoded::byte_serialize(value.as_bytes()));
    }
    let sig = signature();
    let mut s = String::with_capacity(size + 256);
    pair(&mut s, "event", "delivered");
    pair(&mut s, "recipient", "alice@example.com");
    pair(&mut s, "domain", "mg.example.com");
    pair(
        &mut s,
        "Message-Id",
        "<20130503182626.18666.16540@mg.example.com>",
    );
    let budget = size.saturating_sub(s.len() + 200);
    // Part in one large text field (its encoding grows ~1.3x), the rest in ~100-byte fields.
    pair(&mut s, "body-plain", &prose(budget * 2 / 5));
    let mut i = 0;
    while s.len() < size.saturating_sub(200) {
        pair(&mut s, &format!("X-Field-{i}"), &prose(80));
        i += 1;
    }
    pair(&mut s, "timestamp", &TIMESTAMP.to_string());
    pair(&mut s, "token", TOKEN);
    pair(&mut s, "signature", &sig);
    Bytes::from(s)
}

pub const BOUNDARY: &str = "----hookguardBenchBoundary7MA4YWxkTrZu0gW";

/// A multipart Mailgun post of about `size` bytes: text fields (the signature among them), a
/// quarter of the size as `body-plain` text, the rest as a binary attachment.
pub fn multipart(size: usize) -> Bytes {
    let sig = signature();
    let mut out = Vec::with_capacity(size + 1024);
    let text = |name: &str, value: &str, out: &mut Vec<u8>| {
        out.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    };
    text("event", "stored", &mut out);
    text("recipient", "alice@example.com", &mut out);
    text("timestamp", &TIMESTAMP.to_string(), &mut out);
    text("token", TOKEN, &mut out);
    text("signature", &sig, &mut out);
    let overhead = out.len() + 300;
    let rest = size.saturating_sub(overhead);
    text("body-plain", &prose(rest / 4), &mut out);
    let file = rest.saturating_sub(rest / 4);
    out.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"attachment-1\"; \
             filename=\"invoice.pdf\"\r\nContent-Type: application/pdf\r\n\r\n"
        )
        .as_bytes(),
    );
    out.extend_from_slice(&binary(file));
    out.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    Bytes::from(out)
}

pub fn multipart_type() -> String {
    format!("multipart/form-data; boundary={BOUNDARY}")
}

pub const FORM_TYPE: &str = "application/x-www-form-urlencoded";
pub const JSON_TYPE: &str = "application/json";
