//! Reading a time-windowed source without losing an order.
//!
//! Graas filters on `timeLastUpdated`, a field that changes while we page, so a multi-page read
//! can skip an order at a page boundary. A recent window is therefore split until each piece fits
//! in one page and is read with a single request; only a single second holding more than a page is
//! read page by page, repeated until a read finds no order the earlier reads missed.
//!
//! A window that ended more than `lookback` before the run is closed: by the premise the lookback
//! rests on, no update can enter it any more, only leave it (updated, to a later time). It is read
//! `pages_per_read` pages at a time, and the read is accepted when every page reported the same
//! record count and the pages held that many distinct records: an order leaving while we paged
//! changes the count, and an order skipped at a page boundary leaves one short. Otherwise the
//! window is read again in smaller pieces. A backfill is almost all closed windows.
//!
//! The cursor (Unix seconds: everything updated before it has been read) is committed with each
//! piece's orders and never moves backwards.

use super::buffer::{Held, OrderBuffer, PageRoom};
use super::job::{Job, RunReport};
use super::progress::StreamProgress;
use super::read_ahead::{ReadAhead, Warmth};
use super::recheck::{Recheck, horizon, identity_hasher, key_hash};
use crate::model::{Order, Quarantined, StreamKey};
use crate::providers::{ProviderError, TimeWindow, WindowPage, WindowSource};
use crate::store::{Batch, BatchOutcome, CommitDone, EarlierCommit, Store, StoreError};
use chrono::{DateTime, Utc};
use foldhash::{HashSet, HashSetExt};
use futures_util::StreamExt;
use futures_util::stream::{FuturesOrdered, FuturesUnordered};
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How many pieces one oversized window may be split into at once.
const MAX_SPLIT: i64 = 4096;
/// How many standard deviations of an even spread a planned piece keeps below a full page:
/// fuller pieces need fewer requests, but more of them overflow (one request wasted, then
/// split again). Two is the least requests per page for evenly spread orders (measured with
/// `cargo bench --bench sync`: 1.19x the pages at page size 200, 1.13x at 500).
const FILL_MARGIN_SIGMAS: f64 = 2.0;
/// The same for a closed window read page by page, where a fuller read than planned costs one
/// more page at most: one standard deviation (1.08x the pages in 4-page reads of 200).
const PAGED_MARGIN_SIGMAS: f64 = 1.0;
/// Pieces whose records and seconds estimate the density of the next window.
const DENSITY_MEMORY: usize = 16;
/// The most pieces waiting for the committer; what they hold is bounded by the [`OrderBuffer`].
const MAX_WAITING_PIECES: usize = 128;

/// One window's orders, read consistently, waiting to be committed.
struct Piece {
    window: TimeWindow,
    orders: Vec<Order>,
    quarantined: Vec<Quarantined>,
}

impl Piece {
    /// Joins pieces into one spanning all of them. Its end, where the cursor may move, is the
    /// latest: the rest of the lookback is read after the fresh windows and ends behind them.
    fn merge(mut pieces: Vec<Piece>) -> Piece {
        let mut merged = pieces.remove(0);
        for piece in pieces {
            merged.window.after = merged.window.after.min(piece.window.after);
            merged.window.before = merged.window.before.max(piece.window.before);
            merged.orders.extend(piece.orders);
            merged.quarantined.extend(piece.quarantined);
        }
        merged
    }

    /// Pages of a window still being read: committed early, so the writer starts on the first
    /// page instead of waiting for the last, but ending where the window starts, so the cursor
    /// does not move until the whole window has been read consistently.
    fn early_pages(window: TimeWindow, orders: Vec<Order>) -> Piece {
        Piece {
            window: TimeWindow {
                after: window.after,
                before: window.after,
            },
            orders,
            quarantined: Vec::new(),
        }
    }
}

/// What reading one window gave: its piece (the rest of it, when pages went ahead as
/// [`Piece::early_pages`]) with the records the window held, or the record count to split it
/// by.
enum PieceRead {
    /// The piece, its records, and the room taken for its last page.
    Piece(Piece, u64, PageRoom),
    Split(u64),
}

/// Reads of an overfull second before giving up on it for this run.
const CONSISTENT_READ_ATTEMPTS: usize = 8;

/// How a windowed stream chooses its windows.
#[derive(Debug, Clone)]
pub struct WindowPlan {
    /// Re-read this far behind the cursor, for updates that become visible late.
    pub lookback: Duration,
    /// How often the whole lookback is re-read (zero: every run); see [`super::recheck`].
    pub lookback_every: Duration,
    /// Re-read by every run: the part of the lookback where most late updates turn up.
    pub recent_lookback: Duration,
    /// Never read closer to now than this, so the upstream has finished writing.
    pub settle: Duration,
    pub page_size: u32,
    /// Pages read one after another from a closed window (1: one request per piece everywhere).
    pub pages_per_read: u32,
    /// Page requests started before they are needed (0: one request at a time).
    pub read_ahead: u32,
    pub start_from: DateTime<Utc>,
    /// The widest window asked for in one go during a backfill.
    pub max_window: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored cursor `{0}` is not Unix seconds; fix or delete its row in sync_cursors")]
    BadCursor(String),
    #[error("the commit task ended abnormally: {0}")]
    Committer(tokio::task::JoinError),
}

/// What one run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub written: u64,
    pub unchanged: u64,
    pub quarantined: u64,
    pub requests: u64,
    /// The cursor when the run ended (Unix seconds).
    pub cursor: i64,
    /// How far behind its starting cursor the run re-read (seconds).
    pub reread_secs: i64,
    /// True when shutdown stopped the run before it caught up.
    pub interrupted: bool,
}

pub struct WindowSync {
    source: Arc<dyn WindowSource>,
    store: Arc<dyn Store>,
    plan: WindowPlan,
    progress: Arc<StreamProgress>,
    /// What recent reads saw, kept across runs (one run of a stream at a time).
    density: tokio::sync::Mutex<Density>,
    recheck: tokio::sync::Mutex<Recheck>,
    read_ahead: Warmth,
    /// Shared with every other stream of the process.
    buffer: Arc<OrderBuffer>,
}

/// The way to the committer: a piece goes once the process's order buffer has room for it,
/// which its page may have taken before it was asked for.
struct ToCommitter<'a> {
    sender: mpsc::Sender<(Piece, Held)>,
    buffer: &'a OrderBuffer,
    unbatched: Unbatched,
}

impl ToCommitter<'_> {
    /// False when the committer has stopped (on an error, which it reports).
    async fn send(&self, piece: Piece, room: PageRoom) -> bool {
        let orders = piece.orders.len();
        let held = self.buffer.hold_with(room, orders).await;
        let sent = self.sender.send((piece, held)).await.is_ok();
        if sent {
            self.unbatched.add(orders);
        }
        sent
    }
}

