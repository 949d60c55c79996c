//! Get It Done inbound: the inbox worker (deliveries → debounced polls → orders, command
//! outcomes → actions), the re-poll of every open order, and the optional event feed.
//! A webhook is a trigger; the poll is the truth.

use super::Worker;
use super::job::Job;
use crate::model::{ActionState, Order, ProviderKind, Quarantined, StreamKey};
use crate::outbox::getitdone::outcome_of;
use crate::providers::ProviderError;
use crate::providers::getitdone::wire::{self, Envelope};
use crate::providers::getitdone::{EVENTS_RESOURCE, GetItDoneClient};
use crate::store::{
    Batch, Delivery, DeliveryDone, DeliverySource, DeliveryState, NewDelivery, ObjectDone, Store,
    StoreError,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Deliveries read per round.
const ROUND_SIZE: i64 = 1_000;
/// Polls in flight at once per account (the rate gate paces them).
const CONCURRENT_POLLS: usize = 4;
/// How often an idle worker looks for rows written by another process.
const IDLE_LOOK: Duration = Duration::from_secs(1);
/// A burst that goes on is polled anyway after this many debounce periods.
const MAX_DEBOUNCE_PERIODS: u32 = 5;
/// The pause after a round that could not reach Get It Done or the database.
const ERROR_PAUSE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("order {order_id}: {error}")]
    Provider {
        order_id: String,
        error: ProviderError,
    },
    #[error("event feed: {0}")]
    Feed(ProviderError),
}

impl InboundError {
    fn refused_credentials(&self) -> bool {
        matches!(
            self,
            InboundError::Provider {
                error: ProviderError::Unauthorized { .. },
                ..
            } | InboundError::Feed(ProviderError::Unauthorized { .. })
        )
    }
}

/// Polls orders and stores their snapshots: what the inbox, the re-poll and `run --once` share.
struct Poller {
    client: Arc<GetItDoneClient>,
    store: Arc<dyn Store>,
}

/// What polling one order did.
enum Polled {
    Stored {
        written: bool,
    },
    /// Get It Done does not know it (404).
    Unknown,
    /// A snapshot ordersync cannot store; kept in quarantine.
    Quarantined(String),
}

impl Poller {
    async fn poll(&self, order_id: &str) -> Result<Polled, InboundError> {
        let polled = self.client.poll_order(order_id).await;
        let (orders, quarantined): (Vec<Order>, Vec<Quarantined>) = match polled {
            Ok(Some(order)) => (vec![order], vec![]),
            Ok(None) => return Ok(Polled::Unknown),
            Err(ProviderError::InvalidRecord(error)) => (
                vec![],
                vec![Quarantined {
                    provider: ProviderKind::GetItDone,
                    account: self.client.account().to_owned(),
                    source: format!("poll of order {order_id}"),
                    error: error.clone(),
                    raw: error,
                }],
            ),
            Err(error) => {
                return Err(InboundError::Provider {
                    order_id: order_id.to_owned(),
                    error,
                });
            }
        };
        let outcome = self
            .store
            .commit_batch(&Batch {
                stream: crate::providers::OrderLookup::stream(self.client.as_ref()),
                orders: &orders,
                quarantined: &quarantined,
                cursor: None,
                seen_at: Utc::now(),
            })
            .await?;
        Ok(match quarantined.first() {
            Some(q) => Polled::Quarantined(q.error.clone()),
            None => Polled::Stored {
                written: outcome.written > 0,
            },
        })
    }
}

/// Processes one account's pending deliveries in the order they came.
pub struct InboxWorker {
    poller: Arc<Poller>,
    account: String,
    debounce: Duration,
    wake: Arc<Notify>,
    stopped: AtomicBool,
}

/// What one round did.
#[derive(Debug, Default)]
struct Round {
    read: usize,
    polled: usize,
    written: usize,
    settled: usize,
    ignored: usize,
    failed: usize,
    /// Deliveries left pending (debounced, or waiting for their action's send to be recorded).
    waiting: usize,
    /// Deliveries of this round answered by a poll.
    answered: usize,
    /// When the earliest debounced order is due.
    next_due: Option<DateTime<Utc>>,
    error: Option<InboundError>,
}

