//! The embedded default: one SQLite file in WAL mode.

use super::commit_runtime::CommitRuntime;
use super::outcome_columns;
use super::rows;
use super::shops::bind_shop_state;
use super::{
    ActionCount, ActionFilter, AsnRow, AsnUpdate, Batch, BatchOutcome, Claim, CommitDone, Delivery,
    DeliveryDone, DeliveryStat, EarlierCommit, GateState, InboxEntry, InboxFilter, NewAsn,
    NewDelivery, ObjectDone, OpenWrite, ROWS_PER_STATEMENT, Registration, RetryFilter,
    StatusChange, Store, StoreError, StoredOrder, StreamStatus, body_sha256, newest_per_key,
};
use super::{
    FollowedOrder, Resolution, ShopDocument, ShopDocumentKind, ShopState, ShopStateChange,
};
use crate::config::DatabaseConfig;
use crate::model::{Action, ActionOutcome, NewAction, Order, OrderKey, StreamKey};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Arguments, Connection, Row, Sqlite, SqlitePool};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

pub struct SqliteStore {
    pool: SqlitePool,
    /// The one connection that commits upstream batches: its page cache stays warm across
    /// batches (a pooled connection's cache is dropped whenever another connection wrote), and
    /// only its cache grows with the database.
    writer: SqlitePool,
    checkpoints: Checkpoints,
    open_batches_most: OpenBatchesMost,
    /// Where the committers of upstream batches run (see [`CommitRuntime`]).
    commits: CommitRuntime,
}

/// How far one transaction may be handed from batch to batch.
#[derive(Debug, Clone, Copy)]
struct OpenBatchesMost {
    orders: u64,
    time: Duration,
}

/// Pages of the orders and their indexes the writer keeps in memory (KiB, as SQLite's
/// `cache_size` takes a negative number). A batch is written in key order, so it reaches each
/// index page once: the cache needs the B-trees' upper levels and the pages being appended to,
/// not the index. The memory goes to larger batches instead (`database.buffered_orders`): at
/// 1,000,000 orders with random ids, 8,000 buffered with a 16 MB cache wrote 31,700-35,300
/// orders/s at 83-85 MB peak RSS, 16,000 with 2 MB 40,200-41,000/s at 84-86 MB. For several
/// accounts backfilling at once a 16 MB cache was faster in one sitting and not in the next
/// (docs/performance-log.md), always at about 20 MB more.
const WRITER_CACHE_KIB: i64 = 2 * 1024;
/// A backlog's batches share one transaction up to this many orders: at 1,000,000 orders with
/// random ids every commit rewrites nearly all of the unique index (into the log, then by the
/// checkpoint into the file), so about four batches to a commit wrote a third less for the
/// disk and ran 9% faster; 64,000 was no faster (docs/performance-log.md). The memory is the
/// writer's page cache, as for one batch: the orders leave the buffer once written.
const OPEN_BATCHES_MOST_ORDERS: u64 = 32_000;
/// ... and for at most this long, as every other write to the database (another account's
/// batches, a webhook's delivery, a run's record) waits for the commit.
const OPEN_BATCHES_MOST_TIME: Duration = Duration::from_secs(1);
/// Every other connection reads a few rows at a time.
const READER_CACHE_KIB: i64 = 4 * 1024;
/// Bytes committed between background checkpoints.
const CHECKPOINT_EVERY_BYTES: u64 = 16 << 20;
/// The least committed that a caller's end of writing checkpoints early, and that each commit
/// after it checkpoints while what was fetched drains.
const CHECKPOINT_SOON_MIN_BYTES: u64 = 1 << 20;
/// WAL pages after which a committing connection checkpoints by itself: only reached when the
/// background checkpoint falls behind, so the WAL cannot grow without bound.
const WRITER_AUTOCHECKPOINT_PAGES: &str = "16384";
/// The WAL file's size above which it is cut back once a backfill is done. A busy writer never
/// leaves the background checkpoint the moment in which the log could start over, so a backfill
/// grows the file by about 1.8 KB an order (354 MB at 1,000,000 orders), and SQLite keeps a
/// file's largest size until the process stops. Four checkpoint intervals: a daemon's usual log
/// stays below it and is not cut and regrown.
#[cfg(not(test))]
const WAL_FILE_MOST_BYTES: u64 = 4 * CHECKPOINT_EVERY_BYTES;
/// Small enough for a test to pass it quickly.
#[cfg(test)]
const WAL_FILE_MOST_BYTES: u64 = 4 << 20;

