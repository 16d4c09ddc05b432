//! The Redis backend against a real Redis: two guards on one Redis stand for two replicas.

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Commands;

use std::sync::atomic::AtomicU64;

use super::*;
use crate::config::{DuplicateStatus, RedisSettings, ReplaySettings, ReplayStore};
use crate::message::SignerId;
use crate::secret::Secret;

#[path = "../../tests/common/redis_server.rs"]
mod redis_server;
use redis_server::{unique_prefix, TestRedis};

fn settings(url: &str, prefix: &str, on_error: OnStoreError, timeout: Duration) -> ReplaySettings {
    ReplaySettings {
        max_entries: 1000,
        store: ReplayStore::Redis(RedisSettings {
            url: Secret::new(url),
            display: "test".into(),
            prefix: prefix.to_owned(),
            timeout,
            tls: Default::default(),
        }),
        on_store_error: on_error,
        duplicate_status: DuplicateStatus::Ok,
    }
}

/// Store errors counted by op (reserve, commit, release), per guard.
type Counts = Arc<[AtomicU64; 3]>;

/// A guard and what its error sink counted.
struct Guard {
    g: Arc<ReplayGuard>,
    errors: Counts,
}

impl std::ops::Deref for Guard {
    type Target = Arc<ReplayGuard>;
    fn deref(&self) -> &Self::Target {
        &self.g
    }
}

/// The message key of `name` (one signer: a Mailgun token under one signing key).
fn key(name: &str) -> Vec<MessageKey> {
    vec![MessageKey::new(
        "mailgun",
        SignerId::of(b"key"),
        name.as_bytes(),
    )]
}

const TTL: Duration = Duration::from_secs(60);

/// Reserves the message `name`, remembered for `TTL` once delivered.
async fn take(g: &Guard, name: &str) -> Result<Reservation, Refused> {
    g.reserve(&key(name), None, TTL).await
}

async fn take_for(g: &Guard, name: &str, ttl: Duration) -> Result<Reservation, Refused> {
    g.reserve(&key(name), None, ttl).await
}

