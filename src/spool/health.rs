//! Which upstreams are down, and when each is probed: while an upstream does not take
//! messages (no answer, a connection error, a 5xx), only one message at a time is tried
//! against it, once per backoff step (a probe); when a probe is answered, its backlog is made
//! due and delivery resumes. Replicas on the shared store share this state through it (see
//! [`SpoolBackend::down_upstreams`]): one probe per step between them, and an upstream one
//! replica finds down or back is down or back for all. The log says when delivery to an
//! upstream stops and resumes.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{ms, now_ms, Health, HealthChange, SpoolBackend};
use crate::config::SpoolSettings;

/// How often, at most, a replica looks at the down upstreams the replicas share (one round
/// trip to the shared store).
const SHARED_REFRESH: Duration = Duration::from_millis(50);

/// A down upstream's state.
struct Down {
    since: Instant,
    step: u32,
    next_probe: Instant,
    probing: bool,
}

/// What the scheduler may do with a message to an upstream.
pub(super) enum Try {
    /// The upstream is up.
    Now,
    /// The upstream is down and its next probe is due: this message is the probe.
    AsProbe,
    /// The upstream is down; its probe is under way or not due yet.
    Later,
}

/// The down upstreams, as this replica knows them.
pub(super) struct DownUpstreams {
    store: Arc<dyn SpoolBackend>,
    backoff_initial: Duration,
    backoff_max: Duration,
    /// How long a claimed probe holds (`spool.redis_lease`).
    lease: Duration,
    down: Mutex<HashMap<String, Down>>,
    /// When the shared down upstreams were last looked at.
    shared_seen: Mutex<Option<Instant>>,
}

impl DownUpstreams {
    pub(super) fn new(store: Arc<dyn SpoolBackend>, settings: &SpoolSettings) -> DownUpstreams {
        DownUpstreams {
            store,
            backoff_initial: settings.backoff_initial,
            backoff_max: settings.backoff_max,
            lease: settings.redis_lease,
            down: Mutex::new(HashMap::new()),
            shared_seen: Mutex::new(None),
        }
    }

    /// The backoff before attempt `n + 1` (`n` attempts made), with ±20% jitter.
    pub(super) fn backoff(&self, n: u32) -> Duration {
        let base = self.backoff_initial.as_millis() as f64;
        let max = self.backoff_max.as_millis() as f64;
        let d = (base * 2f64.powi(n.saturating_sub(1).min(40) as i32)).min(max);
        let jitter = 0.8 + 0.4 * fraction();
        Duration::from_millis((d * jitter) as u64)
    }

    /// The earliest time a down upstream whose probe is not under way may be probed.
    pub(super) fn earliest_probe(&self) -> Option<Instant> {
        let down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        down.values()
            .filter(|d| !d.probing)
            .map(|d| d.next_probe)
            .min()
    }

    /// The down upstreams none of whose messages may be tried now (their probe is under way
    /// or not due), and the earliest time one of them may be probed.
    pub(super) fn blocked(&self) -> (Vec<String>, Option<Instant>) {
        let down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let mut blocked = Vec::new();
        let mut next_probe: Option<Instant> = None;
        for (upstream, d) in down.iter() {
            if d.probing || now < d.next_probe {
                blocked.push(upstream.clone());
                if !d.probing {
                    next_probe = Some(next_probe.map_or(d.next_probe, |n| n.min(d.next_probe)));
                }
            }
        }
        (blocked, next_probe)
    }

    /// Whether a message to `upstream` may be tried now: always while it is up; while it is
    /// down, one probe per backoff step (between the replicas, where they share it).
    pub(super) async fn may_try(&self, upstream: &str) -> Try {
        {
            let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
            match down.get_mut(upstream) {
                None => return Try::Now,
                Some(d) if d.probing || Instant::now() < d.next_probe => return Try::Later,
                Some(d) => d.probing = true,
            }
        }
        // Held for the lease: longer than the probe can last, and no longer than a replica
        // that dies mid-probe keeps the others from probing.
        let claim = HealthChange::Claim {
            hold_ms: ms(self.lease),
        };
        let shared = self.store.upstream_health(upstream, claim).await;
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        match shared {
            Ok(None) => Try::AsProbe,
            Ok(Some(Health::Claimed(s))) => {
                if let Some(d) = down.get_mut(upstream) {
                    d.step = s.step;
                }
                Try::AsProbe
            }
            // Another replica probes it (or did, and failed): its time stands.
            Ok(Some(Health::Down(s))) => {
                if let Some(d) = down.get_mut(upstream) {
                    d.probing = false;
                    d.step = s.step;
                    d.next_probe = instant_at(s.next_ms);
                }
                Try::Later
            }
            Ok(Some(Health::Up)) => {
                if let Some(d) = down.remove(upstream) {
                    resumes(upstream, &d, "another replica's probe found it back");
                }
                Try::Now
            }
            Err(e) => {
                tracing::warn!(error = %e, upstream, "spool: could not claim a probe");
                if let Some(d) = down.get_mut(upstream) {
                    d.probing = false;
                    d.next_probe = Instant::now() + self.backoff(d.step);
                }
                Try::Later
            }
        }
    }

