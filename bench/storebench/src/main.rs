//! storebench: redb 2.6.4 vs SQLite (rusqlite, bundled) for a durable webhook-spool workload.
//!
//! Usage: storebench <redb|sqlite-full|sqlite-normal> <data-dir> [rounds=3000] [preload=500000]
//!
//! See README.md for the exact workload.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const PER_ROUND: usize = 12; // 12 enqueues + 12 starts + 12 finishes per commit
const RECORD_LEN: usize = 700;
const BODY_LEN: usize = 1024;
const PRELOAD_TXN: usize = 50_000; // preload rows per (untimed) transaction
const BASE_UNTIL: u64 = 1_700_000_000_000; // "now" in ms; until = BASE_UNTIL + 7d + seq

// ---------- deterministic PRNG (splitmix64), same stream for both stores ----------
struct Rng(u64);
impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn next_u128(&mut self) -> u128 {
        ((self.next_u64() as u128) << 64) | self.next_u64() as u128
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn until_for(seq: u64) -> u64 {
    BASE_UNTIL + 7 * 24 * 3600 * 1000 + seq
}

/// Fixed 700-byte JSON-like template with the seq patched in at offset 8..16.
fn make_record(template: &[u8], seq: u64) -> Vec<u8> {
    let mut v = template.to_vec();
    v[8..16].copy_from_slice(&seq.to_le_bytes());
    v
}

fn record_template() -> Vec<u8> {
    let s = br#"{"id":"........","state":"queued","attempts":0,"url":"https://example.invalid/hooks/receiver","headers":{"content-type":"application/json","x-signature":"sha256=0000000000000000000000000000000000000000000000000000000000000000"},"#;
    let mut v = s.to_vec();
    while v.len() < RECORD_LEN - 1 {
        v.push(b'x');
    }
    v.push(b'}');
    v
}

/// What a round does: enqueue `enq` (new seq, dedup key, body), start `start` seqs, finish `fin` seqs.
struct Round<'a> {
    enq: &'a [(u64, u128, Vec<u8>)],
    start: &'a [u64],
    fin: &'a [u64],
}

trait Store {
    fn preload(&mut self, keys: &[(u128, u64)]);
    /// Runs one round as one transaction; returns time spent in the commit call.
    fn round(&mut self, r: &Round, template: &[u8]) -> Duration;
    fn counts(&mut self) -> (u64, u64, u64, u64);
}

// ------------------------------------ redb ------------------------------------
mod redb_store {
    use super::*;
    use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};

    const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
    const BODIES: TableDefinition<u64, &[u8]> = TableDefinition::new("bodies");
    const DEDUP: TableDefinition<u128, (u64, u64)> = TableDefinition::new("dedup");
    const EXPIRY: TableDefinition<(u64, u128), ()> = TableDefinition::new("expiry");

    pub struct RedbStore {
        db: Database,
        pub dedup_hits: u64,
    }

    impl RedbStore {
        pub fn open(path: &Path) -> Self {
            // Defaults: Database::create, Durability::Immediate, no 2-phase commit, 1 GiB cache.
            let db = Database::create(path).expect("create redb");
            let tx = db.begin_write().unwrap();
            {
                tx.open_table(RECORDS).unwrap();
                tx.open_table(BODIES).unwrap();
                tx.open_table(DEDUP).unwrap();
                tx.open_table(EXPIRY).unwrap();
            }
            tx.commit().unwrap();
            RedbStore { db, dedup_hits: 0 }
        }
    }

    impl Store for RedbStore {
        fn preload(&mut self, keys: &[(u128, u64)]) {
            for chunk in keys.chunks(PRELOAD_TXN) {
                let tx = self.db.begin_write().unwrap();
                {
                    let mut dedup = tx.open_table(DEDUP).unwrap();
                    let mut exp = tx.open_table(EXPIRY).unwrap();
                    for &(k, until) in chunk {
                        dedup.insert(k, (0u64, until)).unwrap();
                        exp.insert((until, k), ()).unwrap();
                    }
                }
                tx.commit().unwrap();
            }
        }

        fn round(&mut self, r: &Round, template: &[u8]) -> Duration {
            let tx = self.db.begin_write().unwrap();
            {
                let mut records = tx.open_table(RECORDS).unwrap();
                let mut bodies = tx.open_table(BODIES).unwrap();
                let mut dedup = tx.open_table(DEDUP).unwrap();
                let mut exp = tx.open_table(EXPIRY).unwrap();
                // 1. enqueue
                for (seq, key, body) in r.enq {
                    let hit = dedup.get(*key).unwrap().map(|g| g.value());
                    if hit.is_some() {
                        self.dedup_hits += 1;
                        continue;
                    }
                    let until = until_for(*seq);
                    let rec = make_record(template, *seq);
                    records.insert(*seq, rec.as_slice()).unwrap();
                    bodies.insert(*seq, body.as_slice()).unwrap();
                    dedup.insert(*key, (*seq, until)).unwrap();
                    exp.insert((until, *key), ()).unwrap();
                }
                // 2. start: read record, write back modified (same size)
                for seq in r.start {
                    let mut rec = records.get(*seq).unwrap().expect("start: record").value().to_vec();
                    rec[40] = b'R'; // "state" byte changed, same length
                    records.insert(*seq, rec.as_slice()).unwrap();
                }
                // 3. finish: read record, delete record + body
                for seq in r.fin {
                    let rec = records.get(*seq).unwrap().expect("finish: record").value().to_vec();
                    std::hint::black_box(&rec);
                    records.remove(*seq).unwrap();
                    bodies.remove(*seq).unwrap();
                }
            }
            let t = Instant::now();
            tx.commit().unwrap();
            t.elapsed()
        }

        fn counts(&mut self) -> (u64, u64, u64, u64) {
            let tx = self.db.begin_read().unwrap();
            (
                tx.open_table(RECORDS).unwrap().len().unwrap(),
                tx.open_table(BODIES).unwrap().len().unwrap(),
                tx.open_table(DEDUP).unwrap().len().unwrap(),
                tx.open_table(EXPIRY).unwrap().len().unwrap(),
            )
        }
    }
}

