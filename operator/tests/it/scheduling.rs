//! Scheduled sends: a future `send_at` holds the job in the outbox until it is due, whichever
//! operator's relay looks, and `DELETE /v1/messages/{id}` withdraws it before it leaves.

use crate::helpers::{World, api_ready, incoming, timeline};
use chrono::{DateTime, Duration as Span, SecondsFormat, Utc};
use mailtrail_broker::Publisher;
use mailtrail_operator::clock::Clock;
use mailtrail_operator::intake::{Intake, IntakeOutcome};
use mailtrail_operator::keys::{self, Role};
use mailtrail_operator::relay::Relay;
use mailtrail_shared::topology::Queue;
use mailtrail_smtp_capture::SmtpCapture;
use mailtrail_test_support::{ServiceProcess, eventually, http_delete};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

fn request(key: &str, to: &[String], send_at: Option<DateTime<Utc>>) -> String {
    let mut body = serde_json::json!({
        "id": key, "tenant": "acme", "from": "shop@acme.test", "to": to,
        "subject": "S", "text": "T",
    });
    if let Some(at) = send_at {
        body["send_at"] = at.to_rfc3339_opts(SecondsFormat::Secs, false).into();
    }
    body.to_string()
}

fn intake_with(world: &World, publisher: Publisher, clock: Clock) -> Intake {
    Intake::new(
        world.pool(),
        publisher,
        world.config.topology(),
        world.config.limits(),
        Duration::from_secs(5),
        Arc::new(Notify::new()),
    )
    .with_clock(clock)
}

async fn relay_with(world: &World, batch: i64, clock: Clock) -> Relay {
    let publisher = Publisher::open(&world.connection).await.expect("publisher");
    Relay::new(
        world.pool(),
        publisher,
        world.config.topology(),
        batch,
        Duration::from_secs(5),
    )
    .with_clock(clock)
}

