//! Freshness benchmark: how soon the database equals Graas once a steady load with mass status
//! changes stops. Two accounts at 8 requests/s (the sandbox refuses a ninth in any second), runs
//! every 2 s, settle 1 s, lookback 10 min; 20 status changes/s, a fifth of them backdated up to
//! 20 s; every 12 s, 700 orders of the first account stamped with one second. Prints, for the
//! whole lookback re-read every run and on its own schedule: seconds from the last change until
//! the database equals the sandbox, how far the cursor trailed the newest change during the
//! load, and the requests made. SQLite.
//!
//!     cargo bench --bench freshness
//!
//! `BENCH_LOAD_SECS` changes how long the load runs (default 60).

mod common;

use common::env_number;
use ordersync::app::{App, Daemon};
use ordersync::config::Config;
use ordersync::model::{ProviderKind, StreamKey};
use ordersync::sandbox::{Sandbox, SandboxConfig};
use ordersync::store::{self, Store, StoredOrder};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ACCOUNTS: usize = 2;
const ORDERS: usize = 3_000;

fn spec() -> SandboxConfig {
    SandboxConfig::graas(ACCOUNTS, ORDERS).with_mass_status_changes()
}

fn config(dir: &std::path::Path, sandbox: &Sandbox, spec: &SandboxConfig, every: &str) -> String {
    let start = chrono::Utc::now() - chrono::Duration::seconds(spec.history_secs + 3600);
    let mut text = format!(
        "[database]\nurl = \"sqlite://{}/freshness.db\"\n\n[log]\nlevel = \"warn\"\n",
        dir.display()
    );
    for (i, account) in spec.graas.iter().enumerate() {
        text.push_str(&format!(
            "\n[[graas]]\nname = \"shop-{}\"\nbase_url = \"{}\"\naccount_number = \"{}\"\napp_key = \"{}\"\nschedule = \"*/2 * * * * *\"\nlookback = \"10m\"\nlookback_every = \"{every}\"\nsettle = \"1s\"\npage_size = 200\nstart_from = \"{}\"\nrate_limit = \"8/s\"\n",
            i + 1,
            sandbox.base_url(),
            account.account_number,
            account.app_key,
            start.to_rfc3339(),
        ));
    }
    text
}

async fn differences(store: &Arc<dyn Store>, sandbox: &Sandbox, spec: &SandboxConfig) -> usize {
    let mut differences = 0;
    for (i, account) in spec.graas.iter().enumerate() {
        let stored: BTreeSet<StoredOrder> = store
            .orders_of("graas", &format!("shop-{}", i + 1))
            .await
            .unwrap_or_default()
            .into_iter()
            .collect();
        let expected: BTreeSet<StoredOrder> = sandbox
            .graas()
            .truth(&account.account_number)
            .into_iter()
            .filter_map(|o| {
                Some(StoredOrder {
                    channel: o.channel,
                    external_id: o.order_id,
                    status: Some(o.status),
                    payment_status: Some(o.payment_status),
                    shipping_status: Some(o.shipping_status),
                    upstream_updated_at: chrono::DateTime::from_timestamp(o.updated, 0)?,
                })
            })
            .collect();
        differences += stored.symmetric_difference(&expected).count();
    }
    differences
}

async fn newest_cursor_lag(store: &Arc<dyn Store>, sandbox_newest: i64) -> i64 {
    let mut lag = 0;
    for i in 0..ACCOUNTS {
        let stream = StreamKey {
            provider: ProviderKind::Graas,
            account: format!("shop-{}", i + 1),
            resource: "orders".to_owned(),
        };
        let cursor = store
            .cursor(&stream)
            .await
            .ok()
            .flatten()
            .and_then(|c| c.parse::<i64>().ok())
            .unwrap_or(0);
        lag = lag.max(sandbox_newest - cursor);
    }
    lag
}

async fn run_case(label: &str, every: &str, load: Duration) -> Result<(), String> {
    let spec = spec();
    let sandbox = Sandbox::start(([127, 0, 0, 1], 0).into(), spec.clone())
        .await
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = Config::from_toml(&config(dir.path(), &sandbox, &spec, every))
        .map_err(|e| e.to_string())?;
    let store = store::open(&config.database)
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    let runners = App::build(&config, &store)
        .map_err(|e| e.to_string())?
        .runners;
    let daemon = Daemon::start(runners).await.map_err(|e| e.to_string())?;

    // The first backfill is not what is measured: the load starts once it is done, its data
    // stored and its cursors near now (pages of a window are stored before its cursor moves).
    let started = Instant::now();
    while started.elapsed() < load
        && (differences(&store, &sandbox, &spec).await > 1_000
            || newest_cursor_lag(&store, chrono::Utc::now().timestamp()).await > 60)
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let loaded = Instant::now();
    let mut lags = Vec::new();
    while loaded.elapsed() < load {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let newest = chrono::Utc::now().timestamp();
        lags.push(newest_cursor_lag(&store, newest).await);
    }
    let requests_before: u64 = spec
        .graas
        .iter()
        .filter_map(|a| sandbox.graas().stats(&a.account_number))
        .map(|s| s.traffic.requests)
        .sum();
    sandbox.graas().set_mutating(false);
    let stopped = Instant::now();
    let mut caught_up = None;
    while stopped.elapsed() < Duration::from_secs(120) {
        if differences(&store, &sandbox, &spec).await == 0 {
            caught_up = Some(stopped.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stats: Vec<_> = spec
        .graas
        .iter()
        .filter_map(|a| sandbox.graas().stats(&a.account_number))
        .collect();
    let requests: u64 = stats.iter().map(|s| s.traffic.requests).sum();
    let over_limit: u64 = stats.iter().map(|s| s.traffic.over_limit).sum();
    let changes: u64 = stats.iter().map(|s| s.changes).sum();
    let leftover = daemon
        .shutdown(tokio::time::Instant::now() + Duration::from_secs(10))
        .await;
    store.close().await;
    sandbox.stop().await;
    lags.sort_unstable();
    let median = lags.get(lags.len() / 2).copied().unwrap_or(0);
    let worst = lags.last().copied().unwrap_or(0);
    let caught_up = caught_up.map_or("not within 120 s".to_owned(), |d| {
        format!("{:.1} s", d.as_secs_f64())
    });
    println!(
        "{label:<36} caught up {caught_up:>16} after the last change | cursor behind now during the load: median {median} s, worst {worst} s | {changes} changes, {requests} requests ({} after the load), {over_limit} refused with 429{}",
        requests - requests_before,
        if leftover.is_empty() {
            ""
        } else {
            " | shutdown left streams running"
        }
    );
    Ok(())
}

fn main() {
    let load = Duration::from_secs(env_number("BENCH_LOAD_SECS", 60) as u64);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("no runtime: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "freshness: {ACCOUNTS} accounts of {ORDERS} orders at 8/s, 20 changes/s (a fifth backdated up to 20 s), 700 orders stamped with one second every 12 s, {} s of load",
        load.as_secs()
    );
    for (label, every) in [
        ("whole lookback every run", "0s"),
        ("lookback_every = \"1m\" (default)", "1m"),
    ] {
        if let Err(e) = runtime.block_on(run_case(label, every, load)) {
            eprintln!("{label}: {e}");
            std::process::exit(1);
        }
    }
}
