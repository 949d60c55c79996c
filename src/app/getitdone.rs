//! Get It Done in the daemon: per enabled account one client (its token shared by every task)
//! and rate gate, shared by its webhook inbox worker, its re-poll, its feed (when discovery is
//! `feed`), its outbox dispatcher and its command confirmation sweep.

use super::{AccountGate, App, Assembly};
use crate::model::ProviderKind;
use crate::outbox::getitdone::{ConfirmSweep, GetItDoneExecutor};
use crate::providers::getitdone::GetItDoneClient;
use crate::providers::getitdone::config::Discovery;
use crate::providers::getitdone::webhook::GetItDoneReceiver;
use crate::providers::http::RateGate;
use crate::server::webhooks::Hook;
use crate::sync::getitdone::{FeedSync, InboxWorker, Repoll};
use crate::sync::job::Scheduled;
use std::sync::Arc;
use tokio::sync::Notify;

pub(super) fn assemble(assembly: &Assembly<'_>, app: &mut App) {
    let store = assembly.store;
    for account in assembly.config.getitdone.iter().filter(|a| a.enabled) {
        let gate = Arc::new(RateGate::for_account(
            account.rate_limit,
            ProviderKind::GetItDone.as_str(),
            &account.name,
        ));
        let client = match GetItDoneClient::new(assembly.http.clone(), gate.clone(), account) {
            Ok(client) => Arc::new(client),
            Err(error) => {
                tracing::error!(account = %account.name, %error, "Get It Done account not started");
                continue;
            }
        };
        app.gates.push(AccountGate {
            provider: ProviderKind::GetItDone,
            account: account.name.clone(),
            gate,
        });
        let wake = Arc::new(Notify::new());
        app.hooks.push(Hook {
            receiver: Arc::new(GetItDoneReceiver::new(
                account,
                assembly.config.webhooks.timestamp_tolerance,
            )),
            wake: wake.clone(),
        });
        app.workers.push(Arc::new(InboxWorker::new(
            client.clone(),
            store.clone(),
            account.debounce,
            wake.clone(),
        )));
        if account.discovery == Discovery::Feed {
            app.scheduled.push(Arc::new(Scheduled::new(
                FeedSync::new(client.clone(), store.clone(), account.feed_page_size, wake),
                &account.feed_schedule,
                store.clone(),
            )));
        }
        app.scheduled.push(Arc::new(Scheduled::new(
            Repoll::new(client.clone(), store.clone(), &account.terminal_statuses),
            &account.repoll_schedule,
            store.clone(),
        )));
        if assembly.config.outbox.enabled {
            app.scheduled.push(Arc::new(Scheduled::new(
                ConfirmSweep::new(client.clone(), store.clone(), account.confirm_timeout),
                &account.confirm_schedule,
                store.clone(),
            )));
        }
        let executor = Arc::new(GetItDoneExecutor::new(
            client,
            &account.cancellation_reason,
            account.confirm_timeout,
        ));
        app.dispatchers.extend(assembly.dispatcher(
            ProviderKind::GetItDone,
            &account.name,
            account.action_batch_size,
            executor,
        ));
    }
}
