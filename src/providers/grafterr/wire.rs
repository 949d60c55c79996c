//! Grafterr's webhook delivery and order object, all *(assumed)*: the public docs name the
//! events but not their payload. Read leniently, mapped into [`Order`]; what does not fit is
//! an error naming the field, and the raw delivery stays in the inbox for a replay.

use crate::model::{Money, Order, OrderKey, ProviderKind};
use crate::providers::json::{rfc3339 as time, scalar_text};
use crate::providers::money::decimal_to_minor;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The six events Grafterr's panel offers (`pos|web|selfkiosk.order.created|updated`).
pub const SOURCES: [&str; 3] = ["pos", "web", "selfkiosk"];

/// One delivery: `{ eventId, event, createdAt, data: { order } }`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope<'a> {
    #[serde(default)]
    pub event_id: Option<String>,
    #[serde(default)]
    pub event: Option<String>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default, borrow)]
    pub data: Option<EnvelopeData<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct EnvelopeData<'a> {
    #[serde(default, borrow)]
    pub order: Option<&'a RawValue>,
}

impl<'a> Envelope<'a> {
    pub fn parse(body: &'a [u8]) -> Result<Self, String> {
        serde_json::from_slice(body).map_err(|e| format!("not a Grafterr delivery: {e}"))
    }

    /// The order object exactly as it arrived.
    pub fn order(&self) -> Option<&'a RawValue> {
        self.data.as_ref().and_then(|d| d.order)
    }

    /// `web` of `web.order.updated`, when the event is an order event.
    pub fn event_source(&self) -> Option<&str> {
        let event = self.event.as_deref()?;
        let source = event
            .strip_suffix(".order.created")
            .or_else(|| event.strip_suffix(".order.updated"))?;
        SOURCES.contains(&source).then_some(source)
    }
}

/// The fields of an order ordersync reads; the rest stays in the payload.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireOrder<'a> {
    #[serde(default, borrow)]
    order_id: Option<&'a RawValue>,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    payment_status: Option<String>,
    #[serde(default, borrow)]
    items: Option<&'a RawValue>,
    #[serde(default, borrow)]
    total: Option<&'a RawValue>,
    #[serde(default)]
    currency: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    updated_at: Option<String>,
}

/// An order id, a string or a number in the payload.
pub fn order_id(order: &RawValue) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Id<'a> {
        #[serde(default, borrow)]
        order_id: Option<&'a RawValue>,
    }
    serde_json::from_str::<Id>(order.get())
        .ok()?
        .order_id
        .and_then(scalar_text)
}

/// True when the order carries its items: a delivery without them is completed by a fetch.
pub fn has_items(order: &RawValue) -> bool {
    #[derive(Deserialize)]
    struct Items<'a> {
        #[serde(default, borrow)]
        items: Option<&'a RawValue>,
    }
    serde_json::from_str::<Items>(order.get())
        .ok()
        .and_then(|o| o.items)
        .is_some_and(|items| {
            let text = items.get().trim();
            text.starts_with('[') && !text[1..].trim_start().starts_with(']')
        })
}

/// The order a fetch returned: the object itself, or wrapped in `order` or `data.order`.
pub fn fetched_order(body: &[u8]) -> Result<Box<RawValue>, String> {
    #[derive(Deserialize)]
    struct Wrapped {
        #[serde(default)]
        order: Option<Box<RawValue>>,
        #[serde(default)]
        data: Option<Box<Wrapped>>,
    }
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let wrapped: Wrapped = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    if let Some(order) = wrapped.order {
        return Ok(order);
    }
    if let Some(order) = wrapped.data.and_then(|d| d.order) {
        return Ok(order);
    }
    RawValue::from_string(text.to_owned()).map_err(|e| e.to_string())
}

