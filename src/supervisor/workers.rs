//! The worker processes of one service under `burrow run`: started from the `worker` binary,
//! restarted with back-off when one exits on its own (a crash loop is reported and slowed to
//! the longest delay instead of spinning), and stopped one at a time with SIGTERM (the worker
//! drains within its grace period; SIGKILL after it). [`WorkerGroup::reconcile`] moves the
//! running count towards the wanted one; what happened comes back as [`Event`]s to log.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::process::Command;

use crate::backoff::Backoff;
use crate::children::{Process, Signal};
use crate::service::Service;

/// How worker processes are started.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// The `worker` binary.
    pub binary: PathBuf,
    /// Extra environment for every worker (it inherits this process's too).
    pub envs: Vec<(String, String)>,
    /// Where each worker's stderr goes (`<service>-<n>.log`, appended); inherited when `None`.
    pub log_dir: Option<PathBuf>,
}

impl Launcher {
    fn spawn(&self, service: Service, serial: u64) -> anyhow::Result<Process> {
        let mut command = Command::new(&self.binary);
        command
            .arg(service.name())
            .envs(self.envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        // A process group of its own: a Ctrl-C on the terminal reaches the supervisor only, which
        // then stops the workers in order (and does not mistake their exit for a crash).
        command.process_group(0);
        if let Some(dir) = &self.log_dir {
            let path = dir.join(format!("{}-{serial}.log", service.name()));
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            command.stderr(file);
        }
        // A worker outlives a supervisor that was killed (SIGKILL, OOM) only until the kernel
        // sends it SIGTERM, which it handles as any stop: it drains and exits.
        #[cfg(target_os = "linux")]
        // SAFETY: between fork and exec only the async-signal-safe prctl(2) runs.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).map_err(std::io::Error::from)
            });
        }
        Ok(
            Process::spawn(format!("{}#{serial}", service.name()), command)
                .with_context(|| format!("starting {}", self.binary.display()))?
                .terminate_on_drop(),
        )
    }
}

/// Restart and stop timings of a group.
#[derive(Debug, Clone, Copy)]
pub struct GroupSettings {
    /// The first restart delay.
    pub restart_base: Duration,
    /// The longest restart delay.
    pub restart_cap: Duration,
    /// Exits within `crash_window` that make a crash loop.
    pub crash_loop_exits: u32,
    /// The crash-loop window.
    pub crash_window: Duration,
    /// How long a stopping worker may drain before it is killed.
    pub stop_grace: Duration,
}

/// Something that happened to a group's processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A worker started.
    Started {
        /// Its process id.
        pid: u32,
    },
    /// A worker exited without being asked to; it is replaced after `restart_in`.
    Exited {
        /// Its process id.
        pid: u32,
        /// Its exit code (`None`: ended by a signal).
        code: Option<i32>,
        /// When the replacement starts.
        restart_in: Duration,
        /// Exits within the crash window, this one included.
        recent_exits: u32,
        /// Whether that makes a crash loop.
        crash_loop: bool,
    },
    /// A worker could not be started; retried after `restart_in`.
    SpawnFailed {
        /// Why (never a password: no URL is involved).
        error: String,
        /// When the next attempt is.
        restart_in: Duration,
    },
    /// A worker was sent SIGTERM to scale down.
    Stopping {
        /// Its process id.
        pid: u32,
    },
    /// A stopping worker exited.
    Stopped {
        /// Its process id.
        pid: u32,
        /// Its exit code (`None`: ended by a signal).
        code: Option<i32>,
    },
    /// A stopping worker outlived the grace period and was killed.
    Killed {
        /// Its process id.
        pid: u32,
    },
}

/// How a worker ended when the supervisor stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerEnd {
    /// It exited with this code (0: drained and closed cleanly).
    Exited(i32),
    /// The SIGTERM ended it before it had installed its handler (it was still starting).
    Terminated,
    /// Another signal ended it.
    Signalled(i32),
    /// It outlived the grace period and was killed.
    Killed,
}

impl WorkerEnd {
    /// Whether it stopped as asked: exit 0, or ended by the SIGTERM while starting.
    pub fn clean(self) -> bool {
        matches!(self, WorkerEnd::Exited(0) | WorkerEnd::Terminated)
    }
}

impl From<std::process::ExitStatus> for WorkerEnd {
    fn from(status: std::process::ExitStatus) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(code), _) => WorkerEnd::Exited(code),
            (None, Some(s)) if s == Signal::SIGTERM as i32 => WorkerEnd::Terminated,
            (None, Some(s)) => WorkerEnd::Signalled(s),
            (None, None) => WorkerEnd::Killed,
        }
    }
}

impl std::fmt::Display for WorkerEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerEnd::Exited(code) => write!(f, "exit {code}"),
            WorkerEnd::Terminated => write!(f, "ended by SIGTERM while starting"),
            WorkerEnd::Signalled(s) => write!(f, "ended by signal {s}"),
            WorkerEnd::Killed => write!(f, "killed after the grace period"),
        }
    }
}

