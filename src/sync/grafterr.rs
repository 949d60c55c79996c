//! Grafterr deliveries into orders: the order in the delivery when it carries its items, else
//! the order read from Grafterr's API.

use super::inbox::{DeliveryMapper, Mapped};
use crate::model::{ProviderKind, StreamKey};
use crate::providers::ProviderError;
use crate::providers::grafterr::GrafterrClient;
use crate::providers::grafterr::wire::{self, Envelope};
use crate::store::Delivery;
use async_trait::async_trait;
use std::sync::Arc;

/// The resource name of an account's orders in `sync_cursors`.
pub const ORDERS_RESOURCE: &str = "orders";

pub struct GrafterrMapper {
    client: Arc<GrafterrClient>,
    stream: StreamKey,
    currency: String,
}

impl GrafterrMapper {
    pub fn new(client: Arc<GrafterrClient>, currency: &str) -> Self {
        GrafterrMapper {
            stream: StreamKey {
                provider: ProviderKind::Grafterr,
                account: client.account().to_owned(),
                resource: ORDERS_RESOURCE.to_owned(),
            },
            client,
            currency: currency.to_owned(),
        }
    }
}

#[async_trait]
impl DeliveryMapper for GrafterrMapper {
    fn stream(&self) -> &StreamKey {
        &self.stream
    }

    async fn map(&self, delivery: &Delivery) -> Result<Mapped, ProviderError> {
        let envelope = match Envelope::parse(delivery.body.as_bytes()) {
            Ok(envelope) => envelope,
            Err(reason) => return Ok(Mapped::Failed(reason)),
        };
        let Some(source) = envelope.event_source() else {
            return Ok(Mapped::Ignored(format!(
                "event `{}` is not one of pos|web|selfkiosk.order.created|updated",
                envelope.event.as_deref().unwrap_or("")
            )));
        };
        let Some(order) = envelope.order() else {
            return Ok(Mapped::Failed("the delivery has no data.order".into()));
        };
        let event_time = wire::event_time(&envelope).or(Some(delivery.received_at));
        let account = &self.stream.account;
        let mapped = if wire::has_items(order) {
            wire::map_order(account, order, Some(source), &self.currency, event_time)
        } else {
            let Some(order_id) = wire::order_id(order) else {
                return Ok(Mapped::Failed(
                    "the delivery has neither items nor an orderId to read the order by".into(),
                ));
            };
            match self.client.order(&order_id).await {
                Ok(Some(fetched)) => {
                    wire::map_order(account, &fetched, Some(source), &self.currency, event_time)
                }
                Ok(None) => {
                    return Ok(Mapped::Failed(format!(
                        "the delivery has no items and Grafterr does not know order {order_id} (HTTP 404)"
                    )));
                }
                Err(ProviderError::Rejected { status, message }) => {
                    return Ok(Mapped::Failed(format!(
                        "reading order {order_id} was refused (HTTP {status}): {message}"
                    )));
                }
                Err(error) => return Err(error),
            }
        };
        Ok(match mapped {
            Ok(order) => Mapped::Orders(vec![order]),
            Err(reason) => Mapped::Failed(reason),
        })
    }
}
