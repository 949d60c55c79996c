//! Properties of every wire parser and mapper and of the webhook checks: arbitrary bytes never
//! panic, valid inputs round-trip, and a signed body changed in any one byte is refused.

use chrono::{DateTime, TimeZone, Utc};
use ordersync::config::Secret;
use ordersync::providers::getitdone::signature;
use ordersync::providers::grafterr::webhook as grafterr_webhook;
use ordersync::providers::kassaforte::conflict::Conflict;
use ordersync::providers::{getitdone, graas, grafterr, kassaforte, lagerkoll, money};
use proptest::prelude::*;
use serde_json::value::RawValue;
use std::time::Duration;

/// Bytes that are often JSON-shaped, sometimes not: what a parser must survive.
fn bodies() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        json_values().prop_map(|v| v.to_string().into_bytes()),
    ]
}

/// Arbitrary JSON, nested a few levels, with the field names the parsers look for.
fn json_values() -> impl Strategy<Value = serde_json::Value> {
    let names = prop_oneof![
        Just("orderId".to_owned()),
        Just("id".to_owned()),
        Just("status".to_owned()),
        Just("updatedAt".to_owned()),
        Just("timeLastUpdated".to_owned()),
        Just("total".to_owned()),
        Just("history".to_owned()),
        Just("numberOfRecords".to_owned()),
        Just("_type".to_owned()),
        Just("data".to_owned()),
        Just("order".to_owned()),
        Just("errorCode".to_owned()),
        Just("errorMessage".to_owned()),
        "[a-zA-Z_]{1,12}",
    ];
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,30}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("2026-05-01T10:00:00Z")),
        Just(serde_json::Value::from("12.50")),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map(names.clone(), inner, 0..8)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, 1, 12, 0, 0)
        .single()
        .unwrap_or_else(Utc::now)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn no_parser_panics_on_any_body(body in bodies()) {
        let text = String::from_utf8_lossy(&body);
        // Graas: a page, then each order in it.
        if let Ok(page) = serde_json::from_slice::<graas::wire::OrdersPage>(&body) {
            for raw in page.history {
                let _ = graas::wire::map_order("shop-1", raw);
            }
        }
        if let Ok(raw) = serde_json::from_str::<&RawValue>(&text) {
            let _ = graas::wire::map_order("shop-1", raw);
            let _ = grafterr::wire::map_order("cafe-1", raw, Some("web"), "EUR", Some(now()));
            let _ = grafterr::wire::order_id(raw);
            let _ = grafterr::wire::has_items(raw);
            let _ = lagerkoll::wire::map_order("store-1", 1, raw, "SEK", now());
            let _ = lagerkoll::wire::order_id(raw);
            let _ = lagerkoll::wire::is_empty_data(Some(raw));
        }
        // Get It Done: events, command outcomes, polled snapshots.
        let _ = getitdone::wire::Envelope::parse(&body);
        let _ = getitdone::wire::command_outcome(&body);
        let _ = getitdone::wire::map_snapshot("acct", "order-1", &body, now());
        // Grafterr and Lagerkoll deliveries.
        if let Ok(envelope) = grafterr::wire::Envelope::parse(&body) {
            let _ = envelope.order();
            let _ = envelope.event_source();
            let _ = grafterr::wire::event_time(&envelope);
        }
        let _ = grafterr::wire::fetched_order(&body);
        if let Ok(delivery) = lagerkoll::wire::Delivery::parse(&body) {
            let _ = lagerkoll::wire::delivery_time(&delivery);
        }
        let _ = lagerkoll::wire::ErrorBody::parse(&body);
        // KassaForte: documents, answers and 409 messages.
        let _ = kassaforte::wire::Infos::parse(&body);
        let _ = kassaforte::wire::OpenHours::parse(&body);
        let _ = kassaforte::wire::created_order_id(&body);
        let _ = kassaforte::wire::order_status(&body);
        let _ = kassaforte::wire::Discount::parse(&body);
        let _ = kassaforte::wire::Coupon::parse(&body);
        let conflict = kassaforte::wire::conflict_body(&body);
        let parsed = Conflict::parse(conflict.code, &conflict.message);
        let _ = parsed.describe();
        let _ = parsed.stale_document();
        // Money and time as text.
        let _ = money::decimal_to_minor(&text);
        let _ = ordersync::providers::json::rfc3339(&text);
    }

    #[test]
    fn money_round_trips_through_its_decimal_text(minor in any::<i64>()) {
        let text = money::minor_to_decimal(minor);
        prop_assert_eq!(money::decimal_to_minor(&text), Ok(minor));
    }

    #[test]
    fn a_409_message_keeps_its_code_and_text(code in 100u16..1000, message in "[ -~]{0,80}") {
        let body = serde_json::json!({ "errorCode": code, "errorMessage": message }).to_string();
        let parsed = kassaforte::wire::conflict_body(body.as_bytes());
        prop_assert_eq!(parsed.code, Some(code));
        prop_assert_eq!(parsed.message, message);
    }

    #[test]
    fn a_graas_order_round_trips(
        id in "[0-9]{6,18}",
        channel in "[a-z_]{3,12}",
        status in "[A-Z_]{3,20}",
        updated in 1_500_000_000i64..2_000_000_000,
        amount in 0i64..10_000_000,
    ) {
        let body = serde_json::json!({
            "site": { "nickNameID": channel, "name": "Shop" },
            "orderID": id,
            "orderStatus": status,
            "orderAmount": { "amount": amount, "currencyCode": "SGD" },
            "timeLastUpdated": updated,
            "timeOrderCreated": updated - 60,
        })
        .to_string();
        let raw: &RawValue = serde_json::from_str(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let order = graas::wire::map_order("shop-1", raw).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&order.key.external_id, &id);
        prop_assert_eq!(&order.key.channel, &channel);
        prop_assert_eq!(order.status.as_deref(), Some(status.as_str()));
        prop_assert_eq!(order.total.map(|m| m.minor), Some(amount));
        prop_assert_eq!(order.upstream_updated_at.timestamp(), updated);
        prop_assert_eq!(order.upstream_created_at.map(|t| t.timestamp()), Some(updated - 60));
        prop_assert_eq!(order.payload, body);
    }

    #[test]
    fn a_grafterr_order_round_trips(
        id in "[A-Z0-9-]{4,20}",
        source in prop_oneof![Just("pos"), Just("web"), Just("selfkiosk")],
        status in "[a-z_]{3,16}",
        cents in 0i64..100_000_000,
        updated in 1_500_000_000i64..2_000_000_000,
    ) {
        let updated_at = Utc.timestamp_opt(updated, 0).single().map(|t| t.to_rfc3339()).unwrap_or_default();
        let total = money::minor_to_decimal(cents);
        let body = format!(
            r#"{{"orderId":"{id}","source":"{source}","status":"{status}","total":{total},"currency":"EUR","updatedAt":"{updated_at}"}}"#
        );
        let raw: &RawValue = serde_json::from_str(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let order = grafterr::wire::map_order("cafe-1", raw, None, "SEK", None).map_err(TestCaseError::fail)?;
        prop_assert_eq!(&order.key.external_id, &id);
        prop_assert_eq!(order.key.channel.as_str(), source);
        prop_assert_eq!(order.status.as_deref(), Some(status.as_str()));
        prop_assert_eq!(order.total.as_ref().map(|m| (m.minor, m.currency.as_str())), Some((cents, "EUR")));
        prop_assert_eq!(order.upstream_updated_at.timestamp(), updated);
        prop_assert_eq!(order.payload, body);
    }

    #[test]
    fn a_lagerkoll_order_round_trips(
        id in 1u64..u64::MAX / 2,
        store in 1i64..1_000_000,
        status in "[A-Za-z]{3,16}",
        ore in 0i64..100_000_000,
        updated in 1_500_000_000i64..2_000_000_000,
    ) {
        let updated_at = Utc.timestamp_opt(updated, 0).single().map(|t| t.to_rfc3339()).unwrap_or_default();
        let total = money::minor_to_decimal(ore);
        let body = format!(
            r#"{{"orderId":{id},"status":"{status}","total":{total},"updatedAt":"{updated_at}"}}"#
        );
        let raw: &RawValue = serde_json::from_str(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let order = lagerkoll::wire::map_order("store-1", store, raw, "SEK", now()).map_err(TestCaseError::fail)?;
        prop_assert_eq!(order.key.external_id, id.to_string());
        prop_assert_eq!(order.key.channel, store.to_string());
        prop_assert_eq!(order.status.as_deref(), Some(status.as_str()));
        prop_assert_eq!(order.total.map(|m| m.minor), Some(ore));
        prop_assert_eq!(order.upstream_updated_at.timestamp(), updated);
        prop_assert_eq!(order.payload, body);
    }

    #[test]
    fn a_path_token_changed_in_any_byte_is_refused(
        token in "[A-Za-z0-9_-]{16,64}",
        flip in any::<prop::sample::Index>(),
        bit in 0u8..7,
    ) {
        let expected = Secret::new(token.clone());
        prop_assert!(ordersync::providers::check_path_token(Some(&expected), Some(&token)).is_ok());
        let mut changed = token.clone().into_bytes();
        changed[flip.index(token.len())] ^= 1 << bit;
        let changed = String::from_utf8_lossy(&changed).into_owned();
        prop_assert!(ordersync::providers::check_path_token(Some(&expected), Some(&changed)).is_err());
        prop_assert!(ordersync::providers::check_path_token(Some(&expected), None).is_err());
    }

    #[test]
    fn a_getitdone_signature_checks_and_any_changed_byte_is_refused(
        body in proptest::collection::vec(any::<u8>(), 1..300),
        secret in "[a-zA-Z0-9]{8,40}",
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let ts = now().timestamp();
        let header = signature::sign(&secret, ts, &body);
        let secrets = [Secret::new(secret.clone())];
        let check = |body: &[u8]| signature::verify(&secrets, Some(&ts.to_string()), Some(&header), body, ts, Duration::from_secs(300));
        prop_assert_eq!(check(&body), Ok(()));
        let mut changed = body.clone();
        changed[flip.index(body.len())] ^= 1 << bit;
        prop_assert_eq!(check(&changed), Err(signature::SignatureError::Mismatch));
        // And the signature is bound to its timestamp.
        let later = signature::verify(&secrets, Some(&(ts + 1).to_string()), Some(&header), &body, ts, Duration::from_secs(300));
        prop_assert_eq!(later, Err(signature::SignatureError::Mismatch));
    }

    #[test]
    fn a_grafterr_signature_checks_and_any_changed_byte_is_refused(
        body in proptest::collection::vec(any::<u8>(), 1..300),
        secret in "[a-zA-Z0-9]{8,40}",
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let header = grafterr_webhook::sign(&secret, &body);
        let key = Secret::new(secret.clone());
        prop_assert!(grafterr_webhook::verify_signature(&key, Some(&header), &body).is_ok());
        let mut changed = body.clone();
        changed[flip.index(body.len())] ^= 1 << bit;
        prop_assert!(grafterr_webhook::verify_signature(&key, Some(&header), &changed).is_err());
    }

    #[test]
    fn webhook_checks_never_panic_on_any_header(
        body in proptest::collection::vec(any::<u8>(), 0..100),
        timestamp in ".{0,20}",
        header in ".{0,80}",
    ) {
        let secrets = [Secret::new("secret")];
        let _ = signature::verify(&secrets, Some(&timestamp), Some(&header), &body, now().timestamp(), Duration::from_secs(300));
        let _ = grafterr_webhook::verify_signature(&secrets[0], Some(&header), &body);
    }
}
