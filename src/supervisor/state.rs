//! What `burrow run` tells other processes: a [`SupervisorState`] (per service the wanted and
//! running counts, worker pids and the last decision) written as JSON to
//! `<store.dir>/supervisor.json` after every decision, atomically (a temporary file renamed over
//! it), so that `burrow status` in another process never reads half a file. The same document is
//! served at `/state` on the supervisor's `--http`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::policy::Decision;

/// The file name under the store directory.
pub const STATE_FILE: &str = "supervisor.json";

/// The state file of the store directory `dir`.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// The supervisor as it last described itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorState {
    /// The supervisor's process id.
    pub pid: u32,
    /// When this was written (RFC 3339).
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Whether the supervisor has stopped (its last write).
    pub stopped: bool,
    /// Its `--http` address, if any.
    pub http: Option<String>,
    /// Each supervised service.
    pub services: Vec<ServiceState>,
}

/// One supervised service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    /// `fulfillment` etc.
    pub service: String,
    /// MIN.
    pub min: u32,
    /// MAX.
    pub max: u32,
    /// Workers wanted.
    pub desired: u32,
    /// Workers running.
    pub running: u32,
    /// Their process ids.
    pub pids: Vec<u32>,
    /// Workers restarted after exiting on their own.
    pub restarts: u64,
    /// The last decision, as a sentence (`2→4: 5,100 ready, draining in 31 s at 164/s`).
    pub last_decision: Option<String>,
    /// The last decision, as data.
    pub decision: Option<Decision>,
    /// When the count last changed (RFC 3339).
    pub last_change_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The latest changes of the count, oldest first (at most [`RECENT_SCALINGS`]), each as
    /// logged: `scale fulfillment 2→4: 5,100 ready, draining in 31 s at 164/s`.
    #[serde(default)]
    pub recent_scalings: Vec<String>,
}

/// How many scaling decisions the state keeps.
pub const RECENT_SCALINGS: usize = 20;

impl SupervisorState {
    /// Writes the state to `path` atomically.
    ///
    /// # Errors
    /// The directory is not writable.
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
        let json = serde_json::to_vec_pretty(self)?;
        std::fs::write(&tmp, json).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
    }

    /// The state at `path`; `None` when no supervisor ever wrote one.
    ///
    /// # Errors
    /// The file exists but cannot be read or parsed.
    pub fn read(path: &Path) -> anyhow::Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Whether the supervisor that wrote this still runs: it did not write a last state, and
    /// a process with its pid exists.
    pub fn alive(&self) -> bool {
        !self.stopped
            && i32::try_from(self.pid).is_ok_and(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_round_trips_through_its_file_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = state_path(dir.path());
        assert_eq!(SupervisorState::read(&path).expect("read"), None);
        let state = SupervisorState {
            pid: std::process::id(),
            updated_at: chrono::Utc::now(),
            stopped: false,
            http: None,
            services: vec![ServiceState {
                service: "fulfillment".into(),
                min: 1,
                max: 8,
                desired: 2,
                running: 2,
                pids: vec![10, 11],
                restarts: 0,
                last_decision: Some("1→2: 600 ready, draining in 60 s at 10/s".into()),
                decision: None,
                last_change_at: None,
                recent_scalings: vec![
                    "scale fulfillment 1→2: 600 ready, draining in 60 s at 10/s".into()
                ],
            }],
        };
        state.write(&path).expect("write");
        let read = SupervisorState::read(&path)
            .expect("read")
            .expect("present");
        assert_eq!(read, state);
        assert!(read.alive(), "this test process runs");
        assert!(!SupervisorState {
            stopped: true,
            ..read
        }
        .alive());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "no temporary file left");
    }
}
