//! The embedded spool store: one redb file (a transactional, crash-safe B-tree store; one
//! fsync per commit). Every write goes through one writer thread, which takes all the
//! writes waiting when it starts a transaction and commits them together: the fsync is
//! shared by every request that arrived meanwhile (group commit), and none waits longer than
//! one commit beyond the one in progress.
//!
//! Tables: `messages` (seq → record, JSON), `bodies` (seq → body bytes), `dedup` (key → (seq,
//! until ms)) with its expiry index `dedup_expiry`, and `meta` (counters). A delivered
//! message's record and body are deleted; its keys stay until `dedup_ttl` ends, so a copy is
//! still recognised. Two things are also kept in memory, written by the writer only after the
//! commit that made them durable: the counters (written to `meta` once per commit, not once
//! per message) and the [`Schedule`] (which queued message is due when; rebuilt from the
//! records when the file opens).
//!
//! Longer than 500 lines: the reading side, the writer thread and each op's transaction
//! body are one unit around the same tables and counters; read top to bottom: the store's
//! API, the writer (batching, commit, recovery after a failed write), then the ops.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;

use async_trait::async_trait;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::schedule::{Change, Schedule};
use super::{
    now_ms, Enqueued, Filter, Finish, Incoming, Record, SpoolBackend, SpoolError, Started, State,
    StoreStats,
};

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
/// Files written before the schedule moved to memory have this table; it is deleted when
/// such a file opens.
const OLD_DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("due");
const DEDUP: TableDefinition<u128, (u64, u64)> = TableDefinition::new("dedup");
const DEDUP_EXPIRY: TableDefinition<(u64, u128), ()> = TableDefinition::new("dedup_expiry");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const NEXT_SEQ: &str = "next_seq";
const QUEUED: &str = "queued";
const QUEUED_BYTES: &str = "queued_bytes";
const DEAD: &str = "dead";
const DEAD_BYTES: &str = "dead_bytes";
/// Durable totals (they survive restarts, unlike the process's metrics): messages delivered,
/// and attempts whose fate is unknown.
const DELIVERED_TOTAL: &str = "delivered_total";
const AMBIGUOUS_TOTAL: &str = "ambiguous_total";

/// Writes taken into one transaction at most.
const MAX_BATCH: usize = 512;

/// Limits checked at enqueue.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_bytes: u64,
    pub min_free_bytes: u64,
    /// Bytes of messages waiting for the writer.
    pub max_pending_bytes: u64,
    pub dedup_ttl: Duration,
}

impl Limits {
    pub fn of(settings: &crate::config::SpoolSettings) -> Limits {
        Limits {
            max_bytes: settings.max_bytes,
            min_free_bytes: settings.min_free_bytes,
            max_pending_bytes: settings.max_pending_bytes,
            dedup_ttl: settings.dedup_ttl,
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

enum Op {
    /// The message, and its envelope already in JSON (encoded by the caller, not the writer).
    Enqueue(Incoming, Box<RawValue>, Reply<Enqueued>),
    /// An attempt starts: recorded before the request goes out. `None`: not queued (any more).
    Start(u64, Reply<Option<StartedRaw>>),
    Finish(u64, Finish, Reply<()>),
    /// Queued messages to `upstream` due now (it is back).
    Wake(String, Reply<usize>),
    Retry(Filter, Reply<usize>),
    Purge(Filter, Reply<usize>),
    Sweep(Reply<usize>),
}

/// The spool's store: cheap to clone, shared by the proxy, the workers and the admin
/// listener.
#[derive(Clone)]
pub struct SpoolStore {
    db: Handle,
    ops: mpsc::Sender<Op>,
    schedule: Arc<Mutex<Schedule>>,
    /// Bytes of the messages given to the writer and not yet answered, and their bound: the
    /// writer's queue is not a place for a slow disk's backlog to grow without end.
    pending: Arc<AtomicU64>,
    max_pending_bytes: u64,
}

/// A message's bytes counted as waiting for the writer until dropped (answered, or the
/// caller gone).
struct PendingBytes<'a>(&'a AtomicU64, u64);

impl Drop for PendingBytes<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::Relaxed);
    }
}

/// The open database, shared by readers and the writer. Empty for the moment the writer
/// reopens it: after a failed write (a full disk), redb refuses every further transaction
/// until the file is closed and opened again (it then recovers from the last commit).
type Handle = Arc<ArcSwapOption<Database>>;

fn current(db: &Handle) -> Result<Arc<Database>, SpoolError> {
    db.load_full()
        .ok_or_else(|| SpoolError::Unavailable("the spool is being reopened".into()))
}

fn open_db(path: &Path) -> Result<Database, String> {
    Database::create(path).map_err(|e| match e {
        redb::DatabaseError::DatabaseAlreadyOpen => format!(
            "{} is open in another process (a running hookguard: use its admin listener)",
            path.display()
        ),
        e => format!("cannot open the spool {}: {e}", path.display()),
    })
}

/// The counters kept in `meta`. The writer holds the committed values in memory and writes
/// the ones a batch changed once, before its commit: a counter's row was read and written by
/// every op that moved it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counters {
    next_seq: u64,
    queued: u64,
    queued_bytes: u64,
    dead: u64,
    dead_bytes: u64,
    delivered_total: u64,
    ambiguous_total: u64,
}

