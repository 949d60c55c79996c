//! `ordersync action …`: queue actions, list and show them, retry dead ones.

use super::{ConfigArg, load, open_store};
use anyhow::Context;
use clap::{Args, Subcommand};
use ordersync::model::ActionState;
use ordersync::outbox::kassaforte::{self, Resolve};
use ordersync::outbox::request::{ActionRequest, ItemSelector};
use ordersync::store::{ActionFilter, RetryFilter};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum ActionCommand {
    /// Queue an accept of an order (or of some of its items).
    Accept(OrderActionArgs),
    /// Queue a cancel of an order (or of some of its items).
    Cancel {
        #[command(flatten)]
        order: OrderActionArgs,
        /// Graas: one of the account's `cancel_reasons`, e.g. OUT_OF_STOCK (required).
        /// Get It Done: a cancellation-reason name (default: the account's cancellation_reason).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Get It Done: attach your order id to the order (UpdateOrderExternalId; it appends).
    Link {
        #[command(flatten)]
        order: OrderActionArgs,
        /// Your id to attach.
        #[arg(long)]
        link_id: String,
    },
    /// Get It Done: attach your invoicing id to the order (UpdateOrderInvoicingExternalId).
    LinkInvoicing {
        #[command(flatten)]
        order: OrderActionArgs,
        #[arg(long)]
        link_id: String,
    },
    /// Get It Done: ask for the order's state to be sent again (RefreshOrder).
    Refresh(OrderActionArgs),
    /// Queue an ASN (`POST /v1/asn`) from a JSON file.
    Asn {
        #[command(flatten)]
        common: CommonArgs,
        /// The ASN body: warehouseID, supplierID, date, orderItems (supplierRef is optional).
        #[arg(long)]
        file: PathBuf,
    },
    /// KassaForte: submit a new order from a JSON file (the POST /v1/order body, amounts in
    /// minor units: 850 for 8.50).
    Submit {
        #[command(flatten)]
        common: CommonArgs,
        #[arg(long)]
        file: PathBuf,
    },
    /// Settle a submission in state `unknown` (it may or may not have reached KassaForte):
    /// with the order id the till shows, or as not submitted (queued again).
    Resolve {
        #[command(flatten)]
        config: ConfigArg,
        id: i64,
        /// The 14-digit KassaForte order id it was created under.
        #[arg(
            long,
            required_unless_present = "not_submitted",
            conflicts_with = "not_submitted"
        )]
        submitted_as: Option<String>,
        /// It did not reach KassaForte: send it again.
        #[arg(long)]
        not_submitted: bool,
    },
    /// List actions, newest first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// pending, in_flight, sent, unknown, succeeded, failed or dead.
        #[arg(long)]
        state: Option<ActionState>,
        #[arg(long)]
        account: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one action with its result or last error, as JSON.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        id: i64,
    },
    /// Put a dead or failed action (or every dead one) back in the queue.
    Retry {
        #[command(flatten)]
        config: ConfigArg,
        /// The action to retry.
        #[arg(required_unless_present = "dead", conflicts_with = "dead")]
        id: Option<i64>,
        /// Every dead action (of `--account`, if given).
        #[arg(long)]
        dead: bool,
        #[arg(long, requires = "dead")]
        account: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The account's `name` in the configuration.
    #[arg(long)]
    account: String,
    /// Your idempotency key; the same key again returns the first action. Derived from the
    /// action's content when not given.
    #[arg(long)]
    key: Option<String>,
    /// Attempts before the action is `dead` (default: outbox.max_attempts).
    #[arg(long)]
    max_attempts: Option<i32>,
}

#[derive(Debug, Args)]
pub struct OrderActionArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Graas: the marketplace connection (`site.nickNameID`), e.g. `lazada-1`. Get It Done
    /// orders have none.
    #[arg(long)]
    channel: Option<String>,
    #[arg(long)]
    order: String,
    /// Only this item, as ORDER_ITEM_ID:SELLER_SKU (repeat for more; Lazada only).
    #[arg(long = "item", value_parser = ItemSelector::parse)]
    items: Vec<ItemSelector>,
}

