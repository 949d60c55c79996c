//! A simulated Get It Done: the token endpoint (short-lived tokens), per-order poll, commands
//! (applied, answered 202, their outcome pushed as events and kept for the command-status
//! poll), the optional event feed, and webhook delivery to a URL with the contract's signature,
//! with deliveries dropped, repeated, reordered and now and then badly signed. Every `/v3`
//! request passes the shared fault admission (429, 5xx, slow, truncated).

use super::faults::{Admission, FaultGate, TrafficStats};
use super::{Faults, Mutations};
use crate::providers::getitdone::signature;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// An order's life, in order; `on hold` and `cancelled` are reached by commands.
const LIFECYCLE: [&str; 9] = [
    "waiting for onboarding",
    "approval pending",
    "processing",
    "open",
    "accepted",
    "appointment confirmed",
    "started",
    "finished",
    "completed",
];
pub const TERMINAL: [&str; 2] = ["completed", "cancelled"];
/// A cancellation reason the sandbox refuses with a CommandErrorEvent.
pub const REFUSED_REASON: &str = "not_a_reason";
/// A cancellation reason that puts the order on hold instead of cancelling it.
pub const HOLD_REASON: &str = "installer_unavailable";

/// One simulated Get It Done account.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetItDoneAccountSpec {
    /// The account's name in ordersync's config (the webhook path's last segment).
    pub name: String,
    pub client_id: String,
    pub client_secret: String,
    pub webhook_secret: String,
    pub orders: usize,
    /// Where deliveries go; none until set (`GidSim::set_webhook_url`).
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// How deliveries misbehave, each independently.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DeliveryFaults {
    /// Share of events never delivered.
    pub drop_ratio: f64,
    /// Share delivered twice.
    pub duplicate_ratio: f64,
    /// Share held back and delivered after the next one.
    pub reorder_ratio: f64,
    /// Share preceded by a copy with a wrong signature (which must be refused).
    pub bad_signature_ratio: f64,
    /// Share of commands applied but answered 503 (the answer is lost).
    pub lost_command_answer_ratio: f64,
    /// Send no command outcome events (outcomes only through the command-status poll).
    pub no_command_events: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetItDoneOptions {
    pub token_ttl_secs: u64,
    pub deliveries: DeliveryFaults,
    /// How many times a refused or failed delivery is tried, a second apart.
    pub delivery_attempts: u32,
}

impl Default for GetItDoneOptions {
    fn default() -> Self {
        GetItDoneOptions {
            token_ttl_secs: 3600,
            deliveries: DeliveryFaults::default(),
            delivery_attempts: 5,
        }
    }
}

#[derive(Debug, Clone)]
struct SimOrder {
    order_id: String,
    order_number: String,
    status: String,
    stage: usize,
    external_id: Option<String>,
    invoicing_external_id: Option<String>,
    appointment: Option<String>,
}

impl SimOrder {
    fn snapshot(&self, event_id: &str, version: &str) -> Value {
        json!({
            "_eid": event_id, "_type": "OrderStatusEvent", "_v": version,
            "orderId": self.order_id, "orderNumber": self.order_number,
            "externalId": self.external_id, "invoicingExternalId": self.invoicing_external_id,
            "status": self.status, "orderType": "installation",
            "customer": { "firstName": "Kim", "lastName": "Example" },
            "shippingAddress": { "city": "Berlin", "country": "DE" },
            "products": [{ "sku": "WALLBOX-11", "name": "Wallbox 11 kW", "quantity": 1 }],
            "appointmentStart": self.appointment,
            "projectId": "P-1", "projectName": "Sandbox"
        })
    }
}

/// What one account's API saw.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct GetItDoneStats {
    #[serde(flatten)]
    pub traffic: TrafficStats,
    pub tokens_issued: u64,
    /// Requests with a missing, unknown or expired token.
    pub unauthorized: u64,
    pub polls: u64,
    pub commands: u64,
    /// Commands whose `_cid` had been applied before: a blind resend.
    pub repeated_commands: u64,
    pub events: u64,
    pub deliveries_acknowledged: u64,
    pub deliveries_dropped: u64,
    pub deliveries_duplicated: u64,
    pub deliveries_reordered: u64,
    pub bad_signatures_sent: u64,
    pub bad_signatures_refused: u64,
    pub deliveries_failed: u64,
}

