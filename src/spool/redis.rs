//! The shared spool (`spool.backend: redis`): several replicas keep their messages in the Redis
//! the replay guard already uses, under its prefix plus `spool:`, and deliver them between
//! them.
//!
//! Keys (`P` = `replay.redis_prefix` + `spool:`):
//! - `P m:<seq>`: a message, a hash: its envelope (JSON), body, upstream, state (`queued` or
//!   `dead`), attempts, finished attempts, client errors, ambiguous attempts, when it is next
//!   due, its last result, its size, and `holder`: the replica delivering it right now;
//! - `P due`: the queued messages by when they are due (a sorted set, members the sequence
//!   number zero-padded, so that messages due at the same time go in arrival order);
//! - `P queued`, `P dead`: the messages of each state in arrival order (sorted sets);
//! - `P d:<key>`: a message key seen, for `dedup_ttl` (Redis expires it);
//! - `P meta`: counters (the next sequence number; queued and dead counts and bytes; the
//!   totals enqueued, delivered and ambiguous).
//!
//! Every change is one Lua script, so it is atomic: an enqueue checks every key of the
//! message and the `max_bytes` bound and writes the message and its keys, or nothing; a copy
//! sent to any replica is a duplicate.
//!
//! **Leases, not a consumer group.** An attempt starts with a script that takes the message
//! only if it is due, records the attempt and the replica, and moves the message's due time to
//! the end of its lease (`spool.redis_lease`, longer than an attempt can last). No other
//! replica sees it due until then. The attempt's result is recorded only while the attempt is
//! still the message's last one and the replica still its holder. A replica that dies
//! mid-delivery records nothing: when its lease ends, the message is due again, any replica
//! takes it, and the unfinished attempt is counted ambiguous (it may have reached the
//! application). This is what a stream's consumer group gives (pending entries, `XAUTOCLAIM`
//! after an idle time), but in the one structure the scheduler needs anyway for retries with
//! backoff, `Retry-After`, waking a recovered upstream's backlog and oldest-due-first order,
//! which a stream (delivered in arrival order) cannot express; and the delivery code is the
//! same as the embedded store's.
//!
//! The scripts name keys they compute (the sequence number is made in the script), so the
//! spool needs one Redis (a primary with replicas, Sentinel), not Redis Cluster.
//!
//! The connection and its tasks run on a small runtime of their own, as the replay store's
//! do; every call is bounded by `replay.redis_timeout`. Messages and errors never carry the
//! Redis URL (it may hold a password).
//!
//! Longer than 500 lines: the six Lua scripts that make each operation one atomic step (about
//! 160 lines), the start-time durability checks, and the backend's operations, which read
//! best in one file next to the scripts they call.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::runtime::{Handle, Runtime};

use super::{
    now_ms, Enqueued, Envelope, Filter, Finish, Incoming, Record, SpoolBackend, SpoolError,
    Started, State, StoreStats,
};
use crate::config::{RedisSettings, SpoolSettings};

/// ARGV: prefix, now, max bytes, dedup TTL (ms), bytes, envelope, body, upstream, received,
/// number of keys, keys. Returns the sequence number; -1 a duplicate; -2 full.
const ENQUEUE: &str = r"
local P = ARGV[1]
local n = tonumber(ARGV[10])
for i = 1, n do
  if redis.call('EXISTS', P .. 'd:' .. ARGV[10 + i]) == 1 then return -1 end
end
local meta = P .. 'meta'
local bytes = tonumber(ARGV[5])
local held = tonumber(redis.call('HGET', meta, 'queued_bytes') or '0')
  + tonumber(redis.call('HGET', meta, 'dead_bytes') or '0')
if held + bytes > tonumber(ARGV[3]) then return -2 end
local seq = redis.call('HINCRBY', meta, 'next_seq', 1)
local member = string.format('%020d', seq)
redis.call('HSET', P .. 'm:' .. seq, 'env', ARGV[6], 'body', ARGV[7], 'upstream', ARGV[8],
  'state', 'queued', 'attempts', 0, 'finished', 0, 'client_errors', 0, 'ambiguous', 0,
  'next_ms', ARGV[2], 'received', ARGV[9], 'bytes', bytes, 'holder', '')
