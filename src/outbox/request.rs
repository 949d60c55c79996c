//! What a user asks for (from the CLI or the admin API), checked against the configuration and
//! turned into a [`NewAction`]. Every refusal names the field and the fix; nothing half-checked
//! reaches the queue.

use crate::config::Config;
use crate::model::{ActionKind, NewAction, ProviderKind};
use crate::providers::graas::outbound::AsnRequest;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The body of `POST /api/v1/actions`; the CLI builds the same.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// Only `graas` takes actions today; the default.
    #[serde(default)]
    pub provider: Option<String>,
    pub account: String,
    /// `accept`, `cancel` or `asn`.
    pub kind: String,
    /// The order's channel (`site.nickNameID`), for accept and cancel.
    #[serde(default)]
    pub channel: Option<String>,
    #[serde(default)]
    pub order_id: Option<String>,
    /// Partial accept/cancel: only these items.
    #[serde(default)]
    pub items: Vec<ItemSelector>,
    /// For cancel: one of the account's `cancel_reasons`.
    #[serde(default)]
    pub reason: Option<String>,
    /// For asn: the `POST /v1/asn` body.
    #[serde(default)]
    pub asn: Option<Value>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub max_attempts: Option<i32>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ItemSelector {
    pub order_item_id: String,
    pub seller_sku: String,
}

impl ItemSelector {
    /// `ID:SKU`, as the CLI's `--item` takes it.
    pub fn parse(text: &str) -> Result<ItemSelector, String> {
        match text.split_once(':') {
            Some((id, sku)) if !id.trim().is_empty() && !sku.trim().is_empty() => {
                Ok(ItemSelector {
                    order_item_id: id.trim().to_owned(),
                    seller_sku: sku.trim().to_owned(),
                })
            }
            _ => Err(format!(
                "`{text}` is not ORDER_ITEM_ID:SELLER_SKU, e.g. `41003:SKU-0042`"
            )),
        }
    }
}

/// A refused request: the field at fault and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{field}: {message}")]
pub struct InvalidAction {
    pub field: String,
    pub message: String,
}

fn invalid(field: &str, message: impl Into<String>) -> InvalidAction {
    InvalidAction {
        field: field.to_owned(),
        message: message.into(),
    }
}

fn non_empty(value: &Option<String>, field: &str, what: &str) -> Result<String, InvalidAction> {
    match value.as_deref().map(str::trim) {
        Some(text) if !text.is_empty() => Ok(text.to_owned()),
        _ => Err(invalid(field, format!("is required for {what}"))),
    }
}

impl ActionRequest {
    /// Checks the request against the configuration and builds the action to queue.
    pub fn into_action(self, config: &Config) -> Result<NewAction, InvalidAction> {
        let provider = match self.provider.as_deref().unwrap_or("graas") {
            "graas" => ProviderKind::Graas,
            other => {
                return Err(invalid(
                    "provider",
                    format!("`{other}` takes no actions; only `graas` does"),
                ));
            }
        };
        let Some(account) = config.graas_account(&self.account) else {
            let known: Vec<&str> = config.graas.iter().map(|a| a.name.as_str()).collect();
            return Err(invalid(
                "account",
                format!(
                    "`{}` is not a configured Graas account; configured: {}",
                    self.account,
                    if known.is_empty() {
                        "none".to_owned()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        };
        let kind: ActionKind = self.kind.parse().map_err(|e: String| invalid("kind", e))?;
        let max_attempts = self.max_attempts.unwrap_or(config.outbox.max_attempts);
        if !(1..=1_000).contains(&max_attempts) {
            return Err(invalid("max_attempts", "must be between 1 and 1000"));
        }
        if let Some(key) = &self.idempotency_key
            && (key.trim().is_empty() || key.len() > 200)
        {
            return Err(invalid(
                "idempotency_key",
                "must be 1-200 characters when given",
            ));
        }
        let (channel, external_id, request) = match kind {
            ActionKind::Accept | ActionKind::Cancel => {
                let what = kind.as_str();
                let channel = non_empty(&self.channel, "channel", what)?;
                let order_id = non_empty(&self.order_id, "order_id", what)?;
                if self.asn.is_some() {
                    return Err(invalid("asn", format!("does not apply to {what}")));
                }
                let items: Vec<Value> = self
                    .items
                    .iter()
                    .map(|i| json!({"orderItemID": i.order_item_id, "sellerSKU": i.seller_sku}))
                    .collect();
                let mut request = json!({});
                if !items.is_empty() {
                    request["items"] = Value::Array(items);
                }
                match (kind, self.reason) {
                    (ActionKind::Cancel, Some(reason)) => {
                        if !account.cancel_reasons.contains(&reason) {
                            return Err(invalid(
                                "reason",
                                format!(
                                    "`{reason}` is not one of this account's cancel_reasons ({}); add it to the config if Graas takes it",
                                    account.cancel_reasons.join(", ")
                                ),
                            ));
                        }
                        request["reason"] = json!(reason);
                    }
                    (ActionKind::Cancel, None) => {
                        return Err(invalid(
                            "reason",
                            format!(
                                "is required for cancel; one of {}",
                                account.cancel_reasons.join(", ")
                            ),
                        ));
                    }
                    (_, Some(_)) => {
                        return Err(invalid("reason", "applies to cancel only"));
                    }
                    (_, None) => {}
                }
                (Some(channel), Some(order_id), request)
            }
            ActionKind::Asn => {
                let Some(asn) = self.asn else {
                    return Err(invalid("asn", "is required for asn: the POST /v1/asn body"));
                };
                for (field, given) in [
                    ("channel", self.channel.is_some()),
                    ("order_id", self.order_id.is_some()),
                    ("items", !self.items.is_empty()),
                    ("reason", self.reason.is_some()),
                ] {
                    if given {
                        return Err(invalid(field, "does not apply to asn"));
                    }
                }
                AsnRequest::parse(&asn).map_err(|e| match e.split_once(": ") {
                    Some((field, message)) if !field.contains(' ') => {
                        invalid(&format!("asn.{field}"), message)
                    }
                    _ => invalid("asn", e),
                })?;
                (None, None, asn)
            }
        };
        Ok(NewAction {
            provider,
            account: account.name.clone(),
            kind,
            channel,
            external_id,
            request,
            idempotency_key: self.idempotency_key,
            max_attempts,
        })
    }
}
