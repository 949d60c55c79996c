//! Follows the ASNs ordersync created (`GET /v1/asn/{asnID}`) on the account's `asn_schedule`
//! until their status is one of `asn_final_statuses`, storing status and received quantities.

use crate::model::{ProviderKind, StreamKey};
use crate::providers::ProviderError;
use crate::providers::graas::GraasClient;
use crate::store::{AsnUpdate, Store, StoreError};
use crate::sync::job::{Job, RunReport, Scheduled};
use chrono::Utc;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The resource name of ASN follow-up runs in `sync_cursors` (so `status` judges it).
pub const ASNS_RESOURCE: &str = "asns";

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("ASN {asn_id}: {error}")]
    Provider { asn_id: i64, error: ProviderError },
}

/// Checks the open ASNs of one Graas account.
pub struct AsnFollowUp {
    client: Arc<GraasClient>,
    store: Arc<dyn Store>,
    stream: StreamKey,
    final_statuses: Vec<String>,
}

/// The ASN follow-up on the account's `asn_schedule`.
pub type AsnFollower = Scheduled<AsnFollowUp>;

/// What one follow-up run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FollowSummary {
    pub checked: usize,
    pub finished: usize,
}

impl AsnFollowUp {
    pub fn new(
        client: Arc<GraasClient>,
        store: Arc<dyn Store>,
        account: &str,
        final_statuses: &[String],
    ) -> Self {
        AsnFollowUp {
            client,
            store,
            stream: StreamKey {
                provider: ProviderKind::Graas,
                account: account.to_owned(),
                resource: ASNS_RESOURCE.to_owned(),
            },
            final_statuses: final_statuses.iter().map(|s| s.to_lowercase()).collect(),
        }
    }
}

#[async_trait::async_trait]
impl Job for AsnFollowUp {
    type Report = FollowSummary;
    type Error = FollowError;

    fn stream(&self) -> &StreamKey {
        &self.stream
    }

    /// Checks every open ASN once (until shutdown). Every ASN is tried even when one fails; the
    /// first failure is the run's error.
    async fn run(&self, shutdown: &CancellationToken) -> Result<FollowSummary, FollowError> {
        let (provider, account) = (self.stream.provider.as_str(), &self.stream.account);
        let open = self.store.open_asns(provider, account).await?;
        let mut summary = FollowSummary::default();
        let mut first_error = None;
        for asn in open {
            let answer = tokio::select! {
                _ = shutdown.cancelled() => break,
                answer = self.client.asn(&asn.warehouse_id, asn.asn_id) => answer,
            };
            match answer {
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

    fn refused_credentials(error: &FollowError) -> bool {
        matches!(
            error,
            FollowError::Provider {
                error: ProviderError::Unauthorized { .. },
                ..
            }
        )
    }
}

impl RunReport for FollowSummary {
    fn log(&self, stream: &StreamKey) {
        tracing::info!(%stream, checked = self.checked, finished = self.finished, "run finished");
    }

    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"checked": self.checked, "finished": self.finished})
    }
}
