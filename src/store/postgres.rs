//! Postgres: for shared deployments and for running several ordersync processes on one database.

use super::sqlite::provider_from_db;
use super::{
    Batch, BatchOutcome, StatusChange, Store, StoreError, StoredOrder, StreamStatus, body_sha256,
    newest_per_key,
};
use crate::config::DatabaseConfig;
use crate::model::{Order, OrderKey, StreamKey};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool, Postgres, Row};
use std::str::FromStr;
use std::time::Duration;

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    pub async fn open(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let mut options =
            PgConnectOptions::from_str(config.url.expose()).map_err(StoreError::Connect)?;
        if let Some(schema) = &config.schema {
            // The schema name was checked to be [A-Za-z0-9_]+ when the config was read.
            let mut conn = sqlx::PgConnection::connect_with(&options)
                .await
                .map_err(StoreError::Connect)?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
            )))
            .execute(&mut conn)
            .await?;
            conn.close().await?;
            options = options.options([("search_path", schema.as_str())]);
        }
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .map_err(StoreError::Connect)?;
        Ok(PostgresStore { pool })
    }
}

/// One statement for a whole batch: the columns travel as arrays, so the statement text never
/// changes and is prepared once per connection, however many orders a batch holds.
/// Newer wins; an equal time wins only when the body differs (the later read), so the lookback's
/// re-reads of unchanged orders write nothing. JSON has no equality, so bodies compare as text.
const UPSERT_ORDERS: &str = "INSERT INTO orders (provider, account, channel, external_id, status, \
     payment_status, shipping_status, total_minor, currency, upstream_created_at, \
     upstream_updated_at, payload, first_seen_at, synced_at) \
     SELECT provider, account, channel, external_id, status, payment_status, shipping_status, \
     total_minor, currency, upstream_created_at, upstream_updated_at, payload::json, $13, $13 \
     FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
     $7::text[], $8::int8[], $9::text[], $10::timestamptz[], $11::timestamptz[], $12::text[]) \
     AS batch (provider, account, channel, external_id, status, payment_status, shipping_status, \
     total_minor, currency, upstream_created_at, upstream_updated_at, payload) \
     ON CONFLICT (provider, account, channel, external_id) DO UPDATE SET \
     status = excluded.status, payment_status = excluded.payment_status, \
     shipping_status = excluded.shipping_status, total_minor = excluded.total_minor, \
     currency = excluded.currency, upstream_created_at = excluded.upstream_created_at, \
     upstream_updated_at = excluded.upstream_updated_at, payload = excluded.payload, \
     synced_at = excluded.synced_at \
     WHERE excluded.upstream_updated_at > orders.upstream_updated_at \
     OR (excluded.upstream_updated_at = orders.upstream_updated_at \
         AND excluded.payload::text <> orders.payload::text)";

