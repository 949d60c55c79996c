//! Graas JSON exactly as its docs name it, and the mapping into [`crate::model::Order`].
//! Parsing is lenient wherever the docs show variation; only the fields an order cannot be stored
//! without (site, orderID, timeLastUpdated) are required.

use crate::model::{Money, Order, OrderKey, ProviderKind};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_json::value::RawValue;

/// `GET /v1/orders`. Orders stay raw until each is mapped, so one bad order cannot spoil its page.
#[derive(Debug, Deserialize)]
pub struct OrdersPage<'a> {
    #[serde(
        rename = "numberOfPages",
        default,
        deserialize_with = "lenient_opt_u64"
    )]
    pub number_of_pages: Option<u64>,
    #[serde(
        rename = "numberOfRecords",
        default,
        deserialize_with = "lenient_opt_u64"
    )]
    pub number_of_records: Option<u64>,
    #[serde(borrow, default)]
    pub history: Vec<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
pub struct Site {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(rename = "nickNameID")]
    pub nick_name_id: String,
}

#[derive(Debug, Deserialize)]
pub struct WireMoney {
    #[serde(deserialize_with = "lenient_i64")]
    pub amount: i64,
    #[serde(rename = "currencyCode")]
    pub currency_code: String,
}

#[derive(Debug, Deserialize)]
pub struct Address {
    #[serde(default, deserialize_with = "string_or_number")]
    pub phone: Option<String>,
    #[serde(rename = "postalCode", default, deserialize_with = "string_or_number")]
    pub postal_code: Option<String>,
    #[serde(default)]
    pub country: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct ShippingDetails {
    #[serde(default)]
    pub address: Option<Address>,
}

#[derive(Debug, Deserialize)]
pub struct OrderItem {
    #[serde(rename = "orderItemID", default, deserialize_with = "string_or_number")]
    pub order_item_id: Option<String>,
    #[serde(default, deserialize_with = "lenient_opt_i64")]
    pub quantity: Option<i64>,
    #[serde(rename = "itemAmount", default)]
    pub item_amount: Option<WireMoney>,
}

/// The fields of a Graas order that ordersync reads; the rest stays in the stored payload.
#[derive(Debug, Deserialize)]
pub struct WireOrder {
    pub site: Site,
    #[serde(rename = "orderID", deserialize_with = "required_string_or_number")]
    pub order_id: String,
    #[serde(rename = "orderStatus", default)]
    pub order_status: Option<String>,
    #[serde(rename = "paymentStatus", default)]
    pub payment_status: Option<String>,
    #[serde(rename = "shippingStatus", default)]
    pub shipping_status: Option<String>,
    #[serde(rename = "orderAmount", default)]
    pub order_amount: Option<WireMoney>,
    #[serde(rename = "paymentMethods", default, deserialize_with = "one_or_many")]
    pub payment_methods: Vec<String>,
    #[serde(rename = "shippingDetails", default)]
    pub shipping_details: Option<ShippingDetails>,
    #[serde(rename = "orderItems", default)]
    pub order_items: Vec<OrderItem>,
    #[serde(rename = "timeCreated", default, deserialize_with = "lenient_opt_i64")]
    pub time_created: Option<i64>,
    #[serde(
        rename = "timeOrderCreated",
        default,
        deserialize_with = "lenient_opt_i64"
    )]
    pub time_order_created: Option<i64>,
    #[serde(rename = "timeLastUpdated", deserialize_with = "lenient_i64")]
    pub time_last_updated: i64,
}

/// Why a Graas order could not be stored; the text goes into `quarantine.error`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MapError {
    #[error("not a Graas order: {0}")]
    Shape(String),
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

