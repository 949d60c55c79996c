//! KassaForte in the daemon: per enabled shop one client and rate gate, shared by the state
//! poll (on a tick at the open rate; it polls less often while the shop is closed), the order
//! follow-up and the submissions' dispatcher.

use super::{AccountGate, App, Assembly};
use crate::model::ProviderKind;
use crate::outbox::kassaforte::KassaForteExecutor;
use crate::providers::http::RateGate;
use crate::providers::kassaforte::KassaForteClient;
use crate::sync::job::Scheduled;
use crate::sync::kassaforte::{OrderFollow, ShopMonitor, ShopWatch, system_clock};
use std::sync::Arc;

pub(super) fn assemble(assembly: &Assembly<'_>, app: &mut App) {
    let store = assembly.store;
    for shop in assembly.config.kassaforte.iter().filter(|s| s.enabled) {
        let gate = Arc::new(RateGate::for_account(
            shop.rate_limit,
            ProviderKind::KassaForte.as_str(),
            &shop.name,
        ));
        let client = Arc::new(KassaForteClient::new(
            assembly.http.clone(),
            gate.clone(),
            shop,
        ));
        app.gates.push(AccountGate {
            provider: ProviderKind::KassaForte,
            account: shop.name.clone(),
            gate,
        });
        let monitor = Arc::new(ShopMonitor::new(
            client,
            store.clone(),
            shop.clone(),
            system_clock(),
        ));
        app.scheduled.push(Arc::new(Scheduled::new(
            ShopWatch::new(monitor.clone()),
            &shop.infos_schedule(),
            store.clone(),
        )));
        app.scheduled.push(Arc::new(Scheduled::new(
            OrderFollow::new(monitor.clone(), store.clone()),
            &shop.follow_schedule(),
            store.clone(),
        )));
        let executor = Arc::new(KassaForteExecutor::new(
            monitor,
            store.clone(),
            &assembly.worker,
        ));
        app.dispatchers.extend(assembly.dispatcher(
            ProviderKind::KassaForte,
            &shop.name,
            shop.action_batch_size,
            executor,
        ));
    }
}
