//! The public listener: buffers each webhook, has it verified, and forwards the authentic
//! ones upstream. The one place where outcomes become HTTP.
//!
//! Pingora runs the server: its listeners (TCP, and TLS when served), signals, graceful
//! shutdown and upgrade. Each accepted connection is handed to [`GatewayApp`] (a Pingora
//! [`ServerApp`]), which speaks HTTP/1 on it with hyper, a widely deployed codec that writes a
//! response's head and body in one `writev`: Pingora's own HTTP/1 session flushed them apart
//! and cost about twice nginx's CPU per request (bench/README.md has the measurements).
//!
//! A request goes down this file in one straight line: [`admission`] decides what the head
//! alone can (route, method, client address, sizes); the body is read ([`body_read`]); the
//! route's provider verifies it; the replay guard reserves the message's keys; the upstream
//! request is built ([`headers`]) and sent over pooled connections ([`upstream`]); the keys are
//! committed on 2xx or released; the answer goes back ([`respond`]). [`gateway`] holds what
//! all connections share.

pub mod admission;
mod body_read;
mod gateway;
mod headers;
pub mod respond;
pub mod spool;
mod timer;
mod upstream;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::Request;
use hyper_util::rt::TokioIo;
use pingora::apps::ServerApp;
use pingora::protocols::Stream;
use pingora::server::ShutdownWatch;
use pingora::time::fast_timeout::fast_timeout;

use crate::body::{Body, BodyError};
use crate::config::{DuplicateStatus, ForwardBody, Route};
use crate::normalize;
use crate::outcome::{Outcome, Rejection};
use crate::providers::{Inbound, Verified};
use crate::replay::{Binding, Refused};
use crate::spool::{Enqueued, SpoolError};
use admission::{Admitted, Head, Post};
use body_read::{read_body, BodyRead};
use gateway::InFlight;
pub use gateway::{Gateway, Snapshot};
use headers::Forwarding;
use respond::{own, reject, relay, Answer, Keep, Report};

/// The Pingora application around a [`Gateway`]: HTTP/1 on every accepted connection.
pub struct GatewayApp(pub Arc<Gateway>);

#[async_trait]
impl ServerApp for GatewayApp {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        serve(Arc::clone(&self.0), stream, shutdown.clone()).await;
        // hyper has the connection to its end: nothing to hand back to Pingora.
        None
    }
}

/// Serves one client connection until it closes, or until shutdown: then the request in
/// flight is finished and the connection closed.
async fn serve(gw: Arc<Gateway>, stream: Stream, mut shutdown: ShutdownWatch) {
    let peer = stream.get_socket_digest().and_then(|d| {
        d.peer_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip().to_canonical())
    });
    let open = gateway::Connection::open(&gw);
    let snap = gw.config();
    let t = &snap.config.timeouts;
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(timer::FastTimer)
        // The whole header, idle keep-alive time included, within this (slow-loris).
        .header_read_timeout(t.keepalive + t.client_read)
        // hyper's own bound on a header; hookguard's `max_header_bytes` answers 431 with a
        // JSON body below it.
        .max_buf_size((snap.config.max_header_bytes * 2).max(16 * 1024))
        // A client that shuts its writing side after its request still gets the answer.
        .half_close(true)
        .keep_alive(true);
    let service = service_fn({
        let gw = Arc::clone(&gw);
        move |req: Request<Incoming>| {
            let gw = Arc::clone(&gw);
            async move { Ok::<_, Infallible>(request(gw, req, peer).await) }
        }
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // hookguard's own drain (it exits once every connection is closed), or Pingora's shutdown
    // at the end of its grace period.
    let stopping = async {
        tokio::select! {
            _ = gw.drained() => {}
            _ = shutdown_started(&mut shutdown) => {}
        }
    };
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopping => {
            // Idle: closed now; mid-request: closed once its answer is written.
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
    drop(open);
}

async fn shutdown_started(shutdown: &mut ShutdownWatch) {
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            // The server is gone: nothing will ever signal again.
            std::future::pending::<()>().await;
        }
    }
}

