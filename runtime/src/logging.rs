/// Logs to stderr, filtered by `MAILTRAIL_LOG` (default `info`), as text or JSON lines.
pub fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MAILTRAIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format.eq_ignore_ascii_case("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The process settings every service binary reads besides its own.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessArgs {
    /// Log format: text or json.
    #[arg(long, env = "MAILTRAIL_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// How long a shutdown waits for the work in hand, in milliseconds.
    #[arg(long, env = "MAILTRAIL_DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,
}

impl ProcessArgs {
    pub fn drain_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.drain_timeout_ms)
    }
}
