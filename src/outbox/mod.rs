//! The outbox: actions queued in the `actions` table, claimed in batches per (provider, account),
//! sent through that account's rate gate (the one its poller uses) and recorded with their
//! outcome. Delivery is at-least-once: see `docs/actions.md`.

pub mod getitdone;
pub mod graas;
pub mod kassaforte;
pub mod request;

use crate::config::OutboxConfig;
use crate::model::{Action, ActionOutcome, ProviderKind};
use crate::store::{Claim, Store, StoreError};
use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// How one attempt at one action ended, before retry policy is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Done upstream; the result to keep (e.g. the `asnID`).
    Done(serde_json::Value),
    /// Taken upstream, outcome to follow (a Get It Done command): wait for it until the time.
    Sent(serde_json::Value, chrono::DateTime<Utc>),
    /// The upstream (or ordersync, for a row it cannot read) refused it for good.
    Refused(String),
    /// Worth another attempt later.
    Transient(String),
    /// May have reached an upstream that cannot be asked: a person must decide.
    Unknown(String),
    /// Held back by choice, not failed: again after this long, without using an attempt.
    Deferred(String, Duration),
}

/// Performs claimed actions of one (provider, account): one verdict per action, in order.
#[async_trait]
pub trait Executor: Send + Sync {
    async fn execute(&self, actions: &[Action]) -> Vec<Verdict>;
}

/// A name for this process in `claimed_by`: host, pid and a random part, so two processes on
/// one host (or a restarted pid) never share one.
pub fn worker_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

/// Counters for `status` and the logs.
#[derive(Debug, Default)]
pub struct DispatchStats {
    pub sent: AtomicU64,
    pub succeeded: AtomicU64,
    /// Sent and waiting for their outcome.
    pub awaiting: AtomicU64,
    pub failed: AtomicU64,
    /// Outcome unknown: waiting for a person.
    pub unknown: AtomicU64,
    pub retried: AtomicU64,
    /// Results dropped because the claim had expired and someone else holds the action.
    pub late: AtomicU64,
}

/// How long an idle dispatcher waits before it looks at its queue by itself, in case the shared
/// due check ([`watch_due`]) cannot reach the database.
const IDLE_LOOK_EVERY: Duration = Duration::from_secs(60);

/// Drains the queue of one (provider, account).
pub struct Dispatcher {
    pub provider: ProviderKind,
    pub account: String,
    pub batch_size: i64,
    executor: Arc<dyn Executor>,
    store: Arc<dyn Store>,
    config: OutboxConfig,
    worker: String,
    wake: Arc<Notify>,
    /// Woken by [`watch_due`] when this account has a due action.
    due: Notify,
    pub stats: DispatchStats,
}

