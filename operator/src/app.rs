//! The operator as a whole: migrations, the pool, and a supervised session that runs the intake
//! consumer and the outbox relay. A lost broker or database connection ends the session; the
//! supervisor starts a new one with backoff, so restarts are survived without a human.

use crate::config::OperatorConfig;
use crate::db::{self, DbPool};
use crate::dead_letter_consumer::{DeadLetterConsumer, dead_letter_loop};
use crate::http::{self, ApiState, PublisherSlot};
use crate::intake::Intake;
use crate::relay::Relay;
use crate::status_events::{StatusRelay, status_relay_loop};
use crate::tracking::Tracker;
use anyhow::Context;
use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, Consumer};
use mailtrail_broker::{Incoming, Publisher, close_connection, connect, declare_topology};
use mailtrail_runtime::supervise;
use mailtrail_shared::topology::Queue;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub struct Operator {
    config: OperatorConfig,
    pool: DbPool,
    listener: std::net::TcpListener,
    broker_ready: Arc<AtomicBool>,
    /// The API's publisher (replays), filled by each broker session.
    api_publisher: PublisherSlot,
}

impl Operator {
    /// Applies migrations (under a lock) and builds the pool.
    pub async fn build(config: OperatorConfig) -> anyhow::Result<Operator> {
        let applied = db::migrate(&config.database_url).await?;
        if !applied.is_empty() {
            tracing::info!(migrations = ?applied, "database migrated");
        }
        let pool = db::build_pool(
            &config.database_url,
            config.database_pool_size,
            config.database_timeout(),
        )?;
        let listener = std::net::TcpListener::bind(config.http_addr).with_context(|| {
            format!(
                "cannot listen on {} (MAILTRAIL_HTTP_ADDR): is another process using it?",
                config.http_addr
            )
        })?;
        Ok(Operator {
            config,
            pool,
            listener,
            broker_ready: Arc::new(AtomicBool::new(false)),
            api_publisher: PublisherSlot::default(),
        })
    }

    pub fn pool(&self) -> &DbPool {
        &self.pool
    }

    /// The port the HTTP API listens on (useful with `MAILTRAIL_HTTP_ADDR=127.0.0.1:0`).
    pub fn http_port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    fn start_http(&self) -> anyhow::Result<actix_web::dev::Server> {
        let state = ApiState {
            pool: self.pool.clone(),
            db_timeout: self.config.database_timeout(),
            broker_ready: self.broker_ready.clone(),
            publisher: self.api_publisher.clone(),
            topology: self.config.topology(),
            broker_user: self.config.broker_user(),
            sessions: self.config.session_settings(),
        };
        let listener = self.listener.try_clone()?;
        let server = actix_web::HttpServer::new(move || {
            actix_web::App::new()
                .app_data(actix_web::web::Data::new(state.clone()))
                .app_data(actix_web::web::PathConfig::default())
                .wrap(actix_web::middleware::ErrorHandlers::new().handler(
                    actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                    http::too_large_as_problem,
                ))
                // Every answer: never sniffed into another type, never framed, no referrer.
                // The page's own answers carry their stricter policy (`crate::page`).
                .wrap(
                    actix_web::middleware::DefaultHeaders::new()
                        .add(("X-Content-Type-Options", "nosniff"))
                        .add(("X-Frame-Options", "DENY"))
                        .add(("Referrer-Policy", "no-referrer")),
                )
                .configure(http::routes)
        })
        .workers(2)
        .disable_signals()
        .shutdown_timeout(5)
        .listen(listener)?
        .run();
        tracing::info!(addr = %self.listener.local_addr()?, "HTTP API listening");
        Ok(server)
    }

