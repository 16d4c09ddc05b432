//! The embedded store's schedule: which queued messages are due when, and the upstream each
//! goes to. The scheduler asks it several times per delivered message (what is due, where it
//! goes, when the next one is), so it lives in memory instead of in a table: a table cost a
//! B-tree insert and a removal in every message's commits, and a read transaction per
//! question. It holds only what the records already say (`state`, `next_ms`, the envelope's
//! upstream): rebuilt from them when the file opens, and changed only after the commit that
//! made a change durable, so it never shows what is not on disk. About 80 bytes per queued
//! message.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

/// A change to the schedule, made by an op and applied once its commit succeeded.
#[derive(Debug, Clone)]
pub(super) enum Change {
    /// `seq` is queued, due at `due` ms, for `upstream` (or due again at another time).
    Due {
        seq: u64,
        due: u64,
        upstream: String,
    },
    /// `seq` is no longer queued (delivered, dead, purged).
    Gone(u64),
}

#[derive(Debug, Default)]
pub(super) struct Schedule {
    by_due: BTreeSet<(u64, u64)>,
    /// seq → (due ms, upstream).
    queued: HashMap<u64, (u64, Arc<str>)>,
    /// One copy of each upstream's address, shared by its messages.
    upstreams: HashSet<Arc<str>>,
}

impl Schedule {
    pub(super) fn apply(&mut self, change: Change) {
        match change {
            Change::Due { seq, due, upstream } => {
                let upstream = match self.upstreams.get(upstream.as_str()) {
                    Some(u) => Arc::clone(u),
                    None => {
                        let u: Arc<str> = Arc::from(upstream);
                        self.upstreams.insert(Arc::clone(&u));
                        u
                    }
                };
                if let Some((old, _)) = self.queued.insert(seq, (due, upstream)) {
                    self.by_due.remove(&(old, seq));
                }
                self.by_due.insert((due, seq));
            }
            Change::Gone(seq) => {
                if let Some((old, _)) = self.queued.remove(&seq) {
                    self.by_due.remove(&(old, seq));
                }
            }
        }
    }

    /// Up to `limit` messages due at `now_ms`: (due ms, seq), oldest due first, or the most
    /// recently due first with `newest_first`.
    pub(super) fn due(&self, now_ms: u64, limit: usize, newest_first: bool) -> Vec<(u64, u64)> {
        let range = self.by_due.range(..=(now_ms, u64::MAX));
        if newest_first {
            range.rev().take(limit).copied().collect()
        } else {
            range.take(limit).copied().collect()
        }
    }

    pub(super) fn next_due(&self) -> Option<u64> {
        self.by_due.first().map(|&(due, _)| due)
    }

    pub(super) fn upstream_of(&self, seq: u64) -> Option<Arc<str>> {
        self.queued.get(&seq).map(|(_, u)| Arc::clone(u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn due(seq: u64, due: u64) -> Change {
        Change::Due {
            seq,
            due,
            upstream: "127.0.0.1:1".into(),
        }
    }

    #[test]
    fn due_messages_come_oldest_first_or_newest_first_and_moves_replace() {
        let mut s = Schedule::default();
        for (seq, at) in [(1, 10), (2, 30), (3, 20), (4, 99)] {
            s.apply(due(seq, at));
        }
        assert_eq!(s.due(50, 10, false), vec![(10, 1), (20, 3), (30, 2)]);
        assert_eq!(s.due(50, 2, true), vec![(30, 2), (20, 3)]);
        // A retry moves a message: it is due once, at its new time.
        s.apply(due(1, 60));
        assert_eq!(
            s.due(100, 10, false),
            vec![(20, 3), (30, 2), (60, 1), (99, 4)]
        );
        s.apply(Change::Gone(3));
        s.apply(Change::Gone(42)); // not queued: nothing happens
        assert_eq!(s.next_due(), Some(30));
        assert_eq!(s.upstream_of(2).as_deref(), Some("127.0.0.1:1"));
        assert_eq!(s.upstream_of(3), None);
    }
}