/// Copies the WAL into the database file on a connection of its own, so the writer does not
/// stop for it (a checkpoint of a busy backfill is a third of the writer's time otherwise).
/// Woken by the bytes committed, never on a timer.
struct Checkpoints {
    wake: Arc<Notify>,
    since_last: AtomicU64,
    /// Orders that may still be committed from what was fetched before a caller's reads ended:
    /// while some are, each megabyte they add to the log is copied straight away, so the
    /// process's close finds little left to copy and sync.
    draining_orders: AtomicU64,
    /// The most orders a caller can still hold when its reads end: the order buffer.
    buffered_orders: u64,
    /// Set when a caller's reads end: the next checkpoint that copies every frame checks the
    /// WAL file's size. Only then: mid-backfill, the writer's own checkpoints leave such moments
    /// every 256 MB, and cutting the file there (as `journal_size_limit` does) made 1,000,000
    /// orders 0.6–1.1 s slower (docs/performance-log.md).
    cut_wanted: Arc<AtomicBool>,
    /// Set while the WAL file is over [`WAL_FILE_MOST_BYTES`] and a writer kept it from being cut
    /// back: the next caller done writing wakes the checkpoint however little it wrote.
    cut_pending: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Checkpoints {
    fn start(
        pool: SqlitePool,
        wal: PathBuf,
        busy_timeout: Duration,
        buffered_orders: usize,
    ) -> Self {
        let wake = Arc::new(Notify::new());
        let woken = Arc::clone(&wake);
        let cut_wanted = Arc::new(AtomicBool::new(false));
        let cut_pending = Arc::new(AtomicBool::new(false));
        let (wanted, pending) = (Arc::clone(&cut_wanted), Arc::clone(&cut_pending));
        let task = tokio::spawn(async move {
            loop {
                woken.notified().await;
                // PASSIVE copies what no reader still needs and never waits for the writer.
                let checkpoint: Result<(i64, i64, i64), _> =
                    sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                        .fetch_one(&pool)
                        .await;
                match checkpoint {
                    // Every frame copied after a caller's reads ended: nothing was committed
                    // meanwhile, so the log can start over now, and a file grown by a backfill
                    // is cut back.
                    Ok((0, frames, copied))
                        if frames == copied && wanted.swap(false, Ordering::Relaxed) =>
                    {
                        let size = tokio::fs::metadata(&wal).await.map_or(0, |file| file.len());
                        let left = size > WAL_FILE_MOST_BYTES
                            && !cut_back(&pool, size, busy_timeout).await;
                        pending.store(left, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(error) => {
                        if pool.is_closed() {
                            return;
                        }
                        tracing::warn!(%error, "background WAL checkpoint failed; the writer checkpoints by itself");
                    }
                }
            }
        });
        Checkpoints {
            wake,
            since_last: AtomicU64::new(0),
            draining_orders: AtomicU64::new(0),
            buffered_orders: buffered_orders as u64,
            cut_wanted,
            cut_pending,
            task,
        }
    }

    /// Checkpoints now what was committed since the last checkpoint, unless it is too little
    /// to be worth the checkpoint's two syncs (a daemon's runs mostly write a few orders), and
    /// keeps up with the commits of what was fetched until then.
    fn soon(&self) {
        self.draining_orders
            .store(self.buffered_orders, Ordering::Relaxed);
        self.cut_wanted.store(true, Ordering::Relaxed);
        if self.cut_pending.load(Ordering::Relaxed) {
            self.since_last.store(0, Ordering::Relaxed);
            self.wake.notify_one();
        } else {
            self.wake_from(CHECKPOINT_SOON_MIN_BYTES);
        }
    }

    fn committed(&self, orders: u64, bytes: u64) {
        self.since_last.fetch_add(bytes, Ordering::Relaxed);
        let draining = self
            .draining_orders
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                (left > 0).then(|| left.saturating_sub(orders))
            })
            .is_ok();
        // Bounded by the buffer, so a backfill that starts later checkpoints at the usual
        // interval: every megabyte all along was 5% slower at 100,000 orders.
        self.wake_from(if draining {
            CHECKPOINT_SOON_MIN_BYTES
        } else {
            CHECKPOINT_EVERY_BYTES
        });
    }

    /// Wakes the checkpoint once `least` bytes were committed since it last ran.
    fn wake_from(&self, least: u64) {
        if self.since_last.load(Ordering::Relaxed) >= least {
            self.since_last.store(0, Ordering::Relaxed);
            self.wake.notify_one();
        }
    }
}

impl Drop for Checkpoints {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the log over and truncates its file, holding new writers back while it truncates;
/// true when done. It does not wait: with the connection's busy timeout, TRUNCATE would wait
/// for a writer that began meanwhile and hold off every checkpoint while it waited (a daemon's
/// backfill grew its log to 918 MB so), so a writer at work leaves the file for the next time.
async fn cut_back(pool: &SqlitePool, size: u64, busy_timeout: Duration) -> bool {
    let Ok(mut conn) = pool.acquire().await else {
        return false;
    };
    // A number: nothing from outside the process.
    let restore = format!("PRAGMA busy_timeout = {}", busy_timeout.as_millis());
    let cut = async {
        sqlx::query("PRAGMA busy_timeout = 0")
            .execute(&mut *conn)
            .await?;
        let cut: (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut *conn)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(restore))
            .execute(&mut *conn)
            .await?;
        Ok::<_, sqlx::Error>(cut)
    }
    .await;
    match cut {
        Ok((0, _, _)) => {
            tracing::debug!(bytes = size, "WAL file cut back");
            true
        }
        Ok(_) => false,
        Err(error) => {
            // Its busy timeout may not be restored: the connection is not used again.
            let _ = conn.close().await;
            if !pool.is_closed() {
                tracing::warn!(%error, "cutting back the WAL file failed; tried again when a run's writes end");
            }
            false
        }
    }
}

/// One fixed-width text form, so stored times sort and compare correctly as text:
/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`. Written field by field: this runs twice per stored order, and
/// chrono's pattern formatting was a visible share of a backfill.
fn ts(t: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    use std::fmt::Write;
    let mut text = String::with_capacity(27);
    let year = t.year();
    if !(0..=9999).contains(&year) {
        // Outside what the fixed width can hold; never produced by any provider's mapping.
        return t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
    }
    let _ = write!(
        text,
        "{year:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.timestamp_subsec_micros().min(999_999)
    );
    text
}

/// [`ts`] as a shared slice to bind.
fn ts_shared(t: DateTime<Utc>) -> Arc<str> {
    Arc::from(ts(t))
}

/// How a statement writes its orders.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OrderWrite {
    /// Inserts the orders not stored yet and skips the others. Nothing in it can fail halfway
    /// (the foreign keys are checked at commit), so SQLite keeps no statement journal for it: a
    /// copy of every existing page the statement changes, which with order ids in random order
    /// of time is most of the unique index.
    New,
    /// Replaces stored orders by newer, different copies; it can abort halfway, so it is
    /// journaled, and it runs only where orders were skipped.
    Upsert,
}

/// The rows of one statement, all of one provider and account.
#[derive(Clone, Copy)]
struct StatementPart<'r, 'a> {
    provider: &'a str,
    account: &'a str,
    rows: &'r [(&'a Order, i64)],
}

impl<'a> StatementPart<'_, 'a> {
    /// The part's multi-row write, with its row count.
    ///
    /// The provider, the account and the time seen are the same in every row, so they are
    /// bound once, in a one-row `SELECT` joined to the rows' `VALUES`, instead of once per row:
    /// sqlx holds every bound value and SQLite copies each bound text, and these were four of
    /// a row's fifteen values. (Numbered parameters such as `?1` would say the same, but sqlx
    /// looks up each parameter's name, which SQLite finds by a walk of all names: with
    /// thousands per statement, a 100,000-order backfill took five times as long.)
    ///
    /// Other text is passed as shared slices: sqlx copies a borrowed string into two new
    /// allocations, which the SQLite thread then frees. Values repeated across rows
    /// (channels, statuses) are allocated once per batch, the others once.
    fn statement(
        self,
        shared: &mut SharedText<'a>,
        seen: &Arc<str>,
        write: OrderWrite,
    ) -> Result<OrderStatement, StoreError> {
        let StatementPart {
            provider,
            account,
            rows,
        } = self;
        const COLUMNS: &str = "(provider, account, channel, external_id, status, payment_status, \
            shipping_status, total_minor, currency, upstream_created_at, upstream_updated_at, \
            payload, first_seen_at, synced_at, scope_id) \
            SELECT s.provider, s.account, v.column1, v.column2, v.column3, v.column4, v.column5, \
            v.column6, v.column7, v.column8, v.column9, v.column10, s.seen, s.seen, v.column11 \
            FROM (SELECT ? AS provider, ? AS account, ? AS seen) AS s, (VALUES ";
        const ROW: &str = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
        let mut sql = String::with_capacity(600 + rows.len() * (ROW.len() + 2));
        sql.push_str(match write {
            OrderWrite::New => "INSERT OR IGNORE INTO orders ",
            OrderWrite::Upsert => "INSERT INTO orders ",
        });
        sql.push_str(COLUMNS);
        let mut arguments = SqliteArguments::default();
        arguments.reserve(3 + rows.len() * 11, 0);
        bind(&mut arguments, shared.get(provider))?;
        bind(&mut arguments, shared.get(account))?;
        bind(&mut arguments, Arc::clone(seen))?;
        for (n, (order, scope_id)) in rows.iter().enumerate() {
            if n > 0 {
                sql.push_str(", ");
            }
            sql.push_str(ROW);
            bind(&mut arguments, shared.get(&order.key.channel))?;
            bind(
                &mut arguments,
                Arc::<str>::from(order.key.external_id.as_str()),
            )?;
            bind(
                &mut arguments,
                order.status.as_deref().map(|s| shared.get(s)),
            )?;
            bind(
                &mut arguments,
                order.payment_status.as_deref().map(|s| shared.get(s)),
            )?;
            bind(
                &mut arguments,
                order.shipping_status.as_deref().map(|s| shared.get(s)),
            )?;
            bind(&mut arguments, order.total.as_ref().map(|m| m.minor))?;
            bind(
                &mut arguments,
                order.total.as_ref().map(|m| shared.get(&m.currency)),
            )?;
            bind(&mut arguments, order.upstream_created_at.map(ts_shared))?;
            bind(&mut arguments, ts_shared(order.upstream_updated_at))?;
            bind(&mut arguments, Arc::<str>::from(order.payload.as_str()))?;
            bind(&mut arguments, *scope_id)?;
        }
        // `WHERE true` tells SQLite's parser that the upsert's ON CONFLICT belongs to the INSERT,
        // not to a join of the SELECT.
        sql.push_str(") AS v WHERE true");
        if write == OrderWrite::Upsert {
            // A copy wins when it is not older and its body differs: the lookback's re-reads of
            // unchanged orders, and polled snapshots identical to the stored one, write nothing.
            sql.push_str(
                " ON CONFLICT (scope_id, external_id) DO UPDATE SET \
                 status = excluded.status, payment_status = excluded.payment_status, \
                 shipping_status = excluded.shipping_status, total_minor = excluded.total_minor, \
                 currency = excluded.currency, upstream_created_at = excluded.upstream_created_at, \
                 upstream_updated_at = excluded.upstream_updated_at, payload = excluded.payload, \
                 synced_at = excluded.synced_at \
                 WHERE excluded.upstream_updated_at >= orders.upstream_updated_at \
                 AND excluded.payload <> orders.payload",
            );
        }
        Ok(OrderStatement {
            sql,
            arguments,
            rows: rows.len(),
        })
    }
}

/// A batch's orders (with their scope ids) cut into statements. They come sorted by key, so
/// each provider and account's are next to each other, and a statement takes one's (in
/// practice a batch is one stream's): at most [`ROWS_PER_STATEMENT`] rows each.
fn statement_parts<'r, 'a>(rows: &'r [(&'a Order, i64)]) -> Vec<StatementPart<'r, 'a>> {
    let mut parts = Vec::with_capacity(rows.len() / ROWS_PER_STATEMENT + 1);
    for run in rows.chunk_by(|(a, _), (b, _)| {
        a.key.provider == b.key.provider && a.key.account == b.key.account
    }) {
        let Some((first, _)) = run.first() else {
            continue;
        };
        for chunk in run.chunks(ROWS_PER_STATEMENT) {
            parts.push(StatementPart {
                provider: first.key.provider.as_str(),
                account: &first.key.account,
                rows: chunk,
            });
        }
    }
    parts
}

/// Adds one value to a statement's arguments.
fn bind<'q, T>(arguments: &mut SqliteArguments, value: T) -> Result<(), StoreError>
where
    T: sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite>,
{
    arguments
        .add(value)
        .map_err(|error| StoreError::Query(sqlx::Error::Encode(error)))
}

/// The `order_scopes` id of each order's (provider, account, channel), numbering new ones. Orders
/// come sorted by key, so each scope's orders are next to each other and each is looked up once.
async fn scope_ids(
    tx: &mut sqlx::SqliteConnection,
    orders: &[&Order],
) -> Result<Vec<i64>, StoreError> {
    let mut ids = Vec::with_capacity(orders.len());
    let mut current: Option<(&OrderKey, i64)> = None;
    for order in orders {
        let key = &order.key;
        let id = match current {
            Some((seen, id))
                if seen.provider == key.provider
                    && seen.account == key.account
                    && seen.channel == key.channel =>
            {
                id
            }
            _ => {
                sqlx::query(
                    "INSERT INTO order_scopes (provider, account, channel) VALUES (?, ?, ?) \
                     ON CONFLICT (provider, account, channel) DO NOTHING",
                )
                .bind(key.provider.as_str())
                .bind(&key.account)
                .bind(&key.channel)
                .execute(&mut *tx)
                .await?;
                sqlx::query_scalar(
                    "SELECT id FROM order_scopes WHERE provider = ? AND account = ? AND channel = ?",
                )
                .bind(key.provider.as_str())
                .bind(&key.account)
                .bind(&key.channel)
                .fetch_one(&mut *tx)
                .await?
            }
        };
        current = Some((key, id));
        ids.push(id);
    }
    Ok(ids)
}

/// One multi-row write of orders and how many rows it holds.
struct OrderStatement {
    sql: String,
    arguments: SqliteArguments,
    rows: usize,
}

impl OrderStatement {
    fn query(self) -> sqlx::query::Query<'static, Sqlite, SqliteArguments> {
        sqlx::query_with(sqlx::AssertSqlSafe(self.sql), self.arguments)
    }
}

/// One shared copy of each distinct text value bound in a batch.
#[derive(Default)]
struct SharedText<'a>(foldhash::HashMap<&'a str, Arc<str>>);

impl<'a> SharedText<'a> {
    fn get(&mut self, text: &'a str) -> Arc<str> {
        Arc::clone(self.0.entry(text).or_insert_with(|| Arc::from(text)))
    }
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
            // A write that waits longer than this for another writer fails with `database is
            // locked` instead of waiting on.
            .busy_timeout(config.statement_timeout)
            .foreign_keys(true)
            // Orders are about 1.5 KB with their payload: larger pages split less and need fewer
            // WAL frames. The statement journal of a multi-row upsert stays in memory: in a
            // temporary file it saved 9 MB of peak RSS at 1,000,000 orders, but needs a writable
            // temporary directory, which a read-only container root does not have.
            // (page_size takes effect on a new database.)
            .pragma("temp_store", "memory")
            .pragma("page_size", "16384");
        let path = options.get_filename().display().to_string();
        let wal = PathBuf::from(format!("{path}-wal"));
        let reader_options = options
            .clone()
            .pragma("cache_size", (-READER_CACHE_KIB).to_string())
            .pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES);
        let writer_options = options
            .pragma("cache_size", (-WRITER_CACHE_KIB).to_string())
            .pragma("wal_autocheckpoint", WRITER_AUTOCHECKPOINT_PAGES);
        let pool_options = |connections: u32| {
            SqlitePoolOptions::new()
                .max_connections(connections)
                .acquire_timeout(config.acquire_timeout)
                // After a disk error (full, I/O) SQLite may have ended a transaction itself, or
                // kept it when the rollback failed; either way the connection no longer agrees
                // with itself, and reused it would hold the write lock for good (every other
                // writer then reports `database is locked`). Such a connection is closed, never
                // reused. The ping lets the rollback queued by a dropped transaction run first.
                .after_release(|conn, _| {
                    Box::pin(async move {
                        conn.ping().await?;
                        Ok(!conn.is_in_transaction())
                    })
                })
        };
        // The first connection creates the file and switches it to WAL before the others open.
        let pool = pool_options(config.max_connections)
            .connect_with(reader_options)
            .await
            .map_err(|error| StoreError::OpenSqlite {
                path: path.clone(),
                error,
            })?;
        let writer = pool_options(1)
            .connect_with(writer_options)
            .await
            .map_err(|error| StoreError::OpenSqlite { path, error })?;
        let checkpoints = Checkpoints::start(
            pool.clone(),
            wal,
            config.statement_timeout,
            config.buffered_orders,
        );
        let commits = CommitRuntime::start("sqlite-commits").map_err(StoreError::Thread)?;
        Ok(SqliteStore {
            pool,
            writer,
            checkpoints,
            commits,
            open_batches_most: OpenBatchesMost {
                orders: OPEN_BATCHES_MOST_ORDERS,
                time: OPEN_BATCHES_MOST_TIME,
            },
        })
    }
}

