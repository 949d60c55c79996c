//! Lagerkoll in the daemon: per enabled store one client and token bucket, shared by the
//! registration reconciler (at start and on `reconcile_schedule`); a webhook receiver and an
//! inbox worker for its deliveries.

use super::{AccountGate, App, Assembly};
use crate::config::RateLimit;
use crate::model::ProviderKind;
use crate::providers::http::RateGate;
use crate::providers::lagerkoll::LagerkollClient;
use crate::providers::lagerkoll::webhook::LagerkollReceiver;
use crate::server::webhooks::Hook;
use crate::sync::inbox::InboxWorker;
use crate::sync::job::Scheduled;
use crate::sync::lagerkoll::{LagerkollMapper, Reconciler};
use std::sync::Arc;
use tokio::sync::Notify;

/// Requests spaced exactly at the limit can arrive a moment closer together than they left:
/// the store's gate keeps 1% under its configured rate, so a strict upstream counting over a
/// sliding minute never sees one too many.
fn with_margin(rate: RateLimit) -> RateLimit {
    RateLimit {
        requests: rate.requests,
        per: rate.per + rate.per / 100,
    }
}

/// The client a store's tasks share (and `ordersync lagerkoll webhooks` uses).
pub fn client(
    http: crate::providers::http::HttpClient,
    account: &crate::providers::lagerkoll::config::LagerkollAccount,
) -> Arc<LagerkollClient> {
    let gate = Arc::new(RateGate::for_account(
        with_margin(account.rate_limit),
        ProviderKind::Lagerkoll.as_str(),
        &account.name,
    ));
    Arc::new(LagerkollClient::new(http, gate, account))
}

pub(super) fn assemble(assembly: &Assembly<'_>, app: &mut App) {
    for account in assembly.config.lagerkoll.iter().filter(|a| a.enabled) {
        let client = client(assembly.http.clone(), account);
        app.gates.push(AccountGate {
            provider: ProviderKind::Lagerkoll,
            account: account.name.clone(),
            gate: client.gate().clone(),
        });
        app.scheduled.push(Arc::new(Scheduled::new(
            Reconciler::new(client, assembly.store.clone(), account.clone()),
            &account.reconcile_schedule,
            assembly.store.clone(),
        )));
        let wake = Arc::new(Notify::new());
        app.hooks.push(Hook {
            receiver: Arc::new(LagerkollReceiver::new(account)),
            wake: wake.clone(),
        });
        app.workers.push(Arc::new(InboxWorker::new(
            Arc::new(LagerkollMapper::new(account)),
            assembly.store.clone(),
            wake,
        )));
    }
}
