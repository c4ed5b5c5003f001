//! The fault suite: the operator and the dispatcher as real processes, RabbitMQ, PostgreSQL and
//! a real SMTP server (smtp-capture), one fault injected per [`Scenario`], and at the end every
//! email counted ([`Report`]).
//!
//! Each run has its own world: a database (on the shared server, or in a [`PrivatePg`] cluster
//! for the scenarios that stop it), a queue prefix (on the shared broker, or a [`PrivateRabbit`]
//! node for the scenarios that restart or kill it), and TCP proxies between the services and
//! every server (broker, database, SMTP), through which connection faults are injected. The
//! requests are published by the runner itself, directly to the broker (never through a proxy),
//! persistent and confirmed, with 1–3 distinct recipients each (seeded).
//!
//! **lost** = expected emails − (delivered + failed + suppressed + set aside), where an email
//! counts as delivered only when the SMTP server received its `X-Mailtrail-Id` *and* its history
//! holds `dispatched`. Killed services are started again at once (what a process supervisor
//! does); the others must come back by themselves, and every process must still be running at
//! the end.

mod report;
mod webhooks;

pub use report::{Report, markdown_table, text_table};

use anyhow::{Context, bail};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Confirmation, Connection, ConnectionProperties};
use mailtrail_shared::topology::{Queue, QueueType, Topology};
use mailtrail_smtp_capture::SmtpCapture;
use mailtrail_test_support::{
    PrivatePg, PrivateRabbit, ServiceProcess, TcpProxy, TestBroker, TestDb, free_port, target_bin,
    try_scrape,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The dispatcher's maximum sends in flight (`MAILTRAIL_DISPATCH_CONCURRENCY`): a `kill -9` can
/// cost at most this many duplicates.
pub const DISPATCH_CONCURRENCY: u64 = 16;

/// `MAILTRAIL_DRAIN_TIMEOUT_MS` given to the services: a SIGTERM must end the process within it
/// (plus start-up slack).
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The dispatcher's SMTP timeout; the slow-SMTP fault delays each chunk by more.
const SMTP_TIMEOUT: Duration = Duration::from_secs(3);

/// One fault, injected while the pipeline is busy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No fault: the baseline.
    None,
    /// `kill -9` of the dispatcher `n` times at random moments, each time started again.
    KillDispatcher(u32),
    /// `kill -9` of the operator `n` times at random moments, each time started again.
    KillOperator(u32),
    /// SIGTERM of the dispatcher under load: it must exit 0 within the drain timeout; then
    /// started again.
    TermDispatcher,
    /// Every broker connection of every service reset (twice, 300 ms apart).
    CutBrokerConnections,
    /// The broker connections black-holed (no RST, silence) for this long.
    BlackholeBroker(Duration),
    /// The database connections black-holed for this long.
    BlackholeDb(Duration),
    /// The SMTP server refusing connections for this long.
    SmtpDown(Duration),
    /// The SMTP server accepting but answering each chunk later than the dispatcher's timeout,
    /// for this long: mail taken whose reply never arrives is sent again (counted, no bound).
    SmtpSlow(Duration),
    /// The (private) broker node stopped cleanly and started again.
    RestartBroker,
    /// `kill -9` of the (private) broker node, then started again.
    KillBroker,
    /// The (private) database cluster stopped with `-m immediate`, down this long, started again.
    StopDbImmediate(Duration),
    /// Once every email is sent, a signed `delivered` webhook (Standard Webhooks) for each,
    /// every one posted three times in shuffled order (retried until answered 2xx, as providers
    /// do), while the operator and the webhook sink are each `kill -9`ed this many times.
    WebhookFlood {
        operator_kills: u32,
        sink_kills: u32,
    },
}

impl Fault {
    fn private_broker(self) -> bool {
        matches!(self, Fault::RestartBroker | Fault::KillBroker)
    }

    fn private_db(self) -> bool {
        matches!(self, Fault::StopDbImmediate(_))
    }

    fn webhooks(self) -> bool {
        matches!(self, Fault::WebhookFlood { .. })
    }

    /// The most duplicates at SMTP this fault may cause (`None`: counted, not bounded).
    pub fn duplicate_bound(self, dispatcher_kills: u32) -> Option<u64> {
        match self {
            Fault::SmtpSlow(_) => None,
            // The server dying mid-transaction may have taken a message whose reply the
            // dispatcher never got: at most one per send in flight then.
            Fault::SmtpDown(_) => Some(DISPATCH_CONCURRENCY),
            _ => Some(u64::from(dispatcher_kills) * DISPATCH_CONCURRENCY),
        }
    }
}