async fn accept(intake: &Intake, world: &World, body: &str) -> Vec<Uuid> {
    let outcome = intake
        .handle(&[incoming(world, Queue::Mailbox, body, None)])
        .await
        .expect("intake");
    match &outcome[..] {
        [IntakeOutcome::Accepted { email_ids, .. }] => email_ids.clone(),
        other => panic!("expected the request to be accepted, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_future_send_at_is_recorded_scheduled_and_released_once_when_due() {
    let world = World::new().await;
    let start = Utc::now();
    let clock = Clock::manual(start);
    let publisher = Publisher::open(&world.connection).await.expect("publisher");
    let intake = intake_with(&world, publisher, clock.clone());
    let relay = relay_with(&world, 50, clock.clone()).await;

    let due = start + Span::hours(1);
    let later = accept(
        &intake,
        &world,
        &request("later", &["ann@example.com".into()], Some(due)),
    )
    .await;
    // A send_at already past is simply sent now: no `scheduled`.
    let past = accept(
        &intake,
        &world,
        &request(
            "past",
            &["bob@example.com".into()],
            Some(start - Span::hours(1)),
        ),
    )
    .await;
    assert_eq!(timeline(&world, later[0]).await, "accepted,scheduled");
    let scheduled_at = world
        .query(&format!(
            "SELECT details->>'send_at' FROM events
              WHERE email_id = '{}' AND event_type = 'scheduled'",
            later[0]
        ))
        .await[0]
        .get::<_, String>(0);
    assert_eq!(
        scheduled_at
            .parse::<DateTime<Utc>>()
            .expect("a time")
            .timestamp(),
        due.timestamp()
    );

    assert_eq!(relay.drain().await.expect("relay"), 1, "only the past one");
    let jobs = world.dispatch_jobs(Queue::Dispatching).await;
    assert_eq!(
        jobs.iter().map(|j| j.email_id).collect::<Vec<_>>(),
        past.clone()
    );
    assert_eq!(timeline(&world, past[0]).await, "accepted,queued");

    clock.advance(Span::minutes(59));
    assert_eq!(relay.drain().await.expect("relay"), 0, "not due yet");
    clock.advance(Span::minutes(2));
    assert_eq!(relay.drain().await.expect("relay"), 1, "due now");
    assert_eq!(relay.drain().await.expect("relay"), 0, "released once");
    let jobs = world.dispatch_jobs(Queue::Dispatching).await;
    assert_eq!(jobs.iter().map(|j| j.email_id).collect::<Vec<_>>(), later);
    assert_eq!(
        timeline(&world, later[0]).await,
        "accepted,scheduled,queued"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn three_relays_release_each_due_job_exactly_once() {
    let world = World::new().await;
    let start = Utc::now();
    let clock = Clock::manual(start);
    let publisher = Publisher::open(&world.connection).await.expect("publisher");
    let intake = intake_with(&world, publisher, clock.clone());
    let mut expected = HashSet::new();
    for batch in 0..4 {
        let to: Vec<String> = (0..20)
            .map(|n| format!("r{batch}-{n}@example.com"))
            .collect();
        let key = format!("bulk-{batch}");
        let ids = accept(
            &intake,
            &world,
            &request(&key, &to, Some(start + Span::minutes(10))),
        )
        .await;
        expected.extend(ids);
    }
    assert_eq!(expected.len(), 80);

    // Small batches so the three relays interleave.
    let relays = [
        relay_with(&world, 7, clock.clone()).await,
        relay_with(&world, 7, clock.clone()).await,
        relay_with(&world, 7, clock.clone()).await,
    ];
    let before: usize = relays[0].drain().await.expect("relay");
    assert_eq!(before, 0, "nothing is due yet");
    clock.advance(Span::minutes(11));
    let (a, b, c) = tokio::join!(relays[0].drain(), relays[1].drain(), relays[2].drain());
    let released = a.expect("relay a") + b.expect("relay b") + c.expect("relay c");
    // A relay may stop early while another holds the remaining rows: finish the rest.
    let rest = relays[0].drain().await.expect("relay");
    assert_eq!(released + rest, 80);

    let jobs = world.dispatch_jobs(Queue::Dispatching).await;
    assert_eq!(jobs.len(), 80, "each job published exactly once");
    let published: HashSet<Uuid> = jobs.iter().map(|j| j.email_id).collect();
    assert_eq!(published, expected);
    assert_eq!(
        world
            .count("SELECT count(*) FROM events WHERE event_type = 'queued'")
            .await,
        80
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_withdraws_a_scheduled_email_within_the_keys_scope() {
    let world = World::new().await;
    let (stop, handle, port) = world.start_operator_with_port().await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, acme_admin) = keys::create(&mut conn, "acme admin", Some("acme"), Role::Admin)
        .await
        .expect("key");
    let (_, acme_read) = keys::create(&mut conn, "acme read", Some("acme"), Role::Read)
        .await
        .expect("key");
    let (_, globex) = keys::create(&mut conn, "globex", Some("globex"), Role::Admin)
        .await
        .expect("key");
    api_ready(port).await;

    let publisher = Publisher::open(&world.connection).await.expect("publisher");
    let intake = intake_with(&world, publisher, Clock::system());
    let scheduled = accept(
        &intake,
        &world,
        &request(
            "tomorrow",
            &["ann@example.com".into()],
            Some(Utc::now() + Span::days(1)),
        ),
    )
    .await[0];
    let now = accept(
        &intake,
        &world,
        &request("now", &["bob@example.com".into()], None),
    )
    .await[0];
    // The running operator's relay hands the immediate one over.
    eventually(
        "the immediate email is queued",
        Duration::from_secs(20),
        || {
            let world = &world;
            async move { timeline(world, now).await.ends_with("queued").then_some(()) }
        },
    )
    .await;

    let path = format!("/v1/messages/{scheduled}");
    assert_eq!(http_delete(port, &path, &acme_read).await.0, 403);
    assert_eq!(http_delete(port, &path, &globex).await.0, 404);
    let unknown = format!("/v1/messages/{}", Uuid::new_v4());
    assert_eq!(http_delete(port, &unknown, &acme_admin).await.0, 404);
    assert_eq!(
        http_delete(port, "/v1/messages/not-a-uuid", &acme_admin)
            .await
            .0,
        404
    );
    assert_eq!(timeline(&world, scheduled).await, "accepted,scheduled");

    let (status, _, body) = http_delete(port, &path, &acme_admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["changed"], true);
    assert_eq!(
        timeline(&world, scheduled).await,
        "accepted,scheduled,cancelled"
    );
    let (status, _, body) = http_delete(port, &path, &acme_admin).await;
    assert_eq!((status, body["changed"].clone()), (200, false.into()));
    assert_eq!(
        timeline(&world, scheduled).await,
        "accepted,scheduled,cancelled",
        "cancelling twice records nothing more"
    );

    // Even once due, a cancelled job is never released.
    let relay = relay_with(&world, 50, Clock::manual(Utc::now() + Span::days(2))).await;
    assert_eq!(relay.drain().await.expect("relay"), 0);

    // Already handed to the dispatcher: 409, as a problem document naming the status.
    let (status, content_type, body) =
        http_delete(port, &format!("/v1/messages/{now}"), &acme_admin).await;
    assert_eq!(
        (status, content_type.as_str()),
        (409, "application/problem+json"),
        "{body}"
    );
    assert!(
        body["detail"].as_str().unwrap_or("").contains("queued"),
        "{body}"
    );
    assert_eq!(timeline(&world, now).await, "accepted,queued");

    stop.cancel();
    handle.await.expect("operator");
}

/// Live, through the real binaries: an email due in a few seconds waits in the database across
/// an operator restart, then leaves once, not before it was due.
#[tokio::test(flavor = "multi_thread")]
async fn a_scheduled_email_survives_an_operator_restart_and_leaves_once_when_due() {
    let world = World::new().await;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    let spawn_operator = || {
        ServiceProcess::spawn(
            "operator",
            env!("CARGO_BIN_EXE_operator"),
            &["run"],
            &world.operator_env(),
        )
        .expect("start the operator")
    };
    let mut operator = spawn_operator();
    let mut dispatcher = crate::flight::dispatcher(&world, &smtp, None);
    let send_at = Utc::now() + Span::seconds(8);
    let body = request("soon", &["ann@example.com".into()], Some(send_at));
    world.publish(Queue::Mailbox, body.as_bytes(), None).await;
    let email = mailtrail_shared::ids::email_id("acme", "soon", "ann@example.com");
    eventually("the email is scheduled", Duration::from_secs(20), || {
        let world = &world;
        async move {
            let n = world
                .count(&format!(
                    "SELECT count(*) FROM events WHERE email_id = '{email}'"
                ))
                .await;
            (n > 0).then_some(())
        }
    })
    .await;
    assert_eq!(timeline(&world, email).await, "accepted,scheduled");

    operator.terminate();
    let status = operator
        .wait_exit(Duration::from_secs(15))
        .await
        .expect("exits after SIGTERM");
    assert!(status.success(), "operator exits 0: {status:?}");
    // The restart happens while the email waits, or the test proves nothing.
    assert!(Utc::now() < send_at, "the operator stopped too late");
    assert_eq!(smtp.message_count(), 0);
    let mut operator = spawn_operator();

    eventually("the email is dispatched", Duration::from_secs(60), || {
        let world = &world;
        async move {
            timeline(world, email)
                .await
                .ends_with("dispatched")
                .then_some(())
        }
    })
    .await;
    assert_eq!(
        timeline(&world, email).await,
        "accepted,scheduled,queued,dispatched"
    );
    let row = &world
        .query(&format!(
            "SELECT q.occurred_at >= (s.details->>'send_at')::timestamptz,
                    q.occurred_at::text, s.details->>'send_at'
               FROM events q JOIN events s ON s.email_id = q.email_id
              WHERE q.email_id = '{email}' AND q.event_type = 'queued'
                AND s.event_type = 'scheduled'"
        ))
        .await[0];
    assert!(
        row.get::<_, bool>(0),
        "released at {}, due at {}",
        row.get::<_, String>(1),
        row.get::<_, String>(2)
    );
    assert_eq!(smtp.message_count(), 1);

    for process in [&mut operator, &mut dispatcher] {
        process.terminate();
        let status = process
            .wait_exit(Duration::from_secs(15))
            .await
            .expect("exits after SIGTERM");
        assert!(status.success(), "{} exits 0: {status:?}", process.name());
    }
}
