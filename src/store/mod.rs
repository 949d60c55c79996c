//! Persistence: one [`Store`] trait, a SQLite and a Postgres implementation. Never does HTTP.
//!
//! Every write of upstream data goes through [`Store::commit_batch`]: the orders, the records that
//! failed to parse and the stream's new cursor are committed in one transaction, so a crash can
//! never leave a cursor ahead of the data it covers.

/// The columns of `actions` in the order `action_from_row` reads them.
macro_rules! action_columns {
    () => {
        "id, idempotency_key, provider, account, kind, channel, external_id, request, state, \
         attempts, max_attempts, next_attempt_at, claimed_by, claimed_until, last_error, result, \
         created_at, updated_at, finished_at, sending_since"
    };
}

/// The columns of `shop_states` in the order `rows::shop_state` reads them.
macro_rules! shop_state_columns {
    () => {
        "provider, account, hours_open, delivery_open, pickup_open, connection_ok, \
         delivery_wait_minutes, pickup_wait_minutes, unavailable_products, last_menu_refresh, \
         last_open_times_refresh, last_delivery_cost_refresh, body, observed_at, changed_at"
    };
}

/// The columns of `shop_state_history` in the order `rows::shop_state_change` reads them.
macro_rules! shop_history_columns {
    () => {
        "hours_open, delivery_open, pickup_open, connection_ok, delivery_wait_minutes, \
         pickup_wait_minutes, unavailable_products, observed_at"
    };
}

mod bounded;
mod commit_runtime;
mod handover;
mod leases;
mod postgres;
mod rows;
mod run_lock;
mod shops;
mod sqlite;

pub use bounded::Bounded;
pub use leases::{HeldLease, LeaseRow, LeaseTable, ReplicaRow, Taken};
pub use postgres::PostgresStore;
pub use shops::{
    FollowedOrder, RefreshValues, Resolution, ShopDocument, ShopDocumentKind, ShopState,
    ShopStateChange,
};
pub use sqlite::SqliteStore;

use crate::config::{Backend, DatabaseConfig};
use crate::model::{
    Action, ActionOutcome, ActionState, NewAction, Order, OrderKey, ProviderKind, Quarantined,
    StreamKey,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use foldhash::{HashMap, HashMapExt};
use sha2::{Digest, Sha256};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The sqlx errors are shown in the message and not chained as sources: their own source
    // repeats their text, which made every database error print three times.
    #[error("cannot open the database: {0}")]
    Connect(sqlx::Error),
    #[error(
        "cannot open the SQLite database {path}: {error}; check that the file and its directory exist, are writable by this user and not on a read-only or full disk (SQLite also writes the -wal and -shm files beside it)"
    )]
    OpenSqlite { path: String, error: sqlx::Error },
    #[error(
        "cannot start the threads that commit to SQLite: {0}; the process may be at its limit of threads (ulimit -u, or the container's pids limit)"
    )]
    Thread(std::io::Error),
    #[error("database migration failed: {0}")]
    Migrate(sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Query(sqlx::Error),
    #[error(
        "the database holds a value ordersync cannot read ({0}); was the table edited by hand?"
    )]
    Corrupt(String),
    #[error(
        "the database's schema is at migration {applied}, this build needs {needed}; run `ordersync migrate`"
    )]
    NotMigrated { applied: i64, needed: i64 },
    #[error(
        "the database did not answer within {after:?} while {operation}; check that it is up and not locked, or raise database.statement_timeout"
    )]
    Timeout {
        operation: &'static str,
        after: std::time::Duration,
    },
    #[error(
        "an earlier batch of this stream did not commit, so this one was rolled back; the next run reads both again"
    )]
    EarlierBatchFailed,
    #[error(
        "another `ordersync run` ({holder}) is using the SQLite database {database}: one daemon per SQLite file. Stop it first, or use Postgres to run several replicas"
    )]
    AlreadyRunning { database: String, holder: String },
    #[error(
        "cannot take the lock file {path}: {error}; check that the database's directory exists, is writable by this user and not on a read-only or full disk"
    )]
    RunLock { path: String, error: std::io::Error },
    #[error(
        "this replica no longer holds the lease of {provider}/{account}, so the write was refused: another replica took the account over and does its work now"
    )]
    LeaseLost { provider: String, account: String },
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Query(error)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(error)
    }
}