/// Orders of one run handed to the committer and not yet in a batch. Counted only once sent,
/// so it never counts orders that may not come: a batch told that more follow (see
/// [`CommitDone::followed_while`]) is always followed. The committer may take them off before
/// they are counted; the count is then briefly below zero, which says only that none wait.
#[derive(Clone, Default)]
struct Unbatched(Arc<AtomicI64>);

impl Unbatched {
    fn add(&self, orders: usize) {
        self.0.fetch_add(orders as i64, Ordering::Relaxed);
    }

    fn take(&self, orders: usize) {
        self.0.fetch_sub(orders as i64, Ordering::Relaxed);
    }

    fn any(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

/// Where the run reading a window started.
#[derive(Debug, Clone, Copy)]
struct RunFrame {
    /// The cursor when the run started.
    start: i64,
    /// Versions older than this are not remembered.
    horizon: i64,
}

/// The windows one run reads, in order: from the cursor (less the part of the lookback read
/// again) to the run's end, at most `max_window` each, then the rest of the lookback when it is
/// due. Planned one at a time, as a run over a long stretch has many.
#[derive(Debug)]
struct WindowPlanner {
    after: i64,
    cursor: i64,
    end: i64,
    max_window: i64,
    rest: Option<TimeWindow>,
}

impl Iterator for WindowPlanner {
    type Item = TimeWindow;

    fn next(&mut self) -> Option<TimeWindow> {
        if self.cursor >= self.end {
            return self.rest.take();
        }
        // The windows after the first follow each other with the one-second overlap that
        // exclusive bounds need.
        let window = TimeWindow {
            after: self.after,
            before: (self.cursor + self.max_window).min(self.end),
        };
        self.cursor = self.cursor.max(window.before);
        self.after = self.cursor - 1;
        Some(window)
    }
}

/// Records per second over the last few pieces read, to cut the next window to page size.
#[derive(Debug, Default)]
struct Density {
    recent: std::collections::VecDeque<(i64, u64)>,
}

impl Density {
    /// The records `window` is expected to hold; `None` when nothing is known yet. The newest
    /// pieces count first, as far back as twice the window's length: a density that changed
    /// (an empty stretch before the first orders) is not averaged over the stale one.
    fn expected(&self, window: TimeWindow) -> Option<f64> {
        let reach = window.covered_seconds().saturating_mul(2);
        let (mut seconds, mut records) = (0i64, 0u64);
        for (piece_seconds, piece_records) in self.recent.iter().rev() {
            seconds += piece_seconds;
            records += piece_records;
            if seconds >= reach {
                break;
            }
        }
        (seconds > 0).then(|| records as f64 / seconds as f64 * window.covered_seconds() as f64)
    }

    fn observe(&mut self, seconds: i64, records: u64) {
        if seconds <= 0 {
            return;
        }
        if self.recent.len() == DENSITY_MEMORY {
            self.recent.pop_front();
        }
        self.recent.push_back((seconds, records));
    }

    /// Into how many pieces to cut `window` before reading it; `None` to read it whole (it is
    /// expected to fit one read, or nothing is known yet).
    fn parts(&self, window: TimeWindow, size: PieceSize) -> Option<i64> {
        let expected = self.expected(window).filter(|e| *e > 0.0)?;
        if expected <= size.most_records() {
            return None;
        }
        let parts = size.parts(expected);
        Some(parts.clamp(2, MAX_SPLIT).min(window.covered_seconds())).filter(|parts| *parts >= 2)
    }
}

impl WindowSync {
    pub fn new(
        source: Arc<dyn WindowSource>,
        store: Arc<dyn Store>,
        plan: WindowPlan,
        progress: Arc<StreamProgress>,
        buffer: Arc<OrderBuffer>,
    ) -> Self {
        WindowSync {
            source,
            store,
            plan,
            progress,
            density: tokio::sync::Mutex::new(Density::default()),
            recheck: tokio::sync::Mutex::new(Recheck::default()),
            read_ahead: Warmth::default(),
            buffer,
        }
    }

    pub fn stream(&self) -> &StreamKey {
        self.source.stream()
    }

    pub fn progress(&self) -> &Arc<StreamProgress> {
        &self.progress
    }

    /// Reads windows until the cursor is `settle` behind now, or until `shutdown`: first what
    /// is behind the cursor and due for a re-read (see [`super::recheck`]), then the fresh
    /// windows, then, when due, the rest of the lookback.
    pub async fn read(&self, shutdown: &CancellationToken) -> Result<RunSummary, SyncError> {
        let floor = self.plan.start_from.timestamp();
        let cursor = match self.store.cursor(self.stream()).await? {
            Some(text) => text
                .trim()
                .parse::<i64>()
                .map_err(|_| SyncError::BadCursor(text))?,
            None => floor,
        };
        let mut run = RunSummary {
            cursor,
            ..RunSummary::default()
        };
        self.progress.set_cursor(cursor);
        let max_window = secs(self.plan.max_window).max(2);
        let lookback = secs(self.plan.lookback);
        // The end is fixed when the run starts, so a busy upstream cannot keep one run going.
        let end = Utc::now().timestamp() - secs(self.plan.settle);
        let started = Instant::now();
        let frame = RunFrame {
            start: cursor,
            horizon: horizon(end, lookback),
        };
        let reread = self.recheck.lock().await.plan(
            cursor,
            lookback,
            secs(self.plan.recent_lookback),
            self.plan.lookback_every,
            started,
        );
        let lookback_start = (cursor - 1 - lookback).max(floor - 1);
        let mut recent = reread.recent.min(lookback);
        // A quiet stream reads its whole lookback with the fresh window in one request.
        if reread.full
            && self
                .fits_one_page(lookback_start, (cursor + max_window).min(end))
                .await
        {
            recent = lookback;
        }
        run.reread_secs = recent;
        let mut windows = WindowPlanner {
            after: (cursor - 1 - recent).max(floor - 1),
            cursor,
            end,
            max_window,
            rest: None,
        };
        if reread.full {
            // The rest of the lookback, after the fresh windows: fresh orders do not wait for it.
            let rest = TimeWindow {
                after: lookback_start,
                before: (frame.start - recent).max(floor),
            };
            if recent < lookback && rest.covered_seconds() > 0 {
                run.reread_secs = lookback;
                windows.rest = Some(rest);
            }
        }
        if !self
            .read_windows(windows, frame, &mut run, shutdown)
            .await?
        {
            run.interrupted = true;
            return Ok(run);
        }
        if reread.full {
            self.recheck.lock().await.full_done(started);
        }
        Ok(run)
    }

    /// Whether the recent reads' density says the window fits one page (`false` when nothing
    /// is known yet).
    async fn fits_one_page(&self, after: i64, before: i64) -> bool {
        let density = self.density.lock().await;
        !density.recent.is_empty()
            && density
                .parts(TimeWindow { after, before }, self.piece_size(false))
                .is_none()
    }

    /// Reads the planned windows piece by piece in time order, committing each piece with its
    /// cursor. Fetching runs ahead of committing by about one batch, so the upstream and the
    /// database work at the same time while memory stays bounded; one pipeline spans all the
    /// windows, so neither side waits for the other at a window's end.
    /// Returns false when shutdown interrupted it.
    ///
    /// Neither side can wait on the other forever: a failed commit ends the run at once (the
    /// fetcher, possibly waiting on a full channel, is dropped with it), and a failed fetch lets
    /// the committer finish the pieces already fetched before the error is returned.
    async fn read_windows(
        &self,
        windows: WindowPlanner,
        frame: RunFrame,
        run: &mut RunSummary,
        shutdown: &CancellationToken,
    ) -> Result<bool, SyncError> {
        // The buffer is divided among the batches a store writes at once. While one batch is
        // written, the next fills from the room left, so on SQLite (one batch at a time) a
        // batch is about half the buffer. Every commit rewrites the index pages its orders
        // touch, and order ids are spread over the whole index, so larger batches rewrite less
        // per order. The queue is counted in pages: a closed window's pages go to the committer
        // one by one.
        let batch_orders = self.buffer.orders() / self.store.concurrent_commits().max(1);
        let depth =
            (batch_orders / 2 / self.plan.page_size.max(1) as usize).clamp(2, MAX_WAITING_PIECES);
        let (sender, receiver) = mpsc::channel(depth);
        let unbatched = Unbatched::default();
        let to_committer = ToCommitter {
            sender,
            buffer: &self.buffer,
            unbatched: unbatched.clone(),
        };
        let fetching = self.fetch_pieces(windows, frame, to_committer, shutdown);
        // Committing runs as its own task, so it binds and sends statements on one core while
        // this task fetches and parses on another (in one task they took turns); on the
        // store's own threads where it has them (SQLite), so that it does not queue behind
        // pages being parsed. Dropping the run aborts it, and with it the open transaction.
        let committer = Committer {
            store: Arc::clone(&self.store),
            stream: self.stream().clone(),
            progress: Arc::clone(&self.progress),
            unbatched,
        };
        let commit_run = committer.run(receiver, run.cursor, batch_orders);
        let committing = AbortOnDrop(match self.store.commit_runtime() {
            Some(runtime) => runtime.spawn(commit_run),
            None => tokio::spawn(commit_run),
        });
        tokio::pin!(fetching, committing);
        let mut fetched = None;
        // The committer ends only once the fetcher has ended (its sender is dropped) or on an
        // error, which must not wait for the fetcher.
        let committed = loop {
            tokio::select! {
                result = &mut fetching, if fetched.is_none() => {
                    // Only commits are left: a store may use the spare core meanwhile.
                    self.store.writes_ending();
                    fetched = Some(result);
                }
                result = &mut committing => break result.map_err(SyncError::Committer)??,
            }
        };
        let (requests, finished) = match fetched {
            Some(result) => result?,
            None => fetching.await?,
        };
        run.cursor = committed.cursor;
        run.written += committed.written;
        run.unchanged += committed.unchanged;
        run.quarantined += committed.quarantined;
        run.requests += requests;
        Ok(finished)
    }

    /// Splits each window until each piece fits one page and sends the pieces in time order.
    /// Returns the number of requests made and whether it got through every window.
    ///
    /// A window is cut by the density of the pieces just read before it is asked for, so a
    /// backfill does not spend a request on a window it would only learn to split; a piece that
    /// still overflows is split by its own record count.
    async fn fetch_pieces(
        &self,
        mut windows: WindowPlanner,
        frame: RunFrame,
        to_committer: ToCommitter<'_>,
        shutdown: &CancellationToken,
    ) -> Result<(u64, bool), SyncError> {
        let mut requests = 0;
        let mut ahead = ReadAhead::new(
            Arc::clone(&self.source),
            self.plan.page_size,
            self.plan.read_ahead,
            &self.read_ahead,
            &self.buffer,
        );
        let mut density = self.density.lock().await;
        let mut recheck = self.recheck.lock().await;
        // A stack with the earliest piece on top keeps pieces in time order; `true` marks a
        // piece already cut to size. The next window is planned when the last one is done.
        let mut pending = Vec::new();
        while let Some((window, sized)) =
            pending.pop().or_else(|| windows.next().map(|w| (w, false)))
        {
            if shutdown.is_cancelled() {
                return Ok((requests, false));
            }
            if !sized && let Some(instead) = self.cut(window, frame, &density, &recheck) {
                pending.extend(instead);
                continue;
            }
            let closed = window.before <= frame.horizon;
            let size = self.piece_size(closed);
            // This piece is read now, and the pieces already cut to size after it whatever it
            // holds: their first pages are asked for while this one is parsed and written.
            self.start_ahead(&mut ahead, window, 1, &mut requests);
            loop {
                for (next, sized) in pending.iter().rev() {
                    if !*sized || !ahead.has_room() {
                        break;
                    }
                    self.start_ahead(&mut ahead, *next, 1, &mut requests);
                }
                // Every piece left is asked for already: the next window is cut now, by the
                // density known now, and its first pages asked for too. A sparse history is a
                // window per `max_window`, each a request that had waited for the one before.
                if !ahead.has_room() || pending.iter().any(|(_, sized)| !sized) {
                    break;
                }
                let Some(next) = windows.next() else { break };
                let mut later = vec![(next, false)];
                if density.expected(next).is_some() {
                    self.cut_to_size(&mut later, frame, &density, &recheck);
                }
                let planned = later.last().is_some_and(|(_, sized)| *sized);
                // Later than every piece pending: the bottom of the stack.
                pending.splice(0..0, later);
                if !planned {
                    break;
                }
            }
            // Shutdown abandons a fetch in progress (a slow page, a Retry-After pause): nothing
            // fetched and uncommitted is needed, the next run reads it again. Reads started
            // ahead are aborted with `ahead`.
            let read = tokio::select! {
                _ = shutdown.cancelled() => return Ok((requests, false)),
                read = self.read_piece(window, closed, &recheck, &mut ahead, &mut requests, &to_committer) => read?,
            };
            let (piece, records, room) = match read {
                PieceRead::Piece(piece, records, room) => (piece, records, room),
                PieceRead::Split(records) => {
                    density.observe(window.covered_seconds(), records);
                    pending.extend(
                        split(window, records, size)
                            .into_iter()
                            .rev()
                            .map(|w| (w, true)),
                    );
                    continue;
                }
            };
            density.observe(piece.window.covered_seconds(), records);
            recheck.read(&piece.orders, frame.horizon);
            if !to_committer.send(piece, room).await {
                // The committer stopped on an error; it reports it.
                return Ok((requests, false));
            }
        }
        Ok((requests, true))
    }

    /// How a window not yet cut to size is read: `None` when as it is, else the windows to read
    /// instead, the earliest last (`pending` is a stack), `true` marking those cut to size.
    fn cut(
        &self,
        window: TimeWindow,
        frame: RunFrame,
        density: &Density,
        recheck: &Recheck,
    ) -> Option<Vec<(TimeWindow, bool)>> {
        let one_page = self.planned_records(false);
        // A window reaching behind the run's cursor is read as two when the part behind is
        // cut by memory and the fresh part by density, unless together they fit a page.
        if let Some((behind, fresh)) = cut_at(window, frame.start) {
            let together = recheck
                .known_count(behind)
                .zip(density.expected(fresh))
                .map(|(known, expected)| known as f64 + expected);
            if together.is_none_or(|records| records > one_page) {
                return Some(vec![(fresh, false), (behind, false)]);
            }
        }
        // A window reaching from closed time into the lookback: the closed part is read
        // several pages at a time, unless it is too small to need more than one.
        if self.pages_per_read() > 1
            && let Some((closed, open)) = cut_at(window, frame.horizon)
            && density
                .expected(closed)
                .is_none_or(|records| records > one_page)
        {
            return Some(vec![(open, false), (closed, false)]);
        }
        // Behind the cursor, what earlier reads found in each second tells how to cut.
        if window.before <= frame.start
            && let Some(pieces) = recheck.cut(window, one_page as usize)
        {
            return Some(pieces.into_iter().rev().map(|w| (w, true)).collect());
        }
        let size = self.piece_size(window.before <= frame.horizon);
        density.parts(window, size).map(|parts| {
            even_split(window, parts)
                .into_iter()
                .rev()
                .map(|w| (w, true))
                .collect()
        })
    }

    /// Cuts the top of `pending` until it is a window read as it is, and marks that one cut
    /// to size, so it is read as planned now even when a later read changes the density.
    fn cut_to_size(
        &self,
        pending: &mut Vec<(TimeWindow, bool)>,
        frame: RunFrame,
        density: &Density,
        recheck: &Recheck,
    ) {
        while let Some(&(window, false)) = pending.last() {
            match self.cut(window, frame, density, recheck) {
                Some(instead) => {
                    pending.pop();
                    pending.extend(instead);
                }
                None => {
                    if let Some(top) = pending.last_mut() {
                        top.1 = true;
                    }
                }
            }
        }
    }

    /// `pages_per_read`: a closed window's pages go to the committer as they are read, so a
    /// longer read holds no more in memory (Postgres, page size 500, 1,000,000 orders: 4 pages a
    /// read at 76 MB peak RSS, 2,122 requests for 2,000 pages where 2 pages made 2,263).
    fn pages_per_read(&self) -> u32 {
        self.plan.pages_per_read.max(1)
    }

    /// How pieces are sized: one page, or up to `pages_per_read` pages when the window is
    /// closed.
    fn piece_size(&self, closed: bool) -> PieceSize {
        if closed && self.pages_per_read() > 1 {
            PieceSize {
                page_size: self.plan.page_size,
                max_pages: self.pages_per_read(),
                sigmas: PAGED_MARGIN_SIGMAS,
            }
        } else {
            PieceSize {
                page_size: self.plan.page_size,
                max_pages: 1,
                sigmas: FILL_MARGIN_SIGMAS,
            }
        }
    }

    /// The most records a piece is planned to hold: a little less than a page, or than
    /// `pages_per_read` pages when the window is closed.
    fn planned_records(&self, closed: bool) -> f64 {
        self.piece_size(closed).most_records()
    }

    /// Reads one window in a single request when it fits one page, or page by page when it is
    /// closed and fits one read; a one-second window that does not fit is read consistently, a
    /// wider one is to be split.
    async fn read_piece(
        &self,
        window: TimeWindow,
        closed: bool,
        recheck: &Recheck,
        ahead: &mut ReadAhead<'_>,
        requests: &mut u64,
        to_committer: &ToCommitter<'_>,
    ) -> Result<PieceRead, SyncError> {
        let page_size = self.plan.page_size;
        let (mut first, mut room) = self.fetch_with_room(window, 1, ahead, requests).await?;
        let fits = first.number_of_pages <= 1 && first.number_of_records <= u64::from(page_size);
        // Up to twice the planned pages: a window a little fuller than expected is still read
        // in one go rather than split with a request wasted.
        let pages = self.pages_per_read();
        if !fits && closed && pages > 1 && first.number_of_pages <= pages.saturating_mul(2) {
            let read = self
                .read_closed(window, (first, room), ahead, requests, to_committer)
                .await;
            // Pages started ahead for a read given up belong to it only.
            ahead.forget(window);
            match read? {
                Ok((piece, records, room)) => return Ok(PieceRead::Piece(piece, records, room)),
                Err(records) if window.covered_seconds() > 1 => {
                    return Ok(PieceRead::Split(records));
                }
                Err(_) => (first, room) = self.fetch_with_room(window, 1, ahead, requests).await?,
            }
        }
        Ok(if fits {
            let records = (first.orders.len() + first.quarantined.len()) as u64;
            let piece = Piece {
                window,
                orders: first.orders,
                quarantined: first.quarantined,
            };
            PieceRead::Piece(piece, records, room)
        } else if window.covered_seconds() <= 1 {
            let known = recheck.keys_at(window.after + 1);
            let (orders, quarantined) = self
                .read_consistently(window, first, known, ahead, requests)
                .await?;
            let records = (orders.len() + quarantined.len()) as u64;
            let piece = Piece {
                window,
                orders,
                quarantined,
            };
            // The first page's room goes with the whole second's orders; more is waited for
            // only once this room is given back (`OrderBuffer::hold_with`).
            PieceRead::Piece(piece, records, room)
        } else {
            PieceRead::Split(first.number_of_records)
        })
    }

    /// Starts reading a page ahead when there is room; counts the request when it is made.
    fn start_ahead(
        &self,
        ahead: &mut ReadAhead<'_>,
        window: TimeWindow,
        page_number: u32,
        requests: &mut u64,
    ) {
        if ahead.start(window, page_number) {
            *requests += 1;
            self.progress.add_request();
        }
    }

    /// The page with room for its orders: a page read now first waits for room in the buffer,
    /// so a stream waiting for room holds no page in hand; a page read ahead keeps the room it
    /// took for that until its orders have room in the buffer, when they are sent.
    async fn fetch_with_room(
        &self,
        window: TimeWindow,
        page_number: u32,
        ahead: &mut ReadAhead<'_>,
        requests: &mut u64,
    ) -> Result<(WindowPage, PageRoom), SyncError> {
        let room = if ahead.is_started(window, page_number) {
            PageRoom::default()
        } else {
            self.buffer.page_room(self.plan.page_size as usize).await
        };
        let (page, read_ahead) = self
            .fetch_page(window, page_number, ahead, requests)
            .await?;
        Ok((page, read_ahead.unwrap_or(room)))
    }

    /// The page, as read ahead if it was started, else read now.
    async fn fetch(
        &self,
        window: TimeWindow,
        page_number: u32,
        ahead: &mut ReadAhead<'_>,
        requests: &mut u64,
    ) -> Result<WindowPage, SyncError> {
        let (page, _) = self
            .fetch_page(window, page_number, ahead, requests)
            .await?;
        Ok(page)
    }

    /// The page, with the room it took if it was read ahead.
    async fn fetch_page(
        &self,
        window: TimeWindow,
        page_number: u32,
        ahead: &mut ReadAhead<'_>,
        requests: &mut u64,
    ) -> Result<(WindowPage, Option<PageRoom>), SyncError> {
        let (page, room) = match ahead.take(window, page_number).await {
            Some((read, room)) => (read?, Some(room)),
            None => {
                *requests += 1;
                self.progress.add_request();
                let page = self
                    .source
                    .page(window, page_number, self.plan.page_size)
                    .await?;
                (page, None)
            }
        };
        ahead.answered();
        tracing::trace!(
            stream = %self.stream(),
            after = window.after,
            before = window.before,
            page = page_number,
            records = page.number_of_records,
            pages = page.number_of_pages,
            "window page read"
        );
        Ok((page, room))
    }

    /// Pages through a closed window once. The read holds everything the window holds when every
    /// page reported the same record count and the pages held that many distinct records;
    /// otherwise an order left while we paged (and one behind it may have moved onto a page
    /// already read): `Err` with the latest count, to read the window in smaller pieces.
    ///
    /// Each page but the last goes to the committer as soon as it is read ([`Piece::early_pages`]);
    /// the last comes back with the window, whose commit moves the cursor. Orders of a read that
    /// turns out inconsistent were still versions upstream served, and a newer one is never
    /// overwritten by them. Quarantined records wait for the whole read, so a read given up
    /// does not quarantine them twice.
    async fn read_closed(
        &self,
        window: TimeWindow,
        (first_page, first_room): (WindowPage, PageRoom),
        ahead: &mut ReadAhead<'_>,
        requests: &mut u64,
        to_committer: &ToCommitter<'_>,
    ) -> Result<Result<(Piece, u64, PageRoom), u64>, SyncError> {
        let records = first_page.number_of_records;
        let pages = first_page.number_of_pages;
        let capacity = (pages as usize).saturating_mul(self.plan.page_size as usize);
        let mut seen = HashSet::with_capacity(capacity);
        let mut quarantined = Vec::new();
        let mut page = first_page;
        let mut room = first_room;
        let mut page_number = 1;
        loop {
            if page.number_of_records != records || page.number_of_pages != pages {
                return Ok(Err(page.number_of_records));
            }
            for order in &page.orders {
                seen.insert(key_hash(&order.key));
            }
            for record in page.quarantined {
                seen.insert(raw_hash(&record.raw));
                quarantined.push(record);
            }
            if page_number >= pages {
                break;
            }
            // A committer that stopped has failed the run, which ends the read with it.
            let _ = to_committer
                .send(Piece::early_pages(window, page.orders), room)
                .await;
            page_number += 1;
            // The pages after this one are asked for while it is read.
            for next in page_number..=pages {
                if !ahead.has_room() {
                    break;
                }
                self.start_ahead(ahead, window, next, requests);
            }
            (page, room) = self
                .fetch_with_room(window, page_number, ahead, requests)
                .await?;
        }
        if seen.len() as u64 != records {
            return Ok(Err(records));
        }
        let piece = Piece {
            window,
            orders: page.orders,
            quarantined,
        };
        Ok(Ok((piece, records, room)))
    }

    /// Pages through a window (one second wide) until a complete read finds no order the earlier
    /// reads missed; returns everything seen. Orders that left the window meanwhile were updated,
    /// so a later window reads their new version; only an order skipped at a page boundary could
    /// be lost, and a skip does not repeat on every read. `known` holds the keys an earlier run's
    /// consistent read of this second found: that read counts as the first.
    async fn read_consistently(
        &self,
        window: TimeWindow,
        first_page: WindowPage,
        known: HashSet<u64>,
        ahead: &mut ReadAhead<'_>,
        requests: &mut u64,
    ) -> Result<(Vec<Order>, Vec<Quarantined>), SyncError> {
        let read_before = !known.is_empty();
        let mut seen = known;
        let mut orders = Vec::new();
        let mut quarantined = Vec::new();
        // The page that showed the second to be overfull starts the first read.
        let mut first_page = Some(first_page);
        for attempt in 0..CONSISTENT_READ_ATTEMPTS {
            let mut found_new = false;
            let mut page_number = 1;
            let mut pages = 1;
            while page_number <= pages {
                // Nothing is read ahead here: each read must see the second as it is then.
                let page = match first_page.take() {
                    Some(page) => page,
                    None => self.fetch(window, page_number, ahead, requests).await?,
                };
                // Re-read from every page: it can change while we page.
                pages = page.number_of_pages;
                for order in page.orders {
                    found_new |= seen.insert(key_hash(&order.key));
                    orders.push(order);
                }
                quarantined.extend(page.quarantined);
                page_number += 1;
            }
            if (attempt > 0 || read_before) && !found_new {
                return Ok((orders, quarantined));
            }
        }
        Err(ProviderError::Inconsistent(format!(
            "the orders updated in second {} kept changing over {CONSISTENT_READ_ATTEMPTS} reads; will try again next run",
            window.after + 1
        ))
        .into())
    }
}

/// Commits fetched pieces in order, each with the cursor at its end.
struct Committer {
    store: Arc<dyn Store>,
    stream: StreamKey,
    progress: Arc<StreamProgress>,
    unbatched: Unbatched,
}

impl Committer {
    /// Commits the pieces as they arrive, coalescing those already waiting. Where the store
    /// can, the next batch is written while the one before it commits; batches still commit in
    /// order, each with its cursor. A batch sharing an order with one in flight waits for it.
    async fn run(
        self,
        mut receiver: mpsc::Receiver<(Piece, Held)>,
        start_cursor: i64,
        batch_orders: usize,
    ) -> Result<RunSummary, SyncError> {
        let concurrent = self.store.concurrent_commits().max(1);
        let mut committed = RunSummary {
            cursor: start_cursor,
            ..RunSummary::default()
        };
        let mut issued_cursor = start_cursor;
        let mut issued_orders = 0;
        let backlog_orders = batch_orders.saturating_mul(2);
        let mut in_flight = FuturesOrdered::new();
        // One per batch still writing its rows. A batch that has written them and waits for
        // the one before it to commit holds a connection but no core, so another batch is
        // written meanwhile: otherwise a small batch done early left its connection idle
        // until a large one before it committed. One more batch than the store writes at once.
        let mut writing = FuturesUnordered::new();
        let most_in_flight = concurrent + 1;
        let mut in_flight_keys: VecDeque<HashSet<u64>> = VecDeque::new();
        let mut earlier = EarlierCommit::none();
        let mut held_back = None;
        let mut waiting = Waiting::default();
        let mut open = true;
        loop {
            let room = writing.len() < concurrent && in_flight.len() < most_in_flight;
            tokio::select! {
                // Finished commits are taken first, so their results (and errors) come in order.
                biased;
                Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                    in_flight_keys.pop_front();
                    self.record(done?, &mut committed);
                }
                Some(_) = writing.next(), if !writing.is_empty() => {}
                piece = next_batch(&mut receiver, &mut held_back, &mut waiting, batch_orders, concurrent), if open && room => {
                    let Some((piece, room)) = piece else {
                        open = false;
                        continue;
                    };
                    // Only batches that can run together need their keys compared.
                    // By hash: a collision only holds a batch back, as a shared key would.
                    let keys: HashSet<u64> = match concurrent {
                        1 => HashSet::new(),
                        _ => piece.orders.iter().map(|o| key_hash(&o.key)).collect(),
                    };
                    if in_flight_keys.iter().any(|k| !k.is_disjoint(&keys)) {
                        held_back = Some((piece, room));
                        // Waits for the batches in flight before this one goes.
                        while let Some(done) = in_flight.next().await {
                            in_flight_keys.pop_front();
                            self.record(done?, &mut committed);
                        }
                        continue;
                    }
                    let advance = piece.window.before > issued_cursor;
                    issued_cursor = issued_cursor.max(piece.window.before);
                    self.unbatched.take(piece.orders.len());
                    let (done, next) = EarlierCommit::pair();
                    // In a backlog, while more of the stream's orders wait, the store may keep
                    // this batch's transaction open for them: they are the next batch. A run's
                    // first orders commit batch by batch, so a short run's commits, and the
                    // checkpoints copying them, go on while it reads: chained from the first
                    // batch, 10,000 orders on SQLite took 6% longer.
                    let done = if issued_orders >= backlog_orders {
                        let unbatched = self.unbatched.clone();
                        done.followed_while(Arc::new(move || unbatched.any()))
                    } else {
                        done
                    };
                    issued_orders += piece.orders.len();
                    let (written, written_heard) = tokio::sync::oneshot::channel();
                    writing.push(written_heard);
                    let before = std::mem::replace(&mut earlier, next).tell_when_written(written);
                    in_flight_keys.push_back(keys);
                    in_flight.push_back(self.commit(piece, room, advance, before, done));
                }
                else => break,
            }
        }
        // Every batch told that more follow was followed, so none is left open; should one
        // be, it is committed rather than rolled back behind a run that reports it done.
        if let Some(left_open) = earlier.left_open() {
            let (done, _nothing_follows) = EarlierCommit::pair();
            let nothing = Batch {
                stream: &self.stream,
                orders: &[],
                quarantined: &[],
                cursor: None,
                seen_at: Utc::now(),
            };
            self.store
                .commit_batch_handing_on(&nothing, left_open, done)
                .await?;
        }
        Ok(committed)
    }

    /// Writes one batch after `earlier` and reports to the batch after it through `done`: the
    /// store commits it, or leaves it to commit with the next batch. Its room in the order
    /// buffer is given back once it is written.
    async fn commit(
        &self,
        piece: Piece,
        room: Held,
        advance: bool,
        earlier: EarlierCommit,
        done: CommitDone,
    ) -> Result<(Piece, bool, BatchOutcome), SyncError> {
        let cursor_text = piece.window.before.to_string();
        let started = std::time::Instant::now();
        let outcome = self
            .store
            .commit_batch_handing_on(
                &Batch {
                    stream: &self.stream,
                    orders: &piece.orders,
                    quarantined: &piece.quarantined,
                    cursor: advance.then_some(cursor_text.as_str()),
                    seen_at: Utc::now(),
                },
                earlier,
                done,
            )
            .await?;
        drop(room);
        tracing::debug!(
            stream = %self.stream,
            after = piece.window.after,
            before = piece.window.before,
            orders = piece.orders.len(),
            written = outcome.written,
            commit_ms = started.elapsed().as_secs_f64() * 1e3,
            "piece committed"
        );
        Ok((piece, advance, outcome))
    }

    /// Counts a committed batch, in commit order. A piece inside the lookback ends behind the
    /// cursor: its orders count, the cursor stays.
    fn record(&self, (piece, advance, outcome): (Piece, bool, BatchOutcome), run: &mut RunSummary) {
        if advance {
            run.cursor = piece.window.before;
            self.progress.set_cursor(piece.window.before);
        }
        run.written += outcome.written;
        run.unchanged += outcome.unchanged;
        run.quarantined += outcome.quarantined;
        self.progress.add_outcome(&outcome);
        for record in &piece.quarantined {
            tracing::warn!(
                stream = %self.stream,
                source = %record.source,
                error = %record.error,
                "upstream record quarantined"
            );
        }
    }
}

/// Fetched pieces taken off the channel and not yet in a batch, earliest first.
#[derive(Default)]
struct Waiting {
    pieces: VecDeque<(Piece, Held)>,
    orders: usize,
}

impl Waiting {
    fn push(&mut self, (piece, room): (Piece, Held)) {
        self.orders += piece.orders.len();
        self.pieces.push_back((piece, room));
    }

