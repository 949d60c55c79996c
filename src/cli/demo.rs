//! `ordersync demo`: prints what `ordersync::demo` reports, once a second and at the end.

use super::{DemoArgs, init_logging, shutdown_signal};
use ordersync::demo::{Demo, DemoOptions, Verdict};
use ordersync::store::ActionCount;
use ordersync::sync::StreamRunner;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub(super) async fn run(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let options = DemoOptions {
        accounts: args.accounts,
        orders: args.orders,
        database: args.database.clone(),
        faults: !args.no_faults,
    };
    let demo = Demo::start(&options).await?;
    init_logging(&demo.config.log);
    println!(
        "ordersync demo: {} sandbox Graas account(s) of {} orders and 1 Get It Done account of {} (signed webhooks, some dropped, repeated, reordered or forged) at {} (faults {}), database {}",
        args.accounts,
        args.orders,
        (args.orders / 5).max(10),
        demo.sandbox.base_url(),
        if options.faults { "on" } else { "off" },
        demo.database().display()
    );
    println!(
        "{} actions queued: Graas accepts and cancels of sandbox orders, 2 per account for orders Graas does not have, one ASN per account; Get It Done links, a refresh and a cancel it refuses",
        demo.queued
    );
    println!("Ctrl-C to stop.\n");
    let started = Instant::now();
    let stop = async {
        match args.duration {
            Some(limit) => {
                tokio::select! {
                    _ = tokio::time::sleep(limit) => {},
                    _ = shutdown_signal() => {},
                }
            }
            None => shutdown_signal().await,
        }
    };
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {
                print_progress(demo.runners(), started);
                print_action_counts(&demo.action_counts().await);
            }
        }
    }
    println!("\nstopping the sandbox's changes and catching up once more…");
    let (abandoned, verdict) = demo.finish().await?;
    if !abandoned.is_empty() {
        println!(
            "shutdown deadline passed; abandoned: {}",
            abandoned.join("; ")
        );
    }
    print_verdict(&verdict, started);
    if args.database.is_none() {
        println!("(the temporary database is removed; pass --database PATH to keep it)");
    }
    Ok(if verdict.all_match() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_verdict(verdict: &Verdict, started: Instant) {
    for (stream, error) in &verdict.failed_runs {
        println!("  {stream}: final run failed: {error}");
    }
    println!("\nsummary after {:.0}s:", started.elapsed().as_secs_f64());
    for account in &verdict.accounts {
        println!(
            "  {}: {} orders stored, {} malformed ones quarantined; the sandbox holds {} valid orders after {} changes while running: {}",
            account.account,
            account.stored,
            account.quarantined,
            account.truth,
            account.sandbox.changes,
            if account.matches() {
                "database matches".to_owned()
            } else {
                format!("{} missing or different", account.differing)
            },
        );
        let (p, stats) = (&account.progress, &account.sandbox);
        println!(
            "  {}: {} requests, {} runs ({} failed); the sandbox answered {} with 429, {} with 5xx, truncated {}, slowed {}",
            account.account,
            p.requests,
            p.runs,
            p.failed_runs,
            stats.traffic.over_limit,
            stats.traffic.server_errors,
            stats.traffic.truncated,
            stats.traffic.slow,
        );
    }
    for account in &verdict.getitdone {
        let stats = &account.sandbox;
        println!(
            "  {}: {} orders stored of {} announced ({} in the sandbox; the rest only had dropped deliveries): {}",
            account.account,
            account.stored,
            account.announced,
            account.truth,
            if account.matches() {
                "database matches".to_owned()
            } else {
                format!("{} missing or different", account.differing)
            },
        );
        println!(
            "  {}: {} events, {} deliveries acknowledged, {} dropped, {} repeated, {} forged and refused; {} polls, {} commands, {} answered 429",
            account.account,
            stats.events,
            stats.deliveries_acknowledged,
            stats.deliveries_dropped,
            stats.deliveries_duplicated,
            stats.bad_signatures_refused,
            stats.polls,
            stats.commands,
            stats.traffic.over_limit,
        );
    }
    for shop in &verdict.kassaforte {
        let stats = &shop.sandbox;
        println!(
            "  {}: {} submissions succeeded, {} failed (409s and refusals), {} unknown (answer lost; `ordersync action resolve`); the sandbox created {} orders, {} stored: {}",
            shop.shop,
            shop.succeeded,
            shop.failed,
            shop.unknown,
            shop.created,
            shop.stored,
            if shop.matches() {
                "database matches, none submitted twice".to_owned()
            } else {
                format!("{} missing, different or submitted twice", shop.differing)
            },
        );
        println!(
            "  {}: {} state polls, {} menus, {} status polls, {} conflicts, {} answered 429, {} with 5xx",
            shop.shop,
            stats.infos,
            stats.menu,
            stats.status_polls,
            stats.conflicts,
            stats.traffic.over_limit,
            stats.traffic.server_errors,
        );
    }
    for pushed in &verdict.pushed {
        println!(
            "  {}/{}: {} orders sent, {} stored: {}",
            pushed.provider,
            pushed.account,
            pushed.sent,
            pushed.stored,
            if pushed.matches() {
                "database matches".to_owned()
            } else {
                format!("{} missing or different", pushed.differing)
            },
        );
        if let Some(stats) = &pushed.grafterr {
            println!(
                "  {}: {} deliveries acknowledged ({} repeated, {} without items, completed by {} order reads), {} forged and refused",
                pushed.account,
                stats.deliveries_acknowledged,
                stats.duplicates_sent,
                stats.without_items_sent,
                stats.order_reads,
                stats.forged_refused,
            );
        }
        if let Some(stats) = &pushed.lagerkoll {
            println!(
                "  {}: {} webhooks registered by ordersync ({} fired once to prove the path), {} deliveries acknowledged; {} API requests, at most {} in a minute, {} answered 429",
                pushed.account,
                pushed.registered,
                stats.executes,
                stats.deliveries_acknowledged,
                stats.requests,
                stats.max_per_minute,
                stats.over_limit,
            );
        }
    }
    print_action_counts(&verdict.actions);
    if verdict.open_actions > 0 {
        println!(
            "  {} actions were still queued when the demo stopped (run it longer)",
            verdict.open_actions
        );
    }
}

fn print_action_counts(counts: &[ActionCount]) {
    let mut by_account: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for count in counts {
        by_account
            .entry(count.account.as_str())
            .or_default()
            .push(format!("{} {}", count.state, count.count));
    }
    for (account, states) in by_account {
        println!("       {account:<10} actions: {}", states.join(", "));
    }
}

fn print_progress(runners: &[Arc<StreamRunner>], started: Instant) {
    let now = chrono::Utc::now().timestamp();
    for runner in runners {
        let p = runner.progress().snapshot();
        let lag = if p.cursor > 0 {
            format!("{}s", now - p.cursor)
        } else {
            "-".into()
        };
        println!(
            "[{:>4.0}s] {:<10} written {:>7}  unchanged {:>7}  quarantined {:>3}  requests {:>6}  cursor lag {:>9}  runs {:>3} ({} failed){}",
            started.elapsed().as_secs_f64(),
            runner.stream().account,
            p.written,
            p.unchanged,
            p.quarantined,
            p.requests,
            lag,
            p.runs,
            p.failed_runs,
            p.last_error
                .map(|e| format!("  last error: {e}"))
                .unwrap_or_default(),
        );
    }
}
