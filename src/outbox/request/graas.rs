//! Action requests for Graas accounts.

use super::{ActionRequest, Checked, InvalidAction, invalid, non_empty};
use crate::config::Config;
use crate::model::ActionKind;
use crate::providers::graas::outbound::AsnRequest;
use serde_json::{Value, json};

/// Checks a request for a Graas account: accept and cancel of an order (whole or some items, a
/// cancel with one of the account's `cancel_reasons`), or an ASN with a valid `POST /v1/asn` body.
pub(super) fn check(asked: ActionRequest, config: &Config) -> Result<Checked, InvalidAction> {
    let Some(account) = config.graas_account(&asked.account) else {
        let known: Vec<&str> = config.graas.iter().map(|a| a.name.as_str()).collect();
        return Err(invalid(
            "account",
            format!(
                "`{}` is not a configured Graas account; configured: {}",
                asked.account,
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ));
    };
    let kind: ActionKind = asked.kind.parse().map_err(|e: String| invalid("kind", e))?;
    let (channel, external_id, request) = match kind {
        ActionKind::Accept | ActionKind::Cancel => {
            let what = kind.as_str();
            let channel = non_empty(&asked.channel, "channel", what)?;
            let order_id = non_empty(&asked.order_id, "order_id", what)?;
            if asked.asn.is_some() {
                return Err(invalid("asn", format!("does not apply to {what}")));
            }
            let items: Vec<Value> = asked
                .items
                .iter()
                .map(|i| json!({"orderItemID": i.order_item_id, "sellerSKU": i.seller_sku}))
                .collect();
            let mut request = json!({});
            if !items.is_empty() {
                request["items"] = Value::Array(items);
            }
            match (kind, asked.reason) {
                (ActionKind::Cancel, Some(reason)) => {
                    if !account.cancel_reasons.contains(&reason) {
                        return Err(invalid(
                            "reason",
                            format!(
                                "`{reason}` is not one of this account's cancel_reasons ({}); add it to the config if Graas takes it",
                                account.cancel_reasons.join(", ")
                            ),
                        ));
                    }
                    request["reason"] = json!(reason);
                }
                (ActionKind::Cancel, None) => {
                    return Err(invalid(
                        "reason",
                        format!(
                            "is required for cancel; one of {}",
                            account.cancel_reasons.join(", ")
                        ),
                    ));
                }
                (_, Some(_)) => {
                    return Err(invalid("reason", "applies to cancel only"));
                }
                (_, None) => {}
            }
            (Some(channel), Some(order_id), request)
        }
        ActionKind::Link | ActionKind::LinkInvoicing | ActionKind::Refresh | ActionKind::Submit => {
            return Err(invalid(
                "kind",
                format!(
                    "Graas has no `{}` command; it takes accept, cancel and asn",
                    kind.as_str()
                ),
            ));
        }
        ActionKind::Asn => {
            let Some(asn) = asked.asn else {
                return Err(invalid("asn", "is required for asn: the POST /v1/asn body"));
            };
            for (field, given) in [
                ("channel", asked.channel.is_some()),
                ("order_id", asked.order_id.is_some()),
                ("items", !asked.items.is_empty()),
                ("reason", asked.reason.is_some()),
            ] {
                if given {
                    return Err(invalid(field, "does not apply to asn"));
                }
            }
            AsnRequest::parse(&asn).map_err(|e| match e.split_once(": ") {
                Some((field, message)) if !field.contains(' ') => {
                    invalid(&format!("asn.{field}"), message)
                }
                _ => invalid("asn", e),
            })?;
            (None, None, asn)
        }
    };
    Ok(Checked {
        account: account.name.clone(),
        kind,
        channel,
        external_id,
        request,
    })
}