impl InboxWorker {
    pub fn new(
        client: Arc<GetItDoneClient>,
        store: Arc<dyn Store>,
        debounce: Duration,
        wake: Arc<Notify>,
    ) -> Self {
        InboxWorker {
            account: client.account().to_owned(),
            poller: Arc::new(Poller { client, store }),
            debounce,
            wake,
            stopped: AtomicBool::new(false),
        }
    }

    fn store(&self) -> &Arc<dyn Store> {
        &self.poller.store
    }

    /// One pass over the pending deliveries. `wait_debounce` false polls every order at once.
    async fn round(&self, wait_debounce: bool) -> Round {
        let mut round = Round::default();
        let pending = match self
            .store()
            .pending_deliveries(ProviderKind::GetItDone.as_str(), &self.account, ROUND_SIZE)
            .await
        {
            Ok(pending) => pending,
            Err(error) => {
                round.error = Some(error.into());
                return round;
            }
        };
        round.read = pending.len();
        let mut done = Vec::new();
        let mut per_order: BTreeMap<String, Vec<&Delivery>> = BTreeMap::new();
        let mut outcomes = Vec::new();
        for delivery in &pending {
            match delivery.event_type.as_deref() {
                Some(wire::ORDER_STATUS_EVENT) => match &delivery.object_id {
                    Some(order_id) if !order_id.is_empty() => per_order
                        .entry(order_id.clone())
                        .or_default()
                        .push(delivery),
                    _ => done.push(failed(delivery, "OrderStatusEvent without orderId")),
                },
                Some(wire::COMMAND_RESULT_EVENT | wire::COMMAND_ERROR_EVENT) => {
                    match command_event(delivery) {
                        Ok((action_id, outcome)) => outcomes.push((delivery, action_id, outcome)),
                        Err(reason) => done.push(failed(delivery, &reason)),
                    }
                }
                other => done.push(DeliveryDone {
                    id: delivery.id,
                    state: DeliveryState::Ignored,
                    note: Some(format!(
                        "event type `{}` is not one ordersync acts on",
                        other.unwrap_or("")
                    )),
                }),
            }
        }
        self.settle_commands(&outcomes, &mut done, &mut round).await;

        // Debounce: an order whose latest event is fresh waits for the burst to end, unless
        // the burst has gone on too long.
        let now = Utc::now();
        let debounce = chrono::Duration::from_std(self.debounce).unwrap_or_default();
        let mut due = Vec::new();
        for (order_id, deliveries) in per_order {
            let newest = deliveries
                .iter()
                .map(|d| d.received_at)
                .max()
                .unwrap_or(now);
            let oldest = deliveries
                .iter()
                .map(|d| d.received_at)
                .min()
                .unwrap_or(now);
            let quiet_at = newest + debounce;
            let forced_at = oldest + debounce * MAX_DEBOUNCE_PERIODS as i32;
            let due_at = quiet_at.min(forced_at);
            if wait_debounce && due_at > now {
                round.waiting += deliveries.len();
                round.next_due = Some(round.next_due.map_or(due_at, |d| d.min(due_at)));
            } else {
                let ids: Vec<i64> = deliveries.iter().map(|d| d.id).collect();
                due.push((order_id, ids));
            }
        }
        let results: Vec<_> = futures_util::stream::iter(due)
            .map(|(order_id, deliveries)| {
                let poller = self.poller.clone();
                async move {
                    let started = Utc::now();
                    let result = poller.poll(&order_id).await;
                    (order_id, deliveries, started, result)
                }
            })
            .buffer_unordered(CONCURRENT_POLLS)
            .collect()
            .await;
        let mut answered = Vec::new();
        for (order_id, deliveries, started, result) in results {
            round.polled += 1;
            let (state, note) = match result {
                Ok(Polled::Stored { written }) => {
                    round.written += usize::from(written);
                    (DeliveryState::Processed, None)
                }
                Ok(Polled::Unknown) => (
                    DeliveryState::Failed,
                    Some(format!(
                        "Get It Done does not know order {order_id} (poll answered 404)"
                    )),
                ),
                Ok(Polled::Quarantined(error)) => (
                    DeliveryState::Failed,
                    Some(format!("the polled snapshot is quarantined: {error}")),
                ),
                Err(error) => {
                    // Left pending: the next round polls again.
                    round.waiting += deliveries.len();
                    round.error.get_or_insert(error);
                    continue;
                }
            };
            // The poll answers every event about the order that came before it, including
            // those beyond this round.
            round.answered += deliveries.len();
            if state == DeliveryState::Failed {
                round.failed += deliveries.len();
            }
            answered.push(ObjectDone {
                object_id: order_id,
                before: started,
                state,
                note,
            });
        }
        for d in &done {
            match d.state {
                DeliveryState::Ignored => round.ignored += 1,
                DeliveryState::Failed => round.failed += 1,
                DeliveryState::Processed => {}
            }
        }
        if let Err(error) = self.store().finish_deliveries(&done).await {
            round.error.get_or_insert(error.into());
        }
        if let Err(error) = self
            .store()
            .finish_object_deliveries(
                ProviderKind::GetItDone.as_str(),
                &self.account,
                wire::ORDER_STATUS_EVENT,
                &answered,
            )
            .await
        {
            round.error.get_or_insert(error.into());
        }
        round
    }

