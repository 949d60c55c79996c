//! Grafterr: orders are pushed to our webhook (checked in [`webhook`]); the API is called only
//! for a token and to read an order whose delivery came without its items. Every call carries
//! `Authorization: Bearer` and `x-api-key`; the base URL's stage segment (`dev/`, `prod/`)
//! survives every join. What is documented and what is assumed: `docs/providers/grafterr.md`.

pub mod config;
pub mod webhook;
pub mod wire;

use super::ProviderError;
use super::http::{HttpClient, RateGate, join};
use super::token::{Token, TokenRequest, TokenSource};
use config::GrafterrAccount;
use serde_json::value::RawValue;
use std::sync::Arc;
use url::Url;

const PROVIDER: &str = "grafterr";
const API_KEY_HEADER: &str = "x-api-key";

/// One configured Grafterr account's API.
pub struct GrafterrClient {
    http: HttpClient,
    gate: Arc<RateGate>,
    tokens: TokenSource,
    account: String,
    base_url: Url,
    order_path: String,
    api_key: crate::config::Secret,
}

impl GrafterrClient {
    pub fn new(
        http: HttpClient,
        gate: Arc<RateGate>,
        account: &GrafterrAccount,
    ) -> Result<Self, ProviderError> {
        let token_url = join(&account.base_url, &account.token_path)?;
        Ok(GrafterrClient {
            tokens: TokenSource::new(
                http.clone(),
                gate.clone(),
                TokenRequest {
                    provider: PROVIDER,
                    url: token_url,
                    client_id: account.client_id.clone(),
                    client_secret: account.client_secret.clone(),
                    api_key: Some((API_KEY_HEADER, account.api_key.clone())),
                },
            ),
            http,
            gate,
            account: account.name.clone(),
            base_url: account.base_url.clone(),
            order_path: account.order_path.clone(),
            api_key: account.api_key.clone(),
        })
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    /// The order as Grafterr has it now; `None` when it does not know it (404). A refused
    /// token is replaced once; a second refusal is returned (the credentials are wrong).
    pub async fn order(&self, order_id: &str) -> Result<Option<Box<RawValue>>, ProviderError> {
        let encoded: String = url::form_urlencoded::byte_serialize(order_id.as_bytes()).collect();
        let url = join(
            &self.base_url,
            &self.order_path.replace("{orderId}", &encoded),
        )?;
        let used = std::sync::Mutex::new(self.tokens.token().await?);
        let result = match self.get_order(&url, &used).await {
            Err(ProviderError::Unauthorized { status: 401, .. }) => {
                tracing::info!(account = %self.account, "Grafterr refused the token; fetching a new one");
                // The token the request carried, which may be newer than the one it started with.
                let refused = used.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let fresh = std::sync::Mutex::new(self.tokens.replace(&refused).await?);
                self.get_order(&url, &fresh).await
            }
            other => other,
        };
        match result {
            Ok(order) => Ok(Some(order)),
            Err(ProviderError::Rejected { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// One read with the token in `used`, which is updated to the newest token when the rate
    /// gate lets the request through.
    async fn get_order(
        &self,
        url: &Url,
        used: &std::sync::Mutex<Token>,
    ) -> Result<Box<RawValue>, ProviderError> {
        let what = format!("GET {}", url.path());
        self.http
            .send(
                PROVIDER,
                &self.gate,
                &what,
                |client| {
                    // The newest token once the rate gate let the request through.
                    let mut token = used.lock().unwrap_or_else(|e| e.into_inner());
                    *token = self.tokens.newest_since(&token);
                    client
                        .get(url.clone())
                        .bearer_auth(token.value.expose())
                        .header(API_KEY_HEADER, self.api_key.expose())
                        .header(reqwest::header::ACCEPT, "application/json")
                },
                |response| {
                    wire::fetched_order(&response.body)
                        .map_err(|e| ProviderError::Malformed(format!("{what}: {e}")))
                },
            )
            .await
    }
}
