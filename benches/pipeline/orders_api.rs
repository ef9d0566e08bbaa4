//! The order service under real HTTP load: `producer serve --no-events` as users run it,
//! driven by `wrk` (a Lua script gives every request an `Idempotency-Key` of its own), side by
//! side with `producer orders --no-events` on the same vhost. Measures the accepted-and-published
//! rate (from the first request until the outbox is empty), the p99 of `POST /orders` at half
//! the CLI's confirmed rate, and the relay lag (the oldest unpublished row's age) meanwhile.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::report::Row;
use crate::vhost::BenchVhost;

/// What the mode measured, for the targets.
#[derive(Debug, Clone, Default)]
pub struct OrdersApiResult {
    /// The table rows: the CLI's reference rows, the API at full load, the API at half rate.
    pub rows: Vec<Row>,
    /// `producer orders --no-events` confirmed orders per second.
    pub cli_rate: Option<f64>,
    /// Orders accepted and published per second at full load.
    pub api_rate: Option<f64>,
    /// p99 of `POST /orders` at half the CLI rate, in ms.
    pub half_p99_ms: Option<f64>,
    /// The largest relay lag seen at half rate, in seconds.
    pub half_lag_secs: Option<f64>,
    /// The rate the half-rate run reached, as a share of half the CLI's rate.
    pub half_share: Option<f64>,
    /// How the machine's cores were used during the half-rate run.
    pub half_cores: Option<crate::memory::Cores>,
}

