//! KassaForte's JSON, as far as ordersync reads it. The public reference names the fields of
//! infos, open hours and the error codes; every other name here is assumed (see
//! `docs/providers/kassaforte.md`) and kept in this one file so the real schemas can replace it.

use crate::providers::money;
use chrono::NaiveTime;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// `GET /v1/infos`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Infos {
    pub last_menu_refresh: Option<String>,
    pub last_open_times_refresh: Option<String>,
    pub last_delivery_cost_refresh: Option<String>,
    pub connection_ok: Option<bool>,
    pub delivery_open: Option<bool>,
    pub pickup_open: Option<bool>,
    pub delivery_wait_minutes: Option<i64>,
    pub pickup_wait_minutes: Option<i64>,
    pub unavailable_products: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawInfos {
    last_menu_refresh: Option<Value>,
    last_open_times_refresh: Option<Value>,
    last_delivery_cost_refresh: Option<Value>,
    connection_status: Option<Value>,
    shop_open_status: Option<PerService>,
    waiting_times: Option<PerService>,
    #[serde(default)]
    unavailable_products: Option<Vec<Value>>,
}

#[derive(Deserialize)]
struct PerService {
    delivery: Option<Value>,
    pickup: Option<Value>,
}

/// Opaque text of a refresh value: compared for inequality only.
fn opaque(value: Option<Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        Value::String(text) => Some(text),
        other => Some(other.to_string()),
    }
}

fn flag(value: Option<&Value>, field: &str) -> Result<Option<bool>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(Value::Number(n)) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
            Ok(Some(n.as_i64() == Some(1)))
        }
        Some(other) => Err(format!("{field}: `{other}` is not true or false")),
    }
}

fn minutes(value: Option<&Value>, field: &str) -> Result<Option<i64>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_i64() {
            Some(m) => Ok(Some(m)),
            None => Err(format!("{field}: `{n}` is not a whole number of minutes")),
        },
        Some(Value::String(s)) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("{field}: `{s}` is not a whole number of minutes")),
        Some(other) => Err(format!("{field}: `{other}` is not a number of minutes")),
    }
}

/// Item numbers arrive as strings or numbers; both mean the same item.
fn item_no(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Infos {
    pub fn parse(body: &[u8]) -> Result<Infos, String> {
        let raw: RawInfos = serde_json::from_slice(body).map_err(|e| format!("infos: {e}"))?;
        let open = raw.shop_open_status.as_ref();
        let waits = raw.waiting_times.as_ref();
        let mut unavailable = Vec::new();
        for value in raw.unavailable_products.unwrap_or_default() {
            unavailable.push(
                item_no(&value).ok_or_else(|| {
                    format!("unavailableProducts: `{value}` is not an item number")
                })?,
            );
        }
        Ok(Infos {
            last_menu_refresh: opaque(raw.last_menu_refresh),
            last_open_times_refresh: opaque(raw.last_open_times_refresh),
            last_delivery_cost_refresh: opaque(raw.last_delivery_cost_refresh),
            connection_ok: flag(raw.connection_status.as_ref(), "connectionStatus")?,
            delivery_open: flag(
                open.and_then(|o| o.delivery.as_ref()),
                "shopOpenStatus.delivery",
            )?,
            pickup_open: flag(
                open.and_then(|o| o.pickup.as_ref()),
                "shopOpenStatus.pickup",
            )?,
            delivery_wait_minutes: minutes(
                waits.and_then(|w| w.delivery.as_ref()),
                "waitingTimes.delivery",
            )?,
            pickup_wait_minutes: minutes(
                waits.and_then(|w| w.pickup.as_ref()),
                "waitingTimes.pickup",
            )?,
            unavailable_products: unavailable,
        })
    }
}

/// One opening interval, shop-local; an end at or before the start is on the next day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

/// `GET /v1/openhours`: eight rows (Monday … Sunday, holidays) and the accept offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenHours {
    pub days: Vec<Vec<Interval>>,
    /// Minutes before opening that orders are taken.
    pub accept_start: i64,
    /// Minutes before closing that orders stop.
    pub accept_end: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawOpenHours {
    openingtimes: Vec<Vec<RawInterval>>,
    #[serde(default)]
    accept_start: i64,
    #[serde(default)]
    accept_end: i64,
}

#[derive(Deserialize)]
struct RawInterval {
    start: String,
    end: String,
}

/// `HH:MM` (or `HH:MM:SS`); `24:00` is the end of the day.
fn clock_time(text: &str, field: &str) -> Result<NaiveTime, String> {
    let text = text.trim();
    if text == "24:00" || text == "24:00:00" {
        return Ok(NaiveTime::MIN);
    }
    NaiveTime::parse_from_str(text, "%H:%M")
        .or_else(|_| NaiveTime::parse_from_str(text, "%H:%M:%S"))
        .map_err(|_| format!("{field}: `{text}` is not a time of day (HH:MM)"))
}

impl OpenHours {
    pub fn parse(body: &[u8]) -> Result<OpenHours, String> {
        let raw: RawOpenHours =
            serde_json::from_slice(body).map_err(|e| format!("openhours: {e}"))?;
        if raw.openingtimes.len() < 7 {
            return Err(format!(
                "openingtimes: has {} rows; expected 8 (Monday … Sunday, holidays)",
                raw.openingtimes.len()
            ));
        }
        if !(0..=24 * 60).contains(&raw.accept_start) || !(0..=24 * 60).contains(&raw.accept_end) {
            return Err("acceptStart/acceptEnd: must be minutes between 0 and 1440".to_owned());
        }
        let mut days = Vec::with_capacity(8);
        for (day, row) in raw.openingtimes.iter().enumerate() {
            let mut intervals = Vec::with_capacity(row.len());
            for (i, interval) in row.iter().enumerate() {
                let at = format!("openingtimes[{day}][{i}]");
                intervals.push(Interval {
                    start: clock_time(&interval.start, &format!("{at}.start"))?,
                    end: clock_time(&interval.end, &format!("{at}.end"))?,
                });
            }
            days.push(intervals);
        }
        Ok(OpenHours {
            days,
            accept_start: raw.accept_start,
            accept_end: raw.accept_end,
        })
    }
}

/// The 14-digit order id KassaForte gives a submitted order.
pub fn valid_order_id(id: &str) -> bool {
    id.len() == 14 && id.bytes().all(|b| b.is_ascii_digit())
}

/// An order id as sent: a string, or a number (which must keep all 14 digits).
fn order_id(value: &Value) -> Result<String, String> {
    let id = match value {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        other => return Err(format!("orderId: `{other}` is not an order id")),
    };
    if valid_order_id(&id) {
        Ok(id)
    } else {
        Err(format!("orderId: `{id}` is not 14 digits"))
    }
}

/// The `201 Created` answer to `POST /v1/order`: the new order's id.
pub fn created_order_id(body: &[u8]) -> Result<String, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("order answer: {e}"))?;
    order_id(value.get("orderId").unwrap_or(&Value::Null))
}

