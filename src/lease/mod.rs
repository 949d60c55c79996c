//! Which process does an account's work. On SQLite (one process per database file) and with
//! leases off, this process does everything. On Postgres with leases on, replicas share the
//! accounts through leases in the database: [`keeper`] takes, renews, spreads and releases
//! them, [`LeaseBook`] is this process's view of what it holds, and everything that works for
//! an account (runs, inbox workers, outbox dispatchers, the account's requests and the store's
//! writes) asks the book first.

pub mod keeper;

use crate::model::ProviderKind;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{OwnedRwLockReadGuard, RwLock, watch};
use tokio_util::sync::CancellationToken;

/// One account, as leases name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId {
    pub provider: ProviderKind,
    pub account: String,
}

impl AccountId {
    pub fn new(provider: ProviderKind, account: &str) -> Self {
        AccountId {
            provider,
            account: account.to_owned(),
        }
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.account)
    }
}

/// Who may work for an account in this process.
#[derive(Clone, Default)]
pub enum Ownership {
    /// This process does all the work: SQLite, or leases switched off.
    #[default]
    Everything,
    /// Only the accounts whose lease this process holds.
    Leases(Arc<LeaseBook>),
}

/// Permission to work for one account now; the work stops when `stop` is cancelled (shutdown,
/// or the lease lost or given up), and the lease is not released while a guard is alive.
pub struct WorkGuard {
    pub stop: CancellationToken,
    _work: Option<OwnedRwLockReadGuard<()>>,
}

impl Ownership {
    /// A guard when this process may work for `account` now.
    pub fn enter(&self, account: &AccountId, shutdown: &CancellationToken) -> Option<WorkGuard> {
        if shutdown.is_cancelled() {
            return None;
        }
        match self {
            Ownership::Everything => Some(WorkGuard {
                stop: shutdown.clone(),
                _work: None,
            }),
            Ownership::Leases(book) => book.enter(account),
        }
    }

    /// Waits until this process may work for `account`; `None` at shutdown.
    pub async fn wait_for(
        &self,
        account: &AccountId,
        shutdown: &CancellationToken,
    ) -> Option<WorkGuard> {
        match self {
            Ownership::Everything => self.enter(account, shutdown),
            Ownership::Leases(book) => book.wait_for(account, shutdown).await,
        }
    }

    pub fn holds(&self, account: &AccountId) -> bool {
        match self {
            Ownership::Everything => true,
            Ownership::Leases(book) => book.token(account).is_some(),
        }
    }
}

/// A lease this process holds.
struct Held {
    token: i64,
    /// Requests and writes for the account stop at this instant unless the lease is renewed:
    /// before the database lets another replica take it (see [`keeper`]).
    valid_until: Instant,
    stop: CancellationToken,
    /// Read by each piece of work for the account, written by giving the lease up: so it is
    /// released only once its work has stopped.
    work: Arc<RwLock<()>>,
}

/// The leases this process holds, shared by the keeper, the work and the store's fencing.
pub struct LeaseBook {
    holder: String,
    held: Mutex<HashMap<AccountId, Held>>,
    /// Bumped whenever a lease is taken, to wake work waiting for one.
    taken: watch::Sender<u64>,
}

impl LeaseBook {
    pub fn new(holder: &str) -> Self {
        LeaseBook {
            holder: holder.to_owned(),
            held: Mutex::new(HashMap::new()),
            taken: watch::Sender::new(0),
        }
    }

    /// This replica's name in the leases table.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, Held>> {
        // The map is valid whatever a panicking holder of the lock was doing.
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The fencing token of a lease this process holds and may still act on.
    pub fn token(&self, account: &AccountId) -> Option<i64> {
        self.held()
            .get(account)
            .filter(|held| held.valid_until > Instant::now())
            .map(|held| held.token)
    }

    /// [`LeaseBook::token`] for the store, which names accounts as text.
    pub fn token_of(&self, provider: &str, account: &str) -> Option<i64> {
        let provider: ProviderKind = provider.parse().ok()?;
        self.token(&AccountId::new(provider, account))
    }

    /// True while requests for `account` may be sent.
    pub fn may_send(&self, account: &AccountId) -> bool {
        self.token(account).is_some()
    }

    fn enter(&self, account: &AccountId) -> Option<WorkGuard> {
        let held = self.held();
        let lease = held.get(account)?;
        if lease.valid_until <= Instant::now() || lease.stop.is_cancelled() {
            return None;
        }
        // Fails while the lease is being given up: no new work starts then.
        let work = lease.work.clone().try_read_owned().ok()?;
        Some(WorkGuard {
            stop: lease.stop.clone(),
            _work: Some(work),
        })
    }

