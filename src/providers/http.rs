//! The HTTP client every provider shares: timeouts, error classification, `Retry-After`, retries
//! with exponential backoff and jitter, and a rate gate per (provider, account).

use super::ProviderError;
use super::rate_window::{RateWindow, Ticket};
use crate::config::{HttpConfig, RateLimit};
use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use governor::{DefaultDirectRateLimiter, Quota};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// How long a 429 without `Retry-After` pauses the account before the backoff takes over.
const DEFAULT_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause a `Retry-After` can impose: the value comes from outside, and an absurd
/// one (a date years ahead) must not park an account, or a shutdown waiting on it, for good.
/// A longer quota window costs one more 429 after this.
const MAX_RATE_LIMIT_PAUSE: Duration = Duration::from_secs(15 * 60);

/// Paces every request of one (provider, account): a steady limiter plus a pause that a 429 sets.
/// Shared by everything that calls that account, because providers count all of its requests.
pub struct RateGate {
    limiter: DefaultDirectRateLimiter,
    /// N requests in any period, by when they could have arrived (see `rate_window`).
    window: Option<Arc<RateWindow>>,
    period: Duration,
    paused_until: Mutex<Option<Instant>>,
    rate_limited: AtomicU64,
    /// The account's labels in the metrics.
    labels: crate::metrics::AccountLabels,
    /// Asked before every request: false once this replica may no longer work for the account
    /// (its lease ran out), so a replica resumed after a pause sends nothing for it.
    owner: std::sync::OnceLock<OwnerCheck>,
}

type OwnerCheck = Arc<dyn Fn() -> bool + Send + Sync>;

impl RateGate {
    pub fn new(rate: RateLimit) -> Self {
        // One request per interval with no burst: the rate holds over any window, not on average.
        let quota = Quota::with_period(rate.interval())
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(NonZeroU32::MIN);
        let limiter = DefaultDirectRateLimiter::direct(quota);
        // Its one permit starts spent, so the first request waits one interval: the process
        // before this one (killed, or a `run --once` that just ended) may have sent a moment
        // ago, and the upstream counts both.
        let _ = limiter.check();
        RateGate {
            limiter,
            window: RateWindow::new(rate.requests.get(), rate.per),
            period: rate.per,
            paused_until: Mutex::new(None),
            rate_limited: AtomicU64::new(0),
            labels: crate::metrics::account("", ""),
            owner: std::sync::OnceLock::new(),
        }
    }

    /// The gate of one provider's account, named so in the metrics.
    pub fn for_account(rate: RateLimit, provider: &str, account: &str) -> Self {
        RateGate {
            labels: crate::metrics::account(provider, account),
            ..RateGate::new(rate)
        }
    }

