//! Suppression end to end, through the running operator, the real dispatcher and an SMTP
//! server: after a hard bounce, mail to that address (in any letter case) is recorded
//! `suppressed` and never reaches the server; removing the entry lets the next one through; the
//! other tenant's mail to the same address was never held.

use crate::helpers::World;
use chrono::Utc;
use mailtrail_operator::keys::{self, Role};
use mailtrail_shared::history::EventType;
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use mailtrail_smtp_capture::SmtpCapture;
use mailtrail_test_support::{eventually, http_delete};
use std::time::Duration;
use uuid::Uuid;

async fn send(world: &World, tenant: &str, key: &str, to: &str) -> Uuid {
    let body = serde_json::json!({
        "id": key, "tenant": tenant, "from": "shop@example.test", "to": to,
        "subject": "S", "text": "T",
    })
    .to_string();
    world.publish(Queue::Mailbox, body.as_bytes(), None).await;
    ids::email_id(tenant, key, &to.to_lowercase())
}

async fn status(world: &World, email: Uuid) -> String {
    world
        .query(&format!(
            "SELECT coalesce((SELECT status FROM emails WHERE id = '{email}'), '')"
        ))
        .await[0]
        .get::<_, String>(0)
}

async fn wait_for(world: &World, email: Uuid, wanted: &str) {
    eventually(
        &format!("email {email} {wanted}"),
        Duration::from_secs(30),
        || async { (status(world, email).await == wanted).then_some(()) },
    )
    .await;
}

/// Messages the SMTP server accepted for `address`, in any letter case.
fn received_by(smtp: &SmtpCapture, address: &str) -> usize {
    smtp.messages()
        .iter()
        .filter(|m| m.rcpt_to.iter().any(|r| r.eq_ignore_ascii_case(address)))
        .count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hard_bounce_keeps_the_next_email_from_the_server_until_the_entry_is_removed() {
    let world = World::new().await;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    let (stop, handle, port) = world.start_operator_with_port().await;
    let mut dispatcher = crate::flight::dispatcher(&world, &smtp, None);
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, admin) = keys::create(&mut conn, "acme admin", Some("acme"), Role::Admin)
        .await
        .expect("key");

    let first = send(&world, "acme", "s-1", "ann@example.com").await;
    wait_for(&world, first, "dispatched").await;
    assert_eq!(received_by(&smtp, "ann@example.com"), 1);

    // The provider reports a hard bounce, as the webhook sink would publish it.
    let bounce = TrackingEvent {
        version: 1,
        event_id: Uuid::new_v4(),
        email_id: Some(first),
        tenant: "acme".into(),
        event_type: EventType::Bounced,
        occurred_at: Utc::now(),
        source: "webhook:mailgun".into(),
        provider: Some("mailgun".into()),
        provider_message_id: None,
        provider_event_id: Some(Uuid::new_v4().to_string()),
        details: serde_json::json!({"bounce_kind": "hard", "recipient": "ann@example.com"}),
    };
    world
        .publish(
            Queue::Tracking,
            &serde_json::to_vec(&bounce).expect("json"),
            Some(&bounce.event_id.to_string()),
        )
        .await;
    wait_for(&world, first, "bounced").await;

    // The same address in another case: suppressed. The other tenant's mail to it, and a
    // marker sent after both, go through — so everything before the marker was handled.
    let second = send(&world, "acme", "s-2", "ANN@Example.com").await;
    let other_tenant = send(&world, "globex", "g-1", "ann@example.com").await;
    let marker = send(&world, "acme", "s-3", "bob@example.com").await;
    wait_for(&world, second, "suppressed").await;
    wait_for(&world, other_tenant, "dispatched").await;
    wait_for(&world, marker, "dispatched").await;
    assert_eq!(
        received_by(&smtp, "ann@example.com"),
        2,
        "the first email and globex's, not the suppressed one"
    );
    assert_eq!(
        world
            .count(&format!(
                "SELECT count(*) FROM outbox WHERE email_id = '{second}'"
            ))
            .await,
        0,
        "a suppressed email gets no dispatch job"
    );

    // Removing the entry lets the following email through.
    assert_eq!(
        http_delete(port, "/v1/suppressions/acme/Ann@Example.com", &admin)
            .await
            .0,
        204
    );
    let third = send(&world, "acme", "s-4", "ann@example.com").await;
    wait_for(&world, third, "dispatched").await;
    assert_eq!(received_by(&smtp, "ann@example.com"), 3);

    dispatcher.terminate();
    let _ = dispatcher.wait_exit(Duration::from_secs(15)).await;
    stop.cancel();
    handle.await.expect("operator");
}
