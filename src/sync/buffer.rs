//! The orders a process holds between fetching and committing, over all its streams: what a
//! backfill costs in memory. A store writes faster in larger batches (SQLite rewrites every index
//! page a commit touches), so one stream alone may use the whole buffer; several backfilling at
//! once share it instead of each holding its own.
//!
//! Where the store says so ([`Store::buffer_starts_at`]), the buffer starts smaller and grows to
//! half of what has gone through it, up to the whole: a short run, or the first seconds of a
//! long one, does not fill memory it cannot use yet, while a long backfill reaches its large
//! batches within its first few.
//!
//! A page asked for when it is needed takes its room before the request ([`PageRoom`]), so a
//! stream waiting for room holds no page: however many accounts backfill at once, the pages
//! fetched and not yet written stay within the buffer.
//!
//! Pages asked for before they are needed (see `read_ahead`) are held too: every stream's reads
//! ahead share room for a quarter of the buffer's orders more, which none of them waits for. A
//! stream that finds none reads its next page when it needs it. A page read ahead keeps that room
//! until its orders have room in the buffer, so what the reads ahead hold, on their way or in
//! hand, does not grow with the number of accounts backfilling at once.
//!
//! [`Store::buffer_starts_at`]: crate::store::Store::buffer_starts_at

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct OrderBuffer {
    growth: Arc<Growth>,
    /// Room for pages read ahead, in orders, over every stream.
    ahead: Arc<Semaphore>,
    ahead_orders: usize,
}

/// The buffer's room, how much of it has been given out so far, and what has gone through it.
/// Each [`Held`] keeps it too, to report what passed when it is dropped.
struct Growth {
    room: Arc<Semaphore>,
    orders: usize,
    granted: AtomicUsize,
    passed: AtomicUsize,
}

impl Growth {
    /// Counts orders given back and widens the room to half of all that has passed, up to the
    /// whole buffer.
    fn passed(&self, orders: usize) {
        let passed = self.passed.fetch_add(orders, Ordering::Relaxed) + orders;
        let wanted = (passed / 2).min(self.orders);
        // Whoever raises `granted` adds the permits between the old value and its own.
        let before = self.granted.fetch_max(wanted, Ordering::Relaxed);
        if wanted > before {
            self.room.add_permits(wanted - before);
        }
    }
}

/// Room for some orders in an [`OrderBuffer`], given back when dropped (once they are
/// committed).
#[derive(Default)]
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
    growth: Option<Arc<Growth>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let orders = self.permit.take().map_or(0, |permit| permit.num_permits());
        if let Some(growth) = &self.growth {
            growth.passed(orders);
        }
    }
}

/// Room for a page taken before the page is asked for ([`OrderBuffer::page_room`]): given back
/// when dropped, and counted as passed through the buffer only once its orders go to the
/// committer (in a [`Held`]), so room taken for a page never used does not grow the buffer.
/// A page read ahead brings its room for reads ahead instead ([`PageRoom::read_ahead`]).
#[derive(Default)]
pub struct PageRoom {
    permit: Option<OwnedSemaphorePermit>,
    ahead: Option<AheadRoom>,
}

impl PageRoom {
    /// A page read ahead keeps the room it took for that until its orders have room in the
    /// buffer: a stream waiting for that room holds the page, and the page stays counted
    /// among the reads ahead, so no further page is read ahead on top of it.
    pub fn read_ahead(room: AheadRoom) -> Self {
        PageRoom {
            permit: None,
            ahead: Some(room),
        }
    }
}

/// Room for one page read ahead, given back when dropped (once its orders have room in the
/// buffer, or the page is not needed after all).
pub struct AheadRoom {
    _permit: OwnedSemaphorePermit,
}

impl OrderBuffer {
    /// A buffer for `orders` that starts with room for `start` of them (see the module's note).
    pub fn new(orders: usize, start: usize) -> Self {
        let orders = orders.clamp(1, Semaphore::MAX_PERMITS);
        let start = start.clamp(1, orders);
        let ahead_orders = (orders / 4).max(1);
        OrderBuffer {
            growth: Arc::new(Growth {
                room: Arc::new(Semaphore::new(start)),
                orders,
                granted: AtomicUsize::new(start),
                passed: AtomicUsize::new(0),
            }),
            ahead: Arc::new(Semaphore::new(ahead_orders)),
            ahead_orders,
        }
    }

