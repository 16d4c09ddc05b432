//! Delivering spooled messages: a scheduler that hands due messages to a bounded number of
//! workers, oldest due first (with a share for the newest, so a long backlog does not starve
//! what just arrived), and the rules for what an answer means.
//!
//! - 2xx: delivered (the record and body are deleted; the keys stay for `dedup_ttl`);
//! - 408, 429, 5xx, no answer, a connection error: retried after a backoff that doubles from
//!   `backoff_initial` to `backoff_max`, with jitter, or after `Retry-After` if longer;
//! - another 4xx: retried `client_error_attempts` times, then dead-lettered; the
//!   application's `abort_header` dead-letters at once; a message older than `max_age` too.
//!
//! While an upstream is down, only its probes are tried, once per backoff step
//! ([`super::health`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};

use super::health::{DownUpstreams, Try};
use super::{ms, now_ms, Finish, Record, SpoolBackend};
use crate::config::SpoolSettings;

/// One attempt to give a message to the application.
pub struct Attempt<'a> {
    pub record: &'a Record,
    pub body: Bytes,
}

/// What the application answered (or did not).
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The response's status; `None`: no answer (connection refused or broken, timed out).
    pub status: Option<u16>,
    /// The answer did not come in time: the application may have the message all the same.
    pub timed_out: bool,
    /// `Retry-After`, when the answer had one.
    pub retry_after: Option<Duration>,
    /// The application's abort header was in the answer.
    pub aborted: bool,
    /// A short description, for the record.
    pub note: String,
}

/// Sends one attempt (the proxy implements it with its upstream connections).
#[async_trait]
pub trait Deliver: Send + Sync + 'static {
    async fn deliver(&self, attempt: Attempt<'_>) -> Outcome;
}

/// What the spool reports, for the metrics.
pub trait Observer: Send + Sync + 'static {
    /// An attempt ended: `delivered`, `retry` or `dead`.
    fn attempt(&self, result: &'static str);
    /// A message was dead-lettered, for `reason`.
    fn dead(&self, reason: &str);
    /// A message was delivered `lag` after it first arrived.
    fn delivered(&self, lag: Duration);
    /// An attempt whose fate is unknown (interrupted, or unanswered in time).
    fn ambiguous(&self);
}

/// A running attempt's hold on the scheduler: its message in flight, its worker, and (for a
/// probe) its upstream's probe. Let go of whatever way the attempt ends, an early return or a
/// panic included, so that neither the message nor the upstream stays blocked. The worker is
/// let go of earlier, once the application has answered: recording the result is the store's
/// work, not a request to the application, and waiting for that commit halved the rate at
/// which the workers delivered (each attempt waited for two commits, the start's and the
/// result's). The message stays in flight until its result is recorded, so it is not started
/// again meanwhile. Each worker has at most a few results waiting: the next attempt it takes
/// waits for a commit of its own (its start).
struct Slot {
    delivery: Arc<Delivery>,
    seq: u64,
    /// The upstream whose probe this attempt is.
    probe: Option<String>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Slot {
    /// The worker may take another message.
    fn release_worker(&mut self) {
        if self.permit.take().is_some() {
            self.delivery.wake.notify_one();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let d = &self.delivery;
        d.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.seq);
        if let Some(upstream) = self.probe.take() {
            // A probe that ended without an answer recorded (its message was gone, or could
            // not be started): the next one may go at once. A probe whose answer was recorded
            // has no upstream here any more (its step is set).
            d.down.release_probe(upstream);
        }
        // The worker is free before the scheduler is woken to use it.
        drop(self.permit.take());
        d.wake.notify_one();
    }
}

/// The delivery engine of one spool.
pub struct Delivery {
    store: Arc<dyn SpoolBackend>,
    settings: SpoolSettings,
    deliver: Arc<dyn Deliver>,
    observer: Arc<dyn Observer>,
    /// Woken when a message is enqueued.
    pub wake: Notify,
    workers: Arc<Semaphore>,
    in_flight: Mutex<HashSet<u64>>,
    down: DownUpstreams,
}

impl Delivery {
    pub fn new(
        store: Arc<dyn SpoolBackend>,
        settings: SpoolSettings,
        deliver: Arc<dyn Deliver>,
        observer: Arc<dyn Observer>,
    ) -> Arc<Self> {
        Arc::new(Delivery {
            down: DownUpstreams::new(Arc::clone(&store), &settings),
            workers: Arc::new(Semaphore::new(settings.workers)),
            store,
            settings,
            deliver,
            observer,
            wake: Notify::new(),
            in_flight: Mutex::new(HashSet::new()),
        })
    }