/// A named fault run over `requests` requests.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub name: String,
    pub fault: Fault,
    pub requests: usize,
    pub seed: u64,
    /// How long the pipeline may take to drain after the fault.
    pub deadline: Duration,
    /// A check of the suite itself: after draining, one `dispatched` event is deleted, so the
    /// count must find exactly one lost email (delivered at SMTP, history without its end).
    pub sabotage: bool,
}

impl Scenario {
    pub fn new(name: &str, fault: Fault, requests: usize) -> Scenario {
        Scenario {
            name: name.to_owned(),
            fault,
            requests,
            seed: 0x6d61_696c_7472_6c00 ^ requests as u64,
            deadline: Duration::from_secs(240),
            sabotage: false,
        }
    }
}

/// The full suite: every scenario at `requests` requests (5,000 emails ≈ 2,500 requests).
pub fn full_suite(requests: usize) -> Vec<Scenario> {
    let s = |name: &str, fault| Scenario::new(name, fault, requests);
    vec![
        s("baseline (no fault)", Fault::None),
        s("kill -9 dispatcher ×3", Fault::KillDispatcher(3)),
        s("kill -9 operator ×3", Fault::KillOperator(3)),
        s("SIGTERM dispatcher under load", Fault::TermDispatcher),
        s(
            "broker connections force-closed",
            Fault::CutBrokerConnections,
        ),
        s(
            "broker black-holed 10 s",
            Fault::BlackholeBroker(Duration::from_secs(10)),
        ),
        s(
            "database black-holed 10 s",
            Fault::BlackholeDb(Duration::from_secs(10)),
        ),
        s("SMTP down 10 s", Fault::SmtpDown(Duration::from_secs(10))),
        s("SMTP slow 5 s", Fault::SmtpSlow(Duration::from_secs(5))),
        s("broker node restarted", Fault::RestartBroker),
        s("broker node kill -9", Fault::KillBroker),
        s(
            "database immediate stop 5 s",
            Fault::StopDbImmediate(Duration::from_secs(5)),
        ),
        s(
            "webhooks ×3 shuffled, kill -9 operator ×2 and sink ×3",
            Fault::WebhookFlood {
                operator_kills: 2,
                sink_kills: 3,
            },
        ),
    ]
}

/// What the fault task saw.
#[derive(Debug, Default)]
struct Injected {
    dispatcher_kills: u32,
    operator_kills: u32,
    fault_end: Option<Instant>,
    /// The same moment on the wall clock, to compare with the database's `recorded_at`.
    fault_end_wall: Option<SystemTime>,
    /// SIGTERM → exit, and the exit status, for [`Fault::TermDispatcher`].
    term_exit: Option<(Duration, bool)>,
    sink_kills: u32,
    webhook_posts: u64,
    /// Posts answered with anything but 2xx (or not at all), and posted again.
    webhook_retries: u64,
}

impl Injected {
    fn ended(&mut self) {
        self.fault_end = Some(Instant::now());
        self.fault_end_wall = Some(SystemTime::now());
    }
}

/// A run's world: servers, proxies, the SMTP server and the service processes.
struct World {
    _db: Option<TestDb>,
    _broker: Option<TestBroker>,
    pg: Option<PrivatePg>,
    rabbit: Option<PrivateRabbit>,
    db_url: String,
    amqp_url: String,
    prefix: String,
    db_proxy: TcpProxy,
    db_through: String,
    amqp_proxy: TcpProxy,
    amqp_through: String,
    smtp: SmtpCapture,
    smtp_proxy: TcpProxy,
    /// When each message reached the SMTP server.
    arrivals: Arc<Mutex<Vec<Instant>>>,
    dispatcher_port: u16,
    sink_port: u16,
}

