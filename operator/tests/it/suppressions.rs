//! The suppression list: hard bounces, complaints, unsubscribes and repeated soft bounces add
//! the recipient (per tenant, on the canonical address); mail to a suppressed address is recorded
//! `suppressed` and never dispatched; the admin API lists, looks up, adds and removes entries.

use crate::helpers::{World, api_ready, http_get, incoming, timeline};
use chrono::Utc;
use mailtrail_broker::Publisher;
use mailtrail_operator::intake::Intake;
use mailtrail_operator::keys::{self, Role};
use mailtrail_operator::relay::Relay;
use mailtrail_operator::tracking::{Tracker, TrackingOutcome};
use mailtrail_shared::history::EventType;
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use mailtrail_test_support::{http_delete, http_post};
use std::time::Duration;
use uuid::Uuid;

struct Steps {
    intake: Intake,
    relay: Relay,
    tracker: Tracker,
}

async fn steps(world: &World) -> Steps {
    let (intake, relay) = world.steps().await;
    let publisher = Publisher::open(&world.connection).await.expect("publisher");
    let tracker = Tracker::new(
        world.pool(),
        publisher,
        world.config.topology(),
        Duration::from_secs(5),
    );
    Steps {
        intake,
        relay,
        tracker,
    }
}

/// Sends one request through the intake and the relay; returns the email id.
async fn send(world: &World, steps: &Steps, tenant: &str, key: &str, to: &str) -> Uuid {
    let request = serde_json::json!({
        "id": key, "tenant": tenant, "from": "shop@acme.test", "to": to,
        "subject": "S", "text": "T",
    })
    .to_string();
    steps
        .intake
        .handle(&[incoming(world, Queue::Mailbox, &request, None)])
        .await
        .expect("intake");
    steps.relay.drain().await.expect("relay");
    let canonical = to.to_lowercase();
    ids::email_id(tenant, key, &canonical)
}

fn report(
    email_id: Uuid,
    tenant: &str,
    event_type: EventType,
    details: serde_json::Value,
) -> TrackingEvent {
    TrackingEvent {
        version: 1,
        event_id: Uuid::new_v4(),
        email_id: Some(email_id),
        tenant: tenant.to_owned(),
        event_type,
        occurred_at: Utc::now(),
        source: "webhook:sendgrid".into(),
        provider: Some("sendgrid".into()),
        provider_message_id: None,
        provider_event_id: None,
        details,
    }
}

async fn track(world: &World, steps: &Steps, events: &[TrackingEvent]) {
    let batch: Vec<_> = events
        .iter()
        .map(|e| {
            incoming(
                world,
                Queue::Tracking,
                &serde_json::to_string(e).expect("json"),
                None,
            )
        })
        .collect();
    let outcomes = steps.tracker.handle(&batch).await.expect("tracking");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, TrackingOutcome::Recorded { .. })),
        "{outcomes:?}"
    );
}

fn hard_bounce(email_id: Uuid, tenant: &str) -> TrackingEvent {
    report(
        email_id,
        tenant,
        EventType::Bounced,
        serde_json::json!({"bounce_kind": "hard", "recipient": "ann@example.com"}),
    )
}

fn soft_bounce(email_id: Uuid, tenant: &str) -> TrackingEvent {
    report(
        email_id,
        tenant,
        EventType::Bounced,
        serde_json::json!({"bounce_kind": "soft"}),
    )
}