/// Parses one raw order of account `account` into the canonical model.
pub fn map_order(account: &str, raw: &RawValue) -> Result<Order, MapError> {
    // Parsed plainly first (the path tracking costs on every field); only a failure is parsed
    // again for the path that names the field, e.g. `orderItems[2].quantity`.
    let wire: WireOrder = match serde_json::from_str(raw.get()) {
        Ok(wire) => wire,
        Err(error) => return Err(shape_error(raw.get(), error)),
    };
    if wire.site.nick_name_id.trim().is_empty() {
        return Err(MapError::Empty {
            field: "site.nickNameID",
        });
    }
    if wire.order_id.trim().is_empty() {
        return Err(MapError::Empty { field: "orderID" });
    }
    let upstream_updated_at =
        unix_seconds(wire.time_last_updated).ok_or_else(|| MapError::Invalid {
            field: "timeLastUpdated",
            reason: format!("{} is not a Unix time in seconds", wire.time_last_updated),
        })?;
    let total = wire
        .order_amount
        .as_ref()
        .map(|m| Money::from_minor(m.amount, &m.currency_code))
        .transpose()
        .map_err(|e| MapError::Invalid {
            field: "orderAmount.currencyCode",
            reason: e.to_string(),
        })?;
    if let Some(total) = &total {
        check_item_sum(&wire, total);
    }
    Ok(Order {
        key: OrderKey {
            provider: ProviderKind::Graas,
            account: account.to_owned(),
            channel: wire.site.nick_name_id,
            external_id: wire.order_id,
        },
        status: wire.order_status,
        payment_status: wire.payment_status,
        shipping_status: wire.shipping_status,
        total,
        upstream_created_at: wire
            .time_order_created
            .or(wire.time_created)
            .and_then(unix_seconds),
        upstream_updated_at,
        payload: raw.get().to_owned(),
    })
}

fn shape_error(raw: &str, plain: serde_json::Error) -> MapError {
    let mut json = serde_json::Deserializer::from_str(raw);
    match serde_path_to_error::deserialize::<_, WireOrder>(&mut json) {
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                MapError::Shape(inner.to_string())
            } else {
                MapError::Shape(format!("{path}: {inner}"))
            }
        }
        Ok(_) => MapError::Shape(plain.to_string()),
    }
}

/// Graas reports `orderAmount` = Σ quantity × itemAmount; a difference is worth a log line, never a
/// rejection (the totals Graas sends are what is stored).
fn check_item_sum(wire: &WireOrder, total: &Money) {
    let mut sum = 0i64;
    for item in &wire.order_items {
        let (Some(quantity), Some(amount)) = (item.quantity, &item.item_amount) else {
            return;
        };
        sum = sum.saturating_add(quantity.saturating_mul(amount.amount));
    }
    if !wire.order_items.is_empty() && sum != total.minor {
        tracing::debug!(
            order = %wire.order_id,
            order_amount = total.minor,
            item_sum = sum,
            "Graas orderAmount differs from the sum of its items"
        );
    }
}

fn unix_seconds(seconds: i64) -> Option<DateTime<Utc>> {
    // Before 2000 or after 2200 is not a Graas timestamp (milliseconds would land far beyond).
    if !(946_684_800..=7_258_118_400).contains(&seconds) {
        return None;
    }
    DateTime::from_timestamp(seconds, 0)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Int(i64),
    Float(f64),
    Text(String),
}

fn number_from(value: NumberOrString) -> Result<i64, String> {
    match value {
        NumberOrString::Int(n) => Ok(n),
        NumberOrString::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        NumberOrString::Float(f) => Err(format!("{f} is not a whole number")),
        NumberOrString::Text(t) => t
            .trim()
            .parse()
            .map_err(|_| format!("`{t}` is not a whole number")),
    }
}

pub(super) fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    number_from(NumberOrString::deserialize(d)?).map_err(de::Error::custom)
}

fn lenient_opt_i64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<NumberOrString>::deserialize(d)? {
        None => Ok(None),
        Some(NumberOrString::Text(t)) if t.trim().is_empty() => Ok(None),
        Some(value) => number_from(value).map(Some).map_err(de::Error::custom),
    }
}

