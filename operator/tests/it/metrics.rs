//! `/metrics` after known traffic: the operator and dispatcher binaries (each process has its own
//! recorder) handle two good requests (three emails), a repeat of one and a malformed one; the
//! counters, histograms and sampled gauges must say exactly that.

use crate::flight::dispatcher_on_port;
use crate::helpers::World;
use mailtrail_shared::topology::Queue;
use mailtrail_smtp_capture::SmtpCapture;
use mailtrail_test_support::{ServiceProcess, eventually, free_port, scrape};
use std::collections::BTreeMap;
use std::time::Duration;

fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples
        .get(key)
        .copied()
        .unwrap_or_else(|| panic!("{key} is not in /metrics; it has: {:#?}", samples.keys()))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_known_traffic_exactly() {
    let world = World::new().await;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    let operator_port = free_port();
    let mut env = world.operator_env();
    env.retain(|(name, _)| *name != "MAILTRAIL_HTTP_ADDR");
    env.push(("MAILTRAIL_HTTP_ADDR", format!("127.0.0.1:{operator_port}")));
    env.push(("MAILTRAIL_METRICS_INTERVAL_SECS", "1".to_owned()));
    let _operator =
        ServiceProcess::spawn("operator", env!("CARGO_BIN_EXE_operator"), &["run"], &env)
            .expect("start the operator");
    let dispatcher_port = free_port();
    let _dispatcher = dispatcher_on_port(&world, &smtp, None, dispatcher_port);

    let two = r#"{"id": "m-1", "tenant": "acme", "from": "shop@acme.test",
                  "to": ["a@example.com", "b@example.com"], "subject": "S", "text": "T"}"#;
    let one = r#"{"id": "m-2", "tenant": "acme", "from": "shop@acme.test",
                  "to": "c@example.com", "subject": "S", "text": "T"}"#;
    for body in [two, one, one, "{not json"] {
        world.publish(Queue::Mailbox, body.as_bytes(), None).await;
    }
    eventually(
        "three emails dispatched",
        Duration::from_secs(60),
        || async {
            (world
                .count("SELECT count(*) FROM events WHERE event_type = 'dispatched'")
                .await
                == 3)
                .then_some(())
        },
    )
    .await;
    // The repeat and the malformed one are handled by then? Not necessarily: wait for the
    // mailbox to be empty and its messages acked, as the counters say.
    let operator = eventually(
        "the operator counted four requests",
        Duration::from_secs(30),
        || async {
            let samples = mailtrail_test_support::try_scrape(operator_port).await?;
            let handled: f64 = ["accepted", "duplicate", "set_aside"]
                .iter()
                .map(|o| {
                    samples
                        .get(&format!(
                            "mailtrail_intake_requests_total{{outcome=\"{o}\"}}"
                        ))
                        .copied()
                        .unwrap_or(0.0)
                })
                .sum();
            (handled == 4.0
                && samples.get("mailtrail_tracking_events_total{outcome=\"recorded\"}")
                    == Some(&3.0))
            .then_some(samples)
        },
    )
    .await;
    assert_eq!(
        value(
            &operator,
            "mailtrail_intake_requests_total{outcome=\"accepted\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &operator,
            "mailtrail_intake_requests_total{outcome=\"duplicate\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &operator,
            "mailtrail_intake_requests_total{outcome=\"set_aside\"}"
        ),
        1.0
    );
    assert_eq!(value(&operator, "mailtrail_intake_emails_total"), 3.0);
    assert_eq!(
        value(&operator, "mailtrail_relay_jobs_published_total"),
        3.0
    );
    assert_eq!(
        value(
            &operator,
            "mailtrail_event_record_delay_seconds_count{reporter=\"dispatcher\"}"
        ),
        3.0
    );
    // Each recorded event (accepted, queued, dispatched: nine) queues one status event.
    assert!(value(&operator, "mailtrail_status_events_cleared_total") <= 9.0);

    // Sampled gauges: the consumers are attached, nothing waits, the malformed request is an
    // open dead letter.
    eventually(
        "the gauges are sampled",
        Duration::from_secs(30),
        || async {
            let samples = mailtrail_test_support::try_scrape(operator_port).await?;
            let get = |k: &str| samples.get(k).copied();
            (get("mailtrail_queue_consumers{queue=\"mailbox\"}") == Some(1.0)
                && get("mailtrail_queue_consumers{queue=\"dispatching\"}") == Some(1.0)
                && get("mailtrail_queue_messages{queue=\"mailbox\"}") == Some(0.0)
                && get("mailtrail_outbox_due_jobs") == Some(0.0)
                && get("mailtrail_outbox_oldest_due_seconds") == Some(0.0)
                && get("mailtrail_dead_letters_open") == Some(1.0)
                && get("mailtrail_status_events_unpublished") == Some(0.0))
            .then_some(())
        },
    )
    .await;

    let dispatcher = scrape(dispatcher_port).await;
    assert_eq!(
        value(
            &dispatcher,
            "mailtrail_dispatch_outcomes_total{outcome=\"dispatched\",provider=\"smtp\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &dispatcher,
            "mailtrail_provider_send_seconds_count{provider=\"smtp\"}"
        ),
        3.0
    );
    assert_eq!(
        value(&dispatcher, "mailtrail_provider_up{provider=\"smtp\"}"),
        1.0
    );
    assert_eq!(value(&dispatcher, "mailtrail_dispatch_in_flight"), 0.0);
    assert!(
        !dispatcher
            .keys()
            .any(|k| k.starts_with("mailtrail_provider_errors_total")),
        "no provider errors: {dispatcher:?}"
    );
    assert_eq!(smtp.message_count(), 3);
}
