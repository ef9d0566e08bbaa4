//! `burrow`: operate the shop's RabbitMQ: topology, status, dead letters.

use std::path::PathBuf;
use std::process::ExitCode;

use burrow::settings::Settings;
use burrow::telemetry::LogFormat;
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "burrow", version, about)]
struct Cli {
    /// How log lines (on stderr) are written.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Declare, verify or export the topology.
    #[command(subcommand)]
    Topology(TopologyCommand),
    /// Run the whole shop locally: workers, orders, events, and a summary.
    Demo {
        /// Orders the simulated customers place through the order service's API.
        #[arg(long, default_value_t = 400)]
        orders: u64,
        /// Orders per second the customers place.
        #[arg(long, default_value_t = 50.0, value_parser = burrow::cli::args::positive)]
        rate: f64,
        /// How long the order service's link to the broker is cut, a third of the way through
        /// the orders (0 for no outage).
        #[arg(long, default_value = "5", value_parser = burrow::cli::args::seconds_or_zero)]
        outage: std::time::Duration,
        /// Activity events to publish.
        #[arg(long, default_value_t = 2000)]
        events: u64,
        /// Share of deliberately invalid orders (refused by the API with 422).
        #[arg(long, default_value_t = 0.03, value_parser = burrow::cli::args::share)]
        invalid_ratio: f64,
        /// Share of carrier bookings that fail transiently (retried with back-off).
        #[arg(long, default_value_t = 0.05, value_parser = burrow::cli::args::share)]
        failure_rate: f64,
    },
    /// Every queue of the topology: depth, consumers, rates, dead letters, drift.
    Status {
        /// The topology file (default: the `topology` setting).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Redraw until Ctrl-C.
        #[arg(long)]
        watch: bool,
        /// Seconds between redraws with --watch.
        #[arg(long, default_value = "2", value_parser = burrow::cli::args::seconds)]
        interval: std::time::Duration,
        /// Print JSON (stable field names) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Serve the web console: queues, workers, live charts, dead letters, topology.
    Console {
        /// Where to listen; a non-loopback address needs BURROW__CONSOLE__PASSWORD.
        #[arg(long, default_value = burrow::console::DEFAULT_ADDR)]
        http: std::net::SocketAddr,
    },
    /// Run the services' workers and scale each between MIN and MAX by its backlog, until
    /// SIGINT/SIGTERM (then every worker drains and stops).
    Run {
        /// A service and its worker count: NAME=MIN..MAX, or NAME=N for a fixed count, e.g.
        /// fulfillment=1..8 (repeat for each service).
        #[arg(long = "service", value_name = "NAME=MIN..MAX", required = true)]
        services: Vec<burrow::supervisor::ServiceSpec>,
        /// Serve /healthz, /metrics (desired and running workers) and /state on this address.
        #[arg(long)]
        http: Option<std::net::SocketAddr>,
    },
    /// Inspect, replay or purge a dead-letter queue.
    Dlq {
        /// The dead-letter queue.
        #[arg(long, default_value = burrow::dlq::DEFAULT_QUEUE, global = true)]
        queue: String,
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Subcommand)]
enum DlqCommand {
    /// Id, source queue, reason, attempts and age of dead letters (nothing is removed).
    List {
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Headers and body of one dead letter (nothing is removed).
    Show {
        /// Its message_id.
        id: String,
    },
    /// Move dead letters back to their source queue (confirmed before the dead copy is removed).
    Replay {
        #[command(flatten)]
        select: SelectionArgs,
        /// At most this many messages per second, so the workers are not flooded.
        #[arg(long)]
        rate: Option<f64>,
    },
    /// Delete dead letters for good (requires --yes).
    Purge {
        #[command(flatten)]
        select: SelectionArgs,
        /// Yes, delete them.
        #[arg(long)]
        yes: bool,
    },
}

/// Which dead letters `dlq replay` and `dlq purge` take.
#[derive(Args)]
struct SelectionArgs {
    /// Only messages whose reason contains this (case-insensitive).
    #[arg(long)]
    filter: Option<String>,
    /// Only the message with this message_id (repeat for several).
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    /// At most this many messages.
    #[arg(long)]
    limit: Option<usize>,
    /// Count what would be replayed or deleted; change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl SelectionArgs {
    fn selection(self, rate: Option<f64>) -> burrow::dlq::Selection {
        burrow::dlq::Selection {
            filter: self.filter,
            ids: (!self.ids.is_empty()).then(|| self.ids.into_iter().collect()),
            limit: self.limit,
            dry_run: self.dry_run,
            rate,
        }
    }
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Declare the topology on the broker; report drift (exit 1), change nothing that exists.
    Apply {
        /// The topology file (default: the `topology` setting, `topology/shop.toml`).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Also create the file's users and their permissions on this vhost (management API).
        #[arg(long)]
        users: bool,
    },
    /// Compare the broker with the topology through the management API (exit 1 on drift).
    Verify {
        /// The topology file.
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Write the RabbitMQ definitions document of the topology.
    Export {
        /// The topology file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Where to write it.
        #[arg(long, default_value = "topology/definitions.json")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = match burrow::cli::parse::<Cli>() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let telemetry = burrow::telemetry::init(cli.log_format, "burrow");
    // `burrow run` supervises for days next to its workers: one thread keeps it small.
    let mut runtime = if matches!(cli.command, Command::Run { .. }) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return burrow::cli::exit_code(&anyhow::Error::new(e)),
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => burrow::cli::exit_code(&e),
    };
    telemetry.shutdown();
    code
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load()?;
    match cli.command {
        Command::Demo {
            orders,
            rate,
            outage,
            events,
            invalid_ratio,
            failure_rate,
        } => {
            let options = burrow::demo::DemoOptions {
                orders,
                rate,
                outage,
                events,
                invalid_ratio,
                failure_rate,
            };
            burrow::cli::demo::run(&settings, options).await
        }
        Command::Topology(command) => {
            use burrow::cli::topology;
            match command {
                TopologyCommand::Apply { file, users } => {
                    topology::apply(&settings, &file.unwrap_or(settings.topology.clone()), users)
                        .await
                }
                TopologyCommand::Verify { file } => {
                    topology::verify(&settings, &file.unwrap_or(settings.topology.clone())).await
                }
                TopologyCommand::Export { file, out } => {
                    topology::export(&file.unwrap_or(settings.topology.clone()), &out)
                }
            }
        }
        Command::Status {
            file,
            watch,
            interval,
            json,
        } => {
            let options = burrow::cli::status::StatusOptions {
                watch,
                interval,
                json,
            };
            let file = file.unwrap_or(settings.topology.clone());
            burrow::cli::status::run(&settings, &file, &options, burrow::shutdown::on_signal())
                .await
        }
        Command::Console { http } => {
            burrow::cli::console::run(settings, http, burrow::shutdown::on_signal()).await
        }
        Command::Run { services, http } => {
            let options = burrow::supervisor::RunOptions {
                services,
                http,
                launcher: burrow::supervisor::workers::Launcher {
                    binary: burrow::children::sibling_binary("worker")?,
                    envs: Vec::new(),
                    log_dir: None,
                },
            };
            burrow::cli::run::run(&settings, options, burrow::shutdown::on_signal()).await
        }
        Command::Dlq { queue, command } => {
            use burrow::cli::dlq;
            match command {
                DlqCommand::List { limit } => dlq::list(&settings, &queue, limit).await,
                DlqCommand::Show { id } => dlq::show(&settings, &queue, &id).await,
                DlqCommand::Replay { select, rate } => {
                    dlq::replay(&settings, &queue, &select.selection(rate)).await
                }
                DlqCommand::Purge { select, yes } => {
                    dlq::purge(&settings, &queue, &select.selection(None), yes).await
                }
            }
        }
    }
}
