//! Lagerkoll: keeping the configured webhooks registered (at start and on a schedule), and
//! mapping their deliveries into orders.
//!
//! Reconciliation is a plan, then its application: the plan compares the configured list with
//! what Lagerkoll lists per feature and with the registrations ordersync recorded, so only
//! webhooks ordersync made are ever deleted. `ordersync lagerkoll webhooks` prints the same
//! plan.

use super::inbox::{DeliveryMapper, Mapped};
use super::job::Job;
use crate::model::{ProviderKind, StreamKey};
use crate::providers::ProviderError;
use crate::providers::lagerkoll::config::{LagerkollAccount, WantedWebhook};
use crate::providers::lagerkoll::wire::{self, FeatureId, Webhook, WebhookId};
use crate::providers::lagerkoll::{LagerkollClient, LagerkollError};
use crate::store::{Delivery, Registration, Store, StoreError};
use async_trait::async_trait;
use chrono::Utc;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The resource name of the registration stream in `sync_cursors`.
pub const WEBHOOKS_RESOURCE: &str = "webhooks";
/// The resource name of a store's orders.
pub const ORDERS_RESOURCE: &str = "orders";

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Lagerkoll(#[from] LagerkollError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Reconciliation ran, but some webhooks are not as configured.
    #[error("{}", .0.join("; "))]
    Unresolved(Vec<String>),
    #[error("stopped by shutdown")]
    Stopped,
}

/// What reconciliation would do, or did.
#[derive(Debug, Default)]
pub struct Plan {
    /// Ours, registered as configured.
    pub keep: Vec<Registration>,
    /// Configured and listed with our URL, but not recorded (a create whose answer was lost,
    /// or a database restored from before it): recorded as ours.
    pub adopt: Vec<(WantedWebhook, Webhook)>,
    pub create: Vec<WantedWebhook>,
    /// Ours and listed, no longer configured.
    pub delete: Vec<Registration>,
    /// Recorded as ours but no longer listed (deleted in Lagerkoll): the record goes.
    pub forget: Vec<Registration>,
    /// Listed and not ours: never touched.
    pub others: Vec<Webhook>,
    pub problems: Vec<String>,
}

impl Plan {
    pub fn changes(&self) -> usize {
        self.adopt.len() + self.create.len() + self.delete.len() + self.forget.len()
    }
}

pub struct Reconciler {
    client: Arc<LagerkollClient>,
    store: Arc<dyn Store>,
    account: LagerkollAccount,
    stream: StreamKey,
}

impl Reconciler {
    pub fn new(
        client: Arc<LagerkollClient>,
        store: Arc<dyn Store>,
        account: LagerkollAccount,
    ) -> Self {
        Reconciler {
            stream: StreamKey {
                provider: ProviderKind::Lagerkoll,
                account: account.name.clone(),
                resource: WEBHOOKS_RESOURCE.to_owned(),
            },
            client,
            store,
            account,
        }
    }

    fn registration(&self, wanted: &WantedWebhook, webhook: &Webhook) -> Registration {
        Registration {
            provider: ProviderKind::Lagerkoll.as_str().to_owned(),
            account: self.account.name.clone(),
            registration_id: webhook.id.to_string(),
            guid: webhook.guid.clone(),
            feature_id: wanted.feature_id.clone(),
            feature_method: wanted.feature_method.clone(),
            group_wide: wanted.group_wide,
            url: webhook.url.clone().unwrap_or_default(),
            created_at: Utc::now(),
        }
    }

    /// Checks the credentials: the configured store must be one they reach.
    pub async fn check_store(&self) -> Result<(), ReconcileError> {
        let answer = self.client.stores().await?;
        if answer
            .stores
            .iter()
            .any(|s| s.store_id == self.account.store)
        {
            return Ok(());
        }
        let listed: Vec<i64> = answer.stores.iter().map(|s| s.store_id).collect();
        Err(LagerkollError::StopStore(format!(
            "store {} is not among the stores this api_key reaches ({listed:?}); fix `store`",
            self.account.store
        ))
        .into())
    }

