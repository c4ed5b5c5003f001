//! The dispatcher: sends dispatch jobs through a provider. A shell until "First flight" lands.

use clap::Parser;

/// mailtrail dispatcher: consumes dispatch jobs and sends them through an email provider.
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
    /// Address of the health endpoints.
    #[arg(long, env = "MAILTRAIL_HTTP_ADDR", default_value = "127.0.0.1:8082")]
    http_addr: String,
    /// Where to send mail over SMTP.
    #[arg(
        long,
        env = "MAILTRAIL_SMTP_URL",
        default_value = "smtp://127.0.0.1:2525"
    )]
    smtp_url: String,
}

fn main() -> anyhow::Result<()> {
    let _args = Args::parse();
    anyhow::bail!("the dispatcher is not implemented yet (issue \"First flight\")")
}
