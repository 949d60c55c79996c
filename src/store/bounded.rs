//! A time limit on every database call. The server's own timeouts (Postgres `statement_timeout`,
//! SQLite's busy timeout) end slow statements and lock waits with a clear error; this bound also
//! ends a call whose connection went silent (a paused network, a frozen server), which no server
//! timeout can, so no run or batch waits on the database forever.

use super::{
    ActionCount, ActionFilter, AsnRow, AsnUpdate, Batch, BatchOutcome, Claim, CommitDone, Delivery,
    DeliveryDone, DeliveryStat, EarlierCommit, GateState, InboxEntry, InboxFilter, NewAsn,
    NewDelivery, ObjectDone, Registration, RetryFilter, StatusChange, Store, StoreError,
    StoredOrder, StreamStatus,
};
use super::{
    FollowedOrder, Resolution, ShopDocument, ShopDocumentKind, ShopState, ShopStateChange,
};
use crate::model::{Action, ActionOutcome, NewAction, OrderKey, StreamKey};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A [`Store`] whose calls each fail with [`StoreError::Timeout`] after `limit`.
pub struct Bounded {
    inner: Arc<dyn Store>,
    limit: Duration,
}

impl Bounded {
    pub fn new(inner: Arc<dyn Store>, limit: Duration) -> Self {
        Bounded { inner, limit }
    }

    async fn within<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        tokio::time::timeout(self.limit, call)
            .await
            .unwrap_or(Err(StoreError::Timeout {
                operation,
                after: self.limit,
            }))
    }
}

#[async_trait]
impl Store for Bounded {
    /// Not bounded: a migration of a large table may rightly take minutes, and it runs before
    /// the daemon starts, in the foreground.
    async fn migrate(&self) -> Result<(), StoreError> {
        self.inner.migrate().await
    }

    async fn readiness(&self) -> Result<(), StoreError> {
        self.within("checking readiness", self.inner.readiness())
            .await
    }

    async fn cursor(&self, stream: &StreamKey) -> Result<Option<String>, StoreError> {
        self.within("reading a cursor", self.inner.cursor(stream))
            .await
    }

    async fn commit_batch(&self, batch: &Batch<'_>) -> Result<BatchOutcome, StoreError> {
        let outcome = self
            .within("committing orders", self.inner.commit_batch(batch))
            .await?;
        count_outcome(batch, &outcome);
        Ok(outcome)
    }

    fn concurrent_commits(&self) -> usize {
        self.inner.concurrent_commits()
    }

    fn commit_runtime(&self) -> Option<&tokio::runtime::Handle> {
        self.inner.commit_runtime()
    }

    fn buffer_starts_at(&self, buffered: usize) -> usize {
        self.inner.buffer_starts_at(buffered)
    }

    fn writes_ending(&self) {
        self.inner.writes_ending();
    }

    async fn commit_batch_after(
        &self,
        batch: &Batch<'_>,
        earlier: EarlierCommit,
    ) -> Result<BatchOutcome, StoreError> {
        let outcome = self
            .within(
                "committing orders",
                self.inner.commit_batch_after(batch, earlier),
            )
            .await?;
        count_outcome(batch, &outcome);
        Ok(outcome)
    }

    async fn commit_batch_handing_on(
        &self,
        batch: &Batch<'_>,
        earlier: EarlierCommit,
        done: CommitDone,
    ) -> Result<BatchOutcome, StoreError> {
        let outcome = self
            .within(
                "committing orders",
                self.inner.commit_batch_handing_on(batch, earlier, done),
            )
            .await?;
        count_outcome(batch, &outcome);
        Ok(outcome)
    }

    async fn run_started(&self, stream: &StreamKey, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.within(
            "recording a run's start",
            self.inner.run_started(stream, at),
        )
        .await
    }

    async fn run_finished(
        &self,
        stream: &StreamKey,
        started: DateTime<Utc>,
        at: DateTime<Utc>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        self.within(
            "recording a run's end",
            self.inner.run_finished(stream, started, at, error),
        )
        .await
    }

    async fn streams(&self) -> Result<Vec<StreamStatus>, StoreError> {
        self.within("reading stream status", self.inner.streams())
            .await
    }

