//! The outbox through the real binary: kill and restart, two processes on one Postgres, and
//! the `action` commands.

mod common;

use common::{
    AccountToml, Backend, Setup, TestDb, open_store, spawn_run, spawn_run_logged, wait_for_log,
    wait_until,
};
use ordersync::model::Action;
use ordersync::sandbox::graas::Received;
use ordersync::sandbox::{Faults, SandboxConfig};
use ordersync::store::{ActionFilter, Store};
use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Output};
use std::sync::Arc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ordersync");
const OUTBOX: &str = "\n[outbox]\npoll_interval = \"50ms\"\nvisibility_timeout = \"3s\"\nmin_backoff = \"50ms\"\nmax_backoff = \"400ms\"\nmax_attempts = 30\n";

/// The shared [`Setup`] with the store open.
struct OutboxSetup {
    base: Setup,
    store: Arc<dyn Store>,
}

impl std::ops::Deref for OutboxSetup {
    type Target = Setup;
    fn deref(&self) -> &Setup {
        &self.base
    }
}

async fn setup(
    db: &TestDb,
    orders: usize,
    rate_limit: &'static str,
    batch: &'static str,
) -> OutboxSetup {
    let account = AccountToml {
        schedule: "0 0 0 1 1 *",
        rate_limit,
        extra: batch,
        ..AccountToml::default()
    };
    let base = Setup::start(db, SandboxConfig::graas(1, orders), &account, |text| {
        format!("{text}{OUTBOX}")
    })
    .await;
    let store = open_store(&base.config).await;
    OutboxSetup { base, store }
}

impl OutboxSetup {
    fn account_number(&self) -> &str {
        &self.spec.graas[0].account_number
    }

    /// Queues an accept for each of the first `count` orders.
    async fn enqueue_accepts(&self, count: usize) {
        common::enqueue_accepts(&self.base, &self.store, count).await;
    }

    async fn actions(&self) -> Vec<Action> {
        self.store
            .actions(&ActionFilter {
                limit: 100_000,
                ..ActionFilter::default()
            })
            .await
            .unwrap()
    }

    async fn wait_all_final(&self, timeout: Duration) {
        wait_until(timeout, "every action to reach a final state", || async {
            self.actions()
                .await
                .iter()
                .all(|a| matches!(a.state.as_str(), "succeeded" | "failed" | "dead"))
        })
        .await;
    }

    fn spawn_run(&self) -> Child {
        spawn_run(&self.config_path)
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", self.config_path.to_str().unwrap()]);
        Command::new(BIN)
            .args(&all)
            .env_remove("ORDERSYNC_CONFIG")
            .output()
            .unwrap()
    }
}

/// 202-answered items per order.
fn applied(received: &[Received]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in received.iter().filter(|r| r.http_code == 202) {
        *counts.entry(r.reference.clone()).or_insert(0) += 1;
    }
    counts
}

