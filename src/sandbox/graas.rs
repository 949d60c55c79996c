//! A simulated Graas: `GET /v1/orders` and `GET /v1/order/{nickNameID}/{orderID}` exactly as
//! documented (headers checked, paging by `pageNumber`/`pageSize`, both window bounds exclusive),
//! plus `/_sandbox/…` endpoints to read its statistics and switch faults. The write endpoints
//! (`PUT /v1/orders`, `/v1/asn`) are in [`writes`].

mod writes;

pub use writes::Received;

use super::faults::{Admission, FaultGate, TrafficStats};
use super::{Faults, Mutations, SandboxConfig};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

const CHANNELS: [(&str, &str); 3] = [
    ("Lazada", "lazada-1"),
    ("Qoo10", "qoo10-1"),
    ("Shopee", "shopee-1"),
];

/// (orderStatus, paymentStatus, shippingStatus) along an order's life.
const STAGES: [(&str, &str, &str); 7] = [
    ("INITIATED", "AUTHORIZED", "NOT_SHIPPED"),
    ("ACCEPTED", "COMPLETED", "NOT_SHIPPED"),
    ("PROCESSING", "COMPLETED", "READY_TO_SHIP"),
    ("DISPATCHED", "COMPLETED", "SHIPPED"),
    ("DELIVERED", "COMPLETED", "DELIVERED"),
    ("RETURNED", "REFUNDED", "RETURNED"),
    ("CANCELLED", "REFUNDED", "NOT_SHIPPED"),
];
const ACCEPTED_STAGE: u8 = 1;
const DELIVERED: u8 = 4;
const RETURNED: u8 = 5;
const CANCELLED: u8 = 6;

#[derive(Debug, Clone)]
struct SimItem {
    item_id: String,
    sku: String,
    quantity: i64,
    unit_minor: i64,
}

#[derive(Debug, Clone)]
struct SimOrder {
    channel: usize,
    order_id: String,
    stage: u8,
    created: i64,
    updated: i64,
    items: Vec<SimItem>,
    malformed: bool,
}

/// What the sandbox holds for one order: what a synced database must end up with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TruthOrder {
    pub channel: String,
    pub order_id: String,
    pub status: String,
    pub payment_status: String,
    pub shipping_status: String,
    pub updated: i64,
    pub malformed: bool,
}

/// What one account's API saw.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct AccountStats {
    /// Requests and the faults they met.
    #[serde(flatten)]
    pub traffic: TrafficStats,
    pub unauthorized: u64,
    /// Status changes the mutation loop made (each one a new order version).
    pub changes: u64,
    /// Orders the drift fault moved out of a window while it was paged.
    pub drifted: u64,
    /// The most order-list requests being answered at once (held ones included).
    pub max_reads_in_flight: u64,
    #[serde(skip)]
    reads_in_flight: u64,
}

/// Counts an order-list request as being answered until it is dropped.
struct ReadInFlight {
    sim: Arc<GraasSim>,
    index: usize,
}

impl ReadInFlight {
    fn start(sim: &Arc<GraasSim>, index: usize) -> Self {
        let mut state = sim.lock();
        state.reads_in_flight += 1;
        state.max_reads_in_flight = state.max_reads_in_flight.max(state.reads_in_flight);
        let stats = &mut state.accounts[index].stats;
        stats.reads_in_flight += 1;
        stats.max_reads_in_flight = stats.max_reads_in_flight.max(stats.reads_in_flight);
        ReadInFlight {
            sim: Arc::clone(sim),
            index,
        }
    }
}

impl Drop for ReadInFlight {
    fn drop(&mut self) {
        let mut state = self.sim.lock();
        state.reads_in_flight = state.reads_in_flight.saturating_sub(1);
        let stats = &mut state.accounts[self.index].stats;
        stats.reads_in_flight = stats.reads_in_flight.saturating_sub(1);
    }
}

struct SimAccount {
    writes: writes::AccountWrites,
    number: String,
    key: String,
    orders: Vec<SimOrder>,
    /// (timeLastUpdated, index) in order, for window queries.
    by_updated: BTreeSet<(i64, usize)>,
    by_key: HashMap<(String, String), usize>,
    faults: FaultGate,
    stats: AccountStats,
    next_id: u64,
    /// Which orders (by index) an order list has answered with at least once.
    served: Vec<bool>,
}

