//! A simulated Grafterr: the (assumed) token endpoint and order read under a stage segment
//! (`/grafterr/dev/auth/token`, `/grafterr/dev/orders/{id}`), both checking `x-api-key` and
//! the bearer token, and a pusher that sends order created/updated deliveries to a webhook URL
//! with duplicates, reordering, bodies without items or without an event id, and forged copies
//! (a wrong path token or signature) that must be refused. Reads pass the shared fault
//! admission (429, 5xx, slow, truncated).

use super::Faults;
use super::faults::{Admission, FaultGate, TrafficStats};
use crate::providers::grafterr::webhook::sign;
use crate::providers::money::minor_to_decimal;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Statuses an order goes through, in order.
const LIFECYCLE: [&str; 5] = ["placed", "accepted", "preparing", "ready", "completed"];
const SOURCES: [&str; 3] = ["pos", "web", "selfkiosk"];
const MENU: [(&str, i64); 5] = [
    ("Flat white", 320),
    ("Oat milk", 40),
    ("Croissant", 275),
    ("Soup of the day", 595),
    ("Cheese toastie", 640),
];
/// The stage segment the simulated base URL ends in.
pub const STAGE: &str = "grafterr/dev";

/// One simulated Grafterr account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrafterrAccountSpec {
    /// The account's name in ordersync's config.
    pub name: String,
    pub api_key: String,
    pub client_id: String,
    pub client_secret: String,
    pub path_token: String,
    /// When set, deliveries carry `X-Grafterr-Signature`.
    #[serde(default)]
    pub signing_secret: Option<String>,
    pub orders: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrafterrOptions {
    pub token_ttl_secs: u64,
}

impl Default for GrafterrOptions {
    fn default() -> Self {
        GrafterrOptions {
            token_ttl_secs: 3600,
        }
    }
}

/// How one push of every order's history misbehaves.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct PushPlan {
    /// `updated` deliveries after each order's `created`.
    pub updates_per_order: usize,
    /// Share of deliveries sent twice.
    pub duplicate_ratio: f64,
    /// Share of deliveries swapped with the one after them.
    pub reorder_ratio: f64,
    /// Share of deliveries that carry only the order's id, source and time (no items).
    pub no_items_ratio: f64,
    /// Share of deliveries without `eventId` (deduplicated by their body).
    pub no_event_id_ratio: f64,
    /// Share of deliveries preceded by a forged copy: a wrong path token, or a wrong signature
    /// when the account signs.
    pub forged_ratio: f64,
    /// Deliveries in flight at once (more reorders them too).
    pub concurrency: usize,
}

/// What the account's API and its deliveries saw.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GrafterrStats {
    pub traffic: TrafficStats,
    pub token_requests: u64,
    /// Order reads answered 401 because the token had expired or was revoked.
    pub tokens_refused: u64,
    pub order_reads: u64,
    pub deliveries_sent: u64,
    pub deliveries_acknowledged: u64,
    pub duplicates_sent: u64,
    pub without_items_sent: u64,
    pub forged_sent: u64,
    pub forged_refused: u64,
}

#[derive(Debug, Clone)]
struct SimOrder {
    order_id: String,
    number: u64,
    source: &'static str,
    stage: usize,
    items: Vec<(&'static str, i64, i64)>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl SimOrder {
    fn total_minor(&self) -> i64 {
        self.items.iter().map(|(_, price, qty)| price * qty).sum()
    }

    fn status(&self) -> &'static str {
        LIFECYCLE[self.stage.min(LIFECYCLE.len() - 1)]
    }

    /// The order object; prices as Grafterr sends them, decimals without trailing zeros.
    fn object(&self, with_items: bool) -> Value {
        let money = |minor: i64| -> Value {
            let text = minor_to_decimal(minor);
            let text = text.trim_end_matches('0').trim_end_matches('.');
            serde_json::from_str(text).unwrap_or(Value::Null)
        };
        if !with_items {
            return json!({
                "orderId": self.order_id, "source": self.source,
                "updatedAt": self.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            });
        }
        let items: Vec<Value> = self
            .items
            .iter()
            .enumerate()
            .map(|(i, (name, price, qty))| {
                json!({ "itemId": format!("i{i}"), "name": name, "quantity": qty,
                        "unitPrice": money(*price), "totalPrice": money(price * qty) })
            })
            .collect();
        let total = self.total_minor();
        json!({
            "orderId": self.order_id, "orderNumber": self.number.to_string(),
            "source": self.source, "siteId": "site-1", "status": self.status(),
            "orderType": if self.source == "web" { "delivery" } else { "eat-in" },
            "items": items, "subtotal": money(total), "discount": 0, "tax": money(total / 6),
            "total": money(total), "currency": "GBP", "paymentStatus": "paid",
            "createdAt": self.created_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "updatedAt": self.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        })
    }
}

