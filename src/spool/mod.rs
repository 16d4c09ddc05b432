//! The spool: a verified webhook is written durably, the provider is answered, and the
//! application is given the message until it takes it.
//!
//! - [`store`]: the embedded store (redb, one fsync per commit, shared by every message that
//!   arrived meanwhile: group commit), with exactly-once enqueue (a copy of a message already
//!   spooled or delivered is recognised by its keys, for `dedup_ttl`);
//! - [`delivery`]: the workers that hand messages to the application, retry with backoff and
//!   jitter, probe a down upstream once per backoff step, and dead-letter what cannot be
//!   delivered;
//! - this file: the records and the answers the rest of hookguard sees.
//!
//! The spool knows nothing of HTTP: the proxy builds the request a message will be delivered
//! as, and hands the spool a [`Deliver`] that sends one.

pub mod delivery;
pub mod store;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use delivery::{Attempt, Deliver, Delivery, Outcome};
pub use store::{SpoolStore, StoreStats};

/// A verified message as the spool keeps it: the request the application is to receive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub route: String,
    pub provider: String,
    /// `X-Webhook-Id`.
    pub id: String,
    /// When the first copy arrived, unix milliseconds.
    pub received_ms: u64,
    /// The upstream's address (`ip:port`) as the route had it when the message arrived.
    pub upstream: String,
    pub method: String,
    /// Path and query, upstream.
    pub target: String,
    /// The request's headers as the application receives them (hookguard's `X-Webhook-*`
    /// included; `Content-Length` and the attempt's own headers are added at each attempt).
    #[serde(with = "header_list")]
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Where a message stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Waiting for its next attempt.
    Queued,
    /// Given up on, for `reason` (`client_error`, `aborted`, `expired`); kept until purged or
    /// retried by hand.
    Dead { reason: String },
}

impl State {
    pub fn label(&self) -> &str {
        match self {
            State::Queued => "queued",
            State::Dead { .. } => "dead",
        }
    }
}

/// A spooled message and its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The spool's own number for it (arrival order).
    pub seq: u64,
    pub envelope: Envelope,
    #[serde(flatten)]
    pub state: State,
    /// Attempts started (each recorded durably before the request goes out).
    pub attempts: u32,
    /// Attempts whose result is known. Fewer than `attempts` after a crash: the last attempt
    /// may or may not have reached the application.
    pub finished: u32,
    /// Answers 4xx (other than 408/429) so far.
    pub client_errors: u32,
    /// Attempts whose fate is unknown (interrupted, or the application did not answer in
    /// time): each may have been a delivery.
    pub ambiguous: u32,
    /// When the next attempt is due, unix milliseconds.
    pub next_ms: u64,
    /// The last attempt's result, for `hookguard spool show`.
    pub last: Option<String>,
    /// Bytes the message holds in the spool (body and headers).
    pub bytes: u64,
}

/// What an enqueue did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Written and synced: the spool will deliver it.
    Queued(u64),
    /// A copy of a message already spooled or delivered: nothing written.
    Duplicate,
}

/// Why the spool could not take a message: the provider is answered 503 and retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpoolError {
    #[error("the spool is full ({0})")]
    Full(&'static str),
    #[error("the spool could not write: {0}")]
    Unavailable(String),
}

/// Which messages an operator means.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// `queued` or `dead`; any when absent.
    pub state: Option<String>,
    pub route: Option<String>,
    /// Only messages that arrived at least this many seconds ago.
    pub older_than_secs: Option<u64>,
    /// Only these messages.
    pub seqs: Option<Vec<u64>>,
    /// At most this many (`list`).
    pub limit: Option<usize>,
}

impl Filter {
    pub fn matches(&self, r: &Record, now_ms: u64) -> bool {
        self.state.as_deref().is_none_or(|s| s == r.state.label())
            && self
                .route
                .as_deref()
                .is_none_or(|route| route == r.envelope.route)
            && self.older_than_secs.is_none_or(|secs| {
                now_ms.saturating_sub(r.envelope.received_ms) >= secs.saturating_mul(1000)
            })
            && self.seqs.as_ref().is_none_or(|s| s.contains(&r.seq))
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// `d` in milliseconds, saturating.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A message on its way into the spool.
pub struct Incoming {
    /// The message's (or its event's) keys: a message with any key already spooled or
    /// delivered is a duplicate.
    pub keys: Vec<u128>,
    pub envelope: Envelope,
    pub body: Bytes,
}

/// Header values are bytes (not always UTF-8): base64 in the record.
mod header_list {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(h: &[(String, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
        h.iter()
            .map(|(n, v)| (n.as_str(), b64.encode(v)))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(String, Vec<u8>)>, D::Error> {
        let b64 = base64::engine::general_purpose::STANDARD;
        Vec::<(String, String)>::deserialize(d)?
            .into_iter()
            .map(|(n, v)| {
                b64.decode(v)
                    .map(|v| (n, v))
                    .map_err(serde::de::Error::custom)
            })
            .collect()
    }
}