    /// Compares the configuration with Lagerkoll and with what ordersync recorded.
    pub async fn plan(&self) -> Result<Plan, ReconcileError> {
        let provider = ProviderKind::Lagerkoll.as_str();
        let recorded = self
            .store
            .registrations(provider, &self.account.name)
            .await?;
        let our_url = self.account.webhook_url();
        let features: BTreeSet<FeatureId> = self
            .account
            .webhooks
            .iter()
            .map(|w| FeatureId(w.feature_id.clone()))
            .chain(recorded.iter().map(|r| FeatureId(r.feature_id.clone())))
            .collect();
        let mut plan = Plan::default();
        let mut listed: BTreeMap<FeatureId, Vec<Webhook>> = BTreeMap::new();
        for feature in features {
            match self.client.webhooks(&feature).await {
                Ok(webhooks) => {
                    listed.insert(feature, webhooks);
                }
                Err(LagerkollError::Permanent(message)) => {
                    plan.problems
                        .push(format!("feature `{}`: {message}", feature.0));
                }
                Err(other) => return Err(other.into()),
            }
        }
        let recorded_ids: BTreeSet<&str> = recorded
            .iter()
            .map(|r| r.registration_id.as_str())
            .collect();
        let mut claimed: BTreeSet<i64> = BTreeSet::new();
        let mut wanted_left: Vec<&WantedWebhook> = self.account.webhooks.iter().collect();
        for registration in &recorded {
            let feature = FeatureId(registration.feature_id.clone());
            let Some(webhooks) = listed.get(&feature) else {
                // The feature could not be listed: leave the record until it can.
                wanted_left.retain(|w| {
                    !(w.feature_id == registration.feature_id
                        && w.feature_method == registration.feature_method)
                });
                continue;
            };
            let upstream = webhooks
                .iter()
                .find(|w| w.id.to_string() == registration.registration_id);
            let wanted = wanted_left.iter().position(|w| {
                w.feature_id == registration.feature_id
                    && w.feature_method == registration.feature_method
                    && w.group_wide == registration.group_wide
            });
            match (upstream, wanted) {
                (Some(webhook), Some(position)) => {
                    claimed.insert(webhook.id);
                    wanted_left.remove(position);
                    if webhook.url.as_deref() != Some(our_url.as_str()) {
                        plan.problems.push(format!(
                            "webhook {} ({} {}) does not point at our URL: Lagerkoll did not accept our webhook URL (it may be fixed by the feature's server settings)",
                            webhook.id, registration.feature_id, registration.feature_method
                        ));
                    }
                    plan.keep.push(registration.clone());
                }
                (Some(webhook), None) => {
                    claimed.insert(webhook.id);
                    plan.delete.push(registration.clone());
                }
                (None, _) => plan.forget.push(registration.clone()),
            }
        }
        for wanted in wanted_left {
            let feature = FeatureId(wanted.feature_id.clone());
            let Some(webhooks) = listed.get(&feature) else {
                continue;
            };
            let adoptable = webhooks.iter().find(|w| {
                !claimed.contains(&w.id)
                    && !recorded_ids.contains(w.id.to_string().as_str())
                    && w.feature_method == wanted.feature_method
                    && w.url.as_deref() == Some(our_url.as_str())
            });
            match adoptable {
                Some(webhook) => {
                    claimed.insert(webhook.id);
                    plan.adopt.push((wanted.clone(), webhook.clone()));
                }
                None => plan.create.push(wanted.clone()),
            }
        }
        plan.others = listed
            .into_values()
            .flatten()
            .filter(|w| !claimed.contains(&w.id))
            .collect();
        Ok(plan)
    }

    /// Applies a plan: adopts, creates (and fires each new webhook once), deletes ours that
    /// are no longer configured, forgets records of webhooks gone upstream.
    pub async fn apply(
        &self,
        plan: &mut Plan,
        shutdown: &CancellationToken,
    ) -> Result<Applied, ReconcileError> {
        let provider = ProviderKind::Lagerkoll.as_str();
        let our_url = self.account.webhook_url();
        let mut applied = Applied::default();
        for (wanted, webhook) in &plan.adopt {
            self.store
                .save_registration(&self.registration(wanted, webhook))
                .await?;
            applied.adopted += 1;
        }
        for wanted in &plan.create {
            if shutdown.is_cancelled() {
                return Err(ReconcileError::Stopped);
            }
            let feature = FeatureId(wanted.feature_id.clone());
            let created = match self
                .client
                .create(
                    &feature,
                    &wanted.feature_method,
                    &our_url,
                    wanted.group_wide,
                )
                .await
            {
                Ok(created) => created,
                Err(LagerkollError::Permanent(message)) => {
                    plan.problems.push(format!(
                        "creating {} {}: {message}",
                        wanted.feature_id, wanted.feature_method
                    ));
                    continue;
                }
                Err(other) => return Err(other.into()),
            };
            // Recorded before it is fired: its delivery must find it registered.
            self.store
                .save_registration(&self.registration(wanted, &created))
                .await?;
            applied.created += 1;
            if created.url.as_deref().is_some_and(|url| url != our_url) {
                plan.problems.push(format!(
                    "webhook {} ({} {}): Lagerkoll did not accept our webhook URL (it may be fixed by the feature's server settings)",
                    created.id, wanted.feature_id, wanted.feature_method
                ));
                continue;
            }
            match self.client.execute(&created.guid).await {
                Ok(()) => applied.fired += 1,
                Err(LagerkollError::Permanent(message)) => plan.problems.push(format!(
                    "firing webhook {} once to prove the path: {message}",
                    created.id
                )),
                Err(other) => return Err(other.into()),
            }
        }
        for registration in &plan.delete {
            if shutdown.is_cancelled() {
                return Err(ReconcileError::Stopped);
            }
            let id = registration.registration_id.parse().map(WebhookId);
            match id {
                Ok(id) => match self.client.delete(id).await {
                    Ok(()) => {}
                    Err(LagerkollError::Permanent(message)) => {
                        plan.problems
                            .push(format!("deleting webhook {}: {message}", id.0));
                        continue;
                    }
                    Err(other) => return Err(other.into()),
                },
                Err(_) => plan.problems.push(format!(
                    "recorded webhook id `{}` is not a number; forgotten without a delete",
                    registration.registration_id
                )),
            }
            self.store
                .drop_registration(provider, &self.account.name, &registration.registration_id)
                .await?;
            applied.deleted += 1;
        }
        for registration in &plan.forget {
            self.store
                .drop_registration(provider, &self.account.name, &registration.registration_id)
                .await?;
            applied.forgotten += 1;
        }
        Ok(applied)
    }
}

