//! Lagerkoll end to end against the sandbox: reconciling webhook registrations (from empty,
//! from a partial set, with a stale one of ours and someone else's), the 200-per-minute
//! budget, 429 + Retry-After, a revoked key stopping one store, and deliveries (unknown guids
//! refused, orders mapped with the store as channel).

mod common;

use common::{TestDb, open_store};
use ordersync::app::App;
use ordersync::config::{Config, LagerkollAccount};
use ordersync::model::ProviderKind;
use ordersync::providers::http::HttpClient;
use ordersync::sandbox::lagerkoll::LagerkollStoreSpec;
use ordersync::sandbox::{Sandbox, SandboxConfig};
use ordersync::server::Server;
use ordersync::server::webhooks;
use ordersync::store::{InboxFilter, Store};
use ordersync::sync::job::{Scheduled, ScheduledJob};
use ordersync::sync::lagerkoll::Reconciler;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const STORE: &str = "sthlm-1";

/// One `[[lagerkoll]]` entry per sandbox store, each with `webhooks`.
fn config_text(
    db: &TestDb,
    sandbox: &Sandbox,
    public_url: &str,
    stores: &[LagerkollStoreSpec],
    webhooks: &[(&str, &str)],
) -> String {
    let mut text = db.toml();
    text.push_str(
        "[webhooks]\nlisten = \"127.0.0.1:0\"\n[http]\nmin_backoff = \"50ms\"\nmax_backoff = \"300ms\"\n",
    );
    let list: Vec<String> = webhooks
        .iter()
        .map(|(feature, method)| {
            format!("{{ feature_id = \"{feature}\", feature_method = \"{method}\" }}")
        })
        .collect();
    for store in stores {
        text.push_str(&format!(
            "[[lagerkoll]]\nname = \"{}\"\nstore = {}\napi_key = \"{}\"\nbase_url = \"{}\"\n\
             public_url = \"{public_url}\"\npath_token = \"{}\"\nwebhooks = [{}]\n\
             reconcile_schedule = \"0 0 0 1 1 *\"\n",
            store.name,
            store.store_id,
            store.api_key,
            sandbox.lagerkoll_base_url(),
            store.path_token,
            list.join(", "),
        ));
    }
    text
}

/// A webhook listener, and the app whose inbox workers map what it stores.
struct Listener {
    store: Arc<dyn Store>,
    server: Server,
    app: App,
}

impl Listener {
    /// Serves on `bound`, the socket whose address the config names.
    fn start(config: &Config, store: Arc<dyn Store>, bound: tokio::net::TcpListener) -> Listener {
        let app = App::build(config, &store).expect("app");
        let router = webhooks::router(app.hooks.clone(), store.clone(), &config.webhooks);
        let server = Server::serve(bound, router).expect("listener");
        Listener { store, server, app }
    }

    fn public_url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Maps every stored delivery now.
    async fn drain(&self) {
        for worker in &self.app.workers {
            worker
                .drain(&CancellationToken::new())
                .await
                .expect("inbox drained");
        }
    }
}

/// A listener on a free port first (its address is the public URL), then the config naming it.
async fn setup(
    db: &TestDb,
    sandbox: &Sandbox,
    spec: &SandboxConfig,
    webhooks: &[(&str, &str)],
) -> (Config, Listener) {
    // The listener's address goes into the config: bound first and kept, so no other socket
    // (an outgoing connection included) takes the port in between.
    let bound = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a listener");
    let addr = bound.local_addr().expect("addr");
    let text = config_text(
        db,
        sandbox,
        &format!("http://{addr}"),
        &spec.lagerkoll,
        webhooks,
    )
    .replace(
        "[webhooks]\nlisten = \"127.0.0.1:0\"",
        &format!("[webhooks]\nlisten = \"{addr}\""),
    );
    let config = Config::from_toml(&text).expect("config");
    let store = open_store(&config).await;
    let listener = Listener::start(&config, store, bound);
    assert_eq!(listener.public_url(), format!("http://{addr}"));
    (config, listener)
}

fn reconciler(config: &Config, store: &Arc<dyn Store>, name: &str) -> Reconciler {
    let account: LagerkollAccount = config.lagerkoll_account(name).expect("account").clone();
    let client =
        ordersync::app::lagerkoll::client(HttpClient::new(&config.http).expect("http"), &account);
    Reconciler::new(client, store.clone(), account)
}

/// Reconciles once; the run's report.
async fn reconcile(config: &Config, store: &Arc<dyn Store>) -> serde_json::Value {
    use ordersync::sync::job::Job;
    reconciler(config, store, STORE)
        .run(&CancellationToken::new())
        .await
        .expect("reconciled")
}

