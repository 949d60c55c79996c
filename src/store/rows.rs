//! Rows read the same way from both databases. The columns whose types differ (times are text
//! on SQLite and `TIMESTAMPTZ` on Postgres, JSON is text or `JSON`) are read through
//! [`Columns`], each backend by its own rule; everything else is written once here.

use super::{ActionCount, AsnRow, Delivery, DeliveryStat, GateState, StatusChange, StoreError};
use super::{FollowedOrder, RefreshValues, ShopDocument, ShopDocumentKind, ShopState};
use super::{InboxEntry, Registration, ShopStateChange, StoredOrder, StreamStatus};
use crate::model::{Action, ProviderKind, StreamKey};
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

/// One row's columns by position, as ordersync's types.
pub(crate) trait Columns {
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn int(&self, i: usize) -> Result<i64, StoreError>;
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn int32(&self, i: usize) -> Result<i32, StoreError>;
    fn flag(&self, i: usize) -> Result<bool, StoreError>;
    fn opt_flag(&self, i: usize) -> Result<Option<bool>, StoreError>;
    fn time(&self, i: usize) -> Result<DateTime<Utc>, StoreError>;
    fn opt_time(&self, i: usize) -> Result<Option<DateTime<Utc>>, StoreError>;
    fn json(&self, i: usize) -> Result<serde_json::Value, StoreError>;
    fn opt_json(&self, i: usize) -> Result<Option<serde_json::Value>, StoreError>;
}

/// SQLite keeps times as fixed-width UTC text.
fn parse_time(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("time `{text}`: {e}")))
}

/// JSON kept as text; a value that is not JSON (a row written by hand) is kept as a string for
/// people to read.
fn json_or_text(text: String) -> serde_json::Value {
    serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
}

impl Columns for SqliteRow {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn int32(&self, i: usize) -> Result<i32, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.try_get::<i64, _>(i)? != 0)
    }
    fn opt_flag(&self, i: usize) -> Result<Option<bool>, StoreError> {
        Ok(self.try_get::<Option<i64>, _>(i)?.map(|v| v != 0))
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn time(&self, i: usize) -> Result<DateTime<Utc>, StoreError> {
        parse_time(self.try_get::<&str, _>(i)?)
    }
    fn opt_time(&self, i: usize) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.try_get::<Option<&str>, _>(i)?
            .map(parse_time)
            .transpose()
    }
    fn json(&self, i: usize) -> Result<serde_json::Value, StoreError> {
        Ok(json_or_text(self.try_get(i)?))
    }
    fn opt_json(&self, i: usize) -> Result<Option<serde_json::Value>, StoreError> {
        Ok(self.try_get::<Option<String>, _>(i)?.map(json_or_text))
    }
}

impl Columns for PgRow {
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn int(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn int32(&self, i: usize) -> Result<i32, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn flag(&self, i: usize) -> Result<bool, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_flag(&self, i: usize) -> Result<Option<bool>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_int(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn time(&self, i: usize) -> Result<DateTime<Utc>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_time(&self, i: usize) -> Result<Option<DateTime<Utc>>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn json(&self, i: usize) -> Result<serde_json::Value, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_json(&self, i: usize) -> Result<Option<serde_json::Value>, StoreError> {
        Ok(self.try_get(i)?)
    }
}

pub(crate) fn provider(text: &str) -> Result<ProviderKind, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("provider `{text}`")))
}

/// A row of [`STREAMS`].
pub(crate) fn stream_status(row: &impl Columns) -> Result<StreamStatus, StoreError> {
    Ok(StreamStatus {
        stream: StreamKey {
            provider: provider(&row.text(0)?)?,
            account: row.text(1)?,
            resource: row.text(2)?,
        },
        cursor: row.opt_text(3)?,
        cursor_updated_at: row.opt_time(4)?,
        last_run_started_at: row.opt_time(5)?,
        last_run_finished_at: row.opt_time(6)?,
        last_success_at: row.opt_time(7)?,
        last_error: row.opt_text(8)?,
        consecutive_failures: i64::from(row.int32(9)?),
    })
}