    async fn wait_for(
        &self,
        account: &AccountId,
        shutdown: &CancellationToken,
    ) -> Option<WorkGuard> {
        let mut taken = self.taken.subscribe();
        loop {
            if shutdown.is_cancelled() {
                return None;
            }
            if let Some(guard) = self.enter(account) {
                return Some(guard);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                changed = taken.changed() => if changed.is_err() { return None },
                // A lease given up and taken again between two looks wakes no one twice.
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
    }

    /// Records a lease just taken; its work stops with `shutdown` at the latest.
    pub fn taken(
        &self,
        account: AccountId,
        token: i64,
        valid_until: Instant,
        shutdown: &CancellationToken,
    ) {
        let previous = self.held().insert(
            account,
            Held {
                token,
                valid_until,
                stop: shutdown.child_token(),
                work: Arc::new(RwLock::new(())),
            },
        );
        if let Some(previous) = previous {
            previous.stop.cancel();
        }
        self.taken.send_modify(|count| *count += 1);
    }

    /// Extends a lease the database renewed.
    pub fn renewed(&self, account: &AccountId, valid_until: Instant) {
        if let Some(held) = self.held().get_mut(account) {
            held.valid_until = valid_until;
        }
    }

    /// Stops the work of a lease that is gone (taken by another replica, or past its local
    /// validity) and forgets it. True when it was held.
    pub fn lost(&self, account: &AccountId) -> bool {
        match self.held().remove(account) {
            Some(held) => {
                held.stop.cancel();
                true
            }
            None => false,
        }
    }

    /// Stops the work of a lease about to be given up and waits until it has stopped (at most
    /// `within`); the token to release it with, `None` when it was not held. Forgets it.
    pub async fn stop_work(
        &self,
        account: &AccountId,
        within: std::time::Duration,
    ) -> Option<(i64, bool)> {
        let (token, stop, work) = {
            let held = self.held();
            let lease = held.get(account)?;
            (lease.token, lease.stop.clone(), lease.work.clone())
        };
        stop.cancel();
        let stopped = tokio::time::timeout(within, work.write_owned())
            .await
            .is_ok();
        self.held().remove(account);
        Some((token, stopped))
    }

    /// Leases past their local validity: their work is stopped and they are forgotten.
    pub fn expire(&self, now: Instant) -> Vec<AccountId> {
        let mut held = self.held();
        let expired: Vec<AccountId> = held
            .iter()
            .filter(|(_, lease)| lease.valid_until <= now)
            .map(|(account, _)| account.clone())
            .collect();
        for account in &expired {
            if let Some(lease) = held.remove(account) {
                lease.stop.cancel();
            }
        }
        expired
    }

    /// Every lease held, with its token, in a stable order.
    pub fn leases(&self) -> BTreeMap<AccountId, i64> {
        self.held()
            .iter()
            .map(|(account, lease)| (account.clone(), lease.token))
            .collect()
    }

    /// The earliest local validity of a held lease.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.held().values().map(|lease| lease.valid_until).min()
    }

    pub fn count(&self) -> usize {
        self.held().len()
    }
}

impl fmt::Debug for LeaseBook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseBook")
            .field("holder", &self.holder)
            .field("held", &self.count())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn account(name: &str) -> AccountId {
        AccountId::new(ProviderKind::Graas, name)
    }

    #[tokio::test]
    async fn work_runs_only_while_the_lease_is_held_and_valid() {
        let book = LeaseBook::new("replica-a");
        let shutdown = CancellationToken::new();
        assert!(book.enter(&account("a")).is_none());
        book.taken(
            account("a"),
            7,
            Instant::now() + Duration::from_secs(10),
            &shutdown,
        );
        assert_eq!(book.token_of("graas", "a"), Some(7));
        let guard = book.enter(&account("a")).expect("held");
        assert!(book.lost(&account("a")));
        assert!(guard.stop.is_cancelled());
        assert_eq!(book.token(&account("a")), None);

        book.taken(account("b"), 1, Instant::now(), &shutdown);
        assert_eq!(book.token(&account("b")), None, "past its validity");
        assert!(book.enter(&account("b")).is_none());
        assert_eq!(book.expire(Instant::now()), vec![account("b")]);
        assert_eq!(book.count(), 0);
    }

    #[tokio::test]
    async fn a_lease_is_given_up_only_after_its_work_stopped() {
        let book = Arc::new(LeaseBook::new("replica-a"));
        let shutdown = CancellationToken::new();
        book.taken(
            account("a"),
            3,
            Instant::now() + Duration::from_secs(10),
            &shutdown,
        );
        let guard = book.enter(&account("a")).expect("held");
        let work = tokio::spawn(async move {
            guard.stop.cancelled().await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(guard);
        });
        let started = Instant::now();
        let stopped = book.stop_work(&account("a"), Duration::from_secs(5)).await;
        assert_eq!(stopped, Some((3, true)));
        assert!(started.elapsed() >= Duration::from_millis(150));
        assert!(work.await.is_ok());
        assert!(book.enter(&account("a")).is_none());
    }

    #[tokio::test]
    async fn no_work_starts_after_shutdown() {
        let shutdown = CancellationToken::new();
        let everything = Ownership::Everything;
        assert!(everything.enter(&account("a"), &shutdown).is_some());
        shutdown.cancel();
        assert!(everything.enter(&account("a"), &shutdown).is_none());
        assert!(
            everything
                .wait_for(&account("a"), &shutdown)
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn waiting_work_starts_when_the_lease_is_taken() {
        let book = Arc::new(LeaseBook::new("replica-a"));
        let shutdown = CancellationToken::new();
        let waiting = {
            let (book, shutdown) = (book.clone(), shutdown.clone());
            tokio::spawn(async move { book.wait_for(&account("a"), &shutdown).await.is_some() })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        book.taken(
            account("a"),
            1,
            Instant::now() + Duration::from_secs(10),
            &shutdown,
        );
        let started = tokio::time::timeout(Duration::from_secs(2), waiting).await;
        assert!(matches!(started, Ok(Ok(true))));
    }
}
