//! The database failing under the daemon: connections terminated (a failover, a restarted
//! PgBouncer), a lock held past the timeout, a full or read-only SQLite file. Every run must end
//! (with an error, recorded), the next one must go on from the cursor, and shutdown must keep
//! its deadline.

mod common;

use chrono::Utc;
use common::{
    AccountToml, Backend, Daemon, PausableProxy, Setup, TestDb, account_name, admin_sql,
    assert_matches_truth, assert_no_gap_below_cursor, cursor_of, open_store, spawn_run_logged,
    wait_for_log, wait_until, with_database_timeouts,
};
use ordersync::app::App;
use ordersync::model::{ProviderKind, StreamKey};
use ordersync::sandbox::{Mutations, SandboxConfig};
use ordersync::store::{ActionFilter, Store, StreamStatus};
use sqlx::Connection;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Terminates every connection to `db`'s database, as a failover or an operator does.
async fn terminate_backends(db: &TestDb) -> u64 {
    admin_sql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = '{}' AND pid <> pg_backend_pid()",
        db.database_name()
    ))
    .await
}

/// Terminates every connection to `db`'s database at a moment when one of them is inside a
/// statement or a transaction, so that a run fails in flight. A termination between statements
/// only costs the pool a reconnect, and on a busy machine a fixed schedule of terminations can
/// miss every statement. After `patience` without such a moment, terminates anyway.
async fn terminate_backends_in_flight(
    admin: &mut sqlx::PgConnection,
    db: &TestDb,
    patience: Duration,
) -> u64 {
    let name = db.database_name();
    let in_flight = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = '{name}' AND pid <> pg_backend_pid() AND EXISTS ( \
           SELECT 1 FROM pg_stat_activity WHERE datname = '{name}' \
           AND state IN ('active', 'idle in transaction'))"
    );
    let until = Instant::now() + patience;
    while Instant::now() < until {
        let terminated: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(in_flight.clone()))
            .fetch_one(&mut *admin)
            .await
            .unwrap_or_else(|e| panic!("{in_flight}: {e}"));
        if terminated > 0 {
            return terminated as u64;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    terminate_backends(db).await
}

/// Two accounts sync a backfill under live changes while every connection of the daemon is
/// terminated again and again. Every stream must keep finishing runs, the database must end equal
/// to the sandbox, and SIGTERM must still stop the daemon in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn terminated_connections_never_freeze_a_stream() {
    let db = TestDb::own_postgres_database("terminated_connections").await;
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
    let s = Setup::start(&db, spec, &account, |text| {
        format!("{text}\n[daemon]\nshutdown_timeout = \"10s\"\n")
    })
    .await;
    let store = open_store(&s.config).await;
    let mut daemon = spawn_run_logged(&s.config_path, &s.log());
    let accounts = [account_name(0), account_name(1)];

    // Each termination waits for a statement or transaction in flight: during the backfill a
    // commit with pieces waiting behind it, afterwards a run over the live changes. Runs that
    // fail must say so in sync_cursors.
    let mut admin = sqlx::PgConnection::connect(&common::pg_url())
        .await
        .unwrap();
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
        terminated += terminate_backends_in_flight(&mut admin, &db, Duration::from_secs(2)).await;
    }
    let _ = admin.close().await;
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
    // Failures are ordersync's warnings naming the stream; the pool's reconnect chatter stays
    // out of a default log.
    let log = std::fs::read_to_string(s.log()).unwrap();
    assert!(
        log.contains("run failed") && log.contains("stream=graas/shop-"),
        "{log}"
    );
    assert!(!log.contains("ping on idle connection"), "{log}");

    let (status, took) = daemon.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit after SIGTERM: {status}");
    assert!(took < Duration::from_secs(11), "shutdown took {took:?}");
    store.close().await;
    s.sandbox.stop().await;
    db.drop_database().await;
}

const ACTIONS: usize = 300;

