//! Lagerkoll's documented shapes (stores list, webhook object, error body) and the assumed
//! delivery envelope, with the error codes interpreted per resource as the contract's table
//! says.

use crate::model::{Money, Order, OrderKey, ProviderKind};
use crate::providers::json::{rfc3339 as time, scalar_text};
use crate::providers::money::decimal_to_minor;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

/// `{ errorCode, errorMessage, errorField, errorData }`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    #[serde(default)]
    pub error_code: Option<i64>,
    #[serde(default)]
    pub error_message: Option<String>,
    #[serde(default)]
    pub error_field: Option<String>,
    #[serde(default)]
    pub error_data: Option<serde_json::Value>,
}

impl ErrorBody {
    pub fn parse(body: &[u8]) -> ErrorBody {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

/// The API resource a call went to: the same code means different things per resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Stores,
    Feature,
    Webhooks,
}

/// What an error answer means for the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// Stop the store until ordersync is restarted with a fix.
    StopStore(String),
    /// A server-side error worth retrying.
    Transient(String),
    /// This call cannot succeed as it is.
    Permanent(String),
}

/// Decides by `errorCode` first, the HTTP status second.
pub fn interpret(resource: Resource, status: u16, error: &ErrorBody) -> Refused {
    let message = error.error_message.clone().unwrap_or_default();
    let detail = {
        let mut text = message.clone();
        if let Some(field) = &error.error_field {
            text.push_str(&format!(" (field {field})"));
        }
        if let Some(data) = error.error_data.as_ref().filter(|d| !d.is_null()) {
            text.push_str(&format!(" [{data}]"));
        }
        text
    };
    let code = error.error_code.unwrap_or(0);
    match (code, resource) {
        (900001, _) => Refused::StopStore(format!(
            "Lagerkoll rejected store/api_key (900001 {message}); fix the account's store and api_key"
        )),
        (902123, _) => Refused::StopStore(format!(
            "activate the API feature in Lagerkoll (902123 {message})"
        )),
        (900101, _) => Refused::Transient(format!("Lagerkoll server error (900101 {detail})")),
        (902125, _) => Refused::Permanent(format!(
            "feature not installed (902125 {detail}); the configured feature_id is wrong"
        )),
        (902122, _) => Refused::Permanent(format!(
            "dependency not installed (902122 {detail}); install it in Lagerkoll"
        )),
        (902124, _) => {
            Refused::Permanent(format!("reversed dependency installed (902124 {detail})"))
        }
        (902101, Resource::Webhooks) => {
            Refused::Permanent(format!("error when getting webhook (902101 {detail})"))
        }
        (902101, Resource::Feature) => {
            Refused::Permanent(format!("error when getting feature (902101 {detail})"))
        }
        (901700..=901799, _) => Refused::Permanent(format!("Stores API error ({code} {detail})")),
        (0, _) if matches!(status, 401 | 403) => Refused::StopStore(format!(
            "Lagerkoll rejected store/api_key (HTTP {status}); fix the account's store and api_key"
        )),
        (0, _) if status >= 500 => Refused::Transient(format!("HTTP {status}")),
        (0, _) => Refused::Permanent(format!("HTTP {status} {detail}")),
        (code, _) => Refused::Permanent(format!("error {code}: {detail}")),
    }
}

/// `GET /v1/stores/`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoresAnswer {
    #[serde(default)]
    pub org_name: Option<String>,
    #[serde(default)]
    pub stores: Vec<StoreInfo>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreInfo {
    pub store_id: i64,
    #[serde(default)]
    pub store_group_id: Option<i64>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub currency: Option<String>,
}

/// A feature's id (`GET /v1/webhooks/{featureId}` takes one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FeatureId(pub String);

/// A webhook's numeric id (`DELETE /v1/webhooks/{id}` takes one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WebhookId(pub i64);

/// The documented Webhook object.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub id: i64,
    pub guid: String,
    pub feature_id: String,
    pub feature_method: String,
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct WebhookList {
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
}

/// A delivery *(assumed)*: `{ guid, featureId, featureMethod, store, timestamp, data }`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Delivery<'a> {
    #[serde(default)]
    pub guid: Option<String>,
    #[serde(default)]
    pub feature_id: Option<String>,
    #[serde(default)]
    pub feature_method: Option<String>,
    #[serde(default)]
    pub timestamp: Option<String>,
    #[serde(default, borrow)]
    pub data: Option<&'a RawValue>,
}

impl<'a> Delivery<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, String> {
        serde_json::from_slice(body).map_err(|e| format!("not a Lagerkoll delivery: {e}"))
    }
}

/// The order fields read from a delivery's `data` *(assumed)*: the id as `orderId` or `id`,
/// times as `updatedAt`/`updated`, amounts as decimals.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireOrder<'a> {
    #[serde(default, borrow, alias = "id")]
    order_id: Option<&'a RawValue>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default, borrow, alias = "totalAmount")]
    total: Option<&'a RawValue>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default, alias = "created")]
    created_at: Option<String>,
    #[serde(default, alias = "updated")]
    updated_at: Option<String>,
}

