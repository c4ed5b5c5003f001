//! Retry tiers against the real broker and a real SMTP server, with one-second tiers: a job that
//! keeps failing transiently is deferred with rising attempt numbers through the delay queues,
//! then `failed` once and set aside with its last error; a job older than the maximum age is given
//! up at its next failure, whatever attempts it has left; a provider that refuses us (a 554
//! greeting: a policy block) makes mail wait without spending attempts, and it flows once the
//! server takes mail again.

use lapin::Connection;
use mailtrail_broker::declare_topology;
use mailtrail_dispatcher::config::parse_schedule;
use mailtrail_dispatcher::{DispatcherApp, DispatcherConfig};
use mailtrail_shared::address::parse_address;
use mailtrail_shared::contract::Priority;
use mailtrail_shared::dispatch::DispatchJob;
use mailtrail_shared::headers;
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use mailtrail_smtp_capture::{Mode, SmtpCapture};
use mailtrail_test_support::{TestBroker, amqp_url, eventually, publish_confirmed, take_all};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn job(n: u128, to: &str) -> DispatchJob {
    DispatchJob {
        version: 1,
        job_id: Uuid::from_u128(0x10_000 + n),
        email_id: Uuid::from_u128(0x20_000 + n),
        request_id: Uuid::from_u128(0x30_000 + n),
        request_key: format!("retry-{n}"),
        tenant: "acme".into(),
        attempt: 1,
        priority: Priority::Normal,
        from: parse_address("shop@acme.test").expect("address"),
        to: parse_address(to).expect("address"),
        reply_to: None,
        subject: "Your order".into(),
        text: Some("Thanks".into()),
        html: None,
        headers: BTreeMap::new(),
        tags: vec![],
        metadata: BTreeMap::new(),
        attachments: vec![],
        waits: 0,
        first_attempt_at: None,
    }
}

struct Rig {
    broker: TestBroker,
    connection: Connection,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(smtp: &SmtpCapture, schedule: &str, max_attempts: u32) -> Rig {
    start_with(smtp, schedule, max_attempts).await.0
}

/// Starts a dispatcher; also returns its maximum age (the default unless the environment sets
/// one).
async fn start_with(
    smtp: &SmtpCapture,
    schedule: &str,
    max_attempts: u32,
) -> (Rig, chrono::Duration) {
    mailtrail_test_support::init_tracing();
    let broker = TestBroker::new();
    let connection = broker.connect().await;
    let channel = connection.create_channel().await.expect("channel");
    declare_topology(&channel, &broker.topology())
        .await
        .expect("topology");
    let mut config = DispatcherConfig::from_env();
    config.broker.amqp_url = amqp_url();
    config.broker.queue_prefix = broker.prefix().to_owned();
    config.http_addr = "127.0.0.1:0".parse().expect("address");
    config.smtp_url = smtp.url();
    config.retry_schedule = parse_schedule(schedule).expect("schedule");
    config.max_attempts = max_attempts;
    let max_age = chrono::Duration::from_std(config.retry_max_age).expect("max age");
    let app = DispatcherApp::build(config).await.expect("dispatcher");
    let stop = CancellationToken::new();
    let task = tokio::spawn(app.run_until_stopped(stop.clone()));
    let rig = Rig {
        broker,
        connection,
        stop,
        task,
    };
    (rig, max_age)
}

impl Rig {
    async fn publish(&self, job: &DispatchJob) {
        let queue = self.broker.topology().queue(Queue::Dispatching);
        let body = serde_json::to_vec(job).expect("json");
        publish_confirmed(&self.connection, &queue, &body).await;
    }

    /// Everything on `queue` now (taken off it).
    async fn take(&self, queue: Queue) -> Vec<lapin::message::BasicGetMessage> {
        take_all(&self.connection, &self.broker.topology().queue(queue)).await
    }