    fn pop(&mut self) -> Option<(Piece, Held)> {
        let (piece, room) = self.pieces.pop_front()?;
        self.orders -= piece.orders.len();
        Some((piece, room))
    }
}

/// The piece held back for a batch in flight, else the next fetched pieces: those already
/// waiting go into the same transaction (one commit instead of several, and the cursor moves
/// to the end of the last of them). Where the store writes several batches at once, a batch
/// takes its share of what is waiting rather than all of it, so the other connections have
/// work too: a run's last pieces, fetched all at once, were otherwise written by one
/// connection while the others sat idle. What was fetched is committed even during shutdown:
/// it is at most a few pieces.
async fn next_batch(
    receiver: &mut mpsc::Receiver<(Piece, Held)>,
    held_back: &mut Option<(Piece, Held)>,
    waiting: &mut Waiting,
    batch_orders: usize,
    concurrent: usize,
) -> Option<(Piece, Held)> {
    if let Some(batch) = held_back.take() {
        return Some(batch);
    }
    if waiting.pieces.is_empty() {
        // The only wait; once a piece is here the rest is taken without one, so dropping this
        // future (the committer's select) loses nothing.
        let first = receiver.recv().await?;
        waiting.push(first);
    }
    let concurrent = concurrent.max(1);
    while waiting.orders < batch_orders.saturating_mul(concurrent) {
        let Ok(next) = receiver.try_recv() else {
            break;
        };
        waiting.push(next);
    }
    let share = waiting.orders.div_ceil(concurrent).min(batch_orders);
    let (first, mut room) = waiting.pop()?;
    let mut orders = first.orders.len();
    let mut pieces = vec![first];
    while orders < share {
        let Some((next, next_room)) = waiting.pop() else {
            break;
        };
        orders += next.orders.len();
        pieces.push(next);
        room.merge(next_room);
    }
    Some((Piece::merge(pieces), room))
}

/// Aborts a spawned task when the future waiting for it is dropped.
pub(super) struct AbortOnDrop<T>(pub(super) tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

#[async_trait::async_trait]
impl Job for WindowSync {
    type Report = RunSummary;
    type Error = SyncError;

    fn stream(&self) -> &StreamKey {
        self.source.stream()
    }

    async fn run(&self, shutdown: &CancellationToken) -> Result<RunSummary, SyncError> {
        let result = self.read(shutdown).await;
        self.progress
            .run_ended(result.as_ref().err().map(ToString::to_string));
        result
    }

    fn refused_credentials(error: &SyncError) -> bool {
        matches!(
            error,
            SyncError::Provider(ProviderError::Unauthorized { .. })
        )
    }
}

impl RunReport for RunSummary {
    fn log(&self, stream: &StreamKey) {
        tracing::info!(
            %stream,
            written = self.written,
            unchanged = self.unchanged,
            quarantined = self.quarantined,
            requests = self.requests,
            cursor = self.cursor,
            reread_secs = self.reread_secs,
            interrupted = self.interrupted,
            "run finished"
        );
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "written": self.written, "unchanged": self.unchanged,
            "quarantined": self.quarantined, "requests": self.requests,
            "cursor": self.cursor, "reread_secs": self.reread_secs,
            "interrupted": self.interrupted,
        })
    }
}