async fn start_sandbox(spec: &SandboxConfig) -> Sandbox {
    Sandbox::start(([127, 0, 0, 1], 0).into(), spec.clone())
        .await
        .expect("sandbox")
}

async fn registrations_are_reconciled_and_only_ours_deleted(db: TestDb) {
    let spec = SandboxConfig::graas(0, 0).with_lagerkoll(1);
    let sandbox = start_sandbox(&spec).await;
    let sim = sandbox.lagerkoll().clone();
    let first = [("orders-feature", "orderCreated")];
    let (config, listener) = setup(&db, &sandbox, &spec, &first).await;
    let store = listener.store.clone();

    // From empty: created, recorded, fired once.
    let report = reconcile(&config, &store).await;
    assert_eq!(
        (report["created"].as_u64(), report["fired"].as_u64()),
        (Some(1), Some(1)),
        "{report}"
    );
    let our_url = config
        .lagerkoll_account(STORE)
        .expect("account")
        .webhook_url();
    let listed = sim.webhooks(STORE);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].url, our_url);
    assert_eq!(listed[0].feature_method, "orderCreated");

    // From a partial set: two more configured, the first kept.
    let all = [
        ("orders-feature", "orderCreated"),
        ("orders-feature", "orderUpdated"),
        ("stock", "stockChanged"),
    ];
    let config = Config::from_toml(
        &config_text(&db, &sandbox, &listener.public_url(), &spec.lagerkoll, &all).replace(
            "[webhooks]\nlisten = \"127.0.0.1:0\"",
            &format!("[webhooks]\nlisten = \"{}\"", listener.server.addr()),
        ),
    )
    .expect("config");
    let report = reconcile(&config, &store).await;
    assert_eq!(
        (report["kept"].as_u64(), report["created"].as_u64()),
        (Some(1), Some(2)),
        "{report}"
    );
    assert_eq!(sim.webhooks(STORE).len(), 3);
    let stats = sim.stats(STORE).expect("stats");
    assert_eq!((stats.creates, stats.executes), (3, 3));
    // Each new webhook was fired at our listener, stored and accepted.
    assert_eq!(stats.deliveries_acknowledged, 3, "{stats:?}");

    // Someone else's webhook on the same feature, and `stock` dropped from the config: ours
    // is deleted, theirs is left alone.
    let foreign = sim.add_webhook(
        STORE,
        "stock",
        "stockChanged",
        "https://someone-else.example/hook",
    );
    let stale_guid = sim
        .webhooks(STORE)
        .into_iter()
        .find(|w| w.feature_id == "stock" && w.url == our_url)
        .expect("ours on stock")
        .guid;
    let config = Config::from_toml(
        &config_text(
            &db,
            &sandbox,
            &listener.public_url(),
            &spec.lagerkoll,
            &all[..2],
        )
        .replace(
            "[webhooks]\nlisten = \"127.0.0.1:0\"",
            &format!("[webhooks]\nlisten = \"{}\"", listener.server.addr()),
        ),
    )
    .expect("config");
    let mut plan = reconciler(&config, &store, STORE)
        .plan()
        .await
        .expect("plan");
    assert_eq!(plan.delete.len(), 1);
    assert_eq!(plan.others.len(), 1, "someone else's is listed as such");
    assert_eq!(plan.others[0].id, foreign.id);
    reconciler(&config, &store, STORE)
        .apply(&mut plan, &CancellationToken::new())
        .await
        .expect("applied");
    let left = sim.webhooks(STORE);
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(left.iter().any(|w| w.id == foreign.id));
    assert!(!left.iter().any(|w| w.guid == stale_guid));
    // Nothing more to do.
    let plan = reconciler(&config, &store, STORE)
        .plan()
        .await
        .expect("plan");
    assert_eq!(plan.changes(), 0, "{plan:?}");
    assert_eq!(plan.keep.len(), 2);

    // Deliveries: a deleted or unknown guid is refused and not stored; an order is mapped
    // with the store as its channel.
    let before = store
        .inbox(&InboxFilter {
            limit: 1_000,
            ..InboxFilter::default()
        })
        .await
        .expect("inbox")
        .len();
    let http = reqwest::Client::new();
    for guid in [stale_guid.as_str(), "not-one-of-ours"] {
        let status = http
            .post(&our_url)
            .json(&json!({ "guid": guid, "featureMethod": "orderCreated", "data": { "id": 1 } }))
            .send()
            .await
            .expect("post")
            .status();
        assert_eq!(status.as_u16(), 401, "{guid}");
    }
    let wrong_token = our_url.rsplit_once('/').expect("token").0.to_owned() + "/wrong-token-000000";
    let ours = left
        .iter()
        .find(|w| w.feature_method == "orderCreated" && w.url == our_url)
        .expect("ours");
    let status = http
        .post(&wrong_token)
        .json(&json!({ "guid": ours.guid, "featureMethod": "orderCreated", "data": { "id": 1 } }))
        .send()
        .await
        .expect("post")
        .status();
    assert_eq!(status.as_u16(), 401);
    assert_eq!(
        store
            .inbox(&InboxFilter {
                limit: 1_000,
                ..InboxFilter::default()
            })
            .await
            .expect("inbox")
            .len(),
        before
    );
    let orders: Vec<serde_json::Value> = (1..=20)
        .map(|i| json!({ "orderId": format!("LK-{i}"), "status": "paid", "total": format!("{i}9.50"), "currency": "SEK" }))
        .collect();
    sim.fire_orders(STORE, "orders-feature", "orderCreated", orders, 4)
        .await;
    // Someone else's webhook is not on this feature/method; a repeat of the same body is one.
    sim.fire(
        STORE,
        "orders-feature",
        "orderCreated",
        json!({ "orderId": "LK-1", "status": "paid", "total": "19.50" }),
    )
    .await;
    listener.drain().await;
    let stored = store
        .orders_of(ProviderKind::Lagerkoll.as_str(), STORE)
        .await
        .expect("orders");
    assert_eq!(stored.len(), 20);
    assert!(
        stored
            .iter()
            .all(|o| o.channel == "9875" && o.status.as_deref() == Some("paid"))
    );
    let inbox = store
        .inbox(&InboxFilter {
            provider: Some("lagerkoll".into()),
            limit: 1_000,
            ..InboxFilter::default()
        })
        .await
        .expect("inbox");
    let ignored = inbox.iter().filter(|d| d.state == "ignored").count();
    assert_eq!(ignored, 3, "the three test deliveries of the registrations");
    assert_eq!(inbox.iter().filter(|d| d.state == "processed").count(), 21);
    listener.server.stop().await;
}
on_both_backends!(registrations_are_reconciled_and_only_ours_deleted);

