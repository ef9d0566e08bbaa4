//! One tracing setup for every binary: human-readable by default, JSON on request.

use tracing_subscriber::{fmt, EnvFilter};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber, writing to stderr. `RUST_LOG` overrides the default `info`.
pub fn init(format: LogFormat) {
    // lapin logs every channel the broker closes at ERROR, including the expected 404 of a
    // passive declare (topology apply); the caller gets the same error as a `Result` and reports
    // it with context, so lapin's channel log is off by default. Likewise its IO loop's
    // connection errors: every caller reports a failed or lost connection itself, in one line
    // (a refused login would otherwise print twice).
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,lapin=warn,lapin::channel=off,lapin::io_loop=off,amq_protocol=warn")
    });
    // Colours only on a terminal: a log redirected to a file or collected by Docker stays plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
