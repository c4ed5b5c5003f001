//! The webhook sink: verifies provider webhooks. A shell until "Webhook sink" lands.

use clap::Parser;

/// mailtrail webhook sink: verifies provider webhooks and publishes tracking events.
///
/// Not implemented yet: this binary only validates its settings and exits.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "MAILTRAIL_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Prefix of every queue name.
    #[arg(long, env = "MAILTRAIL_QUEUE_PREFIX", default_value = "mailtrail.")]
    queue_prefix: String,
    /// Address of the webhook endpoints.
    #[arg(long, env = "MAILTRAIL_HTTP_ADDR", default_value = "127.0.0.1:8081")]
    http_addr: String,
}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("the webhook sink is not implemented yet (issue \"Webhook sink\")")
}
