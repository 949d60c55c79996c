//! The simulated Graas write endpoints: `PUT /v1/orders` (per-item results as documented,
//! applied to the simulated orders), `POST /v1/asn`, `GET /v1/asn/{asnID}` and `GET /v1/asn?…`,
//! and `/_sandbox/graas/received`, the log of every write item it took.

use super::{ACCEPTED_STAGE, CANCELLED, DELIVERED, GraasSim, admit_now, error, now_unix};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::Rng;
use serde::Serialize;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;

/// One write the sandbox took: a `PUT /v1/orders` item or a `POST /v1/asn`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Received {
    /// `ACCEPTED`, `CANCELLED` (or whatever was sent) for order items; `ASN` for an ASN.
    pub what: String,
    pub channel: String,
    /// The order id, or the ASN's `supplierRef`.
    pub reference: String,
    /// The `httpCode` it was answered with.
    pub http_code: u16,
    /// Partial accept/cancel: how many `orderItems` the item named.
    pub items: usize,
    pub cancel_reason: Option<String>,
}

#[derive(Debug, Clone)]
struct SimAsn {
    id: i64,
    warehouse_id: String,
    supplier_id: i64,
    supplier_ref: String,
    date: i64,
    items: Vec<Value>,
    status: String,
    created: i64,
}

#[derive(Default)]
pub(super) struct AccountWrites {
    received: Vec<Received>,
    asns: Vec<SimAsn>,
}

impl GraasSim {
    /// Every write item an account received, in arrival order.
    pub fn received(&self, account_number: &str) -> Vec<Received> {
        let state = self.lock();
        state
            .accounts
            .iter()
            .find(|a| a.number == account_number)
            .map(|a| a.writes.received.clone())
            .unwrap_or_default()
    }

    /// Marks every draft ASN at least `min_age_secs` old as received in full.
    pub fn receive_asns(&self, min_age_secs: i64) -> usize {
        let now = now_unix();
        let mut state = self.lock();
        let mut received = 0;
        for account in &mut state.accounts {
            for asn in &mut account.writes.asns {
                if asn.status == "draft" && now - asn.created >= min_age_secs {
                    asn.status = "received".into();
                    for item in &mut asn.items {
                        let quantity = item.get("quantity").cloned().unwrap_or(json!(0));
                        item["receivedQuantity"] = quantity;
                        item["status"] = json!("received");
                    }
                    received += 1;
                }
            }
        }
        received
    }
}

pub(super) async fn put_orders(
    State(sim): State<Arc<GraasSim>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let admitted = match admit_now(&sim, &headers) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Invalid JSON");
    };
    let Some(items) = body.get("data").and_then(Value::as_array) else {
        return error(StatusCode::BAD_REQUEST, "data is missing");
    };
    let results: Vec<Value> = {
        let mut guard = sim.lock();
        let state = &mut *guard;
        let item_error_ratio = state.faults.item_error_ratio.clamp(0.0, 1.0);
        let now = now_unix();
        let account = &mut state.accounts[admitted.index];
        items
            .iter()
            .map(|item| {
                let text = |field: &str| item.get(field).and_then(Value::as_str).map(str::to_owned);
                let order_id = text("orderID");
                let channel = item
                    .get("site")
                    .and_then(|s| s.get("nickNameID"))
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                let status = text("orderStatus");
                let (code, message) = match (&order_id, &channel, status.as_deref()) {
                    (None, _, _) => (400, Some("orderID is missing")),
                    (_, None, _) => (400, Some("site is missing")),
                    (_, _, None) => (400, Some("orderStatus is missing")),
                    (_, _, Some(s)) if s != "ACCEPTED" && s != "CANCELLED" => {
                        (400, Some("orderStatus is invalid"))
                    }
                    (Some(order_id), Some(channel), Some(status)) => {
                        match account.by_key.get(&(channel.clone(), order_id.clone())) {
                            None => (404, Some("Record Not Found")),
                            Some(_) if state.rng.random_bool(item_error_ratio) => {
                                (500, Some("Internal Server Error"))
                            }
                            Some(&index) => {
                                let order = &account.orders[index];
                                let next = match status {
                                    "ACCEPTED" if order.stage < ACCEPTED_STAGE => {
                                        Some(ACCEPTED_STAGE)
                                    }
                                    "CANCELLED" if order.stage < DELIVERED => Some(CANCELLED),
                                    _ => None,
                                };
                                if let Some(next) = next.filter(|n| *n != order.stage) {
                                    let updated = now.max(order.updated + 1);
                                    account.orders[index].stage = next;
                                    account.touch(index, updated);
                                    account.stats.changes += 1;
                                }
                                (202, None)
                            }
                        }
                    }
                };
                account.writes.received.push(Received {
                    what: status.unwrap_or_default(),
                    channel: channel.unwrap_or_default(),
                    reference: order_id.unwrap_or_default(),
                    http_code: code,
                    items: item
                        .get("orderItems")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len),
                    cancel_reason: item
                        .get("cancelDetails")
                        .and_then(|d| d.get("cancelReason"))
                        .and_then(Value::as_str)
                        .map(str::to_owned),
                });
                let mut result = json!({"response": item, "httpCode": code});
                if let Some(message) = message {
                    result["errorMessage"] = json!(message);
                }
                result
            })
            .collect()
    };
    // Applied first, answered late: a client that times out never learns it succeeded.
    if let Some(delay) = admitted.slow {
        tokio::time::sleep(delay).await;
    }
    super::json_body(
        json!({ "result": results }).to_string().into_bytes(),
        admitted.truncate,
    )
}