redis.call('ZADD', P .. 'due', ARGV[2], member)
redis.call('ZADD', P .. 'queued', seq, member)
redis.call('HINCRBY', meta, 'queued', 1)
redis.call('HINCRBY', meta, 'queued_bytes', bytes)
redis.call('HINCRBY', meta, 'enqueued_total', 1)
for i = 1, n do
  redis.call('SET', P .. 'd:' .. ARGV[10 + i], seq, 'PX', ARGV[4])
end
return seq
";

/// ARGV: prefix, seq, now, lease end, holder. Returns the attempts counted ambiguous now (the
/// previous one had not finished) and the message (HGETALL), or nil when it is not queued or
/// not due (another replica holds it).
const START: &str = r"
local P = ARGV[1]
local m = P .. 'm:' .. ARGV[2]
local member = string.format('%020d', tonumber(ARGV[2]))
if redis.call('HGET', m, 'state') ~= 'queued' then return false end
local due = redis.call('ZSCORE', P .. 'due', member)
if not due or tonumber(due) > tonumber(ARGV[3]) then return false end
local attempts = tonumber(redis.call('HGET', m, 'attempts'))
local unknown = attempts - tonumber(redis.call('HGET', m, 'finished'))
if unknown > 0 then
  redis.call('HINCRBY', m, 'ambiguous', unknown)
  redis.call('HINCRBY', P .. 'meta', 'ambiguous_total', unknown)
end
redis.call('HSET', m, 'attempts', attempts + 1, 'finished', attempts, 'holder', ARGV[5])
redis.call('ZADD', P .. 'due', ARGV[4], member)
return {unknown, redis.call('HGETALL', m)}
";

/// ARGV: prefix, seq, attempt, holder, kind (`delivered`, `retry`, `dead`), next ms, note,
/// client error (0/1), ambiguous (0/1), reason. Returns 1 recorded, 0 ignored (the attempt
/// is not the message's last one, or another replica holds it).
const FINISH: &str = r"
local P = ARGV[1]
local seq = tonumber(ARGV[2])
local m = P .. 'm:' .. ARGV[2]
local member = string.format('%020d', seq)
local meta = P .. 'meta'
local f = redis.call('HMGET', m, 'state', 'attempts', 'holder', 'bytes')
if f[1] ~= 'queued' or tonumber(f[2]) ~= tonumber(ARGV[3]) or f[3] ~= ARGV[4] then
  return 0
end
local bytes = tonumber(f[4])
if ARGV[5] == 'delivered' then
  redis.call('DEL', m)
  redis.call('ZREM', P .. 'due', member)
  redis.call('ZREM', P .. 'queued', member)
  redis.call('HINCRBY', meta, 'queued', -1)
  redis.call('HINCRBY', meta, 'queued_bytes', -bytes)
  redis.call('HINCRBY', meta, 'delivered_total', 1)
elseif ARGV[5] == 'retry' then
  redis.call('HSET', m, 'finished', ARGV[3], 'next_ms', ARGV[6], 'last', ARGV[7], 'holder', '')
  redis.call('HINCRBY', m, 'client_errors', ARGV[8])
  if ARGV[9] == '1' then
    redis.call('HINCRBY', m, 'ambiguous', 1)
    redis.call('HINCRBY', meta, 'ambiguous_total', 1)
  end
  redis.call('ZADD', P .. 'due', ARGV[6], member)
else
  redis.call('HSET', m, 'finished', ARGV[3], 'state', 'dead', 'reason', ARGV[10],
    'last', ARGV[7], 'holder', '')
  redis.call('ZREM', P .. 'due', member)
  redis.call('ZREM', P .. 'queued', member)
  redis.call('ZADD', P .. 'dead', seq, member)
  redis.call('HINCRBY', meta, 'queued', -1)
  redis.call('HINCRBY', meta, 'queued_bytes', -bytes)
  redis.call('HINCRBY', meta, 'dead', 1)
  redis.call('HINCRBY', meta, 'dead_bytes', bytes)
