//! The inbox worker of push-only providers (Grafterr, Lagerkoll): stored deliveries are mapped
//! by the provider's [`DeliveryMapper`] (which may read the upstream to complete one), the
//! orders committed in one batch, and each delivery marked processed, ignored or failed with
//! its reason. Mapping is idempotent: the store keeps the newest copy of an order, so a
//! repeat or a replay of an old delivery changes nothing.

use super::Worker;
use crate::model::{Order, ProviderKind, StreamKey};
use crate::providers::ProviderError;
use crate::store::{Batch, Delivery, DeliveryDone, DeliveryState, Store, StoreError};
use async_trait::async_trait;
use chrono::Utc;
use futures_util::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Deliveries read per round.
const ROUND_SIZE: i64 = 500;
/// Deliveries mapped at once (those that read the upstream wait at its rate gate).
const CONCURRENT_MAPPINGS: usize = 8;
/// How often an idle worker looks for rows another process put back to pending (a replay).
const IDLE_LOOK: Duration = Duration::from_secs(1);
/// The pause after a round that could not reach the upstream or the database.
const ERROR_PAUSE: Duration = Duration::from_secs(2);
/// A test switch: deliveries of this provider fail to map, as with a mapper that does not
/// know a payload yet, so a replay after the "fix" can be tested.
const BROKEN_MAPPING_SWITCH: &str = "ORDERSYNC_TEST_BROKEN_MAPPING";

/// What one delivery means.
#[derive(Debug)]
pub enum Mapped {
    /// Orders to store (none for an event that only confirms what is stored).
    Orders(Vec<Order>),
    /// Stored and deliberately not acted on (an event ordersync does not map).
    Ignored(String),
    /// Cannot be mapped: kept in the inbox with the reason, for a replay after a fix.
    Failed(String),
}

/// One provider account's mapping from a stored delivery to orders.
#[async_trait]
pub trait DeliveryMapper: Send + Sync {
    /// The stream the orders belong to.
    fn stream(&self) -> &StreamKey;
    /// An `Err` is an upstream read that failed; a retryable one leaves the delivery pending,
    /// refused credentials stop the worker.
    async fn map(&self, delivery: &Delivery) -> Result<Mapped, ProviderError>;
}

#[derive(Debug, thiserror::Error)]
pub enum InboxError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Provider(ProviderError),
}

/// What one round did.
#[derive(Debug, Default)]
struct Round {
    read: usize,
    written: u64,
    processed: usize,
    ignored: usize,
    failed: usize,
    waiting: usize,
    error: Option<InboxError>,
}

pub struct InboxWorker {
    mapper: Arc<dyn DeliveryMapper>,
    store: Arc<dyn Store>,
    wake: Arc<Notify>,
    stopped: AtomicBool,
}

impl InboxWorker {
    pub fn new(mapper: Arc<dyn DeliveryMapper>, store: Arc<dyn Store>, wake: Arc<Notify>) -> Self {
        InboxWorker {
            mapper,
            store,
            wake,
            stopped: AtomicBool::new(false),
        }
    }

    fn provider(&self) -> ProviderKind {
        self.mapper.stream().provider
    }

    fn account(&self) -> &str {
        &self.mapper.stream().account
    }

    fn broken_by_switch(&self) -> bool {
        std::env::var(BROKEN_MAPPING_SWITCH)
            .is_ok_and(|providers| providers.split(',').any(|p| p == self.provider().as_str()))
    }

