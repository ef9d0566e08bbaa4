//! Typed, layered configuration: built-in defaults, then an optional `burrow.toml`, then
//! `BURROW__SECTION__KEY` environment variables (plus `AMQP_URL`, `AMQP_FAILOVER_URLS` and
//! `RABBITMQ_MANAGEMENT_URL`).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;

/// A URL whose password is never shown by `Debug` or `Display`.
///
/// Use [`SecretUrl::expose`] only where the URL is handed to a client library.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the client library only: never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// The user name in the URL, if any.
    pub fn username(&self) -> Option<String> {
        url::Url::parse(&self.0)
            .ok()
            .map(|u| u.username().to_owned())
            .filter(|u| !u.is_empty())
    }

    /// The password in the URL, if any (for HTTP basic auth against the management API).
    pub fn password(&self) -> Option<String> {
        url::Url::parse(&self.0)
            .ok()
            .and_then(|u| u.password().map(percent_decode))
    }

    /// The same URL with another vhost path, e.g. for tests in their own vhost.
    pub fn with_vhost(&self, vhost: &str) -> Self {
        match url::Url::parse(&self.0) {
            Ok(mut u) => {
                u.set_path(&format!("/{}", encode_vhost(vhost)));
                Self(u.to_string())
            }
            Err(_) => self.clone(),
        }
    }

    /// The vhost named by the URL's path (`/%2f` and an empty path mean `/`).
    pub fn vhost(&self) -> String {
        url::Url::parse(&self.0)
            .ok()
            .map(|u| {
                let path = u.path().trim_start_matches('/');
                if path.is_empty() {
                    "/".to_owned()
                } else {
                    percent_decode(path)
                }
            })
            .unwrap_or_else(|| "/".to_owned())
    }
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Percent-encodes a vhost name for use as a URL path segment (`/` becomes `%2f`).
pub fn encode_vhost(vhost: &str) -> String {
    url::form_urlencoded::byte_serialize(vhost.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// Replaces the password of any URL with `***`; leaves strings that are not URLs alone.
pub fn redact_url(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut rest = raw;
    // Every `scheme://user:password@host` in the text, whether or not it parses as a URL (a
    // malformed port must not print the password), and every `password=…` of a PostgreSQL
    // conninfo string.
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        let authority_end = after
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(after.len());
        let authority = &after[..authority_end];
        match authority.rfind('@') {
            Some(user_end) if authority[..user_end].contains(':') => {
                let colon = authority[..user_end].find(':').unwrap_or(user_end);
                out.push_str(&authority[..colon]);
                out.push_str(":***");
                out.push_str(&authority[user_end..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[authority_end..];
    }
    out.push_str(rest);
    redact_conninfo_password(&out)
}

/// Replaces the value of every `password=` in a PostgreSQL conninfo string (`host=db
/// password=secret`, quoted or not) with `***`.
fn redact_conninfo_password(text: &str) -> String {
    const KEY: &str = "password=";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(KEY) {
        let (before, after) = rest.split_at(i + KEY.len());
        out.push_str(before);
        out.push_str("***");
        let end = if let Some(quoted) = after.strip_prefix('\'') {
            quoted.find('\'').map_or(after.len(), |e| e + 2)
        } else {
            after.find(char::is_whitespace).unwrap_or(after.len())
        };
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({:?})", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Every setting of every burrow program.
#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    /// The broker connection.
    pub amqp: AmqpSettings,
    /// The management HTTP API (status, verify, dlq).
    pub management: ManagementSettings,
    /// The worker runtime.
    pub worker: WorkerSettings,
    /// The simulated carrier used by the fulfillment service.
    pub carrier: CarrierSettings,
    /// Where services keep their state.
    pub store: StoreSettings,
    /// Outgoing mail of the notifications service.
    pub mail: MailSettings,
    /// The producer.
    pub producer: ProducerSettings,
    /// The order service (`producer serve`).
    pub orders: OrdersSettings,
    /// `burrow run`: how the supervisor scales each service's workers.
    pub supervisor: SupervisorSettings,
    /// Path of the topology file.
    pub topology: PathBuf,
    /// The web console (`burrow console`).
    #[serde(default)]
    pub console: ConsoleSettings,
}

/// The web console (`burrow console`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ConsoleSettings {
    /// The password of HTTP basic auth (any user name); required to bind a non-loopback
    /// address (`BURROW__CONSOLE__PASSWORD`).
    #[serde(default)]
    pub password: Option<crate::topology::Password>,
    /// Workers' HTTP addresses (`host:port`) to show besides those found through the broker's
    /// connection list (`BURROW__CONSOLE__WORKERS`, comma-separated).
    #[serde(default)]
    pub workers: Vec<String>,
}

/// The broker connection.
#[derive(Debug, Clone, Deserialize)]
pub struct AmqpSettings {
    /// `amqp://user:pass@host:port/vhost` (or `amqps://`).
    pub url: SecretUrl,
    /// Heartbeat interval in seconds.
    pub heartbeat_secs: u16,
    /// Largest frame, in bytes. lapin gives each connection a receive and a send ring buffer of
    /// 32 frames each, zeroed on allocation and touched page by page as the ring turns: with
    /// RabbitMQ's default of 128 KiB that is 8 MiB per connection, which a soak sees as RSS
    /// creeping up for many minutes. 32 KiB (2 MiB per connection) still carries any order in
    /// one frame; larger messages are split into more frames.
    pub frame_max: u32,
    /// How long a connection attempt may take.
    pub connect_timeout_ms: u64,
    /// Other nodes of the same cluster, tried in order when `url` cannot be reached
    /// (`AMQP_FAILOVER_URLS`, comma-separated). Each connection attempt starts again at `url`,
    /// so clients return to the primary node once it is back.
    #[serde(default)]
    pub failover_urls: Vec<SecretUrl>,
    /// A PEM file of CA certificates to trust for `amqps://`, besides the system's
    /// (`BURROW__AMQP__TLS_CA_FILE`): for a broker whose certificate a private CA signed.
    #[serde(default)]
    pub tls_ca_file: Option<PathBuf>,
}

impl AmqpSettings {
    /// `url`, then every failover URL, in the order connections try them.
    pub fn urls(&self) -> impl Iterator<Item = &SecretUrl> {
        std::iter::once(&self.url).chain(self.failover_urls.iter())
    }
}

/// The management HTTP API.
#[derive(Debug, Clone, Deserialize)]
pub struct ManagementSettings {
    /// e.g. `http://127.0.0.1:15672`; credentials default to those of the AMQP URL.
    pub url: SecretUrl,
}

/// Deliveries prefetched per handler when `worker.prefetch` is unset: enough to keep every
/// handler busy between acks, few enough that competing workers share a backlog and a stopping
/// worker drains its window within the grace period.
pub const PREFETCH_PER_HANDLER: usize = 4;

/// The worker runtime.
#[derive(Debug, Clone, Deserialize)]
pub struct WorkerSettings {
    /// Handlers running at once in one process.
    pub concurrency: usize,
    /// Deliveries the broker may send ahead of acks; unset: [`PREFETCH_PER_HANDLER`] per
    /// handler (see [`WorkerSettings::prefetch`]).
    pub prefetch: Option<u16>,
    /// How long a worker may keep handling (in flight and already prefetched) after a shutdown
    /// signal; what is unstarted when it ends is requeued.
    pub grace_ms: u64,
    /// Circuit breaker: outcomes remembered.
    pub breaker_window: usize,
    /// Circuit breaker: failures on one dependency among the last `breaker_window` outcomes
    /// that stop consuming until a probe answers; 0 disables it.
    pub breaker_threshold: usize,
    /// Circuit breaker: delay before the first probe, doubling after each failed one.
    pub breaker_probe_ms: u64,
    /// Circuit breaker: longest delay between probes.
    pub breaker_probe_max_ms: u64,
}

impl WorkerSettings {
    /// The prefetch window: `prefetch` when set, else [`PREFETCH_PER_HANDLER`] per handler (256
    /// at the default 64 handlers; 16 for a worker started with `--concurrency 4`).
    pub fn prefetch(&self) -> u16 {
        self.prefetch.unwrap_or_else(|| {
            u16::try_from(self.concurrency.saturating_mul(PREFETCH_PER_HANDLER)).unwrap_or(u16::MAX)
        })
    }

    /// The grace period as a duration.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.grace_ms)
    }

    /// The circuit breaker's settings.
    pub fn breaker(&self) -> crate::worker::BreakerSettings {
        crate::worker::BreakerSettings {
            window: self.breaker_window,
            threshold: self.breaker_threshold,
            probe_base: Duration::from_millis(self.breaker_probe_ms),
            probe_cap: Duration::from_millis(self.breaker_probe_max_ms),
        }
    }
}

/// The simulated carrier.
#[derive(Debug, Clone, Deserialize)]
pub struct CarrierSettings {
    /// Latency of one booking, in milliseconds.
    pub latency_ms: u64,
    /// Share of bookings that fail transiently, 0.0..=1.0.
    pub failure_rate: f64,
    /// SKUs whose bookings always fail (for demos and tests of the retry ladder's end).
    pub always_fail_skus: Vec<String>,
    /// SKUs whose bookings make the handler panic.
    pub panic_skus: Vec<String>,
    /// SKUs whose bookings abort the whole worker process (fault tests only: a message that
    /// kills every worker that takes it, until `x-delivery-limit` dead-letters it). Only in
    /// builds with the `test-hooks` feature; release builds have no such hook.
    #[cfg(feature = "test-hooks")]
    #[serde(default)]
    pub abort_skus: Vec<String>,
}

/// Where services keep their state.
#[derive(Debug, Clone, Deserialize)]
pub struct StoreSettings {
    /// Directory of the SQLite files shared by a service's processes on this host; by default
    /// [`default_state_dir`], whatever the working directory.
    pub dir: PathBuf,
    /// Optional PostgreSQL URL for the fulfillment store, when workers span hosts.
    pub url: Option<SecretUrl>,
    /// How long de-duplication records (fulfilled orders, sent mails, counted and applied
    /// event ids) are kept, in seconds; older ones are deleted in small batches. A message
    /// redelivered after this window is handled again. 7 days, as NServiceBus keeps them.
    pub retention_secs: u64,
    /// How SQLite stores commit: `normal` (default; survives a process crash, the last commits
    /// can be lost on power failure) or `full` (a record that allowed an ack survives a power
    /// failure; measured to cost about a third of the pipeline's throughput).
    #[serde(default)]
    pub synchronous: crate::sqlite::Synchronous,
}

impl StoreSettings {
    /// The retention window as a duration.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_secs)
    }
}

/// Outgoing mail.
#[derive(Debug, Clone, Deserialize)]
pub struct MailSettings {
    /// Directory of the file outbox (`outbox.mbox`, every mail appended); `<store.dir>/outbox`
    /// unless set.
    pub outbox: PathBuf,
    /// Optional SMTP URL (`smtp://user:pass@host:587`); the outbox is used when unset.
    pub smtp_url: Option<SecretUrl>,
    /// The sender address.
    pub from: String,
    /// How long a notifications worker's claim on an event lasts without renewal; the live
    /// owner renews it while it sends, and a claim of a process that is gone is taken over
    /// at once.
    pub claim_lease_ms: u64,
    /// The outbox file is rotated (`outbox.mbox` → `outbox.mbox.1` …) once it reaches this size.
    pub outbox_max_bytes: u64,
    /// Rotated outbox files kept (`outbox.mbox.1` … `outbox.mbox.N`); older ones are deleted.
    pub outbox_keep: u32,
}

/// The producer.
#[derive(Debug, Clone, Deserialize)]
pub struct ProducerSettings {
    /// Unconfirmed publishes in flight at once.
    pub confirm_window: usize,
    /// How long to wait for a confirm before counting the publish as failed.
    pub confirm_timeout_ms: u64,
}

/// The order service (`producer serve`): its outbox relay.
#[derive(Debug, Clone, Deserialize)]
pub struct OrdersSettings {
    /// Outbox rows the relay takes per round. Several confirm windows (`producer.confirm_window`)
    /// per round keep the channel full: a round waits for its last confirms, with nothing in
    /// flight, once per batch.
    pub relay_batch: usize,
    /// How long the relay's lease (SQLite: one relay per file) or claim on rows (PostgreSQL)
    /// lasts without renewal: the time another process waits before it takes over from a
    /// relay that died.
    pub relay_lease_ms: u64,
    /// How often an idle relay looks for rows stored by another process (its own process
    /// wakes it at once).
    pub relay_poll_ms: u64,
}

/// `burrow run`: when the supervisor scales a service and how it restarts workers.
#[derive(Debug, Clone, Deserialize)]
pub struct SupervisorSettings {
    /// How often the queues are read and a decision is taken.
    pub interval_ms: u64,
    /// Scale up when the ready messages of a service's queue would take longer than this to
    /// drain at the current ack rate.
    pub target_drain_secs: f64,
    /// Scale down (one worker) only after the queue stayed empty, with nothing unacked, this
    /// long: the hysteresis between "too slow" and "idle".
    pub idle_secs: f64,
    /// No second scale-up sooner than this after a scale-up (new workers need time to show in
    /// the ack rate).
    pub scale_up_cooldown_secs: f64,
    /// No scale-down sooner than this after any change of the count.
    pub scale_down_cooldown_secs: f64,
    /// The first restart delay of a worker that exited on its own; doubles per exit in a row.
    pub restart_backoff_ms: u64,
    /// The longest restart delay.
    pub restart_backoff_max_ms: u64,
    /// A worker that exits this many times within `crash_window_secs` is reported as a crash
    /// loop (and restarted at the longest delay only).
    pub crash_loop_exits: u32,
    /// The window of `crash_loop_exits`.
    pub crash_window_secs: u64,
}

impl SupervisorSettings {
    /// The decision interval as a duration.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
}

/// The management API of the broker at `amqp` when none is configured: the same host, port
/// 15672 (`https` for `amqps`), so `burrow status` and `topology verify` never report on another
/// broker than the one `AMQP_URL` names.
fn management_url_for(amqp: &SecretUrl) -> String {
    let parsed = url::Url::parse(amqp.expose()).ok();
    let host = parsed
        .as_ref()
        .and_then(|u| u.host_str().map(str::to_owned))
        .unwrap_or_else(|| "127.0.0.1".to_owned());
    let scheme = match parsed.as_ref().map(url::Url::scheme) {
        Some("amqps") => "https",
        _ => "http",
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host
    };
    format!("{scheme}://{host}:15672")
}

/// Where the stores live unless `store.dir` says otherwise: one place per user that does not
/// depend on the working directory, so every process of a host shares its stores (the
/// fulfilled-once guarantee rests on that): `$XDG_STATE_HOME/burrow`, else
/// `$HOME/.local/state/burrow`, else `/var/lib/burrow`.
pub fn default_state_dir() -> PathBuf {
    let non_empty = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(state) = non_empty("XDG_STATE_HOME") {
        return PathBuf::from(state).join("burrow");
    }
    if let Some(home) = non_empty("HOME") {
        return PathBuf::from(home).join(".local/state/burrow");
    }
    PathBuf::from("/var/lib/burrow")
}

const DEFAULTS: &str = r#"
topology = "topology/shop.toml"

[amqp]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
heartbeat_secs = 30
frame_max = 32768
connect_timeout_ms = 5000

[management]
url = ""

[worker]
concurrency = 64
grace_ms = 10000
breaker_window = 20
breaker_threshold = 11
breaker_probe_ms = 1000
breaker_probe_max_ms = 30000

[carrier]
latency_ms = 3
failure_rate = 0.0
always_fail_skus = []
panic_skus = []

[store]
retention_secs = 604800

[mail]
outbox = ""
from = "shop@burrow.example"
claim_lease_ms = 30000
outbox_max_bytes = 67108864
outbox_keep = 5

[producer]
confirm_window = 512
confirm_timeout_ms = 30000

[orders]
relay_batch = 4096
relay_lease_ms = 10000
relay_poll_ms = 200
[supervisor]
interval_ms = 2000
target_drain_secs = 10.0
idle_secs = 30.0
scale_up_cooldown_secs = 10.0
scale_down_cooldown_secs = 30.0
restart_backoff_ms = 500
restart_backoff_max_ms = 30000
crash_loop_exits = 5
crash_window_secs = 60
"#;

impl Settings {
    /// Loads defaults, then `burrow.toml` (or the file named by `BURROW_CONFIG`), then the
    /// environment.
    ///
    /// # Errors
    /// A malformed file or a value of the wrong type, named by its key.
    pub fn load() -> anyhow::Result<Self> {
        let file = std::env::var("BURROW_CONFIG").unwrap_or_else(|_| "burrow.toml".to_owned());
        let environment = config::Environment::with_prefix("BURROW")
            .prefix_separator("__")
            .separator("__")
            .list_separator(",")
            .with_list_parse_key("carrier.always_fail_skus")
            .with_list_parse_key("carrier.panic_skus")
            .with_list_parse_key("console.workers")
            .try_parsing(true);
        #[cfg(feature = "test-hooks")]
        let environment = environment.with_list_parse_key("carrier.abort_skus");
        let mut builder = config::Config::builder()
            .set_default(
                "store.dir",
                default_state_dir().to_string_lossy().into_owned(),
            )?
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::with_name(&file).required(false))
            .add_source(environment);
        if let Ok(url) = std::env::var("AMQP_URL") {
            builder = builder.set_override("amqp.url", url)?;
        }
        if let Ok(urls) = std::env::var("AMQP_FAILOVER_URLS") {
            let urls: Vec<String> = urls
                .split(',')
                .map(str::trim)
                .filter(|u| !u.is_empty())
                .map(str::to_owned)
                .collect();
            builder = builder.set_override("amqp.failover_urls", urls)?;
        }
        if let Ok(url) = std::env::var("RABBITMQ_MANAGEMENT_URL") {
            builder = builder.set_override("management.url", url)?;
        }
        let mut settings: Settings = builder
            .build()
            .map_err(SettingsError::from)
            .context("reading settings")?
            .try_deserialize()
            .map_err(SettingsError::from)
            .context("reading settings")?;
        if settings.management.url.expose().is_empty() {
            settings.management.url = SecretUrl::new(management_url_for(&settings.amqp.url));
        }
        if settings.mail.outbox.as_os_str().is_empty() {
            settings.mail.outbox = settings.store.dir.join("outbox");
        }
        Ok(settings)
    }
}

/// A setting that cannot be read or has the wrong type; the message has every URL's password
/// redacted (a `config` error quotes the value it could not use).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(String);

impl From<config::ConfigError> for SettingsError {
    fn from(e: config::ConfigError) -> Self {
        Self(redact_url(&e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_never_shows_in_debug_or_display() {
        let url = SecretUrl::new("amqp://ann:s3cret-pw@127.0.0.1:5672/%2f");
        assert!(!format!("{url:?}").contains("s3cret-pw"));
        assert!(!format!("{url}").contains("s3cret-pw"));
        assert!(format!("{url}").contains("ann:***@"));
        assert_eq!(url.expose(), "amqp://ann:s3cret-pw@127.0.0.1:5672/%2f");
    }

    #[test]
    fn the_management_url_follows_the_amqp_host() {
        let m = |amqp: &str| management_url_for(&SecretUrl::new(amqp));
        assert_eq!(
            m("amqp://u:p@rabbit.example.com:5672/%2f"),
            "http://rabbit.example.com:15672"
        );
        assert_eq!(
            m("amqps://u:p@10.0.0.7:5671/shop"),
            "https://10.0.0.7:15672"
        );
        assert_eq!(
            m("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "http://127.0.0.1:15672"
        );
        assert_eq!(m("not a url"), "http://127.0.0.1:15672");
    }

    #[test]
    fn a_password_never_shows_however_the_text_looks() {
        for (text, secret) in [
            (
                "cannot reach amqp://guest:s3cret@127.0.0.1:56x72/%2f: invalid port",
                "s3cret",
            ),
            ("amqp://u:p@ss:w0rd@host/%2f", "ss:w0rd"),
            (
                "postgres://app:hunter2@db:5432/shop and amqps://a:b2@c",
                "hunter2",
            ),
            ("host=db user=app password=hunter2 dbname=shop", "hunter2"),
            ("host=db password='two words' dbname=shop", "two words"),
        ] {
            let redacted = redact_url(text);
            assert!(!redacted.contains(secret), "{text} -> {redacted}");
            assert!(redacted.contains("***"), "{redacted}");
        }
        assert_eq!(
            redact_url("amqp://guest:s3cret@127.0.0.1:56x72/%2f"),
            "amqp://guest:***@127.0.0.1:56x72/%2f"
        );
        assert_eq!(redact_url("amqp://guest@host/%2f"), "amqp://guest@host/%2f");
        assert_eq!(redact_url("no url here"), "no url here");
    }

    #[test]
    fn vhost_is_read_and_replaced() {
        let url = SecretUrl::new("amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(url.vhost(), "/");
        let other = url.with_vhost("test-1");
        assert_eq!(other.vhost(), "test-1");
        assert_eq!(other.with_vhost("/").vhost(), "/");
        assert_eq!(url.password().as_deref(), Some("guest"));
    }

    #[test]
    fn defaults_load() {
        let s = Settings::load().expect("defaults parse");
        assert_eq!(s.worker.prefetch(), 256);
        let four = WorkerSettings {
            concurrency: 4,
            ..s.worker.clone()
        };
        assert_eq!(four.prefetch(), 16, "the window follows the handlers");
        let set = WorkerSettings {
            prefetch: Some(10),
            ..four
        };
        assert_eq!(set.prefetch(), 10, "unless it is set");
        assert!(!format!("{s:?}").contains(":guest@"));
    }
}
