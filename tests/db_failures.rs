//! The database failing under the daemon: connections terminated (a failover, a restarted
//! PgBouncer), a lock held past the timeout, a full or read-only SQLite file. Every run must end
//! (with an error, recorded), the next one must go on from the cursor, and shutdown must keep
//! its deadline.

mod common;

use chrono::Utc;
use common::{
    AccountToml, TestDb, account_name, admin_sql, assert_matches_truth, config_toml, open_store,
    spawn_run, wait_until,
};
use ordersync::config::Config;
use ordersync::model::{ProviderKind, StreamKey};
use ordersync::sandbox::{Mutations, Sandbox, SandboxConfig};
use ordersync::store::{Store, StreamStatus};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Setup {
    _dir: tempfile::TempDir,
    config_path: PathBuf,
    config: Config,
    sandbox: Sandbox,
    spec: SandboxConfig,
}

async fn setup(db: &TestDb, spec: SandboxConfig, account: &AccountToml, extra: &str) -> Setup {
    let sandbox = Sandbox::start(([127, 0, 0, 1], 0).into(), spec.clone())
        .await
        .expect("sandbox");
    let text = format!("{}{extra}", config_toml(db, &sandbox, &spec, account));
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("ordersync.toml");
    std::fs::write(&config_path, &text).unwrap();
    let config = Config::from_toml(&text).unwrap();
    Setup {
        _dir: dir,
        config_path,
        config,
        sandbox,
        spec,
    }
}

fn orders_stream(account: &str) -> StreamKey {
    StreamKey {
        provider: ProviderKind::Graas,
        account: account.to_owned(),
        resource: "orders".to_owned(),
    }
}

async fn stream_status(store: &Arc<dyn Store>, account: &str) -> Option<StreamStatus> {
    let key = orders_stream(account);
    store
        .streams()
        .await
        .ok()?
        .into_iter()
        .find(|s| s.stream == key)
}

/// Sends SIGTERM and waits for the exit; panics when it takes longer than `limit`.
fn terminate(child: &mut Child, limit: Duration) -> (std::process::ExitStatus, Duration) {
    let started = Instant::now();
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(term.success());
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return (status, started.elapsed());
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("ordersync did not exit within {limit:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Terminates every connection to `db`'s database, as a failover or an operator does.
async fn terminate_backends(db: &TestDb) -> u64 {
    admin_sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.database_name()
    ))
    .await
}

/// Two accounts sync a backfill under live changes while every connection of the daemon is
/// terminated again and again. Every stream must keep finishing runs, the database must end equal
/// to the sandbox, and SIGTERM must still stop the daemon in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(ordersync_pg),
    ignore = "needs Postgres: set ORDERSYNC_TEST_PG and rebuild"
)]
async fn terminated_connections_never_freeze_a_stream() {
    let db = TestDb::own_postgres_database("terminated_connections")
        .await
        .expect("ORDERSYNC_TEST_PG");
    let mut spec = SandboxConfig::graas(2, 12_000);
    spec.mutations = Some(Mutations {
        every_ms: 200,
        per_tick: 10,
        new_per_tick: 2,
        ..Mutations::default()
    });
    let account = AccountToml {
        page_size: 50,
        rate_limit: "40/s",
        max_window: "2h",
        ..AccountToml::default()
    };
    let s = setup(&db, spec, &account, "\n[daemon]\nshutdown_timeout = \"10s\"\n").await;
    let store = open_store(&s.config).await;
    let mut child = spawn_run(&s.config_path);
    let accounts = [account_name(0), account_name(1)];

    // The backfill takes longer than the terminations, and its pipeline is full (fetching runs
    // ahead of committing), so terminations land on commits with pieces waiting behind them.
    // Runs that fail must say so in sync_cursors.
    let mut terminated = 0;
    let mut failed_runs_seen = 0;
    for round in 0..14u64 {
        let until = Instant::now() + Duration::from_millis(700 + 150 * (round % 5));
        while Instant::now() < until {
            for name in &accounts {
                if let Some(status) = stream_status(&store, name).await
                    && status.last_error.is_some()
                {
                    failed_runs_seen += 1;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        terminated += terminate_backends(&db).await;
    }
    let last_termination = Utc::now();
    assert!(terminated >= 14, "only {terminated} connections terminated");
    assert!(
        failed_runs_seen > 0,
        "no run failed: the terminations never hit a run, so nothing was tested"
    );

    // Every stream finishes a run that started after the last termination.
    for name in &accounts {
        wait_until(
            Duration::from_secs(60),
            &format!("{name} to finish a run after the terminations"),
            || async {
                stream_status(&store, name).await.is_some_and(|s| {
                    s.last_run_started_at.is_some_and(|t| t > last_termination)
                        && s.last_run_finished_at > s.last_run_started_at
                })
            },
        )
        .await;
    }

    // With the upstream quiet, the database catches up and equals it.
    let newest = s.sandbox.graas().set_mutating(false);
    for name in &accounts {
        wait_until(
            Duration::from_secs(60),
            &format!("{name} to catch up"),
            || async {
                stream_status(&store, name).await.is_some_and(|s| {
                    s.last_error.is_none()
                        && s.cursor
                            .as_deref()
                            .and_then(|c| c.parse::<i64>().ok())
                            .is_some_and(|c| c > newest)
                })
            },
        )
        .await;
    }
    assert_matches_truth(&store, &s.sandbox, &s.spec).await;
    eprintln!(
        "terminated {terminated} connections; a failed run was on record in {failed_runs_seen} polls"
    );

    let (status, took) = terminate(&mut child, Duration::from_secs(20));
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(took < Duration::from_secs(11), "shutdown took {took:?}");
    store.close().await;
    s.sandbox.stop().await;
    db.drop_database().await;
}