impl Dispatcher {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        provider: ProviderKind,
        account: &str,
        batch_size: u32,
        executor: Arc<dyn Executor>,
        store: Arc<dyn Store>,
        config: OutboxConfig,
        worker: String,
        wake: Arc<Notify>,
    ) -> Self {
        Dispatcher {
            provider,
            account: account.to_owned(),
            batch_size: i64::from(batch_size),
            executor,
            store,
            config,
            worker,
            wake,
            due: Notify::new(),
            stats: DispatchStats::default(),
        }
    }

    /// Claims and sends until `shutdown`; the batch in hand is finished and recorded first.
    /// A batch's outcomes are recorded while the next batch is claimed and sent, so the
    /// database round trips do not stretch the gaps between upstream requests.
    pub async fn run(&self, shutdown: &CancellationToken) {
        let mut unrecorded = Vec::new();
        while !shutdown.is_cancelled() {
            let previous = std::mem::take(&mut unrecorded);
            let (recorded, sent) = tokio::join!(self.record(&previous), self.send_batch());
            if let Err(error) = recorded {
                self.log_store_error(&error);
            }
            let worked = match sent {
                Ok(outcomes) => {
                    unrecorded = outcomes;
                    !unrecorded.is_empty()
                }
                Err(error) => {
                    self.log_store_error(&error);
                    false
                }
            };
            if !worked {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = self.wake.notified() => {}
                    _ = self.due.notified() => {}
                    _ = tokio::time::sleep(IDLE_LOOK_EVERY) => {}
                }
            }
        }
        if let Err(error) = self.record(&unrecorded).await {
            self.log_store_error(&error);
        }
    }

    /// How often the queue is looked at for due actions.
    pub fn poll_interval(&self) -> Duration {
        self.config.poll_interval
    }

    fn log_store_error(&self, error: &StoreError) {
        // Unrecorded actions stay in flight and are claimed again after the visibility timeout.
        tracing::error!(provider = %self.provider, account = %self.account, %error, "outbox: cannot claim or record actions");
    }

    /// Sends every due action until none is left (or shutdown): for `run --once`. Returns a JSON
    /// line of what happened and whether it went without a database error.
    pub async fn drain(&self, shutdown: &CancellationToken) -> (serde_json::Value, bool) {
        let mut handled = 0;
        let error = loop {
            if shutdown.is_cancelled() {
                break None;
            }
            match self.dispatch_once().await {
                Ok(0) => break None,
                Ok(count) => handled += count,
                Err(error) => break Some(error.to_string()),
            }
        };
        let line = serde_json::json!({
            "outbox": format!("{}/{}", self.provider, self.account),
            "attempts": handled,
            "succeeded": self.stats.succeeded.load(Ordering::Relaxed),
            "awaiting_outcome": self.stats.awaiting.load(Ordering::Relaxed),
            "failed": self.stats.failed.load(Ordering::Relaxed),
            "unknown": self.stats.unknown.load(Ordering::Relaxed),
            "retried": self.stats.retried.load(Ordering::Relaxed),
            "error": error,
        });
        (line, error.is_none())
    }

    /// Claims one batch of due actions, sends it and records the outcomes; returns how many.
    pub async fn dispatch_once(&self) -> Result<usize, StoreError> {
        let outcomes = self.send_batch().await?;
        self.record(&outcomes).await?;
        Ok(outcomes.len())
    }

    /// Claims one batch of due actions and sends it; returns the outcomes to record.
    async fn send_batch(&self) -> Result<Vec<(i64, ActionOutcome)>, StoreError> {
        let now = Utc::now();
        let visible_until = now + self.config.visibility_timeout;
        let actions = self
            .store
            .claim(&Claim {
                provider: self.provider.as_str(),
                account: &self.account,
                limit: self.batch_size,
                worker: &self.worker,
                now,
                visible_until,
            })
            .await?;
        if actions.is_empty() {
            return Ok(Vec::new());
        }
        self.stats
            .sent
            .fetch_add(actions.len() as u64, Ordering::Relaxed);
        let verdicts = self.execute_holding_claims(&actions).await;
        let mut outcomes = Vec::with_capacity(actions.len());
        for (action, verdict) in actions.iter().zip(verdicts) {
            let outcome = self.outcome(action, verdict);
            let counter = match &outcome {
                ActionOutcome::Succeeded { .. } => &self.stats.succeeded,
                ActionOutcome::Sent { .. } => &self.stats.awaiting,
                ActionOutcome::Failed { .. } => &self.stats.failed,
                ActionOutcome::Unknown { .. } => &self.stats.unknown,
                ActionOutcome::RetryAt { .. } | ActionOutcome::Deferred { .. } => {
                    &self.stats.retried
                }
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let kind = crate::store::outcome_columns(&outcome).0;
            crate::metrics::metrics()
                .action_outcomes
                .get_or_create(&crate::metrics::outcome(
                    self.provider.as_str(),
                    &self.account,
                    if kind == "defer" { "deferred" } else { kind },
                ))
                .inc();
            match &outcome {
                ActionOutcome::Failed { error } => {
                    tracing::warn!(action = action.id, kind = %action.kind, account = %self.account, %error, "action failed")
                }
                ActionOutcome::Unknown { error } => {
                    tracing::error!(action = action.id, kind = %action.kind, account = %self.account, %error, "action outcome unknown; resolve it with `ordersync action resolve`")
                }
                ActionOutcome::Deferred { reason, at } => {
                    tracing::info!(action = action.id, kind = %action.kind, account = %self.account, %reason, until = %at, "action held")
                }
                ActionOutcome::RetryAt { error, at } => {
                    tracing::warn!(action = action.id, kind = %action.kind, account = %self.account, attempt = action.attempts, %error, retry_at = %at, "action will be retried")
                }
                ActionOutcome::Succeeded { .. } => {
                    tracing::debug!(action = action.id, kind = %action.kind, account = %self.account, "action succeeded")
                }
                ActionOutcome::Sent { confirm_by, .. } => {
                    tracing::debug!(action = action.id, kind = %action.kind, account = %self.account, %confirm_by, "action sent; waiting for its outcome")
                }
            }
            outcomes.push((action.id, outcome));
        }
        Ok(outcomes)
    }

    /// Records outcomes for the actions this process still holds.
    async fn record(&self, outcomes: &[(i64, ActionOutcome)]) -> Result<(), StoreError> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let recorded = self.store.finish_batch(&self.worker, outcomes).await?;
        for (id, _) in outcomes.iter().filter(|(id, _)| !recorded.contains(id)) {
            self.stats.late.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                action = id,
                "claim had expired; another attempt owns this action and its result stands"
            );
        }
        Ok(())
    }

    /// Runs the executor while renewing the claims, so a slow upstream (long Retry-After
    /// pauses, many retries) does not let another process take the same actions.
    async fn execute_holding_claims(&self, actions: &[Action]) -> Vec<Verdict> {
        let ids: Vec<i64> = actions.iter().map(|a| a.id).collect();
        let renew_every = (self.config.visibility_timeout / 3).max(Duration::from_millis(200));
        let execute = self.executor.execute(actions);
        tokio::pin!(execute);
        loop {
            tokio::select! {
                verdicts = &mut execute => return verdicts,
                _ = tokio::time::sleep(renew_every) => {
                    let until = Utc::now() + self.config.visibility_timeout;
                    if let Err(error) = self.store.extend_claims(&ids, &self.worker, until).await {
                        tracing::warn!(%error, "cannot renew the claim on in-flight actions");
                    }
                }
            }
        }
    }

    fn outcome(&self, action: &Action, verdict: Verdict) -> ActionOutcome {
        match verdict {
            Verdict::Done(result) => ActionOutcome::Succeeded { result },
            Verdict::Sent(result, confirm_by) => ActionOutcome::Sent { result, confirm_by },
            Verdict::Refused(error) => ActionOutcome::Failed { error },
            Verdict::Unknown(error) => ActionOutcome::Unknown { error },
            Verdict::Deferred(reason, after) => ActionOutcome::Deferred {
                reason,
                at: Utc::now() + after,
            },
            Verdict::Transient(error) => ActionOutcome::RetryAt {
                error,
                at: Utc::now() + retry_delay(&self.config, action.attempts),
            },
        }
    }
}

