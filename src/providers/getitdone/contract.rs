//! Every path and header of the Get It Done contract that its public docs do not give, in one
//! place, each overridable per account under `[getitdone.api]` (see `docs/providers/getitdone.md`).
//! The documented ones (the per-order poll) are here too, so one table shows the whole API.

use crate::config::Problems;
use serde::Deserialize;

/// The paths and headers ordersync uses for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiContract {
    /// Assumed: `POST` with `{client_id, client_secret}` → `{access_token, expires_in}`.
    pub token_path: String,
    /// Documented: the latest state of one order; `{version}` and `{orderId}` are filled in.
    pub order_poll_path: String,
    /// Assumed path, documented behaviour: 204 pending, 200 outcome, 404 unknown or > 24 h.
    pub command_status_path: String,
    /// Assumed: `POST` one command → 202.
    pub commands_path: String,
    /// Assumed and off by default: `GET ?after=&limit=` → `{events, next_cursor}`.
    pub events_path: String,
    /// Assumed: `<unix seconds>` of a delivery.
    pub timestamp_header: String,
    /// Assumed: `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
    pub signature_header: String,
}

impl Default for ApiContract {
    fn default() -> Self {
        ApiContract {
            token_path: "/v3/auth/token".into(),
            order_poll_path: "/v3/poll/job/{version}/{orderId}".into(),
            command_status_path: "/v3/poll/command/{version}/{commandId}".into(),
            commands_path: "/v3/commands".into(),
            events_path: "/v3/events".into(),
            timestamp_header: "X-GID-Timestamp".into(),
            signature_header: "X-GID-Signature".into(),
        }
    }
}

/// `[getitdone.api]` as written: only what differs from the default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiContract {
    pub token_path: Option<String>,
    pub order_poll_path: Option<String>,
    pub command_status_path: Option<String>,
    pub commands_path: Option<String>,
    pub events_path: Option<String>,
    pub timestamp_header: Option<String>,
    pub signature_header: Option<String>,
}

impl RawApiContract {
    pub fn validate(self, at: &str, p: &mut Problems) -> ApiContract {
        let defaults = ApiContract::default();
        let mut path = |key: &str, given: Option<String>, default: String, holes: &[&str]| {
            let Some(given) = given else { return default };
            let missing: Vec<&&str> = holes.iter().filter(|h| !given.contains(**h)).collect();
            if !given.starts_with('/') {
                p.push(
                    format!("{at}.{key}"),
                    format!("`{given}` must start with `/`"),
                );
            } else if !missing.is_empty() {
                p.push(
                    format!("{at}.{key}"),
                    format!("`{given}` must contain {missing:?}, which ordersync fills in"),
                );
            }
            given
        };
        let token_path = path("token_path", self.token_path, defaults.token_path, &[]);
        let order_poll_path = path(
            "order_poll_path",
            self.order_poll_path,
            defaults.order_poll_path,
            &["{version}", "{orderId}"],
        );
        let command_status_path = path(
            "command_status_path",
            self.command_status_path,
            defaults.command_status_path,
            &["{version}", "{commandId}"],
        );
        let commands_path = path(
            "commands_path",
            self.commands_path,
            defaults.commands_path,
            &[],
        );
        let events_path = path("events_path", self.events_path, defaults.events_path, &[]);
        let mut header = |key: &str, given: Option<String>, default: String| {
            let Some(given) = given else { return default };
            if reqwest::header::HeaderName::from_bytes(given.as_bytes()).is_err() {
                p.push(
                    format!("{at}.{key}"),
                    format!("`{given}` is not a header name"),
                );
            }
            given
        };
        ApiContract {
            token_path,
            order_poll_path,
            command_status_path,
            commands_path,
            events_path,
            timestamp_header: header(
                "timestamp_header",
                self.timestamp_header,
                defaults.timestamp_header,
            ),
            signature_header: header(
                "signature_header",
                self.signature_header,
                defaults.signature_header,
            ),
        }
    }
}

impl ApiContract {
    pub fn order_poll(&self, version: &str, order_id: &str) -> String {
        self.order_poll_path
            .replace("{version}", &segment(version))
            .replace("{orderId}", &segment(order_id))
    }

    pub fn command_status(&self, version: &str, command_id: &str) -> String {
        self.command_status_path
            .replace("{version}", &segment(version))
            .replace("{commandId}", &segment(command_id))
    }
}

/// One path segment, percent-encoded: ids come from upstream and must not add segments.
fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_fill_their_holes_with_encoded_segments() {
        let api = ApiContract::default();
        assert_eq!(
            api.order_poll("1.1.0", "XXXtestOrder"),
            "/v3/poll/job/1.1.0/XXXtestOrder"
        );
        assert_eq!(
            api.order_poll("1.1.0", "a/b c"),
            "/v3/poll/job/1.1.0/a%2Fb%20c"
        );
        assert_eq!(
            api.command_status("1.1.0", "42"),
            "/v3/poll/command/1.1.0/42"
        );
    }

    #[test]
    fn overrides_are_checked() {
        let mut p = Problems::default();
        let raw = RawApiContract {
            order_poll_path: Some("/v4/job/{orderId}".into()),
            commands_path: Some("v3/commands".into()),
            signature_header: Some("bad header".into()),
            ..RawApiContract::default()
        };
        let api = raw.validate("getitdone[0].api", &mut p);
        assert_eq!(api.token_path, "/v3/auth/token");
        let text = format!("{:?}", p.into_problems());
        for key in ["order_poll_path", "commands_path", "signature_header"] {
            assert!(text.contains(key), "{key} in {text}");
        }
    }
}
