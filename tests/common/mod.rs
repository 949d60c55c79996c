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
    /// Whether `schema` is dropped with this value (see its `Drop`): true for the one
    /// [`TestDb::new`] made, false for a copy made by [`TestDb::through`].
    owns_schema: bool,
    _dir: Option<tempfile::TempDir>,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl TestDb {
    /// A Postgres connection of its own in this test's schema (for locks a test holds itself).
    pub async fn pg_connection(&self) -> sqlx::PgConnection {
        use sqlx::Connection;
        let schema = self.schema.as_deref().expect("a Postgres test database");
        let mut conn = sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect to Postgres");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "SET search_path TO \"{schema}\""
        )))
        .execute(&mut conn)
        .await
        .expect("search_path");
        conn
    }

    /// A fresh database for `test`. Postgres tests are marked ignored when the build did not see
    /// `ORDERSYNC_TEST_PG` (see `build.rs`), so reaching here without it is a loud failure.
    pub fn new(backend: Backend, test: &str) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("test.db").display());
                TestDb {
                    backend,
                    url,
                    schema: None,
                    owns_schema: false,
                    _dir: Some(dir),
                }
            }
            Backend::Postgres => {
                let url = pg_url();
                let schema = unique_name("t", test);
                TestDb {
                    backend,
                    url,
                    schema: Some(schema),
                    owns_schema: true,
                    _dir: None,
                }
            }
        }
    }

    /// A Postgres database of its own (not only a schema), for tests that terminate every
    /// connection to it. Dropped by [`TestDb::drop_database`].
    pub async fn own_postgres_database(test: &str) -> TestDb {
        let admin = pg_url();
        let name = unique_name("ordersync", test);
        admin_sql(&format!("CREATE DATABASE \"{name}\"")).await;
        let mut url = url::Url::parse(&admin).expect("ORDERSYNC_TEST_PG is a URL");
        url.set_path(&format!("/{name}"));
        TestDb {
            backend: Backend::Postgres,
            url: url.to_string(),
            schema: Some("public".into()),
            owns_schema: false,
            _dir: None,
        }
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

    /// The same database reached through `proxy` (Postgres only).
    pub fn through(&self, proxy: &PausableProxy) -> TestDb {
        let mut url = url::Url::parse(&self.url).expect("a Postgres URL");
        url.set_host(Some(&proxy.addr.ip().to_string()))
            .expect("host");
        url.set_port(Some(proxy.addr.port())).expect("port");
        TestDb {
            backend: self.backend,
            url: url.to_string(),
            schema: self.schema.clone(),
            owns_schema: false,
            _dir: None,
        }
    }

    /// The `[database]` section for this database, and an `[admin]` section whose internal
    /// listener takes any free port (tests run many daemons at once).
    pub fn toml(&self) -> String {
        let admin = "[admin]\nlisten = \"127.0.0.1:0\"\n";
        match &self.schema {
            Some(schema) => format!(
                "{admin}[database]\nurl = \"{}\"\nschema = \"{schema}\"\n",
                self.url
            ),
            None => format!("{admin}[database]\nurl = \"{}\"\n", self.url),
        }
    }
}

/// A passing test's schema is dropped, so runs do not pile schemas up in the shared test
/// database (a whole run made about sixty, each with its tables); a failing test's is kept to
/// look at.
/// Bounded: a schema still locked after a few seconds is left behind.
impl Drop for TestDb {
    fn drop(&mut self) {
        if !self.owns_schema || std::thread::panicking() {
            return;
        }
        let Some(schema) = self.schema.clone() else {
            return;
        };
        let url = self.url.clone();
        let name = schema.clone();
        // Drop may run inside a test's runtime, which cannot be blocked on: the statement runs
        // on a thread and runtime of its own.
        let dropped = std::thread::spawn(move || {
            use sqlx::Connection;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                tokio::time::timeout(std::time::Duration::from_secs(10), async {
                    let mut conn = sqlx::PgConnection::connect(&url).await.ok()?;
                    let statement = format!(
                        "SET lock_timeout = '5s'; DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
                    );
                    let done = sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                    done.ok()
                })
                .await
                .ok()
                .flatten()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("left the test schema {name} in place: it could not be dropped");
        }
    }
}

/// A schema or database name for `test`, unique across test processes and calls, and across
/// runs: a pid comes back in a later run, so the start time of this process is part of it
/// (a schema left by an earlier run must never be found again).
fn unique_name(prefix: &str, test: &str) -> String {
    static STARTED: std::sync::OnceLock<u128> = std::sync::OnceLock::new();
    let started = STARTED.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() % 1_000_000_000)
            .unwrap_or(0)
    });
    format!(
        "{prefix}_{}_{}_{started}_{}",
        test.chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(30)
            .collect::<String>(),
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `ORDERSYNC_TEST_PG`, or a panic saying how to run the test.
pub fn pg_url() -> String {
    std::env::var(PG_ENV)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| {
            panic!("this test needs Postgres: set {PG_ENV}, e.g. postgres://postgres@127.0.0.1:5432/test")
        })
}