struct SimState {
    accounts: Vec<SimAccount>,
    faults: Faults,
    rng: SmallRng,
    /// Order-list requests being answered now, over every account, and the most at once.
    reads_in_flight: u64,
    max_reads_in_flight: u64,
    /// Distinct orders the order lists have answered with, over every account.
    orders_served: u64,
}

pub struct GraasSim {
    state: Mutex<SimState>,
    mutating: AtomicBool,
}

fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

impl SimAccount {
    fn insert(&mut self, order: SimOrder) {
        let index = self.orders.len();
        self.by_updated.insert((order.updated, index));
        self.by_key.insert(
            (CHANNELS[order.channel].1.to_owned(), order.order_id.clone()),
            index,
        );
        self.orders.push(order);
    }

    fn new_order(&mut self, rng: &mut SmallRng, account_index: usize, updated: i64) -> SimOrder {
        self.next_id += 1;
        let items = (0..rng.random_range(1..=3))
            .map(|n| SimItem {
                item_id: format!("{}{n}", self.next_id),
                sku: format!("SKU-{:04}", rng.random_range(0..500)),
                quantity: rng.random_range(1..=12),
                unit_minor: rng.random_range(100..=50_000),
            })
            .collect();
        SimOrder {
            channel: rng.random_range(0..CHANNELS.len()),
            order_id: format!(
                "{}",
                30_000_000_000_000u64 + account_index as u64 * 1_000_000_000 + self.next_id
            ),
            stage: 0,
            created: updated,
            updated,
            items,
            malformed: false,
        }
    }

    fn touch(&mut self, index: usize, updated: i64) {
        let order = &mut self.orders[index];
        self.by_updated.remove(&(order.updated, index));
        order.updated = updated;
        self.by_updated.insert((updated, index));
    }
}

/// Gives the orders their ids (and their items' ids) again in the order they were created, as a
/// marketplace numbers them; the set of ids stays the same.
fn number_by_creation(orders: &mut [SimOrder]) {
    // They were generated with increasing ids.
    let ids: Vec<String> = orders.iter().map(|order| order.order_id.clone()).collect();
    let item_prefixes: Vec<String> = orders
        .iter()
        .map(|order| item_prefix(&order.items))
        .collect();
    orders.sort_by_key(|order| order.created);
    for ((order, id), prefix) in orders.iter_mut().zip(ids).zip(item_prefixes) {
        order.order_id = id;
        for (n, item) in order.items.iter_mut().enumerate() {
            item.item_id = format!("{prefix}{n}");
        }
    }
}

/// The part of an order's item ids before the item's position.
fn item_prefix(items: &[SimItem]) -> String {
    items
        .first()
        .map(|item| item.item_id[..item.item_id.len().saturating_sub(1)].to_owned())
        .unwrap_or_default()
}

