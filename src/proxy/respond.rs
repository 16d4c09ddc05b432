//! Answers: the HTTP status and body of each outcome (the one place that maps the contract's
//! error codes to HTTP), the upstream's response relayed to the client, and the per-request
//! report that feeds the metrics and the log line.

use std::sync::Arc;
use std::time::Instant;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::upstream::{Lease, UpstreamBody, UpstreamBodyError};
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
        Rejection::ReplayStoreUnavailable
        | Rejection::ReplayStoreFull
        | Rejection::SpoolFull
        | Rejection::SpoolUnavailable => 503,
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
        crate::logging::request(&crate::logging::RequestLine {
            route: route.map_or("", |r| r.name.as_str()),
            provider: route.map_or("", |r| r.provider_name),
            outcome: self.outcome.map_or("", Outcome::label),
            status: self.status,
            duration: self.started.elapsed(),
            replay_key: self.id.as_deref().unwrap_or(""),
            client,
        });
    }
}

/// The body of every answer: hookguard's own (a rejection, a duplicate, a challenge), or the
/// upstream's, streamed through.
pub enum AnswerBody {
    Own(Option<Bytes>),
    Upstream(UpstreamBody),
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamBodyError>>> {
        match self.get_mut() {
            AnswerBody::Own(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            AnswerBody::Upstream(body) => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            AnswerBody::Own(bytes) => bytes.is_none(),
            AnswerBody::Upstream(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            AnswerBody::Own(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len()) as u64)
            }
            AnswerBody::Upstream(body) => body.size_hint(),
        }
    }
}

pub type Answer = Response<AnswerBody>;

/// Whether the connection may serve another request after this answer: not when the
/// request's body was left unread (404, 405, 413, ...: closed rather than drained).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Alive,
    Close,
}

/// A rejection: `{"error":"<code>"}`.
pub fn reject(report: &mut Report<'_>, r: Rejection, keep: Keep) -> Answer {
    own(
        report,
        Outcome::Rejected(r),
        status(r),
        "application/json",
        error_body(r),
        keep,
    )
}

/// A response of hookguard's own.
pub fn own(
    report: &mut Report<'_>,
    outcome: Outcome,
    status: u16,
    content_type: &'static str,
    body: Bytes,
    keep: Keep,
) -> Answer {
    report.settle(outcome, status);
    let mut resp = Response::new(AnswerBody::Own(Some(body)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    if keep == Keep::Close {
        h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// The upstream's response as the client gets it: unchanged but for the headers that
/// describe the upstream connection, not the message; its body streamed through.
pub fn relay(response: Response<Incoming>, lease: Lease, read_timeout: Duration) -> Answer {
    let (mut parts, body) = response.into_parts();
    for name in ["connection", "keep-alive", "proxy-connection"] {
        parts.headers.remove(name);
    }
    Response::from_parts(
        parts,
        AnswerBody::Upstream(UpstreamBody::new(body, lease, read_timeout)),
    )
}
