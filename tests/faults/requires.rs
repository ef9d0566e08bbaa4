//! What the fault tests need from the machine: root (the private nodes run as the `rabbitmq`
//! user through `runuser`) and the RabbitMQ server package (`rabbitmq-server`, `rabbitmqctl`).
//!
//! On a contributor's laptop without them, each fault test prints why it is skipped and passes;
//! in CI (`CI` set, as GitHub Actions and most CI systems do) or with `BURROW_FAULTS=require`, a
//! missing prerequisite fails the test instead, so the suite cannot go quiet where it must run.
//! `BURROW_FAULTS=skip` skips them even where they could run.

use std::io::Write;
use std::path::Path;

/// Why the fault tests cannot run on this machine, or `None` when they can.
pub fn missing() -> Option<String> {
    let mut why = Vec::new();
    if !crate::common::is_root() {
        why.push("root (private nodes run as the rabbitmq user via runuser)".to_owned());
    }
    for program in ["rabbitmq-server", "rabbitmqctl", "runuser"] {
        if !on_path(program) {
            why.push(format!("`{program}` on PATH"));
        }
    }
    if !user_exists("rabbitmq") {
        why.push("the `rabbitmq` user (the RabbitMQ Debian package makes it)".to_owned());
    }
    (!why.is_empty()).then(|| format!("needs {}", why.join(", ")))
}

/// How a missing prerequisite is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Print why and pass (a laptop).
    Skip,
    /// Fail (CI, `BURROW_FAULTS=require`).
    Require,
    /// Skip even when the machine could run them (`BURROW_FAULTS=skip`).
    Never,
}

/// The mode from `BURROW_FAULTS` and `CI`.
pub fn mode() -> Mode {
    mode_from(
        std::env::var("BURROW_FAULTS").ok().as_deref(),
        std::env::var("CI").ok().as_deref(),
    )
}

fn mode_from(burrow_faults: Option<&str>, ci: Option<&str>) -> Mode {
    match burrow_faults {
        Some("require") => Mode::Require,
        Some("skip") => Mode::Never,
        _ => match ci {
            Some(v) if !v.is_empty() && v != "false" && v != "0" => Mode::Require,
            _ => Mode::Skip,
        },
    }
}

/// Whether the calling fault test should run. When it should not, says why on stderr, past
/// the test harness's output capture so that a plain `cargo test` shows it. Panics when the
/// prerequisites are missing where they are required.
pub fn fault_env() -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("fault test")
        .to_owned();
    let reason = match (mode(), missing()) {
        (Mode::Never, _) => "BURROW_FAULTS=skip".to_owned(),
        (_, None) => return true,
        (Mode::Require, Some(why)) => {
            panic!("{test} {why}: fault tests are required here (CI or BURROW_FAULTS=require)")
        }
        (Mode::Skip, Some(why)) => why,
    };
    // `eprintln!` would be captured and hidden for a passing test; the raw handle is not.
    let _ = writeln!(
        std::io::stderr(),
        "skipping {test}: {reason} (CI runs it; BURROW_FAULTS=require makes it fail instead)"
    );
    false
}

/// Returns from the calling test, after saying why, unless the machine can run fault tests.
/// The first line of every fault test.
macro_rules! skip_unless_fault_env {
    () => {
        if !$crate::requires::fault_env() {
            return;
        }
    };
}
pub(crate) use skip_unless_fault_env;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| is_executable(&dir.join(program)))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn user_exists(name: &str) -> bool {
    std::fs::read_to_string("/etc/passwd")
        .is_ok_and(|passwd| passwd.lines().any(|l| l.split(':').next() == Some(name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_requires_and_a_laptop_skips() {
        assert_eq!(mode_from(None, None), Mode::Skip);
        assert_eq!(mode_from(None, Some("true")), Mode::Require);
        assert_eq!(mode_from(None, Some("false")), Mode::Skip);
        assert_eq!(mode_from(Some("require"), None), Mode::Require);
        assert_eq!(mode_from(Some("skip"), Some("true")), Mode::Never);
    }

    #[test]
    fn a_program_that_does_not_exist_is_not_on_path() {
        assert!(!on_path("burrow-no-such-program"));
        assert!(on_path("sh"));
    }
}
