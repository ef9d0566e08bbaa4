//! Child processes on `tokio::process`: [`Process`], the one wrapper that `burrow demo`, the
//! benchmark and the integration tests use (signal it, wait for its exit with a deadline, stop
//! it with SIGTERM then SIGKILL, read its stderr line by line), and [`ChildWorker`], a `worker`
//! binary started next to the running executable with an HTTP port of its own.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use nix::sys::signal::kill;
use nix::unistd::Pid;
use tokio::io::AsyncBufReadExt;
use tokio::process::Command;
use tokio::sync::mpsc;

pub use nix::sys::signal::Signal;

/// A child process. Dropping it while the process runs sends [`Signal::SIGKILL`] (or SIGTERM,
/// see [`Process::terminate_on_drop`]); the tokio runtime reaps it.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: tokio::process::Child,
    pid: u32,
    on_drop: Signal,
}

impl Process {
    /// Starts `command`, named `name` in messages.
    ///
    /// # Errors
    /// The program could not start.
    pub fn spawn(name: impl Into<String>, mut command: Command) -> std::io::Result<Self> {
        let name = name.into();
        let child = command.spawn()?;
        let pid = child.id().unwrap_or_default();
        Ok(Self {
            name,
            child,
            pid,
            on_drop: Signal::SIGKILL,
        })
    }

    /// Sends SIGTERM instead of SIGKILL when dropped while running (a graceful stop that
    /// nobody waits for).
    #[must_use]
    pub fn terminate_on_drop(mut self) -> Self {
        self.on_drop = Signal::SIGTERM;
        self
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Sends `signal`; a process that has already exited is not an error.
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(i32::try_from(self.pid).unwrap_or(0)), signal);
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the exit; `None` when it still runs.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .ok()
            .and_then(Result::ok)
    }

    /// Sends SIGTERM and waits up to `grace` for the exit, then SIGKILL. Returns the exit code
    /// (`None` when it had to be killed or ended by a signal).
    pub async fn stop(&mut self, grace: Duration) -> Option<i32> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.code();
        }
        self.signal(Signal::SIGTERM);
        if let Some(status) = self.wait_exit(grace).await {
            return status.code();
        }
        let _ = self.child.kill().await;
        None
    }

    /// The process's stdin, when it was piped (once).
    pub fn take_stdin(&mut self) -> Option<tokio::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// Reads the piped stderr line by line on a task of its own, which keeps reading to the end
    /// so that the process never blocks on a full pipe. With `echo`, each line is also printed
    /// to this process's stderr as `[echo] line`.
    ///
    /// # Panics
    /// When stderr was not piped or is already taken.
    pub fn stderr_lines(&mut self, echo: Option<String>) -> Lines {
        let stderr = self
            .child
            .stderr
            .take()
            .unwrap_or_else(|| panic!("stderr of {} is not piped", self.name));
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(label) = &echo {
                    eprintln!("[{label}] {line}");
                }
                let _ = tx.send(line);
            }
        });
        Lines { rx }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.running() {
            self.signal(self.on_drop);
        }
    }
}

/// The lines of a child's stderr, as [`Process::stderr_lines`] reads them.
#[derive(Debug)]
pub struct Lines {
    rx: mpsc::UnboundedReceiver<String>,
}

