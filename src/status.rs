//! The status of a vhost: every queue of the topology as the management API sees it — depth
//! (ready and unacked), consumers, publish/deliver/ack rates — which queues hold dead letters,
//! and the drift between the topology file and the broker, as a [`StatusReport`]
//! (`burrow status` prints it: [`crate::cli::status`]).
//!
//! Its JSON form (`burrow status --json`) is a stable interface for scripts:
//! `{"vhost", "queues": [{"name", "type", "present", "ready", "unacked", "consumers",
//! "publish_rate", "deliver_rate", "ack_rate", "dead_letter"}], "dead_letters", "drift": [..]}`.
//! Counts and rates of a queue missing on the broker are `null`. When `burrow run` ever ran on
//! this host's store directory, `"supervisor"` adds its last state: `{"alive", "pid",
//! "updated_at", "stopped", "http", "services": [{"service", "min", "max", "desired", "running",
//! "pids", "restarts", "last_decision", "decision", "last_change_at"}]}`.

use std::collections::HashSet;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::management::{Management, QueueInfo};
use crate::settings::Settings;
use crate::supervisor::state::{state_path, SupervisorState};
use crate::topology::{verify, Topology};

/// One queue of the topology, as the broker reports it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct QueueStatus {
    /// Its name.
    pub name: String,
    /// `classic`, `quorum` or `stream` (from the topology file).
    #[serde(rename = "type")]
    pub kind: String,
    /// Whether the broker has it.
    pub present: bool,
    /// Messages ready for delivery.
    pub ready: Option<u64>,
    /// Messages delivered and not yet acknowledged.
    pub unacked: Option<u64>,
    /// Consumers attached.
    pub consumers: Option<u64>,
    /// Messages published into it per second.
    pub publish_rate: Option<f64>,
    /// Messages delivered (or fetched) per second.
    pub deliver_rate: Option<f64>,
    /// Messages acknowledged per second.
    pub ack_rate: Option<f64>,
    /// Whether it collects dead letters (bound to some queue's dead-letter exchange).
    pub dead_letter: bool,
}

/// The whole status of one vhost.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    /// The vhost inspected.
    pub vhost: String,
    /// Every queue of the topology, in file order.
    pub queues: Vec<QueueStatus>,
    /// Messages waiting in dead-letter queues (ready and unacked).
    pub dead_letters: u64,
    /// Differences between the topology file and the broker, one line each.
    pub drift: Vec<String>,
    /// `burrow run` on this host's store directory, as it last described itself; absent when
    /// none ever ran there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub supervisor: Option<SupervisorStatus>,
}

/// The supervisor's last state and whether it still runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SupervisorStatus {
    /// Whether the supervisor that wrote the state still runs.
    pub alive: bool,
    /// What it wrote last: per service the wanted and running workers and the last decision.
    #[serde(flatten)]
    pub state: SupervisorState,
}

impl SupervisorStatus {
    /// The state `burrow run` left in the store directory `dir`, if any.
    ///
    /// # Errors
    /// The state file exists but cannot be read.
    pub fn read(dir: &Path) -> anyhow::Result<Option<Self>> {
        Ok(SupervisorState::read(&state_path(dir))?.map(|state| Self {
            alive: state.alive(),
            state,
        }))
    }
}

/// Reads the status of the configured vhost against one topology file, again and again
/// (`--watch`): the file is loaded and the management client built once.
pub struct StatusProbe {
    management: Management,
    amqp: crate::settings::SecretUrl,
    vhost: String,
    topology: Topology,
    source: String,
    store_dir: std::path::PathBuf,
}

impl StatusProbe {
    /// Loads the topology `file` and builds the management client of `settings`.
    ///
    /// # Errors
    /// An invalid topology file or management settings.
    pub fn new(settings: &Settings, file: &Path) -> anyhow::Result<Self> {
        let topology =
            Topology::load(file).with_context(|| format!("loading topology {}", file.display()))?;
        Ok(Self {
            management: Management::new(&settings.management, &settings.amqp)?,
            amqp: settings.amqp.url.clone(),
            vhost: settings.amqp.url.vhost(),
            topology,
            source: file.display().to_string(),
            store_dir: settings.store.dir.clone(),
        })
    }