impl Counters {
    fn rows(&self) -> [(&'static str, u64); 7] {
        [
            (NEXT_SEQ, self.next_seq),
            (QUEUED, self.queued),
            (QUEUED_BYTES, self.queued_bytes),
            (DEAD, self.dead),
            (DEAD_BYTES, self.dead_bytes),
            (DELIVERED_TOTAL, self.delivered_total),
            (AMBIGUOUS_TOTAL, self.ambiguous_total),
        ]
    }

    fn read(meta: &impl ReadableTable<&'static str, u64>) -> Result<Counters, SpoolError> {
        let get = |k: &str| -> Result<u64, SpoolError> {
            Ok(meta.get(k).map_err(unavailable)?.map_or(0, |v| v.value()))
        };
        Ok(Counters {
            next_seq: get(NEXT_SEQ)?,
            queued: get(QUEUED)?,
            queued_bytes: get(QUEUED_BYTES)?,
            dead: get(DEAD)?,
            dead_bytes: get(DEAD_BYTES)?,
            delivered_total: get(DELIVERED_TOTAL)?,
            ambiguous_total: get(AMBIGUOUS_TOTAL)?,
        })
    }

    /// Writes the rows that differ from `before`.
    fn write(&self, before: &Counters, txn: &WriteTransaction) -> Result<(), SpoolError> {
        if self == before {
            return Ok(());
        }
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        for ((key, now), (_, was)) in self.rows().into_iter().zip(before.rows()) {
            if now != was {
                meta.insert(key, now).map_err(unavailable)?;
            }
        }
        Ok(())
    }
}

/// The committed counters and the schedule, read from the file (every queued record).
fn load(db: &Database) -> Result<(Counters, Schedule), SpoolError> {
    let txn = db.begin_read().map_err(unavailable)?;
    let counters = Counters::read(&txn.open_table(META).map_err(unavailable)?)?;
    let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    let mut schedule = Schedule::default();
    for entry in messages.iter().map_err(unavailable)? {
        let (_, v) = entry.map_err(unavailable)?;
        let record = decode(v.value())?;
        if record.state == State::Queued {
            schedule.apply(Change::Due {
                seq: record.seq,
                due: record.next_ms,
                upstream: record.envelope.upstream,
            });
        }
    }
    Ok((counters, schedule))
}

impl SpoolStore {
    /// Opens (or creates) the spool at `path` and starts its writer thread. `on_commit` sees
    /// each commit's duration.
    pub fn open(
        path: &Path,
        limits: Limits,
        on_commit: Box<dyn Fn(Duration) + Send>,
    ) -> Result<SpoolStore, String> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let db = open_db(path)?;
        // The tables exist from the start: readers never find one missing.
        {
            let txn = db.begin_write().map_err(|e| e.to_string())?;
            for t in [MESSAGES, BODIES] {
                txn.open_table(t).map_err(|e| e.to_string())?;
            }
            txn.open_table(DEDUP).map_err(|e| e.to_string())?;
            txn.open_table(DEDUP_EXPIRY).map_err(|e| e.to_string())?;
            txn.open_table(META).map_err(|e| e.to_string())?;
            txn.delete_table(OLD_DUE).map_err(|e| e.to_string())?;
            txn.commit().map_err(|e| e.to_string())?;
        }
        let started = Instant::now();
        let (counters, schedule) =
            load(&db).map_err(|e| format!("cannot read the spool {}: {e}", path.display()))?;
        tracing::debug!(elapsed = ?started.elapsed(), "spool: schedule read from the records");
        let schedule = Arc::new(Mutex::new(schedule));
        let max_pending_bytes = limits.max_pending_bytes;
        let db: Handle = Arc::new(ArcSwapOption::from_pointee(db));
        let (ops, rx) = mpsc::channel();
        let writer = Writer {
            db: Arc::clone(&db),
            path: path.to_path_buf(),
            inside_free: std::cell::Cell::new(None),
            dir: path
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
            limits,
            on_commit,
            counters: std::cell::Cell::new(counters),
            schedule: Arc::clone(&schedule),
            #[cfg(debug_assertions)]
            commit_delay: injected_commit_delay(),
        };
        std::thread::Builder::new()
            .name("hookguard-spool".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("cannot start the spool's writer: {e}"))?;
        Ok(SpoolStore {
            db,
            ops,
            schedule,
            pending: Arc::new(AtomicU64::new(0)),
            max_pending_bytes,
        })
    }

    fn schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn ask<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, SpoolError> {
        let (tx, rx) = oneshot::channel();
        self.ops
            .send(op(tx))
            .map_err(|_| SpoolError::Unavailable("the spool's writer stopped".into()))?;
        rx.await
            .map_err(|_| SpoolError::Unavailable("the spool's writer stopped".into()))?
    }

    /// Writes `message` (synced to disk when this returns `Queued`), unless one of its keys is
    /// already spooled or delivered.
    pub async fn enqueue(&self, message: Incoming) -> Result<Enqueued, SpoolError> {
        let bytes = message.bytes();
        let before = self.pending.fetch_add(bytes, Ordering::Relaxed);
        let _pending = PendingBytes(&self.pending, bytes);
        // A message larger than the bound goes through alone.
        if before > 0 && before.saturating_add(bytes) > self.max_pending_bytes {
            return Err(SpoolError::Unavailable(format!(
                "the spool's writer is behind: {before} bytes of messages wait for it (spool.max_pending_bytes)"
            )));
        }
        // The envelope's JSON (its header values in base64) is made here, on the caller's
        // thread: the writer thread is the spool's bottleneck, and it only copies it.
        let envelope = serde_json::value::to_raw_value(&message.envelope)
            .map_err(|e| SpoolError::Unavailable(format!("an envelope: {e}")))?;
        self.ask(|r| Op::Enqueue(message, envelope, r)).await
    }

