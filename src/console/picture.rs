//! The topology as a picture: every exchange (left) and queue (right) of the topology file,
//! bindings as solid lines from exchange to queue, exchange-to-exchange bindings as arcs on the
//! left from one exchange to the other, each queue's dead-letter exchange as a dashed line
//! back, and everything that drifted from the file drawn in red with its drift lines as a
//! tooltip (bindings the broker has and the file does not want included). The data comes from
//! [`crate::topology::verify`]; this only draws it.

use std::fmt::Write;

use serde::Serialize;

use crate::topology::{DestinationType, Drift, Entity, Topology};

/// One exchange or queue of the picture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NodeView {
    /// Its name.
    pub name: String,
    /// Its type (`topic`, `quorum`…).
    #[serde(rename = "type")]
    pub kind: String,
    /// A queue's `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// How it differs from the file, one line each (empty when it matches).
    pub drift: Vec<String>,
}

/// One binding of the picture.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BindingView {
    /// The exchange.
    pub source: String,
    /// The queue or exchange.
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: DestinationType,
    /// The binding key.
    pub routing_key: String,
    /// How it differs from the file (missing on the broker, or on the broker and not wanted by
    /// the file).
    pub drift: Vec<String>,
}

/// The topology file beside the broker, for the console's Topology tab.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopologyView {
    /// The topology file.
    pub source: String,
    /// Its exchanges.
    pub exchanges: Vec<NodeView>,
    /// Its queues.
    pub queues: Vec<NodeView>,
    /// Its bindings.
    pub bindings: Vec<BindingView>,
    /// Every drift, one line each.
    pub drift: Vec<String>,
}

impl TopologyView {
    /// The entities of `topology`, each with its share of `drift`.
    pub fn new(topology: &Topology, drift: &[Drift], source: &str) -> Self {
        let lines = |entity: &Entity| -> Vec<String> {
            drift
                .iter()
                .filter(|d| &d.entity == entity)
                .map(|d| d.describe(source))
                .collect()
        };
        Self {
            source: source.to_owned(),
            exchanges: topology
                .exchanges
                .iter()
                .map(|e| NodeView {
                    name: e.name.clone(),
                    kind: e.kind.as_str().to_owned(),
                    dead_letter_exchange: None,
                    drift: lines(&Entity::Exchange(e.name.clone())),
                })
                .collect(),
            queues: topology
                .queues
                .iter()
                .map(|q| NodeView {
                    name: q.name.clone(),
                    kind: q.kind.as_str().to_owned(),
                    dead_letter_exchange: topology.dead_letter_exchange(&q.name).map(str::to_owned),
                    drift: lines(&Entity::Queue(q.name.clone())),
                })
                .collect(),
            bindings: topology
                .bindings
                .iter()
                .map(|b| b.entity())
                // Then the broker's bindings that the file does not want, so they are seen.
                .chain(
                    drift
                        .iter()
                        .filter(|d| d.is_extra())
                        .map(|d| d.entity.clone()),
                )
                .filter_map(|entity| {
                    let drift = lines(&entity);
                    let Entity::Binding {
                        source,
                        destination,
                        destination_type,
                        routing_key,
                    } = entity
                    else {
                        return None;
                    };
                    Some(BindingView {
                        source,
                        destination,
                        destination_type,
                        routing_key,
                        drift,
                    })
                })
                .collect(),
            drift: drift.iter().map(|d| d.describe(source)).collect(),
        }
    }
}

