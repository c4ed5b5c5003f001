//! Every provider against the real broker, each through a local imitation of its API
//! (`mailtrail-provider-sim`, or smtp-capture for SMTP), with one-second retry tiers:
//!
//! * each HTTP provider's failure table, end to end: a message taken is `dispatched` with the
//!   provider's message id and our id attached; a message refused is `failed` (Postmark's
//!   inactive recipient: `bounced`) and never retried; a refused key marks the provider down on
//!   `/readyz` and makes mail wait, and mail flows once the key works; 429, 5xx, timeouts and
//!   dropped connections defer and retry;
//! * the SMTP table's gaps (a 5.1.1 bounce, a dropped connection, readiness while refused) and
//!   every kind of per-recipient reply: 554 5.7.1 at RCPT or after DATA fails, 550 5.1.1
//!   bounces, 450/451 defer; Resend's 403 `invalid_to_address` fails;
//! * an outage of 1,000 emails: the breaker opens, the provider sees only probes, and every email
//!   is delivered once when it is back; with a failover provider, everything goes there;
//! * a revoked key: mail waits without spending attempts, and flows once the key is fixed;
//! * a priority email overtakes a backlog.

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use mailtrail_broker::declare_topology;
use mailtrail_dispatcher::config::parse_schedule;
use mailtrail_dispatcher::{DispatcherApp, DispatcherConfig};
use mailtrail_provider_sim::{Api, Behaviour, Credentials, ProviderSim, Received};
use mailtrail_shared::address::parse_address;
use mailtrail_shared::contract::Priority;
use mailtrail_shared::dispatch::DispatchJob;
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use mailtrail_smtp_capture::{Mode, SmtpCapture, Stage};
use mailtrail_test_support::{TestBroker, amqp_url, eventually, try_http_get};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Longest wait for one email's outcome.
const ONE: Duration = Duration::from_secs(20);
/// Longest wait for a thousand emails' outcomes.
const MANY: Duration = Duration::from_secs(60);
/// The sender of every test email.
const FROM: &str = "shop@acme.test";

fn job(to: &str) -> DispatchJob {
    let email_id = Uuid::new_v4();
    DispatchJob {
        version: 1,
        job_id: Uuid::new_v4(),
        email_id,
        request_id: Uuid::new_v4(),
        request_key: format!("providers-{email_id}"),
        tenant: "acme".into(),
        attempt: 1,
        priority: Priority::Normal,
        from: parse_address(&format!("Acme Shop <{FROM}>")).expect("address"),
        to: parse_address(to).expect("address"),
        reply_to: None,
        subject: format!("Your order, {to}"),
        text: Some("Thanks".into()),
        html: Some("<p>Thanks</p>".into()),
        headers: BTreeMap::new(),
        tags: vec!["orders".into()],
        metadata: BTreeMap::from([("order_id".to_owned(), "A-17".to_owned())]),
        attachments: vec![],
        waits: 0,
        first_attempt_at: None,
    }
}

/// `n` jobs, each to its own recipient.
fn jobs(n: usize, label: &str) -> Vec<DispatchJob> {
    (0..n)
        .map(|i| job(&format!("{label}-{i}@example.com")))
        .collect()
}

/// The dispatcher configured for the sim's API, base URL and (default) key.
fn use_sim(config: &mut DispatcherConfig, sim: &ProviderSim) {
    let base = sim.base_url();
    match sim.credentials() {
        Credentials::Mailgun { api_key, domain } => {
            config.mailgun_api_key = Some(api_key);
            config.mailgun_domain = Some(domain);
            config.mailgun_base_url = base;
        }
        Credentials::SendGrid { api_key } => {
            config.sendgrid_api_key = Some(api_key);
            config.sendgrid_base_url = base;
        }
        Credentials::Postmark { server_token } => {
            config.postmark_server_token = Some(server_token);
            config.postmark_base_url = base;
        }
        Credentials::Resend { api_key } => {
            config.resend_api_key = Some(api_key);
            config.resend_base_url = base;
        }
        Credentials::Ses {
            access_key_id,
            secret_access_key,
            region,
        } => {
            config.ses_access_key_id = Some(access_key_id);
            config.ses_secret_access_key = Some(secret_access_key);
            config.ses_region = region;
            config.ses_base_url = Some(base);
        }
    }
}

/// Another key than `credentials` (what the provider holds after the key was rotated): the
/// dispatcher's key is then refused as invalid or revoked.
fn rotated(credentials: Credentials) -> Credentials {
    match credentials {
        Credentials::Mailgun { api_key, domain } => Credentials::Mailgun {
            api_key: format!("{api_key}-rotated"),
            domain,
        },
        Credentials::SendGrid { api_key } => Credentials::SendGrid {
            api_key: format!("{api_key}.rotated"),
        },
        Credentials::Postmark { .. } => Credentials::Postmark {
            server_token: "11111111-2222-4333-8444-555555555555".into(),
        },
        Credentials::Resend { api_key } => Credentials::Resend {
            api_key: format!("{api_key}_rotated"),
        },
        Credentials::Ses {
            secret_access_key,
            region,
            ..
        } => Credentials::Ses {
            access_key_id: "AKIAROTATEDKEY000001".into(),
            secret_access_key,
            region,
        },
    }
}

