//! Get It Done end to end against the sandbox: signed webhooks into the inbox, debounced polls,
//! the re-poll healing dropped deliveries, tokens, and commands with their confirmation.

mod common;

use common::{TestDb, open_store, shutdown_deadline, wait_until};
use ordersync::app::{App, Daemon};
use ordersync::config::Config;
use ordersync::model::{ActionState, ProviderKind};
use ordersync::outbox::request::ActionRequest;
use ordersync::providers::getitdone::signature;
use ordersync::sandbox::getitdone::{DeliveryFaults, HOLD_REASON, REFUSED_REASON};
use ordersync::sandbox::{Faults, Mutations, Sandbox, SandboxConfig};
use ordersync::server::Server;
use ordersync::server::webhooks;
use ordersync::store::Store;
use ordersync::sync::job::ScheduledJob;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const ACCOUNT: &str = "gid-1";
const SECRET: &str = "gid-hook-secret-1";

/// The configuration for the sandbox's Get It Done accounts; `extra` goes into each account.
fn config_text(db: &TestDb, sandbox: &Sandbox, spec: &SandboxConfig, extra: &str) -> String {
    let mut text = db.toml();
    text.push_str(
        "[outbox]\npoll_interval = \"50ms\"\nmin_backoff = \"100ms\"\nmax_backoff = \"300ms\"\n\
         [webhooks]\nlisten = \"127.0.0.1:0\"\n[http]\nmin_backoff = \"50ms\"\nmax_backoff = \"300ms\"\n",
    );
    for account in &spec.getitdone {
        text.push_str(&format!(
            "[[getitdone]]\nname = \"{}\"\nbase_url = \"{}\"\nclient_id = \"{}\"\n\
             client_secret = \"{}\"\nwebhook_secrets = [\"{}\"]\ndebounce = \"200ms\"\n\
             repoll_schedule = \"0 0 0 1 1 *\"\nconfirm_schedule = \"0 0 0 1 1 *\"\n{extra}\n",
            account.name,
            sandbox.base_url(),
            account.client_id,
            account.client_secret,
            account.webhook_secret,
        ));
    }
    text
}

async fn start_sandbox(spec: &SandboxConfig) -> Sandbox {
    Sandbox::start(([127, 0, 0, 1], 0).into(), spec.clone())
        .await
        .expect("sandbox")
}

/// The daemon in this process: its jobs, workers, dispatchers and webhook listener.
struct Running {
    store: Arc<dyn Store>,
    app_jobs: Vec<Arc<dyn ScheduledJob>>,
    daemon: Option<Daemon>,
    server: Option<Server>,
}

impl Running {
    async fn start(config: &Config, sandbox: &Sandbox) -> Running {
        let store = open_store(config).await;
        let app = App::build(config, &store).expect("app");
        let router = webhooks::router(app.hooks.clone(), store.clone(), &config.webhooks);
        let server = Server::start(config.webhooks.listen, router)
            .await
            .expect("webhook listener");
        for hook in &app.hooks {
            sandbox.getitdone().set_webhook_url(
                hook.receiver.account(),
                &format!(
                    "http://{}/webhooks/getitdone/{}",
                    server.addr(),
                    hook.receiver.account()
                ),
            );
        }
        let app_jobs = app.scheduled.clone();
        let daemon = Daemon::start(app).await.expect("daemon");
        Running {
            store,
            app_jobs,
            daemon: Some(daemon),
            server: Some(server),
        }
    }

    /// The job of `account` whose stream resource is `resource`.
    fn job(&self, resource: &str) -> Arc<dyn ScheduledJob> {
        self.app_jobs
            .iter()
            .find(|j| j.stream().account == ACCOUNT && j.stream().resource == resource)
            .cloned()
            .unwrap_or_else(|| panic!("no {resource} job"))
    }

    async fn stop(mut self) -> Arc<dyn Store> {
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        if let Some(daemon) = self.daemon.take() {
            assert!(daemon.shutdown(shutdown_deadline()).await.is_empty());
        }
        self.store
    }
}

