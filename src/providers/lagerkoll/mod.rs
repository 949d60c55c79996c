//! Lagerkoll: a webhook source. ordersync checks its credentials (`GET /v1/stores/`), keeps
//! the configured webhooks registered through the Webhooks API (`GET /{featureId}`,
//! `POST /?enable_for_group=`, `POST /{guid}` to fire one, `DELETE /{id}`), and receives their
//! deliveries (checked in [`webhook`]). Every call carries the `store` and `api_key` headers
//! and waits at the store's token bucket; error bodies are read by `errorCode` per resource.
//! What is documented and what is assumed: `docs/providers/lagerkoll.md`.

pub mod config;
pub mod webhook;
pub mod wire;

use super::ProviderError;
use super::http::{HttpClient, RateGate, Response, join};
use config::LagerkollAccount;
use serde::de::DeserializeOwned;
use std::sync::Arc;
use url::Url;
use wire::{ErrorBody, FeatureId, Refused, Resource, StoresAnswer, Webhook, WebhookId};

const PROVIDER: &str = "lagerkoll";

/// Why a Lagerkoll call did not succeed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LagerkollError {
    /// Credentials revoked, API feature off, store not listed: the store stops.
    #[error("{0}")]
    StopStore(String),
    /// This call cannot succeed as it is (a wrong feature id, an unknown code).
    #[error("{0}")]
    Permanent(String),
    #[error(transparent)]
    Upstream(ProviderError),
}

impl From<ProviderError> for LagerkollError {
    fn from(error: ProviderError) -> Self {
        match error {
            // The parse below turns store-stopping codes into these.
            ProviderError::Unauthorized { message, .. } => LagerkollError::StopStore(message),
            ProviderError::Rejected { message, .. } => LagerkollError::Permanent(message),
            other => LagerkollError::Upstream(other),
        }
    }
}

/// One configured store's API.
pub struct LagerkollClient {
    http: HttpClient,
    gate: Arc<RateGate>,
    base_url: Url,
    store: i64,
    api_key: crate::config::Secret,
}

impl LagerkollClient {
    pub fn new(http: HttpClient, gate: Arc<RateGate>, account: &LagerkollAccount) -> Self {
        LagerkollClient {
            http,
            gate,
            base_url: account.base_url.clone(),
            store: account.store,
            api_key: account.api_key.clone(),
        }
    }

    pub fn gate(&self) -> &Arc<RateGate> {
        &self.gate
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        url: &Url,
    ) -> reqwest::RequestBuilder {
        client
            .request(method, url.clone())
            .header("store", self.store.to_string())
            .header("api_key", self.api_key.expose())
            .header(reqwest::header::ACCEPT, "application/json")
    }

    /// Sends one call; `once` for a create, which is not repeated after a failure that may
    /// hide its success (the next reconciliation finds and adopts it).
    async fn call<T>(
        &self,
        resource: Resource,
        method: reqwest::Method,
        url: Url,
        body: Option<serde_json::Value>,
        once: bool,
        read: impl Fn(&[u8]) -> Result<T, String>,
    ) -> Result<T, LagerkollError> {
        let what = format!("{method} {}", url.path());
        let build = |client: &reqwest::Client| {
            let request = self.request(client, method.clone(), &url);
            match &body {
                Some(body) => request.json(body),
                None => request,
            }
        };
        let parse = |response: Response| {
            if response.status >= 400 {
                return Err(
                    match wire::interpret(
                        resource,
                        response.status,
                        &ErrorBody::parse(&response.body),
                    ) {
                        Refused::StopStore(message) => ProviderError::Unauthorized {
                            provider: PROVIDER,
                            status: response.status,
                            message,
                        },
                        Refused::Transient(_) => ProviderError::Server {
                            status: response.status,
                        },
                        Refused::Permanent(message) => ProviderError::Rejected {
                            status: response.status,
                            message: format!("{what}: {message}"),
                        },
                    },
                );
            }
            read(&response.body).map_err(|e| ProviderError::Malformed(format!("{what}: {e}")))
        };
        let result = if once {
            self.http
                .send_once_reading_refusals(PROVIDER, &self.gate, &what, build, parse)
                .await
        } else {
            self.http
                .send_reading_refusals(PROVIDER, &self.gate, &what, build, parse)
                .await
        };
        result.map_err(LagerkollError::from)
    }

    fn url(&self, path: &str) -> Result<Url, LagerkollError> {
        join(&self.base_url, path).map_err(LagerkollError::Upstream)
    }

    /// `GET /v1/stores/`: the stores these credentials reach.
    pub async fn stores(&self) -> Result<StoresAnswer, LagerkollError> {
        self.call(
            Resource::Stores,
            reqwest::Method::GET,
            self.url("stores/")?,
            None,
            false,
            json,
        )
        .await
    }

    /// `GET /v1/webhooks/{featureId}`: every webhook of a feature, ours or not.
    pub async fn webhooks(&self, feature: &FeatureId) -> Result<Vec<Webhook>, LagerkollError> {
        let url = self.url(&format!("webhooks/{}", encode(&feature.0)))?;
        self.call(
            Resource::Webhooks,
            reqwest::Method::GET,
            url,
            None,
            false,
            |body| json::<wire::WebhookList>(body).map(|list| list.webhooks),
        )
        .await
    }

    /// `POST /v1/webhooks/?enable_for_group=…` with our URL.
    pub async fn create(
        &self,
        feature: &FeatureId,
        method: &str,
        url: &str,
        group_wide: bool,
    ) -> Result<Webhook, LagerkollError> {
        let mut endpoint = self.url("webhooks/")?;
        endpoint.query_pairs_mut().append_pair(
            "enable_for_group",
            if group_wide { "true" } else { "false" },
        );
        let body =
            serde_json::json!({ "featureId": feature.0, "featureMethod": method, "url": url });
        self.call(
            Resource::Webhooks,
            reqwest::Method::POST,
            endpoint,
            Some(body),
            true,
            json,
        )
        .await
    }

    /// `POST /v1/webhooks/{guid}`: fires the webhook once (a test delivery to its URL).
    pub async fn execute(&self, guid: &str) -> Result<(), LagerkollError> {
        let url = self.url(&format!("webhooks/{}", encode(guid)))?;
        self.call(
            Resource::Webhooks,
            reqwest::Method::POST,
            url,
            None,
            true,
            |_| Ok(()),
        )
        .await
    }

    /// `DELETE /v1/webhooks/{id}`.
    pub async fn delete(&self, id: WebhookId) -> Result<(), LagerkollError> {
        let url = self.url(&format!("webhooks/{}", id.0))?;
        self.call(
            Resource::Webhooks,
            reqwest::Method::DELETE,
            url,
            None,
            false,
            |_| Ok(()),
        )
        .await
    }
}

fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect()
}