/// A test's own queues on the shared broker, every tracking event collected as it comes, and —
/// once started — the dispatcher in-process.
struct Rig {
    broker: TestBroker,
    connection: Connection,
    events: Arc<Mutex<Vec<TrackingEvent>>>,
    collector: tokio::task::JoinHandle<()>,
    running: Option<Running>,
}

struct Running {
    port: u16,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Rig {
    async fn new() -> Rig {
        mailtrail_test_support::init_tracing();
        let broker = TestBroker::new();
        let connection = broker.connect().await;
        let channel = connection.create_channel().await.expect("channel");
        declare_topology(&channel, &broker.topology())
            .await
            .expect("topology");
        let tracking = broker.topology().queue(Queue::Tracking);
        let mut consumer = channel
            .basic_consume(
                tracking.as_str().into(),
                "providers-test".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume the tracking queue");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let collector = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let event = serde_json::from_slice::<TrackingEvent>(&delivery.data)
                    .expect("a tracking event");
                sink.lock().expect("events lock").push(event);
            }
        });
        Rig {
            broker,
            connection,
            events,
            collector,
            running: None,
        }
    }

    /// Starts the dispatcher: one-second tiers, a 500 ms HTTP timeout, probes every second,
    /// then whatever `configure` sets.
    async fn start(&mut self, configure: impl FnOnce(&mut DispatcherConfig)) {
        let mut config = DispatcherConfig::from_env();
        config.broker.amqp_url = amqp_url();
        config.broker.queue_prefix = self.broker.prefix().to_owned();
        config.http_addr = "127.0.0.1:0".parse().expect("address");
        config.retry_schedule = parse_schedule("1s").expect("schedule");
        config.http_provider_timeout_ms = 500;
        config.breaker_probe_secs = 1;
        configure(&mut config);
        let app = DispatcherApp::build(config).await.expect("dispatcher");
        let port = app.http_port();
        let stop = CancellationToken::new();
        let task = tokio::spawn(app.run_until_stopped(stop.clone()));
        self.running = Some(Running { port, stop, task });
    }

    fn port(&self) -> u16 {
        self.running.as_ref().expect("the dispatcher runs").port
    }

    /// Publishes every job (with confirms) to `queue`.
    async fn publish_to(&self, queue: Queue, jobs: &[DispatchJob]) {
        let channel = self.connection.create_channel().await.expect("channel");
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirms");
        let name = self.broker.topology().queue(queue);
        let mut confirms = Vec::with_capacity(jobs.len());
        for job in jobs {
            let confirm = channel
                .basic_publish(
                    "".into(),
                    name.as_str().into(),
                    BasicPublishOptions::default(),
                    &serde_json::to_vec(job).expect("json"),
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .expect("publish");
            confirms.push(confirm);
        }
        for confirm in confirms {
            confirm.await.expect("confirmed");
        }
    }

    async fn publish(&self, jobs: &[DispatchJob]) {
        self.publish_to(Queue::Dispatching, jobs).await;
    }

    /// Looks at every event collected so far.
    fn with_events<T>(&self, look: impl FnOnce(&[TrackingEvent]) -> T) -> T {
        look(&self.events.lock().expect("events lock"))
    }

    /// Every event about `email` so far, in arrival order.
    fn events_of(&self, email: Uuid) -> Vec<TrackingEvent> {
        self.with_events(|events| {
            events
                .iter()
                .filter(|e| e.email_id == Some(email))
                .cloned()
                .collect()
        })
    }

    /// The first event of `event_type` about `email`, once there.
    async fn wait_for(&self, email: Uuid, event_type: &str) -> TrackingEvent {
        eventually(
            &format!("a {event_type} event for {email}"),
            ONE,
            || async {
                self.events_of(email)
                    .into_iter()
                    .find(|e| e.event_type.as_str() == event_type)
            },
        )
        .await
    }

    /// Waits until `done` holds for the events collected.
    async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&[TrackingEvent]) -> bool,
    ) {
        eventually(what, timeout, || async {
            self.with_events(&done).then_some(())
        })
        .await;
    }

    /// What `/readyz` says of `dependency`: `ok` or `unavailable`.
    async fn readiness_of(&self, dependency: &str) -> Option<String> {
        let (_, _, body) = try_http_get(self.port(), "/readyz", None).await.ok()?;
        body.get(dependency)?.as_str().map(str::to_owned)
    }

    async fn wait_ready(&self, dependency: &str, up: bool) {
        let word = if up { "ok" } else { "unavailable" };
        eventually(
            &format!("/readyz to show {dependency} {word}"),
            ONE,
            || async {
                (self.readiness_of(dependency).await.as_deref() == Some(word)).then_some(())
            },
        )
        .await;
    }

    /// Waits until every email of `jobs` has its final outcome (dispatched, bounced or failed),
    /// then asserts that each was dispatched.
    async fn wait_all_finished(&self, jobs: &[DispatchJob]) {
        let emails: HashSet<Uuid> = jobs.iter().map(|j| j.email_id).collect();
        self.wait_until("every email's final outcome", MANY, |events| {
            let finished: HashSet<Uuid> = events
                .iter()
                .filter(|e| matches!(e.event_type.as_str(), "dispatched" | "bounced" | "failed"))
                .filter_map(|e| e.email_id)
                .filter(|email| emails.contains(email))
                .collect();
            finished.len() == emails.len()
        })
        .await;
        let undelivered = self.undelivered(jobs);
        assert!(undelivered.is_empty(), "not dispatched:{undelivered}");
    }

    /// For failure messages: the events of every email of `jobs` not reported dispatched.
    fn undelivered(&self, jobs: &[DispatchJob]) -> String {
        self.with_events(|events| {
            let dispatched = count_per_email(events, "dispatched");
            let mut report = String::new();
            for job in jobs
                .iter()
                .filter(|j| !dispatched.contains_key(&j.email_id))
            {
                report.push_str(&format!("\n{} ({}):", job.email_id, job.to.address));
                for event in events.iter().filter(|e| e.email_id == Some(job.email_id)) {
                    report.push_str(&format!(
                        "\n  {} via {:?} {}",
                        event.event_type.as_str(),
                        event.provider,
                        event.details
                    ));
                }
            }
            report
        })
    }

    async fn stop(mut self) {
        if let Some(running) = self.running.take() {
            running.stop.cancel();
            running
                .task
                .await
                .expect("joins")
                .expect("dispatcher stops");
        }
        self.collector.abort();
    }
}

