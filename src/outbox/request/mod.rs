//! What a user asks for (from the CLI or the admin API), checked against the configuration and
//! turned into a [`NewAction`]. Every refusal names the field and the fix; nothing half-checked
//! reaches the queue.

mod getitdone;
mod graas;
mod kassaforte;

use crate::config::Config;
use crate::model::{ActionKind, NewAction, ProviderKind};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The body of `POST /api/v1/actions`; the CLI builds the same.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// The provider (`graas`, the default, is the one that takes actions today).
    #[serde(default)]
    pub provider: Option<String>,
    pub account: String,
    /// `accept`, `cancel`, `asn` (Graas); `cancel`, `link`, … (Get It Done); `submit` (KassaForte).
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
    /// For link and link_invoicing (Get It Done): our id to attach to the order.
    #[serde(default)]
    pub link_id: Option<String>,
    /// For submit (KassaForte): the `POST /v1/order` body, amounts in minor units.
    #[serde(default)]
    pub order: Option<Value>,
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

/// The configured names of one section, for "configured: …" in a refusal.
pub(crate) fn known_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

/// A refused request: the field at fault and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[error("{field}: {message}")]
pub struct InvalidAction {
    pub field: String,
    pub message: String,
}

pub(crate) fn invalid(field: &str, message: impl Into<String>) -> InvalidAction {
    InvalidAction {
        field: field.to_owned(),
        message: message.into(),
    }
}

pub(crate) fn non_empty(
    value: &Option<String>,
    field: &str,
    what: &str,
) -> Result<String, InvalidAction> {
    match value.as_deref().map(str::trim) {
        Some(text) if !text.is_empty() => Ok(text.to_owned()),
        _ => Err(invalid(field, format!("is required for {what}"))),
    }
}

/// What a provider's check makes of a request: the parts of the action that depend on it.
pub(crate) struct Checked {
    pub account: String,
    pub kind: ActionKind,
    pub channel: Option<String>,
    pub external_id: Option<String>,
    pub request: Value,
}

/// The provider of a named account, when the request does not say: account names are unique
/// within a provider's section, so only a name used in two sections needs `provider`.
fn provider_of(config: &Config, account: &str) -> Result<ProviderKind, InvalidAction> {
    let mut owners = Vec::new();
    if config.graas_account(account).is_some() {
        owners.push(ProviderKind::Graas);
    }
    if config.getitdone_account(account).is_some() {
        owners.push(ProviderKind::GetItDone);
    }
    if config.kassaforte_shop(account).is_some() {
        owners.push(ProviderKind::KassaForte);
    }
    if config.grafterr_account(account).is_some() {
        owners.push(ProviderKind::Grafterr);
    }
    if config.lagerkoll_account(account).is_some() {
        owners.push(ProviderKind::Lagerkoll);
    }
    match owners.as_slice() {
        [one] => Ok(*one),
        // Nobody's: Graas's check names the configured accounts.
        [] => Ok(ProviderKind::Graas),
        several => Err(invalid(
            "provider",
            format!(
                "`{account}` names an account in {} sections; say which with provider",
                several
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        )),
    }
}

impl ActionRequest {
    /// Checks the request against the configuration and builds the action to queue. What is the
    /// same for every provider is checked here; the rest by the provider's own check.
    pub fn into_action(self, config: &Config) -> Result<NewAction, InvalidAction> {
        let provider = match self.provider.as_deref() {
            Some(text) => text.parse().map_err(|e: String| invalid("provider", e))?,
            None => provider_of(config, &self.account)?,
        };
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
        let idempotency_key = self.idempotency_key.clone();
        let checked = match provider {
            ProviderKind::Graas => graas::check(self, config)?,
            ProviderKind::GetItDone => getitdone::check(self, config)?,
            ProviderKind::KassaForte => kassaforte::check(self, config)?,
            // Push-only upstreams: their APIs document no command to send.
            ProviderKind::Grafterr => {
                return Err(invalid(
                    "kind",
                    format!(
                        "Grafterr has no order commands: `{}` cannot be sent to Grafterr (its API only delivers orders)",
                        self.kind
                    ),
                ));
            }
            ProviderKind::Lagerkoll => {
                return Err(invalid(
                    "kind",
                    format!(
                        "Lagerkoll has no order commands: `{}` cannot be sent to Lagerkoll (ordersync only receives its webhooks)",
                        self.kind
                    ),
                ));
            }
        };
        Ok(NewAction {
            provider,
            account: checked.account,
            kind: checked.kind,
            channel: checked.channel,
            external_id: checked.external_id,
            request: checked.request,
            idempotency_key,
            max_attempts,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::from_toml(
            r#"
            [[graas]]
            name = "sg-shop"
            base_url = "http://127.0.0.1:9"
            account_number = "1"
            app_key = "k"
            start_from = "2024-01-01T00:00:00Z"
            "#,
        )
        .unwrap()
    }

    fn accept(provider: Option<&str>) -> ActionRequest {
        ActionRequest {
            provider: provider.map(str::to_owned),
            account: "sg-shop".into(),
            kind: "accept".into(),
            channel: Some("lazada-1".into()),
            order_id: Some("1".into()),
            ..ActionRequest::default()
        }
    }

    #[test]
    fn the_provider_is_checked_before_its_own_rules() {
        let config = config();
        assert!(accept(None).into_action(&config).is_ok());
        assert!(accept(Some("graas")).into_action(&config).is_ok());
        let unknown = accept(Some("shopee")).into_action(&config).unwrap_err();
        assert_eq!(unknown.field, "provider");
        assert!(unknown.message.contains("graas, getitdone"), "{unknown}");
        let no_actions = accept(Some("grafterr")).into_action(&config).unwrap_err();
        assert_eq!(no_actions.field, "kind");
        assert!(
            no_actions
                .message
                .contains("Grafterr has no order commands"),
            "{no_actions}"
        );
    }
}
