//! KassaForte benchmark: many shops on one daemon against the sandbox, both in their own
//! processes.
//!
//! 1. Watching: `BENCH_SHOPS` (200) shops, half open around the clock and half never open, polled
//!    at `BENCH_OPEN_EVERY` (10s) and `BENCH_CLOSED_EVERY` (1m); after a warm-up (the first poll
//!    of each shop fetches its three documents, then one open period) the daemon is measured for
//!    `BENCH_SECS` (120):
//!    requests per shop-hour while open and while closed (against what the configuration asks),
//!    the daemon's CPU (share of one core) and its resident memory (now and peak).
//! 2. Submitting: `BENCH_SUBMISSIONS` (2000) orders over 4 shops at an unlimited rate: orders
//!    created per second, end to end (claim, state check, POST, order row, outcome).
//!
//!     cargo bench --bench kassaforte

mod common;

use common::{BIN, Process, env_number, start_sandbox};
use ordersync::config::Config;
use ordersync::outbox::request::ActionRequest;
use ordersync::providers::money::decimal_to_minor;
use ordersync::sandbox::kassaforte::shop_specs;
use ordersync::store;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn shops_toml(sandbox: &str, count: usize, extra: &str) -> String {
    let mut text = String::new();
    for shop in shop_specs(count) {
        text.push_str(&format!(
            "[[kassaforte]]\nname = \"{}\"\nbase_url = \"{sandbox}\"\nusername = \"{}\"\npassword = \"{}\"\n{extra}\n",
            shop.name, shop.username, shop.password
        ));
    }
    text
}

fn spawn_daemon(config: &std::path::Path) -> Result<Process, String> {
    Command::new(BIN)
        .args(["run", "--config"])
        .arg(config)
        .env_remove("ORDERSYNC_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Process)
        .map_err(|e| format!("cannot start the daemon: {e}"))
}

/// CPU seconds (user + system) a process has used.
fn cpu_seconds(pid: u32) -> Result<f64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let per_second = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0);
    // utime and stime are fields 14 and 15 of stat: 12 and 13 after the name.
    Ok((ticks(11) + ticks(12)) / per_second)
}

/// (resident now, resident peak) in MB.
fn memory_mb(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (kb("VmRSS:") / 1024.0, kb("VmHWM:") / 1024.0)
}

