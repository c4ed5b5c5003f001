//! The hand-written peer: the design of the seed articles, which users compare mailtrail with.
//! Three consumers, each with prefetch 1, one message at a time: intake inserts the email (one
//! statement, autocommit), publishes the job and awaits its confirm, then acks; the sender sends
//! it over SMTP (one connection), publishes `dispatched` and awaits the confirm, then acks; the
//! tracker inserts the event, then acks. Same broker, database, SMTP server and message sizes
//! as mailtrail's closed loop.

use crate::ceiling::{connect, declare_queue, preload};
use crate::config::BenchArgs;
use crate::e2e::{admin_db, connect_db, request};
use crate::procs::Service;
use crate::stats::{CpuSpent, Percentiles, read_cpu};
use anyhow::Context;
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use mailtrail_broker::{OutgoingMessage, Publisher, json_properties};
use mailtrail_dispatcher::message;
use mailtrail_dispatcher::smtp::{SmtpSender, envelope};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub struct PeerRun {
    pub emails: usize,
    pub seconds: f64,
    pub end_to_end: Percentiles,
    pub cpu: CpuSpent,
}

impl PeerRun {
    pub fn rate(&self) -> f64 {
        self.emails as f64 / self.seconds
    }
}

async fn consumer(connection: &lapin::Connection, queue: &str) -> anyhow::Result<lapin::Consumer> {
    let channel = connection.create_channel().await?;
    channel.basic_qos(1, BasicQosOptions::default()).await?;
    Ok(channel
        .basic_consume(
            queue.into(),
            "peer".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?)
}

fn out(queue: &str, body: Vec<u8>) -> OutgoingMessage {
    OutgoingMessage {
        routing_key: queue.to_owned(),
        body,
        properties: json_properties("peer", FieldTable::default()),
    }
}

pub async fn run(
    args: &BenchArgs,
    run_id: &str,
    smtp_url: &str,
    capture: &Service,
    emails: usize,
    text: &str,
) -> anyhow::Result<PeerRun> {
    let db_name = format!("mtbench_{run_id}_peer");
    let admin = admin_db(args).await?;
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
        .await?;
    admin
        .batch_execute(&format!("CREATE DATABASE {db_name}"))
        .await?;
    let db_url = args.database(&db_name);
    let setup_db = connect_db(&db_url).await?;
    setup_db
        .batch_execute(
            "CREATE TABLE emails (id text PRIMARY KEY, recipient text NOT NULL, subject text NOT NULL,
                                  body text, published_us bigint, created_at timestamptz NOT NULL DEFAULT now());
             CREATE TABLE events (id bigserial PRIMARY KEY, email_id text NOT NULL REFERENCES emails,
                                  type text NOT NULL, recorded_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        )
        .await?;
    let prefix = format!("mtbench-{run_id}-peer.");
    let queues = ["mailbox", "dispatching", "tracking"].map(|q| format!("{prefix}{q}"));
    let setup = connect(&args.amqp_url).await?;
    let channel = setup.create_channel().await?;
    for queue in &queues {
        declare_queue(&channel, queue, &args.queue_type).await?;
    }
    preload(
        &Publisher::open(&setup).await?,
        &queues[0],
        (0..emails).map(|i| {
            (
                request("peer", i, text),
                json_properties("peer", FieldTable::default()),
            )
        }),
    )
    .await?;

    let done = Arc::new(AtomicUsize::new(0));
    let before = read_cpu(&[capture]);
    let started = Instant::now();
    let mut stages = tokio::task::JoinSet::new();

    // Intake: insert, publish the job, await its confirm, ack.
    {
        let connection = connect(&args.amqp_url).await?;
        let db = connect_db(&db_url).await?;
        let (from, to) = (queues[0].clone(), queues[1].clone());
        stages.spawn(async move {
            let mut consumer = consumer(&connection, &from).await?;
            let publisher = Publisher::open(&connection).await?;
            for _ in 0..emails {
                let delivery = consumer.next().await.context("consumer ended")??;
                let request: serde_json::Value = serde_json::from_slice(&delivery.data)?;
                let id = request["id"].as_str().unwrap_or_default();
                let published: i64 = request["metadata"]["bench_published_us"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                db.execute(
                    "INSERT INTO emails (id, recipient, subject, body, published_us) VALUES ($1, $2, $3, $4, $5)",
                    &[&id, &request["to"].as_str().unwrap_or_default(), &request["subject"].as_str().unwrap_or_default(),
                      &request["text"].as_str().unwrap_or_default(), &published],
                )
                .await?;
                publisher.publish(out(&to, delivery.data.clone())).await?;
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            anyhow::Ok(())
        });
    }
    // Sender: SMTP over one connection, publish `dispatched`, await its confirm, ack.
    {
        let connection = connect(&args.amqp_url).await?;
        let sender = SmtpSender::new(smtp_url, "bench.local", 1, Duration::from_secs(10)).await?;
        let (from, to) = (queues[1].clone(), queues[2].clone());
        let text = text.to_owned();
        stages.spawn(async move {
            let mut consumer = consumer(&connection, &from).await?;
            let publisher = Publisher::open(&connection).await?;
            for n in 0..emails {
                let delivery = consumer.next().await.context("consumer ended")??;
                let request: serde_json::Value = serde_json::from_slice(&delivery.data)?;
                let job = crate::smtp::job(n, &text)?;
                let formatted = message::build(&job, "bench.local")
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?
                    .formatted();
                let envelope = envelope(&job.from.address, &job.to.address)
                    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
                sender
                    .send(&envelope, &formatted)
                    .await
                    .map_err(|e| anyhow::anyhow!("SMTP send failed: {e:?}"))?;
                let event = serde_json::json!({"id": request["id"], "type": "dispatched"});
                publisher
                    .publish(out(&to, serde_json::to_vec(&event)?))
                    .await?;
                delivery.acker.ack(BasicAckOptions::default()).await?;
            }
            anyhow::Ok(())
        });
    }
    // Tracker: insert the event, ack.
    {
        let connection = connect(&args.amqp_url).await?;
        let db = connect_db(&db_url).await?;
        let from = queues[2].clone();
        let done = done.clone();
        stages.spawn(async move {
            let mut consumer = consumer(&connection, &from).await?;
            for _ in 0..emails {
                let delivery = consumer.next().await.context("consumer ended")??;
                let event: serde_json::Value = serde_json::from_slice(&delivery.data)?;
                db.execute(
                    "INSERT INTO events (email_id, type) VALUES ($1, $2)",
                    &[
                        &event["id"].as_str().unwrap_or_default(),
                        &event["type"].as_str().unwrap_or_default(),
                    ],
                )
                .await?;
                delivery.acker.ack(BasicAckOptions::default()).await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            anyhow::Ok(())
        });
    }
    let deadline = Duration::from_secs(300 + emails as u64 / 20);
    while let Some(joined) = tokio::time::timeout(deadline, stages.join_next())
        .await
        .context("the peer did not finish in time")?
    {
        joined??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu = CpuSpent::between(&before, &read_cpu(&[capture]));
    let rows = setup_db
        .query(
            "SELECT ((extract(epoch FROM v.recorded_at) * 1e6)::int8 - e.published_us)::float8 / 1000
             FROM events v JOIN emails e ON e.id = v.email_id",
            &[],
        )
        .await?;
    let end_to_end = Percentiles::of(rows.iter().map(|r| r.get::<_, f64>(0)).collect());
    for queue in &queues {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    let _ = setup.close(200, "done".into()).await;
    drop(setup_db);
    if !args.keep {
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
            .await?;
    }
    Ok(PeerRun {
        emails: done.load(Ordering::Relaxed),
        seconds,
        end_to_end,
        cpu,
    })
}
