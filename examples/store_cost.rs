//! The order store's work for N orders (default 16,384), for counting instructions: `accept`
//! with 64 callers at a time (random `Idempotency-Key`s, so group commit batches as under the
//! API's load), then the relay's `claim` and `published` for every 4,096. Instruction counts
//! are repeatable where timings on a shared machine are not:
//!
//! ```sh
//! cargo build --release --example store_cost
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out target/release/examples/store_cost 16384
//! callgrind_annotate --inclusive=yes /tmp/cg.out | grep -E 'PROGRAM TOTALS|sqlite3_step'
//! ```
use std::sync::Arc;
use std::time::Duration;

use burrow::message::{new_id, Order, OrderItem};
use burrow::orders::outbox::OutboxMessage;
use burrow::orders::store::{NewOrder, OrderStore};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = match std::env::args().nth(1) {
        Some(a) => a
            .parse()
            .map_err(|e| anyhow::anyhow!("the number of orders, '{a}': {e}"))?,
        None => 16_384,
    };
    let dir = tempfile::tempdir()?;
    let settings = burrow::settings::StoreSettings {
        dir: dir.path().to_path_buf(),
        url: None,
        retention_secs: 3600,
        synchronous: Default::default(),
    };
    let store = Arc::new(OrderStore::open(&settings).await?);
    let mut done = 0;
    while done < n {
        let chunk = 4096.min(n - done);
        let mut tasks = tokio::task::JoinSet::new();
        for caller in 0..64 {
            let store = store.clone();
            tasks.spawn(async move {
                for _ in (caller..chunk).step_by(64) {
                    let order = Order {
                        order_id: new_id("ord"),
                        customer_id: "cus_42".into(),
                        email: "a@example.com".into(),
                        items: vec![OrderItem {
                            sku: "SKU-1".into(),
                            quantity: 2,
                            unit_price_cents: 1999,
                        }],
                        currency: "EUR".into(),
                        placed_at: chrono::Utc::now(),
                    };
                    let messages = burrow::producer::order_messages(&order, false)
                        .into_iter()
                        .map(|m| OutboxMessage::from_outgoing(&order.order_id, m))
                        .collect();
                    store
                        .accept(NewOrder {
                            key: format!("{:032x}", rand::random::<u128>()),
                            request_hash: format!("{:064x}", rand::random::<u128>()),
                            order_id: order.order_id.clone(),
                            messages,
                        })
                        .await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(caller) = tasks.join_next().await {
            caller??;
        }
        let rows = store.claim("me", 0, 4096, Duration::from_secs(30)).await?;
        let ids = rows.iter().map(|r| r.id).collect();
        store.published(ids).await?;
        done += chunk;
    }
    let stats = store.stats().await?;
    anyhow::ensure!(stats.depth == 0, "{} rows left unpublished", stats.depth);
    println!("{n} orders accepted, claimed and marked published");
    Ok(())
}
