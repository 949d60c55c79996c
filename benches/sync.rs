//! Sync benchmark: 100,000 Graas orders from a sandbox running in its own process into SQLite,
//! and into Postgres when `ORDERSYNC_TEST_PG` (or `ORDERSYNC_BENCH_PG`) is set. Prints orders per
//! second, wall time, the daemon's peak RSS, requests against the pages needed, the daemon's
//! CPU per stage (thread), and what it wrote for the disk (`/proc/self/io`).
//!
//!     cargo bench --bench sync
//!
//! `BENCH_ORDERS` and `BENCH_PAGE_SIZE` change the size; `BENCH_HISTORY_DAYS` (default 3) the
//! days the orders are spread over (730: a shop's two years, a few hundred orders a day);
//! `BENCH_MAX_WINDOW` the account's `max_window` (default 1d). `BENCH_BUFFERED` sets
//! `database.buffered_orders` (default: the backend's). `BENCH_ACCOUNTS` (default 1)
//! spreads the orders over that many accounts backfilled at once, as a new install with several
//! shops does (they share one buffer of fetched orders). `BENCH_IDS=creation` numbers the
//! orders in the order they were created, as a marketplace does (default `random`: ids in random
//! order of time, the worst case for the unique index). `BENCH_LOG` sets the daemon's
//! log filter (e.g. `warn,ordersync::sync::window=trace` for every window page read) and keeps
//! its log in `target/bench-sync-<backend>.log`.
//!
//! `BENCH_SIZES=10000,100000,1000000` runs those sizes in turn (instead of `BENCH_ORDERS`),
//! `BENCH_ROUNDS` times (default 1), and ends with each size's median orders/s against the
//! fastest size's (three decimals, and whether the slowest is within 15%): how flat speed
//! stays as the database grows, measured within one sitting. A size below 100,000 orders runs
//! up to 5 times a round, and every size at least `BENCH_LEAST_REPEATS` times (default 1:
//! three runs of 1,000,000 orders in three rounds make a coarse median). Each run also prints
//! its syncing alone (`run --once`'s own timing of its jobs, without the process's start and
//! stop), and the summary the same ratio for it, then each size's median milliseconds outside its
//! syncing: what a run pays once whatever its size, apart. Two lines say how far the sitting can
//! tell: the smallest size's median round by round, against itself (how far the machine alone
//! moves a median within minutes), and the ratio when each size's runs are resampled, with what
//! it would read if every size were equally fast at those runs' spread. A round runs each size's
//! runs in a row, smallest first; `BENCH_SHUFFLE=1` runs them in a seeded random order instead,
//! so that no size always follows the same others (on this machine a short run's speed depends
//! on what ran in the seconds before it).
//!
//! Before each run's clock starts, what earlier runs wrote is let reach the disk (a Postgres
//! `CHECKPOINT`, then `sync`); `BENCH_NO_SETTLE=1` starts each run without waiting for it.
//! SQLite's database goes in a new directory under `TMPDIR` (default `/tmp`): pointing it at a
//! RAM-backed filesystem (`TMPDIR=/dev/shm`) shows what the disk costs.

mod common;

use common::{BIN, env_number, start_sandbox};
use std::process::Command;
use std::time::Instant;

/// What a run backfills: `accounts` accounts of `orders_each` orders.
struct Shape {
    accounts: usize,
    orders_each: usize,
    page_size: usize,
    history_days: usize,
    ids: String,
}

/// Orders/s of one run: over the whole process, and over its syncing alone; and the
/// milliseconds outside its syncing (the process's start, the store's close, the exit).
#[derive(Clone, Copy)]
struct Speed {
    wall: f64,
    syncing: f64,
    outside_ms: f64,
}

