//! Prometheus metrics, named as the contract says, in a registry of their own.
//!
//! Per-route label children are resolved once per config (not per request), so counting a
//! request is an atomic add, not a label lookup.

use std::collections::HashMap;
use std::sync::Arc;

use std::time::Duration;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::Config;
use crate::outcome::{Outcome, Rejection};

pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub verify_duration: Histogram,
    pub upstream_duration: HistogramVec,
    pub replay_entries: IntGauge,
    pub config_reloads: IntCounterVec,
    pub in_flight: IntGauge,
    pub body_bytes: IntCounterVec,
    pub replay_store_errors: IntCounterVec,
    pub spool: Arc<SpoolMetrics>,
}

/// The spool's metrics (all present, at zero, when no route spools).
pub struct SpoolMetrics {
    /// `hookguard_spool_messages{state}` (queued, dead), set at each scrape.
    pub messages: IntGaugeVec,
    /// `hookguard_spool_bytes{state}`.
    pub bytes: IntGaugeVec,
    /// `hookguard_spool_oldest_age_seconds`: how long the oldest queued message has waited.
    pub oldest_age: Gauge,
    /// `hookguard_spool_enqueue_total{result}` (queued, duplicate, full, unavailable).
    pub enqueued: IntCounterVec,
    /// `hookguard_spool_delivery_attempts_total{result}` (delivered, retry, dead).
    pub attempts: IntCounterVec,
    /// `hookguard_spool_dead_letters_total{reason}` (client_error, aborted, expired).
    pub dead: IntCounterVec,
    /// `hookguard_spool_ambiguous_deliveries_total`: attempts whose fate is unknown (the
    /// application timed out, or hookguard stopped mid-delivery): each may be a duplicate.
    pub ambiguous: IntCounter,
    /// `hookguard_spool_commit_seconds`: one commit (write and fsync) of the store.
    pub commit: Histogram,
    /// `hookguard_spool_delivery_lag_seconds`: from a message's arrival to its delivery.
    pub lag: Histogram,
}

