//! `burrow run`: runs the [`crate::supervisor`] until SIGINT/SIGTERM, then prints how each
//! service's workers stopped; exit code 0 once every worker is gone, 1 if one had to be killed
//! after its grace period or exited with an error.

use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::settings::Settings;
use crate::supervisor::{self, RunOptions, RunReport};

/// Runs the supervisor until `shutdown`.
///
/// # Errors
/// As [`supervisor::run`].
pub async fn run(
    settings: &Settings,
    options: RunOptions,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let report = supervisor::run(settings, options, shutdown).await?;
    print!("{}", render(&report));
    Ok(if report.clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One block per service: its scaling decisions, then how its workers stopped.
pub fn render(report: &RunReport) -> String {
    let mut out = String::new();
    for s in &report.services {
        let clean = s.workers.iter().filter(|(_, end)| end.clean()).count();
        out.push_str(&format!(
            "{}: {} scaling decision(s); {} worker(s) stopped, {} cleanly\n",
            s.service.name(),
            s.scalings.len(),
            s.workers.len(),
            clean
        ));
        for line in &s.scalings {
            out.push_str(&format!("  {line}\n"));
        }
        for (pid, end) in s.workers.iter().filter(|(_, end)| !end.clean()) {
            out.push_str(&format!("  worker {pid}: {end}\n"));
        }
    }
    out
}