impl World {
    async fn new(fault: Fault) -> anyhow::Result<World> {
        let (db, pg, db_url) = if fault.private_db() {
            let pg = PrivatePg::start().await.context("private PostgreSQL")?;
            pg.create_database("mailtrail").await?;
            let url = pg.url("mailtrail");
            (None, Some(pg), url)
        } else {
            let db = TestDb::try_new().await?;
            let url = db.url().to_owned();
            (Some(db), None, url)
        };
        let (broker, rabbit, amqp_url, prefix) = if fault.private_broker() {
            let rabbit = PrivateRabbit::start().await.context("private RabbitMQ")?;
            let url = rabbit.amqp_url();
            (None, Some(rabbit), url, "fault.".to_owned())
        } else {
            let broker = TestBroker::new();
            let topology = broker.topology();
            // The dispatcher's retry tier (MAILTRAIL_RETRY_SCHEDULE=1s) goes with the rest.
            broker.register_queue(topology.retry_queue(Queue::Dispatching, 1));
            broker.register_queue(topology.retry_queue(Queue::DispatchingPriority, 1));
            let prefix = broker.prefix().to_owned();
            (
                Some(broker),
                None,
                mailtrail_test_support::amqp_url(),
                prefix,
            )
        };
        let (db_proxy, db_through) = TcpProxy::for_url(&db_url).await?;
        let (amqp_proxy, amqp_through) = TcpProxy::for_url(&amqp_url).await?;
        let smtp = SmtpCapture::start().await?;
        let smtp_proxy = TcpProxy::start(smtp.addr()).await?;
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let hook_arrivals = arrivals.clone();
        smtp.on_message(move |_| {
            if let Ok(mut a) = hook_arrivals.lock() {
                a.push(Instant::now());
            }
        });
        Ok(World {
            _db: db,
            _broker: broker,
            pg,
            rabbit,
            db_url,
            amqp_url,
            prefix,
            db_proxy,
            db_through,
            amqp_proxy,
            amqp_through,
            smtp,
            smtp_proxy,
            arrivals,
            dispatcher_port: free_port(),
            sink_port: free_port(),
        })
    }

    fn topology(&self) -> Topology {
        Topology::new(self.prefix.clone(), QueueType::Classic)
    }

    fn common_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("MAILTRAIL_AMQP_URL", self.amqp_through.clone()),
            // Short heartbeats: a black-holed broker is noticed in seconds.
            ("MAILTRAIL_AMQP_HEARTBEAT_SECS", "2".to_owned()),
            ("MAILTRAIL_QUEUE_PREFIX", self.prefix.clone()),
            (
                "MAILTRAIL_DRAIN_TIMEOUT_MS",
                DRAIN_TIMEOUT.as_millis().to_string(),
            ),
        ]
    }

    fn operator(&self) -> anyhow::Result<ServiceProcess> {
        let mut env = self.common_env();
        env.extend([
            ("MAILTRAIL_DATABASE_URL", self.db_through.clone()),
            ("MAILTRAIL_RELAY_INTERVAL_MS", "200".to_owned()),
            ("MAILTRAIL_HTTP_ADDR", "127.0.0.1:0".to_owned()),
        ]);
        ServiceProcess::spawn("fault-operator", binary("operator")?, &["run"], &env)
    }

    fn dispatcher(&self) -> anyhow::Result<ServiceProcess> {
        let mut env = self.common_env();
        env.extend([
            (
                "MAILTRAIL_SMTP_URL",
                format!("smtp://127.0.0.1:{}", self.smtp_proxy.port()),
            ),
            (
                "MAILTRAIL_SMTP_TIMEOUT_MS",
                SMTP_TIMEOUT.as_millis().to_string(),
            ),
            (
                "MAILTRAIL_DISPATCH_CONCURRENCY",
                DISPATCH_CONCURRENCY.to_string(),
            ),
            (
                "MAILTRAIL_SMTP_CONNECTIONS",
                DISPATCH_CONCURRENCY.to_string(),
            ),
            (
                "MAILTRAIL_HTTP_ADDR",
                format!("127.0.0.1:{}", self.dispatcher_port),
            ),
            ("MAILTRAIL_RETRY_SCHEDULE", "1s".to_owned()),
            ("MAILTRAIL_MAX_ATTEMPTS", "1000".to_owned()),
            ("MAILTRAIL_RETRY_MAX_AGE", "1h".to_owned()),
            // A down SMTP server is probed every 2 s instead of 10: shorter runs.
            ("MAILTRAIL_BREAKER_PROBE_SECS", "2".to_owned()),
        ]);
        ServiceProcess::spawn("fault-dispatcher", binary("dispatcher")?, &[], &env)
    }

    fn webhook_sink(&self) -> anyhow::Result<ServiceProcess> {
        let mut env = self.common_env();
        env.extend([
            (
                "MAILTRAIL_HTTP_ADDR",
                format!("127.0.0.1:{}", self.sink_port),
            ),
            (
                "MAILTRAIL_WEBHOOK_STANDARD_SECRETS",
                format!("{TENANT}={WEBHOOK_SECRET}"),
            ),
        ]);
        ServiceProcess::spawn("fault-webhook-sink", binary("webhook-sink")?, &[], &env)
    }

    /// A connection straight to the broker (not through the proxy), topology declared.
    async fn connect(&self) -> anyhow::Result<Connection> {
        let connection = Connection::connect(&self.amqp_url, ConnectionProperties::default())
            .await
            .context("connecting to the broker")?;
        Ok(connection)
    }

    fn messages_after(&self, t: Instant) -> Option<Instant> {
        let arrivals = self.arrivals.lock().ok()?;
        arrivals.iter().copied().filter(|a| *a >= t).min()
    }
}

