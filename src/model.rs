//! Canonical types every provider maps into and every store writes. Plain data, no I/O.

use chrono::{DateTime, Utc};
use std::fmt;

/// The upstream systems ordersync speaks to. The string form is what the `provider` column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProviderKind {
    Graas,
    GetItDone,
    KassaForte,
    Grafterr,
    Lagerkoll,
}

impl ProviderKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Graas => "graas",
            ProviderKind::GetItDone => "getitdone",
            ProviderKind::KassaForte => "kassaforte",
            ProviderKind::Grafterr => "grafterr",
            ProviderKind::Lagerkoll => "lagerkoll",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Money in integer minor units of an ISO 4217 currency; never a float.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Money {
    pub minor: i64,
    pub currency: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    #[error("currency code `{0}` is not three ASCII letters (ISO 4217, e.g. SGD)")]
    Currency(String),
}

impl Money {
    /// Minor units as the upstream sent them (Graas already sends minor units).
    pub fn from_minor(minor: i64, currency: &str) -> Result<Self, MoneyError> {
        let code = currency.trim();
        if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(MoneyError::Currency(currency.to_owned()));
        }
        Ok(Money {
            minor,
            currency: code.to_ascii_uppercase(),
        })
    }
}

/// Where an order lives upstream: unique across everything ordersync stores.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OrderKey {
    pub provider: ProviderKind,
    /// The configured account name (`name` in the config), not the upstream account number.
    pub account: String,
    /// The sales channel inside the account (Graas: `site.nickNameID`).
    pub channel: String,
    /// The upstream order id, always a string (Graas order ids overflow integers).
    pub external_id: String,
}

/// One upstream order as ordersync stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Order {
    pub key: OrderKey,
    pub status: Option<String>,
    pub payment_status: Option<String>,
    pub shipping_status: Option<String>,
    pub total: Option<Money>,
    pub upstream_created_at: Option<DateTime<Utc>>,
    pub upstream_updated_at: DateTime<Utc>,
    /// The order's JSON exactly as the provider sent it.
    pub payload: String,
}

/// A record the provider sent that could not become an [`Order`]; kept whole for a person to look at.
#[derive(Debug, Clone, PartialEq)]
pub struct Quarantined {
    pub provider: ProviderKind,
    pub account: String,
    /// What was being read, e.g. `GET /v1/orders updatedAfter=… page 3`.
    pub source: String,
    pub error: String,
    pub raw: String,
}

/// Identifies one polled stream: its cursor and its run history are kept per stream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamKey {
    pub provider: ProviderKind,
    pub account: String,
    pub resource: String,
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.provider, self.account, self.resource)
    }
}

impl std::str::FromStr for ProviderKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            ProviderKind::Graas,
            ProviderKind::GetItDone,
            ProviderKind::KassaForte,
            ProviderKind::Grafterr,
            ProviderKind::Lagerkoll,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == text)
        .ok_or_else(|| {
            format!("unknown provider `{text}`; one of graas, getitdone, kassaforte, grafterr, lagerkoll")
        })
    }
}

/// What an action asks the upstream to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionKind {
    Accept,
    Cancel,
    Asn,
    /// Attach our order id to the upstream order (Get It Done `UpdateOrderExternalId`).
    Link,
    /// Attach our invoicing id (Get It Done `UpdateOrderInvoicingExternalId`).
    LinkInvoicing,
    /// Ask the upstream to send the order's state again (Get It Done `RefreshOrder`).
    Refresh,
    /// Submit a new order (KassaForte `POST /v1/order`).
    Submit,
}

impl ActionKind {
    pub const ALL: [ActionKind; 7] = [
        ActionKind::Accept,
        ActionKind::Cancel,
        ActionKind::Asn,
        ActionKind::Link,
        ActionKind::LinkInvoicing,
        ActionKind::Refresh,
        ActionKind::Submit,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ActionKind::Accept => "accept",
            ActionKind::Cancel => "cancel",
            ActionKind::Asn => "asn",
            ActionKind::Link => "link",
            ActionKind::LinkInvoicing => "link_invoicing",
            ActionKind::Refresh => "refresh",
            ActionKind::Submit => "submit",
        }
    }
}

impl std::str::FromStr for ActionKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ActionKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown action kind `{text}`; one of accept, cancel, asn, link, link_invoicing, refresh, submit"
                )
            })
    }
}