/// Maps one order object. `source` is the event's when the order names none; `currency` the
/// account's when the order names none; `fallback_updated` the delivery's time when the order
/// has no `updatedAt`.
pub fn map_order(
    account: &str,
    order: &RawValue,
    source: Option<&str>,
    currency: &str,
    fallback_updated: Option<DateTime<Utc>>,
) -> Result<Order, String> {
    let wire: WireOrder =
        serde_json::from_str(order.get()).map_err(|e| format!("order object: {e}"))?;
    let external_id = wire
        .order_id
        .and_then(scalar_text)
        .ok_or("order.orderId is missing or empty")?;
    let channel = wire
        .source
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .or(source)
        .ok_or("order.source is missing and the event names none (pos, web or selfkiosk)")?
        .to_ascii_lowercase();
    let updated = match wire.updated_at.as_deref() {
        Some(text) => time(text).map_err(|e| format!("order.updatedAt: {e}"))?,
        None => fallback_updated.ok_or("order.updatedAt is missing")?,
    };
    let created = wire
        .created_at
        .as_deref()
        .map(|text| time(text).map_err(|e| format!("order.createdAt: {e}")))
        .transpose()?;
    let currency = wire.currency.as_deref().unwrap_or(currency);
    let total = wire
        .total
        .map(|total| {
            let text = scalar_text(total).ok_or("order.total is not a number")?;
            let minor = decimal_to_minor(&text).map_err(|e| format!("order.total: {e}"))?;
            Money::from_minor(minor, currency).map_err(|e| format!("order.currency: {e}"))
        })
        .transpose()?;
    let _ = wire.items;
    Ok(Order {
        key: OrderKey {
            provider: ProviderKind::Grafterr,
            account: account.to_owned(),
            channel,
            external_id,
        },
        status: wire.status,
        payment_status: wire.payment_status,
        shipping_status: None,
        total,
        upstream_created_at: created,
        upstream_updated_at: updated,
        payload: order.get().to_owned(),
    })
}

/// The envelope's `createdAt`, when readable.
pub fn event_time(envelope: &Envelope<'_>) -> Option<DateTime<Utc>> {
    envelope.created_at.as_deref().and_then(|t| time(t).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DELIVERY: &str = r#"{ "eventId": "7f1c", "event": "web.order.updated", "createdAt": "2024-05-22T10:15:03Z",
      "data": { "order": {
        "orderId": "A-1", "orderNumber": "1042", "source": "web", "status": "accepted",
        "items": [ { "name": "Flat white", "quantity": 2, "unitPrice": 3.2, "totalPrice": 6.4 } ],
        "subtotal": 6.4, "total": 6.40, "currency": "GBP",
        "createdAt": "2024-05-22T10:14:00Z", "updatedAt": "2024-05-22T10:15:02Z" } } }"#;

    #[test]
    fn a_delivery_maps_with_exact_money_and_its_raw_order() {
        let envelope = Envelope::parse(DELIVERY.as_bytes()).unwrap();
        assert_eq!(envelope.event_source(), Some("web"));
        let order = envelope.order().unwrap();
        assert!(has_items(order));
        assert_eq!(order_id(order).as_deref(), Some("A-1"));
        let mapped = map_order("cafe", order, envelope.event_source(), "EUR", None).unwrap();
        assert_eq!(mapped.key.channel, "web");
        assert_eq!(mapped.key.external_id, "A-1");
        assert_eq!(mapped.status.as_deref(), Some("accepted"));
        assert_eq!(
            mapped.total,
            Some(Money {
                minor: 640,
                currency: "GBP".into()
            })
        );
        assert!(
            mapped.payload.contains(r#""total": 6.40"#),
            "kept as it arrived"
        );
        assert_eq!(
            mapped.upstream_updated_at.to_rfc3339(),
            "2024-05-22T10:15:02+00:00"
        );
    }

    #[test]
    fn missing_items_numbers_and_odd_amounts_are_told_apart() {
        let bare = RawValue::from_string(r#"{"orderId": 42, "items": []}"#.into()).unwrap();
        assert!(!has_items(&bare));
        assert_eq!(order_id(&bare).as_deref(), Some("42"));
        let none = RawValue::from_string(r#"{"orderId": "x"}"#.into()).unwrap();
        assert!(!has_items(&none));
        let odd = RawValue::from_string(
            r#"{"orderId":"x","source":"pos","total":1.005,"updatedAt":"2024-05-22T10:15:02Z"}"#
                .into(),
        )
        .unwrap();
        let error = map_order("cafe", &odd, None, "GBP", None).unwrap_err();
        assert!(error.contains("order.total"), "{error}");
        let no_time = RawValue::from_string(r#"{"orderId":"x","source":"pos"}"#.into()).unwrap();
        assert!(
            map_order("cafe", &no_time, None, "GBP", None)
                .unwrap_err()
                .contains("updatedAt")
        );
    }

    #[test]
    fn a_fetched_order_may_come_wrapped() {
        for body in [
            r#"{"orderId":"A"}"#,
            r#"{"order":{"orderId":"A"}}"#,
            r#"{"data":{"order":{"orderId":"A"}}}"#,
        ] {
            let order = fetched_order(body.as_bytes()).unwrap();
            assert_eq!(order_id(&order).as_deref(), Some("A"), "{body}");
        }
    }
}