impl GraasSim {
    pub fn new(config: &SandboxConfig) -> Self {
        let mut rng = SmallRng::seed_from_u64(config.seed);
        let now = now_unix();
        let oldest = now - config.history_secs.max(10);
        let mut accounts = Vec::new();
        for (account_index, spec) in config.graas.iter().enumerate() {
            let mut account = SimAccount {
                writes: writes::AccountWrites::default(),
                number: spec.account_number.clone(),
                key: spec.app_key.clone(),
                orders: Vec::with_capacity(spec.orders),
                by_updated: BTreeSet::new(),
                by_key: HashMap::with_capacity(spec.orders),
                faults: FaultGate::default(),
                stats: AccountStats::default(),
                next_id: 0,
                served: Vec::new(),
            };
            let mut initial = Vec::with_capacity(spec.orders);
            for n in 0..spec.orders {
                // Initial orders end a few seconds before start, so none is still settling.
                let updated = rng.random_range(oldest..now - 5);
                let mut order = account.new_order(&mut rng, account_index, updated);
                order.created = updated - rng.random_range(0..3600);
                order.stage = rng.random_range(0..STAGES.len() as u8);
                order.malformed = config
                    .malformed_every
                    .is_some_and(|every| every > 0 && n % every == every - 1);
                initial.push(order);
            }
            if config.ids_follow_creation {
                number_by_creation(&mut initial);
            }
            for order in initial {
                account.insert(order);
            }
            accounts.push(account);
        }
        GraasSim {
            state: Mutex::new(SimState {
                accounts,
                faults: config.faults.clone(),
                rng,
                reads_in_flight: 0,
                max_reads_in_flight: 0,
                orders_served: 0,
            }),
            mutating: AtomicBool::new(true),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves plain data behind; keep serving it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Stops (or resumes) the mutation loop; returns the newest `timeLastUpdated` there is.
    pub fn set_mutating(&self, on: bool) -> i64 {
        self.mutating.store(on, Ordering::SeqCst);
        let state = self.lock();
        state
            .accounts
            .iter()
            .filter_map(|a| a.by_updated.last().map(|(t, _)| *t))
            .max()
            .unwrap_or(0)
    }

    pub fn stats(&self, account_number: &str) -> Option<AccountStats> {
        let state = self.lock();
        state
            .accounts
            .iter()
            .find(|a| a.number == account_number)
            .map(|a| a.stats.clone())
    }

    /// The most order-list requests answered at once, over every account (held ones included).
    pub fn max_reads_in_flight(&self) -> u64 {
        self.lock().max_reads_in_flight
    }

    /// How many distinct orders the order lists have answered with so far, over every account:
    /// set against the orders stored, what a client has fetched and not yet written.
    pub fn orders_served(&self) -> u64 {
        self.lock().orders_served
    }

    /// Every order of an account as the sandbox holds it now, sorted by (channel, order id).
    pub fn truth(&self, account_number: &str) -> Vec<TruthOrder> {
        let state = self.lock();
        let Some(account) = state.accounts.iter().find(|a| a.number == account_number) else {
            return Vec::new();
        };
        let mut orders: Vec<TruthOrder> = account
            .orders
            .iter()
            .map(|o| {
                let (status, payment, shipping) = STAGES[o.stage as usize];
                TruthOrder {
                    channel: CHANNELS[o.channel].1.to_owned(),
                    order_id: o.order_id.clone(),
                    status: status.to_owned(),
                    payment_status: payment.to_owned(),
                    shipping_status: shipping.to_owned(),
                    updated: o.updated,
                    malformed: o.malformed,
                }
            })
            .collect();
        orders.sort();
        orders
    }

    /// One tick of the mutation loop: move some orders forward, create some new ones.
    pub fn mutate(&self, plan: &Mutations) {
        if !self.mutating.load(Ordering::SeqCst) {
            return;
        }
        let now = now_unix();
        let mut guard = self.lock();
        let state = &mut *guard;
        for (account_index, account) in state.accounts.iter_mut().enumerate() {
            for _ in 0..plan.per_tick {
                if account.orders.is_empty() {
                    break;
                }
                let index = state.rng.random_range(0..account.orders.len());
                let order = &account.orders[index];
                // One version per second per order, and never a time before the current one.
                if order.updated >= now || matches!(order.stage, RETURNED | CANCELLED) {
                    continue;
                }
                let next = match order.stage {
                    DELIVERED => RETURNED,
                    stage if stage < DELIVERED && state.rng.random_bool(0.05) => CANCELLED,
                    stage => stage + 1,
                };
                let backdate = if plan.max_backdate_secs > 0
                    && state.rng.random_bool(plan.backdate_ratio.clamp(0.0, 1.0))
                {
                    state.rng.random_range(1..=plan.max_backdate_secs)
                } else {
                    0
                };
                let updated = (now - backdate).max(order.updated + 1);
                account.orders[index].stage = next;
                account.touch(index, updated);
                account.stats.changes += 1;
            }
            for _ in 0..plan.new_per_tick {
                let order = account.new_order(&mut state.rng, account_index, now);
                account.insert(order);
                account.stats.changes += 1;
            }
        }
    }
}

impl GraasSim {
    /// Moves up to `orders` orders of the first account one status forward, all stamped with
    /// the current second, as a back-office mass status change does; returns how many moved.
    pub fn bulk_update(&self, orders: usize) -> usize {
        if !self.mutating.load(Ordering::SeqCst) {
            return 0;
        }
        let now = now_unix();
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(account) = state.accounts.first_mut() else {
            return 0;
        };
        let mut moved = std::collections::HashSet::new();
        // Random picks, bounded: an account with few open orders moves what it can.
        for _ in 0..orders.saturating_mul(4) {
            if moved.len() == orders || account.orders.is_empty() {
                break;
            }
            let index = state.rng.random_range(0..account.orders.len());
            let order = &account.orders[index];
            if order.updated >= now || matches!(order.stage, RETURNED | CANCELLED) {
                continue;
            }
            if moved.insert(index) {
                account.orders[index].stage = order.stage + 1;
                account.touch(index, now);
                account.stats.changes += 1;
            }
        }
        moved.len()
    }
}

#[derive(Serialize)]
struct WireMoney {
    amount: i64,
    #[serde(rename = "currencyCode")]
    currency_code: &'static str,
}

fn sgd(amount: i64) -> WireMoney {
    WireMoney {
        amount,
        currency_code: "SGD",
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireItem<'a> {
    #[serde(rename = "orderItemID")]
    order_item_id: &'a str,
    #[serde(rename = "SKU")]
    sku: &'a str,
    #[serde(rename = "customSKU")]
    custom_sku: &'a str,
    #[serde(rename = "shopSKU")]
    shop_sku: String,
    quantity: i64,
    item_amount: WireMoney,
    item_sold_amount: WireMoney,
    item_title: String,
    delivery_type: &'static str,
}

/// A value the docs show in two shapes: `Text` in one example, `Number`/`List` in another.
#[derive(Serialize)]
#[serde(untagged)]
enum Shape<'a> {
    Text(&'a str),
    Number(i64),
    List([&'a str; 1]),
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireAddress<'a> {
    name: &'static str,
    street1: &'static str,
    city: &'static str,
    country: &'static str,
    phone: Shape<'a>,
    postal_code: Shape<'a>,
}

#[derive(Serialize)]
struct WireBuyer {
    name: String,
}

#[derive(Serialize)]
struct WireShipping<'a> {
    address: WireAddress<'a>,
}

#[derive(Serialize)]
struct WireSite {
    name: &'static str,
    #[serde(rename = "nickNameID")]
    nick_name_id: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireOrder<'a> {
    site: WireSite,
    #[serde(rename = "orderID")]
    order_id: &'a str,
    order_number: &'a str,
    buyer_details: WireBuyer,
    order_items: Vec<WireItem<'a>>,
    order_status: &'static str,
    payment_status: &'static str,
    shipping_status: &'static str,
    order_amount: WireMoney,
    order_sold_amount: WireMoney,
    shipping_amount: WireMoney,
    payment_methods: Shape<'a>,
    shipping_details: WireShipping<'a>,
    time_created: i64,
    time_order_created: i64,
    time_last_updated: Shape<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
}

/// Appends the order's JSON as Graas documents it to `out`.
fn render_into(out: &mut Vec<u8>, order: &SimOrder, single: bool) {
    let (name, nick) = CHANNELS[order.channel];
    let (status, payment, shipping) = STAGES[order.stage as usize];
    let salt: u64 = order.order_id.bytes().map(u64::from).sum();
    // The docs show both shapes of these fields; serve both.
    let number_shapes = salt.is_multiple_of(2);
    let address = WireAddress {
        name: "Sandbox Buyer",
        street1: "1 Example Road",
        city: "Singapore",
        country: "SG",
        phone: if number_shapes {
            Shape::Number(213_123)
        } else {
            Shape::Text("+65*******1872")
        },
        postal_code: if number_shapes {
            Shape::Number(18_956)
        } else {
            Shape::Text("018956")
        },
    };
    let total: i64 = order.items.iter().map(|i| i.quantity * i.unit_minor).sum();
    let wire = WireOrder {
        site: WireSite {
            name,
            nick_name_id: nick,
        },
        order_id: &order.order_id,
        order_number: &order.order_id,
        buyer_details: WireBuyer {
            name: format!("Buyer {}", salt % 1000),
        },
        order_items: order
            .items
            .iter()
            .map(|item| WireItem {
                order_item_id: &item.item_id,
                sku: &item.sku,
                custom_sku: &item.sku,
                shop_sku: format!("{}-{nick}", item.sku),
                quantity: item.quantity,
                item_amount: sgd(item.unit_minor),
                item_sold_amount: sgd(item.unit_minor),
                item_title: format!("Item {}", item.sku),
                delivery_type: "Own Warehouse",
            })
            .collect(),
        order_status: status,
        payment_status: payment,
        shipping_status: shipping,
        order_amount: sgd(total),
        order_sold_amount: sgd(total),
        shipping_amount: sgd(300),
        payment_methods: if number_shapes {
            Shape::Text("VISA/MasterCard")
        } else {
            Shape::List(["MIXEDCARD"])
        },
        shipping_details: WireShipping { address },
        time_created: order.created,
        time_order_created: order.created,
        time_last_updated: if order.malformed {
            Shape::Text("not-a-time")
        } else {
            Shape::Number(order.updated)
        },
        // The single-order answer is the order plus `"status": "success"`.
        status: single.then_some("success"),
    };
    if let Err(error) = serde_json::to_writer(&mut *out, &wire) {
        tracing::error!(%error, "sandbox could not render an order");
    }
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"errorMessage": message}))).into_response()
}