struct CommandRecord {
    received: Instant,
    /// The outcome event, once there is one.
    outcome: Option<Value>,
}

struct Account {
    spec: GetItDoneAccountSpec,
    orders: BTreeMap<String, SimOrder>,
    tokens: HashMap<String, Instant>,
    commands: HashMap<String, CommandRecord>,
    feed: Vec<Value>,
    outgoing: VecDeque<Value>,
    /// Event ids that got a 2xx from the receiver.
    acknowledged: HashSet<String>,
    /// Orders at least one acknowledged event was about: the ones a receiver can know.
    announced: HashSet<String>,
    stats: GetItDoneStats,
    gate: FaultGate,
    /// When set, `/v3` requests with a token are refused 401 this many more times.
    refuse_tokens: u32,
}

struct State_ {
    accounts: Vec<Account>,
    faults: Faults,
    options: GetItDoneOptions,
    rng: SmallRng,
    next_event: u64,
    next_token: u64,
}

/// The simulated API's state; shared by its routes, its mutations and its delivery tasks.
pub struct GetItDoneSim {
    state: Mutex<State_>,
    outgoing: Notify,
    /// Deliveries taken from the queue and not finished yet.
    sending: std::sync::atomic::AtomicUsize,
    /// The live changes ([`GetItDoneSim::mutate`]) are off while false.
    mutating: std::sync::atomic::AtomicBool,
}

/// What the sandbox holds for one order: what a synced database must end up with.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct GidTruth {
    pub order_id: String,
    pub status: String,
    pub external_id: Option<String>,
}