/// A batch written and not yet committed.
struct Written {
    outcome: BatchOutcome,
    orders: u64,
    bytes: u64,
}

/// Batches of one stream in one transaction, handed from each to the next while more of the
/// stream's orders wait (see [`Store::commit_batch_handing_on`]).
struct OpenBatches {
    tx: sqlx::Transaction<'static, Sqlite>,
    orders: u64,
    bytes: u64,
    opened: Instant,
}

impl SqliteStore {
    /// Writes a batch's orders, quarantined records and cursor into `tx`, uncommitted.
    async fn write_batch(
        tx: &mut sqlx::SqliteConnection,
        batch: &Batch<'_>,
    ) -> Result<Written, StoreError> {
        let seen = ts(batch.seen_at);
        let orders = newest_per_key(batch.orders);
        let mut outcome = BatchOutcome::default();
        let scope_ids = scope_ids(tx, &orders).await?;
        let mut shared = SharedText::default();
        let seen = shared.get(&seen);
        let rows: Vec<(&Order, i64)> = orders.iter().copied().zip(scope_ids).collect();
        let mut parts = statement_parts(&rows).into_iter();
        // Each statement's values are bound while the one before it runs on the SQLite thread:
        // one after the other, that thread waited for every statement to be built.
        let mut next = match parts.next() {
            Some(part) => Some((part, part.statement(&mut shared, &seen, OrderWrite::New)?)),
            None => None,
        };
        while let Some((part, statement)) = next.take() {
            // A statement's text depends on its row count, and each prepared one keeps a
            // program of thousands of parameters: only the full-size one is kept for reuse,
            // not one per remainder size a batch happened to end with.
            let reuse = statement.rows == ROWS_PER_STATEMENT;
            let execute = statement.query().persistent(reuse).execute(&mut *tx);
            let bind_next = async {
                match parts.next() {
                    Some(part) => part
                        .statement(&mut shared, &seen, OrderWrite::New)
                        .map(|statement| Some((part, statement))),
                    None => Ok(None),
                }
            };
            let (inserted, built) = tokio::join!(execute, bind_next);
            let inserted = inserted?.rows_affected();
            outcome.written += inserted;
            if inserted < part.rows.len() as u64 {
                // Some were stored already. The upsert replaces each by a newer, different
                // copy; the orders just inserted are the same copies, so it leaves them alone.
                let update = part.statement(&mut shared, &seen, OrderWrite::Upsert)?;
                let reuse = update.rows == ROWS_PER_STATEMENT;
                let updated = update.query().persistent(reuse).execute(&mut *tx).await?;
                outcome.written += updated.rows_affected();
            }
            next = built?;
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

        let bytes: usize = orders.iter().map(|o| o.payload.len()).sum();
        Ok(Written {
            outcome,
            orders: orders.len() as u64,
            bytes: bytes as u64,
        })
    }
}

#[async_trait]
impl Store for SqliteStore {
    fn commit_runtime(&self) -> Option<&tokio::runtime::Handle> {
        Some(self.commits.handle())
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }

    async fn readiness(&self) -> Result<(), StoreError> {
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await?;
        super::check_migrated(applied, &sqlx::migrate!("migrations/sqlite"))
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

    fn writes_ending(&self) {
        self.checkpoints.soon();
    }

    async fn commit_batch(&self, batch: &Batch<'_>) -> Result<BatchOutcome, StoreError> {
        let mut tx = self.writer.begin().await?;
        let written = Self::write_batch(&mut tx, batch).await?;
        tx.commit().await?;
        self.checkpoints.committed(written.orders, written.bytes);
        Ok(written.outcome)
    }

    async fn commit_batch_handing_on(
        &self,
        batch: &Batch<'_>,
        mut earlier: EarlierCommit,
        done: CommitDone,
    ) -> Result<BatchOutcome, StoreError> {
        let mut open = match earlier.committed_or_handed_on().await? {
            Some(write) => write
                .into_inner::<OpenBatches>()
                .ok_or(StoreError::EarlierBatchFailed)?,
            None => OpenBatches {
                tx: self.writer.begin().await?,
                orders: 0,
                bytes: 0,
                opened: Instant::now(),
            },
        };
        let written = Self::write_batch(&mut open.tx, batch).await?;
        open.orders += written.orders;
        open.bytes += written.bytes;
        let most = self.open_batches_most;
        if done.is_followed() && open.orders < most.orders && open.opened.elapsed() < most.time {
            done.hand_on(OpenWrite::new(open));
        } else {
            open.tx.commit().await?;
            self.checkpoints.committed(open.orders, open.bytes);
            done.committed();
        }
        Ok(written.outcome)
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
        started: DateTime<Utc>,
        at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO sync_cursors (provider, account, resource, last_run_started_at, \
             last_run_finished_at, last_success_at, last_error, consecutive_failures) \
             VALUES (?3, ?4, ?5, ?6, ?1, CASE WHEN ?2 IS NULL THEN ?1 END, ?2, \
                     CASE WHEN ?2 IS NULL THEN 0 ELSE 1 END) \
             ON CONFLICT (provider, account, resource) DO UPDATE SET \
             last_run_started_at = excluded.last_run_started_at, \
             last_run_finished_at = excluded.last_run_finished_at, \
             last_success_at = CASE WHEN ?2 IS NULL THEN ?1 ELSE sync_cursors.last_success_at END, \
             last_error = ?2, \
             consecutive_failures = CASE WHEN ?2 IS NULL THEN 0 \
                                         ELSE sync_cursors.consecutive_failures + 1 END",
        )
        .bind(ts(at))
        .bind(error)
        .bind(stream.provider.as_str())
        .bind(&stream.account)
        .bind(&stream.resource)
        .bind(ts(started))
        .execute(&self.pool)
        .await?;
        Ok(())
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
             upstream_updated_at FROM orders WHERE provider = ? AND account = ? \
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
             WHERE provider = ? AND account = ? AND channel = ? AND external_id = ? ORDER BY id",
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
            "SELECT COUNT(*) FROM quarantine WHERE provider = ? AND account = ?",
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
            "SELECT payload FROM orders WHERE scope_id = (SELECT id FROM order_scopes \
             WHERE provider = ? AND account = ? AND channel = ?) LIMIT 1",
        )
        .bind(provider)
        .bind(account)
        .bind(channel)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn enqueue(&self, action: &NewAction) -> Result<(Action, bool), StoreError> {
        let now = ts(Utc::now());
        let key = action.key();
        let inserted = sqlx::query(
            "INSERT INTO actions (idempotency_key, provider, account, kind, channel, external_id, \
             request, max_attempts, next_attempt_at, created_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?9) \
             ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(&key)
        .bind(action.provider.as_str())
        .bind(&action.account)
        .bind(action.kind.as_str())
        .bind(&action.channel)
        .bind(&action.external_id)
        .bind(action.request.to_string())
        .bind(action.max_attempts)
        .bind(&now)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1;
        let row = sqlx::query(concat!(
            "SELECT ",
            action_columns!(),
            " FROM actions WHERE idempotency_key = ?"
        ))
        .bind(&key)
        .fetch_one(&self.pool)
        .await?;
        Ok((rows::action(&row)?, inserted))
    }

    async fn claim(&self, claim: &Claim<'_>) -> Result<Vec<Action>, StoreError> {
        let rows = sqlx::query(concat!(
            "UPDATE actions SET state = 'in_flight', claimed_by = ?1, claimed_until = ?2, \
             attempts = attempts + 1, updated_at = ?3 \
             WHERE id IN (SELECT id FROM actions WHERE provider = ?4 AND account = ?5 \
               AND state IN ('pending', 'in_flight') \
               AND ((state = 'pending' AND next_attempt_at <= ?3) \
                 OR (state = 'in_flight' AND claimed_until < ?3)) \
               ORDER BY next_attempt_at, id LIMIT ?6) \
             RETURNING ",
            action_columns!(),
            ""
        ))
        .bind(claim.worker)
        .bind(ts(claim.visible_until))
        .bind(ts(claim.now))
        .bind(claim.provider)
        .bind(claim.account)
        .bind(claim.limit)
        .fetch_all(&self.pool)
        .await?;
        // SQLite keeps whatever type a hand-written INSERT gave a column. A row ordersync cannot
        // read fails on its own, with the reason, instead of holding up the account's queue.
        let mut actions = Vec::with_capacity(rows.len());
        for row in &rows {
            match rows::action(row) {
                Ok(action) => actions.push(action),
                Err(error) => {
                    let id: i64 = row.try_get(0)?;
                    tracing::warn!(action = id, %error, "unreadable action row failed");
                    sqlx::query(UNREADABLE_ACTION_FAILED)
                        .bind(format!("ordersync cannot read this row: {error}"))
                        .bind(ts(claim.now))
                        .bind(id)
                        .execute(&self.pool)
                        .await?;
                }
            }
        }
        actions.sort_by_key(|a| a.id);
        Ok(actions)
    }

    async fn finish_batch(
        &self,
        worker: &str,
        outcomes: &[(i64, ActionOutcome)],
    ) -> Result<Vec<i64>, StoreError> {
        // One statement, so a batch costs one write transaction, not one per action.
        Ok(sqlx::query_scalar(
            "UPDATE actions AS a SET \
             state = CASE WHEN u.kind = 'defer' THEN 'pending' WHEN u.kind <> 'retry' THEN u.kind \
                          WHEN a.attempts >= a.max_attempts THEN 'dead' ELSE 'pending' END, \
             result = CASE WHEN u.kind IN ('succeeded', 'sent') THEN u.result ELSE a.result END, \
             last_error = u.error, \
             next_attempt_at = COALESCE(u.next_at, a.next_attempt_at), \
             attempts = CASE WHEN u.kind = 'defer' THEN a.attempts - 1 ELSE a.attempts END, \
             finished_at = CASE WHEN u.kind IN ('sent', 'unknown', 'defer') THEN NULL \
                                WHEN u.kind <> 'retry' OR a.attempts >= a.max_attempts \
                                THEN ?3 END, \
             claimed_until = NULL, sending_since = NULL, updated_at = ?3 \
             FROM (SELECT value ->> '$.id' AS id, value ->> '$.kind' AS kind, \
                          value ->> '$.result' AS result, value ->> '$.error' AS error, \
                          value ->> '$.next_at' AS next_at FROM json_each(?1)) AS u \
             WHERE a.id = u.id AND a.state = 'in_flight' AND a.claimed_by = ?2 \
             RETURNING id",
        )
        .bind(outcome_rows(outcomes))
        .bind(worker)
        .bind(ts(Utc::now()))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn extend_claims(
        &self,
        ids: &[i64],
        worker: &str,
        until: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let ids = serde_json::Value::from(ids.to_vec()).to_string();
        let done = sqlx::query(
            "UPDATE actions SET claimed_until = ?1 WHERE state = 'in_flight' AND claimed_by = ?2 \
             AND id IN (SELECT value FROM json_each(?3))",
        )
        .bind(ts(until))
        .bind(worker)
        .bind(ids)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn record_asn(&self, asn: &NewAsn) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO asns (provider, account, asn_id, warehouse_id, supplier_id, supplier_ref, \
             action_id, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) \
             ON CONFLICT (provider, account, asn_id) DO NOTHING",
        )
        .bind(asn.provider.as_str())
        .bind(&asn.account)
        .bind(asn.asn_id)
        .bind(&asn.warehouse_id)
        .bind(asn.supplier_id)
        .bind(&asn.supplier_ref)
        .bind(asn.action_id)
        .bind(ts(Utc::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn open_asns(&self, provider: &str, account: &str) -> Result<Vec<AsnRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT asn_id, warehouse_id, status, received_quantity, is_final FROM asns \
             WHERE provider = ? AND account = ? AND is_final = 0 ORDER BY asn_id",
        )
        .bind(provider)
        .bind(account)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::asn_row).collect()
    }

    async fn record_gate(&self, gate: &GateState) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO account_gates (provider, account, paused_until, rate_limited, updated_at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT (provider, account) DO UPDATE SET \
             paused_until = excluded.paused_until, rate_limited = excluded.rate_limited, \
             updated_at = excluded.updated_at",
        )
        .bind(&gate.provider)
        .bind(&gate.account)
        .bind(gate.paused_until.map(ts))
        .bind(gate.rate_limited)
        .bind(ts(gate.updated_at))
        .execute(&self.pool)
        .await?;
        Ok(())
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
        sqlx::query(
            "UPDATE asns SET status = ?, received_quantity = ?, payload = ?, is_final = ?, \
             checked_at = ? WHERE provider = ? AND account = ? AND asn_id = ?",
        )
        .bind(&update.status)
        .bind(update.received_quantity)
        .bind(update.payload.to_string())
        .bind(update.is_final)
        .bind(ts(update.checked_at))
        .bind(update.provider.as_str())
        .bind(&update.account)
        .bind(update.asn_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn action(&self, id: i64) -> Result<Option<Action>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            action_columns!(),
            " FROM actions WHERE id = ?"
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
            " FROM actions WHERE (?1 IS NULL OR state = ?1) \
             AND (?2 IS NULL OR account = ?2) ORDER BY id DESC LIMIT ?3"
        ))
        .bind(filter.state.map(|s| s.as_str()))
        .bind(&filter.account)
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::action).collect()
    }

