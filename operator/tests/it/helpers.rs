use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use mailtrail_broker::{Incoming, Publisher, declare_topology, header_string};
use mailtrail_operator::db::{DbPool, build_pool};
use mailtrail_operator::intake::Intake;
use mailtrail_operator::relay::Relay;
use mailtrail_operator::{Operator, OperatorConfig};
use mailtrail_shared::dispatch::DispatchJob;
use mailtrail_shared::topology::Queue;
use mailtrail_test_support::{TestBroker, TestDb, amqp_url};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// One test's private world: its own database and queue prefix.
pub struct World {
    pub db: TestDb,
    pub broker: TestBroker,
    pub config: OperatorConfig,
    pub connection: Connection,
    pub channel: Channel,
}

impl World {
    pub async fn new() -> World {
        mailtrail_test_support::init_tracing();
        let db = TestDb::new().await;
        let broker = TestBroker::new();
        let mut config = OperatorConfig::from_env();
        config.database_url = db.url().to_owned();
        config.broker.amqp_url = amqp_url();
        config.broker.queue_prefix = broker.prefix().to_owned();
        config.relay_interval_ms = 200;
        let connection = broker.connect().await;
        let channel = connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm mode");
        declare_topology(&channel, &config.topology())
            .await
            .expect("topology");
        World {
            db,
            broker,
            config,
            connection,
            channel,
        }
    }

    pub fn queue(&self, queue: Queue) -> String {
        self.config.topology().queue(queue)
    }

    pub fn pool(&self) -> DbPool {
        build_pool(self.db.url(), 4, Duration::from_secs(5)).expect("pool")
    }

    /// The intake and relay steps, driven by the test without the consume loop.
    pub async fn steps(&self) -> (Intake, Relay) {
        let publisher = Publisher::open(&self.connection).await.expect("publisher");
        let pool = self.pool();
        let topology = self.config.topology();
        let intake = Intake::new(
            pool.clone(),
            publisher.clone(),
            topology.clone(),
            self.config.limits(),
            Duration::from_secs(5),
            Arc::new(Notify::new()),
        );
        let relay = Relay::new(pool, publisher, topology, 50, Duration::from_secs(5));
        (intake, relay)
    }

    /// Runs the operator in-process until the returned token is cancelled.
    pub async fn start_operator(&self) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let (stop, handle, _port) = self.start_operator_with_port().await;
        (stop, handle)
    }

    /// Like `start_operator`, also giving the port its HTTP API listens on.
    pub async fn start_operator_with_port(
        &self,
    ) -> (CancellationToken, tokio::task::JoinHandle<()>, u16) {
        let mut config = self.config.clone();
        config.http_addr = "127.0.0.1:0".parse().expect("an address");
        let operator = Operator::build(config).await.expect("operator");
        let port = operator.http_port();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let handle = tokio::spawn(async move {
            operator
                .run_until_stopped(token)
                .await
                .expect("operator run");
        });
        (stop, handle, port)
    }

    /// The environment for running the operator binary in this world.
    pub fn operator_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MAILTRAIL_DATABASE_URL", self.db.url().to_owned()),
            ("MAILTRAIL_AMQP_URL", amqp_url()),
            ("MAILTRAIL_QUEUE_PREFIX", self.broker.prefix().to_owned()),
            ("MAILTRAIL_RELAY_INTERVAL_MS", "200".to_owned()),
            ("MAILTRAIL_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ]
    }

    /// Publishes a mailbox message with a confirm, as an app would.
    pub async fn publish(&self, queue: Queue, body: &[u8], message_id: Option<&str>) {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into());
        if let Some(id) = message_id {
            properties = properties.with_message_id(id.into());
        }
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                self.queue(queue).as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack(), "the broker did not take the message");
    }

    /// Takes every message now waiting in a queue (acking them).
    pub async fn drain_queue(&self, queue: Queue) -> Vec<lapin::message::BasicGetMessage> {
        let mut messages = Vec::new();
        while let Some(message) = self
            .channel
            .basic_get(
                self.queue(queue).as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .expect("basic.get")
        {
            messages.push(message);
        }
        messages
    }

    pub async fn dispatch_jobs(&self, queue: Queue) -> Vec<DispatchJob> {
        self.drain_queue(queue)
            .await
            .into_iter()
            .map(|m| serde_json::from_slice(&m.delivery.data).expect("a dispatch job"))
            .collect()
    }

    /// Rows of `SELECT` through a plain client, for assertions.
    pub async fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let (client, connection) = tokio_postgres::connect(self.db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client.query(sql, &[]).await.expect(sql)
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.query(sql).await[0].get::<_, i64>(0)
    }
}

/// A mailbox message as the intake step receives it.
pub fn incoming(world: &World, queue: Queue, body: &str, message_id: Option<&str>) -> Incoming {
    let mut properties = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into());
    if let Some(id) = message_id {
        properties = properties.with_message_id(id.into());
    }
    Incoming {
        body: body.as_bytes().to_vec(),
        properties,
        queue,
        queue_name: world.queue(queue),
        redelivered: false,
    }
}

/// The reason header of a set-aside message.
pub fn reason_of(message: &lapin::message::BasicGetMessage) -> Option<String> {
    header_string(
        &message.delivery.properties,
        mailtrail_shared::headers::REASON,
    )
}

pub use mailtrail_test_support::http_get;

/// An email's event types in history order (`docs/history.md`), comma-separated; empty when it
/// has none.
pub async fn timeline(world: &World, email: uuid::Uuid) -> String {
    world
        .query(&format!(
            "SELECT coalesce(string_agg(event_type, ',' ORDER BY occurred_at, lifecycle_rank, seq),
                             '')
               FROM events WHERE email_id = '{email}'"
        ))
        .await[0]
        .get::<_, String>(0)
}

/// Waits until the operator's HTTP API on `port` answers.
pub async fn api_ready(port: u16) {
    // `try_http_get`: a process still starting refuses connections, which is not a failure.
    mailtrail_test_support::eventually("the API answers", Duration::from_secs(30), || async {
        (mailtrail_test_support::try_http_get(port, "/healthz", None)
            .await
            .ok()?
            .0
            == 200)
            .then_some(())
    })
    .await;
}
