//! How the simulated senders of webhooks retry a delivery.
//!
//! Real senders send a delivery again when it gets no answer or a 5xx. The simulators do the
//! same, so a listener under load, or a kept-alive connection it closed as a delivery went out,
//! does not make what a demo or a test counts as sent differ from what was delivered.

use std::future::Future;
use std::time::Duration;

/// Tries of one delivery, the first included.
const ATTEMPTS: usize = 5;
/// The pause before each try after the first.
const PAUSE: Duration = Duration::from_millis(500);

/// Sends with `send` (which yields the answer's status, `None` when there was none) until an
/// answer below 500 comes or the tries run out; returns the last status. A 4xx is final.
pub(crate) async fn send_with_retries<F, Fut>(mut send: F) -> Option<u16>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<u16>>,
{
    let mut status = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(PAUSE).await;
        }
        status = send().await;
        if status.is_some_and(|s| s < 500) {
            break;
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    async fn tries_until(answers: &[Option<u16>]) -> (Option<u16>, usize) {
        let tries = AtomicUsize::new(0);
        let status = send_with_retries(|| {
            let n = tries.fetch_add(1, Ordering::SeqCst);
            let answer = answers.get(n).copied().flatten();
            async move { answer }
        })
        .await;
        (status, tries.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn no_answer_and_5xx_are_sent_again_until_acknowledged() {
        assert_eq!(
            tries_until(&[None, Some(503), Some(200)]).await,
            (Some(200), 3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_4xx_is_final() {
        assert_eq!(tries_until(&[Some(500), Some(401)]).await, (Some(401), 2));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_five_tries() {
        assert_eq!(tries_until(&[Some(502); 9]).await, (Some(502), 5));
        assert_eq!(tries_until(&[]).await, (None, 5));
    }
}
