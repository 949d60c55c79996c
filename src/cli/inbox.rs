//! `ordersync inbox list|replay`: look at stored webhook deliveries, and map them again after
//! an upgrade fixed a mapping (idempotently: the store keeps the newest copy of each order).

use super::{ConfigArg, load, open_store};
use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use ordersync::app::App;
use ordersync::store::{InboxFilter, Store};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Subcommand)]
pub enum InboxCommand {
    /// List stored deliveries, newest first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        select: Select,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON object per line, for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Put processed, ignored or failed deliveries back to pending and map them again now.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        select: Select,
        /// Only these delivery ids (from `inbox list`).
        ids: Vec<i64>,
    },
}

/// Which deliveries: every option narrows.
#[derive(Debug, Args)]
pub struct Select {
    /// `pending`, `processed`, `ignored` or `failed`.
    #[arg(long)]
    state: Option<String>,
    /// `getitdone`, `grafterr` or `lagerkoll`.
    #[arg(long)]
    provider: Option<String>,
    /// The account's `name` in the configuration.
    #[arg(long)]
    account: Option<String>,
    /// Received at or after: an RFC 3339 time, or a duration back from now (`24h`).
    #[arg(long)]
    since: Option<String>,
}

impl Select {
    fn filter(self, ids: Vec<i64>, limit: i64) -> anyhow::Result<InboxFilter> {
        if let Some(state) = &self.state
            && !["pending", "processed", "ignored", "failed"].contains(&state.as_str())
        {
            bail!("--state `{state}`: write pending, processed, ignored or failed");
        }
        if let Some(provider) = &self.provider
            && let Err(message) = provider.parse::<ordersync::model::ProviderKind>()
        {
            bail!("--provider: {message}");
        }
        let since = self.since.as_deref().map(parse_since).transpose()?;
        Ok(InboxFilter {
            provider: self.provider,
            account: self.account,
            state: self.state,
            since,
            ids,
            limit,
        })
    }
}

fn parse_since(text: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(at.with_timezone(&Utc));
    }
    match humantime::parse_duration(text) {
        Ok(back) => Ok(Utc::now() - chrono::Duration::from_std(back)?),
        Err(_) => bail!(
            "--since `{text}`: write an RFC 3339 time (2026-05-22T10:00:00Z) or a duration back from now (24h)"
        ),
    }
}

pub async fn run(command: InboxCommand) -> anyhow::Result<ExitCode> {
    match command {
        InboxCommand::List {
            config,
            select,
            limit,
            json,
        } => {
            let filter = select.filter(Vec::new(), limit.clamp(1, 100_000))?;
            let config = load(&config)?;
            let store = open_store(&config).await?;
            let entries = store.inbox(&filter).await;
            store.close().await;
            let entries = entries?;
            if json {
                for entry in &entries {
                    println!("{}", serde_json::to_string(entry)?);
                }
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:>8} {:<28} {:<26} {:<18} {:<9} {:<20}  note",
                "id", "account", "event", "object", "state", "received"
            );
            for e in &entries {
                println!(
                    "{:>8} {:<28} {:<26} {:<18} {:<9} {:<20}  {}",
                    e.id,
                    format!("{}/{}", e.provider, e.account),
                    e.event_type.as_deref().unwrap_or("-"),
                    e.object_id.as_deref().unwrap_or("-"),
                    e.state,
                    e.received_at.format("%Y-%m-%d %H:%M:%S"),
                    e.error.as_deref().unwrap_or("")
                );
            }
            if entries.is_empty() {
                println!("(no deliveries match)");
            }
            Ok(ExitCode::SUCCESS)
        }
        InboxCommand::Replay {
            config,
            select,
            ids,
        } => {
            let filter = select.filter(ids, i64::MAX)?;
            let config = load(&config)?;
            super::init_logging(&config.log);
            let store = open_store(&config).await?;
            let result = replay(&config, &store, &filter).await;
            store.close().await;
            result
        }
    }
}

/// Requeues, then maps every pending delivery of the accounts the filter names, here and now
/// (a running daemon would pick them up within a second too; both are safe together).
async fn replay(
    config: &ordersync::config::Config,
    store: &std::sync::Arc<dyn Store>,
    filter: &InboxFilter,
) -> anyhow::Result<ExitCode> {
    let requeued = store.requeue_deliveries(filter).await?;
    println!("{}", serde_json::json!({ "requeued": requeued }));
    let app = App::build(config, store)?;
    let mut failed = false;
    for worker in &app.workers {
        let name = worker.name();
        let wanted = |part: &Option<String>, at: usize| {
            part.as_deref().is_none_or(|want| {
                name.trim_start_matches("inbox of ")
                    .split('/')
                    .nth(at)
                    .is_some_and(|have| have == want)
            })
        };
        if !wanted(&filter.provider, 0) || !wanted(&filter.account, 1) {
            continue;
        }
        match worker.drain(&CancellationToken::new()).await {
            Ok(line) => println!("{line}"),
            Err(error) => {
                failed = true;
                println!("{}", serde_json::json!({ "worker": name, "error": error }));
            }
        }
    }
    let still_failed = store
        .inbox(&InboxFilter {
            state: Some("failed".into()),
            limit: 1,
            ..filter.clone()
        })
        .await?;
    if !still_failed.is_empty() {
        eprintln!(
            "some deliveries still fail to map: `ordersync inbox list --state failed` shows why"
        );
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
