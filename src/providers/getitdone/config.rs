//! The `[[getitdone]]` section: one Get It Done account per entry. Every key is documented in
//! `config.example.toml`; the contract's assumed paths and headers are in [`super::contract`].

use super::contract::{ApiContract, RawApiContract};
use crate::config::{AccountSection, KeyPath, Problems, RateLimit, Secret, default_true};
use serde::Deserialize;
use std::time::Duration;
use url::Url;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGetItDoneAccount {
    pub name: String,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default)]
    pub webhook_secrets: Vec<String>,
    #[serde(default = "default_api_version")]
    pub api_version: String,
    #[serde(default)]
    pub discovery: Discovery,
    #[serde(default = "default_feed_schedule")]
    pub feed_schedule: String,
    #[serde(default = "default_feed_page_size")]
    pub feed_page_size: u32,
    #[serde(default = "default_repoll_schedule")]
    pub repoll_schedule: String,
    #[serde(default = "default_debounce")]
    pub debounce: String,
    #[serde(default = "default_rate_limit")]
    pub rate_limit: String,
    #[serde(default = "default_cancellation_reason")]
    pub cancellation_reason: String,
    #[serde(default = "default_confirm_timeout")]
    pub confirm_timeout: String,
    #[serde(default = "default_confirm_schedule")]
    pub confirm_schedule: String,
    #[serde(default = "default_silence_alert")]
    pub silence_alert: String,
    #[serde(default = "default_terminal_statuses")]
    pub terminal_statuses: Vec<String>,
    #[serde(default = "default_action_batch_size")]
    pub action_batch_size: u32,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default)]
    pub api: RawApiContract,
}

/// How new orders are found: pushed events, or the (assumed) account-level event feed.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    #[default]
    Webhook,
    Feed,
}

fn default_base_url() -> String {
    "https://api.getitdone.rocks".to_owned()
}
fn default_api_version() -> String {
    "1.1.0".to_owned()
}
fn default_feed_schedule() -> String {
    "*/30 * * * * *".to_owned()
}
fn default_feed_page_size() -> u32 {
    200
}
fn default_repoll_schedule() -> String {
    "0 */15 * * * *".to_owned()
}
fn default_debounce() -> String {
    "2s".to_owned()
}
fn default_rate_limit() -> String {
    "10/s".to_owned()
}
fn default_cancellation_reason() -> String {
    "customer_request".to_owned()
}
fn default_confirm_timeout() -> String {
    "10m".to_owned()
}
fn default_confirm_schedule() -> String {
    "*/15 * * * * *".to_owned()
}
fn default_silence_alert() -> String {
    "6h".to_owned()
}
fn default_terminal_statuses() -> Vec<String> {
    vec!["completed".to_owned(), "cancelled".to_owned()]
}
fn default_action_batch_size() -> u32 {
    20
}

#[derive(Debug, Clone)]
pub struct GetItDoneAccount {
    pub name: String,
    pub base_url: Url,
    pub client_id: String,
    pub client_secret: Secret,
    /// One, or two while a secret is rotated: a delivery signed with either is accepted.
    pub webhook_secrets: Vec<Secret>,
    /// The pinned event/command version, in poll paths and commands' `_v`.
    pub api_version: String,
    pub discovery: Discovery,
    pub feed_schedule: String,
    pub feed_page_size: u32,
    pub repoll_schedule: String,
    /// Events for one order within this time cause one poll.
    pub debounce: Duration,
    pub rate_limit: RateLimit,
    /// The reason name `cancel` sends when the action names none.
    pub cancellation_reason: String,
    /// A sent command with no outcome after this long is failed ("no confirmation").
    pub confirm_timeout: Duration,
    pub confirm_schedule: String,
    /// `status` warns when no delivery came for this long.
    pub silence_alert: Duration,
    /// Orders in these statuses are not re-polled.
    pub terminal_statuses: Vec<String>,
    pub action_batch_size: u32,
    pub enabled: bool,
    pub api: ApiContract,
}

/// `1.1.0`: the version we speak must be a 1.x semver (a new major changes the shapes).
fn check_version(text: &str) -> Result<(), String> {
    let parts: Vec<&str> = text.split('.').collect();
    let numeric = parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if !numeric {
        return Err(format!(
            "`{text}` is not a version; write MAJOR.MINOR.PATCH, e.g. `1.1.0`"
        ));
    }
    if parts[0] != "1" {
        return Err(format!(
            "`{text}`: ordersync speaks version 1.x of the Get It Done events and commands"
        ));
    }
    Ok(())
}