    /// Room for a page of `orders` asked for before it is needed, if there is some now; never
    /// waits. A page larger than all the room for reads ahead takes all of it, so it is still
    /// read ahead, alone.
    pub fn read_ahead_room(&self, orders: usize) -> Option<AheadRoom> {
        let wanted = u32::try_from(self.ahead_wanted(orders)).unwrap_or(u32::MAX);
        Arc::clone(&self.ahead)
            .try_acquire_many_owned(wanted)
            .ok()
            .map(|permit| AheadRoom { _permit: permit })
    }

    /// Whether [`read_ahead_room`](Self::read_ahead_room) would find room for `orders` now.
    pub fn has_read_ahead_room(&self, orders: usize) -> bool {
        self.ahead.available_permits() >= self.ahead_wanted(orders)
    }

    /// The room a page of `orders` read ahead takes. Both the check and the taking use it: a
    /// check that promised room the taking then refused would let the fetcher plan window
    /// after window without reading any of them ahead.
    fn ahead_wanted(&self, orders: usize) -> usize {
        orders.clamp(1, self.ahead_orders)
    }

    /// Orders' room taken by pages read ahead now.
    pub fn held_ahead(&self) -> usize {
        self.ahead_orders
            .saturating_sub(self.ahead.available_permits())
    }

    /// How many orders the buffer holds when full, once grown.
    pub fn orders(&self) -> usize {
        self.growth.orders
    }

    /// How much room is taken now, including what a waiting hold has set aside so far.
    pub fn held(&self) -> usize {
        // Free room read first: room that grows before the second read counts as taken, so
        // this is never less than the room taken when it is called.
        let free = self.growth.room.available_permits();
        self.growth
            .granted
            .load(Ordering::Relaxed)
            .saturating_sub(free)
    }

    /// Waits until there is room for `orders` and takes it. Waits in turn: a stream asking for
    /// much is not passed over by others asking for little. More than the room the buffer has
    /// grown to takes all of it, so a piece larger than the buffer still goes, alone.
    pub async fn hold(&self, orders: usize) -> Held {
        let room_now = self.growth.granted.load(Ordering::Relaxed);
        let wanted = orders.min(room_now);
        if wanted == 0 {
            return Held::default();
        }
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
        // The semaphore is never closed, so this only returns with the room taken; the wait is
        // cancelled with the run that awaits it.
        match Arc::clone(&self.growth.room)
            .acquire_many_owned(wanted)
            .await
        {
            Ok(permit) => Held {
                permit: Some(permit),
                growth: Some(Arc::clone(&self.growth)),
            },
            Err(_) => Held::default(),
        }
    }

    /// Waits for room for a page of `orders` before it is asked for, as [`hold`](Self::hold)
    /// does. Take it only while holding no room for orders not yet sent: otherwise streams
    /// waiting for more room could hold all of it between them.
    pub async fn page_room(&self, orders: usize) -> PageRoom {
        let mut held = self.hold(orders).await;
        PageRoom {
            permit: held.permit.take(),
            ahead: None,
        }
    }

    /// Room for a piece of `orders` going to the committer, out of the room taken for its page
    /// when that is enough (what it does not need is given back now). When it is not (a
    /// crowded second read over several pages), that room is given back first and the whole
    /// waited for, as for a piece read without room: never waiting while holding some.
    pub async fn hold_with(&self, room: PageRoom, orders: usize) -> Held {
        let wanted = orders.min(self.growth.granted.load(Ordering::Relaxed));
        let Some(mut permit) = room.permit else {
            let held = self.hold(orders).await;
            // Only now is a page read ahead counted in the buffer instead.
            drop(room.ahead);
            return held;
        };
        if permit.num_permits() < wanted {
            drop(permit);
            return self.hold(orders).await;
        }
        if wanted == 0 {
            return Held::default();
        }
        let spare = permit.num_permits() - wanted;
        drop(permit.split(spare));
        Held {
            permit: Some(permit),
            growth: Some(Arc::clone(&self.growth)),
        }
    }
}