end
return 1
";

/// ARGV: prefix, upstream, now. Queued messages to the upstream that no replica is
/// delivering made due now; returns how many. (A scan of the queued messages: it runs when
/// an upstream comes back, not per message.)
const WAKE: &str = r"
local P = ARGV[1]
local n = 0
for _, member in ipairs(redis.call('ZRANGE', P .. 'queued', 0, -1)) do
  local m = P .. 'm:' .. tonumber(member)
  local f = redis.call('HMGET', m, 'upstream', 'holder', 'next_ms')
  if f[1] == ARGV[2] and (not f[2] or f[2] == '') and f[3] ~= ARGV[3] then
    redis.call('ZADD', P .. 'due', ARGV[3], member)
    redis.call('HSET', m, 'next_ms', ARGV[3])
    n = n + 1
  end
end
return n
";

/// ARGV: prefix, seq, now. A dead message queued again, or a queued one made due now (unless
/// a replica is delivering it: its lease stands); returns 1, or 0 if there is no such
/// message.
const RETRY_ONE: &str = r"
local P = ARGV[1]
local seq = tonumber(ARGV[2])
local m = P .. 'm:' .. ARGV[2]
local member = string.format('%020d', seq)
local meta = P .. 'meta'
local f = redis.call('HMGET', m, 'state', 'bytes', 'holder')
if not f[1] then return 0 end
if f[1] == 'dead' then
  local bytes = tonumber(f[2])
  redis.call('ZREM', P .. 'dead', member)
  redis.call('ZADD', P .. 'queued', seq, member)
  redis.call('HINCRBY', meta, 'dead', -1)
  redis.call('HINCRBY', meta, 'dead_bytes', -bytes)
  redis.call('HINCRBY', meta, 'queued', 1)
  redis.call('HINCRBY', meta, 'queued_bytes', bytes)
  redis.call('HSET', m, 'state', 'queued', 'holder', '')
  redis.call('HDEL', m, 'reason')
  redis.call('ZADD', P .. 'due', ARGV[3], member)
elseif not f[3] or f[3] == '' then
  redis.call('ZADD', P .. 'due', ARGV[3], member)
end
redis.call('HSET', m, 'next_ms', ARGV[3], 'client_errors', 0, 'received', ARGV[3])
return 1
";

/// ARGV: prefix, seq. The message deleted (its keys stay); returns 1, or 0 if there is none.
const PURGE_ONE: &str = r"
local P = ARGV[1]
local m = P .. 'm:' .. ARGV[2]
local member = string.format('%020d', tonumber(ARGV[2]))
local meta = P .. 'meta'
local f = redis.call('HMGET', m, 'state', 'bytes')
if not f[1] then return 0 end
local bytes = tonumber(f[2])
redis.call('DEL', m)
if f[1] == 'queued' then
  redis.call('ZREM', P .. 'due', member)
  redis.call('ZREM', P .. 'queued', member)
  redis.call('HINCRBY', meta, 'queued', -1)
  redis.call('HINCRBY', meta, 'queued_bytes', -bytes)
else
  redis.call('ZREM', P .. 'dead', member)
  redis.call('HINCRBY', meta, 'dead', -1)
  redis.call('HINCRBY', meta, 'dead_bytes', -bytes)
end
return 1
";

/// A message's fields other than its body, as `list` reads them.
const FIELDS: [&str; 13] = [
    "env",
    "upstream",
    "state",
    "reason",
    "attempts",
    "finished",
    "client_errors",
    "ambiguous",
    "next_ms",
    "last",
    "received",
    "bytes",
    "holder",
];

/// Messages read per round trip by `list`.
const LIST_CHUNK: usize = 500;

/// Connection attempts at start, each bounded by 8 × `replay.redis_timeout`.
const CONNECT_ATTEMPTS: u32 = 5;

/// What the spool knows of Redis's durability, found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// Every write is synced before Redis answers (`appendfsync always`).
    Synced,
    /// Something the operator should know (logged as a warning).
    Warning(String),
}

