//! The intake and relay steps, driven one call at a time.

use crate::helpers::{World, incoming, reason_of};
use mailtrail_operator::intake::IntakeOutcome;
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use std::collections::BTreeSet;

const THREE_RECIPIENTS: &str = r#"{
    "id": "order-1001",
    "tenant": "acme",
    "from": "Acme Shop <shop@acme.test>",
    "to": ["Ann@Example.com", "bob@example.com", "carol@example.org"],
    "subject": "Your order",
    "text": "Thanks for your order.",
    "html": "<p>Thanks for your order.</p>",
    "tags": ["order"],
    "metadata": {"order": "1001"}
}"#;

#[tokio::test(flavor = "multi_thread")]
async fn three_recipients_become_three_emails_accepted_queued_and_dispatched() {
    let world = World::new().await;
    let (intake, relay) = world.steps().await;

    let outcomes = intake
        .handle(&[incoming(&world, Queue::Mailbox, THREE_RECIPIENTS, None)])
        .await
        .expect("intake");
    let IntakeOutcome::Accepted { email_ids, .. } = &outcomes[0] else {
        panic!("not accepted: {outcomes:?}");
    };
    assert_eq!(email_ids.len(), 3);
    assert_eq!(
        email_ids[0],
        ids::email_id("acme", "order-1001", "ann@example.com")
    );

    assert_eq!(relay.drain().await.expect("relay"), 3);
    assert_eq!(world.count("SELECT count(*) FROM emails").await, 3);
    // Every email's history reads accepted, queued — in that order, each once.
    let histories = world
        .query(
            "SELECT email_id::text, string_agg(event_type, ',' ORDER BY occurred_at, lifecycle_rank, seq)
               FROM events GROUP BY email_id",
        )
        .await;
    assert_eq!(histories.len(), 3);
    for row in &histories {
        assert_eq!(row.get::<_, String>(1), "accepted,queued");
    }
    assert_eq!(
        world
            .count("SELECT count(*) FROM emails WHERE status = 'queued' AND last_seq = 2")
            .await,
        3
    );

    let jobs = world.dispatch_jobs(Queue::Dispatching).await;
    assert_eq!(jobs.len(), 3);
    let recipients: BTreeSet<String> = jobs.iter().map(|j| j.to.canonical.clone()).collect();
    assert_eq!(
        recipients,
        ["ann@example.com", "bob@example.com", "carol@example.org"]
            .map(String::from)
            .into()
    );
    for job in &jobs {
        assert_eq!(job.job_id, ids::dispatch_job_id(job.email_id));
        assert_eq!(job.tenant, "acme");
        assert_eq!(job.request_key, "order-1001");
        assert_eq!(job.metadata.get("order").map(String::as_str), Some("1001"));
        assert!(email_ids.contains(&job.email_id));
    }
    // The original spelling is kept for the envelope and display.
    assert!(jobs.iter().any(|j| j.to.address == "Ann@Example.com"));
    assert!(
        world
            .drain_queue(Queue::DispatchingPriority)
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redelivered_request_creates_nothing_new() {
    let world = World::new().await;
    let (intake, relay) = world.steps().await;
    let message = incoming(&world, Queue::Mailbox, THREE_RECIPIENTS, None);
    intake
        .handle(std::slice::from_ref(&message))
        .await
        .expect("first");
    relay.drain().await.expect("relay");

    let mut redelivered = message.clone();
    redelivered.redelivered = true;
    // Also within one batch: the same request twice.
    let outcomes = intake
        .handle(&[redelivered.clone(), redelivered])
        .await
        .expect("again");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, IntakeOutcome::Duplicate { .. })),
        "{outcomes:?}"
    );
    assert_eq!(relay.drain().await.expect("relay"), 0);
    assert_eq!(world.count("SELECT count(*) FROM requests").await, 1);
    assert_eq!(world.count("SELECT count(*) FROM emails").await, 3);
    assert_eq!(world.count("SELECT count(*) FROM events").await, 6);
    assert_eq!(world.count("SELECT count(*) FROM outbox").await, 3);
    assert_eq!(world.dispatch_jobs(Queue::Dispatching).await.len(), 3);
    assert!(world.drain_queue(Queue::DeadLetter).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_key_with_different_content_is_set_aside_as_a_conflict() {
    let world = World::new().await;
    let (intake, _relay) = world.steps().await;
    intake
        .handle(&[incoming(&world, Queue::Mailbox, THREE_RECIPIENTS, None)])
        .await
        .expect("first");
    let changed = THREE_RECIPIENTS.replace("Your order", "Your order has shipped");
    let outcomes = intake
        .handle(&[incoming(&world, Queue::Mailbox, &changed, None)])
        .await
        .expect("second");
    assert!(
        matches!(&outcomes[0], IntakeOutcome::SetAside { reason, .. } if reason == "conflict"),
        "{outcomes:?}"
    );
    // Never merged: the first request's content stands.
    let subjects = world.query("SELECT subject FROM requests").await;
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0].get::<_, String>(0), "Your order");

    let set_aside = world.drain_queue(Queue::DeadLetter).await;
    assert_eq!(set_aside.len(), 1);
    assert_eq!(reason_of(&set_aside[0]).as_deref(), Some("conflict"));
    assert_eq!(set_aside[0].delivery.data, changed.as_bytes());
    let recorded = world
        .query("SELECT reason, tenant, request_key FROM dead_letters")
        .await;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].get::<_, String>(0), "conflict");
    assert_eq!(
        recorded[0].get::<_, Option<String>>(1).as_deref(),
        Some("acme")
    );
    assert_eq!(
        recorded[0].get::<_, Option<String>>(2).as_deref(),
        Some("order-1001")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_tenants_with_the_same_key_and_recipient_get_separate_emails() {
    let world = World::new().await;
    let (intake, relay) = world.steps().await;
    let body = |tenant: &str| {
        format!(
            r#"{{"id": "welcome", "tenant": "{tenant}", "from": "hi@app.test",
                "to": "same@example.com", "subject": "Welcome", "text": "Hello"}}"#
        )
    };
    let outcomes = intake
        .handle(&[
            incoming(&world, Queue::Mailbox, &body("acme"), None),
            incoming(&world, Queue::Mailbox, &body("globex"), None),
        ])
        .await
        .expect("intake");
    let ids: Vec<_> = outcomes
        .iter()
        .map(|o| match o {
            IntakeOutcome::Accepted { email_ids, .. } => email_ids[0],
            other => panic!("not accepted: {other:?}"),
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
    assert_eq!(relay.drain().await.expect("relay"), 2);
    let tenants = world
        .query("SELECT tenant FROM emails ORDER BY tenant")
        .await
        .iter()
        .map(|r| r.get::<_, String>(0))
        .collect::<Vec<_>>();
    assert_eq!(tenants, ["acme", "globex"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_without_id_or_message_id_is_accepted_with_a_generated_key() {
    let world = World::new().await;
    let (intake, relay) = world.steps().await;
    let body = r#"{"from": "hi@app.test", "to": "x@example.com", "subject": "S", "text": "T"}"#;
    let outcomes = intake
        .handle(&[incoming(&world, Queue::Mailbox, body, None)])
        .await
        .expect("intake");
    assert!(
        matches!(outcomes[0], IntakeOutcome::Accepted { .. }),
        "{outcomes:?}"
    );
    assert_eq!(relay.drain().await.expect("relay"), 1);
    let rows = world
        .query("SELECT key_source, request_key, tenant FROM requests")
        .await;
    assert_eq!(rows[0].get::<_, String>(0), "generated");
    let key: String = rows[0].get(1);
    assert_eq!(
        uuid::Uuid::parse_str(&key).map(|u| u.get_version_num()),
        Ok(7),
        "a UUIDv7 key, got {key}"
    );
    assert_eq!(rows[0].get::<_, String>(2), "default");

    // With only the AMQP message_id, that is the key, and a redelivery is a duplicate.
    let by_property = incoming(&world, Queue::Mailbox, body, Some("amqp-42"));
    intake
        .handle(std::slice::from_ref(&by_property))
        .await
        .expect("intake");
    let again = intake.handle(&[by_property]).await.expect("intake");
    assert!(
        matches!(again[0], IntakeOutcome::Duplicate { .. }),
        "{again:?}"
    );
    assert_eq!(
        world
            .count("SELECT count(*) FROM requests WHERE request_key = 'amqp-42' AND key_source = 'message_id'")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn urgent_mail_goes_to_the_priority_dispatch_queue() {
    let world = World::new().await;
    let (intake, relay) = world.steps().await;
    let normal =
        r#"{"id": "n", "from": "a@app.test", "to": "x@example.com", "subject": "S", "text": "T"}"#;
    let by_field = r#"{"id": "f", "from": "a@app.test", "to": "x@example.com", "subject": "S", "text": "T", "priority": "high"}"#;
    let by_queue =
        r#"{"id": "q", "from": "a@app.test", "to": "x@example.com", "subject": "S", "text": "T"}"#;
    intake
        .handle(&[
            incoming(&world, Queue::Mailbox, normal, None),
            incoming(&world, Queue::Mailbox, by_field, None),
            incoming(&world, Queue::MailboxPriority, by_queue, None),
        ])
        .await
        .expect("intake");
    assert_eq!(relay.drain().await.expect("relay"), 3);
    let urgent: BTreeSet<String> = world
        .dispatch_jobs(Queue::DispatchingPriority)
        .await
        .into_iter()
        .map(|j| j.request_key)
        .collect();
    assert_eq!(urgent, ["f", "q"].map(String::from).into());
    let normal_jobs = world.dispatch_jobs(Queue::Dispatching).await;
    assert_eq!(normal_jobs.len(), 1);
    assert_eq!(normal_jobs[0].request_key, "n");
}
