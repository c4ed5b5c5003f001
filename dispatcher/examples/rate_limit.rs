//! Live accuracy of the per-provider rate limit (docs/benchmarks.md): the whole dispatcher sends
//! through a local imitation of SendGrid's API (provider-sim) with `MAILTRAIL_RATE_LIMITS`
//! set, and the messages the imitation accepts are counted per second.
//!
//! ```sh
//! cargo run --release -p mailtrail-dispatcher --example rate_limit -- [per-second] [messages]
//! ```

use mailtrail_broker::{OutgoingMessage, Publisher, declare_topology, json_properties};
use mailtrail_dispatcher::{DispatcherApp, DispatcherConfig};
use mailtrail_provider_sim::{Api, Credentials, ProviderSim};
use mailtrail_shared::address::parse_address;
use mailtrail_shared::contract::Priority;
use mailtrail_shared::dispatch::DispatchJob;
use mailtrail_shared::topology::Queue;
use mailtrail_test_support::TestBroker;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn job(n: usize) -> DispatchJob {
    DispatchJob {
        version: 1,
        job_id: Uuid::new_v4(),
        email_id: Uuid::new_v4(),
        request_id: Uuid::new_v4(),
        request_key: format!("rate-{n}"),
        tenant: "bench".into(),
        attempt: 1,
        priority: Priority::Normal,
        from: parse_address("bench@mailtrail.test").expect("address"),
        to: parse_address(&format!("user{n}@example.com")).expect("address"),
        reply_to: None,
        subject: format!("Rate {n}"),
        text: Some("Hello".into()),
        html: None,
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
    let mut args = std::env::args().skip(1);
    let per_second: f64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(200.0);
    let messages: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2_000);
    let sim = ProviderSim::start(Api::SendGrid).await?;
    sim.set_keep_messages(false);
    let Credentials::SendGrid { api_key } = sim.credentials() else {
        anyhow::bail!("the SendGrid imitation has SendGrid credentials");
    };

    let broker = TestBroker::new();
    let connection = broker.connect().await;
    declare_topology(&connection.create_channel().await?, &broker.topology()).await?;
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
    config.http_addr = "127.0.0.1:0".parse()?;
    config.provider = "sendgrid".into();
    config.sendgrid_base_url = sim.base_url();
    config.sendgrid_api_key = Some(api_key);
    config.rate_limits = format!("sendgrid={per_second}");
    config.concurrency = 128;
    let app = DispatcherApp::build(config).await?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(app.run_until_stopped(stop.clone()));
    println!(
        "rate_limit: {messages} messages at a limit of {per_second}/s through provider-sim (SendGrid)"
    );

    let started = Instant::now();
    let mut per_second_counts = Vec::new();
    let mut last = 0;
    while sim.accepted_count() < messages && started.elapsed() < Duration::from_secs(600) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = sim.accepted_count();
        per_second_counts.push(now - last);
        last = now;
    }
    let elapsed = started.elapsed().as_secs_f64();
    stop.cancel();
    running.await??;
    // The first second holds the bucket's burst (one second's worth) on top of the rate.
    let steady: Vec<usize> = per_second_counts
        .iter()
        .copied()
        .skip(1)
        .take(per_second_counts.len().saturating_sub(2))
        .collect();
    let mean = steady.iter().sum::<usize>() as f64 / steady.len().max(1) as f64;
    println!(
        "accepted {} in {elapsed:.1} s; steady seconds: mean {mean:.1}/s, min {}, max {} \
         (limit {per_second}/s, {:.1} % of it)",
        sim.accepted_count(),
        steady.iter().min().copied().unwrap_or(0),
        steady.iter().max().copied().unwrap_or(0),
        100.0 * mean / per_second
    );
    println!("per second: {per_second_counts:?}");
    Ok(())
}
