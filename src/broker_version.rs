//! The RabbitMQ version of the broker and what burrow relies on that differs between versions
//! (docs/CONTRACT.md, "RabbitMQ versions"), read from the management API's `/api/overview`.
//!
//! lapin 4 does not expose `connection.start`'s server properties, so the version comes from
//! the management API; when that is unreachable the version is logged as unknown (at debug level) and nothing
//! else changes: burrow's declarations and settlements are chosen to be right on every version.

use crate::management::Management;
use crate::settings::Settings;

/// The largest message RabbitMQ 4.0+ accepts by default (`max_message_size`), 16 MiB.
pub const MAX_MESSAGE_BYTES_4_0: usize = 16 * 1024 * 1024;

/// A RabbitMQ version, e.g. `3.10.8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RabbitVersion {
    /// e.g. 3.
    pub major: u32,
    /// e.g. 10.
    pub minor: u32,
    /// e.g. 8.
    pub patch: u32,
}

impl RabbitVersion {
    /// Parses `3.10.8`, `4.0.0-rc.1`, `4.1`.
    pub fn parse(s: &str) -> Option<Self> {
        let core = s.trim().split(['-', '+']).next()?;
        let mut parts = core.split('.').map(str::parse::<u32>);
        Some(Self {
            major: parts.next()?.ok()?,
            minor: parts.next().unwrap_or(Ok(0)).ok()?,
            patch: parts.next().unwrap_or(Ok(0)).ok()?,
        })
    }

    fn at_least(self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }

    /// The delivery limit a quorum queue without one gets: 20 from 4.0, none before.
    pub fn default_delivery_limit(self) -> Option<u32> {
        self.at_least(4, 0).then_some(20)
    }

    /// Whether `basic.nack(requeue=true)` counts toward `x-delivery-limit` (up to 4.2; from
    /// 4.3 only `basic.reject` and lost consumers do).
    pub fn nack_counts_toward_delivery_limit(self) -> bool {
        !self.at_least(4, 3)
    }

    /// The largest message the broker accepts by default: 16 MiB from 4.0, 128 MiB before.
    pub fn max_message_bytes(self) -> usize {
        if self.at_least(4, 0) {
            MAX_MESSAGE_BYTES_4_0
        } else {
            128 * 1024 * 1024
        }
    }

    /// Whether a consumer of a stream may `basic.nack`/`basic.reject` (3.13+).
    pub fn stream_consumers_may_nack(self) -> bool {
        self.at_least(3, 13)
    }
}

impl std::fmt::Display for RabbitVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Reads the broker's version through the management API.
///
/// # Errors
/// The management API is unreachable or answers with something that is not a version.
pub async fn read(settings: &Settings) -> anyhow::Result<RabbitVersion> {
    let m = Management::new(&settings.management, &settings.amqp)?;
    // Never the version of another broker than the one AMQP_URL names.
    m.ensure_serves(&settings.amqp.url).await?;
    let overview = m.overview().await?;
    RabbitVersion::parse(&overview.rabbitmq_version).ok_or_else(|| {
        anyhow::anyhow!(
            "the broker reports version '{}', which is not a version",
            overview.rabbitmq_version
        )
    })
}

/// Logs the broker's version and what differs on it, once at start-up of `program`; never
/// fails (an unreachable management API is logged and ignored).
pub async fn log(settings: &Settings, program: &str) -> Option<RabbitVersion> {
    // At info once per process: the console lists dead letters every few seconds.
    static LOGGED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    match read(settings).await {
        Ok(v) if LOGGED.swap(true, std::sync::atomic::Ordering::Relaxed) => {
            tracing::debug!(program, rabbitmq_version = %v, "broker version");
            Some(v)
        }
        Ok(v) => {
            tracing::info!(
                program,
                rabbitmq_version = %v,
                default_delivery_limit = ?v.default_delivery_limit(),
                nack_counts_toward_delivery_limit = v.nack_counts_toward_delivery_limit(),
                max_message_bytes = v.max_message_bytes(),
                "broker version"
            );
            Some(v)
        }
        Err(e) => {
            tracing::debug!(program, error = %format!("{e:#}"), "broker version unknown");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_and_say_what_differs() {
        let v = |s| RabbitVersion::parse(s).expect(s);
        assert_eq!(v("3.10.8").to_string(), "3.10.8");
        assert_eq!(v("4.0.0-rc.1"), v("4.0.0"));
        assert_eq!(v("4.1").minor, 1);
        assert!(RabbitVersion::parse("banana").is_none());

        assert_eq!(v("3.10.8").default_delivery_limit(), None);
        assert_eq!(v("3.13.7").default_delivery_limit(), None);
        assert_eq!(v("4.0.0").default_delivery_limit(), Some(20));
        assert!(v("4.2.9").nack_counts_toward_delivery_limit());
        assert!(!v("4.3.0").nack_counts_toward_delivery_limit());
        assert_eq!(v("3.13.7").max_message_bytes(), 128 * 1024 * 1024);
        assert_eq!(v("4.0.1").max_message_bytes(), 16 * 1024 * 1024);
        assert!(!v("3.12.0").stream_consumers_may_nack());
        assert!(v("3.13.0").stream_consumers_may_nack());
    }
}
