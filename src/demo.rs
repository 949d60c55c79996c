//! `ordersync demo`: the built-in sandbox, a SQLite database and the daemon against them, a
//! queue of actions, and at the end a verdict: after a last catch-up, does the database hold
//! exactly what the sandbox holds? The CLI only prints what this module reports.

use crate::app::{App, Daemon};
use crate::config::{Config, ConfigError};
use crate::model::ProviderKind;
use crate::outbox::request::{ActionRequest, InvalidAction};
use crate::providers::http::ClientBuildError;
use crate::sandbox::getitdone::{DeliveryFaults, GetItDoneStats};
use crate::sandbox::graas::AccountStats;
use crate::sandbox::grafterr::{GrafterrStats, PushPlan};
use crate::sandbox::kassaforte::KassaForteStats;
use crate::sandbox::lagerkoll::LagerkollStats;
use crate::sandbox::{Faults, Mutations, Sandbox, SandboxConfig};
use crate::server::Server;
use crate::server::webhooks;
use crate::store::{self, ActionCount, Store, StoreError, StoredOrder};
use crate::sync::Worker;
use crate::sync::job::ScheduledJob;
use crate::sync::progress::ProgressSnapshot;
use crate::sync::{self, DaemonError, StreamRunner};
use chrono::Utc;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The Lagerkoll feature whose order methods the demo registers webhooks for.
const LAGERKOLL_FEATURE: &str = "orders-feature";

/// The sandbox's pushing providers at work until `stop`: Grafterr sends every order's history
/// (with repeats, reordering and bodies without items), then a few changes every two seconds;
/// Lagerkoll, once ordersync registered its webhooks, fires new and changed orders.
async fn push(
    grafterr: Arc<crate::sandbox::grafterr::GrafterrSim>,
    lagerkoll: Arc<crate::sandbox::lagerkoll::LagerkollSim>,
    spec: SandboxConfig,
    listener: std::net::SocketAddr,
    fired: Arc<std::sync::Mutex<HashMap<String, String>>>,
    stop: CancellationToken,
) {
    let plan = PushPlan {
        updates_per_order: 1,
        duplicate_ratio: 0.05,
        reorder_ratio: 0.05,
        no_items_ratio: 0.05,
        no_event_id_ratio: 0.05,
        forged_ratio: 0.01,
        concurrency: 8,
    };
    let grafterr_url = |name: &str| format!("http://{listener}/webhooks/grafterr/{name}");
    for account in &spec.grafterr {
        let url = grafterr_url(&account.name);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = grafterr.push(&account.name, &url, &plan) => {}
        }
    }
    let statuses = ["paid", "packed", "shipped", "delivered"];
    let mut next = 0usize;
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        for account in &spec.grafterr {
            grafterr
                .advance(&account.name, &grafterr_url(&account.name), 3)
                .await;
        }
        for store in &spec.lagerkoll {
            // Until ordersync registered (and fired) its webhooks there is nobody to fire at.
            if lagerkoll.stats(&store.name).is_none_or(|s| s.executes == 0) {
                continue;
            }
            for _ in 0..2 {
                next += 1;
                let id = format!("LK-{next}");
                let data = serde_json::json!({ "orderId": id, "status": statuses[0], "total": format!("{next}9.50"), "currency": "SEK", "updatedAt": Utc::now().to_rfc3339() });
                lagerkoll
                    .fire(&store.name, LAGERKOLL_FEATURE, "orderCreated", data)
                    .await;
                fired
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, statuses[0].to_owned());
            }
            let changed = {
                let fired = fired.lock().unwrap_or_else(|e| e.into_inner());
                fired
                    .iter()
                    .find(|(_, s)| s.as_str() != statuses[3])
                    .map(|(id, s)| (id.clone(), s.clone()))
            };
            if let Some((id, status)) = changed {
                let position = statuses.iter().position(|s| *s == status).unwrap_or(0);
                let status = statuses[(position + 1).min(statuses.len() - 1)];
                let data = serde_json::json!({ "orderId": id, "status": status, "updatedAt": Utc::now().to_rfc3339() });
                lagerkoll
                    .fire(&store.name, LAGERKOLL_FEATURE, "orderUpdated", data)
                    .await;
                fired
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id, status.to_owned());
            }
        }
    }
}

