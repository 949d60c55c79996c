//! Live counters of one stream, read by `ordersync demo` and by status reports.

use crate::store::BatchOutcome;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct StreamProgress {
    written: AtomicU64,
    unchanged: AtomicU64,
    quarantined: AtomicU64,
    requests: AtomicU64,
    runs: AtomicU64,
    failed_runs: AtomicU64,
    cursor: AtomicI64,
    last_error: Mutex<Option<String>>,
}

/// A consistent-enough copy of the counters for display.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    pub written: u64,
    pub unchanged: u64,
    pub quarantined: u64,
    pub requests: u64,
    pub runs: u64,
    pub failed_runs: u64,
    pub cursor: i64,
    pub last_error: Option<String>,
}

impl StreamProgress {
    pub fn add_outcome(&self, outcome: &BatchOutcome) {
        self.written.fetch_add(outcome.written, Ordering::Relaxed);
        self.unchanged
            .fetch_add(outcome.unchanged, Ordering::Relaxed);
        self.quarantined
            .fetch_add(outcome.quarantined, Ordering::Relaxed);
    }

    pub fn add_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_cursor(&self, cursor: i64) {
        self.cursor.store(cursor, Ordering::Relaxed);
    }

    pub fn run_ended(&self, error: Option<String>) {
        self.runs.fetch_add(1, Ordering::Relaxed);
        if error.is_some() {
            self.failed_runs.fetch_add(1, Ordering::Relaxed);
        }
        if let Ok(mut last) = self.last_error.lock() {
            *last = error;
        }
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            written: self.written.load(Ordering::Relaxed),
            unchanged: self.unchanged.load(Ordering::Relaxed),
            quarantined: self.quarantined.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            runs: self.runs.load(Ordering::Relaxed),
            failed_runs: self.failed_runs.load(Ordering::Relaxed),
            cursor: self.cursor.load(Ordering::Relaxed),
            last_error: self.last_error.lock().ok().and_then(|e| e.clone()),
        }
    }
}