async fn a_429_pauses_the_store_for_its_retry_after_and_900001_stops_only_that_store(db: TestDb) {
    let spec = SandboxConfig::graas(0, 0).with_lagerkoll(2);
    let sandbox = start_sandbox(&spec).await;
    let sim = sandbox.lagerkoll().clone();
    let hooks = [("orders-feature", "orderCreated")];
    let (config, listener) = setup(&db, &sandbox, &spec, &hooks).await;
    let store = listener.store.clone();

    sim.force_rate_limited(STORE, 1);
    let report = reconcile(&config, &store).await;
    assert_eq!(report["created"].as_u64(), Some(1), "{report}");
    let stats = sim.stats(STORE).expect("stats");
    assert_eq!(stats.forced_rate_limited, 1);
    let waited = stats
        .shortest_wait_after_429_ms
        .expect("a request after the 429");
    assert!(waited >= 2_000, "waited {waited} ms after Retry-After: 2");
    assert!(
        waited < 3_500,
        "waited {waited} ms: exactly Retry-After, not a long backoff"
    );

    // Store 1's key is revoked: its reconciler stops with the reason; store 2 goes on.
    sim.revoke(STORE);
    let stopped = Scheduled::new(
        reconciler(&config, &store, STORE),
        "0 0 0 1 1 *",
        store.clone(),
    );
    let result = stopped.tick(&CancellationToken::new()).await;
    let error = match result {
        Some(Err(error)) => error,
        other => panic!("expected the store to stop: {other:?}"),
    };
    assert!(
        error.contains("Lagerkoll rejected store/api_key"),
        "{error}"
    );
    let requests = sim.stats(STORE).expect("stats").requests;
    assert!(
        stopped.tick(&CancellationToken::new()).await.is_none(),
        "stopped until restart"
    );
    assert_eq!(
        sim.stats(STORE).expect("stats").requests,
        requests,
        "no request after the stop"
    );
    let streams = store.streams().await.expect("streams");
    let stream = streams
        .iter()
        .find(|s| s.stream.account == STORE && s.stream.resource == "webhooks")
        .expect("stream recorded");
    assert!(
        stream
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("900001")),
        "{stream:?}"
    );

    let other = Scheduled::new(
        reconciler(&config, &store, "sthlm-2"),
        "0 0 0 1 1 *",
        store.clone(),
    );
    let result = other.tick(&CancellationToken::new()).await;
    assert!(matches!(result, Some(Ok(_))), "{result:?}");
    assert_eq!(sim.webhooks("sthlm-2").len(), 1);

    // The API feature switched off: the same, with its own reason.
    sim.deactivate_api("sthlm-2");
    let result = other.tick(&CancellationToken::new()).await;
    assert!(
        matches!(&result, Some(Err(e)) if e.contains("activate the API feature")),
        "{result:?}"
    );
    listener.server.stop().await;
}
on_both_backends!(a_429_pauses_the_store_for_its_retry_after_and_900001_stops_only_that_store);