/// The same terminations while the outbox drains: every action ends final, none is left in
/// flight, and each reached the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn terminated_connections_never_strand_an_action() {
    let db = TestDb::own_postgres_database("terminated_outbox").await;
    let spec = SandboxConfig::graas(1, 400);
    let account = AccountToml {
        schedule: "0 0 0 1 1 *",
        rate_limit: "50/s",
        extra: "action_batch_size = 2",
        ..AccountToml::default()
    };
    let s = Setup::start(&db, spec, &account, |text| {
        format!("{text}\n[outbox]\npoll_interval = \"50ms\"\nvisibility_timeout = \"3s\"\nmin_backoff = \"50ms\"\nmax_backoff = \"400ms\"\nmax_attempts = 50\n")
    })
    .await;
    let store = open_store(&s.config).await;
    let number = s.spec.graas[0].account_number.clone();
    common::enqueue_accepts(&s, &store, ACTIONS).await;
    let mut daemon = spawn_run_logged(&s.config_path, &s.log());
    // The dispatcher's statements take a millisecond, too short to hit by chance. So each round
    // holds a lock on `actions` until a claim or record waits on it, then terminates every
    // connection: the waiting statement fails in flight. Between rounds it drains freely.
    let mut terminated = 0;
    for _ in 0..5 {
        let mut locker = sqlx::PgConnection::connect(&db.url).await.unwrap();
        sqlx::raw_sql("BEGIN; LOCK TABLE actions IN EXCLUSIVE MODE")
            .execute(&mut locker)
            .await
            .unwrap();
        wait_until(
            Duration::from_secs(10),
            "the dispatcher to wait on the lock",
            || waiting_on_a_lock(&db),
        )
        .await;
        terminated += terminate_backends(&db).await;
        drop(locker);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let actions = || async {
        store
            .actions(&ActionFilter {
                limit: 10_000,
                ..ActionFilter::default()
            })
            .await
            .unwrap_or_default()
    };
    wait_until(
        Duration::from_secs(90),
        "every action to end final",
        || async {
            let all = actions().await;
            all.len() == ACTIONS && all.iter().all(|a| a.state == "succeeded")
        },
    )
    .await;
    let all = actions().await;
    let received = s.sandbox.graas().received(&number);
    let mut sent: std::collections::HashMap<&str, usize> = Default::default();
    for r in received.iter().filter(|r| r.http_code == 202) {
        *sent.entry(r.reference.as_str()).or_default() += 1;
    }
    assert_eq!(sent.len(), ACTIONS, "every action reached the upstream");
    let repeats: usize = sent.values().map(|n| n - 1).sum();
    let retried = all.iter().filter(|a| a.attempts > 1).count();
    let log = std::fs::read_to_string(s.log()).unwrap();
    let store_errors = log
        .matches("outbox: cannot claim or record actions")
        .count();
    eprintln!(
        "terminated {terminated} connections; {store_errors} claims or records failed, {retried} actions took more than one attempt, {repeats} were sent twice"
    );
    assert!(
        store_errors >= 5,
        "each round must fail a claim or record in flight; log:\n{log}"
    );
    // A repeat needs a lost outcome, which is a retried action.
    assert!(repeats <= retried, "{repeats} repeats, {retried} retried");
    let (status, _) = daemon.terminate(Duration::from_secs(40));
    assert!(status.success(), "exit after SIGTERM: {status}");
    store.close().await;
    s.sandbox.stop().await;
    db.drop_database().await;
}

/// Another connection holding the lock a run needs, the way a long migration or a careless
/// `BEGIN` in psql does.
enum LockHolder {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl LockHolder {
    /// SQLite: the write lock. Postgres: `sync_cursors`, which every run reads and writes.
    async fn take(db: &TestDb) -> LockHolder {
        match db.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
                sqlx::raw_sql("BEGIN IMMEDIATE")
                    .execute(&mut conn)
                    .await
                    .unwrap();
                LockHolder::Sqlite(conn)
            }
            Backend::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
                let schema = db.schema.as_deref().unwrap_or("public");
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "SET search_path TO \"{schema}\"; BEGIN; LOCK TABLE sync_cursors IN ACCESS EXCLUSIVE MODE"
                )))
                .execute(&mut conn)
                .await
                .unwrap();
                LockHolder::Postgres(conn)
            }
        }
    }

    async fn release(self) {
        match self {
            LockHolder::Sqlite(mut conn) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
            LockHolder::Postgres(mut conn) => {
                sqlx::raw_sql("ROLLBACK").execute(&mut conn).await.unwrap();
                conn.close().await.unwrap();
            }
        }
    }
}

