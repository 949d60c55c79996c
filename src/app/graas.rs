//! Graas in the daemon: per enabled account one client and rate gate, shared by its window
//! reader, its ASN follow-up and its outbox dispatcher.

use super::{AccountGate, App, Assembly};
use crate::model::ProviderKind;
use crate::outbox::graas::GraasExecutor;
use crate::providers::graas::GraasClient;
use crate::providers::http::RateGate;
use crate::sync::asn::AsnFollowUp;
use crate::sync::buffer::OrderBuffer;
use crate::sync::job::Scheduled;
use crate::sync::progress::StreamProgress;
use crate::sync::window::{WindowPlan, WindowSync};
use std::sync::Arc;

pub(super) fn assemble(assembly: &Assembly<'_>, app: &mut App) {
    let store = assembly.store;
    // One buffer for every account: a new install backfilling many shops at once holds no more
    // than one backfilling alone.
    let orders = assembly.config.database.buffered_orders;
    let buffer = Arc::new(OrderBuffer::new(orders, store.buffer_starts_at(orders)));
    app.order_buffer = Some(buffer.clone());
    for account in assembly.config.graas.iter().filter(|a| a.enabled) {
        let gate = Arc::new(RateGate::for_account(
            account.rate_limit,
            ProviderKind::Graas.as_str(),
            &account.name,
        ));
        let client = Arc::new(GraasClient::new(
            assembly.http.clone(),
            gate.clone(),
            account,
        ));
        app.gates.push(AccountGate {
            provider: ProviderKind::Graas,
            account: account.name.clone(),
            gate,
        });
        let plan = WindowPlan {
            lookback: account.lookback,
            lookback_every: account.lookback_every,
            recent_lookback: account.recent_lookback,
            settle: account.settle,
            page_size: account.page_size,
            pages_per_read: account.pages_per_read,
            read_ahead: account.read_ahead,
            start_from: account.start_from,
            max_window: account.max_window,
        };
        let progress = Arc::new(StreamProgress::default());
        app.runners.push(Arc::new(Scheduled::new(
            WindowSync::new(
                client.clone(),
                store.clone(),
                plan,
                progress,
                buffer.clone(),
            ),
            &account.schedule,
            store.clone(),
        )));
        app.asn_followers.push(Arc::new(Scheduled::new(
            AsnFollowUp::new(
                client.clone(),
                store.clone(),
                &account.name,
                &account.asn_final_statuses,
            ),
            &account.asn_schedule,
            store.clone(),
        )));
        let executor = Arc::new(GraasExecutor::new(client, store.clone(), &account.name));
        app.dispatchers.extend(assembly.dispatcher(
            ProviderKind::Graas,
            &account.name,
            account.action_batch_size,
            executor,
        ));
    }
}
