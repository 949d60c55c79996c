//! A Get It Done delivery: signature and timestamp checked on the raw bytes, then the envelope.

use super::config::GetItDoneAccount;
use super::signature;
use super::wire::Envelope;
use crate::config::Secret;
use crate::model::ProviderKind;
use crate::providers::{AcceptedDelivery, PushReceiver, Refusal};
use reqwest::header::HeaderMap;
use std::time::Duration;

pub struct GetItDoneReceiver {
    account: String,
    secrets: Vec<Secret>,
    timestamp_header: String,
    signature_header: String,
    tolerance: Duration,
}

impl GetItDoneReceiver {
    pub fn new(account: &GetItDoneAccount, tolerance: Duration) -> Self {
        GetItDoneReceiver {
            account: account.name.clone(),
            secrets: account.webhook_secrets.clone(),
            timestamp_header: account.api.timestamp_header.clone(),
            signature_header: account.api.signature_header.clone(),
            tolerance,
        }
    }
}

impl PushReceiver for GetItDoneReceiver {
    fn provider(&self) -> ProviderKind {
        ProviderKind::GetItDone
    }

    fn account(&self) -> &str {
        &self.account
    }

    fn accept(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
        path_token: Option<&str>,
    ) -> Result<AcceptedDelivery, Refusal> {
        // Get It Done signs its deliveries; its URL carries no token.
        crate::providers::check_path_token(None, path_token)?;
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        signature::verify(
            &self.secrets,
            header(&self.timestamp_header),
            header(&self.signature_header),
            body,
            now,
            self.tolerance,
        )
        .map_err(|e| Refusal::Unauthenticated(e.to_string()))?;
        let envelope = Envelope::parse(body).map_err(|e| Refusal::Malformed(e.to_string()))?;
        Ok(AcceptedDelivery {
            event_id: envelope
                .event_id
                .filter(|id| !id.is_empty() && id != "polled"),
            event_type: Some(envelope.event_type),
            object_id: envelope.order_id,
            registration: None,
        })
    }
}