/// A lock held past `statement_timeout` fails the run after a bounded time, with an error that
/// says so; once the lock is gone the next run catches up.
async fn a_held_lock_fails_the_run_in_bounded_time(db: TestDb) {
    let spec = SandboxConfig::graas(1, 300);
    let s = Setup::start(&db, spec, &AccountToml::default(), |text| {
        with_database_timeouts(&text, "2s", "2s")
    })
    .await;
    let store = open_store(&s.config).await;
    let runners = App::build(&s.config, &store).unwrap().runners;
    let never = tokio_util::sync::CancellationToken::new();
    runners[0].run_if_idle(&never).await.unwrap().unwrap();
    // The next run must have a window to commit: the clock passes the cursor's second first.
    common::wait_for_clock_past(chrono::Utc::now().timestamp() + 1).await;

    let lock = LockHolder::take(&db).await;
    let started = Instant::now();
    let result = runners[0].run_if_idle(&never).await.expect("it ran");
    let took = started.elapsed();
    let error = result.expect_err("the run must fail while the lock is held");
    let text = error.to_string();
    eprintln!("run failed after {took:?}: {text}");
    assert!(
        ["statement timeout", "lock timeout", "database is locked"]
            .iter()
            .any(|cause| text.contains(cause)),
        "{text}"
    );
    // Three database calls may wait out the 2s timeout: the read, the commit, the end.
    assert!(took < Duration::from_secs(12), "the run took {took:?}");

    lock.release().await;
    runners[0].run_if_idle(&never).await.unwrap().unwrap();
    assert_matches_truth(&store, &s.sandbox, &s.spec).await;
    store.close().await;
    s.sandbox.stop().await;
}
on_both_backends!(a_held_lock_fails_the_run_in_bounded_time);

/// A database connection that goes silent mid-run (no answer, no reset) fails the run after a
/// bounded time instead of waiting for an answer that never comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn a_silent_database_fails_the_run_in_bounded_time() {
    let direct = TestDb::new(Backend::Postgres, "silent_database");
    let server = url::Url::parse(&direct.url).unwrap();
    let upstream = tokio::net::lookup_host((
        server.host_str().unwrap().to_owned(),
        server.port().unwrap_or(5432),
    ))
    .await
    .unwrap()
    .next()
    .unwrap();
    let proxy = PausableProxy::start(upstream).await;
    let db = direct.through(&proxy);
    let mut spec = SandboxConfig::graas(1, 300);
    spec.mutations = Some(Mutations::default());
    let s = Setup::start(&db, spec, &AccountToml::default(), |text| {
        with_database_timeouts(&text, "1s", "1s")
    })
    .await;
    let store = open_store(&s.config).await;
    let runners = App::build(&s.config, &store).unwrap().runners;
    let never = tokio_util::sync::CancellationToken::new();
    runners[0].run_if_idle(&never).await.unwrap().unwrap();

    proxy.pause();
    let started = Instant::now();
    let result = runners[0].run_if_idle(&never).await.expect("it ran");
    let took = started.elapsed();
    let error = result.expect_err("the run must fail while the database is silent");
    eprintln!("run failed after {took:?}: {error}");
    // Each database call gives up after acquire + statement timeout + 5s = 7s.
    assert!(took < Duration::from_secs(25), "the run took {took:?}");

    proxy.resume();
    wait_until(
        Duration::from_secs(30),
        "a run to succeed again",
        || async { matches!(runners[0].run_if_idle(&never).await, Some(Ok(_))) },
    )
    .await;
    let newest = s.sandbox.graas().set_mutating(false);
    common::wait_for_clock_past(newest + 2).await;
    runners[0].run_if_idle(&never).await.unwrap().unwrap();
    assert_matches_truth(&store, &s.sandbox, &s.spec).await;
    store.close().await;
    s.sandbox.stop().await;
}