/// How long the demo gives its daemon to stop.
const SHUTDOWN: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the sandbox: {0}")]
    Sandbox(#[source] std::io::Error),
    #[error("cannot create a temporary directory: {0}")]
    TempDir(#[source] std::io::Error),
    #[error("the demo's configuration is invalid: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Client(#[from] ClientBuildError),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
    #[error("demo action: {0}")]
    Action(#[from] InvalidAction),
    #[error("cannot start the webhook listener: {0}")]
    Webhooks(#[source] std::io::Error),
}

/// What the user asked of the demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub accounts: usize,
    pub orders: usize,
    /// Keep the database here instead of in a temporary directory.
    pub database: Option<PathBuf>,
    pub faults: bool,
}

/// A running demo.
pub struct Demo {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub sandbox: Sandbox,
    spec: SandboxConfig,
    runners: Vec<Arc<StreamRunner>>,
    /// Every webhook inbox worker and Get It Done's re-polls, for the final catch-up.
    inbox_workers: Vec<Arc<dyn Worker>>,
    gid_repolls: Vec<Arc<dyn ScheduledJob>>,
    /// KassaForte's order follow-ups, for the final catch-up.
    kf_follows: Vec<Arc<dyn ScheduledJob>>,
    /// Grafterr's and Lagerkoll's senders in the sandbox, stopped when the demo finishes.
    pushers: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    /// What the demo fired through Lagerkoll: order id → its last status.
    lagerkoll_fired: Arc<std::sync::Mutex<HashMap<String, String>>>,
    /// Taken when the demo finishes.
    daemon: Option<Daemon>,
    webhooks: Option<Server>,
    database: PathBuf,
    /// Keeps a temporary database alive until the demo ends.
    _temp: tempfile::TempDir,
    /// How many actions were queued at the start.
    pub queued: usize,
}

/// One account's line in the verdict.
#[derive(Debug, Clone)]
pub struct AccountVerdict {
    pub account: String,
    pub stored: usize,
    pub quarantined: i64,
    /// Valid orders the sandbox holds.
    pub truth: usize,
    /// Sandbox orders missing from the database or different there.
    pub differing: usize,
    pub sandbox: AccountStats,
    pub progress: ProgressSnapshot,
}

impl AccountVerdict {
    pub fn matches(&self) -> bool {
        self.differing == 0 && self.stored == self.truth
    }
}

/// One Get It Done account's line in the verdict.
#[derive(Debug, Clone)]
pub struct GidVerdict {
    pub account: String,
    pub stored: usize,
    /// Orders at least one acknowledged delivery told of: the ones ordersync can know.
    pub announced: usize,
    /// All the sandbox holds (some were never announced: every delivery about them dropped).
    pub truth: usize,
    /// Announced orders missing from the database or with another status there.
    pub differing: usize,
    pub sandbox: GetItDoneStats,
}

/// One KassaForte shop's line in the verdict.
#[derive(Debug, Clone)]
pub struct ShopVerdict {
    pub shop: String,
    /// Orders the sandbox created, and how many of them the database holds.
    pub created: usize,
    pub stored: usize,
    /// Submissions that ended succeeded, failed (409s, refusals) and unknown.
    pub succeeded: usize,
    pub failed: usize,
    pub unknown: usize,
    /// Sandbox orders neither stored with the sandbox's status nor behind an unknown action,
    /// plus references the sandbox holds more than once.
    pub differing: usize,
    pub sandbox: KassaForteStats,
}

impl ShopVerdict {
    pub fn matches(&self) -> bool {
        self.differing == 0
    }
}

impl GidVerdict {
    pub fn matches(&self) -> bool {
        self.differing == 0 && self.stored == self.announced
    }
}

/// One pushed account's line in the verdict (Grafterr, Lagerkoll): the orders the sandbox
/// sent, and how many the database holds differently or not at all.
#[derive(Debug, Clone)]
pub struct PushedVerdict {
    pub provider: &'static str,
    pub account: String,
    pub sent: usize,
    pub stored: usize,
    pub differing: usize,
    /// Webhooks ordersync registered itself (Lagerkoll).
    pub registered: usize,
    pub grafterr: Option<GrafterrStats>,
    pub lagerkoll: Option<LagerkollStats>,
}

impl PushedVerdict {
    pub fn matches(&self) -> bool {
        self.differing == 0 && self.stored == self.sent
    }
}

/// What the demo found at the end.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub accounts: Vec<AccountVerdict>,
    pub getitdone: Vec<GidVerdict>,
    pub kassaforte: Vec<ShopVerdict>,
    pub pushed: Vec<PushedVerdict>,
    /// Final catch-up runs that failed: (stream, error).
    pub failed_runs: Vec<(String, String)>,
    /// Actions by (provider, account, state) at the end.
    pub actions: Vec<ActionCount>,
    /// Actions still pending or in flight.
    pub open_actions: i64,
}

impl Verdict {
    pub fn all_match(&self) -> bool {
        self.accounts.iter().all(AccountVerdict::matches)
            && self.getitdone.iter().all(GidVerdict::matches)
            && self.kassaforte.iter().all(ShopVerdict::matches)
            && self.pushed.iter().all(PushedVerdict::matches)
    }
}

impl Demo {
    /// Starts the sandbox (faults and live changes on), opens the database, queues the demo's
    /// actions and starts the daemon.
    pub async fn start(options: &DemoOptions) -> Result<Demo, DemoError> {
        let mut spec = SandboxConfig::graas(options.accounts, options.orders)
            .with_getitdone(1, (options.orders / 5).max(10))
            .with_kassaforte(2)
            .with_grafterr(1, (options.orders / 10).max(50))
            .with_lagerkoll(1);
        spec.malformed_every = Some(997);
        spec.mutations = Some(Mutations::default());
        spec.getitdone_options.deliveries = DeliveryFaults {
            drop_ratio: 0.05,
            duplicate_ratio: 0.05,
            reorder_ratio: 0.05,
            bad_signature_ratio: 0.01,
            ..DeliveryFaults::default()
        };
        if options.faults {
            spec.faults = Faults {
                rate_limit_per_sec: Some(50),
                retry_after_secs: 1,
                server_error_ratio: 0.03,
                slow_ratio: 0.01,
                slow_ms: 3_000,
                truncate_ratio: 0.02,
                item_error_ratio: 0.02,
                drift_ratio: 0.05,
            };
        }
        let sandbox = Sandbox::start(([127, 0, 0, 1], 0).into(), spec.clone())
            .await
            .map_err(DemoError::Sandbox)?;
        let temp = tempfile::tempdir().map_err(DemoError::TempDir)?;
        let database = options
            .database
            .clone()
            .unwrap_or_else(|| temp.path().join("ordersync-demo.db"));
        let url = format!("sqlite://{}", database.display());
        // Lagerkoll is told where the listener is before it starts: bound now and kept, so no
        // other socket can take the port in between.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(DemoError::Webhooks)?;
        let listen = listener.local_addr().map_err(DemoError::Webhooks)?;
        let config = Config::from_toml(&config_toml(&sandbox, &spec, &url, listen))?;
        let store = store::open(&config.database).await?;
        store.migrate().await?;
        let app = App::build(&config, &store)?;
        let runners = app.runners.clone();
        let inbox_workers = app.workers.clone();
        let gid_repolls = app
            .scheduled
            .iter()
            .filter(|j| {
                j.stream().provider == ProviderKind::GetItDone
                    && j.stream().resource == crate::providers::getitdone::ORDERS_RESOURCE
            })
            .cloned()
            .collect();
        let kf_follows = app
            .scheduled
            .iter()
            .filter(|j| {
                j.stream().provider == ProviderKind::KassaForte
                    && j.stream().resource == crate::sync::kassaforte::ORDERS_RESOURCE
            })
            .cloned()
            .collect();
        let router = webhooks::router(app.hooks.clone(), store.clone(), &config.webhooks);
        let server = Server::serve(listener, router).map_err(DemoError::Webhooks)?;
        for hook in &app.hooks {
            let account = hook.receiver.account();
            sandbox.getitdone().set_webhook_url(
                account,
                &format!("http://{}/webhooks/getitdone/{account}", server.addr()),
            );
        }
        let queued = queue_actions(&config, &store, &sandbox, &spec).await?;
        let daemon = Daemon::start(app).await?;
        // Get It Done tells of its orders by webhook: every existing one once, then changes.
        sandbox.getitdone().announce_all();
        let lagerkoll_fired = Arc::new(std::sync::Mutex::new(HashMap::new()));
        let stop_pushing = CancellationToken::new();
        let pushing = tokio::spawn(push(
            sandbox.grafterr().clone(),
            sandbox.lagerkoll().clone(),
            spec.clone(),
            server.addr(),
            lagerkoll_fired.clone(),
            stop_pushing.clone(),
        ));
        Ok(Demo {
            config,
            store,
            sandbox,
            spec,
            runners,
            inbox_workers,
            gid_repolls,
            kf_follows,
            pushers: Some((stop_pushing, pushing)),
            lagerkoll_fired,
            daemon: Some(daemon),
            webhooks: Some(server),
            database,
            _temp: temp,
            queued,
        })
    }

    pub fn database(&self) -> &Path {
        &self.database
    }

    pub fn runners(&self) -> &[Arc<StreamRunner>] {
        &self.runners
    }

    /// Actions by (provider, account, state), for the live display.
    pub async fn action_counts(&self) -> Vec<ActionCount> {
        self.store.action_counts().await.unwrap_or_default()
    }

    /// Stops the daemon and the sandbox's changes, catches up once more and compares the
    /// database with the sandbox. Returns what was abandoned at shutdown (if anything) and the
    /// verdict.
    pub async fn finish(mut self) -> Result<(Vec<String>, Verdict), DemoError> {
        // Get It Done's last deliveries go out while the listener still answers.
        let gid = self.sandbox.getitdone().clone();
        gid.set_mutating(false);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while gid.undelivered() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if let Some((stop, pushing)) = self.pushers.take() {
            stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(20), pushing).await;
        }
        if let Some(server) = self.webhooks.take() {
            server.stop().await;
        }
        let abandoned = match self.daemon.take() {
            Some(daemon) => {
                daemon
                    .shutdown(tokio::time::Instant::now() + SHUTDOWN)
                    .await
            }
            None => Vec::new(),
        };
        // The last changes are read once `settle` has passed them.
        let newest = self.sandbox.graas().set_mutating(false);
        let settle = self.config.graas.iter().map(|a| a.settle).max();
        let settle = i64::try_from(settle.unwrap_or_default().as_secs()).unwrap_or(0);
        while Utc::now().timestamp() <= newest + settle + 1 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut failed_runs = Vec::new();
        for (stream, result) in
            sync::run_until_caught_up(&self.runners, &CancellationToken::new()).await
        {
            if let Err(error) = result {
                failed_runs.push((stream.to_string(), error.to_string()));
            }
        }
        // Get It Done: the inbox drained, then one re-poll heals what dropped deliveries left.
        let cancel = CancellationToken::new();
        for worker in &self.inbox_workers {
            if let Err(error) = worker.drain(&cancel).await {
                failed_runs.push((worker.name(), error));
            }
        }
        for job in &self.gid_repolls {
            if let Some(Err(error)) = job.tick(&cancel).await {
                failed_runs.push((job.stream().to_string(), error));
            }
        }
        for job in &self.kf_follows {
            if let Some(Err(error)) = job.tick(&cancel).await {
                failed_runs.push((job.stream().to_string(), error));
            }
        }
        let mut kassaforte = Vec::new();
        for shop in &self.spec.kassaforte {
            kassaforte.push(self.shop_verdict(&shop.name).await?);
        }
        let mut pushed = Vec::new();
        for account in &self.spec.grafterr {
            pushed.push(self.grafterr_verdict(&account.name).await?);
        }
        for shop in &self.spec.lagerkoll {
            pushed.push(self.lagerkoll_verdict(&shop.name).await?);
        }
        let mut getitdone = Vec::new();
        for account in &self.spec.getitdone {
            getitdone.push(self.gid_verdict(&account.name).await?);
        }
        let mut accounts = Vec::new();
        for (runner, account) in self.runners.iter().zip(&self.spec.graas) {
            accounts.push(
                self.account_verdict(runner, &account.account_number)
                    .await?,
            );
        }
        let actions = self.store.action_counts().await?;
        let open_actions = actions
            .iter()
            .filter(|c| matches!(c.state.as_str(), "pending" | "in_flight" | "sent"))
            .map(|c| c.count)
            .sum();
        self.store.close().await;
        self.sandbox.stop().await;
        Ok((
            abandoned,
            Verdict {
                accounts,
                getitdone,
                kassaforte,
                pushed,
                failed_runs,
                actions,
                open_actions,
            },
        ))
    }

    /// Every order the sandbox created is stored with its status, or belongs to a submission
    /// left `unknown` (its answer was lost: a person resolves it); none was created twice.
    async fn shop_verdict(&self, shop: &str) -> Result<ShopVerdict, DemoError> {
        let sim = self.sandbox.kassaforte();
        let provider = ProviderKind::KassaForte.as_str();
        let stored: HashMap<String, Option<String>> = self
            .store
            .orders_of(provider, shop)
            .await?
            .into_iter()
            .map(|o| (o.external_id, o.status))
            .collect();
        let actions = self
            .store
            .actions(&store::ActionFilter {
                state: None,
                account: Some(shop.to_owned()),
                limit: 10_000,
            })
            .await?;
        let count = |state: &str| actions.iter().filter(|a| a.state == state).count();
        let unknown_references: Vec<&str> = actions
            .iter()
            .filter(|a| a.state == "unknown")
            .filter_map(|a| a.request.pointer("/order/reference")?.as_str())
            .collect();
        let created = sim.orders(shop);
        let mut references = HashMap::new();
        for order in &created {
            *references.entry(order.reference.clone()).or_insert(0) += 1;
        }
        let twice = references.values().filter(|n| **n > 1).count();
        let differing = created
            .iter()
            .filter(|o| match stored.get(&o.order_id) {
                Some(status) => status.as_deref() != Some(o.status.as_str()),
                None => !o
                    .reference
                    .as_deref()
                    .is_some_and(|r| unknown_references.contains(&r)),
            })
            .count();
        Ok(ShopVerdict {
            shop: shop.to_owned(),
            created: created.len(),
            stored: stored.len(),
            succeeded: count("succeeded"),
            failed: count("failed"),
            unknown: count("unknown"),
            differing: differing + twice,
            sandbox: sim.stats(shop).unwrap_or_default(),
        })
    }

    async fn grafterr_verdict(&self, name: &str) -> Result<PushedVerdict, DemoError> {
        let sim = self.sandbox.grafterr();
        let stored: HashMap<(String, String), (Option<String>, i64)> = self
            .store
            .orders_of(ProviderKind::Grafterr.as_str(), name)
            .await?
            .into_iter()
            .map(|o| {
                (
                    (o.channel, o.external_id),
                    (o.status, o.upstream_updated_at.timestamp()),
                )
            })
            .collect();
        let truth = sim.truth(name);
        let differing = truth
            .iter()
            .filter(|t| {
                stored
                    .get(&(t.source.clone(), t.order_id.clone()))
                    .is_none_or(|(status, updated)| {
                        status.as_deref() != Some(t.status.as_str())
                            || *updated != t.updated_at.timestamp()
                    })
            })
            .count();
        Ok(PushedVerdict {
            provider: "grafterr",
            account: name.to_owned(),
            sent: truth.len(),
            stored: stored.len(),
            differing,
            registered: 0,
            grafterr: sim.stats(name),
            lagerkoll: None,
        })
    }

    async fn lagerkoll_verdict(&self, name: &str) -> Result<PushedVerdict, DemoError> {
        let stored: HashMap<String, Option<String>> = self
            .store
            .orders_of(ProviderKind::Lagerkoll.as_str(), name)
            .await?
            .into_iter()
            .map(|o| (o.external_id, o.status))
            .collect();
        let fired = self
            .lagerkoll_fired
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let differing = fired
            .iter()
            .filter(|(id, status)| {
                stored
                    .get(*id)
                    .is_none_or(|s| s.as_deref() != Some(status.as_str()))
            })
            .count();
        let registered = self
            .store
            .registrations(ProviderKind::Lagerkoll.as_str(), name)
            .await?
            .len();
        Ok(PushedVerdict {
            provider: "lagerkoll",
            account: name.to_owned(),
            sent: fired.len(),
            stored: stored.len(),
            differing,
            registered,
            grafterr: None,
            lagerkoll: self.sandbox.lagerkoll().stats(name),
        })
    }

    async fn gid_verdict(&self, name: &str) -> Result<GidVerdict, DemoError> {
        let sim = self.sandbox.getitdone();
        let stored: HashMap<String, Option<String>> = self
            .store
            .orders_of(ProviderKind::GetItDone.as_str(), name)
            .await?
            .into_iter()
            .map(|o| (o.external_id, o.status))
            .collect();
        let truth = sim.truth(name);
        let announced = sim.announced(name);
        let differing = truth
            .iter()
            .filter(|t| announced.contains(&t.order_id))
            .filter(|t| {
                stored
                    .get(&t.order_id)
                    .is_none_or(|s| s.as_deref() != Some(t.status.as_str()))
            })
            .count();
        Ok(GidVerdict {
            account: name.to_owned(),
            stored: stored.len(),
            announced: announced.len(),
            truth: truth.len(),
            differing,
            sandbox: sim.stats(name).unwrap_or_default(),
        })
    }

    async fn account_verdict(
        &self,
        runner: &StreamRunner,
        account_number: &str,
    ) -> Result<AccountVerdict, DemoError> {
        let name = &runner.stream().account;
        let provider = ProviderKind::Graas.as_str();
        let stored = self.store.orders_of(provider, name).await?;
        let quarantined = self.store.quarantine_count(provider, name).await?;
        let truth: Vec<_> = self
            .sandbox
            .graas()
            .truth(account_number)
            .into_iter()
            .filter(|o| !o.malformed)
            .collect();
        let stored_by_key: HashMap<(&str, &str), &StoredOrder> = stored
            .iter()
            .map(|o| ((o.channel.as_str(), o.external_id.as_str()), o))
            .collect();
        let differing = truth
            .iter()
            .filter(|t| {
                stored_by_key
                    .get(&(t.channel.as_str(), t.order_id.as_str()))
                    .is_none_or(|s| {
                        s.status.as_deref() != Some(t.status.as_str())
                            || s.upstream_updated_at.timestamp() != t.updated
                    })
            })
            .count();
        Ok(AccountVerdict {
            account: name.clone(),
            stored: stored.len(),
            quarantined,
            truth: truth.len(),
            differing,
            sandbox: self
                .sandbox
                .graas()
                .stats(account_number)
                .unwrap_or_default(),
            progress: runner.progress().snapshot(),
        })
    }
}

