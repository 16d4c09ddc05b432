//! The public listener: a Pingora HTTP application that buffers each webhook, has it verified,
//! and forwards the authentic ones upstream. The one place where outcomes become HTTP.
//!
//! A request goes down this file in one straight line: read the head; [`admission`] decides
//! what the head alone can (route, method, client address, sizes); the body is read
//! ([`body_read`]); the route's provider verifies it; the replay guard reserves the message's
//! keys; the upstream request is built ([`headers`]) and sent over pooled connections
//! ([`upstream`]); the keys are committed on 2xx or released; the answer goes back
//! ([`respond`]). [`gateway`] holds what all connections share.
//!
//! This is a Pingora [`HttpServerApp`] rather than a `ProxyHttp` implementation: Pingora's proxy
//! phases forward the request body as it streams in, so a body cannot be verified before the
//! upstream is contacted, nor replaced by its normalized form, without the subrequest detour
//! (pingora#349, #688).

pub mod admission;
mod body_read;
mod gateway;
mod headers;
pub mod respond;
mod upstream;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::time::fast_timeout::fast_timeout;
use pingora::ErrorType;

use crate::body::{Body, BodyError};
use crate::config::{DuplicateStatus, ForwardBody, Route};
use crate::message;
use crate::normalize;
use crate::outcome::{Outcome, Rejection};
use crate::providers::{Inbound, Verified};
use crate::replay::Refused;
use admission::{Admitted, Head, Post};
use body_read::{read_body, BodyRead};
use gateway::InFlight;
pub use gateway::{Gateway, Snapshot};
use headers::Forwarding;
use respond::{reject, relay, respond, End, Report};

/// The Pingora application around a [`Gateway`].
pub struct GatewayApp(pub Arc<Gateway>);

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
        let mut report = Report::new(&snap.metrics);
        let end = handle(gw, &snap, &mut session, &mut report).await;
        // A request that ended without an outcome lost its client midway.
        report.settle(Outcome::Aborted, 0);
        let client = admission::client_address(&head(&session), &snap.config.trusted_proxies);
        report.log(client);

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

/// The request head as the admission step sees it.
fn head(session: &ServerSession) -> Head<'_> {
    let req = session.req_header();
    Head {
        method: &req.method,
        uri: &req.uri,
        headers: &req.headers,
        peer: peer_ip(session),
    }
}

/// The socket peer: the previous hop, whatever it claims.
fn peer_ip(session: &ServerSession) -> Option<IpAddr> {
    session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip().to_canonical())
}

/// Takes one request from header to response.
async fn handle(
    gw: &Gateway,
    snap: &Snapshot,
    session: &mut ServerSession,
    report: &mut Report<'_>,
) -> End {
    let config = &snap.config;
    let post = match admission::admit(config, &head(session)) {
        Ok(Admitted::Post(post)) => post,
        Ok(Admitted::Probe(route)) => {
            report.route = Some(route);
            let answered = Outcome::Answered;
            return respond(session, report, answered, 200, "text/plain", Bytes::new()).await;
        }
        Err(refused) => {
            report.route = refused.route;
            return reject(session, report, refused.rejection).await;
        }
    };
    let Post {
        route,
        client_ip,
        declared,
        expects_continue,
    } = post;
    report.route = Some(Arc::clone(&route));
    if expects_continue && session.write_continue_response().await.is_err() {
        return End::Abort;
    }

    let t = &config.timeouts;
    let bytes = match read_body(session, config.max_body_bytes, declared, t.client_read).await {
        Ok(b) => b,
        Err(BodyRead::TooLarge) => return reject(session, report, Rejection::BodyTooLarge).await,
        Err(BodyRead::TimedOut) => return reject(session, report, Rejection::ClientTimeout).await,
        Err(BodyRead::Malformed) => return reject(session, report, Rejection::MalformedBody).await,
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
        Err(e) => return reject(session, report, e.into()).await,
    };
    report.id = Some(verified.id.clone());
    if let Some(answer) = &verified.answer {
        let body = Bytes::from(answer.body.clone());
        let (status, content_type) = (answer.status, answer.content_type);
        return respond(
            session,
            report,
            Outcome::Answered,
            status,
            content_type,
            body,
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
        Err(Refused::Delivered) if config.replay.duplicate_status == DuplicateStatus::Ok => {
            let body = Bytes::from_static(respond::DUPLICATE);
            let json = "application/json";
            return respond(session, report, Outcome::Duplicate, 200, json, body).await;
        }
        Err(Refused::Delivered | Refused::InFlight) => {
            return reject(session, report, Rejection::Replayed).await
        }
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
    relay(gw, session, exchange, response).await
}

/// A body that cannot be normalized: too many fields is a size limit, anything else malformed.
fn body_rejection(e: BodyError) -> Rejection {
    match e {
        BodyError::TooManyFields(_) => Rejection::BodyTooLarge,
        _ => Rejection::MalformedBody,
    }
}

/// Normalizes the body (unless `normalized` already is), builds the upstream request and
/// sends it; returns once the upstream's response header has arrived.
async fn deliver(
    gw: &Gateway,
    snap: &Snapshot,
    route: &Route,
    session: &ServerSession,
    body: &Body,
    normalized: Option<Bytes>,
    verified: &Verified,
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
