//! What the store keeps about shops that are watched rather than read for orders (KassaForte):
//! the state as last polled, its history, and snapshots of the shop's documents.

use chrono::{DateTime, Utc};

/// The refresh values a shop reports for its documents (opaque; compared for inequality).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RefreshValues {
    pub menu: Option<String>,
    pub open_times: Option<String>,
    pub delivery_costs: Option<String>,
}

impl RefreshValues {
    /// The value that belongs to one document.
    pub fn of(&self, document: ShopDocumentKind) -> Option<&str> {
        match document {
            ShopDocumentKind::Menu => self.menu.as_deref(),
            ShopDocumentKind::OpenHours => self.open_times.as_deref(),
            ShopDocumentKind::DeliveryCosts => self.delivery_costs.as_deref(),
        }
    }
}

/// What a state poll saw, and (read back) since when the state is as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopState {
    pub provider: String,
    pub account: String,
    /// Inside an accepting window of the stored open hours when observed.
    pub hours_open: bool,
    /// The shop's manual open flags per service (`shopOpenStatus`).
    pub delivery_open: Option<bool>,
    pub pickup_open: Option<bool>,
    /// The till's connection to the server.
    pub connection_ok: Option<bool>,
    pub delivery_wait_minutes: Option<i64>,
    pub pickup_wait_minutes: Option<i64>,
    pub unavailable_products: Vec<String>,
    pub refresh: RefreshValues,
    /// The infos body as received.
    pub body: String,
    pub observed_at: DateTime<Utc>,
    /// When the state last changed (read back; ignored on write).
    pub changed_at: DateTime<Utc>,
}

impl ShopState {
    /// The parts whose change is history: open/closed, connection, waits, unavailable items.
    pub fn summary(&self) -> ShopStateChange {
        ShopStateChange {
            hours_open: self.hours_open,
            delivery_open: self.delivery_open,
            pickup_open: self.pickup_open,
            connection_ok: self.connection_ok,
            delivery_wait_minutes: self.delivery_wait_minutes,
            pickup_wait_minutes: self.pickup_wait_minutes,
            unavailable_products: self.unavailable_products.clone(),
            observed_at: self.observed_at,
        }
    }

    /// Whether the service of a delivery type takes orders now, by the shop's manual flag.
    pub fn service_open(&self, delivery_type: &str) -> Option<bool> {
        match delivery_type {
            "delivery" => self.delivery_open,
            "pickup" => self.pickup_open,
            _ => None,
        }
    }
}

/// One row of `shop_state_history`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopStateChange {
    pub hours_open: bool,
    pub delivery_open: Option<bool>,
    pub pickup_open: Option<bool>,
    pub connection_ok: Option<bool>,
    pub delivery_wait_minutes: Option<i64>,
    pub pickup_wait_minutes: Option<i64>,
    pub unavailable_products: Vec<String>,
    pub observed_at: DateTime<Utc>,
}

impl ShopStateChange {
    /// Equal apart from when it was seen.
    pub fn same_state(&self, other: &ShopStateChange) -> bool {
        ShopStateChange {
            observed_at: other.observed_at,
            ..self.clone()
        } == *other
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ShopDocumentKind {
    Menu,
    OpenHours,
    DeliveryCosts,
}

impl ShopDocumentKind {
    pub const ALL: [ShopDocumentKind; 3] = [
        ShopDocumentKind::Menu,
        ShopDocumentKind::OpenHours,
        ShopDocumentKind::DeliveryCosts,
    ];

    /// The `document` column, and the path after `/v1/`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ShopDocumentKind::Menu => "menu",
            ShopDocumentKind::OpenHours => "openhours",
            ShopDocumentKind::DeliveryCosts => "deliverycosts",
        }
    }

    pub fn parse(text: &str) -> Option<ShopDocumentKind> {
        ShopDocumentKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
    }
}

/// One fetch of a shop document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShopDocument {
    pub provider: String,
    pub account: String,
    pub document: ShopDocumentKind,
    /// The `last…Refresh` value the document belongs to.
    pub refresh_value: Option<String>,
    pub body: String,
    pub fetched_at: DateTime<Utc>,
}

/// An order ordersync submitted and follows until its status is final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowedOrder {
    pub channel: String,
    pub external_id: String,
    pub created_at: DateTime<Utc>,
    pub total_minor: Option<i64>,
    pub currency: Option<String>,
}

/// How a person settles an action in state `unknown`.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    /// It reached the upstream: succeeded with this result.
    Submitted(serde_json::Value),
    /// It did not: back to `pending` with fresh attempts.
    NotSubmitted,
}

/// Binds what a shop state's row and its history row both begin with (parameters 1 to 9 on
/// either backend): the shop, its open flags, its waits and the products it cannot sell.
pub(crate) fn bind_shop_state<'q, DB>(
    query: sqlx::query::Query<'q, DB, DB::Arguments>,
    state: &'q ShopState,
    products: &'q str,
) -> sqlx::query::Query<'q, DB, DB::Arguments>
where
    DB: sqlx::Database,
    &'q String: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    bool: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<bool>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    query
        .bind(&state.provider)
        .bind(&state.account)
        .bind(state.hours_open)
        .bind(state.delivery_open)
        .bind(state.pickup_open)
        .bind(state.connection_ok)
        .bind(state.delivery_wait_minutes)
        .bind(state.pickup_wait_minutes)
        .bind(products)
}
