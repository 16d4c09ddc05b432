//! The spool's settings: where it lives (a file, or the replay guard's Redis), how much it
//! may hold, how hard it retries. Present when the config has a `spool:` section or any route
//! says `spool: true`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use serde_yaml::{Mapping, Value};

use super::introspect::struct_fields;
use super::load::Loader;
use super::positions::YPath;
use crate::secret::Secret;

/// A durable queue between the provider and the application (the spool module does the work).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    /// Where the messages are kept.
    pub backend: SpoolStoreKind,
    /// The embedded store's file (created if missing).
    pub path: PathBuf,
    /// Bound on the bytes of queued and dead messages: past it, new messages get 503
    /// `spool_full`.
    pub max_bytes: u64,
    /// Free space the spool's file system must keep: below it, 503 `spool_full`.
    pub min_free_bytes: u64,
    /// The embedded store: bound on the bytes of messages waiting for the writer (a slow
    /// disk); past it, new messages get 503 `spool_unavailable` at once instead of queueing
    /// in memory.
    pub max_pending_bytes: u64,
    /// Longest wait for a message to be written and synced before answering 503
    /// `spool_unavailable`.
    pub commit_timeout: Duration,
    /// How long a message's key is remembered, to answer copies of it (longer than any
    /// provider's retry horizon: Stripe retries for 3 days).
    pub dedup_ttl: Duration,
    /// A message not delivered within this long after it arrived is dead-lettered.
    pub max_age: Duration,
    /// Deliveries in progress at once.
    pub workers: usize,
    /// The first retry's delay; each next one doubles, up to `backoff_max` (with jitter).
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// Answers 4xx other than 408/429 that a message may get before it is dead-lettered.
    pub client_error_attempts: u32,
    /// A response header by which the application refuses a message for good (any value):
    /// dead-lettered at once.
    pub abort_header: http::HeaderName,
    /// When set, the admin listener's `/spool` endpoints require `Authorization: Bearer
    /// <token>` from every client; when not, they answer loopback clients only.
    pub admin_token: Option<Secret>,
    /// `redis`: how long an attempt holds its message. A replica that has not recorded the
    /// attempt's result by then is taken to be dead, and another replica takes the message
    /// over (the attempt counted ambiguous). Longer than any attempt can last.
    pub redis_lease: Duration,
    /// `redis`: start even when Redis keeps no append-only file (or may evict keys), where a
    /// message answered 202 can be lost when Redis restarts.
    pub redis_allow_volatile: bool,
}

/// Where the spool keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpoolStoreKind {
    /// A file of this process (`spool.path`): one replica.
    Embedded,
    /// The Redis of the replay guard (`replay.backend: redis`), shared by several replicas.
    Redis,
}

/// The longest an attempt can take with `timeouts` and a Redis bounded by `redis_timeout`:
/// a connection, a pooled connection's failed exchange and a fresh one (each bounded by
/// `upstream_read`), the response's body (`upstream_read` again), and recording the result.
pub fn longest_attempt(timeouts: &super::Timeouts, redis_timeout: Duration) -> Duration {
    timeouts.upstream_connect + timeouts.upstream_read * 3 + redis_timeout
}

/// The lease when none is configured: the longest attempt and a margin.
const LEASE_MARGIN: Duration = Duration::from_secs(15);

impl Default for SpoolSettings {
    fn default() -> Self {
        SpoolSettings {
            backend: SpoolStoreKind::Embedded,
            path: PathBuf::from("hookguard-spool.redb"),
            max_bytes: 1 << 30,
            min_free_bytes: 256 << 20,
            max_pending_bytes: 64 << 20,
            commit_timeout: Duration::from_secs(5),
            dedup_ttl: Duration::from_secs(7 * 24 * 3600),
            max_age: Duration::from_secs(3 * 24 * 3600),
            workers: 32,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(600),
            client_error_attempts: 3,
            abort_header: http::HeaderName::from_static("x-webhook-abort"),
            admin_token: None,
            redis_lease: longest_attempt(&super::Timeouts::default(), super::DEFAULT_REDIS_TIMEOUT)
                + LEASE_MARGIN,
            redis_allow_volatile: false,
        }
    }
}

