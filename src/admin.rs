//! The admin listener: `/healthz`, `/readyz` and `/metrics`, never on the public port.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;

/// How many keys the replay guard remembers now (read when `/metrics` is asked for).
pub type ReplayEntries = Box<dyn Fn() -> u64 + Send + Sync>;

/// Whether the proxy can take traffic.
#[derive(Default)]
pub struct Health {
    /// The public listener accepts connections.
    listening: AtomicBool,
    /// Shutdown has begun.
    draining: AtomicBool,
}

impl Health {
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.listening.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire)
    }
}

pub struct AdminApp {
    pub health: Arc<Health>,
    pub replay_entries: ReplayEntries,
    pub metrics: Arc<Metrics>,
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method_ok = req.method == http::Method::GET || req.method == http::Method::HEAD;
        let (status, content_type, body) = match (req.uri.path(), method_ok) {
            (_, false) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                b"method not allowed\n".to_vec(),
            ),
            ("/healthz", _) => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
            ("/readyz", _) if self.health.is_ready() => {
                (StatusCode::OK, "text/plain", b"ready\n".to_vec())
            }
            ("/readyz", _) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                b"not ready\n".to_vec(),
            ),
            ("/metrics", _) => {
                self.metrics
                    .replay_entries
                    .set((self.replay_entries)() as i64);
                (
                    StatusCode::OK,
                    "text/plain; version=0.0.4",
                    self.metrics.render(),
                )
            }
            _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
        };
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}

/// Asks the admin listener at `addr` for `path`; returns the HTTP status. The client side of
/// `hookguard probe`, for health checks where no HTTP client is installed.
pub fn probe(
    addr: std::net::SocketAddr,
    path: &str,
    timeout: std::time::Duration,
) -> std::io::Result<u16> {
    use std::io::{Read, Write};
    let addr = crate::net::reachable(addr);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    // "HTTP/1.1 200 OK"
    std::str::from_utf8(&head[..n])
        .ok()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other("not an HTTP response"))
}
