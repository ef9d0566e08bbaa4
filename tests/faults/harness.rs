//! Private RabbitMQ nodes for fault tests, started beside the system node as docs/CONTRACT.md says: as
//! the `rabbitmq` user (whose HOME holds the shared Erlang cookie), with their own name, ports,
//! config file and directories under a temporary directory owned by `rabbitmq`. A node can be
//! stopped gracefully, SIGKILLed, restarted, have its connections closed, raise a memory alarm and
//! join a cluster. Dropping a [`Node`] stops it and removes its directories, also when a test
//! fails. The system node on 5672 is never touched.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Only one scenario at a time: they reuse node names and ports, and a 2-core machine has no
/// room for two brokers under load. A tokio mutex does not poison when a test fails.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const RABBIT_HOME: &str = "/var/lib/rabbitmq";
/// How long a graceful stop of a node may take before the node is killed instead.
const GRACEFUL_STOP: Duration = Duration::from_secs(120);

/// The PEM files of a TLS listener: the CA, the server certificate it signed, and its key.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// One private node, e.g. `burrowf1@localhost` on port 5791.
pub struct Node {
    pub name: String,
    pub port: u16,
    dir: PathBuf,
}

fn as_rabbitmq(program: &str) -> Command {
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "rabbitmq", "--", "env"])
        .arg(format!("HOME={RABBIT_HOME}"))
        .arg(program);
    cmd
}

/// SIGKILLs process `pid` and waits until it is gone; false when `kill` failed (no such
/// process: it was gone already).
fn sigkill(pid: &str) -> bool {
    let sent = Command::new("kill")
        .args(["-KILL", pid])
        .status()
        .expect("kill")
        .success();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "beam {pid} survived SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    sent
}

fn chown_to_rabbitmq(path: &Path) {
    let ok = Command::new("chown")
        .args(["-R", "rabbitmq:rabbitmq"])
        .arg(path)
        .status()
        .expect("chown")
        .success();
    assert!(ok, "chown {} to rabbitmq", path.display());
}

impl Node {
    /// Starts node `burrowf<index>@localhost` on AMQP port `5790 + index` and waits until it
    /// runs. A node of the same name left over from an aborted run is stopped first.
    pub fn start(index: u16) -> Node {
        Self::start_with(index, "", &[])
    }

    /// Starts node `index` like [`Node::start`], with a TLS listener on port
    /// [`Node::tls_port`] too, serving `tls.cert` (signed by `tls.ca`) with `tls.key`. Clients
    /// are not asked for a certificate.
    pub fn start_tls(index: u16, tls: &TlsFiles) -> Node {
        let port = 5790 + index;
        let config = format!(
            "listeners.ssl.default = 127.0.0.1:{}\n\
             ssl_options.cacertfile = {{dir}}/ca.pem\n\
             ssl_options.certfile = {{dir}}/server.pem\n\
             ssl_options.keyfile = {{dir}}/server.key\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n",
            Self::tls_port_of(port)
        );
        let files = [
            ("ca.pem", &tls.ca),
            ("server.pem", &tls.cert),
            ("server.key", &tls.key),
        ];
        Self::start_with(index, &config, &files)
    }

    fn tls_port_of(port: u16) -> u16 {
        port + 100
    }

    /// The port of the TLS listener of a node started with [`Node::start_tls`].
    pub fn tls_port(&self) -> u16 {
        Self::tls_port_of(self.port)
    }