impl SpoolSettings {
    /// One line for `check` and the startup log. Never contains the admin token.
    pub fn summary(&self) -> String {
        let place = match self.backend {
            SpoolStoreKind::Embedded => format!(
                "{} (max {} bytes, keep {} free;",
                self.path.display(),
                self.max_bytes,
                self.min_free_bytes
            ),
            SpoolStoreKind::Redis => format!(
                "on the replay guard's Redis (max {} bytes, lease {}{};",
                self.max_bytes,
                humantime::format_duration(self.redis_lease),
                if self.redis_allow_volatile {
                    ", volatile Redis allowed"
                } else {
                    ""
                }
            ),
        };
        format!(
            "spool {place} dedup {}, max age {}, {} workers, backoff {}..{}{})",
            humantime::format_duration(self.dedup_ttl),
            humantime::format_duration(self.max_age),
            self.workers,
            humantime::format_duration(self.backoff_initial),
            humantime::format_duration(self.backoff_max),
            if self.admin_token.is_some() {
                ", admin token set"
            } else {
                ""
            }
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSpool {
    backend: Option<SpoolStoreKind>,
    path: Option<PathBuf>,
    max_bytes: Option<u64>,
    min_free_bytes: Option<u64>,
    max_pending_bytes: Option<u64>,
    #[serde(default, with = "humantime_serde")]
    commit_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    dedup_ttl: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_age: Option<Duration>,
    workers: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    backoff_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    backoff_max: Option<Duration>,
    client_error_attempts: Option<u32>,
    abort_header: Option<String>,
    admin_token: Option<Secret>,
    #[serde(default, with = "humantime_serde")]
    redis_lease: Option<Duration>,
    redis_allow_volatile: Option<bool>,
}

impl Loader<'_> {
    /// The `spool:` section, or `None` without one.
    /// The `spool:` section, or `None` without one. `timeouts` and `replay` for the Redis
    /// backend's checks: it needs the replay guard's Redis, and a lease longer than an attempt.
    pub(super) fn spool(
        &mut self,
        top: &Mapping,
        timeouts: &super::Timeouts,
        replay: &super::ReplaySettings,
    ) -> Option<SpoolSettings> {
        let path = YPath::root().key("spool");
        if let Some(Value::Mapping(m)) = top.get("spool") {
            self.unknown_keys(m, &path, struct_fields::<RawSpool>(), "`spool`");
        }
        top.get("spool")?;
        let raw = self.get::<RawSpool>(top, "spool")?;
        let d = SpoolSettings::default();
        let mut positive = |key: &str, v: Option<Duration>, default: Duration| {
            let v = v.unwrap_or(default);
            if v.is_zero() {
                self.error_at_value(&path.key(key), format!("`spool.{key}` must be more than 0"));
            }
            v
        };
        let commit_timeout = positive("commit_timeout", raw.commit_timeout, d.commit_timeout);
        let dedup_ttl = positive("dedup_ttl", raw.dedup_ttl, d.dedup_ttl);
        let max_age = positive("max_age", raw.max_age, d.max_age);
        let backoff_initial = positive("backoff_initial", raw.backoff_initial, d.backoff_initial);
        let backoff_max = positive("backoff_max", raw.backoff_max, d.backoff_max);
        if backoff_max < backoff_initial {
            self.error_at_value(
                &path.key("backoff_max"),
                "`spool.backoff_max` must be at least `spool.backoff_initial`".into(),
            );
        }
        let workers = raw.workers.unwrap_or(d.workers);
        if !(1..=1024).contains(&workers) {
            self.error_at_value(
                &path.key("workers"),
                "`spool.workers` must be between 1 and 1024".into(),
            );
        }
        let max_bytes = raw.max_bytes.unwrap_or(d.max_bytes);
        let max_pending_bytes = raw.max_pending_bytes.unwrap_or(d.max_pending_bytes);
        for (key, v) in [
            ("max_bytes", max_bytes),
            ("max_pending_bytes", max_pending_bytes),
        ] {
            if v == 0 {
                self.error_at_value(&path.key(key), format!("`spool.{key}` must be more than 0"));
            }
        }
        // A message's keys must outlive the message: a key forgotten while its message is
        // still queued would let a copy be written as a second message.
        if dedup_ttl < max_age {
            self.error_at_value(
                &path.key(if raw.dedup_ttl.is_some() { "dedup_ttl" } else { "max_age" }),
                format!(
                    "`spool.dedup_ttl` ({}) must be at least `spool.max_age` ({}): a message's keys must be remembered as long as the message may still be delivered",
                    humantime::format_duration(dedup_ttl),
                    humantime::format_duration(max_age)
                ),
            );
        }
        let abort_header = match raw.abort_header {
            None => d.abort_header,
            Some(h) => match http::HeaderName::from_bytes(h.trim().as_bytes()) {
                Ok(name) => name,
                Err(_) => {
                    let shown = self.shown(&path.key("abort_header"), &h);
                    self.error_at_value(
                        &path.key("abort_header"),
                        format!("`spool.abort_header`: {shown} is not a header name"),
                    );
                    d.abort_header
                }
            },
        };
        let backend = raw.backend.unwrap_or(d.backend);
        let redis_timeout = match &replay.store {
            super::ReplayStore::Redis(r) => r.timeout,
            super::ReplayStore::Memory => super::DEFAULT_REDIS_TIMEOUT,
        };
        let longest = longest_attempt(timeouts, redis_timeout);
        let redis_lease = raw.redis_lease.unwrap_or(longest + LEASE_MARGIN);
        match backend {
            SpoolStoreKind::Embedded => {
                for (key, given) in [
                    ("redis_lease", raw.redis_lease.is_some()),
                    ("redis_allow_volatile", raw.redis_allow_volatile.is_some()),
                ] {
                    if given {
                        self.error_at_key(
                            &path.key(key),
                            format!("`spool.{key}` applies only with `spool.backend: redis`"),
                        );
                    }
                }
            }
            SpoolStoreKind::Redis => {
                for (key, given) in [
                    ("path", raw.path.is_some()),
                    ("min_free_bytes", raw.min_free_bytes.is_some()),
                    ("max_pending_bytes", raw.max_pending_bytes.is_some()),
                ] {
                    if given {
                        self.error_at_key(
                            &path.key(key),
                            format!("`spool.{key}` applies only with `spool.backend: embedded` (with `redis`, the messages are in Redis)"),
                        );
                    }
                }
                // The replay section as written, not as loaded: a `replay.backend: redis` whose
                // URL is wrong has its own error already.
                let replay_redis = top
                    .get("replay")
                    .and_then(|r| r.get("backend"))
                    .and_then(Value::as_str)
                    == Some("redis");
                if !replay_redis {
                    self.error_at_value(
                        &path.key("backend"),
                        "`spool.backend: redis` needs `replay.backend: redis`: the spool runs on the replay guard's Redis (`replay.redis_url`, its prefix, timeout and TLS)".into(),
                    );
                }
                if redis_lease <= longest {
                    self.error_at_value(
                        &path.key("redis_lease"),
                        format!(
                            "`spool.redis_lease` must be longer than an attempt can last ({}: `timeouts.upstream_connect` + 3 × `timeouts.upstream_read` + `replay.redis_timeout`), or a replica still delivering would have its message taken over",
                            humantime::format_duration(longest)
                        ),
                    );
                }
            }
        }
        Some(SpoolSettings {
            backend,
            redis_lease,
            redis_allow_volatile: raw.redis_allow_volatile.unwrap_or(false),
            path: raw.path.unwrap_or(d.path),
            max_bytes,
            min_free_bytes: raw.min_free_bytes.unwrap_or(d.min_free_bytes),
            max_pending_bytes,
            commit_timeout,
            dedup_ttl,
            max_age,
            workers,
            backoff_initial,
            backoff_max,
            client_error_attempts: raw.client_error_attempts.unwrap_or(d.client_error_attempts),
            abort_header,
            admin_token: raw.admin_token.filter(|t| !t.is_empty()),
        })
    }
}