/// Stored orders of the account: id → status.
async fn stored(store: &Arc<dyn Store>) -> BTreeMap<String, String> {
    store
        .orders_of(ProviderKind::GetItDone.as_str(), ACCOUNT)
        .await
        .expect("orders")
        .into_iter()
        .map(|o| (o.external_id, o.status.unwrap_or_default()))
        .collect()
}

async fn inbox_settled(store: &Arc<dyn Store>) -> bool {
    store
        .pending_deliveries(ProviderKind::GetItDone.as_str(), ACCOUNT, 1)
        .await
        .expect("inbox")
        .is_empty()
}

async fn deliveries_with_faults_converge_after_a_repoll(db: TestDb) {
    let mut spec = SandboxConfig::graas(0, 0).with_getitdone(1, 1_000);
    spec.faults = Faults {
        rate_limit_per_sec: Some(200),
        retry_after_secs: 1,
        server_error_ratio: 0.03,
        truncate_ratio: 0.02,
        ..Faults::default()
    };
    spec.getitdone_options.deliveries = DeliveryFaults {
        drop_ratio: 0.1,
        duplicate_ratio: 0.1,
        reorder_ratio: 0.1,
        bad_signature_ratio: 0.02,
        ..DeliveryFaults::default()
    };
    let sandbox = start_sandbox(&spec).await;
    let config = Config::from_toml(&config_text(&db, &sandbox, &spec, "rate_limit = \"200/s\""))
        .expect("config");
    let running = Running::start(&config, &sandbox).await;
    let sim = sandbox.getitdone().clone();

    // Every order is created, then a live marketplace changes them for a while.
    sim.announce_all();
    let churn = Mutations {
        per_tick: 20,
        new_per_tick: 2,
        ..Mutations::default()
    };
    for _ in 0..15 {
        sim.mutate(&churn);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_until(Duration::from_secs(60), "every delivery sent", || {
        let sim = sim.clone();
        async move { sim.undelivered() == 0 }
    })
    .await;
    let store = running.store.clone();
    wait_until(Duration::from_secs(60), "the inbox processed", || {
        let store = store.clone();
        async move { inbox_settled(&store).await }
    })
    .await;

    // One re-poll heals what dropped deliveries left stale.
    let repoll = running.job("orders");
    let report = repoll.tick(&CancellationToken::new()).await;
    assert!(matches!(report, Some(Ok(_))), "{report:?}");

    let truth: BTreeMap<String, String> = sim
        .truth(ACCOUNT)
        .into_iter()
        .map(|o| (o.order_id, o.status))
        .collect();
    let announced = sim.announced(ACCOUNT);
    let expected: BTreeMap<String, String> = truth
        .iter()
        .filter(|(id, _)| announced.contains(*id))
        .map(|(id, status)| (id.clone(), status.clone()))
        .collect();
    assert!(expected.len() > 900, "{} orders announced", expected.len());
    assert_eq!(stored(&store).await, expected);

    // Every acknowledged event is in the inbox once; the refused forgeries are not.
    let stats = sim.stats(ACCOUNT).expect("stats");
    assert!(stats.deliveries_dropped > 0 && stats.deliveries_duplicated > 0);
    assert_eq!(stats.bad_signatures_sent, stats.bad_signatures_refused);
    assert_eq!(stats.traffic.over_limit, 0, "{stats:?}");
    assert!(stats.traffic.server_errors > 0);
    let inbox = store.delivery_stats().await.expect("inbox");
    assert_eq!(inbox.len(), 1);
    assert_eq!(inbox[0].pending, 0);
    assert_eq!(inbox[0].failed, 0);

    // History is unbroken: each order's last recorded status is its status.
    for id in expected.keys().take(50) {
        let key = ordersync::model::OrderKey {
            provider: ProviderKind::GetItDone,
            account: ACCOUNT.into(),
            channel: String::new(),
            external_id: id.clone(),
        };
        let history = store.order_history(&key).await.expect("history");
        assert_eq!(
            history.last().and_then(|h| h.new_status.clone()).as_deref(),
            expected.get(id).map(String::as_str)
        );
        for pair in history.windows(2) {
            assert_eq!(pair[0].new_status, pair[1].old_status, "{id}: {history:?}");
        }
    }
    running.stop().await.close().await;
    sandbox.stop().await;
}
on_both_backends!(deliveries_with_faults_converge_after_a_repoll);

/// Posts `body` signed with `secret` at `timestamp` to the account's webhook.
async fn post(
    client: &reqwest::Client,
    url: &str,
    body: &[u8],
    secret: &str,
    timestamp: i64,
) -> reqwest::StatusCode {
    client
        .post(url)
        .header("X-GID-Timestamp", timestamp.to_string())
        .header("X-GID-Signature", signature::sign(secret, timestamp, body))
        .body(body.to_vec())
        .send()
        .await
        .expect("delivery")
        .status()
}

async fn webhook_ingress_answers_and_stores_as_documented(db: TestDb) {
    let spec = SandboxConfig::graas(0, 0).with_getitdone(1, 3);
    let sandbox = start_sandbox(&spec).await;
    let extra = "webhook_secrets = [\"gid-hook-secret-1\", \"next-secret\"]";
    let text = config_text(&db, &sandbox, &spec, "")
        .replace(&format!("webhook_secrets = [\"{SECRET}\"]"), extra);
    let text = format!("{text}\n[webhooks]\n").replace(
        "[webhooks]\nlisten = \"127.0.0.1:0\"\n",
        "[webhooks]\nlisten = \"127.0.0.1:0\"\nmax_body_bytes = 4096\n",
    );
    let config = Config::from_toml(text.trim_end_matches("[webhooks]\n")).expect("config");
    let running = Running::start(&config, &sandbox).await;
    let url = format!(
        "http://{}/webhooks/getitdone/{ACCOUNT}",
        running.server.as_ref().expect("server").addr()
    );
    let client = reqwest::Client::new();
    let now = chrono::Utc::now().timestamp();
    let event = br#"{"_eid":"e-1","_type":"OrderStatusEvent","_v":"1.1.0","orderId":"gid-1-job-000000","status":"open"}"#;

    assert_eq!(post(&client, &url, event, SECRET, now).await, 200);
    assert_eq!(
        post(&client, &url, event, SECRET, now).await,
        200,
        "a duplicate is acknowledged"
    );
    let rotated = br#"{"_eid":"e-2","_type":"OrderStatusEvent","orderId":"gid-1-job-000001"}"#;
    assert_eq!(post(&client, &url, rotated, "next-secret", now).await, 200);
    let unknown_type =
        br#"{"_eid":"e-3","_type":"InstallerRatedEvent","orderId":"gid-1-job-000002"}"#;
    assert_eq!(post(&client, &url, unknown_type, SECRET, now).await, 200);

    let refused = [
        (
            post(
                &client,
                &url,
                br#"{"_eid":"x1","_type":"OrderStatusEvent"}"#,
                "wrong",
                now,
            )
            .await,
            401,
        ),
        (
            post(
                &client,
                &url,
                br#"{"_eid":"x2","_type":"OrderStatusEvent"}"#,
                SECRET,
                now - 301,
            )
            .await,
            401,
        ),
        (post(&client, &url, b"not json", SECRET, now).await, 400),
        (
            post(&client, &url, br#"{"_eid":"x3"}"#, SECRET, now).await,
            400,
        ),
        (
            post(&client, &url, &vec![b' '; 5000], SECRET, now).await,
            413,
        ),
        (
            post(&client, &url.replace(ACCOUNT, "nobody"), event, SECRET, now).await,
            401,
        ),
        (
            client
                .post(&url)
                .body(event.to_vec())
                .send()
                .await
                .expect("unsigned")
                .status(),
            401,
        ),
    ];
    for (i, (got, want)) in refused.iter().enumerate() {
        assert_eq!(got.as_u16(), *want, "refusal {i}");
    }

    let store = running.store.clone();
    wait_until(Duration::from_secs(20), "the inbox processed", || {
        let store = store.clone();
        async move { inbox_settled(&store).await }
    })
    .await;
    // Three distinct events stored: the duplicate and every refusal left nothing.
    let stored_orders = stored(&store).await;
    assert_eq!(stored_orders.len(), 2, "{stored_orders:?}");
    let inbox = store.delivery_stats().await.expect("inbox");
    assert_eq!((inbox[0].pending, inbox[0].failed), (0, 0));
    let store = running.stop().await;
    let text = common::execute_scalar(
        &db,
        "SELECT count(*) || '/' || sum(CASE WHEN state = 'ignored' THEN 1 ELSE 0 END) FROM webhook_deliveries",
    )
    .await;
    assert_eq!(
        text, "3/1",
        "three deliveries stored, the unknown type ignored"
    );
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(webhook_ingress_answers_and_stores_as_documented);

async fn tokens_are_refreshed_and_a_second_refusal_stops_the_account(db: TestDb) {
    let mut spec = SandboxConfig::graas(0, 0).with_getitdone(1, 150);
    // Six seconds: the refresh margin (a quarter) stays well above a request's wait at the
    // rate gate even on a busy machine, so a 401 here means a token was not refreshed in time.
    spec.getitdone_options.token_ttl_secs = 6;
    let sandbox = start_sandbox(&spec).await;
    let config = Config::from_toml(&config_text(&db, &sandbox, &spec, "rate_limit = \"20/s\""))
        .expect("config");
    let running = Running::start(&config, &sandbox).await;
    let sim = sandbox.getitdone().clone();
    sim.announce_all();
    let store = running.store.clone();
    wait_until(Duration::from_secs(60), "150 orders stored", || {
        let store = store.clone();
        async move { stored(&store).await.len() == 150 }
    })
    .await;
    // The re-poll of 150 orders at 20/s outlives six-second tokens: refreshed before expiry.
    let repoll = running.job("orders");
    let before = sim.stats(ACCOUNT).expect("stats");
    assert!(matches!(
        repoll.tick(&CancellationToken::new()).await,
        Some(Ok(_))
    ));
    let after = sim.stats(ACCOUNT).expect("stats");
    assert!(after.tokens_issued > before.tokens_issued, "{after:?}");
    assert_eq!(
        after.unauthorized, 0,
        "tokens are refreshed before they expire"
    );

    // A token refused once is replaced and the request replayed.
    sim.refuse_tokens(ACCOUNT, 1);
    assert!(matches!(
        repoll.tick(&CancellationToken::new()).await,
        Some(Ok(_))
    ));
    assert_eq!(sim.stats(ACCOUNT).expect("stats").unauthorized, 1);

    // Refused again after the fresh token: the account stops, with the reason.
    sim.refuse_tokens(ACCOUNT, 1_000);
    match repoll.tick(&CancellationToken::new()).await {
        Some(Err(error)) => assert!(error.contains("rejected the credentials"), "{error}"),
        other => panic!("expected the credentials to be refused, got {other:?}"),
    }
    assert!(
        repoll.tick(&CancellationToken::new()).await.is_none(),
        "stopped"
    );
    running.stop().await.close().await;
    sandbox.stop().await;
}
on_both_backends!(tokens_are_refreshed_and_a_second_refusal_stops_the_account);

async fn enqueue(
    config: &Config,
    store: &Arc<dyn Store>,
    kind: &str,
    order: &str,
    edit: impl FnOnce(&mut ActionRequest),
) -> i64 {
    let mut request = ActionRequest {
        account: ACCOUNT.into(),
        kind: kind.into(),
        order_id: Some(order.into()),
        ..ActionRequest::default()
    };
    edit(&mut request);
    let action = request.into_action(config).expect("valid action");
    store.enqueue(&action).await.expect("enqueue").0.id
}

async fn state_of(store: &Arc<dyn Store>, id: i64) -> (String, Option<String>) {
    let action = store.action(id).await.expect("action").expect("exists");
    (action.state, action.last_error)
}

async fn wait_for_state(store: &Arc<dyn Store>, id: i64, state: ActionState) -> Option<String> {
    let mut last = None;
    for _ in 0..200 {
        let (now, error) = state_of(store, id).await;
        if now == state.as_str() {
            return error;
        }
        last = Some(now);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // What the inbox still holds tells a lost delivery from a delivery processed wrongly.
    let pending = store
        .pending_deliveries("getitdone", ACCOUNT, 100)
        .await
        .unwrap_or_default();
    let pending: Vec<String> = pending
        .iter()
        .map(|d| {
            format!(
                "{} {} {}",
                d.id,
                d.received_at,
                d.body.chars().take(200).collect::<String>()
            )
        })
        .collect();
    let stats = store.delivery_stats().await;
    panic!(
        "action {id} did not become {}: {last:?}\npending deliveries: {pending:#?}\nstats: {stats:?}",
        state.as_str()
    );
}

async fn commands_are_confirmed_by_event_or_status_and_never_resent_blindly(db: TestDb) {
    let mut spec = SandboxConfig::graas(0, 0).with_getitdone(1, 10);
    // Outcome events must arrive here (the sweep is tested on its own below): a sender that
    // keeps trying while a loaded machine's listener answers 503 for a while.
    spec.getitdone_options.delivery_attempts = 30;
    let sandbox = start_sandbox(&spec).await;
    let config = Config::from_toml(&config_text(&db, &sandbox, &spec, "")).expect("config");
    let running = Running::start(&config, &sandbox).await;
    let (sim, store) = (sandbox.getitdone().clone(), running.store.clone());
    let order = |n: usize| format!("{ACCOUNT}-job-{n:06}");

    // Accept is refused before anything is queued.
    let accept = ActionRequest {
        account: ACCOUNT.into(),
        kind: "accept".into(),
        order_id: Some(order(0)),
        ..ActionRequest::default()
    };
    let refused = accept.into_action(&config).expect_err("no accept");
    assert!(refused.message.contains("no accept command"), "{refused}");

    // Confirmed by the pushed CommandResultEvent.
    let link = enqueue(&config, &store, "link", &order(1), |r| {
        r.link_id = Some("OS-1".into())
    })
    .await;
    wait_for_state(&store, link, ActionState::Succeeded).await;

    // A CommandErrorEvent fails it with the upstream code.
    let bad = enqueue(&config, &store, "cancel", &order(2), |r| {
        r.reason = Some(REFUSED_REASON.into())
    })
    .await;
    let error = wait_for_state(&store, bad, ActionState::Failed)
        .await
        .unwrap_or_default();
    assert!(error.contains("INVALID_CANCELLATION_REASON"), "{error}");

    // A cancellation that does not cancel: the order shows what Get It Done did.
    let hold = enqueue(&config, &store, "cancel", &order(3), |r| {
        r.reason = Some(HOLD_REASON.into())
    })
    .await;
    wait_for_state(&store, hold, ActionState::Succeeded).await;

    // Without outcome events, the confirmation sweep reads the command status.
    sim.set_delivery_faults(DeliveryFaults {
        no_command_events: true,
        ..DeliveryFaults::default()
    });
    let quiet = enqueue(&config, &store, "link_invoicing", &order(4), |r| {
        r.link_id = Some("INV-4".into())
    })
    .await;
    wait_for_state(&store, quiet, ActionState::Sent).await;
    let sweep = running.job("commands");
    assert!(matches!(
        sweep.tick(&CancellationToken::new()).await,
        Some(Ok(_))
    ));
    assert_eq!(state_of(&store, quiet).await.0, "succeeded");

    // The answer to a POST is lost: the retry asks for the status and does not append twice.
    sim.set_delivery_faults(DeliveryFaults {
        lost_command_answer_ratio: 1.0,
        ..DeliveryFaults::default()
    });
    let lost = enqueue(&config, &store, "link", &order(5), |r| {
        r.link_id = Some("OS-5".into())
    })
    .await;
    wait_until(Duration::from_secs(20), "the lost answer's retry", || {
        let store = store.clone();
        async move {
            store
                .action(lost)
                .await
                .ok()
                .flatten()
                .is_some_and(|a| a.attempts >= 2 && a.state != "pending" && a.state != "in_flight")
        }
    })
    .await;
    sim.set_delivery_faults(DeliveryFaults::default());
    wait_for_state(&store, lost, ActionState::Succeeded).await;
    let truth: BTreeMap<String, Option<String>> = sim
        .truth(ACCOUNT)
        .into_iter()
        .map(|o| (o.order_id, o.external_id))
        .collect();
    assert_eq!(truth[&order(5)].as_deref(), Some("OS-5"), "attached once");
    assert_eq!(truth[&order(1)].as_deref(), Some("OS-1"));
    assert_eq!(sim.stats(ACCOUNT).expect("stats").repeated_commands, 0);

    // The polled snapshots show the effects.
    wait_until(Duration::from_secs(20), "the hold is synced", || {
        let store = store.clone();
        let id = order(3);
        async move { stored(&store).await.get(&id).map(String::as_str) == Some("on hold") }
    })
    .await;
    let stored_ids: HashSet<String> = stored(&store).await.into_keys().collect();
    assert!(stored_ids.contains(&order(1)));
    running.stop().await.close().await;
    sandbox.stop().await;
}
on_both_backends!(commands_are_confirmed_by_event_or_status_and_never_resent_blindly);

async fn the_feed_discovers_orders_no_webhook_announced(db: TestDb) {
    let mut spec = SandboxConfig::graas(0, 0).with_getitdone(1, 300);
    // Not one delivery arrives: only the feed can tell of these orders.
    spec.getitdone_options.deliveries = DeliveryFaults {
        drop_ratio: 1.0,
        ..DeliveryFaults::default()
    };
    let sandbox = start_sandbox(&spec).await;
    let extra = "discovery = \"feed\"\nfeed_schedule = \"0 0 0 1 1 *\"\nfeed_page_size = 50\nrate_limit = \"100/s\"";
    let config = Config::from_toml(&config_text(&db, &sandbox, &spec, extra)).expect("config");
    let running = Running::start(&config, &sandbox).await;
    let sim = sandbox.getitdone().clone();
    sim.announce_all();
    sim.mutate(&Mutations {
        per_tick: 40,
        new_per_tick: 5,
        ..Mutations::default()
    });
    let feed = running.job("events");
    // The daemon's first run may still be going (a tick then returns nothing); one run that
    // starts after the events exist reads the rest from the committed cursor.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match feed.tick(&CancellationToken::new()).await {
            Some(Ok(_)) => break,
            Some(Err(error)) => panic!("feed run: {error}"),
            None if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            None => panic!("the feed job never ran"),
        }
    }
    let store = running.store.clone();
    wait_until(Duration::from_secs(30), "the inbox processed", || {
        let store = store.clone();
        async move { inbox_settled(&store).await }
    })
    .await;
    let truth: BTreeMap<String, String> = sim
        .truth(ACCOUNT)
        .into_iter()
        .map(|o| (o.order_id, o.status))
        .collect();
    assert_eq!(truth.len(), 305);
    assert_eq!(stored(&store).await, truth);
    // The cursor moved with what it covers: a second run finds nothing new.
    match feed.tick(&CancellationToken::new()).await {
        Some(Ok(report)) => assert_eq!(report["new"], 0, "{report}"),
        other => panic!("feed run: {other:?}"),
    }
    running.stop().await.close().await;
    sandbox.stop().await;
}
on_both_backends!(the_feed_discovers_orders_no_webhook_announced);

async fn polls_and_commands_share_the_account_rate_limit(db: TestDb) {
    let mut spec = SandboxConfig::graas(0, 0).with_getitdone(1, 40);
    spec.faults = Faults {
        rate_limit_per_sec: Some(10),
        retry_after_secs: 1,
        ..Faults::default()
    };
    let sandbox = start_sandbox(&spec).await;
    // 9/s against a limit of 10 in any one second: the margin absorbs network jitter, which
    // can bring two requests sent 111 ms apart within one second of each other at the sandbox.
    let config = Config::from_toml(&config_text(&db, &sandbox, &spec, "rate_limit = \"9/s\""))
        .expect("config");
    let running = Running::start(&config, &sandbox).await;
    let (sim, store) = (sandbox.getitdone().clone(), running.store.clone());
    sim.announce_all();
    let mut actions = Vec::new();
    for n in 0..20 {
        let order = format!("{ACCOUNT}-job-{n:06}");
        actions.push(enqueue(&config, &store, "refresh", &order, |_| {}).await);
    }
    for id in actions {
        wait_for_state(&store, id, ActionState::Succeeded).await;
    }
    wait_until(Duration::from_secs(30), "40 orders stored", || {
        let store = store.clone();
        async move { stored(&store).await.len() == 40 && inbox_settled(&store).await }
    })
    .await;
    let stats = sim.stats(ACCOUNT).expect("stats");
    assert!(stats.commands >= 20 && stats.polls >= 40, "{stats:?}");
    assert_eq!(stats.traffic.over_limit, 0, "{stats:?}");
    running.stop().await.close().await;
    sandbox.stop().await;
}
on_both_backends!(polls_and_commands_share_the_account_rate_limit);

async fn every_acknowledged_delivery_survives_kill_9(db: TestDb) {
    let mut spec = SandboxConfig::graas(0, 0).with_getitdone(1, 400);
    // Deliveries refused while the daemon is down are tried again, a second apart.
    spec.getitdone_options.delivery_attempts = 30;
    let sandbox = start_sandbox(&spec).await;
    let port = common::fixed_port();
    let text = config_text(&db, &sandbox, &spec, "rate_limit = \"100/s\"").replace(
        "[webhooks]\nlisten = \"127.0.0.1:0\"",
        &format!("[webhooks]\nlisten = \"127.0.0.1:{port}\""),
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = dir.path().join("ordersync.toml");
    std::fs::write(&config_path, &text).expect("config");
    let sim = sandbox.getitdone().clone();
    sim.set_webhook_url(
        ACCOUNT,
        &format!("http://127.0.0.1:{port}/webhooks/getitdone/{ACCOUNT}"),
    );

    let log = dir.path().join("first.log");
    let mut daemon = common::spawn_run_logged(&config_path, &log);
    common::wait_for_log(&log, "webhook listener up", Duration::from_secs(30)).await;
    sim.announce_all();
    let pour = {
        let sim = sim.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                sim.mutate(&Mutations {
                    per_tick: 30,
                    new_per_tick: 3,
                    ..Mutations::default()
                });
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let acknowledged_before_kill = sim.acknowledged(ACCOUNT).len();
    daemon.0.kill().expect("kill -9");
    let _ = daemon.0.wait();
    assert!(
        acknowledged_before_kill > 0,
        "deliveries were flowing when it died"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    let log = dir.path().join("second.log");
    let _daemon = common::spawn_run_logged(&config_path, &log);
    pour.await.expect("mutations");
    wait_until(Duration::from_secs(90), "every delivery sent", || {
        let sim = sim.clone();
        async move { sim.undelivered() == 0 }
    })
    .await;
    let config = Config::from_toml(&text).expect("config");
    let store = open_store(&config).await;
    wait_until(Duration::from_secs(60), "the inbox processed", || {
        let store = store.clone();
        async move { inbox_settled(&store).await }
    })
    .await;
    let list = match db.backend {
        common::Backend::Sqlite => {
            "SELECT coalesce(group_concat(event_id, ','), '') FROM webhook_deliveries"
        }
        common::Backend::Postgres => {
            "SELECT coalesce(string_agg(event_id, ','), '') FROM webhook_deliveries"
        }
    };
    let stored_ids: HashSet<String> = common::execute_scalar(&db, list)
        .await
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let acknowledged = sim.acknowledged(ACCOUNT);
    let missing: Vec<&String> = acknowledged.difference(&stored_ids).collect();
    assert!(
        missing.is_empty(),
        "acknowledged but not stored: {missing:?}"
    );
    assert!(acknowledged.len() > acknowledged_before_kill);
    // And what they told is in the orders.
    let announced = sim.announced(ACCOUNT);
    let synced = stored(&store).await;
    assert_eq!(synced.len(), announced.len());
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(every_acknowledged_delivery_survives_kill_9);
