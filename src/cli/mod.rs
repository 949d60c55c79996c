//! Command-line definitions and one function per subcommand.

mod action;
mod demo;
mod inbox;
mod kassaforte;
mod lagerkoll;
mod leases;
mod progress;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};
use ordersync::app::{App, Daemon};
use ordersync::config::{Config, LogConfig, LogFormat};
use ordersync::model::ActionState;
use ordersync::providers::graas::GraasClient;
use ordersync::providers::http::{HttpClient, RateGate};
use ordersync::sandbox::{Mutations, Sandbox, SandboxConfig};
use ordersync::server::Server;
use ordersync::server::admin::{self, AdminState};
use ordersync::server::ops;
use ordersync::server::webhooks;
use ordersync::store::{self, Store};
use ordersync::sync::health::{self, Health};
use ordersync::sync::{self};
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "ordersync",
    version,
    about = "Keeps your database in sync with the order systems you sell through."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args)]
struct ConfigArg {
    /// The TOML configuration file (see config.example.toml).
    #[arg(long, short, env = "ORDERSYNC_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: every configured stream on its schedule until SIGTERM or Ctrl-C.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Run every stream until it has caught up, print a summary, and exit.
        #[arg(long)]
        once: bool,
    },
    /// Apply the database migrations and exit.
    Migrate {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check the configuration; print every problem with its key path.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show each stream's cursor, lag, last run and last error.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// The same as one JSON object, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Serve the simulated provider APIs, to test a setup against.
    Sandbox(SandboxArgs),
    /// Watch ordersync sync a built-in sandbox into a temporary SQLite database.
    Demo(DemoArgs),
    /// Queue actions (accept, cancel, asn), list and show them, retry dead ones.
    Action {
        #[command(subcommand)]
        command: action::ActionCommand,
    },
    /// Graas tools.
    Graas {
        #[command(subcommand)]
        command: GraasCommand,
    },
    /// KassaForte tools: discount and coupon checks, a shop's state history.
    Kassaforte {
        #[command(subcommand)]
        command: kassaforte::KassaForteCommand,
    },
    /// Lagerkoll tools: the store's webhook registrations.
    Lagerkoll {
        #[command(subcommand)]
        command: lagerkoll::LagerkollCommand,
    },
    /// The webhook inbox: list stored deliveries, replay them through the mapping.
    Inbox {
        #[command(subcommand)]
        command: inbox::InboxCommand,
    },
}

#[derive(Debug, Args)]
struct SandboxArgs {
    #[arg(long, default_value = "127.0.0.1:8700")]
    listen: SocketAddr,
    /// Graas accounts to simulate.
    #[arg(long, default_value_t = 2)]
    accounts: usize,
    /// Orders per account at start.
    #[arg(long, default_value_t = 2_500)]
    orders: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Days the Graas orders' last updates are spread over, ending now.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=3650))]
    history_days: u32,
    /// Number the Graas orders in the order they were created, as a marketplace does (by default
    /// their ids are in random order of time).
    #[arg(long)]
    ids_by_creation: bool,
    /// Keep changing order statuses while serving.
    #[arg(long)]
    mutate: bool,
    /// Serve every n-th order malformed.
    #[arg(long)]
    malformed_every: Option<usize>,
    /// Get It Done accounts to simulate (named gid-1…).
    #[arg(long, default_value_t = 1)]
    getitdone_accounts: usize,
    /// Get It Done orders per account at start.
    #[arg(long, default_value_t = 500)]
    getitdone_orders: usize,
    /// KassaForte shops to simulate (named kf-1…).
    #[arg(long, default_value_t = 1)]
    kassaforte_shops: usize,
    /// Grafterr accounts to simulate (named cafe-1…).
    #[arg(long, default_value_t = 1)]
    grafterr_accounts: usize,
    /// Grafterr orders per account.
    #[arg(long, default_value_t = 100)]
    grafterr_orders: usize,
    /// Lagerkoll stores to simulate (named sthlm-1…).
    #[arg(long, default_value_t = 1)]
    lagerkoll_stores: usize,
}

