//! Prometheus metrics, named as the contract says, in a registry of their own.
//!
//! Per-route label children are resolved once per config (not per request), so counting a
//! request is an atomic add, not a label lookup.

use std::collections::HashMap;
use std::sync::Arc;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
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
        Arc::new(Metrics {
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
