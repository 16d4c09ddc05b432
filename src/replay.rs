//! The replay guard: each verified message is forwarded at most once per successful delivery.
//!
//! A key is *reserved* while its request is in flight (a concurrent duplicate is refused),
//! *committed* when the upstream answers 2xx (later copies are refused for the key's TTL), and
//! *released* on anything else, so the provider's retry of a failed delivery goes through.
//! A [`Reservation`] releases itself when dropped uncommitted, so no early return, error or
//! cancelled request can leave a key stuck.
//!
//! Keys are stored as 128-bit digests of (route, key): fixed size, whatever the provider's
//! key looks like. Delivered keys live in a compact set of their own ([`delivered`]), bounded
//! by `replay.max_entries`, each until its own expiry; keys in flight live in a moka cache
//! (LRU, so a full cache never refuses to store a new key, which would silently disable
//! replay protection for it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::ops::compute::{CompResult, Op};
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use prometheus::IntCounterVec;
use sha2::{Digest, Sha256};

use crate::config::{OnStoreError, ReplaySettings, ReplayStore};
use crate::outcome::Rejection;
use delivered::DeliveredSet;
use redis_store::RedisStore;

mod delivered;
mod redis_store;

pub(crate) type Key = u128;

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The message was already delivered, or is being delivered right now.
    Replayed,
    /// The shared store could not be asked (`on_store_error: reject`).
    StoreUnavailable,
}

impl Refused {
    pub fn rejection(self) -> Rejection {
        match self {
            Refused::Replayed => Rejection::Replayed,
            Refused::StoreUnavailable => Rejection::ReplayStoreUnavailable,
        }
    }
}

pub struct ReplayGuard {
    /// Keys delivered through this process. Memory backend: the record; Redis backend: a fast
    /// path in front of the store.
    delivered: DeliveredSet,
    /// Memory backend: keys in flight, with the nonce of the request holding each. Few and
    /// short-lived; moka's atomic entry API decides which of two concurrent copies holds it.
    in_flight: Cache<Key, u64>,
    /// How long an in-flight reservation may live if its holder vanished without releasing
    /// it (it cannot, short of a bug or, with Redis, a lost connection: this is the safety net).
    in_flight_ttl: Duration,
    next_nonce: AtomicU64,
    shared: Option<RedisStore>,
    on_store_error: OnStoreError,
    /// `hookguard_replay_store_errors_total{op}`.
    store_errors: IntCounterVec,
}

impl ReplayGuard {
    /// A memory-only guard.
    pub fn new(max_entries: u64, in_flight_ttl: Duration) -> Self {
        Self::build(
            max_entries,
            in_flight_ttl,
            None,
            OnStoreError::Reject,
            crate::metrics::Metrics::store_error_counter(),
        )
    }

    /// The guard `settings` describe; Redis errors are counted in `store_errors` (label `op`).
    /// Fails only if the Redis client's thread cannot be started.
    pub fn with_settings(
        settings: &ReplaySettings,
        in_flight_ttl: Duration,
        store_errors: IntCounterVec,
    ) -> std::io::Result<Self> {
        let shared = match &settings.store {
            ReplayStore::Memory => None,
            ReplayStore::Redis(redis) => Some(RedisStore::new(redis)?),
        };
        Ok(Self::build(
            settings.max_entries,
            in_flight_ttl,
            shared,
            settings.on_store_error,
            store_errors,
        ))
    }

    fn build(
        max_entries: u64,
        in_flight_ttl: Duration,
        shared: Option<RedisStore>,
        on_store_error: OnStoreError,
        store_errors: IntCounterVec,
    ) -> Self {
        ReplayGuard {
            delivered: DeliveredSet::new(max_entries),
            in_flight: Cache::builder()
                .max_capacity(max_entries)
                .eviction_policy(EvictionPolicy::lru())
                .time_to_live(in_flight_ttl)
                .build(),
            in_flight_ttl,
            next_nonce: AtomicU64::new(1),
            shared,
            on_store_error,
            store_errors,
        }
    }

    /// Whether the shared store (if any) has a connection; `None` for the memory backend.
    pub fn store_connected(&self) -> Option<bool> {
        self.shared.as_ref().map(RedisStore::is_connected)
    }

