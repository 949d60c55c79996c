//! Get It Done: events pushed to our webhook (verified in [`signature`]) trigger a poll of the
//! order (`GET /v3/poll/job/{version}/{orderId}`), whose snapshot is the truth; commands go out
//! as `POST /v3/commands` and their outcome is read back by command id. What ordersync speaks
//! to Get It Done, and what is assumed: `docs/providers/getitdone.md`.

pub mod config;
pub mod contract;
pub mod signature;
pub mod webhook;
pub mod wire;

use super::http::{HttpClient, RateGate, Response, join};
use super::{OrderLookup, ProviderError};
use crate::model::{Order, ProviderKind, StreamKey};
use crate::providers::token::{Token, TokenRequest, TokenSource};
use async_trait::async_trait;
use chrono::Utc;
use config::GetItDoneAccount;
use contract::ApiContract;
use serde_json::Value;
use std::sync::Arc;
use url::Url;
use wire::{Command, CommandOutcome, FeedPage};

const PROVIDER: &str = "getitdone";

/// The resource name of an account's orders in `sync_cursors` (the re-poll's runs).
pub const ORDERS_RESOURCE: &str = "orders";
/// The resource name of the event feed (its cursor) in `sync_cursors`.
pub const EVENTS_RESOURCE: &str = "events";

/// What the command-status poll says about one command.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandStatus {
    /// 204: accepted, no outcome yet.
    Pending,
    /// 200: its CommandResultEvent or CommandErrorEvent.
    Finished(CommandOutcome),
    /// 404: never received, or its result is older than 24 hours.
    Unknown,
}

/// One configured Get It Done account's API.
pub struct GetItDoneClient {
    http: HttpClient,
    gate: Arc<RateGate>,
    tokens: TokenSource,
    stream: StreamKey,
    base_url: Url,
    version: String,
    api: ApiContract,
}

impl GetItDoneClient {
    pub fn new(
        http: HttpClient,
        gate: Arc<RateGate>,
        account: &GetItDoneAccount,
    ) -> Result<Self, ProviderError> {
        let token_url = join(&account.base_url, &account.api.token_path)?;
        Ok(GetItDoneClient {
            tokens: TokenSource::new(
                http.clone(),
                gate.clone(),
                TokenRequest {
                    provider: PROVIDER,
                    url: token_url,
                    client_id: account.client_id.clone(),
                    client_secret: account.client_secret.clone(),
                    api_key: None,
                },
            ),
            http,
            gate,
            stream: StreamKey {
                provider: ProviderKind::GetItDone,
                account: account.name.clone(),
                resource: ORDERS_RESOURCE.to_owned(),
            },
            base_url: account.base_url.clone(),
            version: account.api_version.clone(),
            api: account.api.clone(),
        })
    }

