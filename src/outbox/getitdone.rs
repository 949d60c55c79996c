//! Get It Done commands: each action becomes one `POST /v3/commands` whose `_cid` is the action's
//! id. The answer only says the command was taken; its outcome comes later, as an event (see the
//! inbox) or from the command-status poll ([`ConfirmSweep`]). A command whose answer was lost is
//! never sent again blindly (`UpdateOrderExternalId` appends): its status is asked first.

use super::{Executor, Verdict};
use crate::model::{Action, ActionKind, ActionOutcome, ProviderKind, StreamKey};
use crate::providers::ProviderError;
use crate::providers::getitdone::wire::{Command, CommandOutcome};
use crate::providers::getitdone::{CommandStatus, GetItDoneClient};
use crate::store::{Store, StoreError};
use crate::sync::job::Job;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Get It Done keeps a command's outcome this long; after it, a 404 tells nothing.
const RESULTS_KEPT: chrono::Duration = chrono::Duration::hours(24);
/// The resource name of the confirmation sweep in `sync_cursors`.
pub const COMMANDS_RESOURCE: &str = "commands";

pub struct GetItDoneExecutor {
    client: Arc<GetItDoneClient>,
    cancellation_reason: String,
    confirm_timeout: chrono::Duration,
}

impl GetItDoneExecutor {
    pub fn new(
        client: Arc<GetItDoneClient>,
        cancellation_reason: &str,
        confirm_timeout: Duration,
    ) -> Self {
        GetItDoneExecutor {
            client,
            cancellation_reason: cancellation_reason.to_owned(),
            confirm_timeout: chrono::Duration::from_std(confirm_timeout)
                .unwrap_or(chrono::Duration::minutes(10)),
        }
    }

    /// The command an action sends.
    fn command(&self, action: &Action) -> Result<Command, String> {
        let kind: ActionKind = action
            .kind
            .parse()
            .map_err(|e: String| format!("kind: {e}"))?;
        let order_id = action
            .external_id
            .clone()
            .filter(|id| !id.trim().is_empty())
            .ok_or("external_id: the Get It Done order id is required")?;
        let text = |key: &str| {
            action
                .request
                .get(key)
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        let mut payload = Map::new();
        payload.insert("orderId".into(), json!(order_id));
        let command_type = match kind {
            ActionKind::Cancel => {
                let reason = text("reason").unwrap_or_else(|| self.cancellation_reason.clone());
                payload.insert("cancellationReason".into(), json!(reason));
                "ApplyCancellation"
            }
            ActionKind::Link => {
                let id = text("link_id").ok_or("request.link_id: is required for link")?;
                payload.insert("externalId".into(), json!(id));
                "UpdateOrderExternalId"
            }
            ActionKind::LinkInvoicing => {
                let id =
                    text("link_id").ok_or("request.link_id: is required for link_invoicing")?;
                payload.insert("invoicingExternalId".into(), json!(id));
                "UpdateOrderInvoicingExternalId"
            }
            ActionKind::Refresh => "RefreshOrder",
            ActionKind::Accept => return Err("kind: Get It Done has no accept command".into()),
            ActionKind::Asn => return Err("kind: Get It Done has no asn command".into()),
            ActionKind::Submit => return Err("kind: Get It Done takes no submitted orders".into()),
        };
        Ok(Command {
            command_id: action.id.to_string(),
            command_type,
            version: self.client.version().to_owned(),
            meta: json!({ "ext-source": "ordersync", "ext-account": self.client.account() }),
            payload,
        })
    }

    fn sent(&self, command: &Command, now: DateTime<Utc>) -> Verdict {
        Verdict::Sent(
            json!({ "command": command.command_type, "commandId": command.command_id, "sentAt": now }),
            now + self.confirm_timeout,
        )
    }

    async fn execute_one(&self, action: &Action) -> Verdict {
        if action.provider != ProviderKind::GetItDone.as_str() {
            return Verdict::Refused(format!("provider `{}` is not getitdone", action.provider));
        }
        let command = match self.command(action) {
            Ok(command) => command,
            Err(error) => return Verdict::Refused(error),
        };
        // An earlier attempt may have reached Get It Done with its answer lost.
        if action.attempts > 1 {
            match self.client.command_status(&command.command_id).await {
                Ok(CommandStatus::Pending) => return self.sent(&command, Utc::now()),
                Ok(CommandStatus::Finished(outcome)) => return finished(outcome),
                Ok(CommandStatus::Unknown) if Utc::now() - action.created_at > RESULTS_KEPT => {
                    return Verdict::Refused(
                        "an earlier attempt's outcome is unknown and Get It Done keeps command results only 24 hours; check the order and queue the action again if it is needed".into(),
                    );
                }
                Ok(CommandStatus::Unknown) => {}
                Err(error) => return transient(&error),
            }
        }
        let now = Utc::now();
        match self.client.send_command(&command).await {
            Ok(()) => self.sent(&command, now),
            Err(ProviderError::Rejected { status, message }) if status < 500 => {
                Verdict::Refused(format!("HTTP {status}: {message}"))
            }
            Err(error) => transient(&error),
        }
    }
}

fn finished(outcome: CommandOutcome) -> Verdict {
    match outcome {
        CommandOutcome::Done { result } => Verdict::Done(json!({ "result": result })),
        CommandOutcome::Failed { code, message } => Verdict::Refused(format!("{code}: {message}")),
    }
}

fn transient(error: &ProviderError) -> Verdict {
    Verdict::Transient(error.to_string())
}

/// The outcome an event or the status poll reports, as the action's final state.
pub fn outcome_of(outcome: CommandOutcome) -> ActionOutcome {
    match outcome {
        CommandOutcome::Done { result } => ActionOutcome::Succeeded {
            result: json!({ "result": result }),
        },
        CommandOutcome::Failed { code, message } => ActionOutcome::Failed {
            error: format!("{code}: {message}"),
        },
    }
}

#[async_trait]
impl Executor for GetItDoneExecutor {
    async fn execute(&self, actions: &[Action]) -> Vec<Verdict> {
        let mut verdicts = Vec::with_capacity(actions.len());
        for action in actions {
            verdicts.push(self.execute_one(action).await);
        }
        verdicts
    }
}

/// Settles the account's sent commands whose outcome no event brought: asks the command status
/// of each; fails those past their confirmation time; sends again (same `_cid`) those Get It
/// Done does not know within the 24 hours it keeps results.
pub struct ConfirmSweep {
    client: Arc<GetItDoneClient>,
    store: Arc<dyn Store>,
    stream: StreamKey,
    confirm_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("command {command_id}: {error}")]
    Provider {
        command_id: i64,
        error: ProviderError,
    },
}