    /// Waits until a request may be sent; refuses when this replica no longer works for the
    /// account.
    /// The ticket is the request's place in the rate's window: drop it when the answer came.
    pub async fn ready(&self) -> Result<Ticket, ProviderError> {
        loop {
            let pause = *self.paused_until.lock().await;
            match pause {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
        let ticket = match &self.window {
            Some(window) => window.admit().await,
            None => Ticket::unlimited(),
        };
        // Spacing last, so that waiting for a place in the window never bunches requests.
        self.limiter.until_ready().await;
        match self.owner.get() {
            Some(owns) if !owns() => Err(ProviderError::NotOwner),
            _ => Ok(ticket),
        }
    }

    /// Requests go out only while `owns` says this replica works for the account.
    pub fn only_while(&self, owns: impl Fn() -> bool + Send + Sync + 'static) {
        let _ = self.owner.set(Arc::new(owns));
    }

    /// The period the account's rate counts requests in.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Holds every request of this account for `duration` (not an upstream's 429: not counted
    /// as one).
    pub async fn hold_for(&self, duration: Duration) {
        let until = Instant::now() + duration;
        let mut paused = self.paused_until.lock().await;
        if paused.is_none_or(|current| current < until) {
            *paused = Some(until);
        }
    }

    /// Holds every request of this account for `duration` (an upstream 429 asked for it).
    pub async fn pause(&self, duration: Duration) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
        crate::metrics::metrics()
            .rate_gate_pauses
            .get_or_create(&self.labels)
            .inc();
        self.hold_for(duration).await;
    }

    /// Until when a 429 holds this account's requests, if it still does.
    pub async fn paused_until(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let until = (*self.paused_until.lock().await)?;
        let left = until.checked_duration_since(Instant::now())?;
        chrono::Duration::from_std(left)
            .ok()
            .map(|left| chrono::Utc::now() + left)
    }

    /// One request in the metrics: its outcome class and how long it took.
    fn count(&self, answered: &Result<Response, ProviderError>, took: Duration) {
        let outcome = match answered {
            Ok(response) if response.status < 300 => "2xx",
            Ok(_) => "4xx",
            Err(ProviderError::RateLimited { .. }) => "429",
            Err(ProviderError::Server { .. }) => "5xx",
            Err(ProviderError::Timeout) => "timeout",
            Err(ProviderError::Unauthorized { .. } | ProviderError::Rejected { .. }) => "4xx",
            Err(_) => "error",
        };
        let metrics = crate::metrics::metrics();
        metrics
            .upstream_requests
            .get_or_create(&crate::metrics::outcome(
                &self.labels.provider,
                &self.labels.account,
                outcome,
            ))
            .inc();
        metrics
            .upstream_request_duration
            .get_or_create(&self.labels)
            .observe(took.as_secs_f64());
    }

    /// How many 429 answers this account has had.
    pub fn rate_limited_count(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }
}

/// A response that passed status classification.
pub struct Response {
    pub status: u16,
    pub body: Bytes,
}

#[derive(Clone)]
pub struct HttpClient {
    client: reqwest::Client,
    config: Arc<HttpConfig>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the HTTP client: {0}")]
pub struct ClientBuildError(#[from] reqwest::Error);

impl HttpClient {
    pub fn new(config: &HttpConfig) -> Result<Self, ClientBuildError> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .user_agent(concat!("ordersync/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpClient {
            client,
            config: Arc::new(config.clone()),
        })
    }

    pub fn inner(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends the request `build` makes, retrying transient failures, and hands a 2xx body to
    /// `parse`. A body `parse` rejects as [`ProviderError::Malformed`] is fetched again too
    /// (a truncated transfer looks exactly like that). Only for requests that are safe to repeat.
    pub async fn send<T>(
        &self,
        provider: &'static str,
        gate: &RateGate,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        parse: impl Fn(Response) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        self.send_with(
            provider,
            gate,
            what,
            Repeat::Transient,
            Answers::Errors,
            build,
            parse,
        )
        .await
    }

    /// Like [`HttpClient::send`], but every 4xx answer but a 429 (401 and 403 too) goes to
    /// `parse` with its status: for upstreams whose error body, not the status, says what
    /// went wrong (Lagerkoll's `errorCode`). `parse` decides; a retryable error it returns is
    /// retried like any other.
    pub async fn send_reading_refusals<T>(
        &self,
        provider: &'static str,
        gate: &RateGate,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        parse: impl Fn(Response) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        self.send_with(
            provider,
            gate,
            what,
            Repeat::Transient,
            Answers::Every,
            build,
            parse,
        )
        .await
    }

    /// [`HttpClient::send_reading_refusals`] for a request that creates something: only a
    /// 429 is sent again.
    pub async fn send_once_reading_refusals<T>(
        &self,
        provider: &'static str,
        gate: &RateGate,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        parse: impl Fn(Response) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        self.send_with(
            provider,
            gate,
            what,
            Repeat::RateLimitedOnly,
            Answers::Every,
            build,
            parse,
        )
        .await
    }

    /// Like [`HttpClient::send`] for a request that must not be repeated blindly (it creates
    /// something): only a 429, which the upstream refused before doing anything, is retried.
    /// Any other failure goes back to the caller, who must find out what happened first.
    pub async fn send_unrepeatable<T>(
        &self,
        provider: &'static str,
        gate: &RateGate,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        parse: impl Fn(Response) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        self.send_with(
            provider,
            gate,
            what,
            Repeat::RateLimitedOnly,
            Answers::Errors,
            build,
            parse,
        )
        .await
    }

    /// Sends a request that creates something, once: only a 429 (refused before anything was
    /// done) is sent again. Any 2xx or 4xx answer other than 401/403/429 goes to `parse` with
    /// its status, so the caller reads the upstream's own refusal (a KassaForte 409's code).
    pub async fn send_once<T>(
        &self,
        provider: &'static str,
        gate: &RateGate,
        what: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        parse: impl Fn(Response) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        self.send_with(
            provider,
            gate,
            what,
            Repeat::RateLimitedOnly,
            Answers::ClientErrors,
            build,
            parse,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn send_with<T>(
        &self,
        provider: &'static str,
        gate: &RateGate,
        what: &str,
        repeat: Repeat,
        answers: Answers,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
        parse: impl Fn(Response) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.config.min_backoff)
            .with_max_delay(self.config.max_backoff)
            .with_max_times(self.config.max_retries)
            .with_jitter()
            .build();
        loop {
            let ticket = gate.ready().await?;
            let sent_at = std::time::Instant::now();
            let sent = build(&self.client).send().await;
            drop(ticket);
            let answered = match sent {
                Ok(response) => classify(provider, response, answers).await,
                Err(error) => Err(transport_error(&error)),
            };
            gate.count(&answered, sent_at.elapsed());
            let outcome = answered.and_then(&parse);
            let error = match outcome {
                Ok(value) => return Ok(value),
                Err(error) if !error.is_retryable() => return Err(error),
                Err(error)
                    if repeat != Repeat::Transient
                        && !matches!(error, ProviderError::RateLimited { .. }) =>
                {
                    return Err(error);
                }
                Err(error) => error,
            };
            let Some(backoff) = delays.next() else {
                return Err(error);
            };
            let delay = match &error {
                ProviderError::RateLimited { retry_after } => {
                    let wait = retry_after
                        .unwrap_or(DEFAULT_RATE_LIMIT_PAUSE.max(backoff))
                        .min(MAX_RATE_LIMIT_PAUSE);
                    gate.pause(wait).await;
                    Duration::ZERO
                }
                _ => backoff,
            };
            tracing::warn!(provider, request = what, %error, retry_in_ms = delay.as_millis() as u64, "retrying");
            tokio::time::sleep(delay).await;
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    Transient,
    RateLimitedOnly,
}

/// Which answers besides a 2xx go to the caller's `parse`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answers {
    /// None: every other status becomes a [`ProviderError`].
    Errors,
    /// 4xx other than 401, 403 and 429 (a KassaForte 409's code).
    ClientErrors,
    /// Every 4xx but 429 (Lagerkoll's `errorCode` decides, whatever the status).
    Every,
}

fn transport_error(error: &reqwest::Error) -> ProviderError {
    if error.is_timeout() {
        ProviderError::Timeout
    } else if error.is_connect() {
        ProviderError::Connect(error.without_url_text())
    } else {
        // Without the URL: it can carry query parameters that are nobody's business in a log.
        ProviderError::Transport(error.without_url_text())
    }
}

trait WithoutUrl {
    fn without_url_text(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_text(&self) -> String {
        let mut text = String::new();
        let mut source: Option<&dyn std::error::Error> = Some(self);
        while let Some(err) = source {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&err.to_string());
            source = err.source();
        }
        text
    }
}

async fn classify(
    provider: &'static str,
    response: reqwest::Response,
    answers: Answers,
) -> Result<Response, ProviderError> {
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = match response.bytes().await {
        Ok(body) => body,
        Err(error) => return Err(transport_error(&error)),
    };
    match status {
        200..=299 => Ok(Response { status, body }),
        400..=499 if answers == Answers::ClientErrors && !matches!(status, 401 | 403 | 429) => {
            Ok(Response { status, body })
        }
        400..=499 if answers == Answers::Every && status != 429 => Ok(Response { status, body }),
        429 => Err(ProviderError::RateLimited { retry_after }),
        401 | 403 => Err(ProviderError::Unauthorized {
            provider,
            status,
            message: error_message(&body),
        }),
        500..=599 => Err(ProviderError::Server { status }),
        _ => Err(ProviderError::Rejected {
            status,
            message: error_message(&body),
        }),
    }
}

/// The upstream's own words: `errorMessage`, `message`, `error` (a string, or an object with
/// `code` and `message`) from a JSON body, else the start of the text.
pub fn error_message(body: &[u8]) -> String {
    use serde_json::Value;
    if let Ok(value) = serde_json::from_slice::<Value>(body) {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
        if let Some(message) = text(value.get("errorMessage"))
            .or_else(|| text(value.get("message")))
            .or_else(|| text(value.get("error")))
        {
            return message;
        }
        if let Some(error) = value.get("error").filter(|e| e.is_object()) {
            match (text(error.get("code")), text(error.get("message"))) {
                (Some(code), Some(message)) => return format!("{code}: {message}"),
                (None, Some(message)) => return message,
                (Some(code), None) => return code,
                (None, None) => {}
            }
        }
    }
    let text = String::from_utf8_lossy(body);
    text.chars().take(200).collect()
}

/// `base` plus an API path, keeping any path prefix of `base` (a stage segment such as
/// Grafterr's `dev/`): one `/` between them whether or not either side has it.
pub fn join(base: &url::Url, path: &str) -> Result<url::Url, ProviderError> {
    let base = base.as_str().trim_end_matches('/');
    let path = path.trim_start_matches('/');
    url::Url::parse(&format!("{base}/{path}"))
        .map_err(|e| ProviderError::Transport(format!("cannot build the URL for {path}: {e}")))
}

/// `Retry-After` as seconds or as an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = at.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_new_gate_waits_one_interval_before_its_first_request() {
        let rate = RateLimit::parse("10/s").expect("a rate");
        let gate = RateGate::new(rate);
        let started = std::time::Instant::now();
        let first = gate.ready().await.expect("sent");
        // A little slack below the 100 ms interval: the limiter's wait is rounded to its timer.
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(90), "waited {waited:?}");
        drop(first);
        let second = gate.ready().await.expect("sent");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(190), "waited {waited:?}");
        drop(second);
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after("-1"), None);
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let wait = parse_retry_after(&soon).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn joining_keeps_the_stage_segment() {
        let base = url::Url::parse("https://x.execute-api.aws.com/dev/").unwrap();
        for path in ["orders/42", "/orders/42"] {
            assert_eq!(
                join(&base, path).unwrap().as_str(),
                "https://x.execute-api.aws.com/dev/orders/42"
            );
        }
        let bare = url::Url::parse("https://api.example.com").unwrap();
        assert_eq!(
            join(&bare, "/v3/poll").unwrap().as_str(),
            "https://api.example.com/v3/poll"
        );
    }

    #[test]
    fn error_message_prefers_the_upstream_field() {
        assert_eq!(
            error_message(br#"{"errorMessage":"Time Range is mandatory"}"#),
            "Time Range is mandatory"
        );
        assert_eq!(error_message(b"Bad Gateway"), "Bad Gateway");
        assert_eq!(
            error_message(br#"{"error":{"code":"invalid_command","message":"_cid is required"}}"#),
            "invalid_command: _cid is required"
        );
    }
}