/// SIGTERM while a run waits on a lock it will not get in time: the daemon exits after
/// `shutdown_timeout`, non-zero, naming what it abandoned; a restart loses nothing.
async fn sigterm_with_a_stuck_run_exits_at_the_deadline(db: TestDb) {
    let spec = SandboxConfig::graas(1, 300);
    let s = Setup::start(&db, spec, &AccountToml::default(), |text| {
        format!(
            "{}\n[daemon]\nshutdown_timeout = \"2s\"\n",
            with_database_timeouts(&text, "60s", "60s")
        )
    })
    .await;
    let store = open_store(&s.config).await;
    let lock = LockHolder::take(&db).await;
    let mut daemon = spawn_run_logged(&s.config_path, &s.log());
    wait_for_log(&s.log(), "ordersync running", Duration::from_secs(30)).await;
    if db.backend == Backend::Postgres {
        // The first run is waiting for the lock.
        wait_until(
            Duration::from_secs(10),
            "a session waiting on the lock",
            || waiting_on_a_lock(&db),
        )
        .await;
    }
    let (status, took) = daemon.terminate(Duration::from_secs(20));
    let log = std::fs::read_to_string(s.log()).unwrap();
    assert!(
        !status.success(),
        "a shutdown that abandoned work exits non-zero\n{log}"
    );
    assert!(
        took >= Duration::from_secs(2) && took < Duration::from_secs(6),
        "exit {took:?} after SIGTERM, shutdown_timeout is 2s\n{log}"
    );
    assert!(
        log.contains("shutdown_timeout (2s) passed") && log.contains("run of graas/shop-1/orders"),
        "the log must say what was abandoned:\n{log}"
    );

    lock.release().await;
    s.run_once();
    assert_matches_truth(&store, &s.sandbox, &s.spec).await;
    store.close().await;
    s.sandbox.stop().await;
}
on_both_backends!(sigterm_with_a_stuck_run_exits_at_the_deadline);

async fn waiting_on_a_lock(db: &TestDb) -> bool {
    let Ok(mut conn) = sqlx::PgConnection::connect(&db.url).await else {
        return false;
    };
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ordersync' \
         AND wait_event_type = 'Lock'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap_or(0);
    let _ = conn.close().await;
    waiting > 0
}

/// A SQLite file on a full disk (here: a file size limit, as a full volume gives): runs fail
/// with an error and are retried, the daemon stays responsive, the file stays intact, and a
/// restart with room catches up with nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_runs_without_corrupting_sqlite() {
    let db = TestDb::new(Backend::Sqlite, "full_disk");
    let spec = SandboxConfig::graas(1, 4_000);
    let account = AccountToml {
        page_size: 100,
        ..AccountToml::default()
    };
    let s = Setup::start(&db, spec, &account, |text| {
        format!("{text}\n[daemon]\nshutdown_timeout = \"5s\"\n")
    })
    .await;
    let store = open_store(&s.config).await;
    // 4,000 orders need about 6 MB; the files may grow to 2 MB. An ignored SIGXFSZ makes the
    // write fail with an error, as ENOSPC does, instead of killing the process.
    let log = s.log();
    let script = format!(
        "ulimit -f 4096; trap '' XFSZ; exec '{}' run --config '{}' 2>'{}'",
        env!("CARGO_BIN_EXE_ordersync"),
        s.config_path.display(),
        log.display()
    );
    let mut daemon = Daemon(
        Command::new("sh")
            .args(["-c", &script])
            .env_remove("ORDERSYNC_CONFIG")
            .env_remove("RUST_LOG")
            .env("ORDERSYNC_LOG__LEVEL", "info")
            .spawn()
            .unwrap(),
        Some(log.clone()),
    );
    // Runs fail again and again, one per tick, rather than once and then hang.
    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("run failed").count() >= 5 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no five failed runs in 60s; log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Each run fails on the disk itself, never on a lock left behind by an earlier failure.
    for line in text.lines().filter(|l| l.contains("run failed")) {
        assert!(
            line.contains("disk is full") || line.contains("disk I/O error"),
            "{line}"
        );
    }
    assert!(!text.contains("database is locked"), "{text}");
    let (status, took) = daemon.terminate(Duration::from_secs(15));
    eprintln!("stopped in {took:?} with {status}");

    let integrity: String = {
        let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
        sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(integrity, "ok");
    let stored = store.orders_of("graas", "shop-1").await.unwrap().len();
    assert!(
        stored < 4_000,
        "the limit never bit: {stored} orders stored"
    );
    if let Some(cursor) = cursor_of(&store, "shop-1").await {
        assert_no_gap_below_cursor(
            &store,
            &s.sandbox,
            &s.spec.graas[0].account_number,
            "shop-1",
            cursor,
        )
        .await;
    }

    s.run_once();
    assert_matches_truth(&store, &s.sandbox, &s.spec).await;
    store.close().await;
    s.sandbox.stop().await;
}

