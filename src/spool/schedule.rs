//! The embedded store's schedule: which queued messages are due when, and the upstream each
//! goes to. The scheduler asks it several times per delivered message (what is due, where it
//! goes, when the next one is), so it lives in memory instead of in a table: a table cost a
//! B-tree insert and a removal in every message's commits, and a read transaction per
//! question. It holds only what the records already say (`state`, `next_ms`, the envelope's
//! upstream): rebuilt from them when the file opens, and changed only after the commit that
//! made a change durable, so it never shows what is not on disk. Kept per upstream, so that
//! the messages of a down upstream, however many, never hide those of the others from the
//! scheduler. About 80 bytes per queued message.

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
    /// Each upstream's queued messages: (due ms, seq).
    by_upstream: HashMap<Arc<str>, BTreeSet<(u64, u64)>>,
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
                if let Some((old, was)) = self.queued.insert(seq, (due, Arc::clone(&upstream))) {
                    self.unlist(&was, old, seq);
                }
                let list = self.by_upstream.entry(upstream).or_default();
                list.insert((due, seq));
            }
            Change::Gone(seq) => {
                if let Some((old, was)) = self.queued.remove(&seq) {
                    self.unlist(&was, old, seq);
                }
            }
        }
    }

    fn unlist(&mut self, upstream: &Arc<str>, due: u64, seq: u64) {
        if let Some(list) = self.by_upstream.get_mut(upstream) {
            list.remove(&(due, seq));
            if list.is_empty() {
                self.by_upstream.remove(upstream);
            }
        }
    }

    /// The upstreams whose messages the scheduler asks for.
    fn open<'a>(
        &'a self,
        blocked: &'a [String],
    ) -> impl Iterator<Item = &'a BTreeSet<(u64, u64)>> + 'a {
        self.by_upstream
            .iter()
            .filter(|(u, _)| !blocked.iter().any(|b| b.as_str() == &***u))
            .map(|(_, list)| list)
    }

    /// Up to `limit` messages due at `now_ms`, except those to a `blocked` upstream: (due ms,
    /// seq), oldest due first, or the most recently due first with `newest_first`.
    pub(super) fn due(
        &self,
        now_ms: u64,
        limit: usize,
        newest_first: bool,
        blocked: &[String],
    ) -> Vec<(u64, u64)> {
        // At most `limit` from each upstream, merged: a few upstreams, each list sorted.
        let mut out = Vec::new();
        for list in self.open(blocked) {
            let range = list.range(..=(now_ms, u64::MAX));
            if newest_first {
                out.extend(range.rev().take(limit).copied());
            } else {
                out.extend(range.take(limit).copied());
            }
        }
        out.sort_unstable();
        if newest_first {
            out.reverse();
        }
        out.truncate(limit);
        out
    }

    /// When the next message not to a `blocked` upstream is due.
    pub(super) fn next_due(&self, blocked: &[String]) -> Option<u64> {
        self.open(blocked)
            .filter_map(|list| list.first().map(|&(due, _)| due))
            .min()
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
        assert_eq!(s.due(50, 10, false, &[]), vec![(10, 1), (20, 3), (30, 2)]);
        assert_eq!(s.due(50, 2, true, &[]), vec![(30, 2), (20, 3)]);
        // A retry moves a message: it is due once, at its new time.
        s.apply(due(1, 60));
        assert_eq!(
            s.due(100, 10, false, &[]),
            vec![(20, 3), (30, 2), (60, 1), (99, 4)]
        );
        s.apply(Change::Gone(3));
        s.apply(Change::Gone(42)); // not queued: nothing happens
        assert_eq!(s.next_due(&[]), Some(30));
        assert_eq!(s.upstream_of(2).as_deref(), Some("127.0.0.1:1"));
        assert_eq!(s.upstream_of(3), None);
    }

    #[test]
    fn a_blocked_upstreams_messages_never_hide_the_others() {
        let mut s = Schedule::default();
        // A thousand older messages to a down upstream, then one to another.
        for seq in 1..=1000 {
            s.apply(Change::Due {
                seq,
                due: seq,
                upstream: "10.0.0.1:80".into(),
            });
        }
        s.apply(Change::Due {
            seq: 1001,
            due: 1001,
            upstream: "10.0.0.2:80".into(),
        });
        let down = ["10.0.0.1:80".to_string()];
        assert_eq!(s.due(5000, 4, false, &down), vec![(1001, 1001)]);
        assert_eq!(s.next_due(&down), Some(1001));
        // Not blocked: oldest first across both, within the limit.
        assert_eq!(s.due(5000, 2, false, &[]), vec![(1, 1), (2, 2)]);
        assert_eq!(s.due(5000, 2, true, &[]), vec![(1001, 1001), (1000, 1000)]);
        // An upstream with nothing left is forgotten.
        s.apply(Change::Gone(1001));
        assert_eq!(s.due(5000, 4, false, &down), vec![]);
        assert_eq!(s.next_due(&down), None);
        assert_eq!(s.by_upstream.len(), 1);
    }
}
