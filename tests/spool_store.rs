//! The embedded spool store on its own: what the scheduler and the counters see after the
//! file is closed and opened again (both are kept in memory and rebuilt from the records).

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hookguard::spool::store::Limits;
use hookguard::spool::{now_ms, Enqueued, Envelope, Finish, Incoming, SpoolStore};

fn limits() -> Limits {
    Limits {
        max_bytes: 1 << 30,
        min_free_bytes: 0,
        max_pending_bytes: 64 << 20,
        dedup_ttl: Duration::from_secs(3600),
    }
}

fn open(path: &Path) -> SpoolStore {
    // The previous store's writer thread lets go of the file once it sees its channel closed.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match SpoolStore::open(path, limits(), Box::new(|_| {})) {
            Ok(store) => return store,
            Err(e) if e.contains("open in another process") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("open: {e}"),
        }
    }
}

fn message(key: u128, upstream: &str) -> Incoming {
    Incoming {
        keys: vec![key],
        envelope: Envelope {
            route: "r".into(),
            provider: "mailgun".into(),
            id: format!("id-{key}"),
            received_ms: now_ms(),
            upstream: upstream.into(),
            method: "POST".into(),
            target: "/hook".into(),
            headers: vec![("content-type".into(), b"application/json".to_vec())],
        },
        body: Bytes::from_static(b"{}"),
    }
}

async fn enqueue(store: &SpoolStore, key: u128, upstream: &str) -> u64 {
    match store
        .enqueue(message(key, upstream))
        .await
        .expect("enqueue")
    {
        Enqueued::Queued(seq) => seq,
        Enqueued::Duplicate => panic!("message {key} is new"),
    }
}

fn seqs(due: Vec<(u64, u64)>) -> Vec<u64> {
    due.into_iter().map(|(_, seq)| seq).collect()
}

#[tokio::test]
async fn the_schedule_and_the_counters_are_read_back_from_the_records_when_the_file_opens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("spool.redb");
    let later = now_ms() + 60_000;
    {
        let store = open(&path);
        let delivered = enqueue(&store, 1, "127.0.0.1:1").await;
        let retried = enqueue(&store, 2, "127.0.0.1:2").await;
        let waiting = enqueue(&store, 3, "127.0.0.1:1").await;
        let dead = enqueue(&store, 4, "127.0.0.1:1").await;
        assert_eq!(
            seqs(store.due(now_ms(), 10, false, &[])),
            vec![delivered, retried, waiting, dead]
        );
        for seq in [delivered, retried, dead] {
            assert!(store.start(seq).await.expect("start").is_some());
        }
        store.finish(delivered, Finish::Delivered).await.unwrap();
        let retry = Finish::Retry {
            next_ms: later,
            note: "503".into(),
            client_error: false,
            ambiguous: false,
        };
        store.finish(retried, retry).await.unwrap();
        let gone = Finish::Dead {
            reason: "client_error".into(),
            note: "400".into(),
        };
        store.finish(dead, gone).await.unwrap();
        // What the scheduler sees at once: only the message never tried is due now.
        assert_eq!(seqs(store.due(now_ms(), 10, false, &[])), vec![waiting]);
        assert_eq!(
            seqs(store.due(later, 10, true, &[])),
            vec![retried, waiting]
        );
        // A copy of the delivered message is still a duplicate.
        let copy = store.enqueue(message(1, "127.0.0.1:1")).await.unwrap();
        assert_eq!(copy, Enqueued::Duplicate);
    }
    let store = open(&path);
    assert_eq!(seqs(store.due(now_ms(), 10, false, &[])), vec![3]);
    assert_eq!(seqs(store.due(later, 10, false, &[])), vec![3, 2]);
    assert!(store.next_due(&[]).is_some_and(|at| at <= now_ms()));
    assert_eq!(store.upstream_of(2).as_deref(), Some("127.0.0.1:2"));
    assert_eq!(store.upstream_of(1), None, "delivered");
    assert_eq!(store.upstream_of(4), None, "dead: not scheduled");
    let stats = store.stats().unwrap();
    assert_eq!(
        (
            stats.queued,
            stats.dead,
            stats.delivered_total,
            stats.enqueued_total
        ),
        (2, 1, 1, 4)
    );
    // Numbers go on where they were; the keys are still remembered.
    assert_eq!(enqueue(&store, 5, "127.0.0.1:1").await, 5);
    let copy = store.enqueue(message(1, "127.0.0.1:1")).await.unwrap();
    assert_eq!(copy, Enqueued::Duplicate);
    // A dead message retried by hand is scheduled again (due a moment after message 5).
    tokio::time::sleep(Duration::from_millis(5)).await;
    let filter = hookguard::spool::Filter {
        state: Some("dead".into()),
        ..Default::default()
    };
    assert_eq!(store.retry(filter).await.unwrap(), 1);
    assert_eq!(seqs(store.due(now_ms(), 10, false, &[])), vec![3, 5, 4]);
}
