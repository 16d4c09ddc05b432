//! The replay guard: each verified message is forwarded at most once per successful delivery.
//!
//! A key is *reserved* while its request is in flight (a concurrent duplicate is refused),
//! *committed* when the upstream answers 2xx (later copies are refused for the key's TTL), and
//! *released* on anything else, so the provider's retry of a failed delivery goes through.
//! A [`Reservation`] releases itself when dropped uncommitted, so no early return, error or
//! cancelled request can leave a key stuck.
//!
//! Keys are stored as 128-bit digests of (route, key): fixed size, whatever the provider's
//! key looks like. The cache is bounded by `replay.max_entries` and evicts the least recently
//! used key when full (moka's default admission policy could refuse to store a new key, which
//! would silently disable replay protection for it).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use moka::Expiry;
use sha2::{Digest, Sha256};

type Key = u128;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Reserved by the request holding this nonce.
    InFlight(u64),
    Delivered,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    state: State,
    ttl: Duration,
}

/// Each slot lives for its own TTL, counted from its last write.
struct SlotExpiry;

impl Expiry<Key, Slot> for SlotExpiry {
    fn expire_after_create(&self, _: &Key, slot: &Slot, _: Instant) -> Option<Duration> {
        Some(slot.ttl)
    }
    fn expire_after_update(
        &self,
        _: &Key,
        slot: &Slot,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.ttl)
    }
}

/// The message was already delivered, or is being delivered right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed;

pub struct ReplayGuard {
    cache: Cache<Key, Slot>,
    /// How long an in-flight reservation may live if its holder vanished without releasing
    /// it (it cannot, short of a bug: this is the safety net).
    in_flight_ttl: Duration,
    next_nonce: AtomicU64,
}

impl ReplayGuard {
    pub fn new(max_entries: u64, in_flight_ttl: Duration) -> Self {
        ReplayGuard {
            cache: Cache::builder()
                .max_capacity(max_entries)
                .eviction_policy(EvictionPolicy::lru())
                .expire_after(SlotExpiry)
                .build(),
            in_flight_ttl,
            next_nonce: AtomicU64::new(1),
        }
    }

    /// Reserves `key` of `route` for one delivery attempt.
    pub fn reserve(self: &Arc<Self>, route: &str, key: &str) -> Result<Reservation, Replayed> {
        let digest = digest(route, key);
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        let entry = self.cache.entry(digest).or_insert_with(|| Slot {
            state: State::InFlight(nonce),
            ttl: self.in_flight_ttl,
        });
        if !entry.is_fresh() {
            return Err(Replayed);
        }
        Ok(Reservation {
            guard: Arc::clone(self),
            key: digest,
            nonce,
            settled: false,
        })
    }

    /// Approximate number of remembered keys (in flight and delivered).
    pub fn len(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn settle(&self, key: Key, nonce: u64, delivered_ttl: Option<Duration>) {
        self.cache.entry(key).and_compute_with(|current| {
            let ours = current.as_ref().map(|e| e.value().state) == Some(State::InFlight(nonce));
            match delivered_ttl {
                // Committing: remember the delivery even if the reservation was evicted
                // meanwhile; never overwrite another request's reservation.
                Some(ttl) if ours || current.is_none() => Op::Put(Slot {
                    state: State::Delivered,
                    ttl,
                }),
                None if ours => Op::Remove,
                _ => Op::Nop,
            }
        });
    }
}

/// A key held for one delivery attempt. Commit it on upstream 2xx; drop it otherwise.
pub struct Reservation {
    guard: Arc<ReplayGuard>,
    key: Key,
    nonce: u64,
    settled: bool,
}

impl Reservation {
    /// The upstream accepted the message: refuse copies of it for `remember_for`.
    pub fn commit(mut self, remember_for: Duration) {
        self.settled = true;
        self.guard.settle(self.key, self.nonce, Some(remember_for));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.guard.settle(self.key, self.nonce, None);
        }
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

    #[test]
    fn in_flight_duplicate_is_refused_then_released() {
        let g = guard();
        let first = g.reserve("r", "k").unwrap();
        assert_eq!(g.reserve("r", "k").err(), Some(Replayed));
        drop(first); // upstream failed
        let retry = g
            .reserve("r", "k")
            .expect("retry after a failed delivery passes");
        retry.commit(Duration::from_secs(60));
        assert_eq!(g.reserve("r", "k").err(), Some(Replayed));
    }

    #[test]
    fn routes_are_separate_namespaces() {
        let g = guard();
        let _a = g.reserve("a", "k").unwrap();
        assert!(g.reserve("b", "k").is_ok());
        // (route, key) pairs that concatenate alike stay distinct.
        let _x = g.reserve("ab", "c").unwrap();
        assert!(g.reserve("a", "bc").is_ok());
    }

    #[test]
    fn committed_keys_expire_after_their_ttl() {
        let g = guard();
        g.reserve("r", "k")
            .unwrap()
            .commit(Duration::from_millis(50));
        assert!(g.reserve("r", "k").is_err());
        std::thread::sleep(Duration::from_millis(120));
        assert!(g.reserve("r", "k").is_ok());
    }

    #[test]
    fn a_stale_release_does_not_free_another_reservation() {
        let g = Arc::new(ReplayGuard::new(1000, Duration::from_millis(30)));
        let old = g.reserve("r", "k").unwrap();
        std::thread::sleep(Duration::from_millis(80)); // the safety-net TTL lapses
        let new = g.reserve("r", "k").unwrap();
        drop(old);
        assert!(
            g.reserve("r", "k").is_err(),
            "the newer reservation still holds"
        );
        drop(new);
    }

    #[test]
    fn bounded_by_max_entries() {
        let g = Arc::new(ReplayGuard::new(100, Duration::from_secs(60)));
        for i in 0..1000 {
            g.reserve("r", &i.to_string())
                .unwrap()
                .commit(Duration::from_secs(60));
        }
        assert!(g.len() <= 100, "len {}", g.len());
        // The newest key is remembered (LRU evicts the oldest, never refuses the newest).
        assert!(g.reserve("r", "999").is_err());
    }
}