    /// The status now.
    ///
    /// # Errors
    /// The management API cannot be read.
    pub async fn read(&self) -> anyhow::Result<StatusReport> {
        self.management.ensure_serves(&self.amqp).await?;
        let mut report =
            collect(&self.management, &self.vhost, &self.topology, &self.source).await?;
        report.supervisor = SupervisorStatus::read(&self.store_dir)?;
        Ok(report)
    }
}

/// The queues that collect dead letters: those bound to an exchange that some queue of the
/// topology names as its `x-dead-letter-exchange` (directly or through exchange-to-exchange
/// bindings).
pub fn dead_letter_queues(topology: &Topology) -> HashSet<String> {
    let dlx: HashSet<&str> = topology
        .queues
        .iter()
        .filter_map(|q| q.arguments.get("x-dead-letter-exchange")?.as_str())
        .filter(|x| !x.is_empty())
        .collect();
    dlx.into_iter()
        .flat_map(|x| topology.reachable_queues(x))
        // A queue with a dead-letter exchange of its own is a consumer's queue fed by a
        // dead-letter exchange (the order service's `orders.status.dead-letters`), not a
        // dead-letter queue.
        .filter(|q| topology.dead_letter_exchange(q).is_none())
        .collect()
}

/// Reads the status of `vhost` through `management`.
///
/// # Errors
/// The management API cannot be read.
pub async fn collect(
    management: &Management,
    vhost: &str,
    topology: &Topology,
    source: &str,
) -> anyhow::Result<StatusReport> {
    let (queues, drift) = tokio::try_join!(management.queues(vhost), async {
        verify::verify(management, vhost, topology).await
    })
    .context("reading the broker's queues")?;
    let dead = dead_letter_queues(topology);
    let mut report = StatusReport {
        vhost: vhost.to_owned(),
        queues: Vec::with_capacity(topology.queues.len()),
        dead_letters: 0,
        drift: drift.iter().map(|d| d.describe(source)).collect(),
        supervisor: None,
    };
    for q in &topology.queues {
        let info = queues.iter().find(|i| i.name == q.name);
        let status = queue_status(&q.name, q.kind.as_str(), dead.contains(&q.name), info);
        if status.dead_letter {
            report.dead_letters += status.ready.unwrap_or(0) + status.unacked.unwrap_or(0);
        }
        report.queues.push(status);
    }
    Ok(report)
}

pub(crate) fn queue_status(
    name: &str,
    kind: &str,
    dead_letter: bool,
    info: Option<&QueueInfo>,
) -> QueueStatus {
    let rate = |key: &str| {
        info.and_then(|i| i.message_stats.as_ref())
            .and_then(|s| s.get(key)?.get("rate")?.as_f64())
            .or(info.map(|_| 0.0))
    };
    QueueStatus {
        name: name.to_owned(),
        kind: kind.to_owned(),
        present: info.is_some(),
        // Stats appear a few seconds after a queue is declared; until then it is empty.
        ready: info.map(|i| i.messages_ready.unwrap_or(0)),
        unacked: info.map(|i| i.messages_unacknowledged.unwrap_or(0)),
        consumers: info.map(|i| i.consumers.unwrap_or(0)),
        publish_rate: rate("publish_details"),
        deliver_rate: rate("deliver_get_details"),
        ack_rate: rate("ack_details"),
        dead_letter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shop() -> Topology {
        Topology::parse(include_str!("../topology/shop.toml")).expect("valid")
    }

    #[test]
    fn dead_letter_queues_are_found_from_the_topology() {
        let dead = dead_letter_queues(&shop());
        let mut names: Vec<_> = dead.into_iter().collect();
        names.sort();
        assert_eq!(names, vec!["activity.dead", "orders.dead"]);
    }
}