fn upsert_orders<'a>(
    orders: &[&'a Order],
    seen: DateTime<Utc>,
) -> sqlx::query::Query<'a, Postgres, sqlx::postgres::PgArguments> {
    fn column<'o, T>(orders: &[&'o Order], f: impl Fn(&'o Order) -> T) -> Vec<T> {
        orders.iter().map(|o| f(o)).collect()
    }
    sqlx::query(UPSERT_ORDERS)
        .bind(column(orders, |o| o.key.provider.as_str()))
        .bind(column(orders, |o| o.key.account.as_str()))
        .bind(column(orders, |o| o.key.channel.as_str()))
        .bind(column(orders, |o| o.key.external_id.as_str()))
        .bind(column(orders, |o| o.status.as_deref()))
        .bind(column(orders, |o| o.payment_status.as_deref()))
        .bind(column(orders, |o| o.shipping_status.as_deref()))
        .bind(column(orders, |o| o.total.as_ref().map(|m| m.minor)))
        .bind(column(orders, |o| {
            o.total.as_ref().map(|m| m.currency.as_str())
        }))
        .bind(column(orders, |o| o.upstream_created_at))
        .bind(column(orders, |o| o.upstream_updated_at))
        .bind(column(orders, |o| o.payload.as_str()))
        .bind(seen)
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    async fn cursor(&self, stream: &StreamKey) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT cursor FROM sync_cursors WHERE provider = $1 AND account = $2 AND resource = $3",
        )
        .bind(stream.provider.as_str())
        .bind(&stream.account)
        .bind(&stream.resource)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|r| r.get::<Option<String>, _>(0)))
    }

    async fn commit_batch(&self, batch: &Batch<'_>) -> Result<BatchOutcome, StoreError> {
        let seen = batch.seen_at;
        let orders = newest_per_key(batch.orders);
        let mut outcome = BatchOutcome::default();
        let mut tx = self.pool.begin().await?;

        if !orders.is_empty() {
            let done = upsert_orders(&orders, seen).execute(&mut *tx).await?;
            outcome.written = done.rows_affected();
        }
        outcome.unchanged = batch.orders.len() as u64 - outcome.written;

        for record in batch.quarantined {
            sqlx::query(
                "INSERT INTO quarantine (provider, account, source, error, raw_body, body_sha256, \
                 first_seen_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $7) \
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
            .bind(seen)
            .execute(&mut *tx)
            .await?;
            outcome.quarantined += 1;
        }

        if let Some(cursor) = batch.cursor {
            sqlx::query(
                "INSERT INTO sync_cursors (provider, account, resource, cursor, cursor_updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (provider, account, resource) DO UPDATE \
                 SET cursor = excluded.cursor, cursor_updated_at = excluded.cursor_updated_at",
            )
            .bind(batch.stream.provider.as_str())
            .bind(&batch.stream.account)
            .bind(&batch.stream.resource)
            .bind(cursor)
            .bind(seen)
            .execute(&mut *tx)
            .await?;
        }

        tx.commit().await?;
        Ok(outcome)
    }

    async fn run_started(&self, stream: &StreamKey, at: DateTime<Utc>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sync_cursors (provider, account, resource, last_run_started_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (provider, account, resource) DO UPDATE SET \
             last_run_started_at = excluded.last_run_started_at",
        )
        .bind(stream.provider.as_str())
        .bind(&stream.account)
        .bind(&stream.resource)
        .bind(at)
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
            "UPDATE sync_cursors SET last_run_finished_at = $1, \
             last_success_at = CASE WHEN $2::text IS NULL THEN $1 ELSE last_success_at END, \
             last_error = $2, \
             consecutive_failures = CASE WHEN $2::text IS NULL THEN 0 ELSE consecutive_failures + 1 END \
             WHERE provider = $3 AND account = $4 AND resource = $5",
        )
        .bind(at)
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
                    cursor_updated_at: row.get(4),
                    last_run_started_at: row.get(5),
                    last_run_finished_at: row.get(6),
                    last_success_at: row.get(7),
                    last_error: row.get(8),
                    consecutive_failures: i64::from(row.get::<i32, _>(9)),
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
             upstream_updated_at FROM orders WHERE provider = $1 AND account = $2 \
             ORDER BY channel, external_id",
        )
        .bind(provider)
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| StoredOrder {
                channel: row.get(0),
                external_id: row.get(1),
                status: row.get(2),
                payment_status: row.get(3),
                shipping_status: row.get(4),
                upstream_updated_at: row.get(5),
            })
            .collect())
    }

    async fn order_history(&self, key: &OrderKey) -> Result<Vec<StatusChange>, StoreError> {
        let rows = sqlx::query(
            "SELECT old_status, new_status, upstream_updated_at FROM order_events \
             WHERE provider = $1 AND account = $2 AND channel = $3 AND external_id = $4 \
             ORDER BY id",
        )
        .bind(key.provider.as_str())
        .bind(&key.account)
        .bind(&key.channel)
        .bind(&key.external_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| StatusChange {
                old_status: row.get(0),
                new_status: row.get(1),
                upstream_updated_at: row.get(2),
            })
            .collect())
    }

    async fn quarantine_count(&self, provider: &str, account: &str) -> Result<i64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM quarantine WHERE provider = $1 AND account = $2",
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