const BOX_W: usize = 250;
const BOX_H: usize = 26;
const ROW: usize = 36;
const TOP: usize = 30;
/// Room left of the exchanges for the arcs of exchange-to-exchange bindings.
const LEFT_X: usize = 50;
const RIGHT_X: usize = 520;

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The picture as an SVG document. Drifted entities have the class `drift`.
pub fn topology_svg(view: &TopologyView) -> String {
    let rows = view.exchanges.len().max(view.queues.len());
    let height = TOP + rows * ROW + 10;
    let width = RIGHT_X + BOX_W + 10;
    let y_of = |i: usize| TOP + i * ROW;
    let exchange_row = |name: &str| view.exchanges.iter().position(|e| e.name == name);
    let queue_row = |name: &str| view.queues.iter().position(|q| q.name == name);
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="topology" viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" aria-label="topology">"#
    );
    let _ = write!(
        svg,
        r#"<text x="{LEFT_X}" y="16" class="heading">exchanges</text><text x="{RIGHT_X}" y="16" class="heading">queues</text>"#
    );
    // Lines first, so boxes are drawn over them.
    for b in &view.bindings {
        let Some(from) = exchange_row(&b.source) else {
            continue;
        };
        let mut class = if b.drift.is_empty() {
            "binding".to_owned()
        } else {
            "binding drift".to_owned()
        };
        let mut title = format!("{} → {}", b.source, b.destination);
        if !b.routing_key.is_empty() {
            let _ = write!(title, " ({})", b.routing_key);
        }
        for d in &b.drift {
            let _ = write!(title, "\n{d}");
        }
        let y1 = y_of(from) + BOX_H / 2;
        let path = match b.destination_type {
            DestinationType::Queue => {
                let Some(to) = queue_row(&b.destination) else {
                    continue;
                };
                let (x1, x2, y2) = (LEFT_X + BOX_W, RIGHT_X, y_of(to) + BOX_H / 2);
                let mid = (x1 + x2) / 2;
                format!("M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}")
            }
            // Both ends are exchanges, in the same column: an arc through the margin on their
            // left, ending in an arrowhead at the destination.
            DestinationType::Exchange => {
                let Some(to) = exchange_row(&b.destination) else {
                    continue;
                };
                class.push_str(" exchange-binding");
                let (x, y2) = (LEFT_X, y_of(to) + BOX_H / 2);
                let bulge = LEFT_X - 8;
                let tip = x - 6;
                format!(
                    "M{x},{y1} C{bulge_x},{y1} {bulge_x},{y2} {x},{y2} M{tip},{a} L{x},{y2} L{tip},{b}",
                    bulge_x = x - bulge,
                    a = y2 - 4,
                    b = y2 + 4,
                )
            }
        };
        let _ = write!(
            svg,
            r#"<path class="{class}" d="{path}"><title>{}</title></path>"#,
            escape(&title)
        );
    }
    for (i, q) in view.queues.iter().enumerate() {
        let Some(dlx) = q.dead_letter_exchange.as_deref().and_then(exchange_row) else {
            continue;
        };
        let (x1, y1) = (RIGHT_X, y_of(i) + BOX_H / 2 + 4);
        let (x2, y2) = (LEFT_X + BOX_W, y_of(dlx) + BOX_H / 2 + 4);
        let mid = (x1 + x2) / 2;
        let _ = write!(
            svg,
            r#"<path class="dead-letter" d="M{x1},{y1} C{mid},{y1} {mid},{y2} {x2},{y2}"><title>{} dead-letters to {}</title></path>"#,
            escape(&q.name),
            escape(q.dead_letter_exchange.as_deref().unwrap_or_default())
        );
    }
    let mut node = |x: usize, y: usize, kind: &str, n: &NodeView| {
        let class = if n.drift.is_empty() {
            kind.to_owned()
        } else {
            format!("{kind} drift")
        };
        let mut title = format!("{} ({})", n.name, n.kind);
        for d in &n.drift {
            let _ = write!(title, "\n{d}");
        }
        let _ = write!(
            svg,
            r#"<g class="{class}" data-name="{name}"><title>{title}</title><rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="4"/><text x="{tx}" y="{ty}">{name}</text><text x="{kx}" y="{ty}" class="kind">{kindname}</text></g>"#,
            name = escape(&n.name),
            title = escape(&title),
            tx = x + 8,
            ty = y + 17,
            kx = x + BOX_W - 8,
            kindname = escape(&n.kind),
        );
    };
    for (i, e) in view.exchanges.iter().enumerate() {
        node(LEFT_X, y_of(i), "exchange", e);
    }
    for (i, q) in view.queues.iter().enumerate() {
        node(RIGHT_X, y_of(i), "queue", q);
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drifted_entities_are_drawn_as_drift_and_names_are_escaped() {
        let topology = Topology::parse(include_str!("../../topology/shop.toml")).expect("valid");
        let drift = vec![
            Drift::missing(Entity::Queue("orders.dead".into())),
            Drift::missing(topology.bindings[0].entity()),
        ];
        let view = TopologyView::new(&topology, &drift, "shop.toml");
        assert_eq!(view.drift.len(), 2);
        let dead = view
            .queues
            .iter()
            .find(|q| q.name == "orders.dead")
            .unwrap();
        assert_eq!(dead.drift.len(), 1);
        let svg = topology_svg(&view);
        assert!(
            svg.contains(r#"<g class="queue drift" data-name="orders.dead">"#),
            "{svg}"
        );
        assert!(svg.contains(r#"class="binding drift""#));
        assert!(svg.contains(r#"<g class="queue" data-name="orders.fulfillment">"#));
        assert_eq!(escape("<a&\">"), "&lt;a&amp;&quot;&gt;");
    }

    #[test]
    fn exchange_to_exchange_bindings_and_unwanted_bindings_are_drawn() {
        let topology = Topology::parse(include_str!("../../topology/shop.toml")).expect("valid");
        let e2e = topology
            .bindings
            .iter()
            .find(|b| b.destination_type == DestinationType::Exchange)
            .expect("the shop has an exchange-to-exchange binding")
            .clone();
        let old = Entity::Binding {
            source: "activity".into(),
            destination: "orders.inventory".into(),
            destination_type: DestinationType::Queue,
            routing_key: String::new(),
        };
        let drift = vec![Drift::missing(e2e.entity()), Drift::removed(old)];
        let view = TopologyView::new(&topology, &drift, "shop.toml");
        assert_eq!(view.bindings.len(), topology.bindings.len() + 1);
        let drawn = view
            .bindings
            .iter()
            .find(|b| b.destination == e2e.destination)
            .expect("the exchange-to-exchange binding is in the view");
        assert_eq!(drawn.destination_type, DestinationType::Exchange);
        assert_eq!(drawn.drift.len(), 1);
        let unwanted = view.bindings.last().expect("the removed binding");
        assert!(
            unwanted.drift[0].contains("[[removed_bindings]]"),
            "{unwanted:?}"
        );
        let svg = topology_svg(&view);
        assert!(
            svg.contains(r#"class="binding drift exchange-binding""#),
            "{svg}"
        );
        assert!(svg.contains(
                "activity → orders.inventory\nbinding 'activity' -&gt; 'orders.inventory': still on the broker"
            ), "{svg}");
        let json = serde_json::to_value(&view).expect("json");
        assert!(json["bindings"]
            .as_array()
            .expect("bindings")
            .iter()
            .any(|b| b["destination_type"] == "exchange"));
    }
}
