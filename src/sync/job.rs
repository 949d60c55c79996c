//! The one seam every scheduled piece of work goes through: the window reader, the ASN follow-up
//! and, later, per-order pollers. [`Scheduled`] does once what every run must do the same way:
//! one run per stream at a time (a tick that finds it busy is dropped), the run's start and end
//! recorded in `sync_cursors` (so `status` sees a stream that stops), one log line per run, and
//! stopping an account whose credentials were refused.

use crate::model::StreamKey;
use crate::store::Store;
use async_trait::async_trait;
use chrono::Utc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;

/// A run still going after this long has its start recorded before its end.
const RECORD_START_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// One kind of scheduled work over one stream.
#[async_trait]
pub trait Job: Send + Sync + 'static {
    type Report: RunReport;
    type Error: std::error::Error + Send + Sync + 'static;

    fn stream(&self) -> &StreamKey;

    /// Does one run's work. Every wait in it must end: complete, fail, or stop at `shutdown`.
    async fn run(&self, shutdown: &CancellationToken) -> Result<Self::Report, Self::Error>;

    /// True when `error` is the upstream refusing the account's credentials: running again
    /// would only hammer it, so the stream stops until ordersync is restarted.
    fn refused_credentials(error: &Self::Error) -> bool;

    /// True for a run that found nothing due (a closed shop between its polls): it is recorded
    /// only every [`IDLE_RECORD_EVERY`], which keeps the stream's health while sparing the
    /// database a write per tick.
    fn idle(_report: &Self::Report) -> bool {
        false
    }
}

/// How often a stream whose runs are idle still records one; well inside the shortest time
/// after which `status` calls a stream overdue (three ticks plus a minute).
pub const IDLE_RECORD_EVERY: std::time::Duration = std::time::Duration::from_secs(45);

/// What a finished run tells: its log line and its line in `run --once`.
pub trait RunReport: Send {
    /// Logs the `run finished` line with the run's figures.
    fn log(&self, stream: &StreamKey);
    /// The run's figures as a JSON object.
    fn to_json(&self) -> serde_json::Value;
}

/// A [`Job`] on its cron schedule.
pub struct Scheduled<J> {
    job: J,
    schedule: String,
    store: Arc<dyn Store>,
    running: tokio::sync::Mutex<()>,
    stopped: AtomicBool,
    /// Ticks received, run or not: shows the schedule is alive even when runs are skipped.
    ticks: AtomicU64,
    /// When a run was last recorded in the store.
    last_recorded: std::sync::Mutex<Option<std::time::Instant>>,
}

impl<J: Job> Scheduled<J> {
    pub fn new(job: J, schedule: &str, store: Arc<dyn Store>) -> Self {
        Scheduled {
            job,
            schedule: schedule.to_owned(),
            store,
            running: tokio::sync::Mutex::new(()),
            stopped: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            last_recorded: std::sync::Mutex::new(None),
        }
    }

    pub fn job(&self) -> &J {
        &self.job
    }

    pub fn stream(&self) -> &StreamKey {
        self.job.stream()
    }

    pub fn schedule(&self) -> &str {
        &self.schedule
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// How many times the stream was asked to run, including the times it did not.
    pub fn ticks(&self) -> u64 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Runs the job unless a run is already going, the stream is stopped or shutdown has begun;
    /// `None` when it did not run.
    pub async fn run_if_idle(
        &self,
        shutdown: &CancellationToken,
    ) -> Option<Result<J::Report, J::Error>> {
        self.ticks.fetch_add(1, Ordering::Relaxed);
        let Ok(_running) = self.running.try_lock() else {
            tracing::debug!(stream = %self.stream(), "previous run still going; tick skipped");
            return None;
        };
        if self.is_stopped() || shutdown.is_cancelled() {
            return None;
        }
        let stream = self.stream();
        let started = Utc::now();
        // A quick run is recorded once, at its end; a long one also when it has run a while,
        // so `status` sees it going.
        let run = self.job.run(shutdown);
        tokio::pin!(run);
        let result = tokio::select! {
            result = &mut run => result,
            _ = tokio::time::sleep(RECORD_START_AFTER) => {
                // The run goes on while its start is written: paused, it could hold the
                // SQLite write lock mid-commit that this write waits for (a stall until the
                // busy timeout, measured at 30 s per run).
                let (result, recorded) =
                    tokio::join!(&mut run, self.store.run_started(stream, started));
                if let Err(error) = recorded {
                    tracing::warn!(%stream, %error, "cannot record the run's start");
                }
                result
            }
        };
        if self.should_record(&result) {
            let error_text = result.as_ref().err().map(ToString::to_string);
            match self
                .store
                .run_finished(stream, started, Utc::now(), error_text.as_deref())
                .await
            {
                Ok(()) => self.recorded_now(),
                Err(error) => tracing::warn!(%stream, %error, "cannot record the run's end"),
            }
        }
        match &result {
            Ok(report) => report.log(stream),
            Err(error) if J::refused_credentials(error) => {
                self.stopped.store(true, Ordering::Relaxed);
                tracing::error!(%stream, %error, "account stopped until ordersync is restarted with working credentials");
            }
            Err(error) => {
                tracing::warn!(%stream, %error, "run failed; the next tick retries from the cursor")
            }
        }
        Some(result)
    }
}

impl<J: Job> Scheduled<J> {
    /// Every run is recorded, except an idle one soon after the last record.
    fn should_record(&self, result: &Result<J::Report, J::Error>) -> bool {
        let idle = result.as_ref().is_ok_and(|report| J::idle(report));
        let last = *self.last_recorded.lock().unwrap_or_else(|e| e.into_inner());
        !idle || last.is_none_or(|at| at.elapsed() >= IDLE_RECORD_EVERY)
    }

    fn recorded_now(&self) {
        *self.last_recorded.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(std::time::Instant::now());
    }
}

/// Any [`Scheduled`] job, as the daemon and `run --once` drive it.
#[async_trait]
pub trait ScheduledJob: Send + Sync {
    fn stream(&self) -> &StreamKey;
    fn schedule(&self) -> &str;
    /// One run unless busy: `None` when it did not run, else its report as JSON or its error.
    async fn tick(&self, shutdown: &CancellationToken)
    -> Option<Result<serde_json::Value, String>>;
}

#[async_trait]
impl<J: Job> ScheduledJob for Scheduled<J> {
    fn stream(&self) -> &StreamKey {
        Scheduled::stream(self)
    }

    fn schedule(&self) -> &str {
        Scheduled::schedule(self)
    }

    async fn tick(
        &self,
        shutdown: &CancellationToken,
    ) -> Option<Result<serde_json::Value, String>> {
        Some(match self.run_if_idle(shutdown).await? {
            Ok(report) => Ok(report.to_json()),
            Err(error) => Err(error.to_string()),
        })
    }
}

/// A report that is just its figures: for jobs whose log line needs no special shape.
impl RunReport for serde_json::Value {
    fn log(&self, stream: &StreamKey) {
        tracing::info!(%stream, figures = %self, "run finished");
    }

    fn to_json(&self) -> serde_json::Value {
        self.clone()
    }
}
