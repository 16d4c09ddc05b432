//! The public listener: a Pingora HTTP application that buffers each webhook, has it verified,
//! and forwards the authentic ones upstream.
//!
//! This is a Pingora [`HttpServerApp`] rather than a `ProxyHttp` implementation: Pingora's proxy
//! phases forward the request body as it streams in, so a body cannot be verified before the
//! upstream is contacted, nor replaced by its normalized form, without the subrequest detour
//! (pingora#349, #688). Here the request is read, judged and then sent upstream with Pingora's
//! own pooled client connections, in one straight line.
//!
//! Everything that decides *whether* a request passes lives outside this module (providers,
//! replay guard, normalizer); this module maps those decisions to HTTP, metrics and logs.

mod headers;
mod upstream;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::time::fast_timeout::fast_timeout;
use pingora::upstreams::peer::HttpPeer;
use pingora::ErrorType;

use crate::body::Body;
use crate::config::{Config, DuplicateStatus, ForwardBody, Route};
use crate::message;
use crate::metrics::{Metrics, RouteMetricsTable};
use crate::normalize;
use crate::outcome::{Outcome, Rejection};
use crate::providers::Inbound;
use crate::replay::{Refused, ReplayGuard};
use headers::Forwarding;
use upstream::UpstreamClient;

/// One config with everything derived from it; replaced as a whole on reload, so a request
/// runs start to end on the config it started with.
pub struct Snapshot {
    pub config: Config,
    metrics: RouteMetricsTable,
    /// Each route's upstream as a Pingora peer, built once per config.
    peers: HashMap<String, HttpPeer>,
}

impl Snapshot {
    fn new(config: Config, metrics: &Metrics) -> Self {
        let peers = config
            .routes
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    UpstreamClient::peer(&r.upstream, &config.timeouts),
                )
            })
            .collect();
        Snapshot {
            metrics: metrics.for_config(&config),
            peers,
            config,
        }
    }
}

/// State shared by every connection of the public listener.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    replay: Arc<ReplayGuard>,
    metrics: Arc<Metrics>,
    upstream: UpstreamClient,
    in_flight: AtomicUsize,
    draining: AtomicBool,
}

impl Gateway {
    /// Fails only if the replay store's client thread cannot be started.
    pub fn new(config: Config, metrics: Arc<Metrics>) -> std::io::Result<Arc<Self>> {
        let t = &config.timeouts;
        // A reservation lives while its request is in flight; this bounds it should its
        // holder ever vanish.
        let in_flight_ttl = t.upstream_connect + t.upstream_read * 2 + Duration::from_secs(10);
        let replay = Arc::new(ReplayGuard::with_settings(
            &config.replay,
            in_flight_ttl,
            metrics.replay_error_sink(),
        )?);
        let snapshot = Snapshot::new(config, &metrics);
        Ok(Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            replay,
            metrics,
            upstream: UpstreamClient::new(256),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
        }))
    }

    /// The config new requests use.
    pub fn config(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Makes `config` the one new requests use; requests in flight keep theirs.
    pub fn replace_config(&self, config: Config) {
        self.snapshot
            .store(Arc::new(Snapshot::new(config, &self.metrics)));
    }

    pub fn replay(&self) -> &ReplayGuard {
        &self.replay
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Stop reusing client connections: shutdown has begun.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// The Pingora application around a [`Gateway`].
pub struct GatewayApp(pub Arc<Gateway>);

/// Counts a request as in flight for as long as it lives.
struct InFlight<'a>(&'a Gateway);

impl<'a> InFlight<'a> {
    fn enter(g: &'a Gateway) -> Self {
        g.in_flight.fetch_add(1, Ordering::AcqRel);
        g.metrics.in_flight.inc();
        InFlight(g)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.in_flight.dec();
    }
}

/// What the per-request log line and metrics need. The request is counted the moment its
/// outcome is known, before the response goes out, so a client that reads the response and
/// then the metrics always sees itself counted.
struct Report<'a> {
    metrics: &'a RouteMetricsTable,
    route: Option<Arc<Route>>,
    outcome: Option<Outcome>,
    status: u16,
    replay_key: Option<String>,
}