    /// Applies command outcomes to `sent` actions. An outcome for an action whose send is not
    /// recorded yet (the event beat the POST's answer) stays pending for the next round, until
    /// the action is final.
    async fn settle_commands(
        &self,
        outcomes: &[(&Delivery, i64, wire::CommandOutcome)],
        done: &mut Vec<DeliveryDone>,
        round: &mut Round,
    ) {
        if outcomes.is_empty() {
            return;
        }
        let settle: Vec<_> = outcomes
            .iter()
            .map(|(_, id, outcome)| (*id, outcome_of(outcome.clone())))
            .collect();
        let settled = match self.store().settle_sent(&settle).await {
            Ok(settled) => settled,
            Err(error) => {
                round.waiting += outcomes.len();
                round.error.get_or_insert(error.into());
                return;
            }
        };
        for (delivery, action_id, _) in outcomes {
            if settled.contains(action_id) {
                round.settled += 1;
                done.push(processed(delivery, None));
                continue;
            }
            let state = match self.store().action(*action_id).await {
                Ok(Some(action)) => action.state.parse::<ActionState>().ok(),
                Ok(None) => None,
                Err(error) => {
                    round.waiting += 1;
                    round.error.get_or_insert(error.into());
                    continue;
                }
            };
            match state {
                // Not final yet: `sent` means the send was recorded after `settle_sent` looked
                // (the event beat the POST's answer by a hair), and the next round settles it.
                // Only a final action makes the outcome redundant.
                Some(ActionState::Pending | ActionState::InFlight | ActionState::Sent)
                    if Utc::now() - delivery.received_at < chrono::Duration::minutes(10) =>
                {
                    round.waiting += 1;
                }
                Some(state) => done.push(processed(
                    delivery,
                    Some(format!("action {action_id} is {} already", state.as_str())),
                )),
                None => done.push(DeliveryDone {
                    id: delivery.id,
                    state: DeliveryState::Ignored,
                    note: Some(format!(
                        "no action {action_id}: not a command ordersync sent"
                    )),
                }),
            }
        }
    }

    fn log(&self, round: &Round) {
        if round.read == 0 && round.error.is_none() {
            return;
        }
        match &round.error {
            Some(error) if error.refused_credentials() => {
                self.stopped.store(true, Ordering::Relaxed);
                tracing::error!(account = %self.account, %error, "Get It Done rejected our credentials; the inbox stops until ordersync is restarted with working ones (deliveries are still stored)");
            }
            Some(error) => {
                tracing::warn!(account = %self.account, %error, waiting = round.waiting, "inbox round incomplete; pending deliveries are tried again")
            }
            None => {
                tracing::debug!(account = %self.account, read = round.read, polled = round.polled, written = round.written, settled = round.settled, waiting = round.waiting, "inbox round")
            }
        }
    }
}

