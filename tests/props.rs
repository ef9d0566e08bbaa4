//! Property tests of message decoding and header parsing: arbitrary input never panics, and
//! valid messages survive a round trip through their JSON form.

use burrow::message::{
    header_str, header_u32, ActivityEvent, EventKind, InvalidMessage, Order, OrderItem,
};
use chrono::{TimeZone, Utc};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use proptest::prelude::*;

fn item() -> impl Strategy<Value = OrderItem> {
    ("SKU-[A-Z0-9]{1,8}", 1u32..=1000, 0i64..10_000_000).prop_map(|(sku, quantity, price)| {
        OrderItem {
            sku,
            quantity,
            unit_price_cents: price,
        }
    })
}

fn valid_order() -> impl Strategy<Value = Order> {
    (
        "ord_[0-9A-Z]{1,26}",
        "cus_[a-z0-9]{1,10}",
        "[a-z]{1,10}@[a-z]{1,10}\\.[a-z]{2,3}",
        prop::collection::vec(item(), 1..5),
        "[A-Z]{3}",
        0i64..4_000_000_000,
    )
        .prop_map(
            |(order_id, customer_id, email, items, currency, secs)| Order {
                order_id,
                customer_id,
                email,
                items,
                currency,
                placed_at: Utc.timestamp_opt(secs, 0).single().expect("valid time"),
            },
        )
}

fn amqp_value() -> impl Strategy<Value = AMQPValue> {
    let leaf = prop_oneof![
        any::<bool>().prop_map(AMQPValue::Boolean),
        any::<i8>().prop_map(AMQPValue::ShortShortInt),
        any::<u8>().prop_map(AMQPValue::ShortShortUInt),
        any::<i16>().prop_map(AMQPValue::ShortInt),
        any::<u16>().prop_map(AMQPValue::ShortUInt),
        any::<i32>().prop_map(AMQPValue::LongInt),
        any::<u32>().prop_map(AMQPValue::LongUInt),
        any::<i64>().prop_map(AMQPValue::LongLongInt),
        any::<f32>().prop_map(AMQPValue::Float),
        any::<f64>().prop_map(AMQPValue::Double),
        any::<u64>().prop_map(AMQPValue::Timestamp),
        prop::collection::vec(any::<u8>(), 0..32)
            .prop_map(|b| AMQPValue::LongString(LongString::from(b))),
        "[ -~]{0,12}".prop_map(|s| AMQPValue::ShortString(ShortString::from(s))),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(|b| AMQPValue::ByteArray(b.into())),
        Just(AMQPValue::Void),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| AMQPValue::FieldArray(FieldArray::from(v))),
            prop::collection::vec(("[a-z-]{1,8}", inner), 0..4).prop_map(|kv| {
                let mut t = FieldTable::default();
                for (k, v) in kv {
                    t.insert(k.into(), v);
                }
                AMQPValue::FieldTable(t)
            }),
        ]
    })
}

proptest! {
    #[test]
    fn decoding_arbitrary_bytes_never_panics(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Order::decode(&body);
        let _ = ActivityEvent::decode(&body);
    }

    #[test]
    fn decoding_arbitrary_json_never_panics(text in "\\{(\"[a-z_]{1,12}\":(\"[ -~]{0,8}\"|-?[0-9]{1,20}|null|\\[\\]|true),?){0,8}\\}") {
        let _ = Order::decode(text.as_bytes());
        let _ = ActivityEvent::decode(text.as_bytes());
    }

    #[test]
    fn valid_orders_round_trip(order in valid_order()) {
        let body = serde_json::to_vec(&order).expect("serialize");
        prop_assert_eq!(Order::decode(&body), Ok(order));
    }

    #[test]
    fn an_order_total_is_exact_or_an_error_naming_the_overflowing_price(
        lines in prop::collection::vec((1u32..=1000, 0i64..=i64::MAX), 1..5),
    ) {
        let mut order = Order {
            order_id: "ord_1".into(),
            customer_id: "cus_1".into(),
            email: "a@b.c".into(),
            items: Vec::new(),
            currency: "EUR".into(),
            placed_at: Utc.timestamp_opt(0, 0).single().expect("valid time"),
        };
        order.items = lines
            .iter()
            .enumerate()
            .map(|(i, &(quantity, unit_price_cents))| OrderItem {
                sku: format!("SKU-{i}"),
                quantity,
                unit_price_cents,
            })
            .collect();
        let exact: i128 = lines.iter().map(|&(q, p)| i128::from(q) * i128::from(p)).sum();
        let body = serde_json::to_vec(&order).expect("serialize");
        match (i64::try_from(exact), Order::decode(&body)) {
            (Ok(total), Ok(decoded)) => prop_assert_eq!(decoded.total_cents(), Ok(total)),
            (Err(_), Err(InvalidMessage::Rule { field, rule })) => {
                prop_assert!(
                    field.starts_with("items[") && field.ends_with("].unit_price_cents"),
                    "field {field}"
                );
                prop_assert!(rule.contains("overflows"), "rule {rule}");
                prop_assert!(order.total_cents().is_err());
            }
            (exact, decoded) => prop_assert!(false, "exact total {exact:?}, decoded {decoded:?}"),
        }
    }

    #[test]
    fn events_round_trip(user in "cus_[a-z0-9]{1,10}", product in "SKU-[0-9]{1,4}", stock in 0u32..10_000) {
        let mut event = ActivityEvent::new(EventKind::ProductViewed, user);
        event.product_id = Some(product);
        event.data = serde_json::json!({"stock": stock});
        let body = serde_json::to_vec(&event).expect("serialize");
        let back = ActivityEvent::decode(&body).expect("decodes");
        prop_assert_eq!(back, event);
    }

    #[test]
    fn header_parsing_never_panics(value in amqp_value(), name in "[a-z-]{1,8}") {
        let mut t = FieldTable::default();
        t.insert(name.clone().into(), value.clone());
        let _ = header_u32(Some(&t), &name);
        let _ = header_str(Some(&t), &name);
        // Integers in range read back exactly.
        if let AMQPValue::LongLongInt(n) = value {
            prop_assert_eq!(header_u32(Some(&t), &name), u32::try_from(n).ok());
        }
    }
}