fn run_once(label: &str, database: &str, base_url: &str, shape: &Shape) -> Result<Speed, String> {
    let Shape {
        accounts,
        orders_each,
        page_size,
        history_days,
        ref ids,
    } = *shape;
    let orders = accounts * orders_each;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let start = chrono::Utc::now() - chrono::Duration::days(history_days as i64 + 1);
    let log_level = std::env::var("BENCH_LOG").ok();
    let max_window = std::env::var("BENCH_MAX_WINDOW").unwrap_or_else(|_| "1d".to_owned());
    let mut config = format!(
        "{database}\n[log]\nlevel = \"{}\"\n",
        log_level.as_deref().unwrap_or("warn")
    )
    .replace("{dir}", &dir.path().display().to_string());
    // The sandbox's account numbers and keys.
    for i in 1..=accounts {
        config.push_str(&format!(
            "\n[[graas]]\nname = \"bench-{i}\"\nbase_url = \"{base_url}\"\naccount_number = \"5a4e44b3a67a6d00048{i:05}\"\napp_key = \"sandbox-key-{i}\"\nstart_from = \"{}\"\npage_size = {page_size}\nsettle = \"1s\"\nrate_limit = \"100000/s\"\nmax_window = \"{max_window}\"\n",
            start.to_rfc3339()
        ));
    }
    let path = dir.path().join("bench.toml");
    std::fs::write(&path, config).map_err(|e| e.to_string())?;

    // The schema is created once, before the clock starts: it is not part of a backfill.
    let migrated = Command::new(BIN)
        .args(["migrate", "--config"])
        .arg(&path)
        .output()
        .map_err(|e| e.to_string())?;
    if !migrated.status.success() {
        return Err(format!(
            "migrate failed: {}",
            String::from_utf8_lossy(&migrated.stderr)
        ));
    }
    if std::env::var_os("BENCH_NO_SETTLE").is_none() {
        settle(database);
    }
    let started = Instant::now();
    let out = Command::new(BIN)
        .args(["run", "--once", "--config"])
        .arg(&path)
        .output()
        .map_err(|e| e.to_string())?;
    let wall = started.elapsed();
    if !out.status.success() {
        return Err(format!(
            "run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if log_level.is_some() {
        let log = format!("target/bench-sync-{label}.log");
        std::fs::write(&log, &out.stderr).map_err(|e| format!("{log}: {e}"))?;
        println!("          log: {log}");
    }
    let mut written = 0u64;
    let mut peak_kb = 0u64;
    let mut requests = 0u64;
    let mut syncing_ms = 0u64;
    let mut cpu = String::new();
    let mut storage_kb = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let value: serde_json::Value = serde_json::from_str(line).map_err(|e| e.to_string())?;
        written += value["written"].as_u64().unwrap_or(0);
        requests += value["requests"].as_u64().unwrap_or(0);
        peak_kb = peak_kb.max(value["peak_rss_kb"].as_u64().unwrap_or(0));
        syncing_ms = syncing_ms.max(value["elapsed_ms"].as_u64().unwrap_or(0));
        storage_kb = storage_kb.or(value["storage_written_kb"].as_u64());
        if let Some(threads) = value["cpu_ms_by_thread"].as_object() {
            cpu = cpu_by_stage(threads);
        }
    }
    // The fewest requests that can carry the data: full pages.
    let pages_needed = accounts as u64 * (orders_each as u64).div_ceil(page_size as u64).max(1);
    if written != orders as u64 {
        return Err(format!("wrote {written} orders, expected {orders}"));
    }
    println!(
        "{label:<9} {orders:>7} orders  {:>8.2} s  {:>9.0} orders/s  peak RSS {:>6.1} MB  requests {requests} for {pages_needed} pages ({:.2}x)  (page size {page_size}, {history_days} days, ids {ids}, {accounts} account{})",
        wall.as_secs_f64(),
        orders as f64 / wall.as_secs_f64(),
        peak_kb as f64 / 1024.0,
        requests as f64 / pages_needed as f64,
        if accounts == 1 { "" } else { "s" }
    );
    // `run --once` times its jobs itself (cursor reads, fetching, commits, the outbox pass):
    // the run without the process's start (connections, migrations check, leases) and stop.
    let syncing = std::time::Duration::from_millis(syncing_ms.max(1));
    println!(
        "          syncing alone {:.2} s, {:.0} orders/s; CPU by stage: {cpu}",
        syncing.as_secs_f64(),
        orders as f64 / syncing.as_secs_f64()
    );
    // Pages the daemon dirtied for the disk: SQLite's files (a Postgres server writes its own).
    if let Some(kb) = storage_kb.filter(|kb| *kb > 0) {
        println!(
            "          written for the disk by ordersync {:.0} MB, {:.2} KB an order",
            kb as f64 / 1024.0,
            kb as f64 / orders as f64
        );
    }
    Ok(Speed {
        wall: orders as f64 / wall.as_secs_f64(),
        syncing: orders as f64 / syncing.as_secs_f64(),
        outside_ms: wall.saturating_sub(syncing).as_secs_f64() * 1000.0,
    })
}

/// A round's runs as (sandbox, repeat): each size's in a row, smallest first, or in a seeded
/// random order (`BENCH_SHUFFLE`), so that no size always runs right after the same others.
fn round_order(
    orders_by_sandbox: &[usize],
    sizes: &[usize],
    least_repeats: usize,
    shuffle: Option<&mut rand::rngs::SmallRng>,
) -> Vec<(usize, usize)> {
    let mut runs: Vec<(usize, usize)> = orders_by_sandbox
        .iter()
        .enumerate()
        .flat_map(|(index, &orders)| {
            (0..repeats_per_round(sizes, orders, least_repeats)).map(move |repeat| (index, repeat))
        })
        .collect();
    if let Some(rng) = shuffle {
        use rand::seq::SliceRandom;
        runs.shuffle(rng);
    }
    runs
}

/// Lets what earlier runs wrote reach the disk before the clock starts. A 1,000,000-order run
/// leaves gigabytes on their way there (Postgres's WAL and checkpoints, the database files); a
/// run started on top of them waits behind that writeback at every commit, since Postgres syncs
/// its WAL on each. It is not part of the run being measured.
fn settle(database: &str) {
    if let Some(url) = database
        .lines()
        .find_map(|line| line.strip_prefix("url = \""))
        .and_then(|rest| rest.strip_suffix('"'))
        .filter(|url| url.starts_with("postgres"))
    {
        // Writes out the server's dirty buffers now rather than in the middle of the run.
        let _ = Command::new("psql")
            .args([url, "-qc", "CHECKPOINT"])
            .stderr(std::process::Stdio::null())
            .status();
    }
    let _ = Command::new("sync").status();
}

/// Runs of one size per round in a sitting of sizes: a size below 100,000 orders runs more
/// often (up to 5 times), so its median rests on more than a few runs of a few tenths of a
/// second each, where the machine's noise is as large as the differences measured. Every size
/// runs at least `least` times a round (`BENCH_LEAST_REPEATS`, default 1), for medians of the
/// large sizes that the machine's noise moves less, at the sitting's time.
fn repeats_per_round(sizes: &[usize], orders: usize, least: usize) -> usize {
    if sizes.len() < 2 {
        return 1;
    }
    (100_000 / orders.max(1)).clamp(1, 5).max(least)
}

/// The daemon's CPU per thread, named by what each thread does in a backfill.
fn cpu_by_stage(threads: &serde_json::Map<String, serde_json::Value>) -> String {
    fn stage(name: &str) -> &str {
        match name {
            "ordersync" => "start and stop (main thread)",
            "tokio-rt-worker" => "fetch, parse and Postgres commit tasks (runtime workers)",
            "sqlx-sqlite-wor" => "SQLite connections",
            "sqlite-commits" => "binding and sending SQLite's statements (commit threads)",
            _ => name,
        }
    }
    let mut parts: Vec<(u64, String)> = threads
        .iter()
        .filter_map(|(name, ms)| Some((ms.as_u64()?, stage(name).to_owned())))
        .filter(|(ms, _)| *ms > 0)
        .collect();
    parts.sort_by_key(|part| std::cmp::Reverse(part.0));
    parts
        .iter()
        .map(|(ms, stage)| format!("{stage} {:.2} s", *ms as f64 / 1000.0))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Orders/s of every run, by backend, size and round, for the summary of a run over several
/// sizes.
#[derive(Default)]
struct Speeds(Vec<(&'static str, usize, usize, Speed)>);

impl Speeds {
    /// Per backend: each size's median and the range, and the slowest median against the
    /// fastest (1.00: flat); then the same for the syncing alone, which leaves out what every
    /// run pays once whatever its size (the process's start and stop).
    fn print_summary(&self) {
        for backend in ["sqlite", "postgres"] {
            let wall = self.medians(backend, |speed| speed.wall);
            if wall.is_empty() {
                continue;
            }
            println!("{backend}: median orders/s by size, runs interleaved");
            let flatness = print_medians(&wall);
            let syncing = medians_on_one_line(&self.medians(backend, |speed| speed.syncing));
            // Three decimals: 0.846 printed as 0.85 would read as within 15%.
            let within = if flatness >= FLAT_ENOUGH { "yes" } else { "no" };
            println!(
                "  slowest size / fastest size: {flatness:.3}, within 15%: {within} (syncing alone: {syncing})"
            );
            if let Some(line) = self.round_by_round(backend) {
                println!("{line}");
            }
            let runs = self.runs(backend, |speed| speed.wall);
            if runs.len() > 1 && runs.iter().all(|(_, runs)| runs.len() > 1) {
                let noise = resample(&runs);
                println!(
                    "  the runs resampled: the ratio reads {:.3}-{:.3} (90%); sizes equally fast, with these runs' spread, would read {:.3} (median) and below {FLAT_ENOUGH} in {:.0}% of the resamples",
                    noise.low,
                    noise.high,
                    noise.flat_median,
                    noise.flat_below * 100.0
                );
            }
            // What a short run feels most: on SQLite mostly the close, which copies the last
            // commits into the database file, syncs it and deletes the log.
            let outside: Vec<String> = self
                .medians(backend, |speed| speed.outside_ms)
                .iter()
                .map(|(size, median, low, high)| {
                    format!("{size} {median:.0} ms ({low:.0}-{high:.0})")
                })
                .collect();
            println!(
                "  outside the syncing (start, close, exit), medians: {}",
                outside.join(", ")
            );
        }
    }

    /// Each size's median, lowest and highest orders/s by `measure`, smallest size first.
    fn medians(
        &self,
        backend: &str,
        measure: impl Fn(&Speed) -> f64,
    ) -> Vec<(usize, f64, f64, f64)> {
        self.runs(backend, measure)
            .into_iter()
            .map(|(size, mut runs)| {
                runs.sort_by(f64::total_cmp);
                (size, median(&runs), runs[0], runs[runs.len() - 1])
            })
            .collect()
    }

    /// The smallest size's median in each round, and the slowest against the fastest: one
    /// size against itself, minutes apart, which is how far the machine alone moves a
    /// comparison of medians. `None` unless that size ran more than once in several rounds.
    fn round_by_round(&self, backend: &str) -> Option<String> {
        let smallest = self
            .0
            .iter()
            .filter(|(b, ..)| *b == backend)
            .map(|(_, size, ..)| *size)
            .min()?;
        let rounds = self.0.iter().map(|(.., round, _)| *round).max()? + 1;
        let medians: Vec<f64> = (0..rounds)
            .filter_map(|round| {
                let runs: Vec<f64> = self
                    .0
                    .iter()
                    .filter(|(b, s, r, _)| *b == backend && *s == smallest && *r == round)
                    .map(|(.., speed)| speed.wall)
                    .collect();
                (runs.len() > 1).then(|| median_of(&runs))
            })
            .collect();
        if medians.len() < 2 {
            return None;
        }
        let listed: Vec<String> = medians.iter().map(|m| format!("{m:.0}/s")).collect();
        Some(format!(
            "  {smallest} orders against themselves, round by round (medians): {}; {:.3}",
            listed.join(", "),
            slowest_over_fastest(&medians)
        ))
    }

    /// Each size's runs by `measure`, smallest size first.
    fn runs(&self, backend: &str, measure: impl Fn(&Speed) -> f64) -> Vec<(usize, Vec<f64>)> {
        let mut sizes: Vec<usize> = self
            .0
            .iter()
            .filter(|(b, ..)| *b == backend)
            .map(|(_, size, ..)| *size)
            .collect();
        sizes.sort_unstable();
        sizes.dedup();
        sizes
            .iter()
            .map(|&size| {
                let runs = self
                    .0
                    .iter()
                    .filter(|(b, s, ..)| *b == backend && *s == size)
                    .map(|(.., speed)| measure(speed))
                    .collect();
                (size, runs)
            })
            .collect()
    }
}

/// The slowest size's orders/s against the fastest's that counts as flat: within 15%.
const FLAT_ENOUGH: f64 = 0.85;

/// The median of sorted values.
fn median(sorted: &[f64]) -> f64 {
    (sorted[(sorted.len() - 1) / 2] + sorted[sorted.len() / 2]) / 2.0
}

/// The median of values in any order.
fn median_of(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    median(&sorted)
}

/// The smallest value against the largest (1.0: all equal).
fn slowest_over_fastest(values: &[f64]) -> f64 {
    let fastest = values.iter().copied().fold(f64::MIN, f64::max);
    values.iter().copied().fold(fastest, f64::min) / fastest
}

/// How far the slowest-against-fastest ratio can be read on a sitting this noisy.
struct Resampled {
    /// The ratio's 5th and 95th percentiles when each size's runs are resampled.
    low: f64,
    high: f64,
    /// Sizes equally fast, each with its own runs' spread: the ratio's median, and how often
    /// it reads below 0.85.
    flat_median: f64,
    flat_below: f64,
}

/// Resamples each size's runs (with replacement, as many as it has) and takes the slowest
/// median against the fastest, 4,000 times: once as measured, once with every size's runs
/// scaled to one common median. The ratio of the slowest of a few noisy medians to the fastest
/// reads below 1 even where the sizes are equally fast, and by how much depends on the hour's
/// noise; this says how much. With three runs of a size the resampling is coarse: it shows the
/// instrument's reach, it is not a test. Seeded, so the same runs print the same figures.
fn resample(runs: &[(usize, Vec<f64>)]) -> Resampled {
    use rand::{Rng, SeedableRng};
    const DRAWS: usize = 4_000;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(12);
    let mut ratio_of = |runs: &[Vec<f64>]| -> f64 {
        let medians: Vec<f64> = runs
            .iter()
            .map(|runs| {
                let drawn: Vec<f64> = (0..runs.len())
                    .map(|_| runs[rng.random_range(0..runs.len())])
                    .collect();
                median_of(&drawn)
            })
            .collect();
        slowest_over_fastest(&medians)
    };
    let measured: Vec<Vec<f64>> = runs.iter().map(|(_, runs)| runs.clone()).collect();
    let size_medians: Vec<f64> = measured.iter().map(|runs| median_of(runs)).collect();
    let common = median_of(&size_medians);
    let flat: Vec<Vec<f64>> = measured
        .iter()
        .zip(&size_medians)
        .map(|(runs, size_median)| runs.iter().map(|run| run * common / size_median).collect())
        .collect();
    let mut as_measured: Vec<f64> = (0..DRAWS).map(|_| ratio_of(&measured)).collect();
    let mut if_flat: Vec<f64> = (0..DRAWS).map(|_| ratio_of(&flat)).collect();
    as_measured.sort_by(f64::total_cmp);
    if_flat.sort_by(f64::total_cmp);
    Resampled {
        low: as_measured[DRAWS / 20],
        high: as_measured[DRAWS - DRAWS / 20 - 1],
        flat_median: median(&if_flat),
        flat_below: if_flat.iter().filter(|ratio| **ratio < FLAT_ENOUGH).count() as f64
            / DRAWS as f64,
    }
}

/// Prints each size's median against the fastest size's; returns the slowest against the
/// fastest.
fn print_medians(medians: &[(usize, f64, f64, f64)]) -> f64 {
    let fastest = medians.iter().map(|m| m.1).fold(f64::MIN, f64::max);
    for (size, median, low, high) in medians {
        println!(
            "  {size:>8} orders  {median:>7.0}/s  ({low:.0}-{high:.0})  {:.3} of the fastest",
            median / fastest
        );
    }
    let values: Vec<f64> = medians.iter().map(|m| m.1).collect();
    slowest_over_fastest(&values)
}

/// The medians on one line, `size: orders/s`, and the slowest against the fastest.
fn medians_on_one_line(medians: &[(usize, f64, f64, f64)]) -> String {
    let sizes: Vec<String> = medians
        .iter()
        .map(|(size, median, ..)| format!("{size} {median:.0}/s"))
        .collect();
    let values: Vec<f64> = medians.iter().map(|m| m.1).collect();
    format!("{}; {:.3}", sizes.join(", "), slowest_over_fastest(&values))
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing useful either.
    let page_size = env_number("BENCH_PAGE_SIZE", 500);
    let history_days = env_number("BENCH_HISTORY_DAYS", 3);
    let ids = std::env::var("BENCH_IDS").unwrap_or_else(|_| "random".to_owned());
    let accounts = env_number("BENCH_ACCOUNTS", 1).max(1);
    // Several sizes are run in turn, `BENCH_ROUNDS` times: the machine's speed drifts from one
    // hour to the next by more than the sizes differ, so sizes are only compared within one run.
    let sizes: Vec<usize> = match std::env::var("BENCH_SIZES") {
        Ok(list) => match list
            .split(',')
            .map(|size| size.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
        {
            Ok(sizes) if !sizes.is_empty() && sizes.iter().all(|&size| size > 0) => sizes,
            _ => {
                eprintln!(
                    "BENCH_SIZES = {list:?}: give order counts separated by commas, e.g. 10000,100000,1000000"
                );
                std::process::exit(2);
            }
        },
        Err(_) => vec![env_number("BENCH_ORDERS", 100_000)],
    };
    let rounds = env_number("BENCH_ROUNDS", 1).max(1);
    let least_repeats = env_number("BENCH_LEAST_REPEATS", 1).max(1);
    if !matches!(ids.as_str(), "random" | "creation") {
        eprintln!("BENCH_IDS = {ids:?}: use \"random\" or \"creation\"");
        std::process::exit(2);
    }
    // One sandbox per size, all started before the first run: generating a large one is not
    // part of any run, and the runs of one round follow each other closely.
    let mut sandboxes = Vec::new();
    for &orders in &sizes {
        let shape = Shape {
            accounts,
            orders_each: orders / accounts,
            page_size,
            history_days,
            ids: ids.clone(),
        };
        let accounts_arg = accounts.to_string();
        let orders_arg = shape.orders_each.to_string();
        let days_arg = history_days.to_string();
        let mut sandbox_args = vec![
            "--accounts",
            &accounts_arg,
            "--orders",
            &orders_arg,
            "--history-days",
            &days_arg,
        ];
        if ids == "creation" {
            sandbox_args.push("--ids-by-creation");
        }
        match start_sandbox(&sandbox_args) {
            Ok((sandbox, base_url)) => sandboxes.push((shape, sandbox, base_url)),
            Err(error) => {
                eprintln!("benchmark not run: {error}");
                std::process::exit(1);
            }
        }
    }
    let mut failed = false;
    // `database.buffered_orders`, when given: the memory a backfill may hold against its speed.
    let buffered = std::env::var("BENCH_BUFFERED")
        .map(|orders| format!("buffered_orders = {orders}\n"))
        .unwrap_or_default();
    let sqlite = format!("[database]\nurl = \"sqlite://{{dir}}/bench.db\"\n{buffered}");
    let pg = common::pg_url();
    let mut speeds = Speeds::default();
    let mut shuffle = std::env::var_os("BENCH_SHUFFLE").map(|_| {
        use rand::SeedableRng;
        rand::rngs::SmallRng::seed_from_u64(7)
    });
    let orders_by_sandbox: Vec<usize> = sandboxes
        .iter()
        .map(|(shape, ..)| shape.accounts * shape.orders_each)
        .collect();
    for round in 0..rounds {
        let runs = round_order(&orders_by_sandbox, &sizes, least_repeats, shuffle.as_mut());
        for (index, repeat) in runs {
            let (shape, _sandbox, base_url) = &sandboxes[index];
            let orders = orders_by_sandbox[index];
            match run_once("sqlite", &sqlite, base_url, shape) {
                Ok(speed) => speeds.0.push(("sqlite", orders, round, speed)),
                Err(error) => {
                    eprintln!("sqlite: {error}");
                    failed = true;
                }
            }
            if let Some(url) = &pg {
                let schema = format!("bench_{}_{round}_{repeat}_{orders}", std::process::id());
                let database =
                    format!("[database]\nurl = \"{url}\"\nschema = \"{schema}\"\n{buffered}");
                match run_once("postgres", &database, base_url, shape) {
                    Ok(speed) => speeds.0.push(("postgres", orders, round, speed)),
                    Err(error) => {
                        eprintln!("postgres: {error}");
                        failed = true;
                    }
                }
                common::drop_schema(url, &schema);
            }
        }
    }
    if sizes.len() > 1 || rounds > 1 {
        speeds.print_summary();
    }
    if failed {
        std::process::exit(1);
    }
}