    /// Runs until `shutdown` is cancelled; then stops taking work, finishes the batch in hand
    /// (unacked deliveries go back to the queue when the connection closes) and returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // A wrong tenant setting stops the start, not every session after it.
        self.config.tenant_policy()?;
        let server = self.start_http()?;
        let server_handle = server.handle();
        let server_task = tokio::spawn(server);
        let liveness = tokio::spawn(db::liveness_loop(
            self.pool.clone(),
            Duration::from_millis(self.config.database_liveness_ms.max(100)),
            self.config.database_timeout(),
            shutdown.clone(),
        ));
        let expiry = tokio::spawn(crate::pending::expiry_loop(
            self.pool.clone(),
            self.config.pending_event_ttl_hours,
            self.config.database_timeout(),
            shutdown.clone(),
        ));
        let policy = self.config.retention_policy();
        let retention = policy.is_enabled().then(|| {
            tokio::spawn(crate::retention::retention_loop(
                self.pool.clone(),
                policy,
                self.config.database_timeout(),
                shutdown.clone(),
            ))
        });
        supervise("operator", &shutdown, || async {
            let result = self.session(&shutdown).await;
            if result.is_err() {
                // A failed session may have left connections waiting on a silent socket.
                db::discard_idle(&self.pool);
            }
            result
        })
        .await;
        tracing::info!("broker session closed; stopping the HTTP API");
        server_handle.stop(true).await;
        let _ = server_task.await;
        let _ = liveness.await;
        let _ = expiry.await;
        if let Some(retention) = retention {
            let _ = retention.await;
        }
        tracing::info!("operator stopped");
        Ok(())
    }

    async fn session(&self, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let topology = self.config.topology();
        let connection = connect(&self.config.broker()).await?;
        let result = async {
            let setup = connection.create_channel().await?;
            declare_topology(&setup, &topology).await?;
            let publisher = Publisher::open(&connection).await?;
            let wake = Arc::new(Notify::new());
            let intake = Intake::new(
                self.pool.clone(),
                publisher.clone(),
                topology.clone(),
                self.config.limits(),
                self.config.database_timeout(),
                wake.clone(),
            )
            .with_policy(self.config.tenant_policy()?);
            let relay = Relay::new(
                self.pool.clone(),
                publisher,
                topology.clone(),
                self.config.relay_batch,
                self.config.database_timeout(),
            )
            .with_fair_share(self.config.fair_share());
            let tracker = Tracker::new(
                self.pool.clone(),
                Publisher::open(&connection).await?,
                topology.clone(),
                self.config.database_timeout(),
            )
            .with_suppression_policy(self.config.suppression_policy())
            .with_relay_wake(wake.clone());
            let status_relay = StatusRelay::new(
                self.pool.clone(),
                if self.config.status_events {
                    Some(Publisher::open(&connection).await?)
                } else {
                    None
                },
                &topology,
                self.config.status_relay_batch,
                self.config.database_timeout(),
            );
            let session_stop = shutdown.child_token();
            // A channel of its own, so an API replay never waits behind the relay's confirms.
            *self.api_publisher.write().await = Some(Publisher::open(&connection).await?);
            self.broker_ready.store(true, Ordering::Relaxed);
            let relay_loop = relay_loop(relay, wake, self.relay_interval(), session_stop.clone());
            let intake_loop = intake_loop(&connection, intake, &self.config, session_stop.clone());
            let tracking_loop =
                tracking_loop(&connection, tracker, &self.config, session_stop.clone());
            let status_loop = status_relay_loop(
                status_relay,
                Duration::from_millis(self.config.status_relay_interval_ms.max(10)),
                session_stop.clone(),
            );
            let dead_letters = async {
                if !self.config.dead_letter_consumer {
                    return Ok(());
                }
                let consumer =
                    DeadLetterConsumer::new(self.pool.clone(), self.config.database_timeout());
                let r = dead_letter_loop(
                    &connection,
                    consumer,
                    &topology,
                    self.config.dead_letter_prefetch,
                    self.config.dead_letter_batch,
                    session_stop.clone(),
                )
                .await;
                session_stop.cancel();
                r
            };
            let gauges = crate::gauges::gauge_loop(
                &connection,
                self.pool.clone(),
                topology.clone(),
                Duration::from_secs(self.config.metrics_interval_secs.max(1)),
                self.config.database_timeout(),
                session_stop.clone(),
            );
            // Whichever loop fails first ends the session (and with it the other loops).
            let result = tokio::try_join!(
                gauges,
                dead_letters,
                async {
                    let r = tracking_loop.await;
                    session_stop.cancel();
                    r
                },
                async {
                    let r = intake_loop.await;
                    session_stop.cancel();
                    r
                },
                async {
                    let r = relay_loop.await;
                    session_stop.cancel();
                    r
                },
                async {
                    let r = status_loop.await;
                    session_stop.cancel();
                    r
                }
            );
            result.map(|_| ())
        }
        .await;
        self.broker_ready.store(false, Ordering::Relaxed);
        *self.api_publisher.write().await = None;
        // Closing the connection hands every unacked delivery back to its queue.
        close_connection(&connection, "operator session ending").await;
        result
    }

    fn relay_interval(&self) -> Duration {
        Duration::from_millis(self.config.relay_interval_ms.max(10))
    }
}

async fn relay_loop(
    relay: Relay,
    wake: Arc<Notify>,
    interval: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        relay.drain().await?;
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = wake.notified() => {}
            _ = tokio::time::sleep(interval) => {}
        }
    }
}

async fn consume(
    connection: &Connection,
    queue: String,
    prefetch: u16,
    tag: &str,
) -> anyhow::Result<(lapin::Channel, Consumer)> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.as_str().into(),
            format!("{tag}-{}", std::process::id()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot consume from {queue:?}"))?;
    Ok((channel, consumer))
}