/// True when `data` is absent, null or `{}`: a test delivery (the "execute" call) or an event
/// without content.
pub fn is_empty_data(data: Option<&RawValue>) -> bool {
    data.is_none_or(|d| {
        let text = d.get().trim();
        text == "null" || (text.starts_with('{') && text[1..].trim_start().starts_with('}'))
    })
}

/// The order's id in `data`, when it names one.
pub fn order_id(data: &RawValue) -> Option<String> {
    serde_json::from_str::<WireOrder>(data.get())
        .ok()?
        .order_id
        .and_then(scalar_text)
}

/// The delivery's `timestamp`, when readable.
pub fn delivery_time(delivery: &Delivery<'_>) -> Option<DateTime<Utc>> {
    delivery.timestamp.as_deref().and_then(|t| time(t).ok())
}

/// Maps an order delivery's `data`. Without an update time in `data`, the delivery's own time
/// orders it (the last received wins), as given in `fallback_updated`.
pub fn map_order(
    account: &str,
    store: i64,
    data: &RawValue,
    currency: &str,
    fallback_updated: DateTime<Utc>,
) -> Result<Order, String> {
    let wire: WireOrder =
        serde_json::from_str(data.get()).map_err(|e| format!("data is not an order: {e}"))?;
    let external_id = wire
        .order_id
        .and_then(scalar_text)
        .ok_or("data.orderId (or data.id) is missing or empty")?;
    let updated = match wire.updated_at.as_deref() {
        Some(text) => time(text).map_err(|e| format!("data.updatedAt: {e}"))?,
        None => fallback_updated,
    };
    let created = wire
        .created_at
        .as_deref()
        .map(|text| time(text).map_err(|e| format!("data.createdAt: {e}")))
        .transpose()?;
    let currency = wire.currency.as_deref().unwrap_or(currency);
    let total = wire
        .total
        .map(|total| {
            let text = scalar_text(total).ok_or("data.total is not a number")?;
            let minor = decimal_to_minor(&text).map_err(|e| format!("data.total: {e}"))?;
            Money::from_minor(minor, currency).map_err(|e| format!("data.currency: {e}"))
        })
        .transpose()?;
    Ok(Order {
        key: OrderKey {
            provider: ProviderKind::Lagerkoll,
            account: account.to_owned(),
            channel: store.to_string(),
            external_id,
        },
        status: wire.status,
        payment_status: None,
        shipping_status: None,
        total,
        upstream_created_at: created,
        upstream_updated_at: updated,
        payload: data.get().to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_read_per_resource() {
        let body = |code: i64| ErrorBody {
            error_code: Some(code),
            error_message: Some("x".into()),
            ..ErrorBody::default()
        };
        assert!(
            matches!(interpret(Resource::Stores, 400, &body(900001)), Refused::StopStore(m) if m.contains("store/api_key"))
        );
        assert!(
            matches!(interpret(Resource::Webhooks, 400, &body(902123)), Refused::StopStore(m) if m.contains("activate the API feature"))
        );
        assert!(matches!(
            interpret(Resource::Webhooks, 500, &body(900101)),
            Refused::Transient(_)
        ));
        assert!(
            matches!(interpret(Resource::Webhooks, 400, &body(902101)), Refused::Permanent(m) if m.contains("getting webhook"))
        );
        assert!(
            matches!(interpret(Resource::Feature, 400, &body(902101)), Refused::Permanent(m) if m.contains("getting feature"))
        );
        assert!(
            matches!(interpret(Resource::Webhooks, 400, &body(902125)), Refused::Permanent(m) if m.contains("feature_id"))
        );
        assert!(matches!(
            interpret(Resource::Stores, 401, &ErrorBody::default()),
            Refused::StopStore(_)
        ));
        assert!(
            matches!(interpret(Resource::Stores, 400, &body(123456)), Refused::Permanent(m) if m.contains("123456"))
        );
    }

    #[test]
    fn an_order_delivery_maps_with_the_store_as_channel() {
        let data = RawValue::from_string(
            r#"{"id": 77, "status": "paid", "total": "129.50", "updatedAt": "2024-05-22T10:15:03Z"}"#
                .into(),
        )
        .unwrap();
        let at = Utc::now();
        let order = map_order("sthlm", 9875, &data, "SEK", at).unwrap();
        assert_eq!(order.key.channel, "9875");
        assert_eq!(order.key.external_id, "77");
        assert_eq!(
            order.total,
            Some(Money {
                minor: 12950,
                currency: "SEK".into()
            })
        );
        let undated = RawValue::from_string(r#"{"orderId": "A"}"#.into()).unwrap();
        assert_eq!(
            map_order("s", 1, &undated, "SEK", at)
                .unwrap()
                .upstream_updated_at,
            at
        );
        let empty = RawValue::from_string("{ }".into()).unwrap();
        assert!(is_empty_data(Some(&empty)));
        assert!(!is_empty_data(Some(&data)));
        assert!(map_order("s", 1, &empty, "SEK", at).is_err());
    }
}
