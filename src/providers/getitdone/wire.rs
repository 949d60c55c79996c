//! Get It Done's JSON: the event envelope (`_eid`, `_type`, `_v` plus flat payload fields),
//! OrderStatusEvent snapshots mapped into [`Order`], the command outcome events, and commands.
//! Every payload field is optional and unknown fields are ignored: 1.x only ever adds fields.

use crate::model::{Order, OrderKey, ProviderKind};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const ORDER_STATUS_EVENT: &str = "OrderStatusEvent";
pub const COMMAND_RESULT_EVENT: &str = "CommandResultEvent";
pub const COMMAND_ERROR_EVENT: &str = "CommandErrorEvent";

/// The reserved fields of every event. A delivery without `_type` is not an event.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Envelope {
    #[serde(rename = "_eid", default)]
    pub event_id: Option<String>,
    #[serde(rename = "_type")]
    pub event_type: String,
    #[serde(rename = "_v", default)]
    pub version: Option<String>,
    #[serde(rename = "orderId", default)]
    pub order_id: Option<String>,
    #[serde(rename = "_cid", default)]
    pub command_id: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body is not an event: `_type` is missing or not a string")]
    NoType,
}

impl Envelope {
    pub fn parse(body: &[u8]) -> Result<Envelope, EnvelopeError> {
        let value: Value =
            serde_json::from_slice(body).map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        if !value.get("_type").is_some_and(Value::is_string) {
            return Err(EnvelopeError::NoType);
        }
        serde_json::from_value(value).map_err(|_| EnvelopeError::NoType)
    }
}

/// The fields of an OrderStatusEvent ordersync reads; the whole snapshot is kept as payload.
#[derive(Debug, Deserialize)]
struct OrderStatusFields {
    #[serde(rename = "_type")]
    event_type: String,
    #[serde(rename = "orderId")]
    order_id: Option<String>,
    status: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnapshotError {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("`_type` is `{0}`, not OrderStatusEvent")]
    WrongType(String),
    #[error("`orderId` is missing or empty")]
    NoOrderId,
    #[error("`orderId` is `{got}`, not the order asked for (`{asked}`)")]
    OtherOrder { asked: String, got: String },
}

/// A polled OrderStatusEvent as an order: channel `''` (an account has no channels), status
/// verbatim, `observed_at` as its version (the poll is the current state at that moment).
pub fn map_snapshot(
    account: &str,
    asked: &str,
    body: &[u8],
    observed_at: DateTime<Utc>,
) -> Result<Order, SnapshotError> {
    let fields: OrderStatusFields =
        serde_json::from_slice(body).map_err(|e| SnapshotError::NotJson(e.to_string()))?;
    if fields.event_type != ORDER_STATUS_EVENT {
        return Err(SnapshotError::WrongType(fields.event_type));
    }
    let order_id = fields
        .order_id
        .filter(|id| !id.trim().is_empty())
        .ok_or(SnapshotError::NoOrderId)?;
    if order_id != asked {
        return Err(SnapshotError::OtherOrder {
            asked: asked.to_owned(),
            got: order_id,
        });
    }
    Ok(Order {
        key: OrderKey {
            provider: ProviderKind::GetItDone,
            account: account.to_owned(),
            channel: String::new(),
            external_id: order_id,
        },
        status: fields.status,
        payment_status: None,
        shipping_status: None,
        total: None,
        upstream_created_at: None,
        upstream_updated_at: observed_at,
        payload: String::from_utf8_lossy(body).into_owned(),
    })
}

/// What a command's outcome event (pushed, or read from the command-status poll) says.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    Done { result: Value },
    Failed { code: String, message: String },
}

#[derive(Debug, Deserialize)]
struct OutcomeFields {
    #[serde(rename = "_type")]
    event_type: String,
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    result: Option<Value>,
}

/// Reads a CommandResultEvent or CommandErrorEvent; `None` for any other event.
pub fn command_outcome(body: &[u8]) -> Result<Option<CommandOutcome>, String> {
    let fields: OutcomeFields = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(match fields.event_type.as_str() {
        COMMAND_RESULT_EVENT => Some(CommandOutcome::Done {
            result: fields.result.unwrap_or(Value::Null),
        }),
        COMMAND_ERROR_EVENT => Some(CommandOutcome::Failed {
            code: match fields.code {
                Some(Value::String(code)) => code,
                Some(other) => other.to_string(),
                None => "unknown".into(),
            },
            message: fields.message.unwrap_or_default(),
        }),
        _ => None,
    })
}

/// One command as sent: the BaseCommand fields and the command's own.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Command {
    #[serde(rename = "_cid")]
    pub command_id: String,
    #[serde(rename = "_type")]
    pub command_type: &'static str,
    #[serde(rename = "_v")]
    pub version: String,
    #[serde(rename = "_meta")]
    pub meta: Value,
    #[serde(flatten)]
    pub payload: serde_json::Map<String, Value>,
}

/// The feed's page: events and where the next read starts.
#[derive(Debug, Deserialize)]
pub struct FeedPage {
    #[serde(default)]
    pub events: Vec<Box<serde_json::value::RawValue>>,
    pub next_cursor: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_polled_snapshot_is_an_order_with_its_status_verbatim() {
        let body = br#"{"_v":"1.1.0","_eid":"polled","_type":"OrderStatusEvent","orderId":"XXXtestOrder","orderNumber":"O-0000011111","externalId":null,"status":"appointment confirmed","futureField":{"a":1}}"#;
        let order = map_snapshot("gid", "XXXtestOrder", body, Utc::now()).unwrap();
        assert_eq!(order.key.channel, "");
        assert_eq!(order.key.external_id, "XXXtestOrder");
        assert_eq!(order.status.as_deref(), Some("appointment confirmed"));
        assert!(order.payload.contains("futureField"));
        assert_eq!(
            map_snapshot("gid", "other", body, Utc::now()).unwrap_err(),
            SnapshotError::OtherOrder {
                asked: "other".into(),
                got: "XXXtestOrder".into()
            }
        );
    }

    #[test]
    fn envelopes_need_a_type() {
        assert_eq!(Envelope::parse(b"{}"), Err(EnvelopeError::NoType));
        assert!(matches!(
            Envelope::parse(b"nope"),
            Err(EnvelopeError::NotJson(_))
        ));
        let e = Envelope::parse(br#"{"_type":"Whatever","_eid":"e1"}"#).unwrap();
        assert_eq!(e.event_id.as_deref(), Some("e1"));
    }

    #[test]
    fn command_outcomes_read_both_events() {
        let failed = command_outcome(
            br#"{"_type":"CommandErrorEvent","_cid":"7","code":"ORDER_LOCKED","message":"no"}"#,
        )
        .unwrap();
        assert_eq!(
            failed,
            Some(CommandOutcome::Failed {
                code: "ORDER_LOCKED".into(),
                message: "no".into()
            })
        );
        assert!(matches!(
            command_outcome(br#"{"_type":"CommandResultEvent","_cid":"7","result":{}}"#).unwrap(),
            Some(CommandOutcome::Done { .. })
        ));
        assert_eq!(
            command_outcome(br#"{"_type":"OrderStatusEvent"}"#).unwrap(),
            None
        );
    }
}