impl Lines {
    /// Waits up to `timeout` for the first line `find` picks something from; the lines before
    /// it are consumed. `None` on timeout or when the stream ends first.
    pub async fn find<T>(
        &mut self,
        timeout: Duration,
        mut find: impl FnMut(&str) -> Option<T>,
    ) -> Option<T> {
        tokio::time::timeout(timeout, async {
            while let Some(line) = self.rx.recv().await {
                if let Some(found) = find(&line) {
                    return Some(found);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    /// The lines read so far and not yet consumed, without waiting.
    pub fn drain(&mut self) -> Vec<String> {
        std::iter::from_fn(|| self.rx.try_recv().ok()).collect()
    }
}

/// A worker process started by `burrow demo` or the benchmark.
#[derive(Debug)]
pub struct ChildWorker {
    /// `fulfillment#1` etc.
    pub name: String,
    /// Its `/healthz` and `/metrics` address.
    pub http: SocketAddr,
    process: Process,
}

/// The path of a sibling binary (`worker`, `producer`) of the running executable.
///
/// # Errors
/// The running executable's path is unknown.
pub fn sibling_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the running executable")?;
    let dir = exe.parent().context("executable without a directory")?;
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} not found: build it with `cargo build --release --bins`",
        path.display()
    );
    Ok(path)
}

/// A free local port (bound then released).
///
/// # Errors
/// No port could be bound.
pub fn free_port() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

impl ChildWorker {
    /// Starts `worker <service> --http <free port> <args>`, logging to `log`.
    ///
    /// # Errors
    /// The binary is missing or could not start.
    pub fn spawn(
        name: &str,
        service: &str,
        args: &[String],
        envs: &[(String, String)],
        log: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let worker = sibling_binary("worker")?;
        Self::spawn_binary(&worker, name, service, args, envs, log)
    }

    /// [`ChildWorker::spawn`] with the `worker` binary at `worker` (the benchmark's is where
    /// cargo built it, not next to the running executable).
    ///
    /// # Errors
    /// The binary is missing or could not start.
    pub fn spawn_binary(
        worker: &std::path::Path,
        name: &str,
        service: &str,
        args: &[String],
        envs: &[(String, String)],
        log: &std::path::Path,
    ) -> anyhow::Result<Self> {
        let http = free_port()?;
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(worker);
        command
            .arg(service)
            .arg("--http")
            .arg(http.to_string())
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        let process = Process::spawn(name, command)
            .with_context(|| format!("starting worker {service}"))?
            .terminate_on_drop();
        Ok(Self {
            name: name.to_owned(),
            http,
            process,
        })
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        self.process.running()
    }

    /// Sends SIGTERM and waits up to `grace` for a clean exit, then SIGKILL. Returns the exit code
    /// (None when it had to be killed).
    pub async fn stop(&mut self, grace: Duration) -> Option<i32> {
        self.process.stop(grace).await
    }
}

/// Reads a counter or gauge from a Prometheus text exposition: the sum of every sample of
/// `name` whose labels contain all of `labels` (`key="value"` pairs).
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| label_text.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .fold(0.0, |a, b| a + b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script]).stderr(Stdio::piped());
        cmd
    }

    #[tokio::test]
    async fn stderr_lines_are_read_and_the_exit_code_is_waited_for() {
        let mut p = Process::spawn("sh", sh("echo one >&2; echo 'listening on 7' >&2; exit 3"))
            .expect("sh");
        let mut lines = p.stderr_lines(None);
        let found = lines
            .find(Duration::from_secs(10), |l| {
                l.strip_prefix("listening on ").map(str::to_owned)
            })
            .await;
        assert_eq!(found.as_deref(), Some("7"));
        let status = p.wait_exit(Duration::from_secs(10)).await.expect("exits");
        assert_eq!(status.code(), Some(3));
    }

    #[tokio::test]
    async fn stop_terminates_and_a_process_that_ignores_sigterm_is_killed() {
        let mut p = Process::spawn("sleep", sh("exec sleep 30")).expect("sleep");
        assert!(p.running());
        assert_eq!(
            p.wait_exit(Duration::from_millis(100)).await,
            None,
            "still runs"
        );
        // Ended by SIGTERM: no exit code.
        assert_eq!(p.stop(Duration::from_secs(10)).await, None);
        assert!(!p.running());

        let mut p =
            Process::spawn("stubborn", sh("trap '' TERM; echo ready >&2; sleep 30")).expect("sh");
        let mut lines = p.stderr_lines(None);
        lines
            .find(Duration::from_secs(10), |l| (l == "ready").then_some(()))
            .await
            .expect("trap set");
        let started = std::time::Instant::now();
        assert_eq!(p.stop(Duration::from_millis(300)).await, None);
        assert!(!p.running(), "killed after the grace period");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn metric_sum_adds_matching_series() {
        let text = "# HELP x\nburrow_messages_total{queue=\"q\",outcome=\"success\"} 5\nburrow_messages_total{queue=\"q\",outcome=\"retried\"} 2\nburrow_messages_total{queue=\"r\",outcome=\"success\"} 1\n";
        assert_eq!(
            metric_sum(text, "burrow_messages_total", &[("queue", "q")]),
            7.0
        );
        assert_eq!(
            metric_sum(text, "burrow_messages_total", &[("outcome", "success")]),
            6.0
        );
        assert_eq!(metric_sum(text, "burrow_other", &[]), 0.0);
    }
}