fn secs(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX / 4)
}

/// `window` as the part before second `at` and the part from it on, when it reaches across it
/// (the pieces overlap by the second that exclusive bounds need).
fn cut_at(window: TimeWindow, at: i64) -> Option<(TimeWindow, TimeWindow)> {
    (window.after + 1 < at && window.before > at).then(|| {
        let before = TimeWindow {
            after: window.after,
            before: at,
        };
        let from = TimeWindow {
            after: at - 1,
            before: window.before,
        };
        (before, from)
    })
}

/// A quarantined record's identity in a closed read (it may have no usable key).
fn raw_hash(raw: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = identity_hasher();
    raw.hash(&mut hasher);
    hasher.finish()
}

/// Splits a window that did not fit its read into contiguous pieces sized by `size`, assuming
/// the `records` are spread evenly (a piece that still does not fit its read is split again).
fn split(window: TimeWindow, records: u64, size: PieceSize) -> Vec<TimeWindow> {
    even_split(window, size.parts(records as f64).clamp(2, MAX_SPLIT))
}

/// The reads a window is cut for: pieces of at most `max_pages` pages, each planned
/// `sigmas` standard deviations below its last page's end.
#[derive(Debug, Clone, Copy)]
struct PieceSize {
    page_size: u32,
    max_pages: u32,
    sigmas: f64,
}

