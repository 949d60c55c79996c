//! KassaForte end to end against the sandbox: shop state polled by the shop's own hours (over a
//! simulated week on a controllable clock), documents fetched only when they change, orders
//! submitted and followed, every 409 family parsed, nothing submitted twice.

mod common;

use common::{TestDb, open_store, wait_until};
use ordersync::app::App;
use ordersync::config::Config;
use ordersync::model::{ActionState, ProviderKind};
use ordersync::outbox::kassaforte::{Resolve, resolve};
use ordersync::outbox::request::ActionRequest;
use ordersync::providers::http::{HttpClient, RateGate};
use ordersync::providers::kassaforte::KassaForteClient;
use ordersync::sandbox::kassaforte::CONFLICT_CODES;
use ordersync::sandbox::{Faults, Sandbox, SandboxConfig};
use ordersync::store::{ShopDocumentKind, Store};
use ordersync::sync::job::{Job, ScheduledJob};
use ordersync::sync::kassaforte::{Clock, ShopMonitor, ShopWatch};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const SHOP: &str = "kf-1";
const KF: &str = "kassaforte";

async fn start_sandbox(spec: &SandboxConfig) -> Sandbox {
    Sandbox::start(([127, 0, 0, 1], 0).into(), spec.clone())
        .await
        .expect("sandbox")
}

/// The configuration for the sandbox's shops; `extra` goes into each shop's section.
fn config_text(db: &TestDb, sandbox: &Sandbox, spec: &SandboxConfig, extra: &str) -> String {
    let mut text = db.toml();
    text.push_str(
        "[outbox]\npoll_interval = \"50ms\"\nvisibility_timeout = \"3s\"\nmin_backoff = \"100ms\"\nmax_backoff = \"300ms\"\n\
         [http]\nmin_backoff = \"50ms\"\nmax_backoff = \"300ms\"\n",
    );
    for shop in &spec.kassaforte {
        text.push_str(&format!(
            "[[kassaforte]]\nname = \"{}\"\nbase_url = \"{}\"\nusername = \"{}\"\npassword = \"{}\"\n{extra}\n",
            shop.name,
            sandbox.base_url(),
            shop.username,
            shop.password,
        ));
    }
    text
}

fn submit(shop: &str, order: Value) -> ActionRequest {
    ActionRequest {
        account: shop.to_owned(),
        kind: "submit".into(),
        order: Some(order),
        ..ActionRequest::default()
    }
}

async fn enqueue(store: &Arc<dyn Store>, config: &Config, request: ActionRequest) -> i64 {
    let action = request.into_action(config).expect("a valid submit");
    store.enqueue(&action).await.expect("enqueue").0.id
}

fn utc(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text)
        .expect("a time")
        .with_timezone(&chrono::Utc)
}

/// Lunch every day, Friday also 18:00–02:00, holidays 16:00–20:00; accept from 15 minutes
/// before opening until 10 minutes before closing.
fn week_hours() -> Value {
    let lunch = json!({ "start": "11:30", "end": "14:00" });
    let mut days: Vec<Value> = (0..7).map(|_| json!([lunch])).collect();
    days[4] = json!([lunch, { "start": "18:00", "end": "02:00" }]);
    days.push(json!([{ "start": "16:00", "end": "20:00" }]));
    json!({ "openingtimes": days, "acceptStart": 15, "acceptEnd": 10 })
}

