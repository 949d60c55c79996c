//! Postgres: for shared deployments and for running several ordersync processes on one database.

use super::handover::Handover;
use super::outcome_columns;
use super::rows;
use super::shops::bind_shop_state;
use super::{
    ActionCount, ActionFilter, AsnRow, AsnUpdate, Batch, BatchOutcome, Claim, Delivery,
    DeliveryDone, DeliveryStat, EarlierCommit, GateState, InboxEntry, InboxFilter, NewAsn,
    NewDelivery, ObjectDone, Registration, RetryFilter, StatusChange, Store, StoreError,
    StoredOrder, StreamStatus, body_sha256, newest_per_key,
};
use super::{
    FollowedOrder, Resolution, ShopDocument, ShopDocumentKind, ShopState, ShopStateChange,
};
use crate::config::DatabaseConfig;
use crate::model::{Action, ActionOutcome, NewAction, Order, OrderKey, StreamKey};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection, PgPool, Postgres, Row};
use std::str::FromStr;

pub struct PostgresStore {
    pool: PgPool,
    /// Connections passed from one write straight to the next.
    handover: std::sync::Arc<Handover<PoolConnection<Postgres>>>,
    /// `database.schema`: created by [`Store::migrate`] when it does not exist yet.
    schema: Option<String>,
    /// The leases this process holds, once the daemon shares accounts with other replicas:
    /// every write for an account then checks its lease (see [`Store::fence_with`]).
    fence: std::sync::OnceLock<std::sync::Arc<crate::lease::LeaseBook>>,
}

impl PostgresStore {
    pub async fn open(config: &DatabaseConfig) -> Result<Self, StoreError> {
        let mut options =
            PgConnectOptions::from_str(config.url.expose()).map_err(StoreError::Connect)?;
        if let Some(schema) = &config.schema {
            // Quoted as `migrate` creates it: unquoted, Postgres folds the name to lower case,
            // and a schema named with capitals would not be found.
            let search_path = format!("\"{schema}\"");
            options = options.options([("search_path", search_path.as_str())]);
        }
        // The server ends a statement, a lock wait or a transaction left open by a client that
        // went away, so a stalled database gives an error instead of a wait, and a connection
        // cut mid-transaction never holds its locks for long. These follow any `options` in the
        // URL, so they win.
        let timeout_ms = config.statement_timeout.as_millis().to_string();
        let idle_ms = config.idle_transaction_timeout.as_millis().to_string();
        options = options.options([
            ("statement_timeout", timeout_ms.as_str()),
            ("lock_timeout", timeout_ms.as_str()),
            ("idle_in_transaction_session_timeout", idle_ms.as_str()),
        ]);
        if options.get_application_name().is_none() {
            // So an operator can tell ordersync's sessions apart in pg_stat_activity.
            options = options.application_name("ordersync");
        }
        let pool_options = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout);
        let pool = if tls_left_open(config.url.expose()) && is_loopback(&options) {
            connect_plain_first(pool_options, options).await
        } else {
            pool_options.connect_with(options).await
        }
        .map_err(StoreError::Connect)?;
        Ok(PostgresStore {
            pool,
            handover: std::sync::Arc::new(Handover::default()),
            schema: config.schema.clone(),
            fence: std::sync::OnceLock::new(),
        })
    }

    /// This replica's name in the leases table, when writes are fenced.
    fn fence_holder(&self) -> Option<&str> {
        self.fence.get().map(|book| book.holder())
    }

    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Runs `write` for one account in a transaction on a lent connection ([`Self::lend`]),
    /// commits it, and keeps the connection for the next write ([`Self::keep`]). The
    /// transaction is fenced by the account's lease when this process shares accounts with
    /// other replicas.
    async fn write_for<T>(
        &self,
        provider: &str,
        account: &str,
        write: impl AsyncFnOnce(&mut PgConnection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut connection = self.lend().await?;
        let tx = connection.begin().await?;
        let mut tx = self.fenced(tx, provider, account).await?;
        let value = write(&mut tx).await?;
        tx.commit().await?;
        self.keep(connection);
        Ok(value)
    }

    /// A fenced transaction, as [`Self::write_for`] begins, for a batch of orders: its statements
    /// are planned once per connection.
    /// A custom plan, Postgres's choice for a statement's first five runs on each connection
    /// (most of a backfill's batches), copies the batch's arrays into the plan as constants:
    /// megabytes a batch, in memory the server process asks of the kernel each time.
    async fn begin_batch_on<'c>(
        &self,
        connection: &'c mut PgConnection,
        provider: &str,
        account: &str,
    ) -> Result<sqlx::Transaction<'c, Postgres>, StoreError> {
        let tx = connection
            .begin_with("BEGIN; SET LOCAL plan_cache_mode = force_generic_plan")
            .await?;
        self.fenced(tx, provider, account).await
    }

    async fn fenced<'c>(
        &self,
        mut tx: sqlx::Transaction<'c, Postgres>,
        provider: &str,
        account: &str,
    ) -> Result<sqlx::Transaction<'c, Postgres>, StoreError> {
        if let Some(book) = self.fence.get() {
            super::leases::check_fence(book, &mut tx, provider, account).await?;
        }
        Ok(tx)
    }
}

/// True when neither the URL nor `PGSSLMODE` says how to use TLS: no `sslmode` or other `ssl…`
/// key in the query.
fn tls_left_open(url: &str) -> bool {
    if std::env::var_os("PGSSLMODE").is_some() {
        return false;
    }
    url::Url::parse(url).is_ok_and(|url| !url.query_pairs().any(|(key, _)| key.starts_with("ssl")))
}

