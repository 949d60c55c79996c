//! KassaForte submissions: each `submit` action is one `POST /v1/order`. That request creates an
//! order, is not idempotent and has no lookup, so it is sent at most once per attempt that can
//! prove it never left: a request that may have reached KassaForte makes the action `unknown`
//! for a person to resolve, never a second order.

use super::{Executor, Verdict};
use crate::model::{Action, ActionKind, Money, Order, OrderKey, ProviderKind, StreamKey};
use crate::providers::ProviderError;
use crate::providers::kassaforte::SubmitAnswer;
use crate::providers::kassaforte::config::TillOffline;
use crate::providers::kassaforte::conflict::StaleDocument;
use crate::providers::kassaforte::submission::Submission;
use crate::providers::kassaforte::wire::valid_order_id;
use crate::store::{Batch, Resolution, ShopDocumentKind, ShopState, Store, StoreError};
use crate::sync::kassaforte::{ORDERS_RESOURCE, ShopMonitor};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use std::sync::Arc;

pub struct KassaForteExecutor {
    monitor: Arc<ShopMonitor>,
    store: Arc<dyn Store>,
    /// This process's name in the outbox's claims: the marker before sending needs it.
    worker: String,
}

impl KassaForteExecutor {
    pub fn new(monitor: Arc<ShopMonitor>, store: Arc<dyn Store>, worker: &str) -> Self {
        KassaForteExecutor {
            monitor,
            store,
            worker: worker.to_owned(),
        }
    }

    /// The shop's state no older than one open-rate poll interval: read again when it is.
    async fn fresh_state(&self, now: DateTime<Utc>) -> Result<ShopState, String> {
        let shop = self.monitor.shop();
        let stored = self
            .store
            .shop_state(ProviderKind::KassaForte.as_str(), &shop.name)
            .await
            .map_err(|e| e.to_string())?;
        let max_age = chrono::Duration::from_std(shop.infos_every_open)
            .unwrap_or(chrono::Duration::seconds(60));
        match stored {
            Some(state) if now - state.observed_at < max_age => Ok(state),
            _ => self
                .monitor
                .poll()
                .await
                .map(|polled| polled.state)
                .map_err(|e| format!("cannot read the shop's state before submitting: {e}")),
        }
    }

    /// Why the shop cannot take this order now, before any request: closed by its hours or by
    /// hand, or an item it marks unavailable.
    async fn refusal(
        &self,
        submission: &Submission,
        state: &ShopState,
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let shop = self.monitor.shop();
        if self.monitor.accepting_at(now).await? == Some(false) {
            return Ok(Some(format!(
                "shop closed: {} is outside the shop's accepting window (open hours in {}); submit when it opens",
                now.with_timezone(&shop.time_zone)
                    .format("%a %Y-%m-%d %H:%M"),
                shop.time_zone
            )));
        }
        let kind = &submission.delivery_type;
        if state.service_open(kind) == Some(false) {
            return Ok(Some(format!(
                "shop closed for {kind}: the shop closed it by hand (shopOpenStatus.{kind} is false)"
            )));
        }
        let unavailable: Vec<&str> = submission
            .item_numbers
            .iter()
            .filter(|item| state.unavailable_products.contains(item))
            .map(String::as_str)
            .collect();
        if !unavailable.is_empty() {
            return Ok(Some(format!(
                "unavailable products: {} (the shop marks them unavailable; remove them from the order)",
                unavailable.join(", ")
            )));
        }
        Ok(None)
    }

    /// Clears the sending mark once the answer says what happened, keeping a 201's order id on
    /// the action at once; only a lost answer keeps the mark.
    async fn keep_answer(
        &self,
        action: &Action,
        answer: &Result<SubmitAnswer, ProviderError>,
        submitted_at: DateTime<Utc>,
    ) {
        let result = match answer {
            Ok(SubmitAnswer::Created { order_id, .. }) => {
                Some(created_result(order_id, submitted_at))
            }
            Ok(_)
            | Err(
                ProviderError::Connect(_)
                | ProviderError::RateLimited { .. }
                | ProviderError::Server { .. }
                | ProviderError::Unauthorized { .. },
            ) => None,
            Err(_) => return,
        };
        if let Err(error) = self
            .store
            .clear_sending(action.id, &self.worker, result.as_ref())
            .await
        {
            tracing::warn!(action = action.id, %error, "cannot record the submission's answer before the batch is recorded");
        }
    }