struct AccountState {
    spec: GrafterrAccountSpec,
    orders: BTreeMap<String, SimOrder>,
    tokens: HashMap<String, Instant>,
    stats: GrafterrStats,
    gate: FaultGate,
}

struct SimState {
    accounts: Vec<AccountState>,
    options: GrafterrOptions,
    faults: Faults,
    rng: SmallRng,
    issued: u64,
}

pub struct GrafterrSim {
    state: Mutex<SimState>,
}

/// One order as the sandbox has it now, for comparing with the database.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GrafterrTruth {
    pub source: String,
    pub order_id: String,
    pub status: String,
    pub updated_at: DateTime<Utc>,
    pub total_minor: i64,
}

/// `cafe-1`… with their keys.
pub fn account_specs(accounts: usize, orders: usize) -> Vec<GrafterrAccountSpec> {
    (1..=accounts)
        .map(|i| GrafterrAccountSpec {
            name: format!("cafe-{i}"),
            api_key: format!("grafterr-api-key-{i}"),
            client_id: format!("grafterr-client-{i}"),
            client_secret: format!("grafterr-secret-{i}"),
            path_token: format!("grafterr-path-token-{i:04}"),
            signing_secret: None,
            orders,
        })
        .collect()
}

impl GrafterrSim {
    pub fn new(
        specs: &[GrafterrAccountSpec],
        options: GrafterrOptions,
        faults: Faults,
        seed: u64,
    ) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x6772_6166);
        let start = Utc::now() - chrono::Duration::hours(6);
        let accounts = specs
            .iter()
            .map(|spec| {
                let orders = (0..spec.orders)
                    .map(|i| {
                        let items = (0..rng.random_range(1..=3))
                            .map(|_| {
                                let (name, price) = MENU[rng.random_range(0..MENU.len())];
                                (name, price, rng.random_range(1..=3))
                            })
                            .collect();
                        let created_at = start + chrono::Duration::seconds(i as i64 * 7);
                        let order = SimOrder {
                            order_id: format!("{}-{:06}", spec.name, i + 1),
                            number: 1000 + i as u64,
                            source: SOURCES[i % SOURCES.len()],
                            stage: 0,
                            items,
                            created_at,
                            updated_at: created_at,
                        };
                        (order.order_id.clone(), order)
                    })
                    .collect();
                AccountState {
                    spec: spec.clone(),
                    orders,
                    tokens: HashMap::new(),
                    stats: GrafterrStats::default(),
                    gate: FaultGate::default(),
                }
            })
            .collect();
        GrafterrSim {
            state: Mutex::new(SimState {
                accounts,
                options,
                faults,
                rng,
                issued: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn account_mut<'a>(state: &'a mut SimState, name: &str) -> Option<&'a mut AccountState> {
        state.accounts.iter_mut().find(|a| a.spec.name == name)
    }

    pub fn stats(&self, account: &str) -> Option<GrafterrStats> {
        let mut state = self.lock();
        Self::account_mut(&mut state, account).map(|a| a.stats.clone())
    }

    /// Every order as it is now.
    pub fn truth(&self, account: &str) -> Vec<GrafterrTruth> {
        let mut state = self.lock();
        let Some(account) = Self::account_mut(&mut state, account) else {
            return Vec::new();
        };
        account
            .orders
            .values()
            .map(|o| GrafterrTruth {
                source: o.source.to_owned(),
                order_id: o.order_id.clone(),
                status: o.status().to_owned(),
                updated_at: o.updated_at,
                total_minor: o.total_minor(),
            })
            .collect()
    }

    /// Every token issued so far is refused from now on (as after a key rotation).
    pub fn revoke_tokens(&self) {
        for account in &mut self.lock().accounts {
            account.tokens.clear();
        }
    }

    /// Builds every order's history (created, then `updates_per_order` updates, one second
    /// apart) as deliveries with the plan's faults: (body, forged first, signature).
    fn history(&self, account: &str, plan: &PushPlan) -> Vec<(String, bool)> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(acct) = state.accounts.iter_mut().find(|a| a.spec.name == account) else {
            return Vec::new();
        };
        let rng = &mut state.rng;
        let mut deliveries = Vec::new();
        for order in acct.orders.values_mut() {
            for step in 0..=plan.updates_per_order {
                if step > 0 {
                    order.stage += 1;
                    order.updated_at += chrono::Duration::seconds(1);
                }
                let with_items = !rng.random_bool(plan.no_items_ratio.clamp(0.0, 1.0));
                acct.stats.without_items_sent += u64::from(!with_items);
                let event = format!(
                    "{}.order.{}",
                    order.source,
                    if step == 0 { "created" } else { "updated" }
                );
                let mut body = json!({
                    "event": event,
                    "createdAt": order.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "data": { "order": order.object(with_items) },
                });
                if !rng.random_bool(plan.no_event_id_ratio.clamp(0.0, 1.0)) {
                    body["eventId"] = json!(format!("evt-{}-{}", order.order_id, order.stage));
                }
                let forged = rng.random_bool(plan.forged_ratio.clamp(0.0, 1.0));
                let text = body.to_string();
                if rng.random_bool(plan.duplicate_ratio.clamp(0.0, 1.0)) {
                    acct.stats.duplicates_sent += 1;
                    deliveries.push((text.clone(), false));
                }
                deliveries.push((text, forged));
            }
        }
        for i in 0..deliveries.len().saturating_sub(1) {
            if rng.random_bool(plan.reorder_ratio.clamp(0.0, 1.0)) {
                deliveries.swap(i, i + 1);
            }
        }
        deliveries
    }

    /// Pushes every order's history to `url` (the account's webhook URL without its path token:
    /// `…/webhooks/grafterr/<name>`). Returns when each delivery was answered; a delivery
    /// without an answer or refused with a 5xx is sent again, as a sender's retry would
    /// (`super::delivery`).
    pub async fn push(self: &Arc<Self>, account: &str, url: &str, plan: &PushPlan) {
        let Some(spec) = self
            .lock()
            .accounts
            .iter()
            .find(|a| a.spec.name == account)
            .map(|a| a.spec.clone())
        else {
            return;
        };
        let deliveries = self.history(account, plan);
        self.send(&spec, url, deliveries, plan.concurrency.max(1))
            .await;
    }

    /// Moves `count` random orders one status on and pushes their `updated` deliveries.
    pub async fn advance(self: &Arc<Self>, account: &str, url: &str, count: usize) {
        let (spec, deliveries) = {
            let mut guard = self.lock();
            let state = &mut *guard;
            let Some(acct) = state.accounts.iter_mut().find(|a| a.spec.name == account) else {
                return;
            };
            let mut open: Vec<&mut SimOrder> = acct
                .orders
                .values_mut()
                .filter(|o| o.stage + 1 < LIFECYCLE.len())
                .collect();
            open.shuffle(&mut state.rng);
            let now = Utc::now();
            let deliveries: Vec<(String, bool)> = open
                .into_iter()
                .take(count)
                .map(|order| {
                    order.stage += 1;
                    order.updated_at = now.max(order.updated_at + chrono::Duration::seconds(1));
                    let body = json!({
                        "eventId": format!("evt-{}-{}", order.order_id, order.stage),
                        "event": format!("{}.order.updated", order.source),
                        "createdAt": now.to_rfc3339(),
                        "data": { "order": order.object(true) },
                    });
                    (body.to_string(), false)
                })
                .collect();
            (acct.spec.clone(), deliveries)
        };
        self.send(&spec, url, deliveries, 4).await;
    }

    async fn send(
        self: &Arc<Self>,
        spec: &GrafterrAccountSpec,
        url: &str,
        deliveries: Vec<(String, bool)>,
        concurrency: usize,
    ) {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
        {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "sandbox: cannot build the delivery client");
                return;
            }
        };
        let url = url.trim_end_matches('/');
        let sends = deliveries.into_iter().map(|(body, forged)| {
            let (client, sim, spec) = (client.clone(), self.clone(), spec.clone());
            async move {
                if forged {
                    // A signing account gets a wrongly signed copy, others a wrong token.
                    let (target, secret) = match &spec.signing_secret {
                        Some(_) => (
                            format!("{url}/{}", spec.path_token),
                            Some("not-the-secret".to_owned()),
                        ),
                        None => (format!("{url}/not-the-path-token-at-all"), None),
                    };
                    let status = post_delivery(&client, &target, secret.as_deref(), &body).await;
                    sim.record(&spec.name, |s| {
                        s.forged_sent += 1;
                        s.forged_refused += u64::from(status == Some(401));
                    });
                }
                let target = format!("{url}/{}", spec.path_token);
                sim.record(&spec.name, |s| s.deliveries_sent += 1);
                let status = super::delivery::send_with_retries(|| {
                    post_delivery(&client, &target, spec.signing_secret.as_deref(), &body)
                })
                .await;
                if status.is_some_and(|s| (200..300).contains(&s)) {
                    sim.record(&spec.name, |s| s.deliveries_acknowledged += 1);
                }
            }
        });
        futures_util::stream::iter(sends)
            .buffer_unordered(concurrency)
            .collect::<Vec<()>>()
            .await;
    }

    fn record(&self, account: &str, change: impl FnOnce(&mut GrafterrStats)) {
        let mut state = self.lock();
        if let Some(account) = Self::account_mut(&mut state, account) {
            change(&mut account.stats);
        }
    }
}

