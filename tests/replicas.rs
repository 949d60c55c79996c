//! Several `ordersync run` replicas on one Postgres: accounts spread by leases, taken over when a
//! replica dies or stops, and a replica that lost its leases writes nothing for them (fencing).

mod common;

use common::{
    AccountToml, Daemon, Setup, TestDb, differences_from_truth, execute_scalar, open_store,
    spawn_run_logged, wait_until,
};
use ordersync::lease::{AccountId, LeaseBook};
use ordersync::model::{Order, OrderKey, ProviderKind, StreamKey};
use ordersync::sandbox::faults::TrafficStats;
use ordersync::sandbox::{Mutations, SandboxConfig};
use ordersync::store::{Batch, StoreError};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Short leases, so takeovers happen within a test's patience.
const LEASES: &str = "\n[leases]\nttl = \"3s\"\nrenew_every = \"1s\"\n";
const TTL: Duration = Duration::from_secs(3);

/// `replicas` daemons on one database and `accounts` Graas accounts, each account limited by the
/// sandbox to exactly its configured `rate_limit` of 4 requests a second.
async fn cluster(db: &TestDb, accounts: usize, orders: usize) -> Setup {
    let mut spec = SandboxConfig::graas(accounts, orders);
    spec.faults.rate_limit_per_sec = Some(4);
    spec.faults.retry_after_secs = 1;
    spec.mutations = Some(Mutations {
        every_ms: 500,
        per_tick: 2,
        new_per_tick: 1,
        backdate_ratio: 0.0,
        max_backdate_secs: 0,
    });
    let account = AccountToml {
        rate_limit: "4/s",
        page_size: 50,
        ..AccountToml::default()
    };
    let setup = Setup::start(db, spec, &account, |text| {
        text.replace("level = \"warn\"", "level = \"info\"") + LEASES
    })
    .await;
    open_store(&setup.config).await.close().await;
    setup
}

fn start_replicas(setup: &Setup, count: usize) -> Vec<(Daemon, std::path::PathBuf)> {
    (0..count)
        .map(|i| {
            let log = setup.dir.path().join(format!("replica-{i}.log"));
            (spawn_run_logged(&setup.config_path, &log), log)
        })
        .collect()
}

/// Live leases by replica pid (a holder is named `host-pid-random`).
async fn holders(db: &TestDb) -> BTreeMap<u32, Vec<String>> {
    let rows = execute_scalar(
        db,
        "SELECT COALESCE(string_agg(holder || ' ' || account, ',' ORDER BY account), '') \
         FROM account_leases WHERE holder IS NOT NULL AND expires_at > now()",
    )
    .await;
    let mut by_pid: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for row in rows.split(',').filter(|r| !r.is_empty()) {
        let (holder, account) = row.split_once(' ').expect("holder and account");
        let pid = holder
            .rsplit('-')
            .nth(1)
            .and_then(|pid| pid.parse().ok())
            .expect("a holder names its pid");
        by_pid.entry(pid).or_default().push(account.to_owned());
    }
    by_pid
}

/// One traffic figure of the sandbox, summed over every Graas account.
fn traffic_total(setup: &Setup, figure: impl Fn(&TrafficStats) -> u64) -> u64 {
    setup
        .spec
        .graas
        .iter()
        .filter_map(|a| setup.sandbox.graas().stats(&a.account_number))
        .map(|s| figure(&s.traffic))
        .sum()
}

/// Requests the sandbox refused for going over an account's limit; each such account named.
fn over_limit(setup: &Setup) -> u64 {
    for (i, a) in setup.spec.graas.iter().enumerate() {
        if let Some(stats) = setup.sandbox.graas().stats(&a.account_number)
            && stats.traffic.over_limit > 0
        {
            eprintln!("{}: {:?}", common::account_name(i), stats.traffic);
        }
    }
    traffic_total(setup, |t| t.over_limit)
}

