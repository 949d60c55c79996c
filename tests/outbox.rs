//! Actions back upstream: the outbox against the sandbox, on SQLite and Postgres.

mod common;

use common::{
    AccountToml, TestDb, account_name, assert_matches_truth, config_toml, open_store,
    shutdown_deadline, wait_for_clock_past, wait_until,
};
use ordersync::app::{App, Daemon};
use ordersync::config::Config;
use ordersync::model::Action;
use ordersync::outbox::request::{ActionRequest, ItemSelector};
use ordersync::sandbox::graas::{Received, TruthOrder};
use ordersync::sandbox::{Faults, Sandbox, SandboxConfig};
use ordersync::server::Server;
use ordersync::server::admin::{self, AdminState};
use ordersync::store::{ActionFilter, Store};
use ordersync::sync;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "test-admin-token-0123456789";

/// Outbox settings for tests: quick retries, a short visibility timeout.
const OUTBOX: &str = "\n[outbox]\npoll_interval = \"50ms\"\nvisibility_timeout = \"3s\"\nmin_backoff = \"50ms\"\nmax_backoff = \"400ms\"\nmax_attempts = 30\n";

async fn start_sandbox(spec: &SandboxConfig) -> Sandbox {
    Sandbox::start(([127, 0, 0, 1], 0).into(), spec.clone())
        .await
        .expect("sandbox")
}

fn config(db: &TestDb, sandbox: &Sandbox, spec: &SandboxConfig, account: &AccountToml) -> Config {
    let text = format!("{}{OUTBOX}", config_toml(db, sandbox, spec, account));
    Config::from_toml(&text).expect("valid test config")
}

/// An account that polls once at start and then rarely, so the queue has the gate to itself.
fn quiet_account(rate_limit: &'static str, extra: &'static str) -> AccountToml {
    AccountToml {
        schedule: "0 0 0 1 1 *",
        rate_limit,
        extra,
        ..AccountToml::default()
    }
}

/// One sandbox account of `orders` orders, configured to poll rarely at 100/s.
async fn one_quiet_account(
    db: &TestDb,
    orders: usize,
) -> (SandboxConfig, Sandbox, Config, Arc<dyn Store>) {
    let spec = SandboxConfig::graas(1, orders);
    let sandbox = start_sandbox(&spec).await;
    let config = config(db, &sandbox, &spec, &quiet_account("100/s", ""));
    let store = open_store(&config).await;
    (spec, sandbox, config, store)
}

use common::order_request;

async fn enqueue(
    store: &Arc<dyn Store>,
    config: &Config,
    request: ActionRequest,
) -> (Action, bool) {
    let action = request.into_action(config).expect("valid action");
    store.enqueue(&action).await.expect("enqueue")
}

async fn all_actions(store: &Arc<dyn Store>) -> Vec<Action> {
    store
        .actions(&ActionFilter {
            limit: 100_000,
            ..ActionFilter::default()
        })
        .await
        .expect("actions")
}

async fn wait_all_final(store: &Arc<dyn Store>, timeout: Duration) {
    let store = store.clone();
    wait_until(timeout, "every action to reach a final state", move || {
        let store = store.clone();
        async move {
            all_actions(&store)
                .await
                .iter()
                .all(|a| matches!(a.state.as_str(), "succeeded" | "failed" | "dead"))
        }
    })
    .await;
}

/// 202-answered items per (status, channel, order id).
fn applied(received: &[Received]) -> HashMap<(String, String, String), usize> {
    let mut counts = HashMap::new();
    for r in received.iter().filter(|r| r.http_code == 202) {
        *counts
            .entry((r.what.clone(), r.channel.clone(), r.reference.clone()))
            .or_insert(0) += 1;
    }
    counts
}