impl AccountSection for GetItDoneAccount {
    const SECTION: &'static str = "getitdone";
    type Raw = RawGetItDoneAccount;

    fn name(raw: &RawGetItDoneAccount) -> &str {
        &raw.name
    }

    fn validate(
        raw: RawGetItDoneAccount,
        at: &KeyPath,
        p: &mut Problems,
    ) -> Option<GetItDoneAccount> {
        let at = |key: &str| at.key(key);
        let base_url = p.http_url(at("base_url"), &raw.base_url, "https://api.getitdone.rocks");
        if raw.client_id.trim().is_empty() {
            p.push(at("client_id"), "is empty; set the API client id");
        }
        let client_secret = p.secret(at("client_secret"), &raw.client_secret);
        if raw.webhook_secrets.len() > 2 {
            p.push(
                at("webhook_secrets"),
                "holds more than two secrets; keep the current one and, while rotating, the next",
            );
        }
        if raw.webhook_secrets.is_empty() && raw.discovery == Discovery::Webhook {
            p.push(
                at("webhook_secrets"),
                "is empty; give the secret Get It Done signs deliveries with (`env:NAME`), or set discovery = \"feed\"",
            );
        }
        let webhook_secrets = raw
            .webhook_secrets
            .iter()
            .enumerate()
            .map(|(i, text)| p.secret(at(&format!("webhook_secrets[{i}]")), text))
            .collect();
        if let Err(message) = check_version(raw.api_version.trim()) {
            p.push(at("api_version"), message);
        }
        p.schedule(at("feed_schedule"), &raw.feed_schedule);
        if !(1..=500).contains(&raw.feed_page_size) {
            p.push(at("feed_page_size"), "must be between 1 and 500");
        }
        p.schedule(at("repoll_schedule"), &raw.repoll_schedule);
        p.schedule(at("confirm_schedule"), &raw.confirm_schedule);
        let debounce = p.duration(at("debounce"), &raw.debounce);
        if debounce > Duration::from_secs(600) {
            p.push(at("debounce"), "must be at most 10m");
        }
        let rate_limit = p.rate_limit(at("rate_limit"), &raw.rate_limit);
        if raw.cancellation_reason.trim().is_empty() {
            p.push(
                at("cancellation_reason"),
                "is empty; give the cancellation-reason name Get It Done knows",
            );
        }
        let confirm_timeout = p.duration(at("confirm_timeout"), &raw.confirm_timeout);
        if confirm_timeout < Duration::from_secs(1)
            || confirm_timeout > Duration::from_secs(23 * 3600)
        {
            p.push(
                at("confirm_timeout"),
                "must be between 1s and 23h (Get It Done keeps command results for 24 hours)",
            );
        }
        let silence_alert = p.duration(at("silence_alert"), &raw.silence_alert);
        if raw.action_batch_size == 0 || raw.action_batch_size > 1_000 {
            p.push(at("action_batch_size"), "must be between 1 and 1000");
        }
        let api = raw.api.validate(&at("api"), p);
        Some(GetItDoneAccount {
            name: raw.name,
            base_url: base_url?,
            client_id: raw.client_id.trim().to_owned(),
            client_secret,
            webhook_secrets,
            api_version: raw.api_version.trim().to_owned(),
            discovery: raw.discovery,
            feed_schedule: raw.feed_schedule,
            feed_page_size: raw.feed_page_size.clamp(1, 500),
            repoll_schedule: raw.repoll_schedule,
            debounce,
            rate_limit,
            cancellation_reason: raw.cancellation_reason.trim().to_owned(),
            confirm_timeout,
            confirm_schedule: raw.confirm_schedule,
            silence_alert,
            terminal_statuses: raw.terminal_statuses,
            action_batch_size: raw.action_batch_size.clamp(1, 1_000),
            enabled: raw.enabled,
            api,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_pinned_semver_of_major_one() {
        assert!(check_version("1.1.0").is_ok());
        assert!(check_version("1.12.3").is_ok());
        assert!(check_version("*").is_err());
        assert!(check_version("2.0.0").unwrap_err().contains("1.x"));
        assert!(check_version("1.1").is_err());
    }
}
