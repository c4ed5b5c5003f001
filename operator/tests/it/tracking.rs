//! The tracking step, driven one batch at a time: reported events are recorded once, the summary
//! follows the precedence table, and what cannot be recorded is set aside with its reason.

use crate::helpers::{World, incoming, reason_of};
use chrono::{Duration as ChronoDuration, Utc};
use mailtrail_operator::tracking::{Tracker, TrackingOutcome};
use mailtrail_shared::history::EventType;
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use std::time::Duration;
use uuid::Uuid;

fn event(
    email_id: Uuid,
    tenant: &str,
    event_type: EventType,
    seconds_from_now: i64,
) -> TrackingEvent {
    TrackingEvent {
        version: 1,
        event_id: Uuid::new_v4(),
        email_id,
        tenant: tenant.to_owned(),
        event_type,
        occurred_at: Utc::now() + ChronoDuration::seconds(seconds_from_now),
        source: "dispatcher".into(),
        provider: Some("smtp".into()),
        provider_message_id: Some("Q1".into()),
        provider_event_id: None,
        details: serde_json::json!({"attempt": 1}),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn reported_events_are_recorded_once_and_bad_reports_are_set_aside() {
    let world = World::new().await;
    let (intake, relay) = world.steps().await;
    let request = r#"{"id": "t-1", "tenant": "acme", "from": "shop@acme.test",
        "to": "ann@example.com", "subject": "S", "text": "T"}"#;
    intake
        .handle(&[incoming(&world, Queue::Mailbox, request, None)])
        .await
        .expect("intake");
    relay.drain().await.expect("relay");
    let email = ids::email_id("acme", "t-1", "ann@example.com");
    let publisher = mailtrail_broker::Publisher::open(&world.connection)
        .await
        .expect("publisher");
    let tracker = Tracker::new(
        world.pool(),
        publisher,
        world.config.topology(),
        Duration::from_secs(5),
    );
    let tracking = |e: &TrackingEvent| {
        incoming(
            &world,
            Queue::Tracking,
            &serde_json::to_string(e).expect("json"),
            None,
        )
    };

    let failed = event(email, "acme", EventType::Failed, 2);
    // A dispatched that arrives after the failure, though it happened before: the summary must
    // still say failed (precedence, not arrival order).
    let dispatched = event(email, "acme", EventType::Dispatched, 1);
    let mut queued = event(email, "acme", EventType::Queued, 0);
    queued.event_id = Uuid::new_v4();
    let outcomes = tracker
        .handle(&[
            tracking(&failed),
            tracking(&dispatched),
            tracking(&failed),
            tracking(&event(Uuid::new_v4(), "acme", EventType::Dispatched, 0)),
            tracking(&event(email, "globex", EventType::Delivered, 0)),
            tracking(&queued),
            incoming(&world, Queue::Tracking, "not json", None),
            tracking(&event(email, "*", EventType::Delivered, 3)),
        ])
        .await
        .expect("tracking");
    let reasons: Vec<&str> = outcomes
        .iter()
        .map(|o| match o {
            TrackingOutcome::Recorded { .. } => "recorded",
            TrackingOutcome::Duplicate { .. } => "duplicate",
            TrackingOutcome::SetAside { reason, .. } => reason.as_str(),
        })
        .collect();
    assert_eq!(
        reasons,
        [
            "recorded",
            "recorded",
            "duplicate",
            "unknown_email",
            "tenant_mismatch",
            "invalid_event",
            "invalid_event",
            "recorded"
        ]
    );
    let timeline = world
        .query(&format!(
            "SELECT string_agg(event_type, ',' ORDER BY occurred_at, lifecycle_rank, seq)
               FROM events WHERE email_id = '{email}'"
        ))
        .await;
    assert_eq!(
        timeline[0].get::<_, String>(0),
        "accepted,queued,dispatched,failed,delivered"
    );
    let summary = world
        .query(&format!(
            "SELECT status, provider, provider_message_id FROM emails WHERE id = '{email}'"
        ))
        .await;
    assert_eq!(summary[0].get::<_, String>(0), "failed");
    assert_eq!(
        summary[0].get::<_, Option<String>>(1).as_deref(),
        Some("smtp")
    );
    assert_eq!(
        summary[0].get::<_, Option<String>>(2).as_deref(),
        Some("Q1")
    );

    // The same batch again (a redelivery) records nothing new.
    let again = tracker
        .handle(&[tracking(&failed), tracking(&dispatched)])
        .await
        .expect("tracking");
    assert!(
        again
            .iter()
            .all(|o| matches!(o, TrackingOutcome::Duplicate { .. }))
    );
    assert_eq!(
        world
            .count(&format!(
                "SELECT count(*) FROM events WHERE email_id = '{email}'"
            ))
            .await,
        5
    );
    // Four set aside, on the dead-letter queue and in the table.
    let set_aside = world.drain_queue(Queue::DeadLetter).await;
    let mut reasons: Vec<String> = set_aside.iter().filter_map(reason_of).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "invalid_event",
            "invalid_event",
            "tenant_mismatch",
            "unknown_email"
        ]
    );
    assert_eq!(world.count("SELECT count(*) FROM dead_letters").await, 4);
}