    /// Reserves `key` of `route` for one delivery attempt.
    pub async fn reserve(self: &Arc<Self>, route: &str, key: &str) -> Result<Reservation, Refused> {
        let digest = digest(route, key);
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        let reservation = Reservation {
            guard: Arc::clone(self),
            key: digest,
            nonce,
            settled: false,
        };
        // Delivered through this process: known without a round trip.
        if self.delivered.contains(digest) {
            reservation.disarm();
            return Err(Refused::Replayed);
        }
        let Some(store) = &self.shared else {
            // Insert-if-absent through `and_compute_with`, which moka runs one at a time per
            // key. `entry().or_insert()` is not enough: two concurrent callers can both be told
            // they inserted (about 1 race in 100 on moka 0.12.16, measured), which forwarded
            // both copies of a message.
            let taken = self
                .in_flight
                .entry(digest)
                .and_compute_with(|current| match current {
                    None => Op::Put(nonce),
                    Some(_) => Op::Nop,
                });
            if !matches!(taken, CompResult::Inserted(_)) {
                reservation.disarm();
                return Err(Refused::Replayed);
            }
            // A copy committed between the check above and this reservation (its commit
            // records the delivery before it lets go of its own reservation): refuse.
            if self.delivered.contains(digest) {
                drop(reservation); // releases ours
                return Err(Refused::Replayed);
            }
            return Ok(reservation);
        };
        match store.reserve(digest, nonce, self.in_flight_ttl).await {
            Ok(true) => Ok(reservation),
            Ok(false) => {
                reservation.disarm();
                Err(Refused::Replayed)
            }
            Err(e) => {
                self.store_errors.with_label_values(&["reserve"]).inc();
                match self.on_store_error {
                    OnStoreError::Reject => {
                        tracing::warn!(error = %e, "replay store unavailable; answering 503 so the provider retries later");
                        // The SET may have been applied although its answer was lost: free
                        // the key, if it is ours, as soon as the store answers again.
                        reservation.disarm();
                        if e.may_have_applied() {
                            store.spawn_release(digest, store.nonce(nonce), self.in_flight_ttl);
                        }
                        Err(Refused::StoreUnavailable)
                    }
                    OnStoreError::Allow => {
                        tracing::warn!(error = %e, "replay store unavailable; forwarding WITHOUT replay protection (on_store_error: allow)");
                        // Kept as a reservation all the same: a 2xx still records the
                        // delivery (here, and in the store if it answers by then); a failure
                        // frees the key if the lost SET did take it.
                        Ok(reservation)
                    }
                }
            }
        }
    }

    /// Approximate number of keys remembered in this process: with the memory backend, every
    /// key in flight and delivered; with Redis, the delivered keys of the local fast path.
    pub fn len(&self) -> u64 {
        self.in_flight.run_pending_tasks();
        self.in_flight.entry_count() + self.delivered.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory backend: records the delivery (if `delivered_ttl`), then lets go of the
    /// reservation if it is still ours (its safety TTL may have lapsed and another request
    /// may hold the key now).
    fn settle_local(&self, key: Key, nonce: u64, delivered_ttl: Option<Duration>) {
        if let Some(ttl) = delivered_ttl {
            self.delivered.insert(key, ttl);
        }
        self.in_flight
            .entry(key)
            .and_compute_with(|current| match current {
                Some(e) if *e.value() == nonce => Op::Remove,
                _ => Op::Nop,
            });
    }
}

/// A key held for one delivery attempt. Commit it on upstream 2xx; [`release`](Self::release)
/// it otherwise. Dropped unsettled, it releases itself (in the background with Redis), so no
/// early return, error or cancelled request can leave a key stuck.
pub struct Reservation {
    guard: Arc<ReplayGuard>,
    key: Key,
    nonce: u64,
    settled: bool,
}

impl Reservation {
    /// Drops the reservation without touching any store (nothing was reserved).
    fn disarm(mut self) {
        self.settled = true;
    }

    /// The upstream accepted the message: refuse copies of it for `remember_for`.
    pub async fn commit(mut self, remember_for: Duration) {
        self.settled = true;
        let g = &self.guard;
        let Some(store) = &g.shared else {
            g.settle_local(self.key, self.nonce, Some(remember_for));
            return;
        };
        // This replica refuses copies from now on, whatever the store says.
        g.delivered.insert(self.key, remember_for);
        let nonce = store.nonce(self.nonce);
        if let Err(e) = store.commit(self.key, &nonce, remember_for).await {
            g.store_errors.with_label_values(&["commit"]).inc();
            tracing::warn!(error = %e, "replay store: could not record a delivery; retrying in the background (until then other replicas refuse copies while the reservation lasts)");
            store.spawn_commit(self.key, nonce, remember_for, g.in_flight_ttl);
        }
    }

    /// The delivery failed: free the key for the provider's retry. Returns once the key is
    /// free (or the store could not be reached: then the reservation lapses by itself after
    /// the in-flight TTL, and is retried in the background meanwhile).
    pub async fn release(mut self) {
        self.settled = true;
        let g = &self.guard;
        let Some(store) = &g.shared else {
            g.settle_local(self.key, self.nonce, None);
            return;
        };
        let nonce = store.nonce(self.nonce);
        if let Err(e) = store.release(self.key, &nonce).await {
            g.store_errors.with_label_values(&["release"]).inc();
            tracing::warn!(error = %e, "replay store: could not release a failed delivery's key; retrying in the background (until then the provider's retries get 409)");
            store.spawn_release(self.key, nonce, g.in_flight_ttl);
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let g = &self.guard;
        match &g.shared {
            None => g.settle_local(self.key, self.nonce, None),
            Some(store) => store.spawn_release(self.key, store.nonce(self.nonce), g.in_flight_ttl),
        }
    }
}

/// The keys of one delivery attempt, held together: the provider's delivery id and, for
/// providers whose id is unsigned, an identity made of signed values (see
/// `providers::Verified::signed_key`). Either both are reserved or neither is.
pub struct Reservations {
    primary: Reservation,
    signed: Option<Reservation>,
}

impl ReplayGuard {
    /// Reserves `key` and, when given, `signed_key` of `route` for one delivery attempt.
    pub async fn reserve_delivery(
        self: &Arc<Self>,
        route: &str,
        key: &str,
        signed_key: Option<&str>,
    ) -> Result<Reservations, Refused> {
        let primary = self.reserve(route, key).await?;
        let signed = match signed_key {
            None => None,
            // Its own namespace: no delivery id can collide with a signature.
            Some(k) => match self.reserve(&format!("{route}\0signed"), k).await {
                Ok(r) => Some(r),
                Err(refused) => {
                    primary.release().await;
                    return Err(refused);
                }
            },
        };
        Ok(Reservations { primary, signed })
    }
}

impl Reservations {
    pub async fn commit(self, remember_for: Duration) {
        if let Some(s) = self.signed {
            s.commit(remember_for).await;
        }
        self.primary.commit(remember_for).await;
    }