fn of_type<'a>(events: &'a [TrackingEvent], event_type: &str) -> Vec<&'a TrackingEvent> {
    events
        .iter()
        .filter(|e| e.event_type.as_str() == event_type)
        .collect()
}

/// Per email: how many events of `event_type` there are.
fn count_per_email(events: &[TrackingEvent], event_type: &str) -> HashMap<Uuid, usize> {
    let mut counts = HashMap::new();
    for event in of_type(events, event_type) {
        if let Some(email) = event.email_id {
            *counts.entry(email).or_insert(0) += 1;
        }
    }
    counts
}

/// What the sim took for `email` (by the `mailtrail_id` metadata).
fn taken_for(sim: &ProviderSim, email: Uuid) -> Vec<Received> {
    let id = email.to_string();
    sim.accepted()
        .into_iter()
        .filter(|r| r.mailtrail_id.as_deref() == Some(id.as_str()))
        .collect()
}

/// The `dispatched` event of `job`, checked against what the sim took.
fn check_dispatched(sim: &ProviderSim, job: &DispatchJob, event: &TrackingEvent) {
    let name = sim.api().name();
    assert_eq!(event.provider.as_deref(), Some(name), "{event:?}");
    let taken = taken_for(sim, job.email_id);
    assert!(
        !taken.is_empty(),
        "{name} took nothing for {}",
        job.email_id
    );
    let answered = event
        .provider_message_id
        .as_deref()
        .expect("a provider message id");
    let received = taken
        .iter()
        .find(|r| r.provider_message_id == answered)
        .unwrap_or_else(|| panic!("{name} answered {answered:?} for none of {taken:?}"));
    let id = job.email_id.to_string();
    assert_eq!(received.mailtrail_id.as_deref(), Some(id.as_str()));
    assert_eq!(received.header_mailtrail_id.as_deref(), Some(id.as_str()));
    assert_eq!(received.to, std::slice::from_ref(&job.to.address));
    assert_eq!(received.from, FROM);
    assert_eq!(received.subject, job.subject);
}

/// The API's answer that the message or recipient is at fault. SES: a `MessageRejected` about
/// the message — the sim's `RejectMessage` for SES is the sandbox answer ("Email address is not
/// verified …"), which the dispatcher reads as an account set-up fault (provider down).
fn refusal(api: Api) -> Behaviour {
    match api {
        Api::Ses => Behaviour::Custom {
            status: 400,
            body: serde_json::json!({
                "__type": "MessageRejected",
                "message": "Message rejected: Illegal address",
            })
            .to_string(),
        },
        _ => Behaviour::RejectMessage,
    }
}

