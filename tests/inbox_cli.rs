//! `ordersync inbox list|replay` through the real binary: deliveries that failed to map (a
//! test switch stands in for a mapping that did not know a payload yet) become processed once
//! the mapping is fixed, and a replay of processed ones changes nothing.

mod common;

use chrono::Utc;
use common::{TestDb, execute_scalar, open_store};
use ordersync::config::Config;
use ordersync::model::ProviderKind;
use ordersync::store::{DeliverySource, InboxFilter, NewDelivery, Store};
use std::process::{Command, Output};
use std::sync::Arc;

const BIN: &str = env!("CARGO_BIN_EXE_ordersync");
const ACCOUNT: &str = "cafe-1";

fn delivery(event_id: &str, order: &str, status: &str, updated: &str) -> NewDelivery {
    let body = format!(
        r#"{{"eventId":"{event_id}","event":"web.order.updated","data":{{"order":{{"orderId":"{order}","source":"web","status":"{status}","items":[{{"name":"Tea","quantity":1,"unitPrice":2.5}}],"total":2.5,"currency":"GBP","updatedAt":"{updated}"}}}}}}"#
    );
    NewDelivery {
        provider: ProviderKind::Grafterr,
        account: ACCOUNT.into(),
        source: DeliverySource::Webhook,
        event_id: Some(event_id.into()),
        event_type: Some("web.order.updated".into()),
        object_id: Some(order.into()),
        body,
        received_at: Utc::now(),
    }
}

fn ordersync(config: &std::path::Path, args: &[&str], broken: bool) -> Output {
    let mut command = Command::new(BIN);
    command.args(args).arg("--config").arg(config);
    if broken {
        command.env("ORDERSYNC_TEST_BROKEN_MAPPING", "grafterr");
    } else {
        command.env_remove("ORDERSYNC_TEST_BROKEN_MAPPING");
    }
    let output = command.output().expect("run ordersync");
    assert!(
        output.status.success(),
        "ordersync {args:?}: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

async fn states(store: &Arc<dyn Store>) -> Vec<String> {
    let mut states: Vec<String> = store
        .inbox(&InboxFilter {
            limit: 100,
            ..InboxFilter::default()
        })
        .await
        .expect("inbox")
        .into_iter()
        .map(|d| d.state)
        .collect();
    states.sort();
    states
}

async fn stored(store: &Arc<dyn Store>) -> Vec<(String, Option<String>)> {
    store
        .orders_of(ProviderKind::Grafterr.as_str(), ACCOUNT)
        .await
        .expect("orders")
        .into_iter()
        .map(|o| (o.external_id, o.status))
        .collect()
}

async fn failed_deliveries_are_processed_by_a_replay_after_the_fix(db: TestDb) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ordersync.toml");
    let text = format!(
        "{}[webhooks]\nlisten = \"127.0.0.1:0\"\n[[grafterr]]\nname = \"{ACCOUNT}\"\n\
         base_url = \"http://127.0.0.1:9/dev/\"\napi_key = \"k\"\nclient_id = \"c\"\n\
         client_secret = \"s\"\npath_token = \"path-token-0123456789\"\n",
        db.toml()
    );
    std::fs::write(&path, &text).expect("config");
    let config = Config::from_toml(&text).expect("config");
    let store = open_store(&config).await;
    store
        .record_deliveries(
            &[
                delivery("e1", "A", "placed", "2026-05-22T10:00:00Z"),
                delivery("e2", "A", "ready", "2026-05-22T10:05:00Z"),
                delivery("e3", "B", "accepted", "2026-05-22T10:01:00Z"),
            ],
            None,
        )
        .await
        .expect("stored");

    // The mapping does not know these yet: they fail, kept with the reason.
    ordersync(&path, &["run", "--once"], true);
    assert_eq!(states(&store).await, ["failed", "failed", "failed"]);
    assert!(stored(&store).await.is_empty());
    let listed = ordersync(
        &path,
        &[
            "inbox",
            "list",
            "--state",
            "failed",
            "--provider",
            "grafterr",
        ],
        false,
    );
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert_eq!(listed.matches("grafterr/cafe-1").count(), 3, "{listed}");
    assert!(listed.contains("mapping switched off"), "{listed}");

    // After the fix, a replay maps them: the newest copy of A wins whatever the order.
    let replayed = ordersync(&path, &["inbox", "replay", "--provider", "grafterr"], false);
    let replayed = String::from_utf8_lossy(&replayed.stdout);
    assert!(replayed.contains(r#""requeued":3"#), "{replayed}");
    assert_eq!(
        states(&store).await,
        ["processed", "processed", "processed"]
    );
    let orders = vec![
        ("A".to_owned(), Some("ready".to_owned())),
        ("B".to_owned(), Some("accepted".to_owned())),
    ];
    assert_eq!(stored(&store).await, orders);

    // Replaying processed deliveries (all, or one by id) changes nothing.
    let history = "SELECT CAST(count(*) AS TEXT) FROM order_events";
    let before = execute_scalar(&db, history).await;
    ordersync(&path, &["inbox", "replay"], false);
    let first_id = store
        .inbox(&InboxFilter {
            limit: 100,
            ..InboxFilter::default()
        })
        .await
        .expect("inbox")
        .last()
        .expect("one")
        .id
        .to_string();
    ordersync(&path, &["inbox", "replay", &first_id], false);
    assert_eq!(execute_scalar(&db, history).await, before);
    assert_eq!(stored(&store).await, orders);
    assert_eq!(
        states(&store).await,
        ["processed", "processed", "processed"]
    );

    // Bad input is named with its fix.
    let output = Command::new(BIN)
        .args(["inbox", "list", "--state", "done", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--state `done`"));
}
on_both_backends!(failed_deliveries_are_processed_by_a_replay_after_the_fix);
