//! What an operator does with a topology file against the configured broker: apply it (and its
//! users), verify it, export it. Each loads the file, talks to the broker and returns a report;
//! `burrow topology` ([`crate::cli::topology`]) prints it.

use std::path::Path;

use anyhow::Context;

use super::{declare, export, verify, ApplyReport, Drift, Topology};
use crate::management::Management;
use crate::settings::Settings;

/// Users created by [`apply_users`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsersApplied {
    /// The vhost their permissions are on.
    pub vhost: String,
    /// Their names.
    pub created: Vec<String>,
}

/// What [`verify_file`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    /// The vhost compared.
    pub vhost: String,
    /// Every difference between the file and the broker; empty when they match.
    pub drift: Vec<Drift>,
}

/// Loads the topology in `file`, saying which file on an error.
///
/// # Errors
/// The file cannot be read or is not a valid topology.
pub fn load(file: &Path) -> anyhow::Result<Topology> {
    Topology::load(file).with_context(|| format!("loading topology {}", file.display()))
}

/// Declares the topology in `file` on the broker of `settings`; what existed is left as it is
/// and reported as drift.
///
/// # Errors
/// An invalid file, an unreachable broker ([`crate::broker::BrokerError`]) or a failed
/// declaration.
pub async fn apply_file(settings: &Settings, file: &Path) -> anyhow::Result<ApplyReport> {
    let topology = load(file)?;
    let conn = crate::broker::connect(&settings.amqp, "topology").await?;
    let report = declare::apply(&conn, &topology)
        .await
        .with_context(|| format!("applying {}", file.display()));
    crate::broker::close(&conn, "done").await;
    report
}

/// Creates the users of `file` and their permissions on the configured vhost through the
/// management API.
///
/// # Errors
/// An invalid file, or the management API refused (creating users needs an administrator).
pub async fn apply_users(settings: &Settings, file: &Path) -> anyhow::Result<UsersApplied> {
    let topology = load(file)?;
    let management = Management::new(&settings.management, &settings.amqp)?;
    let vhost = settings.amqp.url.vhost();
    let created = super::users::apply(&management, &vhost, &topology.users).await?;
    Ok(UsersApplied { vhost, created })
}

/// Compares the broker (through the management API) with the topology in `file`.
///
/// # Errors
/// An invalid file, or a management API that cannot be read.
pub async fn verify_file(settings: &Settings, file: &Path) -> anyhow::Result<Verification> {
    let topology = load(file)?;
    let management = Management::new(&settings.management, &settings.amqp)?;
    management.ensure_serves(&settings.amqp.url).await?;
    let vhost = settings.amqp.url.vhost();
    let drift = verify::verify(&management, &vhost, &topology).await?;
    Ok(Verification { vhost, drift })
}

/// Writes the definitions document of the topology in `file` to `out`.
///
/// # Errors
/// An invalid topology file, or `out` cannot be written.
pub fn export_file(file: &Path, out: &Path) -> anyhow::Result<()> {
    let topology = load(file)?;
    let text = export::to_pretty_json(&export::definitions(&topology));
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))
}
