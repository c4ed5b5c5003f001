use clap::Parser;
use mailtrail_dispatcher::{DispatcherApp, DispatcherConfig};
use mailtrail_runtime::{ProcessArgs, init_tracing, run_with_drain_deadline, stop_on_signal};

/// mailtrail dispatcher: consumes dispatch jobs, sends each through its provider (SMTP or an HTTP
/// send API) and reports every outcome (dispatched, deferred, bounced, failed) to the operator. Every flag can also be set with the
/// `MAILTRAIL_*` environment variable shown beside it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: DispatcherConfig,
    #[command(flatten)]
    process: ProcessArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.process.log_format);
    mailtrail_runtime::install_metrics();
    let stop = stop_on_signal();
    let app = DispatcherApp::build(cli.config).await?;
    run_with_drain_deadline(
        &stop.clone(),
        cli.process.drain_timeout(),
        app.run_until_stopped(stop),
    )
    .await
}