    pub fn account(&self) -> &str {
        &self.stream.account
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Sends one authorized request. A 401 gets one new token and one replay; a second 401 is
    /// returned as it is (the account's credentials are wrong). `repeatable` is false for a
    /// request that must not be sent twice blindly (a command): only a 429 is retried then.
    async fn authorized<T>(
        &self,
        method: reqwest::Method,
        url: &Url,
        body: Option<&Value>,
        repeatable: bool,
        parse: impl Fn(Response) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let what = format!("{method} {}", url.path());
        let used = std::sync::Mutex::new(self.tokens.token().await?);
        match self
            .send(&method, url, body, repeatable, &used, &what, &parse)
            .await
        {
            Err(ProviderError::Unauthorized { .. }) => {
                tracing::info!(account = %self.stream.account, request = %what, "token refused; fetching a new one");
                let refused = used.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let fresh = std::sync::Mutex::new(self.tokens.replace(&refused).await?);
                self.send(&method, url, body, repeatable, &fresh, &what, &parse)
                    .await
            }
            other => other,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn send<T>(
        &self,
        method: &reqwest::Method,
        url: &Url,
        body: Option<&Value>,
        repeatable: bool,
        used: &std::sync::Mutex<Token>,
        what: &str,
        parse: &impl Fn(Response) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        // Built after the rate gate let the request through: the newest token by then, which
        // another request may have refreshed while this one waited.
        let build = |client: &reqwest::Client| {
            let mut token = used.lock().unwrap_or_else(|e| e.into_inner());
            *token = self.tokens.newest_since(&token);
            let request = client
                .request(method.clone(), url.clone())
                .bearer_auth(token.value.expose())
                .header(reqwest::header::ACCEPT, "application/json");
            match body {
                Some(body) => request.json(body),
                None => request,
            }
        };
        if repeatable {
            self.http
                .send(PROVIDER, &self.gate, what, build, parse)
                .await
        } else {
            self.http
                .send_unrepeatable(PROVIDER, &self.gate, what, build, parse)
                .await
        }
    }

    /// The order's current snapshot; `None` when Get It Done does not know it (404).
    pub async fn poll_order(&self, order_id: &str) -> Result<Option<Order>, ProviderError> {
        let url = join(
            &self.base_url,
            &self.api.order_poll(&self.version, order_id),
        )?;
        // Taken before asking: a snapshot is at least as new as the moment it was requested,
        // so of two polls racing for one order the later request wins.
        let observed_at = Utc::now();
        let account = &self.stream.account;
        let result = self
            .authorized(reqwest::Method::GET, &url, None, true, |response| {
                wire::map_snapshot(account, order_id, &response.body, observed_at).map_err(|e| {
                    match e {
                        wire::SnapshotError::NotJson(text) => {
                            ProviderError::Malformed(format!("poll of {order_id}: {text}"))
                        }
                        other => {
                            ProviderError::InvalidRecord(format!("poll of {order_id}: {other}"))
                        }
                    }
                })
            })
            .await;
        match result {
            Ok(order) => Ok(Some(order)),
            Err(ProviderError::Rejected { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `POST` one command. Only a 429 is retried here: any other failure may hide a command
    /// that arrived, so the caller asks for its status before sending it again.
    pub async fn send_command(&self, command: &Command) -> Result<(), ProviderError> {
        let url = join(&self.base_url, &self.api.commands_path)?;
        let body = serde_json::to_value(command)
            .map_err(|e| ProviderError::InvalidRecord(format!("command: {e}")))?;
        self.authorized(reqwest::Method::POST, &url, Some(&body), false, |_| Ok(()))
            .await
    }

    /// What became of the command with this id.
    pub async fn command_status(&self, command_id: &str) -> Result<CommandStatus, ProviderError> {
        let url = join(
            &self.base_url,
            &self.api.command_status(&self.version, command_id),
        )?;
        let result = self
            .authorized(reqwest::Method::GET, &url, None, true, |response| {
                if response.status == 204 || response.body.is_empty() {
                    return Ok(CommandStatus::Pending);
                }
                match wire::command_outcome(&response.body) {
                    Ok(Some(outcome)) => Ok(CommandStatus::Finished(outcome)),
                    Ok(None) => Err(ProviderError::InvalidRecord(format!(
                        "status of command {command_id}: not a command outcome event"
                    ))),
                    Err(e) => Err(ProviderError::Malformed(format!(
                        "status of command {command_id}: {e}"
                    ))),
                }
            })
            .await;
        match result {
            Err(ProviderError::Rejected { status: 404, .. }) => Ok(CommandStatus::Unknown),
            other => other,
        }
    }

    /// One page of the (assumed) account event feed after `cursor`.
    pub async fn events(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<FeedPage, ProviderError> {
        let mut url = join(&self.base_url, &self.api.events_path)?;
        {
            let mut query = url.query_pairs_mut();
            if let Some(cursor) = cursor {
                query.append_pair("after", cursor);
            }
            query.append_pair("limit", &limit.to_string());
        }
        self.authorized(reqwest::Method::GET, &url, None, true, |response| {
            serde_json::from_slice(&response.body)
                .map_err(|e| ProviderError::Malformed(format!("GET events: {e}")))
        })
        .await
    }
}

#[async_trait]
impl OrderLookup for GetItDoneClient {
    fn stream(&self) -> &StreamKey {
        &self.stream
    }

    async fn order(
        &self,
        _channel: &str,
        external_id: &str,
    ) -> Result<Option<Order>, ProviderError> {
        self.poll_order(external_id).await
    }
}