    /// A submission KassaForte created: the order row (so it is followed) and the result. The
    /// id is kept on the action either way, so a failed row write is logged, not retried.
    async fn created(
        &self,
        action: &Action,
        submission: &Submission,
        order_id: &str,
        payload: String,
        submitted_at: DateTime<Utc>,
    ) -> Verdict {
        let order = submitted_order(
            action,
            submission,
            order_id,
            payload,
            submitted_at,
            &self.monitor.shop().currency,
        );
        match record_order(&*self.store, order).await {
            Ok(()) => self.monitor.note_submitted(),
            Err(error) => {
                tracing::error!(action = action.id, %order_id, %error, "submitted, but the order row could not be written; it is not followed")
            }
        }
        Verdict::Done(created_result(order_id, submitted_at))
    }

    async fn execute_one(&self, action: &Action) -> Verdict {
        if action.provider != ProviderKind::KassaForte.as_str() {
            return Verdict::Refused(format!("provider `{}` is not kassaforte", action.provider));
        }
        if action.kind != ActionKind::Submit.as_str() {
            return Verdict::Refused(format!(
                "kind: KassaForte takes submit only, not `{}`",
                action.kind
            ));
        }
        let submission =
            match Submission::parse(action.request.get("order").unwrap_or(&Value::Null)) {
                Ok(submission) => submission,
                Err(error) => return Verdict::Refused(error),
            };
        // An earlier attempt got its 201 and kept it, but its batch was not recorded: done, and
        // the order row written again in case the crash came before it (an older copy never
        // replaces a newer one).
        if action.sending_since.is_none()
            && let Some(result) = action.result.as_ref()
            && let Some(order_id) = result.get("orderId").and_then(Value::as_str)
        {
            let submitted_at = result
                .get("submittedAt")
                .and_then(|t| serde_json::from_value::<DateTime<Utc>>(t.clone()).ok())
                .unwrap_or(action.created_at);
            return self
                .created(
                    action,
                    &submission,
                    order_id,
                    result.to_string(),
                    submitted_at,
                )
                .await;
        }
        if let Some(since) = action.sending_since {
            return Verdict::Unknown(format!(
                "an earlier attempt began sending this order at {since} and stopped before its answer was recorded; it may have reached KassaForte, which has no lookup. Check the till, then `ordersync action resolve {} --submitted-as <order id>` or `--not-submitted`",
                action.id
            ));
        }
        let now = self.monitor.now();
        let state = match self.fresh_state(now).await {
            Ok(state) => state,
            Err(error) => return Verdict::Transient(error),
        };
        match self.refusal(&submission, &state, now).await {
            Ok(Some(reason)) => return Verdict::Refused(reason),
            Ok(None) => {}
            Err(error) => return Verdict::Transient(error.to_string()),
        }
        let shop = self.monitor.shop();
        if state.connection_ok == Some(false) && shop.till_offline == TillOffline::Hold {
            // Looked at again with the next state poll; holding uses up no attempt.
            return Verdict::Deferred(
                "held: the shop's till is not connected (connectionStatus false); sent when it is back (till_offline = \"hold\")".into(),
                shop.infos_every_open,
            );
        }
        match self
            .store
            .mark_sending(action.id, &self.worker, Utc::now())
            .await
        {
            Ok(true) => {}
            Ok(false) => return Verdict::Transient("the claim expired before sending".into()),
            Err(error) => return Verdict::Transient(error.to_string()),
        }
        let answer = self.monitor.client().submit(&submission.wire_body).await;
        let submitted_at = Utc::now();
        self.keep_answer(action, &answer, submitted_at).await;
        match answer {
            Ok(SubmitAnswer::Created { order_id, body }) => {
                self.created(action, &submission, &order_id, body, submitted_at)
                    .await
            }
            Ok(SubmitAnswer::Conflict(conflict)) => {
                let mut reason = conflict.describe();
                if let Some(stale) = conflict.stale_document() {
                    let document = match stale {
                        StaleDocument::Menu => ShopDocumentKind::Menu,
                        StaleDocument::DeliveryCosts => ShopDocumentKind::DeliveryCosts,
                    };
                    match self.monitor.poll().await {
                        Ok(polled) if polled.fetched.contains(&document) => {
                            let what = match stale {
                                StaleDocument::Menu => "menu changed",
                                StaleDocument::DeliveryCosts => "delivery costs changed",
                            };
                            reason =
                                format!("{what}: {reason}; re-price the order and submit it again");
                        }
                        Ok(_) => {}
                        Err(error) => {
                            tracing::warn!(action = action.id, %error, "cannot check whether the shop's documents moved")
                        }
                    }
                }
                Verdict::Refused(reason)
            }
            Ok(SubmitAnswer::Refused { status, message }) => Verdict::Refused(format!(
                "HTTP {status}: {message}{}",
                if status == 400 {
                    " (the body does not match KassaForte's schema)"
                } else {
                    ""
                }
            )),
            // Nothing was created: no connection, a 429 past its retries, a 5xx, bad credentials.
            Err(
                error @ (ProviderError::Connect(_)
                | ProviderError::RateLimited { .. }
                | ProviderError::Server { .. }
                | ProviderError::Unauthorized { .. }),
            ) => Verdict::Transient(error.to_string()),
            Err(error) => Verdict::Unknown(format!(
                "{error}: the order may have reached KassaForte, which has no lookup, so it is not sent again. Check the till, then `ordersync action resolve {} --submitted-as <order id>` or `--not-submitted`",
                action.id
            )),
        }
    }
}