async fn state_is_polled_by_the_shops_hours_over_a_week(db: TestDb) {
    let spec = SandboxConfig::graas(0, 0).with_kassaforte(1);
    let sandbox = start_sandbox(&spec).await;
    sandbox.kassaforte().set_open_hours(SHOP, week_hours());
    let text = config_text(
        &db,
        &sandbox,
        &spec,
        "infos_every_open = \"5m\"\ninfos_every_closed = \"30m\"\nholidays = [\"2026-10-28\"]\n\
         rate_limit = \"1000/s\"\ntime_zone = \"Europe/Berlin\"",
    );
    let config = Config::from_toml(&text).expect("config");
    let store = open_store(&config).await;
    let shop = config.kassaforte[0].clone();
    let http = HttpClient::new(&config.http).expect("http");
    let client = Arc::new(KassaForteClient::new(
        http,
        Arc::new(RateGate::new(shop.rate_limit)),
        &shop,
    ));
    let start = utc("2026-10-22T00:00:00Z").timestamp();
    let now = Arc::new(AtomicI64::new(start));
    let clock: Clock = {
        let now = now.clone();
        Arc::new(move || {
            chrono::DateTime::from_timestamp(now.load(Ordering::SeqCst), 0).unwrap_or_default()
        })
    };
    let monitor = Arc::new(ShopMonitor::new(client, store.clone(), shop, clock));
    let watch = ShopWatch::new(monitor);
    let token = CancellationToken::new();
    // One tick every 5 minutes (the cron schedule of infos_every_open) for a week.
    let mut polled = Vec::new();
    for tick in 0..(7 * 24 * 12) {
        let at = start + tick * 300;
        now.store(at, Ordering::SeqCst);
        let report = watch.run(&token).await.expect("a state poll");
        if report["polled"] == json!(true) {
            polled.push(at);
        }
    }
    // The accepting windows of that week in UTC, worked out by hand: CEST (UTC+2) until Sunday
    // 25 October 01:00 UTC, CET (UTC+1) after; Friday's late interval runs past midnight; 28
    // October is a configured holiday (row 7).
    let windows: Vec<(i64, i64)> = [
        ("2026-10-22T09:15:00Z", "2026-10-22T11:50:00Z"),
        ("2026-10-23T09:15:00Z", "2026-10-23T11:50:00Z"),
        ("2026-10-23T15:45:00Z", "2026-10-23T23:50:00Z"),
        ("2026-10-24T09:15:00Z", "2026-10-24T11:50:00Z"),
        ("2026-10-25T10:15:00Z", "2026-10-25T12:50:00Z"),
        ("2026-10-26T10:15:00Z", "2026-10-26T12:50:00Z"),
        ("2026-10-27T10:15:00Z", "2026-10-27T12:50:00Z"),
        ("2026-10-28T14:45:00Z", "2026-10-28T18:50:00Z"),
    ]
    .iter()
    .map(|(a, b)| (utc(a).timestamp(), utc(b).timestamp()))
    .collect();
    let inside = |t: i64| windows.iter().any(|(a, b)| *a <= t && t < *b);
    for (a, b) in &windows {
        for t in (*a..*b).step_by(300) {
            assert!(
                polled.contains(&t),
                "not polled at the open rate at {t} ({a}..{b})"
            );
        }
    }
    let mut previous = None;
    for &t in &polled {
        let at_window_end = windows.iter().any(|(_, b)| *b == t);
        if !inside(t)
            && !at_window_end
            && let Some(before) = previous
        {
            assert!(
                t - before >= 30 * 60,
                "polled at {t}, {}s after the previous poll, outside any window",
                t - before
            );
        }
        previous = Some(t);
    }
    let outside = polled.iter().filter(|t| !inside(**t)).count();
    // 7 days at one poll per 30 minutes, plus one poll as each window closes.
    assert!(outside <= 7 * 48 + windows.len(), "{outside} polls outside");
    assert!(
        outside >= 7 * 40,
        "{outside} polls outside: the closed rate is not kept"
    );
    // The history says when the shop was closed: every window opens and closes once.
    let history = store
        .shop_history(KF, SHOP, utc("2026-10-01T00:00:00Z"))
        .await
        .expect("history");
    let opened: Vec<i64> = history
        .windows(2)
        .filter(|w| !w[0].hours_open && w[1].hours_open)
        .map(|w| w[1].observed_at.timestamp())
        .collect();
    assert_eq!(opened, windows.iter().map(|(a, _)| *a).collect::<Vec<_>>());
    assert_eq!(
        sandbox.kassaforte().stats(SHOP).expect("stats").openhours,
        1
    );
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(state_is_polled_by_the_shops_hours_over_a_week);

async fn documents_are_fetched_only_when_they_change(db: TestDb) {
    let spec = SandboxConfig::graas(0, 0).with_kassaforte(2);
    let sandbox = start_sandbox(&spec).await;
    let sim = sandbox.kassaforte().clone();
    let text = config_text(
        &db,
        &sandbox,
        &spec,
        "rate_limit = \"100/s\"\ninfos_every_open = \"1s\"\ninfos_every_closed = \"1s\"",
    );
    let config = Config::from_toml(&text).expect("config");
    let store = open_store(&config).await;
    let app = App::build(&config, &store).expect("app");
    let token = CancellationToken::new();
    let infos_job = |shop: &str| {
        app.scheduled
            .iter()
            .find(|j| j.stream().account == shop && j.stream().resource == "infos")
            .cloned()
            .expect("an infos job")
    };
    let poll = |job: Arc<dyn ScheduledJob>| {
        let token = token.clone();
        async move { job.tick(&token).await.expect("it ran") }
    };
    // Polls are due once a second here; each step waits that long.
    poll(infos_job(SHOP)).await.expect("first poll");
    let counts = |sim: &ordersync::sandbox::kassaforte::KassaForteSim| {
        let s = sim.stats(SHOP).expect("stats");
        (s.menu, s.openhours, s.deliverycosts)
    };
    assert_eq!(counts(&sim), (1, 1, 1), "every document fetched at start");
    for change in 0..3 {
        // Unchanged infos fetch nothing.
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        let monitor_poll = poll(infos_job(SHOP)).await;
        assert!(monitor_poll.is_ok(), "{monitor_poll:?}");
        assert_eq!(counts(&sim).0, 1 + change);
        sim.change_menu(SHOP);
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        poll(infos_job(SHOP)).await.expect("poll after a change");
        assert_eq!(counts(&sim), (2 + change, 1, 1));
    }
    sim.change_delivery_costs(SHOP, true);
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    poll(infos_job(SHOP)).await.expect("poll");
    assert_eq!(counts(&sim), (4, 1, 2));
    let menus = store
        .shop_documents(KF, SHOP, ShopDocumentKind::Menu, false)
        .await
        .expect("menus");
    assert_eq!(menus.len(), 4, "each menu kept");
    let refreshes: std::collections::HashSet<_> =
        menus.iter().map(|m| m.refresh_value.clone()).collect();
    assert_eq!(refreshes.len(), 4);
    let costs = store
        .shop_documents(KF, SHOP, ShopDocumentKind::DeliveryCosts, true)
        .await
        .expect("costs");
    assert_eq!(costs[0].body, "null", "no delivery costs is a document too");
    let state = store
        .shop_state(KF, SHOP)
        .await
        .expect("state")
        .expect("a state");
    assert_eq!(state.delivery_wait_minutes, Some(45));
    assert_eq!(state.connection_ok, Some(true));

    // Infos that are not what ordersync reads: quarantined whole, the run fails, the next goes on.
    sim.garble_infos(SHOP, true);
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    let garbled = poll(infos_job(SHOP)).await;
    assert!(
        garbled
            .as_ref()
            .is_err_and(|e| e.contains("connectionStatus") && e.contains("quarantined")),
        "{garbled:?}"
    );
    assert_eq!(store.quarantine_count(KF, SHOP).await.expect("count"), 1);
    let raw = common::execute_scalar(&db, "SELECT raw_body FROM quarantine").await;
    assert!(raw.contains("\"connectionStatus\":\"maybe\""), "{raw}");
    sim.garble_infos(SHOP, false);
    tokio::time::sleep(Duration::from_millis(1_050)).await;
    poll(infos_job(SHOP))
        .await
        .expect("the next poll reads it again");

    // A shop whose credentials fail stops with the reason; the other goes on.
    sim.refuse_auth("kf-2", true);
    let refused = poll(infos_job("kf-2")).await;
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("credentials")),
        "{refused:?}"
    );
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        assert!(
            infos_job("kf-2").tick(&token).await.is_none(),
            "a stopped shop is not polled"
        );
        poll(infos_job(SHOP)).await.expect("the other shop goes on");
    }
    assert_eq!(sim.stats("kf-2").expect("stats").unauthorized, 1);
    let streams = store.streams().await.expect("streams");
    let kf2 = streams
        .iter()
        .find(|s| s.stream.account == "kf-2" && s.stream.resource == "infos")
        .expect("kf-2's stream");
    assert!(
        kf2.last_error.as_deref().is_some_and(|e| e.contains("401")),
        "{kf2:?}"
    );

    // The checks a shop offers before submitting.
    let shop = config.kassaforte_shop(SHOP).expect("shop");
    let client = KassaForteClient::new(
        HttpClient::new(&config.http).expect("http"),
        Arc::new(RateGate::new(shop.rate_limit)),
        shop,
    );
    let discount = client.check_discount("FIVE").await.expect("a discount");
    assert_eq!(
        serde_json::to_value(&discount).expect("json"),
        json!({ "type": "amount", "minor": 500, "exceptions": [] })
    );
    let coupon = client
        .check_coupon("C-100", "1234")
        .await
        .expect("a coupon");
    assert_eq!(coupon.remaining_minor, 1999);
    let wrong = client.check_coupon("C-100", "0000").await.unwrap_err();
    assert!(wrong.to_string().contains("409"), "{wrong}");
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(documents_are_fetched_only_when_they_change);