/// `GET /v1/order/{id}`: the order's status, kept verbatim.
pub fn order_status(body: &[u8]) -> Result<String, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| format!("order status: {e}"))?;
    match value.get("status") {
        Some(Value::String(status)) if !status.trim().is_empty() => Ok(status.trim().to_owned()),
        Some(other) => Err(format!("status: `{other}` is not a status")),
        None => Err("status: missing".to_owned()),
    }
}

/// A `409 Conflict` body: `errorCode` and `errorMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConflictBody {
    pub code: Option<u16>,
    pub message: String,
}

pub fn conflict_body(body: &[u8]) -> ConflictBody {
    let value: Option<Value> = serde_json::from_slice(body).ok();
    let code = value.as_ref().and_then(|v| match v.get("errorCode")? {
        Value::Number(n) => n.as_u64().and_then(|c| u16::try_from(c).ok()),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    });
    let message = value
        .as_ref()
        .and_then(|v| v.get("errorMessage")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(body).chars().take(500).collect());
    ConflictBody { code, message }
}

/// `GET /v1/discountcode`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Discount {
    /// Reduce the cart by this many minor units (exceptions respected).
    Amount { minor: i64, exceptions: Vec<String> },
    /// Reduce by this percentage, as text exactly as sent (exceptions respected).
    Percent {
        percent: String,
        exceptions: Vec<String>,
    },
    /// Add this article free of charge.
    Article {
        item_no: String,
        size_id: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDiscount<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
    item_no: Option<Value>,
    size_id: Option<Value>,
    #[serde(default)]
    exceptions: Vec<Value>,
}

impl Discount {
    pub fn parse(body: &[u8]) -> Result<Discount, String> {
        let raw: RawDiscount =
            serde_json::from_slice(body).map_err(|e| format!("discount code: {e}"))?;
        let exceptions = raw.exceptions.iter().filter_map(item_no).collect();
        let value = || {
            raw.value
                .map(|v| v.get().trim().trim_matches('"').to_owned())
                .ok_or_else(|| "value: missing".to_owned())
        };
        match raw.kind.as_str() {
            "amount" => Ok(Discount::Amount {
                minor: money::decimal_to_minor(&value()?).map_err(|e| format!("value: {e}"))?,
                exceptions,
            }),
            "percent" => Ok(Discount::Percent {
                percent: value()?,
                exceptions,
            }),
            "article" => Ok(Discount::Article {
                item_no: raw
                    .item_no
                    .as_ref()
                    .and_then(item_no)
                    .ok_or("itemNo: missing for an article discount")?,
                size_id: raw.size_id.as_ref().and_then(item_no),
            }),
            other => Err(format!("type: `{other}` is not amount, percent or article")),
        }
    }
}

