//! Test harness: a fresh database per test (a SQLite file, or a Postgres schema when
//! `ORDERSYNC_TEST_PG` is set), the sandbox on loopback, and configs written as real TOML.
#![allow(dead_code)]

use chrono::Utc;
use ordersync::config::Config;
use ordersync::sandbox::{Sandbox, SandboxConfig};
use ordersync::store::{self, Store, StoredOrder};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const PG_ENV: &str = "ORDERSYNC_TEST_PG";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    pub schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// `None` for Postgres when `ORDERSYNC_TEST_PG` is unset (the test is then not applicable).
    pub fn new(backend: Backend, test: &str) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                Some(TestDb {
                    backend,
                    url,
                    schema: None,
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => {
                let Some(url) = std::env::var(PG_ENV).ok().filter(|u| !u.is_empty()) else {
                    eprintln!("{PG_ENV} is not set: Postgres variant of {test} not run");
                    return None;
                };
                let schema = format!(
                    "t_{}_{}_{}",
                    test.chars()
                        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .take(30)
                        .collect::<String>(),
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                );
                Some(TestDb {
                    backend,
                    url,
                    schema: Some(schema),
                    _dir: None,
                })
            }
        }
    }

    /// A Postgres database of its own (not only a schema), for tests that terminate every
    /// connection to it; `None` when `ORDERSYNC_TEST_PG` is unset. Dropped by [`TestDb::drop_database`].
    pub async fn own_postgres_database(test: &str) -> Option<TestDb> {
        let admin = std::env::var(PG_ENV).ok().filter(|u| !u.is_empty())?;
        let name = format!(
            "ordersync_{}_{}_{}",
            test.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(30)
                .collect::<String>(),
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        admin_sql(&format!("CREATE DATABASE \"{name}\"")).await;
        let mut url = url::Url::parse(&admin).expect("ORDERSYNC_TEST_PG is a URL");
        url.set_path(&format!("/{name}"));
        Some(TestDb {
            backend: Backend::Postgres,
            url: url.to_string(),
            schema: Some("public".into()),
            _dir: None,
        })
    }

    /// The database's name on the Postgres server.
    pub fn database_name(&self) -> String {
        url::Url::parse(&self.url)
            .map(|u| u.path().trim_start_matches('/').to_owned())
            .unwrap_or_default()
    }

    /// Drops a database made by [`TestDb::own_postgres_database`], closing its connections.
    pub async fn drop_database(&self) {
        admin_sql(&format!(
            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
            self.database_name()
        ))
        .await;
    }

    /// The `[database]` section for this database.
    pub fn toml(&self) -> String {
        match &self.schema {
            Some(schema) => format!(
                "[database]\nurl = \"{}\"\nschema = \"{schema}\"\n",
                self.url
            ),
            None => format!("[database]\nurl = \"{}\"\n", self.url),
        }
    }
}

/// Runs one statement on the `ORDERSYNC_TEST_PG` database (the server's admin side).
pub async fn admin_sql(statement: &str) -> u64 {
    use sqlx::Connection;
    let url = std::env::var(PG_ENV).expect("ORDERSYNC_TEST_PG");
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to ORDERSYNC_TEST_PG");
    let done = sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_owned()))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    let _ = conn.close().await;
    done.rows_affected()
}

/// Settings of one `[[graas]]` section that tests vary.
#[derive(Debug, Clone)]
pub struct AccountToml {
    pub schedule: &'static str,
    pub lookback: &'static str,
    pub settle: &'static str,
    pub page_size: u32,
    pub rate_limit: &'static str,
    pub max_window: &'static str,
    /// More keys for every account section, verbatim.
    pub extra: &'static str,
}

impl Default for AccountToml {
    fn default() -> Self {
        AccountToml {
            schedule: "*/1 * * * * *",
            lookback: "30s",
            settle: "1s",
            page_size: 200,
            rate_limit: "200/s",
            max_window: "1d",
            extra: "",
        }
    }
}

/// Account names the configs give the sandbox's accounts: `shop-1`, `shop-2`, …
pub fn account_name(index: usize) -> String {
    format!("shop-{}", index + 1)
}

/// A complete configuration for `db` against every Graas account of `sandbox`.
pub fn config_toml(
    db: &TestDb,
    sandbox: &Sandbox,
    spec: &SandboxConfig,
    account: &AccountToml,
) -> String {
    let start = Utc::now() - chrono::Duration::seconds(spec.history_secs + 3600);
    let mut text = db.toml();
    text.push_str("\n[log]\nlevel = \"warn\"\n\n[http]\nrequest_timeout = \"1s\"\nmin_backoff = \"50ms\"\nmax_backoff = \"500ms\"\nmax_retries = 30\n");
    for (i, acct) in spec.graas.iter().enumerate() {
        text.push_str(&format!(
            "\n[[graas]]\nname = \"{name}\"\nbase_url = \"{url}\"\naccount_number = \"{number}\"\napp_key = \"{key}\"\nschedule = \"{schedule}\"\nlookback = \"{lookback}\"\nsettle = \"{settle}\"\npage_size = {page_size}\nstart_from = \"{start}\"\nmax_window = \"{max_window}\"\nrate_limit = \"{rate}\"\n{extra}\n",
            name = account_name(i),
            url = sandbox.base_url(),
            number = acct.account_number,
            key = acct.app_key,
            schedule = account.schedule,
            lookback = account.lookback,
            settle = account.settle,
            page_size = account.page_size,
            start = start.to_rfc3339(),
            max_window = account.max_window,
            rate = account.rate_limit,
            extra = account.extra,
        ));
    }
    text
}

