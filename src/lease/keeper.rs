//! Takes, renews, spreads and releases this replica's account leases.
//!
//! Every `renew_every` the keeper marks the replica alive, renews what it holds, and evens out:
//! with `n` accounts and `r` live replicas it holds at most ceil(n / r), gives up the excess
//! (after stopping that work) and takes free or expired leases up to its share. Each replica
//! prefers accounts in its own hashed order, so replicas starting together rarely reach for the
//! same ones.
//!
//! Its lease is valid for this replica until `ttl` minus a guard after the renewal was *sent*:
//! before the database lets anyone else take it (the database counts `ttl` from when the renewal
//! *ran*). Past that, the account's work is stopped and its requests refused even if the keeper
//! itself was paused (a frozen VM): the book checks the time on every request and write.

use super::{AccountId, LeaseBook};
use crate::config::LeaseConfig;
use crate::metrics::{LeaseChangeLabels, ReplicaLabels, metrics};
use crate::providers::http::RateGate;
use crate::store::{HeldLease, LeaseTable, Store, StoreError, Taken};
use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// How many accounts this replica aims to hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// Its even share of the live replicas (the daemon).
    Even,
    /// Every account it can get (`run --once`, before it starts).
    All,
    /// What it holds, and nothing more (`run --once`, while it works).
    Kept,
}

pub struct Keeper {
    store: Arc<dyn Store>,
    book: Arc<LeaseBook>,
    /// Every account of the configuration, in this replica's order of preference.
    accounts: Vec<AccountId>,
    /// Each account's rate gate: it holds back a newly taken account's first request.
    gates: HashMap<AccountId, Arc<RateGate>>,
    settings: LeaseConfig,
    share: Share,
}

impl Keeper {
    pub fn new(
        store: Arc<dyn Store>,
        book: Arc<LeaseBook>,
        gates: HashMap<AccountId, Arc<RateGate>>,
        settings: LeaseConfig,
        share: Share,
    ) -> Self {
        let mut accounts: Vec<AccountId> = gates.keys().cloned().collect();
        let holder = book.holder().to_owned();
        accounts.sort_by_key(|account| preference(&holder, account));
        Keeper {
            store,
            book,
            accounts,
            gates,
            settings,
            share,
        }
    }

    /// The same keeper aiming for another share.
    pub fn sharing(&self, share: Share) -> Keeper {
        Keeper {
            store: self.store.clone(),
            book: self.book.clone(),
            accounts: self.accounts.clone(),
            gates: self.gates.clone(),
            settings: self.settings,
            share,
        }
    }

    pub fn settings(&self) -> &LeaseConfig {
        &self.settings
    }

    pub fn book(&self) -> &Arc<LeaseBook> {
        &self.book
    }

    /// Keeps the leases until `stop`; does not release them (see [`Keeper::leave`]). The caller
    /// has just run a [`Keeper::cycle`], so the first comes one `renew_every` later: renewing
    /// at once had waited for the first batches' transactions, which hold the lease row shared
    /// (fencing), and held up the batches queued behind it.
    pub async fn run(&self, shutdown: &CancellationToken, stop: &CancellationToken) {
        loop {
            let next = Instant::now() + self.settings.renew_every;
            let wake = self
                .book
                .next_expiry()
                .map_or(next, |expiry| expiry.min(next));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            self.expire_locally();
            self.cycle(shutdown).await;
        }
    }

    /// One round: alive, renew, even out. Errors are logged; held leases stay valid until
    /// their local validity runs out.
    pub async fn cycle(&self, shutdown: &CancellationToken) {
        let Some(table) = self.store.lease_table() else {
            return;
        };
        self.expire_locally();
        let sent = Instant::now();
        let valid_until = sent + self.settings.ttl - self.settings.guard();
        let holder = self.book.holder();
        // `run --once` takes only what is free: counted as a replica, it would make the running
        // ones give up accounts for it.
        let beat = async {
            match self.share {
                Share::All | Share::Kept => Ok(1),
                Share::Even => self.bounded(table.beat(holder, self.settings.ttl)).await,
            }
        };
        let live = match beat.await {
            Ok(live) => live,
            Err(error) => {
                tracing::warn!(%error, "cannot mark this replica alive in the leases table; held leases run out unless a later renewal succeeds");
                return;
            }
        };
        if let Err(error) = self.renew(table, valid_until).await {
            tracing::warn!(%error, "cannot renew this replica's leases; they run out unless a later renewal succeeds");
            return;
        }
        let target = match self.share {
            Share::All => self.accounts.len(),
            Share::Kept => self.book.count(),
            Share::Even => self
                .accounts
                .len()
                .div_ceil(usize::try_from(live).unwrap_or(1).max(1)),
        };
        let held = self.book.count();
        if held > target {
            self.give_up(table, held - target, live).await;
        } else if held < target && !shutdown.is_cancelled() {
            self.take(table, target - held, valid_until, shutdown).await;
        }
        self.report();
    }

    async fn renew(&self, table: &dyn LeaseTable, valid_until: Instant) -> Result<(), StoreError> {
        let held: Vec<HeldLease> = self
            .book
            .leases()
            .into_iter()
            .map(|(account, token)| {
                (
                    account.provider.as_str().to_owned(),
                    account.account.clone(),
                    token,
                )
            })
            .collect();
        if held.is_empty() {
            return Ok(());
        }
        let kept = self
            .bounded(table.renew(self.book.holder(), &held, self.settings.ttl))
            .await?;
        for (provider, account, _) in &held {
            let still = kept.iter().any(|(p, a)| p == provider && a == account);
            let Some(id) = provider
                .parse::<crate::model::ProviderKind>()
                .ok()
                .map(|provider| AccountId::new(provider, account))
            else {
                continue;
            };
            if still {
                self.book.renewed(&id, valid_until);
            } else if self.book.lost(&id) {
                self.count("lost");
                tracing::warn!(account = %id, "lease lost to another replica; its work here stopped");
            }
        }
        Ok(())
    }