/// One request: counted in flight, answered, reported.
async fn request(gw: Arc<Gateway>, req: Request<Incoming>, peer: Option<IpAddr>) -> Answer {
    let in_flight = InFlight::enter(&gw);
    let snap = gw.config();
    let mut report = Report::new(&snap.metrics);
    let (parts, body) = req.into_parts();
    let head = Head {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
        peer,
    };
    let client = admission::client_address(&head, &snap.config.trusted_proxies);
    let answer = handle(&gw, &snap, &parts, body, peer, &mut report, in_flight).await;
    report.log(client);
    answer
}

/// Takes one request from header to response.
async fn handle(
    gw: &Arc<Gateway>,
    snap: &Snapshot,
    parts: &http::request::Parts,
    body: Incoming,
    peer: Option<IpAddr>,
    report: &mut Report<'_>,
    in_flight: InFlight,
) -> Answer {
    let config = &snap.config;
    let head = Head {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
        peer,
    };
    // What the head refuses, the body is never read for: the connection is then closed
    // rather than drained.
    let post = match admission::admit(config, &head) {
        Ok(Admitted::Post(post)) => post,
        Ok(Admitted::Probe(route)) => {
            report.route = Some(route);
            let (answered, empty) = (Outcome::Answered, Bytes::new());
            return own(report, answered, 200, "text/plain", empty, unread(parts));
        }
        Err(refused) => {
            report.route = refused.route;
            return reject(report, refused.rejection, unread(parts));
        }
    };
    let Post {
        route,
        client_ip,
        declared,
        ..
    } = post;
    report.route = Some(Arc::clone(&route));

    // hyper answers `Expect: 100-continue` when the body is first asked for.
    let t = &config.timeouts;
    let bytes = match read_body(body, config.max_body_bytes, declared, t.client_read).await {
        Ok(b) => b,
        Err(BodyRead::TooLarge) => return reject(report, Rejection::BodyTooLarge, Keep::Close),
        Err(BodyRead::TimedOut) => return reject(report, Rejection::ClientTimeout, Keep::Close),
        Err(BodyRead::Malformed) => return reject(report, Rejection::MalformedBody, Keep::Close),
        // Nobody to answer: the client is gone (counted as aborted).
        Err(BodyRead::Broken) => {
            report.settle(Outcome::Aborted, 0);
            return reject(report, Rejection::MalformedBody, Keep::Close);
        }
    };
    let route_metrics = snap.metrics.route(&route.name);
    if let Some(m) = route_metrics {
        m.body_bytes.inc_by(bytes.len() as u64);
    }

    let content_type = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let body = Body::new(bytes, content_type).with_max_fields(config.max_body_fields);
    let inbound = Inbound {
        path_and_query: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        headers: &parts.headers,
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
        Err(e) => return reject(report, e.into(), Keep::Alive),
    };
    report.id = Some(verified.id.clone());
    if let Some(answer) = &verified.answer {
        let body = Bytes::from(answer.body.clone());
        let (status, content_type) = (answer.status, answer.content_type);
        return own(
            report,
            Outcome::Answered,
            status,
            content_type,
            body,
            Keep::Alive,
        );
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
        let canonical = normalized.clone().unwrap_or_else(|| body.bytes().clone());
        if route.forward_body == ForwardBody::Json {
            outgoing = normalized;
        }
        Some(Binding::new(canonical))
    };

    let reserved = gw
        .replay
        .reserve(&verified.keys, binding, verified.remember_for)
        .await;
    let reservation = match reserved {
        Ok(r) => r,
        // A spooled route answers its copies 200 whatever `duplicate_status` says (the
        // spool's contract).
        Err(Refused::Delivered)
            if route.spool || config.replay.duplicate_status == DuplicateStatus::Ok =>
        {
            if route.spool {
                // Offered to the spool and found taken: counted as the spool's own copies are.
                let counted = &gw.metrics.spool.enqueued;
                counted.with_label_values(&["duplicate"]).inc();
            }
            let body = Bytes::from_static(respond::DUPLICATE);
            let json = "application/json";
            return own(report, Outcome::Duplicate, 200, json, body, Keep::Alive);
        }
        Err(Refused::Delivered | Refused::InFlight) => {
            return reject(report, Rejection::Replayed, Keep::Alive)
        }
        Err(Refused::Full) => {
            tracing::warn!(
                route = route.name.as_str(),
                max_entries = config.replay.max_entries,
                "replay store full of keys still inside their window: answering 503 so the provider retries (raise replay.max_entries)"
            );
            return reject(report, Rejection::ReplayStoreFull, Keep::Alive);
        }
        Err(Refused::StoreUnavailable) => {
            return reject(report, Rejection::ReplayStoreUnavailable, Keep::Alive)
        }
    };

    let (req, out_body) = match upstream_request(&route, parts, peer, &body, outgoing, &verified) {
        Ok(x) => x,
        Err(r) => {
            reservation.release().await;
            return reject(report, r, Keep::Alive);
        }
    };
    // A spooled route shares the replay guard with every other route: a message taken on one
    // path (spooled or forwarded) is a copy on the other, whatever body it now carries.
    if route.spool {
        let verified = verified.event(route.provider.event_id(&body).as_deref());
        // On a task of its own, as the exchange below: a client that goes away cannot leave
        // a written message's keys released. The provider is answered at
        // `spool.commit_timeout` at the latest (503: it retries), but the keys wait for what
        // the spool really did: a write that lands after the answer commits them (the retry
        // is then a duplicate, wherever it is sent), one that fails releases them. Released
        // at the timeout instead, a late write would leave the message spooled with its keys
        // free, and a copy sent to a direct route with the same secret would reach the
        // application a second time.
        let (tell, told) = tokio::sync::oneshot::channel();
        tokio::spawn({
            let gw = Arc::clone(gw);
            let route = Arc::clone(&route);
            let keys = verified.dedup_keys().iter().map(|k| k.0).collect();
            let id = verified.id.clone();
            async move {
                let written = spool_write(&gw, &route, keys, &id, req, out_body).await;
                match &written {
                    Ok(_) => reservation.commit().await,
                    Err(_) => reservation.release().await,
                }
                drop(in_flight);
                // The handler may have answered already (timed out): nobody listens then.
                let _ = tell.send(written);
            }
        });
        let commit_timeout = gw
            .spool
            .as_ref()
            .map_or(Duration::ZERO, |s| s.commit_timeout);
        let written = match fast_timeout(commit_timeout, told).await {
            Ok(Ok(written)) => written,
            Ok(Err(_)) => Err(SpoolError::Unavailable("the spool write stopped".into())),
            Err(_) => Err(SpoolError::Unavailable(
                "no commit within spool.commit_timeout (the keys wait for the write's result)"
                    .into(),
            )),
        };
        return spooled(gw, &route, &verified.id, written, report);
    }
    // From here the exchange runs to its end on a task of its own, even if the client goes
    // away meanwhile (hyper drops a request's future when its connection closes): the keys
    // must be settled by what the upstream did, or a message it accepted would be released
    // for the provider's retry and delivered twice. The keys are settled before anything is
    // written back: a provider that retries the instant it reads a failure finds them free.
    let exchange = tokio::spawn({
        let gw = Arc::clone(gw);
        let addr = route.upstream.addr;
        let timeouts = t.clone();
        async move {
            let sent = gw.upstream.send(addr, &timeouts, req).await;
            match &sent {
                Ok(x) if x.response.status().is_success() => reservation.commit().await,
                _ => reservation.release().await,
            }
            drop(in_flight);
            sent
        }
    })
    .await;
    let exchange = match exchange {
        Ok(Ok(x)) => x,
        Ok(Err(r)) => return reject(report, r, Keep::Alive),
        Err(_) => return reject(report, Rejection::UpstreamUnavailable, Keep::Alive),
    };
    if let Some(m) = route_metrics {
        m.upstream.observe(exchange.waited.as_secs_f64());
    }
    let status = exchange.response.status().as_u16();
    report.settle(Outcome::Forwarded, status);
    relay(exchange.response, exchange.lease, t.upstream_read)
}

