//! Follows the ASNs ordersync created (`GET /v1/asn/{asnID}`) on the account's `asn_schedule`
//! until their status is one of `asn_final_statuses`, storing status and received quantities.

use crate::model::{ProviderKind, StreamKey};
use crate::providers::ProviderError;
use crate::providers::graas::GraasClient;
use crate::store::{AsnUpdate, Store, StoreError};
use chrono::Utc;
use std::sync::Arc;

/// The resource name of ASN follow-up runs in `sync_cursors` (so `status` judges it).
pub const ASNS_RESOURCE: &str = "asns";

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("ASN {asn_id}: {error}")]
    Provider { asn_id: i64, error: ProviderError },
}

pub struct AsnFollower {
    client: Arc<GraasClient>,
    store: Arc<dyn Store>,
    stream: StreamKey,
    pub schedule: String,
    final_statuses: Vec<String>,
    running: tokio::sync::Mutex<()>,
}

/// What one follow-up run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FollowSummary {
    pub checked: usize,
    pub finished: usize,
}

impl AsnFollower {
    pub fn new(
        client: Arc<GraasClient>,
        store: Arc<dyn Store>,
        account: &str,
        schedule: &str,
        final_statuses: &[String],
    ) -> Self {
        AsnFollower {
            client,
            store,
            stream: StreamKey {
                provider: ProviderKind::Graas,
                account: account.to_owned(),
                resource: ASNS_RESOURCE.to_owned(),
            },
            schedule: schedule.to_owned(),
            final_statuses: final_statuses.iter().map(|s| s.to_lowercase()).collect(),
            running: tokio::sync::Mutex::new(()),
        }
    }

    pub fn stream(&self) -> &StreamKey {
        &self.stream
    }

    /// Checks every open ASN once, unless a run is already going. Every ASN is tried even when
    /// one fails; the first failure is the run's error.
    pub async fn run_if_idle(&self) -> Option<Result<FollowSummary, FollowError>> {
        let _running = self.running.try_lock().ok()?;
        if let Err(error) = self.store.run_started(&self.stream, Utc::now()).await {
            tracing::error!(stream = %self.stream, %error, "cannot record the run's start");
        }
        let result = self.follow().await;
        let error_text = result.as_ref().err().map(ToString::to_string);
        if let Err(error) = self
            .store
            .run_finished(&self.stream, Utc::now(), error_text.as_deref())
            .await
        {
            tracing::error!(stream = %self.stream, %error, "cannot record the run's end");
        }
        if let Some(error) = &error_text {
            tracing::warn!(stream = %self.stream, %error, "ASN follow-up failed; the next tick tries again");
        }
        Some(result)
    }

    async fn follow(&self) -> Result<FollowSummary, FollowError> {
        let (provider, account) = (self.stream.provider.as_str(), &self.stream.account);
        let open = self.store.open_asns(provider, account).await?;
        let mut summary = FollowSummary::default();
        let mut first_error = None;
        for asn in open {
            match self.client.asn(&asn.warehouse_id, asn.asn_id).await {
                Ok(Some(status)) => {
                    let is_final = status
                        .status
                        .as_deref()
                        .is_some_and(|s| self.final_statuses.contains(&s.to_lowercase()));
                    self.store
                        .update_asn(&AsnUpdate {
                            provider: self.stream.provider,
                            account: account.clone(),
                            asn_id: asn.asn_id,
                            status: status.status,
                            received_quantity: status.received_quantity,
                            payload: status.payload,
                            is_final,
                            checked_at: Utc::now(),
                        })
                        .await?;
                    summary.checked += 1;
                    summary.finished += usize::from(is_final);
                }
                Ok(None) => {
                    first_error.get_or_insert(FollowError::Provider {
                        asn_id: asn.asn_id,
                        error: ProviderError::Rejected {
                            status: 404,
                            message: "Graas does not know this ASN".into(),
                        },
                    });
                }
                Err(error) => {
                    first_error.get_or_insert(FollowError::Provider {
                        asn_id: asn.asn_id,
                        error,
                    });
                }
            }
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(summary),
        }
    }
}