/// Every action of the shop, by id.
async fn actions_by_id(store: &Arc<dyn Store>) -> BTreeMap<i64, ordersync::model::Action> {
    store
        .actions(&ordersync::store::ActionFilter {
            state: None,
            account: Some(SHOP.into()),
            limit: 10_000,
        })
        .await
        .expect("actions")
        .into_iter()
        .map(|a| (a.id, a))
        .collect()
}

async fn submissions_are_followed_refused_or_failed_with_their_reason(db: TestDb) {
    let mut spec = SandboxConfig::graas(0, 0).with_kassaforte(1);
    spec.kassaforte_options.polls_until_transmitted = 1;
    let sandbox = start_sandbox(&spec).await;
    let sim = sandbox.kassaforte().clone();
    let text = config_text(
        &db,
        &sandbox,
        &spec,
        "rate_limit = \"100/s\"\ninfos_every_open = \"1s\"\ninfos_every_closed = \"1s\"\n\
         follow_every = \"1s\"\nfollow_slow_every = \"1s\"",
    );
    let config = Config::from_toml(&text).expect("config");
    let store = open_store(&config).await;
    let app = App::build(&config, &store).expect("app");
    let token = CancellationToken::new();
    let follow = app
        .scheduled
        .iter()
        .find(|j| j.stream().resource == "orders")
        .cloned()
        .expect("the follow-up");

    // 201: the id is kept and the order followed to a final status.
    let order = sim.valid_order(SHOP, "delivery", "OS-1").expect("an order");
    let ok = enqueue(&store, &config, submit(SHOP, order.clone())).await;
    let (_, failed) = app.run_once(&token).await;
    assert!(!failed);
    let actions = actions_by_id(&store).await;
    assert_eq!(actions[&ok].state, "succeeded", "{:?}", actions[&ok]);
    let order_id = actions[&ok].result.as_ref().expect("a result")["orderId"]
        .as_str()
        .expect("an id")
        .to_owned();
    assert_eq!(order_id.len(), 14);
    let stored = store.orders_of(KF, SHOP).await.expect("orders");
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].channel.as_str(), stored[0].external_id.as_str()),
        ("delivery", order_id.as_str())
    );
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(1_100)).await;
        follow.tick(&token).await.expect("ran").expect("followed");
    }
    let stored = store.orders_of(KF, SHOP).await.expect("orders");
    assert_eq!(stored[0].status.as_deref(), Some("transmitted"));
    let key = ordersync::model::OrderKey {
        provider: ProviderKind::KassaForte,
        account: SHOP.into(),
        channel: "delivery".into(),
        external_id: order_id.clone(),
    };
    let history = store.order_history(&key).await.expect("history");
    let statuses: Vec<_> = history.iter().map(|h| h.new_status.as_deref()).collect();
    assert_eq!(statuses, [Some("pending"), Some("transmitted")]);
    let polls_when_final = sim.stats(SHOP).expect("stats").status_polls;
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    follow.tick(&token).await.expect("ran").expect("followed");
    assert_eq!(
        sim.stats(SHOP).expect("stats").status_polls,
        polls_when_final,
        "a final order is not polled"
    );

    // Every 409 family, parsed into code, class and values.
    sim.force_conflicts(SHOP, &CONFLICT_CODES);
    let mut conflicted = Vec::new();
    for (i, code) in CONFLICT_CODES.iter().enumerate() {
        let order = sim
            .valid_order(SHOP, "pickup", &format!("OS-409-{i}"))
            .expect("an order");
        conflicted.push((*code, enqueue(&store, &config, submit(SHOP, order)).await));
    }
    let submissions_before = sim.stats(SHOP).expect("stats").submissions;
    let (_, failed) = app.run_once(&token).await;
    assert!(!failed);
    let actions = actions_by_id(&store).await;
    for (code, id) in &conflicted {
        let action = &actions[id];
        assert_eq!(action.state, "failed", "{action:?}");
        let error = action.last_error.as_deref().unwrap_or_default();
        let class = [
            "",
            "order",
            "article",
            "menu",
            "ingredient",
            "discount",
            "delivery",
        ][usize::from(code / 100)];
        assert!(
            error.starts_with(&format!("409 {code} ({class})")),
            "{code}: {error}"
        );
    }
    let error_of = |code: u16| {
        let id = conflicted.iter().find(|(c, _)| *c == code).expect("code").1;
        actions[&id].last_error.clone().unwrap_or_default()
    };
    assert!(
        error_of(102).contains("our-sum=23.50, your-sum=23.00"),
        "{}",
        error_of(102)
    );
    assert!(
        error_of(303).contains("expected-count=3, actual-count=2"),
        "{}",
        error_of(303)
    );
    assert!(
        error_of(305).contains("item-no=1201, size-id=2, menu-item-no=M10]"),
        "{}",
        error_of(305)
    );
    assert!(
        error_of(604).contains("delivery only to defined zipIds"),
        "{}",
        error_of(604)
    );
    assert_eq!(
        sim.stats(SHOP).expect("stats").submissions - submissions_before,
        CONFLICT_CODES.len() as u64,
        "one request each, never resubmitted"
    );

    // An order priced before a menu change: 203, and the reason says the menu changed.
    let stale = sim
        .valid_order(SHOP, "pickup", "OS-stale")
        .expect("an order");
    sim.change_menu(SHOP);
    let menus_before = sim.stats(SHOP).expect("stats").menu;
    let stale_id = enqueue(&store, &config, submit(SHOP, stale)).await;
    app.run_once(&token).await;
    let action = &actions_by_id(&store).await[&stale_id];
    let error = action.last_error.clone().unwrap_or_default();
    assert_eq!(action.state, "failed");
    assert!(
        error.starts_with("menu changed: 409 203 (article)"),
        "{error}"
    );
    assert_eq!(sim.stats(SHOP).expect("stats").menu, menus_before + 1);

    // A till that is offline holds the order (no attempt used), which goes once it is back.
    sim.set_connection(SHOP, false);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let held = sim
        .valid_order(SHOP, "pickup", "OS-held")
        .expect("an order");
    let held_id = enqueue(&store, &config, submit(SHOP, held)).await;
    let submissions_before = sim.stats(SHOP).expect("stats").submissions;
    app.run_once(&token).await;
    let action = actions_by_id(&store).await[&held_id].clone();
    assert_eq!(
        (action.state.as_str(), action.attempts),
        ("pending", 0),
        "{action:?}"
    );
    assert!(
        action
            .last_error
            .as_deref()
            .is_some_and(|e| e.starts_with("held: the shop's till"))
    );
    assert_eq!(
        sim.stats(SHOP).expect("stats").submissions,
        submissions_before
    );
    sim.set_connection(SHOP, true);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    app.run_once(&token).await;
    assert_eq!(actions_by_id(&store).await[&held_id].state, "succeeded");

    // Refused before any request: a service closed by hand, an unavailable item, closed hours.
    let requests = |sim: &ordersync::sandbox::kassaforte::KassaForteSim| {
        sim.stats(SHOP).expect("stats").submissions
    };
    let before = requests(&sim);
    sim.set_service_open(SHOP, false, true);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let closed = sim
        .valid_order(SHOP, "delivery", "OS-closed")
        .expect("an order");
    let closed_id = enqueue(&store, &config, submit(SHOP, closed)).await;
    app.run_once(&token).await;
    let item = sim.first_item(SHOP).expect("an item");
    sim.set_service_open(SHOP, true, true);
    sim.set_unavailable(SHOP, &[item.as_str()]);
    let mut with_unavailable = sim
        .valid_order(SHOP, "pickup", "OS-unavailable")
        .expect("an order");
    with_unavailable["items"][0]["itemNo"] = json!(item);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let unavailable_id = enqueue(&store, &config, submit(SHOP, with_unavailable)).await;
    app.run_once(&token).await;
    sim.set_unavailable(SHOP, &[]);
    let never = json!([]);
    sim.set_open_hours(
        SHOP,
        json!({ "openingtimes": vec![never; 8], "acceptStart": 0, "acceptEnd": 0 }),
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let hours = sim
        .valid_order(SHOP, "pickup", "OS-hours")
        .expect("an order");
    let hours_id = enqueue(&store, &config, submit(SHOP, hours)).await;
    app.run_once(&token).await;
    let actions = actions_by_id(&store).await;
    let reason = |id: i64| actions[&id].last_error.clone().unwrap_or_default();
    assert!(
        reason(closed_id).starts_with("shop closed for delivery"),
        "{}",
        reason(closed_id)
    );
    assert!(
        reason(unavailable_id).starts_with(&format!("unavailable products: {item}")),
        "{}",
        reason(unavailable_id)
    );
    assert!(
        reason(hours_id).contains("outside the shop's accepting window"),
        "{}",
        reason(hours_id)
    );
    for id in [closed_id, unavailable_id, hours_id] {
        assert_eq!(actions[&id].state, "failed");
    }
    assert_eq!(
        requests(&sim),
        before,
        "no request for an order the shop cannot take"
    );
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(submissions_are_followed_refused_or_failed_with_their_reason);

fn cli(config_path: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_ordersync"))
        .args(args)
        .arg("--config")
        .arg(config_path)
        .env_remove("ORDERSYNC_CONFIG")
        .output()
        .expect("run ordersync")
}

async fn a_lost_answer_is_unknown_never_resent_and_resolved_by_a_person(db: TestDb) {
    let spec = SandboxConfig::graas(0, 0).with_kassaforte(1);
    let sandbox = start_sandbox(&spec).await;
    let sim = sandbox.kassaforte().clone();
    let text = config_text(&db, &sandbox, &spec, "rate_limit = \"100/s\"")
        .replace("[http]\n", "[http]\nrequest_timeout = \"1s\"\n");
    let dir = tempfile::tempdir().expect("dir");
    let config_path = dir.path().join("ordersync.toml");
    std::fs::write(&config_path, &text).expect("config");
    let config = Config::from_toml(&text).expect("config");
    let store = open_store(&config).await;
    let app = App::build(&config, &store).expect("app");
    let token = CancellationToken::new();

    sim.hang_after_create(SHOP, 2, Duration::from_secs(3));
    let first = enqueue(
        &store,
        &config,
        submit(
            SHOP,
            sim.valid_order(SHOP, "pickup", "OS-lost-1").expect("order"),
        ),
    )
    .await;
    let second = enqueue(
        &store,
        &config,
        submit(
            SHOP,
            sim.valid_order(SHOP, "pickup", "OS-lost-2").expect("order"),
        ),
    )
    .await;
    app.run_once(&token).await;
    app.run_once(&token).await;
    let actions = actions_by_id(&store).await;
    for id in [first, second] {
        assert_eq!(
            actions[&id].state,
            ActionState::Unknown.as_str(),
            "{:?}",
            actions[&id]
        );
        assert!(
            actions[&id]
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("may have reached KassaForte"))
        );
    }
    let created = sim.orders(SHOP);
    let stats = sim.stats(SHOP).expect("stats");
    assert_eq!(
        (stats.submissions, stats.orders_created),
        (2, 2),
        "each sent once"
    );
    let by_reference: HashMap<String, String> = created
        .iter()
        .map(|o| (o.reference.clone().unwrap_or_default(), o.order_id.clone()))
        .collect();

    // `status` warns about them.
    let status = cli(&config_path, &["status"]);
    let out = String::from_utf8_lossy(&status.stdout);
    assert!(
        out.contains("WARNING: 2 action(s) in state unknown"),
        "{out}"
    );

    // Resolved as submitted: succeeded, and the order is stored and followed.
    let lost = &by_reference["OS-lost-1"];
    let bad = cli(
        &config_path,
        &[
            "action",
            "resolve",
            &first.to_string(),
            "--submitted-as",
            "123",
        ],
    );
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("14 digits"));
    let resolved = cli(
        &config_path,
        &[
            "action",
            "resolve",
            &first.to_string(),
            "--submitted-as",
            lost,
        ],
    );
    assert!(
        resolved.status.success(),
        "{}",
        String::from_utf8_lossy(&resolved.stderr)
    );
    let stored = store.orders_of(KF, SHOP).await.expect("orders");
    assert_eq!(stored.len(), 1);
    assert_eq!(&stored[0].external_id, lost);

    // Resolved as not submitted: queued again and sent.
    let requeued = resolve(store.as_ref(), second, &Resolve::NotSubmitted, "EUR")
        .await
        .expect("resolved");
    assert_eq!(requeued.state, "pending");
    app.run_once(&token).await;
    let actions = actions_by_id(&store).await;
    assert_eq!(actions[&first].state, "succeeded");
    assert_eq!(actions[&second].state, "succeeded");
    assert_eq!(sim.stats(SHOP).expect("stats").orders_created, 3);
    let again = resolve(store.as_ref(), second, &Resolve::NotSubmitted, "EUR").await;
    assert!(again.is_err(), "only an unknown action is resolved");

    // A process that died while sending: the marker it left makes the next attempt unknown,
    // without a request.
    let orphan = enqueue(
        &store,
        &config,
        submit(
            SHOP,
            sim.valid_order(SHOP, "pickup", "OS-orphan").expect("order"),
        ),
    )
    .await;
    let now = chrono::Utc::now();
    let claimed = store
        .claim(&ordersync::store::Claim {
            provider: KF,
            account: SHOP,
            limit: 10,
            worker: "a-process-that-died",
            now,
            visible_until: now - chrono::Duration::seconds(1),
        })
        .await
        .expect("claim");
    assert_eq!(claimed.iter().map(|a| a.id).collect::<Vec<_>>(), [orphan]);
    assert!(
        store
            .mark_sending(orphan, "a-process-that-died", now)
            .await
            .expect("mark")
    );
    let submissions = sim.stats(SHOP).expect("stats").submissions;
    app.run_once(&token).await;
    let action = &actions_by_id(&store).await[&orphan];
    assert_eq!(action.state, "unknown", "{action:?}");
    assert!(
        action
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("an earlier attempt began sending"))
    );
    assert_eq!(sim.stats(SHOP).expect("stats").submissions, submissions);

    // A process that died after its 201 was kept but before its batch was recorded: the next
    // attempt finishes from the kept answer, without a request, and the order is stored.
    let kept = enqueue(
        &store,
        &config,
        submit(
            SHOP,
            sim.valid_order(SHOP, "delivery", "OS-kept").expect("order"),
        ),
    )
    .await;
    let now = chrono::Utc::now();
    store
        .claim(&ordersync::store::Claim {
            provider: KF,
            account: SHOP,
            limit: 10,
            worker: "another-process-that-died",
            now,
            visible_until: now - chrono::Duration::seconds(1),
        })
        .await
        .expect("claim");
    assert!(
        store
            .mark_sending(kept, "another-process-that-died", now)
            .await
            .expect("mark")
    );
    let answer = json!({ "orderId": "20269999999999", "submittedAt": now });
    store
        .clear_sending(kept, "another-process-that-died", Some(&answer))
        .await
        .expect("keep the answer");
    app.run_once(&token).await;
    let action = &actions_by_id(&store).await[&kept];
    assert_eq!(action.state, "succeeded", "{action:?}");
    assert_eq!(
        action.result.as_ref().expect("result")["orderId"],
        "20269999999999"
    );
    assert_eq!(sim.stats(SHOP).expect("stats").submissions, submissions);
    let stored = store.orders_of(KF, SHOP).await.expect("orders");
    assert!(
        stored
            .iter()
            .any(|o| o.external_id == "20269999999999" && o.channel == "delivery")
    );

    // The admin API takes submissions too, and names the field of a bad one.
    let admin = ordersync::server::admin::AdminState {
        config: Arc::new(config.clone()),
        store: store.clone(),
        token: ordersync::config::Secret::new("kassaforte-admin-token"),
        wake: Arc::new(tokio::sync::Notify::new()),
    };
    let server = ordersync::server::Server::start(
        ([127, 0, 0, 1], 0).into(),
        ordersync::server::admin::router(admin),
    )
    .await
    .expect("admin API");
    let http = reqwest::Client::new();
    let url = format!("http://{}/api/v1/actions", server.addr());
    let mut float_price = sim
        .valid_order(SHOP, "pickup", "OS-api-bad")
        .expect("order");
    float_price["items"][0]["price"] = json!(8.5);
    let refused = http
        .post(&url)
        .bearer_auth("kassaforte-admin-token")
        .json(&json!({ "account": SHOP, "kind": "submit", "order": float_price }))
        .send()
        .await
        .expect("answer");
    assert_eq!(refused.status().as_u16(), 422);
    let answer: Value = refused.json().await.expect("json");
    assert_eq!(answer["error"]["field"], "order.items[0].price", "{answer}");
    let good = sim.valid_order(SHOP, "pickup", "OS-api").expect("order");
    let created = http
        .post(&url)
        .bearer_auth("kassaforte-admin-token")
        .json(&json!({ "account": SHOP, "kind": "submit", "order": good }))
        .send()
        .await
        .expect("answer");
    assert_eq!(created.status().as_u16(), 201);
    let answer: Value = created.json().await.expect("json");
    assert_eq!(answer["action"]["channel"], "pickup", "{answer}");
    server.stop().await;

    // The checks from the command line.
    let discount = cli(
        &config_path,
        &[
            "kassaforte",
            "check-discount",
            "--account",
            SHOP,
            "--code",
            "SUMMER",
        ],
    );
    assert!(
        discount.status.success(),
        "{}",
        String::from_utf8_lossy(&discount.stderr)
    );
    assert!(
        String::from_utf8_lossy(&discount.stderr)
            .contains("SUMMER: 10% off; excepted categories: 3")
    );
    let coupon = cli(
        &config_path,
        &[
            "kassaforte",
            "check-coupon",
            "--account",
            SHOP,
            "--number",
            "C-100",
            "--verify-code",
            "1234",
        ],
    );
    assert!(String::from_utf8_lossy(&coupon.stderr).contains("coupon C-100: 19.99 EUR left"));
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(a_lost_answer_is_unknown_never_resent_and_resolved_by_a_person);

