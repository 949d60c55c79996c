//! Postgres connections handed from one write straight to the next.
//!
//! A connection going back to the pool is pinged first, a round trip on a task of its own, and
//! is not idle until the answer comes. A write that starts meanwhile finds no idle connection
//! and opens another: a new server process, forked and warmed up, for one batch or one record.
//! A backfill writes batch after batch, then the run's record, the outbox's claim and the
//! lease's release, each within a millisecond of the one before. So a connection whose
//! transaction committed is kept here for the next write instead, for [`KEEP_FOR`] at most,
//! and neither ping is paid (the pool's when it is given back, and again when it is taken).
//!
//! Every write transaction of the Postgres store goes through here; single statements and reads
//! use the pool directly. Only a connection whose transaction committed is kept, so nothing is
//! left to flush on it; an error drops it to the pool, which checks it. It is kept only while
//! the pool could still open a connection or has one idle, so nothing else in the daemon waits
//! for one kept here.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::time::Instant;

/// How long a connection is kept for the next write before it goes back to the pool: back to
/// back, writes follow each other within a few milliseconds.
pub(super) const KEEP_FOR: Duration = Duration::from_millis(20);

/// Generic over the connection so its rules can be tested without a server.
pub(super) struct Handover<Connection> {
    kept: Mutex<Vec<(Connection, Instant)>>,
}

impl<Connection> Default for Handover<Connection> {
    fn default() -> Self {
        Handover {
            kept: Mutex::new(Vec::new()),
        }
    }
}

impl<Connection: Send + 'static> Handover<Connection> {
    /// The connection kept last, if any.
    pub(super) fn take(&self) -> Option<Connection> {
        self.kept().pop().map(|(connection, _)| connection)
    }

    /// Keeps `connection` (its transaction committed) for the next write, at most `most` at
    /// once and only when the pool can spare it; otherwise it goes back to the pool. Kept, it
    /// goes back after [`KEEP_FOR`] unless a write takes it first.
    pub(super) fn keep(
        self: &Arc<Self>,
        connection: Connection,
        most: usize,
        pool_can_spare: bool,
    ) {
        let mut kept = self.kept();
        if !pool_can_spare || kept.len() >= most {
            drop(kept);
            drop(connection);
            return;
        }
        kept.push((connection, Instant::now()));
        drop(kept);
        let handover = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(KEEP_FOR).await;
            if let Some(handover) = handover.upgrade() {
                handover.give_back_older_than(KEEP_FOR);
            }
        });
    }

    /// Gives every kept connection back to the pool (before the pool closes, which waits for
    /// them all).
    pub(super) fn give_back_all(&self) {
        let released = std::mem::take(&mut *self.kept());
        drop(released);
    }

    fn give_back_older_than(&self, age: Duration) {
        let released: Vec<_> = {
            let mut kept = self.kept();
            let (stale, fresh) = std::mem::take(&mut *kept)
                .into_iter()
                .partition(|(_, since)| since.elapsed() >= age);
            *kept = fresh;
            stale
        };
        // Dropped outside the lock: each goes back to the pool on a task of its own.
        drop(released);
    }

    fn kept(&self) -> MutexGuard<'_, Vec<(Connection, Instant)>> {
        // A list, whole after any panic.
        self.kept.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts how many went back to the pool (were dropped).
    struct Connection(u32, Arc<AtomicUsize>);

    impl Drop for Connection {
        fn drop(&mut self) {
            self.1.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn connection(id: u32, returned: &Arc<AtomicUsize>) -> Connection {
        Connection(id, Arc::clone(returned))
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_write_takes_the_connection_the_last_one_kept() {
        let returned = Arc::new(AtomicUsize::new(0));
        let handover = Arc::new(Handover::default());
        handover.keep(connection(1, &returned), 3, true);
        handover.keep(connection(2, &returned), 3, true);
        tokio::time::sleep(KEEP_FOR / 2).await;
        let taken = handover.take().expect("a kept connection");
        assert_eq!(taken.0, 2, "the last kept first");
        assert_eq!(returned.load(Ordering::SeqCst), 0);
        tokio::time::sleep(KEEP_FOR).await;
        assert_eq!(
            returned.load(Ordering::SeqCst),
            1,
            "the one left went back to the pool"
        );
        assert!(handover.take().is_none());
        drop(taken);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_kept_again_stays_its_full_time() {
        let returned = Arc::new(AtomicUsize::new(0));
        let handover = Arc::new(Handover::default());
        handover.keep(connection(1, &returned), 3, true);
        tokio::time::sleep(KEEP_FOR * 3 / 4).await;
        let again = handover.take().expect("kept");
        handover.keep(again, 3, true);
        // The first keep's time is up; the second's is not.
        tokio::time::sleep(KEEP_FOR / 2).await;
        assert_eq!(returned.load(Ordering::SeqCst), 0);
        tokio::time::sleep(KEEP_FOR).await;
        assert_eq!(returned.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn nothing_is_kept_that_the_pool_cannot_spare_or_beyond_the_most() {
        let returned = Arc::new(AtomicUsize::new(0));
        let handover = Arc::new(Handover::default());
        handover.keep(connection(1, &returned), 2, false);
        assert_eq!(
            returned.load(Ordering::SeqCst),
            1,
            "the pool is at its limit"
        );
        handover.keep(connection(2, &returned), 2, true);
        handover.keep(connection(3, &returned), 2, true);
        handover.keep(connection(4, &returned), 2, true);
        assert_eq!(returned.load(Ordering::SeqCst), 2, "two kept at most");
        handover.give_back_all();
        assert_eq!(returned.load(Ordering::SeqCst), 4);
    }
}