impl Held {
    /// One hold for the orders of both, as when pieces are joined into one batch.
    pub fn merge(&mut self, mut other: Held) {
        match (&mut self.permit, other.permit.take()) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
        if self.growth.is_none() {
            self.growth = other.growth.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn room_is_taken_in_turn_and_given_back_when_dropped() {
        let buffer = Arc::new(OrderBuffer::new(1_000, 1_000));
        let mut first = buffer.hold(600).await;
        first.merge(buffer.hold(300).await);
        assert_eq!(buffer.held(), 900);

        // 200 do not fit; 50 would, but wait their turn behind the 200.
        let waiting = tokio::spawn({
            let buffer = Arc::clone(&buffer);
            async move { buffer.hold(200).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let small = tokio::spawn({
            let buffer = Arc::clone(&buffer);
            async move { buffer.hold(50).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished() && !small.is_finished());

        drop(first);
        let (large, small) = tokio::time::timeout(Duration::from_secs(5), async {
            (waiting.await.unwrap(), small.await.unwrap())
        })
        .await
        .expect("room given back lets the waiting holds in");
        assert_eq!(buffer.held(), 250);
        drop((large, small));
        assert_eq!(buffer.held(), 0);
    }

    #[tokio::test]
    async fn more_than_the_whole_buffer_takes_all_of_it() {
        let buffer = OrderBuffer::new(100, 100);
        let all = tokio::time::timeout(Duration::from_secs(5), buffer.hold(5_000))
            .await
            .expect("a piece larger than the buffer is not refused forever");
        assert_eq!(buffer.held(), 100);
        drop(all);
        let none = buffer.hold(0).await;
        assert_eq!(buffer.held(), 0);
        drop(none);
    }

    #[tokio::test]
    async fn the_room_grows_to_half_of_what_has_passed_up_to_the_whole() {
        let buffer = OrderBuffer::new(1_000, 250);
        // A quarter to start with: more than that takes what there is.
        let first = buffer.hold(400).await;
        assert_eq!(buffer.held(), 250);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), buffer.hold(1))
                .await
                .is_err(),
            "no room beyond the first quarter until orders pass"
        );
        drop(first);
        // 250 passed: half of it is less than the room already there.
        let second = buffer.hold(250).await;
        drop(second);
        // 500 passed, then 750: the room is now 375.
        let third = buffer.hold(250).await;
        drop(third);
        let grown = buffer.hold(2_000).await;
        assert_eq!(buffer.held(), 375);
        drop(grown);
        // 1,125 passed: 562 of room; then the whole buffer, and no more, after 2,000.
        let mut passed = 1_125;
        while passed < 2_000 {
            let held = buffer.hold(500).await;
            passed += 500;
            drop(held);
        }
        let all = buffer.hold(5_000).await;
        assert_eq!(buffer.held(), 1_000);
        drop(all);
        assert_eq!(buffer.held(), 0);
    }

    #[test]
    fn reads_ahead_share_a_quarter_more_and_never_wait() {
        let buffer = OrderBuffer::new(4_000, 4_000);
        // Two pages of 500 fit the 1,000 orders of room for reads ahead; a third does not.
        let first = buffer.read_ahead_room(500);
        let second = buffer.read_ahead_room(500);
        assert!(first.is_some() && second.is_some());
        assert!(!buffer.has_read_ahead_room(500));
        assert!(buffer.read_ahead_room(500).is_none());
        assert_eq!(buffer.held_ahead(), 1_000);
        // Apart from the room of fetched orders, which stays whole.
        assert_eq!(buffer.held(), 0);
        drop(first);
        assert!(buffer.has_read_ahead_room(500));
        let third = buffer.read_ahead_room(500);
        assert!(third.is_some());
        drop((second, third));
        assert_eq!(buffer.held_ahead(), 0);
        // A page larger than all of it is read ahead alone.
        let large = buffer.read_ahead_room(5_000);
        assert!(large.is_some());
        assert_eq!(buffer.held_ahead(), 1_000);
        assert!(buffer.read_ahead_room(1).is_none());
    }

    #[tokio::test]
    async fn a_pages_room_goes_with_its_orders_and_the_spare_is_given_back() {
        let buffer = OrderBuffer::new(1_000, 1_000);
        let room = buffer.page_room(500).await;
        assert_eq!(buffer.held(), 500);
        // The page held 320 orders: the other 180 are free at once.
        let held = buffer.hold_with(room, 320).await;
        assert_eq!(buffer.held(), 320);
        drop(held);
        assert_eq!(buffer.held(), 0);

        // Pages never sent give their room back without it counting as passed: a buffer that
        // grows to half of what passed stays at 100 after 300 orders' room came and went.
        let growing = OrderBuffer::new(1_000, 100);
        for _ in 0..3 {
            drop(growing.page_room(100).await);
        }
        let all = growing.hold(1_000).await;
        assert_eq!(growing.held(), 100);
        drop(all);
    }

    #[tokio::test]
    async fn pieces_larger_than_their_pages_room_never_wait_while_holding_it() {
        let buffer = Arc::new(OrderBuffer::new(1_000, 1_000));
        // Two streams each took room for a page, then read a crowded second of 700 orders
        // over two pages. Held while waiting, their rooms would leave neither enough.
        let first = buffer.page_room(500).await;
        let second = buffer.page_room(500).await;
        assert_eq!(buffer.held(), 1_000);
        let pieces = [(first, 700), (second, 700)].map(|(room, orders)| {
            let buffer = Arc::clone(&buffer);
            tokio::spawn(async move {
                let held = buffer.hold_with(room, orders).await;
                // Written, then given back.
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(held);
            })
        });
        tokio::time::timeout(Duration::from_secs(5), async {
            for piece in pieces {
                piece.await.unwrap();
            }
        })
        .await
        .expect("each piece gets its room in turn");
        assert_eq!(buffer.held(), 0);
        // Without a page's room: the piece takes its room now.
        let plain = buffer.hold_with(PageRoom::default(), 300).await;
        assert_eq!(buffer.held(), 300);
        drop(plain);
    }

    #[tokio::test]
    async fn a_page_read_ahead_keeps_its_room_until_its_orders_have_room_in_the_buffer() {
        let buffer = Arc::new(OrderBuffer::new(1_000, 1_000));
        let full = buffer.hold(1_000).await;
        // A quarter of the buffer for reads ahead: one page of 250 takes all of it.
        let ahead = buffer.read_ahead_room(250).expect("room to read ahead");
        let piece = tokio::spawn({
            let buffer = Arc::clone(&buffer);
            async move { buffer.hold_with(PageRoom::read_ahead(ahead), 200).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Its page is in hand while it waits: no other page is read ahead on top of it.
        assert!(!piece.is_finished());
        assert_eq!(buffer.held_ahead(), 250);
        assert!(!buffer.has_read_ahead_room(1));

        drop(full);
        let held = tokio::time::timeout(Duration::from_secs(5), piece)
            .await
            .expect("room given back lets the piece in")
            .unwrap();
        assert_eq!((buffer.held(), buffer.held_ahead()), (200, 0));
        drop(held);
    }

    #[tokio::test]
    async fn room_merged_into_one_hold_is_given_back_once() {
        let buffer = OrderBuffer::new(400, 100);
        let mut batch = buffer.hold(60).await;
        batch.merge(buffer.hold(40).await);
        batch.merge(Held::default());
        assert_eq!(buffer.held(), 100);
        drop(batch);
        assert_eq!(buffer.held(), 0);
        // 100 passed: the room stays at its first quarter (100) until 200 have.
        let all = buffer.hold(400).await;
        assert_eq!(buffer.held(), 100);
        drop(all);
        let all = buffer.hold(400).await;
        assert_eq!(buffer.held(), 100);
        drop(all);
        let all = buffer.hold(400).await;
        assert_eq!(buffer.held(), 150);
        drop(all);
    }
}
