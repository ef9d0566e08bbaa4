//! `burrow console`: starts the console ([`crate::console::start`]), says where it is, and
//! serves until interrupted.

use std::net::SocketAddr;
use std::process::ExitCode;

use tokio_util::sync::CancellationToken;

use crate::settings::Settings;

/// Serves the console on `addr` until `shutdown`.
///
/// # Errors
/// As [`crate::console::start`]: a non-loopback address without a password, an invalid
/// topology, an address in use.
pub async fn run(
    settings: Settings,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<ExitCode> {
    let protected = settings.console.password.is_some();
    let running = crate::console::start(settings, addr, shutdown.clone()).await?;
    println!(
        "burrow console at http://{}/ ({}); Ctrl-C to stop",
        running.addr,
        if protected {
            "password required"
        } else {
            "loopback only, no password"
        }
    );
    shutdown.cancelled().await;
    Ok(ExitCode::SUCCESS)
}
