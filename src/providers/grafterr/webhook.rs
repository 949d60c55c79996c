//! A Grafterr delivery: the URL's path token (and, when configured, the body's HMAC) checked
//! on the raw bytes, then the few envelope fields the inbox keeps in columns.

use super::config::GrafterrAccount;
use super::wire::{self, Envelope};
use crate::config::Secret;
use crate::model::ProviderKind;
use crate::providers::{AcceptedDelivery, PushReceiver, Refusal, check_path_token};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use sha2::{Digest, Sha256};

pub struct GrafterrReceiver {
    account: String,
    path_token: Secret,
    signing_secret: Option<Secret>,
    signature_header: String,
}

impl GrafterrReceiver {
    pub fn new(account: &GrafterrAccount) -> Self {
        GrafterrReceiver {
            account: account.name.clone(),
            path_token: account.path_token.clone(),
            signing_secret: account.signing_secret.clone(),
            signature_header: account.signature_header.clone(),
        }
    }
}

/// Checks `X-Grafterr-Signature: <hex HMAC-SHA256(secret, raw body)>` in constant time.
pub fn verify_signature(secret: &Secret, header: Option<&str>, body: &[u8]) -> Result<(), String> {
    let header = header.ok_or("the signature header is missing")?;
    let given = hex::decode(header.trim().trim_start_matches("sha256="))
        .map_err(|_| "the signature is not hex".to_owned())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .map_err(|_| "the signing secret is unusable".to_owned())?;
    mac.update(body);
    mac.verify_slice(&given)
        .map_err(|_| "the signature does not match the body".to_owned())
}

/// The hex HMAC a sender puts in the header (for the sandbox and tests).
pub fn sign(secret: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

impl PushReceiver for GrafterrReceiver {
    fn provider(&self) -> ProviderKind {
        ProviderKind::Grafterr
    }

    fn account(&self) -> &str {
        &self.account
    }

    fn accept(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        _now: i64,
        path_token: Option<&str>,
    ) -> Result<AcceptedDelivery, Refusal> {
        check_path_token(Some(&self.path_token), path_token)?;
        if let Some(secret) = &self.signing_secret {
            let header = headers
                .get(self.signature_header.as_str())
                .and_then(|v| v.to_str().ok());
            verify_signature(secret, header, body).map_err(Refusal::Unauthenticated)?;
        }
        let envelope = Envelope::parse(body).map_err(Refusal::Malformed)?;
        // Without an event id, the body itself is the identity of a repeat.
        let event_id = envelope
            .event_id
            .clone()
            .filter(|id| !id.trim().is_empty())
            .unwrap_or_else(|| format!("sha256:{}", hex::encode(Sha256::digest(body))));
        Ok(AcceptedDelivery {
            event_id: Some(event_id),
            event_type: envelope.event.clone(),
            object_id: envelope.order().and_then(wire::order_id),
            registration: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver(signing: Option<&str>) -> GrafterrReceiver {
        GrafterrReceiver {
            account: "cafe".into(),
            path_token: Secret::new("0123456789abcdef0123"),
            signing_secret: signing.map(Secret::new),
            signature_header: "X-Grafterr-Signature".into(),
        }
    }

    const BODY: &[u8] =
        br#"{"eventId":"e1","event":"pos.order.created","data":{"order":{"orderId":"A"}}}"#;

    #[test]
    fn the_path_token_and_the_signature_decide() {
        let open = receiver(None);
        let accepted = open
            .accept(&HeaderMap::new(), BODY, 0, Some("0123456789abcdef0123"))
            .unwrap();
        assert_eq!(accepted.event_id.as_deref(), Some("e1"));
        assert_eq!(accepted.object_id.as_deref(), Some("A"));
        assert!(matches!(
            open.accept(&HeaderMap::new(), BODY, 0, Some("0123456789abcdef0124")),
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(open.accept(&HeaderMap::new(), BODY, 0, None).is_err());

        let signed = receiver(Some("hook-secret"));
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-grafterr-signature",
            sign("hook-secret", BODY).parse().unwrap(),
        );
        assert!(
            signed
                .accept(&headers, BODY, 0, Some("0123456789abcdef0123"))
                .is_ok()
        );
        let mut changed = BODY.to_vec();
        changed[10] ^= 1;
        assert!(matches!(
            signed.accept(&headers, &changed, 0, Some("0123456789abcdef0123")),
            Err(Refusal::Unauthenticated(_))
        ));
        assert!(
            signed
                .accept(&HeaderMap::new(), BODY, 0, Some("0123456789abcdef0123"))
                .is_err()
        );
    }

    #[test]
    fn without_an_event_id_the_body_hash_identifies_a_repeat() {
        let body = br#"{"event":"web.order.updated","data":{"order":{"orderId":"B"}}}"#;
        let token = Some("0123456789abcdef0123");
        let first = receiver(None)
            .accept(&HeaderMap::new(), body, 0, token)
            .unwrap();
        let again = receiver(None)
            .accept(&HeaderMap::new(), body, 0, token)
            .unwrap();
        assert!(first.event_id.as_deref().unwrap().starts_with("sha256:"));
        assert_eq!(first.event_id, again.event_id);
        assert!(matches!(
            receiver(None).accept(&HeaderMap::new(), b"not json", 0, token),
            Err(Refusal::Malformed(_))
        ));
    }
}
