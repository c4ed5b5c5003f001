//! mailtrail end to end: the real operator, dispatcher, webhook sink and smtp-capture binaries
//! on a fresh database and queue prefix. Requests carry their publish time (microseconds since
//! the epoch) in `metadata.bench_published_us`; per-hop latencies are read back from the
//! events the operator recorded.

use crate::ceiling::{connect, declare_queue};
use crate::config::BenchArgs;
use crate::procs::{Service, free_port, wait_ready};
use crate::stats::{CpuSpent, Percentiles, read_cpu};
use anyhow::Context;
use futures_util::StreamExt;
use futures_util::future::FutureExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions};
use lapin::types::FieldTable;
use mailtrail_broker::{OutgoingMessage, Publisher, declare_topology, json_properties};
use mailtrail_shared::topology::{Queue, QueueType, Topology};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

/// The Standard Webhooks secret the benchmark's sink trusts for tenant `bench` (not a secret:
/// it exists for the length of one run).
pub const WEBHOOK_SECRET: &str = "whsec_YmVuY2gtb25seS1zZWNyZXQtZm9yLWEtbG9jYWwtcnVu";

pub fn now_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// A mailbox request of about `text.len()` bytes, stamped with its publish time.
pub fn request(tenant: &str, n: usize, text: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": format!("{tenant}-{n}"),
        "tenant": tenant,
        "from": "Bench <bench@mailtrail.test>",
        "to": format!("user{n}@example.com"),
        "subject": format!("Benchmark message {n}"),
        "text": text,
        "metadata": {"bench_published_us": now_us().to_string()},
    }))
    .unwrap_or_default()
}

/// Latencies of one run's emails, per hop and end to end, in milliseconds.
#[derive(Debug, Clone, Default)]
pub struct Hops {
    pub emails: usize,
    /// publish → `accepted` recorded (the intake transaction)
    pub intake: Percentiles,
    /// `accepted` recorded → `queued` (the relay stamps it just before publishing the job)
    pub relay: Percentiles,
    /// `queued` → `dispatched` at the SMTP server (the dispatcher's `occurred_at`)
    pub dispatch: Percentiles,
    /// `dispatched` occurred → recorded by the operator
    pub record: Percentiles,
    /// publish → `dispatched` recorded
    pub end_to_end: Percentiles,
    /// first `accepted` recorded → last `dispatched` recorded, seconds
    pub span_seconds: f64,
    /// first publish → last `dispatched` recorded, seconds
    pub publish_span_seconds: f64,
}

impl Hops {
    pub fn json(&self) -> serde_json::Value {
        json!({
            "emails": self.emails,
            "span_s": crate::stats::round2(self.span_seconds),
            "publish_span_s": crate::stats::round2(self.publish_span_seconds),
            "intake": self.intake.json(), "relay": self.relay.json(),
            "dispatch": self.dispatch.json(), "record": self.record.json(),
            "end_to_end": self.end_to_end.json(),
        })
    }
}

/// What the app bound to the status events received.
#[derive(Default)]
pub struct AppSink {
    pub received: AtomicUsize,
    pub dispatched: AtomicUsize,
    pub latencies_ms: Mutex<Vec<f64>>,
    pub last_dispatched_at: Mutex<Option<Instant>>,
}

pub struct Stack {
    pub label: String,
    pub db_name: String,
    pub db: tokio_postgres::Client,
    pub topology: Topology,
    pub prefix: String,
    pub publisher: Publisher,
    broker: lapin::Connection,
    pub smtp: Option<Service>,
    pub dispatcher: Option<Service>,
    pub sink: Option<Service>,
    pub operator: Option<Service>,
    pub sink_url: String,
    smtp_port: u16,
    pub app: Option<Arc<AppSink>>,
    app_stop: Arc<AtomicBool>,
    log_dir: PathBuf,
}

