//! The command layer: the one place that prints. Each command calls library functions that
//! return data (a [`crate::dlq::DlqListing`], a [`crate::status::StatusReport`], an
//! [`crate::topology::ApplyReport`], a [`crate::producer::PublishTally`]…), turns it into
//! text, a table (comfy-table), JSON or a progress bar (indicatif), and picks the exit code;
//! [`exit_code`] does the same for an error.
//!
//! It is a library module, not code in `bin/`, so the binaries stay a flag parser and a call
//! each (`bin/burrow.rs` and `bin/producer.rs` share [`producer`] output and [`exit_code`]),
//! and so the renderers can be unit-tested. A web console or a test calls the library
//! functions underneath, never these: nothing below `cli` prints or depends on indicatif.
//!
//! - [`dlq`]: `burrow dlq list|show|replay|purge`.
//! - [`status`]: `burrow status`.
//! - [`topology`]: `burrow topology apply|verify|export`.
//! - [`producer`]: `producer order|orders|activity|inventory`.
//! - [`demo`]: `burrow demo`.
//! - [`run`]: `burrow run`.

use std::process::ExitCode;

use crate::broker::BrokerError;
use crate::management::ManagementError;
use crate::producer::PublishError;

pub mod demo;
pub mod dlq;
pub mod producer;
pub mod run;
pub mod status;
pub mod topology;

/// Prints `error` as one line on stderr and picks the exit code: 2 when the broker or the
/// management API cannot be reached or refuses the login (nothing to do but fix the
/// environment) or the input was invalid ([`PublishError::Invalid`]), 1 otherwise.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    let unreachable = error.chain().any(|cause| {
        cause.downcast_ref::<BrokerError>().is_some()
            || matches!(
                cause.downcast_ref::<PublishError>(),
                Some(PublishError::Invalid(_))
            )
            || matches!(
                cause.downcast_ref::<ManagementError>(),
                Some(ManagementError::Unreachable { .. } | ManagementError::Unauthorized { .. })
            )
    });
    // `{:#}` puts the whole chain on one line: "loading topology x: cannot read …".
    eprintln!(
        "error: {}",
        crate::settings::redact_url(&format!("{error:#}"))
    );
    if unreachable {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}
