//! KassaForte shops: their state polled on a schedule that follows the shop's open hours, their
//! documents fetched when their refresh values move, and the orders ordersync submitted followed
//! until the till has them.

use crate::model::{Money, Order, OrderKey, ProviderKind, Quarantined, StreamKey};
use crate::providers::ProviderError;
use crate::providers::kassaforte::KassaForteClient;
use crate::providers::kassaforte::config::KassaForteShop;
use crate::providers::kassaforte::hours::ShopCalendar;
use crate::providers::kassaforte::wire::{Infos, OpenHours};
use crate::store::{
    Batch, RefreshValues, ShopDocument, ShopDocumentKind, ShopState, ShopStateChange, Store,
    StoreError,
};
use crate::sync::job::Job;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// The resource names of a shop's streams in `sync_cursors`.
pub const INFOS_RESOURCE: &str = "infos";
pub const ORDERS_RESOURCE: &str = "orders";

/// What time it is: the system clock, or a test's.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(Utc::now)
}

#[derive(Debug, thiserror::Error)]
pub enum ShopError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Provider(#[from] ProviderError),
}

impl ShopError {
    pub fn refused_credentials(&self) -> bool {
        matches!(
            self,
            ShopError::Provider(ProviderError::Unauthorized { .. })
        )
    }
}

