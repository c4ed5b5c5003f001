//! Retention, driven one run at a time with `now` passed in: old published requests go with
//! their emails, events and outbox rows, in small batches; bodies can go earlier; a job still
//! waiting keeps its request and body; a purged key can be used again.

use crate::helpers::{World, incoming};
use chrono::Utc;
use mailtrail_operator::intake::IntakeOutcome;
use mailtrail_operator::retention::{Purged, RetentionPolicy, run_once};
use mailtrail_shared::topology::Queue;
use std::time::Duration;

fn request(key: &str) -> String {
    format!(
        r#"{{"id": "{key}", "tenant": "acme", "from": "shop@acme.test",
            "to": ["ann@example.com", "bob@example.com"], "subject": "S {key}",
            "text": "T {key}", "html": "<p>H {key}</p>"}}"#
    )
}

fn policy(days: u32, body_days: u32) -> RetentionPolicy {
    RetentionPolicy {
        days,
        body_days,
        batch: 2,
        interval: Duration::from_secs(600),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn old_published_requests_are_purged_in_batches_and_waiting_ones_are_kept() {
    let world = World::new().await;
    let (intake, relay) = world.steps().await;
    let published = ["old-1", "old-2", "old-3", "mid-1", "new-1"];
    let batch: Vec<_> = published
        .iter()
        .map(|key| incoming(&world, Queue::Mailbox, &request(key), None))
        .chain([
            incoming(&world, Queue::Mailbox, "not json", None),
            incoming(&world, Queue::Mailbox, "not json either", None),
        ])
        .collect();
    intake.handle(&batch).await.expect("intake");
    relay.drain().await.expect("relay");
    // Taken in but not yet published by the relay.
    intake
        .handle(&[incoming(
            &world,
            Queue::Mailbox,
            &request("waiting-1"),
            None,
        )])
        .await
        .expect("intake");
    world
        .query(
            "UPDATE requests SET created_at = now() - interval '40 days'
              WHERE request_key IN ('old-1', 'old-2', 'old-3', 'waiting-1')",
        )
        .await;
    world
        .query(
            "UPDATE requests SET created_at = now() - interval '10 days'
              WHERE request_key = 'mid-1'",
        )
        .await;
    world
        .query(
            "UPDATE dead_letters SET last_seen_at = now() - interval '40 days'
              WHERE id = (SELECT id FROM dead_letters LIMIT 1)",
        )
        .await;
    assert_eq!(world.count("SELECT count(*) FROM dead_letters").await, 2);
    let events_before = world.count("SELECT count(*) FROM events").await;
    assert!(events_before > 0);

    let pool = world.pool();
    let mut conn = pool.get().await.expect("connection");

    // Retention of 30 days, batches of 2: three old requests, one dead letter.
    let purged = run_once(&mut conn, &policy(30, 0), Utc::now())
        .await
        .expect("retention");
    assert_eq!(
        purged,
        Purged {
            requests: 3,
            bodies: 0,
            dead_letters: 1
        }
    );
    let keys: Vec<String> = world
        .query("SELECT request_key FROM requests ORDER BY request_key")
        .await
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(keys, ["mid-1", "new-1", "waiting-1"]);
    // Emails, events and outbox rows of the purged requests went with them; the rest stayed.
    assert_eq!(world.count("SELECT count(*) FROM emails").await, 6);
    assert_eq!(
        world
            .count("SELECT count(*) FROM emails WHERE request_id NOT IN (SELECT id FROM requests)")
            .await,
        0
    );
    assert_eq!(world.count("SELECT count(*) FROM outbox").await, 6);
    assert_eq!(
        world
            .count("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .await,
        2,
        "the waiting request's jobs are untouched"
    );
    let events_left = world.count("SELECT count(*) FROM events").await;
    assert!(events_left > 0 && events_left < events_before);
    assert_eq!(
        world
            .count("SELECT count(*) FROM events WHERE email_id NOT IN (SELECT id FROM emails)")
            .await,
        0
    );
    assert_eq!(world.count("SELECT count(*) FROM dead_letters").await, 1);

    // Bodies after 7 days: only the published request past it loses its body, keeping metadata.
    let purged = run_once(&mut conn, &policy(30, 7), Utc::now())
        .await
        .expect("retention");
    assert_eq!(
        purged,
        Purged {
            requests: 0,
            bodies: 1,
            dead_letters: 0
        }
    );
    let rows = world
        .query(
            "SELECT request_key, text_body, html_body, attachments::text, subject,
                    bodies_dropped_at IS NOT NULL
               FROM requests ORDER BY request_key",
        )
        .await;
    let mid = &rows[0];
    assert_eq!(mid.get::<_, String>(0), "mid-1");
    assert_eq!(mid.get::<_, Option<String>>(1), None);
    assert_eq!(mid.get::<_, Option<String>>(2), None);
    assert_eq!(mid.get::<_, String>(3), "[]");
    assert_eq!(mid.get::<_, String>(4), "S mid-1");
    assert!(mid.get::<_, bool>(5));
    for row in &rows[1..] {
        let key: String = row.get(0);
        assert_eq!(row.get::<_, Option<String>>(1), Some(format!("T {key}")));
        assert_eq!(
            row.get::<_, Option<String>>(2),
            Some(format!("<p>H {key}</p>"))
        );
        assert!(!row.get::<_, bool>(5), "{key} keeps its body");
    }
    assert_eq!(
        world
            .count(
                "SELECT count(*) FROM emails m JOIN requests r ON r.id = m.request_id
                  WHERE r.request_key = 'mid-1'"
            )
            .await,
        2,
        "metadata stays"
    );

    // Nothing left to do.
    let purged = run_once(&mut conn, &policy(30, 7), Utc::now())
        .await
        .expect("retention");
    assert_eq!(purged, Purged::default());

    // The idempotency key lived as long as its request: the same key is a new request now.
    let outcomes = intake
        .handle(&[incoming(&world, Queue::Mailbox, &request("old-1"), None)])
        .await
        .expect("intake");
    assert!(
        matches!(outcomes[..], [IntakeOutcome::Accepted { .. }]),
        "{outcomes:?}"
    );
    // While the mid request (bodies dropped) is still a duplicate.
    let outcomes = intake
        .handle(&[incoming(&world, Queue::Mailbox, &request("mid-1"), None)])
        .await
        .expect("intake");
    assert!(
        matches!(outcomes[..], [IntakeOutcome::Duplicate { .. }]),
        "{outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_waiting_request_goes_once_its_jobs_are_published() {
    let world = World::new().await;
    let (intake, relay) = world.steps().await;
    intake
        .handle(&[incoming(&world, Queue::Mailbox, &request("w-1"), None)])
        .await
        .expect("intake");
    world
        .query("UPDATE requests SET created_at = now() - interval '40 days'")
        .await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("connection");
    let purged = run_once(&mut conn, &policy(30, 7), Utc::now())
        .await
        .expect("retention");
    assert_eq!(purged, Purged::default());
    relay.drain().await.expect("relay");
    let purged = run_once(&mut conn, &policy(30, 7), Utc::now())
        .await
        .expect("retention");
    assert_eq!(purged.requests, 1);
    assert_eq!(world.count("SELECT count(*) FROM requests").await, 0);
    assert_eq!(world.count("SELECT count(*) FROM events").await, 0);
    assert_eq!(world.count("SELECT count(*) FROM outbox").await, 0);
}
