//! The embedded spool store: one redb file (a transactional, crash-safe B-tree store; one
//! fsync per commit). Every write goes through one writer thread, which takes all the
//! writes waiting when it starts a transaction and commits them together: the fsync is
//! shared by every request that arrived meanwhile (group commit), and none waits longer than
//! one commit beyond the one in progress.
//!
//! Tables: `messages` (seq → record, JSON), `bodies` (seq → body bytes), `due` ((next attempt
//! ms, seq) for queued messages, oldest first), `dedup` (key → (seq, until ms)) with its
//! expiry index `dedup_expiry`, and `meta` (counters). A delivered message's record and body
//! are deleted; its keys stay until `dedup_ttl` ends, so a copy is still recognised.
//!
//! Longer than 500 lines: the reading side, the writer thread and each op's transaction
//! body are one unit around the same tables and counters; read top to bottom: the store's
//! API, the writer (batching, commit, recovery after a failed write), then the ops.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use tokio::sync::oneshot;

use async_trait::async_trait;

use super::{
    now_ms, Enqueued, Filter, Finish, Incoming, Record, SpoolBackend, SpoolError, Started, State,
    StoreStats,
};

const MESSAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("messages");
const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
const DUE: TableDefinition<(u64, u64), ()> = TableDefinition::new("due");
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
    pub dedup_ttl: Duration,
}

type Reply<T> = oneshot::Sender<Result<T, SpoolError>>;

