//! One JWT per account, shared by every task of that account. A token is refreshed shortly
//! before it expires, one refresh at a time (the others wait for its result); a token the API
//! refused is replaced once, by whichever task noticed first.

use super::wire::TokenResponse;
use crate::config::Secret;
use crate::providers::ProviderError;
use crate::providers::http::{HttpClient, RateGate};
use base64::Engine;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;
use url::Url;

const PROVIDER: &str = "getitdone";
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

pub struct TokenSource {
    http: HttpClient,
    gate: Arc<RateGate>,
    url: Url,
    client_id: String,
    client_secret: Secret,
    // Held across the token request: that is the single flight.
    cached: Mutex<Option<Cached>>,
    /// The newest token, readable without waiting: a request picks it up when the rate gate
    /// lets it through, so a wait at the gate cannot outlast its token.
    newest: std::sync::Mutex<Option<Token>>,
    generation: std::sync::atomic::AtomicU64,
}

impl TokenSource {
    pub fn new(
        http: HttpClient,
        gate: Arc<RateGate>,
        url: Url,
        client_id: &str,
        client_secret: Secret,
    ) -> Self {
        TokenSource {
            http,
            gate,
            url,
            client_id: client_id.to_owned(),
            client_secret,
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
        let body = serde_json::json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret.expose(),
        });
        let what = format!("POST {}", self.url.path());
        let requested_at = Instant::now();
        let response: TokenResponse = self
            .http
            .send(
                PROVIDER,
                &self.gate,
                &what,
                |client| client.post(self.url.clone()).json(&body),
                |response| {
                    serde_json::from_slice(&response.body)
                        .map_err(|e| ProviderError::Malformed(format!("{what}: {e}")))
                },
            )
            .await?;
        let lifetime = response
            .expires_in
            .map(Duration::from_secs)
            .or_else(|| jwt_lifetime(&response.access_token))
            .unwrap_or(UNKNOWN_LIFETIME);
        // Refresh a minute early, or a quarter of a short lifetime early: a request may wait
        // at the rate gate between taking the token and sending it.
        let margin = (lifetime / 4).min(Duration::from_secs(60));
        let generation = 1 + self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            account_client = %self.client_id,
            lifetime_s = lifetime.as_secs(),
            generation,
            "Get It Done token refreshed"
        );
        Ok(Cached {
            token: Token {
                value: Secret::new(response.access_token),
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
}
