use anyhow::Context;
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};
use mailtrail_shared::topology::Topology;

/// Declares every queue of the topology (idempotent). Arguments are only `x-queue-type`, so a
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