#[derive(Debug, Args)]
pub(crate) struct DemoArgs {
    /// Stop after this long (e.g. `30s`); without it, run until Ctrl-C.
    #[arg(long = "for", value_parser = humantime::parse_duration)]
    pub(crate) duration: Option<Duration>,
    #[arg(long, default_value_t = 2)]
    pub(crate) accounts: usize,
    #[arg(long, default_value_t = 2_500)]
    pub(crate) orders: usize,
    /// Keep the SQLite database here instead of in a temporary directory.
    #[arg(long)]
    pub(crate) database: Option<PathBuf>,
    /// Without the sandbox's faults (429s, 5xx, truncated bodies, slow pages).
    #[arg(long)]
    pub(crate) no_faults: bool,
}

#[derive(Debug, Subcommand)]
enum GraasCommand {
    /// Fetch one order from Graas, store it, and print it.
    Get {
        #[command(flatten)]
        config: ConfigArg,
        /// The account's `name` in the configuration.
        #[arg(long)]
        account: String,
        /// The marketplace connection (`site.nickNameID`), e.g. `lazada-1`.
        #[arg(long)]
        channel: String,
        #[arg(long)]
        order: String,
    },
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Run { config, once } => run(config, once).await,
        Command::Migrate { config } => migrate(config).await,
        Command::CheckConfig { config } => Ok(check_config(config)),
        Command::Status { config, json } => status(config, json).await,
        Command::Sandbox(args) => sandbox(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Action { command } => action::run(command).await,
        Command::Kassaforte { command } => kassaforte::run(command).await,
        Command::Lagerkoll { command } => lagerkoll::run(command).await,
        Command::Inbox { command } => inbox::run(command).await,
        Command::Graas {
            command:
                GraasCommand::Get {
                    config,
                    account,
                    channel,
                    order,
                },
        } => graas_get(config, &account, &channel, &order).await,
    }
}

fn load(config: &ConfigArg) -> anyhow::Result<Config> {
    Config::load(config.config.as_deref()).map_err(|e| anyhow::anyhow!("{e}"))
}

fn init_logging(log: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(log.filter()))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(LogConfig::DEFAULT_FILTER));
    // Colour codes only for a person at a terminal, never in a file or a collector's pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let store = store::open(&config.database).await?;
    store.migrate().await?;
    Ok(store)
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    ShutdownSignal::listen().received().await;
}

