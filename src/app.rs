//! The daemon assembled from the configuration: one client and rate gate per account, shared
//! by that account's poller, outbox dispatcher and ASN follower (providers count every request
//! of an account together), all run on cron schedules or loops until shutdown.

use crate::config::Config;
use crate::outbox::graas::GraasExecutor;
use crate::outbox::{Dispatcher, worker_id};
use crate::providers::graas::GraasClient;
use crate::providers::http::{ClientBuildError, HttpClient, RateGate};
use crate::store::{GateState, Store};
use crate::sync::asn::{AsnFollowUp, AsnFollower};
use crate::sync::job::{Scheduled, ScheduledJob};
use crate::sync::{DaemonError, StreamRunner, runners_for};
use chrono::Utc;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How often each account's rate gate is written to the database for `status`.
const GATE_REPORT_EVERY: Duration = Duration::from_secs(2);

/// The API client of every enabled Graas account, by account name.
#[derive(Clone)]
pub struct GraasAccounts {
    clients: BTreeMap<String, Arc<GraasClient>>,
}

impl GraasAccounts {
    pub fn build(config: &Config) -> Result<Self, ClientBuildError> {
        let http = HttpClient::new(&config.http)?;
        let clients = config
            .graas
            .iter()
            .filter(|a| a.enabled)
            .map(|account| {
                let gate = Arc::new(RateGate::new(account.rate_limit));
                let client = GraasClient::new(http.clone(), gate, account);
                (account.name.clone(), Arc::new(client))
            })
            .collect();
        Ok(GraasAccounts { clients })
    }

    pub fn client(&self, account: &str) -> Option<Arc<GraasClient>> {
        self.clients.get(account).cloned()
    }
}

/// Everything the daemon runs.
#[derive(Default)]
pub struct App {
    pub runners: Vec<Arc<StreamRunner>>,
    pub dispatchers: Vec<Arc<Dispatcher>>,
    pub asn_followers: Vec<Arc<AsnFollower>>,
    /// (provider, account, gate) for the status report.
    pub gates: Vec<(&'static str, String, Arc<RateGate>)>,
    /// Wakes idle dispatchers when the admin API queues an action.
    pub wake: Arc<Notify>,
    pub store: Option<Arc<dyn Store>>,
}

impl From<Vec<Arc<StreamRunner>>> for App {
    fn from(runners: Vec<Arc<StreamRunner>>) -> Self {
        App {
            runners,
            ..App::default()
        }
    }
}

impl App {
    /// Every scheduled job: the window readers, then the follow-ups.
    pub fn jobs(&self) -> Vec<Arc<dyn ScheduledJob>> {
        let runners = self
            .runners
            .iter()
            .map(|r| r.clone() as Arc<dyn ScheduledJob>);
        let followers = self
            .asn_followers
            .iter()
            .map(|f| f.clone() as Arc<dyn ScheduledJob>);
        runners.chain(followers).collect()
    }

    /// `run --once`: every job once, all at once (window readers until caught up), then every
    /// due action; one JSON line for each job and outbox, and whether any failed.
    pub async fn run_once(&self, shutdown: &CancellationToken) -> (Vec<serde_json::Value>, bool) {
        let mut lines = Vec::new();
        let mut failed = false;
        for (stream, result) in crate::sync::run_jobs_once(&self.jobs(), shutdown).await {
            let mut line = match result {
                Ok(report) => report,
                Err(error) => {
                    failed = true;
                    serde_json::json!({ "error": error })
                }
            };
            line["stream"] = serde_json::Value::String(stream.to_string());
            lines.push(line);
        }
        for dispatcher in &self.dispatchers {
            let (line, ok) = dispatcher.drain(shutdown).await;
            failed |= !ok;
            lines.push(line);
        }
        (lines, failed)
    }

    pub fn build(config: &Config, store: &Arc<dyn Store>) -> Result<App, ClientBuildError> {
        let accounts = GraasAccounts::build(config)?;
        let wake = Arc::new(Notify::new());
        let worker = worker_id();
        let mut app = App {
            runners: runners_for(config, store, &accounts),
            wake: wake.clone(),
            store: Some(store.clone()),
            ..App::default()
        };
        for account in config.graas.iter().filter(|a| a.enabled) {
            let Some(client) = accounts.client(&account.name) else {
                continue;
            };
            app.gates
                .push(("graas", account.name.clone(), client.gate().clone()));
            app.asn_followers.push(Arc::new(Scheduled::new(
                AsnFollowUp::new(
                    client.clone(),
                    store.clone(),
                    &account.name,
                    &account.asn_final_statuses,
                ),
                &account.asn_schedule,
                store.clone(),
            )));
            if config.outbox.enabled {
                let executor = GraasExecutor::new(client, store.clone(), &account.name);
                app.dispatchers.push(Arc::new(Dispatcher::new(
                    "graas",
                    &account.name,
                    account.action_batch_size,
                    Arc::new(executor),
                    store.clone(),
                    config.outbox.clone(),
                    worker.clone(),
                    wake.clone(),
                )));
            }
        }
        Ok(app)
    }
}

/// The daemon's tasks, each under a name, so a shutdown that runs out of time can say what it
/// abandoned.
#[derive(Clone, Default)]
struct Tasks {
    tracker: TaskTracker,
    running: Arc<Mutex<BTreeMap<u64, String>>>,
    next_id: Arc<AtomicU64>,
}

impl Tasks {
    fn spawn<F>(&self, name: String, task: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, name);
        let done = DoneGuard {
            running: self.running.clone(),
            id,
        };
        self.tracker.spawn(async move {
            let _done = done;
            task.await
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
        // Only names live under this lock; a panic elsewhere leaves them usable.
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The names of the tasks still running, each once, with a count when repeated.
    fn still_running(&self) -> Vec<String> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for name in self.lock().values() {
            *counts.entry(name.clone()).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(name, n)| {
                if n == 1 {
                    name
                } else {
                    format!("{name} (x{n})")
                }
            })
            .collect()
    }
}

/// Takes a task's name off the list when the task ends, however it ends.
struct DoneGuard {
    running: Arc<Mutex<BTreeMap<u64, String>>>,
    id: u64,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.id);
    }
}

