//! `producer`: the order service and the other publishers of the shop.

use std::process::ExitCode;

use burrow::message::{new_id, EventKind, Order, OrderItem};
use burrow::producer::activity::{self, EventSpec};
use burrow::producer::{self, OrderSource, PublishError};
use burrow::settings::Settings;
use burrow::telemetry::LogFormat;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "producer",
    version,
    about = "Publish orders and activity events"
)]
struct Cli {
    /// How log lines (on stderr) are written.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Publish one order, wait for the broker's confirm and print its order_id.
    Order {
        /// The customer id, e.g. cus_42.
        #[arg(long)]
        customer: String,
        /// The customer's email address.
        #[arg(long)]
        email: String,
        /// A line as SKU:QUANTITY:UNIT_PRICE_CENTS; repeat for more lines.
        #[arg(long = "item", required = true, value_parser = producer::parse_item)]
        items: Vec<OrderItem>,
        /// Three-letter currency code.
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// The order id (default: a fresh ord_<ULID>).
        #[arg(long)]
        order_id: Option<String>,
        /// Do not publish the order.placed activity event.
        #[arg(long)]
        no_events: bool,
    },
    /// Publish many orders: generated (--count) or read as JSON lines (--file F, or - for stdin).
    Orders {
        /// How many orders to generate.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        count: Option<u64>,
        /// JSON-lines file of orders, or - for stdin.
        #[arg(long)]
        file: Option<String>,
        /// Orders per second at most.
        #[arg(long)]
        rate: Option<f64>,
        /// Share of generated orders that break a rule (0.0..=1.0).
        #[arg(long, default_value_t = 0.0, value_parser = burrow::cli::args::share)]
        invalid_ratio: f64,
        /// Do not publish order.placed activity events.
        #[arg(long)]
        no_events: bool,
    },
    /// Publish one activity event (--kind, --user …) and print its event_id, or generate a
    /// realistic mix (--count N).
    Activity {
        /// The kind: user.registered, product.viewed, review.posted, order.placed, order.fulfilled.
        #[arg(long, value_parser = EventKind::parse, required_unless_present = "count", conflicts_with = "count")]
        kind: Option<EventKind>,
        /// The user_id, e.g. cus_42.
        #[arg(long, required_unless_present = "count")]
        user: Option<String>,
        /// The product_id (product.viewed, review.posted).
        #[arg(long)]
        product: Option<String>,
        /// The order_id (order.placed, order.fulfilled).
        #[arg(long)]
        order: Option<String>,
        /// data.email (user.registered, order events).
        #[arg(long)]
        email: Option<String>,
        /// data.name (user.registered).
        #[arg(long)]
        name: Option<String>,
        /// The event_id (default: a fresh evt_<ULID>); repeating one publishes a duplicate.
        #[arg(long)]
        event_id: Option<String>,
        /// How many events to generate.
        #[arg(long)]
        count: Option<u64>,
        /// Events per second at most (with --count).
        #[arg(long, requires = "count")]
        rate: Option<f64>,
        /// No order.placed events in the generated mix (with --count): the orders come from
        /// elsewhere, e.g. the order service, and the funnel counts only theirs.
        #[arg(long, requires = "count")]
        no_orders: bool,
    },
    /// Run the order service: POST /orders (with an Idempotency-Key), GET /orders/{order_id},
    /// /healthz, /readyz, /metrics; orders are stored with their messages in one transaction
    /// and relayed to the broker, which may be down meanwhile.
    Serve {
        /// Where the HTTP API listens.
        #[arg(long, default_value = burrow::orders::DEFAULT_HTTP)]
        http: std::net::SocketAddr,
        /// Do not publish order.placed activity events.
        #[arg(long)]
        no_events: bool,
    },
    /// Restock: set one SKU's level, published as inventory.changed (`worker inventory` takes it
    /// as its new level; recommendations never recommend a SKU at 0).
    Inventory {
        /// The SKU, e.g. SKU-1.
        #[arg(long)]
        sku: String,
        /// Units in stock now; 0 means out of stock (never recommended).
        #[arg(long, allow_negative_numbers = true)]
        stock: i64,
        /// Change from the previous stock, if known (default 0 = not known).
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        delta: i64,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match burrow::cli::parse::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let telemetry = burrow::telemetry::init(cli.log_format, "burrow-producer");
    let code = match run(cli.command).await {
        Ok(code) => code,
        Err(e) => burrow::cli::exit_code(&e),
    };
    // After the command (or `serve`'s graceful shutdown): its last spans go out too.
    telemetry.shutdown();
    code
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    let settings = Settings::load()?;
    match command {
        Command::Order {
            customer,
            email,
            items,
            currency,
            order_id,
            no_events,
        } => {
            let order = Order {
                order_id: order_id.unwrap_or_else(|| new_id("ord")),
                customer_id: customer,
                email,
                items,
                currency,
                placed_at: chrono::Utc::now(),
            };
            burrow::cli::producer::order(&settings, order, !no_events).await
        }
        Command::Orders {
            count,
            file,
            rate,
            invalid_ratio,
            no_events,
        } => {
            let source = match (count, file) {
                (_, Some(path)) => OrderSource::File(path),
                (Some(count), None) => OrderSource::Generate {
                    count,
                    invalid_ratio,
                },
                (None, None) => unreachable!("clap requires --count or --file"),
            };
            burrow::cli::producer::orders(&settings, source, rate, !no_events).await
        }
        Command::Activity {
            count: Some(count),
            rate,
            no_orders,
            ..
        } => burrow::cli::producer::activity(&settings, count, rate, !no_orders).await,
        Command::Activity {
            kind,
            user,
            product,
            order,
            email,
            name,
            event_id,
            ..
        } => {
            let spec = EventSpec {
                kind,
                user: user.unwrap_or_default(),
                product,
                order,
                email,
                name,
                event_id,
            };
            let event = spec.event().map_err(PublishError::Invalid)?;
            burrow::cli::producer::event(&settings, &event).await
        }
        Command::Serve { http, no_events } => {
            let options = burrow::orders::ServeOptions {
                http,
                events: !no_events,
                announce: true,
            };
            burrow::cli::producer::serve(settings, options).await
        }
        Command::Inventory { sku, stock, delta } => {
            burrow::cli::producer::event(&settings, &activity::inventory_event(&sku, stock, delta))
                .await
        }
    }
}
