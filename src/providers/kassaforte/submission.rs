//! An order to submit, as an action carries it: the `POST /v1/order` body with every amount in
//! integer minor units. [`Submission::parse`] checks it and writes the wire body, with the
//! amounts as decimals in major units.

use crate::providers::money::minor_to_decimal;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

/// What ordersync needs to know about an order before submitting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// `delivery` or `pickup`: the order's channel.
    pub delivery_type: String,
    /// Every item number ordered, in menus too.
    pub item_numbers: Vec<String>,
    /// The overall sum in minor units.
    pub sum_minor: i64,
    /// The request body as KassaForte takes it.
    pub wire_body: String,
}

/// Where amounts are: these keys of the order, its items and menus, and its delivery costs.
fn is_money(path: &[&str], key: &str) -> bool {
    matches!(
        (path, key),
        ([], "sum") | (["items"], "price") | (["menus"], "price") | (["deliveryCosts"], "costs")
    )
}

/// A JSON value written with its amounts as decimals.
enum Wire<'a> {
    Plain(&'a Value),
    Money(Box<RawValue>),
    Object(Vec<(&'a str, Wire<'a>)>),
    Array(Vec<Wire<'a>>),
}

impl Serialize for Wire<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Wire::Plain(value) => value.serialize(serializer),
            Wire::Money(raw) => raw.serialize(serializer),
            Wire::Object(fields) => {
                let mut map = serializer.serialize_map(Some(fields.len()))?;
                for (key, value) in fields {
                    map.serialize_entry(key, value)?;
                }
                map.end()
            }
            Wire::Array(items) => {
                let mut seq = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
        }
    }
}

/// `path` names the array or object a value sits in (array indexes left out).
fn to_wire<'a>(value: &'a Value, path: &mut Vec<&'a str>, at: &str) -> Result<Wire<'a>, String> {
    match value {
        Value::Object(fields) => {
            let mut out = Vec::with_capacity(fields.len());
            for (key, field) in fields {
                let here = format!("{at}.{key}");
                if is_money(path, key) {
                    let minor = field.as_i64().ok_or_else(|| {
                        format!(
                            "{here}: `{field}` is not an amount in minor units; write cents as an integer, e.g. 850 for 8.50"
                        )
                    })?;
                    let raw = RawValue::from_string(minor_to_decimal(minor))
                        .map_err(|e| format!("{here}: {e}"))?;
                    out.push((key.as_str(), Wire::Money(raw)));
                } else if path.is_empty()
                    && matches!(key.as_str(), "items" | "menus" | "deliveryCosts")
                {
                    path.push(key.as_str());
                    let wire = to_wire(field, path, &here);
                    path.pop();
                    out.push((key.as_str(), wire?));
                } else {
                    out.push((key.as_str(), Wire::Plain(field)));
                }
            }
            Ok(Wire::Object(out))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| to_wire(item, path, &format!("{at}[{i}]")))
            .collect::<Result<_, _>>()
            .map(Wire::Array),
        other => Ok(Wire::Plain(other)),
    }
}

fn item_no(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Submission {
    /// Checks the order an action carries; errors name the field (`order.items[1].price`).
    pub fn parse(order: &Value) -> Result<Submission, String> {
        if !order.is_object() {
            return Err("order: must be the POST /v1/order body, a JSON object".to_owned());
        }
        let delivery_type = match order.get("deliveryType").and_then(Value::as_str) {
            Some(t @ ("delivery" | "pickup")) => t.to_owned(),
            Some(other) => {
                return Err(format!(
                    "order.deliveryType: `{other}` is not delivery or pickup"
                ));
            }
            None => return Err("order.deliveryType: is required (delivery or pickup)".to_owned()),
        };
        let sum_minor = order.get("sum").and_then(Value::as_i64).ok_or(
            "order.sum: is required, the overall sum in minor units (e.g. 2300 for 23.00)",
        )?;
        let mut item_numbers = Vec::new();
        let items = order.get("items").and_then(Value::as_array);
        let menus = order.get("menus").and_then(Value::as_array);
        if items.is_none_or(Vec::is_empty) && menus.is_none_or(Vec::is_empty) {
            return Err("order.items: an order needs items or menus".to_owned());
        }
        for (i, item) in items.into_iter().flatten().enumerate() {
            item_numbers.push(
                item_no(item.get("itemNo"))
                    .ok_or_else(|| format!("order.items[{i}].itemNo: is required"))?,
            );
        }
        for (i, menu) in menus.into_iter().flatten().enumerate() {
            item_numbers.push(
                item_no(menu.get("itemNo"))
                    .ok_or_else(|| format!("order.menus[{i}].itemNo: is required"))?,
            );
            for inner in menu
                .get("items")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                item_numbers.extend(item_no(inner.get("itemNo")));
            }
        }
        let wire = to_wire(order, &mut Vec::new(), "order")?;
        let wire_body = serde_json::to_string(&wire).map_err(|e| format!("order: {e}"))?;
        Ok(Submission {
            delivery_type,
            item_numbers,
            sum_minor,
            wire_body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amounts_go_out_as_exact_decimals_and_nothing_else_changes() {
        let order = json!({
            "reference": "OS-1", "deliveryType": "delivery", "paymentMethod": 0,
            "items": [{"itemNo": "1201", "sizeId": 2, "quantity": 1, "price": 850,
                       "ingredients": [14, 15]}],
            "menus": [{"itemNo": "M10", "price": 1200, "items": [{"itemNo": "1202", "sizeId": 1}]}],
            "deliveryCosts": {"type": "zipcode", "zipId": 12, "costs": 250},
            "sum": 2300
        });
        let s = Submission::parse(&order).unwrap();
        assert_eq!(s.delivery_type, "delivery");
        assert_eq!(s.item_numbers, vec!["1201", "M10", "1202"]);
        let wire = &s.wire_body;
        for expected in [
            r#""price":8.50"#,
            r#""price":12.00"#,
            r#""costs":2.50"#,
            r#""sum":23.00"#,
            r#""sizeId":2"#,
            r#""zipId":12"#,
            r#""quantity":1"#,
        ] {
            assert!(wire.contains(expected), "{expected} missing in {wire}");
        }
        let back: Value = serde_json::from_str(wire).unwrap();
        assert_eq!(back["paymentMethod"], json!(0));
    }

    #[test]
    fn problems_name_the_field() {
        let base =
            json!({"deliveryType": "pickup", "sum": 100, "items": [{"itemNo": "1", "price": 100}]});
        assert!(Submission::parse(&base).is_ok());
        let mut float = base.clone();
        float["items"][0]["price"] = json!(1.0);
        assert!(
            Submission::parse(&float)
                .unwrap_err()
                .starts_with("order.items[0].price")
        );
        let mut kind = base.clone();
        kind["deliveryType"] = json!("drone");
        assert!(
            Submission::parse(&kind)
                .unwrap_err()
                .starts_with("order.deliveryType")
        );
        let mut no_items = base.clone();
        no_items["items"] = json!([]);
        assert!(
            Submission::parse(&no_items)
                .unwrap_err()
                .starts_with("order.items")
        );
        let mut no_no = base;
        no_no["items"][0] = json!({"price": 100});
        assert!(
            Submission::parse(&no_no)
                .unwrap_err()
                .starts_with("order.items[0].itemNo")
        );
    }
}
