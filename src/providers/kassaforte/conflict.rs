//! KassaForte's validation errors (`409`): the documented code, its class and the values the
//! message wraps in `#…#`. Two documented messages are malformed (303 has no `#`, 305 a stray
//! quote in its last value) and unknown codes may come: parse leniently, keep the raw text.

use serde::Serialize;

/// What part of the order a code is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictClass {
    Order,
    Article,
    Menu,
    Ingredient,
    Discount,
    Delivery,
    Unknown,
}

impl ConflictClass {
    pub fn of(code: u16) -> ConflictClass {
        match code / 100 {
            1 => ConflictClass::Order,
            2 => ConflictClass::Article,
            3 => ConflictClass::Menu,
            4 => ConflictClass::Ingredient,
            5 => ConflictClass::Discount,
            6 => ConflictClass::Delivery,
            _ => ConflictClass::Unknown,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConflictClass::Order => "order",
            ConflictClass::Article => "article",
            ConflictClass::Menu => "menu",
            ConflictClass::Ingredient => "ingredient",
            ConflictClass::Discount => "discount",
            ConflictClass::Delivery => "delivery",
            ConflictClass::Unknown => "unknown",
        }
    }
}

/// The documented codes: meaning and the names of their placeholders, in order.
const CODES: &[(u16, &str, &[&str])] = &[
    (101, "choices are mandatory but none supplied", &["item-no"]),
    (102, "overall sum differs", &["our-sum", "your-sum"]),
    (103, "invalid payment method", &["payment-method"]),
    (
        201,
        "article has no price for size",
        &["item-no", "size-id"],
    ),
    (202, "unknown article", &["item-no"]),
    (203, "article price differs", &["our-price", "your-price"]),
    (
        204,
        "ingredient not allowed in category",
        &["ingredient-id", "category-id"],
    ),
    (205, "invalid choice", &["choice-id"]),
    (301, "menu has no price", &["item-no"]),
    (302, "unknown menu", &["item-no"]),
    (
        303,
        "menu item count differs",
        &["expected-count", "actual-count"],
    ),
    (304, "menu price differs", &["our-price", "your-price"]),
    (
        305,
        "no match for article in size among the menu's categories",
        &["item-no", "size-id", "menu-item-no"],
    ),
    (306, "article not allowed in menus", &["item-no"]),
    (
        401,
        "ingredient has no price for size",
        &["ingredient-id", "size-id"],
    ),
    (402, "unknown ingredient", &["ingredient-id"]),
    (501, "unknown discount code", &["discount-code"]),
    (601, "unknown delivery cost type", &[]),
    (
        602,
        "wrong delivery cost type",
        &["sent-type", "expected-type"],
    ),
    (603, "unknown zipId", &["zip-id"]),
    (604, "delivery only to defined zipIds", &[]),
    (
        605,
        "minimum order value not reached",
        &["minimum-sum", "your-sum"],
    ),
    (606, "delivery costs differ", &["our-sum", "your-sum"]),
    (607, "no definition for distance", &["distance"]),
];

/// Which shop document a conflict may mean is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StaleDocument {
    Menu,
    DeliveryCosts,
}

/// One parsed `409`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Conflict {
    pub code: Option<u16>,
    pub class: ConflictClass,
    pub meaning: &'static str,
    /// `(placeholder name, value)` in order; names are `value-N` past the documented ones.
    pub values: Vec<(String, String)>,
    /// Fewer values than the code documents: read the raw message.
    pub partial: bool,
    pub message: String,
}

impl Conflict {
    pub fn parse(code: Option<u16>, message: &str) -> Conflict {
        let known = code.and_then(|c| CODES.iter().find(|(k, _, _)| *k == c));
        let names: &[&str] = known.map_or(&[], |(_, _, names)| names);
        let mut raw_values = hashed_values(message);
        // 303 writes its counts without `#`.
        if raw_values.is_empty() && code == Some(303) {
            raw_values = bare_numbers(message);
        }
        let values: Vec<(String, String)> = raw_values
            .into_iter()
            .enumerate()
            .map(|(i, value)| {
                let name = names
                    .get(i)
                    .map_or_else(|| format!("value-{}", i + 1), |n| (*n).to_owned());
                (name, value)
            })
            .collect();
        Conflict {
            code,
            class: code.map_or(ConflictClass::Unknown, ConflictClass::of),
            meaning: known.map_or("undocumented validation error", |(_, m, _)| m),
            partial: values.len() < names.len(),
            values,
            message: message.to_owned(),
        }
    }

