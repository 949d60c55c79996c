//! The daemon assembled from the configuration: one client and rate gate per account, shared
//! by that account's poller, outbox dispatcher and ASN follower (providers count every request
//! of an account together), all run on cron schedules or loops until shutdown.

mod getitdone;
mod graas;
mod grafterr;
mod kassaforte;
pub mod lagerkoll;
mod tasks;

use crate::config::Config;
use crate::lease::keeper::{Keeper, Share};
use crate::lease::{AccountId, LeaseBook, Ownership};
use crate::model::ProviderKind;
use crate::outbox::{Dispatcher, Executor, worker_id};
use crate::providers::http::{ClientBuildError, HttpClient, RateGate};
use crate::server::webhooks::Hook;
use crate::store::{GateState, Store};
use crate::sync::asn::AsnFollower;
use crate::sync::job::ScheduledJob;
use crate::sync::{DaemonError, StreamRunner, Worker};
use chrono::Utc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::time::Duration;
use tasks::Tasks;
use tokio::sync::Notify;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;

/// How often `run --once` looks again for leases that are not free yet.
const LEASE_WAIT_STEP: Duration = Duration::from_millis(500);

/// How often each account's rate gate is written to the database for `status`.
const GATE_REPORT_EVERY: Duration = Duration::from_secs(2);

/// Everything the daemon runs.
#[derive(Default)]
pub struct App {
    pub runners: Vec<Arc<StreamRunner>>,
    pub dispatchers: Vec<Arc<Dispatcher>>,
    pub asn_followers: Vec<Arc<AsnFollower>>,
    /// Every other job on a schedule (re-polls, feeds, confirmation sweeps).
    pub scheduled: Vec<Arc<dyn ScheduledJob>>,
    /// Loops that are not scheduled (inbox workers).
    pub workers: Vec<Arc<dyn Worker>>,
    /// Accounts that receive webhooks, for the webhook listener.
    pub hooks: Vec<Hook>,
    /// Every account's rate gate, for the status report.
    pub gates: Vec<AccountGate>,
    /// Wakes idle dispatchers when the admin API queues an action.
    pub wake: Arc<Notify>,
    pub store: Option<Arc<dyn Store>>,
    /// Beaten by the scheduler itself, for `/healthz` and the systemd watchdog.
    pub liveness: Arc<crate::server::ops::Liveness>,
    /// Which accounts this process works for.
    pub ownership: Ownership,
    /// Shares the accounts with other replicas (Postgres with leases on).
    pub keeper: Option<Arc<Keeper>>,
    /// This process's name in outbox claims and leases.
    pub worker: String,
    /// The fetched orders every windowed stream holds until they are written.
    pub order_buffer: Option<Arc<crate::sync::buffer::OrderBuffer>>,
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
    /// Every scheduled job: the window readers, the follow-ups, then the others.
    pub fn jobs(&self) -> Vec<Arc<dyn ScheduledJob>> {
        let runners = self
            .runners
            .iter()
            .map(|r| r.clone() as Arc<dyn ScheduledJob>);
        let followers = self
            .asn_followers
            .iter()
            .map(|f| f.clone() as Arc<dyn ScheduledJob>);
        runners
            .chain(followers)
            .chain(self.scheduled.iter().cloned())
            .collect()
    }

