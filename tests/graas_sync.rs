//! Graas orders flow into the database: backfill, live mutations, faults, quarantine, auth.

mod common;

use common::{
    AccountToml, TestDb, account_name, assert_matches_truth, config_toml, execute_scalar,
    open_store, shutdown_deadline, wait_for_clock_past, wait_until,
};
use ordersync::app::{App, Daemon};
use ordersync::config::Config;
use ordersync::model::{OrderKey, ProviderKind};
use ordersync::sandbox::{Faults, Mutations, Sandbox, SandboxConfig};
use ordersync::store::Store;
use ordersync::sync::buffer::OrderBuffer;
use ordersync::sync::window::RunSummary;
use ordersync::sync::{self, StreamRunner};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

async fn sandbox(spec: &SandboxConfig) -> Sandbox {
    Sandbox::start(([127, 0, 0, 1], 0).into(), spec.clone())
        .await
        .expect("sandbox")
}

fn config(db: &TestDb, sandbox: &Sandbox, spec: &SandboxConfig, account: &AccountToml) -> Config {
    Config::from_toml(&config_toml(db, sandbox, spec, account)).expect("valid test config")
}

/// A store for `db` and the stream runners of a config against every account of `sandbox`.
async fn synced_store(
    db: &TestDb,
    sandbox: &Sandbox,
    spec: &SandboxConfig,
    account: &AccountToml,
) -> (Arc<dyn Store>, Vec<Arc<StreamRunner>>) {
    let config = config(db, sandbox, spec, account);
    let store = open_store(&config).await;
    let runners = App::build(&config, &store).unwrap().runners;
    (store, runners)
}

/// A store and the app of a config against every account of `sandbox`, with an order buffer of
/// `buffered` orders, and that buffer.
async fn app_with_buffer(
    db: &TestDb,
    sandbox: &Sandbox,
    spec: &SandboxConfig,
    account: &AccountToml,
    buffered: usize,
) -> (Arc<dyn Store>, App, Arc<OrderBuffer>) {
    let text = config_toml(db, sandbox, spec, account).replacen(
        "[database]\n",
        &format!("[database]\nbuffered_orders = {buffered}\n"),
        1,
    );
    let config = Config::from_toml(&text).expect("valid test config");
    let store = open_store(&config).await;
    let app = App::build(&config, &store).unwrap();
    let buffer = app
        .order_buffer
        .clone()
        .expect("Graas accounts have an order buffer");
    (store, app, buffer)
}

/// Runs every stream until it has caught up; a failed run fails the test, naming its stream.
async fn catch_up(runners: &[Arc<StreamRunner>]) -> Vec<RunSummary> {
    sync::run_until_caught_up(runners, &CancellationToken::new())
        .await
        .into_iter()
        .map(|(stream, result)| result.unwrap_or_else(|e| panic!("{stream}: run failed: {e}")))
        .collect()
}

async fn backfill_matches_truth(db: TestDb) {
    let spec = SandboxConfig::graas(2, 2_500);
    let sandbox = sandbox(&spec).await;
    let config = config(&db, &sandbox, &spec, &AccountToml::default());
    let store = open_store(&config).await;
    let runners = App::build(&config, &store).unwrap().runners;

    for run in catch_up(&runners).await {
        assert!(!run.interrupted);
    }
    assert_matches_truth(&store, &sandbox, &spec).await;

    // A second pass over the same data writes nothing new.
    for run in catch_up(&runners).await {
        assert_eq!(run.written, 0);
    }
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(backfill_matches_truth);

/// A `database.schema` named with capitals is the schema the daemon creates, searches and
/// writes to (Postgres folds an unquoted name to lower case: searching for it unquoted found no
/// schema, and the migrations failed with "no schema has been selected to create in").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn a_schema_named_with_capitals_is_used_as_named() {
    let mut db = TestDb::new(common::Backend::Postgres, "schema_with_capitals");
    let schema = format!("Shop_{}", db.schema.as_deref().unwrap_or_default());
    db.schema = Some(schema.clone());
    let spec = SandboxConfig::graas(1, 300);
    let sandbox = sandbox(&spec).await;
    let (store, runners) = synced_store(&db, &sandbox, &spec, &AccountToml::default()).await;
    catch_up(&runners).await;
    assert_matches_truth(&store, &sandbox, &spec).await;
    let stored = execute_scalar(
        &db,
        &format!("SELECT count(*)::text FROM \"{schema}\".orders"),
    )
    .await;
    assert_eq!(stored, "300");
    store.close().await;
    sandbox.stop().await;
}

