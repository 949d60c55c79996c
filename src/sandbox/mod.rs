//! Simulated provider APIs on loopback, for `ordersync demo`, `ordersync sandbox` and the tests.
//! Data is deterministic for a seed; faults and mutations are switched on per run.

mod delivery;
pub mod faults;
pub mod getitdone;
pub mod graas;
pub mod grafterr;
pub mod kassaforte;
pub mod lagerkoll;

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Failures the sandbox injects, each independently.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Answer 429 when an account sends more than this many requests in one second.
    pub rate_limit_per_sec: Option<u32>,
    /// The `Retry-After` seconds sent with a 429.
    pub retry_after_secs: u64,
    /// Share of requests answered with a 5xx (0.0 to 1.0).
    pub server_error_ratio: f64,
    /// Share of requests answered only after `slow_ms`.
    pub slow_ratio: f64,
    pub slow_ms: u64,
    /// Share of 200 answers whose body is cut in half.
    pub truncate_ratio: f64,
    /// Share of `PUT /v1/orders` items answered `httpCode` 500 (not applied).
    pub item_error_ratio: f64,
    /// Share of Graas list requests for page 2 or later that first update the window's earliest
    /// order (to now), shifting every later page by one: a busy upstream paged mid-change.
    pub drift_ratio: f64,
}

/// Status changes the sandbox makes while it runs, like a live marketplace.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Mutations {
    pub every_ms: u64,
    /// Orders moved one status forward per tick, per account.
    pub per_tick: usize,
    /// New orders per tick, per account.
    pub new_per_tick: usize,
    /// Share of changes whose `timeLastUpdated` is backdated (seen late, as after a sync lag).
    pub backdate_ratio: f64,
    pub max_backdate_secs: i64,
}

impl Default for Mutations {
    fn default() -> Self {
        Mutations {
            every_ms: 500,
            per_tick: 5,
            new_per_tick: 1,
            backdate_ratio: 0.2,
            max_backdate_secs: 20,
        }
    }
}

/// Mass status changes on the first Graas account: every `every_ms`, `orders` of its orders
/// move one status forward, all stamped with the same second.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BulkUpdates {
    pub every_ms: u64,
    pub orders: usize,
}

/// One simulated Graas account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GraasAccountSpec {
    pub account_number: String,
    pub app_key: String,
    pub orders: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxConfig {
    pub seed: u64,
    pub graas: Vec<GraasAccountSpec>,
    /// Initial orders were last updated within this many seconds before start.
    pub history_secs: i64,
    /// Every n-th initial order is served malformed (its `timeLastUpdated` is not a number).
    pub malformed_every: Option<usize>,
    /// Initial Graas order ids grow with the orders' creation, as a marketplace numbers them;
    /// otherwise they are in random order of time (the unique index's worst case).
    #[serde(default)]
    pub ids_follow_creation: bool,
    pub faults: Faults,
    pub mutations: Option<Mutations>,
    /// Mass status changes, stopped with the mutations by `set_mutating(false)`.
    #[serde(default)]
    pub graas_bulk: Option<BulkUpdates>,
    /// Simulated Get It Done accounts.
    #[serde(default)]
    pub getitdone: Vec<getitdone::GetItDoneAccountSpec>,
    #[serde(default)]
    pub getitdone_options: getitdone::GetItDoneOptions,
    /// Simulated KassaForte shops.
    #[serde(default)]
    pub kassaforte: Vec<kassaforte::KassaForteShopSpec>,
    #[serde(default)]
    pub kassaforte_options: kassaforte::KassaForteOptions,
    /// Simulated Grafterr accounts.
    #[serde(default)]
    pub grafterr: Vec<grafterr::GrafterrAccountSpec>,
    #[serde(default)]
    pub grafterr_options: grafterr::GrafterrOptions,
    /// Simulated Lagerkoll stores.
    #[serde(default)]
    pub lagerkoll: Vec<lagerkoll::LagerkollStoreSpec>,
    #[serde(default)]
    pub lagerkoll_options: lagerkoll::LagerkollOptions,
}

