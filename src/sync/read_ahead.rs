//! Page reads started before they are needed.
//!
//! Read one after another, a backfill waits for every request in turn: the upstream builds a
//! page while this side idles, then this side parses it while the upstream idles. Pages that are
//! certain to be read next (the pieces a window was already cut into, the further pages of a
//! closed window) are asked for ahead, each in its own task, so building, sending, parsing and
//! writing overlap. Every request still passes the account's rate limit; only how many wait for an
//! answer at once changes.
//!
//! An upstream at its limit refuses every read in flight at once, where one at a time it refuses
//! one. So reads are started ahead only after the account's last few answers came without a 429
//! in between, and not again after one until as many have.

use super::window::AbortOnDrop;
use crate::providers::{ProviderError, TimeWindow, WindowPage, WindowSource};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// Pages answered since the account's last 429 before reads are started ahead.
const WARM_UP_READS: u32 = 8;

/// Whether the account's recent answers allow reading ahead; kept by the stream across its
/// windows and runs.
#[derive(Debug, Default)]
pub(super) struct Warmth {
    answered_since_refusal: AtomicU32,
    refusals_seen: AtomicU64,
}

type PageRead = AbortOnDrop<Result<WindowPage, ProviderError>>;

pub(super) struct ReadAhead<'a> {
    source: Arc<dyn WindowSource>,
    page_size: u32,
    /// Reads started and not yet taken, at most this many at once: the page needed now and
    /// `read_ahead` more.
    limit: usize,
    warmth: &'a Warmth,
    started: VecDeque<(TimeWindow, u32, PageRead)>,
}

impl<'a> ReadAhead<'a> {
    /// Up to `read_ahead` pages may be asked for before they are needed (0: every page is read
    /// when it is needed).
    pub(super) fn new(
        source: Arc<dyn WindowSource>,
        page_size: u32,
        read_ahead: u32,
        warmth: &'a Warmth,
    ) -> Self {
        ReadAhead {
            source,
            page_size,
            limit: match read_ahead {
                0 => 0,
                more => more as usize + 1,
            },
            warmth,
            started: VecDeque::new(),
        }
    }

    /// Notes that a page was answered, and whether a 429 came since the last one.
    pub(super) fn answered(&self) {
        let refusals = self.source.rate_limited_count();
        let before = self.warmth.refusals_seen.swap(refusals, Ordering::Relaxed);
        if refusals != before {
            self.warmth
                .answered_since_refusal
                .store(0, Ordering::Relaxed);
        } else {
            let _ = self.warmth.answered_since_refusal.fetch_update(
                Ordering::Relaxed,
                Ordering::Relaxed,
                |n| Some(n.saturating_add(1)),
            );
        }
    }

    fn allowed(&self) -> usize {
        if self.warmth.answered_since_refusal.load(Ordering::Relaxed) >= WARM_UP_READS {
            self.limit
        } else {
            0
        }
    }

    /// Starts reading `page_number` of `window` unless it was started already or as many reads
    /// as allowed are waiting; returns whether a request was started. Dropped with the run, a
    /// read still waiting is aborted.
    pub(super) fn start(&mut self, window: TimeWindow, page_number: u32) -> bool {
        if self.started.len() >= self.allowed() || self.is_started(window, page_number) {
            return false;
        }
        let source = Arc::clone(&self.source);
        let page_size = self.page_size;
        let read = AbortOnDrop(tokio::spawn(async move {
            source.page(window, page_number, page_size).await
        }));
        self.started.push_back((window, page_number, read));
        true
    }

    /// Whether another read can be started ahead now.
    pub(super) fn has_room(&self) -> bool {
        self.started.len() < self.allowed()
    }

    fn is_started(&self, window: TimeWindow, page_number: u32) -> bool {
        self.started
            .iter()
            .any(|(w, p, _)| *w == window && *p == page_number)
    }

    /// The page if it was started ahead (waiting for its answer); `None` when it was not.
    pub(super) async fn take(
        &mut self,
        window: TimeWindow,
        page_number: u32,
    ) -> Option<Result<WindowPage, ProviderError>> {
        let at = self
            .started
            .iter()
            .position(|(w, p, _)| *w == window && *p == page_number)?;
        let (_, _, read) = self.started.remove(at)?;
        Some(match read.await {
            Ok(page) => page,
            // The task panicked or was aborted: what a failed request would report.
            Err(error) => Err(ProviderError::Transport(format!(
                "a page read started ahead did not finish: {error}"
            ))),
        })
    }

    /// Drops (and aborts) the reads started for `window`: it is read differently after all.
    pub(super) fn forget(&mut self, window: TimeWindow) {
        self.started.retain(|(w, _, _)| *w != window);
    }
}
