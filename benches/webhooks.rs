//! Webhook ingress benchmark: `ordersync run` with one Get It Done account against a sandbox in
//! its own process; 20,000 signed deliveries from 32 concurrent senders. Prints deliveries
//! acknowledged (stored) per second and the time to each 2xx (p50, p99, max); then, with the
//! inbox idle, the time from a delivery to the polled snapshot in `orders` (p50, p99) at the
//! account's rate limit. SQLite always; Postgres when `ORDERSYNC_TEST_PG` (or
//! `ORDERSYNC_BENCH_PG`) is set.
//!
//!     cargo bench --bench webhooks
//!
//! `BENCH_DELIVERIES`, `BENCH_SENDERS` and `BENCH_RATE` change the size.

mod common;

use common::{BIN, Process, env_number, free_port};
use ordersync::providers::getitdone::signature;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const ACCOUNT: &str = "gid-1";
const SECRET: &str = "gid-hook-secret-1";
/// Orders the throughput phase's events are about (each gets several events).
const BURST_ORDERS: usize = 2_000;
/// Orders of the latency phase, each announced once, paced below the rate limit.
const LATENCY_ORDERS: usize = 200;

fn start_sandbox() -> Result<(Process, String), String> {
    let orders = (BURST_ORDERS + LATENCY_ORDERS).to_string();
    common::start_sandbox(&["--accounts", "0", "--getitdone-orders", &orders])
}

fn event(n: usize, order: usize) -> Vec<u8> {
    format!(
        r#"{{"_eid":"bench-{n}","_type":"OrderStatusEvent","_v":"1.1.0","orderId":"{ACCOUNT}-job-{order:06}","status":"open","orderNumber":"O-{order:010}"}}"#
    )
    .into_bytes()
}

