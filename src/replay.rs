//! The replay guard: each verified message reaches the application at most once per
//! successful delivery.
//!
//! A message's keys (see [`crate::message`]) are *reserved* while its request is in flight (a
//! concurrent copy is refused as [`Refused::InFlight`]), *committed* when the upstream answers
//! 2xx (later copies are refused as [`Refused::Delivered`] until the keys' time is over), and
//! *released* on anything else, so the provider's retry of a failed delivery goes through.
//! Where the signature does not cover the body (Mailgun), a released key stays bound to the
//! digest of the body it carried: the retry may bring that body and no other.
//!
//! A [`Reservation`] releases itself when dropped unsettled, so no early return, error or
//! cancelled request can leave a key stuck. The keys live in this process ([`memory`]) or, for
//! several replicas, in Redis ([`redis_store`]) with a local cache of delivered keys in front.
//! The guard knows nothing of HTTP or Prometheus: store errors go to an [`ErrorSink`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

use crate::config::{OnStoreError, ReplaySettings, ReplayStore};
use crate::message::MessageKey;
use memory::{MemoryStore, Mode, Seen};
use redis_store::{RedisStore, Reply};

pub mod memory;
mod redis_store;

/// A Redis client for `settings` (its TLS material included), for the other users of the
/// replay guard's Redis (the shared spool).
pub fn redis_client(settings: &crate::config::RedisSettings) -> redis::RedisResult<redis::Client> {
    redis_store::client(settings)
}

/// Why a reservation was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The message was delivered already (its keys are remembered).
    Delivered,
    /// A copy of the message is being delivered right now, or a key released after a failed
    /// delivery is bound to another body than this request's.
    InFlight,
    /// The store holds `max_entries` live keys and forgets none of them: refused until some
    /// expire (the provider retries).
    Full,
    /// The shared store could not be asked (`on_store_error: reject`).
    StoreUnavailable,
}

/// The body a message carried, for providers whose signature does not cover it (Mailgun): a
/// key released after a failed delivery is bound to its digest. The digest is computed only
/// when it is needed (a release, or a key found released), not on every request.
pub struct Binding {
    body: Bytes,
    digest: OnceLock<u128>,
}

impl Binding {
    /// `body` in a canonical form (the normalized JSON), so that a sender re-encoding the same
    /// fields sends the same body.
    pub fn new(body: Bytes) -> Self {
        Binding {
            body,
            digest: OnceLock::new(),
        }
    }

    pub fn digest(&self) -> u128 {
        *self
            .digest
            .get_or_init(|| crate::message::digest(&[&self.body]))
    }
}

/// A call to the shared store, for the error count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOp {
    Reserve,
    Commit,
    Release,
}

impl StoreOp {
    pub fn label(self) -> &'static str {
        match self {
            StoreOp::Reserve => "reserve",
            StoreOp::Commit => "commit",
            StoreOp::Release => "release",
        }
    }
}

/// Where failed calls to the shared store are counted (the metrics, in the server).
pub type ErrorSink = Arc<dyn Fn(StoreOp) + Send + Sync>;

/// A sink that counts nothing (tests, benchmarks).
pub fn no_sink() -> ErrorSink {
    Arc::new(|_| {})
}

pub struct ReplayGuard {
    /// Memory backend: the record (never forgets a live key). Redis backend: a cache of keys
    /// delivered through this process, in front of the store.
    local: MemoryStore,
    /// How long a reservation may live if its holder vanished without releasing it (it
    /// cannot, short of a bug or, with Redis, a lost connection: this is the safety net).
    hold: Duration,
    next_nonce: AtomicU64,
    shared: Option<RedisStore>,
    on_store_error: OnStoreError,
    errors: ErrorSink,
}

impl ReplayGuard {
    /// A memory-only guard.
    pub fn new(max_entries: u64, hold: Duration) -> Self {
        Self::build(
            MemoryStore::new(max_entries, Mode::Record),
            hold,
            None,
            OnStoreError::Reject,
            no_sink(),
        )
    }

    /// The guard `settings` describe. Fails only if the Redis client's thread cannot be
    /// started.
    pub fn with_settings(
        settings: &ReplaySettings,
        hold: Duration,
        errors: ErrorSink,
    ) -> std::io::Result<Self> {
        Ok(match &settings.store {
            ReplayStore::Memory => Self::build(
                MemoryStore::new(settings.max_entries, Mode::Record),
                hold,
                None,
                settings.on_store_error,
                errors,
            ),
            ReplayStore::Redis(redis) => Self::build(
                MemoryStore::new(settings.max_entries, Mode::Cache),
                hold,
                Some(RedisStore::new(redis)?),
                settings.on_store_error,
                errors,
            ),
        })
    }

    fn build(
        local: MemoryStore,
        hold: Duration,
        shared: Option<RedisStore>,
        on_store_error: OnStoreError,
        errors: ErrorSink,
    ) -> Self {
        ReplayGuard {
            local,
            hold,
            next_nonce: AtomicU64::new(1),
            shared,
            on_store_error,
            errors,
        }
    }