#[async_trait]
impl Executor for KassaForteExecutor {
    async fn execute(&self, actions: &[Action]) -> Vec<Verdict> {
        let mut verdicts = Vec::with_capacity(actions.len());
        for action in actions {
            verdicts.push(self.execute_one(action).await);
        }
        verdicts
    }
}

/// What a submitted action keeps: the order id and when KassaForte took it.
fn created_result(order_id: &str, submitted_at: DateTime<Utc>) -> Value {
    json!({ "orderId": order_id, "submittedAt": submitted_at })
}

/// The `orders` row of a submitted order: channel = delivery type, external id = its id.
fn submitted_order(
    action: &Action,
    submission: &Submission,
    order_id: &str,
    payload: String,
    at: DateTime<Utc>,
    currency: &str,
) -> Order {
    Order {
        key: OrderKey {
            provider: ProviderKind::KassaForte,
            account: action.account.clone(),
            channel: submission.delivery_type.clone(),
            external_id: order_id.to_owned(),
        },
        // 201: validated and awaiting transmission to the till.
        status: Some("pending".to_owned()),
        payment_status: None,
        shipping_status: None,
        total: Money::from_minor(submission.sum_minor, currency).ok(),
        upstream_created_at: Some(at),
        upstream_updated_at: at,
        payload,
    }
}

async fn record_order(store: &dyn Store, order: Order) -> Result<(), StoreError> {
    let stream = StreamKey {
        provider: ProviderKind::KassaForte,
        account: order.key.account.clone(),
        resource: ORDERS_RESOURCE.to_owned(),
    };
    let seen_at = order.upstream_updated_at;
    store
        .commit_batch(&Batch {
            stream: &stream,
            orders: std::slice::from_ref(&order),
            quarantined: &[],
            cursor: None,
            seen_at,
        })
        .await
        .map(|_| ())
}

/// What a person says about an `unknown` submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolve {
    /// It reached KassaForte under this 14-digit id: succeeded, and the order is followed.
    SubmittedAs(String),
    /// It did not: queued again.
    NotSubmitted,
}

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("--submitted-as: `{0}` is not a KassaForte order id (exactly 14 digits)")]
    InvalidOrderId(String),
    #[error("action {0} is not in state `unknown`; only an unknown submission is resolved")]
    NotUnknown(i64),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Settles an `unknown` submission; with an id, the order gets its row and is followed.
pub async fn resolve(
    store: &dyn Store,
    id: i64,
    resolve: &Resolve,
    currency: &str,
) -> Result<Action, ResolveError> {
    let resolution = match resolve {
        Resolve::SubmittedAs(order_id) if !valid_order_id(order_id) => {
            return Err(ResolveError::InvalidOrderId(order_id.clone()));
        }
        Resolve::SubmittedAs(order_id) => Resolution::Submitted(
            json!({ "orderId": order_id, "resolvedAt": Utc::now(), "resolvedBy": "operator" }),
        ),
        Resolve::NotSubmitted => Resolution::NotSubmitted,
    };
    let action = store
        .resolve_unknown(id, &resolution)
        .await?
        .ok_or(ResolveError::NotUnknown(id))?;
    if let Resolve::SubmittedAs(order_id) = resolve
        && let Ok(submission) =
            Submission::parse(action.request.get("order").unwrap_or(&Value::Null))
    {
        let body = json!({ "orderId": order_id }).to_string();
        let order = submitted_order(&action, &submission, order_id, body, Utc::now(), currency);
        record_order(store, order).await?;
    }
    Ok(action)
}
