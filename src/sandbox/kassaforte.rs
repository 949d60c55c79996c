//! A simulated KassaForte: shops behind HTTP Basic, their infos (whose refresh values move when
//! the sandbox changes a shop's menu, hours or delivery costs), the three documents, order
//! validation answering `201` or any documented `409` (the two malformed messages included),
//! order status progression, discount codes, coupons, and faults: 5xx, slow and truncated
//! answers, and a hang after an order was created (the client times out, the order exists).

use super::Faults;
use super::faults::{Admission, FaultGate, TrafficStats};
use crate::providers::money::{decimal_to_minor, minor_to_decimal};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// One simulated shop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KassaForteShopSpec {
    pub name: String,
    pub username: String,
    pub password: String,
}

/// The sandbox's shops `kf-1…` with usernames `kf-user-1…` and passwords `kf-pass-1!…`.
pub fn shop_specs(count: usize) -> Vec<KassaForteShopSpec> {
    (1..=count)
        .map(|i| KassaForteShopSpec {
            name: format!("kf-{i}"),
            username: format!("kf-user-{i}"),
            // Symbols, as real credentials have.
            password: format!("kf-pass-{i}!%:#"),
        })
        .collect()
}

/// What one shop's API saw.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct KassaForteStats {
    pub traffic: TrafficStats,
    pub infos: u64,
    pub menu: u64,
    pub openhours: u64,
    pub deliverycosts: u64,
    /// `POST /v1/order` requests, and the orders they created.
    pub submissions: u64,
    pub orders_created: u64,
    pub conflicts: u64,
    pub status_polls: u64,
    pub unauthorized: u64,
}

/// An order the sandbox holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SimOrder {
    pub order_id: String,
    pub status: String,
    pub delivery_type: String,
    pub reference: Option<String>,
    pub sum_minor: i64,
    pub polls: u32,
}

struct Product {
    category: u32,
    /// Price in minor units per size id.
    prices: BTreeMap<u32, i64>,
}

struct Shop {
    spec: KassaForteShopSpec,
    products: BTreeMap<String, Product>,
    /// Menu bundles: price in minor units and how many items they hold.
    menus: BTreeMap<String, (i64, usize)>,
    open_hours: Value,
    /// Zip definitions: id → (minimum, costs, free from; -1 = always charge), all minor units.
    zips: BTreeMap<i64, (i64, i64, i64)>,
    delivery_costs_null: bool,
    versions: [u32; 3],
    delivery_open: bool,
    pickup_open: bool,
    connection_ok: bool,
    /// Serve infos with a field of the wrong type (what a changed schema would look like).
    garbled_infos: bool,
    unavailable: Vec<String>,
    orders: BTreeMap<String, SimOrder>,
    forced_conflicts: VecDeque<u16>,
    /// Creations to answer only after this long (the order exists before the answer).
    hang_after_create: VecDeque<Duration>,
    refuse_auth: bool,
    gate: FaultGate,
    stats: KassaForteStats,
}

/// The sandbox's open hours for every shop: open all day, every day (and on holidays).
pub fn always_open() -> Value {
    let day = json!([{ "start": "00:00", "end": "24:00" }]);
    json!({ "openingtimes": vec![day; 8], "acceptStart": 0, "acceptEnd": 0 })
}

impl Shop {
    fn new(spec: &KassaForteShopSpec) -> Shop {
        let mut products = BTreeMap::new();
        for n in 0..10u32 {
            let base = 650 + i64::from(n) * 75;
            products.insert(
                format!("{}", 1201 + n),
                Product {
                    category: 1 + n % 3,
                    prices: BTreeMap::from([(1, base), (2, base + 250)]),
                },
            );
        }
        Shop {
            spec: spec.clone(),
            products,
            menus: BTreeMap::from([("M10".to_owned(), (1200, 2))]),
            open_hours: always_open(),
            zips: BTreeMap::from([(12, (1500, 250, 4000)), (-1, (2000, 400, -1))]),
            delivery_costs_null: false,
            versions: [1, 1, 1],
            delivery_open: true,
            pickup_open: true,
            connection_ok: true,
            garbled_infos: false,
            unavailable: Vec::new(),
            orders: BTreeMap::new(),
            forced_conflicts: VecDeque::new(),
            hang_after_create: VecDeque::new(),
            refuse_auth: false,
            gate: FaultGate::default(),
            stats: KassaForteStats::default(),
        }
    }