impl GetItDoneSim {
    pub fn new(
        specs: &[GetItDoneAccountSpec],
        options: GetItDoneOptions,
        faults: Faults,
        seed: u64,
    ) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x6769_6400);
        let accounts = specs
            .iter()
            .map(|spec| {
                let mut orders = BTreeMap::new();
                for n in 0..spec.orders {
                    let order = new_order(&spec.name, n, &mut rng);
                    orders.insert(order.order_id.clone(), order);
                }
                Account {
                    spec: spec.clone(),
                    orders,
                    tokens: HashMap::new(),
                    commands: HashMap::new(),
                    feed: Vec::new(),
                    outgoing: VecDeque::new(),
                    acknowledged: HashSet::new(),
                    announced: HashSet::new(),
                    stats: GetItDoneStats::default(),
                    gate: FaultGate::default(),
                    refuse_tokens: 0,
                }
            })
            .collect();
        GetItDoneSim {
            state: Mutex::new(State_ {
                accounts,
                faults,
                options,
                rng,
                next_event: 0,
                next_token: 0,
            }),
            outgoing: Notify::new(),
            sending: std::sync::atomic::AtomicUsize::new(0),
            mutating: std::sync::atomic::AtomicBool::new(true),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State_> {
        // A panic while holding the lock leaves plain data; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads or changes the named account, if there is one.
    fn with_account<T>(&self, name: &str, visit: impl FnOnce(&mut Account) -> T) -> Option<T> {
        let mut state = self.lock();
        state
            .accounts
            .iter_mut()
            .find(|a| a.spec.name == name)
            .map(visit)
    }

    pub fn set_webhook_url(&self, account: &str, url: &str) {
        self.with_account(account, |a| a.spec.webhook_url = Some(url.to_owned()));
    }

    pub fn set_delivery_faults(&self, faults: DeliveryFaults) {
        self.lock().options.deliveries = faults;
    }

    /// Refuses the next `count` requests that carry a token with 401, valid or not.
    pub fn refuse_tokens(&self, account: &str, count: u32) {
        self.with_account(account, |a| a.refuse_tokens = count);
    }

    pub fn stats(&self, account: &str) -> Option<GetItDoneStats> {
        self.with_account(account, |a| a.stats.clone())
    }

    /// Every order of the account as the sandbox holds it.
    pub fn truth(&self, account: &str) -> Vec<GidTruth> {
        self.with_account(account, |a| {
            a.orders
                .values()
                .map(|o| GidTruth {
                    order_id: o.order_id.clone(),
                    status: o.status.clone(),
                    external_id: o.external_id.clone(),
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// Event ids the receiver acknowledged with a 2xx.
    pub fn acknowledged(&self, account: &str) -> HashSet<String> {
        self.with_account(account, |a| a.acknowledged.clone())
            .unwrap_or_default()
    }

    /// Orders the receiver got at least one event about.
    pub fn announced(&self, account: &str) -> HashSet<String> {
        self.with_account(account, |a| a.announced.clone())
            .unwrap_or_default()
    }

    /// Events waiting to be delivered (or being delivered), over all accounts.
    pub fn undelivered(&self) -> usize {
        let queued: usize = self.lock().accounts.iter().map(|a| a.outgoing.len()).sum();
        queued + self.sending.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Announces every order once (as if each had just been created or changed), so a
    /// receiver learns of them.
    pub fn announce_all(&self) {
        let mut state = self.lock();
        let state = &mut *state;
        for account in &mut state.accounts {
            let ids: Vec<String> = account.orders.keys().cloned().collect();
            for id in ids {
                emit_order(account, &id, &mut state.next_event);
            }
        }
        self.outgoing.notify_waiters();
    }

    /// Stops or resumes the live changes.
    pub fn set_mutating(&self, on: bool) {
        self.mutating.store(on, std::sync::atomic::Ordering::SeqCst);
    }

    /// One tick of a live marketplace: new orders and status changes, each an event.
    pub fn mutate(&self, mutations: &Mutations) {
        if !self.mutating.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        for account in &mut state.accounts {
            for _ in 0..mutations.new_per_tick {
                let n = account.orders.len();
                let order = new_order(&account.spec.name, n, &mut state.rng);
                let id = order.order_id.clone();
                account.orders.insert(id.clone(), order);
                emit_order(account, &id, &mut state.next_event);
            }
            let open: Vec<String> = account
                .orders
                .values()
                .filter(|o| !TERMINAL.contains(&o.status.as_str()))
                .map(|o| o.order_id.clone())
                .collect();
            for _ in 0..mutations.per_tick.min(open.len()) {
                let id = &open[state.rng.random_range(0..open.len())];
                if let Some(order) = account.orders.get_mut(id) {
                    advance(order, &mut state.rng);
                }
                emit_order(account, id, &mut state.next_event);
            }
        }
        drop(guard);
        self.outgoing.notify_waiters();
    }

    /// Delivers queued events of every account to its webhook URL until `stop`.
    pub async fn deliver(self: Arc<Self>, stop: CancellationToken) {
        let client = match reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
        {
            Ok(client) => client,
            Err(error) => {
                tracing::error!(%error, "sandbox: cannot build the delivery client");
                return;
            }
        };
        let mut held: HashMap<usize, Value> = HashMap::new();
        loop {
            let batch = self.take_outgoing(&mut held);
            self.sending
                .fetch_add(batch.len(), std::sync::atomic::Ordering::SeqCst);
            if batch.is_empty() {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.outgoing.notified() => continue,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
            let sends = batch
                .into_iter()
                .map(|(index, url, secret, event, bad, attempts)| {
                    let (client, sim) = (client.clone(), self.clone());
                    async move {
                        let _done = Sending(&sim.sending);
                        if bad {
                            let status = post_event(&client, &url, "wrong-secret", &event).await;
                            sim.record(index, |s| {
                                s.bad_signatures_sent += 1;
                                if status == Some(401) {
                                    s.bad_signatures_refused += 1;
                                }
                            });
                        }
                        for attempt in 0..attempts.max(1) {
                            if attempt > 0 {
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                            let status = post_event(&client, &url, &secret, &event).await;
                            if status.is_some_and(|s| (200..300).contains(&s)) {
                                sim.acknowledge(index, &event);
                                return;
                            }
                        }
                        sim.record(index, |s| s.deliveries_failed += 1);
                    }
                });
            let mut sends = futures_util::stream::iter(sends).buffer_unordered(8);
            use futures_util::StreamExt;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    next = sends.next() => if next.is_none() { break },
                }
            }
        }
    }

    fn record(&self, index: usize, change: impl FnOnce(&mut GetItDoneStats)) {
        if let Some(account) = self.lock().accounts.get_mut(index) {
            change(&mut account.stats);
        }
    }

    fn acknowledge(&self, index: usize, event: &Value) {
        if let Some(account) = self.lock().accounts.get_mut(index) {
            account.stats.deliveries_acknowledged += 1;
            if let Some(id) = event.get("_eid").and_then(Value::as_str) {
                account.acknowledged.insert(id.to_owned());
            }
            if event.get("_type").and_then(Value::as_str) == Some("OrderStatusEvent")
                && let Some(order) = event.get("orderId").and_then(Value::as_str)
            {
                account.announced.insert(order.to_owned());
            }
        }
    }

    /// The next deliveries, with the delivery faults applied: (account, url, secret, event,
    /// send a badly signed copy first, attempts).
    #[allow(clippy::type_complexity)]
    fn take_outgoing(
        &self,
        held: &mut HashMap<usize, Value>,
    ) -> Vec<(usize, String, String, Value, bool, u32)> {
        let mut guard = self.lock();
        let state = &mut *guard;
        let faults = state.options.deliveries.clone();
        let attempts = state.options.delivery_attempts;
        let mut batch = Vec::new();
        for (index, account) in state.accounts.iter_mut().enumerate() {
            let Some(url) = account.spec.webhook_url.clone() else {
                continue;
            };
            let secret = account.spec.webhook_secret.clone();
            while let Some(event) = account.outgoing.pop_front() {
                if state.rng.random_bool(faults.drop_ratio.clamp(0.0, 1.0)) {
                    account.stats.deliveries_dropped += 1;
                    continue;
                }
                if state.rng.random_bool(faults.reorder_ratio.clamp(0.0, 1.0))
                    && !held.contains_key(&index)
                {
                    account.stats.deliveries_reordered += 1;
                    held.insert(index, event);
                    continue;
                }
                let bad = state
                    .rng
                    .random_bool(faults.bad_signature_ratio.clamp(0.0, 1.0));
                let copies = if state
                    .rng
                    .random_bool(faults.duplicate_ratio.clamp(0.0, 1.0))
                {
                    account.stats.deliveries_duplicated += 1;
                    2
                } else {
                    1
                };
                for _ in 0..copies {
                    batch.push((
                        index,
                        url.clone(),
                        secret.clone(),
                        event.clone(),
                        bad,
                        attempts,
                    ));
                }
                if let Some(late) = held.remove(&index) {
                    batch.push((index, url.clone(), secret.clone(), late, false, attempts));
                }
                if batch.len() >= 64 {
                    return batch;
                }
            }
            if let Some(late) = held.remove(&index) {
                batch.push((index, url.clone(), secret.clone(), late, false, attempts));
            }
        }
        batch
    }
}

/// Counts a delivery as finished when dropped, however its send ended.
struct Sending<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn post_event(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    event: &Value,
) -> Option<u16> {
    let body = serde_json::to_vec(event).ok()?;
    let timestamp = chrono::Utc::now().timestamp();
    let response = client
        .post(url)
        .header("content-type", "application/json")
        .header("X-GID-Timestamp", timestamp.to_string())
        .header("X-GID-Signature", signature::sign(secret, timestamp, &body))
        .body(body)
        .send()
        .await
        .ok()?;
    Some(response.status().as_u16())
}

fn new_order(account: &str, n: usize, rng: &mut SmallRng) -> SimOrder {
    let stage = rng.random_range(0..4);
    SimOrder {
        order_id: format!("{account}-job-{n:06}"),
        order_number: format!("O-{:010}", n + 1),
        status: LIFECYCLE[stage].to_owned(),
        stage,
        external_id: None,
        invoicing_external_id: None,
        appointment: None,
    }
}

fn advance(order: &mut SimOrder, rng: &mut SmallRng) {
    if order.status == "on hold" {
        order.status = LIFECYCLE[order.stage].to_owned();
        return;
    }
    if rng.random_bool(0.05) {
        order.status = "on hold".into();
        return;
    }
    order.stage = (order.stage + 1).min(LIFECYCLE.len() - 1);
    order.status = LIFECYCLE[order.stage].to_owned();
    if order.status == "appointment confirmed" {
        let day = rng.random_range(1..28);
        order.appointment = Some(format!("2026-12-{day:02}T09:00:00Z"));
    }
}

/// Queues the order's current state as an OrderStatusEvent (delivery and feed).
fn emit_order(account: &mut Account, order_id: &str, next_event: &mut u64) {
    let Some(order) = account.orders.get(order_id) else {
        return;
    };
    *next_event += 1;
    let event = order.snapshot(&format!("evt-{next_event:08}"), "1.1.0");
    emit(account, event);
}

fn emit(account: &mut Account, event: Value) {
    account.stats.events += 1;
    account.feed.push(event.clone());
    account.outgoing.push_back(event);
}

// ---------------------------------------------------------------------------------------------
// The API.

pub fn router(sim: Arc<GetItDoneSim>) -> Router {
    Router::new()
        .route("/v3/auth/token", post(token))
        .route("/v3/poll/job/{version}/{order_id}", get(poll_order))
        .route("/v3/poll/command/{version}/{command_id}", get(poll_command))
        .route("/v3/commands", post(command))
        .route("/v3/events", get(events))
        .route("/_sandbox/getitdone/{account}/stats", get(stats_route))
        .route(
            "/_sandbox/getitdone/{account}/webhook",
            axum::routing::put(webhook_route),
        )
        .route("/_sandbox/getitdone/announce", post(announce_route))
        .with_state(sim)
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({ "error": { "code": code, "message": message } })),
    )
        .into_response()
}

fn json_body(value: &Value, truncate: bool) -> Response {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    if truncate {
        body.truncate(body.len() / 2);
    }
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[derive(Deserialize)]
struct TokenRequest {
    client_id: String,
    client_secret: String,
}

async fn token(State(sim): State<Arc<GetItDoneSim>>, body: Bytes) -> Response {
    let Ok(request) = serde_json::from_slice::<TokenRequest>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "client_id and client_secret are required",
        );
    };
    let mut guard = sim.lock();
    let state = &mut *guard;
    let Some(account) = state
        .accounts
        .iter_mut()
        .find(|a| a.spec.client_id == request.client_id)
    else {
        return error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    };
    match account
        .gate
        .admit(&state.faults, &mut account.stats.traffic, &mut state.rng)
    {
        Admission::Served { .. } => {}
        refused => return refusal(refused),
    }
    if account.spec.client_secret != request.client_secret {
        account.stats.unauthorized += 1;
        return error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "bad credentials",
        );
    }
    state.next_token += 1;
    let token = format!(
        "gid-token-{}-{:x}",
        state.next_token,
        state.rng.random::<u64>()
    );
    let ttl = state.options.token_ttl_secs;
    account
        .tokens
        .insert(token.clone(), Instant::now() + Duration::from_secs(ttl));
    account.stats.tokens_issued += 1;
    Json(json!({ "access_token": token, "token_type": "Bearer", "expires_in": ttl }))
        .into_response()
}

fn refusal(admission: Admission) -> Response {
    match admission {
        Admission::RateLimited { retry_after_secs } => {
            let mut response = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too Many Requests",
            );
            if let Ok(value) = retry_after_secs.to_string().parse() {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
        _ => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service Unavailable",
        ),
    }
}

/// Checks the bearer token and the faults: the account's index and whether to truncate.
async fn admit(sim: &GetItDoneSim, headers: &HeaderMap) -> Result<(usize, bool), Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (index, slow, truncate) = {
        let mut guard = sim.lock();
        let state = &mut *guard;
        let now = Instant::now();
        let Some(index) = state
            .accounts
            .iter()
            .position(|a| a.tokens.contains_key(token))
        else {
            if let Some(account) = state.accounts.first_mut() {
                account.stats.unauthorized += u64::from(token.starts_with("gid-token-"));
            }
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "unknown token",
            ));
        };
        let account = &mut state.accounts[index];
        let expired = account.tokens.get(token).is_none_or(|until| *until <= now);
        if account.refuse_tokens > 0 || expired {
            account.refuse_tokens = account.refuse_tokens.saturating_sub(1);
            account.stats.unauthorized += 1;
            return Err(error(
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                "token expired or revoked",
            ));
        }
        match account
            .gate
            .admit(&state.faults, &mut account.stats.traffic, &mut state.rng)
        {
            Admission::Served { slow, truncate } => (index, slow, truncate),
            refused => return Err(refusal(refused)),
        }
    };
    if let Some(delay) = slow {
        tokio::time::sleep(delay).await;
    }
    Ok((index, truncate))
}

