//! The `[[grafterr]]` section: one Grafterr account (one environment's keys) per entry. Every
//! key is documented in `config.example.toml`; the assumed paths and header names are keys
//! too, so a correction needs no new release.

use crate::config::{AccountSection, KeyPath, Problems, RateLimit, Secret, default_true};
use serde::Deserialize;
use std::time::Duration;
use url::Url;

pub const SANDBOX_URL: &str = "https://cuo453tsfc.execute-api.ap-south-1.amazonaws.com/dev/";
pub const PRODUCTION_URL: &str = "https://ytns6rfbt6.execute-api.eu-west-1.amazonaws.com/prod/";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrafterrAccount {
    pub name: String,
    #[serde(default)]
    pub environment: Option<String>,
    #[serde(default)]
    pub base_url: Option<String>,
    pub api_key: String,
    pub client_id: String,
    pub client_secret: String,
    pub path_token: String,
    #[serde(default)]
    pub signing_secret: Option<String>,
    #[serde(default = "default_currency")]
    pub currency: String,
    #[serde(default = "default_rate_limit")]
    pub rate_limit: String,
    #[serde(default = "default_silence_alert")]
    pub silence_alert: String,
    #[serde(default = "default_token_path")]
    pub token_path: String,
    #[serde(default = "default_order_path")]
    pub order_path: String,
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_currency() -> String {
    "GBP".to_owned()
}
fn default_rate_limit() -> String {
    "5/s".to_owned()
}
fn default_silence_alert() -> String {
    "2h".to_owned()
}
fn default_token_path() -> String {
    "auth/token".to_owned()
}
fn default_order_path() -> String {
    "orders/{orderId}".to_owned()
}
fn default_signature_header() -> String {
    "X-Grafterr-Signature".to_owned()
}

#[derive(Debug, Clone)]
pub struct GrafterrAccount {
    pub name: String,
    /// Ends in `/` after its stage segment (`dev/`, `prod/`), which every path keeps.
    pub base_url: Url,
    pub api_key: Secret,
    pub client_id: String,
    pub client_secret: Secret,
    /// The unguessable last segment of the webhook URL given to Grafterr's panel.
    pub path_token: Secret,
    /// When set, `signature_header` must hold the hex HMAC-SHA256 of the raw body.
    pub signing_secret: Option<Secret>,
    /// Used when an order names no currency.
    pub currency: String,
    pub rate_limit: RateLimit,
    /// `status` warns when no delivery came for this long.
    pub silence_alert: Duration,
    pub token_path: String,
    /// With `{orderId}` where the order's id goes.
    pub order_path: String,
    pub signature_header: String,
    pub enabled: bool,
}

/// A path token must be long and URL-safe: it is the webhook's only credential when no
/// signing secret is set.
pub fn check_path_token(token: &str) -> Result<(), String> {
    if token.len() < 16
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(
            "must be at least 16 characters of letters, digits, `-` or `_` (e.g. `openssl rand -hex 24`)"
                .to_owned(),
        );
    }
    Ok(())
}

impl AccountSection for GrafterrAccount {
    const SECTION: &'static str = "grafterr";
    type Raw = RawGrafterrAccount;

    fn name(raw: &RawGrafterrAccount) -> &str {
        &raw.name
    }

    fn validate(raw: RawGrafterrAccount, at: &KeyPath, p: &mut Problems) -> Option<Self> {
        let at = |key: &str| at.key(key);
        let base_url = match (raw.environment.as_deref(), raw.base_url.as_deref()) {
            (Some(_), Some(_)) => {
                p.push(
                    at("base_url"),
                    "is set together with `environment`; keep one of them",
                );
                None
            }
            (Some("sandbox"), None) => Url::parse(SANDBOX_URL).ok(),
            (Some("production"), None) => Url::parse(PRODUCTION_URL).ok(),
            (Some(other), None) => {
                p.push(
                    at("environment"),
                    format!("`{other}` is not an environment; write \"sandbox\" or \"production\", or give base_url"),
                );
                None
            }
            (None, Some(url)) => p.http_url(
                at("base_url"),
                url,
                "https://ytns6rfbt6.execute-api.eu-west-1.amazonaws.com/prod/",
            ),
            (None, None) => {
                p.push(
                    at("environment"),
                    "is missing; write environment = \"sandbox\" or \"production\" (each has its own keys), or give base_url",
                );
                None
            }
        };
        let api_key = p.secret(at("api_key"), &raw.api_key);
        if raw.client_id.trim().is_empty() {
            p.push(
                at("client_id"),
                "is empty; copy it from Grafterr's panel (API Settings → API Keys)",
            );
        }
        let client_secret = p.secret(at("client_secret"), &raw.client_secret);
        let path_token = p.secret(at("path_token"), &raw.path_token);
        if !path_token.expose().is_empty()
            && let Err(message) = check_path_token(path_token.expose())
        {
            p.push(at("path_token"), message);
        }
        let signing_secret = raw
            .signing_secret
            .as_deref()
            .map(|text| p.secret(at("signing_secret"), text));
        let currency = raw.currency.trim().to_ascii_uppercase();
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_alphabetic()) {
            p.push(
                at("currency"),
                format!(
                    "`{}` is not an ISO 4217 code; write e.g. \"GBP\"",
                    raw.currency
                ),
            );
        }
        let rate_limit = p.rate_limit(at("rate_limit"), &raw.rate_limit);
        let silence_alert = p.duration(at("silence_alert"), &raw.silence_alert);
        if !raw.order_path.contains("{orderId}") {
            p.push(
                at("order_path"),
                "must contain `{orderId}` where the order's id goes, e.g. \"orders/{orderId}\"",
            );
        }
        if reqwest::header::HeaderName::from_bytes(raw.signature_header.as_bytes()).is_err() {
            p.push(
                at("signature_header"),
                "is not a header name; write e.g. \"X-Grafterr-Signature\"",
            );
        }
        Some(GrafterrAccount {
            name: raw.name,
            base_url: base_url?,
            api_key,
            client_id: raw.client_id.trim().to_owned(),
            client_secret,
            path_token,
            signing_secret,
            currency,
            rate_limit,
            silence_alert,
            token_path: raw.token_path,
            order_path: raw.order_path,
            signature_header: raw.signature_header,
            enabled: raw.enabled,
        })
    }
}