    /// Starts node `index` with `config` (`{dir}` stands for the node's directory) appended to
    /// its rabbitmq.conf and `files` written into that directory.
    fn start_with(index: u16, config: &str, files: &[(&str, &PathBuf)]) -> Node {
        let name = format!("burrowf{index}@localhost");
        let port = 5790 + index;
        let dir = std::env::temp_dir().join(format!("burrow-faults-{name}"));
        let node = Node { name, port, dir };
        let _ = node.ctl(&["stop"]); // leftovers of a killed test run, if any
                                     // A leftover that no longer answers rabbitmqctl would hold the ports: only processes
                                     // started with this node's private directory match.
        let _ = Command::new("pkill")
            .args(["-9", "-f", &format!("burrow-faults-{}", node.name)])
            .status();
        let _ = std::fs::remove_dir_all(&node.dir);
        std::fs::create_dir_all(node.dir.join("mnesia")).expect("node dir");
        std::fs::create_dir_all(node.dir.join("log")).expect("node dir");
        std::fs::write(node.dir.join("plugins"), "[].\n").expect("plugins file");
        std::fs::write(
            node.dir.join("rabbitmq.conf"),
            // The system /etc/rabbitmq/rabbitmq.conf pins 5672; this file replaces it.
            format!(
                "listeners.tcp.local = 127.0.0.1:{port}\nloopback_users.guest = true\n\
                 vm_memory_high_watermark.relative = 0.4\n{}",
                config.replace("{dir}", &node.dir.display().to_string())
            ),
        )
        .expect("config file");
        for (name, source) in files {
            std::fs::copy(source, node.dir.join(name)).expect("copying a node file");
        }
        chown_to_rabbitmq(&node.dir);
        node.boot();
        node
    }

