//! One line of the benchmark table per mode (or per step of a mode), and the table itself.

use std::fmt::Write as _;

use crate::latency::Percentiles;

/// What one mode measured.
#[derive(Debug, Clone, Default)]
pub struct Row {
    /// Mode name, e.g. `baseline` or `io-curve x2`.
    pub mode: String,
    /// Messages (or orders) published.
    pub messages: u64,
    /// Confirmed publishes per second.
    pub publish_rate: Option<f64>,
    /// Messages acked (orders stored) per second, from the first publish to the last.
    pub e2e_rate: Option<f64>,
    /// Publish→ack latency.
    pub latency: Option<Percentiles>,
    /// Peak resident memory of the worker process, in MiB.
    pub peak_rss_mib: Option<f64>,
    /// Anything else worth a word: ratios, what was measured where.
    pub note: String,
}

impl Row {
    /// An empty row for `mode`.
    pub fn new(mode: impl Into<String>, messages: u64) -> Self {
        Self {
            mode: mode.into(),
            messages,
            ..Self::default()
        }
    }
}

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.decimals$}"))
}

/// One row as the table prints it, for progress output.
pub fn line(row: &Row) -> String {
    table(std::slice::from_ref(row))
        .lines()
        .nth(1)
        .unwrap_or_default()
        .to_owned()
}

/// The table, one row per line, aligned.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}  note",
        "mode", "msgs", "publish/s", "e2e/s", "p50 ms", "p99 ms", "max ms", "RSS MiB"
    );
    for r in rows {
        let _ = writeln!(
            out,
            "{:<20} {:>7} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8}  {}",
            r.mode,
            r.messages,
            num(r.publish_rate, 0),
            num(r.e2e_rate, 0),
            num(r.latency.map(|l| l.p50), 1),
            num(r.latency.map(|l| l.p99), 1),
            num(r.latency.map(|l| l.max), 1),
            num(r.peak_rss_mib, 1),
            r.note
        );
    }
    out
}

/// Checks that need no broker, run by `cargo test` (see [`crate::CHECKS`]).
pub mod checks {
    use super::*;

    pub fn missing_values_show_as_dashes() {
        let mut r = Row::new("baseline", 10);
        r.e2e_rate = Some(1234.4);
        let t = table(&[r]);
        assert!(t.contains("baseline"));
        assert!(t.contains("1234"));
        assert!(t.lines().nth(1).unwrap().contains(" - "));
    }
}
