//! A simulated Lagerkoll under `/lagerkoll/v1/`: the stores, feature and webhooks resources
//! with the documented error body (`errorCode`, `errorMessage`, …), the 200-per-minute limit
//! counted over a sliding minute (429 with `Retry-After` and code 900429), revoked credentials
//! (900001) and a deactivated API feature (902123) on demand, and deliveries to registered
//! URLs: once when a webhook is executed, and whenever a feature method fires.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The path the simulated API lives under (an account's `base_url` is `<sandbox>/lagerkoll/v1/`).
pub const BASE_PATH: &str = "lagerkoll/v1";

/// One simulated store and its credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LagerkollStoreSpec {
    /// The account's name in ordersync's config.
    pub name: String,
    pub store_id: i64,
    pub store_group_id: i64,
    pub api_key: String,
    pub path_token: String,
    /// Installed features (their ids).
    pub features: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LagerkollOptions {
    /// Requests per store allowed within any 60 seconds.
    pub limit_per_minute: usize,
    /// `Retry-After` seconds with a 429.
    pub retry_after_secs: u64,
}

impl Default for LagerkollOptions {
    fn default() -> Self {
        LagerkollOptions {
            limit_per_minute: 200,
            retry_after_secs: 2,
        }
    }
}

/// What one store's API saw.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct LagerkollStats {
    pub requests: u64,
    /// 429s because a request went over the limit.
    pub over_limit: u64,
    /// 429s sent because a test asked for them.
    pub forced_rate_limited: u64,
    /// The most requests seen within any 60 seconds.
    pub max_per_minute: u64,
    /// After each 429, how long until the store's next request (ms); the shortest.
    pub shortest_wait_after_429_ms: Option<u64>,
    pub creates: u64,
    pub deletes: u64,
    pub executes: u64,
    pub deliveries_sent: u64,
    pub deliveries_acknowledged: u64,
    /// Deliveries answered 401 (e.g. for a webhook ordersync did not register).
    pub deliveries_refused: u64,
}

/// A registered webhook as the simulated Lagerkoll keeps it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SimWebhook {
    pub id: i64,
    pub guid: String,
    pub feature_id: String,
    pub feature_method: String,
    pub url: String,
    pub store_id: i64,
    pub group_wide: bool,
}

impl SimWebhook {
    fn object(&self) -> Value {
        json!({ "id": self.id, "guid": self.guid, "featureId": self.feature_id,
                "featureMethod": self.feature_method, "url": self.url })
    }
}

struct StoreState {
    spec: LagerkollStoreSpec,
    recent: VecDeque<Instant>,
    last_429: Option<Instant>,
    force_429: u64,
    revoked: bool,
    api_feature_off: bool,
    /// Ignore the `url` of creates (as the docs' "read-only" would).
    ignore_urls: bool,
    stats: LagerkollStats,
}

struct SimState {
    stores: Vec<StoreState>,
    webhooks: Vec<SimWebhook>,
    options: LagerkollOptions,
    next_id: i64,
}

pub struct LagerkollSim {
    state: Mutex<SimState>,
    client: reqwest::Client,
}

/// `sthlm-1`… with store ids 9875…, one store group, features `orders-feature` and `stock`.
pub fn store_specs(stores: usize) -> Vec<LagerkollStoreSpec> {
    (1..=stores)
        .map(|i| LagerkollStoreSpec {
            name: format!("sthlm-{i}"),
            store_id: 9874 + i as i64,
            store_group_id: 522,
            api_key: format!("lagerkoll-api-key-{i}"),
            path_token: format!("lagerkoll-path-token-{i:04}"),
            features: vec!["orders-feature".into(), "stock".into()],
        })
        .collect()
}