    /// The AMQP URL of the default vhost (guest may log in over loopback).
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }

    /// Runs `rabbitmqctl -n <node> args…`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        as_rabbitmq("rabbitmqctl")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .expect("running rabbitmqctl")
    }

    /// Like [`Node::ctl`], panicking with its output when it fails.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?} failed: {}{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the node's OS process (`rabbitmq-server -detached`) and waits until RabbitMQ runs.
    pub fn boot(&self) {
        let _ = std::fs::remove_file(self.pid_file());
        let d = |p: &str| self.dir.join(p).display().to_string();
        let status = as_rabbitmq("env")
            .arg(format!("RABBITMQ_NODENAME={}", self.name))
            .arg(format!("RABBITMQ_NODE_PORT={}", self.port))
            .arg(format!("RABBITMQ_DIST_PORT={}", 20000 + self.port))
            .arg("RABBITMQ_NODE_IP_ADDRESS=127.0.0.1")
            .arg(format!("RABBITMQ_MNESIA_BASE={}", d("mnesia")))
            .arg(format!("RABBITMQ_LOG_BASE={}", d("log")))
            .arg(format!("RABBITMQ_ENABLED_PLUGINS_FILE={}", d("plugins")))
            .arg(format!("RABBITMQ_CONFIG_FILE={}", d("rabbitmq.conf")))
            .arg(format!("RABBITMQ_PID_FILE={}", d("pid")))
            .args(["rabbitmq-server", "-detached"])
            .status()
            .expect("rabbitmq-server");
        assert!(status.success(), "rabbitmq-server -detached {}", self.name);
        // `rabbitmqctl wait` reads the pid file as soon as it exists, and fails with
        // `garbage_in_pid_file` when it finds the file created but not yet written: wait for a
        // pid in it first.
        let deadline = Instant::now() + Duration::from_secs(90);
        while !std::fs::read_to_string(self.pid_file())
            .is_ok_and(|p| p.trim().parse::<u32>().is_ok())
        {
            assert!(
                Instant::now() < deadline,
                "{}: no pid in {} after 90 s",
                self.name,
                self.pid_file().display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let pid = self.pid_file().display().to_string();
        self.ctl_ok(&["wait", "--timeout", "90", &pid]);
        self.ctl_ok(&["await_startup", "--timeout", "90"]);
    }

    /// Stops RabbitMQ and the OS process gracefully, waiting until it is gone. A stop that has
    /// not finished after [`GRACEFUL_STOP`] (once, on a slow machine, one hung for minutes) is
    /// reported with the tail of the node's log, and the node is killed instead: what the
    /// tests check after a restart (nothing lost, nothing twice) holds after a kill as well.
    pub fn stop(&self) {
        let pid = self.pid_file().display().to_string();
        let mut ctl = as_rabbitmq("rabbitmqctl")
            .args(["-n", &self.name, "stop", &pid])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("running rabbitmqctl stop");
        let deadline = Instant::now() + GRACEFUL_STOP;
        loop {
            match ctl.try_wait().expect("waiting for rabbitmqctl stop") {
                Some(status) => {
                    assert!(status.success(), "rabbitmqctl -n {} stop failed", self.name);
                    return;
                }
                None if Instant::now() >= deadline => break,
                None => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        let _ = ctl.kill();
        let _ = ctl.wait();
        eprintln!(
            "{}: the graceful stop did not finish in {GRACEFUL_STOP:?}; killing the node. Its log ends:\n{}",
            self.name,
            self.log_tail(40)
        );
        // The stop may have got part of the way: the beam may be gone already.
        if let Ok(pid) = std::fs::read_to_string(self.pid_file()) {
            sigkill(pid.trim());
        }
    }

    /// The last `lines` lines of the node's log files.
    fn log_tail(&self, lines: usize) -> String {
        let mut text = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.join("log")) {
            for e in entries.filter_map(Result::ok) {
                let body = std::fs::read_to_string(e.path()).unwrap_or_default();
                let all: Vec<&str> = body.lines().collect();
                text.push_str(&format!("== {}\n", e.path().display()));
                text.push_str(&all[all.len().saturating_sub(lines)..].join("\n"));
                text.push('\n');
            }
        }
        text
    }

    /// SIGKILLs the node's OS process (the beam), without warning.
    pub fn kill(&self) {
        let pid = std::fs::read_to_string(self.pid_file()).expect("pid file");
        let pid = pid.trim();
        assert!(sigkill(pid), "kill -KILL {pid}");
    }

    /// Graceful stop, then start again.
    pub fn restart(&self) {
        self.stop();
        self.boot();
    }

    /// Closes every client connection of the node (`rabbitmqctl close_all_connections`).
    pub fn close_all_connections(&self) {
        self.ctl_ok(&["close_all_connections", "burrow fault test"]);
    }

    /// Sets the memory high watermark, e.g. `0.0000001` to raise the alarm and `0.4` to clear it.
    pub fn set_vm_memory_high_watermark(&self, fraction: &str) {
        self.ctl_ok(&["set_vm_memory_high_watermark", fraction]);
    }

    /// Makes this node a member of `seed`'s cluster.
    pub fn join_cluster(&self, seed: &Node) {
        self.ctl_ok(&["stop_app"]);
        self.ctl_ok(&["join_cluster", &seed.name]);
        self.ctl_ok(&["start_app"]);
        self.ctl_ok(&["await_startup", "--timeout", "90"]);
    }

    /// The nodes of the cluster that run now, as this node sees them.
    pub fn running_nodes(&self) -> Vec<String> {
        let out = self.ctl(&["cluster_status", "--formatter", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| {
                v["running_nodes"].as_array().map(|nodes| {
                    nodes
                        .iter()
                        .filter_map(|n| n.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default()
    }

    /// Whether stopping this node now would leave a quorum queue without a majority of
    /// members in sync (`rabbitmq-queues check_if_node_is_quorum_critical`): a rolling restart
    /// waits until it is not.
    pub fn quorum_critical(&self) -> bool {
        let out = as_rabbitmq("rabbitmq-queues")
            .args(["-n", &self.name, "check_if_node_is_quorum_critical"])
            .output()
            .expect("running rabbitmq-queues");
        !out.status.success()
    }

    /// The node that leads quorum queue `queue` of the default vhost, as this node sees it.
    pub fn quorum_leader(&self, queue: &str) -> Option<String> {
        let out = self.ctl(&["list_queues", "-q", "--no-table-headers", "name", "leader"]);
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let mut cols = l.split_whitespace();
            (cols.next() == Some(queue)).then(|| cols.next().unwrap_or_default().to_owned())
        })
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let pid = std::fs::read_to_string(self.pid_file()).unwrap_or_default();
        let pid = pid.trim().to_owned();
        if !pid.is_empty() && Path::new(&format!("/proc/{pid}")).exists() {
            let out = self.ctl(&["stop", &self.pid_file().display().to_string()]);
            if !out.status.success() && Path::new(&format!("/proc/{pid}")).exists() {
                let _ = Command::new("kill").args(["-KILL", &pid]).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cluster of `size` private nodes; the first is the seed the others join.
pub fn cluster(size: u16) -> Vec<Node> {
    let nodes: Vec<Node> = std::thread::scope(|s| {
        let handles: Vec<_> = (1..=size)
            .map(|i| s.spawn(move || Node::start(i)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("node start"))
            .collect()
    });
    for n in &nodes[1..] {
        n.join_cluster(&nodes[0]);
    }
    nodes
}