/// SIGTERM and Ctrl-C, caught from the moment this is made. `run` makes it before anything
/// starts: a SIGTERM that arrives while the daemon is still starting (its leases may be taken
/// already) is kept and ends it cleanly once it runs, where the default action would kill the
/// process and leave its leases to expire.
struct ShutdownSignal {
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl ShutdownSignal {
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            ShutdownSignal {
                terminate: signal(SignalKind::terminate()).ok(),
                interrupt: signal(SignalKind::interrupt()).ok(),
            }
        }
        #[cfg(not(unix))]
        {
            ShutdownSignal {}
        }
    }

    async fn received(self) {
        #[cfg(unix)]
        {
            match (self.terminate, self.interrupt) {
                (Some(mut terminate), Some(mut interrupt)) => {
                    tokio::select! {
                        _ = terminate.recv() => {},
                        _ = interrupt.recv() => {},
                    }
                }
                (Some(mut terminate), None) => {
                    terminate.recv().await;
                }
                (None, Some(mut interrupt)) => {
                    interrupt.recv().await;
                }
                (None, None) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn run(config: ConfigArg, once: bool) -> anyhow::Result<ExitCode> {
    let config = load(&config)?;
    init_logging(&config.log);
    let signal = ShutdownSignal::listen();
    let _run_lock = store::lock_for_run(&config.database)?;
    let store = open_store(&config).await?;
    let mut app = App::build(&config, &store)?;
    app.share_accounts(&config, &store);
    if app.jobs().is_empty() {
        tracing::warn!("no enabled accounts in the configuration; nothing to sync");
    }
    let shown = CancellationToken::new();
    progress::spawn(&config, &app.runners, shown.clone());
    let _stop_showing = shown.drop_guard();
    let failed = if once {
        let failed = run_once(&app, signal).await;
        store.close().await;
        failed
    } else {
        run_daemon(&config, &store, app, signal).await?
    };
    tracing::info!("stopped");
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Serves the admin API and runs the daemon until SIGTERM/Ctrl-C, then shuts down within
/// `daemon.shutdown_timeout`; true when something had to be abandoned at the deadline.
async fn run_daemon(
    config: &Config,
    store: &Arc<dyn Store>,
    app: App,
    signal: ShutdownSignal,
) -> anyhow::Result<bool> {
    // The internal listener: probes and metrics always, the admin API with a token.
    let ops = ops::router(ops::OpsState {
        store: store.clone(),
        liveness: app.liveness.clone(),
        stale_after: ordersync::app::liveness_stale_after(),
    });
    let router = match &config.admin.token {
        Some(token) => ops.merge(admin::router(AdminState {
            config: Arc::new(config.clone()),
            store: store.clone(),
            token: token.clone(),
            wake: app.wake.clone(),
        })),
        None => {
            tracing::info!("admin API off: set [admin] token to serve it");
            ops
        }
    };
    let server = Server::start(config.admin.listen, router)
        .await
        .with_context(|| {
            format!(
                "admin.listen: cannot listen on {}; choose a free address",
                config.admin.listen
            )
        })?;
    tracing::info!(listen = %server.addr(), "internal listener up: /healthz, /readyz, /metrics{}", if config.admin.token.is_some() { ", /api/v1" } else { "" });
    let admin = Some(server);
    let webhooks = if app.hooks.is_empty() {
        None
    } else {
        let router = webhooks::router(app.hooks.clone(), store.clone(), &config.webhooks);
        let server = Server::start(config.webhooks.listen, router)
            .await
            .with_context(|| {
                format!(
                    "webhooks.listen: cannot listen on {}; choose a free address",
                    config.webhooks.listen
                )
            })?;
        tracing::info!(listen = %server.addr(), accounts = app.hooks.len(), "webhook listener up");
        Some(server)
    };
    let daemon = Daemon::start(app).await?;
    tracing::info!(
        jobs = daemon.jobs().len(),
        dispatchers = daemon.dispatchers().len(),
        "ordersync running"
    );
    // Migrated, listening and scheduled: ready (a no-op outside systemd).
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]);
    signal.received().await;
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);

    let timeout = config.daemon.shutdown_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    tracing::info!(
        timeout = %humantime::format_duration(timeout),
        "shutting down: finishing the current transactions and batches"
    );
    for (name, server) in [("internal listener", admin), ("webhook listener", webhooks)] {
        if let Some(server) = server
            && tokio::time::timeout_at(deadline, server.stop())
                .await
                .is_err()
        {
            tracing::warn!("{name}: requests still open at the shutdown deadline; dropped");
        }
    }
    let abandoned = daemon.shutdown(deadline).await;
    if !abandoned.is_empty() {
        tracing::error!(
            abandoned = %abandoned.join("; "),
            "daemon.shutdown_timeout ({}) passed; abandoned what was still running. Nothing committed is lost: the next start resumes from the committed cursors, and in-flight actions are claimed again",
            humantime::format_duration(timeout)
        );
    }
    // The pool's connections get what is left of the deadline, and at least a moment.
    let close_by = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
    if tokio::time::timeout_at(close_by, store.close())
        .await
        .is_err()
    {
        tracing::warn!("database connections still busy at the shutdown deadline; left open");
    }
    Ok(!abandoned.is_empty())
}

/// `run --once`: prints a JSON line per job and outbox, then the time taken, peak memory, CPU
/// per thread and what went to storage; true when one failed. SIGTERM/Ctrl-C stops it early.
async fn run_once(app: &App, signal: ShutdownSignal) -> bool {
    let started = Instant::now();
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        signal.received().await;
        on_signal.cancel();
    });
    let (lines, failed) = app.run_once(&cancel).await;
    for line in lines {
        println!("{line}");
    }
    println!(
        "{}",
        serde_json::json!({
            "elapsed_ms": started.elapsed().as_millis() as u64,
            "peak_rss_kb": peak_rss_kb(),
            "cpu_ms_by_thread": cpu_ms_by_thread(),
            "storage_written_kb": storage_written_kb(),
        })
    );
    failed
}