/// Whether a connection survives an answer given without reading the request's body: only
/// when there is no body to read.
fn unread(parts: &http::request::Parts) -> Keep {
    let h = &parts.headers;
    let empty = !h.contains_key(http::header::TRANSFER_ENCODING)
        && h.get(http::header::CONTENT_LENGTH)
            .is_none_or(|v| v.as_bytes() == b"0");
    if empty {
        Keep::Alive
    } else {
        Keep::Close
    }
}

/// A body that cannot be normalized: too many fields is a size limit, anything else malformed.
fn body_rejection(e: BodyError) -> Rejection {
    match e {
        BodyError::TooManyFields(_) => Rejection::BodyTooLarge,
        _ => Rejection::MalformedBody,
    }
}

/// The request the upstream gets: the body normalized (unless `normalized` already is), the
/// client's headers filtered, hookguard's own added.
fn upstream_request(
    route: &Route,
    parts: &http::request::Parts,
    peer: Option<IpAddr>,
    body: &Body,
    normalized: Option<Bytes>,
    verified: &Verified,
) -> Result<(Request<http_body_util::Full<Bytes>>, Bytes), Rejection> {
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
    let path_and_query = upstream_target(route, &parts.uri);
    let kept = out_body.clone();
    headers::upstream_request(
        parts,
        &Forwarding {
            provider: route.provider_name,
            route: &route.name,
            id: &verified.id,
            timestamp: verified.timestamp,
            peer_ip: peer,
            consumed: route.provider.consumed_headers(),
            path_and_query: &path_and_query,
            content_type,
        },
        out_body,
    )
    .map(|req| (req, kept))
    .map_err(|_| Rejection::MalformedBody)
}

