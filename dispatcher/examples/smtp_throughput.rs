//! The dispatcher's SMTP throughput benchmark (docs/benchmarks.md). Run it in release mode:
//!
//! ```sh
//! cargo run --release -p mailtrail-dispatcher --example smtp_throughput -- [messages]
//! ```
//!
//! It prints two figures against a fast local SMTP server (smtp-capture, in process):
//! 1. the SMTP sender alone: messages/s with many sends in flight over the connection pool;
//! 2. the whole dispatcher: jobs published to a dispatching queue on the real RabbitMQ, consumed,
//!    sent and reported (`dispatched` events confirmed on the tracking queue), in messages/s.
//!
//! The target is at least 2,000 messages/s for the whole dispatcher. Without `TCP_NODELAY` on
//! the SMTP connections the sender falls to a few hundred per second: a regression shows at once.

use mailtrail_broker::{
    OutgoingMessage, Publisher, declare_topology, json_properties, queue_depth,
};
use mailtrail_dispatcher::smtp::{SmtpSender, envelope};
use mailtrail_dispatcher::{DispatcherApp, DispatcherConfig, message};
use mailtrail_shared::address::parse_address;
use mailtrail_shared::contract::Priority;
use mailtrail_shared::dispatch::DispatchJob;
use mailtrail_shared::topology::Queue;
use mailtrail_smtp_capture::SmtpCapture;
use mailtrail_test_support::TestBroker;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn job(n: usize) -> DispatchJob {
    DispatchJob {
        version: 1,
        job_id: Uuid::new_v4(),
        email_id: Uuid::new_v4(),
        request_id: Uuid::new_v4(),
        request_key: format!("bench-{n}"),
        tenant: "bench".into(),
        attempt: 1,
        priority: Priority::Normal,
        from: parse_address("Bench <bench@mailtrail.test>").expect("address"),
        to: parse_address(&format!("user{n}@example.com")).expect("address"),
        reply_to: None,
        subject: format!("Benchmark message {n}"),
        text: Some("Hello from the benchmark. ".repeat(20)),
        html: Some(format!(
            "<p>{}</p>",
            "Hello from the benchmark. ".repeat(20)
        )),
        headers: BTreeMap::new(),
        tags: vec![],
        metadata: BTreeMap::new(),
        attachments: vec![],
        waits: 0,
        first_attempt_at: None,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let messages: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let smtp = SmtpCapture::start().await?;
    smtp.set_keep_messages(false);
    println!("smtp_throughput: {messages} messages to {}", smtp.url());

    // 1. The sender alone.
    let sender =
        Arc::new(SmtpSender::new(&smtp.url(), "bench.local", 16, Duration::from_secs(10)).await?);
    let prepared: Vec<_> = (0..messages)
        .map(|n| {
            let job = job(n);
            let formatted = message::build(&job, "bench.local")
                .expect("builds")
                .formatted();
            let envelope = envelope(&job.from.address, &job.to.address).expect("envelope");
            (envelope, formatted)
        })
        .collect();
    let prepared = Arc::new(prepared);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let in_flight = 64;
    for worker in 0..in_flight {
        let sender = sender.clone();
        let prepared = prepared.clone();
        tasks.spawn(async move {
            for (envelope, formatted) in prepared.iter().skip(worker).step_by(in_flight) {
                sender.send(envelope, formatted).await.expect("accepted");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined?;
    }
    let elapsed = started.elapsed();
    println!(
        "sender alone:      {messages} messages in {:.2} s = {:.0} messages/s (16 connections, {in_flight} in flight)",
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64()
    );

    // 2. The whole dispatcher, through RabbitMQ.
    let broker = TestBroker::new();
    let connection = broker.connect().await;
    let setup = connection.create_channel().await?;
    declare_topology(&setup, &broker.topology()).await?;
    let publisher = Publisher::open(&connection).await?;
    let dispatching = broker.topology().queue(Queue::Dispatching);
    for chunk in (0..messages).collect::<Vec<_>>().chunks(1000) {
        let batch: Vec<OutgoingMessage> = chunk
            .iter()
            .map(|n| {
                let job = job(*n);
                OutgoingMessage {
                    routing_key: dispatching.clone(),
                    body: serde_json::to_vec(&job).expect("json"),
                    properties: json_properties(&job.job_id.to_string(), Default::default()),
                }
            })
            .collect();
        publisher.publish_all(&batch).await?;
    }
    let mut config = DispatcherConfig::from_env();
    config.broker.amqp_url = broker.url();
    config.broker.queue_prefix = broker.prefix().to_owned();
    config.smtp_url = smtp.url();
    config.http_addr = "127.0.0.1:0".parse()?;
    config.concurrency = 128;
    let app = DispatcherApp::build(config).await?;
    let stop = CancellationToken::new();
    let before = smtp.message_count();
    let started = Instant::now();
    let running = tokio::spawn(app.run_until_stopped(stop.clone()));
    let tracking = broker.topology().queue(Queue::Tracking);
    loop {
        let (reported, _) = queue_depth(&setup, &tracking).await?;
        if reported as usize >= messages {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "only {reported} of {messages} reported after 600 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    stop.cancel();
    running.await??;
    println!(
        "whole dispatcher:  {} messages sent and reported in {:.2} s = {:.0} messages/s (concurrency 128)",
        smtp.message_count() - before,
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
