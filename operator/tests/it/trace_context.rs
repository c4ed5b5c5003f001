//! Tracing through every hop, with real processes logging JSON: an app's `traceparent` is
//! continued by the operator (accepted, queued, the dispatch job), the dispatcher (its log lines
//! and the `dispatched` tracking event) and the status events apps receive; every event records
//! the trace id, the history API shows it, and every JSON log line that mentions the email names
//! it in a field.

use crate::flight::dispatcher_with_env;
use crate::helpers::{World, api_ready, http_get};
use crate::status_events::app_queue;
use lapin::BasicProperties;
use lapin::options::{BasicGetOptions, BasicPublishOptions};
use lapin::types::{AMQPValue, FieldTable};
use mailtrail_broker::header_string;
use mailtrail_operator::keys::{self, Role};
use mailtrail_shared::headers::{self, parse_traceparent, trace_id_of};
use mailtrail_shared::topology::Queue;
use mailtrail_smtp_capture::SmtpCapture;
use mailtrail_test_support::{ServiceProcess, eventually, free_port};
use std::time::Duration;
use uuid::Uuid;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const APP_SPAN: u64 = 0xb7ad6b7169203331;
const LOG_FILTER: &str = "info,mailtrail_operator=debug,mailtrail_dispatcher=debug";

/// Every line of a service's log but the harness's header, each parsed as JSON.
fn json_lines(process: &ServiceProcess) -> Vec<serde_json::Value> {
    process
        .log_contents()
        .lines()
        .filter(|line| !line.starts_with("=== ") && !line.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{}: not a JSON log line ({e}): {line}", process.name()))
        })
        .collect()
}

/// Whether a log line names `email` in a field of its own or of a span it is in.
fn names_email(line: &serde_json::Value, email: &str) -> bool {
    let in_object = |object: &serde_json::Value| {
        object["email_id"].as_str() == Some(email)
            || object["email_ids"]
                .as_str()
                .is_some_and(|ids| ids.split(',').any(|id| id == email))
    };
    in_object(&line["fields"])
        || line["spans"]
            .as_array()
            .is_some_and(|spans| spans.iter().any(in_object))
}

/// The trace id a log line carries, in its fields or a span it is in.
fn trace_of(line: &serde_json::Value) -> Option<&str> {
    line["fields"]["trace_id"].as_str().or_else(|| {
        line["spans"]
            .as_array()?
            .iter()
            .find_map(|span| span["trace_id"].as_str())
    })
}