/// Runs one statement on the `ORDERSYNC_TEST_PG` database (the server's admin side).
pub async fn admin_sql(statement: &str) -> u64 {
    use sqlx::Connection;
    let url = pg_url();
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

/// How many orders differ between the database and the sandbox, over every account (an order
/// missing, extra, or stored with other fields counts once per side).
pub async fn differences_from_truth(
    store: &Arc<dyn Store>,
    sandbox: &Sandbox,
    spec: &SandboxConfig,
) -> usize {
    let mut differences = 0;
    for (i, acct) in spec.graas.iter().enumerate() {
        let stored: std::collections::BTreeSet<StoredOrder> = store
            .orders_of("graas", &account_name(i))
            .await
            .expect("orders")
            .into_iter()
            .collect();
        let expected: std::collections::BTreeSet<StoredOrder> =
            expected_orders(sandbox, &acct.account_number)
                .into_iter()
                .collect();
        differences += stored.symmetric_difference(&expected).count();
    }
    differences
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

/// A port for a daemon that must be told its address before it binds, and bind it again after a
/// restart. Port 0 would do for neither, and a port the kernel hands out for port 0 is one it also
/// gives outgoing connections (another test's, say) between the probe and the daemon's bind. So:
/// below the ephemeral range, free now, and never given to two tests of this process.
pub fn fixed_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    let span = 8_000.min(ephemeral_start.saturating_sub(1_024)).max(1);
    let base = ephemeral_start - span;
    // Spread over the span by process, so two test binaries at once rarely meet either.
    let offset = std::process::id() % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(base + (offset + n) % span).expect("a port below 65536");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {base}..{}", base + span);
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

/// Runs a test body against SQLite and against Postgres; declares `#[tokio::test]` for each.
/// The Postgres one is listed as ignored when the build did not see `ORDERSYNC_TEST_PG`.
#[macro_export]
macro_rules! on_both_backends {
    ($body:ident) => {
        mod $body {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body(common::TestDb::new(
                    common::Backend::Sqlite,
                    stringify!($body),
                ))
                .await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
            async fn postgres() {
                super::$body(common::TestDb::new(
                    common::Backend::Postgres,
                    stringify!($body),
                ))
                .await;
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
        Some(_) => {
            let mut conn = db.pg_connection().await;
            for statement in statements {
                sqlx::raw_sql(sqlx::AssertSqlSafe(statement.to_string()))
                    .execute(&mut conn)
                    .await
                    .expect("SQL statement");
            }
        }
    }
}

/// The first column of the first row of `query`, as text.
pub async fn execute_scalar(db: &TestDb, query: &str) -> String {
    use sqlx::Connection;
    match &db.schema {
        None => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url)
                .await
                .expect("connect to SQLite");
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(query.to_string()))
                .fetch_one(&mut conn)
                .await
                .expect("SQL query")
        }
        Some(_) => {
            let mut conn = db.pg_connection().await;
            sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(query.to_string()))
                .fetch_one(&mut conn)
                .await
                .expect("SQL query")
        }
    }
}