/// Waits until the accounts are spread over `pids`, each holding its even share give or take one.
async fn wait_for_spread(db: &TestDb, pids: &[u32], accounts: usize, within: Duration) {
    let share = accounts.div_ceil(pids.len());
    wait_until(within, "the accounts spread evenly", || async {
        let held = holders(db).await;
        held.values().map(Vec::len).sum::<usize>() == accounts
            && pids.iter().all(|pid| {
                held.get(pid)
                    .is_some_and(|a| a.len() + 1 >= share && a.len() <= share + 1)
            })
            && held.keys().all(|pid| pids.contains(pid))
    })
    .await;
}

/// Waits until the database equals the sandbox with the sandbox's changes stopped.
async fn wait_for_truth(setup: &Setup, within: Duration) {
    setup.sandbox.graas().set_mutating(false);
    let store = open_store(&setup.config).await;
    wait_until(within, "the database to equal the sandbox", || async {
        differences_from_truth(&store, &setup.sandbox, &setup.spec).await == 0
    })
    .await;
    store.close().await;
}

/// Seconds since each account's last successful run, by account.
async fn last_success(db: &TestDb) -> BTreeMap<String, f64> {
    let rows = execute_scalar(
        db,
        "SELECT COALESCE(string_agg(account || ' ' || \
         extract(epoch FROM now() - last_success_at)::text, ','), '') \
         FROM sync_cursors WHERE resource = 'orders' AND last_success_at IS NOT NULL",
    )
    .await;
    rows.split(',')
        .filter(|r| !r.is_empty())
        .filter_map(|r| {
            let (account, secs) = r.split_once(' ')?;
            Some((account.to_owned(), secs.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn three_replicas_share_twelve_accounts_and_never_go_over_a_limit() {
    let db = TestDb::new(common::Backend::Postgres, "three_replicas");
    let setup = cluster(&db, 12, 300).await;
    let replicas = start_replicas(&setup, 3);
    let pids: Vec<u32> = replicas.iter().map(|(d, _)| d.pid()).collect();
    wait_for_spread(&db, &pids, 12, Duration::from_secs(30)).await;
    // Backfill and live changes, every account polled by its one holder at 4 requests a second.
    wait_until(Duration::from_secs(60), "every account synced", || async {
        last_success(&db).await.len() == 12
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let spread = holders(&db).await;
    for pid in &pids {
        let held = spread.get(pid).map_or(0, Vec::len);
        assert!(
            (3..=5).contains(&held),
            "replica {pid} holds {held}: {spread:?}"
        );
    }
    // `status` names every replica and lease, and each replica's metrics count its leases.
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ordersync"))
        .args(["status", "--json", "--config"])
        .arg(&setup.config_path)
        .output()
        .expect("status");
    let report: serde_json::Value = serde_json::from_slice(&status.stdout).expect("status JSON");
    let listed = report["replicas"].as_array().expect("replicas");
    assert_eq!(listed.len(), 3, "{report:#}");
    let leases = report["leases"].as_array().expect("leases");
    assert_eq!(leases.len(), 12);
    assert!(
        leases
            .iter()
            .all(|l| l["holder"].is_string() && l["expires_at"].is_string())
    );
    for (daemon, log) in &replicas {
        let text = std::fs::read_to_string(log).expect("log");
        let listen = text
            .lines()
            .find(|l| l.contains("internal listener up"))
            .and_then(|l| l.split("listen=").nth(1))
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the listener's address in the log")
            .to_owned();
        let metrics = reqwest::get(format!("http://{listen}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        let held: usize = metrics
            .lines()
            .find(|l| l.starts_with("ordersync_leases_held{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .expect("ordersync_leases_held");
        let now_held = holders(&db).await.get(&daemon.pid()).map_or(0, Vec::len);
        assert_eq!(held, now_held, "{metrics}");
    }
    wait_for_truth(&setup, Duration::from_secs(30)).await;
    assert_eq!(
        over_limit(&setup),
        0,
        "an account was polled past its limit"
    );
    let requests = traffic_total(&setup, |t| t.requests);
    assert!(
        requests > 12 * 6,
        "only {requests} requests: the accounts were not worked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn a_killed_replica_s_accounts_are_taken_over_after_its_leases_expire() {
    let db = TestDb::new(common::Backend::Postgres, "killed_replica");
    let setup = cluster(&db, 6, 200).await;
    let mut replicas = start_replicas(&setup, 3);
    let pids: Vec<u32> = replicas.iter().map(|(d, _)| d.pid()).collect();
    wait_for_spread(&db, &pids, 6, Duration::from_secs(30)).await;
    let victim = pids[0];
    let orphaned = holders(&db).await.remove(&victim).unwrap_or_default();
    assert!(!orphaned.is_empty());

    let (killed, _) = replicas.remove(0);
    let mut killed = killed;
    let _ = killed.0.kill();
    let _ = killed.0.wait();
    let died = Instant::now();
    let survivors = &pids[1..];
    // Taken over once the leases expire, then polled on the next tick of the schedule: each
    // orphaned account's next request at the sandbox times the takeover.
    let numbers: Vec<String> = orphaned
        .iter()
        .map(|name| {
            let index = (0..setup.spec.graas.len())
                .find(|i| &common::account_name(*i) == name)
                .expect("a configured account");
            setup.spec.graas[index].account_number.clone()
        })
        .collect();
    let requests = |number: &str| {
        setup
            .sandbox
            .graas()
            .stats(number)
            .map_or(0, |s| s.traffic.requests)
    };
    let at_kill: Vec<u64> = numbers.iter().map(|n| requests(n)).collect();
    wait_until(
        TTL + Duration::from_secs(15),
        "the orphaned accounts polled again",
        || async {
            numbers
                .iter()
                .zip(&at_kill)
                .all(|(number, before)| requests(number) > *before)
        },
    )
    .await;
    let took = died.elapsed();
    println!("the killed replica's accounts were polled again {took:?} after the kill");
    assert!(
        took >= TTL - Duration::from_secs(1),
        "polled after {took:?}, before the leases of the killed replica expired"
    );
    // At most TTL after the last renewal, + one round of the keepers (1s) + the rest of a period
    // of the rate since the lease ended (1s) + one tick of the schedule (1s), and slack for a
    // loaded machine.
    assert!(
        took <= TTL + Duration::from_secs(5),
        "polled again only after {took:?}"
    );
    wait_for_spread(&db, survivors, 6, Duration::from_secs(10)).await;
    wait_for_truth(&setup, Duration::from_secs(30)).await;
    assert_eq!(over_limit(&setup), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn a_stopped_replica_hands_its_accounts_over_at_once() {
    let db = TestDb::new(common::Backend::Postgres, "stopped_replica");
    // A long TTL: a takeover well before it can only come from the released leases.
    let mut setup = cluster(&db, 4, 100).await;
    let text = std::fs::read_to_string(&setup.config_path)
        .expect("config")
        .replace("ttl = \"3s\"", "ttl = \"60s\"");
    std::fs::write(&setup.config_path, text).expect("config");
    setup.config = ordersync::config::Config::load(Some(&setup.config_path)).expect("config");
    let mut replicas = start_replicas(&setup, 2);
    let pids: Vec<u32> = replicas.iter().map(|(d, _)| d.pid()).collect();
    wait_for_spread(&db, &pids, 4, Duration::from_secs(30)).await;
    let (mut stopping, log) = replicas.remove(0);
    let (status, _) = stopping.terminate(Duration::from_secs(20));
    assert!(status.success());
    let stopped = Instant::now();
    wait_for_spread(&db, &pids[1..], 4, Duration::from_secs(15)).await;
    let took = stopped.elapsed();
    println!("handed over {took:?} after the SIGTERM exit (lease TTL 60s)");
    // One round of the other replica's keeper (1s), and slack for a loaded machine.
    assert!(
        took < Duration::from_secs(5),
        "the other replica took {took:?}: it waited for the leases to expire"
    );
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("leases released for the other replicas"),
        "{text}"
    );
    wait_for_truth(&setup, Duration::from_secs(30)).await;
    assert_eq!(over_limit(&setup), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn a_frozen_replica_sends_and_writes_nothing_for_accounts_it_lost() {
    let db = TestDb::new(common::Backend::Postgres, "frozen_replica");
    let setup = cluster(&db, 4, 300).await;
    let mut replicas = start_replicas(&setup, 2);
    let pids: Vec<u32> = replicas.iter().map(|(d, _)| d.pid()).collect();
    wait_for_spread(&db, &pids, 4, Duration::from_secs(30)).await;
    let frozen = pids[0];
    signal(frozen, "-STOP");
    // The other replica takes every account once the frozen one's leases expire.
    wait_for_spread(&db, &pids[1..], 4, TTL + Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    signal(frozen, "-CONT");
    // Resumed, it finds its leases gone: it stops that work and takes its share back later.
    let log = replicas[0].1.clone();
    wait_until(
        Duration::from_secs(10),
        "the resumed replica to give up its lost leases",
        || async {
            std::fs::read_to_string(&log).is_ok_and(|text| {
                text.contains("lease ran out before it could be renewed")
                    || text.contains("lease lost to another replica")
            })
        },
    )
    .await;
    wait_for_spread(&db, &pids, 4, Duration::from_secs(20)).await;
    wait_for_truth(&setup, Duration::from_secs(30)).await;
    assert_eq!(
        over_limit(&setup),
        0,
        "the resumed replica sent requests for accounts it no longer held"
    );
    for (daemon, _) in &mut replicas {
        let (status, _) = daemon.terminate(Duration::from_secs(20));
        assert!(status.success());
    }
}

/// A replica frozen inside a write transaction holds its lease row's share lock (the fence), and
/// no other replica can take that lease until the server ends the transaction: the daemon's
/// sessions must let it end within a fraction of the TTL, not after the general call timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn a_replica_frozen_inside_a_transaction_does_not_hold_up_the_takeover() {
    let db = TestDb::new(common::Backend::Postgres, "frozen_in_transaction");
    let setup = cluster(&db, 4, 300).await;
    let log = |name: &str| setup.dir.path().join(format!("{name}.log"));
    let mut frozen = spawn_run_logged(&setup.config_path, &log("frozen"));
    wait_for_spread(&db, &[frozen.pid()], 4, Duration::from_secs(30)).await;

    // Hold the orders table, so the replica's next batch waits inside its transaction, after
    // its fence check; then freeze the replica there and let its statement finish.
    let mut blocker = db.pg_connection().await;
    sqlx::raw_sql("BEGIN; LOCK TABLE orders IN EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .expect("lock the orders table");
    let blocker_pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut blocker)
        .await
        .expect("backend pid");
    let mut observer = db.pg_connection().await;
    let waiting = "SELECT COALESCE(array_agg(pid), '{}') FROM pg_stat_activity \
                   WHERE $1 = ANY(pg_blocking_pids(pid))";
    let mut blocked: Vec<i32> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while blocked.is_empty() {
        assert!(
            Instant::now() < deadline,
            "no batch of the replica waited for the orders table"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        blocked = sqlx::query_scalar(waiting)
            .bind(blocker_pid)
            .fetch_one(&mut observer)
            .await
            .expect("blocked sessions");
    }
    signal(frozen.pid(), "-STOP");
    let frozen_at = Instant::now();
    sqlx::raw_sql("COMMIT")
        .execute(&mut blocker)
        .await
        .expect("unlock");
    // The blocked statement finishes once the table is free; under load that takes a moment.
    let left_open = Instant::now() + Duration::from_secs(5);
    loop {
        let idle: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity \
             WHERE pid = ANY($1) AND state LIKE 'idle in transaction%'",
        )
        .bind(&blocked)
        .fetch_one(&mut observer)
        .await
        .expect("session states");
        if idle > 0 {
            break;
        }
        assert!(
            Instant::now() < left_open,
            "the frozen replica's transaction is not left open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut survivor = spawn_run_logged(&setup.config_path, &log("survivor"));
    wait_for_spread(&db, &[survivor.pid()], 4, TTL + Duration::from_secs(10)).await;
    let took = frozen_at.elapsed();
    println!("every account taken {took:?} after the freeze (TTL {TTL:?})");
    // The lease runs out after the TTL; the frozen transaction ends within a third of it.
    assert!(
        took < TTL + Duration::from_secs(4),
        "a takeover waited {took:?} for the frozen replica's transaction"
    );

    signal(frozen.pid(), "-CONT");
    let pids = [frozen.pid(), survivor.pid()];
    wait_for_spread(&db, &pids, 4, Duration::from_secs(20)).await;
    wait_for_truth(&setup, Duration::from_secs(30)).await;
    assert_eq!(over_limit(&setup), 0);
    for daemon in [&mut frozen, &mut survivor] {
        let (status, _) = daemon.terminate(Duration::from_secs(20));
        assert!(status.success());
    }
}

fn signal(pid: u32, name: &str) {
    let sent = std::process::Command::new("kill")
        .args([name, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(sent.success(), "kill {name} {pid}");
}

/// A replica looking for accounts to take passes over a lease another replica holds, even while
/// that replica's write holds the lease row's lock (its fence): the attempt neither waits for
/// the write nor touches the row. An expired lease is still taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn taking_passes_over_a_held_lease_without_waiting_for_its_writes() {
    let db = TestDb::new(common::Backend::Postgres, "take_held");
    let config = ordersync::config::Config::from_toml(&db.toml()).expect("config");
    let store = open_store(&config).await;
    let table = store.lease_table().expect("Postgres has leases");
    let ttl = Duration::from_secs(2);
    let first = table
        .take("replica-a", "graas", "shop-1", ttl)
        .await
        .expect("take")
        .expect("free");

    // A write of replica A in progress: its transaction holds the lease row, as its fence does.
    let mut writer = db.pg_connection().await;
    sqlx::raw_sql("BEGIN; SELECT 1 FROM account_leases WHERE account = 'shop-1' FOR KEY SHARE")
        .execute(&mut writer)
        .await
        .expect("lock the lease row");

    let asked = Instant::now();
    let attempt = tokio::time::timeout(
        Duration::from_secs(5),
        table.take("replica-b", "graas", "shop-1", ttl),
    )
    .await
    .expect("the take waited for replica A's write")
    .expect("take");
    assert!(attempt.is_none(), "a held lease was taken");
    println!("passed over a held lease in {:?}", asked.elapsed());
    sqlx::raw_sql("COMMIT")
        .execute(&mut writer)
        .await
        .expect("unlock");

    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let second = table
        .take("replica-b", "graas", "shop-1", ttl)
        .await
        .expect("take")
        .expect("expired, so free to take");
    assert_eq!(second.token, first.token + 1);
    store.close().await;
}

/// Keeping leases renews them one `renew_every` after the take before it, not at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn kept_leases_are_renewed_one_period_after_they_were_taken() {
    use ordersync::config::{LeaseConfig, RateLimit};
    use ordersync::lease::keeper::{Keeper, Share};
    use ordersync::providers::http::RateGate;
    use tokio_util::sync::CancellationToken;

    let db = TestDb::new(common::Backend::Postgres, "renew_after_take");
    let config = ordersync::config::Config::from_toml(&db.toml()).expect("config");
    let store = open_store(&config).await;
    let account = AccountId::new(ProviderKind::Graas, "shop-1");
    let limit = RateLimit::parse("4/s").expect("rate limit");
    let gates = std::collections::HashMap::from([(account, Arc::new(RateGate::new(limit)))]);
    let settings = LeaseConfig {
        enabled: true,
        ttl: TTL,
        renew_every: Duration::from_secs(1),
    };
    let book = Arc::new(LeaseBook::new("replica-a"));
    let keeper = Keeper::new(store.clone(), book.clone(), gates, settings, Share::All);
    let shutdown = CancellationToken::new();
    keeper.cycle(&shutdown).await;
    assert_eq!(book.count(), 1, "the free lease was not taken");
    let expiry = || {
        execute_scalar(
            &db,
            "SELECT expires_at::text FROM account_leases WHERE account = 'shop-1'",
        )
    };
    let taken = expiry().await;

    let started = Instant::now();
    let stop = CancellationToken::new();
    let keeping = tokio::spawn({
        let keeper = keeper.sharing(Share::Kept);
        let (shutdown, stop) = (shutdown.clone(), stop.clone());
        async move { keeper.run(&shutdown, &stop).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(expiry().await, taken, "renewed right after the take");
    wait_until(Duration::from_secs(3), "the first renewal", || async {
        expiry().await != taken
    })
    .await;
    let renewed_after = started.elapsed();
    assert!(
        renewed_after >= Duration::from_millis(900),
        "renewed after {renewed_after:?}, before one period"
    );
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), keeping)
        .await
        .expect("the keeper stops when told")
        .expect("keeper task");
    store.close().await;
}

/// Two stores on one database; through the first, replica A has taken the lease of shop-1 for
/// `ttl`, and its writes are fenced by a book that never learns of a loss (as if frozen right
/// after taking it).
struct ReplicaAHolding {
    db: TestDb,
    first: Arc<dyn ordersync::store::Store>,
    second: Arc<dyn ordersync::store::Store>,
    taken: ordersync::store::Taken,
}

async fn replica_a_holding_shop_1(test: &str, ttl: Duration) -> ReplicaAHolding {
    let db = TestDb::new(common::Backend::Postgres, test);
    let config = ordersync::config::Config::from_toml(&db.toml()).expect("config");
    let first = open_store(&config).await;
    let second = ordersync::store::open(&config.database)
        .await
        .expect("open");
    let table = first.lease_table().expect("Postgres has leases");
    let taken = table
        .take("replica-a", "graas", "shop-1", ttl)
        .await
        .expect("take")
        .expect("free");
    let a = Arc::new(LeaseBook::new("replica-a"));
    a.taken(
        AccountId::new(ProviderKind::Graas, "shop-1"),
        taken.token,
        Instant::now() + Duration::from_secs(3600),
        &tokio_util::sync::CancellationToken::new(),
    );
    first.fence_with(a);
    ReplicaAHolding {
        db,
        first,
        second,
        taken,
    }
}

/// The fencing itself, without processes: a store whose book still believes in a lease that
/// another replica has taken since writes nothing, and the new holder's writes go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn writes_with_a_lost_lease_are_refused() {
    let ttl = Duration::from_secs(2);
    let ReplicaAHolding {
        db: _db,
        first,
        second,
        taken,
    } = replica_a_holding_shop_1("fencing", ttl).await;
    let account = AccountId::new(ProviderKind::Graas, "shop-1");
    let never_stop = tokio_util::sync::CancellationToken::new();
    assert_eq!(taken.previous_ended, None, "no holder before");
    let old_token = taken.token;
    commit(&first, "1", "1").await.expect("A holds the lease");

    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let table = second.lease_table().expect("Postgres has leases");
    let taken = table
        .take("replica-b", "graas", "shop-1", ttl)
        .await
        .expect("take")
        .expect("expired, so free to take");
    // A's lease ended about 200 ms ago: B's first request waits out the rest of a period.
    let ended = taken.previous_ended.expect("A held it");
    assert!(ended < Duration::from_secs(2), "{ended:?}");
    let new_token = taken.token;
    assert!(new_token > old_token);
    let b = Arc::new(LeaseBook::new("replica-b"));
    b.taken(
        account.clone(),
        new_token,
        Instant::now() + ttl,
        &never_stop,
    );
    second.fence_with(b);

    let refused = commit(&first, "2", "2").await;
    assert!(
        matches!(refused, Err(StoreError::LeaseLost { .. })),
        "{refused:?}"
    );
    let stream = stream();
    let run = first
        .run_finished(&stream, chrono::Utc::now(), chrono::Utc::now(), None)
        .await;
    assert!(matches!(run, Err(StoreError::LeaseLost { .. })), "{run:?}");
    commit(&second, "3", "3").await.expect("B holds it");

    let stored = second.orders_of("graas", "shop-1").await.expect("orders");
    let ids: Vec<&str> = stored.iter().map(|o| o.external_id.as_str()).collect();
    assert_eq!(
        ids,
        ["1", "3"],
        "the write with the lost lease reached the table"
    );
    assert_eq!(
        second.cursor(&stream).await.expect("cursor").as_deref(),
        Some("3")
    );
    first.close().await;
    second.close().await;
}

fn stream() -> StreamKey {
    StreamKey {
        provider: ProviderKind::Graas,
        account: "shop-1".into(),
        resource: "orders".into(),
    }
}

/// Commits one order and moves the stream's cursor to `cursor`.
async fn commit(
    store: &Arc<dyn ordersync::store::Store>,
    id: &str,
    cursor: &str,
) -> Result<ordersync::store::BatchOutcome, StoreError> {
    let order = Order {
        key: OrderKey {
            provider: ProviderKind::Graas,
            account: "shop-1".into(),
            channel: "shopee".into(),
            external_id: id.into(),
        },
        status: Some("NEW".into()),
        payment_status: None,
        shipping_status: None,
        total: None,
        upstream_created_at: None,
        upstream_updated_at: chrono::Utc::now(),
        payload: format!("{{\"orderId\":\"{id}\"}}"),
    };
    let stream = stream();
    store
        .commit_batch(&Batch {
            stream: &stream,
            orders: &[order],
            quarantined: &[],
            cursor: Some(cursor),
            seen_at: chrono::Utc::now(),
        })
        .await
}

/// 1,000 actions over 12 accounts while one of three replicas is killed: every action ends
/// final, each account's actions are sent by its holder (and, after the kill, by the replica that
/// took the account over), and an action goes out twice only if the killed replica had it in
/// flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn actions_survive_a_killed_replica() {
    let db = TestDb::new(common::Backend::Postgres, "replica_outbox");
    let mut spec = SandboxConfig::graas(12, 100);
    spec.faults.rate_limit_per_sec = Some(10);
    spec.faults.retry_after_secs = 1;
    spec.faults.slow_ratio = 0.3;
    spec.faults.slow_ms = 400;
    let account = AccountToml {
        schedule: "0 0 0 1 1 *",
        rate_limit: "10/s",
        extra: "action_batch_size = 2",
        ..AccountToml::default()
    };
    let setup = Setup::start(&db, spec, &account, |text| {
        format!(
            "{text}{LEASES}\n[outbox]\npoll_interval = \"50ms\"\nvisibility_timeout = \"3s\"\nmin_backoff = \"50ms\"\nmax_backoff = \"400ms\"\nmax_attempts = 30\n"
        )
    })
    .await;
    let store = open_store(&setup.config).await;
    let mut queued = 0;
    for n in 0..100 {
        for (i, acct) in setup.spec.graas.iter().enumerate() {
            if queued == 1_000 {
                break;
            }
            let truth = setup.sandbox.graas().truth(&acct.account_number);
            let action = common::order_request(i, "accept", &truth[n])
                .into_action(&setup.config)
                .expect("a valid accept");
            store.enqueue(&action).await.expect("enqueue");
            queued += 1;
        }
    }
    let mut replicas = start_replicas(&setup, 3);
    let pids: Vec<u32> = replicas.iter().map(|(d, _)| d.pid()).collect();
    wait_for_spread(&db, &pids, 12, Duration::from_secs(30)).await;
    let actions = || async {
        store
            .actions(&ordersync::store::ActionFilter {
                limit: 100_000,
                ..Default::default()
            })
            .await
            .expect("actions")
    };
    wait_until(
        Duration::from_secs(60),
        "a third of the actions sent",
        || async {
            actions()
                .await
                .iter()
                .filter(|a| a.state == "succeeded")
                .count()
                >= 330
        },
    )
    .await;
    let victim = pids[0];
    let victim_accounts = holders(&db).await.remove(&victim).unwrap_or_default();
    let (mut killed, _) = replicas.remove(0);
    let _ = killed.0.kill();
    let _ = killed.0.wait();
    let stranded: Vec<i64> = actions()
        .await
        .iter()
        .filter(|a| a.state == "in_flight" && victim_accounts.contains(&a.account))
        .map(|a| a.id)
        .collect();

    wait_until(Duration::from_secs(120), "every action final", || async {
        actions()
            .await
            .iter()
            .all(|a| matches!(a.state.as_str(), "succeeded" | "failed" | "dead"))
    })
    .await;
    let done = actions().await;
    assert_eq!(done.len(), 1_000);
    assert!(
        done.iter().all(|a| a.state == "succeeded"),
        "{:?}",
        done.iter()
            .filter(|a| a.state != "succeeded")
            .collect::<Vec<_>>()
    );
    let mut repeats = 0;
    for acct in &setup.spec.graas {
        let received = setup.sandbox.graas().received(&acct.account_number);
        let mut applied: BTreeMap<String, usize> = BTreeMap::new();
        for item in received.iter().filter(|r| r.http_code == 202) {
            *applied.entry(item.reference.clone()).or_default() += 1;
        }
        repeats += applied.values().map(|n| n - 1).sum::<usize>();
    }
    println!(
        "{} actions stranded in flight by the kill, {repeats} sent twice",
        stranded.len()
    );
    assert!(
        repeats <= stranded.len(),
        "{repeats} repeats > {} stranded by the killed replica",
        stranded.len()
    );
    assert_eq!(over_limit(&setup), 0);
    store.close().await;
}

/// The fence's lock against the lease's own updates: while a write holds the lease row (its
/// fence, in its transaction), the holder's renewal goes through at once, and another replica
/// taking the expired lease over waits until the write has committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn a_write_in_flight_holds_up_a_takeover_but_not_a_renewal() {
    let ttl = Duration::from_secs(2);
    let ReplicaAHolding {
        db,
        first,
        second,
        taken,
    } = replica_a_holding_shop_1("fence_locks", ttl).await;
    let table = first.lease_table().expect("Postgres has leases");

    // A write that passes its fence and then waits inside its transaction for the orders table.
    let mut blocker = db.pg_connection().await;
    sqlx::raw_sql("BEGIN; LOCK TABLE orders IN EXCLUSIVE MODE")
        .execute(&mut blocker)
        .await
        .expect("lock the orders table");
    let writing = tokio::spawn({
        let first = first.clone();
        async move { commit(&first, "1", "1").await }
    });
    wait_until(Duration::from_secs(10), "the write to hold the lease row", || {
        async {
            execute_scalar(
                &db,
                "SELECT count(*)::text FROM pg_locks l JOIN pg_stat_activity a USING (pid) \
                 WHERE l.locktype = 'relation' AND NOT l.granted AND a.query LIKE 'INSERT INTO orders%'",
            )
            .await
                == "1"
        }
    })
    .await;

    let renewed = tokio::time::timeout(
        Duration::from_secs(2),
        table.renew(
            "replica-a",
            &[("graas".into(), "shop-1".into(), taken.token)],
            ttl,
        ),
    )
    .await
    .expect("the renewal waited for the write in flight")
    .expect("renew");
    assert_eq!(renewed.len(), 1, "the lease was not renewed");

    // Once the lease has run out, another replica takes it only after the write committed.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    let takeover = tokio::spawn({
        let second = second.clone();
        async move {
            let table = second.lease_table().expect("Postgres has leases");
            table.take("replica-b", "graas", "shop-1", ttl).await
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !takeover.is_finished(),
        "the lease was taken over while the old holder's write was in flight"
    );
    sqlx::raw_sql("COMMIT")
        .execute(&mut blocker)
        .await
        .expect("unlock");
    tokio::time::timeout(Duration::from_secs(10), writing)
        .await
        .expect("the write finishes")
        .expect("write task")
        .expect("the write under the old lease commits");
    let taken_over = tokio::time::timeout(Duration::from_secs(10), takeover)
        .await
        .expect("the takeover finishes")
        .expect("take task")
        .expect("take")
        .expect("expired, so free to take");
    assert_eq!(taken_over.token, taken.token + 1);
    first.close().await;
    second.close().await;
}