struct Inner {
    conn: ConnectionManager,
    /// `replay.redis_prefix` + `spool:`.
    prefix: String,
    timeout: Duration,
    /// This replica's name on the messages it delivers: host, process id and a random part
    /// (a restarted process is another replica).
    holder: String,
    lease: Duration,
    max_bytes: u64,
    dedup_ttl: Duration,
    on_commit: Box<dyn Fn(Duration) + Send + Sync>,
    enqueue: Script,
    start: Script,
    finish: Script,
    wake: Script,
    retry_one: Script,
    purge_one: Script,
}

/// The spool's store on Redis, shared by every replica configured with the same Redis and
/// prefix.
pub struct RedisSpool {
    inner: Arc<Inner>,
    handle: Handle,
    /// Owned here; shut down in the background on drop (dropping a runtime from async code
    /// would panic).
    runtime: Option<Runtime>,
}

impl Drop for RedisSpool {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Unavailable(format!("Redis: {e}"))
}

impl RedisSpool {
    /// Connects to Redis (retrying a few times: a Redis starting beside hookguard) and returns
    /// the spool; an error when Redis cannot be reached, naming it by `redis.display` (no
    /// password). Called off any async runtime (at start, or by the command line).
    /// `on_commit` sees each enqueue's duration.
    pub fn open(
        redis: &RedisSettings,
        settings: &SpoolSettings,
        on_commit: Box<dyn Fn(Duration) + Send + Sync>,
    ) -> Result<RedisSpool, String> {
        let client = crate::replay::redis_client(redis)
            .map_err(|_| format!("invalid Redis URL or TLS files for {}", redis.display))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hookguard-spool-redis")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the spool's Redis client: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(redis.timeout)
            .set_response_timeout(redis.timeout)
            .set_number_of_retries(3)
            .set_factor(100)
            .set_max_delay(1000);
        let conn = runtime.block_on(async {
            let mut delay = Duration::from_millis(200);
            let mut last = String::new();
            for _ in 0..CONNECT_ATTEMPTS {
                let attempt = ConnectionManager::new_with_config(client.clone(), config.clone());
                match tokio::time::timeout(redis.timeout * 8, attempt).await {
                    Ok(Ok(conn)) => return Ok(conn),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "no answer".into(),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(format!("cannot reach Redis {}: {last}", redis.display))
        })?;
        let inner = Inner {
            conn,
            prefix: format!("{}spool:", redis.prefix),
            timeout: redis.timeout,
            holder: holder_name(),
            lease: settings.redis_lease,
            max_bytes: settings.max_bytes,
            dedup_ttl: settings.dedup_ttl,
            on_commit,
            enqueue: Script::new(ENQUEUE),
            start: Script::new(START),
            finish: Script::new(FINISH),
            wake: Script::new(WAKE),
            retry_one: Script::new(RETRY_ONE),
            purge_one: Script::new(PURGE_ONE),
        };
        Ok(RedisSpool {
            inner: Arc::new(inner),
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// This replica's name on the messages it is delivering.
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// Checks what can be checked of Redis's durability: a message answered 202 must survive
    /// Redis restarting. `Err`: refused (an append-only file off, or a memory policy that
    /// evicts keys), unless `allow_volatile`. Otherwise what to log. Called off any runtime.
    pub fn check_durability(&self, allow_volatile: bool) -> Result<Vec<Durability>, String> {
        let inner = Arc::clone(&self.inner);
        let runtime = self
            .runtime
            .as_ref()
            .ok_or("the spool's Redis client stopped")?;
        let found = runtime.block_on(async move { inner.durability().await });
        let mut notes = Vec::new();
        let mut refusals = Vec::new();
        let config = match found {
            Ok(c) => c,
            Err(e) => {
                notes.push(Durability::Warning(format!(
                    "spool: could not check Redis's persistence (CONFIG GET answered: {e}); make sure it runs with appendonly yes and appendfsync always"
                )));
                return Ok(notes);
            }
        };
        match config.get("appendonly").map(String::as_str) {
            Some("yes") => {}
            Some(_) => refusals.push(
                "Redis keeps no append-only file (appendonly no): a message answered 202 would be lost when Redis restarts. Set appendonly yes (and appendfsync always), or spool.redis_allow_volatile: true to accept the loss",
            ),
            None => notes.push(Durability::Warning(
                "spool: Redis did not say whether appendonly is on; make sure it is".into(),
            )),
        }
        match config.get("appendfsync").map(String::as_str) {
            Some("always") => notes.push(Durability::Synced),
            Some("everysec") => notes.push(Durability::Warning(
                "spool: Redis syncs its append-only file once a second (appendfsync everysec): if Redis itself crashes (or its host loses power), up to about 1 s of messages answered 202 can be lost; appendfsync always closes that window".into(),
            )),
            Some(other) => notes.push(Durability::Warning(format!(
                "spool: Redis leaves syncing its append-only file to the operating system (appendfsync {other}): if its host crashes, the last seconds of messages answered 202 can be lost; appendfsync always closes that window"
            ))),
            None => {}
        }
        let limited = config.get("maxmemory").is_some_and(|m| m != "0");
        let policy = config.get("maxmemory-policy").map_or("", String::as_str);
        if limited && policy != "noeviction" && !policy.is_empty() {
            refusals.push(
                "Redis may evict keys when it is full (maxmemory set, maxmemory-policy not noeviction): queued messages, or the keys that recognise copies, could vanish. Set maxmemory-policy noeviction (a full Redis then answers 503 spool_unavailable), or spool.redis_allow_volatile: true",
            );
        }
        if refusals.is_empty() {
            return Ok(notes);
        }
        if allow_volatile {
            for r in refusals {
                notes.push(Durability::Warning(format!(
                    "spool: {r} (allowed by spool.redis_allow_volatile)"
                )));
            }
            return Ok(notes);
        }
        Err(refusals.join("; "))
    }

    /// Runs `f` on the spool's own runtime (the connection's), whatever runtime calls it.
    async fn run<T, Fut>(&self, f: impl FnOnce(Arc<Inner>) -> Fut) -> Result<T, SpoolError>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T, SpoolError>> + Send + 'static,
    {
        let task = self.handle.spawn(f(Arc::clone(&self.inner)));
        task.await
            .map_err(|_| SpoolError::Unavailable("the spool's Redis client stopped".into()))?
    }
}

/// `host-pid-random`.
fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        crate::random::hex_token(8)
    )
}

fn field_u64(fields: &HashMap<String, Vec<u8>>, name: &str) -> u64 {
    fields
        .get(name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn field_str(fields: &HashMap<String, Vec<u8>>, name: &str) -> Option<String> {
    fields
        .get(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| !v.is_empty())
}

/// A message's record from its hash's fields.
fn record(seq: u64, fields: &HashMap<String, Vec<u8>>) -> Result<Record, SpoolError> {
    let env = fields
        .get("env")
        .ok_or_else(|| SpoolError::Unavailable(format!("message {seq} has no envelope")))?;
    let mut envelope: Envelope = serde_json::from_slice(env)
        .map_err(|e| SpoolError::Unavailable(format!("message {seq}: {e}")))?;
    // A retry by hand starts the message's age over: the hash holds the current one.
    envelope.received_ms = field_u64(fields, "received");
    let state = match field_str(fields, "state").as_deref() {
        Some("dead") => State::Dead {
            reason: field_str(fields, "reason").unwrap_or_default(),
        },
        _ => State::Queued,
    };
    let n = |name: &str| u32::try_from(field_u64(fields, name)).unwrap_or(u32::MAX);
    Ok(Record {
        seq,
        envelope,
        state,
        attempts: n("attempts"),
        finished: n("finished"),
        client_errors: n("client_errors"),
        ambiguous: n("ambiguous"),
        next_ms: field_u64(fields, "next_ms"),
        last: field_str(fields, "last"),
        bytes: field_u64(fields, "bytes"),
    })
}

/// A flat `[field, value, ...]` reply as a map.
fn pairs(flat: Vec<Vec<u8>>) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.insert(String::from_utf8_lossy(&k).into_owned(), v);
    }
    out
}

impl Inner {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SpoolError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(SpoolError::Unavailable(format!(
                "no answer from Redis within {:?}",
                self.timeout
            ))),
        }
    }

    /// `CONFIG GET` of the settings that decide durability; an error when CONFIG is not
    /// allowed (renamed away, or denied by an ACL).
    async fn durability(&self) -> Result<HashMap<String, String>, String> {
        let mut conn = self.conn.clone();
        let mut out = HashMap::new();
        for name in ["appendonly", "appendfsync", "maxmemory", "maxmemory-policy"] {
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("GET").arg(name);
            let reply: Vec<String> =
                match tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err(format!("no answer within {:?}", self.timeout)),
                };
            if let [k, v] = reply.as_slice() {
                out.insert(k.clone(), v.clone());
            }
        }
        Ok(out)
    }