    async fn retry_actions(&self, filter: &RetryFilter) -> Result<u64, StoreError> {
        let now = ts(Utc::now());
        let (id, account, all_dead) = match filter {
            RetryFilter::One(id) => (Some(*id), None, false),
            RetryFilter::AllDead { account } => (None, account.clone(), true),
        };
        let done = sqlx::query(
            "UPDATE actions SET state = 'pending', attempts = 0, next_attempt_at = ?1, \
             finished_at = NULL, updated_at = ?1 \
             WHERE ((?2 IS NOT NULL AND id = ?2 AND state IN ('dead', 'failed')) \
                OR (?3 AND state = 'dead' AND (?4 IS NULL OR account = ?4)))",
        )
        .bind(&now)
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
            " FROM actions WHERE state = 'sent' AND provider = ?1 AND account = ?2 \
             ORDER BY id LIMIT ?3"
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
        Ok(sqlx::query_scalar(
            "UPDATE actions AS a SET \
             state = CASE WHEN u.kind = 'retry' THEN 'pending' ELSE u.kind END, \
             result = CASE WHEN u.kind IN ('succeeded', 'sent') THEN u.result ELSE a.result END, \
             last_error = u.error, \
             next_attempt_at = COALESCE(u.next_at, a.next_attempt_at), \
             finished_at = CASE WHEN u.kind IN ('succeeded', 'failed') THEN ?2 END, \
             updated_at = ?2 \
             FROM (SELECT value ->> '$.id' AS id, value ->> '$.kind' AS kind, \
                          value ->> '$.result' AS result, value ->> '$.error' AS error, \
                          value ->> '$.next_at' AS next_at FROM json_each(?1)) AS u \
             WHERE a.id = u.id AND a.state = 'sent' \
             RETURNING id",
        )
        .bind(outcome_rows(outcomes))
        .bind(ts(Utc::now()))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn record_deliveries(
        &self,
        deliveries: &[NewDelivery],
        cursor: Option<(&StreamKey, &str)>,
    ) -> Result<Vec<bool>, StoreError> {
        // A delivery is acknowledged once stored and never sent again, so its commit waits for
        // the disk (FULL), where the rest of the data settles for surviving a process crash
        // (NORMAL); the group commit keeps that to one fsync per group.
        let mut conn = self.pool.acquire().await?;
        sqlx::query("PRAGMA synchronous = FULL")
            .execute(&mut *conn)
            .await?;
        let mut tx = conn.begin().await?;
        let mut stored = Vec::with_capacity(deliveries.len());
        for delivery in deliveries {
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO webhook_deliveries (provider, account, source, event_id, event_type, \
                 object_id, body, body_sha256, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                 ON CONFLICT DO NOTHING RETURNING id",
            )
            .bind(delivery.provider.as_str())
            .bind(&delivery.account)
            .bind(delivery.source.as_str())
            .bind(&delivery.event_id)
            .bind(&delivery.event_type)
            .bind(&delivery.object_id)
            .bind(&delivery.body)
            .bind(body_sha256(&delivery.body))
            .bind(ts(delivery.received_at))
            .fetch_optional(&mut *tx)
            .await?;
            stored.push(id.is_some());
        }
        if let Some((stream, cursor)) = cursor {
            sqlx::query(
                "INSERT INTO sync_cursors (provider, account, resource, cursor, cursor_updated_at) \
                 VALUES (?, ?, ?, ?, ?) ON CONFLICT (provider, account, resource) DO UPDATE SET \
                 cursor = excluded.cursor, cursor_updated_at = excluded.cursor_updated_at",
            )
            .bind(stream.provider.as_str())
            .bind(&stream.account)
            .bind(&stream.resource)
            .bind(cursor)
            .bind(ts(Utc::now()))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&mut *conn)
            .await?;
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
             FROM webhook_deliveries WHERE provider = ?1 AND account = ?2 AND state = 'pending' \
             ORDER BY id LIMIT ?3",
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
        let rows: Vec<serde_json::Value> = done
            .iter()
            .map(|d| serde_json::json!({"id": d.id, "state": d.state.as_str(), "note": d.note}))
            .collect();
        sqlx::query(
            "UPDATE webhook_deliveries AS w SET state = u.state, error = u.note, processed_at = ?2 \
             FROM (SELECT value ->> '$.id' AS id, value ->> '$.state' AS state, \
                          value ->> '$.note' AS note FROM json_each(?1)) AS u \
             WHERE w.id = u.id",
        )
        .bind(serde_json::Value::Array(rows).to_string())
        .bind(ts(Utc::now()))
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
        // One indexed statement per object in one transaction: joined with json_each in one
        // statement, SQLite's planner scanned every pending delivery once per object.
        let now = ts(Utc::now());
        let mut tx = self.pool.begin().await?;
        let mut updated = 0;
        for object in done {
            updated += sqlx::query(
                "UPDATE webhook_deliveries SET state = ?1, error = ?2, processed_at = ?3 \
                 WHERE provider = ?4 AND account = ?5 AND state = 'pending' \
                   AND object_id = ?6 AND event_type = ?7 AND received_at < ?8",
            )
            .bind(object.state.as_str())
            .bind(&object.note)
            .bind(&now)
            .bind(provider)
            .bind(account)
            .bind(&object.object_id)
            .bind(event_type)
            .bind(ts(object.before))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(updated)
    }

    async fn delivery_stats(&self) -> Result<Vec<DeliveryStat>, StoreError> {
        let rows = sqlx::query(
            "SELECT provider, account, max(received_at), \
                    sum(CASE WHEN state = 'pending' THEN 1 ELSE 0 END), \
                    sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) \
             FROM webhook_deliveries GROUP BY provider, account ORDER BY provider, account",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::delivery_stat).collect()
    }

    async fn inbox(&self, filter: &InboxFilter) -> Result<Vec<InboxEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, provider, account, event_id, event_type, object_id, state, error, \
                    received_at, processed_at, length(CAST(body AS BLOB)) \
             FROM webhook_deliveries \
             WHERE (?1 IS NULL OR provider = ?1) AND (?2 IS NULL OR account = ?2) \
               AND (?3 IS NULL OR state = ?3) AND (?4 IS NULL OR received_at >= ?4) \
               AND (?5 = '[]' OR id IN (SELECT value FROM json_each(?5))) \
             ORDER BY id DESC LIMIT ?6",
        )
        .bind(&filter.provider)
        .bind(&filter.account)
        .bind(&filter.state)
        .bind(filter.since.map(ts))
        .bind(serde_json::Value::from(filter.ids.clone()).to_string())
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::inbox_entry).collect()
    }

