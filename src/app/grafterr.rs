//! Grafterr in the daemon: per enabled account a webhook receiver, and an inbox worker whose
//! order reads (for deliveries without items) share the account's client and rate gate.

use super::{AccountGate, App, Assembly};
use crate::model::ProviderKind;
use crate::providers::grafterr::GrafterrClient;
use crate::providers::grafterr::webhook::GrafterrReceiver;
use crate::providers::http::RateGate;
use crate::server::webhooks::Hook;
use crate::sync::grafterr::GrafterrMapper;
use crate::sync::inbox::InboxWorker;
use std::sync::Arc;
use tokio::sync::Notify;

pub(super) fn assemble(assembly: &Assembly<'_>, app: &mut App) {
    for account in assembly.config.grafterr.iter().filter(|a| a.enabled) {
        let gate = Arc::new(RateGate::for_account(
            account.rate_limit,
            ProviderKind::Grafterr.as_str(),
            &account.name,
        ));
        let client = match GrafterrClient::new(assembly.http.clone(), gate.clone(), account) {
            Ok(client) => Arc::new(client),
            Err(error) => {
                tracing::error!(account = %account.name, %error, "Grafterr account not started");
                continue;
            }
        };
        app.gates.push(AccountGate {
            provider: ProviderKind::Grafterr,
            account: account.name.clone(),
            gate,
        });
        let wake = Arc::new(Notify::new());
        app.hooks.push(Hook {
            receiver: Arc::new(GrafterrReceiver::new(account)),
            wake: wake.clone(),
        });
        app.workers.push(Arc::new(InboxWorker::new(
            Arc::new(GrafterrMapper::new(client, &account.currency)),
            assembly.store.clone(),
            wake,
        )));
    }
}