/// A SQLite file on a read-only mount: ordersync refuses to start, at once, with a message that
/// names the file and what to check. The mount is made in a user namespace of the test's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_sqlite_file_is_refused_with_a_clear_error() {
    let db = TestDb::new(Backend::Sqlite, "read_only");
    let s = Setup::start(
        &db,
        SandboxConfig::graas(1, 10),
        &AccountToml::default(),
        |t| t,
    )
    .await;
    let store = open_store(&s.config).await;
    store.close().await;
    let path = db.url.trim_start_matches("sqlite://").to_owned();
    let dir = std::path::Path::new(&path).parent().unwrap().to_owned();
    let script = format!(
        "mount --bind '{dir}' '{dir}' && mount -o remount,bind,ro '{dir}' && exec '{bin}' run --config '{config}'",
        dir = dir.display(),
        bin = env!("CARGO_BIN_EXE_ordersync"),
        config = s.config_path.display(),
    );
    let started = Instant::now();
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c", &script])
        .env_remove("ORDERSYNC_CONFIG")
        .output()
        .expect("unshare (util-linux) runs the daemon on a read-only mount");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
    assert!(
        stderr.contains(&path) && stderr.contains("read-only"),
        "the error names the file and the cause to check: {stderr}"
    );
    s.sandbox.stop().await;
}

