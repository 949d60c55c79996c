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
/// report as JSON, or its error. A job that was busy or stopped reports nothing; one that
/// panicked reports the panic as its error, and the others run on.
pub async fn run_jobs_once(
    jobs: &[Arc<dyn ScheduledJob>],
    shutdown: &CancellationToken,
) -> Vec<(StreamKey, Result<serde_json::Value, String>)> {
    // Each job is a task on the runtime's threads, as under the daemon's scheduler, rather than
    // a future polled on the caller's thread: what a job parses and frees then stays in those
    // threads' malloc arenas instead of spreading over one more. All are spawned before any is
    // awaited, so they run at once; dropping this future aborts them.
    let tasks: Vec<_> = jobs
        .iter()
        .map(|job| {
            let job = Arc::clone(job);
            let shutdown = shutdown.clone();
            window::AbortOnDrop(tokio::spawn(async move {
                job.tick(&shutdown)
                    .await
                    .unwrap_or_else(|| Ok(serde_json::json!({})))
            }))
        })
        .collect();
    let mut results = Vec::with_capacity(jobs.len());
    for (job, task) in jobs.iter().zip(tasks) {
        let result = task
            .await
            .unwrap_or_else(|error| Err(format!("the job ended abnormally: {error}")));
        results.push((job.stream().clone(), result));
    }
    results
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProviderKind;

    /// A job that reports the thread it ran on, or panics, or did not run.
    struct Probe {
        stream: StreamKey,
        behaviour: Behaviour,
    }

    enum Behaviour {
        ReportThread,
        Panic,
        Busy,
    }

    #[async_trait::async_trait]
    impl ScheduledJob for Probe {
        fn stream(&self) -> &StreamKey {
            &self.stream
        }

        fn schedule(&self) -> &str {
            "* * * * * *"
        }

        async fn tick(
            &self,
            _shutdown: &CancellationToken,
        ) -> Option<Result<serde_json::Value, String>> {
            match self.behaviour {
                Behaviour::ReportThread => Some(Ok(serde_json::json!({
                    "thread": format!("{:?}", std::thread::current().id()),
                }))),
                Behaviour::Panic => panic!("probe panicked on purpose"),
                Behaviour::Busy => None,
            }
        }
    }

    fn probe(resource: &str, behaviour: Behaviour) -> Arc<dyn ScheduledJob> {
        Arc::new(Probe {
            stream: StreamKey {
                provider: ProviderKind::Graas,
                account: "acme".to_owned(),
                resource: resource.to_owned(),
            },
            behaviour,
        })
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_run_once_on_the_runtimes_threads_and_report_in_their_order() {
        let caller = format!("{:?}", std::thread::current().id());
        let jobs = vec![
            probe("first", Behaviour::ReportThread),
            probe("panics", Behaviour::Panic),
            probe("busy", Behaviour::Busy),
            probe("last", Behaviour::ReportThread),
        ];

        let results = run_jobs_once(&jobs, &CancellationToken::new()).await;

        let resources: Vec<&str> = results.iter().map(|(s, _)| s.resource.as_str()).collect();
        assert_eq!(resources, ["first", "panics", "busy", "last"]);
        for index in [0, 3] {
            let Ok(report) = &results[index].1 else {
                panic!("job {index} should have reported: {:?}", results[index].1);
            };
            assert_ne!(
                report["thread"].as_str(),
                Some(caller.as_str()),
                "job {index} ran on the caller's thread, not the runtime's"
            );
        }
        let Err(panicked) = &results[1].1 else {
            panic!("a panicking job must report an error: {:?}", results[1].1);
        };
        assert!(panicked.contains("panicked"), "{panicked}");
        assert_eq!(results[2].1, Ok(serde_json::json!({})));
    }
}
