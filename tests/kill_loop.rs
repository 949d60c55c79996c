//! The reliability suite's kill loop: `ordersync run` is SIGKILLed at random moments while it
//! backfills two Graas accounts, receives Grafterr webhooks (each push moves every order on) and
//! dispatches Graas actions, again and again; then one last run catches up, with every order's
//! latest events pushed once more, and the database must equal the sandbox: no order lost or
//! duplicated, every webhook event stored once and processed, every action final, and repeats
//! only from batches a kill left in flight.
//!
//! Ignored by default (it takes a while). `.ci/run` runs it with a few kills; for a long run:
//!
//!     KILL_LOOP_ROUNDS=200 cargo test --release --test kill_loop -- --ignored --nocapture
//!
//! On Postgres too when `ORDERSYNC_TEST_PG` is set.

mod common;

use common::{
    AccountToml, Backend, Daemon, Setup, TestDb, differences_from_truth, open_store,
    spawn_run_logged, wait_until,
};
use ordersync::model::ProviderKind;
use ordersync::sandbox::grafterr::PushPlan;
use ordersync::sandbox::{Faults, SandboxConfig};
use ordersync::store::{ActionFilter, InboxEntry, InboxFilter, Store, StoreError};
use rand::Rng;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const CAFE: &str = "cafe-1";
const ACTIONS: usize = 200;
const BATCH: usize = 5;

