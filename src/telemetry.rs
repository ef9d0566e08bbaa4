//! One tracing setup for every binary: human-readable by default, JSON on request; and, when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, every span
//! exported over OTLP/HTTP as well (see [`crate::trace`] for the spans of messages).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Set once the OTLP exporter is installed: the message spans that exist only for the exporter
/// (publish, handler) are not even created otherwise.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// How long the last export may take at shutdown.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether spans are exported over OTLP (one relaxed load: cheap enough for every message).
pub fn exporting() -> bool {
    EXPORTING.load(Ordering::Relaxed)
}

/// The installed telemetry; [`Telemetry::shutdown`] (or dropping it) sends the spans not yet
/// exported. Hold it until the end of `main`.
#[must_use = "dropping it flushes and stops the span export"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered and stops the exporter, waiting up to 5 s for the
    /// collector. Blocks the calling thread: call it at the very end, after the graceful shutdown.
    pub fn shutdown(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(provider) = self.provider.take() {
            EXPORTING.store(false, Ordering::Relaxed);
            if let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT) {
                tracing::warn!(error = %e, "could not export the last spans");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Installs the global subscriber, writing to stderr. `RUST_LOG` overrides the default `info`.
///
/// `service` names the process in exported traces (`burrow-worker-fulfillment`,
/// `burrow-producer`) unless `OTEL_SERVICE_NAME` (or `service.name` in
/// `OTEL_RESOURCE_ATTRIBUTES`) says otherwise. Spans are exported only when an OTLP endpoint is
/// configured (see [`otlp_configured`]); otherwise no exporter, thread or OpenTelemetry layer
/// exists.
pub fn init(format: LogFormat, service: &str) -> Telemetry {
    // lapin logs every channel the broker closes at ERROR, including the expected 404 of a
    // passive declare (topology apply); the caller gets the same error as a `Result` and reports
    // it with context, so lapin's channel log is off by default. Likewise its IO loop's
    // connection errors: every caller reports a failed or lost connection itself, in one line
    // (a refused login would otherwise print twice).
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new("info,lapin=warn,lapin::channel=off,lapin::io_loop=off,amq_protocol=warn")
    });
    let (provider, problem) = if otlp_configured(|k| std::env::var(k).ok()) {
        match tracer_provider(service) {
            Ok((p, problem)) => (Some(p), problem),
            Err(e) => (None, Some(format!("traces are not exported: {e}"))),
        }
    } else {
        (None, None)
    };
    // Colours only on a terminal: a log redirected to a file or collected by Docker stays plain.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let installed = match &provider {
        // Without export: the log alone, under one global filter, as ever.
        None => {
            let builder = fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_ansi(ansi);
            match format {
                LogFormat::Text => builder.try_init().is_ok(),
                LogFormat::Json => builder.json().try_init().is_ok(),
            }
        }
        // The exporter has a filter of its own: `RUST_LOG=warn` quiets the log, not the traces.
        // It takes burrow's spans (and the events inside them) only: not lapin's, nor those of
        // the HTTP client that carries the export itself.
        Some(p) => {
            let otel = tracing_opentelemetry::layer()
                .with_tracer(p.tracer("burrow"))
                .with_tracked_inactivity(false)
                // Message spans are all made in `trace.rs`: its file and line say nothing.
                .with_location(false)
                .with_target(false)
                .with_filter(Targets::new().with_target("burrow", Level::INFO));
            let lines = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
            let registry = tracing_subscriber::registry().with(otel);
            match format {
                LogFormat::Text => registry.with(lines.with_filter(filter)).try_init().is_ok(),
                LogFormat::Json => registry
                    .with(lines.json().with_filter(filter))
                    .try_init()
                    .is_ok(),
            }
        }
    };
    if installed && provider.is_some() {
        EXPORTING.store(true, Ordering::Relaxed);
    }
    if let Some(problem) = problem {
        tracing::warn!("{problem}");
    }
    Telemetry { provider }
}

