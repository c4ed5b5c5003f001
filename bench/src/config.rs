//! The benchmark's settings: every one a flag and a `MAILTRAIL_BENCH_*` environment variable.

use clap::Parser;
use std::path::PathBuf;

/// mailtrail-bench: measures mailtrail end to end on this machine, beside the broker's own
/// ceiling, the SMTP server's ceiling and a hand-written peer, in one run.
///
/// It starts the release binaries of the operator, dispatcher, webhook sink and smtp-capture
/// (from --bin-dir) as child processes on databases it creates and drops, with a queue prefix
/// of its own, against the RabbitMQ and PostgreSQL given. It prints a table of throughput and
/// latency percentiles (with ratios to the broker ceiling), the CPU seconds of each process
/// (RabbitMQ, PostgreSQL, each service, the load generator) and each service's peak resident
/// memory, and writes results.json (for bench/plot.py) to --out-dir. The services read every
/// other MAILTRAIL_* variable from the environment as usual (batch sizes, prefetch, ...).
/// Use scripts/bench.sh, which builds everything first.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct BenchArgs {
    /// Emails per closed-loop run (pre-loaded into the mailbox, drained as fast as possible),
    /// and messages per broker-ceiling and SMTP-ceiling run.
    #[arg(long, env = "MAILTRAIL_BENCH_EMAILS", default_value_t = 50_000)]
    pub emails: usize,

    /// Open-loop rates, as fractions of the closed-loop rate measured just before
    /// (comma-separated).
    #[arg(
        long,
        env = "MAILTRAIL_BENCH_OPEN_RATES",
        default_value = "0.25,0.5,0.75",
        value_delimiter = ','
    )]
    pub open_rates: Vec<f64>,

    /// Seconds each open-loop rate is held.
    #[arg(long, env = "MAILTRAIL_BENCH_OPEN_SECONDS", default_value_t = 20)]
    pub open_seconds: u64,

    /// Signed webhook events posted to the sink per run (single and batched).
    #[arg(long, env = "MAILTRAIL_BENCH_WEBHOOK_EVENTS", default_value_t = 20_000)]
    pub webhook_events: usize,

    /// Events per request in the batched webhook run.
    #[arg(long, env = "MAILTRAIL_BENCH_WEBHOOK_BATCH", default_value_t = 100)]
    pub webhook_batch: usize,

    /// Webhook requests in flight at once.
    #[arg(
        long,
        env = "MAILTRAIL_BENCH_WEBHOOK_CONCURRENCY",
        default_value_t = 32
    )]
    pub webhook_concurrency: usize,

    /// Emails through the hand-written peer (prefetch 1, each confirm awaited, one insert per
    /// step); 0 skips it.
    #[arg(long, env = "MAILTRAIL_BENCH_PEER_EMAILS", default_value_t = 10_000)]
    pub peer_emails: usize,

    /// Phases to run, comma-separated: ceiling, smtp, closed, open, bound, webhooks, peer.
    #[arg(
        long,
        env = "MAILTRAIL_BENCH_PHASES",
        default_value = "ceiling,smtp,closed,open,webhooks,bound,peer",
        value_delimiter = ','
    )]
    pub phases: Vec<String>,

    /// Size of each request's text body (and of each broker-ceiling message), in bytes.
    #[arg(long, env = "MAILTRAIL_BENCH_BODY_BYTES", default_value_t = 1024)]
    pub body_bytes: usize,

    /// Prefetch of each broker-ceiling stage.
    #[arg(long, env = "MAILTRAIL_BENCH_CEILING_PREFETCH", default_value_t = 500)]
    pub ceiling_prefetch: u16,

    /// Messages republished (confirms in flight together) and acked at once by a ceiling stage.
    #[arg(long, env = "MAILTRAIL_BENCH_CEILING_BATCH", default_value_t = 250)]
    pub ceiling_batch: usize,

    /// RabbitMQ URL.
    #[arg(
        long,
        env = "MAILTRAIL_BENCH_AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f",
        hide_env_values = true
    )]
    pub amqp_url: String,

    /// PostgreSQL server URL without a database name: the benchmark creates and drops its own
    /// databases (`mtbench_<pid>_<run>`).
    #[arg(
        long,
        env = "MAILTRAIL_BENCH_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Queue type of every queue (`classic` or `quorum`).
    #[arg(long, env = "MAILTRAIL_BENCH_QUEUE_TYPE", default_value = "classic")]
    pub queue_type: String,

    /// Directory holding the release binaries (operator, dispatcher, webhook-sink,
    /// smtp-capture); default: this binary's own directory.
    #[arg(long, env = "MAILTRAIL_BENCH_BIN_DIR")]
    pub bin_dir: Option<PathBuf>,

    /// Where results.json and the services' logs go.
    #[arg(long, env = "MAILTRAIL_BENCH_OUT_DIR", default_value = "target/bench")]
    pub out_dir: PathBuf,

    /// Keep the benchmark's databases (for a look afterwards) instead of dropping them.
    #[arg(long, env = "MAILTRAIL_BENCH_KEEP", default_value_t = false)]
    pub keep: bool,
}

impl BenchArgs {
    pub fn runs(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p.trim() == phase)
    }

    pub fn bin(&self, name: &str) -> PathBuf {
        let dir = self.bin_dir.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.to_path_buf()))
                .unwrap_or_else(|| PathBuf::from("target/release"))
        });
        dir.join(name)
    }

    pub fn database(&self, name: &str) -> String {
        format!("{}/{name}", self.database_url.trim_end_matches('/'))
    }
}