    /// Merges the down upstreams the replicas share into this replica's (at most once per
    /// [`SHARED_REFRESH`]; nothing to do on the embedded store): one another replica found
    /// down is not tried here either until its probe, one another replica's probe found back
    /// is delivered to again here at once (its backlog was made due by that replica).
    pub(super) async fn refresh(&self) {
        {
            let mut seen = self.shared_seen.lock().unwrap_or_else(|p| p.into_inner());
            if seen.is_some_and(|at| at.elapsed() < SHARED_REFRESH) {
                return;
            }
            *seen = Some(Instant::now());
        }
        let asked = Instant::now();
        let shared = match self.store.down_upstreams().await {
            Ok(Some(shared)) => shared,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "spool: could not read the shared down upstreams");
                return;
            }
        };
        let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
        // Found down here since the read was asked for: the shared record may not have had
        // it yet.
        down.retain(|upstream, d| {
            let keep = d.probing || d.since >= asked || shared.contains_key(upstream);
            if !keep {
                resumes(upstream, d, "another replica's probe found it back");
            }
            keep
        });
        for (upstream, s) in shared {
            match down.entry(upstream) {
                Entry::Occupied(mut o) => {
                    let d = o.get_mut();
                    if !d.probing {
                        d.step = s.step;
                        d.next_probe = instant_at(s.next_ms);
                    }
                }
                Entry::Vacant(v) => {
                    tracing::warn!(
                        upstream = v.key().as_str(),
                        "spool: another replica found the upstream down; delivery stops, one probe per backoff step"
                    );
                    v.insert(Down {
                        since: Instant::now(),
                        step: s.step,
                        next_probe: instant_at(s.next_ms),
                        probing: false,
                    });
                }
            }
        }
    }

    /// The upstream answered (or did not): its state follows (and the replicas' shared
    /// one). Only the first failure and a failed probe move the backoff: attempts that were
    /// already under way when the upstream went down fail too, and are not steps.
    pub(super) async fn seen(&self, upstream: &str, reachable: bool, probe: bool) {
        if reachable {
            let was_down = self
                .down
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(upstream);
            if !was_down {
                return;
            }
            // The backlog to it drains now, not at each message's own backoff. It is made due
            // before the upstream counts as up again: until then the scheduler starts nothing
            // else to it, so the messages the probes were tried on do not go after the ones
            // never tried (the backlog drains in arrival order).
            match self.store.wake(upstream).await {
                Ok(n) if n > 0 => tracing::info!(upstream, messages = n, "spool: backlog due"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "spool: could not wake the backlog"),
            }
            if let Err(e) = self.store.upstream_health(upstream, HealthChange::Up).await {
                tracing::warn!(error = %e, upstream, "spool: could not tell the other replicas the upstream is back");
            }
            let removed = self
                .down
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(upstream);
            if let Some(d) = removed {
                resumes(upstream, &d, "it answered");
            }
            return;
        }
        let change = {
            let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
            match down.get_mut(upstream) {
                Some(d) if probe => {
                    d.step += 1;
                    let wait = self.backoff(d.step);
                    d.next_probe = Instant::now() + wait;
                    d.probing = false;
                    HealthChange::ProbeFailed {
                        next_ms: now_ms().saturating_add(ms(wait)),
                        step: d.step,
                    }
                }
                Some(_) => return,
                None => {
                    tracing::warn!(
                        upstream,
                        "spool: the upstream does not take messages; delivery stops, one probe per backoff step"
                    );
                    let wait = self.backoff(1);
                    down.insert(
                        upstream.to_owned(),
                        Down {
                            since: Instant::now(),
                            step: 1,
                            next_probe: Instant::now() + wait,
                            probing: false,
                        },
                    );
                    HealthChange::FoundDown {
                        next_ms: now_ms().saturating_add(ms(wait)),
                    }
                }
            }
        };
        match self.store.upstream_health(upstream, change).await {
            // Another replica found it down first: its step and time stand.
            Ok(Some(Health::Down(s))) if matches!(change, HealthChange::FoundDown { .. }) => {
                let mut down = self.down.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(d) = down.get_mut(upstream).filter(|d| !d.probing) {
                    d.step = s.step;
                    d.next_probe = instant_at(s.next_ms);
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, upstream, "spool: could not tell the other replicas the upstream is down");
            }
        }
    }

    /// A probe ended without an answer: the next one may go at once (here, and where the
    /// replicas share the upstream's state, at any replica).
    pub(super) fn release_probe(&self, upstream: String) {
        if let Some(d) = self
            .down
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&upstream)
        {
            d.probing = false;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = Arc::clone(&self.store);
            runtime.spawn(async move {
                if let Err(e) = store
                    .upstream_health(&upstream, HealthChange::Release)
                    .await
                {
                    tracing::debug!(error = %e, "spool: could not let go of a probe");
                }
            });
        }
    }
}

/// The instant of unix time `at_ms` (now, when it is past).
fn instant_at(at_ms: u64) -> Instant {
    Instant::now() + Duration::from_millis(at_ms.saturating_sub(now_ms()))
}

/// Logs that delivery to `upstream` resumes, and why.
fn resumes(upstream: &str, d: &Down, why: &str) {
    tracing::info!(
        upstream,
        down_for = ?d.since.elapsed(),
        why,
        "spool: delivery to the upstream resumes"
    );
}

/// A fraction in [0, 1] for jitter (not secret).
fn fraction() -> f64 {
    let token = crate::random::hex_token(8);
    u32::from_str_radix(&token, 16).map_or(0.5, |n| f64::from(n) / f64::from(u32::MAX))
}
