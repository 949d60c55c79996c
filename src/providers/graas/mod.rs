//! Graas: orders read by time window (`GET /v1/orders`) and one at a time
//! (`GET /v1/order/{nickNameID}/{orderID}`); accept/cancel (`PUT /v1/orders`) and ASNs
//! (`/v1/asn`). What ordersync speaks to Graas: `docs/providers/graas.md`.

pub mod config;
pub mod outbound;
pub mod wire;

use super::http::{HttpClient, RateGate, Response};
use super::{OrderLookup, ProviderError, TimeWindow, WindowPage, WindowSource};
use crate::config::Secret;
use crate::model::{Order, ProviderKind, Quarantined, StreamKey};
use async_trait::async_trait;
use config::GraasAccount;
use outbound::{AsnStatus, ItemResult, OrderUpdate};
use serde_json::value::RawValue;
use std::sync::Arc;
use url::Url;

const PROVIDER: &str = "graas";

/// The resource name of the order stream in `sync_cursors`.
pub const ORDERS_RESOURCE: &str = "orders";

/// One configured Graas account's API.
pub struct GraasClient {
    http: HttpClient,
    gate: Arc<RateGate>,
    stream: StreamKey,
    base_url: Url,
    account_number: String,
    app_key: Secret,
}

impl GraasClient {
    pub fn new(http: HttpClient, gate: Arc<RateGate>, account: &GraasAccount) -> Self {
        GraasClient {
            http,
            gate,
            stream: StreamKey {
                provider: ProviderKind::Graas,
                account: account.name.clone(),
                resource: ORDERS_RESOURCE.to_owned(),
            },
            base_url: account.base_url.clone(),
            account_number: account.account_number.clone(),
            app_key: account.app_key.clone(),
        }
    }

    pub fn gate(&self) -> &Arc<RateGate> {
        &self.gate
    }

    fn url(&self, path: &str) -> Result<Url, ProviderError> {
        let base = self.base_url.as_str().trim_end_matches('/');
        Url::parse(&format!("{base}{path}"))
            .map_err(|e| ProviderError::Transport(format!("cannot build the URL for {path}: {e}")))
    }

    fn request(&self, client: &reqwest::Client, url: &Url) -> reqwest::RequestBuilder {
        self.request_with(client, reqwest::Method::GET, url)
    }

