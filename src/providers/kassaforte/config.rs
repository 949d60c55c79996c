//! The `[[kassaforte]]` section: one KassaForte shop per entry (credentials are per shop). Every
//! key is documented in `config.example.toml`.

use crate::config::{AccountSection, KeyPath, Problems, RateLimit, Secret, default_true};
use chrono::NaiveDate;
use serde::Deserialize;
use std::time::Duration;
use url::Url;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKassaForteShop {
    pub name: String,
    #[serde(default = "default_base_url")]
    pub base_url: String,
    pub username: String,
    pub password: String,
    #[serde(default = "default_time_zone")]
    pub time_zone: String,
    #[serde(default)]
    pub holidays: Vec<String>,
    #[serde(default = "default_infos_every_open")]
    pub infos_every_open: String,
    #[serde(default = "default_infos_every_closed")]
    pub infos_every_closed: String,
    #[serde(default = "default_rate_limit")]
    pub rate_limit: String,
    #[serde(default = "default_currency")]
    pub currency: String,
    #[serde(default)]
    pub till_offline: TillOffline,
    #[serde(default = "default_final_statuses")]
    pub final_statuses: Vec<String>,
    #[serde(default = "default_follow_every")]
    pub follow_every: String,
    #[serde(default = "default_follow_fast_for")]
    pub follow_fast_for: String,
    #[serde(default = "default_follow_slow_every")]
    pub follow_slow_every: String,
    #[serde(default = "default_follow_for")]
    pub follow_for: String,
    #[serde(default)]
    pub check_input: CheckInput,
    #[serde(default = "default_action_batch_size")]
    pub action_batch_size: u32,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

/// What to do with a submission while the shop's till is not connected to the server.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TillOffline {
    /// Keep it queued and try again later.
    #[default]
    Hold,
    /// Submit anyway (the server accepts orders while the till is away).
    Submit,
}

/// How the discount-code and coupon checks pass their input (the docs do not say).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CheckInput {
    #[default]
    Query,
    Body,
}

fn default_base_url() -> String {
    "https://webservices-api.kassaforte-systems.com".to_owned()
}
fn default_time_zone() -> String {
    "Europe/Berlin".to_owned()
}
fn default_infos_every_open() -> String {
    "60s".to_owned()
}
fn default_infos_every_closed() -> String {
    "15m".to_owned()
}
fn default_rate_limit() -> String {
    "1/s".to_owned()
}
fn default_currency() -> String {
    "EUR".to_owned()
}
fn default_final_statuses() -> Vec<String> {
    vec!["transmitted".to_owned(), "rejected".to_owned()]
}
fn default_follow_every() -> String {
    "30s".to_owned()
}
fn default_follow_fast_for() -> String {
    "15m".to_owned()
}
fn default_follow_slow_every() -> String {
    "5m".to_owned()
}
fn default_follow_for() -> String {
    "24h".to_owned()
}
fn default_action_batch_size() -> u32 {
    10
}

#[derive(Debug, Clone)]
pub struct KassaForteShop {
    pub name: String,
    pub base_url: Url,
    pub username: String,
    pub password: Secret,
    pub time_zone: chrono_tz::Tz,
    /// Dates that use the holidays row (index 7) of the open hours.
    pub holidays: Vec<NaiveDate>,
    pub infos_every_open: Duration,
    pub infos_every_closed: Duration,
    pub rate_limit: RateLimit,
    /// ISO 4217 code of the shop's money (the API's amounts are its major units).
    pub currency: String,
    pub till_offline: TillOffline,
    /// Order statuses after which an order is no longer followed.
    pub final_statuses: Vec<String>,
    /// Submitted orders are polled this often while young …
    pub follow_every: Duration,
    /// … for this long after submission …
    pub follow_fast_for: Duration,
    /// … then this often …
    pub follow_slow_every: Duration,
    /// … until this long after submission.
    pub follow_for: Duration,
    pub check_input: CheckInput,
    pub action_batch_size: u32,
    pub enabled: bool,
}

impl KassaForteShop {
    /// The cron schedule of the state poll: one tick per open-rate interval, at a second of its
    /// own (from the shop's name), so hundreds of shops do not all fire at second 0.
    pub fn infos_schedule(&self) -> String {
        every_as_cron(self.infos_every_open, spread_of(&self.name))
            .unwrap_or_else(|_| "0 * * * * *".to_owned())
    }

    /// The cron schedule of the order follow-up, spread the same way.
    pub fn follow_schedule(&self) -> String {
        every_as_cron(self.follow_every, spread_of(&self.name).wrapping_add(17))
            .unwrap_or_else(|_| "*/30 * * * * *".to_owned())
    }
}

/// A stable number from a name (FNV-1a), to place its ticks.
fn spread_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A cron expression that fires every `every`, shifted by `offset` seconds within the period:
/// seconds that divide a minute, or minutes that divide an hour (so the ticks are evenly
/// spaced; cron cannot say "every 7 minutes").
pub fn every_as_cron(every: Duration, offset: u64) -> Result<String, String> {
    let seconds = every.as_secs();
    if every.subsec_nanos() != 0 || seconds == 0 {
        return Err("must be a whole number of seconds".to_owned());
    }
    if seconds < 60 && 60 % seconds == 0 {
        return Ok(format!("{}/{seconds} * * * * *", offset % seconds));
    }
    let minutes = seconds / 60;
    if seconds.is_multiple_of(60) && minutes <= 60 && 60 % minutes == 0 {
        let (second, minute) = (offset % 60, (offset / 60) % minutes);
        return Ok(match minutes {
            60 => format!("{second} {minute} * * * *"),
            m => format!("{second} {minute}/{m} * * * *"),
        });
    }
    Err("must divide a minute (e.g. 15s, 30s) or an hour (e.g. 1m, 5m, 20m, 1h)".to_owned())
}

