//! `fault-suite`: runs the full fault suite (or some of its scenarios), prints the table, and
//! writes it into `docs/reliability.md`. `scripts/fault-suite.sh` builds and runs it.

use clap::Parser;
use mailtrail_fault_suite::{full_suite, markdown_table, run, text_table};
use std::path::PathBuf;
use std::time::Instant;

/// The full fault suite: real operator, dispatcher and webhook-sink processes, one fault per
/// scenario, every email counted (docs/reliability.md). Needs those three binaries built in the
/// same target directory, and root for the private RabbitMQ node and PostgreSQL cluster.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Requests per scenario (1–3 recipients each, about 2 on average).
    #[arg(long, env = "MAILTRAIL_FAULT_REQUESTS", default_value_t = 2500)]
    requests: usize,
    /// Run only the scenarios whose name contains this text.
    #[arg(long, env = "MAILTRAIL_FAULT_ONLY")]
    only: Option<String>,
    /// Write the table into this Markdown file, between `<!-- fault-suite:begin -->` and
    /// `<!-- fault-suite:end -->` (appended when the markers are missing). Unset: print only.
    #[arg(long, env = "MAILTRAIL_FAULT_WRITE")]
    write: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let mut reports = Vec::new();
    for scenario in full_suite(args.requests) {
        if args
            .only
            .as_ref()
            .is_some_and(|only| !scenario.name.contains(only.as_str()))
        {
            continue;
        }
        eprintln!("fault-suite: {} …", scenario.name);
        let report = match run(&scenario).await {
            Ok(r) => r,
            Err(e) => mailtrail_fault_suite::Report {
                scenario: scenario.name.clone(),
                published: scenario.requests as u64,
                problems: vec![format!("{e:#}")],
                ..Default::default()
            },
        };
        eprintln!("{}", text_table(std::slice::from_ref(&report)));
        reports.push(report);
    }
    let elapsed = started.elapsed();
    println!("{}", text_table(&reports));
    println!("total {:.0} s", elapsed.as_secs_f64());
    if let Some(path) = args.write {
        write_markdown(&path, &reports, elapsed)?;
        println!("written to {}", path.display());
    }
    if reports.iter().all(|r| r.passed()) {
        Ok(())
    } else {
        anyhow::bail!("some scenarios failed")
    }
}

fn write_markdown(
    path: &std::path::Path,
    reports: &[mailtrail_fault_suite::Report],
    elapsed: std::time::Duration,
) -> anyhow::Result<()> {
    const BEGIN: &str = "<!-- fault-suite:begin -->";
    const END: &str = "<!-- fault-suite:end -->";
    let machine = std::process::Command::new("uname")
        .arg("-srm")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let date = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let mut section = format!(
        "{BEGIN}\nLast run: {date}, {machine}, {cores} cores, debug build, {} s in all \
         (`scripts/fault-suite.sh`).\n\n{}\n",
        elapsed.as_secs(),
        markdown_table(reports)
    );
    for r in reports {
        for p in &r.problems {
            section.push_str(&format!("- **{}**: {p}\n", r.scenario));
        }
        for n in &r.notes {
            section.push_str(&format!("- {}: {n}\n", r.scenario));
        }
    }
    section.push_str(END);
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if b < e => format!("{}{section}{}", &old[..b], &old[e + END.len()..]),
        _ => format!("{old}\n{section}\n"),
    };
    std::fs::write(path, new)?;
    Ok(())
}