/// What one upstream read produced, to be committed atomically.
#[derive(Debug)]
pub struct Batch<'a> {
    pub stream: &'a StreamKey,
    pub orders: &'a [Order],
    pub quarantined: &'a [Quarantined],
    /// The stream's new cursor, or `None` to leave it where it is.
    pub cursor: Option<&'a str>,
    pub seen_at: DateTime<Utc>,
}

/// Tells a batch whether the batch before it committed (see [`Store::commit_batch_after`]),
/// and tells the caller when the batch has written its rows and only waits for its turn.
#[derive(Debug)]
pub struct EarlierCommit {
    earlier: tokio::sync::oneshot::Receiver<Earlier>,
    written: Option<tokio::sync::oneshot::Sender<()>>,
}

/// What the batch before reported.
enum Earlier {
    Committed,
    /// Written but not committed: the transaction, for the next batch to go on with.
    HandedOn(OpenWrite),
}

impl std::fmt::Debug for Earlier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Earlier::Committed => "Committed",
            Earlier::HandedOn(_) => "HandedOn",
        })
    }
}

/// A store's transaction left open by one batch of a stream for the next (see
/// [`Store::commit_batch_handing_on`]). Only the store that opened it knows what it holds.
/// Dropped, it is rolled back: the batches in it and their cursor with them, so the stream's
/// next run reads them again.
pub struct OpenWrite(Box<dyn std::any::Any + Send>);

impl OpenWrite {
    pub fn new<T: Send + 'static>(write: T) -> Self {
        OpenWrite(Box::new(write))
    }

    /// The store's own transaction, or `None` if another kind of store opened it.
    pub fn into_inner<T: 'static>(self) -> Option<T> {
        self.0.downcast().ok().map(|write| *write)
    }
}

/// Held by a batch while it commits; dropped without [`CommitDone::committed`] (or
/// [`CommitDone::hand_on`]) it reports a failure to the batch after it.
pub struct CommitDone {
    report: tokio::sync::oneshot::Sender<Earlier>,
    followed: Option<MoreWaiting>,
}

/// True while more of a stream's orders wait for the batch after this one.
pub type MoreWaiting = std::sync::Arc<dyn Fn() -> bool + Send + Sync>;

impl std::fmt::Debug for CommitDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommitDone")
            .field("followed", &self.is_followed())
            .finish_non_exhaustive()
    }
}

impl EarlierCommit {
    /// A pair: the first for the earlier batch to report with, the second for the later one.
    pub fn pair() -> (CommitDone, EarlierCommit) {
        let (report, receiver) = tokio::sync::oneshot::channel();
        (
            CommitDone {
                report,
                followed: None,
            },
            EarlierCommit {
                earlier: receiver,
                written: None,
            },
        )
    }

    /// One that has already committed: for the first batch of a run.
    pub fn none() -> EarlierCommit {
        let (done, earlier) = EarlierCommit::pair();
        done.committed();
        earlier
    }

    /// `written` hears when the batch holding this has written its rows and waits only for
    /// the earlier batch to commit, or has ended (the sender is dropped with it).
    pub fn tell_when_written(mut self, written: tokio::sync::oneshot::Sender<()>) -> Self {
        self.written = Some(written);
        self
    }

    /// Called by a store that writes a batch before the earlier one has committed, once the
    /// rows are written: from here the batch holds a connection but no core.
    pub fn written(&mut self) {
        if let Some(written) = self.written.take() {
            let _ = written.send(());
        }
    }

    /// Waits for the earlier batch; it is bounded by that batch's own statement timeouts. By
    /// reference: kept until the batch ends, so a store that writes only after this (and never
    /// calls [`EarlierCommit::written`]) counts as writing until then. A transaction handed on
    /// is not expected here: it is rolled back, and this batch fails as after a failed one.
    pub async fn committed(&mut self) -> Result<(), StoreError> {
        match self.committed_or_handed_on().await? {
            None => Ok(()),
            Some(_rolled_back) => Err(StoreError::EarlierBatchFailed),
        }
    }

    /// For the end of a run: if the last batch handed its transaction on, one that gives it
    /// to a batch that commits it.
    pub fn left_open(mut self) -> Option<EarlierCommit> {
        match self.earlier.try_recv() {
            Ok(Earlier::HandedOn(write)) => {
                let (done, next) = EarlierCommit::pair();
                done.hand_on(write);
                Some(next)
            }
            _ => None,
        }
    }