    async fn requeue_deliveries(&self, filter: &InboxFilter) -> Result<u64, StoreError> {
        Ok(sqlx::query(
            "UPDATE webhook_deliveries SET state = 'pending', error = NULL, processed_at = NULL \
             WHERE state <> 'pending' \
               AND (?1 IS NULL OR provider = ?1) AND (?2 IS NULL OR account = ?2) \
               AND (?3 IS NULL OR state = ?3) AND (?4 IS NULL OR received_at >= ?4) \
               AND (?5 = '[]' OR id IN (SELECT value FROM json_each(?5)))",
        )
        .bind(&filter.provider)
        .bind(&filter.account)
        .bind(&filter.state)
        .bind(filter.since.map(ts))
        .bind(serde_json::Value::from(filter.ids.clone()).to_string())
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
             FROM webhook_registrations WHERE provider = ?1 AND account = ?2 \
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
            "SELECT EXISTS (SELECT 1 FROM webhook_registrations WHERE provider = ?1 AND account = ?2 AND guid = ?3)",
        )
        .bind(provider)
        .bind(account)
        .bind(guid)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn save_registration(&self, r: &Registration) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO webhook_registrations (provider, account, registration_id, \
             guid, feature_id, feature_method, group_wide, url, created_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&r.provider)
        .bind(&r.account)
        .bind(&r.registration_id)
        .bind(&r.guid)
        .bind(&r.feature_id)
        .bind(&r.feature_method)
        .bind(i64::from(r.group_wide))
        .bind(&r.url)
        .bind(ts(r.created_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn drop_registration(
        &self,
        provider: &str,
        account: &str,
        registration_id: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "DELETE FROM webhook_registrations \
             WHERE provider = ? AND account = ? AND registration_id = ?",
        )
        .bind(provider)
        .bind(account)
        .bind(registration_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn open_orders(
        &self,
        provider: &str,
        account: &str,
        terminal: &[String],
    ) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT external_id FROM orders WHERE provider = ?1 AND account = ?2 \
             AND (status IS NULL OR status NOT IN (SELECT value FROM json_each(?3))) \
             ORDER BY external_id",
        )
        .bind(provider)
        .bind(account)
        .bind(serde_json::Value::from(terminal.to_vec()).to_string())
        .fetch_all(&self.pool)
        .await?)
    }

    async fn due_accounts(&self, now: DateTime<Utc>) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT provider, account FROM actions \
             WHERE state IN ('pending', 'in_flight') \
             AND ((state = 'pending' AND next_attempt_at <= ?1) \
               OR (state = 'in_flight' AND claimed_until < ?1))",
        )
        .bind(ts(now))
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
        let done = sqlx::query(
            "UPDATE actions SET sending_since = ?1, updated_at = ?1 \
             WHERE id = ?2 AND state = 'in_flight' AND claimed_by = ?3",
        )
        .bind(ts(at))
        .bind(id)
        .bind(worker)
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
            "UPDATE actions SET sending_since = NULL, result = COALESCE(?1, result) \
             WHERE id = ?2 AND state = 'in_flight' AND claimed_by = ?3",
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
        let now = ts(Utc::now());
        let query = match resolution {
            Resolution::Submitted(result) => sqlx::query(concat!(
                "UPDATE actions SET state = 'succeeded', result = ?1, last_error = NULL, \
                 sending_since = NULL, finished_at = ?2, updated_at = ?2 \
                 WHERE id = ?3 AND state = 'unknown' RETURNING ",
                action_columns!()
            ))
            .bind(result.to_string()),
            Resolution::NotSubmitted => sqlx::query(concat!(
                "UPDATE actions SET state = 'pending', attempts = 0, next_attempt_at = ?2, \
                 last_error = ?1, sending_since = NULL, finished_at = NULL, updated_at = ?2 \
                 WHERE id = ?3 AND state = 'unknown' RETURNING ",
                action_columns!()
            ))
            .bind("resolved as not submitted; queued again"),
        };
        let row = query.bind(&now).bind(id).fetch_optional(&self.pool).await?;
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
             WHERE provider = ?1 AND account = ?2 \
             AND (status IS NULL OR status NOT IN (SELECT value FROM json_each(?3))) \
             AND COALESCE(upstream_created_at, first_seen_at) >= ?4 ORDER BY external_id",
        )
        .bind(provider)
        .bind(account)
        .bind(serde_json::Value::from(terminal.to_vec()).to_string())
        .bind(ts(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::followed_order).collect()
    }

    async fn record_shop_state(&self, state: &ShopState, changed: bool) -> Result<(), StoreError> {
        if !changed {
            return self.shop_state_seen(state).await;
        }
        let observed = ts(state.observed_at);
        let products = serde_json::Value::from(state.unavailable_products.clone()).to_string();
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "INSERT INTO shop_states (provider, account, hours_open, delivery_open, pickup_open, \
             connection_ok, delivery_wait_minutes, pickup_wait_minutes, unavailable_products, \
             last_menu_refresh, last_open_times_refresh, last_delivery_cost_refresh, body, \
             observed_at, changed_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?14) \
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
            .bind(&observed)
            .execute(&mut *tx)
            .await?;
        let history = sqlx::query(
            "INSERT INTO shop_state_history (provider, account, hours_open, delivery_open, \
             pickup_open, connection_ok, delivery_wait_minutes, pickup_wait_minutes, \
             unavailable_products, observed_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        );
        bind_shop_state(history, state, &products)
            .bind(&observed)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn shop_state(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<Option<ShopState>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            shop_state_columns!(),
            " FROM shop_states WHERE provider = ?1 AND account = ?2"
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
            " FROM shop_state_history WHERE provider = ?1 AND account = ?2 \
             AND observed_at >= ?3 ORDER BY observed_at, id"
        ))
        .bind(provider)
        .bind(account)
        .bind(ts(since))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(rows::shop_state_change).collect()
    }

    async fn record_shop_document(&self, document: &ShopDocument) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO shop_documents (provider, account, document, refresh_value, body, \
             body_sha256, fetched_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&document.provider)
        .bind(&document.account)
        .bind(document.document.as_str())
        .bind(&document.refresh_value)
        .bind(&document.body)
        .bind(body_sha256(&document.body))
        .bind(ts(document.fetched_at))
        .execute(&self.pool)
        .await?;
        Ok(())
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
               SELECT * FROM shop_documents WHERE provider = ?1 AND account = ?2 \
               AND document = ?3 ORDER BY id DESC LIMIT CASE WHEN ?4 THEN 1 ELSE -1 END) \
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
        self.checkpoints.task.abort();
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// Outcomes as the JSON array `finish_batch` and `settle_sent` read with `json_each`.
fn outcome_rows(outcomes: &[(i64, ActionOutcome)]) -> String {
    let rows: Vec<serde_json::Value> = outcomes
        .iter()
        .map(|(id, outcome)| {
            let (kind, result, error, at) = outcome_columns(outcome);
            serde_json::json!({
                "id": id, "kind": kind, "result": result, "error": error,
                "next_at": at.map(ts),
            })
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

/// Fails an action whose row cannot be read, and puts every column into a type ordersync reads
/// (the original error is kept in `last_error`), so listing actions keeps working.
const UNREADABLE_ACTION_FAILED: &str = "UPDATE actions SET state = 'failed', last_error = ?1, \
     provider = CAST(provider AS TEXT), account = CAST(account AS TEXT), \
     kind = CAST(kind AS TEXT), channel = CAST(channel AS TEXT), \
     external_id = CAST(external_id AS TEXT), idempotency_key = CAST(idempotency_key AS TEXT), \
     claimed_by = CAST(claimed_by AS TEXT), \
     attempts = CASE WHEN typeof(attempts) = 'integer' THEN attempts ELSE 0 END, \
     max_attempts = CASE WHEN typeof(max_attempts) = 'integer' THEN max_attempts ELSE 0 END, \
     created_at = CASE WHEN created_at GLOB \
       '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*Z' \
       THEN created_at ELSE ?2 END, \
     next_attempt_at = ?2, claimed_until = NULL, finished_at = ?2, updated_at = ?2 \
     WHERE id = ?3";

impl SqliteStore {
    /// An unchanged state: when it was seen, its body and refresh values.
    async fn shop_state_seen(&self, state: &ShopState) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE shop_states SET observed_at = ?1, body = ?2, last_menu_refresh = ?3, \
             last_open_times_refresh = ?4, last_delivery_cost_refresh = ?5 \
             WHERE provider = ?6 AND account = ?7",
        )
        .bind(ts(state.observed_at))
        .bind(&state.body)
        .bind(&state.refresh.menu)
        .bind(&state.refresh.open_times)
        .bind(&state.refresh.delivery_costs)
        .bind(&state.provider)
        .bind(&state.account)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{SqliteStore, WAL_FILE_MOST_BYTES};
    use crate::config::{Backend, DatabaseConfig, Secret};
    use crate::model::{ProviderKind, StreamKey, test_order};
    use crate::store::{Batch, EarlierCommit, Store};
    use sqlx::Row;
    use std::sync::Arc;
    use std::time::Duration;

    /// A database file in a new directory (removed when the returned guard drops), and its
    /// configuration.
    fn temporary_database() -> (tempfile::TempDir, std::path::PathBuf, DatabaseConfig) {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else { panic!("{dir:?}") };
        let path = dir.path().join("orders.db");
        let config = DatabaseConfig {
            url: Secret::new(format!("sqlite://{}", path.display())),
            backend: Backend::Sqlite,
            schema: None,
            max_connections: 4,
            statement_timeout: Duration::from_secs(5),
            acquire_timeout: Duration::from_secs(5),
            idle_transaction_timeout: Duration::from_secs(5),
            buffered_orders: crate::config::SQLITE_BUFFERED_ORDERS,
        };
        (dir, path, config)
    }

    /// The store on `config`'s database, migrated to the newest schema.
    async fn migrated_store(config: &DatabaseConfig) -> SqliteStore {
        let store = match SqliteStore::open(config).await {
            Ok(store) => store,
            Err(error) => panic!("open: {error}"),
        };
        if let Err(error) = store.migrate().await {
            panic!("migrate: {error}");
        }
        store
    }

    /// Commits `orders` as one batch of account `a`'s order stream, seen at `seen_at`, moving
    /// the cursor to `cursor` when given; returns the orders written and left unchanged.
    async fn commit_orders(
        store: &SqliteStore,
        orders: &[crate::model::Order],
        cursor: Option<&str>,
        seen_at: chrono::DateTime<chrono::Utc>,
    ) -> (u64, u64) {
        let stream = StreamKey {
            provider: ProviderKind::Graas,
            account: "a".into(),
            resource: "orders".into(),
        };
        let batch = Batch {
            stream: &stream,
            orders,
            quarantined: &[],
            cursor,
            seen_at,
        };
        match store.commit_batch(&batch).await {
            Ok(outcome) => (outcome.written, outcome.unchanged),
            Err(error) => panic!("commit: {error}"),
        }
    }

    fn orders_stream() -> StreamKey {
        StreamKey {
            provider: ProviderKind::Graas,
            account: "a".into(),
            resource: "orders".into(),
        }
    }

    /// Orders `from..to` of account "a", each a status and an update time of its own.
    fn numbered_orders(range: std::ops::Range<u32>) -> Vec<crate::model::Order> {
        range
            .map(|n| test_order(&n.to_string(), 1_000 + i64::from(n), Some("NEW")))
            .collect()
    }

    /// Orders committed, as another connection sees them.
    async fn committed_orders(store: &SqliteStore) -> i64 {
        match sqlx::query_scalar("SELECT count(*) FROM orders")
            .fetch_one(&store.pool)
            .await
        {
            Ok(count) => count,
            Err(error) => panic!("count: {error}"),
        }
    }

    /// Writes `orders` as a batch after `earlier`, with `cursor`; told that more follow when
    /// `followed`. Returns how the batch reported to the one after it.
    async fn write_handing_on(
        store: &SqliteStore,
        orders: &[crate::model::Order],
        cursor: &str,
        earlier: EarlierCommit,
        followed: bool,
    ) -> EarlierCommit {
        let stream = orders_stream();
        let batch = Batch {
            stream: &stream,
            orders,
            quarantined: &[],
            cursor: Some(cursor),
            seen_at: chrono::Utc::now(),
        };
        let (done, next) = EarlierCommit::pair();
        let done = done.followed_while(Arc::new(move || followed));
        match store.commit_batch_handing_on(&batch, earlier, done).await {
            Ok(outcome) => assert_eq!(outcome.written, orders.len() as u64),
            Err(error) => panic!("write: {error}"),
        }
        next
    }

    /// A stream's committer runs on the store's own threads (through the call bounds the
    /// daemon wraps every store in), its batches land, and the threads end with the store.
    #[tokio::test]
    async fn batches_commit_from_the_stores_own_threads_until_the_store_is_dropped() {
        let (_dir, _path, config) = temporary_database();
        let sqlite: Arc<dyn Store> = Arc::new(migrated_store(&config).await);
        let store: Arc<dyn Store> = Arc::new(crate::store::Bounded::new(
            Arc::clone(&sqlite),
            Duration::from_secs(5),
        ));
        let Some(runtime) = store.commit_runtime().cloned() else {
            panic!("SQLite's committers run on a runtime of their own");
        };
        let committing = Arc::clone(&store);
        let (thread, written) = runtime
            .spawn(async move {
                let orders = numbered_orders(0..1_200);
                let stream = orders_stream();
                let batch = Batch {
                    stream: &stream,
                    orders: &orders,
                    quarantined: &[],
                    cursor: Some("1200"),
                    seen_at: chrono::Utc::now(),
                };
                let outcome = committing.commit_batch(&batch).await;
                let thread = std::thread::current().name().map(str::to_owned);
                (thread, outcome.map(|outcome| outcome.written))
            })
            .await
            .unwrap();
        assert_eq!(thread.as_deref(), Some("sqlite-commits"));
        assert_eq!(written.unwrap(), 1_200);
        assert_eq!(
            store.cursor(&orders_stream()).await.unwrap().as_deref(),
            Some("1200")
        );

        let waiting = runtime.spawn(std::future::pending::<()>());
        drop((store, sqlite));
        let ended = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(
            matches!(&ended, Ok(Err(error)) if error.is_cancelled()),
            "a task left on the threads was not dropped with the store: {ended:?}"
        );
    }

    /// A batch followed by more is written and handed on uncommitted: another connection sees
    /// neither its orders nor its cursor until the batch after it commits them together.
    #[tokio::test]
    async fn batches_handed_on_commit_together_with_the_last_ones_cursor() {
        let (_dir, _path, config) = temporary_database();
        let store = migrated_store(&config).await;
        let stream = orders_stream();
        let next = write_handing_on(
            &store,
            &numbered_orders(0..3),
            "1100",
            EarlierCommit::none(),
            true,
        )
        .await;
        assert_eq!(
            committed_orders(&store).await,
            0,
            "committed before its turn"
        );
        assert_eq!(store.cursor(&stream).await.ok().flatten(), None);

        let mut after = write_handing_on(&store, &numbered_orders(3..5), "1200", next, false).await;
        assert_eq!(committed_orders(&store).await, 5);
        assert_eq!(
            store.cursor(&stream).await.ok().flatten().as_deref(),
            Some("1200")
        );
        assert!(
            matches!(after.committed_or_handed_on().await, Ok(None)),
            "the last batch reports a commit"
        );
        store.close().await;
    }

    /// A write handed on to a batch that never comes (its run was cancelled) is rolled back,
    /// cursor and all, and the writer is free for the next batch straight away.
    #[tokio::test]
    async fn a_write_handed_on_and_dropped_is_rolled_back_and_frees_the_writer() {
        let (_dir, _path, config) = temporary_database();
        let store = migrated_store(&config).await;
        let stream = orders_stream();
        let next = write_handing_on(
            &store,
            &numbered_orders(0..3),
            "1100",
            EarlierCommit::none(),
            true,
        )
        .await;
        drop(next);
        let committed = tokio::time::timeout(
            Duration::from_secs(3),
            commit_orders(&store, &numbered_orders(3..4), None, chrono::Utc::now()),
        )
        .await;
        assert_eq!(committed.ok(), Some((1, 0)), "the writer stayed taken");
        assert_eq!(committed_orders(&store).await, 1);
        assert_eq!(store.cursor(&stream).await.ok().flatten(), None);
        store.close().await;
    }

    /// However much follows, a transaction commits once it has been open for its longest
    /// time, or holds its most orders: every other write to the database waits for it.
    #[tokio::test]
    async fn batches_handed_on_commit_after_the_longest_time_or_the_most_orders() {
        let (_dir, _path, config) = temporary_database();
        let mut store = migrated_store(&config).await;
        let by_time = super::OpenBatchesMost {
            orders: u64::MAX,
            time: Duration::from_millis(300),
        };
        store.open_batches_most = by_time;
        let next = write_handing_on(
            &store,
            &numbered_orders(0..2),
            "1100",
            EarlierCommit::none(),
            true,
        )
        .await;
        tokio::time::sleep(by_time.time).await;
        let mut next = write_handing_on(&store, &numbered_orders(2..4), "1200", next, true).await;
        assert_eq!(committed_orders(&store).await, 4, "open for too long");
        assert!(matches!(next.committed_or_handed_on().await, Ok(None)));

        // Whatever the machine's speed, only the orders count here.
        store.open_batches_most = super::OpenBatchesMost {
            orders: super::OPEN_BATCHES_MOST_ORDERS,
            time: Duration::from_secs(3600),
        };
        let most = super::OPEN_BATCHES_MOST_ORDERS as u32;
        let quarter = most / 4;
        let mut earlier = EarlierCommit::none();
        for part in 0..4 {
            let from = 10 + part * quarter;
            assert_eq!(
                committed_orders(&store).await,
                4,
                "committed after {part} quarters"
            );
            earlier = write_handing_on(
                &store,
                &numbered_orders(from..from + quarter),
                &from.to_string(),
                earlier,
                true,
            )
            .await;
        }
        assert_eq!(committed_orders(&store).await, 4 + i64::from(most));
        assert!(matches!(earlier.committed_or_handed_on().await, Ok(None)));
        store.close().await;
    }

    /// A batch whose orders span two accounts and more than one statement's rows stores each
    /// order once, under its own provider and account, with the batch's time seen; newer copies
    /// of two of them (written through the upsert) land on the same rows with the later time.
    #[tokio::test]
    async fn a_batch_across_accounts_and_statements_keeps_each_order_under_its_own_account() {
        let (_dir, _path, config) = temporary_database();
        let store = migrated_store(&config).await;
        let order = |account: &str, n: usize, updated: i64, status: &str| {
            let mut order = test_order(&format!("{n}"), updated, Some(status));
            order.key.account = account.into();
            order.payload = format!(r#"{{"n":{n},"status":"{status}"}}"#);
            order
        };
        // "a" fills more than one statement; "b" sorts after it and starts mid-statement.
        let of_a = super::ROWS_PER_STATEMENT + 7;
        let mut orders: Vec<_> = (0..of_a).map(|n| order("a", n, 100, "PAID")).collect();
        orders.extend((0..30).map(|n| order("b", n, 100, "NEW")));
        let first_seen_at = chrono::Utc::now();
        let written = commit_orders(&store, &orders, None, first_seen_at).await;
        assert_eq!(written, (of_a as u64 + 30, 0));
        let newer = [order("a", 3, 200, "SHIPPED"), order("b", 4, 200, "PAID")];
        let later = first_seen_at + chrono::Duration::seconds(1);
        assert_eq!(commit_orders(&store, &newer, None, later).await, (2, 0));

        let rows = sqlx::query_as::<_, (String, String, String, Option<String>, String, String)>(
            "SELECT o.account, s.account, o.external_id, o.status, o.first_seen_at, o.synced_at \
             FROM orders o JOIN order_scopes s ON s.id = o.scope_id ORDER BY o.id",
        )
        .fetch_all(&store.pool)
        .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(error) => panic!("rows: {error}"),
        };
        assert_eq!(rows.len(), of_a + 30);
        let (first, later) = (super::ts(first_seen_at), super::ts(later));
        for (account, scope_account, id, status, first_seen, synced) in &rows {
            assert_eq!(
                account, scope_account,
                "order {id} under another account's scope"
            );
            let (expected, synced_at) = match (account.as_str(), id.as_str()) {
                ("a", "3") => ("SHIPPED", &later),
                ("b", "4") => ("PAID", &later),
                ("a", _) => ("PAID", &first),
                _ => ("NEW", &first),
            };
            assert_eq!(status.as_deref(), Some(expected), "order {account}/{id}");
            assert_eq!(
                (first_seen, synced),
                (&first, synced_at),
                "order {account}/{id}"
            );
        }
        let per_account = |name: &str| rows.iter().filter(|r| r.0 == name).count();
        assert_eq!((per_account("a"), per_account("b")), (of_a, 30));
        store.close().await;
    }

    /// The lookup of one order that `docs/schema.md` gives for SQLite finds it, and finds it
    /// through the unique index rather than by reading the account's orders.
    #[tokio::test]
    async fn the_documented_lookup_of_one_order_uses_the_unique_index() {
        const LOOKUP: &str = "SELECT o.external_id, o.status \
            FROM orders o \
            JOIN order_scopes s ON s.id = o.scope_id \
            WHERE s.provider = ? AND s.account = ? AND s.channel = ? \
              AND o.external_id = ?";
        let (_dir, _path, config) = temporary_database();
        let store = migrated_store(&config).await;
        let orders: Vec<_> = (0..50)
            .map(|n| test_order(&format!("{}", 227_973_300 + n), 1_900_000_000, Some("PAID")))
            .collect();
        commit_orders(&store, &orders, None, chrono::Utc::now()).await;

        // The same statement twice: to run it, and to show how SQLite runs it.
        let lookup = |prefix: &str| {
            sqlx::query(sqlx::AssertSqlSafe(format!("{prefix}{LOOKUP}")))
                .bind("graas")
                .bind("a")
                .bind("lazada-1")
                .bind("227973342")
                .fetch_all(&store.pool)
        };
        let found: Vec<(String, Option<String>)> = match lookup("").await {
            Ok(rows) => rows
                .iter()
                .map(|row| (row.get("external_id"), row.get("status")))
                .collect(),
            Err(error) => panic!("lookup: {error}"),
        };
        assert_eq!(found, [("227973342".to_owned(), Some("PAID".to_owned()))]);
        let plan: Vec<String> = match lookup("EXPLAIN QUERY PLAN ").await {
            Ok(rows) => rows.iter().map(|row| row.get("detail")).collect(),
            Err(error) => panic!("plan: {error}"),
        };
        assert!(
            plan.iter().any(|step| step.contains("INDEX orders_key")),
            "the documented lookup does not use the unique index: {plan:?}"
        );
        store.close().await;
    }

    /// A database written before orders were keyed by scope (migration 7) keeps every order,
    /// its id and its history, and the orders it holds are still found by their key: a newer
    /// copy updates the row instead of adding one, and the same order id in another channel or
    /// account stays a different order.
    #[tokio::test]
    async fn an_upgraded_database_keeps_its_orders_and_finds_them_by_their_key() {
        let (_dir, path, config) = temporary_database();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let old = match sqlx::SqlitePool::connect(&url).await {
            Ok(pool) => pool,
            Err(error) => panic!("connect: {error}"),
        };
        if let Err(error) = sqlx::migrate!("migrations/sqlite").run_to(6, &old).await {
            panic!("migrate to 6: {error}");
        }
        let rows = [
            ("a", "lazada-1", "42", "PAID", "2026-01-01T00:00:01.000000Z"),
            ("a", "shopee-1", "42", "PAID", "2026-01-01T00:00:02.000000Z"),
            ("b", "lazada-1", "42", "PAID", "2026-01-01T00:00:03.000000Z"),
            ("a", "lazada-1", "43", "PAID", "2026-01-01T00:00:04.000000Z"),
        ];
        for (account, channel, id, status, updated) in rows {
            let inserted = sqlx::query(
                "INSERT INTO orders (provider, account, channel, external_id, status, \
                 upstream_updated_at, payload, first_seen_at, synced_at) \
                 VALUES ('graas', ?, ?, ?, ?, ?, '{}', ?, ?)",
            )
            .bind(account)
            .bind(channel)
            .bind(id)
            .bind(status)
            .bind(updated)
            .bind(updated)
            .bind(updated)
            .execute(&old)
            .await;
            if let Err(error) = inserted {
                panic!("insert into the old schema: {error}");
            }
        }
        let ids_before: Vec<(i64, String, String, String)> = match sqlx::query_as(
            "SELECT id, account, channel, external_id FROM orders ORDER BY id",
        )
        .fetch_all(&old)
        .await
        {
            Ok(rows) => rows,
            Err(error) => panic!("read the old schema: {error}"),
        };
        old.close().await;

        let store = migrated_store(&config).await;
        let ids_after: Vec<(i64, String, String, String)> = match sqlx::query_as(
            "SELECT id, account, channel, external_id FROM orders ORDER BY id",
        )
        .fetch_all(&store.pool)
        .await
        {
            Ok(rows) => rows,
            Err(error) => panic!("read the new schema: {error}"),
        };
        assert_eq!(
            ids_after, ids_before,
            "the upgrade changed the stored orders"
        );

        // Order 42 of account a, channel lazada-1, changes status; a new channel appears.
        let stream = StreamKey {
            provider: ProviderKind::Graas,
            account: "a".into(),
            resource: "orders".into(),
        };
        let mut changed = test_order("42", 1_900_000_000, Some("SHIPPED"));
        changed.payload = r#"{"status":"SHIPPED"}"#.into();
        let mut elsewhere = test_order("42", 1_900_000_000, Some("NEW"));
        elsewhere.key.channel = "qoo10-1".into();
        let orders = [changed.clone(), elsewhere.clone()];
        let batch = Batch {
            stream: &stream,
            orders: &orders,
            quarantined: &[],
            cursor: Some("1900000000"),
            seen_at: chrono::Utc::now(),
        };
        match store.commit_batch(&batch).await {
            Ok(outcome) => assert_eq!(outcome.written, 2),
            Err(error) => panic!("commit: {error}"),
        }
        let stored = match store.orders_of("graas", "a").await {
            Ok(orders) => orders,
            Err(error) => panic!("orders_of: {error}"),
        };
        let found: Vec<(&str, &str, Option<&str>)> = stored
            .iter()
            .map(|o| {
                (
                    o.channel.as_str(),
                    o.external_id.as_str(),
                    o.status.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                ("lazada-1", "42", Some("SHIPPED")),
                ("lazada-1", "43", Some("PAID")),
                ("qoo10-1", "42", Some("NEW")),
                ("shopee-1", "42", Some("PAID")),
            ]
        );
        let history = match store.order_history(&changed.key).await {
            Ok(history) => history,
            Err(error) => panic!("history: {error}"),
        };
        let statuses: Vec<(Option<&str>, Option<&str>)> = history
            .iter()
            .map(|c| (c.old_status.as_deref(), c.new_status.as_deref()))
            .collect();
        assert_eq!(
            statuses,
            [(None, Some("PAID")), (Some("PAID"), Some("SHIPPED"))]
        );

        // The database takes a row under its own scope number and refuses one under another
        // channel's.
        let insert_under = |scope_channel: &'static str| {
            sqlx::query(
                "INSERT INTO orders (provider, account, channel, external_id, \
                 upstream_updated_at, payload, first_seen_at, synced_at, scope_id) \
                 SELECT 'graas', 'a', 'lazada-1', '44', 't', '{}', 't', 't', id \
                 FROM order_scopes WHERE account = 'a' AND channel = ?",
            )
            .bind(scope_channel)
            .execute(&store.pool)
        };
        if let Err(error) = insert_under("lazada-1").await {
            panic!("a row under its own scope number: {error}");
        }
        match insert_under("shopee-1").await {
            Ok(_) => panic!("a row with another channel's scope number was stored"),
            Err(error) => assert!(error.to_string().contains("FOREIGN KEY"), "{error}"),
        }
        store.close().await;
    }

    /// New orders are inserted by a statement that cannot fail halfway, the rest by the
    /// upsert, in the same batch: a newer copy replaces the stored one, an older or identical
    /// one leaves it, each new order gets its first history row. The foreign keys that make
    /// this possible are checked when the transaction commits, and still refuse a bad row.
    #[tokio::test]
    async fn a_batch_of_new_and_stored_orders_writes_each_once_and_keys_hold_at_commit() {
        let (_dir, _path, config) = temporary_database();
        let store = migrated_store(&config).await;
        let commit = async |orders: &[crate::model::Order]| {
            commit_orders(&store, orders, None, chrono::Utc::now()).await
        };
        let stored: Vec<_> = ["1", "2", "3"]
            .iter()
            .map(|id| test_order(id, 100, Some("PAID")))
            .collect();
        assert_eq!(commit(&stored).await, (3, 0));

        let mut newer = test_order("1", 200, Some("SHIPPED"));
        newer.payload = r#"{"v":2}"#.into();
        let mut older = test_order("2", 50, Some("NEW"));
        older.payload = r#"{"v":0}"#.into();
        let same = test_order("3", 100, Some("PAID"));
        let new = test_order("4", 150, Some("PAID"));
        assert_eq!(commit(&[newer, older, same, new]).await, (2, 2));

        let found: Vec<(String, Option<String>)> = match store.orders_of("graas", "a").await {
            Ok(orders) => orders
                .into_iter()
                .map(|o| (o.external_id, o.status))
                .collect(),
            Err(error) => panic!("orders_of: {error}"),
        };
        let status = |id: &str, status: &str| (id.to_owned(), Some(status.to_owned()));
        assert_eq!(
            found,
            [
                status("1", "SHIPPED"),
                status("2", "PAID"),
                status("3", "PAID"),
                status("4", "PAID"),
            ]
        );
        let history_rows =
            async |id: &str| match store.order_history(&test_order(id, 0, None).key).await {
                Ok(history) => history.len(),
                Err(error) => panic!("history: {error}"),
            };
        assert_eq!(history_rows("1").await, 2);
        assert_eq!(history_rows("2").await, 1);
        assert_eq!(history_rows("4").await, 1);

        // Both keys are declared to be checked at commit.
        let deferred: Vec<String> = match sqlx::query_scalar(
            "SELECT name FROM sqlite_schema WHERE name IN ('orders', 'order_events') \
             AND sql LIKE '%DEFERRABLE INITIALLY DEFERRED%' ORDER BY name",
        )
        .fetch_all(&store.pool)
        .await
        {
            Ok(names) => names,
            Err(error) => panic!("schema: {error}"),
        };
        assert_eq!(deferred, ["order_events", "orders"]);

        // A row under another scope's number goes into the transaction, and fails its commit.
        let mut tx = match store.writer.begin().await {
            Ok(tx) => tx,
            Err(error) => panic!("begin: {error}"),
        };
        let inserted = sqlx::query(
            "INSERT INTO order_scopes (provider, account, channel) VALUES ('graas', 'a', 'x-1')",
        )
        .execute(&mut *tx)
        .await
        .and(
            sqlx::query(
                "INSERT INTO orders (provider, account, channel, external_id, \
                 upstream_updated_at, payload, first_seen_at, synced_at, scope_id) \
                 SELECT 'graas', 'a', 'lazada-1', '5', 't', '{}', 't', 't', id \
                 FROM order_scopes WHERE channel = 'x-1'",
            )
            .execute(&mut *tx)
            .await,
        );
        if let Err(error) = inserted {
            panic!("a deferred key refused the row before the commit: {error}");
        }
        match tx.commit().await {
            Ok(()) => panic!("a row with another channel's scope number was committed"),
            Err(error) => assert!(error.to_string().contains("FOREIGN KEY"), "{error}"),
        }
        assert_eq!(history_rows("5").await, 0);
        store.close().await;
    }

    /// Commits orders `ids` to account `a`'s order stream, each with a payload of about `pad`
    /// bytes.
    async fn commit_padded(store: &SqliteStore, ids: std::ops::Range<usize>, pad: usize) {
        let orders: Vec<_> = ids
            .map(|n| {
                let mut order = test_order(&n.to_string(), 1_000, Some("PAID"));
                order.payload = format!("{{\"pad\":\"{}\"}}", "x".repeat(pad));
                order
            })
            .collect();
        commit_orders(store, &orders, Some("1000"), chrono::Utc::now()).await;
    }

    /// The database file's size in bytes: it grows only when a checkpoint copies the log in.
    fn file_size(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    /// Waits long enough for a woken checkpoint to have run, then checks the file did not grow.
    async fn file_stays(path: &std::path::Path, size: u64, why: &str) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(file_size(path), size, "{why}");
    }

    /// Waits up to 10 s for the database file to reach `least` bytes.
    async fn file_reaches(path: &std::path::Path, least: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while file_size(path) < least {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the database file stayed at {} bytes, below {least}",
                file_size(path)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits up to 10 s for the file at `path` to fall to `most` bytes.
    async fn file_falls_to(path: &std::path::Path, most: u64, why: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while file_size(path) > most {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{why}: {} bytes left, over {most}",
                file_size(path)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The WAL file beside the database at `path`.
    fn wal_file(path: &std::path::Path) -> std::path::PathBuf {
        std::path::PathBuf::from(format!("{}-wal", path.display()))
    }

    /// Commits orders `ids` with payloads of 4,000 bytes, 300 to a batch.
    async fn commit_in_batches(store: &SqliteStore, ids: std::ops::Range<usize>) {
        for start in ids.clone().step_by(300) {
            commit_padded(store, start..(start + 300).min(ids.end), 4000).await;
        }
    }

    #[tokio::test]
    async fn a_caller_done_writing_gets_the_log_copied_into_the_database_file() {
        let (_dir, path, config) = temporary_database();
        let store = migrated_store(&config).await;
        let before = file_size(&path);

        // 1.2 MB is far below the background checkpoint's threshold: it stays in the log only
        // until the caller says its writes are ending.
        commit_padded(&store, 0..300, 4000).await;
        file_stays(&path, before, "a checkpoint ran before one was due").await;
        store.writes_ending();
        file_reaches(&path, before + 300 * 4000).await;

        // A few KB are not worth a checkpoint's syncs: they wait for the next.
        let copied = file_size(&path);
        commit_padded(&store, 300..305, 100).await;
        store.writes_ending();
        file_stays(&path, copied, "a few KB were checkpointed early").await;
        store.close().await;
    }

    /// A backfill's log file is cut back once its reads have ended and the log is copied in,
    /// instead of keeping its largest size on disk for as long as the process runs; a log
    /// below the limit keeps its file.
    #[tokio::test]
    async fn an_oversized_log_file_is_cut_back_once_the_reads_end() {
        let (_dir, path, mut config) = temporary_database();
        // A caller done writing may still commit this many orders, each megabyte of them
        // copied straight away; the log grows past them.
        config.buffered_orders = 300;
        let store = migrated_store(&config).await;
        let wal = wal_file(&path);
        let before = file_size(&path);

        // 1.2 MB of orders, a log file below the limit: copied in, and the file stays.
        commit_padded(&store, 0..300, 4000).await;
        let small = file_size(&wal);
        store.writes_ending();
        file_reaches(&path, before + 300 * 4000).await;
        file_stays(&wal, small, "a log file below the limit was cut").await;

        // 8.4 MB more, 7.2 MB of it below the background checkpoint's threshold: in the log.
        commit_in_batches(&store, 300..2_400).await;
        let grown = file_size(&wal);
        assert!(
            grown > 2 * WAL_FILE_MOST_BYTES,
            "the log reached only {grown} bytes"
        );
        store.writes_ending();
        file_falls_to(
            &wal,
            WAL_FILE_MOST_BYTES,
            "the oversized log file was not cut back",
        )
        .await;
        assert!(file_size(&path) >= before + 2_400 * 4000);

        // The log goes on from its start.
        commit_padded(&store, 2_400..2_401, 100).await;
        assert!(file_size(&wal) <= WAL_FILE_MOST_BYTES);
        store.close().await;
    }

    /// A writer at work when the log could be cut makes the cut give up at once, holding no
    /// checkpoint off, and the next caller done writing tries again however little it wrote.
    #[tokio::test]
    async fn a_cut_held_off_by_a_writer_is_tried_again_when_the_next_reads_end() {
        let (_dir, path, config) = temporary_database();
        let store = migrated_store(&config).await;
        let wal = wal_file(&path);
        let before = file_size(&path);
        commit_in_batches(&store, 0..1_800).await;
        let grown = file_size(&wal);
        assert!(grown > 2 * WAL_FILE_MOST_BYTES);

        let writer = store.pool.acquire().await;
        let Ok(mut writer) = writer else {
            panic!("acquire: {writer:?}")
        };
        if let Err(error) = sqlx::query("BEGIN IMMEDIATE").execute(&mut *writer).await {
            panic!("begin: {error}");
        }
        store.writes_ending();
        file_reaches(&path, before + 1_800 * 4000).await;
        file_stays(&wal, grown, "the log file was cut under a writer").await;
        // The cut is not left waiting for the writer: another checkpoint can run.
        let checkpoint: Result<(i64, i64, i64), _> =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&store.pool)
                .await;
        assert!(
            matches!(checkpoint, Ok((0, _, _))),
            "a checkpoint was held off: {checkpoint:?}"
        );
        if let Err(error) = sqlx::query("ROLLBACK").execute(&mut *writer).await {
            panic!("rollback: {error}");
        }
        drop(writer);

        // Nothing more written: the next caller done writing has the file cut all the same.
        store.writes_ending();
        file_falls_to(
            &wal,
            WAL_FILE_MOST_BYTES,
            "the log file was not cut back once the writer was done",
        )
        .await;
        store.close().await;
    }

    /// Mid-backfill a checkpoint may copy every frame as well (the writer between two commits);
    /// the file is left alone then: cut and grown again there, it made long backfills slower.
    #[tokio::test]
    async fn a_log_file_is_not_cut_back_while_a_caller_still_reads() {
        let (_dir, path, config) = temporary_database();
        let store = migrated_store(&config).await;
        let wal = wal_file(&path);
        let before = file_size(&path);

        // 18 MB: past the background checkpoint's threshold, and nothing committed after it.
        commit_in_batches(&store, 0..4_500).await;
        let grown = file_size(&wal);
        file_reaches(&path, before + 4_000 * 4000).await;
        file_stays(&wal, grown, "the log file was cut back mid-backfill").await;
        assert!(grown > WAL_FILE_MOST_BYTES);
        store.close().await;
    }

    /// Once a caller's reads have ended, what it still commits (at most the order buffer) is
    /// copied in as it goes, a megabyte at a time, so a close finds little left; after that,
    /// the usual 16 MB interval again.
    #[tokio::test]
    async fn what_a_caller_commits_after_its_reads_end_is_copied_in_as_it_goes() {
        let (_dir, path, mut config) = temporary_database();
        config.buffered_orders = 400;
        let store = migrated_store(&config).await;
        let before = file_size(&path);
        store.writes_ending();

        // 1.2 MB each: the first two batches hold the buffer's 400 orders (the second one
        // reaches past it), so each is copied in without another word from the caller.
        commit_padded(&store, 0..300, 4000).await;
        file_reaches(&path, before + 300 * 4000).await;
        commit_padded(&store, 300..600, 4000).await;
        file_reaches(&path, before + 600 * 4000).await;

        // Beyond the buffer the drain is over: 1.2 MB waits for 16.
        let copied = file_size(&path);
        commit_padded(&store, 600..900, 4000).await;
        file_stays(&path, copied, "copied in after the drain was over").await;
        store.close().await;
    }

    #[test]
    fn stored_times_have_one_fixed_width_form() {
        let cases = [
            ("2026-03-29T01:02:03Z", "2026-03-29T01:02:03.000000Z"),
            (
                "2026-12-31T23:59:59.123456789Z",
                "2026-12-31T23:59:59.123456Z",
            ),
            ("0999-01-01T00:00:00.5Z", "0999-01-01T00:00:00.500000Z"),
        ];
        for (input, stored) in cases {
            let time = chrono::DateTime::parse_from_rfc3339(input)
                .map(|t| t.with_timezone(&chrono::Utc))
                .map_err(|e| format!("{input}: {e}"));
            let Ok(time) = time else { panic!("{time:?}") };
            assert_eq!(super::ts(time), stored);
            assert_eq!(
                super::ts(time),
                time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
            );
        }
    }
}
