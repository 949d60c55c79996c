//! Lenient readings of JSON fields that upstreams send in more than one shape.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

/// A JSON string's contents (trimmed) or a number's digits as written; `None` for anything
/// else or an empty string. Reading a number's text keeps `6.40` exact, which `f64` would not.
pub fn scalar_text(value: &RawValue) -> Option<String> {
    let text = value.get().trim();
    if let Ok(text) = serde_json::from_str::<String>(text) {
        let text = text.trim();
        return (!text.is_empty()).then(|| text.to_owned());
    }
    (!text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || b == b'.' || b == b'-'))
    .then(|| text.to_owned())
}

/// An RFC 3339 time, or the reason it is not one.
pub fn rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("`{text}` is not an RFC 3339 time ({e})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_read_as_written() {
        let read = |json: &str| scalar_text(&RawValue::from_string(json.into()).unwrap());
        assert_eq!(read("6.40").as_deref(), Some("6.40"));
        assert_eq!(read(r#"" A-1 ""#).as_deref(), Some("A-1"));
        assert_eq!(read("42").as_deref(), Some("42"));
        assert_eq!(read(r#""""#), None);
        assert_eq!(read("1e3"), None);
        assert_eq!(read("{}"), None);
        assert!(rfc3339("2024-05-22T10:15:02Z").is_ok());
        assert!(rfc3339("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