    /// Waits for the earlier batch, as [`EarlierCommit::committed`]; `Some` is the earlier
    /// batch's transaction, written and left open for this batch to go on with.
    pub async fn committed_or_handed_on(&mut self) -> Result<Option<OpenWrite>, StoreError> {
        match (&mut self.earlier).await {
            Ok(Earlier::Committed) => Ok(None),
            Ok(Earlier::HandedOn(write)) => Ok(Some(write)),
            Err(_) => Err(StoreError::EarlierBatchFailed),
        }
    }
}

impl CommitDone {
    /// Tells the store how to know that the caller has more of this stream's orders waiting,
    /// which it sends as the next batch as soon as this one returns: while it does, the store
    /// may leave this batch's transaction open for that batch
    /// ([`Store::commit_batch_handing_on`]). `more_waiting` must not say so of orders that
    /// may never come.
    pub fn followed_while(mut self, more_waiting: MoreWaiting) -> Self {
        self.followed = Some(more_waiting);
        self
    }

    /// Whether a batch is waiting to follow this one, asked when this one is written.
    pub fn is_followed(&self) -> bool {
        self.followed
            .as_ref()
            .is_some_and(|more_waiting| more_waiting())
    }

    pub fn committed(self) {
        // The later batch may have been dropped already; nothing waits then.
        let _ = self.report.send(Earlier::Committed);
    }

    /// Gives the next batch this batch's transaction, written and not committed. Should the
    /// next batch be gone, the transaction is dropped with the message: rolled back.
    pub fn hand_on(self, write: OpenWrite) {
        let _ = self.report.send(Earlier::HandedOn(write));
    }
}

/// What [`Store::commit_batch`] did with the orders it was given.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchOutcome {
    /// Orders inserted, or updated because the upstream copy was newer or differed.
    pub written: u64,
    /// Orders left alone: identical to what is stored, or older than it.
    pub unchanged: u64,
    pub quarantined: u64,
}

/// How one stream is doing: its cursor and its latest run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamStatus {
    pub stream: StreamKey,
    pub cursor: Option<String>,
    pub cursor_updated_at: Option<DateTime<Utc>>,
    pub last_run_started_at: Option<DateTime<Utc>>,
    pub last_run_finished_at: Option<DateTime<Utc>>,
    pub last_success_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
    pub consecutive_failures: i64,
}

/// The columns of a stored order that tests and status reports compare.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoredOrder {
    pub channel: String,
    pub external_id: String,
    pub status: Option<String>,
    pub payment_status: Option<String>,
    pub shipping_status: Option<String>,
    pub upstream_updated_at: DateTime<Utc>,
}