impl Report<'_> {
    fn settle(&mut self, outcome: Outcome, status: u16) {
        if self.outcome.is_some() {
            return;
        }
        self.outcome = Some(outcome);
        self.status = status;
        match self
            .route
            .as_ref()
            .and_then(|r| self.metrics.route(&r.name))
        {
            Some(m) => m.count(outcome),
            None => self.metrics.no_route.inc(),
        }
    }
}

/// How a request ended, for the connection.
enum End {
    /// A complete response was written; the connection may be reused if `reuse`.
    Responded { reuse: bool },
    /// The connection is broken or half-written: close it.
    Abort,
}

#[async_trait]
impl HttpServerApp for GatewayApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        let gw = &self.0;
        let snap = gw.config();
        let t = &snap.config.timeouts;
        session.set_keepalive(Some(t.keepalive.as_secs().max(1)));
        session.set_read_timeout(Some(t.client_read));
        session.set_write_timeout(Some(t.client_read));

        // An idle keep-alive connection closes as soon as shutdown begins; a request whose
        // bytes already arrived is still served (biased select). Pingora times out each read,
        // not the whole header, so a client trickling one byte at a time (slow-loris) is cut
        // off by a deadline for the header as a whole: the idle allowance plus `client_read`.
        // Deadlines use Pingora's coarse shared timers (10 ms buckets, as for its own read
        // timeouts): a tokio timer per request woke the runtime's driver through an eventfd
        // write on every request.
        let mut shutdown = shutdown.clone();
        let header_deadline = t.keepalive + t.client_read;
        let read = tokio::select! {
            biased;
            r = fast_timeout(header_deadline, session.read_request()) => match r {
                Ok(r) => r,
                Err(_) => return None,
            },
            _ = shutdown_started(&mut shutdown) => return None,
        };
        match read {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                if e.etype() == &ErrorType::InvalidHTTPHeader {
                    let _ = session.respond_error(400).await;
                }
                return None;
            }
        }

        let _in_flight = InFlight::enter(gw);
        let started = Instant::now();
        let mut report = Report {
            metrics: &snap.metrics,
            route: None,
            outcome: None,
            status: 0,
            replay_key: None,
        };
        let end = handle(gw, &snap, &mut session, &mut report).await;
        // A request that ended without an outcome lost its client midway.
        report.settle(Outcome::Aborted, 0);
        log_request(&snap, &session, &report, started);

        match end {
            End::Responded { reuse: true } if !gw.is_draining() => {
                let settings = HttpPersistentSettings::for_session(&session);
                match session.finish().await {
                    Ok(Some(stream)) => {
                        Some(ReusedHttpStream::from_reusable_stream(stream, settings))
                    }
                    _ => None,
                }
            }
            End::Responded { .. } => {
                let _ = session.finish().await;
                None
            }
            End::Abort => {
                session.shutdown().await;
                None
            }
        }
    }
}

async fn shutdown_started(shutdown: &mut ShutdownWatch) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            // The server is gone: nothing will ever signal again.
            std::future::pending::<()>().await;
        }
    }
}

