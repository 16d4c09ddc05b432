//! The shared replay store: reservations in Redis, so that replicas behind one load balancer
//! forward each message once between them.
//!
//! A key `<prefix><32 hex digits of the message key>` holds one of:
//! - `f:<lease>:<binding>` while a request holds it (the lease is unique to the reservation: a
//!   random instance id and a counter; the binding is the body digest, or `-`), for at most
//!   the in-flight TTL;
//! - `r:<binding>` once a delivery of a message whose signature does not cover its body
//!   failed: the retry may bring that body and no other, until the message's window closes;
//! - `delivered` once the upstream accepted it, for the key's full TTL.
//!
//! Each step is one Lua script, so the check and the change are atomic: reserve takes a free
//! key (or a released one, with the same binding); commit and release act only while the key
//! still holds the caller's lease (commit also when it has lapsed), so a stale holder can
//! never commit or free another request's reservation.
//!
//! Commands run over a [`ConnectionManager`] (one multiplexed connection, reconnected when
//! it breaks), each bounded by `replay.redis_timeout`. The connection and its background
//! tasks live on a small runtime of their own, so they neither depend on a request's runtime
//! nor stall behind one; background retries and drop-time releases run there too.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};
use tokio::runtime::{Handle, Runtime};

use crate::config::RedisSettings;
use crate::message::MessageKey;

/// ARGV: lease, binding (`-` for none), in-flight TTL (ms). Returns 1 taken, 2 delivered,
/// 3 in flight, 4 bound to another body.
const RESERVE: &str = r"
local v = redis.call('GET', KEYS[1])
local held = 'f:' .. ARGV[1] .. ':' .. ARGV[2]
if not v then
  redis.call('SET', KEYS[1], held, 'PX', ARGV[3])
  return 1
end
if v == 'delivered' then
  return 2
end
if string.sub(v, 1, 2) == 'r:' then
  if string.sub(v, 3) == ARGV[2] then
    redis.call('SET', KEYS[1], held, 'PX', ARGV[3])
    return 1
  end
  return 4
end
return 3
";

/// ARGV: `f:<lease>:`, TTL (ms).
const COMMIT: &str = r"
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], 'delivered', 'PX', ARGV[2])
  return 1
end
return 0
";

/// ARGV: `f:<lease>:`, binding (`-` for none), how long a binding is kept (ms).
const RELEASE: &str = r"
local v = redis.call('GET', KEYS[1])
if v and string.sub(v, 1, #ARGV[1]) == ARGV[1] then
  if ARGV[2] ~= '-' then
    redis.call('SET', KEYS[1], 'r:' .. ARGV[2], 'PX', ARGV[3])
  else
    redis.call('DEL', KEYS[1])
  end
  return 1
end
return 0
";

/// What the store said to a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    Taken,
    Delivered,
    InFlight,
    OtherBody,
}

/// Why the store could not answer. Never carries the URL (it may hold a password).
#[derive(Debug)]
pub enum StoreError {
    /// No connection has been established yet.
    NotConnected,
    /// No answer within `replay.redis_timeout`.
    Timeout(Duration),
    Redis(redis::RedisError),
}

impl StoreError {
    /// Whether the command may have reached Redis and been applied although no answer came.
    pub fn may_have_applied(&self) -> bool {
        match self {
            StoreError::NotConnected => false,
            StoreError::Timeout(_) => true,
            StoreError::Redis(e) => !e.is_connection_refusal(),
        }
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::NotConnected => f.write_str("not connected to Redis (yet)"),
            StoreError::Timeout(t) => write!(f, "no answer from Redis within {t:?}"),
            StoreError::Redis(e) => write!(f, "Redis: {e}"),
        }
    }
}

struct Inner {
    conn: ArcSwapOption<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    /// Random per process: nonces of different replicas never collide.
    instance: String,
    reserve: Script,
    commit: Script,
    release: Script,
}