    /// Collects tracking events until `done` says the list is complete.
    async fn events_until(
        &self,
        what: &str,
        done: impl Fn(&[TrackingEvent]) -> bool,
    ) -> Vec<TrackingEvent> {
        let seen = std::sync::Mutex::new(Vec::new());
        eventually(what, Duration::from_secs(40), || async {
            let fresh = self.take(Queue::Tracking).await;
            let mut events = seen.lock().expect("lock");
            for message in fresh {
                events.push(
                    serde_json::from_slice::<TrackingEvent>(&message.delivery.data)
                        .expect("a tracking event"),
                );
            }
            done(&events).then(|| events.clone())
        })
        .await
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("joins").expect("dispatcher stops");
    }
}

fn attempts(events: &[TrackingEvent], event_type: &str) -> Vec<u64> {
    let mut attempts: Vec<u64> = events
        .iter()
        .filter(|e| e.event_type.as_str() == event_type)
        .filter_map(|e| e.details["attempt"].as_u64())
        .collect();
    attempts.sort_unstable();
    attempts
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_failing_transiently_climbs_the_tiers_then_fails_once_and_is_set_aside() {
    let smtp = SmtpCapture::start().await.expect("smtp server");
    smtp.set_mode(Mode::TransientFailure);
    let rig = start(&smtp, "1s,2s", 3).await;
    let doomed = job(1, "ann@example.com");
    rig.publish(&doomed).await;
    let events = rig
        .events_until("deferred twice, then failed", |events| {
            events.iter().any(|e| e.event_type.as_str() == "failed")
        })
        .await;
    assert_eq!(attempts(&events, "deferred"), [1, 2]);
    assert_eq!(attempts(&events, "failed"), [3]);
    // Each deferral names its tier: the first waits 1 s, the second 2 s.
    let waits: Vec<u64> = events
        .iter()
        .filter(|e| e.event_type.as_str() == "deferred")
        .filter_map(|e| e.details["retry_in_secs"].as_u64())
        .collect();
    assert_eq!(waits, [1, 2]);
    let failed = events
        .iter()
        .find(|e| e.event_type.as_str() == "failed")
        .expect("failed");
    assert_eq!(failed.details["exhausted"], true);
    let reason = failed.details["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("gave up after 3 attempts") && reason.contains("451"),
        "{reason}"
    );
    assert!(events.iter().all(|e| e.email_id == Some(doomed.email_id)));
    // The job is set aside with its last error, once.
    let set_aside = eventually("the job set aside", Duration::from_secs(20), || async {
        let taken = rig.take(Queue::DeadLetter).await;
        (!taken.is_empty()).then_some(taken)
    })
    .await;
    assert_eq!(set_aside.len(), 1);
    let copy = &set_aside[0];
    let reason = mailtrail_broker::header_string(&copy.delivery.properties, headers::REASON);
    assert_eq!(reason.as_deref(), Some("retries_exhausted"));
    let last: DispatchJob = serde_json::from_slice(&copy.delivery.data).expect("the job");
    assert_eq!((last.job_id, last.attempt), (doomed.job_id, 3));
    assert_eq!(smtp.message_count(), 0);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_provider_that_refuses_us_makes_mail_wait_without_spending_attempts() {
    let smtp = SmtpCapture::start().await.expect("smtp server");
    smtp.set_mode(Mode::RefuseService);
    // One counted attempt allowed: only waits that spend nothing can keep the job alive.
    let rig = start(&smtp, "1s", 1).await;
    let waiting = job(2, "bob@example.com");
    rig.publish(&waiting).await;
    let events = rig
        .events_until("three waits while refused", |events| {
            events
                .iter()
                .filter(|e| e.event_type.as_str() == "deferred")
                .count()
                >= 3
        })
        .await;
    assert!(
        events
            .iter()
            .all(|e| e.event_type.as_str() == "deferred" && e.details["provider_down"] == true),
        "{events:?}"
    );
    smtp.set_mode(Mode::Accept);
    let events = rig
        .events_until("dispatched once the server takes mail", |events| {
            events.iter().any(|e| e.event_type.as_str() == "dispatched")
        })
        .await;
    let dispatched = events
        .iter()
        .find(|e| e.event_type.as_str() == "dispatched")
        .expect("dispatched");
    assert!(dispatched.details["attempt"].as_u64() > Some(3));
    assert!(!events.iter().any(|e| e.event_type.as_str() == "failed"));
    assert_eq!(smtp.wait_for_count(1, Duration::from_secs(5)).await, 1);
    assert_eq!(smtp.message_count(), 1);
    assert!(rig.take(Queue::DeadLetter).await.is_empty());
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_job_older_than_the_max_age_fails_once_at_its_next_failure_and_is_set_aside() {
    let smtp = SmtpCapture::start().await.expect("smtp server");
    smtp.set_mode(Mode::TransientFailure);
    // Attempts to spare and a long tier: only its age can end the old job, and the young one's
    // retry stays in its delay queue for the rest of the test.
    let (rig, max_age) = start_with(&smtp, "600s", 10).await;
    assert!(
        max_age >= chrono::Duration::days(3),
        "MAILTRAIL_RETRY_MAX_AGE defaults to at least 3 days: {max_age}"
    );
    let now = chrono::Utc::now();
    let old = DispatchJob {
        attempt: 2,
        first_attempt_at: Some(now - max_age - chrono::Duration::hours(1)),
        ..job(3, "cid@example.com")
    };
    // Just under the maximum age: retried as usual.
    let young = DispatchJob {
        attempt: 2,
        first_attempt_at: Some(now - max_age + chrono::Duration::hours(1)),
        ..job(4, "dee@example.com")
    };
    rig.publish(&old).await;
    rig.publish(&young).await;
    let events = rig
        .events_until("the old job failed, the young one deferred", |events| {
            events.iter().any(|e| e.event_type.as_str() == "failed")
                && events.iter().any(|e| e.event_type.as_str() == "deferred")
        })
        .await;
    let of = |job: &DispatchJob| -> Vec<&TrackingEvent> {
        events
            .iter()
            .filter(|e| e.email_id == Some(job.email_id))
            .collect()
    };
    let old_events = of(&old);
    assert_eq!(old_events.len(), 1, "{old_events:?}");
    let failed = old_events[0];
    assert_eq!(failed.event_type.as_str(), "failed");
    assert_eq!(failed.details["exhausted"], true);
    assert_eq!(failed.details["attempt"], 2);
    let reason = failed.details["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("older than {} s", max_age.num_seconds()))
            && reason.contains("MAILTRAIL_RETRY_MAX_AGE")
            && reason.contains("451"),
        "{reason}"
    );
    let young_events = of(&young);
    assert_eq!(young_events.len(), 1, "{young_events:?}");
    assert_eq!(young_events[0].event_type.as_str(), "deferred");
    assert_eq!(young_events[0].details["attempt"], 2);

    // The old job, and only it, is set aside once, with the reason it was given up.
    let set_aside = eventually("the old job set aside", Duration::from_secs(20), || async {
        let taken = rig.take(Queue::DeadLetter).await;
        (!taken.is_empty()).then_some(taken)
    })
    .await;
    assert_eq!(set_aside.len(), 1);
    let copy = &set_aside[0];
    let properties = &copy.delivery.properties;
    assert_eq!(
        mailtrail_broker::header_string(properties, headers::REASON).as_deref(),
        Some("retries_exhausted")
    );
    let detail = mailtrail_broker::header_string(properties, headers::REASON_DETAIL);
    assert!(
        detail
            .as_deref()
            .is_some_and(|d| d.contains("MAILTRAIL_RETRY_MAX_AGE")),
        "{detail:?}"
    );
    let last: DispatchJob = serde_json::from_slice(&copy.delivery.data).expect("the job");
    assert_eq!((last.job_id, last.attempt), (old.job_id, 2));
    // Nothing else came of it: no second report, and only the young job waits for a retry.
    assert!(rig.take(Queue::Tracking).await.is_empty());
    let delay_queue = rig.broker.topology().retry_queue(Queue::Dispatching, 600);
    let waiting: Vec<DispatchJob> = take_all(&rig.connection, &delay_queue)
        .await
        .iter()
        .map(|m| serde_json::from_slice(&m.delivery.data).expect("a job"))
        .collect();
    assert_eq!(
        waiting
            .iter()
            .map(|j| (j.job_id, j.attempt))
            .collect::<Vec<_>>(),
        [(young.job_id, 3)]
    );
    assert_eq!(smtp.message_count(), 0);
    rig.stop().await;
}