/// The demo's configuration: quick schedules and retries, quiet logs.
fn config_toml(
    sandbox: &Sandbox,
    spec: &SandboxConfig,
    database_url: &str,
    listen: std::net::SocketAddr,
) -> String {
    let start = Utc::now() - chrono::Duration::seconds(spec.history_secs + 3600);
    let mut text = format!(
        "[database]\nurl = \"{database_url}\"\n\n[log]\nlevel = \"error\"\n\n[http]\nrequest_timeout = \"2s\"\nmin_backoff = \"100ms\"\nmax_backoff = \"2s\"\n\n[outbox]\npoll_interval = \"200ms\"\nmin_backoff = \"500ms\"\nmax_backoff = \"5s\"\n"
    );
    text.push_str(&format!("\n[webhooks]\nlisten = \"{listen}\"\n"));
    for account in &spec.grafterr {
        text.push_str(&format!(
            "\n[[grafterr]]\nname = \"{name}\"\nbase_url = \"{url}\"\napi_key = \"{key}\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\npath_token = \"{token}\"\nrate_limit = \"20/s\"\nsilence_alert = \"1m\"\n",
            name = account.name,
            url = sandbox.grafterr_base_url(),
            key = account.api_key,
            id = account.client_id,
            secret = account.client_secret,
            token = account.path_token,
        ));
    }
    for store in &spec.lagerkoll {
        text.push_str(&format!(
            "\n[[lagerkoll]]\nname = \"{name}\"\nstore = {id}\napi_key = \"{key}\"\nbase_url = \"{url}\"\npublic_url = \"http://{listen}\"\npath_token = \"{token}\"\nwebhooks = [ {{ feature_id = \"{LAGERKOLL_FEATURE}\", feature_method = \"orderCreated\" }}, {{ feature_id = \"{LAGERKOLL_FEATURE}\", feature_method = \"orderUpdated\" }} ]\n",
            name = store.name,
            id = store.store_id,
            key = store.api_key,
            url = sandbox.lagerkoll_base_url(),
            token = store.path_token,
        ));
    }
    for account in &spec.getitdone {
        text.push_str(&format!(
            "\n[[getitdone]]\nname = \"{name}\"\nbase_url = \"{url}\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\nwebhook_secrets = [\"{hook}\"]\ndebounce = \"500ms\"\nrepoll_schedule = \"*/20 * * * * *\"\nconfirm_schedule = \"*/5 * * * * *\"\nrate_limit = \"40/s\"\n",
            name = account.name,
            url = sandbox.base_url(),
            id = account.client_id,
            secret = account.client_secret,
            hook = account.webhook_secret,
        ));
    }
    for shop in &spec.kassaforte {
        text.push_str(&format!(
            "\n[[kassaforte]]\nname = \"{name}\"\nbase_url = \"{url}\"\nusername = \"{user}\"\npassword = \"{password}\"\ninfos_every_open = \"5s\"\ninfos_every_closed = \"30s\"\nfollow_every = \"2s\"\nfollow_slow_every = \"10s\"\nrate_limit = \"20/s\"\n",
            name = shop.name,
            url = sandbox.base_url(),
            user = shop.username,
            password = shop.password,
        ));
    }
    for (i, account) in spec.graas.iter().enumerate() {
        text.push_str(&format!(
            "\n[[graas]]\nname = \"shop-{n}\"\nbase_url = \"{url}\"\naccount_number = \"{number}\"\napp_key = \"{key}\"\nschedule = \"*/2 * * * * *\"\nlookback = \"1m\"\nsettle = \"2s\"\npage_size = 200\nstart_from = \"{start}\"\nmax_window = \"1d\"\nrate_limit = \"40/s\"\n",
            n = i + 1,
            url = sandbox.base_url(),
            number = account.account_number,
            key = account.app_key,
            start = start.to_rfc3339(),
        ));
    }
    text
}