pub(crate) const STREAMS: &str = "SELECT provider, account, resource, cursor, cursor_updated_at, \
     last_run_started_at, last_run_finished_at, last_success_at, last_error, consecutive_failures \
     FROM sync_cursors ORDER BY provider, account, resource";

/// `channel, external_id, status, payment_status, shipping_status, upstream_updated_at`
pub(crate) fn stored_order(row: &impl Columns) -> Result<StoredOrder, StoreError> {
    Ok(StoredOrder {
        channel: row.text(0)?,
        external_id: row.text(1)?,
        status: row.opt_text(2)?,
        payment_status: row.opt_text(3)?,
        shipping_status: row.opt_text(4)?,
        upstream_updated_at: row.time(5)?,
    })
}

/// `old_status, new_status, upstream_updated_at`
pub(crate) fn status_change(row: &impl Columns) -> Result<StatusChange, StoreError> {
    Ok(StatusChange {
        old_status: row.opt_text(0)?,
        new_status: row.opt_text(1)?,
        upstream_updated_at: row.time(2)?,
    })
}

/// `asn_id, warehouse_id, status, received_quantity, is_final`
pub(crate) fn asn_row(row: &impl Columns) -> Result<AsnRow, StoreError> {
    Ok(AsnRow {
        asn_id: row.int(0)?,
        warehouse_id: row.text(1)?,
        status: row.opt_text(2)?,
        received_quantity: row.int(3)?,
        is_final: row.flag(4)?,
    })
}

/// A row of [`GATES`].
pub(crate) fn gate_state(row: &impl Columns) -> Result<GateState, StoreError> {
    Ok(GateState {
        provider: row.text(0)?,
        account: row.text(1)?,
        paused_until: row.opt_time(2)?,
        rate_limited: row.int(3)?,
        updated_at: row.time(4)?,
    })
}

pub(crate) const GATES: &str = "SELECT provider, account, paused_until, rate_limited, updated_at \
     FROM account_gates ORDER BY provider, account";

/// A row of [`ACTION_COUNTS`].
pub(crate) fn action_count(row: &impl Columns) -> Result<ActionCount, StoreError> {
    Ok(ActionCount {
        provider: row.text(0)?,
        account: row.text(1)?,
        state: row.text(2)?,
        count: row.int(3)?,
    })
}

pub(crate) const ACTION_COUNTS: &str = "SELECT provider, account, state, count(*) FROM actions \
     GROUP BY provider, account, state ORDER BY provider, account, state";

/// `id, event_id, event_type, object_id, body, received_at`
pub(crate) fn delivery(row: &impl Columns) -> Result<Delivery, StoreError> {
    Ok(Delivery {
        id: row.int(0)?,
        event_id: row.opt_text(1)?,
        event_type: row.opt_text(2)?,
        object_id: row.opt_text(3)?,
        body: row.text(4)?,
        received_at: row.time(5)?,
    })
}

/// `id, provider, account, event_id, event_type, object_id, state, error, received_at,
/// processed_at, body bytes`
pub(crate) fn inbox_entry(row: &impl Columns) -> Result<InboxEntry, StoreError> {
    Ok(InboxEntry {
        id: row.int(0)?,
        provider: row.text(1)?,
        account: row.text(2)?,
        event_id: row.opt_text(3)?,
        event_type: row.opt_text(4)?,
        object_id: row.opt_text(5)?,
        state: row.text(6)?,
        error: row.opt_text(7)?,
        received_at: row.time(8)?,
        processed_at: row.opt_time(9)?,
        body_bytes: row.int(10)?,
    })
}

/// `provider, account, registration_id, guid, feature_id, feature_method, group_wide, url,
/// created_at`
pub(crate) fn registration(row: &impl Columns) -> Result<Registration, StoreError> {
    Ok(Registration {
        provider: row.text(0)?,
        account: row.text(1)?,
        registration_id: row.text(2)?,
        guid: row.text(3)?,
        feature_id: row.text(4)?,
        feature_method: row.text(5)?,
        group_wide: row.flag(6)?,
        url: row.text(7)?,
        created_at: row.time(8)?,
    })
}