/// Whether the standard variables ask for an OTLP export of traces: an endpoint
/// (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`), not switched off by
/// `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`. `var` reads a variable.
pub fn otlp_configured(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| var(k).is_some_and(|v| !v.trim().is_empty());
    let is = |k: &str, value: &str| var(k).is_some_and(|v| v.trim().eq_ignore_ascii_case(value));
    (set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") || set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        && !is("OTEL_SDK_DISABLED", "true")
        && !is("OTEL_TRACES_EXPORTER", "none")
}

/// The OTLP/HTTP exporter behind a batch processor, and a warning to log once logging is up.
/// The exporter reads the endpoint, headers, timeout and compression from the standard
/// variables itself; the protocol is read here (the exporter only takes it from code).
fn tracer_provider(service: &str) -> anyhow::Result<(SdkTracerProvider, Option<String>)> {
    check_endpoint(|k| std::env::var(k).ok())?;
    let (protocol, problem) = protocol(|k| std::env::var(k).ok());
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .build()?;
    let mut resource = Resource::builder();
    let named = std::env::var_os("OTEL_SERVICE_NAME").is_some()
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|a| {
            a.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    if !named {
        resource = resource.with_service_name(service.to_owned());
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    Ok((provider, problem))
}

/// Refuses an endpoint the exporter would not use as given: one that is not an `http(s)` URL
/// (the exporter would fall back to `localhost:4318` without a word), or one with credentials
/// in it (export errors print the URL; credentials go in `OTEL_EXPORTER_OTLP_HEADERS`). The
/// message names the variable, never its value.
fn check_endpoint(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
    let name = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .into_iter()
    .find(|k| var(k).is_some_and(|v| !v.trim().is_empty()));
    let Some(name) = name else {
        return Ok(());
    };
    let value = var(name).unwrap_or_default();
    let url =
        url::Url::parse(value.trim()).map_err(|e| anyhow::anyhow!("{name} is not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") {
        anyhow::bail!("{name} must be an http:// or https:// URL (OTLP/HTTP)");
    }
    if !url.username().is_empty() || url.password().is_some() {
        anyhow::bail!(
            "{name} carries credentials; give them in OTEL_EXPORTER_OTLP_HEADERS \
             (e.g. Authorization=Basic …) instead"
        );
    }
    Ok(())
}

/// The OTLP protocol of `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` or `OTEL_EXPORTER_OTLP_PROTOCOL`:
/// `http/protobuf` (the default) or `http/json`. gRPC is not built in: such a setting falls
/// back to `http/protobuf`, with a warning.
fn protocol(var: impl Fn(&str) -> Option<String>) -> (Protocol, Option<String>) {
    let value = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
        .unwrap_or_default();
    match value.trim() {
        "" | "http/protobuf" => (Protocol::HttpBinary, None),
        "http/json" => (Protocol::HttpJson, None),
        other => (
            Protocol::HttpBinary,
            Some(format!(
                "OTLP protocol '{other}' is not supported (only http/protobuf and http/json); \
                 exporting traces with http/protobuf (the collector's port is usually 4318)"
            )),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn export_needs_an_endpoint_and_honours_the_off_switches() {
        assert!(!otlp_configured(vars(&[])));
        assert!(!otlp_configured(vars(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://localhost:4318");
        assert!(otlp_configured(vars(&[endpoint])));
        assert!(otlp_configured(vars(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://localhost:4318/v1/traces"
        )])));
        assert!(!otlp_configured(vars(&[
            endpoint,
            ("OTEL_SDK_DISABLED", "true")
        ])));
        assert!(!otlp_configured(vars(&[
            endpoint,
            ("OTEL_TRACES_EXPORTER", "none")
        ])));
    }

    #[test]
    fn an_endpoint_must_be_an_http_url_without_credentials() {
        let check = |k: &'static str, v: &'static str| check_endpoint(vars(&[(k, v)]));
        let endpoint = "OTEL_EXPORTER_OTLP_ENDPOINT";
        assert!(check(endpoint, "http://localhost:4318").is_ok());
        assert!(check(endpoint, "https://otlp.example.com").is_ok());
        for bad in ["localhost:4318 x", "grpc://collector:4317", "not a url"] {
            let e = check(endpoint, bad).expect_err(bad).to_string();
            assert!(e.contains(endpoint), "{e}");
        }
        let e = check(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://ann:s3cret@collector:4318/v1/traces",
        )
        .expect_err("credentials")
        .to_string();
        assert!(
            e.contains("OTEL_EXPORTER_OTLP_HEADERS") && !e.contains("s3cret"),
            "{e}"
        );
    }

    #[test]
    fn the_protocol_is_http_protobuf_unless_json_is_asked_for() {
        assert_eq!(protocol(vars(&[])), (Protocol::HttpBinary, None));
        assert_eq!(
            protocol(vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")])),
            (Protocol::HttpJson, None)
        );
        assert_eq!(
            protocol(vars(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
            ]))
            .0,
            Protocol::HttpBinary
        );
        let (p, warning) = protocol(vars(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]));
        assert_eq!(p, Protocol::HttpBinary);
        assert!(warning.expect("a warning").contains("grpc"));
    }
}
