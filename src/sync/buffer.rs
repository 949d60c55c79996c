//! The orders a process holds between fetching and committing, over all its streams: what a
//! backfill costs in memory. A store writes faster in larger batches (SQLite rewrites every index
//! page a commit touches), so one stream alone may use the whole buffer; several backfilling at
//! once share it instead of each holding its own.

use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub struct OrderBuffer {
    room: Arc<Semaphore>,
    orders: usize,
}

/// Room for some orders in an [`OrderBuffer`], given back when dropped (once they are
/// committed).
#[derive(Default)]
pub struct Held(Option<OwnedSemaphorePermit>);

impl OrderBuffer {
    pub fn new(orders: usize) -> Self {
        let orders = orders.clamp(1, Semaphore::MAX_PERMITS);
        OrderBuffer {
            room: Arc::new(Semaphore::new(orders)),
            orders,
        }
    }

    /// How many orders the buffer holds when full.
    pub fn orders(&self) -> usize {
        self.orders
    }

    /// How much room is taken now, including what a waiting hold has set aside so far.
    pub fn held(&self) -> usize {
        self.orders - self.room.available_permits()
    }

    /// Waits until there is room for `orders` and takes it. Waits in turn: a stream asking for
    /// much is not passed over by others asking for little. More than the whole buffer takes all
    /// of it, so a piece larger than the buffer still goes, alone.
    pub async fn hold(&self, orders: usize) -> Held {
        let wanted = orders.min(self.orders);
        if wanted == 0 {
            return Held::default();
        }
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
        // The semaphore is never closed, so this only returns with the room taken; the wait is
        // cancelled with the run that awaits it.
        match Arc::clone(&self.room).acquire_many_owned(wanted).await {
            Ok(permit) => Held(Some(permit)),
            Err(_) => Held::default(),
        }
    }
}

impl Held {
    /// One hold for the orders of both, as when pieces are joined into one batch.
    pub fn merge(&mut self, other: Held) {
        match (&mut self.0, other.0) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn room_is_taken_in_turn_and_given_back_when_dropped() {
        let buffer = Arc::new(OrderBuffer::new(1_000));
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
        let buffer = OrderBuffer::new(100);
        let all = tokio::time::timeout(Duration::from_secs(5), buffer.hold(5_000))
            .await
            .expect("a piece larger than the buffer is not refused forever");
        assert_eq!(buffer.held(), 100);
        drop(all);
        let none = buffer.hold(0).await;
        assert_eq!(buffer.held(), 0);
        drop(none);
    }
}
