//! The dispatcher process: health endpoints, and a supervised broker session that consumes both
//! dispatching queues (urgent first) with many jobs in flight, reconnecting with backoff.

use crate::breaker::Breaker;
use crate::config::DispatcherConfig;
use crate::memory::JobMemory;
use crate::providers::Provider;
use crate::providers::smtp::SmtpProvider;
use crate::rate::{RateLimit, parse_rate_limits};
use crate::routing::{Router, parse_failover, parse_tenant_providers};
use crate::smtp::SmtpSender;
use crate::worker::{Dispatcher, ProviderState, RetryPolicy};
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
    rate_limits: Vec<(String, f64)>,
    memory: Arc<JobMemory>,
    listener: std::net::TcpListener,
}

impl DispatcherApp {
    pub async fn build(config: DispatcherConfig) -> anyhow::Result<DispatcherApp> {
        let mut built: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        let tenant_providers = parse_tenant_providers(&config.tenant_providers)?;
        let failover = parse_failover(&config.failover);
        let names = std::iter::once(&config.provider)
            .chain(tenant_providers.iter().map(|t| &t.1))
            .chain(&failover);
        for name in names {
            if !built.contains_key(name) {
                built.insert(name.clone(), build_provider(name, &config).await?);
            }
        }
        let mut router = Router::new(built[&config.provider].clone());
        for (tenant, name) in &tenant_providers {
            router = router.with_tenant(tenant, built[name].clone());
        }
        for name in &failover {
            router = router.with_failover(built[name].clone());
        }
        let rate_limits = parse_rate_limits(&config.rate_limits)?;
        for (name, _) in &rate_limits {
            anyhow::ensure!(
                built.contains_key(name),
                "MAILTRAIL_RATE_LIMITS names {name:?}, which is not a provider in use"
            );
        }
        let listener = mailtrail_runtime::bind_http(config.http_addr)?;
        Ok(DispatcherApp {
            memory: Arc::new(JobMemory::new(
                config.outcome_memory,
                Duration::from_secs(config.outcome_memory_secs),
            )),
            router: Arc::new(router),
            rate_limits,
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
        // Each provider in use is a dependency too: down while its breaker is open. Breakers and
        // rate limits outlive broker sessions.
        let provider_states: HashMap<&'static str, ProviderState> = self
            .router
            .providers()
            .iter()
            .map(|p| {
                let rate = self
                    .rate_limits
                    .iter()
                    .find(|(name, _)| name == p.name())
                    .map(|(_, per_second)| RateLimit::new(*per_second, std::time::Instant::now()));
                let breaker = Breaker::new(
                    self.config.breaker_failures,
                    Duration::from_secs(self.config.breaker_probe_secs),
                );
                metrics::gauge!("mailtrail_provider_up", "provider" => p.name()).set(1.0);
                (
                    p.name(),
                    ProviderState::new(breaker, rate, readiness.track(p.name())),
                )
            })
            .collect();
        let provider_states = Arc::new(provider_states);
        let server = serve_health(self.listener.try_clone()?, readiness)?;
        let server_handle = server.handle();
        let server_task = tokio::spawn(server);
        supervise("dispatcher", &stop, || async {
            let result = self.session(&stop, &broker_ready, &provider_states).await;
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
        provider_states: &Arc<HashMap<&'static str, ProviderState>>,
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
                provider_states: provider_states.clone(),
            });
            // Each consumer has the prefetch (per-consumer QoS: quorum queues refuse a global
            // one), so up to `concurrency` jobs per dispatching queue are in hand.
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
    use crate::providers::{mailgun, postmark, resend, sendgrid, ses};
    let timeout = Duration::from_millis(config.http_provider_timeout_ms);
    match name {
        crate::providers::smtp::NAME => {
            let sender =
                SmtpSender::with_settings(crate::smtp::SmtpSettings::from_config(config)).await?;
            Ok(Arc::new(SmtpProvider {
                sender,
                hello_name: config.smtp_hello_name.clone(),
            }))
        }
        "mailgun" => Ok(Arc::new(mailgun::Mailgun::new(mailgun::MailgunSettings {
            base_url: config.mailgun_base_url.clone(),
            domain: required(&config.mailgun_domain, "MAILTRAIL_MAILGUN_DOMAIN")?,
            api_key: required(&config.mailgun_api_key, "MAILTRAIL_MAILGUN_API_KEY")?.into(),
            timeout,
        })?)),
        "sendgrid" => Ok(Arc::new(sendgrid::SendGrid::new(
            sendgrid::SendGridSettings {
                base_url: config.sendgrid_base_url.clone(),
                api_key: required(&config.sendgrid_api_key, "MAILTRAIL_SENDGRID_API_KEY")?.into(),
                timeout,
            },
        )?)),
        "postmark" => Ok(Arc::new(postmark::Postmark::new(
            postmark::PostmarkSettings {
                base_url: config.postmark_base_url.clone(),
                server_token: required(
                    &config.postmark_server_token,
                    "MAILTRAIL_POSTMARK_SERVER_TOKEN",
                )?
                .into(),
                message_stream: Some(config.postmark_message_stream.clone()),
                timeout,
            },
        )?)),
        "resend" => Ok(Arc::new(resend::Resend::new(resend::ResendSettings {
            base_url: config.resend_base_url.clone(),
            api_key: required(&config.resend_api_key, "MAILTRAIL_RESEND_API_KEY")?.into(),
            timeout,
        })?)),
        "ses" => Ok(Arc::new(ses::Ses::new(ses::SesSettings {
            base_url: config.ses_base_url.clone(),
            region: config.ses_region.clone(),
            access_key_id: required(&config.ses_access_key_id, "MAILTRAIL_SES_ACCESS_KEY_ID")?,
            secret_access_key: required(
                &config.ses_secret_access_key,
                "MAILTRAIL_SES_SECRET_ACCESS_KEY",
            )?
            .into(),
            session_token: config.ses_session_token.clone().map(Into::into),
            configuration_set: config.ses_configuration_set.clone(),
            timeout,
        })?)),
        other => anyhow::bail!(
            "unknown provider {other:?} (MAILTRAIL_PROVIDER / MAILTRAIL_TENANT_PROVIDERS / \
             MAILTRAIL_FAILOVER): use smtp, mailgun, sendgrid, postmark, resend or ses"
        ),
    }
}

/// A setting the chosen provider cannot do without.
fn required(value: &Option<String>, variable: &str) -> anyhow::Result<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("{variable} is required for this provider; set it"))
}
