//! The `[[lagerkoll]]` section: one Lagerkoll store per entry, with the webhooks ordersync
//! keeps registered for it. Every key is documented in `config.example.toml`.

use crate::config::{AccountSection, KeyPath, Problems, RateLimit, Secret, default_true};
use crate::providers::grafterr::config::check_path_token;
use serde::Deserialize;
use std::time::Duration;
use url::Url;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLagerkollAccount {
    pub name: String,
    pub store: i64,
    pub api_key: String,
    pub public_url: String,
    pub path_token: String,
    #[serde(default)]
    pub enable_for_group: bool,
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    #[serde(default = "default_rate_limit")]
    pub rate_limit: String,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    #[serde(default = "default_reconcile_schedule")]
    pub reconcile_schedule: String,
    #[serde(default = "default_order_methods")]
    pub order_methods: Vec<String>,
    #[serde(default = "default_currency")]
    pub currency: String,
    #[serde(default = "default_silence_alert")]
    pub silence_alert: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    pub feature_id: String,
    pub feature_method: String,
    #[serde(default)]
    pub enable_for_group: Option<bool>,
}

fn default_rate_limit() -> String {
    "200/m".to_owned()
}
fn default_base_url() -> String {
    "https://capi.lagerkoll.com/v1/".to_owned()
}
fn default_reconcile_schedule() -> String {
    "0 0 */6 * * *".to_owned()
}
fn default_order_methods() -> Vec<String> {
    vec!["orderCreated".to_owned(), "orderUpdated".to_owned()]
}
fn default_currency() -> String {
    "SEK".to_owned()
}
fn default_silence_alert() -> String {
    "1d".to_owned()
}

/// One webhook ordersync keeps registered.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WantedWebhook {
    pub feature_id: String,
    pub feature_method: String,
    pub group_wide: bool,
}

#[derive(Debug, Clone)]
pub struct LagerkollAccount {
    pub name: String,
    pub store: i64,
    pub api_key: Secret,
    /// Where Lagerkoll reaches our webhook listener (scheme, host, optional path prefix).
    pub public_url: Url,
    pub path_token: Secret,
    pub webhooks: Vec<WantedWebhook>,
    pub rate_limit: RateLimit,
    /// `…/v1/`: the resources (`stores/`, `feature/`, `webhooks/`) are joined to it.
    pub base_url: Url,
    pub reconcile_schedule: String,
    /// Feature methods whose `data` is an order.
    pub order_methods: Vec<String>,
    pub currency: String,
    pub silence_alert: Duration,
    pub enabled: bool,
}

impl LagerkollAccount {
    /// The URL registered with Lagerkoll: `<public_url>/webhooks/lagerkoll/<name>/<token>`.
    pub fn webhook_url(&self) -> String {
        format!(
            "{}/webhooks/lagerkoll/{}/{}",
            self.public_url.as_str().trim_end_matches('/'),
            self.name,
            self.path_token.expose()
        )
    }

    /// The same with the token masked, for logs and listings.
    pub fn webhook_url_masked(&self) -> String {
        format!(
            "{}/webhooks/lagerkoll/{}/…",
            self.public_url.as_str().trim_end_matches('/'),
            self.name
        )
    }
}

impl AccountSection for LagerkollAccount {
    const SECTION: &'static str = "lagerkoll";
    type Raw = RawLagerkollAccount;

    fn name(raw: &RawLagerkollAccount) -> &str {
        &raw.name
    }

    fn validate(raw: RawLagerkollAccount, at: &KeyPath, p: &mut Problems) -> Option<Self> {
        let at = |key: &str| at.key(key);
        if raw.store <= 0 {
            p.push(
                at("store"),
                "must be the store id Lagerkoll shows where the API was activated (a positive integer)",
            );
        }
        let api_key = p.secret(at("api_key"), &raw.api_key);
        let public_url = p.http_url(
            at("public_url"),
            &raw.public_url,
            "https://hooks.example.com",
        );
        if let Some(url) = &public_url
            && (url.query().is_some() || url.fragment().is_some())
        {
            p.push(at("public_url"), "must not have a query or fragment");
        }
        let path_token = p.secret(at("path_token"), &raw.path_token);
        if !path_token.expose().is_empty()
            && let Err(message) = check_path_token(path_token.expose())
        {
            p.push(at("path_token"), message);
        }
        let mut webhooks = Vec::new();
        for (i, hook) in raw.webhooks.iter().enumerate() {
            let key = |k: &str| at(&format!("webhooks[{i}].{k}"));
            if hook.feature_id.trim().is_empty() {
                p.push(
                    key("feature_id"),
                    "is empty; give the installed feature's id",
                );
            }
            if hook.feature_method.trim().is_empty() {
                p.push(
                    key("feature_method"),
                    "is empty; give the method, e.g. \"orderCreated\"",
                );
            }
            let wanted = WantedWebhook {
                feature_id: hook.feature_id.trim().to_owned(),
                feature_method: hook.feature_method.trim().to_owned(),
                group_wide: hook.enable_for_group.unwrap_or(raw.enable_for_group),
            };
            if webhooks.contains(&wanted) {
                p.push(at(&format!("webhooks[{i}]")), "is listed twice; keep one");
            }
            webhooks.push(wanted);
        }
        let rate_limit = p.rate_limit(at("rate_limit"), &raw.rate_limit);
        if rate_limit.per_second() > 200.0 / 60.0 + 1e-9 {
            p.push(
                at("rate_limit"),
                "is above Lagerkoll's documented 200 requests per minute; write \"200/m\" or less",
            );
        }
        let base_url = p.http_url(
            at("base_url"),
            &raw.base_url,
            "https://capi.lagerkoll.com/v1/",
        );
        p.schedule(at("reconcile_schedule"), &raw.reconcile_schedule);
        let currency = raw.currency.trim().to_ascii_uppercase();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
            p.push(
                at("currency"),
                format!(
                    "`{}` is not an ISO 4217 code; write e.g. \"SEK\"",
                    raw.currency
                ),
            );
        }
        let silence_alert = p.duration(at("silence_alert"), &raw.silence_alert);
        Some(LagerkollAccount {
            name: raw.name,
            store: raw.store,
            api_key,
            public_url: public_url?,
            path_token,
            webhooks,
            rate_limit,
            base_url: base_url?,
            reconcile_schedule: raw.reconcile_schedule,
            order_methods: raw.order_methods,
            currency,
            silence_alert,
            enabled: raw.enabled,
        })
    }
}