/// `GET /v1/coupon`: the coupon and what is left on it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Coupon {
    pub number: String,
    pub remaining_minor: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawCoupon<'a> {
    number: Option<Value>,
    #[serde(borrow, alias = "amount")]
    remaining_amount: Option<&'a RawValue>,
}

impl Coupon {
    pub fn parse(body: &[u8]) -> Result<Coupon, String> {
        let raw: RawCoupon = serde_json::from_slice(body).map_err(|e| format!("coupon: {e}"))?;
        let amount = raw
            .remaining_amount
            .ok_or("remainingAmount: missing")?
            .get()
            .trim()
            .trim_matches('"')
            .to_owned();
        Ok(Coupon {
            number: raw.number.as_ref().and_then(item_no).unwrap_or_default(),
            remaining_minor: money::decimal_to_minor(&amount)
                .map_err(|e| format!("remainingAmount: {e}"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infos_are_read_leniently_but_never_guessed() {
        let infos = Infos::parse(
            br#"{"lastMenuRefresh":"2016-04-26 10:15:00","lastOpenTimesRefresh":7,
                "lastDeliveryCostRefresh":null,"connectionStatus":true,
                "shopOpenStatus":{"delivery":false,"pickup":1},
                "waitingTimes":{"delivery":45,"pickup":"20"},
                "unavailableProducts":["1201",3305]}"#,
        )
        .unwrap();
        assert_eq!(
            infos.last_menu_refresh.as_deref(),
            Some("2016-04-26 10:15:00")
        );
        assert_eq!(infos.last_open_times_refresh.as_deref(), Some("7"));
        assert_eq!(infos.last_delivery_cost_refresh, None);
        assert_eq!(infos.delivery_open, Some(false));
        assert_eq!(infos.pickup_open, Some(true));
        assert_eq!(infos.pickup_wait_minutes, Some(20));
        assert_eq!(infos.unavailable_products, vec!["1201", "3305"]);
        let bad = Infos::parse(br#"{"connectionStatus":"maybe"}"#).unwrap_err();
        assert!(bad.contains("connectionStatus"), "{bad}");
    }

    #[test]
    fn open_hours_need_their_rows_and_times() {
        let eight = r#"[{"start":"11:30","end":"14:00"}]"#;
        let body = format!(
            r#"{{"openingtimes":[{eight},{eight},{eight},{eight},{eight},{eight},[],[{{"start":"18:00","end":"24:00"}}]],"acceptStart":15,"acceptEnd":10}}"#
        );
        let hours = OpenHours::parse(body.as_bytes()).unwrap();
        assert_eq!(hours.days.len(), 8);
        assert_eq!(hours.days[7][0].end, NaiveTime::MIN);
        let bad =
            OpenHours::parse(br#"{"openingtimes":[[{"start":"9","end":"x"}],[],[],[],[],[],[]]}"#)
                .unwrap_err();
        assert!(bad.contains("openingtimes[0][0].start"), "{bad}");
    }

    #[test]
    fn order_ids_are_exactly_fourteen_digits() {
        assert_eq!(
            created_order_id(br#"{"orderId":"20240522123456"}"#).unwrap(),
            "20240522123456"
        );
        assert_eq!(
            created_order_id(br#"{"orderId":20240522123456}"#).unwrap(),
            "20240522123456"
        );
        assert!(created_order_id(br#"{"orderId":"2024052212345"}"#).is_err());
        assert!(created_order_id(br#"{"orderId":"2024052212345x"}"#).is_err());
        assert!(created_order_id(br#"{"order":"20240522123456"}"#).is_err());
    }

    #[test]
    fn discounts_and_coupons_keep_exact_amounts() {
        assert_eq!(
            Discount::parse(br#"{"type":"amount","value":2.1,"exceptions":[3,"4"]}"#).unwrap(),
            Discount::Amount {
                minor: 210,
                exceptions: vec!["3".into(), "4".into()]
            }
        );
        assert_eq!(
            Discount::parse(br#"{"type":"percent","value":12.5}"#).unwrap(),
            Discount::Percent {
                percent: "12.5".into(),
                exceptions: vec![]
            }
        );
        assert!(matches!(
            Discount::parse(br#"{"type":"article","itemNo":"1201","sizeId":2}"#).unwrap(),
            Discount::Article { .. }
        ));
        assert_eq!(
            Coupon::parse(br#"{"number":"C-1","remainingAmount":19.99}"#).unwrap(),
            Coupon {
                number: "C-1".into(),
                remaining_minor: 1999
            }
        );
    }
}
