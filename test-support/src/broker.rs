//! A queue prefix per test on the shared RabbitMQ, cleaned up on drop.

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Connection, ConnectionProperties};
use mailtrail_shared::topology::{Queue, QueueType, Topology};
use std::sync::Mutex;
use std::time::Duration;

/// The RabbitMQ the tests use: `MAILTRAIL_TEST_AMQP_URL` or
/// `amqp://guest:guest@127.0.0.1:5672/%2f`.
pub fn amqp_url() -> String {
    std::env::var("MAILTRAIL_TEST_AMQP_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A unique queue prefix (`mttest-<random>.`) for one test. On drop, every queue of its topology
/// and every name given to [`TestBroker::register_queue`] is deleted. Queues a crashed test leaves
/// behind expire through the `mttest-expiry` policy `scripts/test.sh` sets.
#[derive(Debug)]
pub struct TestBroker {
    prefix: String,
    extra_queues: Mutex<Vec<String>>,
}

impl Default for TestBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl TestBroker {
    pub fn new() -> TestBroker {
        TestBroker {
            prefix: format!("mttest-{:016x}.", rand::random::<u64>()),
            extra_queues: Mutex::new(Vec::new()),
        }
    }

    /// The queue prefix, ending in `.`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The classic-queue topology under this prefix.
    pub fn topology(&self) -> Topology {
        Topology::new(self.prefix.clone(), QueueType::Classic)
    }

    /// `prefix + suffix`, registered for deletion on drop.
    pub fn queue_name(&self, suffix: &str) -> String {
        let name = format!("{}{suffix}", self.prefix);
        self.register_queue(&name);
        name
    }

    /// Deletes `name` too when this value is dropped.
    pub fn register_queue(&self, name: impl Into<String>) {
        let name = name.into();
        let mut extra = self
            .extra_queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !extra.contains(&name) {
            extra.push(name);
        }
    }

    /// The AMQP URL services under test should use.
    pub fn url(&self) -> String {
        amqp_url()
    }

    /// A new connection to the test broker. Panics with a helpful message when it is not there.
    pub async fn connect(&self) -> Connection {
        match Connection::connect(&amqp_url(), ConnectionProperties::default()).await {
            Ok(c) => c,
            Err(e) => panic!(
                "cannot connect to RabbitMQ at {} (set MAILTRAIL_TEST_AMQP_URL, or run \
                 scripts/ensure-services.sh): {e}",
                mailtrail_broker::redact(&amqp_url())
            ),
        }
    }

    /// Every queue name this value deletes on drop.
    pub fn queues_to_delete(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .topology()
            .queues()
            .into_iter()
            .map(|q| q.name)
            .collect();
        // The dispatcher's delay queues (retry tiers) for the delays tests use and the defaults:
        // quorum queues, which must not pile up on the shared broker.
        let topology = self.topology();
        for queue in [Queue::Dispatching, Queue::DispatchingPriority] {
            for delay in [1, 2, 3, 4, 5, 30, 120, 600, 3600, 14_400, 43_200] {
                names.push(topology.retry_queue(queue, delay));
            }
        }
        let extra = self
            .extra_queues
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for name in extra.iter() {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let names = self.queues_to_delete();
        let exchange = self.topology().events_exchange();
        let prefix = self.prefix.clone();
        let result = crate::run_detached(Duration::from_secs(30), async move {
            delete_queues(&names, &exchange).await
        });
        if let Err(e) = result {
            eprintln!("test-support: could not delete the queues of {prefix}*: {e:#}");
        }
    }
}

/// Deletes the queues (unconditionally: with messages and consumers), then the status events
/// exchange. A failed delete closes the channel, so each failure opens a new one and the rest
/// are still tried.
async fn delete_queues(names: &[String], exchange: &str) -> anyhow::Result<()> {
    let conn = Connection::connect(&amqp_url(), ConnectionProperties::default()).await?;
    let mut channel = conn.create_channel().await?;
    let mut failures = Vec::new();
    for name in names {
        if let Err(e) = channel
            .queue_delete(name.as_str().into(), QueueDeleteOptions::default())
            .await
        {
            failures.push(format!("{name}: {e}"));
            channel = conn.create_channel().await?;
        }
    }
    if let Err(e) = channel
        .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
        .await
    {
        failures.push(format!("exchange {exchange}: {e}"));
    }
    let _ = conn.close(200, "test done".into()).await;
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", failures.join("; "))
    }
}

/// Publishes `body` (persistent) to `queue` through the default exchange and waits for the
/// broker's confirm.
pub async fn publish_confirmed(connection: &Connection, queue: &str, body: &[u8]) {
    use lapin::BasicProperties;
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirmed");
}

/// Everything on `queue` now, taken off it.
pub async fn take_all(
    connection: &Connection,
    queue: &str,
) -> Vec<lapin::message::BasicGetMessage> {
    use lapin::options::BasicGetOptions;
    let channel = connection.create_channel().await.expect("channel");
    let mut taken = Vec::new();
    while let Some(message) = channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        taken.push(message);
    }
    taken
}