impl LagerkollSim {
    pub fn new(specs: &[LagerkollStoreSpec], options: LagerkollOptions) -> Self {
        LagerkollSim {
            state: Mutex::new(SimState {
                stores: specs
                    .iter()
                    .map(|spec| StoreState {
                        spec: spec.clone(),
                        recent: VecDeque::new(),
                        last_429: None,
                        force_429: 0,
                        revoked: false,
                        api_feature_off: false,
                        ignore_urls: false,
                        stats: LagerkollStats::default(),
                    })
                    .collect(),
                webhooks: Vec::new(),
                options,
                next_id: 6586,
            }),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_store<T>(&self, name: &str, change: impl FnOnce(&mut StoreState) -> T) -> Option<T> {
        self.lock()
            .stores
            .iter_mut()
            .find(|s| s.spec.name == name)
            .map(change)
    }

    pub fn stats(&self, store: &str) -> Option<LagerkollStats> {
        self.with_store(store, |s| s.stats.clone())
    }

    /// Answers the store's next `count` requests 429 (code 900429, `Retry-After`).
    pub fn force_rate_limited(&self, store: &str, count: u64) {
        self.with_store(store, |s| s.force_429 = count);
    }

    /// Revokes the store's api_key: every call is answered 900001.
    pub fn revoke(&self, store: &str) {
        self.with_store(store, |s| s.revoked = true);
    }

    /// Deactivates the API feature: every call is answered 902123.
    pub fn deactivate_api(&self, store: &str) {
        self.with_store(store, |s| s.api_feature_off = true);
    }

    /// Creates keep their own URL instead of the one sent.
    pub fn ignore_urls(&self, store: &str) {
        self.with_store(store, |s| s.ignore_urls = true);
    }

    /// The store's webhooks (its own and group-wide ones of its group).
    pub fn webhooks(&self, store: &str) -> Vec<SimWebhook> {
        let state = self.lock();
        let Some(spec) = state.stores.iter().find(|s| s.spec.name == store) else {
            return Vec::new();
        };
        state
            .webhooks
            .iter()
            .filter(|w| w.store_id == spec.spec.store_id)
            .cloned()
            .collect()
    }

    /// Registers a webhook as someone else would (not through ordersync).
    pub fn add_webhook(
        &self,
        store: &str,
        feature_id: &str,
        method: &str,
        url: &str,
    ) -> SimWebhook {
        let mut state = self.lock();
        let store_id = state
            .stores
            .iter()
            .find(|s| s.spec.name == store)
            .map_or(0, |s| s.spec.store_id);
        let webhook = new_webhook(&mut state, store_id, feature_id, method, url, false);
        state.webhooks.push(webhook.clone());
        webhook
    }

    /// Fires `method` of the store's feature: every webhook registered for it gets `data`.
    /// Returns how many deliveries were acknowledged.
    pub async fn fire(&self, store: &str, feature_id: &str, method: &str, data: Value) -> usize {
        let targets: Vec<(SimWebhook, i64)> = {
            let state = self.lock();
            let Some(spec) = state.stores.iter().find(|s| s.spec.name == store) else {
                return 0;
            };
            let spec = spec.spec.clone();
            state
                .webhooks
                .iter()
                .filter(|w| w.feature_id == feature_id && w.feature_method == method)
                .filter(|w| w.store_id == spec.store_id)
                .map(|w| (w.clone(), spec.store_id))
                .collect()
        };
        let mut acknowledged = 0;
        for (webhook, store_id) in targets {
            acknowledged +=
                usize::from(self.deliver(store, &webhook, store_id, data.clone()).await);
        }
        acknowledged
    }

    /// Sends one delivery; true when it was acknowledged.
    async fn deliver(&self, store: &str, webhook: &SimWebhook, store_id: i64, data: Value) -> bool {
        let body = json!({
            "guid": webhook.guid, "featureId": webhook.feature_id,
            "featureMethod": webhook.feature_method, "store": store_id,
            "timestamp": Utc::now().to_rfc3339(), "data": data,
        });
        self.with_store(store, |s| s.stats.deliveries_sent += 1);
        // Sent again without an answer or with a 5xx, as senders do (see `super::delivery`).
        let status = super::delivery::send_with_retries(|| async {
            self.client
                .post(&webhook.url)
                .json(&body)
                .send()
                .await
                .ok()
                .map(|r| r.status().as_u16())
        })
        .await;
        self.with_store(store, |s| match status {
            Some(200..=299) => s.stats.deliveries_acknowledged += 1,
            Some(401) => s.stats.deliveries_refused += 1,
            _ => {}
        });
        status.is_some_and(|s| (200..300).contains(&s))
    }

    /// Fires a batch of order deliveries, `concurrency` at a time.
    pub async fn fire_orders(
        self: &Arc<Self>,
        store: &str,
        feature_id: &str,
        method: &str,
        orders: Vec<Value>,
        concurrency: usize,
    ) {
        let sends = orders.into_iter().map(|order| {
            let sim = self.clone();
            async move {
                sim.fire(store, feature_id, method, order).await;
            }
        });
        futures_util::stream::iter(sends)
            .buffer_unordered(concurrency.max(1))
            .collect::<Vec<()>>()
            .await;
    }
}

fn new_webhook(
    state: &mut SimState,
    store_id: i64,
    feature_id: &str,
    method: &str,
    url: &str,
    group_wide: bool,
) -> SimWebhook {
    state.next_id += 1;
    let id = state.next_id;
    SimWebhook {
        id,
        guid: format!(
            "{:08x}-lk-{id}",
            id.wrapping_mul(2_654_435_761) & 0xffff_ffff
        ),
        feature_id: feature_id.to_owned(),
        feature_method: method.to_owned(),
        url: url.to_owned(),
        store_id,
        group_wide,
    }
}

pub fn router(sim: Arc<LagerkollSim>) -> Router {
    Router::new()
        .route(&format!("/{BASE_PATH}/stores/"), get(stores))
        .route(&format!("/{BASE_PATH}/feature/"), get(features))
        .route(&format!("/{BASE_PATH}/webhooks/"), post(create))
        .route(
            &format!("/{BASE_PATH}/webhooks/{{id}}"),
            get(list).post(execute).delete(delete),
        )
        .route("/_sandbox/lagerkoll/{store}/stats", get(stats_route))
        .route("/_sandbox/lagerkoll/{store}/fire", post(fire_route))
        .with_state(sim)
}

fn error(status: StatusCode, code: i64, message: &str, field: Option<&str>) -> Response {
    (
        status,
        Json(json!({ "errorCode": code, "errorMessage": message, "errorField": field, "errorData": null })),
    )
        .into_response()
}

/// Admits one request of the store its headers name: the store's index, or the answer.
fn admit(state: &mut SimState, headers: &HeaderMap) -> Result<usize, Box<Response>> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let store_id: Option<i64> = header("store").and_then(|v| v.parse().ok());
    let key = header("api_key");
    let Some(index) = state
        .stores
        .iter()
        .position(|s| Some(s.spec.store_id) == store_id && Some(s.spec.api_key.as_str()) == key)
    else {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            900001,
            "Credentials don't match",
            None,
        )));
    };
    let limit = state.options.limit_per_minute;
    let retry_after = state.options.retry_after_secs;
    let store = &mut state.stores[index];
    let now = Instant::now();
    if let Some(at) = store.last_429.take() {
        let waited = now.duration_since(at).as_millis() as u64;
        store.stats.shortest_wait_after_429_ms = Some(
            store
                .stats
                .shortest_wait_after_429_ms
                .map_or(waited, |w| w.min(waited)),
        );
    }
    while store
        .recent
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
    {
        store.recent.pop_front();
    }
    store.recent.push_back(now);
    store.stats.requests += 1;
    store.stats.max_per_minute = store.stats.max_per_minute.max(store.recent.len() as u64);
    let rate_limited = || {
        (
            StatusCode::TOO_MANY_REQUESTS,
            [(reqwest::header::RETRY_AFTER, retry_after.to_string())],
            Json(json!({ "errorCode": 900429, "errorMessage": "Too many requests", "errorField": null, "errorData": null })),
        )
            .into_response()
    };
    if store.force_429 > 0 {
        store.force_429 -= 1;
        store.stats.forced_rate_limited += 1;
        store.last_429 = Some(now);
        return Err(Box::new(rate_limited()));
    }
    if store.recent.len() > limit {
        store.stats.over_limit += 1;
        store.last_429 = Some(now);
        return Err(Box::new(rate_limited()));
    }
    if store.revoked {
        return Err(Box::new(error(
            StatusCode::UNAUTHORIZED,
            900001,
            "Credentials don't match",
            None,
        )));
    }
    if store.api_feature_off {
        return Err(Box::new(error(
            StatusCode::FORBIDDEN,
            902123,
            "API feature has not been activated",
            None,
        )));
    }
    Ok(index)
}