fn order(account: &str, id: &str, status: &str, updated: i64) -> ordersync::model::Order {
    ordersync::model::Order {
        key: ordersync::model::OrderKey {
            provider: ProviderKind::Graas,
            account: account.to_owned(),
            channel: "web".to_owned(),
            external_id: id.to_owned(),
        },
        status: Some(status.to_owned()),
        payment_status: None,
        shipping_status: None,
        total: None,
        upstream_created_at: None,
        upstream_updated_at: chrono::DateTime::from_timestamp(updated, 0).unwrap(),
        payload: format!(r#"{{"orderID":"{id}","status":"{status}"}}"#),
    }
}

/// Batches written together (Postgres writes two of a stream at once) commit in order: the
/// later one waits for the earlier, and is rolled back, cursor and all, when the earlier fails.
async fn a_batch_commits_only_after_the_one_before_it(db: TestDb) {
    use ordersync::store::{Batch, EarlierCommit};
    let config = ordersync::config::Config::from_toml(&db.toml()).unwrap();
    let store = open_store(&config).await;
    let stream = orders_stream("main");
    let first = [order("main", "1", "new", 1_800_000_000)];
    let second = [order("main", "2", "new", 1_800_000_100)];
    let batch = |orders, cursor| Batch {
        stream: &stream,
        orders,
        quarantined: &[],
        cursor: Some(cursor),
        seen_at: Utc::now(),
    };

    // The earlier batch fails (its report is dropped): the later one stores nothing.
    let (failed, earlier) = EarlierCommit::pair();
    drop(failed);
    let error = store
        .commit_batch_after(&batch(&second, "1800000200"), earlier)
        .await
        .expect_err("a batch after a failed one must not commit");
    assert!(error.to_string().contains("earlier batch"), "{error}");
    assert!(store.orders_of("graas", "main").await.unwrap().is_empty());
    assert_eq!(store.cursor(&stream).await.unwrap(), None);

    // The later batch is written first, then waits until the earlier one has committed.
    let (done, earlier) = EarlierCommit::pair();
    let (written, mut written_heard) = tokio::sync::oneshot::channel();
    let earlier = earlier.tell_when_written(written);
    let later = {
        let store = Arc::clone(&store);
        let stream = stream.clone();
        let second = second.clone();
        tokio::spawn(async move {
            let batch = Batch {
                stream: &stream,
                orders: &second,
                quarantined: &[],
                cursor: Some("1800000200"),
                seen_at: Utc::now(),
            };
            store.commit_batch_after(&batch, earlier).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!later.is_finished(), "the later batch committed first");
    assert_eq!(store.cursor(&stream).await.unwrap(), None);
    // Postgres writes the rows before its turn and says so, so the caller can start another
    // batch meanwhile; SQLite writes one batch at a time, after the earlier one.
    let heard_while_waiting = written_heard.try_recv();
    match db.backend {
        Backend::Postgres => assert_eq!(
            heard_while_waiting,
            Ok(()),
            "a Postgres batch waiting for its turn should have said it was written"
        ),
        Backend::Sqlite => assert_eq!(
            heard_while_waiting,
            Err(tokio::sync::oneshot::error::TryRecvError::Empty),
            "SQLite writes nothing before the earlier batch commits"
        ),
    }
    store
        .commit_batch(&batch(&first, "1800000050"))
        .await
        .unwrap();
    done.committed();
    let outcome = tokio::time::timeout(Duration::from_secs(10), later)
        .await
        .expect("the later batch finishes once the earlier one committed")
        .unwrap()
        .unwrap();
    assert_eq!(outcome.written, 1);
    assert_eq!(store.orders_of("graas", "main").await.unwrap().len(), 2);
    assert_eq!(
        store.cursor(&stream).await.unwrap().as_deref(),
        Some("1800000200")
    );
    store.close().await;
}
on_both_backends!(a_batch_commits_only_after_the_one_before_it);

/// A batch of orders is never planned with its values: Postgres plans a prepared statement's
/// first five runs on each connection with the values bound (a custom plan), which copies a
/// batch's arrays, megabytes each, into the plan. Most of a backfill's batches are among
/// those first five. Seen from inside the writing session, by a trigger of the test's own
/// reading `pg_prepared_statements`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn order_batches_are_planned_without_their_values() {
    use ordersync::store::Batch;
    let db = TestDb::new(Backend::Postgres, "batch_plans");
    let config = ordersync::config::Config::from_toml(&db.toml()).unwrap();
    let store = open_store(&config).await;
    let mut conn = db.pg_connection().await;
    sqlx::raw_sql(
        "CREATE TABLE upsert_plans (generic bigint, custom bigint); \
         CREATE FUNCTION note_upsert_plans() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         INSERT INTO upsert_plans SELECT generic_plans, custom_plans FROM pg_prepared_statements \
         WHERE statement LIKE 'INSERT INTO orders %'; RETURN NULL; END $$; \
         CREATE TRIGGER note_upsert_plans AFTER INSERT ON orders \
         FOR EACH STATEMENT EXECUTE FUNCTION note_upsert_plans()",
    )
    .execute(&mut conn)
    .await
    .unwrap();

    let stream = orders_stream("main");
    let batches = 7;
    for i in 0..batches {
        let updated = 1_800_000_000 + i * 100;
        let orders = [
            order("main", &format!("{i}-a"), "new", updated),
            order("main", &format!("{i}-b"), "paid", updated),
        ];
        let cursor = (updated + 50).to_string();
        store
            .commit_batch(&Batch {
                stream: &stream,
                orders: &orders,
                quarantined: &[],
                cursor: Some(&cursor),
                seen_at: Utc::now(),
            })
            .await
            .unwrap();
    }

    let plans: Vec<(i64, i64)> = sqlx::query_as("SELECT generic, custom FROM upsert_plans")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        plans.len(),
        batches as usize,
        "one upsert a batch: {plans:?}"
    );
    assert!(
        plans
            .iter()
            .all(|&(generic, custom)| generic >= 1 && custom == 0),
        "every batch's upsert runs a generic plan: (generic, custom) runs on its connection {plans:?}"
    );
    assert_eq!(
        store.orders_of("graas", "main").await.unwrap().len(),
        2 * batches as usize
    );
    store.close().await;
}

/// A batch's rows stream from its arrays into the insert: unnested in `FROM`, Postgres would
/// first copy the whole batch, payloads and all, into a tuplestore (fresh memory for every
/// batch, on disk beyond `work_mem`). The statement the store prepared is read back from
/// `pg_prepared_statements` and its plan checked for such a scan, then run on a batch whose
/// columns differ by row, to see them unnested side by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn order_batches_stream_into_the_insert() {
    use ordersync::store::Batch;
    let db = TestDb::new(Backend::Postgres, "batch_stream");
    let config = ordersync::config::Config::from_toml(&db.toml()).unwrap();
    let store = open_store(&config).await;
    let mut conn = db.pg_connection().await;
    sqlx::raw_sql(
        "CREATE TABLE upsert_text (statement text); \
         CREATE FUNCTION note_upsert_text() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         INSERT INTO upsert_text SELECT statement FROM pg_prepared_statements \
         WHERE statement LIKE 'INSERT INTO orders %'; RETURN NULL; END $$; \
         CREATE TRIGGER note_upsert_text AFTER INSERT ON orders \
         FOR EACH STATEMENT EXECUTE FUNCTION note_upsert_text()",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let stream = orders_stream("main");
    store
        .commit_batch(&Batch {
            stream: &stream,
            orders: &[order("main", "seen-first", "new", 1_800_000_000)],
            quarantined: &[],
            cursor: Some("1800000050"),
            seen_at: Utc::now(),
        })
        .await
        .unwrap();
    let statement: String = sqlx::query_scalar("SELECT statement FROM upsert_text")
        .fetch_one(&mut conn)
        .await
        .unwrap();

    let types = "text[], text[], text[], text[], text[], text[], text[], int8[], text[], \
                 timestamptz[], timestamptz[], text[], timestamptz";
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "PREPARE upsert ({types}) AS {statement}"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let batch = concat!(
        "'{graas,graas}', '{main,main}', '{web,web}', '{a,b}', '{new,paid}', ",
        "'{NULL,NULL}', '{NULL,NULL}', '{100,250}', '{EUR,SEK}', ",
        "'{2027-01-01T00:00:00Z,2027-01-02T00:00:00Z}', ",
        "'{2027-01-03T00:00:00Z,2027-01-04T00:00:00Z}', ",
        r#"'{"{\"id\": \"a\"}","{\"id\": \"b\"}"}', now()"#,
    );
    let plan: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) EXECUTE upsert ({batch})"
    )))
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert!(
        plan.iter().all(|line| !line.contains("Function Scan")),
        "the batch is not copied into a function scan's tuplestore first: {plan:#?}"
    );
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', external_id, status, total_minor, currency, payload::text) \
         FROM orders WHERE external_id IN ('a', 'b') ORDER BY external_id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            r#"a new 100 EUR {"id": "a"}"#,
            r#"b paid 250 SEK {"id": "b"}"#
        ],
        "each row's columns come from the same place in every array"
    );
    store.close().await;
}

