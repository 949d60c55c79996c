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
//!
//! A page read ahead holds room in the process's [`OrderBuffer`] until its orders have room in
//! the buffer itself; where every stream's reads ahead have taken all of it, a page is read when
//! it is needed.

use super::buffer::{AheadRoom, OrderBuffer, PageRoom};
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
    buffer: &'a OrderBuffer,
    started: VecDeque<(TimeWindow, u32, PageRead, AheadRoom)>,
}

impl<'a> ReadAhead<'a> {
    /// Up to `read_ahead` pages may be asked for before they are needed (0: every page is read
    /// when it is needed), while `buffer` has room for them.
    pub(super) fn new(
        source: Arc<dyn WindowSource>,
        page_size: u32,
        read_ahead: u32,
        warmth: &'a Warmth,
        buffer: &'a OrderBuffer,
    ) -> Self {
        ReadAhead {
            source,
            page_size,
            limit: match read_ahead {
                0 => 0,
                more => more as usize + 1,
            },
            warmth,
            buffer,
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

    /// Starts reading `page_number` of `window` unless it was started already, as many reads
    /// as allowed are waiting or the buffer has no room for it; returns whether a request was
    /// started. Dropped with the run, a read still waiting is aborted.
    pub(super) fn start(&mut self, window: TimeWindow, page_number: u32) -> bool {
        if self.started.len() >= self.allowed() || self.is_started(window, page_number) {
            return false;
        }
        let Some(room) = self.buffer.read_ahead_room(self.page_size as usize) else {
            return false;
        };
        let source = Arc::clone(&self.source);
        let page_size = self.page_size;
        let read = AbortOnDrop(tokio::spawn(async move {
            source.page(window, page_number, page_size).await
        }));
        self.started.push_back((window, page_number, read, room));
        true
    }

    /// Whether another read can be started ahead now.
    pub(super) fn has_room(&self) -> bool {
        self.started.len() < self.allowed()
            && self.buffer.has_read_ahead_room(self.page_size as usize)
    }

    pub(super) fn is_started(&self, window: TimeWindow, page_number: u32) -> bool {
        self.started
            .iter()
            .any(|(w, p, _, _)| *w == window && *p == page_number)
    }

    /// The page if it was started ahead (waiting for its answer), with the room it took, kept
    /// until its orders have room in the buffer ([`PageRoom::read_ahead`]); `None` when it was
    /// not started.
    pub(super) async fn take(
        &mut self,
        window: TimeWindow,
        page_number: u32,
    ) -> Option<(Result<WindowPage, ProviderError>, PageRoom)> {
        let at = self
            .started
            .iter()
            .position(|(w, p, _, _)| *w == window && *p == page_number)?;
        let (_, _, read, room) = self.started.remove(at)?;
        let page = match read.await {
            Ok(page) => page,
            // The task panicked or was aborted: what a failed request would report.
            Err(error) => Err(ProviderError::Transport(format!(
                "a page read started ahead did not finish: {error}"
            ))),
        };
        Some((page, PageRoom::read_ahead(room)))
    }

    /// Drops (and aborts) the reads started for `window`: it is read differently after all.
    pub(super) fn forget(&mut self, window: TimeWindow) {
        self.started.retain(|(w, _, _, _)| *w != window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ProviderKind, StreamKey};
    use async_trait::async_trait;

    /// Answers every page at once, empty.
    struct EmptyPages(StreamKey);

    #[async_trait]
    impl WindowSource for EmptyPages {
        fn stream(&self) -> &StreamKey {
            &self.0
        }

        async fn page(
            &self,
            _window: TimeWindow,
            _page_number: u32,
            _page_size: u32,
        ) -> Result<WindowPage, ProviderError> {
            Ok(WindowPage {
                number_of_pages: 1,
                number_of_records: 0,
                orders: Vec::new(),
                quarantined: Vec::new(),
            })
        }

        fn rate_limited_count(&self) -> u64 {
            0
        }
    }

    fn source(account: &str) -> Arc<dyn WindowSource> {
        Arc::new(EmptyPages(StreamKey {
            provider: ProviderKind::Graas,
            account: account.to_owned(),
            resource: "orders".to_owned(),
        }))
    }

    fn warm() -> Warmth {
        Warmth {
            answered_since_refusal: AtomicU32::new(WARM_UP_READS),
            refusals_seen: AtomicU64::new(0),
        }
    }

    fn window(after: i64) -> TimeWindow {
        TimeWindow {
            after,
            before: after + 60,
        }
    }

    #[tokio::test]
    async fn streams_share_the_buffers_room_for_reads_ahead() {
        // Room for 1,000 orders read ahead: two pages of 500, over both streams.
        let buffer = OrderBuffer::new(4_000, 4_000);
        let (warm_a, warm_b) = (warm(), warm());
        let mut a = ReadAhead::new(source("a"), 500, 2, &warm_a, &buffer);
        let mut b = ReadAhead::new(source("b"), 500, 2, &warm_b, &buffer);
        assert!(a.start(window(0), 1));
        assert!(a.start(window(0), 2));
        // `a` may read three at once, but the room is taken; `b` reads when it needs to.
        assert!(!a.has_room() && !b.has_room());
        assert!(!a.start(window(0), 3));
        assert!(!b.start(window(100), 1));
        assert_eq!(buffer.held_ahead(), 1_000);

        // A page taken keeps its room until its orders have room in the buffer; then it goes to
        // whichever stream asks next.
        let (page, room) = a.take(window(0), 1).await.expect("the page was started");
        assert!(page.is_ok());
        assert!(!b.has_room());
        let held = buffer.hold_with(room, 0).await;
        assert!(b.has_room());
        drop(held);
        assert!(b.start(window(100), 1));
        // So does a run's end, with the reads it had started.
        drop(a);
        assert!(b.start(window(100), 2));
        assert_eq!(buffer.held_ahead(), 1_000);
        b.forget(window(100));
        assert_eq!(buffer.held_ahead(), 0);
    }
}