async fn send(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Result<Duration, String> {
    let timestamp = chrono::Utc::now().timestamp();
    let signature = signature::sign(SECRET, timestamp, &body);
    let started = Instant::now();
    let response = client
        .post(url)
        .header("X-GID-Timestamp", timestamp.to_string())
        .header("X-GID-Signature", signature)
        .body(body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("answered {}", response.status()));
    }
    Ok(started.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Delivery received → order first seen, for the latency phase's orders, from the database.
async fn snapshot_delays(
    database_url: &str,
    schema: Option<&str>,
) -> Result<Vec<Duration>, String> {
    use sqlx::Connection;
    let query = "SELECT d.received_at, o.first_seen_at FROM webhook_deliveries d \
                 JOIN orders o ON o.provider = d.provider AND o.account = d.account \
                 AND o.external_id = d.object_id WHERE d.event_id LIKE 'latency-%'";
    let parse = |text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| e.to_string())
    };
    let rows: Vec<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> = match schema {
        None => {
            let mut conn = sqlx::SqliteConnection::connect(database_url)
                .await
                .map_err(|e| e.to_string())?;
            let rows: Vec<(String, String)> = sqlx::query_as(query)
                .fetch_all(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            rows.iter()
                .map(|(a, b)| Ok((parse(a)?, parse(b)?)))
                .collect::<Result<_, String>>()?
        }
        Some(schema) => {
            let mut conn = sqlx::PgConnection::connect(database_url)
                .await
                .map_err(|e| e.to_string())?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")))
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
            sqlx::query_as(query)
                .fetch_all(&mut conn)
                .await
                .map_err(|e| e.to_string())?
        }
    };
    let mut delays: Vec<Duration> = rows
        .into_iter()
        .map(|(received, seen)| (seen - received).to_std().unwrap_or_default())
        .collect();
    delays.sort();
    Ok(delays)
}

async fn bench(
    label: &str,
    database: &str,
    database_url: &str,
    schema: Option<&str>,
    sandbox_url: &str,
) -> Result<(), String> {
    let deliveries = env_number("BENCH_DELIVERIES", 20_000);
    let senders = env_number("BENCH_SENDERS", 32);
    let rate = env_number("BENCH_RATE", 100);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port()?;
    let config = format!(
        "{database}\n[log]\nlevel = \"warn\"\n[webhooks]\nlisten = \"127.0.0.1:{port}\"\n\
         [[getitdone]]\nname = \"{ACCOUNT}\"\nbase_url = \"{sandbox_url}\"\nclient_id = \"gid-client-1\"\n\
         client_secret = \"gid-secret-1\"\nwebhook_secrets = [\"{SECRET}\"]\ndebounce = \"200ms\"\n\
         rate_limit = \"{rate}/s\"\nrepoll_schedule = \"0 0 0 1 1 *\"\n"
    )
    .replace("{dir}", &dir.path().display().to_string());
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    // BENCH_LOG=DIR keeps each daemon's log (at debug) there.
    let log: Stdio = match std::env::var("BENCH_LOG") {
        Ok(dir) => std::fs::File::create(format!("{dir}/webhooks-{label}.log"))
            .map_err(|e| e.to_string())?
            .into(),
        Err(_) => Stdio::null(),
    };
    let _daemon = Process(
        Command::new(BIN)
            .args(["run", "--config"])
            .arg(&path)
            .env("ORDERSYNC_LOG__LEVEL", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?,
    );
    let url = format!("http://127.0.0.1:{port}/webhooks/getitdone/{ACCOUNT}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(senders)
        .build()
        .map_err(|e| e.to_string())?;
    let ready = Instant::now();
    while client
        .get(format!("http://127.0.0.1:{port}/"))
        .send()
        .await
        .is_err()
    {
        if ready.elapsed() > Duration::from_secs(30) {
            return Err("the daemon's webhook listener did not come up".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Throughput: every sender posts as fast as it is answered.
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = (0..senders)
        .map(|_| {
            let (client, url, next) = (client.clone(), url.clone(), next.clone());
            tokio::spawn(async move {
                let mut times = Vec::new();
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= deliveries {
                        return Ok::<_, String>(times);
                    }
                    times.push(send(&client, &url, event(n, n % BURST_ORDERS)).await?);
                }
            })
        })
        .collect();
    let mut times = Vec::with_capacity(deliveries);
    for task in tasks {
        times.extend(task.await.map_err(|e| e.to_string())??);
    }
    let wall = started.elapsed();
    times.sort();
    println!(
        "{label:<9} {deliveries} deliveries from {senders} senders in {:.2} s: {:>6.0} acknowledged and stored /s; time to 2xx p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        wall.as_secs_f64(),
        deliveries as f64 / wall.as_secs_f64(),
        ms(percentile(&times, 0.50)),
        ms(percentile(&times, 0.99)),
        ms(times.last().copied().unwrap_or_default()),
    );

    // Latency to the snapshot: wait for the burst's polls, then announce new orders one by
    // one below the rate limit.
    let settle = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(
        BURST_ORDERS as f64 / rate as f64 + 2.0,
    ))
    .await;
    let pace = Duration::from_secs_f64(2.0 / rate as f64);
    for i in 0..LATENCY_ORDERS {
        let body = String::from_utf8_lossy(&event(i, BURST_ORDERS + i))
            .replace("bench-", "latency-")
            .into_bytes();
        send(&client, &url, body).await?;
        tokio::time::sleep(pace).await;
    }
    let mut delays = Vec::new();
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        delays = snapshot_delays(database_url, schema).await?;
        if delays.len() == LATENCY_ORDERS {
            break;
        }
    }
    if delays.len() != LATENCY_ORDERS {
        return Err(format!(
            "only {} of {LATENCY_ORDERS} orders were polled",
            delays.len()
        ));
    }
    println!(
        "{label:<9} delivery to polled snapshot ({LATENCY_ORDERS} orders at {:.0}/s, rate_limit {rate}/s, debounce 200ms, after {:.0} s of burst polls): p50 {:.0} ms, p99 {:.0} ms",
        1.0 / pace.as_secs_f64(),
        settle.elapsed().as_secs_f64(),
        ms(percentile(&delays, 0.50)),
        ms(percentile(&delays, 0.99)),
    );
    Ok(())
}

fn main() {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("benchmark not run: {error}");
            std::process::exit(1);
        }
    };
    let (_sandbox, sandbox_url) = match start_sandbox() {
        Ok(started) => started,
        Err(error) => {
            eprintln!("benchmark not run: {error}");
            std::process::exit(1);
        }
    };
    let mut failed = false;
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(error) => {
            eprintln!("benchmark not run: {error}");
            std::process::exit(1);
        }
    };
    let sqlite_url = format!("sqlite://{}/bench.db", dir.path().display());
    let sqlite = format!("[database]\nurl = \"{sqlite_url}\"\n");
    if let Err(error) = runtime.block_on(bench("sqlite", &sqlite, &sqlite_url, None, &sandbox_url))
    {
        eprintln!("sqlite: {error}");
        failed = true;
    }
    if let Some(url) = common::pg_url() {
        // A second sandbox: the first one's orders were polled and changed nothing, but a
        // fresh one keeps the two runs alike.
        let schema = format!("bench_hooks_{}", std::process::id());
        let database = format!("[database]\nurl = \"{url}\"\nschema = \"{schema}\"\n");
        let result = start_sandbox().and_then(|(_second, second_url)| {
            runtime.block_on(bench(
                "postgres",
                &database,
                &url,
                Some(&schema),
                &second_url,
            ))
        });
        if let Err(error) = result {
            eprintln!("postgres: {error}");
            failed = true;
        }
        common::drop_schema(&url, &schema);
    }
    if failed {
        std::process::exit(1);
    }
}