/// A guard on `url`, connected (or given up on after a few seconds when `connected` is false).
async fn guard_on(
    url: &str,
    prefix: &str,
    on_error: OnStoreError,
    in_flight: Duration,
    connected: bool,
) -> Guard {
    let errors: Counts = Arc::new(Default::default());
    let counts = Arc::clone(&errors);
    let sink: ErrorSink = Arc::new(move |op: StoreOp| {
        counts[op as usize].fetch_add(1, Ordering::Relaxed);
    });
    let g = ReplayGuard::with_settings(
        &settings(url, prefix, on_error, Duration::from_secs(2)),
        in_flight,
        sink,
    )
    .expect("guard");
    if connected {
        let deadline = Instant::now() + Duration::from_secs(15);
        while g.store_connected() != Some(true) {
            assert!(Instant::now() < deadline, "guard did not connect to {url}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Guard {
        g: Arc::new(g),
        errors,
    }
}

async fn pair(r: &TestRedis, prefix: &str, in_flight: Duration) -> (Guard, Guard) {
    (
        guard_on(&r.url, prefix, OnStoreError::Reject, in_flight, true).await,
        guard_on(&r.url, prefix, OnStoreError::Reject, in_flight, true).await,
    )
}

fn errors(g: &Guard, op: &str) -> u64 {
    let i = match op {
        "reserve" => StoreOp::Reserve,
        "commit" => StoreOp::Commit,
        _ => StoreOp::Release,
    } as usize;
    g.errors[i].load(Ordering::Relaxed)
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_reservations_releases_and_deliveries() {
    let Some(r) = TestRedis::shared("replicas_share_reservations_releases_and_deliveries") else {
        return;
    };
    let prefix = unique_prefix("share");
    let (a, b) = pair(&r, &prefix, Duration::from_secs(60)).await;

    let first = take(&a, "tok-1").await.expect("free key");
    assert_eq!(
        take(&b, "tok-1").await.err(),
        Some(Refused::InFlight),
        "in flight on a"
    );
    first.release().await; // the upstream failed through a
    let retry = take(&b, "tok-1").await.expect("the retry through b passes");
    assert_eq!(take(&a, "tok-1").await.err(), Some(Refused::InFlight));
    retry.commit().await;
    assert_eq!(
        take(&a, "tok-1").await.err(),
        Some(Refused::Delivered),
        "delivered via b"
    );
    assert_eq!(take(&b, "tok-1").await.err(), Some(Refused::Delivered));
    // Another signing key is another namespace.
    assert!(a
        .reserve(
            &[MessageKey::new(
                "mailgun",
                SignerId::of(b"another key"),
                b"tok-1"
            )],
            None,
            TTL
        )
        .await
        .is_ok());
    assert_eq!(errors(&a, "reserve") + errors(&b, "commit"), 0);
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_namespaced_digests_holding_a_nonce_then_delivered() {
    let Some(r) = TestRedis::shared("keys_are_namespaced_digests_holding_a_nonce_then_delivered")
    else {
        return;
    };
    let prefix = unique_prefix("keys");
    let (a, _) = pair(&r, &prefix, Duration::from_secs(60)).await;
    let res = take_for(&a, "tok-keys", Duration::from_secs(3600))
        .await
        .expect("free key");
    let mut conn = r.conn();
    let keys: Vec<String> = conn.keys(format!("{prefix}*")).expect("KEYS");
    assert_eq!(keys.len(), 1, "{keys:?}");
    let key = &keys[0];
    let digest = key.strip_prefix(&prefix).expect("prefixed");
    assert_eq!(digest.len(), 32, "128-bit hex digest: {key}");
    assert!(digest.bytes().all(|b| b.is_ascii_hexdigit()));
    let nonce: String = conn.get(key).expect("GET");
    assert_ne!(nonce, "delivered");
    let pttl: i64 = conn.pttl(key).expect("PTTL");
    assert!(pttl > 0 && pttl <= 60_000, "in-flight TTL: {pttl}");

    res.commit().await;
    let value: String = conn.get(key).expect("GET");
    assert_eq!(value, "delivered");
    let pttl: i64 = conn.pttl(key).expect("PTTL");
    assert!(pttl > 60_000 && pttl <= 3_600_000, "full TTL: {pttl}");
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holder_can_neither_free_nor_commit_a_newer_reservation() {
    let Some(r) =
        TestRedis::shared("a_stale_holder_can_neither_free_nor_commit_a_newer_reservation")
    else {
        return;
    };
    let prefix = unique_prefix("stale");
    let (a, b) = pair(&r, &prefix, Duration::from_millis(300)).await;
    let old_release = take(&a, "k1").await.expect("free");
    let old_commit = take(&a, "k2").await.expect("free");
    tokio::time::sleep(Duration::from_millis(700)).await; // the in-flight TTL lapses in Redis
    let new1 = take(&b, "k1").await.expect("lapsed: free again");
    let new2 = take(&b, "k2").await.expect("lapsed: free again");

    old_release.release().await;
    assert_eq!(
        take(&b, "k1").await.err(),
        Some(Refused::InFlight),
        "b still holds k1"
    );
    old_commit.commit().await;
    // a remembers its own delivery locally; in Redis, b's reservation was left alone.
    let mut conn = r.conn();
    let keys: Vec<String> = conn.keys(format!("{prefix}*")).expect("KEYS");
    for k in &keys {
        let v: String = conn.get(k).expect("GET");
        assert_ne!(
            v, "delivered",
            "a stale commit overwrote a newer reservation"
        );
    }
    new2.release().await;
    assert!(take(&b, "k2").await.is_ok(), "b's release freed k2");
    drop(new1);
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_keys_expire_and_the_local_cache_answers_first() {
    let Some(r) = TestRedis::shared("delivered_keys_expire_and_the_local_cache_answers_first")
    else {
        return;
    };
    let prefix = unique_prefix("ttl");
    let (a, b) = pair(&r, &prefix, Duration::from_secs(60)).await;
    take_for(&a, "short", Duration::from_millis(300))
        .await
        .unwrap()
        .commit()
        .await;
    assert!(take(&b, "short").await.is_err());
    tokio::time::sleep(Duration::from_millis(800)).await;
    take(&b, "short")
        .await
        .expect("expired in Redis")
        .commit()
        .await;

    // Delivered through a: a refuses from its local cache even when Redis forgot the key.
    take(&a, "local").await.unwrap().commit().await;
    let mut conn = r.conn();
    let keys: Vec<String> = conn.keys(format!("{prefix}*")).expect("KEYS");
    let _: () = conn.del(keys).expect("DEL");
    assert_eq!(take(&a, "local").await.err(), Some(Refused::Delivered));
    assert!(
        take(&b, "local").await.is_ok(),
        "b asks Redis, which forgot"
    );
    assert!(!a.is_empty());
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_reservation_is_released_in_the_background() {
    let Some(r) = TestRedis::shared("a_dropped_reservation_is_released_in_the_background") else {
        return;
    };
    let prefix = unique_prefix("drop");
    let (a, b) = pair(&r, &prefix, Duration::from_secs(60)).await;
    drop(take(&a, "dropped").await.unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match take(&b, "dropped").await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e, Refused::InFlight);
                assert!(Instant::now() < deadline, "the drop never released the key");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_rejects_or_allows_as_configured() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let url = format!("redis://127.0.0.1:{port}");
    let in_flight = Duration::from_secs(60);
    let reject = guard_on(&url, "x:", OnStoreError::Reject, in_flight, false).await;
    let allow = guard_on(&url, "x:", OnStoreError::Allow, in_flight, false).await;
    let started = Instant::now();
    assert_eq!(
        take(&reject, "k").await.err(),
        Some(Refused::StoreUnavailable)
    );
    let res = take(&allow, "k").await.expect("allow forwards unprotected");
    assert!(started.elapsed() < Duration::from_secs(10), "fails fast");
    res.commit().await;
    assert_eq!(errors(&reject, "reserve"), 1);
    assert_eq!(errors(&allow, "reserve"), 1);
    assert_eq!(errors(&allow, "commit"), 1);
    // The delivery is remembered locally all the same.
    assert_eq!(take(&allow, "k").await.err(), Some(Refused::Delivered));
}

#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_store_times_out_and_recovers() {
    let Some(mut r) = TestRedis::private("a_hung_store_times_out_and_recovers") else {
        return;
    };
    let prefix = unique_prefix("hung");
    let a = guard_on(
        &r.url,
        &prefix,
        OnStoreError::Reject,
        Duration::from_secs(60),
        true,
    )
    .await;
    take(&a, "before").await.expect("up").commit().await;

    r.pause(true);
    let started = Instant::now();
    assert_eq!(
        take(&a, "during").await.err(),
        Some(Refused::StoreUnavailable)
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded by redis_timeout: {:?}",
        started.elapsed()
    );
    r.pause(false);

    // Back: the key the failed attempt may have taken is freed, and requests pass again.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match take(&a, "during").await {
            Ok(res) => {
                res.commit().await;
                break;
            }
            Err(_) => {
                assert!(Instant::now() < deadline, "no recovery after SIGCONT");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    // Killed and restarted (empty): the ConnectionManager reconnects by itself.
    r.stop();
    assert_eq!(
        take(&a, "down").await.err(),
        Some(Refused::StoreUnavailable)
    );
    r.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while take(&a, "after-restart").await.is_err() {
        assert!(Instant::now() < deadline, "no reconnect after a restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(errors(&a, "reserve") >= 2);
}

/// A key released with a body binding (Mailgun) takes back only that body, on any replica.
#[cfg_attr(
    not(hookguard_redis),
    ignore = "needs redis-server on PATH (apt-get install redis-server)"
)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_bound_key_takes_back_only_its_body_across_replicas() {
    let Some(r) = TestRedis::shared("a_released_bound_key_takes_back_only_its_body") else {
        return;
    };
    let prefix = unique_prefix("bound");
    let (a, b) = pair(&r, &prefix, Duration::from_secs(60)).await;
    let k = key("bound-token");
    let body = |b: &'static [u8]| Some(Binding::new(bytes::Bytes::from_static(b)));
    a.reserve(&k, body(b"one"), TTL)
        .await
        .expect("free")
        .release()
        .await;
    let mut conn = r.conn();
    let keys: Vec<String> = conn.keys(format!("{prefix}*")).expect("KEYS");
    let value: String = conn.get(&keys[0]).expect("GET");
    let one = crate::message::digest(&[b"one"]);
    assert_eq!(
        value,
        format!("r:{one:032x}"),
        "released, bound to body one"
    );
    assert_eq!(
        b.reserve(&k, body(b"two"), TTL).await.err(),
        Some(Refused::InFlight),
        "another body is refused"
    );
    assert_eq!(
        b.reserve(&k, None, TTL).await.err(),
        Some(Refused::InFlight)
    );
    b.reserve(&k, body(b"one"), TTL)
        .await
        .expect("the same body is taken back")
        .commit()
        .await;
    assert_eq!(
        a.reserve(&k, body(b"one"), TTL).await.err(),
        Some(Refused::Delivered)
    );
}
