//! mailtrail's end-to-end benchmark (docs/benchmarks.md, "End-to-end benchmark"): one run
//! measures the broker's three-hop ceiling, the SMTP server's ceiling, mailtrail end to end
//! (closed loop and open loop, status events on, with and without an app bound to them), the
//! webhook sink, and a hand-written peer; it prints markdown tables and writes results.json.

pub mod ceiling;
pub mod config;
pub mod e2e;
pub mod peer;
pub mod procs;
pub mod smtp;
pub mod stats;
pub mod webhooks;

use crate::config::BenchArgs;
use crate::e2e::Stack;
use crate::procs::{Service, free_port};
use crate::stats::{CpuSpent, Percentiles, round2};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

/// Everything measured, printed as markdown and saved as JSON.
#[derive(Default)]
struct Report {
    json: serde_json::Map<String, Value>,
    /// (run, items, seconds, rate, unit)
    throughput: Vec<(String, usize, f64, f64, &'static str)>,
    /// (run, hop, percentiles)
    latency: Vec<(String, String, Percentiles)>,
    cpu: Vec<(String, usize, CpuSpent)>,
    rss: Vec<(String, String, u64)>,
    ceiling: Option<f64>,
}

impl Report {
    fn throughput(&mut self, run: &str, items: usize, seconds: f64, unit: &'static str) {
        let rate = items as f64 / seconds;
        println!("  {run}: {items} in {seconds:.2} s = {rate:.0} {unit}");
        self.throughput
            .push((run.to_owned(), items, seconds, rate, unit));
    }

    fn hops(&mut self, run: &str, hops: &e2e::Hops) {
        for (hop, p) in [
            ("publish → accepted recorded", hops.intake),
            ("accepted → queued (job handed to broker)", hops.relay),
            ("queued → dispatched at SMTP", hops.dispatch),
            ("dispatched → recorded", hops.record),
            ("end to end: publish → dispatched recorded", hops.end_to_end),
        ] {
            self.latency.push((run.to_owned(), hop.to_owned(), p));
        }
    }

    fn markdown(&self, header: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{header}\n");
        let _ = writeln!(
            out,
            "| run | items | seconds | rate | × broker ceiling |\n|---|---:|---:|---:|---:|"
        );
        for (run, items, seconds, rate, unit) in &self.throughput {
            let ratio = self
                .ceiling
                .map(|c| format!("{:.2}", rate / c))
                .unwrap_or_else(|| "–".into());
            let _ = writeln!(
                out,
                "| {run} | {items} | {seconds:.1} | {rate:.0} {unit} | {ratio} |"
            );
        }
        let _ = writeln!(
            out,
            "\nLatency, milliseconds:\n\n| run | hop | p50 | p90 | p99 | max |\n|---|---|---:|---:|---:|---:|"
        );
        for (run, hop, p) in &self.latency {
            let _ = writeln!(
                out,
                "| {run} | {hop} | {:.1} | {:.1} | {:.1} | {:.1} |",
                p.p50, p.p90, p.p99, p.max
            );
        }
        let names = [
            "rabbitmq",
            "postgresql",
            "operator",
            "dispatcher",
            "smtp-capture",
            "webhook-sink",
            "load generator",
        ];
        let _ = writeln!(
            out,
            "\nCPU seconds per process (wall seconds; CPU ms per item = all processes' CPU / items):\n"
        );
        let _ = writeln!(
            out,
            "| run | wall s | {} | total | CPU ms/item |\n|---|---:|{}---:|---:|",
            names.join(" | "),
            "---:|".repeat(names.len())
        );
        for (run, items, cpu) in &self.cpu {
            let cells: Vec<String> = names
                .iter()
                .map(|n| {
                    cpu.by_process
                        .get(*n)
                        .map(|s| format!("{s:.1}"))
                        .unwrap_or_else(|| "–".into())
                })
                .collect();
            let _ = writeln!(
                out,
                "| {run} | {:.1} | {} | {:.1} | {:.2} |",
                cpu.wall_seconds,
                cells.join(" | "),
                cpu.total(),
                cpu.total() * 1000.0 / (*items).max(1) as f64
            );
        }
        let _ = writeln!(
            out,
            "\nPeak resident memory (VmHWM), MiB:\n\n| services of | process | peak RSS |\n|---|---|---:|"
        );
        for (stack, name, kib) in &self.rss {
            let _ = writeln!(out, "| {stack} | {name} | {:.1} |", *kib as f64 / 1024.0);
        }
        out
    }
}

fn machine() -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let rabbitmq = std::process::Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "rabbitmq-server"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": cpu_model,
        "rabbitmq": rabbitmq,
        "loadavg_before": std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim(),
        "date": chrono::Utc::now().to_rfc3339(),
    })
}

