//! Graas calls that change something upstream: `PUT /v1/orders` (accept and cancel, batched) and
//! the ASN endpoints (`docs/providers/graas.md`, "Actions out").

use super::wire::lenient_i64;
use crate::providers::ProviderError;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `orderStatus` values `PUT /v1/orders` takes.
pub const ACCEPTED: &str = "ACCEPTED";
pub const CANCELLED: &str = "CANCELLED";

/// One item of a `PUT /v1/orders` batch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderUpdate {
    #[serde(rename = "orderID")]
    pub order_id: String,
    pub site: SiteRef,
    #[serde(rename = "orderStatus")]
    pub order_status: &'static str,
    /// Partial accept/cancel (Lazada): only these items.
    #[serde(rename = "orderItems", skip_serializing_if = "Vec::is_empty")]
    pub order_items: Vec<ItemRef>,
    #[serde(rename = "needToUpdateOrder", skip_serializing_if = "Option::is_none")]
    pub need_to_update_order: Option<bool>,
    #[serde(rename = "cancelDetails", skip_serializing_if = "Option::is_none")]
    pub cancel_details: Option<CancelDetails>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteRef {
    pub name: String,
    #[serde(rename = "nickNameID")]
    pub nick_name_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemRef {
    #[serde(rename = "orderItemID")]
    pub order_item_id: String,
    #[serde(rename = "sellerSKU")]
    pub seller_sku: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CancelDetails {
    #[serde(rename = "cancelReason")]
    pub cancel_reason: String,
}

/// What Graas said about one item of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemResult {
    /// 2xx: taken for (asynchronous) processing. Carries the item's result entry as sent.
    Accepted { http_code: u16, entry: Value },
    /// 4xx: refused for good, e.g. 404 `Record Not Found`.
    Refused { http_code: u16, message: String },
    /// 429 or 5xx for this item alone: send it again later.
    Transient { http_code: u16, message: String },
}

/// Entries are kept as JSON first so an accepted item's entry can be stored as its result.
#[derive(Deserialize)]
struct PutResponseRaw {
    result: Vec<Value>,
}

#[derive(Deserialize)]
struct ResultEntry {
    #[serde(rename = "httpCode", deserialize_with = "lenient_i64")]
    http_code: i64,
    #[serde(rename = "errorMessage", default)]
    error_message: Option<String>,
    #[serde(default)]
    response: Option<EchoedItem>,
}

#[derive(Deserialize)]
struct EchoedItem {
    #[serde(rename = "orderID", default)]
    order_id: Option<Value>,
    #[serde(default)]
    site: Option<EchoedSite>,
}

#[derive(Deserialize)]
struct EchoedSite {
    #[serde(rename = "nickNameID", default)]
    nick_name_id: Option<String>,
}

/// Reads a `PUT /v1/orders` answer into one result per item. Results are matched by position,
/// and each must echo its item's `orderID` and `nickNameID`; if any does not, nothing in the
/// answer can be trusted and the whole batch is [`ProviderError::Inconsistent`].
pub fn parse_put_response(
    body: &[u8],
    sent: &[OrderUpdate],
) -> Result<Vec<ItemResult>, ProviderError> {
    let entries: Vec<Value> = {
        let response: PutResponseRaw = serde_json::from_slice(body)
            .map_err(|e| ProviderError::Malformed(format!("PUT /v1/orders: {e}")))?;
        response.result
    };
    if entries.len() != sent.len() {
        return Err(ProviderError::Inconsistent(format!(
            "PUT /v1/orders answered {} results for {} items",
            entries.len(),
            sent.len()
        )));
    }
    let mut results = Vec::with_capacity(sent.len());
    for (position, (raw, item)) in entries.into_iter().zip(sent).enumerate() {
        let entry: ResultEntry = serde_json::from_value(raw.clone()).map_err(|e| {
            ProviderError::Malformed(format!("PUT /v1/orders result[{position}]: {e}"))
        })?;
        let echoed = entry.response.as_ref();
        let order_id = echoed.and_then(|r| r.order_id.as_ref()).map(|id| match id {
            Value::String(text) => text.clone(),
            other => other.to_string(),
        });
        let nick = echoed
            .and_then(|r| r.site.as_ref())
            .and_then(|s| s.nick_name_id.clone());
        if order_id.as_deref() != Some(item.order_id.as_str())
            || nick.as_deref() != Some(item.site.nick_name_id.as_str())
        {
            return Err(ProviderError::Inconsistent(format!(
                "PUT /v1/orders result[{position}] is for order {} on {}, expected {} on {}",
                order_id.as_deref().unwrap_or("?"),
                nick.as_deref().unwrap_or("?"),
                item.order_id,
                item.site.nick_name_id
            )));
        }
        let http_code = u16::try_from(entry.http_code).unwrap_or(0);
        let message = entry
            .error_message
            .unwrap_or_else(|| format!("HTTP {http_code}"));
        results.push(match http_code {
            200..=299 => ItemResult::Accepted {
                http_code,
                entry: raw,
            },
            429 | 500..=599 => ItemResult::Transient { http_code, message },
            _ => ItemResult::Refused { http_code, message },
        });
    }
    Ok(results)
}

/// The ASN body ordersync checks before it queues one; the request itself is sent as given
/// (plus `supplierRef`), so fields Graas adds later pass through.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsnRequest {
    #[serde(rename = "warehouseID")]
    pub warehouse_id: String,
    #[serde(rename = "supplierID")]
    pub supplier_id: i64,
    #[serde(default)]
    pub supplier_ref: Option<String>,
    pub date: i64,
    pub order_items: Vec<AsnItem>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AsnItem {
    #[serde(rename = "sellerSKU")]
    pub seller_sku: String,
    #[serde(default)]
    pub description: Option<String>,
    pub quantity: i64,
    #[serde(default)]
    pub uom: Option<i64>,
    pub item_amount: AsnMoney,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AsnMoney {
    pub amount: i64,
    #[serde(rename = "currencyCode", alias = "currency", default)]
    pub currency_code: Option<String>,
}

impl AsnRequest {
    /// Reads and checks an ASN body; errors name the field (`orderItems[2].quantity: …`).
    pub fn parse(body: &Value) -> Result<AsnRequest, String> {
        let asn: AsnRequest = serde_path_to_error::deserialize(body).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                e.inner().to_string()
            } else {
                format!("{path}: {}", e.inner())
            }
        })?;
        if asn.warehouse_id.trim().is_empty() {
            return Err("warehouseID: must not be empty".into());
        }
        if asn.order_items.is_empty() {
            return Err("orderItems: an ASN needs at least one item".into());
        }
        for (i, item) in asn.order_items.iter().enumerate() {
            if item.seller_sku.trim().is_empty() {
                return Err(format!("orderItems[{i}].sellerSKU: must not be empty"));
            }
            if item.quantity <= 0 {
                return Err(format!(
                    "orderItems[{i}].quantity: must be a positive whole number, not {}",
                    item.quantity
                ));
            }
        }
        Ok(asn)
    }
}