    fn refresh(&self, which: usize) -> String {
        // Opaque to clients; a date-like text as the docs show, moved by the version.
        format!(
            "2026-01-01 00:00:{:02}.{}",
            self.versions[which] % 60,
            self.versions[which]
        )
    }

    fn infos(&self) -> Value {
        json!({
            "lastMenuRefresh": self.refresh(0),
            "lastOpenTimesRefresh": self.refresh(1),
            "lastDeliveryCostRefresh": self.refresh(2),
            "connectionStatus": if self.garbled_infos { json!("maybe") } else { json!(self.connection_ok) },
            "shopOpenStatus": { "delivery": self.delivery_open, "pickup": self.pickup_open },
            "waitingTimes": { "delivery": 45, "pickup": 20 },
            "unavailableProducts": self.unavailable,
        })
    }

    fn menu(&self) -> Value {
        let products: Vec<Value> = self
            .products
            .iter()
            .map(|(no, p)| {
                let sizes: Vec<Value> = p
                    .prices
                    .iter()
                    .map(|(size, price)| json!({ "sizeId": size, "price": decimal(*price) }))
                    .collect();
                json!({ "itemNo": no, "categoryId": p.category, "sizes": sizes,
                        "allergens": "1,3", "additives": "2" })
            })
            .collect();
        let menus: Vec<Value> = self
            .menus
            .iter()
            .map(|(no, (price, count))| json!({ "itemNo": no, "price": decimal(*price), "itemCount": count }))
            .collect();
        json!({
            "categories": [
                { "id": 1, "name": "Pizza", "minimumOrderValue": 1 },
                { "id": 2, "name": "Pasta", "minimumOrderValue": 1 },
                { "id": 3, "name": "Drinks", "minimumOrderValue": 0 }
            ],
            "products": products, "menus": menus,
            "allergens": ["gluten", "egg", "milk"], "additives": ["colouring", "caffeine"],
        })
    }

    fn delivery_costs(&self) -> Value {
        if self.delivery_costs_null {
            return Value::Null;
        }
        let definitions: Vec<Value> = self
            .zips
            .iter()
            .map(|(id, (minimum, costs, free))| {
                json!({ "id": id, "zipcode": if *id == -1 { "" } else { "10115" },
                        "city": "Berlin", "district": "Mitte",
                        "minimumOrderValue": decimal(*minimum), "deliveryCosts": decimal(*costs),
                        "freeDeliveryAsOf": if *free < 0 { json!(-1) } else { decimal(*free) } })
            })
            .collect();
        json!({ "type": "zipcode", "definitions": definitions })
    }

    /// A valid order for this shop, amounts in minor units (what an action carries).
    fn valid_order(&self, delivery_type: &str, reference: &str) -> Value {
        let available: Vec<(&String, &Product)> = self
            .products
            .iter()
            .filter(|(no, _)| !self.unavailable.contains(no))
            .take(2)
            .collect();
        let mut sum = 0;
        let items: Vec<Value> = available
            .iter()
            .map(|(no, p)| {
                let price = p.prices[&2];
                sum += price;
                json!({ "itemNo": no, "sizeId": 2, "quantity": 1, "price": price })
            })
            .collect();
        let mut order = json!({
            "reference": reference, "deliveryType": delivery_type, "paymentMethod": 0,
            "customer": { "name": "Ada", "street": "Invalidenstr. 1", "zip": "10115",
                          "city": "Berlin", "phone": "+49 30 000" },
            "items": items,
        });
        if delivery_type == "delivery" && !self.delivery_costs_null {
            let (_, costs, free) = self.zips[&12];
            let costs = if free >= 0 && sum >= free { 0 } else { costs };
            sum += costs;
            order["deliveryCosts"] = json!({ "type": "zipcode", "zipId": 12, "costs": costs });
        }
        order["sum"] = json!(sum);
        order
    }

