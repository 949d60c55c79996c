//! Graas actions: accept and cancel batched into `PUT /v1/orders`, ASNs one `POST /v1/asn` each.

use super::{Executor, Verdict};
use crate::model::{Action, ActionKind, ProviderKind};
use crate::providers::ProviderError;
use crate::providers::graas::GraasClient;
use crate::providers::graas::outbound::{
    ACCEPTED, AsnRequest, CANCELLED, CancelDetails, ItemRef, ItemResult, OrderUpdate, SiteRef,
};
use crate::store::{NewAsn, Store};
use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

pub struct GraasExecutor {
    client: Arc<GraasClient>,
    store: Arc<dyn Store>,
    account: String,
    /// `site.name` per channel, as stored orders showed it: it names the marketplace, so one
    /// order per channel tells it for all.
    site_names: Mutex<HashMap<String, String>>,
}

impl GraasExecutor {
    pub fn new(client: Arc<GraasClient>, store: Arc<dyn Store>, account: &str) -> Self {
        GraasExecutor {
            client,
            store,
            account: account.to_owned(),
            site_names: Mutex::new(HashMap::new()),
        }
    }
}

/// The `request` column of an accept or cancel, as the CLI and API write it (and as a row
/// inserted by SQL may: `{}` accepts or cancels the whole order).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OrderActionRequest {
    #[serde(default)]
    items: Vec<ItemRef>,
    #[serde(default)]
    reason: Option<String>,
}

/// The reference under which an ASN is created and looked up again: the caller's
/// `supplierRef`, else one derived from the action's id, so a retry finds what an attempt
/// with an unknown outcome created.
fn supplier_ref(action: &Action, asn: &AsnRequest) -> String {
    asn.supplier_ref
        .clone()
        .unwrap_or_else(|| format!("ordersync-{}", action.id))
}

impl GraasExecutor {
    /// `site.name` as Graas showed it on the channel's stored orders; for a channel with none
    /// synced yet, the channel name without its `-<n>` suffix (`lazada-1` → `Lazada`).
    /// `unsynced` holds the channels this batch already found no order of: one query per
    /// channel and batch, not one per action.
    async fn site_name(&self, channel: &str, unsynced: &mut HashSet<String>) -> String {
        if let Some(name) = self.cached_site_name(channel) {
            return name;
        }
        if !unsynced.contains(channel)
            && let Ok(Some(payload)) = self
                .store
                .channel_payload(ProviderKind::Graas.as_str(), &self.account, channel)
                .await
            && let Ok(order) = serde_json::from_str::<Value>(&payload)
            && let Some(name) = order.pointer("/site/name").and_then(Value::as_str)
        {
            if let Ok(mut names) = self.site_names.lock() {
                names.insert(channel.to_owned(), name.to_owned());
            }
            return name.to_owned();
        }
        unsynced.insert(channel.to_owned());
        let base = channel
            .rsplit_once('-')
            .filter(|(_, n)| n.chars().all(|c| c.is_ascii_digit()))
            .map_or(channel, |(base, _)| base);
        let mut chars = base.chars();
        chars
            .next()
            .map(|first| first.to_uppercase().chain(chars).collect())
            .unwrap_or_default()
    }

    fn cached_site_name(&self, channel: &str) -> Option<String> {
        self.site_names.lock().ok()?.get(channel).cloned()
    }

    async fn order_update(
        &self,
        action: &Action,
        kind: ActionKind,
        unsynced: &mut HashSet<String>,
    ) -> Result<OrderUpdate, String> {
        let (Some(channel), Some(order_id)) = (&action.channel, &action.external_id) else {
            return Err("channel and external_id are required for accept and cancel".into());
        };
        let request: OrderActionRequest = serde_path_to_error::deserialize(&action.request)
            .map_err(|e| format!("request.{}: {}", e.path(), e.inner()))?;
        let cancel = kind == ActionKind::Cancel;
        if !cancel && request.reason.is_some() {
            return Err("request.reason: applies to cancel only".into());
        }
        Ok(OrderUpdate {
            order_id: order_id.clone(),
            site: SiteRef {
                name: self.site_name(channel, unsynced).await,
                nick_name_id: channel.clone(),
            },
            order_status: if cancel { CANCELLED } else { ACCEPTED },
            order_items: request.items,
            need_to_update_order: cancel.then_some(true),
            cancel_details: if cancel {
                Some(CancelDetails {
                    cancel_reason: request.reason.unwrap_or_else(|| "OUT_OF_STOCK".into()),
                })
            } else {
                None
            },
        })
    }

    async fn put_orders(&self, batch: &[(usize, OrderUpdate)], verdicts: &mut [Option<Verdict>]) {
        let updates: Vec<OrderUpdate> = batch.iter().map(|(_, u)| u.clone()).collect();
        match self.client.put_orders(&updates).await {
            Ok(results) => {
                for ((slot, _), result) in batch.iter().zip(results) {
                    verdicts[*slot] = Some(match result {
                        ItemResult::Accepted { http_code, entry } => {
                            Verdict::Done(json!({"httpCode": http_code, "result": entry}))
                        }
                        ItemResult::Refused { message, .. } => Verdict::Refused(message),
                        ItemResult::Transient { http_code, message } => {
                            Verdict::Transient(format!("HTTP {http_code}: {message}"))
                        }
                    });
                }
            }
            Err(error) => {
                let verdict = batch_error_verdict(&error);
                for (slot, _) in batch {
                    verdicts[*slot] = Some(verdict.clone());
                }
            }
        }
    }