/// Takes one request from header to response.
async fn handle(
    gw: &Gateway,
    snap: &Snapshot,
    session: &mut ServerSession,
    report: &mut Report<'_>,
) -> End {
    let config = &snap.config;
    let req = session.req_header();
    let Some(route) = config.routes.lookup(req.uri.path()).cloned() else {
        return reject(session, report, Rejection::NoRoute).await;
    };
    report.route = Some(Arc::clone(&route));
    if req.method == http::Method::HEAD && route.provider.answers_head_probe() {
        return respond(
            session,
            report,
            Outcome::Answered,
            200,
            "text/plain",
            Bytes::new(),
        )
        .await;
    }
    if req.method != http::Method::POST {
        return reject(session, report, Rejection::MethodNotAllowed).await;
    }
    let client_ip = client_ip(session, &config.trusted_proxies);
    if let Some(allowed) = &route.allow_ips {
        if !client_ip.is_some_and(|ip| crate::client_ip::allowed(ip, allowed)) {
            return reject(session, report, Rejection::IpNotAllowed).await;
        }
    }
    if header_size(req) > config.max_header_bytes {
        return reject(session, report, Rejection::HeadersTooLarge).await;
    }
    let declared = declared_length(session);
    if declared.is_some_and(|n| n > config.max_body_bytes) {
        return reject(session, report, Rejection::BodyTooLarge).await;
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && session.write_continue_response().await.is_err() {
        return End::Abort;
    }

    let bytes = match read_body(
        session,
        config.max_body_bytes,
        declared,
        config.timeouts.client_read,
    )
    .await
    {
        Ok(b) => b,
        Err(BodyRead::TooLarge) => return reject(session, report, Rejection::BodyTooLarge).await,
        Err(BodyRead::TimedOut) => return reject(session, report, Rejection::ClientTimeout).await,
        Err(BodyRead::Broken) => return End::Abort,
    };
    let route_metrics = snap.metrics.route(&route.name);
    if let Some(m) = route_metrics {
        m.body_bytes.inc_by(bytes.len() as u64);
    }

    let req = session.req_header();
    let content_type = req
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let body = Body::new(bytes, content_type).with_max_fields(config.max_body_fields);
    let inbound = Inbound {
        path_and_query: req.uri.path_and_query().map_or("/", |p| p.as_str()),
        headers: &req.headers,
        body: &body,
        client_ip,
    };

    let verify_started = Instant::now();
    let verdict = route.provider.verify(&inbound, SystemTime::now());
    gw.metrics
        .verify_duration
        .observe(verify_started.elapsed().as_secs_f64());
    let verified = match verdict {
        Ok(v) => v,
        Err(r) => return reject(session, report, r).await,
    };
    report.replay_key = Some(verified.id.clone());
    if let Some(answer) = &verified.answer {
        return respond(
            session,
            report,
            Outcome::Answered,
            answer.status,
            answer.content_type,
            Bytes::from(answer.body.clone()),
        )
        .await;
    }

    // Where the signature does not cover the body (Mailgun), the keys are bound to the body:
    // a key released after a failed delivery may come back with that body and no other. The
    // digest is of the body's normalized form, so a sender re-encoding the same fields (a
    // new multipart boundary) is still sending the same body.
    let mut outgoing = None;
    let binding = if route.provider.covers_body() {
        None
    } else {
        let normalized = normalize::to_json(&body).ok();
        let binding = message::digest(&[normalized.as_deref().unwrap_or(body.bytes())]);
        if route.forward_body == ForwardBody::Json {
            outgoing = normalized;
        }
        Some(binding)
    };

    let reserved = gw
        .replay
        .reserve(&verified.keys, binding, verified.remember_for)
        .await;
    let reservation = match reserved {
        Ok(r) => r,
        Err(Refused::Delivered) => {
            return match config.replay.duplicate_status {
                DuplicateStatus::Ok => {
                    respond(
                        session,
                        report,
                        Outcome::Duplicate,
                        200,
                        "application/json",
                        Bytes::from_static(DUPLICATE),
                    )
                    .await
                }
                DuplicateStatus::Conflict => reject(session, report, Rejection::Replayed).await,
            };
        }
        Err(Refused::InFlight) => return reject(session, report, Rejection::Replayed).await,
        Err(Refused::Full) => {
            tracing::warn!(
                route = route.name.as_str(),
                max_entries = config.replay.max_entries,
                "replay store full of keys still inside their window: answering 503 so the provider retries (raise replay.max_entries)"
            );
            return reject(session, report, Rejection::ReplayStoreFull).await;
        }
        Err(Refused::StoreUnavailable) => {
            return reject(session, report, Rejection::ReplayStoreUnavailable).await
        }
    };

    let delivered = deliver(gw, snap, &route, session, &body, outgoing, &verified).await;
    // Settle the keys before anything is written back: a provider that retries the instant
    // it reads a failure must find them free.
    let exchange = match delivered {
        Ok(x) => x,
        Err(r) => {
            reservation.release().await;
            return reject(session, report, r).await;
        }
    };
    if let Some(m) = route_metrics {
        m.upstream.observe(exchange.waited.as_secs_f64());
    }
    let Some(upstream_header) = exchange.session.resp_header() else {
        reservation.release().await;
        return reject(session, report, Rejection::UpstreamUnavailable).await;
    };
    let status = upstream_header.status.as_u16();
    let response = upstream::downstream_response(upstream_header);
    // The upstream has the message: 2xx means delivered, anything else frees the keys for
    // the provider's retry.
    if (200..300).contains(&status) {
        reservation.commit().await;
    } else {
        reservation.release().await;
    }
    report.settle(Outcome::Forwarded, status);
    relay_response(gw, session, exchange, response).await
}

/// A body that cannot be normalized: too many fields is a size limit, anything else malformed.
fn body_rejection(e: crate::body::BodyError) -> Rejection {
    match e {
        crate::body::BodyError::TooManyFields(_) => Rejection::BodyTooLarge,
        _ => Rejection::MalformedBody,
    }
}

/// The answer to a copy of a message already delivered.
const DUPLICATE: &[u8] = b"{\"status\":\"duplicate\"}";

/// Normalizes the body (unless `normalized` already is), builds the upstream request and
/// sends it; returns once the upstream's response header has arrived.
async fn deliver(
    gw: &Gateway,
    snap: &Snapshot,
    route: &Route,
    session: &ServerSession,
    body: &Body,
    normalized: Option<Bytes>,
    verified: &crate::providers::Verified,
) -> Result<upstream::Exchange, Rejection> {
    let (out_body, content_type) = match route.forward_body {
        ForwardBody::Original => (body.bytes().clone(), None),
        ForwardBody::Json => (
            match normalized {
                Some(json) => json,
                None => normalize::to_json(body).map_err(body_rejection)?,
            },
            Some("application/json"),
        ),
    };
    let req = session.req_header();
    let path_and_query = upstream_target(route, req);
    let header = headers::upstream_request(
        req,
        &Forwarding {
            provider: route.provider_name,
            route: &route.name,
            id: &verified.id,
            timestamp: verified.timestamp,
            peer_ip: peer_ip(session),
            consumed: route.provider.consumed_headers(),
            path_and_query: &path_and_query,
            content_type,
            content_length: out_body.len(),
        },
    )
    .map_err(|_| Rejection::MalformedBody)?;
    let peer = snap
        .peers
        .get(&route.name)
        .ok_or(Rejection::UpstreamUnavailable)?;
    gw.upstream.send(peer, &header, &out_body).await
}

/// Streams the upstream's response to the client.
async fn relay_response(
    gw: &Gateway,
    session: &mut ServerSession,
    mut exchange: upstream::Exchange,
    response: ResponseHeader,
) -> End {
    if session
        .write_response_header(Box::new(response))
        .await
        .is_err()
    {
        return End::Abort;
    }
    loop {
        match exchange.session.read_body_bytes().await {
            Ok(Some(chunk)) => {
                if session.write_response_body(chunk, false).await.is_err() {
                    return End::Abort;
                }
            }
            Ok(None) => break,
            // The upstream broke off mid-body: the client must see a truncated response.
            Err(_) => return End::Abort,
        }
    }
    if session.finish_body().await.is_err() {
        return End::Abort;
    }
    gw.upstream.release(exchange).await;
    End::Responded { reuse: true }
}

/// Writes a rejection: `{"error":"<code>"}`.
async fn reject(session: &mut ServerSession, report: &mut Report<'_>, r: Rejection) -> End {
    let body = Bytes::from(r.body());
    respond(
        session,
        report,
        Outcome::Rejected(r),
        r.status(),
        "application/json",
        body,
    )
    .await
}

/// Writes a response of hookguard's own. The connection stays open when the request was read
/// completely; when its body was left unread (404, 405, 413, ...) it is closed, not drained.
async fn respond(
    session: &mut ServerSession,
    report: &mut Report<'_>,
    outcome: Outcome,
    status: u16,
    content_type: &'static str,
    body: Bytes,
) -> End {
    report.settle(outcome, status);
    let reuse = session.is_body_done();
    if !reuse {
        session.set_keepalive(None);
    }
    let mut header = match ResponseHeader::build(status, Some(2)) {
        Ok(h) => h,
        Err(_) => return End::Abort,
    };
    let ok = header
        .insert_header(http::header::CONTENT_TYPE, content_type)
        .and_then(|_| header.insert_header(http::header::CONTENT_LENGTH, body.len()))
        .is_ok();
    if !ok
        || session
            .write_response_header(Box::new(header))
            .await
            .is_err()
        || session.write_response_body(body, true).await.is_err()
    {
        return End::Abort;
    }
    End::Responded { reuse }
}

fn log_request(snap: &Snapshot, session: &ServerSession, report: &Report<'_>, started: Instant) {
    let route = report.route.as_deref();
    let client = client_ip(session, &snap.config.trusted_proxies)
        .map(|ip| ip.to_string())
        .unwrap_or_default();
    tracing::info!(
        target: "hookguard::request",
        route = route.map_or("", |r| r.name.as_str()),
        provider = route.map_or("", |r| r.provider_name),
        outcome = report.outcome.map_or("", Outcome::label),
        status = report.status,
        duration_ms = started.elapsed().as_secs_f64() * 1e3,
        replay_key = report.replay_key.as_deref().unwrap_or(""),
        client = client.as_str(),
        "request"
    );
}

/// The socket peer: the previous hop, whatever it claims.
fn peer_ip(session: &ServerSession) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
}