    pub async fn release(self) {
        if let Some(s) = self.signed {
            s.release().await;
        }
        self.primary.release().await;
    }
}

/// 128 bits of SHA-256 over route and key: collisions are out of reach, and a key of any
/// length costs 16 bytes of memory.
fn digest(route: &str, key: &str) -> Key {
    let mut h = Sha256::new();
    h.update((route.len() as u64).to_be_bytes());
    h.update(route.as_bytes());
    h.update(key.as_bytes());
    let out = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&out[..16]);
    u128::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> Arc<ReplayGuard> {
        Arc::new(ReplayGuard::new(1000, Duration::from_secs(60)))
    }

    /// Two requests reserving the same key at the same moment: exactly one may win, every
    /// time. (moka's `or_insert` let both win about once in a hundred races.)
    #[test]
    fn concurrent_reservations_of_one_key_have_exactly_one_winner() {
        let g = guard();
        let mut double = 0;
        for i in 0..5_000 {
            let key = format!("k{i}");
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let (g, key, barrier) = (g.clone(), key.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        futures_util::FutureExt::now_or_never(g.reserve("r", &key))
                            .expect("the memory backend does not wait")
                            .ok()
                    })
                })
                .collect();
            let won: Vec<_> = racers
                .into_iter()
                .filter_map(|r| r.join().expect("racer"))
                .collect();
            if won.len() != 1 {
                double += 1;
            }
            drop(won);
        }
        assert_eq!(double, 0, "races with other than one winner");
    }

    #[tokio::test]
    async fn in_flight_duplicate_is_refused_then_released() {
        let g = guard();
        let first = g.reserve("r", "k").await.unwrap();
        assert_eq!(g.reserve("r", "k").await.err(), Some(Refused::Replayed));
        first.release().await; // upstream failed
        let retry = g
            .reserve("r", "k")
            .await
            .expect("retry after a failed delivery passes");
        retry.commit(Duration::from_secs(60)).await;
        assert_eq!(g.reserve("r", "k").await.err(), Some(Refused::Replayed));
    }

    #[tokio::test]
    async fn a_dropped_reservation_releases_itself() {
        let g = guard();
        drop(g.reserve("r", "k").await.unwrap());
        assert!(g.reserve("r", "k").await.is_ok());
    }

    #[tokio::test]
    async fn routes_are_separate_namespaces() {
        let g = guard();
        let _a = g.reserve("a", "k").await.unwrap();
        assert!(g.reserve("b", "k").await.is_ok());
        // (route, key) pairs that concatenate alike stay distinct.
        let _x = g.reserve("ab", "c").await.unwrap();
        assert!(g.reserve("a", "bc").await.is_ok());
    }

    #[tokio::test]
    async fn committed_keys_expire_after_their_ttl() {
        let g = guard();
        g.reserve("r", "k")
            .await
            .unwrap()
            .commit(Duration::from_millis(50))
            .await;
        assert!(g.reserve("r", "k").await.is_err());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(g.reserve("r", "k").await.is_ok());
    }

    #[tokio::test]
    async fn a_stale_release_does_not_free_another_reservation() {
        let g = Arc::new(ReplayGuard::new(1000, Duration::from_millis(30)));
        let old = g.reserve("r", "k").await.unwrap();
        tokio::time::sleep(Duration::from_millis(80)).await; // the safety-net TTL lapses
        let new = g.reserve("r", "k").await.unwrap();
        old.release().await;
        assert!(
            g.reserve("r", "k").await.is_err(),
            "the newer reservation still holds"
        );
        drop(new);
    }

    #[tokio::test]
    async fn bounded_by_max_entries() {
        let g = Arc::new(ReplayGuard::new(100, Duration::from_secs(60)));
        for i in 0..1000 {
            g.reserve("r", &i.to_string())
                .await
                .unwrap()
                .commit(Duration::from_secs(60))
                .await;
        }
        assert!(g.len() <= 100, "len {}", g.len());
        // The newest key is remembered (LRU evicts the oldest, never refuses the newest).
        assert!(g.reserve("r", "999").await.is_err());
    }
}

#[cfg(test)]
mod redis_tests;
