//! Grafterr end to end against the sandbox: pushed deliveries through the path-token route into
//! the inbox, duplicates and reordering, bodies without items completed by a read with a
//! refreshed token, refusals that store nothing, and actions refused at enqueue.

mod common;

use common::{TestDb, execute_scalar, open_store, shutdown_deadline, wait_until};
use ordersync::app::{App, Daemon};
use ordersync::config::Config;
use ordersync::model::ProviderKind;
use ordersync::outbox::request::ActionRequest;
use ordersync::providers::grafterr::webhook::sign;
use ordersync::sandbox::grafterr::PushPlan;
use ordersync::sandbox::{Faults, Sandbox, SandboxConfig};
use ordersync::server::Server;
use ordersync::server::webhooks;
use ordersync::store::{InboxFilter, Store};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const ACCOUNT: &str = "cafe-1";

fn config_text(db: &TestDb, sandbox: &Sandbox, spec: &SandboxConfig) -> String {
    let mut text = db.toml();
    text.push_str(
        "[webhooks]\nlisten = \"127.0.0.1:0\"\n[http]\nmin_backoff = \"50ms\"\nmax_backoff = \"300ms\"\n",
    );
    for account in &spec.grafterr {
        text.push_str(&format!(
            "[[grafterr]]\nname = \"{}\"\nbase_url = \"{}\"\napi_key = \"{}\"\nclient_id = \"{}\"\n\
             client_secret = \"{}\"\npath_token = \"{}\"\nrate_limit = \"40/s\"\n",
            account.name,
            sandbox.grafterr_base_url(),
            account.api_key,
            account.client_id,
            account.client_secret,
            account.path_token,
        ));
        if let Some(secret) = &account.signing_secret {
            text.push_str(&format!("signing_secret = \"{secret}\"\n"));
        }
    }
    text
}

struct Running {
    store: Arc<dyn Store>,
    daemon: Daemon,
    server: Server,
}

impl Running {
    async fn start(config: &Config) -> Running {
        let store = open_store(config).await;
        let app = App::build(config, &store).expect("app");
        let router = webhooks::router(app.hooks.clone(), store.clone(), &config.webhooks);
        let server = Server::start(config.webhooks.listen, router)
            .await
            .expect("webhook listener");
        let daemon = Daemon::start(app).await.expect("daemon");
        Running {
            store,
            daemon,
            server,
        }
    }

    /// The account's webhook URL without its path token.
    fn url(&self) -> String {
        format!("http://{}/webhooks/grafterr/{ACCOUNT}", self.server.addr())
    }

    async fn settled(&self) {
        let store = self.store.clone();
        wait_until(Duration::from_secs(60), "the inbox processed", || {
            let store = store.clone();
            async move {
                store
                    .pending_deliveries(ProviderKind::Grafterr.as_str(), ACCOUNT, 1)
                    .await
                    .expect("inbox")
                    .is_empty()
            }
        })
        .await;
    }

    async fn stop(self) -> Arc<dyn Store> {
        self.server.stop().await;
        assert!(self.daemon.shutdown(shutdown_deadline()).await.is_empty());
        self.store
    }
}

async fn start_sandbox(spec: &SandboxConfig) -> Sandbox {
    Sandbox::start(([127, 0, 0, 1], 0).into(), spec.clone())
        .await
        .expect("sandbox")
}

/// Stored orders: (channel, id) → (status, updated at).
async fn stored(store: &Arc<dyn Store>) -> BTreeMap<(String, String), (String, i64)> {
    store
        .orders_of(ProviderKind::Grafterr.as_str(), ACCOUNT)
        .await
        .expect("orders")
        .into_iter()
        .map(|o| {
            (
                (o.channel, o.external_id),
                (
                    o.status.unwrap_or_default(),
                    o.upstream_updated_at.timestamp(),
                ),
            )
        })
        .collect()
}

fn truth(sandbox: &Sandbox) -> BTreeMap<(String, String), (String, i64)> {
    sandbox
        .grafterr()
        .truth(ACCOUNT)
        .into_iter()
        .map(|o| ((o.source, o.order_id), (o.status, o.updated_at.timestamp())))
        .collect()
}