/// One row of `order_events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub old_status: Option<String>,
    pub new_status: Option<String>,
    pub upstream_updated_at: DateTime<Utc>,
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Applies the migrations in `migrations/<backend>`; on Postgres, first creates
    /// `database.schema` when it does not exist.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// The database answers and every migration this build knows is applied; the reason when
    /// not (for `/readyz`).
    async fn readiness(&self) -> Result<(), StoreError>;

    async fn cursor(&self, stream: &StreamKey) -> Result<Option<String>, StoreError>;

    /// Upserts orders (an older upstream version never replaces a newer one), records quarantined
    /// bodies and moves the cursor, all in one transaction.
    async fn commit_batch(&self, batch: &Batch<'_>) -> Result<BatchOutcome, StoreError>;

    /// How many [`Store::commit_batch_after`] of one stream may usefully run at once: a
    /// server database works on several transactions together, SQLite has one writer.
    fn concurrent_commits(&self) -> usize {
        1
    }

    /// Where the task that commits a stream's batches runs ([`crate::sync::window`]): `None`
    /// on the runtime's threads. SQLite gives it threads of their own, so its one writer gets
    /// each next statement as soon as the one before is done.
    fn commit_runtime(&self) -> Option<&tokio::runtime::Handle> {
        None
    }

    /// How many of `buffered` orders a process's order buffer holds at first; it grows to all
    /// of them as orders pass through it ([`crate::sync::buffer::OrderBuffer`]). SQLite wants
    /// its large batches from the first commit, since each commit rewrites the index pages it
    /// touches.
    fn buffer_starts_at(&self, buffered: usize) -> usize {
        buffered
    }

    /// The caller has sent every batch it has for now: only those in flight are still to
    /// commit. A store may start housekeeping it would otherwise leave to later; SQLite starts a
    /// checkpoint on its spare connection and copies in each megabyte those batches add as they
    /// commit, so a close that follows finds little of the log left to copy.
    fn writes_ending(&self) {}

    /// [`Store::commit_batch`] for the batch that follows the one `earlier` reports on: the
    /// writing may overlap the earlier batch's, but this batch (and its cursor) commits only
    /// after the earlier one did, and not at all if it failed. The caller keeps batches that
    /// share an order from running together (they would wait on each other's row locks).
    async fn commit_batch_after(
        &self,
        batch: &Batch<'_>,
        mut earlier: EarlierCommit,
    ) -> Result<BatchOutcome, StoreError> {
        earlier.committed().await?;
        self.commit_batch(batch).await
    }

    /// [`Store::commit_batch_after`], reporting to the batch after this one through `done`.
    /// When `done` [is followed](CommitDone::is_followed), a store may write this batch and
    /// hand its transaction on instead of committing: the next batch commits both, cursor and
    /// all, or neither. A store that commits each batch on its own (the default) gains nothing
    /// from it; SQLite does, as each commit rewrites the index pages its orders touch.
    /// Returns once the batch is written; committed only if `done` was not handed on.
    async fn commit_batch_handing_on(
        &self,
        batch: &Batch<'_>,
        earlier: EarlierCommit,
        done: CommitDone,
    ) -> Result<BatchOutcome, StoreError> {
        let outcome = self.commit_batch_after(batch, earlier).await?;
        done.committed();
        Ok(outcome)
    }

    async fn run_started(&self, stream: &StreamKey, at: DateTime<Utc>) -> Result<(), StoreError>;

    /// Records a run's end, and its start (so a quick run costs one write); `error` is `None`
    /// for a run that finished its work.
    async fn run_finished(
        &self,
        stream: &StreamKey,
        started: DateTime<Utc>,
        at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), StoreError>;

    async fn streams(&self) -> Result<Vec<StreamStatus>, StoreError>;

    async fn orders_of(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<Vec<StoredOrder>, StoreError>;

    async fn order_history(&self, key: &OrderKey) -> Result<Vec<StatusChange>, StoreError>;

    async fn quarantine_count(&self, provider: &str, account: &str) -> Result<i64, StoreError>;

    /// The stored payload of any one order of a channel (for what all its orders share).
    async fn channel_payload(
        &self,
        provider: &str,
        account: &str,
        channel: &str,
    ) -> Result<Option<String>, StoreError>;

    /// Stores an action unless one with the same idempotency key exists; returns the stored
    /// action and whether it is new. Committed before it returns.
    async fn enqueue(&self, action: &NewAction) -> Result<(Action, bool), StoreError>;

    /// Claims up to `limit` due actions of one account for `worker` until `visible_until`:
    /// pending ones whose time has come, and in-flight ones whose claim has expired (their
    /// process died). Each claim counts as an attempt.
    async fn claim(&self, claim: &Claim<'_>) -> Result<Vec<Action>, StoreError>;

    /// Records the outcomes of one batch in one statement, for the actions `worker` still
    /// holds. Returns the ids recorded; an action missing from it had its claim expire and was
    /// claimed again (its late result is dropped).
    async fn finish_batch(
        &self,
        worker: &str,
        outcomes: &[(i64, ActionOutcome)],
    ) -> Result<Vec<i64>, StoreError>;

    /// The (provider, account) pairs that have an action due at `now` (pending and due, or in
    /// flight with an expired claim): one query for every account's queue.
    async fn due_accounts(&self, now: DateTime<Utc>) -> Result<Vec<(String, String)>, StoreError>;

    /// Renews `worker`'s claim on these actions until `until`; returns how many it still held.
    async fn extend_claims(
        &self,
        ids: &[i64],
        worker: &str,
        until: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    async fn action(&self, id: i64) -> Result<Option<Action>, StoreError>;

    /// Remembers an ASN ordersync created, to follow it (a second record of the same ASN is a
    /// no-op).
    async fn record_asn(&self, asn: &NewAsn) -> Result<(), StoreError>;

    /// ASNs of an account whose status is not final yet.
    async fn open_asns(&self, provider: &str, account: &str) -> Result<Vec<AsnRow>, StoreError>;

    /// Records an account's rate gate (its 429 pause and count) for `status`.
    async fn record_gate(&self, gate: &GateState) -> Result<(), StoreError>;

    async fn gates(&self) -> Result<Vec<GateState>, StoreError>;

    /// How many actions each (provider, account) has in each state.
    async fn action_counts(&self) -> Result<Vec<ActionCount>, StoreError>;

    /// Stores what the upstream says about an ASN now.
    async fn update_asn(&self, update: &AsnUpdate) -> Result<(), StoreError>;

    /// Actions matching the filter, newest first.
    async fn actions(&self, filter: &ActionFilter) -> Result<Vec<Action>, StoreError>;

    /// Puts `dead` or `failed` actions back to `pending` with fresh attempts; returns how many.
    async fn retry_actions(&self, filter: &RetryFilter) -> Result<u64, StoreError>;

    /// Commands of one account that were sent and wait for their outcome, oldest first.
    async fn sent_actions(
        &self,
        provider: &str,
        account: &str,
        limit: i64,
    ) -> Result<Vec<Action>, StoreError>;

    /// Settles `sent` actions: succeeded, failed, or (`RetryAt`) back to `pending` to be sent
    /// again. Returns the ids settled; an action no longer `sent` is left as it is.
    async fn settle_sent(&self, outcomes: &[(i64, ActionOutcome)]) -> Result<Vec<i64>, StoreError>;

    /// Stores deliveries (and, for a feed page, the feed's cursor) in one transaction. Returns
    /// for each whether it is new; one whose event id is stored already is not stored again.
    async fn record_deliveries(
        &self,
        deliveries: &[NewDelivery],
        cursor: Option<(&StreamKey, &str)>,
    ) -> Result<Vec<bool>, StoreError>;

    /// Pending deliveries of one account, oldest first.
    async fn pending_deliveries(
        &self,
        provider: &str,
        account: &str,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError>;

    /// Records how deliveries were processed.
    async fn finish_deliveries(&self, done: &[DeliveryDone]) -> Result<(), StoreError>;

    /// Records every pending delivery of an account of one event type about one object,
    /// received before a time, as processed (one poll taken after them answers them all).
    /// Returns how many.
    async fn finish_object_deliveries(
        &self,
        provider: &str,
        account: &str,
        event_type: &str,
        done: &[ObjectDone],
    ) -> Result<u64, StoreError>;

    /// Per account: the last delivery and how many wait or failed.
    async fn delivery_stats(&self) -> Result<Vec<DeliveryStat>, StoreError>;

    /// Stored deliveries matching `filter`, newest first, without their bodies.
    async fn inbox(&self, filter: &InboxFilter) -> Result<Vec<InboxEntry>, StoreError>;

    /// Puts the processed, ignored or failed deliveries matching `filter` back to `pending`,
    /// so their account's inbox worker maps them again; returns how many.
    async fn requeue_deliveries(&self, filter: &InboxFilter) -> Result<u64, StoreError>;

    /// The webhooks ordersync registered for an account.
    async fn registrations(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<Vec<Registration>, StoreError>;

    /// True when `guid` names a webhook ordersync registered for the account.
    async fn is_registered(
        &self,
        provider: &str,
        account: &str,
        guid: &str,
    ) -> Result<bool, StoreError>;

    /// Records a webhook ordersync registered (or adopted), replacing one with its id.
    async fn save_registration(&self, registration: &Registration) -> Result<(), StoreError>;

    /// Forgets a registration that was deleted upstream.
    async fn drop_registration(
        &self,
        provider: &str,
        account: &str,
        registration_id: &str,
    ) -> Result<(), StoreError>;

    /// The ids of an account's stored orders whose status is not one of `terminal`.
    async fn open_orders(
        &self,
        provider: &str,
        account: &str,
        terminal: &[String],
    ) -> Result<Vec<String>, StoreError>;

    /// Marks an action `worker` holds as being sent by a request that must not be repeated
    /// blindly; false when the claim is no longer held (then nothing may be sent).
    async fn mark_sending(
        &self,
        id: i64,
        worker: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// The answer to a marked request came: the mark is cleared and, for a created object, its
    /// answer kept on the action at once (a crash before the batch is recorded then loses
    /// nothing: the next claim finds the answer instead of the mark).
    async fn clear_sending(
        &self,
        id: i64,
        worker: &str,
        result: Option<&serde_json::Value>,
    ) -> Result<(), StoreError>;

    /// Settles an action in state `unknown`; `None` when there is no such action in that state.
    async fn resolve_unknown(
        &self,
        id: i64,
        resolution: &Resolution,
    ) -> Result<Option<Action>, StoreError>;

    /// Orders of an account created since `since` whose status is not one of `terminal`.
    async fn followed_orders(
        &self,
        provider: &str,
        account: &str,
        terminal: &[String],
        since: DateTime<Utc>,
    ) -> Result<Vec<FollowedOrder>, StoreError>;

    /// Stores a shop's polled state. `changed` (the caller, the shop's one poller, knows what it
    /// stored last) also writes a history row and moves `changed_at`; an unchanged state is one
    /// UPDATE of when it was seen.
    async fn record_shop_state(&self, state: &ShopState, changed: bool) -> Result<(), StoreError>;

    async fn shop_state(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<Option<ShopState>, StoreError>;

    /// Every shop's state, for `status`.
    async fn shop_states(&self) -> Result<Vec<ShopState>, StoreError>;

    /// A shop's state changes observed since `since`, oldest first.
    async fn shop_history(
        &self,
        provider: &str,
        account: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<ShopStateChange>, StoreError>;

    async fn record_shop_document(&self, document: &ShopDocument) -> Result<(), StoreError>;

    /// Every stored snapshot of one document of a shop, oldest first (`latest`: only the last).
    async fn shop_documents(
        &self,
        provider: &str,
        account: &str,
        document: ShopDocumentKind,
        latest: bool,
    ) -> Result<Vec<ShopDocument>, StoreError>;

    async fn close(&self);

    /// The leases table, where replicas share accounts (Postgres); `None` on SQLite, which one
    /// process owns.
    fn lease_table(&self) -> Option<&dyn LeaseTable> {
        None
    }

    /// From now on, every write for an account checks that `book` holds the account's lease
    /// with the token stored in the leases table (fencing). A no-op where there are no leases.
    fn fence_with(&self, _book: Arc<crate::lease::LeaseBook>) {}
}

/// A delivery to store in `webhook_deliveries`.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDelivery {
    pub provider: ProviderKind,
    pub account: String,
    pub source: DeliverySource,
    /// The upstream's event id, which makes a repeat a duplicate.
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    /// The object the event is about (an order id).
    pub object_id: Option<String>,
    pub body: String,
    pub received_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliverySource {
    Webhook,
    Feed,
}

impl DeliverySource {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliverySource::Webhook => "webhook",
            DeliverySource::Feed => "feed",
        }
    }
}

/// A stored delivery waiting to be processed.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub id: i64,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub object_id: Option<String>,
    pub body: String,
    pub received_at: DateTime<Utc>,
}

/// How one delivery was processed.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliveryDone {
    pub id: i64,
    pub state: DeliveryState,
    /// Why it was ignored or failed.
    pub note: Option<String>,
}

/// Pending deliveries about `object_id` received before `before` end in `state`.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectDone {
    pub object_id: String,
    pub before: DateTime<Utc>,
    pub state: DeliveryState,
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Processed,
    Ignored,
    Failed,
}

impl DeliveryState {
    pub const fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Processed => "processed",
            DeliveryState::Ignored => "ignored",
            DeliveryState::Failed => "failed",
        }
    }
}

/// Which stored deliveries `inbox list` shows and `inbox replay` maps again; every field
/// narrows, none set means all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InboxFilter {
    pub provider: Option<String>,
    pub account: Option<String>,
    /// `pending`, `processed`, `ignored` or `failed`.
    pub state: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub ids: Vec<i64>,
    pub limit: i64,
}