impl ConfirmSweep {
    pub fn new(
        client: Arc<GetItDoneClient>,
        store: Arc<dyn Store>,
        confirm_timeout: Duration,
    ) -> Self {
        let stream = StreamKey {
            provider: ProviderKind::GetItDone,
            account: client.account().to_owned(),
            resource: COMMANDS_RESOURCE.to_owned(),
        };
        ConfirmSweep {
            client,
            store,
            stream,
            confirm_timeout,
        }
    }
}

#[async_trait]
impl Job for ConfirmSweep {
    type Report = Value;
    type Error = SweepError;

    fn stream(&self) -> &StreamKey {
        &self.stream
    }

    async fn run(&self, shutdown: &CancellationToken) -> Result<Value, SweepError> {
        let sent = self
            .store
            .sent_actions(ProviderKind::GetItDone.as_str(), &self.stream.account, 500)
            .await?;
        let (mut outcomes, mut waiting) = (Vec::new(), 0);
        let mut failure = None;
        for action in &sent {
            if shutdown.is_cancelled() {
                break;
            }
            let now = Utc::now();
            let outcome = match self.client.command_status(&action.id.to_string()).await {
                Ok(CommandStatus::Finished(outcome)) => Some(outcome_of(outcome)),
                Ok(CommandStatus::Pending) if now > action.next_attempt_at => {
                    Some(ActionOutcome::Failed {
                        error: format!(
                            "no confirmation: Get It Done took the command but told no outcome within {}",
                            humantime::format_duration(self.confirm_timeout)
                        ),
                    })
                }
                Ok(CommandStatus::Pending) => None,
                Ok(CommandStatus::Unknown) if now - action.created_at < RESULTS_KEPT => {
                    Some(ActionOutcome::RetryAt {
                        error: "Get It Done does not know the command; sending it again with the same _cid".into(),
                        at: now,
                    })
                }
                Ok(CommandStatus::Unknown) => Some(ActionOutcome::Failed {
                    error: "no confirmation: Get It Done no longer knows the command (results are kept 24 hours)".into(),
                }),
                Err(error) if error.is_retryable() => {
                    failure.get_or_insert(SweepError::Provider {
                        command_id: action.id,
                        error,
                    });
                    None
                }
                Err(error) => {
                    failure = Some(SweepError::Provider {
                        command_id: action.id,
                        error,
                    });
                    break;
                }
            };
            match outcome {
                Some(outcome) => outcomes.push((action.id, outcome)),
                None => waiting += 1,
            }
        }
        let settled = self.store.settle_sent(&outcomes).await?;
        match failure {
            Some(error) => Err(error),
            None => {
                Ok(json!({ "checked": sent.len(), "settled": settled.len(), "waiting": waiting }))
            }
        }
    }

    fn refused_credentials(error: &SweepError) -> bool {
        matches!(
            error,
            SweepError::Provider {
                error: ProviderError::Unauthorized { .. },
                ..
            }
        )
    }
}