/// A built service binary (`cargo build` or `cargo test --workspace` made it).
fn binary(name: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = target_bin(name);
    if !path.exists() {
        bail!(
            "{} is missing: build it first (`cargo build -p mailtrail-operator -p \
             mailtrail-dispatcher`; scripts/test.sh and scripts/fault-suite.sh do)",
            path.display()
        );
    }
    Ok(path)
}

/// One generated request: its key and recipients.
struct Request {
    key: String,
    recipients: Vec<String>,
}

const TENANT: &str = "fault";

/// The Standard Webhooks secret the sink checks the flood's signatures with.
const WEBHOOK_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn requests(scenario: &Scenario) -> Vec<Request> {
    let mut rng = StdRng::seed_from_u64(scenario.seed);
    (0..scenario.requests)
        .map(|n| {
            let count = rng.random_range(1..=3);
            Request {
                key: format!("fault-{n}"),
                recipients: (0..count)
                    .map(|r| format!("r{n}-{r}@example.com"))
                    .collect(),
            }
        })
        .collect()
}

fn body(request: &Request) -> Vec<u8> {
    let to: Vec<String> = request
        .recipients
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect();
    format!(
        r#"{{"id": "{}", "tenant": "{TENANT}", "from": "Shop <shop@acme.test>", "to": [{}],
            "subject": "Order {}", "text": "Thanks"}}"#,
        request.key,
        to.join(", "),
        request.key
    )
    .into_bytes()
}

/// Publishes every request to the mailbox queue, persistent and confirmed (many in flight).
async fn publish_all(
    connection: &Connection,
    topology: &Topology,
    all: &[Request],
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = topology.queue(Queue::Mailbox);
    for chunk in all.chunks(200) {
        let mut confirms = Vec::with_capacity(chunk.len());
        for request in chunk {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &body(request),
                    BasicProperties::default()
                        .with_delivery_mode(2)
                        .with_content_type("application/json".into()),
                )
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            match confirm.await? {
                Confirmation::Ack(None) => {}
                other => bail!("the broker did not take a request: {other:?}"),
            }
        }
    }
    Ok(())
}