impl SpoolMetrics {
    fn new(registry: &Registry) -> Arc<Self> {
        let m = SpoolMetrics {
            messages: IntGaugeVec::new(
                Opts::new("hookguard_spool_messages", "Messages in the spool, by state."),
                &["state"],
            )
            .expect("valid metric"),
            bytes: IntGaugeVec::new(
                Opts::new("hookguard_spool_bytes", "Bytes held by the spool's messages, by state."),
                &["state"],
            )
            .expect("valid metric"),
            oldest_age: Gauge::new(
                "hookguard_spool_oldest_age_seconds",
                "Age of the oldest queued message (0 when none).",
            )
            .expect("valid metric"),
            enqueued: IntCounterVec::new(
                Opts::new(
                    "hookguard_spool_enqueue_total",
                    "Messages offered to the spool, by result (queued, duplicate, full, unavailable).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            attempts: IntCounterVec::new(
                Opts::new(
                    "hookguard_spool_delivery_attempts_total",
                    "Delivery attempts, by result (delivered, retry, dead).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            dead: IntCounterVec::new(
                Opts::new(
                    "hookguard_spool_dead_letters_total",
                    "Messages dead-lettered, by reason (client_error, aborted, expired).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            ambiguous: IntCounter::new(
                "hookguard_spool_ambiguous_deliveries_total",
                "Delivery attempts whose fate is unknown (timed out, or interrupted by a stop): each may have reached the application.",
            )
            .expect("valid metric"),
            commit: Histogram::with_opts(
                HistogramOpts::new(
                    "hookguard_spool_commit_seconds",
                    "Duration of one spool commit (write and fsync), shared by every message in it.",
                )
                .buckets(vec![1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.5, 1.0]),
            )
            .expect("valid metric"),
            lag: Histogram::with_opts(
                HistogramOpts::new(
                    "hookguard_spool_delivery_lag_seconds",
                    "From a spooled message's arrival to its delivery.",
                )
                .buckets(vec![
                    1e-3, 1e-2, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 1800.0, 3600.0, 21600.0,
                    86400.0,
                ]),
            )
            .expect("valid metric"),
        };
        for state in ["queued", "dead"] {
            m.messages.with_label_values(&[state]);
            m.bytes.with_label_values(&[state]);
        }
        for result in ["queued", "duplicate", "full", "unavailable"] {
            m.enqueued.with_label_values(&[result]);
        }
        for result in ["delivered", "retry", "dead"] {
            m.attempts.with_label_values(&[result]);
        }
        for reason in ["client_error", "aborted", "expired"] {
            m.dead.with_label_values(&[reason]);
        }
        for c in [
            Box::new(m.messages.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(m.bytes.clone()),
            Box::new(m.oldest_age.clone()),
            Box::new(m.enqueued.clone()),
            Box::new(m.attempts.clone()),
            Box::new(m.dead.clone()),
            Box::new(m.ambiguous.clone()),
            Box::new(m.commit.clone()),
            Box::new(m.lag.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        Arc::new(m)
    }

    /// The store's counts and sizes, at a scrape.
    pub fn set_stats(&self, s: &crate::spool::StoreStats) {
        self.messages
            .with_label_values(&["queued"])
            .set(s.queued as i64);
        self.messages
            .with_label_values(&["dead"])
            .set(s.dead as i64);
        self.bytes
            .with_label_values(&["queued"])
            .set(s.queued_bytes as i64);
        self.bytes
            .with_label_values(&["dead"])
            .set(s.dead_bytes as i64);
        let age = s
            .oldest_queued_ms
            .map_or(0, |t| crate::spool::now_ms().saturating_sub(t));
        self.oldest_age.set(age as f64 / 1000.0);
    }
}

impl crate::spool::delivery::Observer for SpoolMetrics {
    fn attempt(&self, result: &'static str) {
        self.attempts.with_label_values(&[result]).inc();
    }
    fn dead(&self, reason: &str) {
        self.dead.with_label_values(&[reason]).inc();
    }
    fn delivered(&self, lag: Duration) {
        self.lag.observe(lag.as_secs_f64());
    }
    fn ambiguous(&self) {
        self.ambiguous.inc();
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "hookguard_requests_total",
                "Requests by route, provider and outcome (forwarded, or the error code returned).",
            ),
            &["route", "provider", "outcome"],
        )
        .expect("valid metric");
        let verify_duration = Histogram::with_opts(
            HistogramOpts::new(
                "hookguard_verify_duration_seconds",
                "Time spent verifying a request's signature, timestamp and body material.",
            )
            .buckets(vec![
                1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2,
            ]),
        )
        .expect("valid metric");
        let upstream_duration = HistogramVec::new(
            HistogramOpts::new(
                "hookguard_upstream_duration_seconds",
                "Time from sending a request upstream to receiving its response header.",
            )
            .buckets(vec![
                5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                30.0,
            ]),
            &["route"],
        )
        .expect("valid metric");
        let replay_entries = IntGauge::new(
            "hookguard_replay_entries",
            "Message keys currently remembered by the replay guard (in flight and delivered).",
        )
        .expect("valid metric");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "hookguard_config_reloads_total",
                "Config reloads by result (ok, error).",
            ),
            &["result"],
        )
        .expect("valid metric");
        let in_flight = IntGauge::new(
            "hookguard_requests_in_flight",
            "Requests being handled right now.",
        )
        .expect("valid metric");
        let body_bytes = IntCounterVec::new(
            Opts::new(
                "hookguard_request_body_bytes_total",
                "Request body bytes read from clients, by route.",
            ),
            &["route"],
        )
        .expect("valid metric");
        let replay_store_errors = Self::store_error_counter();
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(verify_duration.clone()),
            Box::new(upstream_duration.clone()),
            Box::new(replay_entries.clone()),
            Box::new(config_reloads.clone()),
            Box::new(in_flight.clone()),
            Box::new(body_bytes.clone()),
            Box::new(replay_store_errors.clone()),
        ] {
            registry.register(c).expect("metric names are unique");
        }
        for result in ["ok", "error"] {
            config_reloads.with_label_values(&[result]);
        }
        let spool = SpoolMetrics::new(&registry);
        Arc::new(Metrics {
            spool,
            registry,
            requests,
            verify_duration,
            upstream_duration,
            replay_entries,
            config_reloads,
            in_flight,
            body_bytes,
            replay_store_errors,
        })
    }

    /// A sink for the replay guard's store errors: `hookguard_replay_store_errors_total{op}`.
    pub fn replay_error_sink(&self) -> crate::replay::ErrorSink {
        let counter = self.replay_store_errors.clone();
        Arc::new(move |op: crate::replay::StoreOp| counter.with_label_values(&[op.label()]).inc())
    }

    /// `hookguard_replay_store_errors_total{op}` (not registered anywhere yet), with its
    /// three series present from the start.
    pub fn store_error_counter() -> IntCounterVec {
        let c = IntCounterVec::new(
            Opts::new(
                "hookguard_replay_store_errors_total",
                "Replay store (Redis) calls that failed or timed out, by operation (reserve, commit, release).",
            ),
            &["op"],
        )
        .expect("valid metric");
        for op in ["reserve", "commit", "release"] {
            c.with_label_values(&[op]);
        }
        c
    }

    /// Label children for every route of `config` (and for requests that match no route).
    pub fn for_config(&self, config: &Config) -> RouteMetricsTable {
        let no_route = self
            .requests
            .with_label_values(&["", "", Rejection::NoRoute.code()]);
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let outcome = |o: Outcome| {
                    self.requests
                        .with_label_values(&[&r.name, r.provider_name, o.label()])
                };
                let m = RouteMetrics {
                    forwarded: outcome(Outcome::Forwarded),
                    answered: outcome(Outcome::Answered),
                    queued: outcome(Outcome::Queued),
                    aborted: outcome(Outcome::Aborted),
                    rejected: Rejection::ALL
                        .iter()
                        .filter(|r| **r != Rejection::NoRoute)
                        .map(|rej| (*rej, outcome(Outcome::Rejected(*rej))))
                        .collect(),
                    upstream: self.upstream_duration.with_label_values(&[&r.name]),
                    body_bytes: self.body_bytes.with_label_values(&[&r.name]),
                };
                (r.name.clone(), Arc::new(m))
            })
            .collect();
        RouteMetricsTable { routes, no_route }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

pub struct RouteMetrics {
    pub forwarded: IntCounter,
    answered: IntCounter,
    queued: IntCounter,
    aborted: IntCounter,
    rejected: Vec<(Rejection, IntCounter)>,
    pub upstream: Histogram,
    pub body_bytes: IntCounter,
}

impl RouteMetrics {
    pub fn count(&self, outcome: Outcome) {
        match outcome {
            Outcome::Forwarded => self.forwarded.inc(),
            Outcome::Answered => self.answered.inc(),
            Outcome::Queued => self.queued.inc(),
            Outcome::Aborted => self.aborted.inc(),
            // Counted as `replayed`, like a copy refused while the first is in flight.
            Outcome::Duplicate => self.count(Outcome::Rejected(Rejection::Replayed)),
            Outcome::Rejected(r) => {
                if let Some((_, c)) = self.rejected.iter().find(|(k, _)| *k == r) {
                    c.inc();
                }
            }
        }
    }
}

pub struct RouteMetricsTable {
    routes: HashMap<String, Arc<RouteMetrics>>,
    pub no_route: IntCounter,
}

impl RouteMetricsTable {
    pub fn route(&self, name: &str) -> Option<&Arc<RouteMetrics>> {
        self.routes.get(name)
    }
}