/// Where an action is in its life. `sent` is a command the upstream took whose outcome comes
/// later (Get It Done); `unknown` is a request that may or may not have reached an upstream that
/// cannot be asked (a KassaForte submission whose answer was lost), waiting for a person;
/// `failed` is final (the upstream refused it); `dead` ran out of attempts on transient errors
/// and can be retried by a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ActionState {
    Pending,
    InFlight,
    Sent,
    Unknown,
    Succeeded,
    Failed,
    Dead,
}

impl ActionState {
    pub const ALL: [ActionState; 7] = [
        ActionState::Pending,
        ActionState::InFlight,
        ActionState::Sent,
        ActionState::Unknown,
        ActionState::Succeeded,
        ActionState::Failed,
        ActionState::Dead,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            ActionState::Pending => "pending",
            ActionState::InFlight => "in_flight",
            ActionState::Sent => "sent",
            ActionState::Unknown => "unknown",
            ActionState::Succeeded => "succeeded",
            ActionState::Failed => "failed",
            ActionState::Dead => "dead",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            ActionState::Succeeded | ActionState::Failed | ActionState::Dead
        )
    }
}

impl std::str::FromStr for ActionState {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        ActionState::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| {
                format!(
                    "unknown state `{text}`; one of pending, in_flight, sent, unknown, succeeded, failed, dead"
                )
            })
    }
}

/// An action to enqueue.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAction {
    pub provider: ProviderKind,
    pub account: String,
    pub kind: ActionKind,
    /// The order's channel and id, for order actions.
    pub channel: Option<String>,
    pub external_id: Option<String>,
    /// Kind-specific details (items, reason, the ASN body), as JSON.
    pub request: serde_json::Value,
    /// The caller's key; `None` derives one from the content, so the same action twice is one.
    pub idempotency_key: Option<String>,
    pub max_attempts: i32,
}

impl NewAction {
    /// The key under which this action is unique.
    pub fn key(&self) -> String {
        if let Some(key) = &self.idempotency_key {
            return key.clone();
        }
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        for part in [
            self.provider.as_str(),
            &self.account,
            self.kind.as_str(),
            self.channel.as_deref().unwrap_or(""),
            self.external_id.as_deref().unwrap_or(""),
            &self.request.to_string(),
        ] {
            hash.update(part.as_bytes());
            hash.update([0]);
        }
        let digest = hash.finalize();
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        format!("derived:{hex}")
    }
}

/// A stored action as the outbox and the user see it. Kind and state stay text here because
/// rows can come from plain SQL; the outbox parses them and fails rows it cannot read.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Action {
    pub id: i64,
    pub idempotency_key: Option<String>,
    pub provider: String,
    pub account: String,
    pub kind: String,
    pub channel: Option<String>,
    pub external_id: Option<String>,
    pub request: serde_json::Value,
    pub state: String,
    pub attempts: i32,
    pub max_attempts: i32,
    pub next_attempt_at: DateTime<Utc>,
    pub claimed_by: Option<String>,
    pub claimed_until: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub result: Option<serde_json::Value>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Set while a request that must not be repeated blindly is being written; an action claimed
    /// again with it set may have reached the upstream.
    pub sending_since: Option<DateTime<Utc>>,
}

/// How one attempt at an action ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ActionOutcome {
    Succeeded {
        result: serde_json::Value,
    },
    /// The upstream took it and tells the outcome later: wait for it until `confirm_by`.
    Sent {
        result: serde_json::Value,
        confirm_by: DateTime<Utc>,
    },
    /// The upstream refused it for good (e.g. `Record Not Found`).
    Failed {
        error: String,
    },
    /// It may or may not have reached the upstream, which cannot be asked: a person decides.
    Unknown {
        error: String,
    },
    /// Not sent, by choice (the shop's till is offline): pending again at `at`, without using
    /// up an attempt.
    Deferred {
        reason: String,
        at: DateTime<Utc>,
    },
    /// A transient failure: try again at `at`, or become `dead` when out of attempts.
    RetryAt {
        error: String,
        at: DateTime<Utc>,
    },
}

/// A minimal Graas order for unit tests: channel `lazada-1`, account `a`, payload `{}`.
#[cfg(test)]
pub fn test_order(id: &str, updated: i64, status: Option<&str>) -> Order {
    Order {
        key: OrderKey {
            provider: ProviderKind::Graas,
            account: "a".into(),
            channel: "lazada-1".into(),
            external_id: id.into(),
        },
        status: status.map(str::to_owned),
        payment_status: None,
        shipping_status: None,
        total: None,
        upstream_created_at: None,
        upstream_updated_at: DateTime::from_timestamp(updated, 0).unwrap_or_default(),
        payload: "{}".into(),
    }
}