    async fn round(&self) -> Round {
        let mut round = Round::default();
        let pending = match self
            .store
            .pending_deliveries(self.provider().as_str(), self.account(), ROUND_SIZE)
            .await
        {
            Ok(pending) => pending,
            Err(error) => {
                round.error = Some(error.into());
                return round;
            }
        };
        round.read = pending.len();
        let broken = self.broken_by_switch();
        let mappings = pending.into_iter().map(|delivery| {
            let mapper = self.mapper.clone();
            async move {
                if broken {
                    let reason = format!("mapping switched off by {BROKEN_MAPPING_SWITCH}");
                    return (delivery.id, Ok(Mapped::Failed(reason)));
                }
                let mapped = mapper.map(&delivery).await;
                (delivery.id, mapped)
            }
        });
        let mapped: Vec<(i64, Result<Mapped, ProviderError>)> =
            futures_util::stream::iter(mappings)
                .buffered(CONCURRENT_MAPPINGS)
                .collect()
                .await;
        let mut orders = Vec::new();
        let mut done = Vec::new();
        for (id, result) in mapped {
            let (state, note) = match result {
                Ok(Mapped::Orders(mut mapped)) => {
                    orders.append(&mut mapped);
                    round.processed += 1;
                    (DeliveryState::Processed, None)
                }
                Ok(Mapped::Ignored(reason)) => {
                    round.ignored += 1;
                    (DeliveryState::Ignored, Some(reason))
                }
                Ok(Mapped::Failed(reason)) => {
                    round.failed += 1;
                    (DeliveryState::Failed, Some(reason))
                }
                Err(error) => {
                    round.waiting += 1;
                    round.error.get_or_insert(InboxError::Provider(error));
                    continue;
                }
            };
            done.push(DeliveryDone { id, state, note });
        }
        if !orders.is_empty() {
            let committed = self
                .store
                .commit_batch(&Batch {
                    stream: self.mapper.stream(),
                    orders: &orders,
                    quarantined: &[],
                    cursor: None,
                    seen_at: Utc::now(),
                })
                .await;
            match committed {
                Ok(outcome) => round.written = outcome.written,
                Err(error) => {
                    // Nothing is marked: every delivery of the round is mapped again.
                    round.waiting = round.read;
                    round.error = Some(error.into());
                    return round;
                }
            }
        }
        if let Err(error) = self.store.finish_deliveries(&done).await {
            round.error.get_or_insert(error.into());
        }
        round
    }

    fn log(&self, round: &Round) {
        if round.read == 0 && round.error.is_none() {
            return;
        }
        let (provider, account) = (self.provider(), self.account());
        match &round.error {
            Some(InboxError::Provider(error @ ProviderError::Unauthorized { .. })) => {
                self.stopped.store(true, Ordering::Relaxed);
                tracing::error!(%provider, %account, %error, "the upstream rejected our credentials; this inbox stops until ordersync is restarted with working ones (deliveries are still stored)");
            }
            Some(error) => {
                tracing::warn!(%provider, %account, %error, waiting = round.waiting, "inbox round incomplete; pending deliveries are tried again")
            }
            None => {
                tracing::debug!(%provider, %account, read = round.read, written = round.written, ignored = round.ignored, failed = round.failed, "inbox round")
            }
        }
        if round.failed > 0 {
            tracing::warn!(%provider, %account, failed = round.failed, "deliveries could not be mapped; kept with their reason (`ordersync inbox list --state failed`, then `ordersync inbox replay` after a fix)");
        }
    }
}

#[async_trait]
impl Worker for InboxWorker {
    fn name(&self) -> String {
        format!("inbox of {}/{}", self.provider(), self.account())
    }

    fn account_id(&self) -> crate::lease::AccountId {
        crate::lease::AccountId::new(self.provider(), self.account())
    }

    async fn run(&self, shutdown: &CancellationToken) {
        while !shutdown.is_cancelled() && !self.stopped.load(Ordering::Relaxed) {
            let round = self.round().await;
            self.log(&round);
            let pause = if round.error.is_some() {
                ERROR_PAUSE
            } else if round.read as i64 == ROUND_SIZE {
                continue;
            } else {
                IDLE_LOOK
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.wake.notified(), if round.error.is_none() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    async fn drain(&self, shutdown: &CancellationToken) -> Result<Value, String> {
        let mut total = Round::default();
        loop {
            let round = self.round().await;
            self.log(&round);
            total.read += round.read;
            total.written += round.written;
            total.processed += round.processed;
            total.ignored += round.ignored;
            total.failed += round.failed;
            if let Some(error) = round.error {
                return Err(error.to_string());
            }
            if round.read == 0 || shutdown.is_cancelled() {
                break;
            }
        }
        Ok(json!({
            "inbox": format!("{}/{}", self.provider(), self.account()),
            "deliveries": total.read, "processed": total.processed, "written": total.written,
            "ignored": total.ignored, "failed": total.failed,
        }))
    }
}