/// A required ASN field, or the documented `"<field> is missing"` message.
fn required<'a>(body: &'a Value, field: &str) -> Result<&'a Value, String> {
    body.get(field)
        .filter(|v| !v.is_null())
        .ok_or_else(|| format!("{field} is missing"))
}

pub(super) async fn create_asn(
    State(sim): State<Arc<GraasSim>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let admitted = match admit_now(&sim, &headers) {
        Ok(admitted) => admitted,
        Err(response) => return *response,
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "Invalid JSON");
    };
    let parsed = (|| {
        let warehouse_id = required(&body, "warehouseID")?;
        let supplier_id = required(&body, "supplierID")?;
        let supplier_ref = required(&body, "supplierRef")?;
        let date = required(&body, "date")?;
        let items = required(&body, "orderItems")?;
        let invalid = |field: &str| format!("{field} is invalid");
        Ok::<_, String>((
            warehouse_id
                .as_str()
                .ok_or_else(|| invalid("warehouseID"))?
                .to_owned(),
            supplier_id.as_i64().ok_or_else(|| invalid("supplierID"))?,
            supplier_ref
                .as_str()
                .ok_or_else(|| invalid("supplierRef"))?
                .to_owned(),
            date.as_i64().ok_or_else(|| invalid("date"))?,
            items
                .as_array()
                .filter(|items| !items.is_empty())
                .ok_or_else(|| invalid("orderItems"))?
                .clone(),
        ))
    })();
    let (warehouse_id, supplier_id, supplier_ref, date, items) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    // The docs: amounts "should be a multiple of 100" (whole currency units).
    if items.iter().any(|item| {
        item.pointer("/itemAmount/amount")
            .and_then(Value::as_i64)
            .is_none_or(|amount| amount % 100 != 0)
    }) {
        return error(
            StatusCode::BAD_REQUEST,
            "itemAmount.amount should be a multiple of 100",
        );
    }
    let asn_id = {
        let mut state = sim.lock();
        let writes = &mut state.accounts[admitted.index].writes;
        let asn_id = writes.asns.len() as i64 + 1;
        writes.received.push(Received {
            what: "ASN".into(),
            channel: warehouse_id.clone(),
            reference: supplier_ref.clone(),
            http_code: 200,
            items: items.len(),
            cancel_reason: None,
        });
        writes.asns.push(SimAsn {
            id: asn_id,
            warehouse_id,
            supplier_id,
            supplier_ref,
            date,
            items: items
                .into_iter()
                .map(|mut item| {
                    item["receivedQuantity"] = json!(0);
                    item["status"] = json!("draft");
                    item
                })
                .collect(),
            status: "draft".into(),
            created: now_unix(),
        });
        asn_id
    };
    if let Some(delay) = admitted.slow {
        tokio::time::sleep(delay).await;
    }
    super::json_body(
        json!({ "asnID": asn_id }).to_string().into_bytes(),
        admitted.truncate,
    )
}

pub(super) async fn one_asn(
    State(sim): State<Arc<GraasSim>>,
    headers: HeaderMap,
    Path(asn_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (index, truncate) = match super::admit(&sim, &headers).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let Ok(asn_id) = asn_id.parse::<i64>() else {
        return error(StatusCode::BAD_REQUEST, "asnID is missing");
    };
    let Some(warehouse_id) = query.get("warehouseID") else {
        return error(StatusCode::BAD_REQUEST, "warehouseID is missing");
    };
    let asn = {
        let state = sim.lock();
        state.accounts[index]
            .writes
            .asns
            .iter()
            .find(|a| a.id == asn_id && &a.warehouse_id == warehouse_id)
            .cloned()
    };
    let Some(asn) = asn else {
        return error(StatusCode::NOT_FOUND, "Record Not Found");
    };
    let body = json!({
        "asnID": asn.id,
        "supplierID": asn.supplier_id,
        "supplierRef": asn.supplier_ref,
        "date": asn.date,
        "status": asn.status,
        "orderItems": asn.items,
    });
    super::json_body(body.to_string().into_bytes(), truncate)
}

pub(super) async fn find_asns(
    State(sim): State<Arc<GraasSim>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let (index, truncate) = match super::admit(&sim, &headers).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let mut params = Vec::new();
    for field in ["warehouseID", "supplierID", "supplierRef"] {
        match query.get(field) {
            Some(value) => params.push(value.clone()),
            None => return error(StatusCode::BAD_REQUEST, &format!("{field} is missing")),
        }
    }
    let ids: Vec<i64> = {
        let state = sim.lock();
        state.accounts[index]
            .writes
            .asns
            .iter()
            .filter(|a| {
                a.warehouse_id == params[0]
                    && a.supplier_id.to_string() == params[1]
                    && a.supplier_ref == params[2]
            })
            .map(|a| a.id)
            .collect()
    };
    super::json_body(json!({ "asnIDs": ids }).to_string().into_bytes(), truncate)
}

/// `GET /_sandbox/graas/received`: every account's write log.
pub(super) async fn received(State(sim): State<Arc<GraasSim>>) -> Json<Value> {
    let state = sim.lock();
    let log: HashMap<&str, &Vec<Received>> = state
        .accounts
        .iter()
        .map(|a| (a.number.as_str(), &a.writes.received))
        .collect();
    Json(json!(log))
}

/// `POST /_sandbox/graas/asn/receive`: the warehouse receives every draft ASN now.
pub(super) async fn receive_asns(State(sim): State<Arc<GraasSim>>) -> Response {
    let received = sim.receive_asns(0);
    Json(json!({ "received": received })).into_response()
}
