//! `mailtrail-bench`: the end-to-end benchmark (see `--help` and docs/benchmarks.md).

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    mailtrail_bench::run(mailtrail_bench::config::BenchArgs::parse()).await
}