fn lenient_opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    lenient_opt_i64(d)?
        .map(|n| u64::try_from(n).map_err(|_| de::Error::custom(format!("{n} is negative"))))
        .transpose()
}

/// Graas sends some identifiers as a number in one example and a string in the next.
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) => Some(s),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        Some(other) => {
            return Err(de::Error::custom(format!(
                "expected a string or a number, got {other}"
            )));
        }
    })
}

fn required_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    string_or_number(d)?.ok_or_else(|| de::Error::custom("is null"))
}

/// `paymentMethods` is a string in one example and an array in another.
fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        None => Vec::new(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn documented_variations_parse() {
        let body = r#"{
            "site": {"name": "Lazada", "nickNameID": "lazada-1"},
            "orderID": "34550403686697", "orderStatus": "SOMETHING_NEW",
            "paymentMethods": "VISA/MasterCard",
            "shippingDetails": {"address": {"phone": 213123, "postalCode": "018956"}},
            "orderAmount": {"amount": 4260, "currencyCode": "SGD"},
            "orderItems": [{"orderItemID": 1, "quantity": 12, "itemAmount": {"amount": 355, "currencyCode": "SGD"}}],
            "timeLastUpdated": 1700000000, "timeOrderCreated": "1699990000"
        }"#;
        let order = map_order("sg", &raw(body)).unwrap();
        assert_eq!(order.key.external_id, "34550403686697");
        assert_eq!(order.status.as_deref(), Some("SOMETHING_NEW"));
        assert_eq!(order.total, Some(Money::from_minor(4260, "SGD").unwrap()));
        assert_eq!(order.upstream_updated_at.timestamp(), 1_700_000_000);
        assert_eq!(
            order.upstream_created_at.unwrap().timestamp(),
            1_699_990_000
        );
        assert_eq!(order.payload, body);

        let wire: WireOrder = serde_json::from_str(body).unwrap();
        assert_eq!(wire.payment_methods, vec!["VISA/MasterCard"]);
        let address = wire.shipping_details.unwrap().address.unwrap();
        assert_eq!(address.phone.as_deref(), Some("213123"));
        assert_eq!(address.postal_code.as_deref(), Some("018956"));

        let many: WireOrder = serde_json::from_str(&body.replace(
            r#""paymentMethods": "VISA/MasterCard""#,
            r#""paymentMethods": ["MIXEDCARD"]"#,
        ))
        .unwrap();
        assert_eq!(many.payment_methods, vec!["MIXEDCARD"]);
    }

    #[test]
    fn missing_required_fields_are_named() {
        let no_time = raw(r#"{"site": {"nickNameID": "q-1"}, "orderID": "1"}"#);
        assert!(
            map_order("a", &no_time)
                .unwrap_err()
                .to_string()
                .contains("timeLastUpdated")
        );
        let empty_id = raw(
            r#"{"site": {"nickNameID": "q-1"}, "orderID": " ", "timeLastUpdated": 1700000000}"#,
        );
        assert_eq!(
            map_order("a", &empty_id).unwrap_err(),
            MapError::Empty { field: "orderID" }
        );
        let bad_quantity = raw(
            r#"{"site": {"nickNameID": "q-1"}, "orderID": "1", "timeLastUpdated": 1700000000,
                "orderItems": [{"quantity": 1}, {"quantity": "lots"}]}"#,
        );
        let message = map_order("a", &bad_quantity).unwrap_err().to_string();
        assert!(message.contains("orderItems[1].quantity"), "{message}");
        let millis = raw(
            r#"{"site": {"nickNameID": "q-1"}, "orderID": "1", "timeLastUpdated": 1700000000000}"#,
        );
        assert!(matches!(
            map_order("a", &millis),
            Err(MapError::Invalid {
                field: "timeLastUpdated",
                ..
            })
        ));
    }
}
