//! The dispatcher's settings: every one a documented `MAILTRAIL_*` variable (or flag).

use mailtrail_runtime::BrokerArgs;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct DispatcherConfig {
    /// RabbitMQ settings, shared by every service.
    #[command(flatten)]
    pub broker: BrokerArgs,

    /// Address of the health endpoints.
    #[arg(long, env = "MAILTRAIL_HTTP_ADDR", default_value = "127.0.0.1:8082")]
    pub http_addr: SocketAddr,

    /// Where to send mail: smtp://host:port (plain SMTP; TLS and AUTH come with the provider
    /// issue).
    #[arg(
        long,
        env = "MAILTRAIL_SMTP_URL",
        default_value = "smtp://127.0.0.1:2525"
    )]
    pub smtp_url: String,

    /// Most SMTP connections kept open to the server (each with TCP_NODELAY, reused).
    #[arg(long, env = "MAILTRAIL_SMTP_CONNECTIONS", default_value_t = 16)]
    pub smtp_connections: usize,

    /// Deadline of one SMTP send (connect included), in milliseconds; a miss is a deferral.
    #[arg(long, env = "MAILTRAIL_SMTP_TIMEOUT_MS", default_value_t = 30_000)]
    pub smtp_timeout_ms: u64,

    /// The name the dispatcher gives itself in EHLO.
    #[arg(long, env = "MAILTRAIL_SMTP_HELLO_NAME", default_value = "localhost")]
    pub smtp_hello_name: String,

    /// Dispatch jobs in hand at once (the AMQP prefetch of the dispatching consumers).
    #[arg(long, env = "MAILTRAIL_DISPATCH_CONCURRENCY", default_value_t = 64)]
    pub concurrency: u16,

    /// How long a deferred job waits before its next attempt, in seconds. Each value has its own
    /// retry queue (`<prefix>dispatching.retry-<n>s`).
    #[arg(long, env = "MAILTRAIL_RETRY_DELAY_SECS", default_value_t = 60)]
    pub retry_delay_secs: u32,

    /// Attempts before a transiently failing job is given up as `failed`.
    #[arg(long, env = "MAILTRAIL_MAX_ATTEMPTS", default_value_t = 10)]
    pub max_attempts: u32,

    /// Job outcomes remembered for redeliveries (count).
    #[arg(long, env = "MAILTRAIL_OUTCOME_MEMORY", default_value_t = 100_000)]
    pub outcome_memory: usize,

    /// How long job outcomes are remembered for redeliveries, in seconds.
    #[arg(long, env = "MAILTRAIL_OUTCOME_MEMORY_SECS", default_value_t = 600)]
    pub outcome_memory_secs: u64,
}

impl DispatcherConfig {
    /// The defaults (and any `MAILTRAIL_*` variables set).
    pub fn from_env() -> DispatcherConfig {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            config: DispatcherConfig,
        }
        <Wrapper as clap::Parser>::parse_from(["dispatcher"]).config
    }

    pub fn smtp_timeout(&self) -> Duration {
        Duration::from_millis(self.smtp_timeout_ms)
    }
}