impl SandboxConfig {
    /// `accounts` Graas accounts of `orders` each, named `acct-1…` with keys `key-1…`.
    pub fn graas(accounts: usize, orders: usize) -> Self {
        SandboxConfig {
            seed: 42,
            graas: (1..=accounts)
                .map(|i| GraasAccountSpec {
                    account_number: format!("5a4e44b3a67a6d00048{i:05}"),
                    app_key: format!("sandbox-key-{i}"),
                    orders,
                })
                .collect(),
            history_secs: 3 * 24 * 3600,
            malformed_every: None,
            ids_follow_creation: false,
            faults: Faults::default(),
            mutations: None,
            graas_bulk: None,
            getitdone: Vec::new(),
            getitdone_options: getitdone::GetItDoneOptions::default(),
            kassaforte: Vec::new(),
            kassaforte_options: kassaforte::KassaForteOptions::default(),
            grafterr: Vec::new(),
            grafterr_options: grafterr::GrafterrOptions::default(),
            lagerkoll: Vec::new(),
            lagerkoll_options: lagerkoll::LagerkollOptions::default(),
        }
    }

    /// A busy back office on the Graas accounts: each takes at most 8 requests a second (9 in a
    /// sliding second, the edge an evenly spaced 8/s can reach) and answers more with 429 and
    /// `Retry-After: 1`; 10 status changes a second per account, a fifth backdated up to 20 s;
    /// every 12 s, 700 orders of the first account stamped with one second.
    pub fn with_mass_status_changes(mut self) -> Self {
        self.faults.rate_limit_per_sec = Some(9);
        self.faults.retry_after_secs = 1;
        self.mutations = Some(Mutations {
            every_ms: 100,
            per_tick: 1,
            new_per_tick: 0,
            backdate_ratio: 0.2,
            max_backdate_secs: 20,
        });
        self.graas_bulk = Some(BulkUpdates {
            every_ms: 12_000,
            orders: 700,
        });
        self
    }

    /// Adds `accounts` Get It Done accounts of `orders` each, named `gid-1…`.
    pub fn with_getitdone(mut self, accounts: usize, orders: usize) -> Self {
        self.getitdone = (1..=accounts)
            .map(|i| getitdone::GetItDoneAccountSpec {
                name: format!("gid-{i}"),
                client_id: format!("gid-client-{i}"),
                client_secret: format!("gid-secret-{i}"),
                webhook_secret: format!("gid-hook-secret-{i}"),
                orders,
                webhook_url: None,
            })
            .collect();
        self
    }
}

impl SandboxConfig {
    /// Adds `shops` KassaForte shops, named `kf-1…` (see [`kassaforte::shop_specs`]).
    pub fn with_kassaforte(mut self, shops: usize) -> Self {
        self.kassaforte = kassaforte::shop_specs(shops);
        self
    }

    /// Adds `stores` Lagerkoll stores, named `sthlm-1…`.
    pub fn with_lagerkoll(mut self, stores: usize) -> Self {
        self.lagerkoll = lagerkoll::store_specs(stores);
        self
    }

    /// Adds `accounts` Grafterr accounts of `orders` each, named `cafe-1…`.
    pub fn with_grafterr(mut self, accounts: usize, orders: usize) -> Self {
        self.grafterr = grafterr::account_specs(accounts, orders);
        self
    }
}