/// Queues the demo's actions: accepts and cancels of sandbox orders, two accepts of orders the
/// sandbox does not have, one ASN per account. Returns how many.
async fn queue_actions(
    config: &Config,
    store: &Arc<dyn Store>,
    sandbox: &Sandbox,
    spec: &SandboxConfig,
) -> Result<usize, DemoError> {
    let mut requests = Vec::new();
    for (i, account) in spec.graas.iter().enumerate() {
        let name = format!("shop-{}", i + 1);
        let truth = sandbox.graas().truth(&account.account_number);
        for (n, order) in truth
            .iter()
            .filter(|o| o.status == "INITIATED")
            .take(60)
            .enumerate()
        {
            let cancel = n % 6 == 5;
            requests.push(ActionRequest {
                account: name.clone(),
                kind: if cancel { "cancel" } else { "accept" }.into(),
                channel: Some(order.channel.clone()),
                order_id: Some(order.order_id.clone()),
                reason: cancel.then(|| "OUT_OF_STOCK".to_owned()),
                ..ActionRequest::default()
            });
        }
        for missing in ["1", "2"] {
            requests.push(ActionRequest {
                account: name.clone(),
                kind: "accept".into(),
                channel: Some("lazada-1".into()),
                order_id: Some(format!("99999999{missing}")),
                ..ActionRequest::default()
            });
        }
        requests.push(ActionRequest {
            account: name.clone(),
            kind: "asn".into(),
            asn: Some(serde_json::json!({
                "warehouseID": "odoo-1", "supplierID": 7, "date": Utc::now().timestamp(),
                "orderItems": [{"sellerSKU": "SKU-0001", "description": "demo", "quantity": 24,
                                "uom": 1, "itemAmount": {"amount": 1200, "currencyCode": "SGD"}}]
            })),
            ..ActionRequest::default()
        });
    }
    // Get It Done: link our ids to some orders, refresh one, cancel one with a reason Get It
    // Done refuses (it ends `failed` with the upstream's code).
    for account in &spec.getitdone {
        for (n, order) in sandbox
            .getitdone()
            .truth(&account.name)
            .iter()
            .take(12)
            .enumerate()
        {
            let (kind, link_id, reason) = match n {
                10 => ("refresh", None, None),
                11 => (
                    "cancel",
                    None,
                    Some(crate::sandbox::getitdone::REFUSED_REASON.to_owned()),
                ),
                _ => ("link", Some(format!("OS-{n:04}")), None),
            };
            requests.push(ActionRequest {
                account: account.name.clone(),
                kind: kind.into(),
                order_id: Some(order.order_id.clone()),
                link_id,
                reason,
                ..ActionRequest::default()
            });
        }
    }
    // KassaForte: orders for each shop, most valid; one priced a cent low (409 203) and one with
    // an article the shop does not sell (409 202).
    for shop in &spec.kassaforte {
        let sim = sandbox.kassaforte();
        for n in 0..10 {
            let kind = if n % 2 == 0 { "pickup" } else { "delivery" };
            let Some(mut order) =
                sim.valid_order(&shop.name, kind, &format!("DEMO-{}-{n}", shop.name))
            else {
                continue;
            };
            match n {
                8 => {
                    order["items"][0]["price"] =
                        serde_json::json!(order["items"][0]["price"].as_i64().unwrap_or(0) - 1)
                }
                9 => order["items"][0]["itemNo"] = serde_json::json!("9999"),
                _ => {}
            }
            requests.push(ActionRequest {
                account: shop.name.clone(),
                kind: "submit".into(),
                order: Some(order),
                ..ActionRequest::default()
            });
        }
    }
    let count = requests.len();
    for request in requests {
        store.enqueue(&request.into_action(config)?).await?;
    }
    Ok(count)
}
