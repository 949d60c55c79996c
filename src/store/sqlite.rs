//! The embedded default: one SQLite file in WAL mode.

use super::{
    Batch, BatchOutcome, ROWS_PER_STATEMENT, StatusChange, Store, StoreError, StoredOrder,
    StreamStatus, body_sha256, newest_per_key,
};
use crate::config::DatabaseConfig;
use crate::model::{OrderKey, StreamKey};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

pub struct SqliteStore {
    pool: SqlitePool,
}

/// One fixed-width text form, so stored times sort and compare correctly as text.
fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

fn parse_ts(text: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Corrupt(format!("time `{text}`: {e}")))
}

fn parse_opt_ts(text: Option<String>) -> Result<Option<DateTime<Utc>>, StoreError> {
    text.as_deref().map(parse_ts).transpose()
}

impl SqliteStore {
    pub async fn open(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(config.url.expose())
            .map_err(StoreError::Connect)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across process crashes in WAL mode; only an OS crash can lose
            // the last transactions, and those are re-read from upstream via the cursor.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Orders are about 1.5 KB with their payload: larger pages split less and need fewer
            // WAL frames; fewer, larger checkpoints cost fewer fsyncs. The statement journal of
            // multi-row upserts stays in memory. (page_size takes effect on a new database.)
            .pragma("cache_size", "-32768")
            .pragma("wal_autocheckpoint", "4096")
            .pragma("temp_store", "memory")
            .pragma("page_size", "16384");
        let pool = SqlitePoolOptions::new()
            .max_connections(config.max_connections)
            .connect_with(options)
            .await
            .map_err(StoreError::Connect)?;
        Ok(SqliteStore { pool })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }

