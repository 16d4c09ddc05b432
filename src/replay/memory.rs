//! The replay store of one process: every key in flight, released or delivered, compactly.
//!
//! Keys are split into shards behind their own locks; within a shard one lock covers a key's
//! whole life, so a check and the change it decides are one step (two copies of a message can
//! never both be told the key is free). Delivered keys are the many: each costs a 24-byte map
//! entry plus its place in a min-heap of expiries (about 90 bytes per key in all), dropped as
//! their time passes. Keys in flight, and released keys still bound to the body they carried,
//! are few and live in a map of their own.
//!
//! **Bounded, and never forgetful** (the record of a single replica, [`Mode::Record`]): a key
//! is only dropped once its own time is over. When `max_entries` keys are live, a new key is
//! refused ([`Seen::Full`]: the request is answered 503 and the provider retries) rather than
//! an open key evicted, which would reopen replay for it. The local cache in front of a shared
//! store ([`Mode::Cache`]) may forget: it evicts the key closest to expiring instead.
//!
//! Longer than 500 lines: about 360 lines of code and the store's unit tests (races, expiry,
//! the full store, memory per key) beside it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::message::MessageKey;

const SHARDS: usize = 16;

/// What a full store does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The record of this replica: refuse new keys rather than forget a live one.
    Record,
    /// A cache in front of a shared store: forget the key closest to expiring.
    Cache,
}

/// Why a key could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Delivered, and still remembered.
    Delivered,
    /// Another request holds it now.
    InFlight,
    /// Released after a failed delivery, bound to another body than this request's.
    OtherBody,
    /// `max_entries` live keys: none can be added until some expire.
    Full,
}

/// A key as two words: 8-byte alignment keeps a map entry at 24 bytes (a `u128` would pad it
/// to 32).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Digest(u64, u64);

impl From<MessageKey> for Digest {
    fn from(k: MessageKey) -> Self {
        Digest((k.0 >> 64) as u64, k.0 as u64)
    }
}

/// The keys are SHA-256 output, uniformly distributed, and only verified requests produce
/// them: their own bits are a perfect hash.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 ^= n;
    }
}

type Map<V> = HashMap<Digest, V, BuildHasherDefault<DigestHasher>>;

/// Milliseconds since the store was created.
type Stamp = u64;

/// A key that is not (or not yet) delivered.
#[derive(Clone, Copy)]
struct Pending {
    /// The reservation holding it; 0: released, bound to `binding`.
    holder: u64,
    /// Digest of the body the key may carry (providers whose signature does not cover it).
    binding: Option<u128>,
    until: Stamp,
}

#[derive(Default)]
struct Shard {
    delivered: Map<Stamp>,
    /// Every (expiry, insertion order, key) of `delivered` inserted and not yet dropped,
    /// soonest first (and, among keys expiring in the same millisecond, oldest first). An
    /// entry whose expiry no longer matches the map's is stale and skipped.
    queue: BinaryHeap<Reverse<(Stamp, u32, Digest)>>,
    inserted: u32,
    pending: Map<Pending>,
}

impl Shard {
    /// Drops delivered keys expired at `now`, then, in cache mode, `excess` more keys, the
    /// closest to expiring first, except `keep` (the key just delivered). Returns how many
    /// keys left the map.
    fn trim(&mut self, now: Stamp, excess: u64, keep: Option<Digest>) -> u64 {
        let mut dropped = 0;
        let mut evicted = 0;
        let mut spared = None;
        while let Some(Reverse((at, order, key))) = self.queue.peek().copied() {
            if self.delivered.get(&key).copied() != Some(at) {
                self.queue.pop(); // stale: the key was re-inserted with a later expiry
                continue;
            }
            let expired = at <= now;
            if !expired && evicted >= excess {
                break;
            }
            self.queue.pop();
            if Some(key) == keep && !expired {
                spared = Some(Reverse((at, order, key)));
                continue;
            }
            self.delivered.remove(&key);
            dropped += 1;
            if !expired {
                evicted += 1;
            }
        }
        if let Some(entry) = spared {
            self.queue.push(entry);
        }
        dropped
    }

    /// Drops pending keys whose time is over. Returns how many.
    fn sweep_pending(&mut self, now: Stamp) -> u64 {
        let before = self.pending.len();
        self.pending.retain(|_, p| p.until > now);
        (before - self.pending.len()) as u64
    }