/// Runs one scenario and counts. An `Err` is a run that could not be set up or did not drain
/// by the deadline (which is itself a failure); the report's checks are in [`Report::problems`].
pub async fn run(scenario: &Scenario) -> anyhow::Result<Report> {
    mailtrail_test_support::init_tracing();
    let started = Instant::now();
    let world = World::new(scenario.fault).await?;
    let setup = started.elapsed();
    let publisher = world.connect().await?;
    {
        let channel = publisher.create_channel().await?;
        mailtrail_broker::declare_topology(&channel, &world.topology()).await?;
    }
    let all = requests(scenario);
    let expected: BTreeMap<uuid::Uuid, &Request> = all
        .iter()
        .flat_map(|r| {
            r.recipients
                .iter()
                .map(move |rcpt| (mailtrail_shared::ids::email_id(TENANT, &r.key, rcpt), r))
        })
        .collect();
    let processes = Mutex::new((world.operator()?, world.dispatcher()?));
    let sink = Mutex::new(if scenario.fault.webhooks() {
        Some(world.webhook_sink()?)
    } else {
        None
    });
    let emails: Vec<(uuid::Uuid, String)> = all
        .iter()
        .flat_map(|r| {
            r.recipients.iter().map(move |rcpt| {
                (
                    mailtrail_shared::ids::email_id(TENANT, &r.key, rcpt),
                    rcpt.clone(),
                )
            })
        })
        .collect();
    let published = tokio::sync::Notify::new();
    let run_started = Instant::now();

    let publish = async {
        let result = publish_all(&publisher, &world.topology(), &all).await;
        published.notify_one();
        result
    };
    let inject = inject(scenario, &world, &processes, &sink, &emails, &published);
    let (published_result, injected) = tokio::join!(publish, inject);
    published_result?;
    let injected = injected?;

    // Done: every expected email has its final event, and no job is left queued or in flight.
    let db = Db::connect(&world.db_url).await?;
    let drained_at = wait_until_done(
        &world,
        &db,
        &expected,
        scenario.deadline,
        scenario.fault.webhooks(),
    )
    .await;
    let drained_at = match drained_at {
        Ok(t) => t,
        Err(e) => {
            let r = count(&world, &db, scenario, &expected, &injected, None).await;
            bail!(
                "{}: the pipeline did not drain within {:?}: {e:#}\n{}",
                scenario.name,
                scenario.deadline,
                r.map(|r| format!("{r:#?}")).unwrap_or_default()
            );
        }
    };
    mailtrail_broker::close_connection(&publisher, "published").await;
    if scenario.sabotage {
        db.client
            .execute(
                "DELETE FROM events WHERE id =
                   (SELECT min(id) FROM events WHERE event_type = 'dispatched')",
                &[],
            )
            .await?;
    }
    let mut report = count(
        &world,
        &db,
        scenario,
        &expected,
        &injected,
        Some(drained_at),
    )
    .await?;
    report.run_time = run_started.elapsed();
    report.setup_time = setup;
    {
        let mut guard = processes.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        let (operator, dispatcher) = &mut *guard;
        let mut sink = sink.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        for p in [Some(operator), Some(dispatcher), sink.as_mut()]
            .into_iter()
            .flatten()
        {
            if !p.is_running() {
                report.problems.push(format!(
                    "{} is not running at the end (log {})",
                    p.name(),
                    p.log_path().display()
                ));
            }
        }
    }
    Ok(report)
}

/// Waits for progress: at least `n` messages at the SMTP server.
async fn at_smtp(world: &World, n: usize) {
    world.smtp.wait_for_count(n, Duration::from_secs(600)).await;
}

/// Random progress points (fractions of the expected emails, sorted) for repeated kills.
fn moments(seed: u64, n: u32, expected: usize) -> Vec<usize> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6b69_6c6c);
    let mut at: Vec<usize> = (0..n)
        .map(|_| (expected as f64 * rng.random_range(0.05..0.85)) as usize)
        .collect();
    at.sort_unstable();
    at
}

