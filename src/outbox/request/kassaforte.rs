//! Action requests for KassaForte shops: `submit`, with the order body (amounts in minor units).

use super::{ActionRequest, Checked, InvalidAction, invalid, known_names};
use crate::config::Config;
use crate::model::ActionKind;
use crate::providers::kassaforte::submission::Submission;
use serde_json::json;

pub(super) fn check(asked: ActionRequest, config: &Config) -> Result<Checked, InvalidAction> {
    let Some(shop) = config.kassaforte_shop(&asked.account) else {
        return Err(invalid(
            "account",
            format!(
                "`{}` is not a configured KassaForte shop; configured: {}",
                asked.account,
                known_names(config.kassaforte.iter().map(|a| a.name.as_str()))
            ),
        ));
    };
    let kind: ActionKind = asked.kind.parse().map_err(|e: String| invalid("kind", e))?;
    if kind != ActionKind::Submit {
        return Err(invalid(
            "kind",
            format!(
                "KassaForte takes `submit` (a new order), not `{kind}`",
                kind = kind.as_str()
            ),
        ));
    }
    for (field, given) in [
        ("channel", asked.channel.is_some()),
        ("order_id", asked.order_id.is_some()),
        ("items", !asked.items.is_empty()),
        ("reason", asked.reason.is_some()),
        ("asn", asked.asn.is_some()),
        ("link_id", asked.link_id.is_some()),
    ] {
        if given {
            return Err(invalid(
                field,
                "does not apply to submit; the order says it all",
            ));
        }
    }
    let Some(order) = asked.order else {
        return Err(invalid(
            "order",
            "is required for submit: the POST /v1/order body with amounts in minor units",
        ));
    };
    let submission = Submission::parse(&order).map_err(|e| match e.split_once(": ") {
        Some((field, message)) => invalid(field, message),
        None => invalid("order", e),
    })?;
    Ok(Checked {
        account: shop.name.clone(),
        kind,
        channel: Some(submission.delivery_type),
        external_id: None,
        request: json!({ "order": order }),
    })
}
