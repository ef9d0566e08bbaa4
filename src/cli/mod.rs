//! The command layer: the one place that prints. Each command calls library functions that
//! return data (a [`crate::dlq::DlqListing`], a [`crate::status::StatusReport`], an
//! [`crate::topology::ApplyReport`], a [`crate::producer::PublishTally`]…), turns it into
//! text, a table (comfy-table), JSON or a progress bar (indicatif), and picks the exit code;
//! [`exit_code`] does the same for an error, and [`parse`] for a command line (the codes:
//! [`Exit`]).
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
//! - [`console`]: `burrow console`.
//! - [`run`]: `burrow run`.

use std::process::ExitCode;

pub use exit::{parse, Exit};

pub mod args;
pub mod console;
pub mod demo;
pub mod dlq;
mod exit;
pub mod producer;
pub mod run;
pub mod status;
pub mod topology;

/// Prints `error` as one line on stderr (password redacted) and picks its exit code with
/// [`Exit::of`].
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    // `{:#}` puts the whole chain on one line: "loading topology x: cannot read …".
    eprintln!(
        "error: {}",
        crate::settings::redact_url(&format!("{error:#}"))
    );
    Exit::of(error).into()
}
