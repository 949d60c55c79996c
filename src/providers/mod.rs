//! Upstream systems: their HTTP calls, wire types and mapping into [`crate::model`]. A provider
//! never sees the database; the sync engine hands what it returns to the store.
//!
//! Providers differ in how orders reach us, so each inbound mode has its own small interface:
//! - [`WindowSource`]: orders read by time window and page (Graas).
//! - webhooks verified and parsed from raw bytes (Get It Done, Grafterr, Lagerkoll) and
//!   scheduled snapshots (KassaForte) get their interfaces with the providers that need them.

pub mod getitdone;
pub mod graas;
pub mod grafterr;
pub mod http;
pub mod json;
pub mod kassaforte;
pub mod lagerkoll;
pub mod money;
pub mod rate_window;
pub mod token;

use crate::model::{Order, Quarantined, StreamKey};
use async_trait::async_trait;
use std::time::Duration;

/// Why a provider call did not produce a result. [`ProviderError::is_retryable`] decides whether
/// trying again can help.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    #[error(
        "{provider} rejected the credentials (HTTP {status}): {message}; fix the account's keys in the config"
    )]
    Unauthorized {
        provider: &'static str,
        status: u16,
        message: String,
    },
    #[error("rate limited (HTTP 429){}", retry_after.map(|d| format!(", retry after {}s", d.as_secs_f64())).unwrap_or_default())]
    RateLimited { retry_after: Option<Duration> },
    #[error("upstream server error (HTTP {status})")]
    Server { status: u16 },
    #[error("request timed out")]
    Timeout,
    #[error("connection failed: {0}")]
    Transport(String),
    /// No connection was made, so the request never left: safe to send again, even a create.
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("upstream refused the request (HTTP {status}): {message}")]
    Rejected { status: u16, message: String },
    #[error("upstream answered with a body that is not the documented JSON: {0}")]
    Malformed(String),
    #[error("upstream kept changing while being read: {0}")]
    Inconsistent(String),
    /// Well-formed JSON that is not a record ordersync can store; asking again returns the same.
    #[error("upstream sent a record ordersync cannot store: {0}")]
    InvalidRecord(String),
    /// The request was not sent: another replica took the account over.
    #[error(
        "not sent: this replica no longer holds the account's lease; its new holder does the work"
    )]
    NotOwner,
}

impl ProviderError {
    /// Transient failures: the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ProviderError::RateLimited { .. }
                | ProviderError::Server { .. }
                | ProviderError::Timeout
                | ProviderError::Transport(_)
                | ProviderError::Connect(_)
                | ProviderError::Malformed(_)
        )
    }
}

/// A time window on the upstream's "last updated" field, in Unix seconds. Both bounds are treated
/// as exclusive (the Graas docs do not say), so the window covers `after + 1 ..= before - 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub after: i64,
    pub before: i64,
}

impl TimeWindow {
    /// Seconds covered, whatever the upstream's bound semantics.
    pub fn covered_seconds(&self) -> i64 {
        (self.before - self.after - 1).max(0)
    }
}

/// One page of a window, already mapped; records that failed to map are in `quarantined`.
#[derive(Debug, Default)]
pub struct WindowPage {
    pub number_of_pages: u32,
    pub number_of_records: u64,
    pub orders: Vec<Order>,
    pub quarantined: Vec<Quarantined>,
}

/// A source of orders read by time window and page number.
#[async_trait]
pub trait WindowSource: Send + Sync {
    /// The stream whose cursor tracks this source.
    fn stream(&self) -> &StreamKey;

    /// Reads one page (numbered from 1) of a window.
    async fn page(
        &self,
        window: TimeWindow,
        page_number: u32,
        page_size: u32,
    ) -> Result<WindowPage, ProviderError>;

    /// How many 429 answers the account has had so far (retried ones included).
    fn rate_limited_count(&self) -> u64;
}

/// A source that reads one order by its key: for a one-off refresh, and the way providers that
/// are polled per order (Get It Done) are read.
#[async_trait]
pub trait OrderLookup: Send + Sync {
    /// The stream the order belongs to.
    fn stream(&self) -> &StreamKey;

    /// The order as the upstream has it now; `None` when it does not know it.
    async fn order(&self, channel: &str, external_id: &str)
    -> Result<Option<Order>, ProviderError>;
}

/// Why a pushed delivery is refused; nothing of it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// 401: not signed by the account's secret, stale, or for no account we serve.
    Unauthenticated(String),
    /// 400: not an event.
    Malformed(String),
}

/// A delivery that passed its checks: what the inbox stores.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AcceptedDelivery {
    /// What makes a repeat a duplicate: the upstream's event id, or one derived from the body.
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub object_id: Option<String>,
    /// The upstream webhook the delivery names (Lagerkoll's `guid`): accepted only when it is
    /// one ordersync registered, which the listener checks against the database.
    pub registration: Option<String>,
}

/// One account's webhook: checks a delivery on its raw bytes (path token, signature,
/// freshness) and reads the few fields the inbox keeps in columns. Never touches the database.
pub trait PushReceiver: Send + Sync {
    fn provider(&self) -> crate::model::ProviderKind;
    fn account(&self) -> &str;
    /// `path_token` is the URL's segment after the account, when it has one.
    fn accept(
        &self,
        headers: &reqwest::header::HeaderMap,
        body: &[u8],
        now: i64,
        path_token: Option<&str>,
    ) -> Result<AcceptedDelivery, Refusal>;
}

/// Checks a webhook URL's path token in constant time. A receiver configured with a token
/// refuses a URL without it, and one configured without refuses a URL with one.
pub fn check_path_token(
    expected: Option<&crate::config::Secret>,
    given: Option<&str>,
) -> Result<(), Refusal> {
    use subtle::ConstantTimeEq;
    match (expected, given) {
        (None, None) => Ok(()),
        (Some(expected), Some(given))
            if bool::from(expected.expose().as_bytes().ct_eq(given.as_bytes())) =>
        {
            Ok(())
        }
        (Some(_), None) => Err(Refusal::Unauthenticated(
            "the URL lacks the account's path token".into(),
        )),
        _ => Err(Refusal::Unauthenticated("wrong path token".into())),
    }
}
