//! What a windowed stream re-reads behind its cursor, and how often.
//!
//! Orders can become visible with a `timeLastUpdated` behind the cursor. Re-reading the whole
//! lookback on every run finds them, but spends most of an account's request budget on reading
//! the same versions again (a mass status change puts hundreds of orders in one second, each
//! such second paged and read twice). Instead:
//! - every run re-reads the recent part of the lookback (`recent_lookback`), where upstream lag
//!   puts most late versions;
//! - the whole lookback is re-read every `lookback_every`, after the run's fresh windows;
//! - the keys read in each second of the lookback are remembered: a re-read is cut into pieces
//!   that fit a page by how many orders each second held, instead of asking and splitting again;
//!   and a second too full for one page that was read consistently before counts that read as
//!   the first of the two that must agree.

use crate::model::{Order, OrderKey};
use crate::providers::TimeWindow;
use foldhash::{HashMap, HashSet};
use std::collections::BTreeSet;
use std::hash::{BuildHasher, Hash, Hasher};
use std::time::{Duration, Instant};

/// What one run re-reads behind the cursor it started at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reread {
    /// Seconds behind the cursor re-read before the fresh windows.
    pub recent: i64,
    /// Whether the rest of the lookback is due as well.
    pub full: bool,
}

/// One stream's memory of its recent reads (one run of a stream at a time).
#[derive(Debug, Default)]
pub struct Recheck {
    /// (upstream second, key hash) of the newest version read of each order within the lookback.
    seen: BTreeSet<(i64, u64)>,
    /// The second of each order's entry in `seen`.
    second_of: HashMap<u64, i64>,
    /// `seen` holds every version read from this second on.
    known_from: Option<i64>,
    last_full: Option<Instant>,
}

impl Recheck {
    /// Plans a run starting at `cursor`, forgetting what is now behind the lookback.
    pub fn plan(
        &mut self,
        cursor: i64,
        lookback: i64,
        recent: i64,
        every: Duration,
        now: Instant,
    ) -> Reread {
        let horizon = cursor - 1 - lookback;
        // Runs of this process have read every second from where the first one started.
        self.known_from = Some(self.known_from.unwrap_or(cursor).max(horizon));
        let kept = self.seen.split_off(&(horizon, 0));
        for (second, key) in std::mem::replace(&mut self.seen, kept) {
            if self.second_of.get(&key) == Some(&second) {
                self.second_of.remove(&key);
            }
        }
        Reread {
            recent: recent.clamp(0, lookback),
            full: self
                .last_full
                .is_none_or(|at| now.duration_since(at) >= every),
        }
    }

    /// The whole lookback was re-read.
    pub fn full_done(&mut self, at: Instant) {
        self.last_full = Some(at);
    }

    /// Remembers the versions of a window read consistently, those at or after `horizon`.
    pub fn read(&mut self, orders: &[Order], horizon: i64) {
        for order in orders {
            let second = order.upstream_updated_at.timestamp();
            if second < horizon {
                continue;
            }
            let key = key_hash(&order.key);
            match self.second_of.insert(key, second) {
                Some(earlier) if earlier < second => {
                    self.seen.remove(&(earlier, key));
                }
                // A version older than one already read: the order is not in that second now.
                Some(later) if later > second => {
                    self.second_of.insert(key, later);
                    continue;
                }
                _ => {}
            }
            self.seen.insert((second, key));
        }
    }

    /// Cuts `window` into pieces of at most `per_piece` orders by what earlier reads found in
    /// each second (a second holding more is a piece of its own); `None` when the window reaches
    /// where nothing is remembered. A piece that no longer fits is split as any other.
    pub fn cut(&self, window: TimeWindow, per_piece: usize) -> Option<Vec<TimeWindow>> {
        let known = self.known_from.is_some_and(|from| window.after + 1 >= from);
        if !known || window.covered_seconds() < 1 {
            return None;
        }
        let mut pieces = Vec::new();
        let mut start = window.after + 1;
        let mut held = 0usize;
        let mut seconds = self
            .seen
            .range((window.after + 1, 0)..(window.before, 0))
            .peekable();
        while let Some(&(second, _)) = seconds.next() {
            let mut count = 1;
            while seconds.next_if(|(s, _)| *s == second).is_some() {
                count += 1;
            }
            if held > 0 && held + count > per_piece {
                // The piece ends before this second.
                pieces.push(TimeWindow {
                    after: start - 1,
                    before: second,
                });
                start = second;
                held = 0;
            }
            held += count;
            if held > per_piece {
                pieces.push(TimeWindow {
                    after: start - 1,
                    before: second + 1,
                });
                start = second + 1;
                held = 0;
            }
        }
        if start < window.before {
            pieces.push(TimeWindow {
                after: start - 1,
                before: window.before,
            });
        }
        Some(pieces)
    }