async fn stores(State(sim): State<Arc<LagerkollSim>>, headers: HeaderMap) -> Response {
    let mut state = sim.lock();
    let index = match admit(&mut state, &headers) {
        Ok(index) => index,
        Err(answer) => return *answer,
    };
    let spec = &state.stores[index].spec;
    Json(json!({
        "orgName": "Sandbox AB", "orgNumber": "556000-0000",
        "stores": [{ "storeId": spec.store_id, "storeGroupId": spec.store_group_id, "isMaster": true,
                     "name": spec.name, "articleSuffix": "", "currency": "SEK", "language": "sv" }]
    }))
    .into_response()
}

async fn features(State(sim): State<Arc<LagerkollSim>>, headers: HeaderMap) -> Response {
    let mut state = sim.lock();
    let index = match admit(&mut state, &headers) {
        Ok(index) => index,
        Err(answer) => return *answer,
    };
    let list: Vec<Value> = state.stores[index]
        .spec
        .features
        .iter()
        .map(|f| json!({ "id": f, "server": true, "roles": [], "version": "1.0" }))
        .collect();
    Json(json!({ "features": list })).into_response()
}

async fn list(
    State(sim): State<Arc<LagerkollSim>>,
    Path(feature_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut state = sim.lock();
    let index = match admit(&mut state, &headers) {
        Ok(index) => index,
        Err(answer) => return *answer,
    };
    let spec = state.stores[index].spec.clone();
    if !spec.features.contains(&feature_id) {
        return error(
            StatusCode::BAD_REQUEST,
            902125,
            "Feature not installed",
            Some("featureId"),
        );
    }
    let webhooks: Vec<Value> = state
        .webhooks
        .iter()
        .filter(|w| w.feature_id == feature_id && w.store_id == spec.store_id)
        .map(SimWebhook::object)
        .collect();
    Json(json!({ "webhooks": webhooks })).into_response()
}

#[derive(Deserialize)]
struct CreateQuery {
    #[serde(default)]
    enable_for_group: Option<bool>,
}

async fn create(
    State(sim): State<Arc<LagerkollSim>>,
    Query(query): Query<CreateQuery>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let mut state = sim.lock();
    let index = match admit(&mut state, &headers) {
        Ok(index) => index,
        Err(answer) => return *answer,
    };
    let Ok(request) = serde_json::from_str::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            902101,
            "Error when creating webhook",
            None,
        );
    };
    let field = |name: &str| request.get(name).and_then(Value::as_str).map(str::to_owned);
    let (Some(feature_id), Some(method)) = (field("featureId"), field("featureMethod")) else {
        return error(
            StatusCode::BAD_REQUEST,
            902101,
            "featureId and featureMethod are required",
            Some("featureId"),
        );
    };
    let store = &state.stores[index];
    if !store.spec.features.contains(&feature_id) {
        return error(
            StatusCode::BAD_REQUEST,
            902125,
            "Feature not installed",
            Some("featureId"),
        );
    }
    let url = if store.ignore_urls {
        "https://feature-server.lagerkoll.example/hook".to_owned()
    } else {
        field("url").unwrap_or_default()
    };
    let store_id = store.spec.store_id;
    state.stores[index].stats.creates += 1;
    let webhook = new_webhook(
        &mut state,
        store_id,
        &feature_id,
        &method,
        &url,
        query.enable_for_group.unwrap_or(false),
    );
    state.webhooks.push(webhook.clone());
    Json(webhook.object()).into_response()
}