impl PieceSize {
    /// The most records one piece is planned to hold.
    fn most_records(&self) -> f64 {
        records_per_piece(self.page_size.saturating_mul(self.max_pages), self.sigmas)
    }

    /// Into how many pieces to cut `records` spread evenly, so that the pages asked for are
    /// fewest: a piece's last page is mostly empty when pieces are cut to the most records
    /// alone (10,000 orders, page size 200, reads of up to 4 pages: 3,375 orders of one day
    /// cut into 5 pieces of 675 took 4 pages each, 20 requests; 6 pieces of 562 take 3 each, 18).
    fn parts(&self, records: f64) -> i64 {
        let mut best: Option<(f64, i64)> = None;
        // From the largest pieces down, so that of equal costs the fewest pieces win.
        for pages in (1..=self.max_pages.max(1)).rev() {
            let per_piece = records_per_piece(self.page_size.saturating_mul(pages), self.sigmas);
            let parts = (records / per_piece).ceil().max(1.0);
            let requests = parts * f64::from(pages);
            if best.is_none_or(|(fewest, _)| requests < fewest) {
                best = Some((requests, parts.min(MAX_SPLIT as f64) as i64));
            }
        }
        best.map_or(1, |(_, parts)| parts)
    }
}

/// The records a piece is planned to hold: `m` with `m + sigmas * sqrt(m)` = one read's
/// `capacity` (a count of evenly spread orders varies by about its square root).
fn records_per_piece(capacity: u32, sigmas: f64) -> f64 {
    let capacity = f64::from(capacity);
    let z = sigmas;
    let root = (-z + (z * z + 4.0 * capacity).sqrt()) / 2.0;
    (root * root).max(1.0)
}

