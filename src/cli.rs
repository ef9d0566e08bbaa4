//! What every `burrow` command shares: turning an error into one line on stderr and an exit
//! code, so binaries stay thin and never print a backtrace.

use std::process::ExitCode;

use crate::broker::BrokerError;
use crate::management::ManagementError;

/// Prints `error` as one line on stderr and picks the exit code: 2 when the broker or the
/// management API cannot be reached or refuses the login (nothing to do but fix the
/// environment), 1 otherwise.
pub fn exit_code(error: &anyhow::Error) -> ExitCode {
    let unreachable = error.chain().any(|cause| {
        cause.downcast_ref::<BrokerError>().is_some()
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