    /// Runs the scheduler until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut last_sweep = Instant::now();
        loop {
            let blocked_until = self.dispatch().await;
            if last_sweep.elapsed() > Duration::from_secs(60) {
                last_sweep = Instant::now();
                if let Err(e) = self.store.sweep().await {
                    tracing::warn!(error = %e, "spool: sweeping expired keys failed");
                }
            }
            // Until something is enqueued, a delivery ends, the next message is due, or a
            // down upstream's next probe (when every due message found waits for one: then
            // that probe).
            let wait = match blocked_until {
                Some(probe) => probe.saturating_duration_since(Instant::now()),
                None => {
                    let (blocked, next_probe) = self.down.blocked();
                    let due_in = match self.store.next_due(&blocked).await {
                        Ok(Some(at)) => Some(Duration::from_millis(at.saturating_sub(now_ms()))),
                        Ok(None) => None,
                        Err(_) => Some(Duration::from_secs(1)),
                    };
                    let probe_in = next_probe.map(|p| p.saturating_duration_since(Instant::now()));
                    due_in
                        .into_iter()
                        .chain(probe_in)
                        .min()
                        .unwrap_or(Duration::from_secs(1))
                }
            };
            let wait = wait.clamp(Duration::from_millis(5), Duration::from_secs(1));
            let _ = tokio::time::timeout(wait, self.wake.notified()).await;
        }
    }

