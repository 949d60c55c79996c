//! `ordersync lagerkoll webhooks`: what is registered for a store and what reconciliation would
//! change; `--apply` does it now.

use super::{ConfigArg, load, open_store};
use anyhow::bail;
use clap::Subcommand;
use ordersync::providers::http::HttpClient;
use ordersync::sync::lagerkoll::{Plan, Reconciler};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Subcommand)]
pub enum LagerkollCommand {
    /// List the store's webhooks and what reconciliation would change.
    Webhooks {
        #[command(flatten)]
        config: ConfigArg,
        /// The store's `name` in the configuration.
        #[arg(long)]
        account: String,
        /// Make the changes now (create and fire, delete ours no longer configured).
        #[arg(long)]
        apply: bool,
    },
}

pub async fn run(command: LagerkollCommand) -> anyhow::Result<ExitCode> {
    let LagerkollCommand::Webhooks {
        config,
        account,
        apply,
    } = command;
    let config = load(&config)?;
    super::init_logging(&config.log);
    let Some(settings) = config.lagerkoll_account(&account).cloned() else {
        let known: Vec<&str> = config.lagerkoll.iter().map(|a| a.name.as_str()).collect();
        bail!(
            "--account `{account}` is not in the configuration; known Lagerkoll stores: {known:?}"
        );
    };
    let store = open_store(&config).await?;
    let client = ordersync::app::lagerkoll::client(HttpClient::new(&config.http)?, &settings);
    let reconciler = Reconciler::new(client, store.clone(), settings.clone());
    let result = async {
        reconciler.check_store().await?;
        let mut plan = reconciler.plan().await?;
        println!(
            "store {} ({}), our URL {}",
            settings.store,
            settings.name,
            settings.webhook_url_masked()
        );
        print(&plan);
        if apply && plan.changes() > 0 {
            let applied = reconciler
                .apply(&mut plan, &CancellationToken::new())
                .await?;
            println!(
                "applied: {} created (and fired {}), {} adopted, {} deleted, {} forgotten",
                applied.created, applied.fired, applied.adopted, applied.deleted, applied.forgotten
            );
        } else if plan.changes() > 0 {
            println!("(nothing changed: run with --apply to make these changes now)");
        }
        Ok::<_, ordersync::sync::lagerkoll::ReconcileError>(plan)
    }
    .await;
    store.close().await;
    let plan = result?;
    for problem in &plan.problems {
        eprintln!("problem: {problem}");
    }
    Ok(if plan.problems.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print(plan: &Plan) {
    for r in &plan.keep {
        println!(
            "  keep    {:>8} {} {}{}",
            r.registration_id,
            r.feature_id,
            r.feature_method,
            if r.group_wide { " (group)" } else { "" }
        );
    }
    for (w, hook) in &plan.adopt {
        println!(
            "  adopt   {:>8} {} {} (listed with our URL, not recorded)",
            hook.id, w.feature_id, w.feature_method
        );
    }
    for w in &plan.create {
        println!(
            "  create  {:>8} {} {}{}",
            "-",
            w.feature_id,
            w.feature_method,
            if w.group_wide { " (group)" } else { "" }
        );
    }
    for r in &plan.delete {
        println!(
            "  delete  {:>8} {} {} (ours, no longer configured)",
            r.registration_id, r.feature_id, r.feature_method
        );
    }
    for r in &plan.forget {
        println!(
            "  forget  {:>8} {} {} (recorded, gone in Lagerkoll)",
            r.registration_id, r.feature_id, r.feature_method
        );
    }
    for w in &plan.others {
        println!(
            "  other   {:>8} {} {} (not ours: left alone)",
            w.id, w.feature_id, w.feature_method
        );
    }
}