pub async fn open_store(config: &Config) -> Arc<dyn Store> {
    let store = store::open(&config.database).await.expect("open database");
    store.migrate().await.expect("migrate");
    store
}

/// The sandbox's truth for an account in the shape the store reports, malformed orders left out.
pub fn expected_orders(sandbox: &Sandbox, account_number: &str) -> Vec<StoredOrder> {
    let mut expected: Vec<StoredOrder> = sandbox
        .graas()
        .truth(account_number)
        .into_iter()
        .filter(|o| !o.malformed)
        .map(|o| StoredOrder {
            channel: o.channel,
            external_id: o.order_id,
            status: Some(o.status),
            payment_status: Some(o.payment_status),
            shipping_status: Some(o.shipping_status),
            upstream_updated_at: chrono::DateTime::from_timestamp(o.updated, 0).expect("time"),
        })
        .collect();
    expected.sort();
    expected
}

/// Asserts the database holds exactly the sandbox's orders for every account, field by field.
pub async fn assert_matches_truth(store: &Arc<dyn Store>, sandbox: &Sandbox, spec: &SandboxConfig) {
    for (i, acct) in spec.graas.iter().enumerate() {
        let mut stored = store
            .orders_of("graas", &account_name(i))
            .await
            .expect("orders");
        stored.sort();
        let expected = expected_orders(sandbox, &acct.account_number);
        if stored != expected {
            let missing = expected
                .iter()
                .filter(|o| !stored.contains(o))
                .take(5)
                .collect::<Vec<_>>();
            let extra = stored
                .iter()
                .filter(|o| !expected.contains(o))
                .take(5)
                .collect::<Vec<_>>();
            panic!(
                "{}: database has {} orders, sandbox {}; first differences: expected but not stored {missing:#?}, stored but not expected {extra:#?}",
                account_name(i),
                stored.len(),
                expected.len()
            );
        }
    }
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

/// The stream's committed cursor (Unix seconds).
pub async fn cursor_of(store: &Arc<dyn Store>, account: &str) -> Option<i64> {
    let stream = ordersync::model::StreamKey {
        provider: ordersync::model::ProviderKind::Graas,
        account: account.to_owned(),
        resource: "orders".to_owned(),
    };
    store
        .cursor(&stream)
        .await
        .ok()
        .flatten()
        .and_then(|c| c.parse().ok())
}

/// Runs a test body against SQLite, or Postgres; declares `#[tokio::test]` for each.
#[macro_export]
macro_rules! on_both_backends {
    ($body:ident) => {
        mod $body {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                if let Some(db) = common::TestDb::new(common::Backend::Sqlite, stringify!($body)) {
                    super::$body(db).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = common::TestDb::new(common::Backend::Postgres, stringify!($body))
                {
                    super::$body(db).await;
                }
            }
        }
    };
}

/// Asserts every order the sandbox last updated before `cursor` is stored: the cursor never ran
/// ahead of the data it covers.
pub async fn assert_no_gap_below_cursor(
    store: &Arc<dyn Store>,
    sandbox: &Sandbox,
    account_number: &str,
    account: &str,
    cursor: i64,
) {
    let stored: std::collections::HashSet<(String, String)> = store
        .orders_of("graas", account)
        .await
        .expect("orders")
        .into_iter()
        .map(|o| (o.channel, o.external_id))
        .collect();
    let covered: Vec<_> = expected_orders(sandbox, account_number)
        .into_iter()
        .filter(|o| o.upstream_updated_at.timestamp() < cursor)
        .collect();
    let missing: Vec<_> = covered
        .iter()
        .filter(|o| !stored.contains(&(o.channel.clone(), o.external_id.clone())))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "orders behind the cursor {cursor} are missing: {missing:#?}"
    );
}

/// Runs SQL statements on the test's database directly, as another system would.
pub async fn execute_sql(db: &TestDb, statements: &[&str]) {
    use sqlx::Connection;
    match &db.schema {
        None => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("connect to SQLite");
            for statement in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
                    .execute(&mut conn)
                    .await
                    .expect("SQL statement");
            }
        }
        Some(schema) => {
            let mut conn = sqlx::PgConnection::connect(&db.url)
                .await
                .expect("connect to Postgres");
            let set_path = format!("SET search_path TO \"{schema}\"");
            for statement in std::iter::once(set_path.as_str()).chain(statements.iter().copied()) {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
                    .execute(&mut conn)
                    .await
                    .expect("SQL statement");
            }
        }
    }
}

/// Starts `ordersync run` with this config, its output discarded.
pub fn spawn_run(config: &std::path::Path) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_ordersync"))
        .args(["run", "--config"])
        .arg(config)
        .env_remove("ORDERSYNC_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn ordersync run")
}