/// https, or http on a loopback host (the sandbox): plain HTTP gets 403 from KassaForte.
fn check_https(url: &Url) -> Result<(), String> {
    let loopback = match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    };
    if url.scheme() == "https" || loopback {
        Ok(())
    } else {
        Err(format!(
            "`{url}` is not https; KassaForte answers plain HTTP with 403 (only loopback may use http)"
        ))
    }
}

impl AccountSection for KassaForteShop {
    const SECTION: &'static str = "kassaforte";
    type Raw = RawKassaForteShop;

    fn name(raw: &RawKassaForteShop) -> &str {
        &raw.name
    }

    fn validate(raw: RawKassaForteShop, at: &KeyPath, p: &mut Problems) -> Option<KassaForteShop> {
        let at = |key: &str| at.key(key);
        let base_url = p.http_url(
            at("base_url"),
            &raw.base_url,
            "https://webservices-api.kassaforte-systems.com",
        );
        if let Some(url) = &base_url
            && let Err(message) = check_https(url)
        {
            p.push(at("base_url"), message);
        }
        if raw.username.trim().is_empty() {
            p.push(at("username"), "is empty; set the shop's API username");
        }
        let password = p.secret(at("password"), &raw.password);
        let time_zone = raw.time_zone.trim().parse().unwrap_or_else(|_| {
            p.push(
                at("time_zone"),
                format!(
                    "`{}` is not an IANA time zone; write e.g. `Europe/Berlin`",
                    raw.time_zone
                ),
            );
            chrono_tz::Europe::Berlin
        });
        let mut holidays = Vec::new();
        for (i, text) in raw.holidays.iter().enumerate() {
            match NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d") {
                Ok(date) => holidays.push(date),
                Err(_) => p.push(
                    at(&format!("holidays[{i}]")),
                    format!("`{text}` is not a date; write YYYY-MM-DD, e.g. `2026-12-25`"),
                ),
            }
        }
        let infos_every_open = p.duration(at("infos_every_open"), &raw.infos_every_open);
        if let Err(message) = every_as_cron(infos_every_open, 0) {
            p.push(at("infos_every_open"), message);
        }
        let infos_every_closed = p.duration(at("infos_every_closed"), &raw.infos_every_closed);
        if infos_every_closed < infos_every_open {
            p.push(
                at("infos_every_closed"),
                "must be at least infos_every_open (a closed shop is polled less often)",
            );
        }
        let rate_limit = p.rate_limit(at("rate_limit"), &raw.rate_limit);
        let currency = raw.currency.trim().to_ascii_uppercase();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
            p.push(
                at("currency"),
                format!(
                    "`{}` is not an ISO 4217 code; write e.g. `EUR`",
                    raw.currency
                ),
            );
        }
        let follow_every = p.duration(at("follow_every"), &raw.follow_every);
        if let Err(message) = every_as_cron(follow_every, 0) {
            p.push(at("follow_every"), message);
        }
        let follow_fast_for = p.duration(at("follow_fast_for"), &raw.follow_fast_for);
        let follow_slow_every = p.duration(at("follow_slow_every"), &raw.follow_slow_every);
        if follow_slow_every < follow_every {
            p.push(at("follow_slow_every"), "must be at least follow_every");
        }
        let follow_for = p.duration(at("follow_for"), &raw.follow_for);
        if follow_for < follow_fast_for {
            p.push(at("follow_for"), "must be at least follow_fast_for");
        }
        if raw.action_batch_size == 0 || raw.action_batch_size > 100 {
            p.push(at("action_batch_size"), "must be between 1 and 100");
        }
        Some(KassaForteShop {
            name: raw.name,
            base_url: base_url?,
            username: raw.username.trim().to_owned(),
            password,
            time_zone,
            holidays,
            infos_every_open,
            infos_every_closed,
            rate_limit,
            currency,
            till_offline: raw.till_offline,
            final_statuses: raw.final_statuses,
            follow_every,
            follow_fast_for,
            follow_slow_every,
            follow_for,
            check_input: raw.check_input,
            action_batch_size: raw.action_batch_size.clamp(1, 100),
            enabled: raw.enabled,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_intervals_become_evenly_spaced_cron_ticks() {
        let s = Duration::from_secs;
        assert_eq!(every_as_cron(s(60), 0).unwrap(), "0 0/1 * * * *");
        assert_eq!(every_as_cron(s(30), 0).unwrap(), "0/30 * * * * *");
        assert_eq!(every_as_cron(s(30), 47).unwrap(), "17/30 * * * * *");
        assert_eq!(every_as_cron(s(300), 125).unwrap(), "5 2/5 * * * *");
        assert_eq!(every_as_cron(s(3600), 61).unwrap(), "1 1 * * * *");
        assert!(every_as_cron(s(7 * 60), 0).is_err());
        assert!(every_as_cron(s(45), 0).is_err());
        assert!(every_as_cron(s(0), 0).is_err());
        for offset in [0, 7, 59, 61, 3599, u64::MAX] {
            for every in [1, 5, 30, 60, 300, 3600] {
                let cron = every_as_cron(s(every), offset).unwrap();
                assert!(crate::config::check_schedule(&cron).is_ok(), "{cron}");
            }
        }
    }

    #[test]
    fn plain_http_is_refused_except_on_loopback() {
        let url = |t: &str| Url::parse(t).unwrap();
        assert!(check_https(&url("https://webservices-api.kassaforte-systems.com")).is_ok());
        assert!(check_https(&url("http://127.0.0.1:8080")).is_ok());
        assert!(check_https(&url("http://localhost:8080")).is_ok());
        assert!(check_https(&url("http://webservices-api.kassaforte-systems.com")).is_err());
    }
}
