//! Hostile input, end to end: the real binary against floods of forgeries, slow clients,
//! header bombs, oversized and endless bodies, and request-smuggling framings. Whatever
//! arrives, forgeries never reach the upstream or the replay cache, memory stays flat, slow
//! clients are cut off within the configured timeouts while others are served, and no request
//! is ever forwarded twice or with the wrong framing.
//!
//! Longer than 500 lines: one test per family of hostile input (framing, floods, slow clients,
//! smuggling), sharing raw-socket helpers.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

// ------------------------------------------------------------------------------------------
// Helpers of this file
// ------------------------------------------------------------------------------------------

/// `timeouts` of the proxies that time clients out: short, so the tests are quick.
const CLIENT_READ: Duration = Duration::from_secs(2);
const KEEPALIVE: Duration = Duration::from_secs(2);
/// Slack on top of a configured timeout before a test calls it missed (loaded CI machines).
const MARGIN: Duration = Duration::from_secs(4);

fn timed_proxy(up: &Upstream, max_body: usize) -> Proxy {
    Proxy::start(&mailgun_config(
        up,
        &format!(
            "max_body_bytes: {max_body}\ntimeouts:\n  client_read: {}s\n  keepalive: {}s",
            CLIENT_READ.as_secs(),
            KEEPALIVE.as_secs()
        ),
        "",
    ))
}

/// Resident memory of a process, in KiB (`VmRSS` of `/proc/<pid>/status`).
fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

/// A deterministic pseudo-random stream (xorshift64*), so every run sends the same bytes.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn hex(&mut self, len: usize) -> String {
        let mut s = String::with_capacity(len);
        while s.len() < len {
            s.push_str(&format!("{:016x}", self.next()));
        }
        s.truncate(len);
        s
    }
}

/// A raw connection for byte-level attacks.
struct Raw {
    stream: TcpStream,
}

impl Raw {
    fn open(port: u16) -> Raw {
        let stream = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).expect("connect");
        stream.set_nodelay(true).unwrap();
        Raw { stream }
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads until the server closes the connection or `limit` passes. Returns what was read
    /// and how long after the call the connection closed (`None`: still open at `limit`).
    fn read_until_closed(&mut self, limit: Duration) -> (Vec<u8>, Option<Duration>) {
        let start = Instant::now();
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            let left = limit.saturating_sub(start.elapsed());
            if left.is_zero() {
                return (out, None);
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut buf) {
                Ok(0) => return (out, Some(start.elapsed())),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return (out, None)
                }
                Err(_) => return (out, Some(start.elapsed())),
            }
        }
    }
}