    /// How many orders earlier reads found in `window`; `None` where nothing is remembered.
    pub fn known_count(&self, window: TimeWindow) -> Option<usize> {
        self.known_from
            .is_some_and(|from| window.after + 1 >= from)
            .then(|| {
                self.seen
                    .range((window.after + 1, 0)..(window.before, 0))
                    .count()
            })
    }

    /// The keys earlier consistent reads found in `second`.
    pub fn keys_at(&self, second: i64) -> HashSet<u64> {
        self.seen
            .range((second, 0)..=(second, u64::MAX))
            .map(|(_, key)| *key)
            .collect()
    }
}

/// The oldest second worth remembering in a run ending at `end`: the next run re-reads
/// nothing older.
pub fn horizon(end: i64, lookback: i64) -> i64 {
    end - 1 - lookback
}

/// A compact identity for an order key within one stream, the same throughout the process
/// (its seed is the process's own); a collision could only end a consistent read one pass
/// early or hold a batch back for the one before it, never drop an order read.
pub fn key_hash(key: &OrderKey) -> u64 {
    let mut hasher = identity_hasher();
    key.channel.hash(&mut hasher);
    key.external_id.hash(&mut hasher);
    hasher.finish()
}

/// The hasher behind every compact identity of the process: the same seed throughout it.
pub fn identity_hasher() -> impl Hasher {
    foldhash::quality::SeedableRandomState::with_seed(0, foldhash::SharedSeed::global_random())
        .build_hasher()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(id: &str, updated: i64) -> Order {
        crate::model::test_order(id, updated, None)
    }

    #[test]
    fn the_whole_lookback_is_due_first_and_then_every_period() {
        let mut recheck = Recheck::default();
        let every = Duration::from_secs(60);
        let t0 = Instant::now();
        let first = recheck.plan(1_000, 600, 30, every, t0);
        assert_eq!(
            first,
            Reread {
                recent: 30,
                full: true
            }
        );
        recheck.full_done(t0);
        let soon = recheck.plan(1_002, 600, 30, every, t0 + Duration::from_secs(2));
        assert!(!soon.full);
        let later = recheck.plan(1_060, 600, 30, every, t0 + Duration::from_secs(60));
        assert!(later.full);
        // A recent part longer than the lookback is the lookback.
        assert_eq!(recheck.plan(1_060, 20, 30, every, t0).recent, 20);
    }

    #[test]
    fn keys_are_remembered_per_second_within_the_lookback() {
        let mut recheck = Recheck::default();
        recheck.read(&[order("1", 100), order("2", 100), order("3", 101)], 90);
        // Older than the horizon: not kept.
        recheck.read(&[order("4", 80)], 90);
        let at_100 = recheck.keys_at(100);
        assert_eq!(at_100.len(), 2);
        assert!(at_100.contains(&key_hash(&order("1", 100).key)));
        assert!(recheck.keys_at(80).is_empty());
        // A run whose lookback starts after second 100 forgets it.
        recheck.plan(200, 98, 0, Duration::ZERO, Instant::now());
        assert!(recheck.keys_at(100).is_empty());
        assert_eq!(recheck.keys_at(101).len(), 1);
    }

    #[test]
    fn a_reread_is_cut_by_what_each_second_held() {
        let mut recheck = Recheck::default();
        recheck.plan(900, 600, 30, Duration::ZERO, Instant::now());
        // Seconds 901-903 hold 3 each, 905 holds 12 (more than a piece), 907 holds 1.
        let mut orders = Vec::new();
        for second in [901, 902, 903] {
            orders.extend((0..3).map(|i| order(&format!("{second}-{i}"), second)));
        }
        orders.extend((0..12).map(|i| order(&format!("905-{i}"), 905)));
        orders.push(order("907-0", 907));
        recheck.read(&orders, 0);
        let window = TimeWindow {
            after: 899,
            before: 910,
        };
        let pieces = recheck.cut(window, 7).unwrap();
        let bounds: Vec<(i64, i64)> = pieces.iter().map(|w| (w.after, w.before)).collect();
        assert_eq!(bounds, [(899, 903), (902, 905), (904, 906), (905, 910)]);
        // An order read again in a later second leaves its earlier one.
        recheck.read(&[order("905-0", 909)], 0);
        assert_eq!(recheck.keys_at(905).len(), 11);
        // Before the first run's cursor nothing is known.
        let early = TimeWindow {
            after: 0,
            before: 910,
        };
        assert_eq!(recheck.cut(early, 7), None);
    }
}