enum Op {
    Enqueue(Incoming, Reply<Enqueued>),
    /// An attempt starts: recorded before the request goes out. `None`: not queued (any more).
    Start(u64, Reply<Option<Started>>),
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
            txn.open_table(DUE).map_err(|e| e.to_string())?;
            txn.open_table(DEDUP).map_err(|e| e.to_string())?;
            txn.open_table(DEDUP_EXPIRY).map_err(|e| e.to_string())?;
            txn.open_table(META).map_err(|e| e.to_string())?;
            txn.commit().map_err(|e| e.to_string())?;
        }
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
        };
        std::thread::Builder::new()
            .name("hookguard-spool".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| format!("cannot start the spool's writer: {e}"))?;
        Ok(SpoolStore { db, ops })
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
        self.ask(|r| Op::Enqueue(message, r)).await
    }

    /// Records that an attempt starts (or `None`: not queued).
    pub async fn start(&self, seq: u64) -> Result<Option<Started>, SpoolError> {
        self.ask(|r| Op::Start(seq, r)).await
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

    /// Up to `limit` queued messages due at `now_ms`, oldest due first (or, with
    /// `newest_first`, the most recently due first): (due ms, seq).
    pub fn due(
        &self,
        now_ms: u64,
        limit: usize,
        newest_first: bool,
    ) -> Result<Vec<(u64, u64)>, SpoolError> {
        let txn = current(&self.db)?.begin_read().map_err(unavailable)?;
        let due = txn.open_table(DUE).map_err(unavailable)?;
        let range = due
            .range((0, 0)..=(now_ms, u64::MAX))
            .map_err(unavailable)?;
        let entries: Box<dyn Iterator<Item = _>> = if newest_first {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        let mut out = Vec::new();
        for entry in entries.take(limit) {
            let (k, _) = entry.map_err(unavailable)?;
            out.push(k.value());
        }
        Ok(out)
    }

    /// The earliest time a queued message is due, if any.
    pub fn next_due(&self) -> Result<Option<u64>, SpoolError> {
        let txn = current(&self.db)?.begin_read().map_err(unavailable)?;
        let due = txn.open_table(DUE).map_err(unavailable)?;
        let first = due.first().map_err(unavailable)?;
        Ok(first.map(|(k, _)| k.value().0))
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
    ) -> Result<Vec<(u64, u64)>, SpoolError> {
        SpoolStore::due(self, now_ms, limit, newest_first)
    }

    async fn next_due(&self) -> Result<Option<u64>, SpoolError> {
        SpoolStore::next_due(self)
    }

    async fn upstream_of(&self, seq: u64) -> Result<Option<String>, SpoolError> {
        Ok(SpoolStore::get(self, seq)?.map(|(r, _)| r.envelope.upstream))
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
}

/// An op's reply, sent once its transaction is committed (or has failed).
enum Pending {
    Enqueued(Reply<Enqueued>, Result<Enqueued, SpoolError>),
    Started(Reply<Option<Started>>, Result<Option<Started>, SpoolError>),
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
                Op::Enqueue(m, _) => m.body.len() as u64 + 1024,
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
        let mut pending = Vec::with_capacity(batch.len());
        let now = now_ms();
        for op in batch {
            pending.push(match op {
                Op::Enqueue(m, r) => {
                    let result = if !room {
                        Err(SpoolError::Full(
                            "free disk space below spool.min_free_bytes",
                        ))
                    } else {
                        self.enqueue(&txn, m, now)
                    };
                    Pending::Enqueued(r, result)
                }
                Op::Start(seq, r) => Pending::Started(r, start(&txn, seq, now)),
                Op::Finish(seq, f, r) => Pending::Done(r, finish(&txn, seq, f)),
                Op::Wake(upstream, r) => Pending::Count(r, wake(&txn, &upstream, now)),
                Op::Retry(filter, r) => Pending::Count(r, retry(&txn, &filter, now)),
                Op::Purge(filter, r) => Pending::Count(r, purge(&txn, &filter, now)),
                Op::Sweep(r) => Pending::Count(r, sweep(&txn, now)),
            });
        }
        // An op that could not read or write (a full disk) may have left part of its change
        // in the transaction: nothing of the batch is committed.
        let failed = pending.iter().find_map(Pending::storage_error);
        let committed = match failed {
            Some(e) => {
                drop(txn.abort());
                Err(e)
            }
            None => txn.commit().map_err(unavailable),
        };
        match committed {
            Ok(()) => {
                (self.on_commit)(started.elapsed());
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

    fn enqueue(
        &self,
        txn: &WriteTransaction,
        m: Incoming,
        now: u64,
    ) -> Result<Enqueued, SpoolError> {
        let mut dedup = txn.open_table(DEDUP).map_err(unavailable)?;
        for key in &m.keys {
            if let Some(v) = dedup.get(key).map_err(unavailable)? {
                let (_, until) = v.value();
                if until > now {
                    return Ok(Enqueued::Duplicate);
                }
            }
        }
        let mut meta = txn.open_table(META).map_err(unavailable)?;
        let get = |meta: &redb::Table<&str, u64>, k: &str| -> Result<u64, SpoolError> {
            Ok(meta.get(k).map_err(unavailable)?.map_or(0, |v| v.value()))
        };
        let bytes = m.bytes();
        let held = get(&meta, QUEUED_BYTES)? + get(&meta, DEAD_BYTES)?;
        if held.saturating_add(bytes) > self.limits.max_bytes {
            return Err(SpoolError::Full("spool.max_bytes reached"));
        }
        let seq = get(&meta, NEXT_SEQ)?.max(1);
        meta.insert(NEXT_SEQ, seq + 1).map_err(unavailable)?;
        meta.insert(QUEUED, get(&meta, QUEUED)? + 1)
            .map_err(unavailable)?;
        meta.insert(QUEUED_BYTES, get(&meta, QUEUED_BYTES)? + bytes)
            .map_err(unavailable)?;
        let record = Record {
            seq,
            envelope: m.envelope,
            state: State::Queued,
            attempts: 0,
            finished: 0,
            client_errors: 0,
            ambiguous: 0,
            next_ms: now,
            last: None,
            bytes,
        };
        txn.open_table(MESSAGES)
            .map_err(unavailable)?
            .insert(seq, encode(&record).as_slice())
            .map_err(unavailable)?;
        txn.open_table(BODIES)
            .map_err(unavailable)?
            .insert(seq, &m.body[..])
            .map_err(unavailable)?;
        txn.open_table(DUE)
            .map_err(unavailable)?
            .insert((now, seq), ())
            .map_err(unavailable)?;
        let until = now.saturating_add(super::ms(self.limits.dedup_ttl));
        let mut expiry = txn.open_table(DEDUP_EXPIRY).map_err(unavailable)?;
        for key in m.keys {
            dedup.insert(key, (seq, until)).map_err(unavailable)?;
            expiry.insert((until, key), ()).map_err(unavailable)?;
        }
        Ok(Enqueued::Queued(seq))
    }
}

fn reply_error(op: Op, e: &SpoolError) {
    match op {
        Op::Enqueue(_, r) => drop(r.send(Err(e.clone()))),
        Op::Start(_, r) => drop(r.send(Err(e.clone()))),
        Op::Finish(_, _, r) => drop(r.send(Err(e.clone()))),
        Op::Wake(_, r) | Op::Retry(_, r) | Op::Purge(_, r) | Op::Sweep(r) => {
            drop(r.send(Err(e.clone())))
        }
    }
}

fn read(txn: &WriteTransaction, seq: u64) -> Result<Option<Record>, SpoolError> {
    let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    let value = messages.get(seq).map_err(unavailable)?;
    value.map(|v| decode(v.value())).transpose()
}

fn write(txn: &WriteTransaction, record: &Record) -> Result<(), SpoolError> {
    txn.open_table(MESSAGES)
        .map_err(unavailable)?
        .insert(record.seq, encode(record).as_slice())
        .map_err(unavailable)?;
    Ok(())
}

fn add(txn: &WriteTransaction, key: &str, delta: i64) -> Result<(), SpoolError> {
    let mut meta = txn.open_table(META).map_err(unavailable)?;
    let current = meta.get(key).map_err(unavailable)?.map_or(0, |v| v.value());
    let next = if delta >= 0 {
        current.saturating_add(delta as u64)
    } else {
        current.saturating_sub(delta.unsigned_abs())
    };
    meta.insert(key, next).map_err(unavailable)?;
    Ok(())
}

fn start(txn: &WriteTransaction, seq: u64, now: u64) -> Result<Option<Started>, SpoolError> {
    let Some(mut record) = read(txn, seq)? else {
        return Ok(None);
    };
    // Not due (any more): the scheduler's list of due messages was read before another
    // attempt of this one recorded its retry; starting it now would skip its backoff.
    if record.state != State::Queued || record.next_ms > now {
        return Ok(None);
    }
    // An attempt started and never finished: it may have reached the application.
    let interrupted = record.attempts > record.finished;
    if interrupted {
        let unknown = record.attempts - record.finished;
        record.ambiguous += unknown;
        record.finished = record.attempts;
        add(txn, AMBIGUOUS_TOTAL, i64::from(unknown))?;
    }
    record.attempts += 1;
    write(txn, &record)?;
    let bodies = txn.open_table(BODIES).map_err(unavailable)?;
    let body = bodies
        .get(seq)
        .map_err(unavailable)?
        .map(|b| Bytes::copy_from_slice(b.value()))
        .unwrap_or_default();
    Ok(Some((Box::new(record), body, interrupted)))
}

fn finish(txn: &WriteTransaction, seq: u64, f: Finish) -> Result<(), SpoolError> {
    let Some(mut record) = read(txn, seq)? else {
        return Ok(());
    };
    if record.state != State::Queued {
        return Ok(());
    }
    let mut due = txn.open_table(DUE).map_err(unavailable)?;
    due.remove((record.next_ms, seq)).map_err(unavailable)?;
    record.finished = record.attempts;
    match f {
        Finish::Delivered => {
            txn.open_table(MESSAGES)
                .map_err(unavailable)?
                .remove(seq)
                .map_err(unavailable)?;
            txn.open_table(BODIES)
                .map_err(unavailable)?
                .remove(seq)
                .map_err(unavailable)?;
            add(txn, QUEUED, -1)?;
            add(txn, QUEUED_BYTES, -(record.bytes as i64))?;
            add(txn, DELIVERED_TOTAL, 1)?;
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
            add(txn, AMBIGUOUS_TOTAL, i64::from(ambiguous))?;
            record.next_ms = next_ms;
            record.last = Some(note);
            due.insert((next_ms, seq), ()).map_err(unavailable)?;
        }
        Finish::Dead { reason, note } => {
            record.state = State::Dead { reason };
            record.last = Some(note);
            add(txn, QUEUED, -1)?;
            add(txn, QUEUED_BYTES, -(record.bytes as i64))?;
            add(txn, DEAD, 1)?;
            add(txn, DEAD_BYTES, record.bytes as i64)?;
        }
    }
    drop(due);
    write(txn, &record)
}

/// Every record matching `filter` (a full scan: operator commands only).
fn matching(txn: &WriteTransaction, filter: &Filter, now: u64) -> Result<Vec<Record>, SpoolError> {
    let messages = txn.open_table(MESSAGES).map_err(unavailable)?;
    let mut out = Vec::new();
    for entry in messages.iter().map_err(unavailable)? {
        let (_, v) = entry.map_err(unavailable)?;
        let record = decode(v.value())?;
        if filter.matches(&record, now) {
            out.push(record);
        }
    }
    Ok(out)
}

fn wake(txn: &WriteTransaction, upstream: &str, now: u64) -> Result<usize, SpoolError> {
    let filter = Filter {
        state: Some("queued".into()),
        ..Filter::default()
    };
    let mut n = 0;
    for mut record in matching(txn, &filter, now)? {
        if record.envelope.upstream != upstream || record.next_ms == now {
            continue;
        }
        let mut due = txn.open_table(DUE).map_err(unavailable)?;
        due.remove((record.next_ms, record.seq))
            .map_err(unavailable)?;
        // Arrival order among the woken: due at `now`, then by seq. Those already due are
        // moved too: the messages the probes were tried on (due again a backoff later) would
        // otherwise go after the ones never tried.
        due.insert((now, record.seq), ()).map_err(unavailable)?;
        drop(due);
        record.next_ms = now;
        write(txn, &record)?;
        n += 1;
    }
    Ok(n)
}

fn retry(txn: &WriteTransaction, filter: &Filter, now: u64) -> Result<usize, SpoolError> {
    let mut n = 0;
    for mut record in matching(txn, filter, now)? {
        let mut due = txn.open_table(DUE).map_err(unavailable)?;
        if let State::Dead { .. } = record.state {
            add(txn, DEAD, -1)?;
            add(txn, DEAD_BYTES, -(record.bytes as i64))?;
            add(txn, QUEUED, 1)?;
            add(txn, QUEUED_BYTES, record.bytes as i64)?;
        } else {
            due.remove((record.next_ms, record.seq))
                .map_err(unavailable)?;
        }
        due.insert((now, record.seq), ()).map_err(unavailable)?;
        drop(due);
        record.state = State::Queued;
        record.next_ms = now;
        record.client_errors = 0;
        // A retry by hand starts the message's age over too.
        record.envelope.received_ms = now;
        write(txn, &record)?;
        n += 1;
    }
    Ok(n)
}

fn purge(txn: &WriteTransaction, filter: &Filter, now: u64) -> Result<usize, SpoolError> {
    let mut n = 0;
    for record in matching(txn, filter, now)? {
        txn.open_table(MESSAGES)
            .map_err(unavailable)?
            .remove(record.seq)
            .map_err(unavailable)?;
        txn.open_table(BODIES)
            .map_err(unavailable)?
            .remove(record.seq)
            .map_err(unavailable)?;
        match record.state {
            State::Queued => {
                txn.open_table(DUE)
                    .map_err(unavailable)?
                    .remove((record.next_ms, record.seq))
                    .map_err(unavailable)?;
                add(txn, QUEUED, -1)?;
                add(txn, QUEUED_BYTES, -(record.bytes as i64))?;
            }
            State::Dead { .. } => {
                add(txn, DEAD, -1)?;
                add(txn, DEAD_BYTES, -(record.bytes as i64))?;
            }
        }
        n += 1;
    }
    Ok(n)
}

fn sweep(txn: &WriteTransaction, now: u64) -> Result<usize, SpoolError> {
    let mut expiry = txn.open_table(DEDUP_EXPIRY).map_err(unavailable)?;
    let mut dedup = txn.open_table(DEDUP).map_err(unavailable)?;
    let mut expired = Vec::new();
    for entry in expiry.range((0, 0)..(now, 0)).map_err(unavailable)? {
        let (k, _) = entry.map_err(unavailable)?;
        expired.push(k.value());
        if expired.len() >= 100_000 {
            break; // the rest next time: a bounded transaction
        }
    }
    for (until, key) in &expired {
        expiry.remove((*until, *key)).map_err(unavailable)?;
        // Only if the key was not written again with a later expiry.
        let current = dedup.get(key).map_err(unavailable)?.map(|v| v.value());
        if current.is_some_and(|(_, u)| u == *until) {
            dedup.remove(key).map_err(unavailable)?;
        }
    }
    Ok(expired.len())
}