    /// Records that an attempt starts (or `None`: not queued).
    pub async fn start(&self, seq: u64) -> Result<Option<Started>, SpoolError> {
        // The record as written comes back as JSON, decoded here rather than by the writer.
        let Some((record, body, interrupted)) = self.ask(|r| Op::Start(seq, r)).await? else {
            return Ok(None);
        };
        Ok(Some((Box::new(decode(&record)?), body, interrupted)))
    }

    pub async fn finish(&self, seq: u64, finish: Finish) -> Result<(), SpoolError> {
        self.ask(|r| Op::Finish(seq, finish, r)).await
    }

    /// Makes every queued message to `upstream` due now; returns how many.
    pub async fn wake(&self, upstream: &str) -> Result<usize, SpoolError> {
        let upstream = upstream.to_owned();
        self.ask(|r| Op::Wake(upstream, r)).await
    }

    /// Dead (or queued) messages matching `filter` queued again, due now.
    pub async fn retry(&self, filter: Filter) -> Result<usize, SpoolError> {
        self.ask(|r| Op::Retry(filter, r)).await
    }

    /// Messages matching `filter` deleted (their keys stay: copies are still duplicates).
    pub async fn purge(&self, filter: Filter) -> Result<usize, SpoolError> {
        self.ask(|r| Op::Purge(filter, r)).await
    }

    /// Forgets keys whose `dedup_ttl` is over; returns how many.
    pub async fn sweep(&self) -> Result<usize, SpoolError> {
        self.ask(Op::Sweep).await
    }

    /// Up to `limit` queued messages due at `now_ms`, except those to a `blocked` upstream,
    /// oldest due first (or, with `newest_first`, the most recently due first): (due ms, seq).
    pub fn due(
        &self,
        now_ms: u64,
        limit: usize,
        newest_first: bool,
        blocked: &[String],
    ) -> Vec<(u64, u64)> {
        self.schedule().due(now_ms, limit, newest_first, blocked)
    }

    /// The earliest time a queued message not to a `blocked` upstream is due, if any.
    pub fn next_due(&self, blocked: &[String]) -> Option<u64> {
        self.schedule().next_due(blocked)
    }

    /// The upstream a queued message goes to (`None`: not queued).
    pub fn upstream_of(&self, seq: u64) -> Option<String> {
        self.schedule().upstream_of(seq).map(|u| u.to_string())
    }

    /// One message, with its body.
    pub fn get(&self, seq: u64) -> Result<Option<(Record, Bytes)>, SpoolError> {
        let txn = current(&self.db)?.begin_read().map_err(unavailable)?;
        let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
        let bodies = txn.open_table(BODIES).map_err(unavailable)?;
        let Some(record) = messages.get(seq).map_err(unavailable)? else {
            return Ok(None);
        };
        let record = decode(record.value())?;
        let body = bodies
            .get(seq)
            .map_err(unavailable)?
            .map(|b| Bytes::copy_from_slice(b.value()))
            .unwrap_or_default();
        Ok(Some((record, body)))
    }