pub async fn run(command: ActionCommand) -> anyhow::Result<ExitCode> {
    match command {
        ActionCommand::Accept(order) => enqueue(order.request("accept"), &order.common).await,
        ActionCommand::Cancel { order, reason } => {
            let mut request = order.request("cancel");
            request.reason = reason;
            enqueue(request, &order.common).await
        }
        ActionCommand::Link { order, link_id } => {
            let mut request = order.request("link");
            request.link_id = Some(link_id);
            enqueue(request, &order.common).await
        }
        ActionCommand::LinkInvoicing { order, link_id } => {
            let mut request = order.request("link_invoicing");
            request.link_id = Some(link_id);
            enqueue(request, &order.common).await
        }
        ActionCommand::Refresh(order) => enqueue(order.request("refresh"), &order.common).await,
        ActionCommand::Asn { common, file } => {
            let request = ActionRequest {
                account: common.account.clone(),
                kind: "asn".into(),
                asn: Some(read_json(&file)?),
                ..ActionRequest::default()
            };
            enqueue(request, &common).await
        }
        ActionCommand::Submit { common, file } => {
            let request = ActionRequest {
                account: common.account.clone(),
                kind: "submit".into(),
                order: Some(read_json(&file)?),
                ..ActionRequest::default()
            };
            enqueue(request, &common).await
        }
        ActionCommand::Resolve {
            config,
            id,
            submitted_as,
            not_submitted: _,
        } => resolve(config, id, submitted_as).await,
        ActionCommand::List {
            config,
            state,
            account,
            limit,
            json,
        } => list(config, state, account, limit, json).await,
        ActionCommand::Show { config, id } => {
            let config = load(&config)?;
            let store = open_store(&config).await?;
            let action = store.action(id).await?;
            store.close().await;
            match action {
                Some(action) => {
                    println!("{}", serde_json::to_string_pretty(&action)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => anyhow::bail!("no action {id}; `ordersync action list` shows the ids"),
            }
        }
        ActionCommand::Retry {
            config,
            id,
            dead,
            account,
        } => {
            let config = load(&config)?;
            let store = open_store(&config).await?;
            let filter = match (id, dead) {
                (Some(id), _) => RetryFilter::One(id),
                (None, _) => RetryFilter::AllDead { account },
            };
            let count = store.retry_actions(&filter).await?;
            let state = match id {
                Some(id) => store.action(id).await?.map(|a| a.state),
                None => None,
            };
            store.close().await;
            match (id, count, state) {
                (Some(id), 0, None) => anyhow::bail!("no action {id}"),
                (Some(id), 0, Some(state)) => anyhow::bail!(
                    "action {id} is {state}; only dead or failed actions can be retried"
                ),
                _ => println!("{count} action(s) back in the queue"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_json(file: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("--file: cannot read {}", file.display()))?;
    serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "--file: {} is not JSON (line {}, column {}): {e}",
            file.display(),
            e.line(),
            e.column()
        )
    })
}

async fn resolve(
    config: ConfigArg,
    id: i64,
    submitted_as: Option<String>,
) -> anyhow::Result<ExitCode> {
    let config = load(&config)?;
    let store = open_store(&config).await?;
    let Some(action) = store.action(id).await? else {
        store.close().await;
        anyhow::bail!("no action {id}; `ordersync action list --state unknown` shows the ids");
    };
    let currency = config
        .kassaforte_shop(&action.account)
        .map_or("EUR", |shop| shop.currency.as_str());
    let resolve = match submitted_as {
        Some(order_id) => Resolve::SubmittedAs(order_id.trim().to_owned()),
        None => Resolve::NotSubmitted,
    };
    let resolved = kassaforte::resolve(store.as_ref(), id, &resolve, currency).await;
    store.close().await;
    let action = resolved?;
    match resolve {
        Resolve::SubmittedAs(order_id) => {
            eprintln!("action {id} succeeded as KassaForte order {order_id}; it is followed now")
        }
        Resolve::NotSubmitted => eprintln!("action {id} is queued again"),
    }
    println!("{}", serde_json::to_string(&action)?);
    Ok(ExitCode::SUCCESS)
}

impl OrderActionArgs {
    fn request(&self, kind: &str) -> ActionRequest {
        ActionRequest {
            account: self.common.account.clone(),
            kind: kind.into(),
            channel: self.channel.clone(),
            order_id: Some(self.order.clone()),
            items: self.items.clone(),
            ..ActionRequest::default()
        }
    }
}

async fn enqueue(mut request: ActionRequest, common: &CommonArgs) -> anyhow::Result<ExitCode> {
    let config = load(&common.config)?;
    request.idempotency_key = common.key.clone();
    request.max_attempts = common.max_attempts;
    // Field names as the user typed them on the command line.
    let action = request.into_action(&config).map_err(|e| {
        let flag = match e.field.as_str() {
            "order_id" => "--order".to_owned(),
            "max_attempts" => "--max-attempts".to_owned(),
            "idempotency_key" => "--key".to_owned(),
            field if field.starts_with("asn") || field.starts_with("order.") => {
                format!("--file: {field}")
            }
            field => format!("--{field}"),
        };
        anyhow::anyhow!("{flag}: {}", e.message)
    })?;
    let store = open_store(&config).await?;
    let (stored, created) = store.enqueue(&action).await?;
    store.close().await;
    if created {
        eprintln!("queued as action {}", stored.id);
    } else {
        eprintln!(
            "already queued as action {} (state {}); nothing new was queued",
            stored.id, stored.state
        );
    }
    println!("{}", serde_json::to_string(&stored)?);
    Ok(ExitCode::SUCCESS)
}

async fn list(
    config: ConfigArg,
    state: Option<ActionState>,
    account: Option<String>,
    limit: i64,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let config = load(&config)?;
    let store = open_store(&config).await?;
    let actions = store
        .actions(&ActionFilter {
            state,
            account,
            limit: limit.clamp(1, 10_000),
        })
        .await?;
    store.close().await;
    if json {
        for action in &actions {
            println!("{}", serde_json::to_string(action)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>8} {:<16} {:<7} {:<28} {:<10} {:>8} {:<20}  result / last error",
        "id", "account", "kind", "order", "state", "attempts", "next attempt"
    );
    for a in &actions {
        let order = match (&a.channel, &a.external_id) {
            (Some(c), Some(o)) => format!("{c}/{o}"),
            _ => "-".into(),
        };
        let detail = match (&a.result, &a.last_error) {
            (Some(result), _) if a.state == "succeeded" => result.to_string(),
            (_, Some(error)) => error.clone(),
            _ => String::new(),
        };
        let next = if a.state == "pending" {
            a.next_attempt_at.format("%Y-%m-%d %H:%M:%S").to_string()
        } else {
            "-".into()
        };
        println!(
            "{:>8} {:<16} {:<7} {:<28} {:<10} {:>5}/{:<2} {:<20}  {}",
            a.id,
            a.account,
            a.kind,
            order,
            a.state,
            a.attempts,
            a.max_attempts,
            next,
            detail.chars().take(120).collect::<String>()
        );
    }
    Ok(ExitCode::SUCCESS)
}