/// The port of a URL like `scheme://user:pass@host:port/path`.
fn url_port(url: &str) -> Option<u16> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit('@').next()?;
    host_port.rsplit_once(':')?.1.parse().ok()
}

fn closed_json(run: &e2e::ClosedRun) -> Value {
    json!({"rate_per_s": round2(run.rate), "wall_s": round2(run.wall_seconds),
           "status_outbox_drained_after_s": round2(run.status_drain_seconds),
           "app_dispatched_received": run.app_dispatched, "app_latency": run.app_latency.json(),
           "app_wall_s": round2(run.app_wall_seconds),
           "hops": run.hops.json(), "cpu": run.cpu.json()})
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.out_dir)?;
    let run_id = std::process::id().to_string();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .timeout(Duration::from_secs(60))
        .build()?;
    let text: String = "The benchmark's message body, about a kilobyte like a short notification. "
        .chars()
        .cycle()
        .take(args.body_bytes)
        .collect();
    let servers = stats::set_server_ports(
        url_port(&args.amqp_url).unwrap_or(5672),
        url_port(&args.database_url).unwrap_or(5432),
    );
    anyhow::ensure!(
        servers.rabbitmq.is_some() && servers.postgresql.is_some(),
        "cannot find the RabbitMQ and PostgreSQL server processes by their ports ({servers:?}); \
         their CPU is part of the figures (run as root, on the machine that runs them)"
    );
    let mut report = Report::default();
    let mut machine = machine();
    let admin = e2e::admin_db(&args).await?;
    let pg: String = admin.query_one("SHOW server_version", &[]).await?.get(0);
    machine["postgresql"] = json!(pg);
    println!("mailtrail-bench: {machine}");
    report.json.insert("machine".into(), machine.clone());
    report.json.insert(
        "settings".into(),
        json!({"emails": args.emails, "open_rates": args.open_rates, "open_seconds": args.open_seconds,
               "webhook_events": args.webhook_events, "webhook_batch": args.webhook_batch,
               "webhook_concurrency": args.webhook_concurrency, "peer_emails": args.peer_emails,
               "body_bytes": args.body_bytes, "queue_type": args.queue_type,
               "ceiling_prefetch": args.ceiling_prefetch, "ceiling_batch": args.ceiling_batch,
               "service_env": std::env::vars().filter(|(k, _)| k.starts_with("MAILTRAIL_") && !k.starts_with("MAILTRAIL_BENCH_") && !k.contains("URL") && !k.contains("SECRET") && !k.contains("PASSWORD") && !k.contains("KEY")).collect::<std::collections::BTreeMap<_, _>>()}),
    );

    if args.runs("ceiling") {
        println!("broker ceiling: {} messages, three hops …", args.emails);
        let result = ceiling::run(
            &args.amqp_url,
            &format!("mtbench-{run_id}."),
            &args.queue_type,
            args.emails,
            args.body_bytes,
            args.ceiling_prefetch,
            args.ceiling_batch,
        )
        .await?;
        report.ceiling = Some(result.rate());
        report.throughput(
            "broker ceiling: 3 persistent confirmed hops, no work",
            result.messages,
            result.seconds,
            "msg/s",
        );
        report
            .cpu
            .push(("broker ceiling".into(), result.messages, result.cpu.clone()));
        report.json.insert(
            "ceiling".into(),
            json!({"messages": result.messages, "seconds": round2(result.seconds),
                   "rate_per_s": round2(result.rate()), "cpu": result.cpu.json()}),
        );
    }

    // A standalone smtp-capture for the SMTP ceiling and the peer.
    let mut capture: Option<(Service, u16)> = None;
    if args.runs("smtp") || (args.runs("peer") && args.peer_emails > 0) {
        let port = free_port()?;
        let service = Service::spawn(
            "smtp-capture",
            &args.bin("smtp-capture"),
            &[],
            &[
                (
                    "MAILTRAIL_SMTP_CAPTURE_ADDR".into(),
                    format!("127.0.0.1:{port}"),
                ),
                ("MAILTRAIL_LOG".into(), "warn".into()),
            ],
            &args.out_dir.join("logs"),
        )?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        capture = Some((service, port));
    }
    if args.runs("smtp")
        && let Some((service, port)) = &capture
    {
        println!("SMTP ceiling: {} messages …", args.emails);
        let result = smtp::run(
            &format!("smtp://127.0.0.1:{port}"),
            service,
            args.emails,
            &text,
        )
        .await?;
        report.throughput(
            "SMTP ceiling: dispatcher's sender → smtp-capture",
            result.messages,
            result.seconds,
            "msg/s",
        );
        report
            .cpu
            .push(("SMTP ceiling".into(), result.messages, result.cpu.clone()));
        report.json.insert(
            "smtp_ceiling".into(),
            json!({"messages": result.messages, "seconds": round2(result.seconds),
                   "rate_per_s": round2(result.messages as f64 / result.seconds), "cpu": result.cpu.json()}),
        );
    }

    if args.runs("closed") || args.runs("open") || args.runs("webhooks") {
        let mut stack = Stack::prepare(&args, &run_id, "a", false).await?;
        stack.start_edge(&args, &http).await?;
        let mut base_rate = 1000.0;
        let result = async {
            if args.runs("closed") {
                println!(
                    "mailtrail closed loop, status events on, no app bound: {} emails …",
                    args.emails
                );
                let run =
                    e2e::closed_loop(&mut stack, &args, &http, "bench", args.emails, &text).await?;
                base_rate = run.rate;
                report.throughput(
                    "mailtrail closed loop, status events on (no app bound)",
                    args.emails,
                    run.hops.span_seconds,
                    "emails/s",
                );
                report.hops("closed loop (no app)", &run.hops);
                report
                    .cpu
                    .push(("mailtrail closed loop (no app)".into(), args.emails, run.cpu.clone()));
                report.json.insert("closed".into(), closed_json(&run));
            } else {
                anyhow::ensure!(
                    !args.runs("webhooks"),
                    "the webhooks phase reports on the closed loop's emails: run `closed` too"
                );
                stack.start_operator(&args, &http).await?;
            }
            if args.runs("open") {
                let mut open = Vec::new();
                for (i, fraction) in args.open_rates.iter().enumerate() {
                    let rate = (base_rate * fraction).max(1.0);
                    println!(
                        "mailtrail open loop at {rate:.0}/s ({:.0}% of the closed-loop rate) for {} s …",
                        fraction * 100.0,
                        args.open_seconds
                    );
                    let tenant = format!("open-{i}");
                    let run = e2e::open_loop(&mut stack, &tenant, rate, args.open_seconds, &text)
                        .await?;
                    let label = format!("open loop {rate:.0}/s ({:.0}%)", fraction * 100.0);
                    report.throughput(
                        &format!("mailtrail {label}: achieved (first publish → last dispatched recorded)"),
                        run.published,
                        run.hops.publish_span_seconds,
                        "emails/s",
                    );
                    report.hops(&label, &run.hops);
                    report
                        .cpu
                        .push((format!("mailtrail {label}"), run.published, run.cpu.clone()));
                    open.push(json!({"fraction": fraction, "offered_rate_per_s": round2(run.offered_rate),
                                     "published": run.published, "publish_s": round2(run.publish_seconds),
                                     "hops": run.hops.json(), "cpu": run.cpu.json()}));
                }
                report.json.insert("open".into(), Value::Array(open));
            }
            if args.runs("webhooks") {
                let emails = Arc::new(webhooks::emails_of(&stack, "bench").await?);
                let mut runs = Vec::new();
                for (event_type, per_request, label) in [
                    ("delivered", 1, "single"),
                    ("opened", args.webhook_batch, "batched"),
                ] {
                    println!(
                        "webhook sink, {label}: {} events, {per_request} per request …",
                        args.webhook_events
                    );
                    let run = webhooks::run(
                        &mut stack,
                        &http,
                        emails.clone(),
                        event_type,
                        args.webhook_events,
                        per_request,
                        args.webhook_concurrency,
                    )
                    .await?;
                    let name = format!("webhook sink, {label} ({per_request}/request)");
                    report.throughput(
                        &format!("{name}: verified + confirmed"),
                        run.events,
                        run.sink_seconds,
                        "events/s",
                    );
                    report.throughput(
                        &format!("{name}: recorded by the operator"),
                        run.events,
                        run.recorded_seconds,
                        "events/s",
                    );
                    report
                        .latency
                        .push((name.clone(), "webhook request → 200".into(), run.request_latency));
                    report.cpu.push((name.clone(), run.events, run.cpu.clone()));
                    runs.push(json!({"mode": label, "per_request": per_request, "events": run.events,
                                     "sink_s": round2(run.sink_seconds), "sink_rate_per_s": round2(run.sink_rate()),
                                     "recorded_s": round2(run.recorded_seconds),
                                     "recorded_rate_per_s": round2(run.recorded_rate()),
                                     "request_latency": run.request_latency.json(), "cpu": run.cpu.json()}));
                }
                report.json.insert("webhooks".into(), Value::Array(runs));
            }
            anyhow::Ok(())
        }
        .await;
        for (name, kib) in stack.peak_rss() {
            report.rss.push(("no app bound".into(), name, kib));
        }
        stack.stop(&args).await?;
        result?;
    }

    if args.runs("bound") {
        println!(
            "mailtrail closed loop, status events on, one app bound and drained: {} emails …",
            args.emails
        );
        let mut stack = Stack::prepare(&args, &run_id, "b", true).await?;
        let result = async {
            stack.start_edge(&args, &http).await?;
            let run =
                e2e::closed_loop(&mut stack, &args, &http, "bench", args.emails, &text).await?;
            report.throughput(
                "mailtrail closed loop, status events on (one app bound)",
                args.emails,
                run.hops.span_seconds,
                "emails/s",
            );
            report.throughput(
                "  … every `dispatched` status received by the app",
                run.app_dispatched,
                run.app_wall_seconds,
                "emails/s",
            );
            report.hops("closed loop (app bound)", &run.hops);
            report.latency.push((
                "closed loop (app bound)".into(),
                "publish → `dispatched` status received by the app".into(),
                run.app_latency,
            ));
            report.cpu.push((
                "mailtrail closed loop (app bound)".into(),
                args.emails,
                run.cpu.clone(),
            ));
            report.json.insert("bound".into(), closed_json(&run));
            anyhow::Ok(())
        }
        .await;
        for (name, kib) in stack.peak_rss() {
            report.rss.push(("app bound".into(), name, kib));
        }
        stack.stop(&args).await?;
        result?;
    }

    if args.runs("peer")
        && args.peer_emails > 0
        && let Some((service, port)) = &capture
    {
        println!(
            "hand-written peer (prefetch 1, each confirm awaited, one insert per step): {} emails …",
            args.peer_emails
        );
        let run = peer::run(
            &args,
            &run_id,
            &format!("smtp://127.0.0.1:{port}"),
            service,
            args.peer_emails,
            &text,
        )
        .await?;
        report.throughput(
            "hand-written peer, closed loop",
            run.emails,
            run.seconds,
            "emails/s",
        );
        report
            .cpu
            .push(("hand-written peer".into(), run.emails, run.cpu.clone()));
        report.json.insert(
            "peer".into(),
            json!({"emails": run.emails, "seconds": round2(run.seconds), "rate_per_s": round2(run.rate()),
                   "end_to_end": run.end_to_end.json(), "cpu": run.cpu.json()}),
        );
    }
    if let Some((mut service, _)) = capture {
        service.stop(Duration::from_secs(5)).await;
    }

    report.json.insert(
        "loadavg_after".into(),
        json!(
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        ),
    );
    let header = format!(
        "mailtrail-bench, {} — {} cores ({}), RabbitMQ {}, PostgreSQL {}, load average before {}",
        machine["date"].as_str().unwrap_or_default(),
        machine["nproc"],
        machine["cpu_model"].as_str().unwrap_or_default(),
        machine["rabbitmq"].as_str().unwrap_or_default(),
        machine["postgresql"].as_str().unwrap_or_default(),
        machine["loadavg_before"].as_str().unwrap_or_default(),
    );
    let markdown = report.markdown(&header);
    println!("\n{markdown}");
    std::fs::write(args.out_dir.join("results.md"), &markdown)?;
    let rss: Vec<Value> = report
        .rss
        .iter()
        .map(|(stack, name, kib)| json!({"services_of": stack, "process": name, "peak_rss_mib": round2(*kib as f64 / 1024.0)}))
        .collect();
    report.json.insert("peak_rss".into(), Value::Array(rss));
    let path = args.out_dir.join("results.json");
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&Value::Object(report.json))?,
    )?;
    println!("results: {} and results.md", path.display());
    Ok(())
}
