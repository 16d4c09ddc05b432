//! The shared replay store: reservations in Redis, so that replicas behind one load balancer
//! forward each message once between them.
//!
//! - reserve: `SET <prefix><digest> <nonce> NX PX <in-flight TTL>`; the nonce is unique to
//!   this reservation (a random instance id and a counter);
//! - commit (upstream 2xx): a Lua script sets the key to `delivered` for the full TTL, only if
//!   it still holds our nonce (or has lapsed): a stale holder never overwrites another
//!   request's reservation;
//! - release (anything else): a Lua script deletes the key only if it still holds our nonce.
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

use super::Key;
use crate::config::RedisSettings;

const COMMIT: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] or not v then
  redis.call('SET', KEYS[1], 'delivered', 'PX', ARGV[2])
  return 1
end
return 0
";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

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
    commit: Script,
    release: Script,
}

/// A client for the configured URL; for `rediss://` with a private CA or a client
/// certificate, one built with that material (otherwise the system's roots are trusted).
fn client(settings: &RedisSettings) -> redis::RedisResult<Client> {
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

    /// The value stored for reservation `n` of this process.
    pub fn nonce(&self, n: u64) -> String {
        format!("{}-{n:x}", self.inner.instance)
    }

    /// `SET NX PX`: true if the key is now ours, false if someone holds it.
    pub async fn reserve(
        &self,
        digest: Key,
        nonce: u64,
        in_flight: Duration,
    ) -> Result<bool, StoreError> {
        self.inner
            .reserve(digest, &self.nonce(nonce), in_flight)
            .await
    }

    /// Sets the key to `delivered` for `ttl` if it holds `nonce` or has lapsed. Ok(false):
    /// another request holds it (ours had lapsed and was taken): left alone.
    pub async fn commit(
        &self,
        digest: Key,
        nonce: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        self.inner.commit(digest, nonce, ttl).await
    }

    /// Deletes the key if it holds `nonce`.
    pub async fn release(&self, digest: Key, nonce: &str) -> Result<bool, StoreError> {
        self.inner.release(digest, nonce).await
    }

    /// Releases in the background, retrying while the store is unreachable, for at most
    /// `within` (after that the reservation has lapsed by itself).
    pub fn spawn_release(&self, digest: Key, nonce: String, within: Duration) {
        let inner = Arc::clone(&self.inner);
        self.handle.spawn(async move {
            retry(within, || inner.release(digest, &nonce)).await;
        });
    }

    /// Commits in the background, retrying while the store is unreachable, for at most
    /// `within` (while the reservation lasts, other replicas refuse copies anyway).
    pub fn spawn_commit(&self, digest: Key, nonce: String, ttl: Duration, within: Duration) {
        let inner = Arc::clone(&self.inner);
        self.handle.spawn(async move {
            if retry(within, || inner.commit(digest, &nonce, ttl)).await {
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
    fn key(&self, digest: Key) -> String {
        format!("{}{digest:032x}", self.prefix)
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
        digest: Key,
        nonce: &str,
        in_flight: Duration,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(digest))
            .arg(nonce)
            .arg("NX")
            .arg("PX")
            .arg(millis(in_flight));
        let set: Option<String> = self.bounded(cmd.query_async(&mut conn)).await?;
        Ok(set.is_some())
    }

    async fn commit(&self, digest: Key, nonce: &str, ttl: Duration) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let mut call = self.commit.key(self.key(digest));
        call.arg(nonce).arg(millis(ttl));
        let done: i64 = self.bounded(call.invoke_async(&mut conn)).await?;
        Ok(done == 1)
    }

    async fn release(&self, digest: Key, nonce: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn()?;
        let mut call = self.release.key(self.key(digest));
        call.arg(nonce);
        let done: i64 = self.bounded(call.invoke_async(&mut conn)).await?;
        Ok(done == 1)
    }
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