/// A client for the configured URL; for `rediss://` with a private CA or a client
/// certificate, one built with that material (otherwise the system's roots are trusted).
pub(super) fn client(settings: &RedisSettings) -> redis::RedisResult<Client> {
    // rustls needs a process-wide crypto provider; ring is the one compiled in. An error
    // here means one is installed already, which is as good.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tls = &settings.tls;
    if tls.is_empty() {
        return Client::open(settings.url.expose());
    }
    Client::build_with_tls(
        settings.url.expose(),
        redis::TlsCertificates {
            client_tls: tls.client.as_ref().map(|c| redis::ClientTlsConfig {
                client_cert: c.cert.clone(),
                client_key: c.key.expose().as_bytes().to_vec(),
            }),
            root_cert: tls.ca_cert.clone(),
        },
    )
}

pub struct RedisStore {
    inner: Arc<Inner>,
    handle: Handle,
    /// Owned here; shut down in the background on drop (dropping a runtime from async code
    /// would panic).
    runtime: Option<Runtime>,
}

impl RedisStore {
    /// Starts connecting in the background; until connected, every call fails with
    /// [`StoreError::NotConnected`] (and `on_store_error` decides). Fails only if the
    /// runtime's thread cannot be started.
    pub fn new(settings: &RedisSettings) -> std::io::Result<Self> {
        let inner = Arc::new(Inner {
            conn: ArcSwapOption::empty(),
            prefix: settings.prefix.clone(),
            timeout: settings.timeout,
            instance: instance_id(),
            reserve: Script::new(RESERVE),
            commit: Script::new(COMMIT),
            release: Script::new(RELEASE),
        });
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hookguard-redis")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        match client(settings) {
            Ok(client) => {
                handle.spawn(connect(
                    Arc::clone(&inner),
                    client,
                    settings.display.clone(),
                ));
            }
            // The config loader has checked the URL and the PEM files already; the error
            // could quote the URL.
            Err(_) => tracing::error!(redis = %settings.display, "invalid Redis URL or TLS files"),
        }
        Ok(RedisStore {
            inner,
            handle,
            runtime: Some(runtime),
        })
    }

    /// Whether a connection has been established (it may be reconnecting).
    pub fn is_connected(&self) -> bool {
        self.inner.conn.load().is_some()
    }

    /// The lease of reservation `n` of this process.
    pub fn nonce(&self, n: u64) -> String {
        format!("{}-{n:x}", self.inner.instance)
    }

    /// Takes `key` for `lease` unless it is delivered, held, or bound to another body.
    pub async fn reserve(
        &self,
        key: MessageKey,
        lease: &str,
        binding: Option<u128>,
        in_flight: Duration,
    ) -> Result<Reply, StoreError> {
        self.inner.reserve(key, lease, binding, in_flight).await
    }

    /// Sets the key to `delivered` for `ttl` if `lease` holds it or it has lapsed. Ok(false):
    /// another request holds it (ours had lapsed and was taken): left alone.
    pub async fn commit(
        &self,
        key: MessageKey,
        lease: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.commit(key, lease, ttl).await
    }

    /// Frees the key if `lease` holds it; with a binding, keeps it bound to that body for
    /// `bound_for`.
    pub async fn release(
        &self,
        key: MessageKey,
        lease: &str,
        binding: Option<u128>,
        bound_for: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.release(key, lease, binding, bound_for).await
    }

    /// Releases in the background, retrying while the store is unreachable, for at most
    /// `within` (after that the reservation has lapsed by itself).
    pub fn spawn_release(
        &self,
        key: MessageKey,
        lease: String,
        binding: Option<u128>,
        bound_for: Duration,
        within: Duration,
    ) {
        let inner = Arc::clone(&self.inner);
        self.handle.spawn(async move {
            retry(within, || inner.release(key, &lease, binding, bound_for)).await;
        });
    }

    /// Commits in the background, retrying while the store is unreachable, for at most
    /// `within` (while the reservation lasts, other replicas refuse copies anyway).
    pub fn spawn_commit(&self, key: MessageKey, lease: String, ttl: Duration, within: Duration) {
        let inner = Arc::clone(&self.inner);
        self.handle.spawn(async move {
            if retry(within, || inner.commit(key, &lease, ttl)).await {
                tracing::info!("replay store: delivery recorded after a retry");
            } else {
                tracing::warn!("replay store: delivery could not be recorded; other replicas may forward a copy");
            }
        });
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Inner {
    fn key(&self, key: MessageKey) -> String {
        format!("{}{:032x}", self.prefix, key.0)
    }

    fn conn(&self) -> Result<ConnectionManager, StoreError> {
        self.conn
            .load_full()
            .map(|c| (*c).clone())
            .ok_or(StoreError::NotConnected)
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Redis(e)),
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    async fn reserve(
        &self,
        key: MessageKey,
        lease: &str,
        binding: Option<u128>,
        in_flight: Duration,
    ) -> Result<Reply, StoreError> {
        let mut conn = self.conn()?;
        let mut call = self.reserve.key(self.key(key));
        call.arg(lease)
            .arg(binding_arg(binding))
            .arg(millis(in_flight));
        let answer: i64 = self.bounded(call.invoke_async(&mut conn)).await?;
        Ok(match answer {
            1 => Reply::Taken,
            2 => Reply::Delivered,
            4 => Reply::OtherBody,
            _ => Reply::InFlight,
        })
    }

    async fn commit(
        &self,
        key: MessageKey,
        lease: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let mut call = self.commit.key(self.key(key));
        call.arg(held_prefix(lease)).arg(millis(ttl));
        let done: i64 = self.bounded(call.invoke_async(&mut conn)).await?;
        Ok(done == 1)
    }

    async fn release(
        &self,
        key: MessageKey,
        lease: &str,
        binding: Option<u128>,
        bound_for: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let mut call = self.release.key(self.key(key));
        call.arg(held_prefix(lease))
            .arg(binding_arg(binding))
            .arg(millis(bound_for));
        let done: i64 = self.bounded(call.invoke_async(&mut conn)).await?;
        Ok(done == 1)
    }
}

/// The start of the value a key holds while `lease` has it.
fn held_prefix(lease: &str) -> String {
    format!("f:{lease}:")
}

fn binding_arg(binding: Option<u128>) -> String {
    binding.map_or_else(|| "-".to_owned(), |b| format!("{b:032x}"))
}

/// Calls `op` until it answers, with backoff, for at most `within`. True if it answered.
async fn retry<F, Fut>(within: Duration, mut op: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, StoreError>>,
{
    let deadline = Instant::now() + within;
    let mut delay = Duration::from_millis(100);
    loop {
        if op().await.is_ok() {
            return true;
        }
        if Instant::now() + delay > deadline {
            return false;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Connects, retrying with backoff until it succeeds; the [`ConnectionManager`] then
/// reconnects by itself whenever the connection breaks.
async fn connect(inner: Arc<Inner>, client: Client, shown: String) {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(inner.timeout)
        .set_response_timeout(inner.timeout)
        // Reconnection attempts after a break, each bounded by the connection timeout;
        // requests meanwhile fail within `redis_timeout`, and the next one that finds the
        // connection still broken starts a new round.
        .set_number_of_retries(3)
        .set_factor(100)
        .set_max_delay(1000);
    let mut delay = Duration::from_millis(200);
    let mut logged = false;
    loop {
        let attempt = ConnectionManager::new_with_config(client.clone(), config.clone());
        match tokio::time::timeout(inner.timeout * 8, attempt).await {
            Ok(Ok(conn)) => {
                inner.conn.store(Some(Arc::new(conn)));
                tracing::info!(redis = %shown, "replay store connected");
                return;
            }
            Ok(Err(e)) if !logged => {
                tracing::warn!(redis = %shown, error = %e, "replay store unreachable; retrying in the background");
                logged = true;
            }
            Err(_) if !logged => {
                tracing::warn!(redis = %shown, "replay store does not answer; retrying in the background");
                logged = true;
            }
            _ => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// 64 random bits (hex), or the process id and start time should the OS refuse randomness.
fn instance_id() -> String {
    match getrandom::u64() {
        Ok(n) => format!("{n:016x}"),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            format!("{:x}{nanos:x}", std::process::id())
        }
    }
}