    async fn orders_of(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<Vec<StoredOrder>, StoreError> {
        self.within("reading orders", self.inner.orders_of(provider, account))
            .await
    }

    async fn order_history(&self, key: &OrderKey) -> Result<Vec<StatusChange>, StoreError> {
        self.within("reading an order's history", self.inner.order_history(key))
            .await
    }

    async fn quarantine_count(&self, provider: &str, account: &str) -> Result<i64, StoreError> {
        self.within(
            "counting quarantined records",
            self.inner.quarantine_count(provider, account),
        )
        .await
    }

    async fn channel_payload(
        &self,
        provider: &str,
        account: &str,
        channel: &str,
    ) -> Result<Option<String>, StoreError> {
        self.within(
            "reading an order",
            self.inner.channel_payload(provider, account, channel),
        )
        .await
    }

    async fn enqueue(&self, action: &NewAction) -> Result<(Action, bool), StoreError> {
        self.within("queueing an action", self.inner.enqueue(action))
            .await
    }

    async fn claim(&self, claim: &Claim<'_>) -> Result<Vec<Action>, StoreError> {
        self.within("claiming actions", self.inner.claim(claim))
            .await
    }

    async fn finish_batch(
        &self,
        worker: &str,
        outcomes: &[(i64, ActionOutcome)],
    ) -> Result<Vec<i64>, StoreError> {
        self.within(
            "recording action outcomes",
            self.inner.finish_batch(worker, outcomes),
        )
        .await
    }

    async fn extend_claims(
        &self,
        ids: &[i64],
        worker: &str,
        until: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        self.within(
            "renewing action claims",
            self.inner.extend_claims(ids, worker, until),
        )
        .await
    }

    async fn action(&self, id: i64) -> Result<Option<Action>, StoreError> {
        self.within("reading an action", self.inner.action(id))
            .await
    }

    async fn record_asn(&self, asn: &NewAsn) -> Result<(), StoreError> {
        self.within("recording an ASN", self.inner.record_asn(asn))
            .await
    }

    async fn open_asns(&self, provider: &str, account: &str) -> Result<Vec<AsnRow>, StoreError> {
        self.within("reading open ASNs", self.inner.open_asns(provider, account))
            .await
    }

    async fn record_gate(&self, gate: &GateState) -> Result<(), StoreError> {
        self.within("recording a rate gate", self.inner.record_gate(gate))
            .await
    }

    async fn gates(&self) -> Result<Vec<GateState>, StoreError> {
        self.within("reading rate gates", self.inner.gates()).await
    }

    async fn action_counts(&self) -> Result<Vec<ActionCount>, StoreError> {
        self.within("counting actions", self.inner.action_counts())
            .await
    }

    async fn update_asn(&self, update: &AsnUpdate) -> Result<(), StoreError> {
        self.within("updating an ASN", self.inner.update_asn(update))
            .await
    }

    async fn actions(&self, filter: &ActionFilter) -> Result<Vec<Action>, StoreError> {
        self.within("listing actions", self.inner.actions(filter))
            .await
    }

    async fn retry_actions(&self, filter: &RetryFilter) -> Result<u64, StoreError> {
        self.within("retrying actions", self.inner.retry_actions(filter))
            .await
    }

    async fn sent_actions(
        &self,
        provider: &str,
        account: &str,
        limit: i64,
    ) -> Result<Vec<Action>, StoreError> {
        self.within(
            "reading sent commands",
            self.inner.sent_actions(provider, account, limit),
        )
        .await
    }

    async fn settle_sent(&self, outcomes: &[(i64, ActionOutcome)]) -> Result<Vec<i64>, StoreError> {
        self.within("settling sent commands", self.inner.settle_sent(outcomes))
            .await
    }

    async fn record_deliveries(
        &self,
        deliveries: &[NewDelivery],
        cursor: Option<(&StreamKey, &str)>,
    ) -> Result<Vec<bool>, StoreError> {
        self.within(
            "storing deliveries",
            self.inner.record_deliveries(deliveries, cursor),
        )
        .await
    }

    async fn pending_deliveries(
        &self,
        provider: &str,
        account: &str,
        limit: i64,
    ) -> Result<Vec<Delivery>, StoreError> {
        self.within(
            "reading pending deliveries",
            self.inner.pending_deliveries(provider, account, limit),
        )
        .await
    }

    async fn finish_deliveries(&self, done: &[DeliveryDone]) -> Result<(), StoreError> {
        self.within(
            "recording processed deliveries",
            self.inner.finish_deliveries(done),
        )
        .await
    }

    async fn finish_object_deliveries(
        &self,
        provider: &str,
        account: &str,
        event_type: &str,
        done: &[ObjectDone],
    ) -> Result<u64, StoreError> {
        self.within(
            "recording processed deliveries",
            self.inner
                .finish_object_deliveries(provider, account, event_type, done),
        )
        .await
    }

    async fn delivery_stats(&self) -> Result<Vec<DeliveryStat>, StoreError> {
        self.within("reading the inbox's state", self.inner.delivery_stats())
            .await
    }

    async fn inbox(&self, filter: &InboxFilter) -> Result<Vec<InboxEntry>, StoreError> {
        self.within("reading the inbox", self.inner.inbox(filter))
            .await
    }

    async fn requeue_deliveries(&self, filter: &InboxFilter) -> Result<u64, StoreError> {
        self.within(
            "putting deliveries back to pending",
            self.inner.requeue_deliveries(filter),
        )
        .await
    }

    async fn registrations(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<Vec<Registration>, StoreError> {
        self.within(
            "reading webhook registrations",
            self.inner.registrations(provider, account),
        )
        .await
    }

    async fn is_registered(
        &self,
        provider: &str,
        account: &str,
        guid: &str,
    ) -> Result<bool, StoreError> {
        self.within(
            "checking a webhook registration",
            self.inner.is_registered(provider, account, guid),
        )
        .await
    }

    async fn save_registration(&self, registration: &Registration) -> Result<(), StoreError> {
        self.within(
            "recording a webhook registration",
            self.inner.save_registration(registration),
        )
        .await
    }

    async fn drop_registration(
        &self,
        provider: &str,
        account: &str,
        registration_id: &str,
    ) -> Result<(), StoreError> {
        self.within(
            "forgetting a webhook registration",
            self.inner
                .drop_registration(provider, account, registration_id),
        )
        .await
    }

    async fn open_orders(
        &self,
        provider: &str,
        account: &str,
        terminal: &[String],
    ) -> Result<Vec<String>, StoreError> {
        self.within(
            "reading open orders",
            self.inner.open_orders(provider, account, terminal),
        )
        .await
    }

    /// Waits for borrowed connections at most `limit`; a connection stuck on a silent peer is
    /// left behind rather than holding up the exit.
    async fn due_accounts(&self, now: DateTime<Utc>) -> Result<Vec<(String, String)>, StoreError> {
        self.within("looking for due actions", self.inner.due_accounts(now))
            .await
    }

    async fn mark_sending(
        &self,
        id: i64,
        worker: &str,
        at: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.within(
            "marking an action as being sent",
            self.inner.mark_sending(id, worker, at),
        )
        .await
    }

    async fn clear_sending(
        &self,
        id: i64,
        worker: &str,
        result: Option<&serde_json::Value>,
    ) -> Result<(), StoreError> {
        self.within(
            "recording an answer",
            self.inner.clear_sending(id, worker, result),
        )
        .await
    }

    async fn resolve_unknown(
        &self,
        id: i64,
        resolution: &Resolution,
    ) -> Result<Option<Action>, StoreError> {
        self.within(
            "resolving an action",
            self.inner.resolve_unknown(id, resolution),
        )
        .await
    }

    async fn followed_orders(
        &self,
        provider: &str,
        account: &str,
        terminal: &[String],
        since: DateTime<Utc>,
    ) -> Result<Vec<FollowedOrder>, StoreError> {
        self.within(
            "reading followed orders",
            self.inner
                .followed_orders(provider, account, terminal, since),
        )
        .await
    }

    async fn record_shop_state(&self, state: &ShopState, changed: bool) -> Result<(), StoreError> {
        self.within(
            "recording a shop's state",
            self.inner.record_shop_state(state, changed),
        )
        .await
    }

    async fn shop_state(
        &self,
        provider: &str,
        account: &str,
    ) -> Result<Option<ShopState>, StoreError> {
        self.within(
            "reading a shop's state",
            self.inner.shop_state(provider, account),
        )
        .await
    }

    async fn shop_states(&self) -> Result<Vec<ShopState>, StoreError> {
        self.within("reading shop states", self.inner.shop_states())
            .await
    }

    async fn shop_history(
        &self,
        provider: &str,
        account: &str,
        since: DateTime<Utc>,
    ) -> Result<Vec<ShopStateChange>, StoreError> {
        self.within(
            "reading a shop's history",
            self.inner.shop_history(provider, account, since),
        )
        .await
    }

    async fn record_shop_document(&self, document: &ShopDocument) -> Result<(), StoreError> {
        self.within(
            "storing a shop document",
            self.inner.record_shop_document(document),
        )
        .await
    }

    async fn shop_documents(
        &self,
        provider: &str,
        account: &str,
        document: ShopDocumentKind,
        latest: bool,
    ) -> Result<Vec<ShopDocument>, StoreError> {
        self.within(
            "reading shop documents",
            self.inner
                .shop_documents(provider, account, document, latest),
        )
        .await
    }

    async fn close(&self) {
        if tokio::time::timeout(self.limit, self.inner.close())
            .await
            .is_err()
        {
            tracing::warn!(
                after = ?self.limit,
                "database connections did not close in time; leaving them"
            );
        }
    }

    fn lease_table(&self) -> Option<&dyn super::LeaseTable> {
        self.inner.lease_table()
    }

    fn fence_with(&self, book: Arc<crate::lease::LeaseBook>) {
        self.inner.fence_with(book);
    }
}

fn count_outcome(batch: &Batch<'_>, outcome: &BatchOutcome) {
    let metrics = crate::metrics::metrics();
    let labels = crate::metrics::account(batch.stream.provider.as_str(), &batch.stream.account);
    metrics
        .orders_written
        .get_or_create(&labels)
        .inc_by(outcome.written);
    metrics
        .orders_unchanged
        .get_or_create(&labels)
        .inc_by(outcome.unchanged);
    metrics
        .orders_quarantined
        .get_or_create(&labels)
        .inc_by(outcome.quarantined);
}