/// A running sandbox. Dropping it does not stop it; call [`Sandbox::stop`].
pub struct Sandbox {
    addr: SocketAddr,
    graas: Arc<graas::GraasSim>,
    getitdone: Arc<getitdone::GetItDoneSim>,
    kassaforte: Arc<kassaforte::KassaForteSim>,
    grafterr: Arc<grafterr::GrafterrSim>,
    lagerkoll: Arc<lagerkoll::LagerkollSim>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Sandbox {
    pub async fn start(listen: SocketAddr, config: SandboxConfig) -> std::io::Result<Sandbox> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let graas = Arc::new(graas::GraasSim::new(&config));
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let getitdone = Arc::new(getitdone::GetItDoneSim::new(
            &config.getitdone,
            config.getitdone_options.clone(),
            config.faults.clone(),
            config.seed,
        ));
        let kassaforte = Arc::new(kassaforte::KassaForteSim::new(
            &config.kassaforte,
            config.kassaforte_options.clone(),
            config.faults.clone(),
            config.seed,
        ));
        let grafterr = Arc::new(grafterr::GrafterrSim::new(
            &config.grafterr,
            config.grafterr_options.clone(),
            config.faults.clone(),
            config.seed,
        ));
        let app = graas::router(graas.clone())
            .merge(getitdone::router(getitdone.clone()))
            .merge(kassaforte::router(kassaforte.clone()))
            .merge(grafterr::router(grafterr.clone()));
        let lagerkoll = Arc::new(lagerkoll::LagerkollSim::new(
            &config.lagerkoll,
            config.lagerkoll_options.clone(),
        ));
        let app = app.merge(lagerkoll::router(lagerkoll.clone()));
        tasks.spawn(getitdone.clone().deliver(shutdown.clone()));
        let stop = shutdown.clone();
        tasks.spawn(async move {
            let served = axum::serve(crate::server::without_delay(listener), app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "sandbox server stopped");
            }
        });
        if let Some(bulk) = config.graas_bulk.clone() {
            let (sim, stop) = (graas.clone(), shutdown.clone());
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(bulk.every_ms.max(10)));
                // The first tick of an interval is immediate; the first mass change comes later.
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => { sim.bulk_update(bulk.orders); }
                    }
                }
            });
        }
        if let Some(mutations) = config.mutations.clone() {
            let (sim, stop, graas_mutations) = (graas.clone(), shutdown.clone(), mutations.clone());
            tasks.spawn(async move {
                let mut tick =
                    tokio::time::interval(Duration::from_millis(graas_mutations.every_ms.max(10)));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => sim.mutate(&graas_mutations),
                    }
                }
            });
            let (sim, stop, mutations) = (getitdone.clone(), shutdown.clone(), mutations.clone());
            tasks.spawn(async move {
                let mut tick =
                    tokio::time::interval(Duration::from_millis(mutations.every_ms.max(10)));
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tick.tick() => sim.mutate(&mutations),
                    }
                }
            });
        }
        tasks.close();
        Ok(Sandbox {
            addr,
            graas,
            getitdone,
            kassaforte,
            grafterr,
            lagerkoll,
            shutdown,
            tasks,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn graas(&self) -> &Arc<graas::GraasSim> {
        &self.graas
    }

    pub fn getitdone(&self) -> &Arc<getitdone::GetItDoneSim> {
        &self.getitdone
    }

    pub fn kassaforte(&self) -> &Arc<kassaforte::KassaForteSim> {
        &self.kassaforte
    }

    pub fn grafterr(&self) -> &Arc<grafterr::GrafterrSim> {
        &self.grafterr
    }

    pub fn lagerkoll(&self) -> &Arc<lagerkoll::LagerkollSim> {
        &self.lagerkoll
    }

    /// The `base_url` of a Lagerkoll account for the simulated Lagerkoll.
    pub fn lagerkoll_base_url(&self) -> String {
        format!("{}/{}/", self.base_url(), lagerkoll::BASE_PATH)
    }

    /// The base URL an account's `base_url` names for the simulated Grafterr (with its stage).
    pub fn grafterr_base_url(&self) -> String {
        format!("{}/{}/", self.base_url(), grafterr::STAGE)
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tasks.wait().await;
    }
}
