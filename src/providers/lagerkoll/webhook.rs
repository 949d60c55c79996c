//! A Lagerkoll delivery: the URL's path token checked in constant time, then the envelope.
//! The `guid` it names is handed to the listener, which accepts only webhooks ordersync
//! registered.

use super::config::LagerkollAccount;
use super::wire::{self, Delivery};
use crate::config::Secret;
use crate::model::ProviderKind;
use crate::providers::{AcceptedDelivery, PushReceiver, Refusal, check_path_token};
use reqwest::header::HeaderMap;
use sha2::{Digest, Sha256};

pub struct LagerkollReceiver {
    account: String,
    path_token: Secret,
}

impl LagerkollReceiver {
    pub fn new(account: &LagerkollAccount) -> Self {
        LagerkollReceiver {
            account: account.name.clone(),
            path_token: account.path_token.clone(),
        }
    }
}

impl PushReceiver for LagerkollReceiver {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Lagerkoll
    }

    fn account(&self) -> &str {
        &self.account
    }

    fn accept(
        &self,
        _headers: &HeaderMap,
        body: &[u8],
        _now: i64,
        path_token: Option<&str>,
    ) -> Result<AcceptedDelivery, Refusal> {
        check_path_token(Some(&self.path_token), path_token)?;
        let delivery = Delivery::parse(body).map_err(Refusal::Malformed)?;
        let guid = delivery
            .guid
            .clone()
            .filter(|g| !g.trim().is_empty())
            .ok_or_else(|| Refusal::Unauthenticated("the delivery names no webhook guid".into()))?;
        // No event id is documented: the same webhook with the same body is a repeat.
        let event_id = format!("{guid}:{}", hex::encode(Sha256::digest(body)));
        Ok(AcceptedDelivery {
            event_id: Some(event_id),
            event_type: delivery.feature_method.clone(),
            object_id: delivery.data.and_then(wire::order_id),
            registration: Some(guid),
        })
    }
}