/// The status codes of the HTTP responses in `bytes`, in order: each message read by its
/// framing (head, then a `Content-Length` or chunked body), so that pipelined answers one
/// after the other are all counted, and bytes that are not a response end the list.
fn statuses(bytes: &[u8]) -> Vec<u16> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.starts_with(b"HTTP/1.") {
        let Some(head_end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        let Some(status) = head.get(9..12).and_then(|s| s.parse().ok()) else {
            break;
        };
        out.push(status);
        let header = |name: &str| {
            head.lines().find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let mut body = &rest[head_end + 4..];
        if (100..200).contains(&status) {
            rest = body;
            continue;
        }
        if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            // Chunks up to the last one: `0\r\n\r\n`.
            match body.windows(5).position(|w| w == b"0\r\n\r\n") {
                Some(end) => body = &body[end + 5..],
                None => break,
            }
        } else {
            let n: usize = header("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            body = body.get(n..).unwrap_or_default();
        }
        rest = body;
    }
    out
}

/// A signed Mailgun JSON body (compact, so its length is easy to reason about).
fn signed_json(tok: &str) -> Vec<u8> {
    let ts = now().to_string();
    let sig = mg_sig(MG_KEY, &ts, tok);
    format!(r#"{{"signature":{{"timestamp":"{ts}","token":"{tok}","signature":"{sig}"}},"event-data":{{"event":"delivered"}}}}"#)
        .into_bytes()
}

/// A complete, validly signed request with a Content-Length body.
fn signed_request(tok: &str) -> Vec<u8> {
    request_bytes("POST", "/mg", &[JSON], &signed_json(tok))
}

/// `body` in chunked transfer coding, in one chunk.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", body.len()).into_bytes();
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n0\r\n\r\n");
    out
}

/// The proxy still serves a normal, signed request on a fresh connection.
fn still_serving(proxy: &Proxy) {
    let resp = post(proxy.port, "/mg", &[JSON], &mg_json(&token()));
    assert_eq!(resp.status, 200, "the proxy keeps serving: {}", resp.text());
}

/// Every request the upstream got is a complete JSON webhook with one framing header, and
/// none of them carries `forbidden` (a token that must never be forwarded).
fn upstream_saw_only_whole_requests(up: &Upstream, forbidden: &str) {
    for r in up.received() {
        assert_eq!(r.header("transfer-encoding"), None, "{r:?}");
        assert_eq!(r.header_count("content-length"), 1, "{r:?}");
        assert_eq!(
            r.header("content-length"),
            Some(r.body.len().to_string().as_str())
        );
        let v = r.json();
        assert!(v["signature"]["token"].is_string(), "{v}");
        assert!(
            !String::from_utf8_lossy(&r.body).contains(forbidden),
            "a smuggled request reached the upstream: {v}"
        );
    }
}

// ------------------------------------------------------------------------------------------
// Floods of forgeries
// ------------------------------------------------------------------------------------------

/// 5,000 forged requests (random tokens, signatures under the wrong key or none, some form
/// bodies, random padding) over 8 keep-alive connections: all 401, none forwarded, the replay
/// cache stays empty, and resident memory stays flat.
#[test]
fn a_flood_of_forgeries_leaves_no_trace() {
    const CONNECTIONS: usize = 8;
    const PER_CONNECTION: usize = 625;
    let up = Upstream::start();
    let proxy = Proxy::start(&mailgun_config(&up, "max_body_bytes: 65536", ""));
    let port = proxy.port;

    let forge = |rng: &mut Rng, i: usize| -> (Vec<u8>, (&'static str, &'static str)) {
        let tok = rng.hex(50);
        let ts = now().to_string();
        let pad_len = (rng.next() % 4096) as usize;
        let pad = rng.hex(pad_len);
        match i % 10 {
            // Signed with a key that is not the route's.
            0..=6 => {
                let sig = mg_sig(&format!("wrong-{}", rng.hex(8)), &ts, &tok);
                let body = format!(
                    r#"{{"signature":{{"timestamp":"{ts}","token":"{tok}","signature":"{sig}"}},"event-data":{{"pad":"{pad}"}}}}"#
                );
                (body.into_bytes(), JSON)
            }
            // A random 64-hex-digit signature.
            7 | 8 => {
                let sig = rng.hex(64);
                let body = format!("timestamp={ts}&token={tok}&signature={sig}&pad={pad}");
                (body.into_bytes(), FORM)
            }
            // No signature at all.
            _ => (format!("{{\"pad\":\"{pad}\"}}").into_bytes(), JSON),
        }
    };

    let run = |n: usize, seed: u64| {
        let workers: Vec<_> = (0..CONNECTIONS)
            .map(|c| {
                std::thread::spawn(move || {
                    let mut rng = Rng(seed ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                    let mut conn = Conn::open(port).expect("connect");
                    let mut codes = Vec::with_capacity(n);
                    for i in 0..n {
                        let (body, ct) = forge(&mut rng, i);
                        let resp = conn
                            .post("/mg", &[ct], &body)
                            .expect("response on keep-alive");
                        assert_ne!(resp.header("connection"), Some("close"));
                        codes.push((resp.status, resp.error()));
                    }
                    codes
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("worker"))
            .collect::<Vec<_>>()
    };

    // Warm up (thread pools, allocator arenas, metric series), then measure.
    run(50, 1);
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(proxy.pid());
    let started = Instant::now();
    let codes = run(PER_CONNECTION, 2);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(proxy.pid());
    eprintln!(
        "flood: {} forged requests in {took:?}; RSS before {before} KiB, after {after} KiB",
        codes.len()
    );

    assert_eq!(codes.len(), CONNECTIONS * PER_CONNECTION);
    let bad = codes.iter().filter(|(_, e)| e == "bad_signature").count();
    let missing = codes
        .iter()
        .filter(|(_, e)| e == "missing_signature")
        .count();
    assert!(
        codes.iter().all(|(s, _)| *s == 401),
        "every forgery is a 401"
    );
    assert_eq!(bad + missing, codes.len());
    assert_eq!(
        missing,
        CONNECTIONS * (0..PER_CONNECTION).filter(|i| i % 10 == 9).count()
    );

    let metrics = proxy.metrics();
    assert_eq!(metric_value(&metrics, "hookguard_replay_entries"), 0.0);
    assert_eq!(up.count(), 0, "no forgery reached the upstream");
    assert_eq!(up.connections(), 0, "the upstream was not even contacted");
    // Flat: 5,000 requests that each allocated up to ~8 KiB would add ~40 MiB if kept;
    // allow 16 MiB of allocator noise.
    assert!(
        after <= before + 16 * 1024,
        "RSS grew from {before} KiB to {after} KiB over the flood"
    );

    // Afterwards, an authentic webhook still goes through and is the only key remembered.
    still_serving(&proxy);
    assert_eq!(proxy.metric("hookguard_replay_entries"), 1.0);
}

// ------------------------------------------------------------------------------------------
// Slow clients
// ------------------------------------------------------------------------------------------

/// Opens `n` connections that each send `prefix` and then one byte of `trickle` per
/// `every`, until the server closes them; returns, per connection, what the server answered
/// and when it closed (`None`: still open after `give_up`).
fn slow_clients(
    port: u16,
    n: usize,
    prefix: Vec<u8>,
    trickle: Vec<u8>,
    every: Duration,
    give_up: Duration,
) -> Vec<std::thread::JoinHandle<(Vec<u8>, Option<Duration>)>> {
    (0..n)
        .map(|_| {
            let (prefix, trickle) = (prefix.clone(), trickle.clone());
            std::thread::spawn(move || {
                let mut raw = Raw::open(port);
                let start = Instant::now();
                let mut got = Vec::new();
                if raw.send(&prefix).is_err() {
                    return (got, Some(start.elapsed()));
                }
                for byte in trickle.iter().cycle() {
                    if start.elapsed() > give_up {
                        return (got, None);
                    }
                    // Wait `every` for the server to say something or hang up.
                    let (bytes, closed) = raw.read_until_closed(every);
                    got.extend_from_slice(&bytes);
                    if closed.is_some() {
                        return (got, Some(start.elapsed()));
                    }
                    if raw.send(&[*byte]).is_err() {
                        return (got, Some(start.elapsed()));
                    }
                }
                unreachable!()
            })
        })
        .collect()
}

/// A normal client sends signed webhooks while `busy` holds; each must be answered 200.
fn normal_client(port: u16, busy: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    std::thread::spawn(move || {
        let mut served = 0;
        while busy.load(Ordering::SeqCst) {
            let resp = Conn::open(port)
                .and_then(|mut c| {
                    c.set_read_timeout(Duration::from_secs(5));
                    c.post("/mg", &[JSON], &mg_json(&token()))
                })
                .expect("a normal client is answered while slow clients hang on");
            assert_eq!(resp.status, 200);
            served += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        served
    })
}

/// Slow-loris on the header: 16 clients each send a request line and then one header byte
/// per second, forever. Each read is within the per-read timeout, so only a deadline for the
/// header as a whole cuts them off; it must come within `keepalive + client_read` (plus a
/// margin), while a normal client keeps being served.
#[test]
fn slow_loris_headers_are_cut_off_while_others_are_served() {
    let up = Upstream::start();
    let proxy = timed_proxy(&up, 4096);
    let limit = KEEPALIVE + CLIENT_READ + MARGIN;
    let busy = Arc::new(AtomicBool::new(true));
    let normal = normal_client(proxy.port, busy.clone());
    let slow = slow_clients(
        proxy.port,
        16,
        b"POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Slow: ".to_vec(),
        b"abcdefghijklmnopqrstuvwxyz".to_vec(),
        Duration::from_secs(1),
        limit + Duration::from_secs(6),
    );
    let results: Vec<_> = slow.into_iter().map(|h| h.join().unwrap()).collect();
    busy.store(false, Ordering::SeqCst);
    let served = normal.join().expect("normal client");
    let cut: Vec<Option<Duration>> = results.iter().map(|(_, c)| *c).collect();
    eprintln!("slow-loris header: cut off after {cut:?}; normal requests served: {served}");
    for (got, closed) in &results {
        let closed = closed.unwrap_or_else(|| panic!("a header trickler was never cut off"));
        assert!(closed <= limit, "cut off after {closed:?}, limit {limit:?}");
        // A trickler whose header never completes is cut off: closed silently (no request
        // to answer) or with a 4xx; never forwarded, never answered twice.
        let got = statuses(got);
        assert!(
            got.len() <= 1 && got.iter().all(|s| (400..500).contains(s)),
            "{got:?}"
        );
    }
    assert!(
        served >= 3,
        "the normal client was served meanwhile ({served})"
    );
    assert_eq!(up.count(), served);
}

/// A connection that never sends a byte, and one left idle after a served request, are
/// closed once `keepalive` passes.
#[test]
fn silent_and_idle_connections_are_closed_after_keepalive() {
    let up = Upstream::start();
    let proxy = timed_proxy(&up, 4096);
    let limit = KEEPALIVE + MARGIN;

    let mut silent = Raw::open(proxy.port);
    let mut idle = Raw::open(proxy.port);
    idle.send(&signed_request(&token())).unwrap();
    let started = Instant::now();
    let (answer, closed_idle) = idle.read_until_closed(limit + Duration::from_secs(5));
    let (nothing, closed_silent) = silent.read_until_closed(limit + Duration::from_secs(5));
    eprintln!(
        "idle keep-alive closed after {closed_idle:?}; silent connection closed after {:?}",
        started.elapsed()
    );
    assert_eq!(statuses(&answer), [200]);
    let closed_idle = closed_idle.expect("an idle keep-alive connection is closed");
    assert!(closed_idle <= limit, "idle closed after {closed_idle:?}");
    assert!(closed_silent.is_some(), "a silent connection is closed");
    assert!(
        started.elapsed() <= limit + Duration::from_secs(1),
        "silent closed after {:?}",
        started.elapsed()
    );
    assert!(nothing.is_empty(), "nothing is said to a silent client");
    assert_eq!(up.count(), 1);
}

/// A body that trickles in (one byte every 400 ms of a declared 500) gets 408
/// `client_timeout` once `client_read` passes, for each of 8 such clients, while a normal
/// client is served; nothing reaches the upstream from them.
#[test]
fn trickling_bodies_get_408_within_client_read() {
    let up = Upstream::start();
    let proxy = timed_proxy(&up, 4096);
    let limit = CLIENT_READ + MARGIN;
    let busy = Arc::new(AtomicBool::new(true));
    let normal = normal_client(proxy.port, busy.clone());
    let slow = slow_clients(
        proxy.port,
        8,
        b"POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"a\":\"".to_vec(),
        b"x".to_vec(),
        Duration::from_millis(400),
        limit + Duration::from_secs(6),
    );
    let results: Vec<_> = slow.into_iter().map(|h| h.join().unwrap()).collect();
    busy.store(false, Ordering::SeqCst);
    let served = normal.join().expect("normal client");
    eprintln!(
        "trickling bodies: answered/closed after {:?}; normal requests served: {served}",
        results.iter().map(|(_, c)| *c).collect::<Vec<_>>()
    );
    for (got, closed) in &results {
        let closed = closed.expect("a body trickler is cut off");
        assert!(closed <= limit, "cut off after {closed:?}");
        assert_eq!(statuses(got), [408], "{}", String::from_utf8_lossy(got));
        assert!(String::from_utf8_lossy(got).ends_with("{\"error\":\"client_timeout\"}"));
    }
    assert!(
        served >= 3,
        "the normal client was served meanwhile ({served})"
    );
    assert_eq!(up.count(), served);
}

// ------------------------------------------------------------------------------------------
// Header bombs
// ------------------------------------------------------------------------------------------

/// Sends `request` on a fresh connection while reading concurrently (so an answer sent before
/// the server closes is read even if the server resets the connection over unread bytes), and
/// returns what arrived within `window`. With `half_close` the client then shuts its side.
fn exchange(port: u16, request: &[u8], half_close: bool, window: Duration) -> Vec<u8> {
    let raw = Raw::open(port);
    let mut reader = Raw {
        stream: raw.stream.try_clone().expect("clone"),
    };
    let read = std::thread::spawn(move || reader.read_until_closed(window).0);
    let mut writer = raw;
    // The server may answer and close before everything is written: that is fine.
    let _ = writer.send(request);
    if half_close {
        let _ = writer.stream.shutdown(Shutdown::Write);
    }
    let got = read.join().expect("reader");
    drop(writer);
    got
}

/// The statuses answered to `request` before the connection closed (or 5 s passed).
fn answers(port: u16, request: &[u8]) -> Vec<u16> {
    statuses(&exchange(port, request, true, Duration::from_secs(5)))
}

/// Asserts that the request got exactly one answer and that `ok` holds for it: a proxy that
/// closes without answering, or answers twice, fails.
fn answered(got: &[u16], ok: impl Fn(u16) -> bool, what: &str) {
    assert!(
        got.len() == 1 && ok(got[0]),
        "{what}: one answer expected, got {got:?}"
    );
}

/// A validly signed request with `extra` headers added.
fn signed_with_headers(extra: &str) -> Vec<u8> {
    let body = signed_json(&token());
    let mut out = format!(
        "POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[test]
fn header_bombs_are_refused_and_the_proxy_keeps_serving() {
    let up = Upstream::start();
    let proxy = timed_proxy(&up, 4096);

    // Hundreds of headers, on an otherwise authentic request.
    let many: String = (0..300).map(|i| format!("X-H{i}: v\r\n")).collect();
    let got = answers(proxy.port, &signed_with_headers(&many));
    answered(&got, |s| s == 400 || s == 431, "300 headers");
    assert_eq!(up.count(), 0, "300 headers: not forwarded");

    // A header section over a megabyte (many 64 KiB lines), authentic otherwise.
    let line = format!("X-Big: {}\r\n", "b".repeat(64 * 1024));
    let got = answers(proxy.port, &signed_with_headers(&line.repeat(20)));
    answered(&got, |s| s == 400 || s == 431, "a huge header");
    assert_eq!(up.count(), 0, "1.3 MB of headers: not forwarded");

    // One 100 KB header line on a forgery: refused on its size (max_header_bytes) before the
    // body or signature is even read.
    let bomb = format!("X-Bomb: {}\r\n", "a".repeat(100 * 1024));
    let body = mg_json_at("not-the-key", now(), &token(), "x");
    let mut req = format!(
        "POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{bomb}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let got = answers(proxy.port, &req);
    assert_eq!(got, [431]);
    assert_eq!(up.count(), 0);

    // A 100 KB request line (a path that long) is no route, or refused outright.
    let path = format!("/mg?{}", "q".repeat(100 * 1024));
    let got = answers(
        proxy.port,
        &request_bytes("POST", &path, &[JSON], &mg_json(&token())),
    );
    answered(
        &got,
        |s| [200, 400, 414, 431].contains(&s),
        "a long query is served or refused",
    );

    // A header name with no value separator, a NUL in a value, a bare CR.
    for bad in [
        "X-No-Colon\r\n",
        "X-Nul: a\0b\r\n",
        "X-Cr: a\rb\r\n",
        "X Space: v\r\n",
    ] {
        let got = answers(proxy.port, &signed_with_headers(bad));
        answered(&got, |s| s == 400, &format!("{bad:?}"));
    }
    assert!(
        up.count() <= 1,
        "at most the long-query request was forwarded"
    );
    still_serving(&proxy);
}

/// A 100 KB header line on an otherwise authentic request: nothing a provider sends looks
/// like this, so it is refused before it costs the upstream anything.
#[test]
fn a_100kb_header_line_on_a_signed_request_is_refused() {
    let up = Upstream::start();
    let proxy = timed_proxy(&up, 4096);
    let bomb = format!("X-Bomb: {}\r\n", "a".repeat(100 * 1024));
    let got = answers(proxy.port, &signed_with_headers(&bomb));
    assert_eq!(got, [431], "max_header_bytes (default 32 KiB)");
    assert_eq!(up.count(), 0);
    still_serving(&proxy);
    // A signed request with an ordinary amount of headers is still forwarded.
    let fine = format!("X-Note: {}\r\n", "a".repeat(8 * 1024));
    assert_eq!(answers(proxy.port, &signed_with_headers(&fine)), [200]);
}

// ------------------------------------------------------------------------------------------
// Oversized and endless bodies (beyond core_e2e's Content-Length and endless-chunk cases)
// ------------------------------------------------------------------------------------------

#[test]
fn chunked_bodies_stop_at_the_cap_whatever_the_chunking() {
    let up = Upstream::start();
    let proxy = timed_proxy(&up, 1000);
    let head = b"POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";

    // 1-byte chunks: the framing overhead does not count, the data does.
    let mut req = head.to_vec();
    for _ in 0..1100 {
        req.extend_from_slice(b"1\r\na\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    assert_eq!(answers(proxy.port, &req), [413]);

    // One chunk announcing 2^63 bytes, then data past the cap.
    let mut req = head.to_vec();
    req.extend_from_slice(b"7fffffffffffffff\r\n");
    req.extend_from_slice(&[b'a'; 1500]);
    assert_eq!(answers(proxy.port, &req), [413]);

    // A chunk size that overflows 64 bits, or is not hex at all: refused, never forwarded.
    for size in ["1ffffffffffffffffff", "-5", "0x10", "zz"] {
        let mut req = head.to_vec();
        req.extend_from_slice(format!("{size}\r\n").as_bytes());
        req.extend_from_slice(&[b'a'; 100]);
        let got = answers(proxy.port, &req);
        answered(
            &got,
            |s| (400..500).contains(&s),
            &format!("chunk size {size:?}"),
        );
    }

    // A 100 KB chunk extension on a small chunk.
    let mut req = head.to_vec();
    req.extend_from_slice(
        format!("5;ext={}\r\nhello\r\n0\r\n\r\n", "e".repeat(100 * 1024)).as_bytes(),
    );
    let got = answers(proxy.port, &req);
    answered(
        &got,
        |s| (400..500).contains(&s),
        "a 100 KB chunk extension",
    );

    assert_eq!(up.count(), 0);
    still_serving(&proxy);
}

/// An oversized chunked body whose bytes contain a complete, validly signed request: after
/// the 413 the connection is closed, so those bytes are never read as a request of their own.
#[test]
fn the_rest_of_a_refused_body_is_never_read_as_a_request() {
    let up = Upstream::start();
    let proxy = timed_proxy(&up, 1000);
    let smuggled_token = format!("smuggled{}", token());
    let inner = signed_request(&smuggled_token);
    let mut req = b"POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    req.extend_from_slice(format!("{:x}\r\n", 1200).as_bytes());
    req.extend_from_slice(&[b' '; 1200]);
    req.extend_from_slice(b"\r\n");
    // The inner request, as chunk data and as raw bytes right after it.
    req.extend_from_slice(&chunked(&inner)[..]);
    req.extend_from_slice(&inner);
    let got = answers(proxy.port, &req);
    assert_eq!(got, [413]);

    // Same with Content-Length over the cap: refused on the header, body unread.
    let mut req = format!(
        "POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        inner.len() + 2000
    )
    .into_bytes();
    req.extend_from_slice(&inner);
    assert_eq!(answers(proxy.port, &req), [413]);

    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(up.count(), 0, "the smuggled request was never forwarded");
    still_serving(&proxy);
    upstream_saw_only_whole_requests(&up, &smuggled_token);
}

// ------------------------------------------------------------------------------------------
// Request smuggling
// ------------------------------------------------------------------------------------------

/// One attack: `raw` on one connection, which the client keeps open (a proxy that misframes
/// would wait for more on it). Returns the statuses answered within 3 s.
fn smuggle(proxy: &Proxy, raw: &[u8]) -> Vec<u16> {
    statuses(&exchange(proxy.port, raw, false, Duration::from_secs(3)))
}

#[test]
fn content_length_and_transfer_encoding_together_never_smuggle() {
    let up = Upstream::start();
    let proxy = timed_proxy(&up, 4096);
    let outer_token = token();
    let smuggled = format!("smuggled{}", token());
    let outer = signed_json(&outer_token);
    let inner = signed_request(&smuggled);

    // CL.TE: a front end that trusts Content-Length would see one request; TE must win here,
    // and the connection must close after it (RFC 9112 §6.1), so `inner` is never parsed.
    let mut body = chunked(&outer);
    body.extend_from_slice(&inner);
    let mut req = format!(
        "POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let got = smuggle(&proxy, &req);
    assert!(got.len() <= 1, "one answer at most: {got:?}");

    // TE.CL: Transfer-Encoding first, a Content-Length that ends inside the chunk.
    let tok2 = token();
    let smuggled2 = format!("smuggled{}", token());
    let mut body = chunked(&signed_json(&tok2));
    body.extend_from_slice(&signed_request(&smuggled2));
    let mut req = b"POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n".to_vec();
    req.extend_from_slice(&body);
    let got2 = smuggle(&proxy, &req);
    assert!(got2.len() <= 1, "one answer at most: {got2:?}");

    std::thread::sleep(Duration::from_millis(200));
    upstream_saw_only_whole_requests(&up, "smuggled");
    assert!(up.count() <= 2);
    for r in up.received() {
        let tok = r.json()["signature"]["token"].as_str().unwrap().to_owned();
        assert!(tok == outer_token || tok == tok2, "unexpected {tok}");
    }
    still_serving(&proxy);
}

#[test]
fn ambiguous_framing_headers_are_refused() {
    let up = Upstream::start();
    let proxy = timed_proxy(&up, 4096);
    let body = signed_json(&format!("smuggled{}", token()));
    let n = body.len();
    let cases: Vec<(String, &str)> = vec![
        (
            format!("Content-Length: {n}\r\nContent-Length: {}\r\n", n + 10),
            "duplicated Content-Length, different values",
        ),
        (
            format!("Content-Length: {n}, {}\r\n", n + 10),
            "Content-Length list, different values",
        ),
        (format!("Content-Length: +{n}\r\n"), "signed Content-Length"),
        (format!("Content-Length: 0x{n:x}\r\n"), "hex Content-Length"),
        (
            format!("Content-Length: {n}\r\n {}\r\n", n + 10),
            "obs-fold continuing Content-Length",
        ),
        (
            "Transfer-Encoding: identity\r\n chunked\r\n".into(),
            "obs-fold continuing Transfer-Encoding",
        ),
        (
            format!("X-Folded: a\r\n\tb\r\nContent-Length: {n}\r\n"),
            "obs-fold in an unrelated header",
        ),
        (
            "Transfer-Encoding: chunked, identity\r\n".into(),
            "chunked not the final coding",
        ),
        (
            "Transfer-Encoding: gzip\r\n".into(),
            "a coding hookguard cannot read",
        ),
        (
            "Transfer-Encoding : chunked\r\n".into(),
            "whitespace before the colon",
        ),
    ];
    for (headers, what) in &cases {
        let mut req = format!(
            "POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{headers}\r\n"
        )
        .into_bytes();
        if headers.contains("Transfer-Encoding") {
            req.extend_from_slice(&chunked(&body));
        } else {
            req.extend_from_slice(&body);
            req.extend_from_slice(&[b' '; 10]);
        }
        let got = smuggle(&proxy, &req);
        assert_eq!(got, [400], "{what}");
    }
    // HTTP/1.0 with Transfer-Encoding is faulty framing too.
    let mut req =
        b"POST /mg HTTP/1.0\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    req.extend_from_slice(&chunked(&body));
    assert_eq!(smuggle(&proxy, &req), [400], "HTTP/1.0 + chunked");

    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(up.count(), 0, "no ambiguous request was forwarded");
    still_serving(&proxy);
    upstream_saw_only_whole_requests(&up, "smuggled");
}

/// Framings that are unusual but unambiguous are read the one way they can be read: each
/// request forwarded exactly once, with its own body.
#[test]
fn unusual_but_unambiguous_framing_is_forwarded_exactly_once() {
    let up = Upstream::start();
    let proxy = timed_proxy(&up, 4096);

    // Identical duplicated Content-Length (RFC 9110 §8.6 allows collapsing them).
    let t1 = token();
    let b1 = signed_json(&t1);
    let mut r1 = format!(
        "POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {0}\r\nContent-Length: {0}\r\n\r\n",
        b1.len()
    )
    .into_bytes();
    r1.extend_from_slice(&b1);
    assert_eq!(smuggle(&proxy, &r1), [200]);

    // `chunked` in odd case, with a chunk extension and a trailer.
    let t2 = token();
    let b2 = signed_json(&t2);
    let mut r2 = b"POST /mg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: ChUnKeD\r\n\r\n".to_vec();
    r2.extend_from_slice(format!("{:x};name=value\r\n", b2.len()).as_bytes());
    r2.extend_from_slice(&b2);
    r2.extend_from_slice(b"\r\n0\r\nX-Trailer: t\r\n\r\n");
    assert_eq!(smuggle(&proxy, &r2), [200]);

    // Three requests pipelined in one write: each answered in order (or, should a server answer
    // fewer and close, what it did not answer it must not have forwarded).
    let (t3, t4, t5) = (token(), token(), token());
    let mut pipelined = signed_request(&t3);
    pipelined.extend_from_slice(&signed_request(&t4));
    pipelined.extend_from_slice(&signed_request(&t5));
    let answered = smuggle(&proxy, &pipelined);
    assert!(
        !answered.is_empty() && answered.iter().all(|s| *s == 200),
        "{answered:?}"
    );

    std::thread::sleep(Duration::from_millis(200));
    let tokens: Vec<String> = up
        .received()
        .iter()
        .map(|r| r.json()["signature"]["token"].as_str().unwrap().to_owned())
        .collect();
    let mut want = vec![t1, t2];
    want.extend(
        [t3.clone(), t4.clone(), t5.clone()]
            .into_iter()
            .take(answered.len()),
    );
    assert_eq!(
        tokens, want,
        "each answered request once, in order; nothing else"
    );
    upstream_saw_only_whole_requests(&up, "smuggled");

    // The same requests one by one: the answered ones are duplicates, the others are new.
    for (i, t) in [t3, t4, t5].iter().enumerate() {
        let resp = post(proxy.port, "/mg", &[JSON], &signed_json(t));
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.text() == "{\"status\":\"duplicate\"}",
            i < answered.len(),
            "{}",
            resp.text()
        );
    }
    assert_eq!(up.count(), 5);
}
