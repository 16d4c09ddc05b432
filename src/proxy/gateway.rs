//! The state every connection of the public listener shares: the current config (swapped as
//! a whole on reload), the replay guard, the metrics and the upstream connection pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::upstream::UpstreamClient;
use crate::config::Config;
use crate::metrics::{Metrics, RouteMetricsTable};
use crate::replay::ReplayGuard;

/// One config with everything derived from it; replaced as a whole on reload, so a request
/// runs start to end on the config it started with.
pub struct Snapshot {
    pub config: Config,
    pub(super) metrics: RouteMetricsTable,
}

impl Snapshot {
    fn new(config: Config, metrics: &Metrics) -> Self {
        Snapshot {
            metrics: metrics.for_config(&config),
            config,
        }
    }
}

/// State shared by every connection of the public listener.
pub struct Gateway {
    snapshot: ArcSwap<Snapshot>,
    pub(super) replay: Arc<ReplayGuard>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) upstream: UpstreamClient,
    /// The spool, when a route spools.
    pub(super) spool: Option<Arc<super::spool::Spool>>,
    in_flight: AtomicUsize,
    /// Client connections open: shutdown waits for them too, since a request's answer is
    /// written after its handler is done (counted by `in_flight` only until then).
    connections: AtomicUsize,
    /// Set when shutdown begins: every connection finishes the request it is serving and
    /// closes (idle ones at once).
    draining: tokio::sync::watch::Sender<bool>,
}

impl Gateway {
    /// A gateway for `config`, guarding replays with `replay` (built where the server is
    /// assembled: its store outlives config reloads).
    pub fn new(
        config: Config,
        replay: Arc<ReplayGuard>,
        spool: Option<Arc<super::spool::Spool>>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let snapshot = Snapshot::new(config, &metrics);
        Arc::new(Gateway {
            snapshot: ArcSwap::from_pointee(snapshot),
            replay,
            metrics,
            upstream: UpstreamClient::new(),
            spool,
            in_flight: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            draining: tokio::sync::watch::Sender::new(false),
        })
    }

    /// The config new requests use.
    pub fn config(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Makes `config` the one new requests use; requests in flight keep theirs.
    pub fn replace_config(&self, config: Config) {
        self.snapshot
            .store(Arc::new(Snapshot::new(config, &self.metrics)));
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Client connections open.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Shutdown has begun: each connection answers the request it is serving, then closes.
    pub fn start_draining(&self) {
        self.draining.send_replace(true);
    }

    /// Resolves once shutdown has begun.
    pub(super) async fn drained(&self) {
        let mut draining = self.draining.subscribe();
        // The sender lives as long as the gateway: an error cannot happen while it is borrowed.
        let _ = draining.wait_for(|d| *d).await;
    }
}

/// Counts a client connection as open for as long as it lives.
pub(super) struct Connection(Arc<Gateway>);

impl Connection {
    pub(super) fn open(g: &Arc<Gateway>) -> Self {
        g.connections.fetch_add(1, Ordering::AcqRel);
        Connection(Arc::clone(g))
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts a request as in flight for as long as it lives (handed on to the task that
/// finishes its exchange with the upstream, should the client leave first).
pub(super) struct InFlight(Arc<Gateway>);

impl InFlight {
    pub(super) fn enter(g: &Arc<Gateway>) -> Self {
        g.in_flight.fetch_add(1, Ordering::AcqRel);
        g.metrics.in_flight.inc();
        InFlight(Arc::clone(g))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.in_flight.dec();
    }
}