    /// `run --once`: every job once, all at once (window readers until caught up), then every
    /// due action; one JSON line for each job and outbox, and whether any failed.
    pub async fn run_once(&self, shutdown: &CancellationToken) -> (Vec<serde_json::Value>, bool) {
        let Some(keeper) = &self.keeper else {
            return self.run_owned_once(shutdown).await;
        };
        // Every account whose lease is free, or frees up within one lease TTL (a replica killed
        // a moment ago still holds its leases until they expire); the rest are another live
        // replica's.
        let keeper = keeper.sharing(Share::All);
        let give_up_at = tokio::time::Instant::now() + keeper.settings().ttl;
        keeper.cycle(shutdown).await;
        let accounts = self.accounts().len();
        while keeper.book().count() < accounts
            && tokio::time::Instant::now() < give_up_at
            && !shutdown.is_cancelled()
        {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(LEASE_WAIT_STEP) => keeper.cycle(shutdown).await,
            }
        }
        let keeper = keeper.sharing(Share::Kept);
        let stop_keeping = CancellationToken::new();
        let keeping = keeper.run(shutdown, &stop_keeping);
        let working = async {
            let result = self.run_owned_once(shutdown).await;
            stop_keeping.cancel();
            result
        };
        let ((mut lines, failed), ()) = tokio::join!(working, keeping);
        let held = keeper.book().leases();
        for account in self.accounts() {
            if !held.contains_key(&account) {
                lines.push(serde_json::json!({
                    "account": account.to_string(),
                    "skipped": "another replica holds this account's lease",
                }));
            }
        }
        keeper.leave().await;
        (lines, failed)
    }

    /// Every account that has work in this process.
    pub fn accounts(&self) -> Vec<AccountId> {
        self.gates
            .iter()
            .map(|g| AccountId::new(g.provider, &g.account))
            .collect()
    }

    async fn run_owned_once(&self, shutdown: &CancellationToken) -> (Vec<serde_json::Value>, bool) {
        let owned = |account: &AccountId| self.ownership.holds(account);
        let jobs: Vec<Arc<dyn ScheduledJob>> = self
            .jobs()
            .into_iter()
            .filter(|job| {
                owned(&AccountId::new(
                    job.stream().provider,
                    &job.stream().account,
                ))
            })
            .collect();
        let mut lines = Vec::new();
        let mut failed = false;
        for (stream, result) in crate::sync::run_jobs_once(&jobs, shutdown).await {
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
        for worker in self.workers.iter().filter(|w| owned(&w.account_id())) {
            match worker.drain(shutdown).await {
                Ok(line) => lines.push(line),
                Err(error) => {
                    failed = true;
                    lines.push(serde_json::json!({ "worker": worker.name(), "error": error }));
                }
            }
        }
        for dispatcher in self
            .dispatchers
            .iter()
            .filter(|d| owned(&AccountId::new(d.provider, &d.account)))
        {
            let (line, ok) = dispatcher.drain(shutdown).await;
            failed |= !ok;
            lines.push(line);
        }
        (lines, failed)
    }

    /// Everything the configuration asks for, built but not started. Each provider adds its
    /// accounts' jobs, dispatchers and rate gates; adding a provider adds one line here.
    pub fn build(config: &Config, store: &Arc<dyn Store>) -> Result<App, ClientBuildError> {
        let wake = Arc::new(Notify::new());
        let assembly = Assembly {
            config,
            store,
            http: HttpClient::new(&config.http)?,
            worker: worker_id(),
            wake: wake.clone(),
        };
        let mut app = App {
            wake,
            store: Some(store.clone()),
            ..App::default()
        };
        graas::assemble(&assembly, &mut app);
        getitdone::assemble(&assembly, &mut app);
        kassaforte::assemble(&assembly, &mut app);
        grafterr::assemble(&assembly, &mut app);
        lagerkoll::assemble(&assembly, &mut app);
        app.worker = assembly.worker;
        Ok(app)
    }

    /// For `run`: on a database with leases (Postgres, unless `[leases] enabled = false`), this
    /// process works only for the accounts whose lease it holds. Every account's requests and
    /// the store's writes for it check the lease, and a keeper takes and spreads them.
    pub fn share_accounts(&mut self, config: &Config, store: &Arc<dyn Store>) {
        if !config.leases.enabled || store.lease_table().is_none() {
            return;
        }
        let book = Arc::new(LeaseBook::new(&self.worker));
        store.fence_with(book.clone());
        let mut gates = std::collections::HashMap::new();
        for AccountGate {
            provider,
            account,
            gate,
        } in &self.gates
        {
            let id = AccountId::new(*provider, account);
            let owner = (book.clone(), id.clone());
            gate.only_while(move || owner.0.may_send(&owner.1));
            gates.insert(id, gate.clone());
        }
        self.keeper = Some(Arc::new(Keeper::new(
            store.clone(),
            book.clone(),
            gates,
            config.leases,
            Share::Even,
        )));
        self.ownership = Ownership::Leases(book);
    }
}

/// What every provider's assembly shares.
struct Assembly<'a> {
    config: &'a Config,
    store: &'a Arc<dyn Store>,
    /// One HTTP client (one connection pool) for every provider and account.
    http: HttpClient,
    /// This process's name in the outbox's claims.
    worker: String,
    wake: Arc<Notify>,
}