/// `parts` contiguous pieces of equal length (at most one per second) covering `window`.
fn even_split(window: TimeWindow, parts: i64) -> Vec<TimeWindow> {
    let first = window.after + 1;
    let seconds = window.covered_seconds();
    let parts = parts.clamp(1, MAX_SPLIT).min(seconds).max(1);
    (0..parts)
        .map(|i| {
            let lo = first + i * seconds / parts;
            let hi = first + (i + 1) * seconds / parts - 1;
            TimeWindow {
                after: lo - 1,
                before: hi + 1,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_page(page_size: u32) -> PieceSize {
        PieceSize {
            page_size,
            max_pages: 1,
            sigmas: FILL_MARGIN_SIGMAS,
        }
    }

    #[test]
    fn a_batch_ends_where_its_latest_piece_ends() {
        let piece = |after, before| Piece {
            window: TimeWindow { after, before },
            orders: Vec::new(),
            quarantined: Vec::new(),
        };
        // A fresh window's last piece, then the rest of the lookback behind it: the batch must
        // still move the cursor to the fresh piece's end.
        let merged = Piece::merge(vec![piece(1_000, 2_000), piece(400, 900)]);
        assert_eq!((merged.window.after, merged.window.before), (400, 2_000));
        let merged = Piece::merge(vec![piece(100, 200), piece(199, 300), piece(299, 400)]);
        assert_eq!((merged.window.after, merged.window.before), (100, 400));
    }

    #[test]
    fn pieces_are_cut_to_whole_pages() {
        let reads = PieceSize {
            page_size: 200,
            max_pages: 4,
            sigmas: PAGED_MARGIN_SIGMAS,
        };
        // The pages each piece of evenly spread orders needs, with the planned margin.
        let requests = |records: f64| {
            let parts = reads.parts(records);
            let per_piece = records / parts as f64;
            assert!(
                per_piece <= reads.most_records(),
                "{records}: {parts} parts"
            );
            let pages = ((per_piece + PAGED_MARGIN_SIGMAS * per_piece.sqrt()) / 200.0).ceil();
            parts * pages as i64
        };
        // 3,375 orders need 17 pages: 6 pieces of 3 pages, not 5 of 4.
        assert_eq!(reads.parts(3_375.0), 6);
        assert_eq!(requests(3_375.0), 18);
        // What fits one read is one piece; a large window is cut to the most records.
        assert_eq!(reads.parts(500.0), 1);
        assert_eq!(reads.parts(77_000.0), 100);
        assert_eq!(one_page(200).parts(1_000.0), 6);
    }

    #[test]
    fn split_pieces_cover_the_window_exactly_once() {
        let window = TimeWindow {
            after: 99,
            before: 1_000,
        };
        for records in [0, 150, 1_000, 1_000_000] {
            let pieces = split(window, records, one_page(100));
            assert!(pieces.len() >= 2);
            let mut next = window.after + 1;
            for piece in &pieces {
                assert_eq!(piece.after + 1, next, "gap or overlap in {pieces:?}");
                assert!(piece.covered_seconds() >= 1);
                next = piece.before;
            }
            assert_eq!(next, window.before);
        }
    }

    #[test]
    fn split_never_makes_empty_pieces() {
        let narrow = TimeWindow {
            after: 9,
            before: 12,
        };
        let pieces = split(narrow, 10_000, one_page(10));
        assert_eq!(pieces.len(), 2);
        assert!(pieces.iter().all(|p| p.covered_seconds() == 1));
    }

    #[test]
    fn density_cuts_a_window_before_it_is_read() {
        let one_page = one_page(200);
        let mut density = Density::default();
        let window = TimeWindow {
            after: 0,
            before: 3_601,
        };
        assert_eq!(
            density.parts(window, one_page),
            None,
            "nothing known yet: read it"
        );
        // 150 records a minute: an hour holds 9,000, in pieces of about 174 (200 less two
        // standard deviations).
        density.observe(60, 150);
        assert_eq!(density.parts(window, one_page), Some(52));
        // A quiet stretch: the hour fits one page.
        for _ in 0..DENSITY_MEMORY {
            density.observe(3_600, 10);
        }
        assert_eq!(density.parts(window, one_page), None);
        // Never finer than a second.
        let narrow = TimeWindow {
            after: 0,
            before: 4,
        };
        let mut density = Density::default();
        density.observe(1, 100_000);
        assert_eq!(density.parts(narrow, one_page), Some(3));
    }

    /// A piece of `orders` orders for the ten seconds after `after`, sent as the fetcher does.
    async fn send_piece(
        sender: &mpsc::Sender<(Piece, Held)>,
        buffer: &OrderBuffer,
        after: i64,
        orders: usize,
    ) {
        let piece = Piece {
            window: TimeWindow {
                after,
                before: after + 10,
            },
            orders: (0..orders)
                .map(|i| crate::model::test_order(&format!("{after}-{i}"), after + 1, None))
                .collect(),
            quarantined: Vec::new(),
        };
        let room = buffer.hold(orders).await;
        assert!(sender.send((piece, room)).await.is_ok());
    }

    /// Six pages of 500 orders fetched and waiting for the committer, in a buffer of 10,000.
    async fn six_pages_waiting() -> (
        OrderBuffer,
        mpsc::Sender<(Piece, Held)>,
        mpsc::Receiver<(Piece, Held)>,
    ) {
        let buffer = OrderBuffer::new(10_000, 10_000);
        let (sender, receiver) = mpsc::channel(16);
        for after in [0, 10, 20, 30, 40, 50] {
            send_piece(&sender, &buffer, after, 500).await;
        }
        (buffer, sender, receiver)
    }

    fn batch_shape(batch: &(Piece, Held)) -> (i64, i64, usize) {
        let (piece, _) = batch;
        (piece.window.after, piece.window.before, piece.orders.len())
    }

    #[tokio::test]
    async fn one_writer_takes_every_waiting_piece_up_to_a_batch() {
        let (_buffer, sender, mut receiver) = six_pages_waiting().await;
        let (mut held_back, mut waiting) = (None, Waiting::default());
        let next = next_batch(&mut receiver, &mut held_back, &mut waiting, 2_000, 1).await;
        assert_eq!(next.as_ref().map(batch_shape), Some((0, 40, 2_000)));
        let next = next_batch(&mut receiver, &mut held_back, &mut waiting, 2_000, 1).await;
        assert_eq!(next.as_ref().map(batch_shape), Some((40, 60, 1_000)));
        drop(sender);
        let next = next_batch(&mut receiver, &mut held_back, &mut waiting, 2_000, 1).await;
        assert!(next.is_none(), "nothing left once the fetcher is done");
    }

    #[tokio::test]
    async fn concurrent_writers_share_what_is_waiting_in_time_order() {
        // A run's last window, fetched while both connections were busy.
        let (buffer, sender, mut receiver) = six_pages_waiting().await;
        drop(sender);
        let (mut held_back, mut waiting) = (None, Waiting::default());
        let mut batches = Vec::new();
        while let Some(batch) =
            next_batch(&mut receiver, &mut held_back, &mut waiting, 4_000, 2).await
        {
            batches.push(batch_shape(&batch));
        }
        // Half for the first connection instead of all 3,000 orders, the rest for the others.
        assert_eq!(
            batches,
            vec![(0, 30, 1_500), (30, 50, 1_000), (50, 60, 500)]
        );
        // Their room in the buffer went with them and came back as they were dropped.
        assert_eq!(buffer.held(), 0);
    }

    #[tokio::test]
    async fn a_batch_held_back_goes_first_and_whole() {
        let buffer = OrderBuffer::new(10_000, 10_000);
        let (sender, mut receiver) = mpsc::channel(16);
        send_piece(&sender, &buffer, 100, 500).await;
        let held = Piece {
            window: TimeWindow {
                after: 0,
                before: 90,
            },
            orders: vec![crate::model::test_order("x", 1, None); 3_000],
            quarantined: Vec::new(),
        };
        let mut held_back = Some((held, Held::default()));
        let mut waiting = Waiting::default();
        let next = next_batch(&mut receiver, &mut held_back, &mut waiting, 1_000, 2).await;
        assert_eq!(next.as_ref().map(batch_shape), Some((0, 90, 3_000)));
        let next = next_batch(&mut receiver, &mut held_back, &mut waiting, 1_000, 2).await;
        assert_eq!(next.as_ref().map(batch_shape), Some((100, 110, 500)));
    }
}