/// One stored delivery, for `inbox list`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InboxEntry {
    pub id: i64,
    pub provider: String,
    pub account: String,
    pub event_id: Option<String>,
    pub event_type: Option<String>,
    pub object_id: Option<String>,
    pub state: String,
    pub error: Option<String>,
    pub received_at: DateTime<Utc>,
    pub processed_at: Option<DateTime<Utc>>,
    pub body_bytes: i64,
}

/// A webhook ordersync registered upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub provider: String,
    pub account: String,
    /// The upstream's id of the webhook (what a delete names).
    pub registration_id: String,
    /// What deliveries carry to name it.
    pub guid: String,
    pub feature_id: String,
    pub feature_method: String,
    pub group_wide: bool,
    pub url: String,
    pub created_at: DateTime<Utc>,
}

/// One account's inbox, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryStat {
    pub provider: String,
    pub account: String,
    pub last_received_at: Option<DateTime<Utc>>,
    pub pending: i64,
    pub failed: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewAsn {
    pub provider: ProviderKind,
    pub account: String,
    pub asn_id: i64,
    pub warehouse_id: String,
    pub supplier_id: i64,
    pub supplier_ref: String,
    pub action_id: i64,
}

/// A followed ASN as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AsnRow {
    pub asn_id: i64,
    pub warehouse_id: String,
    pub status: Option<String>,
    pub received_quantity: i64,
    pub is_final: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AsnUpdate {
    pub provider: ProviderKind,
    pub account: String,
    pub asn_id: i64,
    pub status: Option<String>,
    pub received_quantity: i64,
    pub payload: serde_json::Value,
    pub is_final: bool,
    pub checked_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GateState {
    pub provider: String,
    pub account: String,
    pub paused_until: Option<DateTime<Utc>>,
    /// 429 answers since the daemon started.
    pub rate_limited: i64,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionCount {
    pub provider: String,
    pub account: String,
    pub state: String,
    pub count: i64,
}

/// One outcome as the columns `finish_batch` binds: (kind, result, error, next attempt).
pub(crate) fn outcome_columns(
    outcome: &ActionOutcome,
) -> (
    &'static str,
    Option<String>,
    Option<&str>,
    Option<DateTime<Utc>>,
) {
    match outcome {
        ActionOutcome::Succeeded { result } => ("succeeded", Some(result.to_string()), None, None),
        ActionOutcome::Sent { result, confirm_by } => {
            ("sent", Some(result.to_string()), None, Some(*confirm_by))
        }
        ActionOutcome::Failed { error } => ("failed", None, Some(error.as_str()), None),
        ActionOutcome::Unknown { error } => ("unknown", None, Some(error.as_str()), None),
        ActionOutcome::RetryAt { error, at } => ("retry", None, Some(error.as_str()), Some(*at)),
        ActionOutcome::Deferred { reason, at } => ("defer", None, Some(reason.as_str()), Some(*at)),
    }
}

/// What [`Store::claim`] takes.
#[derive(Debug)]
pub struct Claim<'a> {
    pub provider: &'a str,
    pub account: &'a str,
    pub limit: i64,
    pub worker: &'a str,
    pub now: DateTime<Utc>,
    pub visible_until: DateTime<Utc>,
}

#[derive(Debug, Default, Clone)]
pub struct ActionFilter {
    pub state: Option<ActionState>,
    pub account: Option<String>,
    pub limit: i64,
}

/// Which actions `retry` puts back: one by id, or every dead one (of an account).
#[derive(Debug, Clone)]
pub enum RetryFilter {
    One(i64),
    AllDead { account: Option<String> },
}

pub use run_lock::{RunLock, lock_for_run};

/// Opens the configured database (creating a SQLite file if needed), every call bounded by
/// [`DatabaseConfig::call_timeout`]. Does not migrate.
pub async fn open(config: &DatabaseConfig) -> Result<Arc<dyn Store>, StoreError> {
    let opening = async {
        Ok::<Arc<dyn Store>, StoreError>(match config.backend {
            Backend::Sqlite => Arc::new(SqliteStore::open(config).await?),
            Backend::Postgres => Arc::new(PostgresStore::open(config).await?),
        })
    };
    let store = tokio::time::timeout(config.call_timeout(), opening)
        .await
        .unwrap_or(Err(StoreError::Timeout {
            operation: "connecting",
            after: config.call_timeout(),
        }))?;
    Ok(Arc::new(Bounded::new(store, config.call_timeout())))
}

/// Compares the newest applied migration with the newest this build carries.
pub(crate) fn check_migrated(
    applied: Option<i64>,
    migrator: &sqlx::migrate::Migrator,
) -> Result<(), StoreError> {
    let needed = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let applied = applied.unwrap_or(0);
    if applied >= needed {
        Ok(())
    } else {
        Err(StoreError::NotMigrated { applied, needed })
    }
}

/// Keeps one copy per order key: the newest `upstream_updated_at`, the later one on a tie, because
/// one statement must not touch the same row twice and the later read is the fresher one.
/// Returned in key order: the unique index is then walked once from one end to the other instead
/// of at random, so each of its pages is changed once per batch, not loaded and written again
/// whenever the page cache had to let it go.
pub(crate) fn newest_per_key(orders: &[Order]) -> Vec<&Order> {
    let mut index: HashMap<&OrderKey, usize> = HashMap::with_capacity(orders.len());
    let mut kept: Vec<&Order> = Vec::with_capacity(orders.len());
    for order in orders {
        match index.get(&order.key) {
            Some(&at) if kept[at].upstream_updated_at > order.upstream_updated_at => {}
            Some(&at) => kept[at] = order,
            None => {
                index.insert(&order.key, kept.len());
                kept.push(order);
            }
        }
    }
    kept.sort_unstable_by(|a, b| a.key.cmp(&b.key));
    kept
}

pub(crate) fn body_sha256(raw: &str) -> String {
    hex::encode(Sha256::digest(raw.as_bytes()))
}

/// Rows per multi-row statement; well under both databases' bind-parameter limits.
pub(crate) const ROWS_PER_STATEMENT: usize = 500;

#[cfg(test)]
mod tests {
    use super::*;

    /// What one batch hands on, the next receives as it was; a run's end finds it still open
    /// and gives it to a batch that commits it; a store that does not go on with open writes
    /// fails rather than dropping one unseen.
    #[tokio::test]
    async fn a_write_handed_on_reaches_the_next_batch_or_the_end_of_the_run() {
        let (done, mut next) = EarlierCommit::pair();
        done.hand_on(OpenWrite::new(7u32));
        let write = next.committed_or_handed_on().await.unwrap();
        assert_eq!(write.and_then(OpenWrite::into_inner::<u32>), Some(7));

        let (done, next) = EarlierCommit::pair();
        done.hand_on(OpenWrite::new(8u32));
        let mut left_open = next.left_open().expect("the write left open at the end");
        let write = left_open.committed_or_handed_on().await.unwrap();
        assert_eq!(write.and_then(OpenWrite::into_inner::<u32>), Some(8));

        let (done, next) = EarlierCommit::pair();
        done.committed();
        assert!(next.left_open().is_none(), "nothing was left open");

        let (done, mut next) = EarlierCommit::pair();
        done.hand_on(OpenWrite::new(9u32));
        assert!(matches!(
            next.committed().await,
            Err(StoreError::EarlierBatchFailed)
        ));

        let (done, next) = EarlierCommit::pair();
        done.hand_on(OpenWrite::new(10u32));
        let write = next.left_open().unwrap().committed_or_handed_on().await;
        assert!(
            write.unwrap().unwrap().into_inner::<String>().is_none(),
            "another store's write is not taken for this one's"
        );
    }

    /// Whether more follow is asked when the batch is written, not when it was sent.
    #[test]
    fn a_batch_is_followed_while_the_caller_says_more_wait() {
        let more = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (done, _next) = EarlierCommit::pair();
        assert!(!done.is_followed(), "nothing said, nothing follows");
        let waiting = Arc::clone(&more);
        let done = done.followed_while(Arc::new(move || {
            waiting.load(std::sync::atomic::Ordering::Relaxed)
        }));
        assert!(!done.is_followed());
        more.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(done.is_followed());
    }

    fn order(id: &str, updated: i64, status: &str) -> Order {
        crate::model::test_order(id, updated, Some(status))
    }

    #[test]
    fn newest_copy_wins_and_later_read_wins_a_tie() {
        let orders = [
            order("1", 10, "A"),
            order("2", 5, "X"),
            order("1", 9, "OLD"),
            order("1", 10, "B"),
        ];
        let kept = newest_per_key(&orders);
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].status.as_deref(), Some("B"));
        assert_eq!(kept[1].status.as_deref(), Some("X"));
    }

    /// A batch that waits for the earlier one and only then writes (SQLite's way) still counts
    /// as writing after the wait: the caller hears only when it ends.
    #[tokio::test]
    async fn a_batch_counts_as_writing_until_it_says_so_or_ends() {
        use tokio::sync::oneshot::error::TryRecvError;
        let (done, earlier) = EarlierCommit::pair();
        let (written, mut heard) = tokio::sync::oneshot::channel();
        let mut earlier = earlier.tell_when_written(written);
        done.committed();
        earlier
            .committed()
            .await
            .expect("the earlier batch committed");
        assert_eq!(heard.try_recv(), Err(TryRecvError::Empty));
        drop(earlier);
        assert_eq!(heard.try_recv(), Err(TryRecvError::Closed));

        let (done, earlier) = EarlierCommit::pair();
        let (written, mut heard) = tokio::sync::oneshot::channel();
        let mut earlier = earlier.tell_when_written(written);
        earlier.written();
        assert_eq!(heard.try_recv(), Ok(()));
        drop(done);
        assert!(
            earlier.committed().await.is_err(),
            "the earlier batch failed"
        );
    }
}