fn kills() -> usize {
    std::env::var("KILL_LOOP_ROUNDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10)
}

async fn kill_loop(db: TestDb) {
    let mut spec = SandboxConfig::graas(2, 4_000).with_grafterr(1, 300);
    spec.faults = Faults {
        slow_ratio: 0.2,
        slow_ms: 300,
        ..Faults::default()
    };
    let port = common::fixed_port();
    let account = AccountToml {
        // A backfill of several seconds, so kills land in it.
        page_size: 50,
        rate_limit: "20/s",
        extra: "action_batch_size = 5",
        ..AccountToml::default()
    };
    let setup = Setup::start(&db, spec.clone(), &account, |text| {
        let cafe = &spec.grafterr[0];
        format!(
            "{}\n[leases]\nttl = \"2s\"\nrenew_every = \"1s\"\n\n[outbox]\npoll_interval = \"50ms\"\nvisibility_timeout = \"2s\"\nmin_backoff = \"50ms\"\nmax_backoff = \"400ms\"\nmax_attempts = 1000\n\n[webhooks]\nlisten = \"127.0.0.1:{port}\"\n\n[[grafterr]]\nname = \"{}\"\nbase_url = \"{}\"\napi_key = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\npath_token = \"{}\"\nrate_limit = \"40/s\"\n",
            text.replace("[log]\nlevel = \"warn\"", "[log]\nlevel = \"info\""),
            cafe.name,
            "http://grafterr.invalid/",
            cafe.api_key,
            cafe.client_id,
            cafe.client_secret,
            cafe.path_token,
        ) + &cafe
            .signing_secret
            .as_ref()
            .map(|secret| format!("signing_secret = \"{secret}\"\n"))
            .unwrap_or_default()
    })
    .await;
    // The Grafterr API's address is known once the sandbox runs.
    let text = std::fs::read_to_string(&setup.config_path)
        .expect("config")
        .replace(
            "http://grafterr.invalid/",
            &setup.sandbox.grafterr_base_url(),
        );
    std::fs::write(&setup.config_path, &text).expect("config");
    let config = ordersync::config::Config::from_toml(&text).expect("config");
    let store = open_store(&config).await;
    common::enqueue_accepts(&setup, &store, ACTIONS).await;

    // Webhooks arrive all along, from a sender that does not retry a refused connection: only
    // what was acknowledged must be kept.
    let hook_url = format!("http://127.0.0.1:{port}/webhooks/grafterr/{CAFE}");
    let plan = PushPlan {
        updates_per_order: 2,
        duplicate_ratio: 0.05,
        reorder_ratio: 0.05,
        no_items_ratio: 0.0,
        no_event_id_ratio: 0.0,
        forged_ratio: 0.0,
        concurrency: 4,
    };
    let pushing = {
        let (sim, url, plan) = (
            setup.sandbox.grafterr().clone(),
            hook_url.clone(),
            plan.clone(),
        );
        tokio::spawn(async move {
            loop {
                sim.push(CAFE, &url, &plan).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let loops = kills();
    let mut rng = rand::rng();
    for round in 0..loops {
        let log = setup.dir.path().join(format!("run-{round}.log"));
        let mut daemon = spawn_run_logged(&setup.config_path, &log);
        // On Postgres a new run first waits for the killed one's leases to expire (2s).
        let alive = match db.backend {
            Backend::Sqlite => Duration::from_millis(rng.random_range(300..2_500)),
            Backend::Postgres => Duration::from_millis(rng.random_range(2_300..5_000)),
        };
        tokio::time::sleep(alive).await;
        kill(&mut daemon);
    }
    pushing.abort();

    // One last run catches up, with every webhook sent once more.
    let log = setup.dir.path().join("final.log");
    let mut daemon = spawn_run_logged(&setup.config_path, &log);
    common::wait_for_log(&log, "webhook listener up", Duration::from_secs(30)).await;
    setup.sandbox.grafterr().push(CAFE, &hook_url, &plan).await;
    setup.sandbox.graas().set_mutating(false);
    wait_until(Duration::from_secs(120), "everything caught up", || async {
        differences_from_truth(&store, &setup.sandbox, &setup.spec).await == 0
            && all_final(&store).await
            && grafterr_stored(&store).await == grafterr_truth(&setup)
            && grafterr_inbox_processed(&store).await
    })
    .await;
    let (status, _) = daemon.terminate(Duration::from_secs(40));
    assert!(status.success());

    let actions = store
        .actions(&ActionFilter {
            limit: 100_000,
            ..ActionFilter::default()
        })
        .await
        .expect("actions");
    assert_eq!(actions.len(), ACTIONS);
    assert!(actions.iter().all(|a| a.state == "succeeded"));
    let received = setup
        .sandbox
        .graas()
        .received(&setup.spec.graas[0].account_number);
    let mut applied: BTreeMap<&str, usize> = BTreeMap::new();
    for item in received.iter().filter(|r| r.http_code == 202) {
        *applied.entry(item.reference.as_str()).or_default() += 1;
    }
    assert_eq!(applied.len(), ACTIONS, "every action reached the upstream");
    let repeats: usize = applied.values().map(|n| n - 1).sum();
    // A kill strands at most two batches: the one being sent and the one sent before it whose
    // outcomes were still being recorded (the dispatcher overlaps the two). Each is claimed
    // again after its claim lapses, and may go out a second time.
    assert!(
        repeats <= loops * 2 * BATCH,
        "{repeats} repeats after {loops} kills of batches of {BATCH}"
    );
    let inbox = grafterr_inbox(&store).await.expect("inbox");
    // Each event once (the sender repeats some, and every push resends each order's last one).
    let events: std::collections::BTreeSet<&str> =
        inbox.iter().filter_map(|d| d.event_id.as_deref()).collect();
    assert_eq!(events.len(), inbox.len(), "an event was stored twice");
    assert!(inbox.len() >= 900, "only {} events stored", inbox.len());
    assert!(inbox.iter().all(|d| d.state == "processed"));
    println!(
        "{loops} kills: orders equal to the sandbox, {} actions succeeded ({repeats} sent twice), {} webhook events stored once",
        actions.len(),
        inbox.len()
    );
    store.close().await;
}

fn kill(daemon: &mut Daemon) {
    let _ = daemon.0.kill();
    let _ = daemon.0.wait();
}

async fn all_final(store: &Arc<dyn Store>) -> bool {
    store
        .actions(&ActionFilter {
            limit: 100_000,
            ..ActionFilter::default()
        })
        .await
        .is_ok_and(|actions| {
            actions
                .iter()
                .all(|a| matches!(a.state.as_str(), "succeeded" | "failed" | "dead"))
        })
}

async fn grafterr_stored(store: &Arc<dyn Store>) -> BTreeMap<(String, String), String> {
    store
        .orders_of(ProviderKind::Grafterr.as_str(), CAFE)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|o| ((o.channel, o.external_id), o.status.unwrap_or_default()))
        .collect()
}

/// Every stored Grafterr delivery has been processed. The orders can equal the upstream's
/// while an older delivery stored before a kill still waits: the run after it processes it
/// (idempotently), and the last run must not be stopped before it has.
async fn grafterr_inbox_processed(store: &Arc<dyn Store>) -> bool {
    grafterr_inbox(store)
        .await
        .is_ok_and(|inbox| inbox.iter().all(|d| d.state == "processed"))
}

/// Every Grafterr delivery stored.
async fn grafterr_inbox(store: &Arc<dyn Store>) -> Result<Vec<InboxEntry>, StoreError> {
    store
        .inbox(&InboxFilter {
            provider: Some("grafterr".into()),
            limit: 100_000,
            ..InboxFilter::default()
        })
        .await
}

fn grafterr_truth(setup: &Setup) -> BTreeMap<(String, String), String> {
    setup
        .sandbox
        .grafterr()
        .truth(CAFE)
        .into_iter()
        .map(|o| ((o.source, o.order_id), o.status))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reliability suite: KILL_LOOP_ROUNDS=N cargo test --test kill_loop -- --ignored"]
async fn kill_loop_on_sqlite() {
    kill_loop(TestDb::new(Backend::Sqlite, "kill_loop")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reliability suite: KILL_LOOP_ROUNDS=N cargo test --test kill_loop -- --ignored"]
async fn kill_loop_on_postgres() {
    if std::env::var(common::PG_ENV).is_err() {
        panic!("kill_loop_on_postgres needs {}", common::PG_ENV);
    }
    kill_loop(TestDb::new(Backend::Postgres, "kill_loop")).await;
}
