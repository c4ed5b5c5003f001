use clap::Parser;
use mailtrail_runtime::{init_tracing, run_with_drain_deadline, stop_on_signal};
use mailtrail_webhook_sink::{SinkApp, SinkConfig};

/// mailtrail webhook sink: verifies provider webhooks and publishes their events to the operator.
/// `POST /v1/webhooks/standard` takes mailtrail's own event schema signed per Standard Webhooks.
/// Every flag can also be set with the `MAILTRAIL_*` environment variable shown beside it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: SinkConfig,
    /// Log format: text or json.
    #[arg(long, env = "MAILTRAIL_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// How long a shutdown waits for requests in hand, in milliseconds.
    #[arg(long, env = "MAILTRAIL_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    drain_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let stop = stop_on_signal();
    let app = SinkApp::build(cli.config)?;
    let drain = std::time::Duration::from_millis(cli.drain_timeout_ms);
    let stopped = stop.clone();
    run_with_drain_deadline(&stopped, drain, app.run_until_stopped(stop)).await
}