/// Writes a verified message on a spooled route to the spool (returns once synced). Its
/// copies are recognised by `keys`: the provider's event where it names one across its
/// retries, else the message's keys.
async fn spool_write(
    gw: &Gateway,
    route: &Route,
    keys: Vec<u128>,
    id: &str,
    req: Request<http_body_util::Full<Bytes>>,
    body: Bytes,
) -> Result<Enqueued, SpoolError> {
    let Some(spool) = &gw.spool else {
        return Err(SpoolError::Unavailable("no spool runs".into()));
    };
    let origin = spool::Origin {
        route: &route.name,
        provider: route.provider_name,
        id,
        upstream: route.upstream.addr,
    };
    spool.enqueue(keys, origin, req, body).await
}

/// The answer to a spooled message: `202 queued` once written, `200 duplicate` for a copy,
/// 503 when it could not be written (the provider retries).
fn spooled(
    gw: &Gateway,
    route: &Route,
    id: &str,
    written: Result<Enqueued, SpoolError>,
    report: &mut Report<'_>,
) -> Answer {
    let counted = &gw.metrics.spool.enqueued;
    let json = "application/json";
    match written {
        Ok(Enqueued::Queued(_)) => {
            counted.with_label_values(&["queued"]).inc();
            let id = serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into());
            let body = Bytes::from(format!("{{\"status\":\"queued\",\"id\":{id}}}"));
            own(report, Outcome::Queued, 202, json, body, Keep::Alive)
        }
        Ok(Enqueued::Duplicate) => {
            counted.with_label_values(&["duplicate"]).inc();
            let body = Bytes::from_static(respond::DUPLICATE);
            own(report, Outcome::Duplicate, 200, json, body, Keep::Alive)
        }
        Err(SpoolError::Full(why)) => {
            counted.with_label_values(&["full"]).inc();
            tracing::warn!(
                route = route.name.as_str(),
                why,
                "spool full: answering 503 so the provider retries"
            );
            reject(report, Rejection::SpoolFull, Keep::Alive)
        }
        Err(SpoolError::Unavailable(why)) => {
            counted.with_label_values(&["unavailable"]).inc();
            tracing::warn!(
                route = route.name.as_str(),
                why = why.as_str(),
                "spool: the message was not written; answering 503 so the provider retries"
            );
            reject(report, Rejection::SpoolUnavailable, Keep::Alive)
        }
    }
}

/// The path and query the upstream is asked for.
fn upstream_target(route: &Route, uri: &http::Uri) -> String {
    match (&route.upstream_path, uri.query()) {
        (Some(path), Some(q)) => format!("{path}?{q}"),
        (Some(path), None) => path.clone(),
        (None, _) => uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
    }
}
