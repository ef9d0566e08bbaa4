//! Child processes of `burrow demo` (and of the benchmark): the real `worker` binaries, started
//! next to the running executable, stopped with SIGTERM (and killed only past a deadline).

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A worker process.
pub struct ChildWorker {
    /// `fulfillment#1` etc.
    pub name: String,
    /// Its `/healthz` and `/metrics` address.
    pub http: SocketAddr,
    child: Child,
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
        let child = Command::new(worker)
            .arg(service)
            .arg("--http")
            .arg(http.to_string())
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .with_context(|| format!("starting worker {service}"))?;
        Ok(Self {
            name: name.to_owned(),
            http,
            child,
        })
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits up to `grace` for a clean exit, then SIGKILL. Returns the exit code
    /// (None when it had to be killed).
    pub fn stop(&mut self, grace: Duration) -> Option<i32> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return status.code();
        }
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        if self.running() {
            self.stop(Duration::from_secs(10));
        }
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
