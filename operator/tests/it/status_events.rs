//! Status events as an app sees them: its own queue bound to `<prefix>events` receives every
//! recorded event of the tenants it bound, in a form it can order and de-duplicate, and nothing
//! of the tenants it did not bind.

use crate::helpers::{World, incoming, timeline};
use chrono::Utc;
use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use mailtrail_broker::Publisher;
use mailtrail_operator::status_events::StatusRelay;
use mailtrail_operator::tracking::{Tracker, TrackingOutcome};
use mailtrail_shared::history::EventType;
use mailtrail_shared::ids;
use mailtrail_shared::status::StatusEvent;
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use mailtrail_smtp_capture::SmtpCapture;
use mailtrail_test_support::eventually;
use std::time::Duration;
use uuid::Uuid;

/// Declares an app's queue bound to the events exchange with `pattern`.
pub async fn app_queue(world: &World, suffix: &str, pattern: &str) -> String {
    let name = world.broker.queue_name(suffix);
    world
        .channel
        .queue_declare(
            name.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare the app's queue");
    world
        .channel
        .queue_bind(
            name.as_str().into(),
            world.config.topology().events_exchange().as_str().into(),
            pattern.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind the app's queue");
    name
}

/// One received status event with its routing key and AMQP message id.
struct Received {
    routing_key: String,
    message_id: String,
    event: StatusEvent,
}

async fn take_all(world: &World, queue: &str) -> Vec<Received> {
    let mut received = Vec::new();
    while let Some(message) = world
        .channel
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get")
    {
        received.push(Received {
            routing_key: message.delivery.routing_key.to_string(),
            message_id: message
                .delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string())
                .unwrap_or_default(),
            event: serde_json::from_slice(&message.delivery.data).expect("a status event"),
        });
    }
    received
}

fn request(tenant: &str, key: &str, to: &str) -> String {
    serde_json::json!({
        "id": key, "tenant": tenant, "from": "shop@acme.test", "to": to,
        "subject": "S", "text": "T", "metadata": {"order": key, "customer": "c-7"},
    })
    .to_string()
}

fn reported(email_id: Uuid, tenant: &str, event_type: EventType, source: &str) -> TrackingEvent {
    TrackingEvent {
        version: 1,
        event_id: Uuid::new_v4(),
        email_id: Some(email_id),
        tenant: tenant.to_owned(),
        event_type,
        occurred_at: Utc::now(),
        source: source.into(),
        provider: Some("smtp".into()),
        provider_message_id: Some("Q1".into()),
        provider_event_id: None,
        details: serde_json::json!({"attempt": 1}),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_receives_its_tenants_events_in_order_and_nothing_of_another_tenant() {
    let world = World::new().await;
    let acme_app = app_queue(&world, "app-acme", "email.acme.#").await;
    let globex_app = app_queue(&world, "app-globex", "email.globex.#").await;
    let bounces_app = app_queue(&world, "app-bounced", "email.*.bounced").await;
    let (intake, relay) = world.steps().await;
    let tracker = Tracker::new(
        world.pool(),
        Publisher::open(&world.connection).await.expect("publisher"),
        world.config.topology(),
        Duration::from_secs(5),
    );
    let status = StatusRelay::new(
        world.pool(),
        Some(Publisher::open(&world.connection).await.expect("publisher")),
        &world.config.topology(),
        3,
        Duration::from_secs(5),
    );

    intake
        .handle(&[
            incoming(
                &world,
                Queue::Mailbox,
                &request("acme", "o-1", "ann@example.com"),
                None,
            ),
            incoming(
                &world,
                Queue::Mailbox,
                &request("globex", "g-1", "bob@example.com"),
                None,
            ),
        ])
        .await
        .expect("intake");
    relay.drain().await.expect("relay");
    let acme_email = ids::email_id("acme", "o-1", "ann@example.com");
    let globex_email = ids::email_id("globex", "g-1", "bob@example.com");
    let reports = [
        reported(acme_email, "acme", EventType::Dispatched, "dispatcher"),
        reported(acme_email, "acme", EventType::Delivered, "webhook:mailgun"),
    ];
    let batch: Vec<_> = reports
        .iter()
        .map(|e| {
            incoming(
                &world,
                Queue::Tracking,
                &serde_json::to_string(e).expect("json"),
                None,
            )
        })
        .collect();
    let outcomes = tracker.handle(&batch).await.expect("tracking");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, TrackingOutcome::Recorded { .. })),
        "{outcomes:?}"
    );

    // Nothing is announced before the status relay runs; then everything, in batches of 3.
    assert!(take_all(&world, &acme_app).await.is_empty());
    assert_eq!(status.drain().await.expect("status relay"), 6);
    assert_eq!(world.count("SELECT count(*) FROM status_outbox").await, 0);

    let mut acme = take_all(&world, &acme_app).await;
    // Consumers order one email's events by `seq`.
    acme.sort_by_key(|r| r.event.seq);
    let types: Vec<&str> = acme.iter().map(|r| r.event.event_type.as_str()).collect();
    assert_eq!(types, ["accepted", "queued", "dispatched", "delivered"]);
    assert_eq!(
        acme.iter().map(|r| r.event.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );
    let recorded: Vec<(String, String)> = world
        .query(&format!(
            "SELECT event_id::text, event_type FROM events WHERE email_id = '{acme_email}'
              ORDER BY seq"
        ))
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (received, (event_id, event_type)) in acme.iter().zip(&recorded) {
        let event = &received.event;
        assert_eq!(&event.event_id.to_string(), event_id);
        assert_eq!(&received.message_id, event_id, "message_id de-duplicates");
        assert_eq!(&event.event_type, event_type);
        assert_eq!(received.routing_key, format!("email.acme.{event_type}"));
        assert_eq!(event.email_id, acme_email);
        assert_eq!(event.tenant, "acme");
        assert_eq!(event.id, "o-1");
        assert_eq!(event.recipient, "ann@example.com");
        assert_eq!(
            event.metadata,
            serde_json::json!({"order": "o-1", "customer": "c-7"})
        );
        assert_eq!(event.version, 1);
    }
    assert_eq!(acme[2].event.provider_message_id.as_deref(), Some("Q1"));

    // The other tenant's app sees only its own email; the bounce watcher saw nothing.
    let globex = take_all(&world, &globex_app).await;
    assert_eq!(globex.len(), 2);
    assert!(globex.iter().all(|r| r.event.email_id == globex_email
        && r.event.tenant == "globex"
        && r.routing_key.starts_with("email.globex.")));
    assert!(take_all(&world, &bounces_app).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn turned_off_the_queued_events_are_dropped_unpublished() {
    let world = World::new().await;
    let app = app_queue(&world, "app-all", "email.#").await;
    let (intake, relay) = world.steps().await;
    intake
        .handle(&[incoming(
            &world,
            Queue::Mailbox,
            &request("acme", "o-2", "ann@example.com"),
            None,
        )])
        .await
        .expect("intake");
    relay.drain().await.expect("relay");
    assert_eq!(world.count("SELECT count(*) FROM status_outbox").await, 2);
    let off = StatusRelay::new(
        world.pool(),
        None,
        &world.config.topology(),
        100,
        Duration::from_secs(5),
    );
    assert_eq!(off.drain().await.expect("status relay"), 2);
    assert_eq!(world.count("SELECT count(*) FROM status_outbox").await, 0);
    assert!(take_all(&world, &app).await.is_empty());
}

/// Live: the running operator and dispatcher announce an email's whole life to the app.
#[tokio::test(flavor = "multi_thread")]
async fn the_running_services_announce_accepted_queued_dispatched_and_delivered() {
    let world = World::new().await;
    let app = app_queue(&world, "app-acme", "email.acme.#").await;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    let (stop, handle) = world.start_operator().await;
    let mut dispatcher = crate::flight::dispatcher(&world, &smtp, None);
    world
        .publish(
            Queue::Mailbox,
            request("acme", "o-3", "ann@example.com").as_bytes(),
            None,
        )
        .await;
    let email = ids::email_id("acme", "o-3", "ann@example.com");
    eventually(
        "the email is dispatched",
        Duration::from_secs(60),
        || async {
            timeline(&world, email)
                .await
                .ends_with("dispatched")
                .then_some(())
        },
    )
    .await;
    // The provider reports the delivery through the webhook sink, which publishes this.
    let delivered = reported(email, "acme", EventType::Delivered, "webhook:mailgun");
    world
        .publish(
            Queue::Tracking,
            &serde_json::to_vec(&delivered).expect("json"),
            Some(&delivered.event_id.to_string()),
        )
        .await;
    // Recorded, and every queued status event confirmed by the broker: the app has them all.
    eventually(
        "delivered is announced",
        Duration::from_secs(60),
        || async {
            let recorded = timeline(&world, email).await == "accepted,queued,dispatched,delivered";
            let queued = world.count("SELECT count(*) FROM status_outbox").await;
            (recorded && queued == 0).then_some(())
        },
    )
    .await;
    let mut received = take_all(&world, &app).await;
    received.sort_by_key(|r| r.event.seq);
    let announced: Vec<(i32, &str)> = received
        .iter()
        .map(|r| (r.event.seq, r.event.event_type.as_str()))
        .collect();
    assert_eq!(
        announced,
        [
            (1, "accepted"),
            (2, "queued"),
            (3, "dispatched"),
            (4, "delivered")
        ]
    );
    assert!(
        received
            .iter()
            .all(|r| r.event.email_id == email && r.event.metadata["order"] == "o-3")
    );

    dispatcher.terminate();
    dispatcher
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("the dispatcher exits");
    stop.cancel();
    handle.await.expect("operator");
}