async fn killed_while_sending_then_restarted(db: TestDb) {
    let s = setup(&db, 300, "20/s", "action_batch_size = 5").await;
    s.sandbox.graas().set_faults(Faults {
        slow_ratio: 0.5,
        slow_ms: 700,
        ..Faults::default()
    });
    s.enqueue_accepts(200).await;
    let mut first = s.spawn_run();
    wait_until(
        Duration::from_secs(30),
        "some actions to be sent",
        || async {
            s.actions()
                .await
                .iter()
                .filter(|a| a.state == "succeeded")
                .count()
                >= 30
        },
    )
    .await;
    // Catch it with a batch in flight.
    wait_until(Duration::from_secs(10), "a batch in flight", || async {
        s.actions().await.iter().any(|a| a.state == "in_flight")
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    let stranded = s
        .actions()
        .await
        .iter()
        .filter(|a| a.state == "in_flight")
        .count();
    assert!(stranded > 0, "the kill left nothing in flight");

    let mut second = s.spawn_run();
    s.wait_all_final(Duration::from_secs(60)).await;
    second.kill().unwrap();
    second.wait().unwrap();

    let actions = s.actions().await;
    assert!(
        actions.iter().all(|a| a.state == "succeeded"),
        "{:#?}",
        actions
            .iter()
            .filter(|a| a.state != "succeeded")
            .collect::<Vec<_>>()
    );
    let applied = applied(&s.sandbox.graas().received(s.account_number()));
    assert_eq!(applied.len(), 200);
    // Only what the dead process had in hand can have gone out twice.
    let repeats: usize = applied.values().map(|n| n - 1).sum();
    println!("{stranded} actions stranded in flight by the kill, {repeats} sent twice");
    assert!(
        repeats <= stranded,
        "{repeats} repeats > {stranded} stranded"
    );
    s.store.close().await;
    s.base.sandbox.stop().await;
}
on_both_backends!(killed_while_sending_then_restarted);

/// Two processes on one Postgres queue with leases off (each works every account): each action
/// is claimed, and sent, once. (With leases, one replica works each account: tests/replicas.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(ordersync_pg), ignore = "needs Postgres: set ORDERSYNC_TEST_PG")]
async fn two_processes_on_postgres_send_each_action_once() {
    let db = TestDb::new(Backend::Postgres, "two_processes");
    let s = setup(&db, 500, "50/s", "action_batch_size = 5").await;
    let text = std::fs::read_to_string(&s.config_path).unwrap();
    std::fs::write(
        &s.config_path,
        format!("{text}\n[leases]\nenabled = false\n"),
    )
    .unwrap();
    let logs = [
        s.dir.path().join("first.log"),
        s.dir.path().join("second.log"),
    ];
    let _first = spawn_run_logged(&s.config_path, &logs[0]);
    let _second = spawn_run_logged(&s.config_path, &logs[1]);
    // Both dispatchers are running before there is work.
    for log in &logs {
        wait_for_log(log, "ordersync running", Duration::from_secs(30)).await;
    }
    s.enqueue_accepts(400).await;
    s.wait_all_final(Duration::from_secs(60)).await;
    let actions = s.actions().await;
    assert!(actions.iter().all(|a| a.state == "succeeded"));
    assert!(actions.iter().all(|a| a.attempts == 1), "claimed twice");
    let workers: HashSet<_> = actions
        .iter()
        .filter_map(|a| a.claimed_by.clone())
        .collect();
    assert_eq!(workers.len(), 2, "both processes took a share: {workers:?}");
    let received = s.sandbox.graas().received(s.account_number());
    assert_eq!(received.len(), 400);
    assert!(applied(&received).values().all(|n| *n == 1));
    s.store.close().await;
    s.base.sandbox.stop().await;
}

async fn action_commands(db: TestDb) {
    let s = setup(&db, 20, "100/s", "").await;
    let order = &s.sandbox.graas().truth(s.account_number())[0];
    let bad = [
        (
            vec![
                "action",
                "accept",
                "--account",
                "nope",
                "--channel",
                "c",
                "--order",
                "1",
            ],
            "--account",
        ),
        (
            vec![
                "action",
                "cancel",
                "--account",
                "shop-1",
                "--channel",
                "c",
                "--order",
                "1",
                "--reason",
                "BORED",
            ],
            "--reason",
        ),
        (
            vec![
                "action",
                "accept",
                "--account",
                "shop-1",
                "--channel",
                "c",
                "--order",
                "1",
                "--item",
                "nosku",
            ],
            "--item",
        ),
    ];
    for (args, flag) in bad {
        let out = s.cli(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
    let asn_file = s.dir.path().join("asn.json");
    for (body, expected) in [
        ("{\"warehouseID\": \"w\",", "not JSON"),
        (
            r#"{"warehouseID": "odoo-1", "supplierID": "seven", "date": 1, "orderItems": []}"#,
            "supplierID",
        ),
    ] {
        std::fs::write(&asn_file, body).unwrap();
        let out = s.cli(&[
            "action",
            "asn",
            "--account",
            "shop-1",
            "--file",
            asn_file.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("--file") && stderr.contains(expected),
            "{stderr}"
        );
    }
    assert!(s.actions().await.is_empty(), "nothing enqueued");

    let accept = [
        "action",
        "accept",
        "--account",
        "shop-1",
        "--channel",
        &order.channel,
        "--order",
        &order.order_id,
        "--key",
        "erp-1",
    ];
    let out = s.cli(&accept);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let queued: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = queued["id"].as_i64().unwrap();
    let again = s.cli(&accept);
    assert!(String::from_utf8_lossy(&again.stderr).contains("already queued"));
    let out = s.cli(&["run", "--once"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = s.cli(&["action", "show", &id.to_string()]);
    let shown: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(shown["state"], "succeeded");
    let list = s.cli(&["action", "list", "--state", "succeeded", "--json"]);
    assert_eq!(String::from_utf8_lossy(&list.stdout).lines().count(), 1);
    // Only dead or failed actions go back to the queue.
    let retry = s.cli(&["action", "retry", &id.to_string()]);
    assert!(!retry.status.success());
    assert!(String::from_utf8_lossy(&retry.stderr).contains("succeeded"));
    let status = s.cli(&["status"]);
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        stdout.contains("graas/shop-1") && stdout.contains("open"),
        "{stdout}"
    );
    s.store.close().await;
    s.base.sandbox.stop().await;
}
on_both_backends!(action_commands);