    /// Validates a submitted body like the server does: the first problem found, as a 409.
    fn validate(&self, order: &Value) -> Result<(String, i64), (u16, String)> {
        let money = |v: Option<&Value>| -> Option<i64> {
            decimal_to_minor(&v?.as_number()?.to_string()).ok()
        };
        let delivery_type = order["deliveryType"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match order.get("paymentMethod").and_then(Value::as_i64) {
            Some(0..=2) => {}
            _ => {
                return Err((
                    103,
                    format!("Invalid payment method #{}#", order["paymentMethod"]),
                ));
            }
        }
        let mut cart = 0;
        for item in order["items"].as_array().into_iter().flatten() {
            let no = item["itemNo"].as_str().unwrap_or_default();
            let Some(product) = self
                .products
                .get(no)
                .filter(|_| !self.unavailable.iter().any(|u| u == no))
            else {
                return Err((202, format!("Unknown article #{no}#")));
            };
            let size = item["sizeId"].as_u64().unwrap_or(0) as u32;
            let Some(price) = product.prices.get(&size) else {
                return Err((
                    201,
                    format!("Article #{no}# has no price for size #{size}#"),
                ));
            };
            let sent = money(item.get("price")).unwrap_or(-1);
            if sent != *price {
                return Err((
                    203,
                    format!(
                        "Computed price of #{}# differs from send price #{}#",
                        minor_to_decimal(*price),
                        minor_to_decimal(sent)
                    ),
                ));
            }
            cart += price * item["quantity"].as_i64().unwrap_or(1);
        }
        for menu in order["menus"].as_array().into_iter().flatten() {
            let no = menu["itemNo"].as_str().unwrap_or_default();
            let Some((price, count)) = self.menus.get(no) else {
                return Err((302, format!("Unknown menu #{no}#")));
            };
            let items = menu["items"].as_array().map_or(0, Vec::len);
            if items != *count {
                return Err((
                    303,
                    format!(
                        "Expected item count of {count} differs from actual itemcount of {items}"
                    ),
                ));
            }
            let sent = money(menu.get("price")).unwrap_or(-1);
            if sent != *price {
                return Err((
                    304,
                    format!(
                        "Computed price of #{}# differs from send price #{}#",
                        minor_to_decimal(*price),
                        minor_to_decimal(sent)
                    ),
                ));
            }
            cart += price;
        }
        if let Some(code) = order.get("discountCode").and_then(Value::as_str)
            && !discounts().contains_key(code)
        {
            return Err((501, format!("Unknown discount #{code}#")));
        }
        let mut costs = 0;
        if delivery_type == "delivery" && !self.delivery_costs_null {
            let sent = &order["deliveryCosts"];
            match sent["type"].as_str() {
                Some("zipcode") => {}
                Some(other) => {
                    return Err((
                        602,
                        format!("Wrong delivery cost type #{other}#, extected type #zipcode#"),
                    ));
                }
                None => return Err((601, "Unknown delivery cost type".to_owned())),
            }
            let zip = sent["zipId"].as_i64().unwrap_or(i64::MIN);
            let Some((minimum, zip_costs, free)) = self.zips.get(&zip) else {
                return Err((603, format!("Unknown zipId #{zip}#")));
            };
            if cart < *minimum {
                return Err((
                    605,
                    format!(
                        "Minimum order value of #{}# not reached with order value of #{}#",
                        minor_to_decimal(*minimum),
                        minor_to_decimal(cart)
                    ),
                ));
            }
            costs = if *free >= 0 && cart >= *free {
                0
            } else {
                *zip_costs
            };
            let sent_costs = money(sent.get("costs")).unwrap_or(-1);
            if sent_costs != costs {
                return Err((
                    606,
                    format!(
                        "Computed delivery costs of #{}# differs from send delivery costs #{}#",
                        minor_to_decimal(costs),
                        minor_to_decimal(sent_costs)
                    ),
                ));
            }
        }
        let sum = cart + costs;
        let sent_sum = money(order.get("sum")).unwrap_or(-1);
        if sent_sum != sum {
            return Err((
                102,
                format!(
                    "Computed overall sum of #{}# differs from send sum #{}#",
                    minor_to_decimal(sum),
                    minor_to_decimal(sent_sum)
                ),
            ));
        }
        Ok((delivery_type, sum))
    }
}

/// The documented message of a code, with sample values (303 and 305 as malformed as the
/// reference prints them).
pub fn documented_message(code: u16) -> String {
    match code {
        101 => "No choices have been supplied for #1201#, but choices are mandatory".into(),
        102 => "Computed overall sum of #23.50# differs from send sum #23.00#".into(),
        103 => "Invalid payment method #7#".into(),
        201 => "Article #1201# has no price for size #9#".into(),
        202 => "Unknown article #9999#".into(),
        203 => "Computed price of #8.50# differs from send price #8.00#".into(),
        204 => "Ingredient #14# is not allowed in category with id #3#".into(),
        205 => "Invalid choice #77#".into(),
        301 => "Menu #M10# has no price.".into(),
        302 => "Unknown menu #M99#".into(),
        303 => "Expected item count of 3 differs from actual itemcount of 2".into(),
        304 => "Computed price of #12.00# differs from send price #11.00#".into(),
        305 => {
            "Can't find a match for article #1201# in size #2# in categories of menu #M10\"#".into()
        }
        306 => "Article #1209# is not allowed in menus.".into(),
        401 => "Ingredient #14# has no price for size #2#".into(),
        402 => "Unknown ingredient #99#".into(),
        501 => "Unknown discount #WINTER#".into(),
        601 => "Unknown delivery cost type".into(),
        602 => "Wrong delivery cost type #distance#, extected type #zipcode#".into(),
        603 => "Unknown zipId #99#".into(),
        604 => "Delivery allowed only to defined zipIds".into(),
        605 => "Minimum order value of #15.00# not reached with order value of #9.50#".into(),
        606 => "Computed delivery costs of #2.50# differs from send delivery costs #0.00#".into(),
        607 => "No data defined for distance #9000#".into(),
        other => format!("Validation error #{other}#"),
    }
}

/// Every documented 409 code.
pub const CONFLICT_CODES: [u16; 24] = [
    101, 102, 103, 201, 202, 203, 204, 205, 301, 302, 303, 304, 305, 306, 401, 402, 501, 601, 602,
    603, 604, 605, 606, 607,
];

fn discounts() -> HashMap<&'static str, Value> {
    HashMap::from([
        (
            "SUMMER",
            json!({ "code": "SUMMER", "type": "percent", "value": 10, "exceptions": [3] }),
        ),
        (
            "FIVE",
            json!({ "code": "FIVE", "type": "amount", "value": 5.00, "exceptions": [] }),
        ),
        (
            "FREEPIZZA",
            json!({ "code": "FREEPIZZA", "type": "article", "itemNo": "1201", "sizeId": 1 }),
        ),
    ])
}