/// What applying a plan did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub adopted: usize,
    pub created: usize,
    pub fired: usize,
    pub deleted: usize,
    pub forgotten: usize,
}

impl Reconciler {
    async fn pass(&self, shutdown: &CancellationToken) -> Result<(Plan, Applied), ReconcileError> {
        self.check_store().await?;
        let mut plan = self.plan().await?;
        let applied = self.apply(&mut plan, shutdown).await?;
        Ok((plan, applied))
    }
}

impl ReconcileError {
    /// A failure that trying again soon may not meet.
    fn is_passing(&self) -> bool {
        matches!(
            self,
            ReconcileError::Store(_) | ReconcileError::Lagerkoll(LagerkollError::Upstream(_))
        )
    }
}

#[async_trait]
impl Job for Reconciler {
    type Report = Value;
    type Error = ReconcileError;

    fn stream(&self) -> &StreamKey {
        &self.stream
    }

    async fn run(&self, shutdown: &CancellationToken) -> Result<Value, ReconcileError> {
        // The schedule is hours apart: a pass that failed on something passing (the database
        // busy, Lagerkoll's server errors) is tried again now, from a fresh plan, which adopts
        // whatever the failed pass created.
        let mut delays = [1, 2, 4, 8].into_iter().map(std::time::Duration::from_secs);
        let (plan, applied) = loop {
            match self.pass(shutdown).await {
                Ok(done) => break done,
                Err(error) if error.is_passing() => {
                    let Some(delay) = delays.next() else {
                        return Err(error);
                    };
                    tracing::warn!(stream = %self.stream, %error, retry_in_s = delay.as_secs(), "reconciliation failed; trying again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Err(ReconcileError::Stopped),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                Err(error) => return Err(error),
            }
        };
        if !plan.problems.is_empty() {
            return Err(ReconcileError::Unresolved(plan.problems));
        }
        Ok(json!({
            "kept": plan.keep.len(), "adopted": applied.adopted, "created": applied.created,
            "fired": applied.fired, "deleted": applied.deleted, "forgotten": applied.forgotten,
            "others_left_alone": plan.others.len(),
        }))
    }

    fn refused_credentials(error: &ReconcileError) -> bool {
        matches!(
            error,
            ReconcileError::Lagerkoll(LagerkollError::StopStore(_))
        )
    }
}

/// Lagerkoll deliveries into orders, by feature method.
pub struct LagerkollMapper {
    stream: StreamKey,
    store_id: i64,
    order_methods: Vec<String>,
    currency: String,
}

impl LagerkollMapper {
    pub fn new(account: &LagerkollAccount) -> Self {
        LagerkollMapper {
            stream: StreamKey {
                provider: ProviderKind::Lagerkoll,
                account: account.name.clone(),
                resource: ORDERS_RESOURCE.to_owned(),
            },
            store_id: account.store,
            order_methods: account.order_methods.clone(),
            currency: account.currency.clone(),
        }
    }
}

#[async_trait]
impl DeliveryMapper for LagerkollMapper {
    fn stream(&self) -> &StreamKey {
        &self.stream
    }

    async fn map(&self, delivery: &Delivery) -> Result<Mapped, ProviderError> {
        let parsed = match wire::Delivery::parse(delivery.body.as_bytes()) {
            Ok(parsed) => parsed,
            Err(reason) => return Ok(Mapped::Failed(reason)),
        };
        let method = parsed.feature_method.as_deref().unwrap_or("");
        if !self.order_methods.iter().any(|m| m == method) {
            return Ok(Mapped::Ignored(format!(
                "feature method `{method}` is not one of order_methods; stored, not mapped"
            )));
        }
        if wire::is_empty_data(parsed.data) {
            return Ok(Mapped::Ignored(
                "no data (a test delivery, as the registration's execute sends)".into(),
            ));
        }
        let Some(data) = parsed.data else {
            return Ok(Mapped::Ignored("no data".into()));
        };
        let at = wire::delivery_time(&parsed).unwrap_or(delivery.received_at);
        Ok(
            match wire::map_order(
                &self.stream.account,
                self.store_id,
                data,
                &self.currency,
                at,
            ) {
                Ok(order) => Mapped::Orders(vec![order]),
                Err(reason) => Mapped::Failed(reason),
            },
        )
    }
}