// ------------------------------------ SQLite ------------------------------------
mod sqlite_store {
    use super::*;
    use rusqlite::{Connection, OptionalExtension, params};

    pub struct SqliteStore {
        conn: Connection,
        pub dedup_hits: u64,
    }

    impl SqliteStore {
        pub fn open(path: &Path, synchronous: &str, cache_kib: Option<i64>) -> Self {
            let conn = Connection::open(path).expect("open sqlite");
            let mode: String = conn
                .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
                .unwrap();
            assert_eq!(mode.to_lowercase(), "wal");
            conn.execute_batch(&format!("PRAGMA synchronous={synchronous};")).unwrap();
            if let Some(kib) = cache_kib {
                conn.execute_batch(&format!("PRAGMA cache_size=-{kib};")).unwrap();
            }
            conn.execute_batch(
                "CREATE TABLE records(seq INTEGER PRIMARY KEY, v BLOB);
                 CREATE TABLE bodies(seq INTEGER PRIMARY KEY, v BLOB);
                 CREATE TABLE dedup(k BLOB PRIMARY KEY, seq INTEGER, until INTEGER) WITHOUT ROWID;
                 CREATE TABLE expiry(until INTEGER, k BLOB, PRIMARY KEY(until,k)) WITHOUT ROWID;",
            )
            .unwrap();
            conn.set_prepared_statement_cache_capacity(32);
            SqliteStore { conn, dedup_hits: 0 }
        }

        pub fn pragma(&self, name: &str) -> String {
            self.conn
                .query_row(&format!("PRAGMA {name}"), [], |r| {
                    r.get::<_, rusqlite::types::Value>(0)
                })
                .map(|v| format!("{v:?}"))
                .unwrap_or_else(|e| format!("err {e}"))
        }
    }

    impl Store for SqliteStore {
        fn preload(&mut self, keys: &[(u128, u64)]) {
            for chunk in keys.chunks(PRELOAD_TXN) {
                let tx = self
                    .conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .unwrap();
                {
                    let mut ins_d = tx
                        .prepare_cached("INSERT INTO dedup(k, seq, until) VALUES (?1, ?2, ?3)")
                        .unwrap();
                    let mut ins_e = tx
                        .prepare_cached("INSERT INTO expiry(until, k) VALUES (?1, ?2)")
                        .unwrap();
                    for &(k, until) in chunk {
                        let kb = k.to_be_bytes();
                        ins_d.execute(params![&kb[..], 0i64, until as i64]).unwrap();
                        ins_e.execute(params![until as i64, &kb[..]]).unwrap();
                    }
                }
                tx.commit().unwrap();
            }
        }