/// The client's address: the socket peer, or what trusted proxies say it is.
fn client_ip(session: &ServerSession, trusted: &[ipnet::IpNet]) -> Option<IpAddr> {
    let peer = peer_ip(session)?;
    if trusted.is_empty() {
        return Some(peer);
    }
    let lines = session.req_header().headers.get_all("x-forwarded-for");
    crate::client_ip::resolve(peer, lines.iter().map(|v| v.as_bytes()), trusted)
}

/// The size of the request line and header lines as they arrived (name, `: `, value, CRLF).
fn header_size(req: &pingora::http::RequestHeader) -> usize {
    let line =
        req.method.as_str().len() + req.uri.path_and_query().map_or(1, |p| p.as_str().len()) + 11;
    req.headers.iter().fold(line, |n, (name, value)| {
        n + name.as_str().len() + value.len() + 4
    })
}

/// `Content-Length` as declared, if any (Pingora has already rejected malformed ones).
fn declared_length(session: &ServerSession) -> Option<usize> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The path and query the upstream is asked for.
fn upstream_target(route: &Route, req: &pingora::http::RequestHeader) -> String {
    match (&route.upstream_path, req.uri.query()) {
        (Some(path), Some(q)) => format!("{path}?{q}"),
        (Some(path), None) => path.clone(),
        (None, _) => req
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
    }
}

