//! The dispatcher process: health endpoints, and a supervised broker session that consumes both
//! dispatching queues (urgent first) with many jobs in flight, reconnecting with backoff.

use crate::config::DispatcherConfig;
use crate::memory::JobMemory;
use crate::providers::Provider;
use crate::providers::smtp::SmtpProvider;
use crate::routing::{Router, parse_tenant_providers};
use crate::smtp::SmtpSender;
use crate::worker::{Dispatcher, RetryPolicy};
use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use mailtrail_broker::{
    CONFIRM_TIMEOUT, Incoming, Publisher, close_connection, connect, declare_retry_queue,
    declare_topology,
};
use mailtrail_runtime::{Readiness, serve_health, supervise};
use mailtrail_shared::topology::Queue;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// How long an ack may go unanswered before the connection is presumed lost.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

pub struct DispatcherApp {
    config: DispatcherConfig,
    router: Arc<Router>,
    memory: Arc<JobMemory>,
    listener: std::net::TcpListener,
}

impl DispatcherApp {
    pub async fn build(config: DispatcherConfig) -> anyhow::Result<DispatcherApp> {
        let mut built: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        let tenant_providers = parse_tenant_providers(&config.tenant_providers)?;
        for name in std::iter::once(&config.provider).chain(tenant_providers.iter().map(|t| &t.1)) {
            if !built.contains_key(name) {
                built.insert(name.clone(), build_provider(name, &config).await?);
            }
        }
        let mut router = Router::new(built[&config.provider].clone());
        for (tenant, name) in &tenant_providers {
            router = router.with_tenant(tenant, built[name].clone());
        }
        let listener = mailtrail_runtime::bind_http(config.http_addr)?;
        Ok(DispatcherApp {
            memory: Arc::new(JobMemory::new(
                config.outcome_memory,
                Duration::from_secs(config.outcome_memory_secs),
            )),
            router: Arc::new(router),
            config,
            listener,
        })
    }

    pub fn http_port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// Runs until `stop`; then stops taking jobs, finishes the ones in hand and returns.
    pub async fn run_until_stopped(self, stop: CancellationToken) -> anyhow::Result<()> {
        let mut readiness = Readiness::default();
        let broker_ready = readiness.track("broker");
        // Each provider in use is a dependency too: down while it refuses us.
        let provider_up: HashMap<&'static str, Arc<AtomicBool>> = self
            .router
            .providers()
            .iter()
            .map(|p| {
                let flag = readiness.track(p.name());
                flag.store(true, Ordering::Relaxed);
                (p.name(), flag)
            })
            .collect();
        let provider_up = Arc::new(provider_up);
        let server = serve_health(self.listener.try_clone()?, readiness)?;
        let server_handle = server.handle();
        let server_task = tokio::spawn(server);
        supervise("dispatcher", &stop, || async {
            let result = self.session(&stop, &broker_ready, &provider_up).await;
            broker_ready.store(false, Ordering::Relaxed);
            result
        })
        .await;
        server_handle.stop(true).await;
        let _ = server_task.await;
        tracing::info!("dispatcher stopped");
        Ok(())
    }