    async fn cursor(&self, stream: &StreamKey) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT cursor FROM sync_cursors WHERE provider = ? AND account = ? AND resource = ?",
        )
        .bind(stream.provider.as_str())
        .bind(&stream.account)
        .bind(&stream.resource)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|r| r.get::<Option<String>, _>(0)))
    }

    async fn commit_batch(&self, batch: &Batch<'_>) -> Result<BatchOutcome, StoreError> {
        let seen = ts(batch.seen_at);
        let orders = newest_per_key(batch.orders);
        let mut outcome = BatchOutcome::default();
        let mut tx = self.pool.begin().await?;

        for chunk in orders.chunks(ROWS_PER_STATEMENT) {
            let mut query = QueryBuilder::<Sqlite>::new(
                "INSERT INTO orders (provider, account, channel, external_id, status, \
                 payment_status, shipping_status, total_minor, currency, upstream_created_at, \
                 upstream_updated_at, payload, first_seen_at, synced_at) ",
            );
            query.push_values(chunk, |mut row, order| {
                row.push_bind(order.key.provider.as_str())
                    .push_bind(&order.key.account)
                    .push_bind(&order.key.channel)
                    .push_bind(&order.key.external_id)
                    .push_bind(&order.status)
                    .push_bind(&order.payment_status)
                    .push_bind(&order.shipping_status)
                    .push_bind(order.total.as_ref().map(|m| m.minor))
                    .push_bind(order.total.as_ref().map(|m| m.currency.as_str()))
                    .push_bind(order.upstream_created_at.map(ts))
                    .push_bind(ts(order.upstream_updated_at))
                    .push_bind(&order.payload)
                    .push_bind(&seen)
                    .push_bind(&seen);
            });
            // Newer wins; an equal time wins only when the body differs (the later read), so the
            // lookback's re-reads of unchanged orders write nothing.
            query.push(
                " ON CONFLICT (provider, account, channel, external_id) DO UPDATE SET \
                 status = excluded.status, payment_status = excluded.payment_status, \
                 shipping_status = excluded.shipping_status, total_minor = excluded.total_minor, \
                 currency = excluded.currency, upstream_created_at = excluded.upstream_created_at, \
                 upstream_updated_at = excluded.upstream_updated_at, payload = excluded.payload, \
                 synced_at = excluded.synced_at \
                 WHERE excluded.upstream_updated_at > orders.upstream_updated_at \
                 OR (excluded.upstream_updated_at = orders.upstream_updated_at \
                     AND excluded.payload <> orders.payload)",
            );
            let done = query.build().execute(&mut *tx).await?;
            outcome.written += done.rows_affected();
        }
        outcome.unchanged = batch.orders.len() as u64 - outcome.written;

        for record in batch.quarantined {
            sqlx::query(
                "INSERT INTO quarantine (provider, account, source, error, raw_body, body_sha256, \
                 first_seen_at, last_seen_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT (provider, account, body_sha256) DO UPDATE SET \
                 last_seen_at = excluded.last_seen_at, times_seen = quarantine.times_seen + 1, \
                 source = excluded.source, error = excluded.error",
            )
            .bind(record.provider.as_str())
            .bind(&record.account)
            .bind(&record.source)
            .bind(&record.error)
            .bind(&record.raw)
            .bind(body_sha256(&record.raw))
            .bind(&seen)
            .bind(&seen)
            .execute(&mut *tx)
            .await?;
            outcome.quarantined += 1;
        }

        if let Some(cursor) = batch.cursor {
            sqlx::query(
                "INSERT INTO sync_cursors (provider, account, resource, cursor, cursor_updated_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (provider, account, resource) DO UPDATE SET \
                 cursor = excluded.cursor, cursor_updated_at = excluded.cursor_updated_at",
            )
            .bind(batch.stream.provider.as_str())
            .bind(&batch.stream.account)
            .bind(&batch.stream.resource)
            .bind(cursor)
            .bind(&seen)
            .execute(&mut *tx)
            .await?;
        }

        tx.commit().await?;
        Ok(outcome)
    }

    async fn run_started(&self, stream: &StreamKey, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sync_cursors (provider, account, resource, last_run_started_at) \
             VALUES (?, ?, ?, ?) ON CONFLICT (provider, account, resource) DO UPDATE SET \
             last_run_started_at = excluded.last_run_started_at",
        )
        .bind(stream.provider.as_str())
        .bind(&stream.account)
        .bind(&stream.resource)
        .bind(ts(at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn run_finished(
        &self,
        stream: &StreamKey,
        at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sync_cursors SET last_run_finished_at = ?1, \
             last_success_at = CASE WHEN ?2 IS NULL THEN ?1 ELSE last_success_at END, \
             last_error = ?2, \
             consecutive_failures = CASE WHEN ?2 IS NULL THEN 0 ELSE consecutive_failures + 1 END \
             WHERE provider = ?3 AND account = ?4 AND resource = ?5",
        )
        .bind(ts(at))
        .bind(error)
        .bind(stream.provider.as_str())
        .bind(&stream.account)
        .bind(&stream.resource)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn streams(&self) -> Result<Vec<StreamStatus>, StoreError> {
        let rows = sqlx::query(
            "SELECT provider, account, resource, cursor, cursor_updated_at, last_run_started_at, \
             last_run_finished_at, last_success_at, last_error, consecutive_failures \
             FROM sync_cursors ORDER BY provider, account, resource",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let provider: String = row.get(0);
                Ok(StreamStatus {
                    stream: StreamKey {
                        provider: provider_from_db(&provider)?,
                        account: row.get(1),
                        resource: row.get(2),
                    },
                    cursor: row.get(3),
                    cursor_updated_at: parse_opt_ts(row.get(4))?,
                    last_run_started_at: parse_opt_ts(row.get(5))?,
                    last_run_finished_at: parse_opt_ts(row.get(6))?,
                    last_success_at: parse_opt_ts(row.get(7))?,
                    last_error: row.get(8),
                    consecutive_failures: row.get(9),
                })
            })
            .collect()
    }

    async fn orders_of(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        let rows = sqlx::query(
            "SELECT channel, external_id, status, payment_status, shipping_status, \
             upstream_updated_at FROM orders WHERE provider = ? AND account = ? \
             ORDER BY channel, external_id",
        )
        .bind(provider)
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(StoredOrder {
                    channel: row.get(0),
                    external_id: row.get(1),
                    status: row.get(2),
                    payment_status: row.get(3),
                    shipping_status: row.get(4),
                    upstream_updated_at: parse_ts(row.get::<&str, _>(5))?,
                })
            })
            .collect()
    }

    async fn order_history(&self, key: &OrderKey) -> Result<Vec<StatusChange>, StoreError> {
        let rows = sqlx::query(
            "SELECT old_status, new_status, upstream_updated_at FROM order_events \
             WHERE provider = ? AND account = ? AND channel = ? AND external_id = ? ORDER BY id",
        )
        .bind(key.provider.as_str())
        .bind(&key.account)
        .bind(&key.channel)
        .bind(&key.external_id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                Ok(StatusChange {
                    old_status: row.get(0),
                    new_status: row.get(1),
                    upstream_updated_at: parse_ts(row.get::<&str, _>(2))?,
                })
            })
            .collect()
    }

    async fn quarantine_count(&self, provider: &str, account: &str) -> Result<i64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM quarantine WHERE provider = ? AND account = ?",
        )
        .bind(provider)
        .bind(account)
        .fetch_one(&self.pool)
        .await?;
        Ok(count)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}

pub(super) fn provider_from_db(text: &str) -> Result<crate::model::ProviderKind, StoreError> {
    text.parse()
        .map_err(|_| StoreError::Corrupt(format!("provider `{text}`")))
}