/// One ASN as `GET /v1/asn/{asnID}` returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct AsnStatus {
    pub asn_id: i64,
    pub status: Option<String>,
    /// Sum of `receivedQuantity` over the items.
    pub received_quantity: i64,
    pub payload: Value,
}

#[derive(Deserialize)]
struct AsnCreated {
    #[serde(rename = "asnID", deserialize_with = "lenient_i64")]
    asn_id: i64,
}

pub fn parse_asn_created(body: &[u8]) -> Result<i64, ProviderError> {
    serde_json::from_slice::<AsnCreated>(body)
        .map(|created| created.asn_id)
        .map_err(|e| ProviderError::Malformed(format!("POST /v1/asn: {e}")))
}

#[derive(Deserialize)]
struct AsnIds {
    #[serde(rename = "asnIDs", default)]
    asn_ids: Vec<Value>,
}

pub fn parse_asn_ids(body: &[u8]) -> Result<Vec<i64>, ProviderError> {
    let ids: AsnIds = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Malformed(format!("GET /v1/asn: {e}")))?;
    Ok(ids
        .asn_ids
        .iter()
        .filter_map(|id| match id {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        })
        .collect())
}

pub fn parse_asn(body: &[u8], asn_id: i64) -> Result<AsnStatus, ProviderError> {
    let payload: Value = serde_json::from_slice(body)
        .map_err(|e| ProviderError::Malformed(format!("GET /v1/asn/{asn_id}: {e}")))?;
    let status = payload
        .get("status")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let received_quantity = payload
        .get("orderItems")
        .and_then(Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|item| item.get("receivedQuantity"))
                .filter_map(|q| q.as_i64().or_else(|| q.as_str()?.parse().ok()))
                .sum()
        })
        .unwrap_or(0);
    Ok(AsnStatus {
        asn_id,
        status,
        received_quantity,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn update(order_id: &str, nick: &str) -> OrderUpdate {
        OrderUpdate {
            order_id: order_id.into(),
            site: SiteRef {
                name: "Lazada".into(),
                nick_name_id: nick.into(),
            },
            order_status: ACCEPTED,
            order_items: Vec::new(),
            need_to_update_order: None,
            cancel_details: None,
        }
    }

    #[test]
    fn each_item_keeps_its_own_result() {
        let sent = [update("1", "lazada-1"), update("2", "lazada-1")];
        let body = json!({"result": [
            {"response": {"orderID": "1", "site": {"nickNameID": "lazada-1"}}, "httpCode": 202},
            {"errorMessage": "Record Not Found", "response": {"orderID": "2", "site": {"nickNameID": "lazada-1"}}, "httpCode": 404}
        ]});
        let results = parse_put_response(body.to_string().as_bytes(), &sent).unwrap();
        assert!(matches!(
            results[0],
            ItemResult::Accepted { http_code: 202, .. }
        ));
        assert_eq!(
            results[1],
            ItemResult::Refused {
                http_code: 404,
                message: "Record Not Found".into()
            }
        );
    }

    #[test]
    fn a_result_for_another_order_distrusts_the_batch() {
        let sent = [update("1", "lazada-1"), update("2", "lazada-1")];
        let body = json!({"result": [
            {"response": {"orderID": "2", "site": {"nickNameID": "lazada-1"}}, "httpCode": 202},
            {"response": {"orderID": "1", "site": {"nickNameID": "lazada-1"}}, "httpCode": 202}
        ]});
        let error = parse_put_response(body.to_string().as_bytes(), &sent).unwrap_err();
        assert!(matches!(error, ProviderError::Inconsistent(_)), "{error}");
        let short = json!({"result": []});
        assert!(matches!(
            parse_put_response(short.to_string().as_bytes(), &sent),
            Err(ProviderError::Inconsistent(_))
        ));
    }

    #[test]
    fn item_level_server_errors_are_transient() {
        let sent = [update("1", "shopee-1")];
        let body = json!({"result": [
            {"response": {"orderID": 1, "site": {"nickNameID": "shopee-1"}}, "httpCode": "503"}
        ]});
        let results = parse_put_response(body.to_string().as_bytes(), &sent).unwrap();
        assert!(matches!(
            results[0],
            ItemResult::Transient { http_code: 503, .. }
        ));
    }

    #[test]
    fn asn_errors_name_the_field() {
        let good = json!({"warehouseID": "odoo-1", "supplierID": 7, "date": 1700000000,
            "orderItems": [{"sellerSKU": "A", "quantity": 2, "itemAmount": {"amount": 100}}]});
        assert!(AsnRequest::parse(&good).is_ok());
        let mut bad = good.clone();
        bad["supplierID"] = json!("seven");
        let error = AsnRequest::parse(&bad).unwrap_err();
        assert!(error.starts_with("supplierID:"), "{error}");
        let mut bad = good.clone();
        bad["orderItems"][0]["quantity"] = json!(0);
        let error = AsnRequest::parse(&bad).unwrap_err();
        assert!(error.starts_with("orderItems[0].quantity:"), "{error}");
        let error = AsnRequest::parse(&json!({"supplierID": 1})).unwrap_err();
        assert!(error.contains("warehouseID"), "{error}");
    }
}