async fn execute(
    State(sim): State<Arc<LagerkollSim>>,
    Path(guid): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (store, webhook) = {
        let mut state = sim.lock();
        let index = match admit(&mut state, &headers) {
            Ok(index) => index,
            Err(answer) => return *answer,
        };
        let store_id = state.stores[index].spec.store_id;
        let Some(webhook) = state
            .webhooks
            .iter()
            .find(|w| w.guid == guid && w.store_id == store_id)
            .cloned()
        else {
            return error(
                StatusCode::NOT_FOUND,
                902101,
                "Error when getting webhook",
                Some("guid"),
            );
        };
        state.stores[index].stats.executes += 1;
        (state.stores[index].spec.name.clone(), webhook)
    };
    let store_id = webhook.store_id;
    sim.deliver(&store, &webhook, store_id, json!({})).await;
    StatusCode::NO_CONTENT.into_response()
}

async fn delete(
    State(sim): State<Arc<LagerkollSim>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let mut state = sim.lock();
    let index = match admit(&mut state, &headers) {
        Ok(index) => index,
        Err(answer) => return *answer,
    };
    let store_id = state.stores[index].spec.store_id;
    let Ok(id) = id.parse::<i64>() else {
        return error(
            StatusCode::BAD_REQUEST,
            902101,
            "Error when getting webhook",
            Some("id"),
        );
    };
    let before = state.webhooks.len();
    state
        .webhooks
        .retain(|w| !(w.id == id && w.store_id == store_id));
    if state.webhooks.len() == before {
        return error(
            StatusCode::NOT_FOUND,
            902101,
            "Error when getting webhook",
            Some("id"),
        );
    }
    state.stores[index].stats.deletes += 1;
    StatusCode::NO_CONTENT.into_response()
}

/// `{ "feature_id": …, "feature_method": …, "data": {…} }`: fires it at every webhook
/// registered for it; answers how many acknowledged.
#[derive(Deserialize)]
struct FireRequest {
    feature_id: String,
    feature_method: String,
    #[serde(default)]
    data: Value,
}

async fn fire_route(
    State(sim): State<Arc<LagerkollSim>>,
    Path(store): Path<String>,
    Json(request): Json<FireRequest>,
) -> Response {
    if sim.stats(&store).is_none() {
        return error(StatusCode::NOT_FOUND, 0, "no such store", None);
    }
    let acknowledged = sim
        .fire(
            &store,
            &request.feature_id,
            &request.feature_method,
            request.data,
        )
        .await;
    Json(json!({ "acknowledged": acknowledged })).into_response()
}

async fn stats_route(State(sim): State<Arc<LagerkollSim>>, Path(store): Path<String>) -> Response {
    match sim.stats(&store) {
        Some(stats) => Json(stats).into_response(),
        None => error(StatusCode::NOT_FOUND, 0, "no such store", None),
    }
}
