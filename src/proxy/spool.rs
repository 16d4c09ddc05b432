//! The HTTP side of the spool: a verified message is turned into the request the application
//! will receive and written to the spool (the provider is answered 202 once it is synced);
//! later, the spool's workers send it through [`SpoolDeliverer`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use pingora::time::fast_timeout::fast_timeout;

use super::upstream::UpstreamClient;
use crate::config::Timeouts;
use crate::spool::{
    Attempt, Deliver, Delivery, Enqueued, Envelope, Incoming as Message, Outcome, SpoolBackend,
    SpoolError,
};

/// The spool as the public listener uses it.
pub struct Spool {
    pub store: Arc<dyn SpoolBackend>,
    pub delivery: Arc<Delivery>,
    pub commit_timeout: Duration,
}

impl Spool {
    /// Writes `request` (as the application is to receive it) under `keys`; returns once it is
    /// synced, or refused (the store bounds how long: the embedded store answers every op it
    /// was given, Redis within `replay.redis_timeout`).
    pub async fn enqueue(
        &self,
        keys: Vec<u128>,
        origin: Origin<'_>,
        request: Request<Full<Bytes>>,
        body: Bytes,
    ) -> Result<Enqueued, SpoolError> {
        let Origin {
            route,
            provider,
            id,
            upstream,
        } = origin;
        let (parts, _) = request.into_parts();
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| *name != http::header::CONTENT_LENGTH)
            .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
            .collect();
        let envelope = Envelope {
            route: route.to_owned(),
            provider: provider.to_owned(),
            id: id.to_owned(),
            received_ms: crate::spool::now_ms(),
            upstream: upstream.to_string(),
            method: parts.method.as_str().to_owned(),
            target: parts.uri.to_string(),
            headers,
        };
        let message = Message {
            keys,
            envelope,
            body,
        };
        // No timeout here: the caller answers the provider at `commit_timeout` and still
        // waits for this result, which settles the message's keys.
        let enqueued = self.store.enqueue(message).await;
        if matches!(enqueued, Ok(Enqueued::Queued(_))) {
            self.delivery.wake.notify_one();
        }
        enqueued
    }
}

/// Where a message came from and goes to, for its record.
pub struct Origin<'a> {
    pub route: &'a str,
    pub provider: &'a str,
    /// `X-Webhook-Id`.
    pub id: &'a str,
    pub upstream: std::net::SocketAddr,
}

/// Sends spooled messages to the application over a connection pool of its own.
pub struct SpoolDeliverer {
    upstream: UpstreamClient,
    timeouts: Timeouts,
    abort_header: http::HeaderName,
}

impl SpoolDeliverer {
    pub fn new(timeouts: Timeouts, abort_header: http::HeaderName) -> Arc<Self> {
        Arc::new(SpoolDeliverer {
            upstream: UpstreamClient::new(),
            timeouts,
            abort_header,
        })
    }
}

/// The request of one attempt: the stored one, with the attempt's number and the time the
/// message first arrived.
fn request(attempt: &Attempt<'_>) -> Result<Request<Full<Bytes>>, String> {
    let e = &attempt.record.envelope;
    let mut b = Request::builder()
        .method(e.method.as_str())
        .uri(e.target.as_str())
        .version(http::Version::HTTP_11);
    for (name, value) in &e.headers {
        b = b.header(name.as_str(), value.as_slice());
    }
    let first = std::time::UNIX_EPOCH + Duration::from_millis(e.received_ms);
    b.header(http::header::CONTENT_LENGTH, attempt.body.len())
        .header("x-webhook-attempt", attempt.record.attempts)
        .header(
            "x-webhook-first-received",
            humantime::format_rfc3339_seconds(first).to_string(),
        )
        .body(Full::new(attempt.body.clone()))
        .map_err(|e| e.to_string())
}

/// `Retry-After`: seconds, or an HTTP date.
fn retry_after(response: &Response<Incoming>) -> Option<Duration> {
    retry_after_value(response.headers())
}

fn retry_after_value(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    at.duration_since(std::time::SystemTime::now()).ok()
}

#[async_trait]
impl Deliver for SpoolDeliverer {
    async fn deliver(&self, attempt: Attempt<'_>) -> Outcome {
        let req = match request(&attempt) {
            Ok(r) => r,
            Err(e) => {
                return Outcome {
                    note: format!("the stored request is invalid: {e}"),
                    ..Outcome::default()
                }
            }
        };
        let Ok(addr) = attempt.record.envelope.upstream.parse() else {
            return Outcome {
                note: "the stored upstream address is invalid".into(),
                ..Outcome::default()
            };
        };
        match self.upstream.send(addr, &self.timeouts, req).await {
            Ok(exchange) => {
                let status = exchange.response.status().as_u16();
                let aborted = exchange.response.headers().contains_key(&self.abort_header);
                let retry_after = retry_after(&exchange.response);
                // The body is read to its end, so that the connection goes back to the pool,
                // and thrown away as it comes (its contents are not needed): bounded in time
                // and in size, past which the connection is dropped instead.
                let body = super::respond::relay(
                    exchange.response,
                    exchange.lease,
                    self.timeouts.upstream_read,
                );
                let read = fast_timeout(self.timeouts.upstream_read, drain(body.into_body())).await;
                let note = match read {
                    Ok(true) => format!("answered {status}"),
                    _ => format!("answered {status} (body cut off)"),
                };
                Outcome {
                    status: Some(status),
                    timed_out: false,
                    retry_after,
                    aborted,
                    note,
                }
            }
            Err(r) => Outcome {
                status: None,
                timed_out: r == crate::outcome::Rejection::UpstreamTimeout,
                retry_after: None,
                aborted: false,
                note: r.code().to_owned(),
            },
        }
    }
}

/// The most of an answer's body a delivery reads (and throws away) to reuse its connection.
const MAX_DRAINED_BYTES: usize = 1 << 20;

/// Reads `body` to its end, keeping nothing; `false` when it failed or was longer than
/// [`MAX_DRAINED_BYTES`] (the rest is not read).
async fn drain<B>(mut body: B) -> bool
where
    B: hyper::body::Body + Unpin,
    B::Data: bytes::Buf,
{
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return false };
        if let Some(data) = frame.data_ref() {
            seen = seen.saturating_add(bytes::Buf::remaining(data));
            if seen > MAX_DRAINED_BYTES {
                return false;
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let answer = |value: &str| {
            Response::builder()
                .header(http::header::RETRY_AFTER, value)
                .body(())
                .unwrap()
        };
        let seconds = |r: &Response<()>| retry_after_value(r.headers()).map(|d| d.as_secs());
        assert_eq!(seconds(&answer("120")), Some(120));
        let later = std::time::SystemTime::now() + Duration::from_secs(3600);
        let date = answer(&httpdate::fmt_http_date(later));
        assert!(
            matches!(seconds(&date), Some(3590..=3600)),
            "{:?}",
            seconds(&date)
        );
        assert_eq!(seconds(&answer("yesterday")), None);
    }

    #[tokio::test]
    async fn an_answers_body_is_drained_within_a_bound() {
        let body = |n: usize| Full::new(Bytes::from(vec![b'x'; n]));
        assert!(drain(body(10)).await);
        assert!(drain(body(MAX_DRAINED_BYTES)).await);
        assert!(!drain(body(MAX_DRAINED_BYTES + 1)).await);
    }
}