async fn shop_requests(http: &reqwest::Client, sandbox: &str, shop: &str) -> Result<u64, String> {
    let stats: serde_json::Value = http
        .get(format!("{sandbox}/_sandbox/kassaforte/{shop}/stats"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    Ok(stats["traffic"]["requests"].as_u64().unwrap_or(0))
}

async fn requests_of(
    http: &reqwest::Client,
    sandbox: &str,
    shops: &[String],
) -> Result<u64, String> {
    let mut total = 0;
    for shop in shops {
        total += shop_requests(http, sandbox, shop).await?;
    }
    Ok(total)
}

async fn watching(sandbox: &str, http: &reqwest::Client) -> Result<(), String> {
    let count = env_number("BENCH_SHOPS", 200);
    let secs = env_number("BENCH_SECS", 120);
    let open_every = std::env::var("BENCH_OPEN_EVERY").unwrap_or_else(|_| "10s".into());
    let closed_every = std::env::var("BENCH_CLOSED_EVERY").unwrap_or_else(|_| "1m".into());
    let names: Vec<String> = shop_specs(count).into_iter().map(|s| s.name).collect();
    let (open, closed) = names.split_at(count / 2);
    let never = serde_json::json!({ "openingtimes": vec![serde_json::json!([]); 8], "acceptStart": 0, "acceptEnd": 0 });
    for shop in closed {
        http.put(format!("{sandbox}/_sandbox/kassaforte/{shop}/openhours"))
            .json(&never)
            .send()
            .await
            .map_err(|e| e.to_string())?;
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("ordersync.toml");
    let text = format!(
        "[database]\nurl = \"sqlite://{}/bench.db\"\n[log]\nlevel = \"warn\"\n{}",
        dir.path().display(),
        shops_toml(
            sandbox,
            count,
            &format!(
                "infos_every_open = \"{open_every}\"\ninfos_every_closed = \"{closed_every}\""
            )
        )
    );
    std::fs::write(&config, text).map_err(|e| e.to_string())?;
    let daemon = spawn_daemon(&config)?;
    let pid = daemon.0.id();
    // Warm-up: every shop's first poll and its three documents (at 1 request/s per shop), and
    // one full open period, after which each shop polls on its own tick.
    let open_period = humantime::parse_duration(&open_every).unwrap_or(Duration::from_secs(10));
    tokio::time::sleep(open_period + Duration::from_secs(15)).await;
    let (open_before, closed_before) = (
        requests_of(http, sandbox, open).await?,
        requests_of(http, sandbox, closed).await?,
    );
    let cpu_before = cpu_seconds(pid)?;
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(secs as u64)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid)? - cpu_before;
    let (open_after, closed_after) = (
        requests_of(http, sandbox, open).await?,
        requests_of(http, sandbox, closed).await?,
    );
    let (rss, peak) = memory_mb(pid);
    drop(daemon);
    let per_shop_hour =
        |requests: u64, shops: usize| requests as f64 / shops.max(1) as f64 * 3600.0 / elapsed;
    let expected = |every: &str| {
        humantime::parse_duration(every)
            .map(|d| 3600.0 / d.as_secs_f64())
            .unwrap_or(0.0)
    };
    println!(
        "watching  {count} shops for {elapsed:.0} s: open {:.0} requests/shop-hour (configured {:.0}), closed {:.1} (configured {:.1})",
        per_shop_hour(open_after - open_before, open.len()),
        expected(&open_every),
        per_shop_hour(closed_after - closed_before, closed.len()),
        expected(&closed_every),
    );
    println!(
        "watching  daemon CPU {:.2}% of one core, RSS {rss:.1} MB (peak {peak:.1} MB)",
        cpu / elapsed * 100.0
    );
    Ok(())
}

async fn submitting(sandbox: &str, http: &reqwest::Client) -> Result<(), String> {
    let total = env_number("BENCH_SUBMISSIONS", 2_000);
    let shops = shop_specs(4);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config_path = dir.path().join("ordersync.toml");
    let text = format!(
        "[database]\nurl = \"sqlite://{}/bench.db\"\n[log]\nlevel = \"warn\"\n[outbox]\npoll_interval = \"20ms\"\n{}",
        dir.path().display(),
        shops_toml(
            sandbox,
            shops.len(),
            "rate_limit = \"100000/s\"\naction_batch_size = 50"
        )
    );
    std::fs::write(&config_path, &text).map_err(|e| e.to_string())?;
    let config = Config::from_toml(&text).map_err(|e| e.to_string())?;
    let store = store::open(&config.database)
        .await
        .map_err(|e| e.to_string())?;
    store.migrate().await.map_err(|e| e.to_string())?;
    // A valid pickup order of one item at the sandbox menu's price.
    let mut orders = Vec::new();
    for shop in &shops {
        let menu: serde_json::Value = http
            .get(format!("{sandbox}/v1/menu"))
            .basic_auth(&shop.username, Some(&shop.password))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let product = &menu["products"][0];
        let price = decimal_to_minor(&product["sizes"][0]["price"].to_string())?;
        orders.push((
            shop.name.clone(),
            product["itemNo"].clone(),
            product["sizes"][0]["sizeId"].clone(),
            price,
        ));
    }
    for n in 0..total {
        let (shop, item, size, price) = &orders[n % orders.len()];
        let request = ActionRequest {
            account: shop.clone(),
            kind: "submit".into(),
            order: Some(serde_json::json!({
                "reference": format!("BENCH-{n}"), "deliveryType": "pickup", "paymentMethod": 0,
                "items": [{ "itemNo": item, "sizeId": size, "quantity": 1, "price": price }],
                "sum": price,
            })),
            ..ActionRequest::default()
        };
        let action = request.into_action(&config).map_err(|e| e.to_string())?;
        store.enqueue(&action).await.map_err(|e| e.to_string())?;
    }
    let started = Instant::now();
    let daemon = spawn_daemon(&config_path)?;
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
        if started.elapsed() > Duration::from_secs(300) {
            return Err("the submissions did not finish within 5 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    drop(daemon);
    let counts = store.action_counts().await.map_err(|e| e.to_string())?;
    let succeeded: i64 = counts
        .iter()
        .filter(|c| c.state == "succeeded")
        .map(|c| c.count)
        .sum();
    store.close().await;
    println!(
        "submitting {total} orders over {} shops, unlimited rate: {succeeded} created in {elapsed:.2} s = {:.0} submissions/s (daemon start included)",
        shops.len(),
        succeeded as f64 / elapsed
    );
    if succeeded != total as i64 {
        return Err(format!("{succeeded} of {total} submissions succeeded"));
    }
    Ok(())
}

fn main() {
    let count = env_number("BENCH_SHOPS", 200).max(4);
    let shops = count.to_string();
    let (sandbox, url) = match start_sandbox(&[
        "--accounts",
        "0",
        "--getitdone-accounts",
        "0",
        "--kassaforte-shops",
        &shops,
    ]) {
        Ok(started) => started,
        Err(error) => {
            eprintln!("benchmark not run: {error}");
            std::process::exit(1);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("benchmark not run: {error}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(async {
        let http = reqwest::Client::new();
        watching(&url, &http).await?;
        submitting(&url, &http).await
    });
    drop(sandbox);
    if let Err(error) = result {
        eprintln!("benchmark failed: {error}");
        std::process::exit(1);
    }
}
