//! `burrow topology apply|verify|export`: prints what [`crate::topology::actions`] reports and
//! chooses the exit code (0 fine, 1 drift; an error's code comes from [`super::Exit::of`]).

use std::path::Path;
use std::process::ExitCode;

use crate::settings::Settings;
use crate::topology::{actions, ApplyReport, Drift};

/// `burrow topology apply [--users]`: one summary line, one line per drift. Exit code 1 when
/// anything drifted.
///
/// # Errors
/// As [`actions::apply_file`] and [`actions::apply_users`].
pub async fn apply(settings: &Settings, file: &Path, users: bool) -> anyhow::Result<ExitCode> {
    let report = actions::apply_file(settings, file).await?;
    println!("{}", applied_line(&report));
    let code = print_drift(&report.drift, file);
    if users {
        let applied = actions::apply_users(settings, file).await?;
        println!(
            "users applied on vhost '{}': {}",
            applied.vhost,
            if applied.created.is_empty() {
                "none".to_owned()
            } else {
                applied.created.join(", ")
            }
        );
    }
    Ok(code)
}

/// The summary line of `topology apply`.
pub fn applied_line(report: &ApplyReport) -> String {
    format!(
        "topology applied: {} created, {} unchanged, {} drifted{}{}",
        report.created.len(),
        report.unchanged.len(),
        report.drift.len(),
        // Unbinding is idempotent: the broker does not say whether the binding was there.
        if report.unbound == 0 {
            String::new()
        } else {
            format!(", {} removed binding(s) gone", report.unbound)
        },
        if report.refused.is_empty() {
            String::new()
        } else {
            format!(
                ", {} not permitted (left as they are)",
                report.refused.len()
            )
        }
    )
}

/// `burrow topology verify`: one summary line, one line per drift. Exit code 1 when anything
/// drifted.
///
/// # Errors
/// As [`actions::verify_file`].
pub async fn verify(settings: &Settings, file: &Path) -> anyhow::Result<ExitCode> {
    let v = actions::verify_file(settings, file).await?;
    if v.drift.is_empty() {
        println!(
            "topology verified: vhost '{}' matches {}",
            v.vhost,
            file.display()
        );
    } else {
        println!(
            "topology verified: vhost '{}' differs from {} in {} place(s)",
            v.vhost,
            file.display(),
            v.drift.len()
        );
    }
    Ok(print_drift(&v.drift, file))
}

/// `burrow topology export`.
///
/// # Errors
/// As [`actions::export_file`].
pub fn export(file: &Path, out: &Path) -> anyhow::Result<ExitCode> {
    actions::export_file(file, out)?;
    println!("definitions written to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn print_drift(drift: &[Drift], file: &Path) -> ExitCode {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Entity;

    #[test]
    fn the_summary_names_removed_bindings_and_refusals_only_when_there_are_some() {
        let mut report = ApplyReport {
            unchanged: vec![Entity::Queue("q".into())],
            ..ApplyReport::default()
        };
        assert_eq!(
            applied_line(&report),
            "topology applied: 0 created, 1 unchanged, 0 drifted"
        );
        report.unbound = 2;
        report.refused.push(Entity::Exchange("x".into()));
        assert_eq!(
            applied_line(&report),
            "topology applied: 0 created, 1 unchanged, 0 drifted, 2 removed binding(s) gone, \
             1 not permitted (left as they are)"
        );
    }
}