fn decimal(minor: i64) -> Value {
    serde_json::from_str(&minor_to_decimal(minor)).unwrap_or(Value::Null)
}

/// Options for every simulated shop.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KassaForteOptions {
    /// Status polls an order stays `pending` before it is `transmitted`.
    pub polls_until_transmitted: u32,
}

impl Default for KassaForteOptions {
    fn default() -> Self {
        KassaForteOptions {
            polls_until_transmitted: 1,
        }
    }
}

pub struct KassaForteSim {
    state: Mutex<SimState>,
}

struct SimState {
    shops: Vec<Shop>,
    faults: Faults,
    options: KassaForteOptions,
    rng: SmallRng,
    next_order: u64,
}

impl KassaForteSim {
    pub fn new(
        specs: &[KassaForteShopSpec],
        options: KassaForteOptions,
        faults: Faults,
        seed: u64,
    ) -> Self {
        KassaForteSim {
            state: Mutex::new(SimState {
                shops: specs.iter().map(Shop::new).collect(),
                faults,
                options,
                rng: SmallRng::seed_from_u64(seed ^ 0x6b66),
                next_order: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        // A panic while holding the lock leaves plain data; keep serving.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn with_shop<T>(&self, name: &str, visit: impl FnOnce(&mut Shop) -> T) -> Option<T> {
        self.lock()
            .shops
            .iter_mut()
            .find(|s| s.spec.name == name)
            .map(visit)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Changes the menu (every price up by 10 cents) and moves `lastMenuRefresh`.
    pub fn change_menu(&self, shop: &str) {
        self.with_shop(shop, |s| {
            for product in s.products.values_mut() {
                for price in product.prices.values_mut() {
                    *price += 10;
                }
            }
            s.versions[0] += 1;
        });
    }

    /// Replaces the open hours and moves `lastOpenTimesRefresh`.
    pub fn set_open_hours(&self, shop: &str, hours: Value) {
        self.with_shop(shop, |s| {
            s.open_hours = hours;
            s.versions[1] += 1;
        });
    }

    /// Changes the delivery costs (`null` when `none`) and moves `lastDeliveryCostRefresh`.
    pub fn change_delivery_costs(&self, shop: &str, none: bool) {
        self.with_shop(shop, |s| {
            s.delivery_costs_null = none;
            if let Some(zip) = s.zips.get_mut(&12) {
                zip.1 += 50;
            }
            s.versions[2] += 1;
        });
    }

    pub fn set_service_open(&self, shop: &str, delivery: bool, pickup: bool) {
        self.with_shop(shop, |s| {
            (s.delivery_open, s.pickup_open) = (delivery, pickup)
        });
    }

    /// Infos with `connectionStatus: "maybe"` until switched off again.
    pub fn garble_infos(&self, shop: &str, garbled: bool) {
        self.with_shop(shop, |s| s.garbled_infos = garbled);
    }

    pub fn set_connection(&self, shop: &str, ok: bool) {
        self.with_shop(shop, |s| s.connection_ok = ok);
    }

    pub fn set_unavailable(&self, shop: &str, items: &[&str]) {
        self.with_shop(shop, |s| {
            s.unavailable = items.iter().map(|i| (*i).to_owned()).collect()
        });
    }

    /// The next submissions answer 409 with these codes and their documented messages.
    pub fn force_conflicts(&self, shop: &str, codes: &[u16]) {
        self.with_shop(shop, |s| s.forced_conflicts.extend(codes));
    }

    /// The next `count` orders are created and answered only after `after`.
    pub fn hang_after_create(&self, shop: &str, count: usize, after: Duration) {
        self.with_shop(shop, |s| {
            s.hang_after_create
                .extend(std::iter::repeat_n(after, count))
        });
    }

    pub fn refuse_auth(&self, shop: &str, refuse: bool) {
        self.with_shop(shop, |s| s.refuse_auth = refuse);
    }

    pub fn stats(&self, shop: &str) -> Option<KassaForteStats> {
        self.with_shop(shop, |s| s.stats.clone())
    }

    pub fn orders(&self, shop: &str) -> Vec<SimOrder> {
        self.with_shop(shop, |s| s.orders.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A valid order (amounts in minor units) for the shop as it is now.
    pub fn valid_order(&self, shop: &str, delivery_type: &str, reference: &str) -> Option<Value> {
        self.with_shop(shop, |s| s.valid_order(delivery_type, reference))
    }

    /// An item number the shop sells.
    pub fn first_item(&self, shop: &str) -> Option<String> {
        self.with_shop(shop, |s| s.products.keys().next().cloned())
            .flatten()
    }
}

pub fn router(sim: Arc<KassaForteSim>) -> Router {
    Router::new()
        .route("/v1/infos", get(infos))
        .route("/v1/menu", get(menu))
        .route("/v1/openhours", get(openhours))
        .route("/v1/deliverycosts", get(deliverycosts))
        .route("/v1/order", post(submit))
        .route("/v1/order/{order_id}", get(order_status))
        .route("/v1/discountcode", get(discount))
        .route("/v1/coupon", get(coupon))
        .route("/_sandbox/kassaforte/{shop}/stats", get(stats_route))
        .route("/_sandbox/kassaforte/{shop}/menu", post(change_menu_route))
        .route(
            "/_sandbox/kassaforte/{shop}/openhours",
            axum::routing::put(open_hours_route),
        )
        .with_state(sim)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "errorMessage": message }))).into_response()
}

fn json_body(value: &Value, truncate: bool) -> Response {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    if truncate {
        body.truncate(body.len() / 2);
    }
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The Basic credentials of a request.
fn credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// How a request is answered once its shop is known and its faults decided.
enum Admitted<T> {
    Go {
        value: T,
        slow: Option<Duration>,
        truncate: bool,
    },
    Answer(Response),
}

/// Authenticates, counts and admits one request, then lets `serve` answer it.
fn admit<T>(
    sim: &KassaForteSim,
    headers: &HeaderMap,
    serve: impl FnOnce(&mut Shop, &KassaForteOptions, &mut u64) -> T,
) -> Admitted<T> {
    let mut guard = sim.lock();
    let state = &mut *guard;
    let Some((user, password)) = credentials(headers) else {
        return Admitted::Answer(error(StatusCode::UNAUTHORIZED, "Unauthorized"));
    };
    let Some(shop) = state.shops.iter_mut().find(|s| s.spec.username == user) else {
        return Admitted::Answer(error(StatusCode::UNAUTHORIZED, "Unauthorized"));
    };
    if shop.spec.password != password || shop.refuse_auth {
        shop.stats.unauthorized += 1;
        return Admitted::Answer(error(StatusCode::UNAUTHORIZED, "Unauthorized"));
    }
    match shop
        .gate
        .admit(&state.faults, &mut shop.stats.traffic, &mut state.rng)
    {
        Admission::RateLimited { retry_after_secs } => Admitted::Answer(
            (
                StatusCode::TOO_MANY_REQUESTS,
                [(header::RETRY_AFTER, retry_after_secs.to_string())],
                axum::Json(json!({ "errorMessage": "Too Many Requests" })),
            )
                .into_response(),
        ),
        Admission::ServerError => Admitted::Answer(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
        )),
        Admission::Served { slow, truncate } => Admitted::Go {
            value: serve(shop, &state.options, &mut state.next_order),
            slow,
            truncate,
        },
    }
}

/// A value, or 404 when there is none.
async fn answer_found(admitted: Admitted<Option<Value>>) -> Response {
    match admitted {
        Admitted::Go { value: None, .. } => error(StatusCode::NOT_FOUND, "Not Found"),
        Admitted::Go {
            value: Some(value),
            slow,
            truncate,
        } => {
            answer(Admitted::Go {
                value,
                slow,
                truncate,
            })
            .await
        }
        Admitted::Answer(response) => response,
    }
}

async fn answer(admitted: Admitted<Value>) -> Response {
    match admitted {
        Admitted::Answer(response) => response,
        Admitted::Go {
            value,
            slow,
            truncate,
        } => {
            if let Some(delay) = slow {
                tokio::time::sleep(delay).await;
            }
            json_body(&value, truncate)
        }
    }
}

async fn infos(State(sim): State<Arc<KassaForteSim>>, headers: HeaderMap) -> Response {
    answer(admit(&sim, &headers, |shop, _, _| {
        shop.stats.infos += 1;
        shop.infos()
    }))
    .await
}

async fn menu(State(sim): State<Arc<KassaForteSim>>, headers: HeaderMap) -> Response {
    answer(admit(&sim, &headers, |shop, _, _| {
        shop.stats.menu += 1;
        shop.menu()
    }))
    .await
}

async fn openhours(State(sim): State<Arc<KassaForteSim>>, headers: HeaderMap) -> Response {
    answer(admit(&sim, &headers, |shop, _, _| {
        shop.stats.openhours += 1;
        shop.open_hours.clone()
    }))
    .await
}

async fn deliverycosts(State(sim): State<Arc<KassaForteSim>>, headers: HeaderMap) -> Response {
    answer(admit(&sim, &headers, |shop, _, _| {
        shop.stats.deliverycosts += 1;
        shop.delivery_costs()
    }))
    .await
}

/// What a submission came to, decided under the lock.
enum Submitted {
    Created {
        order_id: String,
        hang: Option<Duration>,
    },
    Conflict(u16, String),
    BadRequest(String),
}

async fn submit(
    State(sim): State<Arc<KassaForteSim>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let admitted = admit(&sim, &headers, |shop, _, next_order| {
        shop.stats.submissions += 1;
        let Ok(order) = serde_json::from_slice::<Value>(&body) else {
            return Submitted::BadRequest("request body is not JSON".into());
        };
        if !matches!(order["deliveryType"].as_str(), Some("delivery" | "pickup")) {
            return Submitted::BadRequest("deliveryType: must be delivery or pickup".into());
        }
        if let Some(code) = shop.forced_conflicts.pop_front() {
            shop.stats.conflicts += 1;
            return Submitted::Conflict(code, documented_message(code));
        }
        match shop.validate(&order) {
            Err((code, message)) => {
                shop.stats.conflicts += 1;
                Submitted::Conflict(code, message)
            }
            Ok((delivery_type, sum_minor)) => {
                *next_order += 1;
                let order_id = format!("2026{:010}", *next_order);
                shop.orders.insert(
                    order_id.clone(),
                    SimOrder {
                        order_id: order_id.clone(),
                        status: "pending".into(),
                        delivery_type,
                        reference: order["reference"].as_str().map(str::to_owned),
                        sum_minor,
                        polls: 0,
                    },
                );
                shop.stats.orders_created += 1;
                Submitted::Created {
                    order_id,
                    hang: shop.hang_after_create.pop_front(),
                }
            }
        }
    });
    match admitted {
        Admitted::Answer(response) => response,
        Admitted::Go {
            value,
            slow,
            truncate,
        } => {
            if let Some(delay) = slow {
                tokio::time::sleep(delay).await;
            }
            match value {
                Submitted::Created { order_id, hang } => {
                    if let Some(hang) = hang {
                        tokio::time::sleep(hang).await;
                    }
                    let mut response = json_body(&json!({ "orderId": order_id }), truncate);
                    *response.status_mut() = StatusCode::CREATED;
                    response
                }
                Submitted::Conflict(code, message) => (
                    StatusCode::CONFLICT,
                    axum::Json(json!({ "errorCode": code, "errorMessage": message })),
                )
                    .into_response(),
                Submitted::BadRequest(message) => error(StatusCode::BAD_REQUEST, &message),
            }
        }
    }
}

async fn order_status(
    State(sim): State<Arc<KassaForteSim>>,
    headers: HeaderMap,
    Path(order_id): Path<String>,
) -> Response {
    if order_id.len() != 14 || !order_id.bytes().all(|b| b.is_ascii_digit()) {
        return error(StatusCode::BAD_REQUEST, "order id must be 14 digits");
    }
    let admitted = admit(&sim, &headers, |shop, options, _| {
        shop.stats.status_polls += 1;
        let order = shop.orders.get_mut(&order_id)?;
        order.polls += 1;
        if order.status == "pending" && order.polls > options.polls_until_transmitted {
            order.status = "transmitted".into();
        }
        Some(json!({ "orderId": order.order_id, "status": order.status }))
    });
    answer_found(admitted).await
}

async fn discount(
    State(sim): State<Arc<KassaForteSim>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let code = query.get("code").cloned().unwrap_or_default();
    answer_found(admit(&sim, &headers, |_, _, _| {
        discounts().get(code.as_str()).cloned()
    }))
    .await
}

async fn coupon(
    State(sim): State<Arc<KassaForteSim>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let number = query.get("number").cloned().unwrap_or_default();
    let verify = query.get("verifyCode").cloned().unwrap_or_default();
    let known = number == "C-100";
    let admitted = admit(&sim, &headers, |_, _, _| {
        known.then(|| json!({ "number": "C-100", "remainingAmount": 19.99 }))
    });
    match admitted {
        Admitted::Go { value: Some(_), .. } if verify != "1234" => {
            error(StatusCode::CONFLICT, "verifyCode does not match")
        }
        admitted => answer_found(admitted).await,
    }
}

async fn stats_route(State(sim): State<Arc<KassaForteSim>>, Path(shop): Path<String>) -> Response {
    match sim.stats(&shop) {
        Some(stats) => axum::Json(stats).into_response(),
        None => error(StatusCode::NOT_FOUND, "no such shop"),
    }
}

async fn change_menu_route(
    State(sim): State<Arc<KassaForteSim>>,
    Path(shop): Path<String>,
) -> Response {
    sim.change_menu(&shop);
    StatusCode::NO_CONTENT.into_response()
}

async fn open_hours_route(
    State(sim): State<Arc<KassaForteSim>>,
    Path(shop): Path<String>,
    body: Bytes,
) -> Response {
    match serde_json::from_slice::<Value>(&body) {
        Ok(hours) if hours.get("openingtimes").is_some_and(Value::is_array) => {
            sim.set_open_hours(&shop, hours);
            StatusCode::NO_CONTENT.into_response()
        }
        _ => error(
            StatusCode::BAD_REQUEST,
            "the body must be open hours: {\"openingtimes\": [[{\"start\", \"end\"}], …], \"acceptStart\", \"acceptEnd\"}",
        ),
    }
}