/// Postgres writes two batches at once; a batch written and waiting for the one before it to
/// commit lets one more batch be written meanwhile, and no more. Here the run's first commit
/// is held at its cursor by a lock, so every batch after it waits for its turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn a_batch_waiting_for_its_turn_lets_one_more_be_written() {
    let db = TestDb::new(Backend::Postgres, "batch_turns");
    // Its own name, so its connections are told apart from other tests' in pg_stat_activity.
    let application = db.schema.clone().expect("a schema");
    let spec = SandboxConfig::graas(1, 3_000);
    let account = AccountToml {
        page_size: 100,
        rate_limit: "1000/s",
        ..AccountToml::default()
    };
    let url = db.url.clone();
    let separator = if url.contains('?') { '&' } else { '?' };
    let s = Setup::start(&db, spec, &account, |text| {
        text.replace(
            &format!("url = \"{url}\""),
            &format!("url = \"{url}{separator}application_name={application}\""),
        )
    })
    .await;
    let store = open_store(&s.config).await;

    // The stream's cursor row, inserted and not committed: the run's first cursor write waits.
    let mut locker = db.pg_connection().await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "BEGIN; INSERT INTO sync_cursors (provider, account, resource) \
         VALUES ('graas', '{}', 'orders')",
        account_name(0)
    )))
    .execute(&mut locker)
    .await
    .unwrap();
    let mut run = std::process::Command::new(env!("CARGO_BIN_EXE_ordersync"))
        .args(["run", "--once", "--config"])
        .arg(&s.config_path)
        .env_remove("ORDERSYNC_CONFIG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run ordersync");

    // Batches holding rows in an open transaction: the first (waiting on the lock) and those
    // written and waiting for their turn. The run's start, recorded after a second, waits on
    // the same lock and is not a batch.
    let mut watcher = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut most = 0i64;
    // Three batches are holding rows within a second; four never come.
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut reached = None;
    while Instant::now() < deadline {
        let holding: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND backend_xid IS NOT NULL AND query NOT LIKE '%last_run_started_at%'",
        )
        .bind(&application)
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        most = most.max(holding);
        // Watched a while longer once three hold rows: a fourth must not start.
        match reached {
            None if holding >= 3 => reached = Some(Instant::now()),
            Some(at) if at.elapsed() > Duration::from_millis(700) => break,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut locker)
        .await
        .unwrap();
    let status = tokio::task::spawn_blocking(move || run.wait())
        .await
        .unwrap()
        .expect("wait for ordersync");
    assert_eq!(
        most, 3,
        "two batches written at once, plus one while another waits for its turn"
    );
    assert!(status.success(), "run --once failed");
    assert_eq!(
        store
            .orders_of("graas", &account_name(0))
            .await
            .unwrap()
            .len(),
        3_000
    );
    assert!(
        store
            .cursor(&orders_stream(&account_name(0)))
            .await
            .unwrap()
            .is_some()
    );
    store.close().await;
}
