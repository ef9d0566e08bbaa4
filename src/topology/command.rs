//! `burrow topology apply|verify|export`: load the file, call the library, print a report,
//! choose the exit code (0 fine, 1 drift, 2 broker or management API unreachable — see
//! [`crate::cli::exit_code`]).

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;

use super::{declare, export, verify, Topology};
use crate::management::Management;
use crate::settings::Settings;

/// Declares the topology in `file` on the broker of `settings` and prints what happened, one
/// line per drift. Exit code 1 when anything drifted.
///
/// # Errors
/// An invalid file, an unreachable broker ([`crate::broker::BrokerError`]) or a failed
/// declaration.
pub async fn apply(settings: &Settings, file: &Path) -> anyhow::Result<ExitCode> {
    let topology = load(file)?;
    let conn = crate::broker::connect(&settings.amqp, "topology").await?;
    let report = declare::apply(&conn, &topology)
        .await
        .with_context(|| format!("applying {}", file.display()));
    let _ = conn.close(200, "done".into()).await;
    let report = report?;
    println!(
        "topology applied: {} created, {} unchanged, {} drifted{}",
        report.created.len(),
        report.unchanged.len(),
        report.drift.len(),
        if report.refused.is_empty() {
            String::new()
        } else {
            format!(
                ", {} not permitted (left as they are)",
                report.refused.len()
            )
        }
    );
    Ok(print_drift(&report.drift, file))
}

/// Creates the users of `file` and their permissions on the configured vhost through the
/// management API, and prints their names.
///
/// # Errors
/// An invalid file, or the management API refused (creating users needs an administrator).
pub async fn apply_users(settings: &Settings, file: &Path) -> anyhow::Result<()> {
    let topology = load(file)?;
    let management = Management::new(&settings.management, &settings.amqp)?;
    let vhost = settings.amqp.url.vhost();
    let created = super::users::apply(&management, &vhost, &topology.users).await?;
    println!(
        "users applied on vhost '{vhost}': {}",
        if created.is_empty() {
            "none".to_owned()
        } else {
            created.join(", ")
        }
    );
    Ok(())
}

/// Compares the broker (through the management API) with the topology in `file`, printing one
/// line per drift. Exit code 1 when anything drifted.
///
/// # Errors
/// An invalid file, or a management API that cannot be read.
pub async fn verify(settings: &Settings, file: &Path) -> anyhow::Result<ExitCode> {
    let topology = load(file)?;
    let management = Management::new(&settings.management, &settings.amqp)?;
    let vhost = settings.amqp.url.vhost();
    let drift = verify::verify(&management, &vhost, &topology).await?;
    if drift.is_empty() {
        println!(
            "topology verified: vhost '{vhost}' matches {}",
            file.display()
        );
    } else {
        println!(
            "topology verified: vhost '{vhost}' differs from {} in {} place(s)",
            file.display(),
            drift.len()
        );
    }
    Ok(print_drift(&drift, file))
}

/// Writes the definitions document of `file` to `out`.
///
/// # Errors
/// An invalid topology file, or `out` cannot be written.
pub fn export(file: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    let topology = load(file)?;
    let text = export::to_pretty_json(&export::definitions(&topology));
    std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    println!("definitions written to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn load(file: &Path) -> anyhow::Result<Topology> {
    Topology::load(file).with_context(|| format!("loading topology {}", file.display()))
}

fn print_drift(drift: &[super::Drift], file: &Path) -> ExitCode {
    let source = file.display().to_string();
    for d in drift {
        println!("drift: {}", d.describe(&source));
    }
    if drift.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