    /// Records `key` as delivered until `at` (or later, if it already was). Returns whether
    /// the key is new to the map.
    fn deliver(&mut self, key: Digest, at: Stamp) -> bool {
        let previous = self.delivered.get(&key).copied();
        if previous.is_some_and(|p| p >= at) {
            return false;
        }
        self.delivered.insert(key, at);
        let order = self.inserted;
        self.inserted = order.wrapping_add(1);
        self.queue.push(Reverse((at, order, key)));
        previous.is_none()
    }
}

pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    max_entries: u64,
    mode: Mode,
    epoch: Instant,
    /// Keys in the maps (delivered and pending), expired ones included until dropped.
    len: AtomicU64,
}

impl MemoryStore {
    /// A store holding at most about `max_entries` keys.
    pub fn new(max_entries: u64, mode: Mode) -> Self {
        MemoryStore {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            max_entries: max_entries.max(1),
            mode,
            epoch: Instant::now(),
            len: AtomicU64::new(0),
        }
    }

    fn now(&self) -> Stamp {
        Stamp::try_from(self.epoch.elapsed().as_millis()).unwrap_or(Stamp::MAX)
    }

    fn after(&self, now: Stamp, d: Duration) -> Stamp {
        let ms = Stamp::try_from(d.as_millis()).unwrap_or(Stamp::MAX).max(1);
        now.saturating_add(ms)
    }

