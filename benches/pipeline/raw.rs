//! The reference: a minimal raw-lapin publisher (a window of pipelined confirms) and consumer
//! (prefetch, manual acks) on separate connections in this process, on a fresh quorum queue.
//! This is what an application written straight against lapin does, with no runtime around it.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};

use crate::latency::{now_ns, read_stamp, stamp, Latencies, HEADER_SENT_NS};
use crate::report::Row;
use burrow::settings::Settings;

/// How the raw consumer acknowledges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckStyle {
    /// One `basic.ack` per delivery, awaited (what lapin's examples do).
    PerMessage,
    /// `basic.ack(multiple=true)` every `k` deliveries, and whenever no delivery is waiting.
    Batched(usize),
    /// No consumer at all: publish only.
    NoConsumer,
}

/// The size of every benchmark message body.
pub const BODY_BYTES: usize = 512;

/// Declares a fresh durable quorum queue named `bench.<what>.<ulid>` and returns its name.
///
/// # Errors
/// The broker refused the declaration.
pub async fn fresh_quorum_queue(channel: &Channel, what: &str) -> anyhow::Result<String> {
    let name = format!("bench.{what}.{}", ulid::Ulid::new());
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await
        .with_context(|| format!("declaring quorum queue {name}"))?;
    Ok(name)
}

/// Runs `messages` through raw lapin and measures them.
///
/// # Errors
/// The broker is unreachable or a channel failed.
pub async fn run(
    settings: &Settings,
    mode: &str,
    messages: u64,
    window: usize,
    prefetch: u16,
    style: AckStyle,
) -> anyhow::Result<Row> {
    let publish_conn = burrow::broker::connect(&settings.amqp, "bench raw publisher").await?;
    let consume_conn = burrow::broker::connect(&settings.amqp, "bench raw consumer").await?;
    let consume_channel = consume_conn.create_channel().await?;
    let queue = fresh_quorum_queue(&consume_channel, mode).await?;

    let consumer = if style == AckStyle::NoConsumer {
        None
    } else {
        consume_channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = consume_channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Some(tokio::spawn(consume(
            consume_channel.clone(),
            consumer,
            messages,
            style,
        )))
    };

    let channel = burrow::publisher::confirm_channel(&publish_conn).await?;
    let body = vec![b'x'; BODY_BYTES];
    let started = Instant::now();
    let mut inflight = FuturesUnordered::new();
    let mut nacked = 0u64;
    for _ in 0..messages {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_headers(stamp(None, HEADER_SENT_NS, now_ns()));
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await?;
        inflight.push(confirm);
        while inflight.len() >= window {
            if let Some(c) = inflight.next().await {
                nacked += u64::from(!matches!(c?, Confirmation::Ack(_)));
            }
        }
    }
    while let Some(c) = inflight.next().await {
        nacked += u64::from(!matches!(c?, Confirmation::Ack(_)));
    }
    let publish_secs = started.elapsed().as_secs_f64();

    let mut row = Row::new(mode, messages);
    row.publish_rate = Some(messages as f64 / publish_secs.max(1e-9));
    if let Some(task) = consumer {
        let deadline = Duration::from_secs(60 + messages / 500);
        let (mut latencies, finished) = tokio::time::timeout(deadline, task)
            .await
            .context("the raw consumer did not receive every message in time")???;
        let e2e = finished.duration_since(started).as_secs_f64();
        row.e2e_rate = Some(messages as f64 / e2e.max(1e-9));
        row.latency = latencies.percentiles();
    }
    row.note = match style {
        AckStyle::PerMessage => format!("raw lapin, W={window} P={prefetch}, 1 ack/msg"),
        AckStyle::Batched(k) => {
            format!("raw lapin, W={window} P={prefetch}, ack multiple every {k} + idle")
        }
        AckStyle::NoConsumer => format!("raw lapin publish only, W={window}"),
    };
    if nacked > 0 {
        row.note.push_str(&format!(", {nacked} NACKED"));
    }
    let _ = publish_conn.close(200, "done".into()).await;
    let _ = consume_conn.close(200, "done".into()).await;
    Ok(row)
}

async fn consume(
    channel: Channel,
    mut consumer: lapin::Consumer,
    messages: u64,
    style: AckStyle,
) -> anyhow::Result<(Latencies, Instant)> {
    let mut latencies = Latencies::with_capacity(usize::try_from(messages).unwrap_or(0));
    let mut pending: Vec<u64> = Vec::new();
    let mut last_tag = 0;
    let mut received = 0u64;
    while received < messages {
        // Batched: when nothing is waiting, settle what was received before blocking.
        let next = match consumer.next().now_or_never() {
            Some(d) => d,
            None => {
                if !pending.is_empty() {
                    ack_up_to(&channel, last_tag, &mut pending, &mut latencies).await?;
                }
                consumer.next().await
            }
        };
        let delivery = next.context("the consumer was cancelled")??;
        received += 1;
        let sent = read_stamp(delivery.properties.headers().as_ref(), HEADER_SENT_NS);
        match style {
            AckStyle::PerMessage => {
                channel
                    .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
                    .await?;
                if let Some(sent) = sent {
                    latencies.record_us(now_ns().saturating_sub(sent) / 1000);
                }
            }
            AckStyle::Batched(k) => {
                last_tag = delivery.delivery_tag;
                pending.push(sent.unwrap_or_else(now_ns));
                if pending.len() >= k {
                    ack_up_to(&channel, last_tag, &mut pending, &mut latencies).await?;
                }
            }
            AckStyle::NoConsumer => unreachable!("no consumer runs without one"),
        }
    }
    if !pending.is_empty() {
        ack_up_to(&channel, last_tag, &mut pending, &mut latencies).await?;
    }
    Ok((latencies, Instant::now()))
}

async fn ack_up_to(
    channel: &Channel,
    tag: u64,
    pending: &mut Vec<u64>,
    latencies: &mut Latencies,
) -> anyhow::Result<()> {
    channel
        .basic_ack(tag, BasicAckOptions { multiple: true })
        .await?;
    let now = now_ns();
    for sent in pending.drain(..) {
        latencies.record_us(now.saturating_sub(sent) / 1000);
    }
    Ok(())
}
