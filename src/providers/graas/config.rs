//! The `[[graas]]` section: one Graas account per entry. Every key is documented in
//! `config.example.toml`.

use crate::config::{AccountSection, KeyPath, Problems, RateLimit, Secret, default_true};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use std::time::Duration;
use url::Url;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGraasAccount {
    pub name: String,
    pub base_url: String,
    pub account_number: String,
    pub app_key: String,
    #[serde(default = "default_graas_schedule")]
    pub schedule: String,
    #[serde(default = "default_lookback")]
    pub lookback: String,
    #[serde(default = "default_lookback_every")]
    pub lookback_every: String,
    #[serde(default = "default_recent_lookback")]
    pub recent_lookback: String,
    #[serde(default = "default_settle")]
    pub settle: String,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    #[serde(default = "default_pages_per_read")]
    pub pages_per_read: u32,
    #[serde(default = "default_read_ahead")]
    pub read_ahead: u32,
    pub start_from: String,
    #[serde(default = "default_max_window")]
    pub max_window: String,
    #[serde(default = "default_graas_rate")]
    pub rate_limit: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_action_batch_size")]
    pub action_batch_size: u32,
    #[serde(default = "default_cancel_reasons")]
    pub cancel_reasons: Vec<String>,
    #[serde(default = "default_asn_schedule")]
    pub asn_schedule: String,
    #[serde(default = "default_asn_final_statuses")]
    pub asn_final_statuses: Vec<String>,
}

fn default_graas_schedule() -> String {
    "*/30 * * * * *".to_owned()
}
fn default_lookback() -> String {
    "10m".to_owned()
}
fn default_lookback_every() -> String {
    "1m".to_owned()
}
fn default_recent_lookback() -> String {
    "30s".to_owned()
}
fn default_settle() -> String {
    "30s".to_owned()
}
fn default_page_size() -> u32 {
    100
}
fn default_pages_per_read() -> u32 {
    4
}
fn default_read_ahead() -> u32 {
    2
}
fn default_max_window() -> String {
    "1d".to_owned()
}
fn default_graas_rate() -> String {
    "5/s".to_owned()
}
fn default_action_batch_size() -> u32 {
    50
}
fn default_cancel_reasons() -> Vec<String> {
    vec!["OUT_OF_STOCK".to_owned()]
}
fn default_asn_schedule() -> String {
    "0 */5 * * * *".to_owned()
}
fn default_asn_final_statuses() -> Vec<String> {
    ["received", "closed", "completed", "cancelled"]
        .map(str::to_owned)
        .to_vec()
}

#[derive(Debug, Clone)]
pub struct GraasAccount {
    pub name: String,
    pub base_url: Url,
    pub account_number: String,
    pub app_key: Secret,
    pub schedule: String,
    pub lookback: Duration,
    pub lookback_every: Duration,
    pub recent_lookback: Duration,
    pub settle: Duration,
    pub page_size: u32,
    pub pages_per_read: u32,
    pub read_ahead: u32,
    pub start_from: DateTime<Utc>,
    pub max_window: Duration,
    pub rate_limit: RateLimit,
    pub enabled: bool,
    pub action_batch_size: u32,
    pub cancel_reasons: Vec<String>,
    pub asn_schedule: String,
    pub asn_final_statuses: Vec<String>,
}

impl AccountSection for GraasAccount {
    const SECTION: &'static str = "graas";
    type Raw = RawGraasAccount;

    fn name(raw: &RawGraasAccount) -> &str {
        &raw.name
    }

    fn validate(raw: RawGraasAccount, at: &KeyPath, p: &mut Problems) -> Option<GraasAccount> {
        let at = |key: &str| at.key(key);
        let base_url = p.http_url(at("base_url"), &raw.base_url, "https://api.graas.example");
        if raw.account_number.trim().is_empty() {
            p.push(
                at("account_number"),
                "is empty; set the Graas account number",
            );
        }
        let app_key = p.secret(at("app_key"), &raw.app_key);
        p.schedule(at("schedule"), &raw.schedule);
        let lookback = p.duration(at("lookback"), &raw.lookback);
        let lookback_every = p.duration(at("lookback_every"), &raw.lookback_every);
        let recent_lookback = p.duration(at("recent_lookback"), &raw.recent_lookback);
        let settle = p.duration(at("settle"), &raw.settle);
        let max_window = p.duration(at("max_window"), &raw.max_window);
        if max_window < Duration::from_secs(2) {
            p.push(at("max_window"), "must be at least 2s");
        }
        if raw.page_size == 0 || raw.page_size > 10_000 {
            p.push(at("page_size"), "must be between 1 and 10000");
        }
        if raw.pages_per_read == 0 || raw.pages_per_read > 100 {
            p.push(
                at("pages_per_read"),
                "must be between 1 and 100 (1 reads every window one page per request)",
            );
        }
        if raw.read_ahead > 16 {
            p.push(
                at("read_ahead"),
                "must be between 0 and 16 (0 waits for each page before asking for the next)",
            );
        }
        let start_from = match DateTime::parse_from_rfc3339(raw.start_from.trim()) {
            Ok(t) => t.with_timezone(&Utc),
            Err(e) => {
                p.push(
                    at("start_from"),
                    format!(
                        "`{}` is not an RFC 3339 time ({e}); write e.g. `2024-01-01T00:00:00Z`",
                        raw.start_from
                    ),
                );
                DateTime::<Utc>::UNIX_EPOCH
            }
        };
        let rate_limit = p.rate_limit(at("rate_limit"), &raw.rate_limit);
        if raw.action_batch_size == 0 || raw.action_batch_size > 1_000 {
            p.push(at("action_batch_size"), "must be between 1 and 1000");
        }
        if raw.cancel_reasons.iter().any(|r| r.trim().is_empty()) {
            p.push(at("cancel_reasons"), "must not contain an empty reason");
        }
        p.schedule(at("asn_schedule"), &raw.asn_schedule);
        // With no URL there is already a problem recorded, so the account is not needed.
        Some(GraasAccount {
            name: raw.name,
            base_url: base_url?,
            account_number: raw.account_number.trim().to_owned(),
            app_key,
            schedule: raw.schedule,
            lookback,
            lookback_every,
            recent_lookback,
            settle,
            page_size: raw.page_size.clamp(1, 10_000),
            pages_per_read: raw.pages_per_read.clamp(1, 100),
            read_ahead: raw.read_ahead.min(16),
            start_from,
            max_window,
            rate_limit,
            enabled: raw.enabled,
            action_batch_size: raw.action_batch_size.clamp(1, 1_000),
            cancel_reasons: raw.cancel_reasons,
            asn_schedule: raw.asn_schedule,
            asn_final_statuses: raw.asn_final_statuses,
        })
    }
}