async fn reconciling_300_webhooks_stays_within_200_a_minute(db: TestDb) {
    let mut spec = SandboxConfig::graas(0, 0).with_lagerkoll(1);
    let features: Vec<String> = (0..30).map(|f| format!("feature-{f:02}")).collect();
    spec.lagerkoll[0].features = features.clone();
    let sandbox = start_sandbox(&spec).await;
    let sim = sandbox.lagerkoll().clone();
    let wanted: Vec<(String, String)> = features
        .iter()
        .flat_map(|f| (0..10).map(move |m| (f.clone(), format!("method{m}"))))
        .collect();
    let hooks: Vec<(&str, &str)> = wanted
        .iter()
        .map(|(f, m)| (f.as_str(), m.as_str()))
        .collect();
    let (config, listener) = setup(&db, &sandbox, &spec, &hooks).await;
    let started = std::time::Instant::now();
    let report = reconcile(&config, &listener.store).await;
    let took = started.elapsed();
    assert_eq!(report["created"].as_u64(), Some(300), "{report}");
    assert_eq!(report["fired"].as_u64(), Some(300), "{report}");
    let stats = sim.stats(STORE).expect("stats");
    assert_eq!(stats.over_limit, 0, "{stats:?}");
    assert!(stats.max_per_minute <= 200, "{stats:?}");
    // 1 + 30 + 300 + 300 requests at 200 a minute: a little over three minutes, not less.
    assert_eq!(stats.requests, 631, "{stats:?}");
    assert!(took > Duration::from_secs(180), "{took:?}");
    assert_eq!(stats.deliveries_acknowledged, 300);
    listener.server.stop().await;
}
on_both_backends!(reconciling_300_webhooks_stays_within_200_a_minute);

async fn the_webhooks_command_shows_the_plan_and_applies_it(db: TestDb) {
    let spec = SandboxConfig::graas(0, 0).with_lagerkoll(1);
    let sandbox = start_sandbox(&spec).await;
    let sim = sandbox.lagerkoll().clone();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ordersync.toml");
    let text = config_text(
        &db,
        &sandbox,
        "http://127.0.0.1:9",
        &spec.lagerkoll,
        &[("orders-feature", "orderCreated")],
    );
    std::fs::write(&path, text).expect("config");
    let foreign = sim.add_webhook(
        STORE,
        "orders-feature",
        "orderCreated",
        "https://other.example/x",
    );
    let command = |apply: bool| {
        let path = path.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ordersync"));
                command
                    .args(["lagerkoll", "webhooks", "--account", STORE, "--config"])
                    .arg(&path);
                if apply {
                    command.arg("--apply");
                }
                let output = command.output().expect("run");
                assert!(
                    output.status.success(),
                    "{}",
                    String::from_utf8_lossy(&output.stderr)
                );
                String::from_utf8_lossy(&output.stdout).into_owned()
            })
            .await
            .expect("joined")
        }
    };
    let shown = command(false).await;
    assert!(
        shown.contains("create") && shown.contains("orders-feature orderCreated"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("other   {:>8}", foreign.id)),
        "{shown}"
    );
    assert!(shown.contains("run with --apply"), "{shown}");
    assert!(
        !shown.contains("lagerkoll-path-token"),
        "the token is not printed: {shown}"
    );
    assert_eq!(
        sim.webhooks(STORE).len(),
        1,
        "nothing changed without --apply"
    );

    let applied = command(true).await;
    assert!(
        applied.contains("applied: 1 created (and fired 1)"),
        "{applied}"
    );
    assert_eq!(sim.webhooks(STORE).len(), 2);
    let again = command(false).await;
    assert!(again.contains("keep"), "{again}");
    assert!(!again.contains("create "), "{again}");
}
on_both_backends!(the_webhooks_command_shows_the_plan_and_applies_it);