fn processed(delivery: &Delivery, note: Option<String>) -> DeliveryDone {
    DeliveryDone {
        id: delivery.id,
        state: DeliveryState::Processed,
        note,
    }
}

fn failed(delivery: &Delivery, reason: &str) -> DeliveryDone {
    DeliveryDone {
        id: delivery.id,
        state: DeliveryState::Failed,
        note: Some(reason.to_owned()),
    }
}

/// The action a command outcome event is about (`_cid` is our action id), and the outcome.
fn command_event(delivery: &Delivery) -> Result<(i64, wire::CommandOutcome), String> {
    let envelope =
        Envelope::parse(delivery.body.as_bytes()).map_err(|e| format!("unreadable: {e}"))?;
    let command_id = envelope.command_id.ok_or("command event without `_cid`")?;
    let action_id = command_id
        .parse()
        .map_err(|_| format!("`_cid` {command_id} is not a command ordersync sent"))?;
    let outcome =
        wire::command_outcome(delivery.body.as_bytes())?.ok_or("not a command outcome event")?;
    Ok((action_id, outcome))
}

#[async_trait]
impl Worker for InboxWorker {
    fn name(&self) -> String {
        format!("inbox of getitdone/{}", self.account)
    }

    fn account_id(&self) -> crate::lease::AccountId {
        crate::lease::AccountId::new(ProviderKind::GetItDone, &self.account)
    }