fn message(line: &serde_json::Value) -> &str {
    line["fields"]["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_apps_trace_runs_through_every_hop_and_every_log_line_names_the_email() {
    let world = World::new().await;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    // An app listening to every status event of the tenant.
    let app_queue = app_queue(&world, "app-events", "email.acme.*").await;

    let api = free_port();
    let mut operator_env = world.operator_env();
    operator_env.extend([
        ("MAILTRAIL_HTTP_ADDR", format!("127.0.0.1:{api}")),
        ("MAILTRAIL_LOG_FORMAT", "json".to_owned()),
        ("MAILTRAIL_LOG", LOG_FILTER.to_owned()),
    ]);
    let operator = ServiceProcess::spawn(
        "operator-traced",
        env!("CARGO_BIN_EXE_operator"),
        &["run"],
        &operator_env,
    )
    .expect("start the operator");
    let dispatcher = dispatcher_with_env(
        &world,
        &smtp,
        None,
        free_port(),
        &[
            ("MAILTRAIL_LOG_FORMAT", "json".to_owned()),
            ("MAILTRAIL_LOG", LOG_FILTER.to_owned()),
        ],
    );
    api_ready(api).await;

    // The app publishes inside its own trace.
    let mut table = FieldTable::default();
    table.insert(
        headers::TRACEPARENT.into(),
        AMQPValue::LongString(
            headers::traceparent(u128::from_str_radix(TRACE, 16).expect("hex"), APP_SPAN).into(),
        ),
    );
    let body = br#"{"id": "traced-1", "tenant": "acme", "from": "shop@acme.test",
                    "to": "ann@example.com", "subject": "Hello", "text": "Hi"}"#;
    world
        .channel
        .basic_publish(
            "".into(),
            world.queue(Queue::Mailbox).as_str().into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type("application/json".into())
                .with_headers(table),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");

    let email: Uuid = eventually(
        "the email is dispatched",
        Duration::from_secs(60),
        || async {
            let rows = world
                .query(
                    "SELECT m.id::text FROM emails m JOIN events e ON e.email_id = m.id
                  WHERE e.event_type = 'dispatched'",
                )
                .await;
            rows.first()
                .map(|row| row.get::<_, String>(0).parse::<Uuid>().expect("a uuid"))
        },
    )
    .await;
    assert_eq!(smtp.message_count(), 1);

    // Every event of the email is recorded in the app's trace.
    let recorded = world
        .query(&format!(
            "SELECT event_type, trace_id FROM events WHERE email_id = '{email}' ORDER BY seq"
        ))
        .await;
    let recorded: Vec<(String, Option<String>)> = recorded
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let types: Vec<&str> = recorded.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["accepted", "queued", "dispatched"]);
    for (event_type, trace) in &recorded {
        assert_eq!(trace.as_deref(), Some(TRACE), "{event_type}");
    }

    // The history API shows it, so an admin can search the logs for it.
    let mut conn = world.pool().get().await.expect("db");
    let (_, reader) = keys::create(&mut conn, "ops", Some("acme"), Role::Read)
        .await
        .expect("key");
    let (status, _, history) = http_get(api, &format!("/v1/messages/{email}"), Some(&reader)).await;
    assert_eq!(status, 200, "{history}");
    let events = history["events"].as_array().expect("events");
    assert_eq!(events.len(), 3, "{history}");
    assert!(events.iter().all(|e| e["trace_id"] == TRACE), "{history}");

    // The app's status events continue the trace, each with a span of its own.
    let status_events = eventually("three status events", Duration::from_secs(30), || async {
        let mut taken = Vec::new();
        while let Some(message) = world
            .channel
            .basic_get(app_queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .expect("basic.get")
        {
            taken.push(header_string(
                &message.delivery.properties,
                headers::TRACEPARENT,
            ));
        }
        (taken.len() == 3).then_some(taken)
    })
    .await;
    for traceparent in &status_events {
        let traceparent = traceparent
            .as_deref()
            .expect("a traceparent on every status event");
        assert_eq!(trace_id_of(traceparent).as_deref(), Some(TRACE));
        assert_ne!(
            parse_traceparent(traceparent).map(|(_, span)| span),
            Some(APP_SPAN)
        );
    }

    // Logs: JSON on every line; the lines about the email carry its id and the trace.
    let email = email.to_string();
    let operator_lines = eventually(
        "the operator logged the dispatched event",
        Duration::from_secs(20),
        || async {
            let lines = json_lines(&operator);
            lines
                .iter()
                .any(|l| message(l) == "tracking event recorded" && names_email(l, &email))
                .then_some(lines)
        },
    )
    .await;
    let dispatcher_lines = json_lines(&dispatcher);
    for (service, lines, what) in [
        ("operator", &operator_lines, "request accepted"),
        ("operator", &operator_lines, "tracking event recorded"),
        ("dispatcher", &dispatcher_lines, "sent"),
    ] {
        let line = lines
            .iter()
            .find(|l| message(l) == what && names_email(l, &email))
            .unwrap_or_else(|| panic!("{service}: no {what:?} line naming {email}"));
        assert_eq!(trace_of(line), Some(TRACE), "{service}: {line}");
    }
    for (service, lines) in [
        ("operator", &operator_lines),
        ("dispatcher", &dispatcher_lines),
    ] {
        for line in lines.iter() {
            if line.to_string().contains(&email) {
                assert!(
                    names_email(line, &email),
                    "{service} mentions the email without naming it in a field: {line}"
                );
            }
        }
    }
}