/// A server on this machine, reached over TCP: `localhost` or a loopback address.
fn is_loopback(options: &PgConnectOptions) -> bool {
    if options.get_socket().is_some() {
        return false;
    }
    let host = options
        .get_host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Connects without TLS first, as libpq's `sslmode=allow` does, and with it when the server
/// refuses a connection without (a `hostssl` line in `pg_hba.conf`, SQLSTATE 28000). Traffic
/// on loopback never leaves the kernel, so TLS there protects nothing, and with `sslmode=prefer`
/// (the default otherwise) it does not check the server either. It costs a handshake per
/// connection and encryption of every batch on both sides: a 10,000-order backfill took 20 ms
/// longer with it (100 pairs, see docs/performance-log.md).
async fn connect_plain_first(
    pool_options: PgPoolOptions,
    options: PgConnectOptions,
) -> Result<PgPool, sqlx::Error> {
    use sqlx::postgres::PgSslMode;
    let plain = options.clone().ssl_mode(PgSslMode::Disable);
    match pool_options.clone().connect_with(plain).await {
        Err(sqlx::Error::Database(refused)) if refused.code().as_deref() == Some("28000") => {
            tracing::debug!("the server refused a connection without TLS; connecting with it");
            pool_options.connect_with(options).await
        }
        connected => connected,
    }
}

/// An action's account is leased to the replica named by `$4` (no check when `$4` is NULL):
/// for the writes that name actions by id, before a request goes out (`mark_sending`) and to
/// keep a claim (`extend_claims`). A replica that lost the account neither sends nor keeps
/// claims; results of requests already sent are still recorded under the claim (dropping them
/// would only make the new holder send again).
macro_rules! LEASE_HELD_BY_4 {
    () => {
        "($4::text IS NULL OR EXISTS (SELECT 1 FROM account_leases AS l \
         WHERE l.provider = actions.provider AND l.account = actions.account AND l.holder = $4))"
    };
}

/// True when the database has every migration of this build applied, unchanged, and no other:
/// the usual start, told in two round trips where the migrator takes nine (its lock, its table,
/// its checks). Anything else (a new database, a migration to apply, one changed, missing or
/// left half done) goes to the migrator, which applies or reports it as before.
async fn migrations_current(
    conn: &mut sqlx::PgConnection,
    migrator: &sqlx::migrate::Migrator,
) -> Result<bool, StoreError> {
    let table: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await?;
    if !table {
        return Ok(false);
    }
    let applied: Vec<(i64, Vec<u8>, bool)> =
        sqlx::query_as("SELECT version, checksum, success FROM _sqlx_migrations")
            .fetch_all(&mut *conn)
            .await?;
    Ok(all_applied(&applied, migrator))
}

/// True when `applied` (version, checksum, success) is exactly this build's migrations, each
/// applied in full with the same checksum.
fn all_applied(applied: &[(i64, Vec<u8>, bool)], migrator: &sqlx::migrate::Migrator) -> bool {
    let mut ours: Vec<(i64, &[u8])> = migrator
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m.checksum.as_ref()))
        .collect();
    let mut theirs: Vec<(i64, &[u8])> = Vec::with_capacity(applied.len());
    for (version, checksum, success) in applied {
        if !success {
            return false;
        }
        theirs.push((*version, checksum.as_slice()));
    }
    ours.sort_unstable();
    theirs.sort_unstable();
    ours == theirs
}

/// Batches of one stream written at once: the server works on both while ordersync prepares
/// the next (cargo bench --bench sync, Postgres, 100,000 orders: 12,182 orders/s with one).
const CONCURRENT_COMMITS: usize = 2;

/// One statement for a whole batch: the columns travel as arrays, so the statement text never
/// changes and is prepared once per connection, however many orders a batch holds.
/// A copy wins when it is not older and its body differs: the lookback's re-reads of unchanged
/// orders, and polled snapshots identical to the stored one, write nothing. JSON has no
/// equality, so bodies compare as text.
/// The arrays are unnested in a select list, where their rows stream into the insert one by
/// one; unnested in `FROM`, Postgres first copies the whole batch, payloads and all, into a
/// tuplestore, fresh memory for every batch (100,000 orders: 4% faster without that copy, see
/// docs/performance-log.md). Arrays of one length unnest side by side either way.
const UPSERT_ORDERS: &str = "INSERT INTO orders (provider, account, channel, external_id, status, \
     payment_status, shipping_status, total_minor, currency, upstream_created_at, \
     upstream_updated_at, payload, first_seen_at, synced_at) \
     SELECT provider, account, channel, external_id, status, payment_status, shipping_status, \
     total_minor, currency, upstream_created_at, upstream_updated_at, payload::json, $13, $13 \
     FROM (SELECT UNNEST($1::text[]) AS provider, UNNEST($2::text[]) AS account, \
     UNNEST($3::text[]) AS channel, UNNEST($4::text[]) AS external_id, \
     UNNEST($5::text[]) AS status, UNNEST($6::text[]) AS payment_status, \
     UNNEST($7::text[]) AS shipping_status, UNNEST($8::int8[]) AS total_minor, \
     UNNEST($9::text[]) AS currency, UNNEST($10::timestamptz[]) AS upstream_created_at, \
     UNNEST($11::timestamptz[]) AS upstream_updated_at, UNNEST($12::text[]) AS payload) AS batch \
     ON CONFLICT (provider, account, channel, external_id) DO UPDATE SET \
     status = excluded.status, payment_status = excluded.payment_status, \
     shipping_status = excluded.shipping_status, total_minor = excluded.total_minor, \
     currency = excluded.currency, upstream_created_at = excluded.upstream_created_at, \
     upstream_updated_at = excluded.upstream_updated_at, payload = excluded.payload, \
     synced_at = excluded.synced_at \
     WHERE excluded.upstream_updated_at >= orders.upstream_updated_at \
     AND excluded.payload::text <> orders.payload::text";

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

/// Outcomes as the arrays `finish_batch` and `settle_sent` unnest.
struct OutcomeColumns<'a> {
    ids: Vec<i64>,
    kinds: Vec<&'static str>,
    results: Vec<Option<String>>,
    errors: Vec<Option<&'a str>>,
    next: Vec<Option<DateTime<Utc>>>,
}

