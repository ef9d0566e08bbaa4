//! Realistic generated orders: a customer base, a catalogue with popular and long-tail SKUs,
//! several lines per order, and, on request, a share of deliberately invalid ones.

use chrono::Utc;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::message::{new_id, Order, OrderItem};

/// A catalogue SKU with its price in cents.
pub const CATALOGUE: [(&str, i64); 12] = [
    ("SKU-1", 1999),
    ("SKU-2", 4999),
    ("SKU-3", 999),
    ("SKU-4", 12999),
    ("SKU-5", 2499),
    ("SKU-6", 349),
    ("SKU-7", 7999),
    ("SKU-8", 1549),
    ("SKU-9", 89999),
    ("SKU-10", 599),
    ("SKU-11", 3299),
    ("SKU-12", 24999),
];

const FIRST_NAMES: [&str; 8] = ["ann", "bob", "chen", "dara", "eli", "fatima", "gus", "hana"];

/// Generates orders.
pub struct OrderGenerator {
    rng: StdRng,
    customers: u32,
    invalid_ratio: f64,
}

/// A generated body: valid orders are typed, invalid ones are raw JSON.
pub enum Generated {
    /// A valid order.
    Valid(Order),
    /// A deliberately invalid body and which rule it breaks.
    Invalid(String, serde_json::Value),
}

impl OrderGenerator {
    /// `invalid_ratio` of the orders break a rule.
    pub fn new(invalid_ratio: f64) -> Self {
        Self {
            rng: StdRng::from_os_rng(),
            customers: 500,
            invalid_ratio: invalid_ratio.clamp(0.0, 1.0),
        }
    }

    /// The next order.
    pub fn next_order(&mut self) -> Generated {
        let order = self.valid();
        if self.invalid_ratio > 0.0 && self.rng.random_bool(self.invalid_ratio) {
            let mut v = serde_json::to_value(&order).expect("order serializes");
            let broken = match self.rng.random_range(0..5) {
                0 => {
                    v["items"][0]["quantity"] = 0.into();
                    "quantity 0"
                }
                1 => {
                    v["email"] = "no-at-sign".into();
                    "email without @"
                }
                2 => {
                    v["items"] = serde_json::json!([]);
                    "no items"
                }
                3 => {
                    v["currency"] = "euro".into();
                    "bad currency"
                }
                _ => {
                    v.as_object_mut().expect("object").remove("customer_id");
                    "missing customer_id"
                }
            };
            return Generated::Invalid(broken.to_owned(), v);
        }
        Generated::Valid(order)
    }

    fn valid(&mut self) -> Order {
        let customer = self.rng.random_range(1..=self.customers);
        let name = FIRST_NAMES[customer as usize % FIRST_NAMES.len()];
        let lines = match self.rng.random_range(0..10) {
            0..=5 => 1,
            6..=8 => 2,
            _ => 3,
        };
        let items = (0..lines)
            .map(|_| {
                // Popular products first: a skewed pick over the catalogue.
                let r: f64 = self.rng.random();
                let idx = ((r * r) * CATALOGUE.len() as f64) as usize;
                let (sku, price) = CATALOGUE[idx.min(CATALOGUE.len() - 1)];
                OrderItem {
                    sku: sku.into(),
                    quantity: if self.rng.random_bool(0.8) {
                        1
                    } else {
                        self.rng.random_range(2..=5)
                    },
                    unit_price_cents: price,
                }
            })
            .collect();
        Order {
            order_id: new_id("ord"),
            customer_id: format!("cus_{customer}"),
            email: format!("{name}.{customer}@example.com"),
            items,
            currency: "EUR".into(),
            placed_at: Utc::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_orders_are_valid_and_invalid_ones_are_not() {
        let mut g = OrderGenerator::new(0.3);
        let (mut valid, mut invalid) = (0, 0);
        for _ in 0..500 {
            match g.next_order() {
                Generated::Valid(o) => {
                    o.validate().unwrap();
                    valid += 1;
                }
                Generated::Invalid(what, v) => {
                    assert!(
                        Order::decode(v.to_string().as_bytes()).is_err(),
                        "{what} decoded"
                    );
                    invalid += 1;
                }
            }
        }
        assert!(
            valid > 250 && invalid > 80,
            "valid {valid}, invalid {invalid}"
        );
    }
}