fn std_to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// One shop as ordersync knows it: the latest state poll, its calendar and the refresh values
/// of its stored documents. Shared by the state poll and the submissions, so a submission's
/// fresh read of infos also refreshes the documents it finds moved.
pub struct ShopMonitor {
    client: Arc<KassaForteClient>,
    store: Arc<dyn Store>,
    shop: KassaForteShop,
    clock: Clock,
    known: Mutex<Known>,
    /// An order was submitted since the follow-up last looked.
    submitted: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct Known {
    /// Read from the store on first use.
    loaded: bool,
    calendar: Option<ShopCalendar>,
    /// The refresh value of each stored document's latest snapshot.
    snapshots: HashMap<ShopDocumentKind, Option<String>>,
    /// When the last poll began, and whether the shop was accepting then.
    last_poll: Option<(DateTime<Utc>, bool)>,
    /// The state as stored last: a poll that finds the same writes no history.
    stored: Option<ShopStateChange>,
}

/// What one state poll did.
#[derive(Debug, Clone)]
pub struct Polled {
    pub state: ShopState,
    /// The state differs from the stored one (a history row was written).
    pub changed: bool,
    pub fetched: Vec<ShopDocumentKind>,
    pub quarantined: usize,
}

impl ShopMonitor {
    pub fn new(
        client: Arc<KassaForteClient>,
        store: Arc<dyn Store>,
        shop: KassaForteShop,
        clock: Clock,
    ) -> Self {
        ShopMonitor {
            client,
            store,
            shop,
            clock,
            known: Mutex::new(Known::default()),
            submitted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Tells the follow-up that an order was submitted (it has something to follow now).
    pub fn note_submitted(&self) {
        self.submitted
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn take_submitted(&self) -> bool {
        self.submitted
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    pub fn now(&self) -> DateTime<Utc> {
        (self.clock)()
    }

    pub fn shop(&self) -> &KassaForteShop {
        &self.shop
    }

    pub fn client(&self) -> &Arc<KassaForteClient> {
        &self.client
    }

    fn stream(&self, resource: &str) -> StreamKey {
        StreamKey {
            provider: ProviderKind::KassaForte,
            account: self.shop.name.clone(),
            resource: resource.to_owned(),
        }
    }

    async fn load(&self, known: &mut Known) -> Result<(), StoreError> {
        if known.loaded {
            return Ok(());
        }
        known.stored = self
            .store
            .shop_state(ProviderKind::KassaForte.as_str(), &self.shop.name)
            .await?
            .map(|state| state.summary());
        for kind in ShopDocumentKind::ALL {
            let latest = self
                .store
                .shop_documents(
                    ProviderKind::KassaForte.as_str(),
                    &self.shop.name,
                    kind,
                    true,
                )
                .await?;
            if let Some(document) = latest.into_iter().next() {
                if kind == ShopDocumentKind::OpenHours {
                    known.calendar = self.calendar(&document.body).ok();
                }
                known.snapshots.insert(kind, document.refresh_value);
            }
        }
        known.loaded = true;
        Ok(())
    }

    fn calendar(&self, body: &str) -> Result<ShopCalendar, String> {
        let hours = OpenHours::parse(body.as_bytes())?;
        Ok(ShopCalendar::new(
            hours,
            self.shop.time_zone,
            &self.shop.holidays,
        ))
    }

    /// Whether the shop accepts orders at `now` by its open hours; `None` while they are not
    /// known (never fetched, or unreadable).
    pub async fn accepting_at(&self, now: DateTime<Utc>) -> Result<Option<bool>, StoreError> {
        let mut known = self.known.lock().await;
        self.load(&mut known).await?;
        Ok(known.calendar.as_ref().map(|c| c.accepting_at(now)))
    }

    /// Whether a state poll is due at `now`: at the open rate inside an accepting window, at
    /// the closed rate outside, and at once when a window opened or closed since the last.
    pub async fn due(&self, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let mut known = self.known.lock().await;
        self.load(&mut known).await?;
        let accepting = known.calendar.as_ref().is_none_or(|c| c.accepting_at(now));
        let Some((at, was_accepting)) = known.last_poll else {
            return Ok(true);
        };
        let every = match accepting {
            true => self.shop.infos_every_open,
            false => self.shop.infos_every_closed,
        };
        // Ticks come a little early or late; half a tick of slack keeps the rhythm.
        let slack = self.shop.infos_every_open / 2;
        Ok(was_accepting != accepting || now - at >= std_to_chrono(every.saturating_sub(slack)))
    }

    /// Reads `/v1/infos`, fetches every document whose refresh value moved (or that was never
    /// fetched), and stores the state (with a history row when it changed).
    pub async fn poll(&self) -> Result<Polled, ShopError> {
        let mut known = self.known.lock().await;
        self.load(&mut known).await?;
        let started = self.now();
        let (infos, body) = match self.client.infos().await {
            Ok(answer) => answer,
            Err(ProviderError::InvalidRecord(error)) => {
                return Err(self.quarantine("GET /v1/infos", &error, "").await);
            }
            Err(error) => return Err(error.into()),
        };
        let infos = match infos {
            Ok(infos) => infos,
            Err(error) => return Err(self.quarantine("GET /v1/infos", &error, &body).await),
        };
        let refresh = RefreshValues {
            menu: infos.last_menu_refresh.clone(),
            open_times: infos.last_open_times_refresh.clone(),
            delivery_costs: infos.last_delivery_cost_refresh.clone(),
        };
        let mut fetched = Vec::new();
        let mut quarantined = 0;
        for kind in ShopDocumentKind::ALL {
            let wanted = refresh.of(kind).map(str::to_owned);
            if known.snapshots.get(&kind) == Some(&wanted) {
                continue;
            }
            let document = self.client.document(kind).await?;
            let fetched_at = self.now();
            if kind == ShopDocumentKind::OpenHours {
                match self.calendar(&document.body) {
                    Ok(calendar) => known.calendar = Some(calendar),
                    Err(error) => {
                        // Kept as a snapshot too; the previous hours stay in use.
                        self.quarantine("GET /v1/openhours", &error, &document.body)
                            .await;
                        quarantined += 1;
                    }
                }
            }
            self.store
                .record_shop_document(&ShopDocument {
                    provider: ProviderKind::KassaForte.as_str().to_owned(),
                    account: self.shop.name.clone(),
                    document: kind,
                    refresh_value: wanted.clone(),
                    body: document.body,
                    fetched_at,
                })
                .await?;
            known.snapshots.insert(kind, wanted);
            fetched.push(kind);
        }
        let hours_open = known
            .calendar
            .as_ref()
            .is_none_or(|c| c.accepting_at(started));
        let state = state_of(&self.shop.name, &infos, refresh, body, hours_open, started);
        let summary = state.summary();
        let changed = known
            .stored
            .as_ref()
            .is_none_or(|stored| !stored.same_state(&summary));
        self.store.record_shop_state(&state, changed).await?;
        if changed {
            known.stored = Some(summary);
        }
        known.last_poll = Some((started, hours_open));
        Ok(Polled {
            state,
            changed,
            fetched,
            quarantined,
        })
    }

    /// Keeps a body ordersync cannot read, and says why the poll failed.
    async fn quarantine(&self, source: &str, error: &str, raw: &str) -> ShopError {
        let record = Quarantined {
            provider: ProviderKind::KassaForte,
            account: self.shop.name.clone(),
            source: source.to_owned(),
            error: error.to_owned(),
            raw: raw.to_owned(),
        };
        let stream = self.stream(INFOS_RESOURCE);
        let batch = Batch {
            stream: &stream,
            orders: &[],
            quarantined: std::slice::from_ref(&record),
            cursor: None,
            seen_at: self.now(),
        };
        match self.store.commit_batch(&batch).await {
            Ok(_) => ShopError::Provider(ProviderError::InvalidRecord(format!(
                "{source}: {error} (body quarantined)"
            ))),
            Err(store) => ShopError::Store(store),
        }
    }
}

fn state_of(
    shop: &str,
    infos: &Infos,
    refresh: RefreshValues,
    body: String,
    hours_open: bool,
    at: DateTime<Utc>,
) -> ShopState {
    ShopState {
        provider: ProviderKind::KassaForte.as_str().to_owned(),
        account: shop.to_owned(),
        hours_open,
        delivery_open: infos.delivery_open,
        pickup_open: infos.pickup_open,
        connection_ok: infos.connection_ok,
        delivery_wait_minutes: infos.delivery_wait_minutes,
        pickup_wait_minutes: infos.pickup_wait_minutes,
        unavailable_products: infos.unavailable_products.clone(),
        refresh,
        body,
        observed_at: at,
        changed_at: at,
    }
}

/// The state poll on its tick: polls when [`ShopMonitor::due`] says so.
pub struct ShopWatch {
    monitor: Arc<ShopMonitor>,
    stream: StreamKey,
}

impl ShopWatch {
    pub fn new(monitor: Arc<ShopMonitor>) -> Self {
        let stream = monitor.stream(INFOS_RESOURCE);
        ShopWatch { monitor, stream }
    }
}

#[async_trait]
impl Job for ShopWatch {
    type Report = Value;
    type Error = ShopError;

    fn stream(&self) -> &StreamKey {
        &self.stream
    }

    async fn run(&self, _shutdown: &CancellationToken) -> Result<Value, ShopError> {
        let now = self.monitor.now();
        if !self.monitor.due(now).await? {
            return Ok(json!({ "polled": false }));
        }
        let polled = self.monitor.poll().await?;
        let fetched: Vec<&str> = polled.fetched.iter().map(|k| k.as_str()).collect();
        Ok(json!({
            "polled": true, "accepting": polled.state.hours_open, "changed": polled.changed,
            "documents_fetched": fetched, "quarantined": polled.quarantined,
        }))
    }

    fn refused_credentials(error: &ShopError) -> bool {
        error.refused_credentials()
    }

    fn idle(report: &Value) -> bool {
        report["polled"] == json!(false)
    }
}

/// Polls the status of the orders ordersync submitted: every tick while they are young, less
/// often later, until their status is final or they are too old to follow.
pub struct OrderFollow {
    monitor: Arc<ShopMonitor>,
    store: Arc<dyn Store>,
    stream: StreamKey,
    followed: Mutex<Followed>,
}

#[derive(Default)]
struct Followed {
    /// When each followed order was last polled.
    last_checked: HashMap<String, DateTime<Utc>>,
    /// With nothing to follow the store is asked again only at this time (or when this process
    /// submits an order): a shop without orders costs no query per tick.
    quiet_until: Option<DateTime<Utc>>,
}

impl OrderFollow {
    pub fn new(monitor: Arc<ShopMonitor>, store: Arc<dyn Store>) -> Self {
        let stream = monitor.stream(ORDERS_RESOURCE);
        OrderFollow {
            monitor,
            store,
            stream,
            followed: Mutex::new(Followed::default()),
        }
    }

    fn due(&self, created: DateTime<Utc>, last: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        let shop = self.monitor.shop();
        let Some(last) = last else { return true };
        let every = match now - created < std_to_chrono(shop.follow_fast_for) {
            true => shop.follow_every,
            false => shop.follow_slow_every,
        };
        now - last >= std_to_chrono(every.saturating_sub(shop.follow_every / 2))
    }
}

#[async_trait]
impl Job for OrderFollow {
    type Report = Value;
    type Error = ShopError;

    fn stream(&self) -> &StreamKey {
        &self.stream
    }

    async fn run(&self, shutdown: &CancellationToken) -> Result<Value, ShopError> {
        let shop = self.monitor.shop();
        let now = self.monitor.now();
        let mut state = self.followed.lock().await;
        let submitted = self.monitor.take_submitted();
        if !submitted && state.quiet_until.is_some_and(|until| now < until) {
            return Ok(json!({ "followed": 0, "polled": 0 }));
        }
        let followed = self
            .store
            .followed_orders(
                ProviderKind::KassaForte.as_str(),
                &shop.name,
                &shop.final_statuses,
                now - std_to_chrono(shop.follow_for),
            )
            .await?;
        state.quiet_until = followed
            .is_empty()
            .then(|| now + std_to_chrono(shop.follow_slow_every));
        let ids: std::collections::HashSet<&str> =
            followed.iter().map(|o| o.external_id.as_str()).collect();
        let last_checked = &mut state.last_checked;
        last_checked.retain(|id, _| ids.contains(id.as_str()));
        let (mut orders, mut quarantined) = (Vec::new(), Vec::new());
        let mut failure = None;
        for order in &followed {
            if shutdown.is_cancelled() {
                break;
            }
            if !self.due(
                order.created_at,
                last_checked.get(&order.external_id).copied(),
                now,
            ) {
                continue;
            }
            match self.monitor.client().order_status(&order.external_id).await {
                Ok((status, body)) => {
                    last_checked.insert(order.external_id.clone(), now);
                    let total = order
                        .total_minor
                        .zip(order.currency.as_deref())
                        .and_then(|(minor, currency)| Money::from_minor(minor, currency).ok());
                    orders.push(Order {
                        key: OrderKey {
                            provider: ProviderKind::KassaForte,
                            account: shop.name.clone(),
                            channel: order.channel.clone(),
                            external_id: order.external_id.clone(),
                        },
                        status: Some(status),
                        payment_status: None,
                        shipping_status: None,
                        total,
                        upstream_created_at: Some(order.created_at),
                        upstream_updated_at: self.monitor.now(),
                        payload: body,
                    });
                }
                Err(ProviderError::InvalidRecord(error)) => {
                    last_checked.insert(order.external_id.clone(), now);
                    quarantined.push(Quarantined {
                        provider: ProviderKind::KassaForte,
                        account: shop.name.clone(),
                        source: format!("GET /v1/order/{}", order.external_id),
                        error,
                        raw: String::new(),
                    });
                }
                Err(error) if matches!(error, ProviderError::Unauthorized { .. }) => {
                    failure = Some(error);
                    break;
                }
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        drop(state);
        if orders.is_empty() && quarantined.is_empty() {
            return match failure {
                Some(error) => Err(error.into()),
                None => Ok(json!({ "followed": followed.len(), "polled": 0 })),
            };
        }
        let batch = Batch {
            stream: &self.stream,
            orders: &orders,
            quarantined: &quarantined,
            cursor: None,
            seen_at: self.monitor.now(),
        };
        let outcome = self.store.commit_batch(&batch).await?;
        match failure {
            Some(error) => Err(error.into()),
            None => Ok(json!({
                "followed": followed.len(), "polled": orders.len() + quarantined.len(),
                "written": outcome.written, "quarantined": outcome.quarantined,
            })),
        }
    }

    fn refused_credentials(error: &ShopError) -> bool {
        error.refused_credentials()
    }

    fn idle(report: &Value) -> bool {
        report["polled"] == json!(0)
    }
}
