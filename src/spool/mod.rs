//! The spool: a verified webhook is written durably, the provider is answered, and the
//! application is given the message until it takes it.
//!
//! - [`store`]: the embedded store (redb, one fsync per commit, shared by every message that
//!   arrived meanwhile: group commit), with exactly-once enqueue (a copy of a message already
//!   spooled or delivered is recognised by its keys, for `dedup_ttl`);
//! - [`redis`]: the shared store of several replicas, on the Redis the replay guard uses
//!   (`spool.backend: redis`), with the same enqueue-once guarantee; messages are Redis Streams
//!   entries read by a consumer group, and the other replicas claim what a dead one held;
//! - [`delivery`]: the workers that hand messages to the application, retry with backoff and
//!   jitter, and dead-letter what cannot be delivered;
//! - [`health`]: the down upstreams, probed once per backoff step (between all the replicas
//!   on the shared store);
//! - this file: the records, the answers the rest of hookguard sees, and [`SpoolBackend`],
//!   the interface both stores implement (the delivery code, the HTTP side, the admin
//!   endpoints and the command line are the same for both).
//!
//! The spool knows nothing of HTTP: the proxy builds the request a message will be delivered
//! as, and hands the spool a [`Deliver`] that sends one.

pub mod delivery;
mod health;
pub mod redis;
mod schedule;
pub mod store;

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub use delivery::{Attempt, Deliver, Delivery, Outcome};
pub use redis::RedisSpool;
pub use store::SpoolStore;

/// What the spool keeps its messages in. Every call that changes a message is atomic and
/// durable when it returns `Ok` (the embedded store: committed and synced; Redis: one script,
/// as durable as the server's AOF makes it).
#[async_trait]
pub trait SpoolBackend: Send + Sync + 'static {
    /// Writes `message`, unless one of its keys is already spooled or delivered (within
    /// `dedup_ttl`): then nothing is written and the answer is `Duplicate`.
    async fn enqueue(&self, message: Incoming) -> Result<Enqueued, SpoolError>;

    /// Records that an attempt of `seq` starts, before the request goes out; `None` when the
    /// message is not queued (any more), or (shared store) another replica holds it.
    async fn start(&self, seq: u64) -> Result<Option<Started>, SpoolError>;

    /// Records the result of attempt number `attempt` (the record's `attempts` as `start`
    /// returned it). A result that comes too late (the message was taken over since) is
    /// ignored.
    async fn finish(&self, seq: u64, attempt: u32, finish: Finish) -> Result<(), SpoolError>;

    /// Makes every queued message to `upstream` due now (it is back); returns how many.
    async fn wake(&self, upstream: &str) -> Result<usize, SpoolError>;

    /// Dead (or queued) messages matching `filter` queued again, due now.
    async fn retry(&self, filter: Filter) -> Result<usize, SpoolError>;

    /// Messages matching `filter` deleted (their keys stay: copies are still duplicates).
    async fn purge(&self, filter: Filter) -> Result<usize, SpoolError>;

    /// Forgets keys whose `dedup_ttl` is over; returns how many.
    async fn sweep(&self) -> Result<usize, SpoolError>;

    /// Up to `limit` queued messages due at `now_ms`, oldest due first (or, with
    /// `newest_first`, the most recently due first): (due ms, seq). Messages to a `blocked`
    /// upstream (down, its probe not due) are left out. The Redis store answers with the
    /// messages this replica has taken from its streams (and gives new ones their share
    /// itself: nothing for `newest_first`).
    async fn due(
        &self,
        now_ms: u64,
        limit: usize,
        newest_first: bool,
        blocked: &[String],
    ) -> Result<Vec<(u64, u64)>, SpoolError>;

    /// The earliest time a queued message (not to a `blocked` upstream, as `due`) is due.
    async fn next_due(&self, blocked: &[String]) -> Result<Option<u64>, SpoolError>;

    /// The upstream a queued message goes to (`None`: no such message), for the scheduler,
    /// which looks at it before it starts an attempt.
    async fn upstream_of(&self, seq: u64) -> Result<Option<String>, SpoolError>;

    /// One message, with its body.
    async fn get(&self, seq: u64) -> Result<Option<(Record, Bytes)>, SpoolError>;

    /// The messages matching `filter`, in arrival order.
    async fn list(&self, filter: &Filter) -> Result<Vec<Record>, SpoolError>;

    async fn stats(&self) -> Result<StoreStats, SpoolError>;

    /// The down upstreams as every replica sees them (the shared store), so that each is
    /// probed once per backoff step between them; `None` (the embedded store): this process
    /// is the only one delivering, its own view is the whole.
    async fn down_upstreams(&self) -> Result<Option<HashMap<String, SharedDown>>, SpoolError> {
        Ok(None)
    }

    /// Records `change` of an upstream's state where the replicas share it and answers what
    /// it is now; `None` (the embedded store): nothing is shared, the caller decides alone.
    async fn upstream_health(
        &self,
        _upstream: &str,
        _change: HealthChange,
    ) -> Result<Option<Health>, SpoolError> {
        Ok(None)
    }
}

/// A down upstream as the replicas share it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedDown {
    /// When its next probe may go, unix ms.
    pub next_ms: u64,
    /// Its backoff step (the failed probes so far, plus one).
    pub step: u32,
}

/// A change of an upstream's state, as one replica saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    /// An attempt failed while this replica took the upstream to be up: down, probed at
    /// `next_ms` unless another replica found it down first (its time stands).
    FoundDown { next_ms: u64 },
    /// This replica's probe may go now: taken for `hold_ms` (no other replica probes
    /// meanwhile) unless its time has not come or the upstream is up.
    Claim { hold_ms: u64 },
    /// This replica's probe failed: the next step.
    ProbeFailed { next_ms: u64, step: u32 },
    /// This replica's probe ended without an answer (its message was gone): the next one
    /// may go now, from any replica.
    Release,
    /// The upstream answered a probe: up again.
    Up,
}

/// An upstream's shared state after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Down; probed at the time it says (by whichever replica claims it then).
    Down(SharedDown),
    /// Down, and this replica's probe may go now.
    Claimed(SharedDown),
    /// Up: another replica's probe found it back.
    Up,
}

/// The outcome of an attempt, as the store records it.
#[derive(Debug, Clone)]
pub enum Finish {
    /// The application took it: record and body deleted.
    Delivered,
    /// Another attempt at `next_ms`.
    Retry {
        next_ms: u64,
        note: String,
        client_error: bool,
        ambiguous: bool,
    },
    /// Given up on.
    Dead { reason: String, note: String },
}

/// An attempt recorded as started: the record (its `attempts` counting this one), the body,
/// and whether the previous attempt had been interrupted (started, never finished).
pub type Started = (Box<Record>, Bytes, bool);

/// Counts and sizes, for metrics and `hookguard spool`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreStats {
    pub queued: u64,
    pub queued_bytes: u64,
    pub dead: u64,
    pub dead_bytes: u64,
    /// When the oldest queued message arrived (unix ms).
    pub oldest_queued_ms: Option<u64>,
    /// Since the spool was created: messages written (each once), delivered, and attempts
    /// whose fate is unknown (each may have been an extra delivery).
    pub enqueued_total: u64,
    pub delivered_total: u64,
    pub ambiguous_total: u64,
}

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

impl Incoming {
    /// What the message holds in the spool, as `max_bytes` counts it: body and headers.
    pub fn bytes(&self) -> u64 {
        let headers: usize = self
            .envelope
            .headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum();
        (self.body.len() + headers) as u64
    }
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