async fn post_delivery(
    client: &reqwest::Client,
    url: &str,
    secret: Option<&str>,
    body: &str,
) -> Option<u16> {
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_owned());
    if let Some(secret) = secret {
        request = request.header("X-Grafterr-Signature", sign(secret, body.as_bytes()));
    }
    request.send().await.ok().map(|r| r.status().as_u16())
}

pub fn router(sim: Arc<GrafterrSim>) -> Router {
    Router::new()
        .route(&format!("/{STAGE}/auth/token"), post(token))
        .route(&format!("/{STAGE}/orders/{{order_id}}"), get(order))
        .route("/_sandbox/grafterr/{account}/stats", get(stats_route))
        .route("/_sandbox/grafterr/{account}/push", post(push_route))
        .with_state(sim)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "message": message }))).into_response()
}

/// The account whose `x-api-key` this is.
fn by_api_key<'a>(state: &'a mut SimState, headers: &HeaderMap) -> Option<&'a mut AccountState> {
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok())?;
    state.accounts.iter_mut().find(|a| a.spec.api_key == key)
}

async fn token(State(sim): State<Arc<GrafterrSim>>, headers: HeaderMap, body: String) -> Response {
    let mut guard = sim.lock();
    let state = &mut *guard;
    let ttl = state.options.token_ttl_secs;
    state.issued += 1;
    let issued = state.issued;
    let Some(account) = by_api_key(state, &headers) else {
        return error(StatusCode::FORBIDDEN, "Forbidden");
    };
    account.stats.token_requests += 1;
    let credentials: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if credentials["client_id"] != account.spec.client_id
        || credentials["client_secret"] != account.spec.client_secret
    {
        return error(StatusCode::UNAUTHORIZED, "invalid client credentials");
    }
    let token = format!("grafterr-token-{}-{issued}", account.spec.name);
    account
        .tokens
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    Json(json!({ "access_token": token, "token_type": "Bearer", "expires_in": ttl }))
        .into_response()
}

