//! The admin listener: `/healthz`, `/readyz` and `/metrics`, never on the public port; and,
//! when a route spools, the operator's `/spool/...` endpoints behind `hookguard spool`:
//!
//! - `GET /spool/messages?state=&route=&older_than=&limit=`: the messages (no bodies), JSON;
//! - `GET /spool/messages/<seq>`: one message, its body in base64;
//! - `POST /spool/retry?...` and `POST /spool/purge?...`: queue again, or delete, the matching
//!   messages (`seq=` names one; a filter is required, `all=1` for every message).
//!
//! With `spool.admin_token` set they require `Authorization: Bearer <token>`; without one they
//! answer only clients on a loopback address.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use base64::Engine;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::spool::{Filter, SpoolBackend};

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
    pub spool: Option<Arc<dyn SpoolBackend>>,
    pub spool_token: Option<Secret>,
}

/// A `/spool` request, as the endpoints read it.
fn filter_of(query: Option<&str>) -> Result<(Filter, bool), String> {
    let mut f = Filter::default();
    let mut all = false;
    for (k, v) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        match k.as_ref() {
            "state" if v == "queued" || v == "dead" => f.state = Some(v.into_owned()),
            "route" => f.route = Some(v.into_owned()),
            "older_than" => {
                let d = humantime::parse_duration(&v).map_err(|e| format!("older_than: {e}"))?;
                f.older_than_secs = Some(d.as_secs());
            }
            "limit" => f.limit = Some(v.parse().map_err(|_| "limit: a number")?),
            "seq" => f
                .seqs
                .get_or_insert_with(Vec::new)
                .push(v.parse().map_err(|_| "seq: a number")?),
            "all" => all = v == "1" || v == "true",
            other => return Err(format!("unknown parameter `{other}`")),
        }
    }
    Ok((f, all))
}

fn json(status: StatusCode, value: &serde_json::Value) -> (StatusCode, &'static str, Vec<u8>) {
    (
        status,
        "application/json",
        serde_json::to_vec(value).unwrap_or_default(),
    )
}

impl AdminApp {
    /// Whether the client may use `/spool`: with `spool.admin_token` configured, only with
    /// it (from anywhere, loopback included: a local process is not necessarily the
    /// operator); without one, only from a loopback address.
    fn spool_allowed(&self, session: &ServerSession) -> bool {
        let Some(want) = &self.spool_token else {
            return session
                .client_addr()
                .and_then(|a| a.as_inet())
                .is_some_and(|a| a.ip().to_canonical().is_loopback());
        };
        let token = session
            .req_header()
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        token.is_some_and(|got| {
            use subtle::ConstantTimeEq;
            bool::from(want.expose().as_bytes().ct_eq(got.as_bytes()))
        })
    }

    async fn spool(&self, session: &ServerSession) -> (StatusCode, &'static str, Vec<u8>) {
        let Some(store) = &self.spool else {
            return json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "no_spool"}),
            );
        };
        if !self.spool_allowed(session) {
            return json(
                StatusCode::FORBIDDEN,
                &serde_json::json!({"error": "forbidden"}),
            );
        }
        let req = session.req_header();
        let path = req.uri.path();
        let (filter, all) = match filter_of(req.uri.query()) {
            Ok(f) => f,
            Err(e) => return json(StatusCode::BAD_REQUEST, &serde_json::json!({"error": e})),
        };
        let get = req.method == http::Method::GET;
        let post = req.method == http::Method::POST;
        let result = match path {
            "/spool/messages" if get => store
                .list(&filter)
                .await
                .map(|records| serde_json::json!({ "messages": records })),
            "/spool/stats" if get => store
                .stats()
                .await
                .map(|s| serde_json::to_value(s).unwrap_or_default()),
            p if get && p.starts_with("/spool/messages/") => {
                let Ok(seq) = p["/spool/messages/".len()..].parse::<u64>() else {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": "seq"}),
                    );
                };
                match store.get(seq).await {
                    Ok(Some((record, body))) => Ok(serde_json::json!({
                        "message": record,
                        "body_base64": base64::engine::general_purpose::STANDARD.encode(&body),
                    })),
                    Ok(None) => {
                        return json(
                            StatusCode::NOT_FOUND,
                            &serde_json::json!({"error": "no_such_message"}),
                        )
                    }
                    Err(e) => Err(e),
                }
            }
            "/spool/retry" | "/spool/purge" if post => {
                if filter == Filter::default() && !all {
                    return json(
                        StatusCode::BAD_REQUEST,
                        &serde_json::json!({"error": "a filter (state, route, older_than, seq) or all=1 is required"}),
                    );
                }
                let (what, n) = if path == "/spool/retry" {
                    ("retried", store.retry(filter).await)
                } else {
                    ("purged", store.purge(filter).await)
                };
                n.map(|n| serde_json::json!({ what: n }))
            }
            _ => {
                return json(
                    StatusCode::NOT_FOUND,
                    &serde_json::json!({"error": "not_found"}),
                )
            }
        };
        match result {
            Ok(v) => json(StatusCode::OK, &v),
            Err(e) => json(
                StatusCode::SERVICE_UNAVAILABLE,
                &serde_json::json!({"error": e.to_string()}),
            ),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        if session.req_header().uri.path().starts_with("/spool") {
            let (status, content_type, body) = self.spool(session).await;
            return Response::builder()
                .status(status)
                .header(http::header::CONTENT_TYPE, content_type)
                .header(http::header::CONTENT_LENGTH, body.len())
                .body(body)
                .unwrap_or_default();
        }
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
                if let Some(spool) = &self.spool {
                    if let Ok(stats) = spool.stats().await {
                        self.metrics.spool.set_stats(&stats);
                    }
                }
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
    request(addr, "GET", path, None, timeout).map(|(status, _)| status)
}

/// The largest admin answer the command line reads (a `spool list` of many messages).
const MAX_ANSWER: u64 = 64 << 20;

/// One request to the admin listener at `addr` (`Connection: close`); its status and body.
/// The client side of `hookguard probe` and `hookguard spool`.
pub fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&Secret>,
    timeout: std::time::Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    use std::io::{Read, Write};
    let addr = crate::net::reachable(addr);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let auth = token.map_or_else(String::new, |t| {
        format!("Authorization: Bearer {}\r\n", t.expose())
    });
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    stream.take(MAX_ANSWER).read_to_end(&mut answer)?;
    let bad = || std::io::Error::other("not an HTTP response");
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(bad)?;
    // "HTTP/1.1 200 OK"
    let status = std::str::from_utf8(&answer[..split])
        .ok()
        .and_then(|head| head.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(bad)?;
    Ok((status, answer[split + 4..].to_vec()))
}