async fn deliveries_with_duplicates_and_reordering_end_equal_to_the_sandbox(db: TestDb) {
    let mut spec = SandboxConfig::graas(0, 0).with_grafterr(1, 500);
    spec.faults = Faults {
        rate_limit_per_sec: Some(40),
        server_error_ratio: 0.05,
        truncate_ratio: 0.03,
        ..Faults::default()
    };
    let sandbox = start_sandbox(&spec).await;
    let config = Config::from_toml(&config_text(&db, &sandbox, &spec)).expect("config");
    let running = Running::start(&config).await;
    let plan = PushPlan {
        updates_per_order: 2,
        duplicate_ratio: 0.1,
        reorder_ratio: 0.1,
        no_items_ratio: 0.05,
        no_event_id_ratio: 0.1,
        forged_ratio: 0.02,
        concurrency: 16,
    };
    sandbox
        .grafterr()
        .push(ACCOUNT, &running.url(), &plan)
        .await;
    running.settled().await;

    let expected = truth(&sandbox);
    let sources: std::collections::BTreeSet<&str> =
        expected.keys().map(|(source, _)| source.as_str()).collect();
    assert_eq!(sources.len(), 3, "pos, web and selfkiosk orders");
    assert_eq!(expected.len(), 500);
    assert_eq!(stored(&running.store).await, expected);

    // Totals converted exactly from decimals.
    let want: i64 = sandbox
        .grafterr()
        .truth(ACCOUNT)
        .iter()
        .map(|o| o.total_minor)
        .sum();
    let got = execute_scalar(
        &db,
        "SELECT CAST(sum(total_minor) AS TEXT) FROM orders WHERE provider = 'grafterr'",
    )
    .await;
    assert_eq!(got, want.to_string());

    // Each event stored once; repeats acknowledged and dropped; forgeries refused.
    let stats = sandbox.grafterr().stats(ACCOUNT).expect("stats");
    assert!(stats.duplicates_sent > 50, "{stats:?}");
    assert!(stats.without_items_sent > 20, "{stats:?}");
    assert!(stats.forged_sent > 0 && stats.forged_refused == stats.forged_sent);
    assert_eq!(stats.deliveries_acknowledged, stats.deliveries_sent);
    assert!(stats.order_reads >= stats.without_items_sent, "{stats:?}");
    assert_eq!(stats.traffic.over_limit, 0, "{stats:?}");
    let inbox = running
        .store
        .inbox(&InboxFilter {
            provider: Some("grafterr".into()),
            limit: 100_000,
            ..InboxFilter::default()
        })
        .await
        .expect("inbox");
    assert_eq!(
        inbox.len() as u64,
        1_500,
        "500 orders × 3 events, no repeats"
    );
    assert!(
        inbox.iter().all(|d| d.state == "processed"),
        "{:?}",
        inbox.iter().find(|d| d.state != "processed")
    );

    // A replay of processed deliveries changes nothing: no order, no history row.
    let history = "SELECT CAST(count(*) AS TEXT) FROM order_events WHERE provider = 'grafterr'";
    let history_before = execute_scalar(&db, history).await;
    let before = stored(&running.store).await;
    let requeued = running
        .store
        .requeue_deliveries(&InboxFilter {
            provider: Some("grafterr".into()),
            ..InboxFilter::default()
        })
        .await
        .expect("requeue");
    assert_eq!(requeued, 1_500);
    running.settled().await;
    assert_eq!(stored(&running.store).await, before);
    assert_eq!(execute_scalar(&db, history).await, history_before);
    running.stop().await;
}
on_both_backends!(deliveries_with_duplicates_and_reordering_end_equal_to_the_sandbox);

