//! Schedules, windows and cursors: drives providers on their cron schedules and writes what they
//! return through the store.

pub mod asn;
pub mod buffer;
pub mod getitdone;
pub mod grafterr;
pub mod health;
pub mod inbox;
pub mod job;
pub mod kassaforte;
pub mod lagerkoll;
pub mod progress;
mod read_ahead;
pub mod recheck;
pub mod window;

use crate::model::{Order, StreamKey};
use crate::providers::OrderLookup;
use crate::providers::http::ClientBuildError;
use crate::store::{Batch, BatchOutcome, Store};
use job::{Scheduled, ScheduledJob};
use progress::StreamProgress;
use std::sync::Arc;
use tokio_cron_scheduler::JobSchedulerError;
use tokio_util::sync::CancellationToken;
use window::{RunSummary, SyncError, WindowSync};

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error("scheduler: {0}")]
    Scheduler(#[from] JobSchedulerError),
}

/// A window-read stream on its schedule.
pub type StreamRunner = Scheduled<WindowSync>;

impl StreamRunner {
    pub fn progress(&self) -> &Arc<StreamProgress> {
        self.job().progress()
    }
}

/// Runs every stream once until it has caught up (for `ordersync run --once` and benchmarks).
pub async fn run_until_caught_up(
    runners: &[Arc<StreamRunner>],
    shutdown: &CancellationToken,
) -> Vec<(StreamKey, Result<RunSummary, SyncError>)> {
    let runs = runners.iter().map(|runner| async move {
        let result = runner
            .run_if_idle(shutdown)
            .await
            .unwrap_or_else(|| Ok(RunSummary::default()));
        (runner.stream().clone(), result)
    });
    futures_util::future::join_all(runs).await
}

/// Runs every job once, all at once, until each is done (for `ordersync run --once`): its
/// report as JSON, or its error. A job that was busy or stopped reports nothing.
pub async fn run_jobs_once(
    jobs: &[Arc<dyn ScheduledJob>],
    shutdown: &CancellationToken,
) -> Vec<(StreamKey, Result<serde_json::Value, String>)> {
    let runs = jobs.iter().map(|job| async move {
        let result = job
            .tick(shutdown)
            .await
            .unwrap_or_else(|| Ok(serde_json::json!({})));
        (job.stream().clone(), result)
    });
    futures_util::future::join_all(runs).await
}

/// Reads one order upstream and stores it as any read is stored (an older version never
/// replaces a newer one; the cursor does not move). `None` when the upstream does not know it.
pub async fn refresh_order(
    source: &dyn OrderLookup,
    store: &dyn Store,
    channel: &str,
    external_id: &str,
) -> Result<Option<(Order, BatchOutcome)>, SyncError> {
    let Some(order) = source.order(channel, external_id).await? else {
        return Ok(None);
    };
    let outcome = store
        .commit_batch(&Batch {
            stream: source.stream(),
            orders: std::slice::from_ref(&order),
            quarantined: &[],
            cursor: None,
            seen_at: chrono::Utc::now(),
        })
        .await?;
    Ok(Some((order, outcome)))
}

/// Work that runs in a loop rather than on a schedule (an inbox worker).
#[async_trait::async_trait]
pub trait Worker: Send + Sync {
    /// For logs and the shutdown report.
    fn name(&self) -> String;
    /// The account it works for (its lease decides where it runs).
    fn account_id(&self) -> crate::lease::AccountId;
    /// Works until `shutdown`.
    async fn run(&self, shutdown: &CancellationToken);
    /// Does everything there is to do now, without waiting for more (`run --once`).
    async fn drain(&self, shutdown: &CancellationToken) -> Result<serde_json::Value, String>;
}
