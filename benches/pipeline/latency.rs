//! Publish→ack latency: the send time travels in the `x-bench-sent-ns` header (nanoseconds on a
//! monotonic clock shared by the publisher and consumer of one process) or, between processes,
//! as wall-clock microseconds since the UNIX epoch; samples are kept and sorted for percentiles
//! (a run has tens of thousands of them, so no histogram is needed).

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use lapin::types::{AMQPValue, FieldTable};

/// Header carrying the send time: monotonic nanoseconds in-process.
pub const HEADER_SENT_NS: &str = "x-bench-sent-ns";

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Nanoseconds on the process's monotonic clock.
pub fn now_ns() -> u64 {
    u64::try_from(origin().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Wall-clock microseconds since the UNIX epoch, comparable between processes of one host.
pub fn wall_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A header table holding `value` under `name`, added to `headers`.
pub fn stamp(headers: Option<FieldTable>, name: &str, value: u64) -> FieldTable {
    let mut h = headers.unwrap_or_default();
    h.insert(
        name.into(),
        AMQPValue::LongLongInt(i64::try_from(value).unwrap_or(i64::MAX)),
    );
    h
}

/// Reads an integer stamp back.
pub fn read_stamp(headers: Option<&FieldTable>, name: &str) -> Option<u64> {
    match headers?.inner().get(name)? {
        AMQPValue::LongLongInt(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

/// Latency samples in microseconds.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    samples: Vec<u64>,
    sorted: bool,
}

/// p50, p99 and max, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Samples.
    pub count: usize,
}

impl Latencies {
    /// Room for `n` samples.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            samples: Vec::with_capacity(n),
            sorted: false,
        }
    }

    /// Adds one sample.
    pub fn record_us(&mut self, us: u64) {
        self.samples.push(us);
        self.sorted = false;
    }

    /// p50/p99/max (nearest-rank), or `None` without samples.
    pub fn percentiles(&mut self) -> Option<Percentiles> {
        if self.samples.is_empty() {
            return None;
        }
        if !self.sorted {
            self.samples.sort_unstable();
            self.sorted = true;
        }
        let rank = |q: f64| {
            let n = self.samples.len();
            let i = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            self.samples[i] as f64 / 1000.0
        };
        Some(Percentiles {
            p50: rank(0.50),
            p99: rank(0.99),
            max: self.samples[self.samples.len() - 1] as f64 / 1000.0,
            count: self.samples.len(),
        })
    }
}

/// Checks that need no broker, run by `cargo test` (see [`crate::CHECKS`]).
pub mod checks {
    use super::*;

    pub fn percentiles_are_nearest_rank() {
        let mut l = Latencies::default();
        (1..=100).rev().for_each(|i| l.record_us(i * 1000));
        let p = l.percentiles().unwrap();
        assert_eq!((p.p50, p.p99, p.max, p.count), (50.0, 99.0, 100.0, 100));
        assert!(Latencies::default().percentiles().is_none());
    }

    pub fn stamps_round_trip() {
        let h = stamp(None, HEADER_SENT_NS, 42);
        assert_eq!(read_stamp(Some(&h), HEADER_SENT_NS), Some(42));
        assert_eq!(read_stamp(Some(&h), "other"), None);
    }
}