    async fn enqueue(&self, m: Incoming) -> Result<Enqueued, SpoolError> {
        let started = Instant::now();
        let mut conn = self.conn.clone();
        let bytes = m.bytes();
        let envelope = serde_json::to_vec(&m.envelope)
            .map_err(|e| SpoolError::Unavailable(format!("an envelope: {e}")))?;
        let mut call = self.enqueue.prepare_invoke();
        call.arg(&self.prefix)
            .arg(now_ms())
            .arg(self.max_bytes)
            .arg(super::ms(self.dedup_ttl).max(1))
            .arg(bytes)
            .arg(envelope)
            .arg(&m.body[..])
            .arg(&m.envelope.upstream)
            .arg(m.envelope.received_ms)
            .arg(m.keys.len());
        for key in &m.keys {
            call.arg(format!("{key:032x}"));
        }
        let seq: i64 = self.bounded(call.invoke_async(&mut conn)).await?;
        (self.on_commit)(started.elapsed());
        match seq {
            -1 => Ok(Enqueued::Duplicate),
            -2 => Err(SpoolError::Full("spool.max_bytes reached")),
            seq => Ok(Enqueued::Queued(u64::try_from(seq).unwrap_or(0))),
        }
    }

    async fn start(&self, seq: u64) -> Result<Option<Started>, SpoolError> {
        let mut conn = self.conn.clone();
        let now = now_ms();
        let lease_end = now.saturating_add(super::ms(self.lease));
        let mut call = self.start.prepare_invoke();
        call.arg(&self.prefix)
            .arg(seq)
            .arg(now)
            .arg(lease_end)
            .arg(&self.holder);
        let reply: Option<(i64, Vec<Vec<u8>>)> = self.bounded(call.invoke_async(&mut conn)).await?;
        let Some((unknown, flat)) = reply else {
            return Ok(None);
        };
        let fields = pairs(flat);
        let record = record(seq, &fields)?;
        let body = fields
            .get("body")
            .cloned()
            .map(Bytes::from)
            .unwrap_or_default();
        // The previous attempt never finished: its replica died (or lost its lease) while
        // the application may have had the message.
        Ok(Some((Box::new(record), body, unknown > 0)))
    }
}

