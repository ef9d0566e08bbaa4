//! The exit codes of every binary, after BSD's `sysexits.h`, and the one function that picks
//! one for an error ([`Exit::of`]) or for a command line that does not parse ([`parse`]).
//!
//! A script can tell "fix the command" (64) from "fix the input" (65), "try again later or
//! check the URL" (69) and "fix the credentials" (77); 1 is everything else that went wrong
//! (drift, an unconfirmed order).

use std::process::ExitCode;

use crate::broker::BrokerError;
use crate::console::ConsoleError;
use crate::management::ManagementError;
use crate::producer::PublishError;
use crate::settings::SettingsError;
use crate::topology::TopologyError;

/// The AMQP reply code of a refused operation.
const ACCESS_REFUSED: u16 = 403;

/// An exit code of burrow's binaries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Exit {
    /// Done.
    Success = 0,
    /// Something else went wrong: drift, an order not confirmed, an I/O error.
    Failure = 1,
    /// `EX_USAGE`: the command line is wrong (unknown flag, missing or malformed value).
    Usage = 64,
    /// `EX_DATAERR`: the input is wrong: an invalid order or event, a skipped input line, a
    /// topology file that breaks a rule.
    DataErr = 65,
    /// `EX_UNAVAILABLE`: RabbitMQ or its management API cannot be reached or cannot serve now.
    Unavailable = 69,
    /// `EX_NOPERM`: the broker or the management API refused the credentials or the vhost, or
    /// the user may not do what was asked (403 ACCESS_REFUSED).
    NoPerm = 77,
    /// `EX_CONFIG`: a setting (`burrow.toml`, `BURROW__…`) is malformed, or the broker's TLS
    /// certificate is not trusted (`amqp.tls_ca_file`).
    Config = 78,
}

impl Exit {
    /// The code for `error`: the first cause in its chain that says which, else
    /// [`Exit::Failure`].
    pub fn of(error: &anyhow::Error) -> Self {
        error
            .chain()
            .find_map(|cause| {
                if let Some(e) = cause.downcast_ref::<BrokerError>() {
                    return Some(match e {
                        BrokerError::Refused { .. } => Self::NoPerm,
                        BrokerError::Unreachable { .. } | BrokerError::Unavailable { .. } => {
                            Self::Unavailable
                        }
                        BrokerError::Untrusted { .. } | BrokerError::CaFile { .. } => Self::Config,
                    });
                }
                if let Some(e) = cause.downcast_ref::<ManagementError>() {
                    return match e {
                        ManagementError::Unauthorized { .. } => Some(Self::NoPerm),
                        ManagementError::Unreachable { .. } => Some(Self::Unavailable),
                        _ => None,
                    };
                }
                if let Some(lapin::ErrorKind::ProtocolError(amqp)) =
                    cause.downcast_ref::<lapin::Error>().map(lapin::Error::kind)
                {
                    return (amqp.get_id() == ACCESS_REFUSED).then_some(Self::NoPerm);
                }
                if let Some(PublishError::Invalid(_)) = cause.downcast_ref::<PublishError>() {
                    return Some(Self::DataErr);
                }
                if let Some(e) = cause.downcast_ref::<TopologyError>() {
                    return (!matches!(e, TopologyError::Read { .. })).then_some(Self::DataErr);
                }
                if cause.downcast_ref::<ConsoleError>().is_some() {
                    return Some(Self::Config);
                }
                cause.downcast_ref::<SettingsError>().map(|_| Self::Config)
            })
            .unwrap_or(Self::Failure)
    }

    /// Its number.
    pub fn code(self) -> u8 {
        self as u8
    }
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        ExitCode::from(exit.code())
    }
}

/// Parses the command line like [`clap::Parser::parse`], except that a usage error exits with
/// [`Exit::Usage`] (clap's own is 2). `--help` and `--version` print and exit 0.
///
/// # Errors
/// The exit code to return from `main` after clap printed its message.
pub fn parse<P: clap::Parser>() -> Result<P, ExitCode> {
    P::try_parse().map_err(|e| {
        // Printing to a closed pipe is not worth another error.
        let _ = e.print();
        if e.use_stderr() {
            Exit::Usage.into()
        } else {
            Exit::Success.into()
        }
    })
}