/// A request that passed the auth check and the rate limit and 5xx faults.
struct Admitted {
    index: usize,
    truncate: bool,
    /// How long to hold the answer (the slowness fault).
    slow: Option<Duration>,
}

/// Checks the auth headers, holds reads for the slowness fault and applies the rest.
async fn admit(sim: &GraasSim, headers: &HeaderMap) -> Result<(usize, bool), Response> {
    let admitted = admit_now(sim, headers).map_err(|response| *response)?;
    if let Some(delay) = admitted.slow {
        tokio::time::sleep(delay).await;
    }
    Ok((admitted.index, admitted.truncate))
}

/// Checks the auth headers and applies rate-limit and 5xx faults; slowness is left to the
/// caller, so a write can be applied first and answered late (a timeout that hides a success).
/// Returns the account's index, or the response to send instead.
fn admit_now(sim: &GraasSim, headers: &HeaderMap) -> Result<Admitted, Box<Response>> {
    let header_value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let (number, key) = (header_value("accountNumber"), header_value("appKey"));
    let (index, slow_for, truncate) = {
        let mut guard = sim.lock();
        let state = &mut *guard;
        let Some(index) = state.accounts.iter().position(|a| a.number == number) else {
            return Err(Box::new(error(StatusCode::UNAUTHORIZED, "Unauthorized")));
        };
        let account = &mut state.accounts[index];
        if account.key != key {
            account.stats.unauthorized += 1;
            return Err(Box::new(error(StatusCode::UNAUTHORIZED, "Unauthorized")));
        }
        match account
            .faults
            .admit(&state.faults, &mut account.stats.traffic, &mut state.rng)
        {
            Admission::Served { slow, truncate } => (index, slow, truncate),
            Admission::RateLimited { retry_after_secs } => {
                let mut response = error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests");
                if let Ok(value) = retry_after_secs.to_string().parse() {
                    response.headers_mut().insert(header::RETRY_AFTER, value);
                }
                return Err(Box::new(response));
            }
            Admission::ServerError => {
                return Err(Box::new(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Service Unavailable",
                )));
            }
        }
    };
    Ok(Admitted {
        index,
        truncate,
        slow: slow_for,
    })
}