impl Assembly<'_> {
    /// A dispatcher for one account's queue, when the outbox is on.
    fn dispatcher(
        &self,
        provider: ProviderKind,
        account: &str,
        batch_size: u32,
        executor: Arc<dyn Executor>,
    ) -> Option<Arc<Dispatcher>> {
        self.config.outbox.enabled.then(|| {
            Arc::new(Dispatcher::new(
                provider,
                account,
                batch_size,
                executor,
                self.store.clone(),
                self.config.outbox.clone(),
                self.worker.clone(),
                self.wake.clone(),
            ))
        })
    }
}

/// One account's rate gate, shared by everything that calls that account.
#[derive(Clone)]
pub struct AccountGate {
    pub provider: ProviderKind,
    pub account: String,
    pub gate: Arc<RateGate>,
}

/// The running daemon: every stream on its schedule and every dispatcher in its loop until
/// [`Daemon::shutdown`].
pub struct Daemon {
    scheduler: JobScheduler,
    jobs: Vec<Arc<dyn ScheduledJob>>,
    dispatchers: Vec<Arc<Dispatcher>>,
    tasks: Tasks,
    shutdown: CancellationToken,
    /// The lease keeper, the token that stops it and its task.
    keeper: Option<(Arc<Keeper>, CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl Daemon {
    /// Starts every stream now and then on each tick of its schedule, and every dispatcher.
    pub async fn start(app: impl Into<App>) -> Result<Daemon, DaemonError> {
        let app = app.into();
        let scheduler = JobScheduler::new().await?;
        let tasks = Tasks::default();
        let shutdown = CancellationToken::new();
        let jobs = app.jobs();
        let ownership = app.ownership.clone();
        let keeper = app.keeper.clone().map(|keeper| {
            let stop = CancellationToken::new();
            (keeper, stop)
        });
        if let Some((keeper, _)) = &keeper {
            // Leases first, so the first ticks below already run this replica's accounts.
            keeper.cycle(&shutdown).await;
        }
        let keeping = keeper.as_ref().map(|(keeper, stop)| {
            let (keeper, stop, shutdown) = (keeper.clone(), stop.clone(), shutdown.clone());
            tokio::spawn(async move { keeper.run(&shutdown, &stop).await })
        });
        for job in &jobs {
            let tick = {
                let (job, tasks, shutdown) = (job.clone(), tasks.clone(), shutdown.clone());
                let account = AccountId::new(job.stream().provider, &job.stream().account);
                let ownership = ownership.clone();
                move || {
                    // Another replica's account now: its holder runs it.
                    let Some(guard) = ownership.enter(&account, &shutdown) else {
                        return;
                    };
                    let job = job.clone();
                    let name = format!("run of {}", job.stream());
                    tasks.spawn(name, async move {
                        let stop = guard.stop.clone();
                        let _working = guard;
                        job.tick(&stop).await
                    });
                }
            };
            tick();
            let job = Job::new_async(job.schedule(), move |_, _| {
                tick();
                Box::pin(async {})
            })?;
            scheduler.add(job).await?;
        }
        for worker in &app.workers {
            let (worker, shutdown) = (worker.clone(), shutdown.clone());
            let (name, account) = (worker.name(), worker.account_id());
            let ownership = ownership.clone();
            tasks.spawn(name, async move {
                while_owned(&ownership, &account, &shutdown, |stop| {
                    let worker = worker.clone();
                    async move { worker.run(&stop).await }
                })
                .await
            });
        }
        for dispatcher in &app.dispatchers {
            let (dispatcher, shutdown) = (dispatcher.clone(), shutdown.clone());
            let name = format!(
                "outbox batch of {}/{} (claimed again after outbox.visibility_timeout)",
                dispatcher.provider, dispatcher.account
            );
            let account = AccountId::new(dispatcher.provider, &dispatcher.account);
            let ownership = ownership.clone();
            tasks.spawn(name, async move {
                while_owned(&ownership, &account, &shutdown, |stop| {
                    let dispatcher = dispatcher.clone();
                    async move { dispatcher.run(&stop).await }
                })
                .await
            });
        }
        if let Some(store) = app.store.clone().filter(|_| !app.dispatchers.is_empty()) {
            let (dispatchers, shutdown) = (app.dispatchers.clone(), shutdown.clone());
            let poll_interval = app.dispatchers[0].poll_interval();
            tasks.spawn(
                "outbox due check".to_owned(),
                crate::outbox::watch_due(dispatchers, store, poll_interval, shutdown),
            );
        }
        if let Some(store) = app.store.clone().filter(|_| !app.gates.is_empty()) {
            let (gates, shutdown) = (app.gates, shutdown.clone());
            tasks.spawn(
                "rate gate report".to_owned(),
                report_gates(gates, store, ownership.clone(), shutdown),
            );
        }
        let heartbeat = Heartbeat::from_env();
        let beat = {
            let (liveness, beats) = (app.liveness.clone(), Arc::new(AtomicU64::new(0)));
            move |_, _| {
                let count = beats.fetch_add(1, AtomicOrdering::Relaxed);
                // A test switch that stalls the beat, as a scheduler that stopped firing would.
                if heartbeat.stall_after.is_none_or(|after| count < after) {
                    liveness.beat();
                    if heartbeat.watchdog {
                        let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
                    }
                }
                Box::pin(async {})
                    as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
            }
        };
        app.liveness.beat();
        scheduler
            .add(Job::new_async(heartbeat.schedule().as_str(), beat)?)
            .await?;
        scheduler.start().await?;
        Ok(Daemon {
            scheduler,
            jobs,
            dispatchers: app.dispatchers,
            tasks,
            shutdown,
            keeper: keeper
                .zip(keeping)
                .map(|((keeper, stop), task)| (keeper, stop, task)),
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
        // Leases are renewed while the work finishes, and given back once it has stopped.
        let abandoned = match tokio::time::timeout_at(deadline, self.tasks.tracker.wait()).await {
            Ok(()) => Vec::new(),
            Err(_) => self.tasks.still_running(),
        };
        if let Some((keeper, stop, task)) = self.keeper.take() {
            stop.cancel();
            let _ = tokio::time::timeout_at(deadline, task).await;
            if abandoned.is_empty() {
                keeper.leave().await;
            }
        }
        abandoned
    }
}

/// How often the scheduler beats: well inside systemd's `WatchdogSec` when it asks for pings
/// (a third of it, 1-5 s), else every 5 s.
struct Heartbeat {
    every_secs: u64,
    watchdog: bool,
    stall_after: Option<u64>,
}

impl Heartbeat {
    fn from_env() -> Heartbeat {
        let mut usec = 0;
        let watchdog = sd_notify::watchdog_enabled(false, &mut usec);
        let every_secs = match watchdog {
            true => [5, 4, 3, 2, 1]
                .into_iter()
                .find(|s| s * 3_000_000 <= usec)
                .unwrap_or(1),
            false => 5,
        };
        Heartbeat {
            every_secs,
            watchdog,
            stall_after: std::env::var("ORDERSYNC_TEST_STALL_HEARTBEAT_AFTER")
                .ok()
                .and_then(|v| v.parse().ok()),
        }
    }

    fn schedule(&self) -> String {
        format!("*/{} * * * * *", self.every_secs)
    }
}

/// How long `/healthz` waits for a beat before it calls the process dead: three beats and a
/// little.
pub fn liveness_stale_after() -> Duration {
    Duration::from_secs(Heartbeat::from_env().every_secs * 3 + 2)
}

/// Runs `work` whenever this process may work for `account` (again after a lease was lost and
/// taken back), until shutdown; work that ends by itself (a stopped account) is not restarted.
async fn while_owned<F, Fut>(
    ownership: &Ownership,
    account: &AccountId,
    shutdown: &CancellationToken,
    work: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some(guard) = ownership.wait_for(account, shutdown).await {
        work(guard.stop.clone()).await;
        if !guard.stop.is_cancelled() {
            break;
        }
    }
}

/// Writes each gate's pause and 429 count to the database when it changes, for the accounts
/// this process works for.
async fn report_gates(
    gates: Vec<AccountGate>,
    store: Arc<dyn Store>,
    ownership: Ownership,
    shutdown: CancellationToken,
) {
    let mut last: Vec<Option<(Option<chrono::DateTime<Utc>>, u64)>> = vec![None; gates.len()];
    loop {
        for (
            AccountGate {
                provider,
                account,
                gate,
            },
            last,
        ) in gates.iter().zip(&mut last)
        {
            if !ownership.holds(&AccountId::new(*provider, account)) {
                continue;
            }
            let now = (gate.paused_until().await, gate.rate_limited_count());
            if last.as_ref() == Some(&now) {
                continue;
            }
            let state = GateState {
                provider: provider.as_str().to_owned(),
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