    /// The document whose change can cause this conflict (articles, menus, ingredients and
    /// sums come from the menu; 6xx from the delivery costs).
    pub fn stale_document(&self) -> Option<StaleDocument> {
        match self.code? {
            102 | 200..=499 => Some(StaleDocument::Menu),
            600..=699 => Some(StaleDocument::DeliveryCosts),
            _ => None,
        }
    }

    /// One line for `last_error`: code, class, meaning, values, and the raw message.
    pub fn describe(&self) -> String {
        let code = self.code.map_or("no code".to_owned(), |c| c.to_string());
        let values: Vec<String> = self
            .values
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        let values = match values.is_empty() {
            true => String::new(),
            false => format!(" [{}]", values.join(", ")),
        };
        format!(
            "409 {code} ({}): {}{values}; KassaForte said: {}",
            self.class.as_str(),
            self.meaning,
            self.message
        )
    }
}

/// The values between `#` pairs, in order, trimmed of spaces and quotes (305's stray `"`).
fn hashed_values(message: &str) -> Vec<String> {
    let parts: Vec<&str> = message.split('#').collect();
    // Odd parts sit between two `#`; the last part has no closing `#`.
    parts
        .iter()
        .enumerate()
        .skip(1)
        .step_by(2)
        .filter(|(i, _)| *i + 1 < parts.len())
        .map(|(_, value)| value.trim().trim_matches(['"', '\'', ' ']).to_owned())
        .collect()
}

/// Numbers written bare in the message, in order.
fn bare_numbers(message: &str) -> Vec<String> {
    message
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map(|s| s.trim_matches('.'))
        .filter(|s| !s.is_empty() && s.bytes().any(|b| b.is_ascii_digit()))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(c: &Conflict) -> Vec<&str> {
        c.values.iter().map(|(_, v)| v.as_str()).collect()
    }

    #[test]
    fn documented_messages_are_parsed_in_order() {
        let c = Conflict::parse(
            Some(102),
            "Computed overall sum of #23.50# differs from send sum #23.00#",
        );
        assert_eq!(c.class, ConflictClass::Order);
        assert_eq!(values(&c), ["23.50", "23.00"]);
        assert_eq!(c.values[0].0, "our-sum");
        assert!(!c.partial);
        let c = Conflict::parse(
            Some(204),
            "Ingredient #14# is not allowed in category with id #3#",
        );
        assert_eq!(
            (c.class, values(&c)),
            (ConflictClass::Article, vec!["14", "3"])
        );
        assert_eq!(
            Conflict::parse(Some(402), "x").class,
            ConflictClass::Ingredient
        );
        let c = Conflict::parse(Some(604), "Delivery allowed only to defined zipIds");
        assert!(c.values.is_empty() && !c.partial);
        assert_eq!(c.stale_document(), Some(StaleDocument::DeliveryCosts));
    }

    #[test]
    fn the_two_malformed_messages_still_give_their_values() {
        let c = Conflict::parse(
            Some(303),
            "Expected item count of 3 differs from actual itemcount of 2",
        );
        assert_eq!(values(&c), ["3", "2"]);
        assert_eq!(c.class, ConflictClass::Menu);
        let c = Conflict::parse(
            Some(305),
            "Can't find a match for article #1201# in size #2# in categories of menu #M10\"#",
        );
        assert_eq!(values(&c), ["1201", "2", "M10"]);
        assert_eq!(c.values[2].0, "menu-item-no");
    }

    #[test]
    fn odd_input_never_breaks_the_parser() {
        let c = Conflict::parse(Some(202), "Unknown article #1201");
        assert!(c.values.is_empty() && c.partial);
        assert!(c.describe().contains("Unknown article #1201"));
        let c = Conflict::parse(Some(999), "New #a# thing");
        assert_eq!(c.class, ConflictClass::Unknown);
        assert_eq!(c.values, vec![("value-1".to_owned(), "a".to_owned())]);
        let c = Conflict::parse(None, "");
        assert!(c.values.is_empty());
        for text in ["#", "##", "###", "#a#b#", "\"#\"#"] {
            let _ = Conflict::parse(Some(305), text).describe();
        }
        assert_eq!(
            values(&Conflict::parse(Some(302), "Unknown menu ## now")),
            [""]
        );
    }
}