    async fn run(&self, shutdown: &CancellationToken) {
        while !shutdown.is_cancelled() && !self.stopped.load(Ordering::Relaxed) {
            let round = self.round(true).await;
            self.log(&round);
            let pause = if round.error.is_some() {
                ERROR_PAUSE
            } else if let Some(due) = round.next_due {
                (due - Utc::now())
                    .to_std()
                    .unwrap_or_default()
                    .min(IDLE_LOOK)
            } else if round.read as i64 == ROUND_SIZE {
                Duration::ZERO
            } else {
                IDLE_LOOK
            };
            if pause.is_zero() {
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified(), if round.next_due.is_none() && round.error.is_none() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn drain(&self, shutdown: &CancellationToken) -> Result<Value, String> {
        let mut total = Round::default();
        loop {
            let round = self.round(false).await;
            self.log(&round);
            total.read += round.read;
            total.polled += round.polled;
            total.written += round.written;
            total.settled += round.settled;
            total.failed += round.failed;
            total.ignored += round.ignored;
            if let Some(error) = round.error {
                return Err(error.to_string());
            }
            if round.read == 0 || round.waiting >= round.read || shutdown.is_cancelled() {
                total.waiting = round.waiting;
                break;
            }
        }
        Ok(json!({
            "inbox": format!("getitdone/{}", self.account),
            "deliveries": total.read, "polled": total.polled, "written": total.written,
            "commands_settled": total.settled, "ignored": total.ignored, "failed": total.failed,
            "waiting": total.waiting,
        }))
    }
}

/// Polls every stored order of the account that is not in a terminal status, so an event that
/// never came is healed within one period.
pub struct Repoll {
    poller: Arc<Poller>,
    stream: StreamKey,
    terminal: Vec<String>,
}

impl Repoll {
    pub fn new(client: Arc<GetItDoneClient>, store: Arc<dyn Store>, terminal: &[String]) -> Self {
        let stream = crate::providers::OrderLookup::stream(client.as_ref()).clone();
        Repoll {
            poller: Arc::new(Poller { client, store }),
            stream,
            terminal: terminal.to_vec(),
        }
    }
}

#[async_trait]
impl Job for Repoll {
    type Report = Value;
    type Error = InboundError;

    fn stream(&self) -> &StreamKey {
        &self.stream
    }

    async fn run(&self, shutdown: &CancellationToken) -> Result<Value, InboundError> {
        let open = self
            .poller
            .store
            .open_orders(
                ProviderKind::GetItDone.as_str(),
                &self.stream.account,
                &self.terminal,
            )
            .await?;
        let stop = shutdown.clone();
        let results: Vec<_> = futures_util::stream::iter(open.clone())
            .take_while(move |_| std::future::ready(!stop.is_cancelled()))
            .map(|order_id| {
                let poller = self.poller.clone();
                async move { poller.poll(&order_id).await }
            })
            .buffer_unordered(CONCURRENT_POLLS)
            .collect()
            .await;
        let (mut written, mut unknown, mut quarantined) = (0, 0, 0);
        let mut failure = None;
        for result in results {
            match result {
                Ok(Polled::Stored { written: true }) => written += 1,
                Ok(Polled::Stored { written: false }) => {}
                Ok(Polled::Unknown) => unknown += 1,
                Ok(Polled::Quarantined(_)) => quarantined += 1,
                Err(error) if error.refused_credentials() => return Err(error),
                Err(error) => {
                    failure.get_or_insert(error);
                }
            }
        }
        match failure {
            Some(error) => Err(error),
            None => Ok(json!({
                "open_orders": open.len(), "written": written, "unknown": unknown,
                "quarantined": quarantined,
            })),
        }
    }

    fn refused_credentials(error: &InboundError) -> bool {
        error.refused_credentials()
    }
}

/// Reads the (assumed) account event feed into the inbox, the cursor in the same transaction.
pub struct FeedSync {
    client: Arc<GetItDoneClient>,
    store: Arc<dyn Store>,
    stream: StreamKey,
    page_size: u32,
    wake: Arc<Notify>,
}

impl FeedSync {
    pub fn new(
        client: Arc<GetItDoneClient>,
        store: Arc<dyn Store>,
        page_size: u32,
        wake: Arc<Notify>,
    ) -> Self {
        let stream = StreamKey {
            provider: ProviderKind::GetItDone,
            account: client.account().to_owned(),
            resource: EVENTS_RESOURCE.to_owned(),
        };
        FeedSync {
            client,
            store,
            stream,
            page_size,
            wake,
        }
    }
}

#[async_trait]
impl Job for FeedSync {
    type Report = Value;
    type Error = InboundError;

    fn stream(&self) -> &StreamKey {
        &self.stream
    }

    async fn run(&self, shutdown: &CancellationToken) -> Result<Value, InboundError> {
        let mut cursor = self.store.cursor(&self.stream).await?;
        let (mut pages, mut events, mut new) = (0, 0, 0);
        while !shutdown.is_cancelled() {
            let page = self
                .client
                .events(cursor.as_deref(), self.page_size)
                .await
                .map_err(InboundError::Feed)?;
            pages += 1;
            let now = Utc::now();
            let deliveries: Vec<NewDelivery> = page
                .events
                .iter()
                .map(|raw| {
                    let envelope = Envelope::parse(raw.get().as_bytes()).ok();
                    NewDelivery {
                        provider: ProviderKind::GetItDone,
                        account: self.stream.account.clone(),
                        source: DeliverySource::Feed,
                        event_id: envelope.as_ref().and_then(|e| e.event_id.clone()),
                        event_type: envelope.as_ref().map(|e| e.event_type.clone()),
                        object_id: envelope.and_then(|e| e.order_id),
                        body: raw.get().to_owned(),
                        received_at: now,
                    }
                })
                .collect();
            events += deliveries.len();
            let moved = page
                .next_cursor
                .as_deref()
                .filter(|next| Some(*next) != cursor.as_deref());
            let stored = self
                .store
                .record_deliveries(&deliveries, moved.map(|next| (&self.stream, next)))
                .await?;
            new += stored.iter().filter(|s| **s).count();
            if new > 0 {
                self.wake.notify_one();
            }
            match moved {
                Some(next) if !deliveries.is_empty() => cursor = Some(next.to_owned()),
                _ => break,
            }
        }
        Ok(json!({ "pages": pages, "events": events, "new": new }))
    }

    fn refused_credentials(error: &InboundError) -> bool {
        error.refused_credentials()
    }
}