enum BodyRead {
    TooLarge,
    TimedOut,
    Broken,
}

/// Reads the whole body, stopping as soon as it passes `max` bytes, within `deadline`.
async fn read_body(
    session: &mut ServerSession,
    max: usize,
    declared: Option<usize>,
    deadline: Duration,
) -> Result<Bytes, BodyRead> {
    let read = async {
        // Most bodies arrive in one chunk: keep it as is; copy only once a second one comes.
        let mut first: Option<Bytes> = None;
        let mut joined: Option<BytesMut> = None;
        let mut total = 0usize;
        loop {
            let chunk = match session.read_request_body().await {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) if e.etype() == &ErrorType::ReadTimedout => return Err(BodyRead::TimedOut),
                Err(_) => return Err(BodyRead::Broken),
            };
            total += chunk.len();
            if total > max {
                return Err(BodyRead::TooLarge);
            }
            match (&first, &mut joined) {
                (None, _) => first = Some(chunk),
                (Some(f), None) => {
                    let mut buf = BytesMut::with_capacity(declared.unwrap_or(total).max(total));
                    buf.extend_from_slice(f);
                    buf.extend_from_slice(&chunk);
                    joined = Some(buf);
                }
                (Some(_), Some(buf)) => buf.extend_from_slice(&chunk),
            }
        }
        Ok(match joined {
            Some(buf) => buf.freeze(),
            None => first.unwrap_or_default(),
        })
    };
    match fast_timeout(deadline, read).await {
        Ok(r) => r,
        Err(_) => Err(BodyRead::TimedOut),
    }
}