    /// The messages matching `filter`, in arrival order.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Record>, SpoolError> {
        let txn = current(&self.db)?.begin_read().map_err(unavailable)?;
        let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
        let now = now_ms();
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        for entry in messages.iter().map_err(unavailable)? {
            let (_, v) = entry.map_err(unavailable)?;
            let record = decode(v.value())?;
            if filter.matches(&record, now) {
                out.push(record);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn stats(&self) -> Result<StoreStats, SpoolError> {
        let txn = current(&self.db)?.begin_read().map_err(unavailable)?;
        let meta = txn.open_table(META).map_err(unavailable)?;
        let get = |k: &str| -> Result<u64, SpoolError> {
            Ok(meta.get(k).map_err(unavailable)?.map_or(0, |v| v.value()))
        };
        let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
        // Arrival order is seq order: the first queued record is the oldest.
        let mut oldest_queued_ms = None;
        for entry in messages.iter().map_err(unavailable)? {
            let (_, v) = entry.map_err(unavailable)?;
            let record = decode(v.value())?;
            if record.state == State::Queued {
                oldest_queued_ms = Some(record.envelope.received_ms);
                break;
            }
        }
        Ok(StoreStats {
            queued: get(QUEUED)?,
            queued_bytes: get(QUEUED_BYTES)?,
            dead: get(DEAD)?,
            dead_bytes: get(DEAD_BYTES)?,
            oldest_queued_ms,
            enqueued_total: get(NEXT_SEQ)?.saturating_sub(1),
            delivered_total: get(DELIVERED_TOTAL)?,
            ambiguous_total: get(AMBIGUOUS_TOTAL)?,
        })
    }

    /// Keys remembered (delivered and spooled messages), for tests and `spool` output.
    pub fn keys_remembered(&self) -> Result<u64, SpoolError> {
        let txn = current(&self.db)?.begin_read().map_err(unavailable)?;
        let dedup = txn.open_table(DEDUP).map_err(unavailable)?;
        dedup.len().map_err(unavailable)
    }
}

/// The embedded store behind the spool's interface: the writes go through the writer
/// thread; the reads are redb read transactions (short, never blocked by the writer).
#[async_trait]
impl SpoolBackend for SpoolStore {
    async fn enqueue(&self, message: Incoming) -> Result<Enqueued, SpoolError> {
        SpoolStore::enqueue(self, message).await
    }

    async fn start(&self, seq: u64) -> Result<Option<Started>, SpoolError> {
        SpoolStore::start(self, seq).await
    }

    /// One process delivers from this file: no attempt can have been taken over, so
    /// `attempt` needs no check.
    async fn finish(&self, seq: u64, _attempt: u32, finish: Finish) -> Result<(), SpoolError> {
        SpoolStore::finish(self, seq, finish).await
    }

    async fn wake(&self, upstream: &str) -> Result<usize, SpoolError> {
        SpoolStore::wake(self, upstream).await
    }

    async fn retry(&self, filter: Filter) -> Result<usize, SpoolError> {
        SpoolStore::retry(self, filter).await
    }

    async fn purge(&self, filter: Filter) -> Result<usize, SpoolError> {
        SpoolStore::purge(self, filter).await
    }

    async fn sweep(&self) -> Result<usize, SpoolError> {
        SpoolStore::sweep(self).await
    }

    async fn due(
        &self,
        now_ms: u64,
        limit: usize,
        newest_first: bool,
        blocked: &[String],
    ) -> Result<Vec<(u64, u64)>, SpoolError> {
        Ok(SpoolStore::due(self, now_ms, limit, newest_first, blocked))
    }

    async fn next_due(&self, blocked: &[String]) -> Result<Option<u64>, SpoolError> {
        Ok(SpoolStore::next_due(self, blocked))
    }

    async fn upstream_of(&self, seq: u64) -> Result<Option<String>, SpoolError> {
        Ok(SpoolStore::upstream_of(self, seq))
    }

    async fn get(&self, seq: u64) -> Result<Option<(Record, Bytes)>, SpoolError> {
        SpoolStore::get(self, seq)
    }

    async fn list(&self, filter: &Filter) -> Result<Vec<Record>, SpoolError> {
        SpoolStore::list(self, filter)
    }

    async fn stats(&self) -> Result<StoreStats, SpoolError> {
        SpoolStore::stats(self)
    }
}

fn unavailable(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Unavailable(e.to_string())
}

fn decode(bytes: &[u8]) -> Result<Record, SpoolError> {
    serde_json::from_slice(bytes).map_err(|e| SpoolError::Unavailable(format!("a record: {e}")))
}

fn encode(record: &Record) -> Vec<u8> {
    // A record is plain data: serializing it cannot fail.
    serde_json::to_vec(record).unwrap_or_default()
}

/// A record as the writer handles it on the delivery path: the same JSON as [`Record`], with
/// the envelope kept as the JSON text it was written as, so that an attempt's start and result
/// rewrite the record without decoding and encoding the envelope (its headers are base64, and
/// decoding it was a tenth of the writer's time). The caller decodes the whole record.
#[derive(Serialize, Deserialize)]
struct Stored {
    seq: u64,
    envelope: Box<RawValue>,
    /// `queued` or `dead` ([`State`]'s tag).
    state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    attempts: u32,
    finished: u32,
    client_errors: u32,
    ambiguous: u32,
    next_ms: u64,
    last: Option<String>,
    bytes: u64,
}

impl Stored {
    fn queued(&self) -> bool {
        self.state == "queued"
    }

    fn encode(&self) -> Vec<u8> {
        // Plain data and valid JSON text: serializing it cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The upstream, read from the envelope's JSON (the only field of it the writer needs,
    /// when it schedules a retry).
    fn upstream(&self) -> Result<String, SpoolError> {
        #[derive(Deserialize)]
        struct Upstream {
            upstream: String,
        }
        serde_json::from_str::<Upstream>(self.envelope.get())
            .map(|u| u.upstream)
            .map_err(|e| SpoolError::Unavailable(format!("a record's envelope: {e}")))
    }
}

/// An attempt recorded as started, as the writer answers it: the record's JSON (decoded by
/// the caller), the body, and whether the previous attempt had been interrupted.
type StartedRaw = (Vec<u8>, Bytes, bool);

/// The writer thread.
struct Writer {
    db: Handle,
    path: PathBuf,
    /// Free bytes inside the file, and when they were measured.
    inside_free: std::cell::Cell<Option<(Instant, u64)>>,
    /// The spool's directory, for the free-space check.
    dir: PathBuf,
    limits: Limits,
    on_commit: Box<dyn Fn(Duration) + Send>,
    /// The counters as last committed.
    counters: std::cell::Cell<Counters>,
    /// Changed after each commit, before its ops are answered: an enqueued message is due
    /// for the scheduler when its 202 goes out.
    schedule: Arc<Mutex<Schedule>>,
    /// Fault injection (debug builds only, for the tests): each commit takes this much
    /// longer, as on a slow disk.
    #[cfg(debug_assertions)]
    commit_delay: Duration,
}

/// `HOOKGUARD_FAULT_SPOOL_COMMIT_DELAY_MS`, read by debug builds only (the tests' binary):
/// release builds have no such knob.
#[cfg(debug_assertions)]
fn injected_commit_delay() -> Duration {
    std::env::var("HOOKGUARD_FAULT_SPOOL_COMMIT_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
}

/// An op's reply, sent once its transaction is committed (or has failed).
enum Pending {
    Enqueued(Reply<Enqueued>, Result<Enqueued, SpoolError>),
    Started(
        Reply<Option<StartedRaw>>,
        Result<Option<StartedRaw>, SpoolError>,
    ),
    Done(Reply<()>, Result<(), SpoolError>),
    Count(Reply<usize>, Result<usize, SpoolError>),
}

impl Pending {
    /// The op's storage error, if it had one.
    fn storage_error(&self) -> Option<SpoolError> {
        let e = match self {
            Pending::Enqueued(_, Err(e)) => e,
            Pending::Started(_, Err(e)) => e,
            Pending::Done(_, Err(e)) => e,
            Pending::Count(_, Err(e)) => e,
            _ => return None,
        };
        matches!(e, SpoolError::Unavailable(_)).then(|| e.clone())
    }

    fn fail(self, e: &SpoolError) {
        match self {
            Pending::Enqueued(r, _) => drop(r.send(Err(e.clone()))),
            Pending::Started(r, _) => drop(r.send(Err(e.clone()))),
            Pending::Done(r, _) => drop(r.send(Err(e.clone()))),
            Pending::Count(r, _) => drop(r.send(Err(e.clone()))),
        }
    }

    fn send(self) {
        match self {
            Pending::Enqueued(r, v) => drop(r.send(v)),
            Pending::Started(r, v) => drop(r.send(v)),
            Pending::Done(r, v) => drop(r.send(v)),
            Pending::Count(r, v) => drop(r.send(v)),
        }
    }
}

impl Writer {
    fn run(self, rx: mpsc::Receiver<Op>) {
        // Blocks for the first op of a batch, then takes whatever else is waiting.
        while let Ok(first) = rx.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    /// Whether `incoming` more bytes may be written: the file system keeps its reserve, or
    /// the spool's file has room inside (pages freed by deliveries and purges are reused
    /// before the file grows, so writing there takes nothing from the file system).
    fn has_room(&self, txn: &WriteTransaction, incoming: u64) -> bool {
        let fs_free = match rustix::fs::statvfs(&self.dir) {
            Ok(s) => s.f_bavail.saturating_mul(s.f_frsize),
            // Unknown: let the write itself tell.
            Err(_) => return true,
        };
        if fs_free >= self.limits.min_free_bytes {
            return true;
        }
        // The file's free pages: measured by walking redb's trees, so at most once a second,
        // and only while the file system is below its reserve.
        let inside = match self.inside_free.get() {
            Some((at, bytes)) if at.elapsed() < Duration::from_secs(1) => bytes,
            _ => {
                // The bytes the file really occupies: redb grows it ahead of use, and the
                // part never written is a hole that writing would take from the file system.
                let len = std::fs::metadata(&self.path).map_or(0, |m| {
                    use std::os::unix::fs::MetadataExt;
                    m.blocks().saturating_mul(512).min(m.len())
                });
                let used = txn.stats().map_or(u64::MAX, |s| {
                    s.allocated_pages().saturating_mul(s.page_size() as u64)
                });
                let bytes = len.saturating_sub(used);
                self.inside_free.set(Some((Instant::now(), bytes)));
                bytes
            }
        };
        // Twice the payload (redb copies the pages it changes) and a margin for the trees.
        inside >= incoming.saturating_mul(2).saturating_add(1 << 20)
    }

    fn commit(&self, batch: Vec<Op>) {
        let started = Instant::now();
        let incoming: u64 = batch
            .iter()
            .map(|op| match op {
                Op::Enqueue(m, _, _) => m.body.len() as u64 + 1024,
                _ => 0,
            })
            .sum();
        let frees = batch
            .iter()
            .any(|op| matches!(op, Op::Purge(..) | Op::Sweep(..)));
        let txn = match current(&self.db).and_then(|db| db.begin_write().map_err(unavailable)) {
            Ok(t) => t,
            Err(e) => {
                for op in batch {
                    reply_error(op, &e);
                }
                self.reopen();
                return;
            }
        };
        let room = incoming == 0 || self.has_room(&txn, incoming);
        let before = self.counters.get();
        let now = now_ms();
        // The batch's tables are closed at the end of this statement: the transaction is
        // then free to commit.
        let ran = match Batch::open(&txn, before) {
            Ok(mut b) => {
                let pending: Vec<Pending> = batch
                    .into_iter()
                    .map(|op| b.run(op, room, now, &self.limits))
                    .collect();
                let (counters, changes) = b.close();
                Ok((pending, counters, changes))
            }
            Err(e) => Err((e, batch)),
        };
        let (pending, counters, changes) = match ran {
            Ok(ran) => ran,
            Err((e, batch)) => {
                for op in batch {
                    reply_error(op, &e);
                }
                drop(txn.abort());
                self.reopen();
                return;
            }
        };
        // An op that could not read or write (a full disk) may have left part of its change
        // in the transaction: nothing of the batch is committed.
        let failed = pending
            .iter()
            .find_map(Pending::storage_error)
            .map_or_else(|| counters.write(&before, &txn), Err);
        let committed = match failed {
            Err(e) => {
                drop(txn.abort());
                Err(e)
            }
            Ok(()) => {
                #[cfg(debug_assertions)]
                std::thread::sleep(self.commit_delay);
                txn.commit().map_err(unavailable)
            }
        };
        match committed {
            Ok(()) => {
                (self.on_commit)(started.elapsed());
                self.counters.set(counters);
                {
                    let mut schedule = self.schedule.lock().unwrap_or_else(|p| p.into_inner());
                    for change in changes {
                        schedule.apply(change);
                    }
                }
                for p in pending {
                    p.send();
                }
                if frees {
                    self.release_freed();
                }
            }
            Err(e) => {
                // Nothing of the batch is on disk: every op fails, enqueues answer 503.
                tracing::error!(error = %e, "spool: a commit failed; the batch is refused");
                for p in pending {
                    p.fail(&e);
                }
                self.reopen();
            }
        }
    }

    /// Pages a transaction frees become reusable only after later commits: two empty ones
    /// (cheap) make a purge's space usable at once, even on a file system that is full.
    fn release_freed(&self) {
        self.inside_free.set(None);
        for _ in 0..2 {
            let done = current(&self.db)
                .and_then(|db| db.begin_write().map_err(unavailable))
                .and_then(|txn| txn.commit().map_err(unavailable));
            if let Err(e) = done {
                tracing::warn!(error = %e, "spool: releasing freed pages failed");
                return;
            }
        }
    }

    /// Closes and opens the database again, so that it recovers from its last commit (redb
    /// refuses every transaction after a failed write until then). Readers hold the old file
    /// for one read at most (a read transaction keeps it open after the handle is gone), so
    /// the file's lock is tried until they have let go.
    fn reopen(&self) {
        drop(self.db.swap(None));
        let deadline = Instant::now() + Duration::from_secs(5);
        let result = loop {
            match Database::create(&self.path) {
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                other => break other,
            }
        };
        match result {
            Ok(db) => {
                tracing::info!("spool: reopened after a failed write");
                self.db.store(Some(Arc::new(db)));
            }
            Err(e) => tracing::error!(
                error = %e,
                "spool: cannot reopen; writes answer 503, tried again at the next write"
            ),
        }
    }
}

fn reply_error(op: Op, e: &SpoolError) {
    match op {
        Op::Enqueue(_, _, r) => drop(r.send(Err(e.clone()))),
        Op::Start(_, r) => drop(r.send(Err(e.clone()))),
        Op::Finish(_, _, r) => drop(r.send(Err(e.clone()))),
        Op::Wake(_, r) | Op::Retry(_, r) | Op::Purge(_, r) | Op::Sweep(r) => {
            drop(r.send(Err(e.clone())))
        }
    }
}

/// One write transaction's tables, opened once for the whole batch (opening a table is a
/// lookup in redb's table tree: 5% of the writer's time when each op opened its own), with
/// the counters as the batch changes them and the schedule's changes waiting for the commit.
struct Batch<'t> {
    messages: redb::Table<'t, u64, &'static [u8]>,
    bodies: redb::Table<'t, u64, &'static [u8]>,
    dedup: redb::Table<'t, u128, (u64, u64)>,
    expiry: redb::Table<'t, (u64, u128), ()>,
    counters: Counters,
    changes: Vec<Change>,
}

impl<'t> Batch<'t> {
    fn open(txn: &'t WriteTransaction, counters: Counters) -> Result<Batch<'t>, SpoolError> {
        Ok(Batch {
            messages: txn.open_table(MESSAGES).map_err(unavailable)?,
            bodies: txn.open_table(BODIES).map_err(unavailable)?,
            dedup: txn.open_table(DEDUP).map_err(unavailable)?,
            expiry: txn.open_table(DEDUP_EXPIRY).map_err(unavailable)?,
            counters,
            changes: Vec::new(),
        })
    }

    /// The tables closed (redb commits only once they are), the counters and the changes.
    fn close(self) -> (Counters, Vec<Change>) {
        let Batch {
            messages,
            bodies,
            dedup,
            expiry,
            counters,
            changes,
        } = self;
        drop((messages, bodies, dedup, expiry));
        (counters, changes)
    }

    fn write(&mut self, record: &Record) -> Result<(), SpoolError> {
        self.messages
            .insert(record.seq, encode(record).as_slice())
            .map_err(unavailable)?;
        Ok(())
    }

    fn read_stored(&self, seq: u64) -> Result<Option<Stored>, SpoolError> {
        let value = self.messages.get(seq).map_err(unavailable)?;
        value
            .map(|v| {
                serde_json::from_slice(v.value())
                    .map_err(|e| SpoolError::Unavailable(format!("a record: {e}")))
            })
            .transpose()
    }

    /// Writes `stored`; returns its JSON.
    fn write_stored(&mut self, stored: &Stored) -> Result<Vec<u8>, SpoolError> {
        let json = stored.encode();
        self.messages
            .insert(stored.seq, json.as_slice())
            .map_err(unavailable)?;
        Ok(json)
    }

    /// Applies one op; its answer waits for the commit.
    fn run(&mut self, op: Op, room: bool, now: u64, limits: &Limits) -> Pending {
        match op {
            Op::Enqueue(m, envelope, r) => {
                let result = if room {
                    self.enqueue(m, envelope, now, limits)
                } else {
                    Err(SpoolError::Full(
                        "free disk space below spool.min_free_bytes",
                    ))
                };
                Pending::Enqueued(r, result)
            }
            Op::Start(seq, r) => Pending::Started(r, self.start(seq, now)),
            Op::Finish(seq, f, r) => Pending::Done(r, self.finish(seq, f)),
            Op::Wake(upstream, r) => Pending::Count(r, self.wake(&upstream, now)),
            Op::Retry(filter, r) => Pending::Count(r, self.retry(&filter, now)),
            Op::Purge(filter, r) => Pending::Count(r, self.purge(&filter, now)),
            Op::Sweep(r) => Pending::Count(r, self.sweep(now)),
        }
    }

    /// `record` is due at `due` (again, or for the first time).
    fn schedule(&mut self, record: &Record, due: u64) {
        self.changes.push(Change::Due {
            seq: record.seq,
            due,
            upstream: record.envelope.upstream.clone(),
        });
    }

    fn enqueue(
        &mut self,
        m: Incoming,
        envelope: Box<RawValue>,
        now: u64,
        limits: &Limits,
    ) -> Result<Enqueued, SpoolError> {
        for key in &m.keys {
            if let Some(v) = self.dedup.get(key).map_err(unavailable)? {
                let (_, until) = v.value();
                if until > now {
                    return Ok(Enqueued::Duplicate);
                }
            }
        }
        let bytes = m.bytes();
        let c = &mut self.counters;
        let held = c.queued_bytes.saturating_add(c.dead_bytes);
        if held.saturating_add(bytes) > limits.max_bytes {
            return Err(SpoolError::Full("spool.max_bytes reached"));
        }
        let seq = c.next_seq.max(1);
        c.next_seq = seq + 1;
        c.queued += 1;
        c.queued_bytes = c.queued_bytes.saturating_add(bytes);
        let stored = Stored {
            seq,
            envelope,
            state: "queued".into(),
            reason: None,
            attempts: 0,
            finished: 0,
            client_errors: 0,
            ambiguous: 0,
            next_ms: now,
            last: None,
            bytes,
        };
        self.write_stored(&stored)?;
        self.bodies.insert(seq, &m.body[..]).map_err(unavailable)?;
        let until = now.saturating_add(super::ms(limits.dedup_ttl));
        for key in m.keys {
            self.dedup.insert(key, (seq, until)).map_err(unavailable)?;
            self.expiry.insert((until, key), ()).map_err(unavailable)?;
        }
        self.changes.push(Change::Due {
            seq,
            due: now,
            upstream: m.envelope.upstream,
        });
        Ok(Enqueued::Queued(seq))
    }

    fn start(&mut self, seq: u64, now: u64) -> Result<Option<StartedRaw>, SpoolError> {
        let Some(mut record) = self.read_stored(seq)? else {
            return Ok(None);
        };
        // Not due (any more): the scheduler's list of due messages was read before another
        // attempt of this one recorded its retry; starting it now would skip its backoff.
        if !record.queued() || record.next_ms > now {
            return Ok(None);
        }
        // An attempt started and never finished: it may have reached the application.
        let interrupted = record.attempts > record.finished;
        if interrupted {
            let unknown = record.attempts - record.finished;
            record.ambiguous += unknown;
            record.finished = record.attempts;
            self.counters.ambiguous_total += u64::from(unknown);
        }
        record.attempts += 1;
        let json = self.write_stored(&record)?;
        let body = self
            .bodies
            .get(seq)
            .map_err(unavailable)?
            .map(|b| Bytes::copy_from_slice(b.value()))
            .unwrap_or_default();
        Ok(Some((json, body, interrupted)))
    }

    fn finish(&mut self, seq: u64, f: Finish) -> Result<(), SpoolError> {
        let Some(mut record) = self.read_stored(seq)? else {
            return Ok(());
        };
        if !record.queued() {
            return Ok(());
        }
        record.finished = record.attempts;
        let c = &mut self.counters;
        match f {
            Finish::Delivered => {
                self.messages.remove(seq).map_err(unavailable)?;
                self.bodies.remove(seq).map_err(unavailable)?;
                c.queued = c.queued.saturating_sub(1);
                c.queued_bytes = c.queued_bytes.saturating_sub(record.bytes);
                c.delivered_total += 1;
                self.changes.push(Change::Gone(seq));
                return Ok(());
            }
            Finish::Retry {
                next_ms,
                note,
                client_error,
                ambiguous,
            } => {
                record.client_errors += u32::from(client_error);
                record.ambiguous += u32::from(ambiguous);
                c.ambiguous_total += u64::from(ambiguous);
                record.next_ms = next_ms;
                record.last = Some(note);
                let upstream = record.upstream()?;
                self.changes.push(Change::Due {
                    seq,
                    due: next_ms,
                    upstream,
                });
            }
            Finish::Dead { reason, note } => {
                record.state = "dead".into();
                record.reason = Some(reason);
                record.last = Some(note);
                c.queued = c.queued.saturating_sub(1);
                c.queued_bytes = c.queued_bytes.saturating_sub(record.bytes);
                c.dead += 1;
                c.dead_bytes = c.dead_bytes.saturating_add(record.bytes);
                self.changes.push(Change::Gone(seq));
            }
        }
        self.write_stored(&record).map(drop)
    }

    /// Every record matching `filter` (a full scan: operator commands and an upstream's
    /// recovery only).
    fn matching(&self, filter: &Filter, now: u64) -> Result<Vec<Record>, SpoolError> {
        let mut out = Vec::new();
        for entry in self.messages.iter().map_err(unavailable)? {
            let (_, v) = entry.map_err(unavailable)?;
            let record = decode(v.value())?;
            if filter.matches(&record, now) {
                out.push(record);
            }
        }
        Ok(out)
    }

    fn wake(&mut self, upstream: &str, now: u64) -> Result<usize, SpoolError> {
        let filter = Filter {
            state: Some("queued".into()),
            ..Filter::default()
        };
        let mut n = 0;
        for mut record in self.matching(&filter, now)? {
            if record.envelope.upstream != upstream || record.next_ms == now {
                continue;
            }
            // Arrival order among the woken: due at `now`, then by seq. Those already due are
            // moved too: the messages the probes were tried on (due again a backoff later)
            // would otherwise go after the ones never tried.
            record.next_ms = now;
            self.write(&record)?;
            self.schedule(&record, now);
            n += 1;
        }
        Ok(n)
    }

    fn retry(&mut self, filter: &Filter, now: u64) -> Result<usize, SpoolError> {
        let mut n = 0;
        for mut record in self.matching(filter, now)? {
            if let State::Dead { .. } = record.state {
                let c = &mut self.counters;
                c.dead = c.dead.saturating_sub(1);
                c.dead_bytes = c.dead_bytes.saturating_sub(record.bytes);
                c.queued += 1;
                c.queued_bytes = c.queued_bytes.saturating_add(record.bytes);
            }
            record.state = State::Queued;
            record.next_ms = now;
            record.client_errors = 0;
            // A retry by hand starts the message's age over too.
            record.envelope.received_ms = now;
            self.write(&record)?;
            self.schedule(&record, now);
            n += 1;
        }
        Ok(n)
    }

    fn purge(&mut self, filter: &Filter, now: u64) -> Result<usize, SpoolError> {
        let mut n = 0;
        for record in self.matching(filter, now)? {
            self.messages.remove(record.seq).map_err(unavailable)?;
            self.bodies.remove(record.seq).map_err(unavailable)?;
            let c = &mut self.counters;
            match record.state {
                State::Queued => {
                    c.queued = c.queued.saturating_sub(1);
                    c.queued_bytes = c.queued_bytes.saturating_sub(record.bytes);
                    self.changes.push(Change::Gone(record.seq));
                }
                State::Dead { .. } => {
                    c.dead = c.dead.saturating_sub(1);
                    c.dead_bytes = c.dead_bytes.saturating_sub(record.bytes);
                }
            }
            n += 1;
        }
        Ok(n)
    }

    fn sweep(&mut self, now: u64) -> Result<usize, SpoolError> {
        let mut expired = Vec::new();
        for entry in self.expiry.range((0, 0)..(now, 0)).map_err(unavailable)? {
            let (k, _) = entry.map_err(unavailable)?;
            expired.push(k.value());
            if expired.len() >= 100_000 {
                break; // the rest next time: a bounded transaction
            }
        }
        for (until, key) in &expired {
            self.expiry.remove((*until, *key)).map_err(unavailable)?;
            // Only if the key was not written again with a later expiry.
            let current = self.dedup.get(key).map_err(unavailable)?.map(|v| v.value());
            if current.is_some_and(|(_, u)| u == *until) {
                self.dedup.remove(key).map_err(unavailable)?;
            }
        }
        Ok(expired.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::Envelope;

    fn record(state: State, last: Option<&str>) -> Record {
        Record {
            seq: 7,
            envelope: Envelope {
                route: "mg".into(),
                provider: "mailgun".into(),
                id: "id-1".into(),
                received_ms: 1_700_000_000_000,
                upstream: "127.0.0.1:3000".into(),
                method: "POST".into(),
                target: "/hook?a=1".into(),
                headers: vec![
                    ("content-type".into(), b"application/json".to_vec()),
                    ("x-odd".into(), vec![0xff, 0x00, b'"']),
                ],
            },
            state,
            attempts: 3,
            finished: 2,
            client_errors: 1,
            ambiguous: 1,
            next_ms: 1_700_000_123_000,
            last: last.map(str::to_owned),
            bytes: 1234,
        }
    }

    /// The writer's view of a record and the full one are the same JSON: records written by
    /// either are read by the other, byte for byte.
    #[test]
    fn a_stored_record_is_the_same_json_as_a_record() {
        for r in [
            record(State::Queued, None),
            record(State::Queued, Some("503 from the app")),
            record(
                State::Dead {
                    reason: "client_error".into(),
                },
                Some("404"),
            ),
        ] {
            let json = encode(&r);
            let stored: Stored = serde_json::from_slice(&json).unwrap();
            assert_eq!(stored.queued(), r.state == State::Queued);
            assert_eq!(stored.upstream().unwrap(), "127.0.0.1:3000");
            assert_eq!(stored.encode(), json, "{}", String::from_utf8_lossy(&json));
            assert_eq!(decode(&stored.encode()).unwrap(), r);
        }
    }
}