#[async_trait]
impl SpoolBackend for RedisSpool {
    async fn enqueue(&self, message: Incoming) -> Result<Enqueued, SpoolError> {
        self.run(|inner| async move { inner.enqueue(message).await })
            .await
    }

    async fn start(&self, seq: u64) -> Result<Option<Started>, SpoolError> {
        self.run(move |inner| async move { inner.start(seq).await })
            .await
    }

    async fn finish(&self, seq: u64, attempt: u32, finish: Finish) -> Result<(), SpoolError> {
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut call = inner.finish.prepare_invoke();
            call.arg(&inner.prefix)
                .arg(seq)
                .arg(attempt)
                .arg(&inner.holder);
            match finish {
                Finish::Delivered => call.arg("delivered").arg(0).arg("").arg(0).arg(0).arg(""),
                Finish::Retry {
                    next_ms,
                    note,
                    client_error,
                    ambiguous,
                } => call
                    .arg("retry")
                    .arg(next_ms)
                    .arg(note)
                    .arg(u8::from(client_error))
                    .arg(u8::from(ambiguous))
                    .arg(""),
                Finish::Dead { reason, note } => call
                    .arg("dead")
                    .arg(0)
                    .arg(note)
                    .arg(0)
                    .arg(0)
                    .arg(reason),
            };
            let recorded: i64 = inner.bounded(call.invoke_async(&mut conn)).await?;
            if recorded == 0 {
                tracing::warn!(
                    seq,
                    attempt,
                    "spool: an attempt's result came after its lease ended and the message was taken over (or purged); not recorded"
                );
            }
            Ok(())
        })
        .await
    }

    async fn wake(&self, upstream: &str) -> Result<usize, SpoolError> {
        let upstream = upstream.to_owned();
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut call = inner.wake.prepare_invoke();
            call.arg(&inner.prefix).arg(upstream).arg(now_ms());
            let n: u64 = inner.bounded(call.invoke_async(&mut conn)).await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
        .await
    }

    async fn retry(&self, filter: Filter) -> Result<usize, SpoolError> {
        let seqs: Vec<u64> = self.list(&filter).await?.iter().map(|r| r.seq).collect();
        self.run(move |inner| async move {
            let mut n = 0;
            for seq in seqs {
                let mut conn = inner.conn.clone();
                let mut call = inner.retry_one.prepare_invoke();
                call.arg(&inner.prefix).arg(seq).arg(now_ms());
                let done: u64 = inner.bounded(call.invoke_async(&mut conn)).await?;
                n += usize::from(done == 1);
            }
            Ok(n)
        })
        .await
    }

    async fn purge(&self, filter: Filter) -> Result<usize, SpoolError> {
        let seqs: Vec<u64> = self.list(&filter).await?.iter().map(|r| r.seq).collect();
        self.run(move |inner| async move {
            let mut n = 0;
            for seq in seqs {
                let mut conn = inner.conn.clone();
                let mut call = inner.purge_one.prepare_invoke();
                call.arg(&inner.prefix).arg(seq);
                let done: u64 = inner.bounded(call.invoke_async(&mut conn)).await?;
                n += usize::from(done == 1);
            }
            Ok(n)
        })
        .await
    }

    /// Redis forgets the keys itself (each is written with `dedup_ttl`).
    async fn sweep(&self) -> Result<usize, SpoolError> {
        Ok(0)
    }

    async fn due(
        &self,
        now_ms: u64,
        limit: usize,
        newest_first: bool,
        // One sorted set for every upstream: a down upstream's messages are returned too, and
        // skipped by the scheduler.
        _blocked: &[String],
    ) -> Result<Vec<(u64, u64)>, SpoolError> {
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut cmd = if newest_first {
                let mut c = redis::cmd("ZREVRANGEBYSCORE");
                c.arg(inner.key("due")).arg(now_ms).arg("-inf");
                c
            } else {
                let mut c = redis::cmd("ZRANGEBYSCORE");
                c.arg(inner.key("due")).arg("-inf").arg(now_ms);
                c
            };
            cmd.arg("WITHSCORES").arg("LIMIT").arg(0).arg(limit);
            let found: Vec<(String, f64)> = inner.bounded(cmd.query_async(&mut conn)).await?;
            Ok(found
                .into_iter()
                .filter_map(|(m, at)| Some((at as u64, m.parse().ok()?)))
                .collect())
        })
        .await
    }

    async fn next_due(&self, _blocked: &[String]) -> Result<Option<u64>, SpoolError> {
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(inner.key("due")).arg(0).arg(0).arg("WITHSCORES");
            let first: Vec<(String, f64)> = inner.bounded(cmd.query_async(&mut conn)).await?;
            Ok(first.first().map(|(_, at)| *at as u64))
        })
        .await
    }

    async fn upstream_of(&self, seq: u64) -> Result<Option<String>, SpoolError> {
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut cmd = redis::cmd("HGET");
            cmd.arg(inner.key(&format!("m:{seq}"))).arg("upstream");
            inner.bounded(cmd.query_async(&mut conn)).await
        })
        .await
    }

    async fn get(&self, seq: u64) -> Result<Option<(Record, Bytes)>, SpoolError> {
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(inner.key(&format!("m:{seq}")));
            let flat: Vec<Vec<u8>> = inner.bounded(cmd.query_async(&mut conn)).await?;
            if flat.is_empty() {
                return Ok(None);
            }
            let fields = pairs(flat);
            let body = fields
                .get("body")
                .cloned()
                .map(Bytes::from)
                .unwrap_or_default();
            Ok(Some((record(seq, &fields)?, body)))
        })
        .await
    }

    async fn list(&self, filter: &Filter) -> Result<Vec<Record>, SpoolError> {
        let filter = filter.clone();
        self.run(move |inner| async move { inner.list(&filter).await })
            .await
    }

    async fn stats(&self) -> Result<StoreStats, SpoolError> {
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(inner.key("meta"));
            let meta = pairs(inner.bounded(cmd.query_async(&mut conn)).await?);
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(inner.key("queued")).arg(0).arg(0);
            let first: Vec<String> = inner.bounded(cmd.query_async(&mut conn)).await?;
            let mut oldest_queued_ms = None;
            if let Some(seq) = first.first().and_then(|m| m.parse::<u64>().ok()) {
                let mut cmd = redis::cmd("HGET");
                cmd.arg(inner.key(&format!("m:{seq}"))).arg("received");
                let received: Option<u64> = inner.bounded(cmd.query_async(&mut conn)).await?;
                oldest_queued_ms = received;
            }
            let get = |k: &str| field_u64(&meta, k);
            Ok(StoreStats {
                queued: get("queued"),
                queued_bytes: get("queued_bytes"),
                dead: get("dead"),
                dead_bytes: get("dead_bytes"),
                oldest_queued_ms,
                enqueued_total: get("enqueued_total"),
                delivered_total: get("delivered_total"),
                ambiguous_total: get("ambiguous_total"),
            })
        })
        .await
    }
}

