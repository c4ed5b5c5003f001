//! The webhook sink: verifies provider webhooks. Until "Webhook sink" lands it holds its broker
//! connection and serves its health endpoints, so deployments can be wired up.

use clap::Parser;
use mailtrail_runtime::{
    BrokerArgs, bind_http, init_tracing, run_broker_only_service, stop_on_signal,
};
use std::net::SocketAddr;

/// mailtrail webhook sink: verifies provider webhooks and publishes tracking events.
///
/// Webhook endpoints are not built yet: this version connects to RabbitMQ, applies the topology
/// and serves /healthz and /readyz. Every flag can also be set with the `MAILTRAIL_*`
/// environment variable shown beside it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    broker: BrokerArgs,
    /// Address of the webhook and health endpoints.
    #[arg(long, env = "MAILTRAIL_HTTP_ADDR", default_value = "127.0.0.1:8081")]
    http_addr: SocketAddr,
    /// Log format: text or json.
    #[arg(long, env = "MAILTRAIL_LOG_FORMAT", default_value = "text")]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_tracing(&args.log_format);
    let listener = bind_http(args.http_addr)?;
    tracing::warn!("webhook endpoints are not built yet (issue \"Webhook sink\")");
    run_broker_only_service("webhook-sink", &args.broker, listener, stop_on_signal()).await
}