fn json_body(mut body: Vec<u8>, truncate: bool) -> Response {
    if truncate {
        body.truncate(body.len() / 2);
    }
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn list_orders(
    State(sim): State<Arc<GraasSim>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let admitted = match admit_now(&sim, &headers) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let (index, truncate) = (admitted.index, admitted.truncate);
    let _in_flight = ReadInFlight::start(&sim, index);
    if let Some(delay) = admitted.slow {
        tokio::time::sleep(delay).await;
    }
    let number = |name: &str| query.get(name).map(|v| v.parse::<i64>());
    let (Some(Ok(after)), Some(Ok(before))) = (number("updatedAfter"), number("updatedBefore"))
    else {
        return error(StatusCode::BAD_REQUEST, "Time Range is mandatory");
    };
    let page_number = match number("pageNumber") {
        None => 1,
        Some(Ok(n)) if n >= 1 => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "pageNumber must be a positive number",
            );
        }
    };
    let page_size = match number("pageSize") {
        None => 100,
        Some(Ok(n)) if (1..=10_000).contains(&n) => n,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "pageSize must be between 1 and 10000",
            );
        }
    };
    let (records, page) = {
        let mut guard = sim.lock();
        let state = &mut *guard;
        if page_number > 1
            && state
                .rng
                .random_bool(state.faults.drift_ratio.clamp(0.0, 1.0))
        {
            drift(&mut state.accounts[index], after, before);
        }
        let account = &mut state.accounts[index];
        if after + 1 >= before {
            (0, Vec::new())
        } else {
            let in_window = account.by_updated.range((after + 1, 0)..(before, 0));
            let records = in_window.clone().count() as i64;
            let skip = usize::try_from((page_number - 1) * page_size).unwrap_or(usize::MAX);
            let indexes: Vec<usize> = in_window
                .skip(skip)
                .take(page_size as usize)
                .map(|(_, i)| *i)
                .collect();
            account.served.resize(account.orders.len(), false);
            let mut first_served = 0;
            for &i in &indexes {
                first_served += u64::from(!std::mem::replace(&mut account.served[i], true));
            }
            let page = indexes.iter().map(|&i| account.orders[i].clone()).collect();
            state.orders_served += first_served;
            (records, page)
        }
    };
    let pages = (records + page_size - 1) / page_size;
    let mut body = Vec::with_capacity(64 + page.len() * 1_500);
    body.extend_from_slice(
        format!(r#"{{"numberOfPages":{pages},"numberOfRecords":{records},"history":["#).as_bytes(),
    );
    for (i, order) in page.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        render_into(&mut body, order, false);
    }
    body.extend_from_slice(br#"],"status":"success"}"#);
    json_body(body, truncate)
}