impl Inner {
    /// The messages matching `filter`, in arrival order: the sequence numbers of both states,
    /// then the records (without bodies) a chunk per round trip.
    async fn list(&self, filter: &Filter) -> Result<Vec<Record>, SpoolError> {
        let mut conn = self.conn.clone();
        let mut seqs: Vec<u64> = match &filter.seqs {
            Some(s) => s.clone(),
            None => {
                let mut all = Vec::new();
                for state in ["queued", "dead"] {
                    if filter.state.as_deref().is_some_and(|s| s != state) {
                        continue;
                    }
                    let mut cmd = redis::cmd("ZRANGE");
                    cmd.arg(self.key(state)).arg(0).arg(-1);
                    let members: Vec<String> = self.bounded(cmd.query_async(&mut conn)).await?;
                    all.extend(members.iter().filter_map(|m| m.parse::<u64>().ok()));
                }
                all
            }
        };
        seqs.sort_unstable();
        seqs.dedup();
        let now = now_ms();
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        for chunk in seqs.chunks(LIST_CHUNK) {
            let mut pipe = redis::pipe();
            for seq in chunk {
                pipe.cmd("HMGET")
                    .arg(self.key(&format!("m:{seq}")))
                    .arg(&FIELDS[..]);
            }
            let rows: Vec<Vec<Option<Vec<u8>>>> = self.bounded(pipe.query_async(&mut conn)).await?;
            for (seq, row) in chunk.iter().zip(rows) {
                let fields: HashMap<String, Vec<u8>> = FIELDS
                    .iter()
                    .zip(row)
                    .filter_map(|(k, v)| Some(((*k).to_owned(), v?)))
                    .collect();
                if fields.is_empty() {
                    continue; // delivered or purged meanwhile
                }
                let record = record(*seq, &fields)?;
                if filter.matches(&record, now) {
                    out.push(record);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }
}
