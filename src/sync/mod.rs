//! Schedules, windows and cursors: drives providers on their cron schedules and writes what they
//! return through the store.

pub mod asn;
pub mod health;
pub mod job;
pub mod progress;
pub mod window;

use crate::config::Config;
use crate::model::StreamKey;
use crate::providers::http::ClientBuildError;
use crate::store::Store;
use job::{Scheduled, ScheduledJob};
use progress::StreamProgress;
use std::sync::Arc;
use tokio_cron_scheduler::JobSchedulerError;
use tokio_util::sync::CancellationToken;
use window::{RunSummary, SyncError, WindowPlan, WindowSync};

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

/// Builds a runner for every enabled account in the configuration, each with its own client.
pub fn build_runners(
    config: &Config,
    store: &Arc<dyn Store>,
) -> Result<Vec<Arc<StreamRunner>>, DaemonError> {
    Ok(runners_for(
        config,
        store,
        &crate::app::GraasAccounts::build(config)?,
    ))
}

/// A runner for every enabled account, on the accounts' shared clients (and so rate gates).
pub fn runners_for(
    config: &Config,
    store: &Arc<dyn Store>,
    accounts: &crate::app::GraasAccounts,
) -> Vec<Arc<StreamRunner>> {
    let mut runners = Vec::new();
    for account in config.graas.iter().filter(|a| a.enabled) {
        let Some(client) = accounts.client(&account.name) else {
            continue;
        };
        let progress = Arc::new(StreamProgress::default());
        let plan = WindowPlan {
            lookback: account.lookback,
            settle: account.settle,
            page_size: account.page_size,
            start_from: account.start_from,
            max_window: account.max_window,
        };
        runners.push(Arc::new(Scheduled::new(
            WindowSync::new(client, store.clone(), plan, progress),
            &account.schedule,
            store.clone(),
        )));
    }
    runners
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