/// The running daemon: every stream on its schedule and every dispatcher in its loop until
/// [`Daemon::shutdown`].
pub struct Daemon {
    scheduler: JobScheduler,
    jobs: Vec<Arc<dyn ScheduledJob>>,
    dispatchers: Vec<Arc<Dispatcher>>,
    tasks: Tasks,
    shutdown: CancellationToken,
}

impl Daemon {
    /// Starts every stream now and then on each tick of its schedule, and every dispatcher.
    pub async fn start(app: impl Into<App>) -> Result<Daemon, DaemonError> {
        let app = app.into();
        let scheduler = JobScheduler::new().await?;
        let tasks = Tasks::default();
        let shutdown = CancellationToken::new();
        let jobs = app.jobs();
        for job in &jobs {
            let tick = {
                let (job, tasks, shutdown) = (job.clone(), tasks.clone(), shutdown.clone());
                move || {
                    let (job, shutdown) = (job.clone(), shutdown.clone());
                    let name = format!("run of {}", job.stream());
                    tasks.spawn(name, async move { job.tick(&shutdown).await });
                }
            };
            tick();
            let job = Job::new_async(job.schedule(), move |_, _| {
                tick();
                Box::pin(async {})
            })?;
            scheduler.add(job).await?;
        }
        for dispatcher in &app.dispatchers {
            let (dispatcher, shutdown) = (dispatcher.clone(), shutdown.clone());
            let name = format!(
                "outbox batch of {}/{} (claimed again after outbox.visibility_timeout)",
                dispatcher.provider, dispatcher.account
            );
            tasks.spawn(name, async move { dispatcher.run(&shutdown).await });
        }
        if let Some(store) = app.store.clone().filter(|_| !app.gates.is_empty()) {
            let (gates, shutdown) = (app.gates, shutdown.clone());
            tasks.spawn(
                "rate gate report".to_owned(),
                report_gates(gates, store, shutdown),
            );
        }
        scheduler.start().await?;
        Ok(Daemon {
            scheduler,
            jobs,
            dispatchers: app.dispatchers,
            tasks,
            shutdown,
        })
    }

    pub fn jobs(&self) -> &[Arc<dyn ScheduledJob>] {
        &self.jobs
    }

    pub fn dispatchers(&self) -> &[Arc<Dispatcher>] {
        &self.dispatchers
    }

    /// Stops scheduling and claiming, and lets every run and batch finish until `deadline`.
    /// Returns what was still running then (empty when everything finished); abandoning it is
    /// safe, because cursors and claims are committed with their data.
    pub async fn shutdown(mut self, deadline: tokio::time::Instant) -> Vec<String> {
        self.shutdown.cancel();
        match tokio::time::timeout_at(deadline, self.scheduler.shutdown()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "scheduler did not stop cleanly"),
            Err(_) => tracing::warn!("scheduler did not stop before the shutdown deadline"),
        }
        self.tasks.tracker.close();
        match tokio::time::timeout_at(deadline, self.tasks.tracker.wait()).await {
            Ok(()) => Vec::new(),
            Err(_) => self.tasks.still_running(),
        }
    }
}

/// Writes each gate's pause and 429 count to the database when it changes.
async fn report_gates(
    gates: Vec<(&'static str, String, Arc<RateGate>)>,
    store: Arc<dyn Store>,
    shutdown: CancellationToken,
) {
    let mut last: Vec<Option<(Option<chrono::DateTime<Utc>>, u64)>> = vec![None; gates.len()];
    loop {
        for ((provider, account, gate), last) in gates.iter().zip(&mut last) {
            let now = (gate.paused_until().await, gate.rate_limited_count());
            if last.as_ref() == Some(&now) {
                continue;
            }
            let state = GateState {
                provider: (*provider).to_owned(),
                account: account.clone(),
                paused_until: now.0,
                rate_limited: i64::try_from(now.1).unwrap_or(i64::MAX),
                updated_at: Utc::now(),
            };
            match store.record_gate(&state).await {
                Ok(()) => *last = Some(now),
                Err(error) => tracing::warn!(%error, "cannot record the rate gate's state"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(GATE_REPORT_EVERY) => {}
        }
    }
}
