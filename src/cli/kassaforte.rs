//! `ordersync kassaforte …`: ask a shop about a discount code or a coupon, show when a shop was
//! open or closed; and the shops' part of `ordersync status`.

use super::{ConfigArg, load, open_store};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use ordersync::config::{Config, HttpConfig};
use ordersync::model::ProviderKind;
use ordersync::providers::http::{HttpClient, RateGate};
use ordersync::providers::kassaforte::KassaForteClient;
use ordersync::providers::kassaforte::wire::Discount;
use ordersync::providers::money::minor_to_decimal;
use ordersync::store::ShopState;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum KassaForteCommand {
    /// Check a discount code: its type, value and excepted categories.
    CheckDiscount {
        #[command(flatten)]
        config: ConfigArg,
        /// The shop's `name` in the configuration.
        #[arg(long)]
        account: String,
        #[arg(long)]
        code: String,
    },
    /// Check a coupon: what is left on it.
    CheckCoupon {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        account: String,
        #[arg(long)]
        number: String,
        #[arg(long)]
        verify_code: String,
    },
    /// A shop's state changes (open/closed, till connection, waits, unavailable products).
    History {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        account: String,
        /// How far back, e.g. `7d`.
        #[arg(long, default_value = "7d", value_parser = humantime::parse_duration)]
        since: Duration,
    },
}

pub async fn run(command: KassaForteCommand) -> anyhow::Result<ExitCode> {
    match command {
        KassaForteCommand::CheckDiscount {
            config,
            account,
            code,
        } => {
            let (client, config) = client(&config, &account)?;
            let discount = client.check_discount(&code).await?;
            let currency = shop_currency(&config, &account);
            match &discount {
                Discount::Amount { minor, exceptions } => eprintln!(
                    "{code}: amount {} {currency} off; excepted categories: {}",
                    minor_to_decimal(*minor),
                    list(exceptions)
                ),
                Discount::Percent {
                    percent,
                    exceptions,
                } => eprintln!(
                    "{code}: {percent}% off; excepted categories: {}",
                    list(exceptions)
                ),
                Discount::Article { item_no, size_id } => eprintln!(
                    "{code}: article {item_no} (size {}) free",
                    size_id.as_deref().unwrap_or("any")
                ),
            }
            println!("{}", serde_json::to_string(&discount)?);
        }
        KassaForteCommand::CheckCoupon {
            config,
            account,
            number,
            verify_code,
        } => {
            let (client, config) = client(&config, &account)?;
            let coupon = client.check_coupon(&number, &verify_code).await?;
            eprintln!(
                "coupon {}: {} {} left",
                coupon.number,
                minor_to_decimal(coupon.remaining_minor),
                shop_currency(&config, &account)
            );
            println!("{}", serde_json::to_string(&coupon)?);
        }
        KassaForteCommand::History {
            config,
            account,
            since,
        } => {
            let config = load(&config)?;
            let store = open_store(&config).await?;
            let since = Utc::now() - chrono::Duration::from_std(since)?;
            let history = store
                .shop_history(ProviderKind::KassaForte.as_str(), &account, since)
                .await;
            store.close().await;
            println!(
                "{:<25} {:<9} {:<8} {:<8} {:<9} {:>5} {:>5}  unavailable",
                "since", "hours", "delivery", "pickup", "till", "wait d", "wait p"
            );
            for change in history? {
                println!(
                    "{:<25} {:<9} {:<8} {:<8} {:<9} {:>5} {:>5}  {}",
                    change.observed_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    if change.hours_open { "open" } else { "closed" },
                    flag(change.delivery_open, "open", "closed"),
                    flag(change.pickup_open, "open", "closed"),
                    flag(change.connection_ok, "online", "offline"),
                    minutes(change.delivery_wait_minutes),
                    minutes(change.pickup_wait_minutes),
                    list(&change.unavailable_products)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn client(config: &ConfigArg, account: &str) -> anyhow::Result<(KassaForteClient, Config)> {
    let config = load(config)?;
    let Some(shop) = config.kassaforte_shop(account) else {
        let known: Vec<&str> = config.kassaforte.iter().map(|s| s.name.as_str()).collect();
        anyhow::bail!(
            "--account: `{account}` is not a configured KassaForte shop; configured: {known:?}"
        );
    };
    let http = HttpClient::new(&HttpConfig {
        max_retries: config.http.max_retries.min(2),
        ..config.http.clone()
    })?;
    let client = KassaForteClient::new(http, Arc::new(RateGate::new(shop.rate_limit)), shop);
    Ok((client, config))
}

fn shop_currency(config: &Config, account: &str) -> String {
    config
        .kassaforte_shop(account)
        .map_or_else(|| "EUR".to_owned(), |s| s.currency.clone())
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

fn flag(value: Option<bool>, yes: &str, no: &str) -> String {
    match value {
        Some(true) => yes.to_owned(),
        Some(false) => no.to_owned(),
        None => "-".to_owned(),
    }
}

fn minutes(value: Option<i64>) -> String {
    value.map_or_else(|| "-".to_owned(), |m| format!("{m}m"))
}

/// The shops' lines of `ordersync status`.
pub fn print_shops(config: &Config, states: &[ShopState], now: DateTime<Utc>) {
    if config.kassaforte.is_empty() {
        return;
    }
    println!();
    println!(
        "{:<24} {:>12} {:<9} {:<8} {:<8} {:<9} {:>14}  unavailable",
        "shop", "last poll", "hours", "delivery", "pickup", "till", "state since"
    );
    for shop in config.kassaforte.iter().filter(|s| s.enabled) {
        let state = states
            .iter()
            .find(|s| s.provider == ProviderKind::KassaForte.as_str() && s.account == shop.name);
        let Some(state) = state else {
            println!(
                "{:<24} {:>12}",
                format!("kassaforte/{}", shop.name),
                "never"
            );
            continue;
        };
        println!(
            "{:<24} {:>12} {:<9} {:<8} {:<8} {:<9} {:>14}  {}",
            format!("kassaforte/{}", shop.name),
            format!("{}s ago", (now - state.observed_at).num_seconds()),
            if state.hours_open { "open" } else { "closed" },
            flag(state.delivery_open, "open", "closed"),
            flag(state.pickup_open, "open", "closed"),
            flag(state.connection_ok, "online", "offline"),
            format!("{}s ago", (now - state.changed_at).num_seconds()),
            list(&state.unavailable_products)
        );
    }
}

/// The shops' part of `ordersync status --json`.
pub fn shops_json(config: &Config, states: &[ShopState]) -> serde_json::Value {
    let shops: Vec<serde_json::Value> = config
        .kassaforte
        .iter()
        .filter(|s| s.enabled)
        .map(|shop| {
            let state = states.iter().find(|s| {
                s.provider == ProviderKind::KassaForte.as_str() && s.account == shop.name
            });
            serde_json::json!({
                "account": shop.name,
                "last_poll_at": state.map(|s| s.observed_at),
                "hours_open": state.map(|s| s.hours_open),
                "delivery_open": state.and_then(|s| s.delivery_open),
                "pickup_open": state.and_then(|s| s.pickup_open),
                "connection_ok": state.and_then(|s| s.connection_ok),
                "state_since": state.map(|s| s.changed_at),
                "unavailable_products": state.map(|s| s.unavailable_products.clone()),
            })
        })
        .collect();
    serde_json::Value::Array(shops)
}