/// Four accounts backfilling at once draw on one buffer of fetched orders, smaller than two
/// pages: they wait for each other's commits, it fills, and no stream is starved or stuck (each
/// ends equal to the upstream).
async fn accounts_backfilling_at_once_share_one_order_buffer(db: TestDb) {
    const BUFFERED: usize = 100;
    let spec = SandboxConfig::graas(4, 1_500);
    let sandbox = sandbox(&spec).await;
    let account = AccountToml {
        page_size: 50,
        ..AccountToml::default()
    };
    let (store, app, buffer) = app_with_buffer(&db, &sandbox, &spec, &account, BUFFERED).await;
    assert_eq!(buffer.orders(), BUFFERED);
    let runners = app.runners;
    let backfill = tokio::spawn(async move { catch_up(&runners).await });
    let mut fullest = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !backfill.is_finished() {
        assert!(Instant::now() < deadline, "the backfill is stuck");
        fullest = fullest.max(buffer.held());
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    backfill.await.unwrap();
    assert_eq!(
        fullest, BUFFERED,
        "the streams never filled the buffer they share"
    );
    assert_eq!(
        buffer.held(),
        0,
        "room was not given back after the commits"
    );
    assert_matches_truth(&store, &sandbox, &spec).await;
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(accounts_backfilling_at_once_share_one_order_buffer);

/// Accounts backfilling at once in pages of 50 into an order buffer of `buffered`, every answer
/// held 30 ms so that reads overlap; each ends equal to the upstream.
async fn backfill_slowly_at_once(
    db: &TestDb,
    spec: &mut SandboxConfig,
    extra: &'static str,
    buffered: usize,
) -> (Arc<dyn Store>, Sandbox, Arc<OrderBuffer>) {
    spec.faults.slow_ratio = 1.0;
    spec.faults.slow_ms = 30;
    let sandbox = sandbox(spec).await;
    let account = AccountToml {
        page_size: 50,
        extra,
        ..AccountToml::default()
    };
    let (store, app, buffer) = app_with_buffer(db, &sandbox, spec, &account, buffered).await;
    catch_up(&app.runners).await;
    assert_matches_truth(&store, &sandbox, spec).await;
    (store, sandbox, buffer)
}

/// Pages read ahead hold room too, a quarter of the order buffer more for every stream together:
/// four accounts backfilling at once, with room for two pages read ahead, have at most their
/// four pages needed now and two more asked for at once (each alone would ask for three), and
/// still read ahead.
async fn accounts_backfilling_at_once_share_the_room_for_reads_ahead(db: TestDb) {
    let mut spec = SandboxConfig::graas(4, 1_500);
    // A quarter of 400: room for two pages of 50 read ahead.
    let (store, sandbox, buffer) = backfill_slowly_at_once(&db, &mut spec, "", 400).await;
    let at_once = sandbox.graas().max_reads_in_flight();
    assert!(
        at_once <= 4 + 2,
        "{at_once} reads at once: reads ahead came on top of the buffer's room for them"
    );
    let most_by_one = (0..4)
        .filter_map(|i| sandbox.graas().stats(&spec.graas[i].account_number))
        .map(|stats| stats.max_reads_in_flight)
        .max();
    assert!(
        most_by_one >= Some(2),
        "no account read ahead ({most_by_one:?} reads at once at most)"
    );
    assert_eq!(buffer.held_ahead(), 0, "room for reads ahead was kept");
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(accounts_backfilling_at_once_share_the_room_for_reads_ahead);

/// A page asked for when it is needed takes its room in the order buffer first: eight accounts
/// backfilling at once into room for two pages have at most two pages on their way or in hand,
/// where each would otherwise fetch its next page and hold it while waiting for room.
async fn accounts_backfilling_at_once_fetch_no_more_than_the_buffer_has_room_for(db: TestDb) {
    let mut spec = SandboxConfig::graas(8, 300);
    // Two pages of 50; nothing read ahead.
    let (store, sandbox, buffer) =
        backfill_slowly_at_once(&db, &mut spec, "read_ahead = 0\n", 100).await;
    let at_once = sandbox.graas().max_reads_in_flight();
    assert!(
        at_once <= 2,
        "{at_once} reads at once: streams fetched pages the buffer had no room for"
    );
    assert_eq!(buffer.held(), 0, "room taken for pages was kept");
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(accounts_backfilling_at_once_fetch_no_more_than_the_buffer_has_room_for);

/// Every order fetched and not yet stored has room in the order buffer, a page read ahead's
/// too: sampled while eight accounts backfill at once into a small buffer, the orders the
/// upstream has answered with and the database does not hold yet never outnumber the room taken
/// (a page read ahead used to give its room back when its stream took it, then wait for room
/// in the buffer with the page in hand). On Postgres, where every batch commits before its room
/// is given back; SQLite may leave a written batch to commit with the next, and a count from
/// another connection does not see it yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn every_order_fetched_and_not_yet_stored_has_room_in_the_buffer() {
    let db = TestDb::new(common::Backend::Postgres, "fetched_orders_have_room");
    // About 333 orders a day, seven pages of 50: no window is split, so every page fetched is
    // stored.
    let spec = SandboxConfig::graas(8, 1_000);
    let sandbox = sandbox(&spec).await;
    let account = AccountToml {
        page_size: 50,
        ..AccountToml::default()
    };
    // Room for eight pages, and a quarter more (two pages) for the reads ahead.
    let (store, app, buffer) = app_with_buffer(&db, &sandbox, &spec, &account, 400).await;
    // Writes slower than the upstream answers, as when many accounts backfill at once: the
    // streams wait for room in the buffer.
    let slow_writes = "CREATE FUNCTION slow_write() RETURNS trigger LANGUAGE plpgsql AS \
        $$ BEGIN PERFORM pg_sleep(0.05); RETURN NULL; END $$; \
        CREATE TRIGGER slow_write AFTER INSERT ON orders \
        FOR EACH STATEMENT EXECUTE FUNCTION slow_write()";
    sqlx::raw_sql(sqlx::AssertSqlSafe(slow_writes))
        .execute(&mut db.pg_connection().await)
        .await
        .expect("a trigger that slows the writes");
    let runners = app.runners.clone();
    let backfill = tokio::spawn(async move { catch_up(&runners).await });
    let (mut samples, mut worst) = (0, i64::MIN);
    while !backfill.is_finished() {
        // In this order: what was served before the room was read, stored after it; the room
        // for reads ahead before the buffer's, as a page read ahead gives it back only once it
        // has room in the buffer.
        let served = sandbox.graas().orders_served() as i64;
        let ahead = buffer.held_ahead() as i64;
        let room = ahead + buffer.held() as i64;
        let stored = execute_scalar(&db, "SELECT CAST(count(*) AS TEXT) FROM orders").await;
        let stored: i64 = stored.parse().expect("a count");
        worst = worst.max(served - stored - room);
        samples += 1;
    }
    backfill.await.expect("the backfill ran");
    assert_matches_truth(&store, &sandbox, &spec).await;
    assert!(samples >= 10, "only {samples} samples during the backfill");
    assert!(
        worst <= 0,
        "at one point {worst} orders fetched and not yet stored had no room in the buffer"
    );
    store.close().await;
    sandbox.stop().await;
}

/// Once a run's reads are done, its orders reach the SQLite database file itself, not only its
/// write-ahead log: a daemon that then idles (or closes) has little left to copy, and a copy of
/// the file alone already holds them. A few MB are far below the checkpoint every 16 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_run_reaches_the_sqlite_file_without_waiting_for_shutdown() {
    let db = TestDb::new(common::Backend::Sqlite, "finished_run_reaches_the_file");
    let spec = SandboxConfig::graas(1, 2_000);
    let sandbox = sandbox(&spec).await;
    let (store, runners) = synced_store(&db, &sandbox, &spec, &AccountToml::default()).await;
    let path = db.url.trim_start_matches("sqlite://").to_owned();
    let file_size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let before = file_size();

    catch_up(&runners).await;
    assert_matches_truth(&store, &sandbox, &spec).await;
    wait_until(
        Duration::from_secs(10),
        "the orders in the database file",
        || async { file_size() >= before + 2_000 * 1_000 },
    )
    .await;
    store.close().await;
    sandbox.stop().await;
}

/// History rows belong to their order: deleting the order (by hand, with SQL) deletes them.
async fn deleting_an_order_deletes_its_history(db: TestDb) {
    let spec = SandboxConfig::graas(1, 50);
    let sandbox = sandbox(&spec).await;
    let config = config(&db, &sandbox, &spec, &AccountToml::default());
    let store = open_store(&config).await;
    let runners = App::build(&config, &store).unwrap().runners;
    catch_up(&runners).await;
    let events = "SELECT CAST(count(*) AS TEXT) FROM order_events";
    assert_eq!(execute_scalar(&db, events).await, "50");
    let deleted = execute_scalar(
        &db,
        "DELETE FROM orders WHERE id = (SELECT min(id) FROM orders) RETURNING CAST(id AS TEXT)",
    )
    .await;
    let of_deleted = format!("{events} WHERE order_id = {deleted}");
    assert_eq!(execute_scalar(&db, &of_deleted).await, "0");
    assert_eq!(execute_scalar(&db, events).await, "49");
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(deleting_an_order_deletes_its_history);

async fn late_and_backdated_updates_are_caught(db: TestDb) {
    let mut spec = SandboxConfig::graas(2, 1_000);
    spec.mutations = Some(Mutations {
        every_ms: 100,
        per_tick: 15,
        new_per_tick: 2,
        backdate_ratio: 0.3,
        max_backdate_secs: 10,
    });
    let sandbox = sandbox(&spec).await;
    let config = config(&db, &sandbox, &spec, &AccountToml::default());
    let store = open_store(&config).await;
    let runners = App::build(&config, &store).unwrap().runners;
    // Changes start once the backfill is in, so that each one is a change the daemon can see
    // happen (and record in history) rather than part of an order's first version.
    let backfilled_to = sandbox.graas().set_mutating(false);
    let daemon = Daemon::start(runners).await.unwrap();
    wait_for_cursors_past(&store, spec.graas.len(), backfilled_to + 1).await;
    sandbox.graas().set_mutating(true);

    // The daemon syncs while the sandbox makes a few hundred changes.
    wait_until(Duration::from_secs(30), "300 sandbox changes", || async {
        spec.graas
            .iter()
            .map(|a| {
                sandbox
                    .graas()
                    .stats(&a.account_number)
                    .map_or(0, |s| s.changes)
            })
            .sum::<u64>()
            >= 300
    })
    .await;
    let last_change = sandbox.graas().set_mutating(false);
    // Caught up means: the cursor has passed the last change (plus the lookback margin of a run).
    wait_for_cursors_past(&store, spec.graas.len(), last_change + 1).await;
    assert!(daemon.shutdown(shutdown_deadline()).await.is_empty());
    let changes: u64 = spec
        .graas
        .iter()
        .map(|a| sandbox.graas().stats(&a.account_number).unwrap().changes)
        .sum();
    assert!(changes > 200, "the sandbox made only {changes} changes");
    assert_matches_truth(&store, &sandbox, &spec).await;

    // Every order's history is an unbroken chain ending at its current status.
    let truth = sandbox.graas().truth(&spec.graas[0].account_number);
    let mut with_changes = 0;
    for order in truth.iter().filter(|o| !o.malformed) {
        let key = OrderKey {
            provider: ProviderKind::Graas,
            account: account_name(0),
            channel: order.channel.clone(),
            external_id: order.order_id.clone(),
        };
        let history = store.order_history(&key).await.unwrap();
        assert!(!history.is_empty(), "{key:?} has no history");
        assert_eq!(history[0].old_status, None);
        for pair in history.windows(2) {
            assert_eq!(
                pair[1].old_status, pair[0].new_status,
                "broken chain for {key:?}"
            );
            assert!(pair[1].upstream_updated_at >= pair[0].upstream_updated_at);
        }
        assert_eq!(
            history.last().unwrap().new_status.as_deref(),
            Some(order.status.as_str())
        );
        with_changes += usize::from(history.len() > 1);
    }
    assert!(
        with_changes > 20,
        "only {with_changes} orders had a recorded change"
    );
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(late_and_backdated_updates_are_caught);

async fn wait_for_cursors_past(store: &Arc<dyn Store>, accounts: usize, past: i64) {
    for i in 0..accounts {
        wait_until(
            Duration::from_secs(30),
            "each cursor to pass a time",
            || {
                let store = store.clone();
                async move {
                    common::cursor_of(&store, &account_name(i))
                        .await
                        .is_some_and(|c| c > past)
                }
            },
        )
        .await;
    }
}

/// A back-office mass status change: every 12 s, 700 orders of one account stamped with the same
/// second (more than three pages), on top of 20 changes a second, some backdated, with both
/// accounts at a strict 8 requests a second. The database must catch up soon after the last
/// change, with nothing lost and no request over the limit.
async fn bulk_updates_are_caught_up_soon_after_they_stop(db: TestDb) {
    let spec = SandboxConfig::graas(2, 3_000).with_mass_status_changes();
    let sandbox = sandbox(&spec).await;
    let account = AccountToml {
        schedule: "*/2 * * * * *",
        lookback: "10m",
        settle: "1s",
        rate_limit: "8/s",
        ..AccountToml::default()
    };
    let (store, runners) = synced_store(&db, &sandbox, &spec, &account).await;
    let daemon = Daemon::start(runners).await.unwrap();

    // Three mass changes under the steady load.
    tokio::time::sleep(Duration::from_secs(40)).await;
    sandbox.graas().set_mutating(false);
    let stopped = Instant::now();
    let mut differences = usize::MAX;
    while stopped.elapsed() < Duration::from_secs(45) {
        differences = common::differences_from_truth(&store, &sandbox, &spec).await;
        if differences == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let caught_up = stopped.elapsed();
    eprintln!("caught up {caught_up:?} after the last change");
    assert!(daemon.shutdown(shutdown_deadline()).await.is_empty());
    assert_eq!(
        differences, 0,
        "the database still differs from the sandbox {caught_up:?} after the last change"
    );
    for acct in &spec.graas {
        let stats = sandbox.graas().stats(&acct.account_number).unwrap();
        assert_eq!(stats.traffic.over_limit, 0, "{stats:?}");
        assert!(stats.changes > 200, "too few changes: {stats:?}");
    }
    assert_matches_truth(&store, &sandbox, &spec).await;
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(bulk_updates_are_caught_up_soon_after_they_stop);

async fn faults_lose_nothing_and_the_limiter_holds(db: TestDb) {
    // Enough pages that each fault fires: the sandbox draws faults from a seeded sequence, and
    // with 1,500 orders (88-89 requests) one run in four had no slow answer.
    let mut spec = SandboxConfig::graas(1, 2_500);
    spec.faults = Faults {
        rate_limit_per_sec: Some(30),
        retry_after_secs: 1,
        server_error_ratio: 0.1,
        slow_ratio: 0.05,
        slow_ms: 1_500,
        truncate_ratio: 0.1,
        ..Faults::default()
    };
    let sandbox = sandbox(&spec).await;
    let account = AccountToml {
        page_size: 25,
        rate_limit: "20/s",
        ..AccountToml::default()
    };
    let (store, runners) = synced_store(&db, &sandbox, &spec, &account).await;
    catch_up(&runners).await;
    assert_matches_truth(&store, &sandbox, &spec).await;

    let stats = sandbox
        .graas()
        .stats(&spec.graas[0].account_number)
        .unwrap();
    assert!(
        stats.traffic.requests > 60,
        "too few requests to judge: {stats:?}"
    );
    assert!(
        stats.traffic.server_errors > 0 && stats.traffic.truncated > 0 && stats.traffic.slow > 0,
        "faults did not fire: {stats:?}"
    );
    // 20/s, evenly spaced: a sliding second can hold one more at its edges, never more.
    assert!(
        stats.traffic.max_per_second <= 21,
        "limiter let {} requests into one second",
        stats.traffic.max_per_second
    );
    assert_eq!(
        stats.traffic.over_limit, 0,
        "requests went over the upstream's limit: {stats:?}"
    );
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(faults_lose_nothing_and_the_limiter_holds);

async fn rate_limited_answers_are_honoured(db: TestDb) {
    let mut spec = SandboxConfig::graas(1, 1_000);
    spec.faults = Faults {
        rate_limit_per_sec: Some(5),
        retry_after_secs: 1,
        ..Faults::default()
    };
    let sandbox = sandbox(&spec).await;
    let account = AccountToml {
        page_size: 50,
        rate_limit: "100/s",
        ..AccountToml::default()
    };
    let (store, runners) = synced_store(&db, &sandbox, &spec, &account).await;
    let started = Instant::now();
    catch_up(&runners).await;
    let elapsed = started.elapsed().as_secs();
    assert_matches_truth(&store, &sandbox, &spec).await;
    let stats = sandbox
        .graas()
        .stats(&spec.graas[0].account_number)
        .unwrap();
    assert!(
        stats.traffic.over_limit > 0,
        "the sandbox never answered 429: {stats:?}"
    );
    // Each 429 pauses the account for its Retry-After (1s): at most about one refusal a second.
    assert!(
        stats.traffic.over_limit <= elapsed + 2,
        "{} refusals in {elapsed}s: Retry-After was not honoured",
        stats.traffic.over_limit
    );
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(rate_limited_answers_are_honoured);

async fn malformed_orders_are_quarantined_and_neighbours_stored(db: TestDb) {
    let mut spec = SandboxConfig::graas(1, 1_000);
    spec.malformed_every = Some(100);
    let sandbox = sandbox(&spec).await;
    let config = config(&db, &sandbox, &spec, &AccountToml::default());
    let store = open_store(&config).await;
    let runners = App::build(&config, &store).unwrap().runners;
    for _ in 0..2 {
        catch_up(&runners).await;
    }
    assert_matches_truth(&store, &sandbox, &spec).await;
    let stored = store.orders_of("graas", "shop-1").await.unwrap();
    assert_eq!(stored.len(), 990);
    // Seen on two runs, kept once each.
    assert_eq!(store.quarantine_count("graas", "shop-1").await.unwrap(), 10);
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(malformed_orders_are_quarantined_and_neighbours_stored);

async fn overfull_seconds_survive_page_drift(db: TestDb) {
    // 2,000 orders in 40 seconds: every second holds more than a page, so it is paged while
    // the mutation loop keeps moving orders out of it.
    let mut spec = SandboxConfig::graas(1, 2_000);
    spec.history_secs = 40;
    spec.mutations = Some(Mutations {
        every_ms: 50,
        per_tick: 3,
        new_per_tick: 0,
        backdate_ratio: 0.0,
        max_backdate_secs: 0,
    });
    let sandbox = sandbox(&spec).await;
    let account = AccountToml {
        page_size: 10,
        ..AccountToml::default()
    };
    let (store, runners) = synced_store(&db, &sandbox, &spec, &account).await;
    catch_up(&runners).await;
    let last_change = sandbox.graas().set_mutating(false);
    // A run reads up to `settle` (1s) before now, exclusive.
    wait_for_clock_past(last_change + 2).await;
    for run in catch_up(&runners).await {
        assert!(run.cursor > last_change);
    }
    assert_matches_truth(&store, &sandbox, &spec).await;
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(overfull_seconds_survive_page_drift);

/// Windows older than the lookback are read four pages at a time: a quiet backfill needs at
/// most 1.15x the pages its data fills.
async fn a_backfill_needs_few_more_requests_than_pages(db: TestDb) {
    let spec = SandboxConfig::graas(1, 10_000);
    let sandbox = sandbox(&spec).await;
    let account = AccountToml {
        page_size: 50,
        ..AccountToml::default()
    };
    let (store, runners) = synced_store(&db, &sandbox, &spec, &account).await;
    catch_up(&runners).await;
    assert_matches_truth(&store, &sandbox, &spec).await;
    let requests = sandbox
        .graas()
        .stats(&spec.graas[0].account_number)
        .unwrap()
        .traffic
        .requests;
    let pages = 10_000 / 50;
    assert!(
        requests * 100 <= pages * 115,
        "{requests} requests for {pages} pages"
    );
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(a_backfill_needs_few_more_requests_than_pages);

/// Syncs `orders` spread over `history_secs` at page size 50 with every answer held 30 ms, once
/// with `read_ahead = 0` and once with the default (2): the database ends equal to the upstream
/// each time. Returns, for each, the most reads the upstream saw at once and the requests made.
async fn reads_with_and_without_read_ahead(
    db: &TestDb,
    orders: usize,
    history_secs: i64,
) -> [(u64, u64); 2] {
    let mut seen = [(0, 0); 2];
    for (i, read_ahead) in [0, 2].into_iter().enumerate() {
        let mut spec = SandboxConfig::graas(1, orders);
        spec.history_secs = history_secs;
        spec.faults.slow_ratio = 1.0;
        spec.faults.slow_ms = 30;
        let sandbox = sandbox(&spec).await;
        let extra = if read_ahead == 0 {
            "read_ahead = 0\n"
        } else {
            ""
        };
        let account = AccountToml {
            page_size: 50,
            extra,
            ..AccountToml::default()
        };
        // A database of its own for each setting.
        let db = TestDb::new(db.backend, &format!("read_ahead_{read_ahead}"));
        let (store, runners) = synced_store(&db, &sandbox, &spec, &account).await;
        catch_up(&runners).await;
        assert_matches_truth(&store, &sandbox, &spec).await;
        let stats = sandbox
            .graas()
            .stats(&spec.graas[0].account_number)
            .unwrap();
        seen[i] = (stats.max_reads_in_flight, stats.traffic.requests);
        store.close().await;
        sandbox.stop().await;
    }
    seen
}

/// Pages certain to be read next are asked for before they are needed (`read_ahead`, 2 by
/// default): the upstream sees three reads at once and never more, and with `read_ahead = 0`
/// one at a time. Reading ahead asks for no page that is not then used.
async fn pages_are_asked_for_ahead_within_the_limit(db: TestDb) {
    let [(one_at_a_time, alone), (at_once, ahead)] =
        reads_with_and_without_read_ahead(&db, 3_000, 3 * 24 * 3600).await;
    assert_eq!((one_at_a_time, at_once), (1, 3));
    // The last window ends at a different second in each run: one piece more at most.
    assert!(
        ahead <= alone + 1,
        "{ahead} requests reading ahead, {alone} one at a time"
    );
}
on_both_backends!(pages_are_asked_for_ahead_within_the_limit);

/// A sparse history, 10 orders a day over 30 days: each day is a window of its own (`max_window`)
/// and fits one page. The next days' windows are asked for while one is read, three at once, in
/// no more requests than reading them one at a time.
async fn sparse_windows_are_asked_for_ahead(db: TestDb) {
    let [(one_at_a_time, alone), (at_once, ahead)] =
        reads_with_and_without_read_ahead(&db, 300, 30 * 24 * 3600).await;
    assert_eq!((one_at_a_time, at_once), (1, 3));
    assert!(alone >= 30, "{alone} requests for 30 days");
    assert!(
        ahead <= alone + 1,
        "{ahead} requests reading ahead, {alone} one at a time"
    );
}
on_both_backends!(sparse_windows_are_asked_for_ahead);

/// A closed window's pages are written as they arrive, ahead of the window's last page: with
/// every answer held 150 ms, the database holds orders later than the cursor while a window is
/// read (before, the writer waited for each window's last page). The cursor only moves once a
/// window has been read whole, and the database ends equal to the upstream.
async fn closed_windows_are_written_page_by_page(db: TestDb) {
    let mut spec = SandboxConfig::graas(1, 2_000);
    spec.faults.slow_ratio = 1.0;
    spec.faults.slow_ms = 150;
    let sandbox = sandbox(&spec).await;
    let account = AccountToml {
        page_size: 50,
        ..AccountToml::default()
    };
    let (store, runners) = synced_store(&db, &sandbox, &spec, &account).await;
    let backfill = tokio::spawn(async move { catch_up(&runners).await });
    let name = account_name(0);
    let mut ahead_of_cursor = 0;
    while !backfill.is_finished() {
        // Orders first, then the cursor: the cursor only grows, so an order later than the
        // cursor read after it was stored before its window was complete.
        let orders = store.orders_of("graas", &name).await.unwrap();
        let cursor = common::cursor_of(&store, &name).await.unwrap_or(i64::MIN);
        let later = orders
            .iter()
            .filter(|order| order.upstream_updated_at.timestamp() > cursor)
            .count();
        ahead_of_cursor = ahead_of_cursor.max(later);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    backfill.await.unwrap();
    assert!(
        ahead_of_cursor >= 50,
        "at most {ahead_of_cursor} orders were stored ahead of the cursor"
    );
    assert_matches_truth(&store, &sandbox, &spec).await;
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(closed_windows_are_written_page_by_page);

/// A fifth of the pages after a closed window's first meet an upstream that has just moved the
/// window's earliest order to now, so every later page shifts by one and one order would be
/// skipped: each such read is refused and the window read again in smaller pieces.
async fn orders_moving_while_old_windows_are_paged_are_not_lost(db: TestDb) {
    let mut spec = SandboxConfig::graas(1, 4_000);
    spec.faults.drift_ratio = 0.2;
    let sandbox = sandbox(&spec).await;
    let account = AccountToml {
        page_size: 25,
        ..AccountToml::default()
    };
    let (store, runners) = synced_store(&db, &sandbox, &spec, &account).await;
    catch_up(&runners).await;
    // The moved orders are stamped with the time they moved; a run reads up to `settle` (1s)
    // before now.
    sandbox.graas().set_faults(Faults::default());
    let last_move = sandbox.graas().set_mutating(false);
    wait_for_clock_past(last_move + 2).await;
    catch_up(&runners).await;
    assert_matches_truth(&store, &sandbox, &spec).await;
    let drifted = sandbox
        .graas()
        .stats(&spec.graas[0].account_number)
        .unwrap()
        .drifted;
    assert!(drifted >= 10, "the sandbox moved only {drifted} orders");
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(orders_moving_while_old_windows_are_paged_are_not_lost);

async fn rejected_credentials_stop_the_account(db: TestDb) {
    let spec = SandboxConfig::graas(1, 100);
    let sandbox = sandbox(&spec).await;
    let text = config_toml(&db, &sandbox, &spec, &AccountToml::default())
        .replace("sandbox-key-1", "wrong-key");
    let config = Config::from_toml(&text).unwrap();
    let store = open_store(&config).await;
    let runners = App::build(&config, &store).unwrap().runners;
    let daemon = Daemon::start(runners.clone()).await.unwrap();
    // Stopped after its first 401, then two more ticks of its schedule that must not call.
    wait_until(Duration::from_secs(10), "the account to stop", || async {
        runners[0].is_stopped()
    })
    .await;
    let ticks = runners[0].ticks();
    wait_until(Duration::from_secs(10), "two more ticks", || async {
        runners[0].ticks() >= ticks + 2
    })
    .await;
    assert!(daemon.shutdown(shutdown_deadline()).await.is_empty());

    let stats = sandbox
        .graas()
        .stats(&spec.graas[0].account_number)
        .unwrap();
    assert_eq!(
        stats.unauthorized, 1,
        "the account kept calling after a 401"
    );
    assert!(runners[0].is_stopped());
    let streams = store.streams().await.unwrap();
    let error = streams[0].last_error.as_deref().unwrap_or_default();
    assert!(error.contains("credentials"), "last_error: {error}");
    assert!(store.orders_of("graas", "shop-1").await.unwrap().is_empty());
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(rejected_credentials_stop_the_account);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_single_order_fails_at_once_naming_the_field() {
    let mut spec = SandboxConfig::graas(1, 3);
    spec.malformed_every = Some(1);
    let sandbox = sandbox(&spec).await;
    let db = TestDb::new(common::Backend::Sqlite, "single");
    let config = config(&db, &sandbox, &spec, &AccountToml::default());
    let http = ordersync::providers::http::HttpClient::new(&config.http).unwrap();
    let account = &config.graas[0];
    let gate = Arc::new(ordersync::providers::http::RateGate::new(
        account.rate_limit,
    ));
    let client = ordersync::providers::graas::GraasClient::new(http, gate, account);
    let order = sandbox
        .graas()
        .truth(&spec.graas[0].account_number)
        .remove(0);

    let error = client
        .order(&order.channel, &order.order_id)
        .await
        .unwrap_err();
    assert!(
        matches!(error, ordersync::providers::ProviderError::InvalidRecord(_)),
        "{error:?}"
    );
    assert!(error.to_string().contains("timeLastUpdated"), "{error}");
    let stats = sandbox
        .graas()
        .stats(&spec.graas[0].account_number)
        .unwrap();
    assert_eq!(
        stats.traffic.requests, 1,
        "a record that cannot be stored was asked for again"
    );
    assert!(
        client
            .order("lazada-1", "no-such-order")
            .await
            .unwrap()
            .is_none()
    );
    sandbox.stop().await;
}