    async fn session(
        &self,
        stop: &CancellationToken,
        broker_ready: &Arc<AtomicBool>,
        provider_up: &Arc<HashMap<&'static str, Arc<AtomicBool>>>,
    ) -> anyhow::Result<()> {
        let topology = self.config.broker.topology();
        let connection = connect(&self.config.broker.settings("dispatcher")).await?;
        let result = async {
            let setup = connection.create_channel().await?;
            declare_topology(&setup, &topology).await?;
            for queue in [Queue::Dispatching, Queue::DispatchingPriority] {
                for delay in self.config.retry_schedule.delays() {
                    declare_retry_queue(&setup, &topology, queue, delay).await?;
                }
            }
            let dispatcher = Arc::new(Dispatcher {
                router: self.router.clone(),
                publisher: Publisher::open(&connection).await?,
                topology: topology.clone(),
                memory: self.memory.clone(),
                retry: RetryPolicy {
                    schedule: self.config.retry_schedule.clone(),
                    max_attempts: self.config.max_attempts,
                    max_age: self.config.retry_max_age,
                },
                provider_up: provider_up.clone(),
            });
            // Both consumers share one channel and its prefetch: the concurrency bound.
            let channel = connection.create_channel().await?;
            channel
                .basic_qos(self.config.concurrency.max(1), BasicQosOptions::default())
                .await?;
            let mut priority =
                consume(&channel, &topology.queue(Queue::DispatchingPriority)).await?;
            let mut normal = consume(&channel, &topology.queue(Queue::Dispatching)).await?;
            broker_ready.store(true, Ordering::Relaxed);
            tracing::info!(
                provider = %self.config.provider,
                concurrency = self.config.concurrency,
                "dispatcher consuming"
            );
            let mut in_hand: JoinSet<anyhow::Result<()>> = JoinSet::new();
            let outcome = loop {
                let next = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break Ok(()),
                    Some(joined) = in_hand.join_next(), if !in_hand.is_empty() => {
                        match joined.context("a dispatch task panicked").and_then(|r| r) {
                            Ok(()) => continue,
                            Err(error) => break Err(error),
                        }
                    }
                    item = priority.next() => (item, Queue::DispatchingPriority),
                    item = normal.next() => (item, Queue::Dispatching),
                };
                let delivery = match next.0 {
                    Some(Ok(delivery)) => delivery,
                    Some(Err(error)) => {
                        break Err(error).context("the dispatching consumer failed");
                    }
                    None => {
                        break Err(anyhow::anyhow!(
                            "the broker cancelled a dispatching consumer"
                        ));
                    }
                };
                let incoming = Incoming {
                    body: delivery.data.clone(),
                    properties: delivery.properties.clone(),
                    queue: next.1,
                    queue_name: topology.queue(next.1),
                    redelivered: delivery.redelivered,
                };
                let dispatcher = dispatcher.clone();
                in_hand.spawn(async move {
                    dispatcher.handle(&incoming).await?;
                    tokio::time::timeout(
                        ACK_TIMEOUT,
                        delivery.acker.ack(BasicAckOptions::default()),
                    )
                    .await
                    .context("no answer to an ack; the connection is presumed lost")?
                    .context("cannot ack a dispatch job")?;
                    Ok(())
                });
            };
            // Stop taking jobs, then finish the ones in hand (their acks still count).
            for consumer in [&priority, &normal] {
                let _ = channel
                    .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                    .await;
            }
            if !in_hand.is_empty() {
                tracing::info!(jobs = in_hand.len(), "finishing the jobs in hand");
            }
            let mut first_error = outcome.err();
            // Sends are bounded by the SMTP timeout and reports by the confirm timeout; past
            // both, whatever is left is abandoned (unacked, so it is redelivered).
            let drain_limit = self.config.smtp_timeout() * 2 + CONFIRM_TIMEOUT + ACK_TIMEOUT;
            let drained = tokio::time::timeout(drain_limit, async {
                while let Some(joined) = in_hand.join_next().await {
                    if let Err(error) = joined.context("a dispatch task panicked").and_then(|r| r) {
                        first_error.get_or_insert(error);
                    }
                }
            })
            .await;
            if drained.is_err() {
                tracing::warn!(
                    jobs = in_hand.len(),
                    "jobs in hand did not finish; abandoning them"
                );
                in_hand.abort_all();
                first_error.get_or_insert(anyhow::anyhow!("jobs in hand did not finish"));
            }
            match first_error {
                Some(error) => Err(error),
                None => Ok(()),
            }
        }
        .await;
        // Closing hands every unacked delivery back to its queue.
        close_connection(&connection, "dispatcher session ending").await;
        result
    }
}

async fn consume(channel: &Channel, queue: &str) -> anyhow::Result<Consumer> {
    channel
        .basic_consume(
            queue.into(),
            format!("dispatcher-{}-{queue}", std::process::id()).into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot consume from {queue:?}"))
}

/// The provider called `name`, from its settings.
async fn build_provider(
    name: &str,
    config: &DispatcherConfig,
) -> anyhow::Result<Arc<dyn Provider>> {
    match name {
        crate::providers::smtp::NAME => {
            let sender = SmtpSender::new(
                &config.smtp_url,
                &config.smtp_hello_name,
                config.smtp_connections,
                config.smtp_timeout(),
            )
            .await?;
            Ok(Arc::new(SmtpProvider {
                sender,
                hello_name: config.smtp_hello_name.clone(),
            }))
        }
        other => anyhow::bail!(
            "unknown provider {other:?} (MAILTRAIL_PROVIDER / MAILTRAIL_TENANT_PROVIDERS): use \
             smtp, mailgun, sendgrid, postmark, resend or ses"
        ),
    }
}