    fn request_with(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        url: &Url,
    ) -> reqwest::RequestBuilder {
        client
            .request(method, url.clone())
            .header("accountNumber", &self.account_number)
            .header("appKey", self.app_key.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
    }

    /// `GET /v1/order/{nickNameID}/{orderID}`; `None` when Graas does not know the order.
    pub async fn order(
        &self,
        channel: &str,
        order_id: &str,
    ) -> Result<Option<Order>, ProviderError> {
        let mut url = self.url("/v1/order")?;
        url.path_segments_mut()
            .map_err(|()| ProviderError::Transport("base_url cannot take a path".into()))?
            .push(channel)
            .push(order_id);
        let what = format!("GET /v1/order/{channel}/{order_id}");
        let result = self
            .http
            .send(
                PROVIDER,
                &self.gate,
                &what,
                |client| self.request(client, &url),
                |response| {
                    let raw: Box<RawValue> = serde_json::from_slice(&response.body)
                        .map_err(|e| ProviderError::Malformed(format!("{what}: {e}")))?;
                    wire::map_order(&self.stream.account, &raw)
                        .map_err(|e| ProviderError::InvalidRecord(format!("{what}: {e}")))
                },
            )
            .await;
        match result {
            Ok(order) => Ok(Some(order)),
            Err(ProviderError::Rejected { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// `PUT /v1/orders`: one result per item, in the order sent. A batch Graas refuses as a
    /// whole (4xx) is sent again one item at a time, so one bad item cannot fail its neighbours.
    pub async fn put_orders(
        &self,
        updates: &[OrderUpdate],
    ) -> Result<Vec<ItemResult>, ProviderError> {
        match self.put_batch(updates).await {
            Err(ProviderError::Rejected { .. }) if updates.len() > 1 => {
                let mut results = Vec::with_capacity(updates.len());
                for update in updates {
                    results.push(match self.put_batch(std::slice::from_ref(update)).await {
                        Ok(mut one) => one.pop().ok_or_else(|| {
                            ProviderError::Inconsistent("PUT /v1/orders: empty result".into())
                        })?,
                        Err(ProviderError::Rejected { status, message }) => ItemResult::Refused {
                            http_code: status,
                            message,
                        },
                        Err(error) => return Err(error),
                    });
                }
                Ok(results)
            }
            other => other,
        }
    }

    async fn put_batch(&self, updates: &[OrderUpdate]) -> Result<Vec<ItemResult>, ProviderError> {
        let url = self.url("/v1/orders")?;
        let body = serde_json::json!({ "data": updates });
        self.http
            .send(
                PROVIDER,
                &self.gate,
                "PUT /v1/orders",
                |client| {
                    self.request_with(client, reqwest::Method::PUT, &url)
                        .json(&body)
                },
                |response| outbound::parse_put_response(&response.body, updates),
            )
            .await
    }

    /// `POST /v1/asn`: the new `asnID`. Not repeated on failure: a timeout may hide an ASN
    /// that was created, so the caller looks it up ([`GraasClient::find_asns`]) first.
    pub async fn create_asn(&self, body: &serde_json::Value) -> Result<i64, ProviderError> {
        let url = self.url("/v1/asn")?;
        self.http
            .send_unrepeatable(
                PROVIDER,
                &self.gate,
                "POST /v1/asn",
                |client| {
                    self.request_with(client, reqwest::Method::POST, &url)
                        .json(body)
                },
                |response| outbound::parse_asn_created(&response.body),
            )
            .await
    }

    /// `GET /v1/asn?warehouseID=&supplierID=&supplierRef=`: the ASNs made under that reference.
    pub async fn find_asns(
        &self,
        warehouse_id: &str,
        supplier_id: i64,
        supplier_ref: &str,
    ) -> Result<Vec<i64>, ProviderError> {
        let mut url = self.url("/v1/asn")?;
        url.query_pairs_mut()
            .append_pair("warehouseID", warehouse_id)
            .append_pair("supplierID", &supplier_id.to_string())
            .append_pair("supplierRef", supplier_ref);
        self.http
            .send(
                PROVIDER,
                &self.gate,
                "GET /v1/asn",
                |client| self.request(client, &url),
                |response| outbound::parse_asn_ids(&response.body),
            )
            .await
    }

    /// `GET /v1/asn/{asnID}?warehouseID=`; `None` when Graas does not know it.
    pub async fn asn(
        &self,
        warehouse_id: &str,
        asn_id: i64,
    ) -> Result<Option<AsnStatus>, ProviderError> {
        let mut url = self.url(&format!("/v1/asn/{asn_id}"))?;
        url.query_pairs_mut()
            .append_pair("warehouseID", warehouse_id);
        let what = format!("GET /v1/asn/{asn_id}");
        let result = self
            .http
            .send(
                PROVIDER,
                &self.gate,
                &what,
                |client| self.request(client, &url),
                |response| outbound::parse_asn(&response.body, asn_id),
            )
            .await;
        match result {
            Ok(asn) => Ok(Some(asn)),
            Err(ProviderError::Rejected { status: 404, .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn parse_page(
        &self,
        window: TimeWindow,
        page_number: u32,
        response: Response,
    ) -> Result<WindowPage, ProviderError> {
        let source = format!(
            "GET /v1/orders updatedAfter={} updatedBefore={} pageNumber={page_number}",
            window.after, window.before
        );
        let page: wire::OrdersPage = serde_json::from_slice(&response.body)
            .map_err(|e| ProviderError::Malformed(format!("{source}: {e}")))?;
        let mut out = WindowPage {
            number_of_pages: page
                .number_of_pages
                .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                .unwrap_or(u32::from(!page.history.is_empty())),
            number_of_records: page.number_of_records.unwrap_or(page.history.len() as u64),
            orders: Vec::with_capacity(page.history.len()),
            quarantined: Vec::new(),
        };
        for raw in page.history {
            match wire::map_order(&self.stream.account, raw) {
                Ok(order) => out.orders.push(order),
                Err(error) => out.quarantined.push(Quarantined {
                    provider: ProviderKind::Graas,
                    account: self.stream.account.clone(),
                    source: source.clone(),
                    error: error.to_string(),
                    raw: raw.get().to_owned(),
                }),
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl OrderLookup for GraasClient {
    fn stream(&self) -> &StreamKey {
        &self.stream
    }

    async fn order(
        &self,
        channel: &str,
        external_id: &str,
    ) -> Result<Option<Order>, ProviderError> {
        GraasClient::order(self, channel, external_id).await
    }
}

#[async_trait]
impl WindowSource for GraasClient {
    fn stream(&self) -> &StreamKey {
        &self.stream
    }

    async fn page(
        &self,
        window: TimeWindow,
        page_number: u32,
        page_size: u32,
    ) -> Result<WindowPage, ProviderError> {
        let mut url = self.url("/v1/orders")?;
        url.query_pairs_mut()
            .append_pair("updatedAfter", &window.after.to_string())
            .append_pair("updatedBefore", &window.before.to_string())
            .append_pair("pageNumber", &page_number.to_string())
            .append_pair("pageSize", &page_size.to_string())
            .append_pair("basicUnitCustomSKU", "false")
            .append_pair("groupByCart", "false");
        self.http
            .send(
                PROVIDER,
                &self.gate,
                "GET /v1/orders",
                |client| self.request(client, &url),
                |response| self.parse_page(window, page_number, response),
            )
            .await
    }

    fn rate_limited_count(&self) -> u64 {
        self.gate.rate_limited_count()
    }
}