    /// Whether the shared store (if any) has a connection; `None` for the memory backend.
    pub fn store_connected(&self) -> Option<bool> {
        self.shared.as_ref().map(RedisStore::is_connected)
    }

    /// Keys remembered in this process: with the memory backend, every key in flight,
    /// released-and-bound or delivered; with Redis, the delivered keys of the local cache.
    pub fn len(&self) -> u64 {
        self.local.len()
    }

    pub fn is_empty(&self) -> bool {
        self.local.is_empty()
    }

    /// Reserves every one of `keys` (a message's keys, sorted) for one delivery attempt, or
    /// none of them. `binding` is the digest of the body for providers whose signature does
    /// not cover it; `remember_for` is how long the keys are kept once delivered (and a
    /// binding once released).
    pub async fn reserve(
        self: &Arc<Self>,
        keys: &[MessageKey],
        binding: Option<Binding>,
        remember_for: Duration,
    ) -> Result<Reservation, Refused> {
        let nonce = self.next_nonce.fetch_add(1, Ordering::Relaxed);
        let mut reservation = Reservation {
            guard: Arc::clone(self),
            keys: Vec::with_capacity(keys.len()),
            nonce,
            binding,
            remember_for,
            settled: false,
        };
        match &self.shared {
            None => {
                let digest = reservation.binding.as_ref().map(|b| move || b.digest());
                let digest = digest.as_ref().map(|f| f as &dyn Fn() -> u128);
                for key in keys {
                    match self.local.reserve(*key, nonce, digest, self.hold) {
                        Ok(()) => reservation.keys.push(*key),
                        // Dropping the reservation frees the keys taken so far.
                        Err(seen) => return Err(refused(seen)),
                    }
                }
                Ok(reservation)
            }
            Some(store) => {
                // Delivered through this process: known without a round trip.
                if keys.iter().any(|k| self.local.is_delivered(*k)) {
                    return Err(Refused::Delivered);
                }
                let lease = store.nonce(nonce);
                let digest = reservation.binding.as_ref().map(Binding::digest);
                for key in keys {
                    match store.reserve(*key, &lease, digest, self.hold).await {
                        Ok(Reply::Taken) => reservation.keys.push(*key),
                        Ok(Reply::Delivered) => return Err(Refused::Delivered),
                        Ok(Reply::InFlight | Reply::OtherBody) => return Err(Refused::InFlight),
                        Err(e) => {
                            (self.errors)(StoreOp::Reserve);
                            match self.on_store_error {
                                OnStoreError::Reject => {
                                    tracing::warn!(error = %e, "replay store unavailable; answering 503 so the provider retries later");
                                    // The call may have been applied although its answer was
                                    // lost: free the key too, if it is ours, when the store
                                    // answers again.
                                    if e.may_have_applied() {
                                        reservation.keys.push(*key);
                                    }
                                    return Err(Refused::StoreUnavailable);
                                }
                                OnStoreError::Allow => {
                                    tracing::warn!(error = %e, "replay store unavailable; forwarding WITHOUT replay protection (on_store_error: allow)");
                                    // Kept all the same: a 2xx still records the delivery
                                    // (here, and in the store if it answers by then); a
                                    // failure frees the key if the lost call did take it.
                                    reservation.keys.push(*key);
                                }
                            }
                        }
                    }
                }
                Ok(reservation)
            }
        }
    }
}

fn refused(seen: Seen) -> Refused {
    match seen {
        Seen::Delivered => Refused::Delivered,
        Seen::InFlight | Seen::OtherBody => Refused::InFlight,
        Seen::Full => Refused::Full,
    }
}

/// A message's keys held for one delivery attempt. [`commit`](Self::commit) them on upstream
/// 2xx; [`release`](Self::release) them otherwise. Dropped unsettled, it releases itself (in
/// the background with Redis).
pub struct Reservation {
    guard: Arc<ReplayGuard>,
    keys: Vec<MessageKey>,
    nonce: u64,
    binding: Option<Binding>,
    remember_for: Duration,
    settled: bool,
}

impl Reservation {
    fn binding_digest(&self) -> Option<u128> {
        self.binding.as_ref().map(Binding::digest)
    }

    /// The upstream accepted the message: refuse copies of it for `remember_for`.
    pub async fn commit(mut self) {
        self.settled = true;
        let g = &self.guard;
        let ttl = self.remember_for;
        let Some(store) = &g.shared else {
            for key in &self.keys {
                g.local.commit(*key, self.nonce, ttl);
            }
            return;
        };
        let lease = store.nonce(self.nonce);
        for key in &self.keys {
            // This replica refuses copies from now on, whatever the store says.
            g.local.remember_delivered(*key, ttl);
            if let Err(e) = store.commit(*key, &lease, ttl).await {
                (g.errors)(StoreOp::Commit);
                tracing::warn!(error = %e, "replay store: could not record a delivery; retrying in the background (until then other replicas refuse copies while the reservation lasts)");
                store.spawn_commit(*key, lease.clone(), ttl, g.hold);
            }
        }
    }

