//! One bearer token per account, shared by every task of that account (Get It Done, Grafterr).
//! A token is refreshed shortly before it expires, one refresh at a time (the others wait for
//! its result); a token the API refused is replaced once, by whichever task noticed first.

use crate::config::Secret;
use crate::providers::ProviderError;
use crate::providers::http::{HttpClient, RateGate};
use base64::Engine;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

/// Used when the token tells no lifetime (neither `expires_in` nor a readable `exp`).
const UNKNOWN_LIFETIME: Duration = Duration::from_secs(300);

/// A token and which refresh produced it.
#[derive(Clone)]
pub struct Token {
    pub value: Secret,
    pub generation: u64,
}

struct Cached {
    token: Token,
    refresh_at: Instant,
}

/// Where and how an account asks for its token.
pub struct TokenRequest {
    pub provider: &'static str,
    pub url: Url,
    pub client_id: String,
    pub client_secret: Secret,
    /// A header sent with the token request too (Grafterr's `x-api-key`).
    pub api_key: Option<(&'static str, Secret)>,
}

/// The token answer, read leniently: `access_token`, `token` or `data.access_token`, with
/// `expires_in` when given (else the JWT's `exp`).
#[derive(Debug, serde::Deserialize)]
struct TokenResponse {
    #[serde(default, alias = "token")]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    data: Option<Box<TokenResponse>>,
}

impl TokenResponse {
    fn into_parts(self) -> Option<(String, Option<u64>)> {
        match (self.access_token, self.data) {
            (Some(token), _) if !token.is_empty() => Some((token, self.expires_in)),
            (_, Some(data)) => data
                .into_parts()
                .map(|(token, expires)| (token, expires.or(self.expires_in))),
            _ => None,
        }
    }
}

pub struct TokenSource {
    http: HttpClient,
    gate: Arc<RateGate>,
    request: TokenRequest,
    // Held across the token request: that is the single flight.
    cached: Mutex<Option<Cached>>,
    /// The newest token, readable without waiting: a request picks it up when the rate gate
    /// lets it through, so a wait at the gate cannot outlast its token.
    newest: std::sync::Mutex<Option<Token>>,
    generation: std::sync::atomic::AtomicU64,
}

impl TokenSource {
    pub fn new(http: HttpClient, gate: Arc<RateGate>, request: TokenRequest) -> Self {
        TokenSource {
            http,
            gate,
            request,
            cached: Mutex::new(None),
            newest: std::sync::Mutex::new(None),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The newest token when it is newer than `token`, else `token`.
    pub fn newest_since(&self, token: &Token) -> Token {
        let newest = self.newest.lock().unwrap_or_else(|e| e.into_inner());
        match newest.as_ref() {
            Some(newer) if newer.generation > token.generation => newer.clone(),
            _ => token.clone(),
        }
    }

    fn keep(&self, cached: &mut Option<Cached>, fresh: Cached) -> Token {
        let token = fresh.token.clone();
        *cached = Some(fresh);
        *self.newest.lock().unwrap_or_else(|e| e.into_inner()) = Some(token.clone());
        token
    }

    /// A token that is not about to expire.
    pub async fn token(&self) -> Result<Token, ProviderError> {
        let mut cached = self.cached.lock().await;
        if let Some(current) = cached.as_ref()
            && current.refresh_at > Instant::now()
        {
            return Ok(current.token.clone());
        }
        let fresh = self.fetch().await?;
        Ok(self.keep(&mut cached, fresh))
    }

    /// The API refused `refused`: a new token, unless another task already replaced it.
    pub async fn replace(&self, refused: &Token) -> Result<Token, ProviderError> {
        let mut cached = self.cached.lock().await;
        if let Some(current) = cached.as_ref()
            && current.token.generation != refused.generation
            && current.refresh_at > Instant::now()
        {
            return Ok(current.token.clone());
        }
        let fresh = self.fetch().await?;
        Ok(self.keep(&mut cached, fresh))
    }

    async fn fetch(&self) -> Result<Cached, ProviderError> {
        let request = &self.request;
        let body = serde_json::json!({
            "client_id": request.client_id,
            "client_secret": request.client_secret.expose(),
        });
        let what = format!("POST {}", request.url.path());
        let requested_at = Instant::now();
        let (access_token, expires_in) = self
            .http
            .send(
                request.provider,
                &self.gate,
                &what,
                |client| {
                    let post = client.post(request.url.clone()).json(&body);
                    match &request.api_key {
                        Some((name, key)) => post.header(*name, key.expose()),
                        None => post,
                    }
                },
                |response| {
                    serde_json::from_slice::<TokenResponse>(&response.body)
                        .map_err(|e| ProviderError::Malformed(format!("{what}: {e}")))?
                        .into_parts()
                        .ok_or_else(|| {
                            ProviderError::Malformed(format!(
                                "{what}: no `access_token` (nor `token`, `data.access_token`) in the answer"
                            ))
                        })
                },
            )
            .await?;
        let lifetime = expires_in
            .map(Duration::from_secs)
            .or_else(|| jwt_lifetime(&access_token))
            .unwrap_or(UNKNOWN_LIFETIME);
        // Refresh a minute early, or a quarter of a short lifetime early: a request may wait
        // at the rate gate between taking the token and sending it.
        let margin = (lifetime / 4).min(Duration::from_secs(60));
        let generation = 1 + self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            provider = request.provider,
            account_client = %request.client_id,
            lifetime_s = lifetime.as_secs(),
            generation,
            "token refreshed"
        );
        Ok(Cached {
            token: Token {
                value: Secret::new(access_token),
                generation,
            },
            refresh_at: requested_at + lifetime.saturating_sub(margin),
        })
    }
}

/// The time left on a JWT by its `exp` claim, when it has one.
fn jwt_lifetime(token: &str) -> Option<Duration> {
    let claims = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(claims.trim_end_matches('='))
        .ok()?;
    let exp = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()?
        .get("exp")?
        .as_i64()?;
    let left = exp - chrono::Utc::now().timestamp();
    Some(Duration::from_secs(u64::try_from(left).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jwt_tells_its_lifetime_by_exp() {
        let exp = chrono::Utc::now().timestamp() + 120;
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!(r#"{{"sub":"x","exp":{exp}}}"#));
        let left = jwt_lifetime(&format!("eyJhbGciOiJIUzI1NiJ9.{claims}.sig")).unwrap();
        assert!(left > Duration::from_secs(115) && left <= Duration::from_secs(120));
        assert_eq!(jwt_lifetime("opaque-token"), None);
    }

    #[test]
    fn token_answers_are_read_in_every_known_shape() {
        let read = |text: &str| {
            serde_json::from_str::<TokenResponse>(text)
                .unwrap()
                .into_parts()
        };
        assert_eq!(
            read(r#"{"access_token":"a","expires_in":60}"#),
            Some(("a".into(), Some(60)))
        );
        assert_eq!(read(r#"{"token":"b"}"#), Some(("b".into(), None)));
        assert_eq!(
            read(r#"{"data":{"access_token":"c","expires_in":30}}"#),
            Some(("c".into(), Some(30)))
        );
        assert_eq!(read(r#"{"token_type":"Bearer"}"#), None);
    }
}