/// The worker processes of one service.
#[derive(Debug)]
pub struct WorkerGroup {
    service: Service,
    launcher: Launcher,
    settings: GroupSettings,
    running: Vec<Process>,
    stopping: Vec<(Process, Instant)>,
    exits: VecDeque<Instant>,
    backoff: Backoff,
    next_start: Option<Instant>,
    serial: u64,
    restarts: u64,
}

impl WorkerGroup {
    /// A group with no process yet.
    pub fn new(service: Service, launcher: Launcher, settings: GroupSettings) -> Self {
        Self {
            service,
            launcher,
            settings,
            running: Vec::new(),
            stopping: Vec::new(),
            exits: VecDeque::new(),
            backoff: Backoff::new(settings.restart_base, settings.restart_cap),
            next_start: None,
            serial: 0,
            restarts: 0,
        }
    }

    /// The service.
    pub fn service(&self) -> Service {
        self.service
    }

    /// Workers running (not counting those draining after a SIGTERM).
    pub fn running(&self) -> u32 {
        u32::try_from(self.running.len()).unwrap_or(u32::MAX)
    }

    /// The process ids of the running workers, oldest first.
    pub fn pids(&self) -> Vec<u32> {
        self.running.iter().map(Process::pid).collect()
    }

    /// The process ids of the workers draining after a SIGTERM.
    pub fn stopping_pids(&self) -> Vec<u32> {
        self.stopping.iter().map(|(p, _)| p.pid()).collect()
    }

    /// Workers restarted after exiting on their own, since the start.
    pub fn restarts(&self) -> u64 {
        self.restarts
    }

    /// Notices exits: a running worker that exited is scheduled for a restart (with back-off),
    /// a stopping one is forgotten (killed when past its grace period).
    pub fn reap(&mut self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            let Some(status) = self.running[i].try_exit() else {
                i += 1;
                continue;
            };
            let process = self.running.remove(i);
            while self
                .exits
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) > self.settings.crash_window)
            {
                self.exits.pop_front();
            }
            if self.exits.is_empty() {
                self.backoff.reset();
            }
            self.exits.push_back(now);
            let recent_exits = u32::try_from(self.exits.len()).unwrap_or(u32::MAX);
            let crash_loop = recent_exits >= self.settings.crash_loop_exits;
            let restart_in = if crash_loop {
                self.settings.restart_cap
            } else {
                self.backoff.next_delay()
            };
            self.next_start = Some(now + restart_in);
            self.restarts += 1;
            events.push(Event::Exited {
                pid: process.pid(),
                code: status.code(),
                restart_in,
                recent_exits,
                crash_loop,
            });
        }
        let mut i = 0;
        while i < self.stopping.len() {
            let (process, deadline) = &mut self.stopping[i];
            if let Some(status) = process.try_exit() {
                events.push(Event::Stopped {
                    pid: process.pid(),
                    code: status.code(),
                });
                self.stopping.remove(i);
            } else if now >= *deadline {
                process.signal(Signal::SIGKILL);
                events.push(Event::Killed { pid: process.pid() });
                // Reaped (and reported as stopped) on a later pass.
                *deadline = now + self.settings.stop_grace;
                i += 1;
            } else {
                i += 1;
            }
        }
        events
    }

    /// Starts or stops workers so that `wanted` run: new ones once the restart back-off has
    /// passed, the youngest stopped first (SIGTERM; it drains).
    pub fn reconcile(&mut self, wanted: u32, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        while self.running() > wanted {
            let process = self.running.pop().expect("running is not empty");
            process.signal(Signal::SIGTERM);
            events.push(Event::Stopping { pid: process.pid() });
            self.stopping
                .push((process, now + self.settings.stop_grace));
        }
        while self.running() < wanted && self.next_start.is_none_or(|t| now >= t) {
            self.serial += 1;
            match self.launcher.spawn(self.service, self.serial) {
                Ok(process) => {
                    events.push(Event::Started { pid: process.pid() });
                    self.running.push(process);
                }
                Err(e) => {
                    let restart_in = self.backoff.next_delay();
                    self.next_start = Some(now + restart_in);
                    events.push(Event::SpawnFailed {
                        error: format!("{e:#}"),
                        restart_in,
                    });
                    break;
                }
            }
        }
        events
    }

    /// Sends SIGTERM to every worker and waits for all to exit, killing those still running
    /// after the grace period. Returns each one's pid and how it ended.
    pub async fn stop_all(&mut self) -> Vec<(u32, WorkerEnd)> {
        let mut all: Vec<Process> = self.running.drain(..).collect();
        all.extend(self.stopping.drain(..).map(|(p, _)| p));
        let grace = self.settings.stop_grace;
        let stops = all.iter_mut().map(|p| async move {
            p.signal(Signal::SIGTERM);
            let end = match p.wait_exit(grace).await {
                Some(status) => WorkerEnd::from(status),
                None => {
                    p.signal(Signal::SIGKILL);
                    let _ = p.wait_exit(grace).await;
                    WorkerEnd::Killed
                }
            };
            (p.pid(), end)
        });
        futures::future::join_all(stops).await
    }
}
