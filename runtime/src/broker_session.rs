use mailtrail_broker::{BrokerSettings, connect, declare_topology};
use mailtrail_shared::topology::{QueueType, Topology};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The broker settings every service reads: one definition, so each binary's `--help` and the
/// README agree.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// RabbitMQ URL (amqp:// or amqps://).
    #[arg(
        long,
        env = "MAILTRAIL_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,

    /// AMQP heartbeat in seconds: a silent broker connection is noticed within about two beats.
    #[arg(long, env = "MAILTRAIL_AMQP_HEARTBEAT_SECS", default_value_t = 10)]
    pub amqp_heartbeat_secs: u16,

    /// Prefix of every queue name.
    #[arg(long, env = "MAILTRAIL_QUEUE_PREFIX", default_value = "mailtrail.")]
    pub queue_prefix: String,

    /// RabbitMQ queue type of the durable queues: classic or quorum.
    #[arg(long, env = "MAILTRAIL_QUEUE_TYPE", default_value = "classic")]
    pub queue_type: QueueType,
}

impl BrokerArgs {
    pub fn settings(&self, service: &str) -> BrokerSettings {
        BrokerSettings {
            url: self.amqp_url.clone(),
            heartbeat: Duration::from_secs(self.amqp_heartbeat_secs.into()),
            connection_name: format!("mailtrail-{service}@{}", std::process::id()),
        }
    }

    pub fn topology(&self) -> Topology {
        Topology::new(self.queue_prefix.clone(), self.queue_type)
    }
}

/// Keeps one broker connection open until `stop`: connects, applies the topology, sets `ready`,
/// and on loss (a cut, missed heartbeats, a broker restart) clears `ready` and reconnects with
/// backoff. For services whose work does not yet use the broker, so `/readyz` still tells the
/// truth about it.
pub async fn hold_broker_connection(
    settings: BrokerSettings,
    topology: Topology,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    crate::supervise("broker", &stop, || async {
        let result = async {
            let connection = connect(&settings).await?;
            let channel = connection.create_channel().await?;
            declare_topology(&channel, &topology).await?;
            ready.store(true, Ordering::Relaxed);
            tracing::info!("broker connected; topology applied");
            // lapin marks the connection closed on a socket error or two missed heartbeats.
            while connection.status().connected() {
                tokio::select! {
                    _ = stop.cancelled() => {
                        mailtrail_broker::close_connection(&connection, "shutting down").await;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            anyhow::bail!("the broker connection was lost")
        }
        .await;
        ready.store(false, Ordering::Relaxed);
        result
    })
    .await;
}

/// Runs a service whose only dependency so far is the broker: health endpoints on `listener`,
/// one supervised broker connection, until `stop`. The dispatcher and the webhook sink run this
/// until their own work lands.
pub async fn run_broker_only_service(
    service: &str,
    broker: &BrokerArgs,
    listener: std::net::TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut readiness = crate::Readiness::default();
    let broker_ready = readiness.track("broker");
    let server = crate::serve_health(listener, readiness)?;
    let server_handle = server.handle();
    let server_task = tokio::spawn(server);
    hold_broker_connection(
        broker.settings(service),
        broker.topology(),
        broker_ready,
        stop,
    )
    .await;
    server_handle.stop(true).await;
    let _ = server_task.await;
    tracing::info!("{service} stopped");
    Ok(())
}

/// Binds the HTTP listener, with an error that says which setting to change.
pub fn bind_http(addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} (MAILTRAIL_HTTP_ADDR): {e}; is another process using it?"
        )
    })
}