/// Looks for due actions of every account in one query each `poll_interval` (rows inserted by
/// SQL or another process, retries whose time came) and wakes the dispatchers that have one, so
/// a hundred idle accounts cost one query per interval, not a hundred.
pub async fn watch_due(
    dispatchers: Vec<Arc<Dispatcher>>,
    store: Arc<dyn Store>,
    poll_interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        match store.due_accounts(Utc::now()).await {
            Ok(due) => {
                for dispatcher in &dispatchers {
                    let key = (dispatcher.provider.as_str(), dispatcher.account.as_str());
                    if due.iter().any(|(p, a)| (p.as_str(), a.as_str()) == key) {
                        dispatcher.due.notify_one();
                    }
                }
            }
            Err(error) => tracing::warn!(%error, "outbox: cannot look for due actions"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(poll_interval) => {}
        }
    }
}

/// Exponential backoff with jitter between `min_backoff` and `max_backoff`, by attempt number.
pub fn retry_delay(config: &OutboxConfig, attempts: i32) -> Duration {
    let mut delays = ExponentialBuilder::default()
        .with_min_delay(config.min_backoff)
        .with_max_delay(config.max_backoff)
        .with_jitter()
        .without_max_times()
        .build();
    let steps = usize::try_from(attempts.max(1)).unwrap_or(1);
    delays
        .nth(steps - 1)
        .unwrap_or(config.max_backoff)
        .min(config.max_backoff * 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OutboxConfig {
        OutboxConfig {
            enabled: true,
            poll_interval: Duration::from_secs(1),
            visibility_timeout: Duration::from_secs(60),
            max_attempts: 8,
            min_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(600),
        }
    }

    #[test]
    fn retry_delays_grow_and_stay_bounded() {
        let config = config();
        let first = retry_delay(&config, 1);
        assert!(first >= Duration::from_secs(5) && first < Duration::from_secs(11));
        let fourth = retry_delay(&config, 4);
        assert!(fourth >= Duration::from_secs(40), "{fourth:?}");
        for attempts in [20, 1_000] {
            assert!(retry_delay(&config, attempts) <= Duration::from_secs(1_200));
        }
    }

    #[test]
    fn worker_ids_differ_per_call() {
        assert_ne!(worker_id(), worker_id());
    }
}
