//! The dispatcher: sends dispatch jobs through a provider. Until "First flight" lands it holds
//! its broker connection and serves its health endpoints, so deployments can be wired up.

use clap::Parser;
use mailtrail_runtime::{
    BrokerArgs, bind_http, init_tracing, run_broker_only_service, stop_on_signal,
};
use std::net::SocketAddr;

/// mailtrail dispatcher: consumes dispatch jobs and sends them through an email provider.
///
/// Sending is not built yet: this version connects to RabbitMQ, applies the topology and
/// serves /healthz and /readyz; jobs wait in the dispatching queues. Every flag can also be set
/// with the `MAILTRAIL_*` environment variable shown beside it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Address of the health endpoints.
    #[arg(long, env = "MAILTRAIL_HTTP_ADDR", default_value = "127.0.0.1:8082")]
    http_addr: SocketAddr,
    /// Where to send mail over SMTP (used once sending lands).
    #[arg(
        long,
        env = "MAILTRAIL_SMTP_URL",
        default_value = "smtp://127.0.0.1:2525"
    )]
    smtp_url: String,
    /// Log format: text or json.
    #[arg(long, env = "MAILTRAIL_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    let listener = bind_http(args.http_addr)?;
    tracing::warn!("sending is not built yet (issue \"First flight\"): dispatch jobs stay queued");
    run_broker_only_service("dispatcher", &args.broker, listener, stop_on_signal()).await
}