    /// Starts a delivery for each due message a worker is free for. When due messages were
    /// found and none could start because their upstreams are down, returns the earliest
    /// next probe (the scheduler sleeps until then instead of scanning again).
    async fn dispatch(self: &Arc<Self>) -> Option<Instant> {
        let batch = self.settings.workers * 4;
        self.down.refresh().await;
        // Every worker busy: nothing could start (woken when one is free). Asking the store
        // for the due messages anyway cost the scheduler a scan per delivery.
        if self.workers.available_permits() == 0 {
            return None;
        }
        // A down upstream's messages are not asked for until its probe is due: however many
        // there are, they do not stand in front of the other upstreams' (embedded store).
        let (blocked, _) = self.down.blocked();
        let Ok(mut due) = self.store.due(now_ms(), batch, false, &blocked).await else {
            return None;
        };
        let mut started = false;
        let mut waiting_for_probe = false;
        // The newest due get a share, so that a long backlog does not starve them: one in
        // four places, interleaved, since the loop below stops at the first busy worker.
        if due.len() == batch {
            if let Ok(newest) = self.store.due(now_ms(), batch / 4, true, &blocked).await {
                let in_due: HashSet<u64> = due.iter().map(|&(_, seq)| seq).collect();
                let newest: Vec<_> = newest
                    .into_iter()
                    .filter(|(_, seq)| !in_due.contains(seq))
                    .collect();
                due.truncate(batch - newest.len());
                let oldest = std::mem::take(&mut due);
                let mut newest = newest.into_iter();
                for (i, entry) in oldest.into_iter().enumerate() {
                    due.push(entry);
                    if i % 3 == 2 {
                        due.extend(newest.next());
                    }
                }
                due.extend(newest);
            }
        }
        for (_, seq) in due {
            if self
                .in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&seq)
            {
                continue;
            }
            let Ok(permit) = Arc::clone(&self.workers).try_acquire_owned() else {
                return None; // every worker busy: woken when one ends
            };
            let Ok(Some(upstream)) = self.store.upstream_of(seq).await else {
                continue;
            };
            let probe = match self.down.may_try(&upstream).await {
                Try::Now => false,
                Try::AsProbe => true,
                Try::Later => {
                    waiting_for_probe = true;
                    continue;
                }
            };
            started = true;
            self.in_flight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(seq);
            let slot = Slot {
                delivery: Arc::clone(self),
                seq,
                probe: probe.then_some(upstream),
                permit: Some(permit),
            };
            tokio::spawn(async move {
                let mut slot = slot;
                let delivery = Arc::clone(&slot.delivery);
                delivery.attempt(&mut slot).await;
                drop(slot);
            });
        }
        if started || !waiting_for_probe {
            return None;
        }
        self.down
            .earliest_probe()
            .or_else(|| Some(Instant::now() + Duration::from_secs(1)))
    }

    /// One attempt of the slot's message (the probe of its down upstream when the slot is
    /// one), recorded before it is made and after it ends.
    async fn attempt(&self, slot: &mut Slot) {
        let (seq, probe) = (slot.seq, slot.probe.is_some());
        let (record, body, interrupted) = match self.store.start(seq).await {
            Ok(Some(x)) => x,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, seq, "spool: could not record an attempt");
                return;
            }
        };
        let upstream = record.envelope.upstream.clone();
        if interrupted {
            // The previous attempt started and never ended (hookguard stopped mid-delivery):
            // the application may have the message already.
            self.observer.ambiguous();
        }
        let age = Duration::from_millis(now_ms().saturating_sub(record.envelope.received_ms));
        if age > self.settings.max_age {
            self.finish_dead(&record, "expired", format!("older than max_age ({age:?})"))
                .await;
            return;
        }
        let outcome = self
            .deliver
            .deliver(Attempt {
                record: &record,
                body,
            })
            .await;
        slot.release_worker();
        let status = outcome.status;
        let finish = match status {
            Some(s) if (200..300).contains(&s) => Finish::Delivered,
            _ if outcome.aborted => Finish::Dead {
                reason: "aborted".into(),
                note: outcome.note.clone(),
            },
            Some(s) if s != 408 && s != 429 && (400..500).contains(&s) => {
                if record.client_errors + 1 >= self.settings.client_error_attempts {
                    Finish::Dead {
                        reason: "client_error".into(),
                        note: outcome.note.clone(),
                    }
                } else {
                    self.retry(&record, &outcome, true)
                }
            }
            _ => self.retry(&record, &outcome, false),
        };
        if outcome.timed_out {
            self.observer.ambiguous();
        }
        let (result, dead) = match &finish {
            Finish::Delivered => ("delivered", None),
            Finish::Retry { .. } => ("retry", None),
            Finish::Dead { reason, .. } => ("dead", Some(reason.clone())),
        };
        if let Err(e) = self.store.finish(seq, record.attempts, finish).await {
            // Counted when the retry's result is recorded, not twice.
            tracing::warn!(error = %e, seq, "spool: could not record an attempt's result; the message will be tried again");
            self.down
                .seen(&upstream, matches!(status, Some(s) if s < 500), probe)
                .await;
            slot.probe = None;
            return;
        }
        self.observer.attempt(result);
        if let Some(reason) = dead {
            self.observer.dead(&reason);
            tracing::warn!(
                seq,
                route = record.envelope.route.as_str(),
                reason,
                "spool: message dead-lettered"
            );
        }
        if result == "delivered" {
            self.observer.delivered(Duration::from_millis(
                now_ms().saturating_sub(record.envelope.received_ms),
            ));
        }
        // The upstream is down when it does not answer, or answers 5xx.
        let reachable = matches!(status, Some(s) if s < 500);
        self.down.seen(&upstream, reachable, probe).await;
        // The probe's answer is recorded: nothing to let go of.
        slot.probe = None;
    }

    fn retry(&self, record: &Record, outcome: &Outcome, client_error: bool) -> Finish {
        let mut wait = self.down.backoff(record.attempts);
        if let Some(after) = outcome.retry_after {
            wait = wait.max(after.min(self.settings.max_age));
        }
        Finish::Retry {
            next_ms: now_ms().saturating_add(ms(wait)),
            note: outcome.note.clone(),
            client_error,
            ambiguous: outcome.timed_out,
        }
    }

    async fn finish_dead(&self, record: &Record, reason: &str, note: String) {
        let finish = Finish::Dead {
            reason: reason.into(),
            note,
        };
        if let Err(e) = self.store.finish(record.seq, record.attempts, finish).await {
            tracing::warn!(error = %e, "spool: could not dead-letter a message");
            return;
        }
        self.observer.attempt("dead");
        self.observer.dead(reason);
        tracing::warn!(
            seq = record.seq,
            route = record.envelope.route.as_str(),
            reason,
            "spool: message dead-lettered"
        );
    }
}