/// The Lua script: a unique key per request (`<run>-<thread>-<n>`) and, when given a rate (per
/// thread, requests per second), a pace: each request takes the thread's next send slot, one
/// every `1 / rate` seconds on the monotonic clock (LuaJIT's FFI), and its connection waits for
/// that slot. The thread holds the rate as long as it has connections free; when all are waiting
/// for answers it falls behind, and the slots do not pile up into a burst after.
const SCRIPT: &str = r#"
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } burrow_timespec;
int clock_gettime(int clk, burrow_timespec *tp);
]]
local ts = ffi.new("burrow_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, ts) -- CLOCK_MONOTONIC
  return tonumber(ts.tv_sec) * 1000 + tonumber(ts.tv_nsec) / 1e6
end
local body = '{"customer_id":"cus_bench","email":"ann@example.com","items":[{"sku":"SKU-1","quantity":1,"unit_price_cents":1999}],"currency":"EUR"}'
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end
function init(args)
  run = args[1] or "run"
  local rate = tonumber(args[2]) or 0
  interval = 0
  if rate > 0 then interval = 1000 / rate end
  slot = 0
  n = 0
end
function request()
  n = n + 1
  local headers = {}
  headers["Content-Type"] = "application/json"
  headers["Idempotency-Key"] = run .. "-" .. tostring(tid) .. "-" .. tostring(n)
  return wrk.format("POST", "/orders", headers, body)
end
function delay()
  if interval == 0 then return 0 end
  local now = now_ms()
  if slot < now then slot = now end
  local wait = slot - now
  slot = slot + interval
  return math.floor(wait)
end
"#;

/// wrk's threads.
const THREADS: usize = 2;
/// Seconds of answer time the half-rate phase's connections cover: at the target rate, this
/// many seconds' worth of requests can wait for answers at once (Little's law: a mean answer
/// time longer than this holds the rate back). The p99 target; twice as many connections cost
/// the service and wrk more CPU per request (at 10,000/s: p99 20–46 ms with 600 against 20 ms
/// with 300).
const CONNECTION_SECS: f64 = 0.025;
/// Connections wrk opens at most (each is a socket of the service and of wrk).
const MAX_CONNECTIONS: usize = 2000;

/// The service process, killed when dropped.
struct Service(Child);

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the mode: the CLI reference (`cli_count` orders), then the API for `seconds` at full
/// load and `seconds` at half the CLI rate.
///
/// # Errors
/// `wrk` or the binaries are missing, or the service did not start or drain.
pub async fn run(
    vhost: &BenchVhost,
    cli_count: u64,
    window: usize,
    seconds: u64,
) -> anyhow::Result<OrdersApiResult> {
    let mut result = OrdersApiResult::default();
    let cli_rows = crate::producer_cli::run(vhost, cli_count, window).await?;
    result.cli_rate = cli_rows.get(1).and_then(|r| r.publish_rate);
    result.rows.extend(cli_rows);

    let dir = tempfile::tempdir().context("temp dir")?;
    let script = dir.path().join("orders.lua");
    std::fs::write(&script, SCRIPT)?;
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?
    };
    let settings = &vhost.settings;
    let service = Service(
        Command::new(env!("CARGO_BIN_EXE_producer"))
            .args(["serve", "--no-events", "--http", &addr.to_string()])
            .env("AMQP_URL", settings.amqp.url.expose())
            .env("BURROW__STORE__DIR", dir.path())
            .env("BURROW__PRODUCER__CONFIRM_WINDOW", window.to_string())
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .context("starting producer serve")?,
    );
    let base = format!("http://{addr}");
    let http = reqwest::Client::new();
    wait_until(Duration::from_secs(30), || async {
        http.get(format!("{base}/healthz")).send().await.is_ok()
    })
    .await
    .context("producer serve did not answer /healthz")?;

    // Full load: as many requests as 64 connections carry, onto empty queues as the CLI's.
    vhost.purge_queues().await?;
    let before = metric(&http, &base, "burrow_orders_accepted_total")
        .await
        .unwrap_or(0.0);
    let cpu_before = crate::memory::cpu_seconds(service.0.id()).unwrap_or(0.0);
    let started = Instant::now();
    let full = wrk(&script, &base, 64, seconds, "full", 0.0)?;
    outbox_drained(&http, &base)
        .await
        .context("the outbox did not drain")?;
    let drained = started.elapsed().as_secs_f64();
    let accepted = metric(&http, &base, "burrow_orders_accepted_total")
        .await
        .unwrap_or(0.0)
        - before;
    let rate = accepted / drained.max(1e-9);
    // The service's own CPU (API, store and relay) per order it accepted and published.
    let cpu_us = crate::memory::cpu_seconds(service.0.id())
        .map(|after| 1e6 * (after - cpu_before) / accepted.max(1.0));
    result.api_rate = Some(rate);
    let mut row = Row::new("orders-api", accepted as u64);
    row.publish_rate = Some(full.rate);
    row.e2e_rate = Some(rate);
    row.note = format!(
        "wrk -t{THREADS} -c64 -d{seconds}s: {:.0} req/s answered, {} non-2xx, p99 {:.1} ms; accepted and published {rate:.0}/s (first request to empty outbox); producer serve {:.1} us CPU/order",
        full.rate,
        full.errors,
        full.p99_ms.unwrap_or(f64::NAN),
        cpu_us.unwrap_or(f64::NAN)
    );
    result.rows.push(row);

    // Half the CLI's confirmed rate, paced by the script (see [`SCRIPT`]) over enough
    // connections that waiting answers do not hold the rate back.
    if let Some(cli) = result.cli_rate {
        let target = cli / 2.0;
        let connections =
            ((target * CONNECTION_SECS).ceil() as usize).clamp(2 * THREADS, MAX_CONNECTIONS);
        vhost.purge_queues().await?;
        let sampler = {
            let (http, base) = (http.clone(), base.clone());
            tokio::spawn(async move {
                let mut worst = 0.0f64;
                let deadline = Instant::now() + Duration::from_secs(seconds + 2);
                while Instant::now() < deadline {
                    if let Some(lag) =
                        metric(&http, &base, "burrow_outbox_oldest_unpublished_seconds").await
                    {
                        worst = worst.max(lag);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                worst
            })
        };
        let cpu = crate::memory::CpuShare::start(&[service.0.id()]);
        let half = tokio::task::spawn_blocking({
            let script = script.clone();
            let base = base.clone();
            let rate = target / THREADS as f64;
            move || wrk(&script, &base, connections, seconds, "half", rate)
        })
        .await??;
        let cores = cpu.cores();
        let lag = sampler.await.unwrap_or(f64::NAN);
        result.half_p99_ms = half.p99_ms;
        result.half_lag_secs = Some(lag);
        result.half_share = Some(half.rate / target);
        result.half_cores = cores;
        let mut row = Row::new("orders-api half", (half.rate * seconds as f64) as u64);
        row.publish_rate = Some(half.rate);
        row.note = format!(
            "target {target:.0}/s (half the CLI's): {:.0} req/s ({:.1}%) over {connections} connections (paced, {THREADS} threads), p50 {:.1} ms, p99 {:.1} ms, {} non-2xx; relay lag (oldest unpublished) at most {lag:.2} s; {}",
            half.rate,
            100.0 * half.rate / target,
            half.p50_ms.unwrap_or(f64::NAN),
            half.p99_ms.unwrap_or(f64::NAN),
            half.errors,
            cores.map_or_else(|| "cores not read".to_owned(), |c| c.to_string())
        );
        result.rows.push(row);
    }
    Ok(result)
}

/// Waits up to 2 minutes for the service's outbox to be empty.
async fn outbox_drained(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(120), || async {
        metric(http, base, "burrow_outbox_depth").await == Some(0.0)
    })
    .await
}

/// What one `wrk` run reported.
#[derive(Debug, Clone, Copy, Default)]
struct WrkRun {
    rate: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    errors: u64,
}

/// One `wrk` run of `seconds` over `connections`, each of its threads at `rate` requests per
/// second (0: as fast as the service answers). `run` prefixes the idempotency keys.
fn wrk(
    script: &std::path::Path,
    base: &str,
    connections: usize,
    seconds: u64,
    run: &str,
    rate: f64,
) -> anyhow::Result<WrkRun> {
    let out = Command::new("wrk")
        .arg(format!("-t{}", THREADS.min(connections)))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .arg("-s")
        .arg(script)
        .arg(format!("{base}/orders"))
        .args([
            "--",
            &format!("{run}-{}", ulid::Ulid::new()),
            &format!("{rate:.3}"),
        ])
        .output()
        .context("running wrk (scripts/ensure-tools installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    anyhow::ensure!(out.status.success(), "wrk failed: {text}");
    Ok(parse_wrk(&text))
}

fn parse_wrk(text: &str) -> WrkRun {
    let mut run = WrkRun::default();
    for line in text.lines().map(str::trim) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["Requests/sec:", rate] => run.rate = rate.parse().unwrap_or(0.0),
            ["50%", v] => run.p50_ms = duration_ms(v),
            ["99%", v] => run.p99_ms = duration_ms(v),
            ["Non-2xx", "or", "3xx", "responses:", n] => run.errors = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    run
}

/// `123.45us`, `1.20ms`, `2.00s` in milliseconds.
fn duration_ms(v: &str) -> Option<f64> {
    let (number, factor) = if let Some(n) = v.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = v.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = v.strip_suffix('s') {
        (n, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

async fn metric(http: &reqwest::Client, base: &str, name: &str) -> Option<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

async fn wait_until<F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        anyhow::ensure!(Instant::now() < deadline, "timed out after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Checks run under `cargo test` (see `CHECKS` in main.rs).
pub mod checks {
    use super::parse_wrk;

    /// The rate, percentiles and error count are read from `wrk --latency` output.
    pub fn wrk_output_is_read() {
        let text = "  Latency Distribution\n     50%    1.20ms\n     99%  850.00us\n  1000 requests in 1.00s\n  Non-2xx or 3xx responses: 3\nRequests/sec:   1234.50\n";
        let run = parse_wrk(text);
        assert!((run.rate - 1234.5).abs() < 1e-9);
        assert_eq!(run.p50_ms, Some(1.2));
        assert_eq!(run.p99_ms, Some(0.85));
        assert_eq!(run.errors, 3);
    }
}
