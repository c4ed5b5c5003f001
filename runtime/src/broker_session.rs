use mailtrail_broker::BrokerSettings;
use mailtrail_shared::topology::{QueueType, Topology};
use std::time::Duration;

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

/// Binds the HTTP listener, with an error that says which setting to change.
pub fn bind_http(addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {addr} (MAILTRAIL_HTTP_ADDR): {e}; is another process using it?"
        )
    })
}