/// `provider, account, last received_at, pending, failed`
pub(crate) fn delivery_stat(row: &impl Columns) -> Result<DeliveryStat, StoreError> {
    Ok(DeliveryStat {
        provider: row.text(0)?,
        account: row.text(1)?,
        last_received_at: row.opt_time(2)?,
        pending: row.int(3)?,
        failed: row.int(4)?,
    })
}

/// The columns of `actions` in [`action_columns!`] order.
pub(crate) fn action(row: &impl Columns) -> Result<Action, StoreError> {
    Ok(Action {
        id: row.int(0)?,
        idempotency_key: row.opt_text(1)?,
        provider: row.text(2)?,
        account: row.text(3)?,
        kind: row.text(4)?,
        channel: row.opt_text(5)?,
        external_id: row.opt_text(6)?,
        request: row.json(7)?,
        state: row.text(8)?,
        attempts: row.int32(9)?,
        max_attempts: row.int32(10)?,
        next_attempt_at: row.time(11)?,
        claimed_by: row.opt_text(12)?,
        claimed_until: row.opt_time(13)?,
        last_error: row.opt_text(14)?,
        result: row.opt_json(15)?,
        created_at: row.time(16)?,
        updated_at: row.time(17)?,
        finished_at: row.opt_time(18)?,
        sending_since: row.opt_time(19)?,
    })
}

fn products(text: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Corrupt(format!("unavailable_products `{text}`: {e}")))
}

/// A row of `shop_state_columns!`.
pub(crate) fn shop_state(row: &impl Columns) -> Result<ShopState, StoreError> {
    Ok(ShopState {
        provider: row.text(0)?,
        account: row.text(1)?,
        hours_open: row.flag(2)?,
        delivery_open: row.opt_flag(3)?,
        pickup_open: row.opt_flag(4)?,
        connection_ok: row.opt_flag(5)?,
        delivery_wait_minutes: row.opt_int(6)?,
        pickup_wait_minutes: row.opt_int(7)?,
        unavailable_products: products(&row.text(8)?)?,
        refresh: RefreshValues {
            menu: row.opt_text(9)?,
            open_times: row.opt_text(10)?,
            delivery_costs: row.opt_text(11)?,
        },
        body: row.text(12)?,
        observed_at: row.time(13)?,
        changed_at: row.time(14)?,
    })
}

/// A row of `shop_history_columns!`.
pub(crate) fn shop_state_change(row: &impl Columns) -> Result<ShopStateChange, StoreError> {
    Ok(ShopStateChange {
        hours_open: row.flag(0)?,
        delivery_open: row.opt_flag(1)?,
        pickup_open: row.opt_flag(2)?,
        connection_ok: row.opt_flag(3)?,
        delivery_wait_minutes: row.opt_int(4)?,
        pickup_wait_minutes: row.opt_int(5)?,
        unavailable_products: products(&row.text(6)?)?,
        observed_at: row.time(7)?,
    })
}

/// `provider, account, document, refresh_value, body, fetched_at`
pub(crate) fn shop_document(row: &impl Columns) -> Result<ShopDocument, StoreError> {
    let document = row.text(2)?;
    Ok(ShopDocument {
        provider: row.text(0)?,
        account: row.text(1)?,
        document: ShopDocumentKind::parse(&document)
            .ok_or_else(|| StoreError::Corrupt(format!("shop document `{document}`")))?,
        refresh_value: row.opt_text(3)?,
        body: row.text(4)?,
        fetched_at: row.time(5)?,
    })
}

/// `channel, external_id, created_at, total_minor, currency`
pub(crate) fn followed_order(row: &impl Columns) -> Result<FollowedOrder, StoreError> {
    Ok(FollowedOrder {
        channel: row.text(0)?,
        external_id: row.text(1)?,
        created_at: row.time(2)?,
        total_minor: row.opt_int(3)?,
        currency: row.opt_text(4)?,
    })
}