    /// The delivery failed: free the keys for the provider's retry. Returns once they are
    /// free (or the store could not be reached: then the reservation lapses by itself after
    /// its hold time, and is retried in the background meanwhile).
    pub async fn release(mut self) {
        self.settled = true;
        let g = &self.guard;
        let Some(store) = &g.shared else {
            for key in &self.keys {
                g.local
                    .release(*key, self.nonce, self.binding_digest(), self.remember_for);
            }
            return;
        };
        let lease = store.nonce(self.nonce);
        for key in &self.keys {
            if let Err(e) = store
                .release(*key, &lease, self.binding_digest(), self.remember_for)
                .await
            {
                (g.errors)(StoreOp::Release);
                tracing::warn!(error = %e, "replay store: could not release a failed delivery's key; retrying in the background (until then the provider's retries get 409)");
                store.spawn_release(
                    *key,
                    lease.clone(),
                    self.binding_digest(),
                    self.remember_for,
                    g.hold,
                );
            }
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
            None => {
                for key in &self.keys {
                    g.local
                        .release(*key, self.nonce, self.binding_digest(), self.remember_for);
                }
            }
            Some(store) => {
                let lease = store.nonce(self.nonce);
                for key in &self.keys {
                    store.spawn_release(
                        *key,
                        lease.clone(),
                        self.binding_digest(),
                        self.remember_for,
                        g.hold,
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::SignerId;

    fn guard() -> Arc<ReplayGuard> {
        Arc::new(ReplayGuard::new(1000, Duration::from_secs(60)))
    }

    fn keys(names: &[&str]) -> Vec<MessageKey> {
        let mut k: Vec<MessageKey> = names
            .iter()
            .map(|n| MessageKey::new("p", SignerId::of(n.as_bytes()), b"m"))
            .collect();
        k.sort();
        k
    }

    const TTL: Duration = Duration::from_secs(60);

    #[tokio::test]
    async fn in_flight_then_released_then_delivered() {
        let g = guard();
        let k = keys(&["a"]);
        let first = g.reserve(&k, None, TTL).await.unwrap();
        assert_eq!(
            g.reserve(&k, None, TTL).await.err(),
            Some(Refused::InFlight)
        );
        first.release().await; // upstream failed
        let retry = g.reserve(&k, None, TTL).await.expect("retry passes");
        retry.commit().await;
        assert_eq!(
            g.reserve(&k, None, TTL).await.err(),
            Some(Refused::Delivered)
        );
    }

    #[tokio::test]
    async fn a_dropped_reservation_releases_itself() {
        let g = guard();
        drop(g.reserve(&keys(&["a"]), None, TTL).await.unwrap());
        assert!(g.reserve(&keys(&["a"]), None, TTL).await.is_ok());
    }

    /// A message signed under two secrets holds both keys: a copy carrying either signature
    /// alone, on a route with either secret, is the same message.
    #[tokio::test]
    async fn all_keys_of_a_message_are_held_together() {
        let g = guard();
        let both = keys(&["a", "b"]);
        g.reserve(&both, None, TTL).await.unwrap().commit().await;
        assert_eq!(
            g.reserve(&keys(&["b"]), None, TTL).await.err(),
            Some(Refused::Delivered)
        );
        assert_eq!(
            g.reserve(&keys(&["a"]), None, TTL).await.err(),
            Some(Refused::Delivered)
        );
        // A refused multi-key reservation takes nothing.
        let g = guard();
        let _held = g.reserve(&keys(&["b"]), None, TTL).await.unwrap();
        assert_eq!(
            g.reserve(&keys(&["a", "b"]), None, TTL).await.err(),
            Some(Refused::InFlight)
        );
        assert!(
            g.reserve(&keys(&["a"]), None, TTL).await.is_ok(),
            "a was given back"
        );
    }

    #[tokio::test]
    async fn a_released_bound_key_takes_back_only_its_body() {
        let g = guard();
        let k = keys(&["mailgun"]);
        let body = |b: &'static [u8]| Some(Binding::new(Bytes::from_static(b)));
        g.reserve(&k, body(b"one"), TTL)
            .await
            .unwrap()
            .release()
            .await;
        assert_eq!(
            g.reserve(&k, body(b"two"), TTL).await.err(),
            Some(Refused::InFlight)
        );
        g.reserve(&k, body(b"one"), TTL)
            .await
            .unwrap()
            .commit()
            .await;
        assert_eq!(
            g.reserve(&k, body(b"one"), TTL).await.err(),
            Some(Refused::Delivered)
        );
    }

    #[tokio::test]
    async fn a_full_guard_refuses_rather_than_forgets() {
        let g = Arc::new(ReplayGuard::new(16, Duration::from_secs(60)));
        for i in 0..16 {
            let k = vec![MessageKey(i)];
            g.reserve(&k, None, TTL).await.unwrap().commit().await;
        }
        assert_eq!(
            g.reserve(&[MessageKey(999)], None, TTL).await.err(),
            Some(Refused::Full)
        );
        assert_eq!(
            g.reserve(&[MessageKey(0)], None, TTL).await.err(),
            Some(Refused::Delivered)
        );
    }
}

#[cfg(test)]
mod redis_tests;