async fn poll_order(
    State(sim): State<Arc<GetItDoneSim>>,
    Path((version, order_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (index, truncate) = match admit(&sim, &headers).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let mut state = sim.lock();
    let account = &mut state.accounts[index];
    account.stats.polls += 1;
    let version = if version == "*" {
        "1.1.0".to_owned()
    } else {
        version
    };
    match account.orders.get(&order_id) {
        Some(order) => json_body(&order.snapshot("polled", &version), truncate),
        None => error(StatusCode::NOT_FOUND, "not_found", "no such order"),
    }
}

async fn poll_command(
    State(sim): State<Arc<GetItDoneSim>>,
    Path((_version, command_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let (index, truncate) = match admit(&sim, &headers).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let state = sim.lock();
    match state.accounts[index].commands.get(&command_id) {
        Some(record) if record.received.elapsed() > Duration::from_secs(24 * 3600) => {
            error(StatusCode::NOT_FOUND, "not_found", "unknown command")
        }
        Some(CommandRecord {
            outcome: Some(event),
            ..
        }) => json_body(event, truncate),
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", "unknown command"),
    }
}

async fn command(
    State(sim): State<Arc<GetItDoneSim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (index, _) = match admit(&sim, &headers).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let Ok(command) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid_command", "not JSON");
    };
    let text = |key: &str| command.get(key).and_then(Value::as_str).map(str::to_owned);
    let (Some(cid), Some(kind), Some(order_id)) = (text("_cid"), text("_type"), text("orderId"))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_command",
            "_cid, _type and orderId are required",
        );
    };
    let meta_ok = command
        .get("_meta")
        .and_then(Value::as_object)
        .is_none_or(|meta| meta.keys().all(|k| k.starts_with("ext-")));
    if !meta_ok {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_command",
            "_meta keys must start with ext-",
        );
    }
    let mut guard = sim.lock();
    let state = &mut *guard;
    let lose_answer = state.rng.random_bool(
        state
            .options
            .deliveries
            .lost_command_answer_ratio
            .clamp(0.0, 1.0),
    );
    let push_outcome = !state.options.deliveries.no_command_events;
    let account = &mut state.accounts[index];
    account.stats.commands += 1;
    if account.commands.contains_key(&cid) {
        account.stats.repeated_commands += 1;
    }
    let result = apply(account, &kind, &order_id, &command);
    state.next_event += 1;
    let event_id = format!("evt-{:08}", state.next_event);
    let outcome = match result {
        Ok(changed) => {
            if changed {
                state.next_event += 1;
                emit_order(account, &order_id, &mut state.next_event);
            }
            json!({ "_eid": event_id, "_type": "CommandResultEvent", "_v": "1.1.0", "_cid": cid,
                    "orderId": order_id, "result": { "applied": kind } })
        }
        Err((code, message)) => json!({
            "_eid": event_id, "_type": "CommandErrorEvent", "_v": "1.1.0", "_cid": cid,
            "orderId": order_id, "code": code, "message": message
        }),
    };
    account.commands.insert(
        cid.clone(),
        CommandRecord {
            received: Instant::now(),
            outcome: Some(outcome.clone()),
        },
    );
    if push_outcome {
        emit(account, outcome);
    }
    drop(guard);
    sim.outgoing.notify_waiters();
    if lose_answer {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "answer lost",
        );
    }
    (StatusCode::ACCEPTED, Json(json!({ "_cid": cid }))).into_response()
}

