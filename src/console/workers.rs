//! The workers the console shows: found through the broker's connection list (each worker
//! names its `--http` address in the client property [`CLIENT_PROPERTY_HTTP`]) and the
//! `console.workers` setting, then probed: `/healthz`, `/readyz`, and from `/metrics` the
//! messages settled and the handler time, from which the page draws its latency chart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;

use crate::broker::CLIENT_PROPERTY_HTTP;
use crate::children::metric_sum;
use crate::management::{ConnectionInfo, Management, ManagementError};
use crate::metrics::{HANDLER_SECONDS, MESSAGES_TOTAL};
use crate::orders::metrics::OutboxStatus;

/// How long one probe of a worker may take.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A worker's HTTP endpoint, and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerEndpoint {
    /// `fulfillment@host#pid` from its connection name, else the address.
    pub name: String,
    /// The service it runs (`fulfillment`…), when its connection name says.
    pub service: Option<String>,
    /// `host:port` of its `/healthz`.
    pub http: String,
}

/// One worker as the console shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkerStatus {
    /// `fulfillment@host#pid`, or its address.
    pub name: String,
    /// The service it runs, when known.
    pub service: Option<String>,
    /// `host:port` of its HTTP endpoint.
    pub http: String,
    /// `/healthz` answered 200.
    pub healthy: bool,
    /// `ok`, or why `/healthz` did not answer.
    pub health: String,
    /// `/readyz` answered 200 (`None` when it did not answer at all).
    pub ready: Option<bool>,
    /// Messages it settled since it started, by outcome (`success`, `retried`, …).
    pub messages: BTreeMap<String, f64>,
    /// Handler time in seconds summed over every message it handled.
    pub handler_seconds_sum: f64,
    /// Messages whose handler time is in that sum.
    pub handler_seconds_count: f64,
    /// The outbox, when this is an order service (`producer serve`).
    pub outbox: Option<OutboxStatus>,
}

/// The workers connected to `vhost` that announce an HTTP address, and the `extra` addresses
/// (`console.workers`), one entry per address.
///
/// # Errors
/// The management API cannot list the connections.
pub async fn find_workers(
    management: &Management,
    vhost: &str,
    extra: &[String],
) -> Result<Vec<WorkerEndpoint>, ManagementError> {
    let connections = management.connections(vhost).await?;
    Ok(endpoints(&connections, extra))
}

fn endpoints(connections: &[ConnectionInfo], extra: &[String]) -> Vec<WorkerEndpoint> {
    let mut found: BTreeMap<String, WorkerEndpoint> = BTreeMap::new();
    for c in connections {
        let Some(announced) = c
            .client_properties
            .get(CLIENT_PROPERTY_HTTP)
            .and_then(|v| v.as_str())
        else {
            continue;
        };
        let http = reachable(announced, &c.peer_host);
        let connection_name = c
            .client_properties
            .get("connection_name")
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        // `burrow worker fulfillment@host#4242`, `burrow producer@host#4242` (the order
        // service; see `broker::connection_name`).
        let name = connection_name
            .strip_prefix("burrow worker ")
            .or_else(|| connection_name.strip_prefix("burrow "))
            .unwrap_or(connection_name);
        let service = name
            .split_once('@')
            .map(|(service, _)| service.to_owned())
            .filter(|s| !s.is_empty());
        found.entry(http.clone()).or_insert(WorkerEndpoint {
            name: if name.is_empty() {
                http.clone()
            } else {
                name.to_owned()
            },
            service,
            http,
        });
    }
    for http in extra {
        found.entry(http.clone()).or_insert(WorkerEndpoint {
            name: http.clone(),
            service: None,
            http: http.clone(),
        });
    }
    found.into_values().collect()
}

/// A worker listening on every interface (`0.0.0.0:9101`) is reached at the address its
/// connection comes from.
fn reachable(announced: &str, peer_host: &str) -> String {
    match announced.parse::<SocketAddr>() {
        Ok(addr) if addr.ip().is_unspecified() && !peer_host.is_empty() => {
            if peer_host.contains(':') {
                format!("[{peer_host}]:{}", addr.port())
            } else {
                format!("{peer_host}:{}", addr.port())
            }
        }
        _ => announced.to_owned(),
    }
}