async fn drain_500_actions_at_the_rate_limit(db: TestDb) {
    let mut spec = SandboxConfig::graas(2, 300);
    spec.faults = Faults {
        rate_limit_per_sec: Some(10),
        retry_after_secs: 1,
        ..Faults::default()
    };
    let sandbox = start_sandbox(&spec).await;
    // 570/m = 9.5/s: just under the sandbox's 10/s, so arrival jitter cannot cross it.
    let config = config(
        &db,
        &sandbox,
        &spec,
        &quiet_account("570/m", "action_batch_size = 5"),
    );
    let store = open_store(&config).await;
    for (i, acct) in spec.graas.iter().enumerate() {
        let truth = sandbox.graas().truth(&acct.account_number);
        for (n, order) in truth.iter().take(250).enumerate() {
            let kind = if n % 5 == 4 { "cancel" } else { "accept" };
            enqueue(&store, &config, order_request(i, kind, order)).await;
        }
    }
    let started = Instant::now();
    let daemon = Daemon::start(App::build(&config, &store).unwrap())
        .await
        .unwrap();
    wait_all_final(&store, Duration::from_secs(60)).await;
    let elapsed = started.elapsed();
    assert!(daemon.shutdown(shutdown_deadline()).await.is_empty());

    let actions = all_actions(&store).await;
    assert_eq!(actions.len(), 500);
    let not_done: Vec<_> = actions.iter().filter(|a| a.state != "succeeded").collect();
    assert!(not_done.is_empty(), "{not_done:#?}");
    let mut requests = 0;
    for acct in &spec.graas {
        let stats = sandbox.graas().stats(&acct.account_number).unwrap();
        assert_eq!(stats.traffic.over_limit, 0, "{stats:?}");
        requests = requests.max(stats.traffic.requests);
        let received = sandbox.graas().received(&acct.account_number);
        assert_eq!(received.len(), 250, "each action sent exactly once");
        assert!(applied(&received).values().all(|n| *n == 1));
    }
    // The busiest account's requests at exactly 10/s, plus 15%.
    let allowed = Duration::from_secs_f64(requests as f64 / 10.0 * 1.15);
    println!(
        "drained 500 actions in {elapsed:?}; busiest account sent {requests} requests; allowed {allowed:?}"
    );
    assert!(elapsed <= allowed, "{elapsed:?} > {allowed:?}");
    // Nothing is faked locally: the next poll brings the new statuses in.
    let cancelled_before = stored_with_status(&store, "CANCELLED").await;
    // The writes are stamped now; a run reads up to `settle` (1s) before now, exclusive.
    let newest = sandbox.graas().set_mutating(false);
    wait_for_clock_past(newest + 2).await;
    let runners = App::build(&config, &store).unwrap().runners;
    for (stream, result) in sync::run_until_caught_up(&runners, &CancellationToken::new()).await {
        result.unwrap_or_else(|e| panic!("{stream}: {e}"));
    }
    assert_matches_truth(&store, &sandbox, &spec).await;
    let cancelled_after = stored_with_status(&store, "CANCELLED").await;
    assert!(
        cancelled_after > cancelled_before,
        "{cancelled_before} → {cancelled_after}"
    );
    store.close().await;
    sandbox.stop().await;
}

async fn stored_with_status(store: &Arc<dyn Store>, status: &str) -> usize {
    let mut count = 0;
    for i in 0..2 {
        count += store
            .orders_of("graas", &account_name(i))
            .await
            .unwrap()
            .iter()
            .filter(|o| o.status.as_deref() == Some(status))
            .count();
    }
    count
}
on_both_backends!(drain_500_actions_at_the_rate_limit);