    async fn asn(&self, action: &Action) -> Verdict {
        let asn = match AsnRequest::parse(&action.request) {
            Ok(asn) => asn,
            Err(error) => return Verdict::Refused(format!("request.{error}")),
        };
        let reference = supplier_ref(action, &asn);
        // A later attempt may follow one whose answer was lost: look before creating another.
        if action.attempts > 1 {
            match self
                .client
                .find_asns(&asn.warehouse_id, asn.supplier_id, &reference)
                .await
            {
                Ok(ids) if !ids.is_empty() => {
                    return self
                        .asn_created(action, &asn, &reference, ids[0], true)
                        .await;
                }
                Ok(_) => {}
                Err(error) => return batch_error_verdict(&error),
            }
        }
        let mut body = action.request.clone();
        body["supplierRef"] = json!(reference);
        match self.client.create_asn(&body).await {
            Ok(asn_id) => {
                self.asn_created(action, &asn, &reference, asn_id, false)
                    .await
            }
            Err(ProviderError::Rejected { message, .. }) => Verdict::Refused(message),
            Err(error) => batch_error_verdict(&error),
        }
    }

    async fn asn_created(
        &self,
        action: &Action,
        asn: &AsnRequest,
        reference: &str,
        asn_id: i64,
        found: bool,
    ) -> Verdict {
        let record = NewAsn {
            provider: ProviderKind::Graas,
            account: self.account.clone(),
            asn_id,
            warehouse_id: asn.warehouse_id.clone(),
            supplier_id: asn.supplier_id,
            supplier_ref: reference.to_owned(),
            action_id: action.id,
        };
        if let Err(error) = self.store.record_asn(&record).await {
            // Upstream has it; retrying finds it by reference and records it then.
            return Verdict::Transient(format!("ASN {asn_id} created but not recorded: {error}"));
        }
        Verdict::Done(json!({
            "asnID": asn_id,
            "supplierRef": reference,
            "warehouseID": asn.warehouse_id,
            "foundExisting": found,
        }))
    }
}

/// What a failed request means for every action it carried.
fn batch_error_verdict(error: &ProviderError) -> Verdict {
    match error {
        // One request refused as a whole (a batch of one, or an ASN): that action is wrong.
        ProviderError::Rejected { message, .. } => Verdict::Refused(message.clone()),
        // Credentials can be fixed and answers re-read: these stay in the queue.
        other => Verdict::Transient(other.to_string()),
    }
}

#[async_trait]
impl Executor for GraasExecutor {
    async fn execute(&self, actions: &[Action]) -> Vec<Verdict> {
        let mut verdicts: Vec<Option<Verdict>> = vec![None; actions.len()];
        let mut updates = Vec::new();
        let mut unsynced = HashSet::new();
        for (slot, action) in actions.iter().enumerate() {
            if action.provider != ProviderKind::Graas.as_str() {
                verdicts[slot] = Some(Verdict::Refused(format!(
                    "provider `{}` is not graas",
                    action.provider
                )));
                continue;
            }
            match action.kind.parse::<ActionKind>() {
                Ok(kind @ (ActionKind::Accept | ActionKind::Cancel)) => {
                    match self.order_update(action, kind, &mut unsynced).await {
                        Ok(update) => updates.push((slot, update)),
                        Err(error) => verdicts[slot] = Some(Verdict::Refused(error)),
                    }
                }
                Ok(ActionKind::Asn) => verdicts[slot] = Some(self.asn(action).await),
                Ok(other) => {
                    verdicts[slot] = Some(Verdict::Refused(format!(
                        "kind: Graas has no `{other}` command; it takes accept, cancel and asn",
                        other = other.as_str()
                    )))
                }
                Err(error) => verdicts[slot] = Some(Verdict::Refused(format!("kind: {error}"))),
            }
        }
        if !updates.is_empty() {
            self.put_orders(&updates, &mut verdicts).await;
        }
        verdicts
            .into_iter()
            .map(|v| v.unwrap_or_else(|| Verdict::Transient("no result".into())))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejected_batches_refuse_and_everything_else_stays_queued() {
        let rejected = ProviderError::Rejected {
            status: 400,
            message: "supplierID is missing".into(),
        };
        assert_eq!(
            batch_error_verdict(&rejected),
            Verdict::Refused("supplierID is missing".into())
        );
        assert!(matches!(
            batch_error_verdict(&ProviderError::Timeout),
            Verdict::Transient(_)
        ));
        assert!(matches!(
            batch_error_verdict(&ProviderError::Inconsistent("swapped".into())),
            Verdict::Transient(_)
        ));
    }
}
