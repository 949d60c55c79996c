//! At most N requests of an account in any period of its rate, counted the way an upstream
//! counts them: by when they *arrive*, which ordersync cannot see. Evenly spaced requests arrive
//! unevenly (the network, a busy host on either side), and a strict upstream refuses the N+1st
//! that a delay brought into one window. So a request's place in the window is held from the
//! moment it may be sent until one period after its answer came (an arrival is never later than
//! its answer): the N+1st request waits for the first one's answer plus one period.
//!
//! The steady spacing (one request per period / N, no burst) stays with the rate limiter; this
//! only adds the wait that delays on the way make necessary. On loopback that is a few
//! milliseconds per period.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Rates above this many requests per period are paced by spacing alone (one slot per request
/// would be held for a whole period: memory for what is, in practice, no limit).
const MOST_SLOTS: u32 = 10_000;

pub struct RateWindow {
    period: Duration,
    slots: usize,
    state: Mutex<Slots>,
    answered: Notify,
}

/// The requests that still count in the window, oldest first: `None` while unanswered.
struct Slots {
    first: u64,
    held: VecDeque<Option<Instant>>,
}

/// One request's place in the window; answered when dropped.
pub struct Ticket {
    window: Option<Arc<RateWindow>>,
    seq: u64,
}

impl RateWindow {
    /// `None` when the rate is too high to be worth counting per request.
    pub fn new(requests: u32, period: Duration) -> Option<Arc<RateWindow>> {
        (requests <= MOST_SLOTS).then(|| {
            Arc::new(RateWindow {
                period,
                slots: requests.max(1) as usize,
                state: Mutex::new(Slots {
                    first: 0,
                    held: VecDeque::new(),
                }),
                answered: Notify::new(),
            })
        })
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        // The slots stay consistent whatever a panicking holder was doing.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for a place in the window.
    pub async fn admit(self: &Arc<Self>) -> Ticket {
        loop {
            let answered = self.answered.notified();
            tokio::pin!(answered);
            answered.as_mut().enable();
            let wait_until = {
                let now = Instant::now();
                let mut slots = self.slots();
                while let Some(Some(at)) = slots.held.front() {
                    if *at + self.period > now {
                        break;
                    }
                    slots.held.pop_front();
                    slots.first += 1;
                }
                if slots.held.len() < self.slots {
                    let seq = slots.first + slots.held.len() as u64;
                    slots.held.push_back(None);
                    return Ticket {
                        window: Some(self.clone()),
                        seq,
                    };
                }
                slots
                    .held
                    .front()
                    .copied()
                    .flatten()
                    .map(|at| at + self.period)
            };
            match wait_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => answered.await,
            }
        }
    }

    fn answer(&self, seq: u64) {
        {
            let mut slots = self.slots();
            let first = slots.first;
            if let Some(slot) = seq
                .checked_sub(first)
                .and_then(|i| slots.held.get_mut(i as usize))
            {
                *slot = Some(Instant::now());
            }
        }
        self.answered.notify_waiters();
    }
}

impl Ticket {
    /// A place for a request that no window limits.
    pub fn unlimited() -> Ticket {
        Ticket {
            window: None,
            seq: 0,
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(window) = self.window.take() {
            window.answer(self.seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_next_request_waits_one_period_after_the_oldest_answer() {
        let window = RateWindow::new(2, Duration::from_secs(1)).expect("a window");
        let started = Instant::now();
        let first = window.admit().await;
        let second = window.admit().await;
        // The first answer comes late: the third request counts from it, not from its send.
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(first);
        let third = window.admit().await;
        assert_eq!(started.elapsed(), Duration::from_millis(1300));
        drop(second);
        drop(third);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_request_holds_its_place() {
        let window = RateWindow::new(1, Duration::from_millis(100)).expect("a window");
        let first = window.admit().await;
        let waiting = {
            let window = window.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let _ticket = window.admit().await;
                started.elapsed()
            })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished());
        drop(first);
        let waited = waiting.await.expect("admitted");
        assert_eq!(waited, Duration::from_millis(5100));
    }

    #[test]
    fn very_high_rates_are_not_counted_per_request() {
        assert!(RateWindow::new(100_000, Duration::from_secs(1)).is_none());
    }
}
