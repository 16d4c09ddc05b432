//! Answers: the HTTP status and body of each outcome (the one place that maps the contract's
//! error codes to HTTP), the upstream's response relayed to the client, and the per-request
//! report that feeds the metrics and the log line.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;

use super::gateway::Gateway;
use super::upstream::Exchange;
use crate::config::Route;
use crate::metrics::RouteMetricsTable;
use crate::outcome::{Outcome, Rejection};

/// The HTTP status a rejection is answered with (the contract's table, and its additions).
pub fn status(r: Rejection) -> u16 {
    match r {
        Rejection::NoRoute => 404,
        Rejection::MethodNotAllowed => 405,
        Rejection::IpNotAllowed => 403,
        Rejection::HeadersTooLarge => 431,
        Rejection::BodyTooLarge => 413,
        Rejection::MissingSignature | Rejection::StaleTimestamp | Rejection::BadSignature => 401,
        Rejection::Replayed => 409,
        Rejection::ReplayStoreUnavailable | Rejection::ReplayStoreFull => 503,
        Rejection::MalformedBody => 400,
        Rejection::ClientTimeout => 408,
        Rejection::UpstreamUnavailable => 502,
        Rejection::UpstreamTimeout => 504,
    }
}

/// A rejection's body: `{"error":"<code>"}`. Nothing else, ever: no expected signature, no
/// secret, no echo of the request.
pub fn error_body(r: Rejection) -> Bytes {
    Bytes::from(format!("{{\"error\":\"{}\"}}", r.code()))
}

/// The answer to a copy of a message already delivered.
pub const DUPLICATE: &[u8] = b"{\"status\":\"duplicate\"}";

/// What the per-request log line and metrics need. The request is counted the moment its
/// outcome is known, before the response goes out, so a client that reads the response and
/// then the metrics always sees itself counted.
pub struct Report<'a> {
    pub metrics: &'a RouteMetricsTable,
    pub route: Option<Arc<Route>>,
    pub outcome: Option<Outcome>,
    pub status: u16,
    /// The message's id (`X-Webhook-Id`), once verified.
    pub id: Option<String>,
    pub started: Instant,
}

impl<'a> Report<'a> {
    pub fn new(metrics: &'a RouteMetricsTable) -> Self {
        Report {
            metrics,
            route: None,
            outcome: None,
            status: 0,
            id: None,
            started: Instant::now(),
        }
    }

    pub fn settle(&mut self, outcome: Outcome, status: u16) {
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

    /// The request's log line: one per request, no secret, no body.
    pub fn log(&self, client: Option<std::net::IpAddr>) {
        let route = self.route.as_deref();
        let client = client.map(|ip| ip.to_string()).unwrap_or_default();
        // Whole microseconds as milliseconds: `1.23` rather than `1.2296099999999999`
        // (an integer divided by 1000 prints as its shortest decimal).
        let duration_ms = self.started.elapsed().as_micros() as f64 / 1000.0;
        tracing::info!(
            target: "hookguard::request",
            route = route.map_or("", |r| r.name.as_str()),
            provider = route.map_or("", |r| r.provider_name),
            outcome = self.outcome.map_or("", Outcome::label),
            status = self.status,
            duration_ms,
            replay_key = self.id.as_deref().unwrap_or(""),
            client = client.as_str(),
            "request"
        );
    }
}

/// How a request ended, for the connection.
pub enum End {
    /// A complete response was written; the connection may be reused if `reuse`.
    Responded { reuse: bool },
    /// The connection is broken or half-written: close it.
    Abort,
}

/// Writes a rejection: `{"error":"<code>"}`.
pub async fn reject(session: &mut ServerSession, report: &mut Report<'_>, r: Rejection) -> End {
    respond(
        session,
        report,
        Outcome::Rejected(r),
        status(r),
        "application/json",
        error_body(r),
    )
    .await
}

/// Writes a response of hookguard's own. The connection stays open when the request was read
/// completely; when its body was left unread (404, 405, 413, ...) it is closed, not drained.
pub async fn respond(
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

/// Streams the upstream's response to the client.
pub async fn relay(
    gw: &Gateway,
    session: &mut ServerSession,
    mut exchange: Exchange,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rejection_has_a_status_and_a_bare_error_body() {
        for r in Rejection::ALL {
            let s = status(r);
            assert!((400..600).contains(&s), "{r:?}: {s}");
            let body: serde_json::Value = serde_json::from_slice(&error_body(r)).unwrap();
            assert_eq!(body, serde_json::json!({ "error": r.code() }));
        }
        assert_eq!(status(Rejection::ReplayStoreFull), 503);
    }
}