async fn order(
    State(sim): State<Arc<GrafterrSim>>,
    Path(order_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (admission, body) = {
        let mut guard = sim.lock();
        let state = &mut *guard;
        let faults = state.faults.clone();
        let Some(account) = state.accounts.iter_mut().find(|a| {
            headers.get("x-api-key").and_then(|v| v.to_str().ok()) == Some(a.spec.api_key.as_str())
        }) else {
            return error(StatusCode::FORBIDDEN, "Forbidden");
        };
        let admission = account
            .gate
            .admit(&faults, &mut account.stats.traffic, &mut state.rng);
        let bearer = headers
            .get(reqwest::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let valid = bearer
            .and_then(|t| account.tokens.get(t))
            .is_some_and(|expires| *expires > Instant::now());
        if !valid {
            account.stats.tokens_refused += 1;
            return error(StatusCode::UNAUTHORIZED, "Unauthorized");
        }
        account.stats.order_reads += 1;
        let body = account.orders.get(&order_id).map(|o| o.object(true));
        (admission, body)
    };
    match admission {
        Admission::RateLimited { .. } => error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests"),
        Admission::ServerError => error(StatusCode::GATEWAY_TIMEOUT, "Endpoint request timed out"),
        Admission::Served { slow, truncate } => {
            if let Some(delay) = slow {
                tokio::time::sleep(delay).await;
            }
            let Some(body) = body else {
                return error(StatusCode::NOT_FOUND, "order not found");
            };
            let mut bytes = serde_json::to_vec(&json!({ "order": body })).unwrap_or_default();
            if truncate {
                bytes.truncate(bytes.len() / 2);
            }
            ([(reqwest::header::CONTENT_TYPE, "application/json")], bytes).into_response()
        }
    }
}

/// `{ "url": "http://…/webhooks/grafterr/NAME", …PushPlan }`: pushes every order's history in
/// the background; answers 202 at once.
#[derive(Deserialize)]
struct PushRequest {
    url: String,
    #[serde(flatten)]
    plan: PushPlan,
}

async fn push_route(
    State(sim): State<Arc<GrafterrSim>>,
    Path(account): Path<String>,
    Json(request): Json<PushRequest>,
) -> Response {
    if sim.stats(&account).is_none() {
        return error(StatusCode::NOT_FOUND, "no such account");
    }
    tokio::spawn(async move { sim.push(&account, &request.url, &request.plan).await });
    StatusCode::ACCEPTED.into_response()
}

async fn stats_route(State(sim): State<Arc<GrafterrSim>>, Path(account): Path<String>) -> Response {
    match sim.stats(&account) {
        Some(stats) => Json(stats).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such account"),
    }
}