/// CPU time so far per thread name (the main thread starts and stops the run, `tokio-rt-worker`s
/// run the jobs: fetching, parsing, commits; each `sqlx-sqlite-wor` is one SQLite connection),
/// where /proc tells it.
fn cpu_ms_by_thread() -> std::collections::BTreeMap<String, u64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return by_name;
    };
    for task in tasks.flatten() {
        let path = task.path();
        let name = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        // schedstat: nanoseconds on the CPU, then waiting, then timeslices.
        let nanos = std::fs::read_to_string(path.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        if let Some(nanos) = nanos {
            *by_name.entry(name.trim().to_owned()).or_insert(0) += nanos / 1_000_000;
        }
    }
    by_name
}

/// The number on the line of a /proc file that starts with `name` (a unit after it ignored).
fn proc_number(text: &str, name: &str) -> Option<u64> {
    let rest = text.lines().find_map(|line| line.strip_prefix(name))?;
    rest.trim().trim_end_matches("kB").trim().parse().ok()
}

/// The process's peak resident set (VmHWM) in KiB, where /proc tells it.
fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    proc_number(&status, "VmHWM:")
}

/// File data the process has written for the disk so far, in KiB, where /proc tells it: each
/// page counted when it turns dirty (again after it was written back), less pages of files
/// deleted before they reached the disk. Unlike bytes passed to `write`, a page rewritten
/// while still in memory counts once, so this is what the disk gets.
fn storage_written_kb() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    let written = proc_number(&io, "write_bytes:")?;
    let cancelled = proc_number(&io, "cancelled_write_bytes:").unwrap_or(0);
    Some(written.saturating_sub(cancelled) / 1024)
}

async fn migrate(config: ConfigArg) -> anyhow::Result<ExitCode> {
    let config = load(&config)?;
    init_logging(&config.log);
    let store = open_store(&config).await?;
    store.close().await;
    println!("migrations applied");
    Ok(ExitCode::SUCCESS)
}

fn check_config(config: ConfigArg) -> ExitCode {
    match Config::load(config.config.as_deref()) {
        Ok(config) => {
            println!(
                "configuration is valid: {:?} database, {} Graas account(s), {} Get It Done account(s), {} KassaForte shop(s), {} Grafterr account(s), {} Lagerkoll store(s)",
                config.database.backend,
                config.graas.len(),
                config.getitdone.len(),
                config.kassaforte.len(),
                config.grafterr.len(),
                config.lagerkoll.len()
            );
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprint!("{error}");
            ExitCode::FAILURE
        }
    }
}