async fn kill_9_during_submissions_never_submits_twice(db: TestDb) {
    let mut spec = SandboxConfig::graas(0, 0).with_kassaforte(1);
    spec.faults = Faults {
        rate_limit_per_sec: Some(25),
        retry_after_secs: 1,
        server_error_ratio: 0.03,
        slow_ratio: 0.2,
        slow_ms: 150,
        ..Faults::default()
    };
    let sandbox = start_sandbox(&spec).await;
    let sim = sandbox.kassaforte().clone();
    let text = config_text(&db, &sandbox, &spec, "rate_limit = \"25/s\"");
    let dir = tempfile::tempdir().expect("dir");
    let config_path = dir.path().join("ordersync.toml");
    std::fs::write(&config_path, &text).expect("config");
    let config = Config::from_toml(&text).expect("config");
    let store = open_store(&config).await;
    let total = 150;
    let mut ids = Vec::new();
    for i in 0..total {
        let order = sim
            .valid_order(SHOP, "pickup", &format!("OS-{i}"))
            .expect("order");
        ids.push(enqueue(&store, &config, submit(SHOP, order)).await);
    }
    let log = dir.path().join("first.log");
    let mut daemon = common::spawn_run_logged(&config_path, &log);
    wait_until(Duration::from_secs(60), "submissions under way", || {
        let sim = sim.clone();
        async move { sim.stats(SHOP).is_some_and(|s| s.orders_created >= 30) }
    })
    .await;
    daemon.0.kill().expect("kill -9");
    let _ = daemon.0.wait();
    let log = dir.path().join("second.log");
    let _daemon = common::spawn_run_logged(&config_path, &log);
    wait_until(Duration::from_secs(120), "every action settled", || {
        let store = store.clone();
        async move {
            let actions = actions_by_id(&store).await;
            actions
                .values()
                .all(|a| matches!(a.state.as_str(), "succeeded" | "failed" | "unknown"))
        }
    })
    .await;
    let actions = actions_by_id(&store).await;
    let created = sim.orders(SHOP);
    let mut per_reference: HashMap<String, usize> = HashMap::new();
    for order in &created {
        *per_reference
            .entry(order.reference.clone().unwrap_or_default())
            .or_default() += 1;
    }
    let twice: Vec<_> = per_reference.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "submitted twice: {twice:?}");
    let created_ids: HashMap<&str, &str> = created
        .iter()
        .map(|o| {
            (
                o.order_id.as_str(),
                o.reference.as_deref().unwrap_or_default(),
            )
        })
        .collect();
    let mut unknown = 0;
    for (i, id) in ids.iter().enumerate() {
        let action = &actions[id];
        match action.state.as_str() {
            "succeeded" => {
                let order_id = action.result.as_ref().expect("result")["orderId"]
                    .as_str()
                    .expect("id");
                assert_eq!(created_ids.get(order_id), Some(&format!("OS-{i}").as_str()));
            }
            "unknown" => unknown += 1,
            other => panic!("action {id} ended {other}: {:?}", action.last_error),
        }
    }
    // Only what was being sent when the process died can be unknown.
    assert!(unknown <= 1, "{unknown} unknown");
    // Each succeeded action created its order once; an unknown one created it once or not at all.
    assert!(
        (total - unknown..=total).contains(&created.len()),
        "{} created",
        created.len()
    );
    let stats = sim.stats(SHOP).expect("stats");
    assert_eq!(
        stats.traffic.over_limit, 0,
        "0 requests over the shop's rate limit"
    );
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(kill_9_during_submissions_never_submits_twice);
