//! Outbox benchmark: enqueue 10,000 Graas accept actions, then drain them against the sandbox
//! with no rate limit and with a 50/s limit. Prints enqueue and drain rates, the request rate the
//! sandbox saw against the limit and how many requests went over it in any one second (the
//! sandbox answers those 429, as an upstream would), and p50/p99 enqueue→done latency. SQLite,
//! and Postgres when `ORDERSYNC_TEST_PG` (or `ORDERSYNC_BENCH_PG`) is set.
//!
//!     cargo bench --bench outbox
//!
//! `BENCH_ACTIONS` and `BENCH_BATCH` change the size.

mod common;

use common::env_number;
use ordersync::app::{App, Daemon};
use ordersync::config::Config;
use ordersync::outbox::request::ActionRequest;
use ordersync::sandbox::{Faults, Sandbox, SandboxConfig};
use ordersync::store::{self, ActionFilter};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Case<'a> {
    label: &'a str,
    database: String,
    rate_limit: &'a str,
    limit_per_sec: Option<f64>,
}

async fn run_case(
    case: &Case<'_>,
    sandbox_url: &str,
    spec: &SandboxConfig,
    sandbox: &Sandbox,
    actions: usize,
    batch: usize,
) -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let database = case
        .database
        .replace("{dir}", &dir.path().display().to_string());
    let account = &spec.graas[0];
    // start_from = now: the poller has nothing to backfill, so the queue has the gate to itself.
    let text = format!(
        "{database}\n[log]\nlevel = \"warn\"\n\n[outbox]\npoll_interval = \"10ms\"\n\n[[graas]]\nname = \"bench\"\nbase_url = \"{sandbox_url}\"\naccount_number = \"{}\"\napp_key = \"{}\"\nstart_from = \"{}\"\nschedule = \"0 0 0 1 1 *\"\nrate_limit = \"{}\"\naction_batch_size = {batch}\n",
        account.account_number,
        account.app_key,
        chrono::Utc::now().to_rfc3339(),
        case.rate_limit
    );
    let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
    let store = store::open(&config.database)
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;

    let truth = sandbox.graas().truth(&account.account_number);
    // The sandbox refuses (429) whatever goes over the limit in any one second, as an upstream
    // counts it: where the daemon's requests arrive, not where they were sent.
    sandbox.graas().set_faults(Faults {
        rate_limit_per_sec: case.limit_per_sec.map(|limit| limit as u32),
        retry_after_secs: 1,
        ..Faults::default()
    });
    let before = sandbox
        .graas()
        .stats(&account.account_number)
        .unwrap_or_default();
    let enqueue_started = Instant::now();
    for order in truth.iter().take(actions) {
        let request = ActionRequest {
            account: "bench".into(),
            kind: "accept".into(),
            channel: Some(order.channel.clone()),
            order_id: Some(order.order_id.clone()),
            // Each case its own keys: the same action in another database is another action.
            idempotency_key: Some(format!("{}-{}", case.label, order.order_id)),
            ..ActionRequest::default()
        };
        let action = request.into_action(&config).map_err(|e| e.to_string())?;
        store.enqueue(&action).await.map_err(|e| e.to_string())?;
    }
    let enqueue_time = enqueue_started.elapsed();

    let drain_started = Instant::now();
    let app = App::build(&config, &store).map_err(|e| e.to_string())?;
    let daemon = Daemon::start(app).await.map_err(|e| e.to_string())?;
    loop {
        let counts = store.action_counts().await.map_err(|e| e.to_string())?;
        let open: i64 = counts
            .iter()
            .filter(|c| c.state == "pending" || c.state == "in_flight")
            .map(|c| c.count)
            .sum();
        if open == 0 {
            break;
        }
        if drain_started.elapsed() > Duration::from_secs(120) {
            return Err("the queue did not drain within 2 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_time = drain_started.elapsed();
    let abandoned = daemon
        .shutdown(tokio::time::Instant::now() + Duration::from_secs(30))
        .await;
    if !abandoned.is_empty() {
        return Err(format!("shutdown abandoned {abandoned:?}"));
    }

    let done = store
        .actions(&ActionFilter {
            limit: i64::try_from(actions).unwrap_or(i64::MAX),
            ..ActionFilter::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let succeeded = done.iter().filter(|a| a.state == "succeeded").count();
    if succeeded != actions {
        return Err(format!("{succeeded} of {actions} actions succeeded"));
    }
    let mut latencies: Vec<f64> = done
        .iter()
        .filter_map(|a| Some((a.finished_at? - a.created_at).as_seconds_f64()))
        .collect();
    latencies.sort_by(f64::total_cmp);
    let percentile = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    let after = sandbox
        .graas()
        .stats(&account.account_number)
        .unwrap_or_default();
    sandbox.graas().set_faults(Faults::default());
    let requests = after.traffic.requests - before.traffic.requests;
    let over_limit = after.traffic.over_limit - before.traffic.over_limit;
    let request_rate = requests as f64 / drain_time.as_secs_f64();
    let limit = match case.limit_per_sec {
        Some(limit) => format!(
            "{request_rate:.1} req/s = {:.0}% of the {limit}/s limit, {over_limit} over it",
            request_rate / limit * 100.0
        ),
        None => format!("{request_rate:.1} req/s, no limit"),
    };
    println!(
        "{:<18} enqueue {:>7.0}/s  drain {actions} in {:>6.2} s = {:>7.0} actions/s  {requests} requests, {limit}  latency p50 {:.2} s  p99 {:.2} s",
        case.label,
        actions as f64 / enqueue_time.as_secs_f64(),
        drain_time.as_secs_f64(),
        actions as f64 / drain_time.as_secs_f64(),
        percentile(0.5),
        percentile(0.99),
    );
    store.close().await;
    Ok(())
}

fn main() {
    let actions = env_number("BENCH_ACTIONS", 10_000);
    let batch = env_number("BENCH_BATCH", 50);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("benchmark not run: {error}");
            std::process::exit(1);
        }
    };
    let failed = runtime.block_on(async {
        let mut spec = SandboxConfig::graas(1, actions);
        spec.history_secs = 3600;
        let sandbox = match Sandbox::start(([127, 0, 0, 1], 0).into(), spec.clone()).await {
            Ok(sandbox) => Arc::new(sandbox),
            Err(error) => {
                eprintln!("benchmark not run: {error}");
                return true;
            }
        };
        let url = sandbox.base_url();
        let pg = common::pg_url();
        let schema = format!("bench_outbox_{}", std::process::id());
        let mut databases = vec![(
            "sqlite",
            "[database]\nurl = \"sqlite://{dir}/bench.db\"\n".to_owned(),
        )];
        if let Some(url) = &pg {
            databases.push((
                "postgres",
                format!("[database]\nurl = \"{url}\"\nschema = \"{schema}\"\n"),
            ));
        }
        let mut failed = false;
        for (backend, database) in &databases {
            for (rate_limit, limit_per_sec) in [("100000/s", None), ("50/s", Some(50.0))] {
                let label = format!(
                    "{backend} {}",
                    if limit_per_sec.is_some() {
                        "50/s"
                    } else {
                        "unlimited"
                    }
                );
                let case = Case {
                    label: &label,
                    database: database.clone(),
                    rate_limit,
                    limit_per_sec,
                };
                if let Err(error) = run_case(&case, &url, &spec, &sandbox, actions, batch).await {
                    eprintln!("{label}: {error}");
                    failed = true;
                }
                if *backend == "postgres"
                    && let Some(url) = &pg
                {
                    // Each case starts from an empty queue.
                    common::drop_schema(url, &schema);
                }
            }
        }
        failed
    });
    if failed {
        std::process::exit(1);
    }
}
