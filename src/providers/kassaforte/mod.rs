//! KassaForte: a restaurant till with a webshop API. ordersync watches each shop's state
//! (`/v1/infos`), keeps its documents (menu, open hours, delivery costs) and submits orders to
//! it. HTTP Basic on every request, one set of credentials per shop. Never the database.

pub mod config;
pub mod conflict;
pub mod hours;
pub mod submission;
pub mod wire;

use super::ProviderError;
use super::http::{HttpClient, RateGate, Response};
use crate::config::Secret;
use crate::store::ShopDocumentKind;
use base64::Engine;
use config::{CheckInput, KassaForteShop};
use conflict::Conflict;
use std::sync::Arc;
use url::Url;
use wire::{Coupon, Discount, Infos};

const PROVIDER: &str = "kassaforte";

/// One shop's API: its credentials and the rate gate every request of the shop waits at.
pub struct KassaForteClient {
    http: HttpClient,
    gate: Arc<RateGate>,
    shop: String,
    base_url: Url,
    /// `Basic base64(user:password)`, built once; a [`Secret`] so it never prints.
    authorization: Secret,
    check_input: CheckInput,
}

/// A document as fetched: its body exactly as received.
#[derive(Debug, Clone)]
pub struct FetchedDocument {
    pub kind: ShopDocumentKind,
    pub body: String,
}

/// What KassaForte answered to `POST /v1/order`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SubmitAnswer {
    /// `201`: validated and awaiting transmission to the till.
    Created { order_id: String, body: String },
    /// `409`: the order differs from the shop's data.
    Conflict(Conflict),
    /// Another 4xx: the request itself is wrong (400: schema), never worth sending again.
    Refused { status: u16, message: String },
}

impl KassaForteClient {
    pub fn new(http: HttpClient, gate: Arc<RateGate>, shop: &KassaForteShop) -> Self {
        let credentials = format!("{}:{}", shop.username, shop.password.expose());
        let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
        KassaForteClient {
            http,
            gate,
            shop: shop.name.clone(),
            base_url: shop.base_url.clone(),
            authorization: Secret::new(format!("Basic {encoded}")),
            check_input: shop.check_input,
        }
    }

    pub fn shop(&self) -> &str {
        &self.shop
    }

