use anyhow::Context;
use lapin::Channel;
use lapin::ExchangeKind;
use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use mailtrail_shared::topology::{Queue, Topology};

/// Declares every queue of the topology and the status events exchange (idempotent). Arguments are only `x-queue-type`, so a
/// later change of limits goes through broker policies, never a `PRECONDITION_FAILED` here.
pub async fn declare_topology(channel: &Channel, topology: &Topology) -> anyhow::Result<()> {
    for spec in topology.queues() {
        let mut arguments = FieldTable::default();
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(spec.queue_type.as_str().into()),
        );
        channel
            .queue_declare(
                spec.name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .with_context(|| {
                format!(
                    "cannot declare queue {:?} as a durable {} queue; if it exists with other \
                     arguments, see docs/amqp.md (\"Changing the topology\")",
                    spec.name, spec.queue_type
                )
            })?;
    }
    let exchange = topology.events_exchange();
    channel
        .exchange_declare(
            exchange.as_str().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot declare the status events exchange {exchange:?}"))?;
    Ok(())
}

/// The number of ready messages and consumers of a queue (passive declare: creates nothing).
pub async fn queue_depth(channel: &Channel, queue: &str) -> anyhow::Result<(u32, u32)> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("queue {queue:?} does not exist"))?;
    Ok((q.message_count(), q.consumer_count()))
}

/// Declares the delay queue (retry tier) of `work_queue` for `delay_secs` and returns its name:
/// messages published to it wait `delay_secs` (queue-level TTL, so they expire in order) and are
/// then dead-lettered by the broker back to `work_queue`. Always a quorum queue with
/// at-least-once dead-lettering, whatever the work queues' type: a classic queue's
/// dead-lettering is not confirmed, and a waiting job could be lost in a broker crash
/// (docs/amqp.md).
pub async fn declare_retry_queue(
    channel: &Channel,
    topology: &Topology,
    work_queue: Queue,
    delay_secs: u32,
) -> anyhow::Result<String> {
    let name = topology.retry_queue(work_queue, delay_secs);
    let mut arguments = FieldTable::default();
    let mut put = |key: &str, value: AMQPValue| {
        arguments.insert(key.into(), value);
    };
    put("x-queue-type", AMQPValue::LongString("quorum".into()));
    put(
        "x-message-ttl",
        AMQPValue::LongLongInt(i64::from(delay_secs) * 1000),
    );
    put("x-dead-letter-exchange", AMQPValue::LongString("".into()));
    put(
        "x-dead-letter-routing-key",
        AMQPValue::LongString(topology.queue(work_queue).into()),
    );
    put(
        "x-dead-letter-strategy",
        AMQPValue::LongString("at-least-once".into()),
    );
    put("x-overflow", AMQPValue::LongString("reject-publish".into()));
    channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .with_context(|| format!("cannot declare the retry queue {name:?}"))?;
    Ok(name)
}
