//! The leases table on Postgres: which replica holds which account (see `crate::lease`). Every
//! statement is one short transaction on a pooled connection, timed by the database's clock
//! alone (`now()`), so replicas' clocks need not agree.

use super::{PostgresStore, StoreError};
use crate::lease::LeaseBook;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{Connection, Postgres, Row, Transaction};
use std::time::Duration;

/// One row of `account_leases`, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRow {
    pub provider: String,
    pub account: String,
    /// `None` once released.
    pub holder: Option<String>,
    pub token: i64,
    pub expires_at: DateTime<Utc>,
    pub acquired_at: DateTime<Utc>,
}

/// One row of `replicas`, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub holder: String,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A lease to renew: provider, account and the token it was taken with.
pub type HeldLease = (String, String, i64);

/// A lease just taken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Taken {
    pub token: i64,
    /// How long ago the previous holder's lease ended (released or expired); `None` when the
    /// account had no holder before.
    pub previous_ended: Option<Duration>,
}

#[async_trait]
pub trait LeaseTable: Send + Sync {
    /// Marks `holder` alive for `ttl`; returns how many replicas are alive, itself included.
    async fn beat(&self, holder: &str, ttl: Duration) -> Result<u64, StoreError>;

    /// Takes an account's lease for `ttl` if it is free or expired; `None` when another
    /// replica holds it.
    async fn take(
        &self,
        holder: &str,
        provider: &str,
        account: &str,
        ttl: Duration,
    ) -> Result<Option<Taken>, StoreError>;

    /// Extends the leases `holder` still holds with these tokens; returns those it still holds.
    async fn renew(
        &self,
        holder: &str,
        held: &[HeldLease],
        ttl: Duration,
    ) -> Result<Vec<(String, String)>, StoreError>;

    /// Frees a lease at once, if `holder` still holds it with `token`.
    async fn release(
        &self,
        holder: &str,
        provider: &str,
        account: &str,
        token: i64,
    ) -> Result<(), StoreError>;

    /// Frees every lease of `holder` and removes it from the live replicas (on shutdown).
    async fn leave(&self, holder: &str) -> Result<(), StoreError>;

    async fn leases(&self) -> Result<Vec<LeaseRow>, StoreError>;

    async fn replicas(&self) -> Result<Vec<ReplicaRow>, StoreError>;
}

/// Replicas not seen for this long are deleted from `replicas` (they only count while alive).
const FORGET_REPLICAS_AFTER: &str = "1 day";