    fn shard(&self, key: Digest) -> MutexGuard<'_, Shard> {
        self.shards[(key.0 >> 60) as usize % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn added(&self, n: u64) {
        self.len.fetch_add(n, Ordering::Relaxed);
    }

    fn removed(&self, n: u64) {
        if n > 0 {
            self.len.fetch_sub(n, Ordering::Relaxed);
        }
    }

    /// Keys remembered (expired ones count until they are dropped).
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `key` was delivered and its time is not over.
    pub fn is_delivered(&self, key: MessageKey) -> bool {
        let key = Digest::from(key);
        let now = self.now();
        self.shard(key)
            .delivered
            .get(&key)
            .is_some_and(|at| *at > now)
    }

    /// Reserves `key` for reservation `holder` (never 0) for at most `hold`. `binding` gives
    /// the digest of the request's body, for providers whose signature does not cover it: a
    /// key released with a binding may only be reserved again with the same one. It is asked
    /// for only then (a digest of the body is not free).
    pub fn reserve(
        &self,
        key: MessageKey,
        holder: u64,
        binding: Option<&dyn Fn() -> u128>,
        hold: Duration,
    ) -> Result<(), Seen> {
        let key = Digest::from(key);
        let mut swept = false;
        loop {
            let now = self.now();
            let mut shard = self.shard(key);
            if shard.delivered.get(&key).is_some_and(|at| *at > now) {
                return Err(Seen::Delivered);
            }
            let until = self.after(now, hold);
            match shard.pending.get(&key).copied() {
                Some(p) if p.until > now && p.holder != 0 => return Err(Seen::InFlight),
                Some(p) if p.until > now => {
                    if p.binding != binding.map(|digest| digest()) {
                        return Err(Seen::OtherBody);
                    }
                    // The retry of a failed delivery, with the body it first carried.
                    shard.pending.insert(
                        key,
                        Pending {
                            holder,
                            binding: p.binding,
                            until,
                        },
                    );
                    return Ok(());
                }
                Some(_) => {
                    // Its time is over: as if absent (the slot is reused below).
                    shard.pending.remove(&key);
                    self.removed(1);
                }
                None => {}
            }
            if self.mode == Mode::Record && self.len() >= self.max_entries {
                drop(shard);
                if swept {
                    return Err(Seen::Full);
                }
                // Make room from keys whose time is over, everywhere, then look again.
                self.sweep();
                swept = true;
                continue;
            }
            shard.pending.insert(
                key,
                Pending {
                    holder,
                    binding: None,
                    until,
                },
            );
            self.added(1);
            return Ok(());
        }
    }

    /// The delivery succeeded: remember `key` as delivered for `ttl`, and let go of the
    /// reservation if it is still `holder`'s (its safety time may have lapsed and another
    /// request may hold the key now).
    pub fn commit(&self, key: MessageKey, holder: u64, ttl: Duration) {
        let key = Digest::from(key);
        let now = self.now();
        let mut shard = self.shard(key);
        if shard.pending.get(&key).is_some_and(|p| p.holder == holder) {
            shard.pending.remove(&key);
            self.removed(1);
        }
        let new = shard.deliver(key, self.after(now, ttl));
        self.added(u64::from(new));
        let excess = match self.mode {
            Mode::Record => 0,
            Mode::Cache => self.len().saturating_sub(self.max_entries),
        };
        let dropped = shard.trim(now, excess, Some(key));
        self.removed(dropped);
    }

    /// The delivery failed: free `key` for the provider's retry if `holder` still holds it.
    /// With `binding` (the digest of the body it carried), it stays bound to that body for
    /// `bound_for`.
    pub fn release(
        &self,
        key: MessageKey,
        holder: u64,
        binding: Option<u128>,
        bound_for: Duration,
    ) {
        let key = Digest::from(key);
        let now = self.now();
        let mut shard = self.shard(key);
        let Some(p) = shard.pending.get(&key).copied() else {
            return;
        };
        if p.holder != holder {
            return;
        }
        match binding {
            Some(_) => {
                shard.pending.insert(
                    key,
                    Pending {
                        holder: 0,
                        binding,
                        until: self.after(now, bound_for),
                    },
                );
            }
            None => {
                shard.pending.remove(&key);
                self.removed(1);
            }
        }
    }

    /// Cache mode: remembers a key delivered elsewhere (through the shared store).
    pub fn remember_delivered(&self, key: MessageKey, ttl: Duration) {
        self.commit(key, 0, ttl);
    }

    /// Drops every key whose time is over.
    fn sweep(&self) {
        let now = self.now();
        for shard in self.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let dropped = shard.trim(now, 0, None) + shard.sweep_pending(now);
            self.removed(dropped);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> MessageKey {
        // Spread over every shard, as digests are.
        MessageKey(
            (u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)) ^ u128::from(i),
        )
    }

    const HOLD: Duration = Duration::from_secs(60);

    fn deliver(s: &MemoryStore, k: MessageKey, ttl: Duration) {
        s.reserve(k, 7, None, HOLD).expect("free");
        s.commit(k, 7, ttl);
    }

    #[test]
    fn a_key_is_free_in_flight_then_delivered() {
        let s = MemoryStore::new(100, Mode::Record);
        s.reserve(key(1), 1, None, HOLD).unwrap();
        assert_eq!(s.reserve(key(1), 2, None, HOLD), Err(Seen::InFlight));
        s.commit(key(1), 1, HOLD);
        assert_eq!(s.reserve(key(1), 3, None, HOLD), Err(Seen::Delivered));
        assert!(s.is_delivered(key(1)));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_released_key_is_free_again_and_a_stale_release_frees_nothing() {
        let s = MemoryStore::new(100, Mode::Record);
        s.reserve(key(1), 1, None, HOLD).unwrap();
        s.release(key(1), 1, None, HOLD);
        assert_eq!(s.len(), 0);
        s.reserve(key(1), 2, None, HOLD).unwrap();
        s.release(key(1), 1, None, HOLD); // not the holder
        assert_eq!(s.reserve(key(1), 3, None, HOLD), Err(Seen::InFlight));
    }

    #[test]
    fn a_released_key_with_a_binding_takes_back_only_its_body() {
        let s = MemoryStore::new(100, Mode::Record);
        let (b11, b22) = (|| 11u128, || 22u128);
        s.reserve(key(1), 1, Some(&b11), HOLD).unwrap();
        s.release(key(1), 1, Some(11), HOLD);
        assert_eq!(s.reserve(key(1), 2, Some(&b22), HOLD), Err(Seen::OtherBody));
        assert_eq!(s.reserve(key(1), 2, None, HOLD), Err(Seen::OtherBody));
        s.reserve(key(1), 3, Some(&b11), HOLD)
            .expect("the same body");
        // Taken back, the binding stays: released again, it is still bound to that body.
        s.release(key(1), 3, Some(11), HOLD);
        assert_eq!(s.reserve(key(1), 4, Some(&b22), HOLD), Err(Seen::OtherBody));
        s.reserve(key(1), 5, Some(&b11), HOLD)
            .expect("the same body");
        s.commit(key(1), 5, HOLD);
        assert_eq!(s.reserve(key(1), 6, Some(&b11), HOLD), Err(Seen::Delivered));
    }

    #[test]
    fn the_binding_lapses_with_its_window() {
        let s = MemoryStore::new(100, Mode::Record);
        let (b11, b22) = (|| 11u128, || 22u128);
        s.reserve(key(1), 1, Some(&b11), HOLD).unwrap();
        s.release(key(1), 1, Some(11), Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(100));
        s.reserve(key(1), 2, Some(&b22), HOLD).expect("window over");
    }

    #[test]
    fn an_abandoned_reservation_lapses_after_its_hold() {
        let s = MemoryStore::new(100, Mode::Record);
        s.reserve(key(1), 1, None, Duration::from_millis(30))
            .unwrap();
        std::thread::sleep(Duration::from_millis(80));
        s.reserve(key(1), 2, None, HOLD).expect("lapsed");
        s.release(key(1), 1, None, HOLD);
        assert_eq!(s.reserve(key(1), 3, None, HOLD), Err(Seen::InFlight));
    }

    #[test]
    fn delivered_keys_expire_after_their_ttl_and_a_longer_ttl_wins() {
        let s = MemoryStore::new(100, Mode::Record);
        deliver(&s, key(1), Duration::from_millis(50));
        deliver(&s, key(2), Duration::from_secs(3600));
        s.commit(key(2), 9, Duration::from_millis(1));
        std::thread::sleep(Duration::from_millis(100));
        assert!(!s.is_delivered(key(1)));
        assert!(s.is_delivered(key(2)));
        s.reserve(key(1), 3, None, HOLD).expect("expired");
    }

    #[test]
    fn a_full_record_refuses_new_keys_and_forgets_none() {
        let s = MemoryStore::new(160, Mode::Record);
        for i in 0..160 {
            deliver(&s, key(i), Duration::from_secs(3600));
        }
        assert_eq!(s.reserve(key(1000), 1, None, HOLD), Err(Seen::Full));
        assert_eq!(s.len(), 160);
        assert!(
            (0..160).all(|i| s.is_delivered(key(i))),
            "nothing forgotten"
        );
        // Copies of delivered keys are still recognised as such, not as "full".
        assert_eq!(s.reserve(key(5), 1, None, HOLD), Err(Seen::Delivered));
    }

    #[test]
    fn a_full_record_makes_room_from_expired_keys() {
        let s = MemoryStore::new(32, Mode::Record);
        for i in 0..32 {
            deliver(&s, key(i), Duration::from_millis(30));
        }
        std::thread::sleep(Duration::from_millis(60));
        s.reserve(key(1000), 1, None, HOLD)
            .expect("room from expired keys");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_cache_evicts_the_soonest_to_expire() {
        let s = MemoryStore::new(160, Mode::Cache);
        for i in 0..80 {
            s.remember_delivered(key(i), Duration::from_secs(86_400));
        }
        for i in 1000..11_000 {
            s.remember_delivered(key(i), Duration::from_secs(60));
        }
        assert!(s.len() <= 160, "len {}", s.len());
        assert_eq!((0..80).filter(|i| s.is_delivered(key(*i))).count(), 80);
        assert!(s.is_delivered(key(10_999)), "the newest key is remembered");
    }

    /// Two requests reserving the same key at the same moment: exactly one may win, every
    /// time.
    #[test]
    fn concurrent_reservations_of_one_key_have_exactly_one_winner() {
        let s = std::sync::Arc::new(MemoryStore::new(100_000, Mode::Record));
        let mut double = 0;
        for i in 0..5_000u64 {
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let racers: Vec<_> = (1..=2u64)
                .map(|holder| {
                    let (s, barrier) = (s.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        s.reserve(key(i), holder, None, HOLD).is_ok()
                    })
                })
                .collect();
            let won = racers
                .into_iter()
                .map(|r| r.join().expect("racer"))
                .filter(|won| *won)
                .count();
            if won != 1 {
                double += 1;
            }
        }
        assert_eq!(double, 0, "races with other than one winner");
    }

    #[test]
    fn a_million_delivered_keys_cost_about_a_hundred_bytes_each() {
        fn rss_kib() -> u64 {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find(|l| l.starts_with("VmRSS:"))
                        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
                })
                .unwrap_or(0)
        }
        let before = rss_kib();
        let s = MemoryStore::new(1_000_000, Mode::Record);
        for i in 0..1_000_000 {
            s.reserve(key(i), 1, None, HOLD).expect("room");
            s.commit(key(i), 1, Duration::from_secs(3600));
        }
        let per_key = (rss_kib().saturating_sub(before)) * 1024 / 1_000_000;
        assert_eq!(s.len(), 1_000_000);
        assert!(s.is_delivered(key(123_456)));
        // Other tests run in this process at the same time; the bound is loose on purpose.
        eprintln!("replay store: {per_key} bytes per delivered key");
        assert!(per_key < 160, "{per_key} bytes per key");
    }
}