async fn status(config: ConfigArg, json: bool) -> anyhow::Result<ExitCode> {
    // The tables for people, or one JSON object with the same facts for scripts.
    macro_rules! say {
        ($($arg:tt)*) => {
            if !json {
                println!($($arg)*);
            }
        };
    }
    let mut report = serde_json::json!({});
    let (mut streams_json, mut accounts_json, mut inboxes_json) =
        (Vec::new(), Vec::new(), Vec::new());
    let config = load(&config)?;
    let store = open_store(&config).await?;
    let streams = store.streams().await?;
    let counts = store.action_counts().await?;
    let gates = store.gates().await?;
    let inboxes = store.delivery_stats().await?;
    let shops = store.shop_states().await?;
    let leases = match store.lease_table() {
        Some(table) => Some((table.leases().await?, table.replicas().await?)),
        None => None,
    };
    store.close().await;
    let now = Utc::now();
    let ago = |t: Option<DateTime<Utc>>| {
        t.map(|t| format!("{}s ago", (now - t).num_seconds()))
            .unwrap_or_else(|| "never".into())
    };
    say!(
        "{:<32} {:<9} {:>10} {:>14} {:>14}  last error",
        "stream",
        "health",
        "lag",
        "last run",
        "last success"
    );
    let mut healthy = true;
    // The streams are the daemon's own jobs, each judged against its own schedule.
    let app = App::build(&config, &store)?;
    for job in app.jobs() {
        let key = job.stream();
        let found = streams.iter().find(|s| &s.stream == key);
        let health = health::assess(job.schedule(), found, now);
        healthy &= matches!(health, Health::Ok);
        let lag = found
            .and_then(|s| s.cursor.as_deref())
            .and_then(|c| c.parse::<i64>().ok())
            .map(|c| format!("{}s", now.timestamp() - c))
            .unwrap_or_else(|| "-".into());
        streams_json.push(serde_json::json!({
                "stream": key.to_string(),
                "health": health.as_str(),
                "schedule": job.schedule(),
                "cursor": found.and_then(|s| s.cursor.clone()),
                "last_run_started_at": found.and_then(|s| s.last_run_started_at),
                "last_success_at": found.and_then(|s| s.last_success_at),
                "last_error": found.and_then(|s| s.last_error.clone()),
                "consecutive_failures": found.map_or(0, |s| s.consecutive_failures),
        }));
        say!(
            "{:<32} {:<9} {:>10} {:>14} {:>14}  {}",
            key.to_string(),
            health.as_str(),
            lag,
            ago(found.and_then(|s| s.last_run_started_at)),
            ago(found.and_then(|s| s.last_success_at)),
            found.and_then(|s| s.last_error.clone()).unwrap_or_default()
        );
    }
    say!();
    say!(
        "{:<24} {:>8} {:>9} {:>6} {:>8} {:>10} {:>7} {:>5} {:>12}  rate gate",
        "actions",
        "pending",
        "in_flight",
        "sent",
        "unknown",
        "succeeded",
        "failed",
        "dead",
        "429s"
    );
    let mut unknown_actions = 0;
    for account_gate in &app.gates {
        let (provider, account) = (account_gate.provider.as_str(), &account_gate.account);
        let count = |state: &str| {
            counts
                .iter()
                .find(|c| c.provider == provider && &c.account == account && c.state == state)
                .map_or(0, |c| c.count)
        };
        let gate = gates
            .iter()
            .find(|g| g.provider == provider && &g.account == account);
        let pause = match gate.and_then(|g| g.paused_until) {
            Some(until) if until > now => {
                format!(
                    "paused {}s more (429 Retry-After)",
                    (until - now).num_seconds().max(1)
                )
            }
            _ => "open".into(),
        };
        unknown_actions += count("unknown");
        let by_state: serde_json::Map<String, serde_json::Value> = ActionState::ALL
            .iter()
            .map(|state| (state.as_str().to_owned(), count(state.as_str()).into()))
            .collect();
        accounts_json.push(serde_json::json!({
            "provider": provider,
            "account": account,
            "actions": by_state,
            "rate_limited": gate.map_or(0, |g| g.rate_limited),
            "paused_until": gate.and_then(|g| g.paused_until).filter(|until| *until > now),
        }));
        say!(
            "{:<24} {:>8} {:>9} {:>6} {:>8} {:>10} {:>7} {:>5} {:>12}  {}",
            format!("{provider}/{account}"),
            count("pending"),
            count("in_flight"),
            count("sent"),
            count("unknown"),
            count("succeeded"),
            count("failed"),
            count("dead"),
            gate.map_or(0, |g| g.rate_limited),
            pause
        );
    }
    if unknown_actions > 0 {
        healthy = false;
        say!(
            "WARNING: {unknown_actions} action(s) in state unknown may or may not have reached the upstream; `ordersync action list --state unknown`, then `ordersync action resolve ID --submitted-as <id>` or `--not-submitted`"
        );
    }
    if json {
        report["shops"] = kassaforte::shops_json(&config, &shops);
    } else {
        kassaforte::print_shops(&config, &shops, now);
    }
    // Every account that receives pushes: (provider, account, silence_alert, what to check).
    let pushed: Vec<(&str, &str, Duration, &str)> = config
        .getitdone
        .iter()
        .filter(|a| a.enabled)
        .map(|a| ("getitdone", a.name.as_str(), a.silence_alert, "check the webhook registration and the listener. Orders never delivered cannot be discovered without discovery = \"feed\""))
        .chain(config.grafterr.iter().filter(|a| a.enabled).map(|a| ("grafterr", a.name.as_str(), a.silence_alert, "check the endpoint in Grafterr's panel (API Settings → Webhook) and the listener; Grafterr has no order list to catch up from")))
        .chain(config.lagerkoll.iter().filter(|a| a.enabled).map(|a| ("lagerkoll", a.name.as_str(), a.silence_alert, "check `ordersync lagerkoll webhooks --account NAME` and the listener")))
        .collect();
    if !pushed.is_empty() {
        say!();
        say!(
            "{:<24} {:>14} {:>8} {:>7}  note",
            "webhook inbox",
            "last delivery",
            "pending",
            "failed"
        );
    }
    for (provider, account, silence_alert, hint) in pushed {
        let stat = inboxes
            .iter()
            .find(|s| s.provider == provider && s.account == account);
        let last = stat.and_then(|s| s.last_received_at);
        let silent_for = last.map(|t| (now - t).to_std().unwrap_or_default());
        let note = match silent_for {
            None => "no delivery yet: give the upstream the webhook URL (see README)".to_owned(),
            Some(silence) if silence > silence_alert => {
                healthy = false;
                format!(
                    "WARNING: silent for {} (silence_alert {}); {hint}",
                    humantime::format_duration(Duration::from_secs(silence.as_secs())),
                    humantime::format_duration(silence_alert)
                )
            }
            Some(_) => String::new(),
        };
        let failed = stat.map_or(0, |s| s.failed);
        let note = if failed > 0 && note.is_empty() {
            format!(
                "{failed} delivery(ies) failed to map: `ordersync inbox list --state failed --provider {provider}`"
            )
        } else {
            note
        };
        inboxes_json.push(serde_json::json!({
            "provider": provider,
            "account": account,
            "last_delivery_at": last,
            "pending": stat.map_or(0, |s| s.pending),
            "failed": failed,
            "warning": (!note.is_empty()).then_some(note.clone()),
        }));
        say!(
            "{:<24} {:>14} {:>8} {:>7}  {}",
            format!("{provider}/{account}"),
            ago(last),
            stat.map_or(0, |s| s.pending),
            failed,
            note
        );
    }
    if let Some((leases, replicas)) = &leases {
        if json {
            report["leases"] = leases::leases_json(leases);
            report["replicas"] = leases::replicas_json(replicas, leases);
        } else {
            leases::print(leases, replicas, now);
        }
    }
    if json {
        report["streams"] = streams_json.into();
        report["accounts"] = accounts_json.into();
        report["webhook_inboxes"] = inboxes_json.into();
        report["healthy"] = healthy.into();
        report["unknown_actions"] = unknown_actions.into();
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    // Non-zero when any stream needs a look, so monitoring can run this command as it is.
    Ok(if healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn sandbox(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    init_logging(&LogConfig {
        level: "info".into(),
        format: LogFormat::Text,
    });
    let mut config = SandboxConfig::graas(args.accounts, args.orders)
        .with_getitdone(args.getitdone_accounts, args.getitdone_orders)
        .with_kassaforte(args.kassaforte_shops)
        .with_grafterr(args.grafterr_accounts, args.grafterr_orders)
        .with_lagerkoll(args.lagerkoll_stores);
    config.seed = args.seed;
    config.history_secs = i64::from(args.history_days) * 24 * 3600;
    config.malformed_every = args.malformed_every;
    config.ids_follow_creation = args.ids_by_creation;
    config.mutations = args.mutate.then(Mutations::default);
    let accounts = config.graas.clone();
    let gid_accounts = config.getitdone.clone();
    let shops = config.kassaforte.clone();
    let cafes = config.grafterr.clone();
    let stores = config.lagerkoll.clone();
    let sandbox = Sandbox::start(args.listen, config)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    // A reader that stopped reading (a script that only wanted the address) must not kill the
    // sandbox: println! would panic on the closed pipe, so write errors are ignored.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "sandbox listening on {}", sandbox.base_url());
    for account in &accounts {
        let _ = writeln!(
            out,
            "graas account_number={} app_key={} orders={}",
            account.account_number, account.app_key, account.orders
        );
    }
    for account in &gid_accounts {
        let _ = writeln!(
            out,
            "getitdone name={} client_id={} client_secret={} webhook_secret={} orders={}",
            account.name,
            account.client_id,
            account.client_secret,
            account.webhook_secret,
            account.orders
        );
    }
    for shop in &shops {
        let _ = writeln!(
            out,
            "kassaforte name={} username={} password={}",
            shop.name, shop.username, shop.password
        );
    }
    for cafe in &cafes {
        let _ = writeln!(
            out,
            "grafterr name={} base_url={} api_key={} client_id={} client_secret={} path_token={} orders={}",
            cafe.name,
            sandbox.grafterr_base_url(),
            cafe.api_key,
            cafe.client_id,
            cafe.client_secret,
            cafe.path_token,
            cafe.orders
        );
    }
    for store in &stores {
        let _ = writeln!(
            out,
            "lagerkoll name={} store={} api_key={} base_url={} features={}",
            store.name,
            store.store_id,
            store.api_key,
            sandbox.lagerkoll_base_url(),
            store.features.join(",")
        );
    }
    let _ = writeln!(
        out,
        "grafterr: POST {0}/_sandbox/grafterr/NAME/push {{\"url\": \"http://127.0.0.1:8322/webhooks/grafterr/NAME\", \"updates_per_order\": 2, \"duplicate_ratio\": 0.1}}   lagerkoll: POST {0}/_sandbox/lagerkoll/NAME/fire {{\"feature_id\": \"orders-feature\", \"feature_method\": \"orderCreated\", \"data\": {{\"orderId\": \"1\"}}}}",
        sandbox.base_url()
    );
    let _ = writeln!(
        out,
        "statistics: GET {0}/_sandbox/graas/stats   faults: PUT {0}/_sandbox/graas/faults",
        sandbox.base_url()
    );
    let _ = writeln!(
        out,
        "getitdone: PUT {0}/_sandbox/getitdone/NAME/webhook {{\"url\": \"http://127.0.0.1:8322/webhooks/getitdone/NAME\"}}, then POST {0}/_sandbox/getitdone/announce",
        sandbox.base_url()
    );
    let _ = out.flush();
    drop(out);
    shutdown_signal().await;
    sandbox.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// The configuration `ordersync demo` runs with: the sandbox's accounts, fast schedules.
async fn graas_get(
    config: ConfigArg,
    account: &str,
    channel: &str,
    order_id: &str,
) -> anyhow::Result<ExitCode> {
    let config = load(&config)?;
    init_logging(&config.log);
    let Some(settings) = config.graas.iter().find(|a| a.name == account) else {
        let known: Vec<&str> = config.graas.iter().map(|a| a.name.as_str()).collect();
        bail!("--account `{account}` is not in the configuration; known Graas accounts: {known:?}");
    };
    let http = HttpClient::new(&config.http)?;
    let client = GraasClient::new(http, Arc::new(RateGate::new(settings.rate_limit)), settings);
    let store = open_store(&config).await?;
    let refreshed = sync::refresh_order(&client, store.as_ref(), channel, order_id).await;
    store.close().await;
    let Some((order, outcome)) = refreshed? else {
        bail!("Graas has no order {order_id} on channel {channel} (HTTP 404)");
    };
    eprintln!(
        "{} {}/{}: status {:?}, updated {}; {}",
        account,
        order.key.channel,
        order.key.external_id,
        order.status,
        order.upstream_updated_at,
        if outcome.written == 1 {
            "stored"
        } else {
            "already up to date"
        }
    );
    println!("{}", order.payload);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::proc_number;

    #[test]
    fn proc_numbers_are_read_by_their_whole_name() {
        let io = "write_bytes: 4096\ncancelled_write_bytes: 1024\n";
        assert_eq!(proc_number(io, "write_bytes:"), Some(4096));
        assert_eq!(proc_number(io, "cancelled_write_bytes:"), Some(1024));
        assert_eq!(proc_number("VmHWM:\t   81234 kB\n", "VmHWM:"), Some(81_234));
        assert_eq!(proc_number(io, "read_bytes:"), None);
    }
}
