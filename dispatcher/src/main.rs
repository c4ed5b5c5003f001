use clap::Parser;
use mailtrail_dispatcher::{DispatcherApp, DispatcherConfig};
use mailtrail_runtime::{init_tracing, run_with_drain_deadline, stop_on_signal};

/// mailtrail dispatcher: consumes dispatch jobs, sends each over SMTP and reports every outcome
/// (dispatched, deferred, failed) to the operator. Every flag can also be set with the
/// `MAILTRAIL_*` environment variable shown beside it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: DispatcherConfig,
    /// Log format: text or json.
    #[arg(long, env = "MAILTRAIL_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// How long a shutdown waits for the jobs in hand, in milliseconds.
    #[arg(long, env = "MAILTRAIL_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    drain_timeout_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    let stop = stop_on_signal();
    let app = DispatcherApp::build(cli.config).await?;
    let drain = std::time::Duration::from_millis(cli.drain_timeout_ms);
    let stopped = stop.clone();
    run_with_drain_deadline(&stopped, drain, app.run_until_stopped(stop)).await
}
