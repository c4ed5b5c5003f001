use clap::Parser;
use mailtrail_runtime::{ProcessArgs, init_tracing, run_with_drain_deadline, stop_on_signal};
use mailtrail_webhook_sink::{SinkApp, SinkConfig};

/// mailtrail webhook sink: verifies provider webhooks and publishes their events to the operator.
/// `POST /v1/webhooks/{mailgun,sendgrid,postmark,ses,resend,standard}`; see docs/webhooks.md.
/// Every flag can also be set with the `MAILTRAIL_*` environment variable shown beside it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: SinkConfig,
    #[command(flatten)]
    process: ProcessArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.process.log_format);
    mailtrail_runtime::install_metrics();
    let stop = stop_on_signal();
    let app = SinkApp::build(cli.config)?;
    run_with_drain_deadline(
        &stop.clone(),
        cli.process.drain_timeout(),
        app.run_until_stopped(stop),
    )
    .await
}