/// Starts `ordersync run` with this config at `[log] level = "info"` (the default), its log
/// (stderr) written to `log`.
pub fn spawn_run_logged(config: &std::path::Path, log: &std::path::Path) -> Daemon {
    let file = std::fs::File::create(log).expect("log file");
    Daemon(
        std::process::Command::new(env!("CARGO_BIN_EXE_ordersync"))
            .args(["run", "--config"])
            .arg(config)
            .env_remove("ORDERSYNC_CONFIG")
            .env_remove("RUST_LOG")
            .env("ORDERSYNC_LOG__LEVEL", "info")
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn ordersync run"),
        Some(log.to_owned()),
    )
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

/// Database timeouts for a config written by [`config_toml`]: short, so stalls fail fast.
pub fn with_database_timeouts(text: &str, statement: &str, acquire: &str) -> String {
    text.replacen(
        "[database]\n",
        &format!(
            "[database]\nstatement_timeout = \"{statement}\"\nacquire_timeout = \"{acquire}\"\n"
        ),
        1,
    )
}

/// A child process killed when dropped, so a failing test leaves no daemon behind.
/// A running daemon and, when it logs to a file, the file: printed when the test fails, so a
/// failure in CI shows what the daemon saw.
pub struct Daemon(pub std::process::Child, pub Option<std::path::PathBuf>);

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Sends SIGTERM and waits for the exit; panics when it takes longer than `limit`.
    pub fn terminate(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        let term = std::process::Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(term.success());
        loop {
            if let Some(status) = self.0.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            if started.elapsed() > limit {
                let _ = self.0.kill();
                panic!("ordersync did not exit within {limit:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
        if std::thread::panicking()
            && let Some(log) = &self.1
        {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(80)..];
            eprintln!(
                "--- last {} lines of {} (pid {}):\n{}",
                tail.len(),
                log.display(),
                self.0.id(),
                tail.join("\n")
            );
        }
    }
}

/// A TCP proxy on loopback that can stop forwarding in both directions while keeping every
/// connection open: a database whose network went silent.
pub struct PausableProxy {
    pub addr: std::net::SocketAddr,
    paused: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl PausableProxy {
    pub async fn start(upstream: std::net::SocketAddr) -> PausableProxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let (paused, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(forward(client_read, server_write, watch.clone()));
                tokio::spawn(forward(server_read, client_write, watch.clone()));
            }
        });
        PausableProxy { addr, paused, task }
    }

    pub fn pause(&self) {
        self.paused.send_replace(true);
    }

    pub fn resume(&self) {
        self.paused.send_replace(false);
    }
}

impl Drop for PausableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut paused: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        // Bytes read just before a pause are held until it ends.
        if paused.wait_for(|p| !*p).await.is_err() {
            return;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

/// Waits until the wall clock is past `unix_secs` (for reads that end `settle` before now).
pub async fn wait_for_clock_past(unix_secs: i64) {
    wait_until(
        Duration::from_secs(60),
        "the clock to pass a moment",
        || async { Utc::now().timestamp() > unix_secs },
    )
    .await;
}

/// Waits until `log` holds `needle`.
pub async fn wait_for_log(log: &std::path::Path, needle: &str, timeout: Duration) {
    wait_until(timeout, &format!("`{needle}` in the log"), || async {
        std::fs::read_to_string(log).is_ok_and(|text| text.contains(needle))
    })
    .await;
}

/// A shutdown deadline for tests: long enough for any run to end.
pub fn shutdown_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(30)
}

/// A sandbox on loopback and a config file for it, for tests that drive the binary.
pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config_path: std::path::PathBuf,
    pub config: Config,
    pub sandbox: Sandbox,
    pub spec: SandboxConfig,
}

impl Setup {
    /// Starts the sandbox and writes the config; `edit` changes the config's text first.
    pub async fn start(
        db: &TestDb,
        spec: SandboxConfig,
        account: &AccountToml,
        edit: impl FnOnce(String) -> String,
    ) -> Setup {
        let sandbox = Sandbox::start(([127, 0, 0, 1], 0).into(), spec.clone())
            .await
            .expect("sandbox");
        let text = edit(config_toml(db, &sandbox, &spec, account));
        let dir = tempfile::tempdir().expect("temp dir");
        let config_path = dir.path().join("ordersync.toml");
        std::fs::write(&config_path, &text).expect("write config");
        let config = Config::from_toml(&text).expect("valid test config");
        Setup {
            dir,
            config_path,
            config,
            sandbox,
            spec,
        }
    }

    /// Where tests send the daemon's log.
    pub fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("ordersync.log")
    }

    /// `ordersync run --once` on this config; panics with its stderr when it fails.
    pub fn run_once(&self) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ordersync"))
            .args(["run", "--once", "--config"])
            .arg(&self.config_path)
            .env_remove("ORDERSYNC_CONFIG")
            .output()
            .expect("run ordersync");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// An accept or cancel (with the default reason) of a sandbox order, for the first account
/// `account` (0-based).
pub fn order_request(
    account: usize,
    kind: &str,
    order: &ordersync::sandbox::graas::TruthOrder,
) -> ordersync::outbox::request::ActionRequest {
    ordersync::outbox::request::ActionRequest {
        account: account_name(account),
        kind: kind.into(),
        channel: Some(order.channel.clone()),
        order_id: Some(order.order_id.clone()),
        reason: (kind == "cancel").then(|| "OUT_OF_STOCK".to_owned()),
        ..Default::default()
    }
}

/// Queues an accept for each of the first `count` orders of the first sandbox account.
pub async fn enqueue_accepts(setup: &Setup, store: &Arc<dyn Store>, count: usize) {
    let number = &setup.spec.graas[0].account_number;
    for order in setup.sandbox.graas().truth(number).iter().take(count) {
        let action = order_request(0, "accept", order)
            .into_action(&setup.config)
            .expect("a valid accept");
        store.enqueue(&action).await.expect("enqueue");
    }
}