impl<'a> OutcomeColumns<'a> {
    fn of(outcomes: &'a [(i64, ActionOutcome)]) -> Self {
        let mut columns = OutcomeColumns {
            ids: Vec::with_capacity(outcomes.len()),
            kinds: Vec::with_capacity(outcomes.len()),
            results: Vec::with_capacity(outcomes.len()),
            errors: Vec::with_capacity(outcomes.len()),
            next: Vec::with_capacity(outcomes.len()),
        };
        for (id, outcome) in outcomes {
            let (kind, result, error, at) = outcome_columns(outcome);
            columns.ids.push(*id);
            columns.kinds.push(kind);
            columns.results.push(result);
            columns.errors.push(error);
            columns.next.push(at);
        }
        columns
    }
}

/// Claims an account's due actions. SKIP LOCKED: several processes claim from one queue without
/// waiting on each other or taking the same row. `= ANY(ARRAY(…))` makes the outer update use
/// the primary key; `state IN (…)` lets the inner scan use the partial index of open actions.
const CLAIM_DUE: &str = concat!(
    "UPDATE actions SET state = 'in_flight', claimed_by = $1, claimed_until = $2, \
     attempts = attempts + 1, updated_at = $3 \
     WHERE id = ANY(ARRAY(SELECT id FROM actions WHERE provider = $4 AND account = $5 \
       AND state IN ('pending', 'in_flight') \
       AND ((state = 'pending' AND next_attempt_at <= $3) \
         OR (state = 'in_flight' AND claimed_until < $3)) \
       ORDER BY next_attempt_at, id LIMIT $6 FOR UPDATE SKIP LOCKED)) \
     RETURNING ",
    action_columns!()
);

/// Every outcome of a batch in one statement; a retry out of attempts becomes `dead`.
const FINISH_BATCH: &str = "UPDATE actions AS a SET \
     state = CASE WHEN u.kind = 'defer' THEN 'pending' WHEN u.kind <> 'retry' THEN u.kind \
                  WHEN a.attempts >= a.max_attempts THEN 'dead' ELSE 'pending' END, \
     result = CASE WHEN u.kind IN ('succeeded', 'sent') THEN u.result::json ELSE a.result END, \
     last_error = u.error, \
     next_attempt_at = COALESCE(u.next_at, a.next_attempt_at), \
     attempts = CASE WHEN u.kind = 'defer' THEN a.attempts - 1 ELSE a.attempts END, \
             finished_at = CASE WHEN u.kind IN ('sent', 'unknown', 'defer') THEN NULL \
                        WHEN u.kind <> 'retry' OR a.attempts >= a.max_attempts THEN $7 END, \
     claimed_until = NULL, sending_since = NULL, updated_at = $7 \
     FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) \
       AS u (id, kind, result, error, next_at) \
     WHERE a.id = u.id AND a.state = 'in_flight' AND a.claimed_by = $6 \
     RETURNING a.id";

impl PostgresStore {
    /// A connection for a write: the one the last write kept, else one from the pool.
    pub(super) async fn lend(&self) -> Result<PoolConnection<Postgres>, StoreError> {
        match self.handover.take() {
            Some(kept) => Ok(kept),
            None => Ok(self.pool.acquire().await?),
        }
    }

    /// Keeps a connection whose transaction committed for the next write. One that failed is
    /// dropped instead, and the pool checks it.
    pub(super) fn keep(&self, connection: PoolConnection<Postgres>) {
        let pool_can_spare = self.pool.num_idle() > 0
            || self.pool.size() < self.pool.options().get_max_connections();
        self.handover
            .keep(connection, CONCURRENT_COMMITS + 1, pool_can_spare);
    }