/// Updates the earliest order of a window (to now), so every later position moves up by one.
fn drift(account: &mut SimAccount, after: i64, before: i64) {
    let now = now_unix();
    let earliest = account
        .by_updated
        .range((after + 1, 0)..(before, 0))
        .next()
        .map(|(_, index)| *index);
    if let Some(index) = earliest
        && account.orders[index].updated < now
    {
        account.touch(index, now);
        account.stats.changes += 1;
        account.stats.drifted += 1;
    }
}

async fn one_order(
    State(sim): State<Arc<GraasSim>>,
    headers: HeaderMap,
    Path((nick, order_id)): Path<(String, String)>,
) -> Response {
    let (index, truncate) = match admit(&sim, &headers).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let order = {
        let state = sim.lock();
        let account = &state.accounts[index];
        account
            .by_key
            .get(&(nick, order_id))
            .map(|i| account.orders[*i].clone())
    };
    let Some(order) = order else {
        return error(StatusCode::NOT_FOUND, "Record Not Found");
    };
    let mut body = Vec::with_capacity(1_500);
    render_into(&mut body, &order, true);
    json_body(body, truncate)
}

async fn stats(State(sim): State<Arc<GraasSim>>) -> Json<Value> {
    let state = sim.lock();
    let stats: HashMap<&str, &AccountStats> = state
        .accounts
        .iter()
        .map(|a| (a.number.as_str(), &a.stats))
        .collect();
    Json(json!(stats))
}

async fn put_faults(State(sim): State<Arc<GraasSim>>, Json(faults): Json<Faults>) -> StatusCode {
    sim.set_faults(faults);
    StatusCode::NO_CONTENT
}

pub fn router(sim: Arc<GraasSim>) -> Router {
    Router::new()
        .route("/v1/order/{nick}/{order_id}", get(one_order))
        .route("/v1/orders", get(list_orders).put(writes::put_orders))
        .route("/v1/asn", get(writes::find_asns).post(writes::create_asn))
        .route("/v1/asn/{asn_id}", get(writes::one_asn))
        .route("/_sandbox/graas/received", get(writes::received))
        .route(
            "/_sandbox/graas/asn/receive",
            axum::routing::post(writes::receive_asns),
        )
        .route("/_sandbox/graas/stats", get(stats))
        .route("/_sandbox/graas/faults", axum::routing::put(put_faults))
        .with_state(sim)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids_in_creation_order(sim: &GraasSim) -> Vec<u64> {
        let state = sim.lock();
        let mut orders: Vec<&SimOrder> = state.accounts[0].orders.iter().collect();
        orders.sort_by_key(|order| order.created);
        orders
            .iter()
            .map(|order| order.order_id.parse().unwrap())
            .collect()
    }

    #[test]
    fn ids_by_creation_grow_with_creation_and_keep_the_same_ids() {
        let random = GraasSim::new(&SandboxConfig::graas(1, 500));
        let mut config = SandboxConfig::graas(1, 500);
        config.ids_follow_creation = true;
        let by_creation = GraasSim::new(&config);

        let random_ids = ids_in_creation_order(&random);
        let ids = ids_in_creation_order(&by_creation);
        assert!(!random_ids.is_sorted(), "random ids already grew with time");
        assert!(ids.is_sorted(), "ids do not grow with creation");
        let mut same = random_ids.clone();
        same.sort_unstable();
        assert_eq!(same, ids);

        // An item's id starts with its order's number.
        let state = by_creation.lock();
        for order in &state.accounts[0].orders {
            let number = order.order_id.parse::<u64>().unwrap() - 30_000_000_000_000;
            for item in &order.items {
                assert!(item.item_id.starts_with(&number.to_string()), "{item:?}");
            }
        }
    }
}