/// Probes every endpoint at once: `/healthz`, `/readyz` and `/metrics`, each within
/// [`PROBE_TIMEOUT`].
pub async fn probe_all(
    client: &reqwest::Client,
    endpoints: Vec<WorkerEndpoint>,
) -> Vec<WorkerStatus> {
    futures::future::join_all(endpoints.into_iter().map(|e| probe(client, e))).await
}

async fn probe(client: &reqwest::Client, endpoint: WorkerEndpoint) -> WorkerStatus {
    let base = format!("http://{}", endpoint.http);
    let (health, ready, metrics) = tokio::join!(
        client.get(format!("{base}/healthz")).send(),
        client.get(format!("{base}/readyz")).send(),
        async {
            client
                .get(format!("{base}/metrics"))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        }
    );
    let (healthy, health) = match health {
        Ok(r) if r.status().is_success() => (true, "ok".to_owned()),
        Ok(r) => (false, format!("HTTP {}", r.status().as_u16())),
        Err(e) if e.is_timeout() => (false, format!("no answer within {PROBE_TIMEOUT:?}")),
        Err(e) if e.is_connect() => (false, "connection refused".to_owned()),
        Err(_) => (false, "no answer".to_owned()),
    };
    let metrics = metrics.unwrap_or_default();
    let mut messages = BTreeMap::new();
    for line in metrics.lines().filter(|l| l.starts_with(MESSAGES_TOTAL)) {
        if let Some(outcome) = line
            .split("outcome=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        {
            messages
                .entry(outcome.to_owned())
                .or_insert_with(|| metric_sum(&metrics, MESSAGES_TOTAL, &[("outcome", outcome)]));
        }
    }
    WorkerStatus {
        name: endpoint.name,
        service: endpoint.service,
        http: endpoint.http,
        healthy,
        health,
        ready: ready.ok().map(|r| r.status().is_success()),
        messages,
        handler_seconds_sum: metric_sum(&metrics, &format!("{HANDLER_SECONDS}_sum"), &[]),
        handler_seconds_count: metric_sum(&metrics, &format!("{HANDLER_SECONDS}_count"), &[]),
        outbox: OutboxStatus::from_metrics(&metrics),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(name: &str, http: Option<&str>, peer: &str) -> ConnectionInfo {
        let mut props = serde_json::Map::new();
        props.insert("connection_name".into(), name.into());
        if let Some(http) = http {
            props.insert(CLIENT_PROPERTY_HTTP.into(), http.into());
        }
        ConnectionInfo {
            name: format!("{peer}:5000 -> 127.0.0.1:5672"),
            vhost: "/".into(),
            user: "guest".into(),
            peer_host: peer.into(),
            client_properties: props,
        }
    }

    #[test]
    fn workers_are_found_by_their_announced_address_once_each() {
        let found = endpoints(
            &[
                connection(
                    "burrow worker fulfillment@h#1",
                    Some("127.0.0.1:9101"),
                    "127.0.0.1",
                ),
                connection(
                    "burrow worker fulfillment@h#1",
                    Some("127.0.0.1:9101"),
                    "127.0.0.1",
                ),
                connection(
                    "burrow worker analytics@h#2",
                    Some("0.0.0.0:9102"),
                    "10.0.0.5",
                ),
                connection("burrow producer@h#3", None, "127.0.0.1"),
            ],
            &["10.0.0.9:9103".to_owned(), "127.0.0.1:9101".to_owned()],
        );
        let got: Vec<_> = found
            .iter()
            .map(|e| (e.http.as_str(), e.service.as_deref(), e.name.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("10.0.0.5:9102", Some("analytics"), "analytics@h#2"),
                ("10.0.0.9:9103", None, "10.0.0.9:9103"),
                ("127.0.0.1:9101", Some("fulfillment"), "fulfillment@h#1"),
            ]
        );
    }
}
