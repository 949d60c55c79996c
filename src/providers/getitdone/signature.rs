//! The delivery signature: `X-GID-Signature: sha256=<hex HMAC-SHA256(secret, "<ts>.<body>")>`
//! with `X-GID-Timestamp: <unix seconds>` (assumed scheme; header names in
//! [`super::contract`]). Checked on the raw bytes, before anything is parsed.

use crate::config::Secret;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the timestamp header is missing")]
    MissingTimestamp,
    #[error("the timestamp header is not Unix seconds")]
    BadTimestamp,
    #[error("the timestamp is {skew_secs}s away from our clock (more than {tolerance_secs}s)")]
    Stale { skew_secs: i64, tolerance_secs: u64 },
    #[error("the signature header is missing")]
    MissingSignature,
    #[error("the signature header is not `sha256=<hex>`")]
    BadSignature,
    #[error("the signature matches none of the account's webhook secrets")]
    Mismatch,
    #[error("the account has no webhook secret to check deliveries with")]
    NoSecret,
}

/// The signature header's value for `body` sent at `timestamp` (what the sandbox sends).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret.as_bytes(), timestamp, body).map(|mac| mac.finalize().into_bytes());
    format!("sha256={}", digest.map(hex::encode).unwrap_or_default())
}

/// HMAC takes keys of any length, so this is `None` never in practice.
fn mac(key: &[u8], timestamp: i64, body: &[u8]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(mac)
}

/// Checks one delivery: a fresh timestamp, and a signature by one of `secrets` (two during a
/// rotation), compared in constant time.
pub fn verify(
    secrets: &[Secret],
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let timestamp: i64 = timestamp
        .ok_or(SignatureError::MissingTimestamp)?
        .trim()
        .parse()
        .map_err(|_| SignatureError::BadTimestamp)?;
    let skew = now.saturating_sub(timestamp);
    if skew.unsigned_abs() > tolerance.as_secs() {
        return Err(SignatureError::Stale {
            skew_secs: skew,
            tolerance_secs: tolerance.as_secs(),
        });
    }
    let signature = signature.ok_or(SignatureError::MissingSignature)?.trim();
    let expected = signature
        .strip_prefix("sha256=")
        .and_then(decode_hex)
        .ok_or(SignatureError::BadSignature)?;
    if secrets.is_empty() {
        return Err(SignatureError::NoSecret);
    }
    let matched = secrets.iter().any(|secret| {
        mac(secret.expose().as_bytes(), timestamp, body)
            .is_some_and(|mac| mac.verify_slice(&expected).is_ok())
    });
    if matched {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000;

    fn check(
        secrets: &[&str],
        ts: i64,
        signature: &str,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let secrets: Vec<Secret> = secrets.iter().map(|s| Secret::new(*s)).collect();
        let ts = ts.to_string();
        verify(
            &secrets,
            Some(&ts),
            Some(signature),
            body,
            NOW,
            Duration::from_secs(300),
        )
    }

    #[test]
    fn a_signature_by_either_secret_within_the_window_passes() {
        let body = br#"{"_type":"OrderStatusEvent"}"#;
        let by_old = sign("old", NOW - 10, body);
        assert_eq!(check(&["old"], NOW - 10, &by_old, body), Ok(()));
        assert_eq!(check(&["new", "old"], NOW - 10, &by_old, body), Ok(()));
        assert_eq!(
            check(&["new"], NOW - 10, &by_old, body),
            Err(SignatureError::Mismatch)
        );
        // The body and the timestamp are both signed.
        assert_eq!(
            check(&["old"], NOW - 10, &by_old, b"{}"),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            check(&["old"], NOW - 11, &by_old, body),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stale_missing_and_malformed_headers_are_refused() {
        let body = b"{}";
        let stale = sign("s", NOW - 301, body);
        assert!(matches!(
            check(&["s"], NOW - 301, &stale, body),
            Err(SignatureError::Stale { .. })
        ));
        let future = sign("s", NOW + 301, body);
        assert!(matches!(
            check(&["s"], NOW + 301, &future, body),
            Err(SignatureError::Stale { .. })
        ));
        assert_eq!(
            check(&["s"], NOW, "md5=00", body),
            Err(SignatureError::BadSignature)
        );
        assert_eq!(
            check(&["s"], NOW, "sha256=zz", body),
            Err(SignatureError::BadSignature)
        );
        let secrets = [Secret::new("s")];
        let ok = Duration::from_secs(300);
        assert_eq!(
            verify(&secrets, None, Some("x"), body, NOW, ok),
            Err(SignatureError::MissingTimestamp)
        );
        assert_eq!(
            verify(&secrets, Some("soon"), Some("x"), body, NOW, ok),
            Err(SignatureError::BadTimestamp)
        );
        assert_eq!(
            verify(&secrets, Some(&NOW.to_string()), None, body, NOW, ok),
            Err(SignatureError::MissingSignature)
        );
    }
}
