//! Money between our integer minor units and the decimal major units KassaForte and Grafterr
//! send, exactly: by digits, never through a float (a one-cent drift is a KassaForte conflict
//! and a wrong total in the books).

/// `850` → `8.50`, `-5` → `-0.05`.
pub fn minor_to_decimal(minor: i64) -> String {
    let sign = if minor < 0 { "-" } else { "" };
    let abs = minor.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// `8.5`, `8.50` or `8` → `850`. More than two decimals only when the rest are zeros;
/// exponents are refused (they hide the digits).
pub fn decimal_to_minor(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, fraction) = digits.split_once('.').unwrap_or((digits, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return Err(format!("`{text}` is not a decimal amount like 8.50"));
    }
    let (cents, rest) = fraction.split_at(fraction.len().min(2));
    if rest.bytes().any(|b| b != b'0') {
        return Err(format!("`{text}` has more than two decimals"));
    }
    let whole: i64 = whole
        .parse()
        .map_err(|_| format!("`{text}` is too large"))?;
    let cents: i64 = format!("{cents:0<2}")
        .parse()
        .map_err(|_| format!("`{text}` is not a decimal amount"))?;
    let minor = whole
        .checked_mul(100)
        .and_then(|w| w.checked_add(cents))
        .ok_or_else(|| format!("`{text}` is too large"))?;
    Ok(if negative { -minor } else { minor })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_become_two_decimals() {
        assert_eq!(minor_to_decimal(850), "8.50");
        assert_eq!(minor_to_decimal(5), "0.05");
        assert_eq!(minor_to_decimal(-5), "-0.05");
        assert_eq!(minor_to_decimal(0), "0.00");
        assert_eq!(minor_to_decimal(123_456_789), "1234567.89");
    }

    #[test]
    fn decimals_become_minor_units_exactly() {
        assert_eq!(decimal_to_minor("8.5"), Ok(850));
        assert_eq!(decimal_to_minor("8.50"), Ok(850));
        assert_eq!(decimal_to_minor("8"), Ok(800));
        assert_eq!(decimal_to_minor("-1"), Ok(-100));
        assert_eq!(decimal_to_minor("0.29"), Ok(29));
        assert_eq!(decimal_to_minor("19.990"), Ok(1999));
        assert!(decimal_to_minor("19.999").is_err());
        assert!(decimal_to_minor("1e2").is_err());
        assert!(decimal_to_minor("").is_err());
        assert!(decimal_to_minor(".5").is_err());
        for minor in [-10_001, -1, 0, 1, 29, 99, 100, 101, 100_000_007] {
            assert_eq!(decimal_to_minor(&minor_to_decimal(minor)), Ok(minor));
        }
    }
}
