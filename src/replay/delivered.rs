//! The keys of delivered messages, compactly: about 50–100 bytes per key where a general cache
//! spends 300+, so a million of them fit the memory budget.
//!
//! Each key (a 128-bit digest) is remembered until its own expiry time. The set is split into
//! shards behind their own locks; each shard is a hash map (key → expiry) plus a min-heap of
//! expiries, from which expired keys are dropped as new ones arrive. When a shard is full, the
//! key closest to expiring goes first: it is the one whose window is nearest to closing anyway.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Key;

const SHARDS: usize = 16;

/// A key as two words: 8-byte alignment keeps a map entry at 24 bytes (a `u128` would pad it
/// to 32).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Digest(u64, u64);

impl From<Key> for Digest {
    fn from(k: Key) -> Self {
        Digest((k >> 64) as u64, k as u64)
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

/// Milliseconds since the set was created.
type Stamp = u64;

#[derive(Default)]
struct Shard {
    expiry: HashMap<Digest, Stamp, BuildHasherDefault<DigestHasher>>,
    /// Every (expiry, insertion order, key) inserted and not yet dropped, soonest first (and,
    /// among keys expiring in the same millisecond, oldest first). An entry whose expiry no longer
    /// matches the map's is stale and skipped.
    queue: BinaryHeap<Reverse<(Stamp, u32, Digest)>>,
    inserted: u32,
}

impl Shard {
    /// Drops keys expired at `now`, then `excess` more keys, the closest to expiring first,
    /// except `keep` (the key just delivered: the likeliest to be sent again). Returns how
    /// many keys left the map.
    fn trim(&mut self, now: Stamp, excess: u64, keep: Digest) -> u64 {
        let mut dropped = 0;
        let mut evicted = 0;
        let mut spared = None;
        while let Some(Reverse((at, order, key))) = self.queue.peek().copied() {
            if self.expiry.get(&key).copied() != Some(at) {
                self.queue.pop(); // stale: the key was re-inserted with a later expiry
                continue;
            }
            let expired = at <= now;
            if !expired && evicted >= excess {
                break;
            }
            self.queue.pop();
            if key == keep && !expired {
                spared = Some(Reverse((at, order, key)));
                continue;
            }
            self.expiry.remove(&key);
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
}

pub struct DeliveredSet {
    shards: Box<[Mutex<Shard>]>,
    max_entries: u64,
    epoch: Instant,
    len: AtomicU64,
}

impl DeliveredSet {
    /// A set holding at most about `max_entries` keys.
    pub fn new(max_entries: u64) -> Self {
        DeliveredSet {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            max_entries: max_entries.max(1),
            epoch: Instant::now(),
            len: AtomicU64::new(0),
        }
    }

    fn now(&self) -> Stamp {
        Stamp::try_from(self.epoch.elapsed().as_millis()).unwrap_or(Stamp::MAX)
    }

    fn shard(&self, key: Digest) -> &Mutex<Shard> {
        &self.shards[(key.0 >> 60) as usize % SHARDS]
    }

    /// Whether `key` was delivered and its time is not over.
    pub fn contains(&self, key: Key) -> bool {
        let key = Digest::from(key);
        let now = self.now();
        let shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        shard.expiry.get(&key).is_some_and(|at| *at > now)
    }

    /// Remembers `key` for `ttl` (or longer, if it was already remembered for longer).
    pub fn insert(&self, key: Key, ttl: Duration) {
        let key = Digest::from(key);
        let now = self.now();
        let ms = Stamp::try_from(ttl.as_millis())
            .unwrap_or(Stamp::MAX)
            .max(1);
        let at = now.saturating_add(ms);
        let mut shard = self.shard(key).lock().unwrap_or_else(|p| p.into_inner());
        let previous = shard.expiry.get(&key).copied();
        if previous.is_some_and(|p| p >= at) {
            return;
        }
        shard.expiry.insert(key, at);
        let order = shard.inserted;
        shard.inserted = order.wrapping_add(1);
        shard.queue.push(Reverse((at, order, key)));
        let added = u64::from(previous.is_none());
        // The bound is global (shards fill unevenly); the evictions come from this shard.
        let excess = (self.len.load(Ordering::Relaxed) + added).saturating_sub(self.max_entries);
        let dropped = shard.trim(now, excess, key);
        // `dropped` counts only keys that were in the map.
        if added >= dropped {
            self.len.fetch_add(added - dropped, Ordering::Relaxed);
        } else {
            self.len.fetch_sub(dropped - added, Ordering::Relaxed);
        }
    }

    /// Keys remembered (expired ones count until a later insert into their shard drops them).
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> Key {
        // Spread over every shard, as digests are.
        (u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)) ^ u128::from(i)
    }

    #[test]
    fn remembers_until_the_ttl() {
        let set = DeliveredSet::new(1000);
        set.insert(key(1), Duration::from_millis(200));
        set.insert(key(2), Duration::from_secs(3600));
        assert!(set.contains(key(1)) && set.contains(key(2)));
        assert!(!set.contains(key(3)));
        assert_eq!(set.len(), 2);
        std::thread::sleep(Duration::from_millis(300));
        assert!(!set.contains(key(1)), "expired");
        assert!(set.contains(key(2)));
        // A later insert into the same shard drops the expired key.
        for i in 10..200 {
            set.insert(key(i), Duration::from_secs(3600));
        }
        assert_eq!(set.len(), 191);
    }

    #[test]
    fn a_longer_ttl_wins() {
        let set = DeliveredSet::new(1000);
        set.insert(key(1), Duration::from_secs(3600));
        set.insert(key(1), Duration::from_millis(100));
        std::thread::sleep(Duration::from_millis(200));
        assert!(set.contains(key(1)));
        assert_eq!(set.len(), 1);
    }

    #[test]
    fn bounded_dropping_the_soonest_to_expire() {
        let set = DeliveredSet::new(160);
        // The long-lived keys first, then many short-lived ones.
        for i in 0..80 {
            set.insert(key(i), Duration::from_secs(86_400));
        }
        for i in 1000..11_000 {
            set.insert(key(i), Duration::from_secs(60));
        }
        assert!(set.len() <= 160, "len {}", set.len());
        let kept = (0..80).filter(|i| set.contains(key(*i))).count();
        assert_eq!(
            kept, 80,
            "long-lived keys outlast a flood of short-lived ones"
        );
        assert!(set.contains(key(10_999)), "the newest key is remembered");
    }

    #[test]
    fn a_million_keys_cost_about_a_hundred_bytes_each() {
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
        let set = DeliveredSet::new(1_000_000);
        for i in 0..1_000_000 {
            set.insert(key(i), Duration::from_secs(3600));
        }
        let per_key = (rss_kib().saturating_sub(before)) * 1024 / 1_000_000;
        assert_eq!(set.len(), 1_000_000);
        assert!(set.contains(key(123_456)));
        // Other tests run in this process at the same time; the bound is loose on purpose.
        eprintln!("delivered set: {per_key} bytes per key");
        assert!(per_key < 160, "{per_key} bytes per key");
    }
}