/// Takes the next delivery, priority queue first; `None` on shutdown.
async fn next_delivery(
    priority: &mut Consumer,
    normal: &mut Consumer,
    stop: &CancellationToken,
) -> anyhow::Result<Option<(lapin::message::Delivery, Queue)>> {
    let (item, queue) = tokio::select! {
        biased;
        _ = stop.cancelled() => return Ok(None),
        item = priority.next() => (item, Queue::MailboxPriority),
        item = normal.next() => (item, Queue::Mailbox),
    };
    match item {
        Some(Ok(delivery)) => Ok(Some((delivery, queue))),
        Some(Err(error)) => Err(error).context("the mailbox consumer failed"),
        None => anyhow::bail!("the broker cancelled the mailbox consumer (queue deleted?)"),
    }
}

/// A delivery that is ready now, priority queue first, without waiting.
fn ready_delivery(
    priority: &mut Consumer,
    normal: &mut Consumer,
) -> anyhow::Result<Option<(lapin::message::Delivery, Queue)>> {
    for (consumer, queue) in [(priority, Queue::MailboxPriority), (normal, Queue::Mailbox)] {
        match consumer.next().now_or_never() {
            Some(Some(Ok(delivery))) => return Ok(Some((delivery, queue))),
            Some(Some(Err(error))) => return Err(error).context("the mailbox consumer failed"),
            Some(None) => anyhow::bail!("the broker cancelled the mailbox consumer"),
            None => {}
        }
    }
    Ok(None)
}

async fn intake_loop(
    connection: &Connection,
    intake: Intake,
    config: &OperatorConfig,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let topology = config.topology();
    // Both consumers share one channel and its prefetch, so a flood of normal mail cannot fill
    // the operator's buffer while urgent mail waits on the broker.
    let (channel, mut priority) = consume(
        connection,
        topology.queue(Queue::MailboxPriority),
        config.intake_prefetch,
        "intake-priority",
    )
    .await?;
    let mut normal = channel
        .basic_consume(
            topology.queue(Queue::Mailbox).as_str().into(),
            format!("intake-{}", std::process::id()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("cannot consume from the mailbox queue")?;
    tracing::info!(
        mailbox = %topology.queue(Queue::Mailbox),
        priority = %topology.queue(Queue::MailboxPriority),
        "intake consuming"
    );

    while let Some(first) = next_delivery(&mut priority, &mut normal, &stop).await? {
        let mut deliveries = vec![first];
        while deliveries.len() < config.intake_batch.max(1) {
            match ready_delivery(&mut priority, &mut normal)? {
                Some(delivery) => deliveries.push(delivery),
                None => break,
            }
        }
        let batch: Vec<Incoming> = deliveries
            .iter()
            .map(|(delivery, queue)| Incoming {
                body: delivery.data.clone(),
                properties: delivery.properties.clone(),
                queue: *queue,
                queue_name: topology.queue(*queue),
                redelivered: delivery.redelivered,
            })
            .collect();
        // On error nothing is acked: the session ends and closing the connection requeues.
        intake.handle(&batch).await?;
        for (delivery, _) in deliveries {
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .context("cannot ack a mailbox delivery")?;
        }
    }
    Ok(())
}

/// Consumes the tracking queue in batches: each batch recorded in one transaction, then acked.
async fn tracking_loop(
    connection: &Connection,
    tracker: Tracker,
    config: &OperatorConfig,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let topology = config.topology();
    let queue = topology.queue(Queue::Tracking);
    let (_channel, mut consumer) = consume(
        connection,
        queue.clone(),
        config.tracking_prefetch,
        "tracking",
    )
    .await?;
    tracing::info!(%queue, "tracking consuming");
    loop {
        let first = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ok(()),
            item = consumer.next() => item,
        };
        let mut deliveries = vec![tracking_delivery(first)?];
        while deliveries.len() < config.tracking_batch.max(1) {
            match consumer.next().now_or_never() {
                Some(item) => deliveries.push(tracking_delivery(item)?),
                None => break,
            }
        }
        let batch: Vec<Incoming> = deliveries
            .iter()
            .map(|delivery| Incoming {
                body: delivery.data.clone(),
                properties: delivery.properties.clone(),
                queue: Queue::Tracking,
                queue_name: queue.clone(),
                redelivered: delivery.redelivered,
            })
            .collect();
        // On error nothing is acked: the session ends and closing the connection requeues.
        tracker.handle(&batch).await?;
        for delivery in deliveries {
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .context("cannot ack a tracking delivery")?;
        }
    }
}

fn tracking_delivery(
    item: Option<Result<lapin::message::Delivery, lapin::Error>>,
) -> anyhow::Result<lapin::message::Delivery> {
    match item {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(error)) => Err(error).context("the tracking consumer failed"),
        None => anyhow::bail!("the broker cancelled the tracking consumer (queue deleted?)"),
    }
}