/// Applies a command; `Ok(true)` when the order changed, `Err((code, message))` when refused.
fn apply(
    account: &mut Account,
    kind: &str,
    order_id: &str,
    command: &Value,
) -> Result<bool, (String, String)> {
    let refuse = |code: &str, message: &str| Err((code.to_owned(), message.to_owned()));
    let Some(order) = account.orders.get_mut(order_id) else {
        return refuse("ORDER_NOT_FOUND", "no such order");
    };
    let field = |key: &str| command.get(key).and_then(Value::as_str).map(str::to_owned);
    match kind {
        "ApplyCancellation" => {
            let Some(reason) = field("cancellationReason") else {
                return refuse("INVALID_COMMAND", "cancellationReason is required");
            };
            if reason == REFUSED_REASON {
                return refuse("INVALID_CANCELLATION_REASON", "unknown cancellation reason");
            }
            if TERMINAL.contains(&order.status.as_str()) {
                return refuse("ORDER_FINAL", "the order is final");
            }
            order.status = if reason == HOLD_REASON {
                "on hold"
            } else {
                "cancelled"
            }
            .into();
            Ok(true)
        }
        "UpdateOrderExternalId" | "UpdateOrderInvoicingExternalId" => {
            let key = if kind == "UpdateOrderExternalId" {
                "externalId"
            } else {
                "invoicingExternalId"
            };
            let Some(id) = field(key) else {
                return refuse("INVALID_COMMAND", &format!("{key} is required"));
            };
            let slot = if kind == "UpdateOrderExternalId" {
                &mut order.external_id
            } else {
                &mut order.invoicing_external_id
            };
            // Appends, as documented: a repeat attaches the id twice.
            *slot = Some(match slot.take() {
                Some(existing) => format!("{existing},{id}"),
                None => id,
            });
            Ok(true)
        }
        "RefreshOrder" => Ok(true),
        other => refuse("UNKNOWN_COMMAND", &format!("unknown command {other}")),
    }
}