        fn round(&mut self, r: &Round, template: &[u8]) -> Duration {
            let c = &self.conn;
            c.prepare_cached("BEGIN IMMEDIATE").unwrap().execute([]).unwrap();
            {
                let mut get_d = c.prepare_cached("SELECT seq, until FROM dedup WHERE k = ?1").unwrap();
                let mut ins_r = c.prepare_cached("INSERT INTO records(seq, v) VALUES (?1, ?2)").unwrap();
                let mut ins_b = c.prepare_cached("INSERT INTO bodies(seq, v) VALUES (?1, ?2)").unwrap();
                let mut ins_d = c
                    .prepare_cached("INSERT INTO dedup(k, seq, until) VALUES (?1, ?2, ?3)")
                    .unwrap();
                let mut ins_e = c.prepare_cached("INSERT INTO expiry(until, k) VALUES (?1, ?2)").unwrap();
                let mut get_r = c.prepare_cached("SELECT v FROM records WHERE seq = ?1").unwrap();
                let mut upd_r = c.prepare_cached("UPDATE records SET v = ?2 WHERE seq = ?1").unwrap();
                let mut del_r = c.prepare_cached("DELETE FROM records WHERE seq = ?1").unwrap();
                let mut del_b = c.prepare_cached("DELETE FROM bodies WHERE seq = ?1").unwrap();

                // 1. enqueue
                for (seq, key, body) in r.enq {
                    let kb = key.to_be_bytes();
                    let hit: Option<(i64, i64)> = get_d
                        .query_row(params![&kb[..]], |row| Ok((row.get(0)?, row.get(1)?)))
                        .optional()
                        .unwrap();
                    if hit.is_some() {
                        self.dedup_hits += 1;
                        continue;
                    }
                    let until = until_for(*seq) as i64;
                    let rec = make_record(template, *seq);
                    ins_r.execute(params![*seq as i64, &rec[..]]).unwrap();
                    ins_b.execute(params![*seq as i64, &body[..]]).unwrap();
                    ins_d.execute(params![&kb[..], *seq as i64, until]).unwrap();
                    ins_e.execute(params![until, &kb[..]]).unwrap();
                }
                // 2. start
                for seq in r.start {
                    let mut rec: Vec<u8> = get_r
                        .query_row(params![*seq as i64], |row| row.get(0))
                        .expect("start: record");
                    rec[40] = b'R';
                    let n = upd_r.execute(params![*seq as i64, &rec[..]]).unwrap();
                    assert_eq!(n, 1);
                }
                // 3. finish
                for seq in r.fin {
                    let rec: Vec<u8> = get_r
                        .query_row(params![*seq as i64], |row| row.get(0))
                        .expect("finish: record");
                    std::hint::black_box(&rec);
                    assert_eq!(del_r.execute(params![*seq as i64]).unwrap(), 1);
                    assert_eq!(del_b.execute(params![*seq as i64]).unwrap(), 1);
                }
            }
            let t = Instant::now();
            c.prepare_cached("COMMIT").unwrap().execute([]).unwrap();
            t.elapsed()
        }

        fn counts(&mut self) -> (u64, u64, u64, u64) {
            let q = |t: &str| -> u64 {
                self.conn
                    .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get::<_, i64>(0))
                    .unwrap() as u64
            };
            (q("records"), q("bodies"), q("dedup"), q("expiry"))
        }
    }
}

// ------------------------------------ measurement ------------------------------------
fn cpu_times() -> (f64, f64) {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0);
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// (read_bytes, write_bytes) actually sent to the block layer, from /proc/self/io.
fn proc_io() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    let mut rb = 0;
    let mut wb = 0;
    for line in s.lines() {
        if let Some(v) = line.strip_prefix("read_bytes: ") {
            rb = v.trim().parse().unwrap_or(0);
        }
        if let Some(v) = line.strip_prefix("write_bytes: ") {
            wb = v.trim().parse().unwrap_or(0);
        }
    }
    (rb, wb)
}

fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).filter_map(|e| e.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: storebench <redb|sqlite-full|sqlite-normal> <data-dir> [rounds=3000] [preload=500000]");
        std::process::exit(2);
    }
    let variant = args[1].as_str();
    let data_dir = PathBuf::from(&args[2]);
    let rounds: usize = args.get(3).map(|s| s.parse().unwrap()).unwrap_or(3000);
    let preload_n: usize = args.get(4).map(|s| s.parse().unwrap()).unwrap_or(500_000);
    // Optional, informational only: SQLite page cache in KiB (default SQLite = 2000 KiB).
    let sqlite_cache_kib: Option<i64> = std::env::var("SQLITE_CACHE_KIB").ok().map(|s| s.parse().unwrap());

    // Fresh, per-variant directory.
    let dir = data_dir.join(variant);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let mut store: Box<dyn Store> = match variant {
        "redb" => Box::new(redb_store::RedbStore::open(&dir.join("spool.redb"))),
        "sqlite-full" | "sqlite-normal" => {
            let sync = if variant == "sqlite-full" { "FULL" } else { "NORMAL" };
            let s = sqlite_store::SqliteStore::open(&dir.join("spool.sqlite"), sync, sqlite_cache_kib);
            eprintln!(
                "sqlite {}: journal_mode={} synchronous={} cache_size={} page_size={} wal_autocheckpoint={}",
                rusqlite::version(),
                s.pragma("journal_mode"),
                s.pragma("synchronous"),
                s.pragma("cache_size"),
                s.pragma("page_size"),
                s.pragma("wal_autocheckpoint")
            );
            Box::new(s)
        }
        other => panic!("unknown variant {other}"),
    };

    let mut rng = Rng(0x5EED_0000_0000_0001);

    // ---- preload (untimed) ----
    let t0 = Instant::now();
    let preload: Vec<(u128, u64)> = (0..preload_n)
        .map(|i| (rng.next_u128(), BASE_UNTIL + (i as u64 % 604_800_000)))
        .collect();
    store.preload(&preload);
    drop(preload);
    let preload_secs = t0.elapsed().as_secs_f64();

    let template = record_template();
    assert_eq!(template.len(), RECORD_LEN);

    // Pre-generate all per-message inputs (keys + 1024-byte random bodies) outside the timed section.
    let total_rounds = rounds + 2; // 2 untimed warm-up rounds fill the enqueue->start->finish pipeline
    let msgs: Vec<(u64, u128, Vec<u8>)> = (0..total_rounds * PER_ROUND)
        .map(|i| {
            let mut body = vec![0u8; BODY_LEN];
            rng.fill(&mut body);
            (i as u64 + 1, rng.next_u128(), body)
        })
        .collect();
    let seqs_of = |round: usize| -> Vec<u64> {
        msgs[round * PER_ROUND..(round + 1) * PER_ROUND].iter().map(|m| m.0).collect()
    };

    let run_round = |store: &mut Box<dyn Store>, r: usize| -> Duration {
        let start = if r >= 1 { seqs_of(r - 1) } else { vec![] };
        let fin = if r >= 2 { seqs_of(r - 2) } else { vec![] };
        let round = Round { enq: &msgs[r * PER_ROUND..(r + 1) * PER_ROUND], start: &start, fin: &fin };
        store.round(&round, &template)
    };

    for r in 0..2 {
        run_round(&mut store, r);
    }

    // ---- timed section ----
    let mut commit_lat: Vec<Duration> = Vec::with_capacity(rounds);
    let mut round_lat: Vec<Duration> = Vec::with_capacity(rounds);
    let (u0, s0) = cpu_times();
    let (rb0, wb0) = proc_io();
    let t_start = Instant::now();
    for r in 2..total_rounds {
        let tr = Instant::now();
        let c = run_round(&mut store, r);
        round_lat.push(tr.elapsed());
        commit_lat.push(c);
    }
    let wall = t_start.elapsed().as_secs_f64();
    let (u1, s1) = cpu_times();
    let (rb1, wb1) = proc_io();

    let msgs_timed = (rounds * PER_ROUND) as f64; // each timed round: 12 enqueue + 12 start + 12 finish
    let user = u1 - u0;
    let sys = s1 - s0;
    let mean_ms = |v: &[Duration]| v.iter().map(|d| d.as_secs_f64()).sum::<f64>() / v.len() as f64 * 1e3;
    let pct_ms = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        v[((v.len() as f64 - 1.0) * p).round() as usize].as_secs_f64() * 1e3
    };
    let cm = mean_ms(&commit_lat);
    let rm = mean_ms(&round_lat);
    let c50 = pct_ms(&mut commit_lat, 0.5);
    let c99 = pct_ms(&mut commit_lat, 0.99);
    let (nrec, nbody, ndedup, nexp) = store.counts();
    drop(store);

    println!(
        "RESULT variant={variant} rounds={rounds} msgs={} preload={preload_n} preload_s={preload_secs:.1} \
         wall_s={wall:.3} msg_per_s={:.0} cpu_user_s={user:.3} cpu_sys_s={sys:.3} cpu_us_per_msg={:.1} \
         user_us_per_msg={:.1} sys_us_per_msg={:.1} commit_mean_ms={cm:.3} commit_p50_ms={c50:.3} \
         commit_p99_ms={c99:.3} round_mean_ms={rm:.3} disk_read_MB={:.1} disk_write_MB={:.1} \
         final_files_MB={:.1} rows(records,bodies,dedup,expiry)=({nrec},{nbody},{ndedup},{nexp})",
        msgs_timed as u64,
        msgs_timed / wall,
        (user + sys) / msgs_timed * 1e6,
        user / msgs_timed * 1e6,
        sys / msgs_timed * 1e6,
        (rb1 - rb0) as f64 / 1e6,
        (wb1 - wb0) as f64 / 1e6,
        dir_size(&dir) as f64 / 1e6,
    );
}