async fn inject(
    scenario: &Scenario,
    world: &World,
    processes: &Mutex<(ServiceProcess, ServiceProcess)>,
    sink: &Mutex<Option<ServiceProcess>>,
    emails: &[(uuid::Uuid, String)],
    published: &tokio::sync::Notify,
) -> anyhow::Result<Injected> {
    let expected = emails.len();
    let mut injected = Injected::default();
    let third = (expected / 3).max(1);
    let lock = || processes.lock().map_err(|_| anyhow::anyhow!("poisoned"));
    match scenario.fault {
        Fault::None => {}
        Fault::KillDispatcher(n) => {
            for at in moments(scenario.seed, n, expected) {
                at_smtp(world, at).await;
                let mut guard = lock()?;
                guard.1.kill();
                guard.1 = world.dispatcher()?;
                injected.dispatcher_kills += 1;
                injected.ended();
            }
        }
        Fault::KillOperator(n) => {
            for at in moments(scenario.seed, n, expected) {
                at_smtp(world, at).await;
                let mut guard = lock()?;
                guard.0.kill();
                guard.0 = world.operator()?;
                injected.operator_kills += 1;
                injected.ended();
            }
        }
        Fault::TermDispatcher => {
            at_smtp(world, third).await;
            let mut dispatcher = {
                let mut guard = lock()?;
                // The replacement starts once the old one has gone (a rolling restart).
                std::mem::replace(&mut guard.1, world.dispatcher_placeholder()?)
            };
            let sent = Instant::now();
            dispatcher.terminate();
            let status = dispatcher
                .wait_exit(DRAIN_TIMEOUT + Duration::from_secs(5))
                .await;
            let took = sent.elapsed();
            injected.term_exit = Some((took, status.as_ref().is_ok_and(|s| s.success())));
            let mut guard = lock()?;
            guard.1 = world.dispatcher()?;
            injected.ended();
        }
        Fault::CutBrokerConnections => {
            at_smtp(world, third).await;
            world.amqp_proxy.cut();
            tokio::time::sleep(Duration::from_millis(300)).await;
            world.amqp_proxy.cut();
            injected.ended();
        }
        Fault::BlackholeBroker(d) => {
            at_smtp(world, third).await;
            world.amqp_proxy.set_blackhole(true);
            tokio::time::sleep(d).await;
            world.amqp_proxy.set_blackhole(false);
            injected.ended();
        }
        Fault::BlackholeDb(d) => {
            at_smtp(world, third).await;
            world.db_proxy.set_blackhole(true);
            tokio::time::sleep(d).await;
            world.db_proxy.set_blackhole(false);
            injected.ended();
        }
        Fault::SmtpDown(d) => {
            at_smtp(world, third).await;
            world.smtp_proxy.set_refuse(true);
            world.smtp_proxy.cut();
            tokio::time::sleep(d).await;
            world.smtp_proxy.set_refuse(false);
            injected.ended();
        }
        Fault::SmtpSlow(d) => {
            at_smtp(world, third).await;
            world
                .smtp_proxy
                .set_delay(SMTP_TIMEOUT + Duration::from_secs(1));
            tokio::time::sleep(d).await;
            world.smtp_proxy.set_delay(Duration::ZERO);
            // Connections still holding delayed chunks are reset: the dispatcher reconnects.
            world.smtp_proxy.cut();
            injected.ended();
        }
        Fault::RestartBroker | Fault::KillBroker => {
            // The runner's own publisher is on this node too: finish publishing first.
            published.notified().await;
            at_smtp(world, third).await;
            let rabbit = world.rabbit.as_ref().context("no private broker")?;
            if scenario.fault == Fault::KillBroker {
                rabbit.kill9()?;
                rabbit.start_again().await?;
            } else {
                rabbit.restart().await?;
            }
            injected.ended();
        }
        Fault::WebhookFlood {
            operator_kills,
            sink_kills,
        } => {
            published.notified().await;
            at_smtp(world, expected).await;
            let flood =
                webhooks::Flood::new(world.sink_port, WEBHOOK_SECRET, emails, scenario.seed)?;
            let total = flood.total();
            let posting = flood.post_all();
            let killing = async {
                let mut plan: Vec<(usize, bool)> = moments(scenario.seed, operator_kills, total)
                    .into_iter()
                    .map(|at| (at, true))
                    .chain(
                        moments(scenario.seed + 1, sink_kills, total)
                            .into_iter()
                            .map(|at| (at, false)),
                    )
                    .collect();
                plan.sort_unstable();
                for (at, operator) in plan {
                    // Poll the flood's progress (it moves by itself; this is no timing guess).
                    while flood.answered() < at {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    if operator {
                        let mut guard = lock()?;
                        guard.0.kill();
                        guard.0 = world.operator()?;
                        injected.operator_kills += 1;
                    } else {
                        let mut guard = sink.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                        if let Some(old) = guard.as_mut() {
                            old.kill();
                        }
                        *guard = Some(world.webhook_sink()?);
                        injected.sink_kills += 1;
                    }
                    injected.ended();
                }
                anyhow::Ok(())
            };
            let (posted, killed) = tokio::join!(posting, killing);
            killed?;
            let (posts, retries) = posted?;
            injected.webhook_posts = posts;
            injected.webhook_retries = retries;
        }
        Fault::StopDbImmediate(d) => {
            at_smtp(world, third).await;
            let pg = world.pg.as_ref().context("no private database")?;
            pg.stop_immediate().await?;
            tokio::time::sleep(d).await;
            pg.start_again().await?;
            injected.ended();
        }
    }
    Ok(injected)
}

impl World {
    /// A process that has already exited, standing in while a service is being replaced.
    fn dispatcher_placeholder(&self) -> anyhow::Result<ServiceProcess> {
        ServiceProcess::spawn("fault-placeholder", "true", &[], &[])
    }
}

/// A plain client on the run's database (directly, not through the proxy).
struct Db {
    client: tokio_postgres::Client,
}

impl Db {
    async fn connect(url: &str) -> anyhow::Result<Db> {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(Db { client })
    }

    async fn final_count(&self) -> anyhow::Result<i64> {
        let row = self
            .client
            .query_one(
                "SELECT count(DISTINCT email_id) FROM events
                  WHERE event_type IN ('dispatched', 'failed', 'suppressed')",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    async fn delivered_count(&self) -> anyhow::Result<i64> {
        let row = self
            .client
            .query_one(
                "SELECT count(DISTINCT email_id) FROM events WHERE event_type = 'delivered'",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }
}

/// Waits until every expected email has its final event and the dispatching queues are empty
/// with nothing in flight; returns when.
async fn wait_until_done(
    world: &World,
    db: &Db,
    expected: &BTreeMap<uuid::Uuid, &Request>,
    deadline: Duration,
    webhooks: bool,
) -> anyhow::Result<Instant> {
    let until = Instant::now() + deadline;
    let want = expected.len() as i64;
    let topology = world.topology();
    let mut last;
    loop {
        let mut finals = db.final_count().await.unwrap_or(-1);
        if webhooks {
            finals = finals.min(db.delivered_count().await.unwrap_or(-1));
        }
        if finals >= want {
            let quiet = async {
                let connection = world.connect().await?;
                let channel = connection.create_channel().await?;
                let mut waiting = 0;
                for q in [
                    Queue::Dispatching,
                    Queue::DispatchingPriority,
                    Queue::Tracking,
                ] {
                    waiting += mailtrail_broker::queue_depth(&channel, &topology.queue(q))
                        .await?
                        .0;
                }
                let in_flight = try_scrape(world.dispatcher_port)
                    .await
                    .and_then(|m| m.get("mailtrail_dispatch_in_flight").copied())
                    .unwrap_or(f64::NAN);
                mailtrail_broker::close_connection(&connection, "checked").await;
                anyhow::Ok((waiting, in_flight))
            };
            match quiet.await {
                // A gauge of whole numbers; NaN (no answer) is not quiet.
                Ok((0, f)) if f.abs() < 0.5 => return Ok(Instant::now()),
                Ok((w, f)) => last = format!("{w} messages waiting, {f} sends in flight"),
                Err(e) => last = format!("{e:#}"),
            }
        } else {
            last = format!("{finals} of {want} emails have their final event");
        }
        if Instant::now() > until {
            bail!("{last}");
        }
        tokio::time::sleep(mailtrail_test_support::POLL_INTERVAL.max(Duration::from_millis(250)))
            .await;
    }
}

async fn count(
    world: &World,
    db: &Db,
    scenario: &Scenario,
    expected: &BTreeMap<uuid::Uuid, &Request>,
    injected: &Injected,
    drained_at: Option<Instant>,
) -> anyhow::Result<Report> {
    // X-Mailtrail-Id → times received.
    let mut received: BTreeMap<String, u64> = BTreeMap::new();
    for m in world.smtp.messages() {
        *received
            .entry(m.header("X-Mailtrail-Id").unwrap_or_default())
            .or_default() += 1;
    }
    // email → event type → times recorded.
    let mut events: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    let mut events_recorded = 0i64;
    for row in db
        .client
        .query(
            "SELECT email_id::text, event_type, count(*) FROM events GROUP BY 1, 2",
            &[],
        )
        .await?
    {
        let n: i64 = row.get(2);
        events_recorded += n;
        events.entry(row.get(0)).or_default().insert(row.get(1), n);
    }
    let emails_recorded: i64 = db
        .client
        .query_one("SELECT count(*) FROM emails", &[])
        .await?
        .get(0);
    let dead_letters: i64 = db
        .client
        .query_one("SELECT count(*) FROM dead_letters", &[])
        .await?
        .get(0);
    let set_aside_rows = db
        .client
        .query("SELECT email_id::text, request_key FROM dead_letters", &[])
        .await?;
    let aside_emails: BTreeSet<String> = set_aside_rows.iter().filter_map(|r| r.get(0)).collect();
    let aside_keys: BTreeSet<String> = set_aside_rows.iter().filter_map(|r| r.get(1)).collect();

    let mut report = Report {
        scenario: scenario.name.clone(),
        published: scenario.requests as u64,
        expected: expected.len() as u64,
        emails_recorded: emails_recorded as u64,
        events_recorded: events_recorded as u64,
        dead_letters: dead_letters as u64,
        dispatcher_kills: injected.dispatcher_kills,
        operator_kills: injected.operator_kills,
        duplicate_bound: scenario.fault.duplicate_bound(injected.dispatcher_kills),
        ..Report::default()
    };
    let mut lost_examples = Vec::new();
    for (id, request) in expected {
        let id_text = id.to_string();
        let types = events.get(&id_text);
        let has = |t: &str| types.is_some_and(|m| m.contains_key(t));
        let at_smtp = received.get(&id_text).copied().unwrap_or(0);
        if at_smtp > 0 && has("dispatched") {
            report.delivered += 1;
        } else if has("failed") {
            report.failed += 1;
        } else if has("suppressed") {
            report.suppressed += 1;
        } else if aside_emails.contains(&id_text) || aside_keys.contains(&request.key) {
            report.set_aside += 1;
        } else {
            report.lost += 1;
            if lost_examples.len() < 5 {
                lost_examples.push(format!(
                    "{id} ({}): {} times at SMTP, events {:?}",
                    request.key, at_smtp, types
                ));
            }
        }
    }
    report.received_unique = received.len() as u64;
    report.duplicates = received.values().map(|n| n - 1).sum();
    // The final and lifecycle events carry deterministic ids: any of them twice is a bug.
    report.events_twice = events
        .values()
        .flat_map(|m| m.iter())
        .filter(|(t, _)| {
            matches!(
                t.as_str(),
                "accepted" | "queued" | "dispatched" | "failed" | "suppressed" | "delivered"
            )
        })
        .map(|(_, n)| (*n - 1).max(0) as u64)
        .sum();
    let fault_end = injected.fault_end;
    // Moving again: both halves — a message at SMTP and an event recorded after the fault.
    let smtp_again = fault_end.and_then(|end| world.messages_after(end).map(|t| t - end));
    let event_again = match injected.fault_end_wall {
        Some(wall) => {
            let end = wall
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            let first: Option<f64> = db
                .client
                .query_one(
                    "SELECT extract(epoch FROM min(recorded_at))::float8 FROM events
                      WHERE recorded_at >= to_timestamp($1::float8)",
                    &[&end],
                )
                .await?
                .get(0);
            first.map(|t| Duration::from_secs_f64((t - end).max(0.0)))
        }
        None => None,
    };
    report.recovery = smtp_again.max(event_again);
    report.drain = fault_end
        .zip(drained_at)
        .map(|(end, done)| done.saturating_duration_since(end));
    if report.lost > 0 {
        report.problems.push(format!(
            "{} emails lost, e.g. {lost_examples:?}",
            report.lost
        ));
    }
    if report.events_twice > 0 {
        report
            .problems
            .push(format!("{} events recorded twice", report.events_twice));
    }
    if let Some(bound) = report.duplicate_bound
        && report.duplicates > bound
    {
        report.problems.push(format!(
            "{} duplicates at SMTP, more than the bound {bound}",
            report.duplicates
        ));
    }
    let unknown = received
        .keys()
        .filter(|k| {
            uuid::Uuid::parse_str(k)
                .map(|id| !expected.contains_key(&id))
                .unwrap_or(true)
        })
        .count();
    if unknown > 0 {
        report.problems.push(format!(
            "{unknown} messages at SMTP with an unknown X-Mailtrail-Id"
        ));
    }
    if scenario.fault.webhooks() {
        let missing = expected
            .keys()
            .filter(|id| {
                !events
                    .get(&id.to_string())
                    .is_some_and(|m| m.contains_key("delivered"))
            })
            .count();
        report.notes.push(format!(
            "{} webhooks posted ({} answered non-2xx or not at all, posted again), {} operator and {} sink kills; {} of {} emails without their delivered event",
            injected.webhook_posts,
            injected.webhook_retries,
            injected.operator_kills,
            injected.sink_kills,
            missing,
            expected.len()
        ));
        if missing > 0 {
            report
                .problems
                .push(format!("{missing} webhook events lost"));
        }
    }
    if let Some((took, ok)) = injected.term_exit {
        report.notes.push(format!("SIGTERM → exit in {took:.1?}"));
        if !ok {
            report.problems.push(format!(
                "the dispatcher did not exit 0 within {:?} of SIGTERM",
                DRAIN_TIMEOUT + Duration::from_secs(5)
            ));
        }
    }
    Ok(report)
}