fn common_env(args: &BenchArgs, prefix: &str, http_port: u16) -> Vec<(String, String)> {
    vec![
        ("MAILTRAIL_AMQP_URL".into(), args.amqp_url.clone()),
        ("MAILTRAIL_QUEUE_PREFIX".into(), prefix.into()),
        ("MAILTRAIL_QUEUE_TYPE".into(), args.queue_type.clone()),
        (
            "MAILTRAIL_HTTP_ADDR".into(),
            format!("127.0.0.1:{http_port}"),
        ),
        (
            "MAILTRAIL_LOG".into(),
            std::env::var("MAILTRAIL_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ]
}

pub async fn admin_db(args: &BenchArgs) -> anyhow::Result<tokio_postgres::Client> {
    connect_db(&args.database("postgres")).await
}

pub async fn connect_db(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.with_context(|| {
        format!(
            "cannot connect to PostgreSQL ({})",
            url.rsplit('@').next().unwrap_or("")
        )
    })?;
    tokio::spawn(connection);
    Ok(client)
}

impl Stack {
    /// Creates the database and the queues (nothing consumes yet), and with `bind_app` a queue
    /// of the app's bound to every status event, drained by a consumer in this process.
    pub async fn prepare(
        args: &BenchArgs,
        run_id: &str,
        label: &str,
        bind_app: bool,
    ) -> anyhow::Result<Stack> {
        let db_name = format!("mtbench_{run_id}_{label}");
        let admin = admin_db(args).await?;
        // Two statements: DROP DATABASE cannot run in the implicit transaction of a batch.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {db_name}"))
            .await
            .context("cannot create the benchmark database")?;
        let db = connect_db(&args.database(&db_name)).await?;
        let prefix = format!("mtbench-{run_id}-{label}.");
        let queue_type: QueueType = args.queue_type.parse().map_err(anyhow::Error::msg)?;
        let topology = Topology::new(prefix.clone(), queue_type);
        let broker = connect(&args.amqp_url).await?;
        let channel = broker.create_channel().await?;
        declare_topology(&channel, &topology).await?;
        let publisher = Publisher::open(&broker).await?;
        let app_stop = Arc::new(AtomicBool::new(false));
        let app = if bind_app {
            let queue = format!("{prefix}bench-app");
            declare_queue(&channel, &queue, &args.queue_type).await?;
            channel
                .queue_bind(
                    queue.as_str().into(),
                    topology.events_exchange().as_str().into(),
                    "email.#".into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            let sink = Arc::new(AppSink::default());
            tokio::spawn(app_consumer(
                broker.create_channel().await?,
                queue,
                sink.clone(),
                app_stop.clone(),
            ));
            Some(sink)
        } else {
            None
        };
        let log_dir = args.out_dir.join("logs").join(label);
        Ok(Stack {
            label: label.to_owned(),
            db_name,
            db,
            topology,
            prefix,
            publisher,
            broker,
            smtp: None,
            dispatcher: None,
            sink: None,
            operator: None,
            sink_url: String::new(),
            smtp_port: 0,
            app,
            app_stop,
            log_dir,
        })
    }

    pub fn services(&self) -> Vec<&Service> {
        [&self.smtp, &self.dispatcher, &self.sink, &self.operator]
            .into_iter()
            .flatten()
            .collect()
    }

    /// Publishes `n` requests of `tenant` to the mailbox, 1,000 confirms in flight at a time.
    pub async fn preload(&self, tenant: &str, n: usize, text: &str) -> anyhow::Result<()> {
        let mailbox = self.topology.queue(Queue::Mailbox);
        crate::ceiling::preload(
            &self.publisher,
            &mailbox,
            (0..n).map(|i| {
                (
                    request(tenant, i, text),
                    json_properties(&format!("{tenant}-{i}"), FieldTable::default()),
                )
            }),
        )
        .await
    }

    /// Starts smtp-capture, the dispatcher and the webhook sink and waits until they are ready.
    pub async fn start_edge(
        &mut self,
        args: &BenchArgs,
        http: &reqwest::Client,
    ) -> anyhow::Result<()> {
        self.smtp_port = free_port()?;
        let smtp = Service::spawn(
            "smtp-capture",
            &args.bin("smtp-capture"),
            &[],
            &[
                (
                    "MAILTRAIL_SMTP_CAPTURE_ADDR".into(),
                    format!("127.0.0.1:{}", self.smtp_port),
                ),
                ("MAILTRAIL_LOG".into(), "warn".into()),
            ],
            &self.log_dir,
        )?;
        self.smtp = Some(smtp);
        wait_tcp(self.smtp_port).await?;

        let (dispatcher, _) = self
            .spawn_ready(
                "dispatcher",
                args,
                http,
                vec![
                    ("MAILTRAIL_SMTP_URL".into(), self.smtp_url()),
                    ("MAILTRAIL_SMTP_STARTTLS".into(), "off".into()),
                ],
            )
            .await?;
        self.dispatcher = Some(dispatcher);
        let (sink, port) = self
            .spawn_ready(
                "webhook-sink",
                args,
                http,
                vec![(
                    "MAILTRAIL_WEBHOOK_STANDARD_SECRETS".into(),
                    format!("bench={WEBHOOK_SECRET}"),
                )],
            )
            .await?;
        self.sink = Some(sink);
        self.sink_url = format!("http://127.0.0.1:{port}");
        Ok(())
    }

    pub fn smtp_url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.smtp_port)
    }

    /// Starts the operator (it migrates the fresh database, then drains the mailbox).
    pub async fn start_operator(
        &mut self,
        args: &BenchArgs,
        http: &reqwest::Client,
    ) -> anyhow::Result<()> {
        let database = args.database(&self.db_name);
        let (operator, _) = self
            .spawn_ready(
                "operator",
                args,
                http,
                vec![("MAILTRAIL_DATABASE_URL".into(), database)],
            )
            .await?;
        self.operator = Some(operator);
        Ok(())
    }

    /// Starts the service binary `name` with the common settings plus `extra` on a free HTTP
    /// port, and waits until its `/readyz` answers; gives the service and that port.
    async fn spawn_ready(
        &self,
        name: &str,
        args: &BenchArgs,
        http: &reqwest::Client,
        extra: Vec<(String, String)>,
    ) -> anyhow::Result<(Service, u16)> {
        let port = free_port()?;
        let mut env = common_env(args, &self.prefix, port);
        env.extend(extra);
        let mut service = Service::spawn(name, &args.bin(name), &[], &env, &self.log_dir)?;
        wait_ready(
            http,
            &format!("http://127.0.0.1:{port}/readyz"),
            &mut service,
            Duration::from_secs(60),
        )
        .await?;
        Ok((service, port))
    }

    fn check_running(&mut self) -> anyhow::Result<()> {
        for service in [
            &mut self.smtp,
            &mut self.dispatcher,
            &mut self.sink,
            &mut self.operator,
        ]
        .into_iter()
        .flatten()
        {
            service.check_running()?;
        }
        Ok(())
    }

    /// Events of one type recorded so far (all tenants).
    pub async fn count_events(&self, event_type: &str) -> anyhow::Result<i64> {
        let row = self
            .db
            .query_one(
                "SELECT count(*) FROM events WHERE event_type = $1",
                &[&event_type],
            )
            .await?;
        Ok(row.get(0))
    }

    /// Waits until `target` events of `event_type` are recorded; the time it happened.
    pub async fn wait_events(
        &mut self,
        event_type: &str,
        target: i64,
        timeout: Duration,
    ) -> anyhow::Result<Instant> {
        let started = Instant::now();
        loop {
            self.check_running()?;
            let count = self.count_events(event_type).await?;
            if count >= target {
                return Ok(Instant::now());
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "only {count} of {target} {event_type} events recorded after {timeout:?} (logs: {})",
                self.log_dir.display()
            );
            // Seldom while far from done (each poll counts the events), often near the end.
            let pause = if count * 20 < target * 19 { 1000 } else { 100 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// Waits until the status outbox is empty (every recorded event announced); seconds waited.
    pub async fn wait_status_outbox(&self, timeout: Duration) -> anyhow::Result<f64> {
        let started = Instant::now();
        loop {
            let row = self
                .db
                .query_one("SELECT count(*) FROM status_outbox", &[])
                .await?;
            let left: i64 = row.get(0);
            if left == 0 {
                return Ok(started.elapsed().as_secs_f64());
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "{left} status events still unpublished after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Per-hop latencies of a tenant's emails, from the recorded events.
    pub async fn hops(&self, tenant: &str) -> anyhow::Result<Hops> {
        let rows = self
            .db
            .query(
                "SELECT (r.metadata->>'bench_published_us')::int8,
                        (extract(epoch FROM max(ev.recorded_at) FILTER (WHERE ev.event_type = 'accepted')) * 1e6)::int8,
                        (extract(epoch FROM max(ev.occurred_at) FILTER (WHERE ev.event_type = 'queued')) * 1e6)::int8,
                        (extract(epoch FROM max(ev.occurred_at) FILTER (WHERE ev.event_type = 'dispatched')) * 1e6)::int8,
                        (extract(epoch FROM max(ev.recorded_at) FILTER (WHERE ev.event_type = 'dispatched')) * 1e6)::int8
                 FROM emails m
                 JOIN requests r ON r.id = m.request_id
                 JOIN events ev ON ev.email_id = m.id
                 WHERE m.tenant = $1
                 GROUP BY m.id, r.metadata",
                &[&tenant],
            )
            .await?;
        let mut hops: [Vec<f64>; 5] = Default::default();
        let (mut first_accepted, mut first_published, mut last_dispatched) =
            (i64::MAX, i64::MAX, i64::MIN);
        let ms = |a: i64, b: i64| (b - a) as f64 / 1000.0;
        for row in &rows {
            let (Some(published), Some(accepted), Some(queued), Some(d_occurred), Some(d_recorded)) = (
                row.get::<_, Option<i64>>(0),
                row.get::<_, Option<i64>>(1),
                row.get::<_, Option<i64>>(2),
                row.get::<_, Option<i64>>(3),
                row.get::<_, Option<i64>>(4),
            ) else {
                continue;
            };
            hops[0].push(ms(published, accepted));
            hops[1].push(ms(accepted, queued));
            hops[2].push(ms(queued, d_occurred));
            hops[3].push(ms(d_occurred, d_recorded));
            hops[4].push(ms(published, d_recorded));
            first_accepted = first_accepted.min(accepted);
            first_published = first_published.min(published);
            last_dispatched = last_dispatched.max(d_recorded);
        }
        let emails = hops[4].len();
        let [intake, relay, dispatch, record, end_to_end] = hops.map(Percentiles::of);
        Ok(Hops {
            emails,
            intake,
            relay,
            dispatch,
            record,
            end_to_end,
            span_seconds: if emails > 0 {
                (last_dispatched - first_accepted) as f64 / 1e6
            } else {
                0.0
            },
            publish_span_seconds: if emails > 0 {
                (last_dispatched - first_published) as f64 / 1e6
            } else {
                0.0
            },
        })
    }

    /// Peak resident memory of each service, KiB.
    pub fn peak_rss(&self) -> Vec<(String, u64)> {
        self.services()
            .iter()
            .map(|s| (s.name.clone(), s.peak_rss_kib()))
            .collect()
    }

    pub async fn stop(mut self, args: &BenchArgs) -> anyhow::Result<()> {
        self.app_stop.store(true, Ordering::Relaxed);
        for service in [
            &mut self.operator,
            &mut self.sink,
            &mut self.dispatcher,
            &mut self.smtp,
        ]
        .into_iter()
        .flatten()
        {
            service.stop(Duration::from_secs(15)).await;
        }
        // The queues: delete what the run declared (they are empty or nearly so).
        if let Ok(channel) = self.broker.create_channel().await {
            let mut names: Vec<String> =
                self.topology.queues().into_iter().map(|q| q.name).collect();
            names.push(format!("{}bench-app", self.prefix));
            for delay in [30, 120, 600, 3600, 14400, 43200] {
                names.push(self.topology.retry_queue(Queue::Dispatching, delay));
                names.push(self.topology.retry_queue(Queue::DispatchingPriority, delay));
            }
            for name in names {
                let _ = channel
                    .queue_delete(name.as_str().into(), Default::default())
                    .await;
            }
            let _ = channel
                .exchange_delete(
                    self.topology.events_exchange().as_str().into(),
                    Default::default(),
                )
                .await;
        }
        let _ = self.broker.close(200, "done".into()).await;
        drop(self.db);
        if !args.keep {
            let admin = admin_db(args).await?;
            admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.db_name
                ))
                .await?;
        }
        Ok(())
    }
}

async fn wait_tcp(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("nothing listens on 127.0.0.1:{port}")
}

/// The app: drains its bound queue, acking after each handful; for every `dispatched` status
/// event it notes publish → received.
async fn app_consumer(
    channel: lapin::Channel,
    queue: String,
    sink: Arc<AppSink>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    channel.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.as_str().into(),
            "bench-app".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    while !stop.load(Ordering::Relaxed) {
        let Ok(Some(first)) =
            tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
        else {
            continue;
        };
        let mut deliveries = vec![first?];
        while deliveries.len() < 200 {
            match consumer.next().now_or_never() {
                Some(Some(d)) => deliveries.push(d?),
                _ => break,
            }
        }
        let now = now_us();
        for delivery in &deliveries {
            sink.received.fetch_add(1, Ordering::Relaxed);
            let Ok(event) = serde_json::from_slice::<serde_json::Value>(&delivery.data) else {
                continue;
            };
            if event["type"] == "dispatched" {
                sink.dispatched.fetch_add(1, Ordering::Relaxed);
                if let Some(published) = event["metadata"]["bench_published_us"]
                    .as_str()
                    .and_then(|s| s.parse::<i64>().ok())
                {
                    sink.latencies_ms
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .push((now - published) as f64 / 1000.0);
                }
                *sink
                    .last_dispatched_at
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))? = Some(Instant::now());
            }
        }
        if let Some(last) = deliveries.last() {
            last.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
    }
    Ok(())
}

/// A closed-loop run: `n` requests pre-loaded, then the operator started; done when every
/// email's `dispatched` is recorded.
pub struct ClosedRun {
    pub hops: Hops,
    pub rate: f64,
    pub wall_seconds: f64,
    pub status_drain_seconds: f64,
    pub app_dispatched: usize,
    pub app_latency: Percentiles,
    pub app_wall_seconds: f64,
    pub cpu: CpuSpent,
}

pub async fn closed_loop(
    stack: &mut Stack,
    args: &BenchArgs,
    http: &reqwest::Client,
    tenant: &str,
    n: usize,
    text: &str,
) -> anyhow::Result<ClosedRun> {
    stack.preload(tenant, n, text).await?;
    let before = read_cpu(&stack.services());
    let started = Instant::now();
    stack.start_operator(args, http).await?;
    let timeout = Duration::from_secs(120 + n as u64 / 50);
    let done = stack.wait_events("dispatched", n as i64, timeout).await?;
    let wall_seconds = done.duration_since(started).as_secs_f64();
    let status_drain_seconds = stack.wait_status_outbox(timeout).await?;
    let (mut app_dispatched, mut app_latency, mut app_wall_seconds) =
        (0, Percentiles::default(), 0.0);
    if let Some(app) = stack.app.clone() {
        let waited = Instant::now();
        while app.dispatched.load(Ordering::Relaxed) < n && waited.elapsed() < timeout {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        app_dispatched = app.dispatched.load(Ordering::Relaxed);
        let last = app
            .last_dispatched_at
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .unwrap_or_else(Instant::now);
        app_wall_seconds = last.duration_since(started).as_secs_f64();
        app_latency = Percentiles::of(
            app.latencies_ms
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .clone(),
        );
    }
    let cpu = CpuSpent::between(&before, &read_cpu(&stack.services()));
    let hops = stack.hops(tenant).await?;
    anyhow::ensure!(
        hops.emails == n,
        "{} of {n} emails have a complete history",
        hops.emails
    );
    Ok(ClosedRun {
        rate: n as f64 / hops.span_seconds,
        hops,
        wall_seconds,
        status_drain_seconds,
        app_dispatched,
        app_latency,
        app_wall_seconds,
        cpu,
    })
}

/// An open-loop run: requests published at `rate` per second for `seconds`, each stamped as it
/// is published, with the services already running; done when every `dispatched` is recorded.
pub struct OpenRun {
    pub offered_rate: f64,
    pub published: usize,
    pub publish_seconds: f64,
    pub hops: Hops,
    pub cpu: CpuSpent,
}

pub async fn open_loop(
    stack: &mut Stack,
    tenant: &str,
    rate: f64,
    seconds: u64,
    text: &str,
) -> anyhow::Result<OpenRun> {
    let baseline = stack.count_events("dispatched").await?;
    let total = (rate * seconds as f64).round() as usize;
    let mailbox = stack.topology.queue(Queue::Mailbox);
    let before = read_cpu(&stack.services());
    let started = Instant::now();
    let mut sent = 0usize;
    let mut confirms = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while sent < total {
        tick.tick().await;
        let due = ((started.elapsed().as_secs_f64() * rate) as usize + 1).min(total);
        if due <= sent {
            continue;
        }
        let batch: Vec<OutgoingMessage> = (sent..due)
            .map(|i| OutgoingMessage {
                routing_key: mailbox.clone(),
                body: request(tenant, i, text),
                properties: json_properties(&format!("{tenant}-{i}"), FieldTable::default()),
            })
            .collect();
        sent = due;
        let publisher = stack.publisher.clone();
        // Confirms are awaited beside the schedule, so a slow confirm never delays the next publish.
        confirms.spawn(async move { publisher.publish_all(&batch).await });
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    while let Some(joined) = confirms.join_next().await {
        joined??;
    }
    let timeout = Duration::from_secs(120 + total as u64 / 50);
    stack
        .wait_events("dispatched", baseline + total as i64, timeout)
        .await?;
    let cpu = CpuSpent::between(&before, &read_cpu(&stack.services()));
    let hops = stack.hops(tenant).await?;
    anyhow::ensure!(
        hops.emails == total,
        "{} of {total} emails have a complete history",
        hops.emails
    );
    Ok(OpenRun {
        offered_rate: rate,
        published: total,
        publish_seconds,
        hops,
        cpu,
    })
}