    /// Gives up `excess` leases so other replicas can take them: each account's work is
    /// stopped first, so two replicas never work for one account at once.
    async fn give_up(&self, table: &dyn LeaseTable, excess: usize, live: u64) {
        let held = self.book.leases();
        // The accounts this replica prefers least go first.
        let mut order: Vec<&AccountId> = self
            .accounts
            .iter()
            .filter(|a| held.contains_key(*a))
            .collect();
        order.reverse();
        for account in order.into_iter().take(excess) {
            let Some((token, stopped)) = self
                .book
                .stop_work(account, self.settings.renew_every)
                .await
            else {
                continue;
            };
            if !stopped {
                // Its work did not stop in time: let the lease run out instead of handing
                // the account over while a request may still be under way.
                tracing::warn!(%account, "work did not stop in time; the lease is left to expire");
                self.count("lost");
                continue;
            }
            let released = table.release(
                self.book.holder(),
                account.provider.as_str(),
                &account.account,
                token,
            );
            match self.bounded(released).await {
                Ok(()) => {
                    self.count("released");
                    tracing::info!(%account, replicas = live, "lease released to even out the accounts over the replicas");
                }
                Err(error) => {
                    tracing::warn!(%account, %error, "cannot release the lease; it expires instead")
                }
            }
        }
    }

    async fn take(
        &self,
        table: &dyn LeaseTable,
        wanted: usize,
        valid_until: Instant,
        shutdown: &CancellationToken,
    ) {
        let mut taken = 0;
        for account in &self.accounts {
            if taken == wanted || shutdown.is_cancelled() {
                break;
            }
            if self.book.token(account).is_some() {
                continue;
            }
            let attempt = table.take(
                self.book.holder(),
                account.provider.as_str(),
                &account.account,
                self.settings.ttl,
            );
            match self.bounded(attempt).await {
                Ok(Some(Taken {
                    token,
                    previous_ended,
                })) => {
                    // The previous holder's last requests may still count in the upstream's
                    // window: the first one from here waits until a period of the account's
                    // rate has passed since that holder stopped.
                    if let (Some(gate), Some(ended)) = (self.gates.get(account), previous_ended) {
                        gate.hold_for(gate.period().saturating_sub(ended)).await;
                    }
                    self.book
                        .taken(account.clone(), token, valid_until, shutdown);
                    self.count("taken");
                    taken += 1;
                    tracing::info!(%account, token, "lease taken");
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%account, %error, "cannot take a lease");
                    return;
                }
            }
        }
    }

    /// Stops the work of leases past their local validity (a renewal failed or came late).
    fn expire_locally(&self) {
        for account in self.book.expire(Instant::now()) {
            self.count("lost");
            tracing::warn!(%account, "lease ran out before it could be renewed; its work here stopped");
        }
    }

    /// Gives every lease back (on shutdown, once the work has stopped), so other replicas
    /// take the accounts over at once instead of after the TTL.
    pub async fn leave(&self) {
        let Some(table) = self.store.lease_table() else {
            return;
        };
        let released = self.book.leases().len();
        for account in self.book.leases().keys() {
            self.book.lost(account);
        }
        match self.bounded(table.leave(self.book.holder())).await {
            Ok(()) => {
                if released > 0 {
                    tracing::info!(released, "leases released for the other replicas");
                }
                for _ in 0..released {
                    self.count("released");
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot release the leases; other replicas take them over when they expire")
            }
        }
        self.report();
    }

    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let limit = self.settings.renew_every;
        tokio::time::timeout(limit, call)
            .await
            .unwrap_or(Err(StoreError::Timeout {
                operation: "keeping the account leases",
                after: limit,
            }))
    }

    fn count(&self, change: &str) {
        metrics()
            .lease_changes
            .get_or_create(&LeaseChangeLabels {
                replica: self.book.holder().to_owned(),
                change: change.to_owned(),
            })
            .inc();
    }

    fn report(&self) {
        metrics()
            .leases_held
            .get_or_create(&ReplicaLabels {
                replica: self.book.holder().to_owned(),
            })
            .set(i64::try_from(self.book.count()).unwrap_or(i64::MAX));
    }
}

/// This replica's rank for an account: replicas rank accounts differently, so the ones starting
/// together reach for different accounts first.
fn preference(holder: &str, account: &AccountId) -> u64 {
    let mut hasher = DefaultHasher::new();
    (holder, account).hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ProviderKind;

    #[test]
    fn replicas_prefer_accounts_in_different_orders() {
        let accounts: Vec<AccountId> = (0..12)
            .map(|i| AccountId::new(ProviderKind::Graas, &format!("shop-{i}")))
            .collect();
        let first = |holder: &str| {
            accounts
                .iter()
                .min_by_key(|a| preference(holder, a))
                .cloned()
        };
        let firsts: std::collections::HashSet<_> =
            ["a", "b", "c", "d", "e"].into_iter().map(first).collect();
        assert!(
            firsts.len() > 1,
            "every replica would reach for one account"
        );
    }
}