    /// [`Store::commit_batch`]; with `earlier`, the orders are written while the earlier batch
    /// may still be committing, and everything after them waits for it: the quarantine (the
    /// same body could be in both), the cursor and the commit.
    async fn commit(
        &self,
        batch: &Batch<'_>,
        earlier: Option<EarlierCommit>,
    ) -> Result<BatchOutcome, StoreError> {
        let seen = batch.seen_at;
        let orders = newest_per_key(batch.orders);
        let mut outcome = BatchOutcome::default();
        let mut connection = self.lend().await?;
        let mut tx = self
            .begin_batch_on(
                &mut connection,
                batch.stream.provider.as_str(),
                &batch.stream.account,
            )
            .await?;

        if !orders.is_empty() {
            let done = upsert_orders(&orders, seen).execute(&mut *tx).await?;
            outcome.written = done.rows_affected();
        }
        outcome.unchanged = batch.orders.len() as u64 - outcome.written;
        if let Some(mut earlier) = earlier {
            earlier.written();
            earlier.committed().await?;
        }

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
        self.keep(connection);
        Ok(outcome)
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let migrator = sqlx::migrate!("migrations/postgres");
        let mut conn = self.pool.acquire().await?;
        if let Some(schema) = &self.schema {
            // On the migrations' connection, not one of its own: every connection a start
            // opens is a server process forked (and, off loopback, a TLS handshake).
            // The name was checked to be [A-Za-z0-9_]+ when the config was read.
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
            )))
            .execute(&mut *conn)
            .await?;
        }
        if migrations_current(&mut conn, &migrator).await? {
            return Ok(());
        }
        // A migration of a large table may rightly outlast statement_timeout: lift it on this
        // one connection, and restore it before the connection goes back to the pool.
        sqlx::query("SET statement_timeout = 0")
            .execute(&mut *conn)
            .await?;
        let migrated = migrator.run_direct(None, &mut *conn, false).await;
        sqlx::query("RESET statement_timeout")
            .execute(&mut *conn)
            .await?;
        migrated?;
        Ok(())
    }

    async fn readiness(&self) -> Result<(), StoreError> {
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        super::check_migrated(applied, &sqlx::migrate!("migrations/postgres"))
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
        self.commit(batch, None).await
    }

    fn concurrent_commits(&self) -> usize {
        CONCURRENT_COMMITS
    }

    /// A quarter. Postgres writes small batches nearly as fast per order as large ones (3%
    /// slower at 100,000 orders with a 2,000-order buffer throughout), and memory a process
    /// touches for the first time is dear (2–3 µs a page on the machine in
    /// `docs/performance-log.md`): a 10,000-order run starting with the whole buffer took a third
    /// more page faults, in ordersync and in the server processes, and about 12 ms longer.
    fn buffer_starts_at(&self, buffered: usize) -> usize {
        buffered.div_ceil(4)
    }

    async fn commit_batch_after(
        &self,
        batch: &Batch<'_>,
        earlier: EarlierCommit,
    ) -> Result<BatchOutcome, StoreError> {
        self.commit(batch, Some(earlier)).await
    }

    async fn run_started(&self, stream: &StreamKey, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.write_for(stream.provider.as_str(), &stream.account, async |tx| {
            sqlx::query(
                "INSERT INTO sync_cursors (provider, account, resource, last_run_started_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (provider, account, resource) DO UPDATE SET \
                 last_run_started_at = excluded.last_run_started_at",
            )
            .bind(stream.provider.as_str())
            .bind(&stream.account)
            .bind(&stream.resource)
            .bind(at)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
        .await
    }

    async fn run_finished(
        &self,
        stream: &StreamKey,
        started: DateTime<Utc>,
        at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.write_for(stream.provider.as_str(), &stream.account, async |tx| {
            sqlx::query(
                "INSERT INTO sync_cursors (provider, account, resource, last_run_started_at, \
                 last_run_finished_at, last_success_at, last_error, consecutive_failures) \
                 VALUES ($3, $4, $5, $6, $1, CASE WHEN $2::text IS NULL THEN $1 END, $2, \
                         CASE WHEN $2::text IS NULL THEN 0 ELSE 1 END) \
                 ON CONFLICT (provider, account, resource) DO UPDATE SET \
                 last_run_started_at = excluded.last_run_started_at, \
                 last_run_finished_at = excluded.last_run_finished_at, \
                 last_success_at = CASE WHEN $2::text IS NULL THEN $1 \
                                        ELSE sync_cursors.last_success_at END, \
                 last_error = $2, \
                 consecutive_failures = CASE WHEN $2::text IS NULL THEN 0 \
                                             ELSE sync_cursors.consecutive_failures + 1 END",
            )
            .bind(at)
            .bind(error)
            .bind(stream.provider.as_str())
            .bind(&stream.account)
            .bind(&stream.resource)
            .bind(started)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
        .await
    }

    async fn streams(&self) -> Result<Vec<StreamStatus>, StoreError> {
        let rows = sqlx::query(rows::STREAMS).fetch_all(&self.pool).await?;
        rows.iter().map(rows::stream_status).collect()
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
        rows.iter().map(rows::stored_order).collect()
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
        rows.iter().map(rows::status_change).collect()
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

    async fn channel_payload(
        &self,
        provider: &str,
        account: &str,
        channel: &str,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT payload::text FROM orders WHERE provider = $1 AND account = $2 \
             AND channel = $3 LIMIT 1",
        )
        .bind(provider)
        .bind(account)
        .bind(channel)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn enqueue(&self, action: &NewAction) -> Result<(Action, bool), StoreError> {
        let key = action.key();
        let inserted = sqlx::query(concat!(
            "INSERT INTO actions (idempotency_key, provider, account, kind, channel, \
             external_id, request, max_attempts) \
             VALUES ($1, $2, $3, $4, $5, $6, $7::json, $8) \
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING ",
            action_columns!()
        ))
        .bind(&key)
        .bind(action.provider.as_str())
        .bind(&action.account)
        .bind(action.kind.as_str())
        .bind(&action.channel)
        .bind(&action.external_id)
        .bind(action.request.to_string())
        .bind(action.max_attempts)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = inserted {
            return Ok((rows::action(&row)?, true));
        }
        let row = sqlx::query(concat!(
            "SELECT ",
            action_columns!(),
            " FROM actions WHERE idempotency_key = $1"
        ))
        .bind(&key)
        .fetch_one(&self.pool)
        .await?;
        Ok((rows::action(&row)?, false))
    }

    async fn claim(&self, claim: &Claim<'_>) -> Result<Vec<Action>, StoreError> {
        let rows = self
            .write_for(claim.provider, claim.account, async |tx| {
                Ok(sqlx::query(CLAIM_DUE)
                    .bind(claim.worker)
                    .bind(claim.visible_until)
                    .bind(claim.now)
                    .bind(claim.provider)
                    .bind(claim.account)
                    .bind(claim.limit)
                    .fetch_all(&mut *tx)
                    .await?)
            })
            .await?;
        let mut actions = rows
            .iter()
            .map(rows::action)
            .collect::<Result<Vec<_>, _>>()?;
        actions.sort_by_key(|a| a.id);
        Ok(actions)
    }

    async fn finish_batch(
        &self,
        worker: &str,
        outcomes: &[(i64, ActionOutcome)],
    ) -> Result<Vec<i64>, StoreError> {
        let columns = OutcomeColumns::of(outcomes);
        Ok(sqlx::query_scalar(FINISH_BATCH)
            .bind(columns.ids)
            .bind(columns.kinds)
            .bind(columns.results)
            .bind(columns.errors)
            .bind(columns.next)
            .bind(worker)
            .bind(Utc::now())
            .fetch_all(&self.pool)
            .await?)
    }

    async fn extend_claims(
        &self,
        ids: &[i64],
        worker: &str,
        until: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(concat!(
            "UPDATE actions SET claimed_until = $1 WHERE state = 'in_flight' AND claimed_by = $2 \
             AND id = ANY($3) AND ",
            LEASE_HELD_BY_4!()
        ))
        .bind(until)
        .bind(worker)
        .bind(ids)
        .bind(self.fence_holder())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn record_asn(&self, asn: &NewAsn) -> Result<(), StoreError> {
        self.write_for(asn.provider.as_str(), &asn.account, async |tx| {
            sqlx::query(
                "INSERT INTO asns (provider, account, asn_id, warehouse_id, supplier_id, \
                 supplier_ref, action_id, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, now()) \
                 ON CONFLICT (provider, account, asn_id) DO NOTHING",
            )
            .bind(asn.provider.as_str())
            .bind(&asn.account)
            .bind(asn.asn_id)
            .bind(&asn.warehouse_id)
            .bind(asn.supplier_id)
            .bind(&asn.supplier_ref)
            .bind(asn.action_id)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
        .await
    }

    async fn open_asns(&self, provider: &str, account: &str) -> Result<Vec<AsnRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT asn_id, warehouse_id, status, received_quantity, is_final FROM asns \
             WHERE provider = $1 AND account = $2 AND NOT is_final ORDER BY asn_id",
        )
        .bind(provider)
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::asn_row).collect()
    }

    async fn record_gate(&self, gate: &GateState) -> Result<(), StoreError> {
        self.write_for(&gate.provider, &gate.account, async |tx| {
            sqlx::query(
                "INSERT INTO account_gates (provider, account, paused_until, rate_limited, \
                 updated_at) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (provider, account) DO UPDATE SET \
                 paused_until = excluded.paused_until, rate_limited = excluded.rate_limited, \
                 updated_at = excluded.updated_at",
            )
            .bind(&gate.provider)
            .bind(&gate.account)
            .bind(gate.paused_until)
            .bind(gate.rate_limited)
            .bind(gate.updated_at)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
        .await
    }

    async fn gates(&self) -> Result<Vec<GateState>, StoreError> {
        let rows = sqlx::query(rows::GATES).fetch_all(&self.pool).await?;
        rows.iter().map(rows::gate_state).collect()
    }

    async fn action_counts(&self) -> Result<Vec<ActionCount>, StoreError> {
        let rows = sqlx::query(rows::ACTION_COUNTS)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(rows::action_count).collect()
    }

    async fn update_asn(&self, update: &AsnUpdate) -> Result<(), StoreError> {
        self.write_for(update.provider.as_str(), &update.account, async |tx| {
            sqlx::query(
                "UPDATE asns SET status = $1, received_quantity = $2, payload = $3::json, \
                 is_final = $4, checked_at = $5 \
                 WHERE provider = $6 AND account = $7 AND asn_id = $8",
            )
            .bind(&update.status)
            .bind(update.received_quantity)
            .bind(update.payload.to_string())
            .bind(update.is_final)
            .bind(update.checked_at)
            .bind(update.provider.as_str())
            .bind(&update.account)
            .bind(update.asn_id)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
        .await
    }

    async fn action(&self, id: i64) -> Result<Option<Action>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            action_columns!(),
            " FROM actions WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::action).transpose()
    }

    async fn actions(&self, filter: &ActionFilter) -> Result<Vec<Action>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            action_columns!(),
            " FROM actions WHERE ($1::text IS NULL OR state = $1) \
             AND ($2::text IS NULL OR account = $2) ORDER BY id DESC LIMIT $3"
        ))
        .bind(filter.state.map(|s| s.as_str()))
        .bind(&filter.account)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::action).collect()
    }

    async fn retry_actions(&self, filter: &RetryFilter) -> Result<u64, StoreError> {
        let (id, account, all_dead) = match filter {
            RetryFilter::One(id) => (Some(*id), None, false),
            RetryFilter::AllDead { account } => (None, account.clone(), true),
        };
        let done = sqlx::query(
            "UPDATE actions SET state = 'pending', attempts = 0, next_attempt_at = $1, \
             finished_at = NULL, updated_at = $1 \
             WHERE (($2::int8 IS NOT NULL AND id = $2 AND state IN ('dead', 'failed')) \
                OR ($3 AND state = 'dead' AND ($4::text IS NULL OR account = $4)))",
        )
        .bind(Utc::now())
        .bind(id)
        .bind(all_dead)
        .bind(account)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn sent_actions(
        &self,
        provider: &str,
        account: &str,
        limit: i64,
    ) -> Result<Vec<Action>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            action_columns!(),
            " FROM actions WHERE state = 'sent' AND provider = $1 AND account = $2 \
             ORDER BY id LIMIT $3"
        ))
        .bind(provider)
        .bind(account)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::action).collect()
    }

    async fn settle_sent(&self, outcomes: &[(i64, ActionOutcome)]) -> Result<Vec<i64>, StoreError> {
        if outcomes.is_empty() {
            return Ok(Vec::new());
        }
        let columns = OutcomeColumns::of(outcomes);
        Ok(sqlx::query_scalar(
            "UPDATE actions AS a SET \
             state = CASE WHEN u.kind = 'retry' THEN 'pending' ELSE u.kind END, \
             result = CASE WHEN u.kind IN ('succeeded', 'sent') THEN u.result::json \
                           ELSE a.result END, \
             last_error = u.error, \
             next_attempt_at = COALESCE(u.next_at, a.next_attempt_at), \
             finished_at = CASE WHEN u.kind IN ('succeeded', 'failed') THEN $6 END, \
             updated_at = $6 \
             FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::timestamptz[]) \
               AS u (id, kind, result, error, next_at) \
             WHERE a.id = u.id AND a.state = 'sent' \
             RETURNING a.id",
        )
        .bind(columns.ids)
        .bind(columns.kinds)
        .bind(columns.results)
        .bind(columns.errors)
        .bind(columns.next)
        .bind(Utc::now())
        .fetch_all(&self.pool)
        .await?)
    }

    async fn record_deliveries(
        &self,
        deliveries: &[NewDelivery],
        cursor: Option<(&StreamKey, &str)>,
    ) -> Result<Vec<bool>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // One statement for the whole group: a delivery is new when its event id came back
        // (the first of equal ids in the group), or when it has none.
        let column = |f: fn(&NewDelivery) -> Option<&str>| -> Vec<Option<&str>> {
            deliveries.iter().map(f).collect()
        };
        let inserted: Vec<Option<String>> = sqlx::query_scalar(
            "INSERT INTO webhook_deliveries (provider, account, source, event_id, event_type, \
             object_id, body, body_sha256, received_at) \
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                  $6::text[], $7::text[], $8::text[], $9::timestamptz[]) \
             ON CONFLICT DO NOTHING RETURNING event_id",
        )
        .bind(column(|d| Some(d.provider.as_str())))
        .bind(column(|d| Some(d.account.as_str())))
        .bind(column(|d| Some(d.source.as_str())))
        .bind(column(|d| d.event_id.as_deref()))
        .bind(column(|d| d.event_type.as_deref()))
        .bind(column(|d| d.object_id.as_deref()))
        .bind(column(|d| Some(d.body.as_str())))
        .bind(
            deliveries
                .iter()
                .map(|d| body_sha256(&d.body))
                .collect::<Vec<_>>(),
        )
        .bind(deliveries.iter().map(|d| d.received_at).collect::<Vec<_>>())
        .fetch_all(&mut *tx)
        .await?;
        let mut new_ids: std::collections::HashSet<String> =
            inserted.into_iter().flatten().collect();
        let stored: Vec<bool> = deliveries
            .iter()
            .map(|d| match &d.event_id {
                Some(id) => new_ids.remove(id),
                None => true,
            })
            .collect();
        if let Some((stream, cursor)) = cursor {
            sqlx::query(
                "INSERT INTO sync_cursors (provider, account, resource, cursor, cursor_updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (provider, account, resource) DO UPDATE \
                 SET cursor = excluded.cursor, cursor_updated_at = excluded.cursor_updated_at",
            )
            .bind(stream.provider.as_str())
            .bind(&stream.account)
            .bind(&stream.resource)
            .bind(cursor)
            .bind(Utc::now())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    async fn pending_deliveries(
        &self,
        provider: &str,
        account: &str,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, event_id, event_type, object_id, body, received_at \
             FROM webhook_deliveries WHERE provider = $1 AND account = $2 AND state = 'pending' \
             ORDER BY id LIMIT $3",
        )
        .bind(provider)
        .bind(account)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::delivery).collect()
    }

    async fn finish_deliveries(&self, done: &[DeliveryDone]) -> Result<(), StoreError> {
        if done.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = done.iter().map(|d| d.id).collect();
        let states: Vec<&str> = done.iter().map(|d| d.state.as_str()).collect();
        let notes: Vec<Option<&str>> = done.iter().map(|d| d.note.as_deref()).collect();
        sqlx::query(
            "UPDATE webhook_deliveries AS w SET state = u.state, error = u.note, processed_at = $4 \
             FROM UNNEST($1::int8[], $2::text[], $3::text[]) AS u (id, state, note) \
             WHERE w.id = u.id",
        )
        .bind(ids)
        .bind(states)
        .bind(notes)
        .bind(Utc::now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn finish_object_deliveries(
        &self,
        provider: &str,
        account: &str,
        event_type: &str,
        done: &[ObjectDone],
    ) -> Result<u64, StoreError> {
        if done.is_empty() {
            return Ok(0);
        }
        self.write_for(provider, account, async |tx| {
            let objects: Vec<&str> = done.iter().map(|d| d.object_id.as_str()).collect();
            let before: Vec<DateTime<Utc>> = done.iter().map(|d| d.before).collect();
            let states: Vec<&str> = done.iter().map(|d| d.state.as_str()).collect();
            let notes: Vec<Option<&str>> = done.iter().map(|d| d.note.as_deref()).collect();
            let updated = sqlx::query(
                "UPDATE webhook_deliveries AS w SET state = u.state, error = u.note, \
                 processed_at = $7 \
                 FROM UNNEST($3::text[], $4::timestamptz[], $5::text[], $6::text[]) \
                   AS u (object, before, state, note) \
                 WHERE w.provider = $1 AND w.account = $2 AND w.state = 'pending' \
                   AND w.object_id = u.object AND w.event_type = $8 AND w.received_at < u.before",
            )
            .bind(provider)
            .bind(account)
            .bind(objects)
            .bind(before)
            .bind(states)
            .bind(notes)
            .bind(Utc::now())
            .bind(event_type)
            .execute(&mut *tx)
            .await?;
            Ok(updated.rows_affected())
        })
        .await
    }

    async fn delivery_stats(&self) -> Result<Vec<DeliveryStat>, StoreError> {
        let rows = sqlx::query(
            "SELECT provider, account, max(received_at), \
                    count(*) FILTER (WHERE state = 'pending'), \
                    count(*) FILTER (WHERE state = 'failed') \
             FROM webhook_deliveries GROUP BY provider, account ORDER BY provider, account",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::delivery_stat).collect()
    }

    async fn inbox(&self, filter: &InboxFilter) -> Result<Vec<InboxEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, provider, account, event_id, event_type, object_id, state, error, \
                    received_at, processed_at, octet_length(body)::bigint \
             FROM webhook_deliveries \
             WHERE ($1::text IS NULL OR provider = $1) AND ($2::text IS NULL OR account = $2) \
               AND ($3::text IS NULL OR state = $3) \
               AND ($4::timestamptz IS NULL OR received_at >= $4) \
               AND (cardinality($5::bigint[]) = 0 OR id = ANY($5)) \
             ORDER BY id DESC LIMIT $6",
        )
        .bind(&filter.provider)
        .bind(&filter.account)
        .bind(&filter.state)
        .bind(filter.since)
        .bind(&filter.ids)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::inbox_entry).collect()
    }

    async fn requeue_deliveries(&self, filter: &InboxFilter) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', error = NULL, processed_at = NULL \
             WHERE state <> 'pending' \
               AND ($1::text IS NULL OR provider = $1) AND ($2::text IS NULL OR account = $2) \
               AND ($3::text IS NULL OR state = $3) \
               AND ($4::timestamptz IS NULL OR received_at >= $4) \
               AND (cardinality($5::bigint[]) = 0 OR id = ANY($5))",
        )
        .bind(&filter.provider)
        .bind(&filter.account)
        .bind(&filter.state)
        .bind(filter.since)
        .bind(&filter.ids)
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    async fn registrations(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<Vec<Registration>, StoreError> {
        let rows = sqlx::query(
            "SELECT provider, account, registration_id, guid, feature_id, feature_method, \
                    group_wide, url, created_at \
             FROM webhook_registrations WHERE provider = $1 AND account = $2 \
             ORDER BY feature_id, feature_method, registration_id",
        )
        .bind(provider)
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::registration).collect()
    }

    async fn is_registered(
        &self,
        provider: &str,
        account: &str,
        guid: &str,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM webhook_registrations WHERE provider = $1 AND account = $2 AND guid = $3)",
        )
        .bind(provider)
        .bind(account)
        .bind(guid)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn save_registration(&self, r: &Registration) -> Result<(), StoreError> {
        self.write_for(&r.provider, &r.account, async |tx| {
            sqlx::query(
                "INSERT INTO webhook_registrations (provider, account, registration_id, guid, \
                 feature_id, feature_method, group_wide, url, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (provider, account, registration_id) DO UPDATE SET \
                 guid = excluded.guid, feature_id = excluded.feature_id, \
                 feature_method = excluded.feature_method, group_wide = excluded.group_wide, \
                 url = excluded.url, created_at = excluded.created_at",
            )
            .bind(&r.provider)
            .bind(&r.account)
            .bind(&r.registration_id)
            .bind(&r.guid)
            .bind(&r.feature_id)
            .bind(&r.feature_method)
            .bind(r.group_wide)
            .bind(&r.url)
            .bind(r.created_at)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
        .await
    }

    async fn drop_registration(
        &self,
        provider: &str,
        account: &str,
        registration_id: &str,
    ) -> Result<(), StoreError> {
        self.write_for(provider, account, async |tx| {
            sqlx::query(
                "DELETE FROM webhook_registrations \
                 WHERE provider = $1 AND account = $2 AND registration_id = $3",
            )
            .bind(provider)
            .bind(account)
            .bind(registration_id)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
        .await
    }

    async fn open_orders(
        &self,
        provider: &str,
        account: &str,
        terminal: &[String],
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT external_id FROM orders WHERE provider = $1 AND account = $2 \
             AND (status IS NULL OR NOT status = ANY($3)) ORDER BY external_id",
        )
        .bind(provider)
        .bind(account)
        .bind(terminal)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn due_accounts(&self, now: DateTime<Utc>) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT provider, account FROM actions \
             WHERE state IN ('pending', 'in_flight') \
             AND ((state = 'pending' AND next_attempt_at <= $1) \
               OR (state = 'in_flight' AND claimed_until < $1))",
        )
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    async fn mark_sending(
        &self,
        id: i64,
        worker: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(concat!(
            "UPDATE actions SET sending_since = $1, updated_at = $1 \
             WHERE id = $2 AND state = 'in_flight' AND claimed_by = $3 AND ",
            LEASE_HELD_BY_4!()
        ))
        .bind(at)
        .bind(id)
        .bind(worker)
        .bind(self.fence_holder())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn clear_sending(
        &self,
        id: i64,
        worker: &str,
        result: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE actions SET sending_since = NULL, result = COALESCE($1::json, result) \
             WHERE id = $2 AND state = 'in_flight' AND claimed_by = $3",
        )
        .bind(result.map(ToString::to_string))
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn resolve_unknown(
        &self,
        id: i64,
        resolution: &Resolution,
    ) -> Result<Option<Action>, StoreError> {
        let query = match resolution {
            Resolution::Submitted(result) => sqlx::query(concat!(
                "UPDATE actions SET state = 'succeeded', result = $1::json, last_error = NULL, \
                 sending_since = NULL, finished_at = $2, updated_at = $2 \
                 WHERE id = $3 AND state = 'unknown' RETURNING ",
                action_columns!()
            ))
            .bind(result.to_string()),
            Resolution::NotSubmitted => sqlx::query(concat!(
                "UPDATE actions SET state = 'pending', attempts = 0, next_attempt_at = $2, \
                 last_error = $1, sending_since = NULL, finished_at = NULL, updated_at = $2 \
                 WHERE id = $3 AND state = 'unknown' RETURNING ",
                action_columns!()
            ))
            .bind("resolved as not submitted; queued again".to_owned()),
        };
        let row = query
            .bind(Utc::now())
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(rows::action).transpose()
    }

    async fn followed_orders(
        &self,
        provider: &str,
        account: &str,
        terminal: &[String],
        since: DateTime<Utc>,
    ) -> Result<Vec<FollowedOrder>, StoreError> {
        let rows = sqlx::query(
            "SELECT channel, external_id, COALESCE(upstream_created_at, first_seen_at), total_minor, \
             currency FROM orders \
             WHERE provider = $1 AND account = $2 \
             AND (status IS NULL OR NOT status = ANY($3)) \
             AND COALESCE(upstream_created_at, first_seen_at) >= $4 ORDER BY external_id",
        )
        .bind(provider)
        .bind(account)
        .bind(terminal)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::followed_order).collect()
    }

    async fn record_shop_state(&self, state: &ShopState, changed: bool) -> Result<(), StoreError> {
        if !changed {
            return self.shop_state_seen(state).await;
        }
        let products = serde_json::Value::from(state.unavailable_products.clone()).to_string();
        self.write_for(&state.provider, &state.account, async |tx| {
            let row = sqlx::query(
                "INSERT INTO shop_states (provider, account, hours_open, delivery_open, \
                 pickup_open, connection_ok, delivery_wait_minutes, pickup_wait_minutes, \
                 unavailable_products, last_menu_refresh, last_open_times_refresh, \
                 last_delivery_cost_refresh, body, observed_at, changed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $14) \
                 ON CONFLICT (provider, account) DO UPDATE SET hours_open = excluded.hours_open, \
                 delivery_open = excluded.delivery_open, pickup_open = excluded.pickup_open, \
                 connection_ok = excluded.connection_ok, \
                 delivery_wait_minutes = excluded.delivery_wait_minutes, \
                 pickup_wait_minutes = excluded.pickup_wait_minutes, \
                 unavailable_products = excluded.unavailable_products, \
                 last_menu_refresh = excluded.last_menu_refresh, \
                 last_open_times_refresh = excluded.last_open_times_refresh, \
                 last_delivery_cost_refresh = excluded.last_delivery_cost_refresh, \
                 body = excluded.body, observed_at = excluded.observed_at, \
                 changed_at = excluded.changed_at",
            );
            bind_shop_state(row, state, &products)
                .bind(&state.refresh.menu)
                .bind(&state.refresh.open_times)
                .bind(&state.refresh.delivery_costs)
                .bind(&state.body)
                .bind(state.observed_at)
                .execute(&mut *tx)
                .await?;
            let history = sqlx::query(
                "INSERT INTO shop_state_history (provider, account, hours_open, delivery_open, \
                 pickup_open, connection_ok, delivery_wait_minutes, pickup_wait_minutes, \
                 unavailable_products, observed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            );
            bind_shop_state(history, state, &products)
                .bind(state.observed_at)
                .execute(&mut *tx)
                .await?;
            Ok(())
        })
        .await
    }

    async fn shop_state(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<Option<ShopState>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            shop_state_columns!(),
            " FROM shop_states WHERE provider = $1 AND account = $2"
        ))
        .bind(provider)
        .bind(account)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(rows::shop_state).transpose()
    }

    async fn shop_states(&self) -> Result<Vec<ShopState>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            shop_state_columns!(),
            " FROM shop_states ORDER BY provider, account"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::shop_state).collect()
    }

    async fn shop_history(
        &self,
        provider: &str,
        account: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<ShopStateChange>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            shop_history_columns!(),
            " FROM shop_state_history WHERE provider = $1 AND account = $2 \
             AND observed_at >= $3 ORDER BY observed_at, id"
        ))
        .bind(provider)
        .bind(account)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::shop_state_change).collect()
    }

    async fn record_shop_document(&self, document: &ShopDocument) -> Result<(), StoreError> {
        self.write_for(&document.provider, &document.account, async |tx| {
            sqlx::query(
                "INSERT INTO shop_documents (provider, account, document, refresh_value, body, \
                 body_sha256, fetched_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&document.provider)
            .bind(&document.account)
            .bind(document.document.as_str())
            .bind(&document.refresh_value)
            .bind(&document.body)
            .bind(body_sha256(&document.body))
            .bind(document.fetched_at)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
        .await
    }

    async fn shop_documents(
        &self,
        provider: &str,
        account: &str,
        document: ShopDocumentKind,
        latest: bool,
    ) -> Result<Vec<ShopDocument>, StoreError> {
        let rows = sqlx::query(
            "SELECT provider, account, document, refresh_value, body, fetched_at FROM ( \
               SELECT * FROM shop_documents WHERE provider = $1 AND account = $2 \
               AND document = $3 ORDER BY id DESC LIMIT CASE WHEN $4 THEN 1 END) AS d \
             ORDER BY id",
        )
        .bind(provider)
        .bind(account)
        .bind(document.as_str())
        .bind(latest)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::shop_document).collect()
    }

    async fn close(&self) {
        self.handover.give_back_all();
        self.pool.close().await;
    }

    fn lease_table(&self) -> Option<&dyn super::LeaseTable> {
        Some(self)
    }

    fn fence_with(&self, book: std::sync::Arc<crate::lease::LeaseBook>) {
        // Set once, by the daemon before it starts any work.
        let _ = self.fence.set(book);
    }
}

impl PostgresStore {
    /// An unchanged state: when it was seen, its body and refresh values.
    async fn shop_state_seen(&self, state: &ShopState) -> Result<(), StoreError> {
        self.write_for(&state.provider, &state.account, async |tx| {
            sqlx::query(
                "UPDATE shop_states SET observed_at = $1, body = $2, last_menu_refresh = $3, \
                 last_open_times_refresh = $4, last_delivery_cost_refresh = $5 \
                 WHERE provider = $6 AND account = $7",
            )
            .bind(state.observed_at)
            .bind(&state.body)
            .bind(&state.refresh.menu)
            .bind(&state.refresh.open_times)
            .bind(&state.refresh.delivery_costs)
            .bind(&state.provider)
            .bind(&state.account)
            .execute(&mut *tx)
            .await?;
            Ok(())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(url: &str) -> bool {
        is_loopback(&PgConnectOptions::from_str(url).expect("a URL"))
    }

    #[test]
    fn tls_is_left_open_only_without_ssl_keys() {
        assert!(tls_left_open("postgres://u@db.example:5432/shop"));
        assert!(tls_left_open(
            "postgres://u@127.0.0.1/shop?application_name=a"
        ));
        assert!(!tls_left_open("postgres://u@127.0.0.1/shop?sslmode=prefer"));
        assert!(!tls_left_open(
            "postgres://u@127.0.0.1/shop?application_name=a&sslrootcert=/ca.pem"
        ));
        assert!(!tls_left_open("not a url"));
    }

    #[test]
    fn loopback_is_localhost_or_a_loopback_address() {
        assert!(loopback("postgres://u@localhost:5432/shop"));
        assert!(loopback("postgres://u@127.0.0.1:5432/shop"));
        assert!(loopback("postgres://u@127.0.0.53/shop"));
        assert!(loopback("postgres://u@[::1]:5432/shop"));
        assert!(!loopback("postgres://u@10.0.0.7:5432/shop"));
        assert!(!loopback("postgres://u@db.example:5432/shop"));
        // A Unix socket has no TLS to leave out.
        assert!(!loopback("postgres://u@%2Fvar%2Frun%2Fpostgresql/shop"));
    }
}
