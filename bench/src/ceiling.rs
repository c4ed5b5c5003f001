//! The broker ceiling: the same number of persistent, confirmed hops as mailtrail makes
//! (mailbox → dispatching → tracking), through RabbitMQ with no work in between. The first queue
//! is pre-loaded (as the mailbox is in the closed loop); two stages consume and republish with
//! many confirms in flight, acking after the confirms; a third consumes and acks.

use crate::stats::{CpuSpent, read_cpu};
use anyhow::Context;
use futures_util::StreamExt;
use futures_util::future::FutureExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use mailtrail_broker::{OutgoingMessage, Publisher};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct CeilingResult {
    pub messages: usize,
    pub seconds: f64,
    pub cpu: CpuSpent,
}

impl CeilingResult {
    pub fn rate(&self) -> f64 {
        self.messages as f64 / self.seconds
    }
}

pub async fn declare_queue(channel: &Channel, name: &str, queue_type: &str) -> anyhow::Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(queue_type.into()),
    );
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .with_context(|| format!("cannot declare {name}"))?;
    Ok(())
}

pub async fn connect(url: &str) -> anyhow::Result<Connection> {
    Connection::connect(url, ConnectionProperties::default())
        .await
        .context("cannot connect to RabbitMQ")
}

/// Publishes `messages` to `queue` with confirms, `chunk` in flight at a time.
pub async fn preload(
    publisher: &Publisher,
    queue: &str,
    messages: impl Iterator<Item = (Vec<u8>, BasicProperties)>,
) -> anyhow::Result<()> {
    let mut chunk = Vec::with_capacity(1000);
    for (body, properties) in messages {
        chunk.push(OutgoingMessage {
            routing_key: queue.to_owned(),
            body,
            properties,
        });
        if chunk.len() == 1000 {
            publisher.publish_all(&chunk).await?;
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        publisher.publish_all(&chunk).await?;
    }
    Ok(())
}

/// One stage: consume `from`, republish each message to `to` (if any) with confirms in flight,
/// then ack the batch; counts what it acked.
async fn stage(
    connection: Arc<Connection>,
    from: String,
    to: Option<String>,
    prefetch: u16,
    batch: usize,
    done: Arc<AtomicUsize>,
    total: usize,
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let publisher = Publisher::open(&connection).await?;
    let mut consumer = channel
        .basic_consume(
            from.as_str().into(),
            "ceiling".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut acked = 0;
    while acked < total {
        let first = consumer.next().await.context("consumer ended")??;
        let mut deliveries = vec![first];
        while deliveries.len() < batch {
            match consumer.next().now_or_never() {
                Some(Some(delivery)) => deliveries.push(delivery?),
                _ => break,
            }
        }
        if let Some(to) = &to {
            let out: Vec<OutgoingMessage> = deliveries
                .iter()
                .map(|d| OutgoingMessage {
                    routing_key: to.clone(),
                    body: d.data.clone(),
                    properties: d.properties.clone(),
                })
                .collect();
            publisher.publish_all(&out).await?;
        }
        let last = deliveries.last().context("a batch is never empty")?;
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
        acked += deliveries.len();
        done.fetch_add(deliveries.len(), Ordering::Relaxed);
    }
    Ok(())
}

pub async fn run(
    amqp_url: &str,
    prefix: &str,
    queue_type: &str,
    messages: usize,
    body_bytes: usize,
    prefetch: u16,
    batch: usize,
) -> anyhow::Result<CeilingResult> {
    let setup = connect(amqp_url).await?;
    let channel = setup.create_channel().await?;
    let queues: Vec<String> = (0..3).map(|i| format!("{prefix}ceiling-{i}")).collect();
    for queue in &queues {
        declare_queue(&channel, queue, queue_type).await?;
    }
    let publisher = Publisher::open(&setup).await?;
    let body = vec![b'x'; body_bytes];
    preload(
        &publisher,
        &queues[0],
        (0..messages).map(|n| {
            (
                body.clone(),
                mailtrail_broker::json_properties(&n.to_string(), FieldTable::default()),
            )
        }),
    )
    .await?;

    // Each stage on a connection of its own, as each service has its own.
    let done = Arc::new(AtomicUsize::new(0));
    let before = read_cpu(&[]);
    let started = Instant::now();
    let mut stages = tokio::task::JoinSet::new();
    for i in 0..3 {
        let connection = Arc::new(connect(amqp_url).await?);
        let to = queues.get(i + 1).cloned();
        let counter = if i == 2 {
            done.clone()
        } else {
            Arc::new(AtomicUsize::new(0))
        };
        stages.spawn(stage(
            connection,
            queues[i].clone(),
            to,
            prefetch,
            batch,
            counter,
            messages,
        ));
    }
    while let Some(joined) = tokio::time::timeout(Duration::from_secs(3600), stages.join_next())
        .await
        .context("the ceiling run took over an hour")?
    {
        joined??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = CpuSpent::between(&before, &read_cpu(&[]));
    for queue in &queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = setup.close(200, "done".into()).await;
    Ok(CeilingResult {
        messages: done.load(Ordering::Relaxed),
        seconds,
        cpu,
    })
}
