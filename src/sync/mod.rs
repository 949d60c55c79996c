//! Schedules, windows and cursors: drives providers on their cron schedules and writes what they
//! return through the store.

pub mod health;
pub mod progress;
pub mod window;

use crate::config::Config;
use crate::model::StreamKey;
use crate::providers::ProviderError;
use crate::providers::http::ClientBuildError;
use crate::store::Store;
use chrono::Utc;
use progress::StreamProgress;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// One polled stream with its schedule; at most one run of it at a time.
pub struct StreamRunner {
    sync: WindowSync,
    schedule: String,
    progress: Arc<StreamProgress>,
    running: tokio::sync::Mutex<()>,
    /// Set when the upstream refused our credentials: polling again would only hammer it.
    stopped: AtomicBool,
    /// Ticks received, run or not: shows the schedule is alive even when runs are skipped.
    ticks: AtomicU64,
}

impl StreamRunner {
    pub fn stream(&self) -> &StreamKey {
        self.sync.stream()
    }

    pub fn schedule(&self) -> &str {
        &self.schedule
    }

    pub fn progress(&self) -> &Arc<StreamProgress> {
        &self.progress
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// How many times the stream was asked to run, including the times it did not.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Runs the stream unless a run is already going (a tick that finds it busy is dropped, so
    /// missed ticks never pile up). Returns `None` when it did not run.
    pub async fn run_if_idle(
        &self,
        shutdown: &CancellationToken,
    ) -> Option<Result<RunSummary, SyncError>> {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        let Ok(_running) = self.running.try_lock() else {
            tracing::debug!(stream = %self.stream(), "previous run still going; tick skipped");
            return None;
        };
        if self.is_stopped() || shutdown.is_cancelled() {
            return None;
        }
        let store = self.sync.store();
        if let Err(error) = store.run_started(self.stream(), Utc::now()).await {
            tracing::error!(stream = %self.stream(), %error, "cannot record the run's start");
        }
        let result = self.sync.run(shutdown).await;
        let error_text = result.as_ref().err().map(ToString::to_string);
        if let Err(error) = store
            .run_finished(self.stream(), Utc::now(), error_text.as_deref())
            .await
        {
            tracing::error!(stream = %self.stream(), %error, "cannot record the run's end");
        }
        self.progress.run_ended(error_text);
        match &result {
            Ok(run) => tracing::info!(
                stream = %self.stream(),
                written = run.written,
                unchanged = run.unchanged,
                quarantined = run.quarantined,
                requests = run.requests,
                cursor = run.cursor,
                interrupted = run.interrupted,
                "run finished"
            ),
            Err(SyncError::Provider(error @ ProviderError::Unauthorized { .. })) => {
                self.stopped.store(true, Ordering::Relaxed);
                tracing::error!(stream = %self.stream(), %error, "account stopped until ordersync is restarted with working credentials");
            }
            Err(error) => {
                tracing::warn!(stream = %self.stream(), %error, "run failed; the next tick retries from the cursor")
            }
        }
        Some(result)
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
        runners.push(Arc::new(StreamRunner {
            sync: WindowSync::new(client, store.clone(), plan, progress.clone()),
            schedule: account.schedule.clone(),
            progress,
            running: tokio::sync::Mutex::new(()),
            stopped: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
        }));
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
