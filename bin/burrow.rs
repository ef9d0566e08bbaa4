//! `burrow`: operate the shop's RabbitMQ (topology now; status, dlq and demo later).

use std::path::PathBuf;
use std::process::ExitCode;

use burrow::settings::Settings;
use burrow::telemetry::LogFormat;
use clap::{Parser, Subcommand};

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
        /// Orders to publish.
        #[arg(long, default_value_t = 400)]
        orders: u64,
        /// Activity events to publish.
        #[arg(long, default_value_t = 2000)]
        events: u64,
        /// Share of deliberately invalid orders.
        #[arg(long, default_value_t = 0.03)]
        invalid_ratio: f64,
        /// Share of carrier bookings that fail transiently (retried with back-off).
        #[arg(long, default_value_t = 0.05)]
        failure_rate: f64,
    },
    /// Benchmark burrow against raw lapin, mode after mode, and print one table.
    Bench {
        /// Messages (orders) per mode.
        #[arg(long, default_value_t = 20_000)]
        messages: u64,
        /// Publisher confirm window (unconfirmed publishes at most).
        #[arg(long, default_value_t = 512)]
        window: usize,
        /// Consumer prefetch.
        #[arg(long, default_value_t = 256)]
        prefetch: u16,
        /// Handlers at once of the in-process burrow worker.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Modes to run (comma-separated; default all).
        #[arg(long, value_enum, value_delimiter = ',')]
        modes: Vec<burrow::bench::Mode>,
    },
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Declare the topology on the broker; report drift (exit 1), change nothing that exists.
    Apply {
        /// The topology file (default: the `topology` setting, `topology/shop.toml`).
        #[arg(long)]
        file: Option<PathBuf>,
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

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    burrow::telemetry::init(cli.log_format);
    match run(cli).await {
        Ok(code) => code,
        Err(e) => burrow::cli::exit_code(&e),
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load()?;
    match cli.command {
        Command::Demo {
            orders,
            events,
            invalid_ratio,
            failure_rate,
        } => {
            let options = burrow::demo::DemoOptions {
                orders,
                events,
                invalid_ratio,
                failure_rate,
            };
            burrow::demo::run(&settings, options).await
        }
        Command::Bench {
            messages,
            window,
            prefetch,
            concurrency,
            modes,
        } => {
            let options = burrow::bench::BenchOptions {
                messages,
                window,
                prefetch,
                concurrency,
                modes: if modes.is_empty() {
                    burrow::bench::Mode::ALL.to_vec()
                } else {
                    modes
                },
                command: std::env::args().collect::<Vec<_>>().join(" "),
            };
            burrow::bench::run(&settings, options).await
        }
        Command::Topology(command) => {
            use burrow::topology::command as topology;
            match command {
                TopologyCommand::Apply { file } => {
                    topology::apply(&settings, &file.unwrap_or(settings.topology.clone())).await
                }
                TopologyCommand::Verify { file } => {
                    topology::verify(&settings, &file.unwrap_or(settings.topology.clone())).await
                }
                TopologyCommand::Export { file, out } => {
                    topology::export(&file.unwrap_or(settings.topology.clone()), &out)
                }
            }
        }
    }
}