async fn refused_deliveries_store_nothing(db: TestDb) {
    let mut spec = SandboxConfig::graas(0, 0).with_grafterr(1, 1);
    spec.grafterr[0].signing_secret = Some("hook-secret-1".into());
    let sandbox = start_sandbox(&spec).await;
    let config = Config::from_toml(&config_text(&db, &sandbox, &spec)).expect("config");
    let running = Running::start(&config).await;
    let token = &spec.grafterr[0].path_token;
    let body = r#"{"eventId":"e-1","event":"pos.order.created","data":{"order":{"orderId":"A","source":"pos","status":"placed","items":[{"name":"Tea","quantity":1,"unitPrice":2.5}],"total":2.5,"updatedAt":"2024-05-22T10:15:02Z"}}}"#;
    let http = reqwest::Client::new();
    let send = |path: String, signature: Option<String>, body: &'static str| {
        let http = http.clone();
        async move {
            let mut request = http.post(path).body(body);
            if let Some(signature) = signature {
                request = request.header("X-Grafterr-Signature", signature);
            }
            request.send().await.expect("send").status().as_u16()
        }
    };
    let url = running.url();
    let good = Some(sign("hook-secret-1", body.as_bytes()));
    let wrong = Some(sign("another-secret", body.as_bytes()));
    assert_eq!(
        send(format!("{url}/wrong-token-0000000000"), good.clone(), body).await,
        401
    );
    assert_eq!(send(url.clone(), good.clone(), body).await, 401, "no token");
    assert_eq!(send(format!("{url}/{token}"), wrong, body).await, 401);
    assert_eq!(send(format!("{url}/{token}"), None, body).await, 401);
    let not_json = "{not json";
    let signed_garbage = Some(sign("hook-secret-1", not_json.as_bytes()));
    assert_eq!(
        send(format!("{url}/{token}"), signed_garbage, not_json).await,
        400
    );
    let everything = InboxFilter {
        limit: 100,
        ..InboxFilter::default()
    };
    assert!(
        running
            .store
            .inbox(&everything)
            .await
            .expect("inbox")
            .is_empty()
    );

    assert_eq!(
        send(format!("{url}/{token}"), good.clone(), body).await,
        200
    );
    assert_eq!(
        send(format!("{url}/{token}"), good, body).await,
        200,
        "a repeat"
    );
    running.settled().await;
    assert_eq!(
        running.store.inbox(&everything).await.expect("inbox").len(),
        1
    );
    let orders = stored(&running.store).await;
    assert_eq!(
        orders
            .get(&("pos".to_owned(), "A".to_owned()))
            .map(|(s, _)| s.as_str()),
        Some("placed")
    );

    // Grafterr takes no commands: refused at enqueue, with the reason.
    let refused = ActionRequest {
        account: ACCOUNT.into(),
        kind: "accept".into(),
        channel: Some("pos".into()),
        order_id: Some("A".into()),
        ..ActionRequest::default()
    }
    .into_action(&config)
    .expect_err("no commands");
    assert!(
        refused
            .to_string()
            .contains("Grafterr has no order commands"),
        "{refused}"
    );
    running.stop().await;
}
on_both_backends!(refused_deliveries_store_nothing);

async fn bodies_without_items_are_read_with_a_refreshed_token(db: TestDb) {
    let mut spec = SandboxConfig::graas(0, 0).with_grafterr(1, 40);
    spec.grafterr_options.token_ttl_secs = 3600;
    let sandbox = start_sandbox(&spec).await;
    let config = Config::from_toml(&config_text(&db, &sandbox, &spec)).expect("config");
    let running = Running::start(&config).await;
    let bare = PushPlan {
        no_items_ratio: 1.0,
        concurrency: 4,
        ..PushPlan::default()
    };
    sandbox
        .grafterr()
        .push(ACCOUNT, &running.url(), &bare)
        .await;
    running.settled().await;
    assert_eq!(stored(&running.store).await, truth(&sandbox));
    let first = sandbox.grafterr().stats(ACCOUNT).expect("stats");
    assert_eq!(
        first.token_requests, 1,
        "one token for every read: {first:?}"
    );
    assert_eq!(first.order_reads, 40);

    // Tokens revoked upstream: the next read is refused once, a new token is fetched, and
    // every order is read with it.
    sandbox.grafterr().revoke_tokens();
    let updates = PushPlan {
        updates_per_order: 1,
        no_items_ratio: 1.0,
        concurrency: 4,
        ..PushPlan::default()
    };
    sandbox
        .grafterr()
        .push(ACCOUNT, &running.url(), &updates)
        .await;
    running.settled().await;
    assert_eq!(stored(&running.store).await, truth(&sandbox));
    let after = sandbox.grafterr().stats(ACCOUNT).expect("stats");
    assert!(after.tokens_refused >= 1, "{after:?}");
    assert_eq!(after.token_requests, 2, "one refresh: {after:?}");
    let statuses: std::collections::BTreeSet<String> = stored(&running.store)
        .await
        .into_values()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(statuses.into_iter().collect::<Vec<_>>(), ["accepted"]);
    running.stop().await;
}
on_both_backends!(bodies_without_items_are_read_with_a_refreshed_token);