/// One HTTP provider's failure table, end to end: a job per behaviour (each to its own
/// recipient), then a refused key twice (the API's bad-key answer, and a rotated key).
async fn failure_table(api: Api) {
    let name = api.name();
    let sim = ProviderSim::start(api).await.expect("provider sim");
    let mut rig = Rig::new().await;
    rig.start(|config| {
        config.provider = name.to_owned();
        use_sim(config, &sim);
        // Only a refusal opens the breaker here: the transient jobs must not.
        config.breaker_failures = 1_000;
    })
    .await;
    rig.wait_ready(name, true).await;

    // Taken and refused: one request each.
    let taken = job("taken@example.com");
    let refused = job("refused@example.com");
    sim.set_behaviour_for(&refused.to.address, refusal(api));
    rig.publish(&[taken.clone(), refused.clone()]).await;
    let dispatched = rig.wait_for(taken.email_id, "dispatched").await;
    check_dispatched(&sim, &taken, &dispatched);
    assert_eq!(dispatched.details["attempt"], 1);
    assert_eq!(taken_for(&sim, taken.email_id).len(), 1);
    // Postmark says "inactive recipient" (406): the mailbox is gone, a hard bounce. Every other
    // API's refusal is the message's fault: failed.
    let refused_as = if api == Api::Postmark {
        "bounced"
    } else {
        "failed"
    };
    let outcome = rig.wait_for(refused.email_id, refused_as).await;
    assert_eq!(outcome.provider.as_deref(), Some(name));
    if api == Api::Postmark {
        assert_eq!(outcome.details["bounce_kind"], "hard", "{outcome:?}");
    } else {
        assert_eq!(outcome.details["exhausted"], false, "{outcome:?}");
    }
    assert_eq!(sim.requests(), 2);

    // Resend answers an invalid recipient with 403 — the status of its key errors — named
    // `invalid_to_address`: the recipient's fault (failed), not the account's (still up).
    let invalid_to = (api == Api::Resend).then(|| job("invalid-to@example.com"));
    if let Some(invalid_to) = &invalid_to {
        sim.set_behaviour_for(
            &invalid_to.to.address,
            Behaviour::resend_invalid_to_address(),
        );
        rig.publish(std::slice::from_ref(invalid_to)).await;
        let failed = rig.wait_for(invalid_to.email_id, "failed").await;
        assert_eq!(failed.details["exhausted"], false, "{failed:?}");
        let reason = failed.details["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("403") && reason.contains("invalid_to_address"),
            "{reason}"
        );
        assert_eq!(rig.readiness_of(name).await.as_deref(), Some("ok"));
    }

    // Four transient faults at once, each recipient its own.
    let transient = [
        ("rate-limited@example.com", Behaviour::RateLimited),
        ("server-error@example.com", Behaviour::ServerError),
        ("slow@example.com", Behaviour::Slow(Duration::from_secs(2))),
        ("dropped@example.com", Behaviour::DropConnection),
    ];
    let transient_jobs: Vec<DispatchJob> = transient.iter().map(|(to, _)| job(to)).collect();
    for (to, behaviour) in &transient {
        sim.set_behaviour_for(to, behaviour.clone());
    }
    rig.publish(&transient_jobs).await;
    for (job, (to, behaviour)) in transient_jobs.iter().zip(&transient) {
        let deferred = rig.wait_for(job.email_id, "deferred").await;
        assert_eq!(
            deferred.details["provider_down"], false,
            "{to} ({behaviour:?}): {deferred:?}"
        );
        assert_eq!(deferred.details["retry_in_secs"], 1);
    }
    // Transient faults do not mark the provider down.
    assert_eq!(rig.readiness_of(name).await.as_deref(), Some("ok"));
    for (to, _) in &transient {
        sim.set_behaviour_for(to, Behaviour::Accept);
    }
    for (job, (to, behaviour)) in transient_jobs.iter().zip(&transient) {
        let dispatched = rig.wait_for(job.email_id, "dispatched").await;
        check_dispatched(&sim, job, &dispatched);
        let taken = taken_for(&sim, job.email_id).len();
        match behaviour {
            // The sim takes a slow message once the client has given up on it: a retry after a
            // lost answer may send twice — except through Resend, whose idempotency key (the job
            // id) makes the retry answer the first result.
            Behaviour::Slow(_) if api == Api::Resend => assert_eq!(taken, 1, "{to}"),
            Behaviour::Slow(_) => assert!((1..=2).contains(&taken), "{to}: {taken}"),
            _ => assert_eq!(taken, 1, "{to} ({behaviour:?})"),
        }
    }

    // The API's bad-key answer: the provider is down (on /readyz too) and the job waits without
    // spending an attempt; when the key works again, the next probe gets through.
    let bad_key = job("bad-key@example.com");
    sim.set_behaviour_for(&bad_key.to.address, Behaviour::BadKey);
    rig.publish(std::slice::from_ref(&bad_key)).await;
    let deferred = rig.wait_for(bad_key.email_id, "deferred").await;
    assert_eq!(deferred.details["provider_down"], true, "{deferred:?}");
    rig.wait_ready(name, false).await;
    sim.set_behaviour_for(&bad_key.to.address, Behaviour::Accept);
    let dispatched = rig.wait_for(bad_key.email_id, "dispatched").await;
    check_dispatched(&sim, &bad_key, &dispatched);
    rig.wait_ready(name, true).await;

    // A rotated key: the dispatcher's key is refused by the auth check itself.
    let original = sim.credentials();
    sim.set_credentials(rotated(original.clone()));
    let revoked = job("revoked@example.com");
    rig.publish(std::slice::from_ref(&revoked)).await;
    let deferred = rig.wait_for(revoked.email_id, "deferred").await;
    assert_eq!(deferred.details["provider_down"], true, "{deferred:?}");
    rig.wait_ready(name, false).await;
    sim.set_credentials(original);
    let dispatched = rig.wait_for(revoked.email_id, "dispatched").await;
    check_dispatched(&sim, &revoked, &dispatched);
    rig.wait_ready(name, true).await;

    // Every deferral of the refused keys spent no attempt.
    for job in [&bad_key, &revoked] {
        let events = rig.events_of(job.email_id);
        assert!(
            of_type(&events, "deferred")
                .iter()
                .all(|e| e.details["provider_down"] == true),
            "{events:?}"
        );
        assert_eq!(taken_for(&sim, job.email_id).len(), 1);
    }
    // Each email's story: one final outcome. The refused one was never retried: seconds (and
    // retry tiers) later, its only event is still the refusal, and the sim never took it.
    for refused in std::iter::once(&refused).chain(&invalid_to) {
        let refused_events = rig.events_of(refused.email_id);
        assert_eq!(refused_events.len(), 1, "{refused_events:?}");
        assert!(taken_for(&sim, refused.email_id).is_empty());
    }
    let all: Vec<&DispatchJob> = [&taken, &refused, &bad_key, &revoked]
        .into_iter()
        .chain(&transient_jobs)
        .collect();
    rig.with_events(|events| {
        let dispatched = count_per_email(events, "dispatched");
        for job in &all {
            let expected = usize::from(job.email_id != refused.email_id);
            assert_eq!(
                dispatched.get(&job.email_id).copied().unwrap_or(0),
                expected,
                "{}",
                job.to.address
            );
        }
        let refusals = 1 + usize::from(invalid_to.is_some());
        assert!(of_type(events, "failed").len() <= refusals, "{events:?}");
    });
    assert!(sim.malformed().is_empty(), "{:#?}", sim.malformed());
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mailgun_failure_table() {
    failure_table(Api::Mailgun).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sendgrid_failure_table() {
    failure_table(Api::SendGrid).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postmark_failure_table() {
    failure_table(Api::Postmark).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn resend_failure_table() {
    failure_table(Api::Resend).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ses_failure_table() {
    failure_table(Api::Ses).await;
}

/// What `retries.rs` leaves out of the SMTP table: the dispatched event names the server's
/// queue id; a 550 5.1.1 is a hard bounce, never retried; a dropped connection defers; a 554
/// greeting marks SMTP down on `/readyz` until the server takes mail again.
#[tokio::test(flavor = "multi_thread")]
async fn smtp_failure_table_gaps() {
    let smtp = SmtpCapture::start().await.expect("smtp server");
    smtp.reject_recipient("nobody@example.com");
    let mut rig = Rig::new().await;
    rig.start(|config| {
        config.smtp_url = smtp.url();
        config.smtp_timeout_ms = 2_000;
        config.breaker_failures = 1_000;
    })
    .await;
    rig.wait_ready("smtp", true).await;

    let taken = job("ann@example.com");
    let unknown = job("nobody@example.com");
    rig.publish(&[taken.clone(), unknown.clone()]).await;
    let dispatched = rig.wait_for(taken.email_id, "dispatched").await;
    assert_eq!(dispatched.provider.as_deref(), Some("smtp"));
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1);
    assert_eq!(
        dispatched.provider_message_id.as_deref(),
        Some(messages[0].message_id.as_str())
    );
    assert_eq!(
        messages[0].header("X-Mailtrail-Id"),
        Some(taken.email_id.to_string())
    );
    assert_eq!(messages[0].rcpt_to, ["ann@example.com"]);
    let bounced = rig.wait_for(unknown.email_id, "bounced").await;
    assert_eq!(bounced.details["bounce_kind"], "hard");
    let reason = bounced.details["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("5.1.1"), "{reason}");

    // A 4xx for one recipient: that email is deferred (the provider is fine), then delivered.
    smtp.defer_recipient("cid@example.com");
    let busy = job("cid@example.com");
    rig.publish(std::slice::from_ref(&busy)).await;
    let deferred = rig.wait_for(busy.email_id, "deferred").await;
    assert_eq!(deferred.details["provider_down"], false, "{deferred:?}");
    let reason = deferred.details["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("450"), "{reason}");
    smtp.accept_recipient("cid@example.com");
    rig.wait_for(busy.email_id, "dispatched").await;

    // A connection closed without a greeting: transient, SMTP stays up.
    smtp.set_mode(Mode::DropConnections);
    let dropped = job("bob@example.com");
    rig.publish(std::slice::from_ref(&dropped)).await;
    let deferred = rig.wait_for(dropped.email_id, "deferred").await;
    assert_eq!(deferred.details["provider_down"], false, "{deferred:?}");
    assert_eq!(rig.readiness_of("smtp").await.as_deref(), Some("ok"));

    // A 554 greeting on its next try: SMTP is down until the server takes mail again.
    smtp.set_mode(Mode::RefuseService);
    rig.wait_ready("smtp", false).await;
    rig.wait_until("a provider-down deferral", ONE, |events| {
        events.iter().any(|e| {
            e.email_id == Some(dropped.email_id)
                && e.event_type.as_str() == "deferred"
                && e.details["provider_down"] == true
        })
    })
    .await;
    smtp.set_mode(Mode::Accept);
    rig.wait_for(dropped.email_id, "dispatched").await;
    rig.wait_ready("smtp", true).await;
    assert_eq!(smtp.message_count(), 3);
    rig.with_events(|events| {
        assert_eq!(of_type(events, "bounced").len(), 1);
        assert!(of_type(events, "failed").is_empty(), "{events:?}");
        let dispatched = count_per_email(events, "dispatched");
        assert_eq!(dispatched.len(), 3);
        assert!(dispatched.values().all(|n| *n == 1));
        // The bounce was the unknown mailbox's only event: no retry.
        assert_eq!(
            events
                .iter()
                .filter(|e| e.email_id == Some(unknown.email_id))
                .count(),
            1
        );
    });
    rig.stop().await;
}

/// Per-recipient SMTP replies, at RCPT and after DATA: a policy refusal of the message (554
/// 5.7.1) is `failed`, not a bounce, and never retried; an unknown mailbox (550 5.1.1) is a hard
/// bounce; 450/451/452 defer and the email goes once the server takes it. None of them is the
/// provider's fault: SMTP stays up.
#[tokio::test(flavor = "multi_thread")]
async fn smtp_recipient_replies_fail_bounce_or_defer() {
    let smtp = SmtpCapture::start().await.expect("smtp server");
    let mut rig = Rig::new().await;
    rig.start(|config| {
        config.smtp_url = smtp.url();
        // A low threshold: three per-message deferrals from a working server must not count
        // as failures of the server (they are answers), so SMTP stays up throughout.
        config.breaker_failures = 2;
    })
    .await;
    rig.wait_ready("smtp", true).await;

    let refused_at_rcpt = job("policy-rcpt@example.com");
    let refused_at_data = job("policy-data@example.com");
    let unknown = job("unknown@example.com");
    let busy = job("busy@example.com");
    let greylisted = job("greylisted@example.com");
    let full = job("full@example.com");
    let policy = "554 5.7.1 Message refused by policy";
    smtp.answer_recipient(&refused_at_rcpt.to.address, Stage::Rcpt, policy);
    smtp.answer_recipient(&refused_at_data.to.address, Stage::Data, policy);
    smtp.reject_recipient(&unknown.to.address);
    smtp.answer_recipient(
        &busy.to.address,
        Stage::Rcpt,
        "450 4.2.1 Mailbox busy, try again later",
    );
    smtp.answer_recipient(
        &greylisted.to.address,
        Stage::Rcpt,
        "451 4.7.1 Greylisted, try again later",
    );
    smtp.answer_recipient(
        &full.to.address,
        Stage::Data,
        "452 4.2.2 Mailbox full, try again later",
    );
    let all = [
        refused_at_rcpt.clone(),
        refused_at_data.clone(),
        unknown.clone(),
        busy.clone(),
        greylisted.clone(),
        full.clone(),
    ];
    rig.publish(&all).await;

    for (job, code) in [(&refused_at_rcpt, "554"), (&refused_at_data, "554")] {
        let failed = rig.wait_for(job.email_id, "failed").await;
        assert_eq!(failed.details["exhausted"], false, "{failed:?}");
        let reason = failed.details["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(code) && reason.contains("5.7.1"),
            "{reason}"
        );
    }
    let bounced = rig.wait_for(unknown.email_id, "bounced").await;
    assert_eq!(bounced.details["bounce_kind"], "hard", "{bounced:?}");
    for (job, code) in [(&busy, "450"), (&greylisted, "451"), (&full, "452")] {
        let deferred = rig.wait_for(job.email_id, "deferred").await;
        assert_eq!(deferred.details["provider_down"], false, "{deferred:?}");
        let reason = deferred.details["reason"].as_str().unwrap_or_default();
        assert!(reason.contains(code), "{code}: {reason}");
    }
    assert_eq!(rig.readiness_of("smtp").await.as_deref(), Some("ok"));
    // Nothing but deferrals, twice the breaker's threshold in a row: still up.
    let more: Vec<_> = (0..4)
        .map(|n| job(&format!("greylisted-{n}@example.com")))
        .collect();
    for job in &more {
        smtp.answer_recipient(&job.to.address, Stage::Rcpt, "451 4.7.1 Greylisted");
    }
    rig.publish(&more).await;
    for job in &more {
        rig.wait_for(job.email_id, "deferred").await;
    }
    assert_eq!(
        rig.readiness_of("smtp").await.as_deref(),
        Some("ok"),
        "deferrals from a working server opened the breaker"
    );
    for job in &more {
        smtp.accept_recipient(&job.to.address);
    }

    // The server takes the deferred ones now: each goes on its retry, once.
    for job in [&busy, &greylisted, &full] {
        smtp.accept_recipient(&job.to.address);
    }
    for job in [&busy, &greylisted, &full].into_iter().chain(&more) {
        rig.wait_for(job.email_id, "dispatched").await;
    }
    let mut delivered: Vec<String> = smtp
        .messages()
        .into_iter()
        .flat_map(|m| m.rcpt_to)
        .collect();
    delivered.sort();
    assert_eq!(
        delivered,
        [
            "busy@example.com",
            "full@example.com",
            "greylisted-0@example.com",
            "greylisted-1@example.com",
            "greylisted-2@example.com",
            "greylisted-3@example.com",
            "greylisted@example.com"
        ]
    );
    // The refusals and the bounce were final: a retry tier later, still one event each.
    for job in [&refused_at_rcpt, &refused_at_data, &unknown] {
        let events = rig.events_of(job.email_id);
        assert_eq!(events.len(), 1, "{}: {events:?}", job.to.address);
    }
    rig.with_events(|events| {
        assert_eq!(of_type(events, "failed").len(), 2, "{events:?}");
        assert_eq!(of_type(events, "bounced").len(), 1, "{events:?}");
        assert!(
            of_type(events, "deferred")
                .iter()
                .all(|e| e.details["provider_down"] == false),
            "{events:?}"
        );
    });
    rig.wait_ready("smtp", true).await;
    rig.stop().await;
}

/// Concurrency of the outage tests: the in-flight bound of the probe-only check.
const CONCURRENCY: u16 = 32;

/// The outage settings: four one-second tiers, the breaker opening after 5 failures and probing
/// every second, 10 attempts.
fn outage_settings(config: &mut DispatcherConfig) {
    config.retry_schedule = parse_schedule("1s,1s,1s,1s").expect("schedule");
    config.breaker_failures = 5;
    config.breaker_probe_secs = 1;
    config.max_attempts = 10;
    config.concurrency = CONCURRENCY;
}

/// Every email of `jobs` went through one of `sims` exactly once, and was reported dispatched
/// once (through `via`), none failed.
fn check_delivered_once(rig: &Rig, jobs: &[DispatchJob], sims: &[&ProviderSim], via: &str) {
    let mut taken: HashMap<String, usize> = HashMap::new();
    for sim in sims {
        for received in sim.accepted() {
            let id = received.mailtrail_id.expect("our id");
            assert_eq!(received.header_mailtrail_id.as_deref(), Some(id.as_str()));
            *taken.entry(id).or_insert(0) += 1;
        }
    }
    let expected: HashSet<String> = jobs.iter().map(|j| j.email_id.to_string()).collect();
    assert_eq!(taken.len(), jobs.len(), "distinct emails taken");
    assert!(taken.keys().all(|id| expected.contains(id)));
    let twice: Vec<_> = taken.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "taken more than once: {twice:?}");
    rig.with_events(|events| {
        assert!(of_type(events, "failed").is_empty());
        let dispatched = of_type(events, "dispatched");
        assert_eq!(dispatched.len(), jobs.len());
        assert!(
            dispatched
                .iter()
                .all(|e| e.provider.as_deref() == Some(via))
        );
        let emails: HashSet<Uuid> = dispatched.iter().filter_map(|e| e.email_id).collect();
        assert_eq!(emails.len(), jobs.len());
    });
}

/// How many of `jobs` have at least `n` deferrals so far.
fn deferred_at_least(events: &[TrackingEvent], n: usize) -> usize {
    count_per_email(events, "deferred")
        .values()
        .filter(|count| **count >= n)
        .count()
}

/// 1,000 emails queued while the provider fails: the breaker opens, and while it is open the
/// provider sees only probes (one a second) besides the requests already in flight; every email
/// waits through more than three tiers without failing, and once the provider is back every
/// one is delivered exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_sends_only_probes_then_delivers_everything_once() {
    const EMAILS: usize = 1_000;
    let sim = ProviderSim::start(Api::SendGrid)
        .await
        .expect("provider sim");
    sim.set_behaviour(Behaviour::ServerError);
    let mut rig = Rig::new().await;
    let emails = jobs(EMAILS, "outage");
    rig.publish(&emails).await;
    rig.start(|config| {
        config.provider = "sendgrid".into();
        use_sim(config, &sim);
        outage_settings(config);
    })
    .await;

    rig.wait_ready("sendgrid", false).await;
    let opened = Instant::now();
    let requests_when_opened = sim.requests();
    // Down for longer than the first three tiers: every email has waited at least four times.
    rig.wait_until("every email deferred four times", MANY, |events| {
        deferred_at_least(events, 4) == EMAILS
    })
    .await;
    let requests_before_recovery = sim.requests();
    let open_secs = opened.elapsed().as_secs() as usize;
    let while_open = requests_before_recovery - requests_when_opened;
    // One probe a second, plus the requests that were in flight when the breaker opened.
    let bound = open_secs + 1 + usize::from(CONCURRENCY);
    eprintln!("{while_open} requests in {open_secs} s while the breaker was open (bound {bound})");
    assert!(
        while_open <= bound,
        "{while_open} requests in {open_secs} s while the breaker was open (at most {bound})"
    );
    assert_eq!(
        rig.readiness_of("sendgrid").await.as_deref(),
        Some("unavailable")
    );
    rig.with_events(|events| assert!(of_type(events, "failed").is_empty()));

    sim.set_behaviour(Behaviour::Accept);
    rig.wait_all_finished(&emails).await;
    rig.wait_ready("sendgrid", true).await;
    assert_eq!(sim.accepted_count(), EMAILS);
    check_delivered_once(&rig, &emails, &[&sim], "sendgrid");
    assert!(sim.malformed().is_empty(), "{:#?}", sim.malformed());
    rig.stop().await;
}

/// The same outage with a failover provider: once the breaker opens, everything goes through
/// the second provider while the first stays down; every email is delivered once overall.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_fails_over_to_the_second_provider() {
    const EMAILS: usize = 1_000;
    let down = ProviderSim::start(Api::SendGrid)
        .await
        .expect("provider sim");
    down.set_behaviour(Behaviour::ServerError);
    let failover = ProviderSim::start(Api::Postmark)
        .await
        .expect("provider sim");
    let mut rig = Rig::new().await;
    let emails = jobs(EMAILS, "failover");
    rig.publish(&emails).await;
    let started = Instant::now();
    rig.start(|config| {
        config.provider = "sendgrid".into();
        config.failover = "postmark".into();
        use_sim(config, &down);
        use_sim(config, &failover);
        outage_settings(config);
    })
    .await;

    rig.wait_all_finished(&emails).await;
    // The first provider is still down, and took nothing.
    assert_eq!(
        rig.readiness_of("sendgrid").await.as_deref(),
        Some("unavailable")
    );
    assert_eq!(rig.readiness_of("postmark").await.as_deref(), Some("ok"));
    assert_eq!(down.accepted_count(), 0);
    assert_eq!(failover.accepted_count(), EMAILS);
    check_delivered_once(&rig, &emails, &[&down, &failover], "postmark");
    // Only what was in flight when the breaker opened, and a probe a second, reached the first.
    let bound = usize::from(CONCURRENCY) + started.elapsed().as_secs() as usize + 1;
    rig.with_events(|events| {
        let deferred = of_type(events, "deferred");
        assert!(
            deferred
                .iter()
                .all(|e| e.provider.as_deref() == Some("sendgrid")),
            "{deferred:?}"
        );
        assert!(
            deferred.len() <= bound,
            "{} deferrals (at most {bound})",
            deferred.len()
        );
    });
    assert!(down.malformed().is_empty(), "{:#?}", down.malformed());
    assert!(
        failover.malformed().is_empty(),
        "{:#?}",
        failover.malformed()
    );
    rig.stop().await;
}

/// The provider refuses the dispatcher's key (revoked, rotated elsewhere): every email waits —
/// provider-down deferrals, more of them than `max_attempts`, none failed — and once the key
/// works again every email is delivered once.
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_key_makes_mail_wait_without_spending_attempts() {
    const EMAILS: usize = 200;
    let sim = ProviderSim::start(Api::Postmark)
        .await
        .expect("provider sim");
    let mut rig = Rig::new().await;
    rig.start(|config| {
        config.provider = "postmark".into();
        use_sim(config, &sim);
        config.max_attempts = 2;
    })
    .await;
    let valid = sim.credentials();
    sim.set_credentials(rotated(valid.clone()));
    let emails = jobs(EMAILS, "revoked");
    rig.publish(&emails).await;

    rig.wait_ready("postmark", false).await;
    rig.wait_until("every email deferred three times", MANY, |events| {
        deferred_at_least(events, 3) == EMAILS
    })
    .await;
    rig.with_events(|events| {
        assert!(of_type(events, "failed").is_empty());
        let deferred = of_type(events, "deferred");
        assert!(
            deferred.iter().all(|e| e.details["provider_down"] == true),
            "{deferred:?}"
        );
    });
    assert_eq!(sim.accepted_count(), 0);

    sim.set_credentials(valid);
    rig.wait_all_finished(&emails).await;
    rig.wait_ready("postmark", true).await;
    check_delivered_once(&rig, &emails, &[&sim], "postmark");
    // Delivered on an attempt well past max_attempts: the waits spent none.
    rig.with_events(|events| {
        assert!(
            of_type(events, "dispatched")
                .iter()
                .all(|e| e.details["attempt"].as_u64() > Some(3)),
            "{events:?}"
        );
    });
    assert!(sim.malformed().is_empty(), "{:#?}", sim.malformed());
    rig.stop().await;
}

/// 2,000 emails queued, then one priority email: when the dispatcher starts, the priority
/// email reaches the server before the backlog drains (near the front).
#[tokio::test(flavor = "multi_thread")]
async fn a_priority_email_overtakes_a_backlog() {
    const BACKLOG: usize = 2_000;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    let mut rig = Rig::new().await;
    rig.publish(&jobs(BACKLOG, "backlog")).await;
    let urgent = DispatchJob {
        priority: Priority::High,
        ..job("urgent@example.com")
    };
    rig.publish_to(Queue::DispatchingPriority, std::slice::from_ref(&urgent))
        .await;
    rig.start(|config| config.smtp_url = smtp.url()).await;

    let total = BACKLOG + 1;
    assert_eq!(smtp.wait_for_count(total, MANY).await, total);
    let urgent_id = urgent.email_id.to_string();
    let position = smtp
        .messages()
        .iter()
        .position(|m| m.header("X-Mailtrail-Id").as_deref() == Some(urgent_id.as_str()))
        .expect("the priority email arrived");
    eprintln!(
        "the priority email arrived at position {} of {total}",
        position + 1
    );
    assert!(
        position < total / 2,
        "arrived {}th of {total}",
        position + 1
    );
    rig.wait_until("every email dispatched", MANY, |events| {
        of_type(events, "dispatched").len() >= total
    })
    .await;
    rig.stop().await;
}
