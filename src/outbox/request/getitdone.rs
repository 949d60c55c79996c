//! Action requests for Get It Done accounts: commands on one order. There is no accept: on Get
//! It Done installers accept jobs, not partners.

use super::{ActionRequest, Checked, InvalidAction, invalid, known_names, non_empty};
use crate::config::Config;
use crate::model::ActionKind;
use serde_json::json;

pub(super) fn check(asked: ActionRequest, config: &Config) -> Result<Checked, InvalidAction> {
    let Some(account) = config.getitdone_account(&asked.account) else {
        return Err(invalid(
            "account",
            format!(
                "`{}` is not a configured Get It Done account; configured: {}",
                asked.account,
                known_names(config.getitdone.iter().map(|a| a.name.as_str()))
            ),
        ));
    };
    let kind: ActionKind = asked.kind.parse().map_err(|e: String| invalid("kind", e))?;
    let what = kind.as_str();
    for (field, given) in [
        ("asn", asked.asn.is_some()),
        ("items", !asked.items.is_empty()),
    ] {
        if given {
            return Err(invalid(field, "does not apply to Get It Done"));
        }
    }
    if asked.channel.as_deref().is_some_and(|c| !c.is_empty()) {
        return Err(invalid(
            "channel",
            "Get It Done orders have no channel; leave it out",
        ));
    }
    let request = match kind {
        ActionKind::Accept => {
            return Err(invalid(
                "kind",
                "Get It Done has no accept command (installers accept jobs); use cancel, link, link_invoicing or refresh",
            ));
        }
        ActionKind::Asn | ActionKind::Submit => {
            return Err(invalid(
                "kind",
                format!(
                    "Get It Done has no {what} command; use cancel, link, link_invoicing or refresh"
                ),
            ));
        }
        ActionKind::Cancel => {
            no_link_id(&asked, what)?;
            match asked.reason.as_deref().map(str::trim) {
                Some("") => {
                    return Err(invalid(
                        "reason",
                        "is empty; leave it out to send the account's cancellation_reason",
                    ));
                }
                Some(reason) => json!({ "reason": reason }),
                None => json!({}),
            }
        }
        ActionKind::Link | ActionKind::LinkInvoicing => {
            no_reason(&asked, what)?;
            let id = non_empty(&asked.link_id, "link_id", what)?;
            if id.len() > 200 {
                return Err(invalid("link_id", "must be at most 200 characters"));
            }
            json!({ "link_id": id })
        }
        ActionKind::Refresh => {
            no_reason(&asked, what)?;
            no_link_id(&asked, what)?;
            json!({})
        }
    };
    let order_id = non_empty(&asked.order_id, "order_id", what)?;
    Ok(Checked {
        account: account.name.clone(),
        kind,
        channel: Some(String::new()),
        external_id: Some(order_id),
        request,
    })
}

fn no_reason(asked: &ActionRequest, what: &str) -> Result<(), InvalidAction> {
    match asked.reason {
        Some(_) => Err(invalid("reason", format!("does not apply to {what}"))),
        None => Ok(()),
    }
}

fn no_link_id(asked: &ActionRequest, what: &str) -> Result<(), InvalidAction> {
    match asked.link_id {
        Some(_) => Err(invalid("link_id", format!("does not apply to {what}"))),
        None => Ok(()),
    }
}