async fn entries(world: &World, tenant: &str) -> Vec<(String, String)> {
    world
        .query(&format!(
            "SELECT address, reason FROM suppressions WHERE tenant = '{tenant}' ORDER BY address"
        ))
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn post_json(
    port: u16,
    key: &str,
    body: serde_json::Value,
) -> (u16, String, serde_json::Value) {
    let auth = format!("Bearer {key}");
    http_post(
        port,
        "/v1/suppressions",
        &[
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ],
        body.to_string().as_bytes(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hard_bounce_suppresses_the_address_in_any_case_for_its_tenant_only() {
    let world = World::new().await;
    let steps = steps(&world).await;
    let first = send(&world, &steps, "acme", "s-1", "ann@example.com").await;
    assert_eq!(world.dispatch_jobs(Queue::Dispatching).await.len(), 1);
    let bounce = hard_bounce(first, "acme");
    track(&world, &steps, std::slice::from_ref(&bounce)).await;
    let row = world
        .query(
            "SELECT reason, source_event_id::text, email_id::text, expires_at IS NULL
               FROM suppressions WHERE tenant = 'acme' AND address = 'ann@example.com'",
        )
        .await;
    assert_eq!(row.len(), 1);
    assert_eq!(row[0].get::<_, String>(0), "hard_bounce");
    assert_eq!(
        row[0].get::<_, Option<String>>(1),
        Some(bounce.event_id.to_string())
    );
    assert_eq!(row[0].get::<_, Option<String>>(2), Some(first.to_string()));
    assert!(row[0].get::<_, bool>(3), "never expires by default");

    // The next email to that address, in another letter case: accepted, suppressed, not sent.
    let second = send(&world, &steps, "acme", "s-2", "ANN@Example.com").await;
    assert_eq!(timeline(&world, second).await, "accepted,suppressed");
    assert!(world.dispatch_jobs(Queue::Dispatching).await.is_empty());
    assert_eq!(
        world
            .count(&format!(
                "SELECT count(*) FROM outbox WHERE email_id = '{second}'"
            ))
            .await,
        0
    );
    let details = world
        .query(&format!(
            "SELECT details::text FROM events WHERE email_id = '{second}' AND event_type = 'suppressed'"
        ))
        .await[0]
        .get::<_, String>(0);
    let details: serde_json::Value = serde_json::from_str(&details).expect("json");
    assert_eq!(details["reason"], "hard_bounce");
    assert_eq!(details["source_event_id"], bounce.event_id.to_string());
    assert!(details["since"].is_string());
    let status = world
        .query(&format!("SELECT status FROM emails WHERE id = '{second}'"))
        .await[0]
        .get::<_, String>(0);
    assert_eq!(status, "suppressed");

    // Another tenant does not share the entry.
    let globex = send(&world, &steps, "globex", "s-3", "ann@example.com").await;
    assert_eq!(timeline(&world, globex).await, "accepted,queued");
    let jobs = world.dispatch_jobs(Queue::Dispatching).await;
    assert_eq!(jobs.len(), 1);

    // A batch mixing a suppressed and a free recipient: only the free one gets a job.
    let mixed = serde_json::json!({
        "id": "s-4", "tenant": "acme", "from": "shop@acme.test",
        "to": ["Ann@example.com", "bob@example.com"], "subject": "S", "text": "T",
    })
    .to_string();
    steps
        .intake
        .handle(&[incoming(&world, Queue::Mailbox, &mixed, None)])
        .await
        .expect("intake");
    steps.relay.drain().await.expect("relay");
    assert_eq!(world.dispatch_jobs(Queue::Dispatching).await.len(), 1);
    let ann = ids::email_id("acme", "s-4", "ann@example.com");
    assert_eq!(timeline(&world, ann).await, "accepted,suppressed");
}

#[tokio::test(flavor = "multi_thread")]
async fn removing_the_entry_through_the_api_lets_the_next_email_through() {
    let world = World::new().await;
    let steps = steps(&world).await;
    let first = send(&world, &steps, "acme", "r-1", "ann@example.com").await;
    world.dispatch_jobs(Queue::Dispatching).await;
    track(&world, &steps, &[hard_bounce(first, "acme")]).await;
    send(&world, &steps, "acme", "r-2", "ann@example.com").await;
    assert!(world.dispatch_jobs(Queue::Dispatching).await.is_empty());

    let (stop, handle, port) = world.start_operator_with_port().await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, admin) = keys::create(&mut conn, "acme admin", Some("acme"), Role::Admin)
        .await
        .expect("key");
    api_ready(port).await;
    assert_eq!(
        http_delete(port, "/v1/suppressions/acme/ANN@example.com", &admin)
            .await
            .0,
        204
    );
    assert_eq!(
        http_delete(port, "/v1/suppressions/acme/ann@example.com", &admin)
            .await
            .0,
        404
    );
    stop.cancel();
    handle.await.expect("the operator stops");

    let third = send(&world, &steps, "acme", "r-3", "ann@example.com").await;
    assert_eq!(timeline(&world, third).await, "accepted,queued");
    let jobs = world.dispatch_jobs(Queue::Dispatching).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].email_id, third);
}

#[tokio::test(flavor = "multi_thread")]
async fn complaints_unsubscribes_and_repeated_soft_bounces_add_entries() {
    let world = World::new().await;
    let steps = steps(&world).await;
    let carl = send(&world, &steps, "acme", "c-1", "carl@example.com").await;
    let dora = send(&world, &steps, "acme", "c-2", "dora@example.com").await;
    let soft3 = send(&world, &steps, "acme", "c-3", "erin@example.com").await;
    let soft2 = send(&world, &steps, "acme", "c-4", "fred@example.com").await;
    let delivered = send(&world, &steps, "acme", "c-5", "gina@example.com").await;
    track(
        &world,
        &steps,
        &[
            report(carl, "acme", EventType::Complained, serde_json::json!({})),
            report(dora, "acme", EventType::Unsubscribed, serde_json::json!({})),
            soft_bounce(soft3, "acme"),
            soft_bounce(soft2, "acme"),
            report(
                delivered,
                "acme",
                EventType::Delivered,
                serde_json::json!({}),
            ),
        ],
    )
    .await;
    track(
        &world,
        &steps,
        &[soft_bounce(soft3, "acme"), soft_bounce(soft2, "acme")],
    )
    .await;
    assert_eq!(
        entries(&world, "acme").await,
        [
            ("carl@example.com".to_owned(), "complaint".to_owned()),
            ("dora@example.com".to_owned(), "unsubscribe".to_owned()),
        ]
    );
    // The third soft bounce within the window adds erin; fred, with two, stays off the list.
    let third = soft_bounce(soft3, "acme");
    track(&world, &steps, std::slice::from_ref(&third)).await;
    assert_eq!(
        entries(&world, "acme").await,
        [
            ("carl@example.com".to_owned(), "complaint".to_owned()),
            ("dora@example.com".to_owned(), "unsubscribe".to_owned()),
            ("erin@example.com".to_owned(), "soft_bounces".to_owned()),
        ]
    );
    let row = world
        .query("SELECT soft_bounces, source_event_id::text FROM suppressions WHERE address = 'erin@example.com'")
        .await;
    assert_eq!(row[0].get::<_, i32>(0), 3);
    assert_eq!(
        row[0].get::<_, Option<String>>(1),
        Some(third.event_id.to_string())
    );
    // A redelivered soft bounce counts once: fred's first one again changes nothing.
    let again = steps
        .tracker
        .handle(&[incoming(
            &world,
            Queue::Tracking,
            &serde_json::to_string(&third).expect("json"),
            None,
        )])
        .await
        .expect("tracking");
    assert!(matches!(again[0], TrackingOutcome::Duplicate { .. }));
    assert_eq!(entries(&world, "acme").await.len(), 3);
    track(&world, &steps, &[soft_bounce(soft2, "acme")]).await;
    assert_eq!(
        entries(&world, "acme").await.len(),
        4,
        "fred's third soft bounce"
    );

    // Mail to each suppressed address is suppressed.
    world.dispatch_jobs(Queue::Dispatching).await;
    for (key, to) in [
        ("c-6", "carl@example.com"),
        ("c-7", "Dora@Example.com"),
        ("c-8", "erin@example.com"),
    ] {
        let email = send(&world, &steps, "acme", key, to).await;
        assert_eq!(timeline(&world, email).await, "accepted,suppressed", "{to}");
    }
    assert!(world.dispatch_jobs(Queue::Dispatching).await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn soft_bounces_outside_the_window_do_not_count_and_expired_entries_do_not_suppress() {
    let world = World::new().await;
    let steps = steps(&world).await;
    let email = send(&world, &steps, "acme", "w-1", "hana@example.com").await;
    let mut old = soft_bounce(email, "acme");
    old.occurred_at = Utc::now() - chrono::Duration::hours(100);
    track(&world, &steps, &[old]).await;
    track(
        &world,
        &steps,
        &[soft_bounce(email, "acme"), soft_bounce(email, "acme")],
    )
    .await;
    assert!(entries(&world, "acme").await.is_empty());

    // An expired entry lets mail through.
    world
        .query(
            "INSERT INTO suppressions (tenant, address, reason, expires_at)
             VALUES ('acme', 'ivy@example.com', 'manual', now() - interval '1 hour')",
        )
        .await;
    world.dispatch_jobs(Queue::Dispatching).await;
    let ivy = send(&world, &steps, "acme", "w-2", "ivy@example.com").await;
    assert_eq!(timeline(&world, ivy).await, "accepted,queued");
    // A hard bounce replaces the expired entry.
    track(&world, &steps, &[hard_bounce(ivy, "acme")]).await;
    let row = world
        .query(
            "SELECT reason, expires_at IS NULL FROM suppressions WHERE address = 'ivy@example.com'",
        )
        .await;
    assert_eq!(row[0].get::<_, String>(0), "hard_bounce");
    assert!(row[0].get::<_, bool>(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_lists_looks_up_adds_and_removes_within_the_keys_scope() {
    let world = World::new().await;
    let steps = steps(&world).await;
    let (stop, handle, port) = world.start_operator_with_port().await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, ops) = keys::create(&mut conn, "ops", None, Role::Admin)
        .await
        .expect("key");
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

    // Add: canonicalised; invalid input is 400; a read key is 403; another tenant is 404, as if
    // it did not exist.
    let (status, _, body) = post_json(
        port,
        &acme_admin,
        serde_json::json!({"tenant": "acme", "address": "Kim <KIM@Example.COM>", "reason": "asked by phone"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["address"], "kim@example.com");
    assert_eq!(body["reason"], "asked by phone");
    assert_eq!(body["active"], true);
    let (status, content_type, _) = post_json(
        port,
        &acme_admin,
        serde_json::json!({"tenant": "acme", "address": "not an address"}),
    )
    .await;
    assert_eq!(
        (status, content_type.as_str()),
        (400, "application/problem+json")
    );
    assert_eq!(
        post_json(port, &acme_admin, serde_json::json!({"tenant": "acme"}))
            .await
            .0,
        400
    );
    let (status, content_type, _) = post_json(
        port,
        &acme_read,
        serde_json::json!({"tenant": "acme", "address": "lee@example.com"}),
    )
    .await;
    assert_eq!(
        (status, content_type.as_str()),
        (403, "application/problem+json")
    );
    assert_eq!(
        post_json(
            port,
            &acme_admin,
            serde_json::json!({"tenant": "globex", "address": "lee@example.com"}),
        )
        .await
        .0,
        404
    );
    for address in ["a@example.com", "b@example.com", "c@example.com"] {
        let (status, _, _) = post_json(
            port,
            &ops,
            serde_json::json!({"tenant": "acme", "address": address, "reason": "bulk"}),
        )
        .await;
        assert_eq!(status, 201);
    }
    let (status, _, _) = post_json(
        port,
        &globex,
        serde_json::json!({"tenant": "globex", "address": "kim@example.com"}),
    )
    .await;
    assert_eq!(status, 201);

    // Mail to the added address is suppressed.
    world.dispatch_jobs(Queue::Dispatching).await;
    let kim = send(&world, &steps, "acme", "a-1", "kim@example.com").await;
    assert_eq!(timeline(&world, kim).await, "accepted,suppressed");

    // List, paged: acme's key sees acme's four entries, two per page.
    let (status, _, page1) = http_get(port, "/v1/suppressions?limit=2", Some(&acme_read)).await;
    assert_eq!(status, 200, "{page1}");
    let addresses = |page: &serde_json::Value| -> Vec<String> {
        page["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{}/{}",
                    e["tenant"].as_str().unwrap_or(""),
                    e["address"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    assert_eq!(
        addresses(&page1),
        ["acme/a@example.com", "acme/b@example.com"]
    );
    let next = page1["next"].as_str().expect("a next cursor").to_owned();
    let (_, _, page2) = http_get(
        port,
        &format!("/v1/suppressions?limit=2&after={next}"),
        Some(&acme_read),
    )
    .await;
    assert_eq!(
        addresses(&page2),
        ["acme/c@example.com", "acme/kim@example.com"]
    );
    // The last page says so.
    assert!(page2["next"].is_null(), "{page2}");
    // The all-tenant key pages across tenants: (acme, kim) then (globex, kim).
    let (_, _, across) = http_get(port, "/v1/suppressions?limit=4", Some(&ops)).await;
    let next = across["next"].as_str().expect("a next cursor").to_owned();
    let (_, _, rest) = http_get(
        port,
        &format!("/v1/suppressions?limit=4&after={next}"),
        Some(&ops),
    )
    .await;
    assert_eq!(addresses(&rest), ["globex/kim@example.com"]);
    // The all-tenant key sees both tenants, or one when it asks.
    let (_, _, all) = http_get(port, "/v1/suppressions", Some(&ops)).await;
    assert_eq!(addresses(&all).len(), 5);
    assert!(all["next"].is_null());
    let (_, _, only) = http_get(port, "/v1/suppressions?tenant=globex", Some(&ops)).await;
    assert_eq!(addresses(&only), ["globex/kim@example.com"]);
    // A scoped key asking for another tenant sees nothing of it.
    let (_, _, other) = http_get(port, "/v1/suppressions?tenant=globex", Some(&acme_read)).await;
    assert_eq!(addresses(&other), Vec::<String>::new());
    assert_eq!(
        http_get(port, "/v1/suppressions?limit=501", Some(&ops))
            .await
            .0,
        400
    );
    assert_eq!(
        http_get(port, "/v1/suppressions?after=nonsense!", Some(&ops))
            .await
            .0,
        400
    );

    // Look up, in any letter case; another tenant's entry and an unknown one are 404.
    let (status, _, entry) = http_get(
        port,
        "/v1/suppressions/acme/KIM@example.com",
        Some(&acme_read),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(entry["reason"], "asked by phone");
    let (status, content_type, _) = http_get(
        port,
        "/v1/suppressions/globex/kim@example.com",
        Some(&acme_read),
    )
    .await;
    assert_eq!(
        (status, content_type.as_str()),
        (404, "application/problem+json")
    );
    assert_eq!(
        http_get(
            port,
            "/v1/suppressions/acme/nobody@example.com",
            Some(&acme_read)
        )
        .await
        .0,
        404
    );
    // No key: 401.
    assert_eq!(http_get(port, "/v1/suppressions", None).await.0, 401);

    // Remove: a read key may not (403); another tenant's key gets 404; the admin key may.
    assert_eq!(
        http_delete(port, "/v1/suppressions/acme/kim@example.com", &acme_read)
            .await
            .0,
        403
    );
    assert_eq!(
        http_delete(port, "/v1/suppressions/acme/kim@example.com", &globex)
            .await
            .0,
        404
    );
    assert_eq!(
        http_delete(port, "/v1/suppressions/acme/kim@example.com", &acme_admin)
            .await
            .0,
        204
    );
    assert_eq!(
        http_get(port, "/v1/suppressions/acme/kim@example.com", Some(&ops))
            .await
            .0,
        404
    );
    // globex's entry for the same address is untouched.
    assert_eq!(
        http_get(port, "/v1/suppressions/globex/kim@example.com", Some(&ops))
            .await
            .0,
        200
    );

    stop.cancel();
    handle.await.expect("the operator stops");
}
