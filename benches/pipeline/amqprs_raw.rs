//! The other async Rust client, `amqprs`, doing the baseline-tuned work (a dependency of this
//! benchmark only, never of the product): a publisher with a confirm window and a consumer
//! acking with `multiple=true` every 64 deliveries and whenever nothing is waiting, on separate
//! connections in this process, on a fresh quorum queue, 512-byte persistent messages. The
//! reference that shows what a client without lapin's I/O thread costs on this machine.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use amqprs::callbacks::{ChannelCallback, DefaultConnectionCallback};
use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicPublishArguments, BasicQosArguments, Channel,
    ConfirmSelectArguments, QueueDeclareArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::error::Error as AmqprsError;
use amqprs::{Ack, BasicProperties, Cancel, CloseChannel, FieldTable, Nack, Return};

type Result<T> = std::result::Result<T, AmqprsError>;
use anyhow::Context;
use tokio::sync::Semaphore;

use crate::raw::BODY_BYTES;
use crate::report::Row;
use burrow::settings::Settings;

/// Host, port, user, password and vhost of the broker URL.
fn open_arguments(settings: &Settings) -> anyhow::Result<OpenConnectionArguments> {
    let amqp = &settings.amqp.url;
    let url = url::Url::parse(amqp.expose()).context("parsing the AMQP URL")?;
    let mut args = OpenConnectionArguments::new(
        url.host_str().unwrap_or("localhost"),
        url.port().unwrap_or(5672),
        &amqp.username().unwrap_or_else(|| "guest".to_owned()),
        &amqp.password().unwrap_or_else(|| "guest".to_owned()),
    );
    args.virtual_host(&amqp.vhost());
    Ok(args)
}

/// The confirms not yet received (delivery tags of this channel), and the nacks seen.
#[derive(Default)]
struct Unconfirmed {
    tags: BTreeSet<u64>,
    nacked: u64,
}

/// Counts confirms and gives their window slots back.
struct Confirms {
    unconfirmed: Arc<Mutex<Unconfirmed>>,
    window: Arc<Semaphore>,
}

impl Confirms {
    fn settle(&self, tag: u64, multiple: bool, nack: bool) {
        let mut u = self
            .unconfirmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let settled = if multiple {
            let rest = u.tags.split_off(&(tag + 1));
            let n = u.tags.len();
            u.tags = rest;
            n
        } else {
            usize::from(u.tags.remove(&tag))
        };
        if nack {
            u.nacked += settled as u64;
        }
        self.window.add_permits(settled);
    }
}

#[async_trait::async_trait]
impl ChannelCallback for Confirms {
    async fn close(&mut self, _: &Channel, _: CloseChannel) -> Result<()> {
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<()> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        self.settle(ack.delivery_tag(), ack.mutiple(), false);
    }
    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        self.settle(nack.delivery_tag(), nack.multiple(), true);
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

/// Runs `messages` through amqprs, acking every `ack_every` deliveries and when idle.
///
/// # Errors
/// The broker is unreachable or a channel failed.
pub async fn run(
    settings: &Settings,
    mode: &str,
    messages: u64,
    window: usize,
    prefetch: u16,
    ack_every: usize,
) -> anyhow::Result<Row> {
    let args = open_arguments(settings)?;
    let publish_conn = Connection::open(&args)
        .await
        .context("amqprs: connecting")?;
    publish_conn
        .register_callback(DefaultConnectionCallback)
        .await?;
    let consume_conn = Connection::open(&args)
        .await
        .context("amqprs: connecting")?;
    consume_conn
        .register_callback(DefaultConnectionCallback)
        .await?;

    let consume_channel = consume_conn.open_channel(None).await?;
    let queue = format!("bench.{mode}.{}", ulid::Ulid::new());
    let mut queue_args = FieldTable::new();
    queue_args.insert(
        "x-queue-type"
            .try_into()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        "quorum".into(),
    );
    consume_channel
        .queue_declare(
            QueueDeclareArguments::new(&queue)
                .durable(true)
                .arguments(queue_args)
                .finish(),
        )
        .await
        .with_context(|| format!("declaring quorum queue {queue}"))?;
    consume_channel
        .basic_qos(BasicQosArguments::new(0, prefetch, false))
        .await?;
    let mut consume = BasicConsumeArguments::new(&queue, "");
    consume.manual_ack(true);
    let (_tag, mut deliveries) = consume_channel.basic_consume_rx(consume.finish()).await?;
    let consumer = tokio::spawn({
        let channel = consume_channel.clone();
        async move {
            let mut received = 0u64;
            let mut pending = 0usize;
            let mut last_tag = 0u64;
            while received < messages {
                let next = match deliveries.try_recv() {
                    Ok(m) => Some(m),
                    Err(_) => {
                        if pending > 0 {
                            channel
                                .basic_ack(BasicAckArguments::new(last_tag, true))
                                .await?;
                            pending = 0;
                        }
                        deliveries.recv().await
                    }
                };
                let message = next.context("the amqprs consumer was cancelled")?;
                let Some(deliver) = message.deliver else {
                    continue;
                };
                received += 1;
                last_tag = deliver.delivery_tag();
                pending += 1;
                if pending >= ack_every {
                    channel
                        .basic_ack(BasicAckArguments::new(last_tag, true))
                        .await?;
                    pending = 0;
                }
            }
            if pending > 0 {
                channel
                    .basic_ack(BasicAckArguments::new(last_tag, true))
                    .await?;
            }
            anyhow::Ok(Instant::now())
        }
    });

    let channel = publish_conn.open_channel(None).await?;
    let unconfirmed = Arc::new(Mutex::new(Unconfirmed::default()));
    let slots = Arc::new(Semaphore::new(window));
    channel
        .register_callback(Confirms {
            unconfirmed: unconfirmed.clone(),
            window: slots.clone(),
        })
        .await?;
    channel
        .confirm_select(ConfirmSelectArguments::default())
        .await?;
    let body = vec![b'x'; BODY_BYTES];
    let publish = BasicPublishArguments::new("", &queue);
    let started = Instant::now();
    for tag in 1..=messages {
        slots.acquire().await?.forget();
        unconfirmed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .tags
            .insert(tag);
        let props = BasicProperties::default().with_persistence(true).finish();
        channel
            .basic_publish(props, body.clone(), publish.clone())
            .await?;
    }
    let all = u32::try_from(window).unwrap_or(u32::MAX);
    drop(slots.acquire_many(all).await?);
    let publish_secs = started.elapsed().as_secs_f64();
    let nacked = unconfirmed
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .nacked;

    let deadline = Duration::from_secs(60 + messages / 500);
    let finished = tokio::time::timeout(deadline, consumer)
        .await
        .context("the amqprs consumer did not receive every message in time")???;
    let mut row = Row::new(mode, messages);
    row.publish_rate = Some(messages as f64 / publish_secs.max(1e-9));
    row.e2e_rate = Some(messages as f64 / finished.duration_since(started).as_secs_f64().max(1e-9));
    row.note = format!(
        "raw amqprs, W={window} P={prefetch}, ack multiple every {ack_every} + idle (no latency stamps)"
    );
    if nacked > 0 {
        row.note.push_str(&format!(", {nacked} NACKED"));
    }
    let _ = channel.close().await;
    let _ = consume_channel.close().await;
    let _ = publish_conn.close().await;
    let _ = consume_conn.close().await;
    Ok(row)
}