async fn faults_end_every_action_final(db: TestDb) {
    let mut spec = SandboxConfig::graas(1, 300);
    spec.faults = Faults {
        rate_limit_per_sec: Some(15),
        retry_after_secs: 1,
        server_error_ratio: 0.1,
        slow_ratio: 0.05,
        slow_ms: 1_500,
        truncate_ratio: 0.05,
        item_error_ratio: 0.1,
        ..Faults::default()
    };
    let sandbox = start_sandbox(&spec).await;
    let config = config(
        &db,
        &sandbox,
        &spec,
        &quiet_account("40/s", "action_batch_size = 4"),
    );
    let store = open_store(&config).await;
    let truth = sandbox.graas().truth(&spec.graas[0].account_number);
    for (n, order) in truth.iter().take(200).enumerate() {
        let kind = if n % 4 == 3 { "cancel" } else { "accept" };
        enqueue(&store, &config, order_request(0, kind, order)).await;
    }
    // Orders Graas does not have: each fails alone, its neighbours go through.
    for (n, known) in truth.iter().take(10).enumerate() {
        let missing = TruthOrder {
            order_id: format!("999000{n}"),
            ..known.clone()
        };
        enqueue(&store, &config, order_request(0, "accept", &missing)).await;
    }
    let daemon = Daemon::start(App::build(&config, &store).unwrap())
        .await
        .unwrap();
    wait_all_final(&store, Duration::from_secs(120)).await;
    assert!(daemon.shutdown(shutdown_deadline()).await.is_empty());

    let actions = all_actions(&store).await;
    for action in &actions {
        let missing = action
            .external_id
            .as_deref()
            .is_some_and(|id| id.starts_with("999000"));
        if missing {
            assert_eq!(action.state, "failed", "{action:#?}");
            assert_eq!(action.last_error.as_deref(), Some("Record Not Found"));
        } else {
            assert_eq!(action.state, "succeeded", "{action:#?}");
            assert_eq!(action.result.as_ref().unwrap()["httpCode"], 202);
        }
    }
    let stats = sandbox
        .graas()
        .stats(&spec.graas[0].account_number)
        .unwrap();
    assert!(
        stats.traffic.over_limit > 0,
        "no 429 was provoked: {stats:?}"
    );
    assert!(
        stats.traffic.server_errors > 0 && stats.traffic.slow > 0 && stats.traffic.truncated > 0
    );
    // An item is applied twice only when its answer was lost: a timeout or a cut-off body.
    let received = sandbox.graas().received(&spec.graas[0].account_number);
    let repeats: usize = applied(&received).values().map(|n| n - 1).sum();
    let lost_answers = (stats.traffic.slow + stats.traffic.truncated) as usize;
    println!(
        "{} items received, {repeats} applied twice, {lost_answers} answers lost to timeouts or truncation, {} 429s, {} 5xx",
        received.len(),
        stats.traffic.over_limit,
        stats.traffic.server_errors
    );
    assert!(
        repeats <= lost_answers * 4,
        "{repeats} repeats > {lost_answers} lost answers × batch size"
    );
    // The account's 429 pauses reached the database for `status`.
    let gates = store.gates().await.unwrap();
    assert!(
        gates
            .iter()
            .any(|g| g.account == account_name(0) && g.rate_limited > 0),
        "{gates:?}"
    );
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(faults_end_every_action_final);

async fn same_key_twice_is_one_upstream_call(db: TestDb) {
    let (spec, sandbox, config, store) = one_quiet_account(&db, 20).await;
    let truth = sandbox.graas().truth(&spec.graas[0].account_number);
    let keyed = ActionRequest {
        idempotency_key: Some("erp-accept-1".into()),
        ..order_request(0, "accept", &truth[0])
    };
    let (first, created) = enqueue(&store, &config, keyed.clone()).await;
    assert!(created);
    let (again, created) = enqueue(&store, &config, keyed).await;
    assert!(!created);
    assert_eq!(again.id, first.id);
    // No key: the same content is the same action.
    let (derived, created) = enqueue(&store, &config, order_request(0, "cancel", &truth[1])).await;
    assert!(created);
    let (same, created) = enqueue(&store, &config, order_request(0, "cancel", &truth[1])).await;
    assert!(!created && same.id == derived.id);
    // Partial accept of one item.
    let partial = ActionRequest {
        items: vec![ItemSelector {
            order_item_id: "1".into(),
            seller_sku: "SKU-1".into(),
        }],
        ..order_request(0, "accept", &truth[2])
    };
    enqueue(&store, &config, partial).await;

    let app = App::build(&config, &store).unwrap();
    for dispatcher in &app.dispatchers {
        while dispatcher.dispatch_once().await.unwrap() > 0 {}
    }
    // Done actions are not sent again when asked for once more.
    let (after, created) = enqueue(&store, &config, order_request(0, "cancel", &truth[1])).await;
    assert!(!created && after.state == "succeeded");
    for dispatcher in &app.dispatchers {
        assert_eq!(dispatcher.dispatch_once().await.unwrap(), 0);
    }
    let received = sandbox.graas().received(&spec.graas[0].account_number);
    assert_eq!(received.len(), 3, "{received:#?}");
    assert_eq!(
        received
            .iter()
            .filter(|r| r.reference == truth[0].order_id)
            .count(),
        1
    );
    let cancel = received
        .iter()
        .find(|r| r.reference == truth[1].order_id)
        .unwrap();
    assert_eq!(cancel.what, "CANCELLED");
    assert_eq!(cancel.cancel_reason.as_deref(), Some("OUT_OF_STOCK"));
    let partial = received
        .iter()
        .find(|r| r.reference == truth[2].order_id)
        .unwrap();
    assert_eq!(partial.items, 1);
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(same_key_twice_is_one_upstream_call);

async fn asns_are_created_once_and_followed(db: TestDb) {
    let (spec, sandbox, config, store) = one_quiet_account(&db, 10).await;
    let asn = |amount: i64| {
        json!({"warehouseID": "odoo-1", "supplierID": 7, "date": 1_700_000_000,
               "orderItems": [{"sellerSKU": "SKU-1", "description": "Tea", "quantity": 12, "uom": 1,
                               "itemAmount": {"amount": amount, "currencyCode": "SGD"}}]})
    };
    let request = |amount: i64| ActionRequest {
        account: account_name(0),
        kind: "asn".into(),
        asn: Some(asn(amount)),
        ..ActionRequest::default()
    };
    // Every answer is late, past the 1s timeout: the first POST creates the ASN unseen.
    sandbox.graas().set_faults(Faults {
        slow_ratio: 1.0,
        slow_ms: 1_500,
        ..Faults::default()
    });
    let (good, _) = enqueue(&store, &config, request(1_200)).await;
    let (refused, _) = enqueue(&store, &config, request(150)).await;
    let app = App::build(&config, &store).unwrap();
    let dispatcher = &app.dispatchers[0];
    dispatcher.dispatch_once().await.unwrap();
    assert_eq!(
        store.action(good.id).await.unwrap().unwrap().state,
        "pending"
    );
    sandbox.graas().set_faults(Faults::default());
    let retry_at = store
        .action(good.id)
        .await
        .unwrap()
        .unwrap()
        .next_attempt_at;
    wait_until(Duration::from_secs(10), "the retry to fall due", || async {
        chrono::Utc::now() >= retry_at
    })
    .await;
    while dispatcher.dispatch_once().await.unwrap() > 0 {}

    let good = store.action(good.id).await.unwrap().unwrap();
    assert_eq!(good.state, "succeeded", "{good:#?}");
    let result = good.result.unwrap();
    assert_eq!(
        result["foundExisting"], true,
        "found by supplierRef, not made twice"
    );
    let asn_id = result["asnID"].as_i64().unwrap();
    let refused = store.action(refused.id).await.unwrap().unwrap();
    assert_eq!(refused.state, "failed");
    assert_eq!(
        refused.last_error.as_deref(),
        Some("itemAmount.amount should be a multiple of 100")
    );
    let created: Vec<_> = sandbox
        .graas()
        .received(&spec.graas[0].account_number)
        .into_iter()
        .filter(|r| r.what == "ASN")
        .collect();
    assert_eq!(created.len(), 1, "{created:#?}");

    // Followed until the warehouse has received it.
    let follower = &app.asn_followers[0];
    follower
        .run_if_idle(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    let open = store.open_asns("graas", &account_name(0)).await.unwrap();
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].asn_id, asn_id);
    assert_eq!(open[0].status.as_deref(), Some("draft"));
    sandbox.graas().receive_asns(0);
    let run = follower
        .run_if_idle(&CancellationToken::new())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((run.checked, run.finished), (1, 1));
    assert!(
        store
            .open_asns("graas", &account_name(0))
            .await
            .unwrap()
            .is_empty()
    );
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(asns_are_created_once_and_followed);

async fn rows_inserted_by_sql_are_sent(db: TestDb) {
    let (spec, sandbox, config, store) = one_quiet_account(&db, 10).await;
    let truth = sandbox.graas().truth(&spec.graas[0].account_number);
    // The statement docs/actions.md gives, as another system would run it.
    let insert = format!(
        "INSERT INTO actions (provider, account, kind, channel, external_id, idempotency_key) \
         VALUES ('graas', '{}', 'accept', '{}', '{}', 'erp-42')",
        account_name(0),
        truth[0].channel,
        truth[0].order_id
    );
    let bad_kind = format!(
        "INSERT INTO actions (provider, account, kind, channel, external_id) \
         VALUES ('graas', '{}', 'refund', '{}', '{}')",
        account_name(0),
        truth[1].channel,
        truth[1].order_id
    );
    common::execute_sql(&db, &[&insert, &bad_kind]).await;
    let app = App::build(&config, &store).unwrap();
    while app.dispatchers[0].dispatch_once().await.unwrap() > 0 {}
    let actions = all_actions(&store).await;
    let accept = actions.iter().find(|a| a.kind == "accept").unwrap();
    assert_eq!(accept.state, "succeeded", "{accept:#?}");
    let refund = actions.iter().find(|a| a.kind == "refund").unwrap();
    assert_eq!(refund.state, "failed");
    assert!(
        refund.last_error.as_deref().unwrap().contains("refund"),
        "{refund:#?}"
    );
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(rows_inserted_by_sql_are_sent);

/// SQLite keeps any type an INSERT gives it: a row whose columns ordersync cannot read fails on
/// its own, naming the problem, and the account's other actions are sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_sql_row_fails_alone_on_sqlite() {
    let db = TestDb::new(common::Backend::Sqlite, "unreadable_row");
    let (spec, sandbox, config, store) = one_quiet_account(&db, 10).await;
    let truth = sandbox.graas().truth(&spec.graas[0].account_number);
    let statements: Vec<String> = truth[..3]
        .iter()
        .enumerate()
        .map(|(n, order)| {
            let max_attempts = if n == 1 { "'eight'" } else { "8" };
            format!(
                "INSERT INTO actions (provider, account, kind, channel, external_id, max_attempts) \
                 VALUES ('graas', '{}', 'accept', '{}', '{}', {max_attempts})",
                account_name(0),
                order.channel,
                order.order_id
            )
        })
        .collect();
    let statements: Vec<&str> = statements.iter().map(String::as_str).collect();
    common::execute_sql(&db, &statements).await;
    let app = App::build(&config, &store).unwrap();
    while app.dispatchers[0].dispatch_once().await.unwrap() > 0 {}
    let actions = all_actions(&store).await;
    let states: Vec<(&str, &str)> = actions
        .iter()
        .map(|a| (a.external_id.as_deref().unwrap_or(""), a.state.as_str()))
        .collect();
    let unreadable = actions
        .iter()
        .find(|a| a.external_id.as_deref() == Some(truth[1].order_id.as_str()))
        .unwrap();
    assert_eq!(unreadable.state, "failed", "{states:?}");
    let reason = unreadable.last_error.as_deref().unwrap_or_default();
    assert!(reason.contains("cannot read this row"), "{reason}");
    assert_eq!(
        actions.iter().filter(|a| a.state == "succeeded").count(),
        2,
        "{states:?}"
    );
    store.close().await;
    sandbox.stop().await;
}

async fn admin_api_refuses_bad_input(db: TestDb) {
    let spec = SandboxConfig::graas(1, 10);
    let sandbox = start_sandbox(&spec).await;
    let text = format!(
        "{}{OUTBOX}\n",
        config_toml(&db, &sandbox, &spec, &quiet_account("100/s", ""))
    )
    .replacen("[admin]\n", &format!("[admin]\ntoken = \"{TOKEN}\"\n"), 1);
    let config = Config::from_toml(&text).unwrap();
    let store = open_store(&config).await;
    let state = AdminState {
        config: Arc::new(config.clone()),
        store: store.clone(),
        token: config.admin.token.clone().unwrap(),
        wake: Arc::new(tokio::sync::Notify::new()),
    };
    let server = Server::start(([127, 0, 0, 1], 0).into(), admin::router(state))
        .await
        .unwrap();
    let url = format!("http://{}/api/v1/actions", server.addr());
    let http = reqwest::Client::new();
    let post = |body: Value, token: Option<&str>| {
        let mut request = http.post(&url).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let truth = sandbox.graas().truth(&spec.graas[0].account_number);
    let good = json!({"account": account_name(0), "kind": "accept",
                      "channel": truth[0].channel, "order_id": truth[0].order_id});

    let cases = [
        (good.clone(), None, 401, "Authorization"),
        (
            good.clone(),
            Some("wrong-token-wrong-token"),
            401,
            "Authorization",
        ),
        (
            json!({"account": 5, "kind": "accept"}),
            Some(TOKEN),
            400,
            "account",
        ),
        (
            json!({"account": "nope", "kind": "accept", "channel": "c", "order_id": "1"}),
            Some(TOKEN),
            422,
            "account",
        ),
        (
            json!({"account": account_name(0), "kind": "refund"}),
            Some(TOKEN),
            422,
            "kind",
        ),
        (
            json!({"account": account_name(0), "kind": "cancel", "channel": "c", "order_id": "1", "reason": "BORED"}),
            Some(TOKEN),
            422,
            "reason",
        ),
        (
            json!({"account": account_name(0), "kind": "asn", "asn": {"warehouseID": "w", "supplierID": "x"}}),
            Some(TOKEN),
            422,
            "asn.supplierID",
        ),
        (
            json!({"account": account_name(0), "kind": "accept", "colour": "red"}),
            Some(TOKEN),
            400,
            "colour",
        ),
    ];
    for (body, token, status, field) in cases {
        let response = post(body.clone(), token).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["field"], field, "{body} → {answer}");
        assert!(!answer["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(all_actions(&store).await.is_empty(), "nothing enqueued");

    let created = post(good.clone(), Some(TOKEN)).await.unwrap();
    assert_eq!(created.status().as_u16(), 201);
    let created: Value = created.json().await.unwrap();
    let id = created["action"]["id"].as_i64().unwrap();
    let again = post(good, Some(TOKEN)).await.unwrap();
    assert_eq!(again.status().as_u16(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["action"]["id"].as_i64(), Some(id));
    assert_eq!(again["created"], false);

    let one: Value = http
        .get(format!("{url}/{id}"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["action"]["state"], "pending");
    let listed: Value = http
        .get(format!("{url}?state=pending&account={}", account_name(0)))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["actions"].as_array().unwrap().len(), 1);
    let bad_state = http
        .get(format!("{url}?state=finished"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_state.status().as_u16(), 400);
    let answer: Value = bad_state.json().await.unwrap();
    assert_eq!(answer["error"]["field"], "state");
    let missing = http
        .get(format!("{url}/12345"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status().as_u16(), 404);
    server.stop().await;
    store.close().await;
    sandbox.stop().await;
}
on_both_backends!(admin_api_refuses_bad_input);