    /// `base` plus an API path, keeping any path prefix of `base`.
    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        let base = self.base_url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path}")).map_err(|e| {
            ProviderError::InvalidRecord(format!("cannot build the URL for {path}: {e}"))
        })
    }

    fn request(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        url: &Url,
    ) -> reqwest::RequestBuilder {
        client
            .request(method, url.clone())
            .header(reqwest::header::AUTHORIZATION, self.authorization.expose())
            .header(reqwest::header::ACCEPT, "application/json")
    }

    /// A repeatable GET whose 2xx body `parse` reads.
    async fn get<T>(
        &self,
        url: &Url,
        parse: impl Fn(Response) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        let what = format!("GET {}", url.path());
        self.http
            .send(
                PROVIDER,
                &self.gate,
                &what,
                |client| self.request(client, reqwest::Method::GET, url),
                parse,
            )
            .await
    }

    /// `GET /v1/infos`: the state as parsed (or why it is not infos, for the caller to
    /// quarantine) and the body as received.
    pub async fn infos(&self) -> Result<(Result<Infos, String>, String), ProviderError> {
        let url = self.url("/v1/infos")?;
        let body = self.get(&url, json_text("GET /v1/infos")).await?;
        Ok((Infos::parse(body.as_bytes()), body))
    }

    /// `GET /v1/menu`, `/v1/openhours` or `/v1/deliverycosts` (whose body may be `null`).
    pub async fn document(&self, kind: ShopDocumentKind) -> Result<FetchedDocument, ProviderError> {
        let path = format!("/v1/{}", kind.as_str());
        let url = self.url(&path)?;
        let body = self.get(&url, json_text(&format!("GET {path}"))).await?;
        Ok(FetchedDocument { kind, body })
    }

    /// `GET /v1/order/{id}`: the order's status as sent, and the body.
    pub async fn order_status(&self, order_id: &str) -> Result<(String, String), ProviderError> {
        if !wire::valid_order_id(order_id) {
            return Err(ProviderError::InvalidRecord(format!(
                "order id `{order_id}` is not 14 digits"
            )));
        }
        let url = self.url(&format!("/v1/order/{order_id}"))?;
        let body = self.get(&url, json_text("GET /v1/order/{id}")).await?;
        let status = wire::order_status(body.as_bytes()).map_err(ProviderError::InvalidRecord)?;
        Ok((status, body))
    }

    /// `POST /v1/order`, once. A 429 is waited out and sent again (nothing was created); every
    /// other failure is the caller's to judge: [`ProviderError::Connect`] means the request never
    /// left, a timeout or a broken answer means the order may exist.
    pub async fn submit(&self, wire_body: &str) -> Result<SubmitAnswer, ProviderError> {
        let url = self.url("/v1/order")?;
        let body = wire_body.to_owned();
        self.http
            .send_once(
                PROVIDER,
                &self.gate,
                "POST /v1/order",
                |client| {
                    self.request(client, reqwest::Method::POST, &url)
                        .header(reqwest::header::CONTENT_TYPE, "application/json")
                        .body(body.clone())
                },
                |response| match response.status {
                    200..=299 => {
                        let body = String::from_utf8_lossy(&response.body).into_owned();
                        wire::created_order_id(&response.body)
                            .map(|order_id| SubmitAnswer::Created { order_id, body })
                            .map_err(|e| ProviderError::Malformed(format!("POST /v1/order: {e}")))
                    }
                    409 => {
                        let parsed = wire::conflict_body(&response.body);
                        Ok(SubmitAnswer::Conflict(Conflict::parse(
                            parsed.code,
                            &parsed.message,
                        )))
                    }
                    status => Ok(SubmitAnswer::Refused {
                        status,
                        message: super::http::error_message(&response.body),
                    }),
                },
            )
            .await
    }

    /// `GET /v1/discountcode` for one code.
    pub async fn check_discount(&self, code: &str) -> Result<Discount, ProviderError> {
        let body = self.check("/v1/discountcode", &[("code", code)]).await?;
        Discount::parse(body.as_bytes()).map_err(ProviderError::InvalidRecord)
    }

    /// `GET /v1/coupon` for a coupon number and its verify code.
    pub async fn check_coupon(
        &self,
        number: &str,
        verify_code: &str,
    ) -> Result<Coupon, ProviderError> {
        let body = self
            .check(
                "/v1/coupon",
                &[("number", number), ("verifyCode", verify_code)],
            )
            .await?;
        Coupon::parse(body.as_bytes()).map_err(ProviderError::InvalidRecord)
    }

    /// A check GET with its input as query parameters or (configured) a JSON body.
    async fn check(&self, path: &str, input: &[(&str, &str)]) -> Result<String, ProviderError> {
        let mut url = self.url(path)?;
        let mut body = serde_json::Map::new();
        match self.check_input {
            CheckInput::Query => {
                url.query_pairs_mut().extend_pairs(input.iter().copied());
            }
            CheckInput::Body => {
                for (key, value) in input {
                    body.insert((*key).to_owned(), serde_json::Value::from(*value));
                }
            }
        }
        let what = format!("GET {path}");
        self.http
            .send(
                PROVIDER,
                &self.gate,
                &what,
                |client| {
                    let request = self.request(client, reqwest::Method::GET, &url);
                    match self.check_input {
                        CheckInput::Query => request,
                        CheckInput::Body => request.json(&body),
                    }
                },
                json_text(&what),
            )
            .await
    }
}

/// A 2xx body that must be JSON, as text; anything else was cut off or is not the API.
fn json_text(what: &str) -> impl Fn(Response) -> Result<String, ProviderError> + '_ {
    move |response| {
        serde_json::from_slice::<serde::de::IgnoredAny>(&response.body)
            .map_err(|e| ProviderError::Malformed(format!("{what}: {e}")))?;
        String::from_utf8(response.body.to_vec())
            .map_err(|e| ProviderError::Malformed(format!("{what}: {e}")))
    }
}