#[derive(Deserialize)]
struct FeedQuery {
    after: Option<String>,
    limit: Option<usize>,
}

async fn events(
    State(sim): State<Arc<GetItDoneSim>>,
    headers: HeaderMap,
    Query(query): Query<FeedQuery>,
) -> Response {
    let (index, truncate) = match admit(&sim, &headers).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let state = sim.lock();
    let feed = &state.accounts[index].feed;
    let start = query
        .after
        .and_then(|a| a.parse::<usize>().ok())
        .unwrap_or(0)
        .min(feed.len());
    let end = (start + query.limit.unwrap_or(100).clamp(1, 500)).min(feed.len());
    json_body(
        &json!({ "events": feed[start..end], "next_cursor": end.to_string() }),
        truncate,
    )
}

async fn stats_route(
    State(sim): State<Arc<GetItDoneSim>>,
    Path(account): Path<String>,
) -> Response {
    match sim.stats(&account) {
        Some(stats) => Json(stats).into_response(),
        None => error(StatusCode::NOT_FOUND, "not_found", "no such account"),
    }
}

#[derive(Deserialize)]
struct WebhookTarget {
    url: String,
}

/// `PUT {"url": "…"}`: where the account's deliveries go (the sandbox's stand-in for the
/// webhook registration).
async fn webhook_route(
    State(sim): State<Arc<GetItDoneSim>>,
    Path(account): Path<String>,
    Json(target): Json<WebhookTarget>,
) -> Response {
    if sim.stats(&account).is_none() {
        return error(StatusCode::NOT_FOUND, "not_found", "no such account");
    }
    sim.set_webhook_url(&account, &target.url);
    StatusCode::NO_CONTENT.into_response()
}

/// Sends an OrderStatusEvent for every order of every account.
async fn announce_route(State(sim): State<Arc<GetItDoneSim>>) -> Response {
    sim.announce_all();
    StatusCode::ACCEPTED.into_response()
}
