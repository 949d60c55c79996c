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