#[async_trait]
impl LeaseTable for PostgresStore {
    async fn beat(&self, holder: &str, ttl: Duration) -> Result<u64, StoreError> {
        sqlx::query(
            "INSERT INTO replicas (holder, started_at, seen_at, expires_at) \
             VALUES ($1, now(), now(), now() + make_interval(secs => $2)) \
             ON CONFLICT (holder) DO UPDATE SET seen_at = excluded.seen_at, \
             expires_at = excluded.expires_at",
        )
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .execute(self.pool())
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM replicas WHERE expires_at < now() - interval '{FORGET_REPLICAS_AFTER}'"
        )))
        .execute(self.pool())
        .await?;
        let alive: i64 =
            sqlx::query_scalar("SELECT count(*) FROM replicas WHERE expires_at > now()")
                .fetch_one(self.pool())
                .await?;
        Ok(u64::try_from(alive).unwrap_or(0).max(1))
    }

    async fn take(
        &self,
        holder: &str,
        provider: &str,
        account: &str,
        ttl: Duration,
    ) -> Result<Option<Taken>, StoreError> {
        // `previous` reads the row as it was before this statement: when the lease it replaces
        // ended. A lease still held is left alone without touching its row: the conflict
        // would wait for the row's lock, which the holder's writes take (the fence) for as
        // long as a commit lasts. An ended one is taken over in the conflict's update, which
        // names a key column (`provider`, unchanged) so that Postgres locks the row `FOR
        // UPDATE`, the lock that waits for the old holder's writes still in flight (their
        // fence holds the row `FOR KEY SHARE`).
        let row = sqlx::query(
            "WITH previous AS (SELECT holder, expires_at FROM account_leases \
                               WHERE provider = $1 AND account = $2) \
             INSERT INTO account_leases (provider, account, holder, token, expires_at, acquired_at) \
             SELECT $1::text, $2::text, $3::text, 1, now() + make_interval(secs => $4), now() \
             WHERE NOT EXISTS (SELECT 1 FROM previous \
                               WHERE holder IS NOT NULL AND expires_at > now()) \
             ON CONFLICT (provider, account) DO UPDATE SET provider = excluded.provider, \
             holder = excluded.holder, \
             token = account_leases.token + 1, expires_at = excluded.expires_at, \
             acquired_at = excluded.acquired_at \
             WHERE account_leases.holder IS NULL OR account_leases.expires_at <= now() \
             RETURNING token, \
             extract(epoch FROM now() - (SELECT expires_at FROM previous))::float8",
        )
        .bind(provider)
        .bind(account)
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .fetch_optional(self.pool())
        .await?;
        row.map(|row| {
            let ended: Option<f64> = row.try_get(1)?;
            Ok(Taken {
                token: row.try_get(0)?,
                previous_ended: ended.map(|secs| Duration::from_secs_f64(secs.max(0.0))),
            })
        })
        .transpose()
    }

    async fn renew(
        &self,
        holder: &str,
        held: &[HeldLease],
        ttl: Duration,
    ) -> Result<Vec<(String, String)>, StoreError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let providers: Vec<&str> = held.iter().map(|h| h.0.as_str()).collect();
        let accounts: Vec<&str> = held.iter().map(|h| h.1.as_str()).collect();
        let tokens: Vec<i64> = held.iter().map(|h| h.2).collect();
        let rows = sqlx::query(
            "UPDATE account_leases AS l SET expires_at = now() + make_interval(secs => $5) \
             FROM UNNEST($1::text[], $2::text[], $3::int8[]) AS h (provider, account, token) \
             WHERE l.provider = h.provider AND l.account = h.account AND l.token = h.token \
             AND l.holder = $4 RETURNING l.provider, l.account",
        )
        .bind(providers)
        .bind(accounts)
        .bind(tokens)
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect()
    }

    async fn release(
        &self,
        holder: &str,
        provider: &str,
        account: &str,
        token: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE account_leases SET holder = NULL, expires_at = now() \
             WHERE provider = $1 AND account = $2 AND holder = $3 AND token = $4",
        )
        .bind(provider)
        .bind(account)
        .bind(holder)
        .bind(token)
        .execute(self.pool())
        .await?;
        Ok(())
    }

    async fn leave(&self, holder: &str) -> Result<(), StoreError> {
        let mut connection = self.lend().await?;
        let mut tx = connection.begin().await?;
        sqlx::query(
            "UPDATE account_leases SET holder = NULL, expires_at = now() WHERE holder = $1",
        )
        .bind(holder)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM replicas WHERE holder = $1")
            .bind(holder)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.keep(connection);
        Ok(())
    }

    async fn leases(&self) -> Result<Vec<LeaseRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT provider, account, holder, token, expires_at, acquired_at \
             FROM account_leases ORDER BY provider, account",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(LeaseRow {
                    provider: row.try_get(0)?,
                    account: row.try_get(1)?,
                    holder: row.try_get(2)?,
                    token: row.try_get(3)?,
                    expires_at: row.try_get(4)?,
                    acquired_at: row.try_get(5)?,
                })
            })
            .collect()
    }

    async fn replicas(&self) -> Result<Vec<ReplicaRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT holder, started_at, seen_at, expires_at FROM replicas \
             WHERE expires_at > now() ORDER BY holder",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(ReplicaRow {
                    holder: row.try_get(0)?,
                    started_at: row.try_get(1)?,
                    seen_at: row.try_get(2)?,
                    expires_at: row.try_get(3)?,
                })
            })
            .collect()
    }
}

/// Checks, inside a write's own transaction, that this process still holds the account's lease
/// with the token it was taken with. The row is locked `FOR KEY SHARE` until the write commits,
/// so a replica taking the lease over (which locks the row `FOR UPDATE`, see `take`) waits for
/// this write, and any write after the takeover finds the new token and is refused. Renewals
/// only move `expires_at` and do not wait for writes: with batches overlapping all the time,
/// a renewal waiting for the share lock had gone without it until the lease ran out.
pub(super) async fn check_fence(
    book: &LeaseBook,
    tx: &mut Transaction<'_, Postgres>,
    provider: &str,
    account: &str,
) -> Result<(), StoreError> {
    let lost = || {
        crate::metrics::metrics().lease_writes_refused.inc();
        StoreError::LeaseLost {
            provider: provider.to_owned(),
            account: account.to_owned(),
        }
    };
    let Some(expected) = book.token_of(provider, account) else {
        return Err(lost());
    };
    let current: Option<i64> = sqlx::query_scalar(
        "SELECT token FROM account_leases WHERE provider = $1 AND account = $2 AND holder = $3 \
         FOR KEY SHARE",
    )
    .bind(provider)
    .bind(account)
    .bind(book.holder())
    .fetch_optional(&mut **tx)
    .await?;
    if current == Some(expected) {
        Ok(())
    } else {
        Err(lost())
    }
}
