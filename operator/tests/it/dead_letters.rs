//! Dead letters: the consumer stores every service's set-aside copies (typed headers, attempts
//! counted, the operator's own copies not twice), an exhausted dispatch job gets `failed` once,
//! and the admin API lists, shows, replays (once) and discards them within the key's scope.

use crate::helpers::{World, api_ready, http_get, incoming};
use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use mailtrail_broker::{Incoming, Publisher, SetAside, header_i64, header_string};
use mailtrail_operator::dead_letter_consumer::{DeadLetterConsumer, DeadLetterOutcome};
use mailtrail_operator::keys::{self, Role};
use mailtrail_operator::tracking::Tracker;
use mailtrail_shared::dispatch::DispatchJob;
use mailtrail_shared::history::EventType;
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use mailtrail_shared::{headers, ids};
use mailtrail_test_support::{TcpProxy, eventually, http_post};
use std::time::Duration;
use uuid::Uuid;

fn uuid(text: &str) -> Uuid {
    Uuid::parse_str(text).expect("a uuid")
}

fn consumer(world: &World) -> DeadLetterConsumer {
    DeadLetterConsumer::new(world.pool(), Duration::from_secs(5))
}

/// A message as it reached `queue`, with `headers`.
fn original(world: &World, queue: Queue, body: &[u8], table: FieldTable, id: &str) -> Incoming {
    Incoming {
        body: body.to_vec(),
        properties: BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(id.into())
            .with_headers(table),
        queue,
        queue_name: world.queue(queue),
        redelivered: false,
    }
}

/// The dead-letter copy `by` would publish for `message`, as the consumer receives it.
fn copy_of(world: &World, message: &Incoming, reason: &str, by: &'static str) -> Incoming {
    let out = SetAside::for_message(message, reason, "what to fix", by)
        .message_for(message, &world.config.topology());
    Incoming {
        body: out.body,
        properties: out.properties,
        queue: Queue::DeadLetter,
        queue_name: world.queue(Queue::DeadLetter),
        redelivered: false,
    }
}

fn job_headers(job: &DispatchJob) -> FieldTable {
    let mut table = FieldTable::default();
    table.insert(
        headers::TENANT.into(),
        AMQPValue::LongString(job.tenant.clone().into()),
    );
    table.insert(
        headers::EMAIL_ID.into(),
        AMQPValue::LongString(job.email_id.to_string().into()),
    );
    table.insert(
        headers::ATTEMPT.into(),
        AMQPValue::LongLongInt(i64::from(job.attempt)),
    );
    table
}

/// Sends a request through the intake and the relay; returns its dispatch job.
async fn job_for(world: &World, tenant: &str, key: &str) -> DispatchJob {
    let (intake, relay) = world.steps().await;
    let request = serde_json::json!({
        "id": key, "tenant": tenant, "from": "shop@acme.test", "to": "ann@example.com",
        "subject": "S", "text": "T",
    })
    .to_string();
    intake
        .handle(&[incoming(world, Queue::Mailbox, &request, None)])
        .await
        .expect("intake");
    relay.drain().await.expect("relay");
    let mut jobs = world.dispatch_jobs(Queue::Dispatching).await;
    assert_eq!(jobs.len(), 1);
    jobs.remove(0)
}

/// A dispatcher copy of `job` set aside with `reason`.
fn dispatcher_copy(world: &World, job: &DispatchJob, reason: &str) -> Incoming {
    let message = original(
        world,
        Queue::Dispatching,
        &serde_json::to_vec(job).expect("json"),
        job_headers(job),
        &job.job_id.to_string(),
    );
    copy_of(world, &message, reason, "dispatcher")
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_copies_are_stored_with_typed_headers_and_repeats_are_counted_once() {
    let world = World::new().await;
    let consumer = consumer(&world);
    let mut table = FieldTable::default();
    table.insert(headers::TENANT.into(), AMQPValue::LongString("acme".into()));
    table.insert("x-count".into(), AMQPValue::LongInt(7));
    table.insert("x-flag".into(), AMQPValue::Boolean(true));
    table.insert(
        "x-nul".into(),
        AMQPValue::LongString(b"a\0b".to_vec().into()),
    );
    table.insert("x-raw".into(), AMQPValue::ByteArray(vec![0u8, 255].into()));
    let body = b"\xff\x00not a job".to_vec();
    let message = original(&world, Queue::Dispatching, &body, table, "m-1");
    let first = copy_of(&world, &message, "invalid_job", "dispatcher");

    let outcomes = consumer
        .handle(std::slice::from_ref(&first))
        .await
        .expect("stored");
    let id = match outcomes.as_slice() {
        [DeadLetterOutcome::Recorded { id }] => *id,
        other => panic!("{other:?}"),
    };
    // The same copy redelivered (the ack was lost) counts nothing.
    assert_eq!(
        consumer.handle(&[first]).await.expect("stored"),
        [DeadLetterOutcome::Duplicate { id }]
    );
    // The same message set aside again is another copy: one more attempt, same row.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = copy_of(&world, &message, "invalid_job", "dispatcher");
    assert_eq!(
        consumer.handle(&[again]).await.expect("stored"),
        [DeadLetterOutcome::Repeated { id }]
    );

    let rows = world
        .query(&format!(
            "SELECT source_queue, reason, detail, tenant, set_aside_by, attempts, body, headers::text,
                    last_seen_at > first_seen_at
               FROM dead_letters WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row.get::<_, String>(0), world.queue(Queue::Dispatching));
    assert_eq!(row.get::<_, String>(1), "invalid_job");
    assert_eq!(row.get::<_, String>(2), "what to fix");
    assert_eq!(row.get::<_, Option<String>>(3).as_deref(), Some("acme"));
    assert_eq!(row.get::<_, String>(4), "dispatcher");
    assert_eq!(row.get::<_, i32>(5), 2);
    assert_eq!(
        row.get::<_, Vec<u8>>(6),
        body,
        "the body is kept byte for byte"
    );
    assert!(row.get::<_, bool>(8), "last_seen_at moved");
    let stored: serde_json::Value = serde_json::from_str(row.get(7)).expect("json");
    assert_eq!(stored["message_id"], "m-1", "the original's message id");
    let typed = &stored["headers"];
    assert_eq!(typed["x-count"], 7);
    assert_eq!(typed["x-flag"], true);
    assert_eq!(typed["x-nul"]["base64"], "YQBi");
    assert_eq!(typed["x-raw"]["bytes"], "AP8=");
    assert_eq!(typed[headers::REASON], "invalid_job");

    // A message the broker dead-lettered itself names its queue and reason in `x-death`.
    let mut death = FieldTable::default();
    death.insert(
        "queue".into(),
        AMQPValue::LongString(world.queue(Queue::Tracking).into()),
    );
    death.insert("reason".into(), AMQPValue::LongString("expired".into()));
    let mut table = FieldTable::default();
    table.insert(
        "x-death".into(),
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
    );
    let native = Incoming {
        body: b"{}".to_vec(),
        properties: BasicProperties::default()
            .with_message_id("native-1".into())
            .with_headers(table),
        queue: Queue::DeadLetter,
        queue_name: world.queue(Queue::DeadLetter),
        redelivered: false,
    };
    let outcomes = consumer.handle(&[native]).await.expect("stored");
    let DeadLetterOutcome::Recorded { id } = outcomes[0] else {
        panic!("{outcomes:?}");
    };
    let rows = world
        .query(&format!(
            "SELECT source_queue, reason, set_aside_by, headers->>'message_id'
               FROM dead_letters WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(rows[0].get::<_, String>(0), world.queue(Queue::Tracking));
    assert_eq!(rows[0].get::<_, String>(1), "broker_expired");
    assert_eq!(rows[0].get::<_, String>(2), "rabbitmq");
    assert_eq!(
        rows[0].get::<_, Option<String>>(3).as_deref(),
        Some("native-1")
    );

    // Anything else on the queue — no headers, not ours — is stored raw, never dropped.
    let stray = Incoming {
        body: b"\x00\x01".to_vec(),
        properties: BasicProperties::default(),
        queue: Queue::DeadLetter,
        queue_name: world.queue(Queue::DeadLetter),
        redelivered: false,
    };
    let outcomes = consumer.handle(&[stray]).await.expect("stored");
    assert!(matches!(outcomes[0], DeadLetterOutcome::Recorded { .. }));
    assert_eq!(
        world
            .count(
                "SELECT count(*) FROM dead_letters WHERE reason = 'unlabelled'
                   AND tenant IS NULL AND body = '\\x0001'::bytea"
            )
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_operators_own_copies_are_not_recorded_twice() {
    let world = World::new().await;
    let (intake, _relay) = world.steps().await;
    intake
        .handle(&[incoming(&world, Queue::Mailbox, "not json", Some("bad-1"))])
        .await
        .expect("intake");
    let copies = world.drain_queue(Queue::DeadLetter).await;
    assert_eq!(copies.len(), 1);
    let copy = Incoming {
        body: copies[0].delivery.data.clone(),
        properties: copies[0].delivery.properties.clone(),
        queue: Queue::DeadLetter,
        queue_name: world.queue(Queue::DeadLetter),
        redelivered: false,
    };
    let outcomes = consumer(&world).handle(&[copy]).await.expect("stored");
    assert!(
        matches!(outcomes[0], DeadLetterOutcome::Own { .. }),
        "{outcomes:?}"
    );
    let rows = world
        .query("SELECT attempts, set_aside_by FROM dead_letters")
        .await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(0), 1);
    assert_eq!(rows[0].get::<_, String>(1), "operator");
}

async fn failed_events(world: &World, email: Uuid) -> Vec<Uuid> {
    world
        .query(&format!(
            "SELECT event_id::text FROM events WHERE email_id = '{email}' AND event_type = 'failed'"
        ))
        .await
        .iter()
        .map(|r| uuid(r.get(0)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_exhausted_job_gets_failed_once_and_never_after_dispatched() {
    let world = World::new().await;
    let consumer = consumer(&world);
    let job = job_for(&world, "acme", "given-up").await;
    consumer
        .handle(&[dispatcher_copy(&world, &job, "retries_exhausted")])
        .await
        .expect("stored");
    let expected = ids::dispatch_outcome_event_id(job.job_id, job.attempt, "failed");
    assert_eq!(failed_events(&world, job.email_id).await, [expected]);
    assert_eq!(
        world
            .count(&format!(
                "SELECT count(*) FROM emails WHERE id = '{}' AND status = 'failed'",
                job.email_id
            ))
            .await,
        1
    );
    // Another copy (set aside again) changes nothing in the history.
    tokio::time::sleep(Duration::from_millis(5)).await;
    consumer
        .handle(&[dispatcher_copy(&world, &job, "retries_exhausted")])
        .await
        .expect("stored");
    assert_eq!(failed_events(&world, job.email_id).await, [expected]);
    // The dispatcher's own report of that failure, arriving late, is the same event.
    let report = TrackingEvent {
        version: 1,
        event_id: expected,
        email_id: Some(job.email_id),
        tenant: "acme".into(),
        event_type: EventType::Failed,
        occurred_at: Utc::now(),
        source: "dispatcher".into(),
        provider: Some("smtp".into()),
        provider_message_id: None,
        provider_event_id: None,
        details: serde_json::json!({"reason": "gave up", "attempt": job.attempt}),
    };
    let tracker = Tracker::new(
        world.pool(),
        Publisher::open(&world.connection).await.expect("publisher"),
        world.config.topology(),
        Duration::from_secs(5),
    );
    tracker
        .handle(&[incoming(
            &world,
            Queue::Tracking,
            &serde_json::to_string(&report).expect("json"),
            None,
        )])
        .await
        .expect("tracking");
    assert_eq!(failed_events(&world, job.email_id).await, [expected]);

    // A job whose email was dispatched meanwhile gets no `failed` from its dead letter.
    let sent = job_for(&world, "acme", "sent-after-all").await;
    let dispatched = TrackingEvent {
        event_id: Uuid::new_v4(),
        email_id: Some(sent.email_id),
        event_type: EventType::Dispatched,
        details: serde_json::json!({"attempt": 1}),
        ..report
    };
    tracker
        .handle(&[incoming(
            &world,
            Queue::Tracking,
            &serde_json::to_string(&dispatched).expect("json"),
            None,
        )])
        .await
        .expect("tracking");
    consumer
        .handle(&[dispatcher_copy(&world, &sent, "retries_exhausted")])
        .await
        .expect("stored");
    assert!(failed_events(&world, sent.email_id).await.is_empty());
    assert_eq!(
        world
            .count("SELECT count(*) FROM dead_letters WHERE reason = 'retries_exhausted'")
            .await,
        2,
        "both dead letters are recorded all the same"
    );
}

struct Api {
    port: u16,
    ops: String,
    acme_admin: String,
    acme_read: String,
    globex: String,
}

async fn api(
    world: &World,
) -> (
    Api,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let answer = api_without_waiting(world).await;
    eventually("the API is ready", Duration::from_secs(20), || async {
        (http_get(answer.0.port, "/readyz", None).await.0 == 200).then_some(())
    })
    .await;
    answer
}

/// The running operator and keys, without waiting for its broker session.
async fn api_without_waiting(
    world: &World,
) -> (
    Api,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let (stop, handle, port) = world.start_operator_with_port().await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let mut key = async |name: &str, tenant: Option<&str>, role: Role| {
        keys::create(&mut conn, name, tenant, role)
            .await
            .expect("key")
            .1
    };
    let api = Api {
        port,
        ops: key("ops", None, Role::Admin).await,
        acme_admin: key("acme admin", Some("acme"), Role::Admin).await,
        acme_read: key("acme read", Some("acme"), Role::Read).await,
        globex: key("globex", Some("globex"), Role::Admin).await,
    };
    api_ready(port).await;
    (api, stop, handle)
}

impl Api {
    async fn get(&self, key: &str, path: &str) -> (u16, serde_json::Value) {
        let (status, _, body) = http_get(self.port, path, Some(key)).await;
        (status, body)
    }

    async fn post(
        &self,
        key: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, String, serde_json::Value) {
        let auth = format!("Bearer {key}");
        http_post(
            self.port,
            path,
            &[
                ("Authorization", auth.as_str()),
                ("Content-Type", "application/json"),
            ],
            body.to_string().as_bytes(),
        )
        .await
    }
}

/// Stores a dispatcher copy of a made-up job of `tenant` (none: no tenant header and a body that
/// is not a job), first seen at `at`; returns its id.
async fn stored(
    world: &World,
    tenant: Option<&str>,
    reason: &str,
    body: &[u8],
    at: DateTime<Utc>,
) -> Uuid {
    let mut table = FieldTable::default();
    if let Some(tenant) = tenant {
        table.insert(headers::TENANT.into(), AMQPValue::LongString(tenant.into()));
    }
    let message = original(
        world,
        Queue::Dispatching,
        body,
        table,
        &Uuid::new_v4().to_string(),
    );
    let outcomes = consumer(world)
        .handle(&[copy_of(world, &message, reason, "dispatcher")])
        .await
        .expect("stored");
    let DeadLetterOutcome::Recorded { id } = outcomes[0] else {
        panic!("{outcomes:?}");
    };
    world
        .query(&format!(
            "UPDATE dead_letters SET first_seen_at = '{}', last_seen_at = '{}' WHERE id = '{id}'",
            at.to_rfc3339(),
            at.to_rfc3339()
        ))
        .await;
    id
}

fn ids_of(page: &serde_json::Value) -> Vec<String> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_lists_filters_pages_and_scopes_dead_letters() {
    let world = World::new().await;
    let (api, stop, handle) = api(&world).await;
    let t0 = DateTime::parse_from_rfc3339("2026-11-01T10:00:00Z")
        .expect("time")
        .with_timezone(&Utc);
    let minute = chrono::Duration::minutes(1);
    let a1 = stored(&world, Some("acme"), "invalid_job", b"{\"a\":1}", t0).await;
    let a2 = stored(
        &world,
        Some("acme"),
        "unsupported_version",
        b"{\"a\":2}",
        t0 + minute,
    )
    .await;
    let a3 = stored(
        &world,
        Some("acme"),
        "invalid_job",
        b"\xff\xfe",
        t0 + minute * 2,
    )
    .await;
    let g1 = stored(
        &world,
        Some("globex"),
        "invalid_job",
        b"{\"g\":1}",
        t0 + minute * 3,
    )
    .await;
    let n1 = stored(&world, None, "invalid_job", b"{\"n\":1}", t0 + minute * 4).await;
    let s = |id: Uuid| id.to_string();

    // An all-tenant key sees everything, newest first.
    let (status, page) = api.get(&api.ops, "/v1/dead-letters").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids_of(&page), [s(n1), s(g1), s(a3), s(a2), s(a1)]);
    assert_eq!(page["items"][0]["state"], "open");
    assert_eq!(page["items"][0]["replayable"], true);
    assert!(
        page["items"][0].get("body").is_none(),
        "lists carry no bodies"
    );
    // A tenant key sees its tenant only; asking for another tenant shows nothing.
    let (_, page) = api.get(&api.acme_read, "/v1/dead-letters").await;
    assert_eq!(ids_of(&page), [s(a3), s(a2), s(a1)]);
    let (_, page) = api
        .get(&api.acme_read, "/v1/dead-letters?tenant=globex")
        .await;
    assert!(ids_of(&page).is_empty());
    let (_, page) = api.get(&api.globex, "/v1/dead-letters").await;
    assert_eq!(ids_of(&page), [s(g1)]);
    // Filters.
    let (_, page) = api
        .get(&api.ops, "/v1/dead-letters?reason=unsupported_version")
        .await;
    assert_eq!(ids_of(&page), [s(a2)]);
    let (_, page) = api
        .get(&api.ops, "/v1/dead-letters?tenant=acme&reason=invalid_job")
        .await;
    assert_eq!(ids_of(&page), [s(a3), s(a1)]);
    let since = (t0 + minute).to_rfc3339().replace('+', "%2B");
    let until = (t0 + minute * 3).to_rfc3339().replace('+', "%2B");
    let (status, page) = api
        .get(
            &api.ops,
            &format!("/v1/dead-letters?since={since}&until={until}"),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(ids_of(&page), [s(a3), s(a2)]);
    let queue = world.queue(Queue::Dispatching);
    let (_, page) = api
        .get(&api.ops, &format!("/v1/dead-letters?source_queue={queue}"))
        .await;
    assert_eq!(ids_of(&page).len(), 5);
    let (_, page) = api
        .get(&api.ops, "/v1/dead-letters?source_queue=elsewhere")
        .await;
    assert!(ids_of(&page).is_empty());
    let (_, page) = api.get(&api.ops, "/v1/dead-letters?state=replayed").await;
    assert!(ids_of(&page).is_empty());
    // Paging: the cursor continues where the page ended, nothing twice, nothing skipped.
    let (_, first) = api.get(&api.ops, "/v1/dead-letters?limit=2").await;
    assert_eq!(ids_of(&first), [s(n1), s(g1)]);
    let next = first["next"].as_str().expect("a next cursor").to_owned();
    let (_, second) = api
        .get(&api.ops, &format!("/v1/dead-letters?limit=2&after={next}"))
        .await;
    assert_eq!(ids_of(&second), [s(a3), s(a2)]);
    let next = second["next"].as_str().expect("a next cursor").to_owned();
    let (_, last) = api
        .get(&api.ops, &format!("/v1/dead-letters?limit=2&after={next}"))
        .await;
    assert_eq!(ids_of(&last), [s(a1)]);
    assert!(last["next"].is_null());
    // Bad input is a 400 problem.
    for bad in [
        "/v1/dead-letters?limit=501",
        "/v1/dead-letters?limit=0",
        "/v1/dead-letters?state=gone",
        "/v1/dead-letters?since=yesterday",
        "/v1/dead-letters?after=nonsense",
    ] {
        let (status, content_type, _) = http_get(api.port, bad, Some(&api.ops)).await;
        assert_eq!(
            (status, content_type.as_str()),
            (400, "application/problem+json"),
            "{bad}"
        );
    }

    // One dead letter: body as text when UTF-8, else base64; headers typed.
    let (status, one) = api
        .get(&api.acme_read, &format!("/v1/dead-letters/{a1}"))
        .await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["body"], "{\"a\":1}");
    assert_eq!(one["body_encoding"], "utf8");
    assert_eq!(one["message"]["headers"][headers::TENANT], "acme");
    assert_eq!(one["message"]["headers"][headers::REASON], "invalid_job");
    let (_, one) = api
        .get(&api.acme_read, &format!("/v1/dead-letters/{a3}"))
        .await;
    assert_eq!(one["body"], "//4=");
    assert_eq!(one["body_encoding"], "base64");
    // Out of scope is a 404, like an unknown id; no tenant is for all-tenant keys only.
    for (key, id) in [
        (&api.acme_read, g1),
        (&api.globex, a1),
        (&api.acme_admin, n1),
        (&api.ops, Uuid::new_v4()),
    ] {
        let (status, content_type, _) =
            http_get(api.port, &format!("/v1/dead-letters/{id}"), Some(key)).await;
        assert_eq!(
            (status, content_type.as_str()),
            (404, "application/problem+json")
        );
    }
    let (status, one) = api.get(&api.ops, &format!("/v1/dead-letters/{n1}")).await;
    assert_eq!(status, 200, "{one}");
    assert!(one["tenant"].is_null());
    // Without a key: 401.
    assert_eq!(http_get(api.port, "/v1/dead-letters", None).await.0, 401);

    stop.cancel();
    handle.await.expect("operator stops");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replay_republishes_a_job_once_with_a_fresh_attempt_and_discard_closes_for_good() {
    let world = World::new().await;
    // Before the operator runs: its relay would race the test's for the job.
    let job = job_for(&world, "acme", "replay-me").await;
    let (api, stop, handle) = api(&world).await;
    let copy = dispatcher_copy(&world, &job, "retries_exhausted");
    let DeadLetterOutcome::Recorded { id } =
        consumer(&world).handle(&[copy]).await.expect("stored")[0]
    else {
        panic!("not recorded");
    };
    let path = format!("/v1/dead-letters/{id}/replay");

    // A read key may not; another tenant's key does not even see it.
    let (status, content_type, _) = api.post(&api.acme_read, &path, serde_json::json!({})).await;
    assert_eq!(
        (status, content_type.as_str()),
        (403, "application/problem+json")
    );
    assert_eq!(
        api.post(&api.globex, &path, serde_json::json!({})).await.0,
        404
    );

    let (status, _, body) = api
        .post(&api.acme_admin, &path, serde_json::json!({}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["already_replayed"], false);
    assert_eq!(body["queue"], world.queue(Queue::Dispatching));
    let (status, _, body) = api.post(&api.ops, &path, serde_json::json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["already_replayed"], true,
        "the second replay publishes nothing"
    );

    let replayed = world.drain_queue(Queue::Dispatching).await;
    assert_eq!(replayed.len(), 1, "republished exactly once");
    let properties = &replayed[0].delivery.properties;
    let again: DispatchJob = serde_json::from_slice(&replayed[0].delivery.data).expect("a job");
    assert_eq!(again.job_id, job.job_id);
    assert_eq!(again.attempt, job.attempt + 1, "the next attempt");
    assert_eq!(again.counted_attempts(), 1, "a fresh retry budget");
    assert_eq!(again.first_attempt_at, None);
    assert_eq!(properties.delivery_mode(), &Some(2));
    assert_eq!(
        properties.message_id().as_ref().map(|m| m.as_str()),
        Some(job.job_id.to_string().as_str())
    );
    assert_eq!(
        header_string(properties, headers::REPLAY_OF),
        Some(id.to_string())
    );
    assert_eq!(
        header_i64(properties, headers::ATTEMPT),
        Some(i64::from(job.attempt + 1))
    );
    assert_eq!(header_string(properties, headers::REASON), None);
    assert_eq!(
        header_string(properties, headers::TENANT).as_deref(),
        Some("acme")
    );
    let rows = world
        .query(&format!(
            "SELECT replay_count, replayed_by IS NOT NULL, replayed_at IS NOT NULL
               FROM dead_letters WHERE id = '{id}'"
        ))
        .await;
    assert_eq!(rows[0].get::<_, i32>(0), 1);
    assert!(rows[0].get::<_, bool>(1) && rows[0].get::<_, bool>(2));
    let (_, one) = api
        .get(&api.acme_read, &format!("/v1/dead-letters/{id}"))
        .await;
    assert_eq!(one["state"], "replayed");
    assert_eq!(one["seen_after_replay"], false);
    // Set aside again after the replay: shown, not reopened.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let again = consumer(&world)
        .handle(&[dispatcher_copy(&world, &job, "retries_exhausted")])
        .await
        .expect("stored");
    assert_eq!(again, [DeadLetterOutcome::Repeated { id }]);
    let (_, one) = api
        .get(&api.acme_read, &format!("/v1/dead-letters/{id}"))
        .await;
    assert_eq!(one["state"], "replayed");
    assert_eq!(one["seen_after_replay"], true);
    assert_eq!(one["attempts"], 2);

    // Discard: a reason is required; a replayed one cannot be discarded.
    let other = stored(&world, Some("acme"), "invalid_job", b"{}", Utc::now()).await;
    let discard = format!("/v1/dead-letters/{other}/discard");
    assert_eq!(
        api.post(&api.acme_admin, &discard, serde_json::json!({}))
            .await
            .0,
        400
    );
    assert_eq!(
        api.post(
            &api.acme_read,
            &discard,
            serde_json::json!({"reason": "noise"})
        )
        .await
        .0,
        403
    );
    let (status, _, body) = api
        .post(
            &api.acme_admin,
            &discard,
            serde_json::json!({"reason": "test noise"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true);
    let (status, _, body) = api
        .post(
            &api.acme_admin,
            &discard,
            serde_json::json!({"reason": "again"}),
        )
        .await;
    assert_eq!(
        (status, body["changed"].clone()),
        (200, serde_json::json!(false))
    );
    let (status, content_type, _) = api
        .post(
            &api.acme_admin,
            &format!("/v1/dead-letters/{other}/replay"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(
        (status, content_type.as_str()),
        (409, "application/problem+json")
    );
    assert_eq!(
        api.post(
            &api.acme_admin,
            &format!("/v1/dead-letters/{id}/discard"),
            serde_json::json!({"reason": "late"})
        )
        .await
        .0,
        409
    );
    let (_, one) = api
        .get(&api.ops, &format!("/v1/dead-letters/{other}"))
        .await;
    assert_eq!(one["state"], "discarded");
    assert_eq!(one["discard_reason"], "test noise");
    assert!(world.drain_queue(Queue::Dispatching).await.is_empty());

    stop.cancel();
    handle.await.expect("operator stops");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_mailbox_request_is_taken_in_by_the_running_operator() {
    let mut world = World::new().await;
    // Set aside under a lower limit, replayed once the limit is raised.
    world.config.max_recipients = 1;
    let (intake, _relay) = world.steps().await;
    let request = serde_json::json!({
        "id": "two-recipients", "tenant": "acme", "from": "shop@acme.test",
        "to": ["ann@example.com", "bob@example.com"], "subject": "S", "text": "T",
    })
    .to_string();
    intake
        .handle(&[incoming(&world, Queue::Mailbox, &request, None)])
        .await
        .expect("intake");
    assert_eq!(world.drain_queue(Queue::DeadLetter).await.len(), 1);
    let rows = world
        .query("SELECT id::text, reason FROM dead_letters")
        .await;
    let id = uuid(rows[0].get(0));
    assert_eq!(rows[0].get::<_, String>(1), "too_many_recipients");
    world.config.max_recipients = 50;
    let (api, stop, handle) = api(&world).await;

    // A webhook's unmapped event has no queue to go back to.
    let webhook = Incoming {
        body: b"{\"event\": \"odd\"}".to_vec(),
        properties: BasicProperties::default().with_message_id("sendgrid:x:0".into()),
        queue: Queue::Tracking,
        queue_name: "webhook:sendgrid".into(),
        redelivered: false,
    };
    let out = SetAside::for_message(&webhook, "unmapped_event", "unknown type", "webhook-sink")
        .message_for(&webhook, &world.config.topology());
    // Published for real: the running operator's consumer stores it.
    Publisher::open(&world.connection)
        .await
        .expect("publisher")
        .publish(out)
        .await
        .expect("published");
    let unmapped: Uuid = eventually(
        "the consumer stores the copy",
        Duration::from_secs(20),
        || async {
            world
                .query("SELECT id::text FROM dead_letters WHERE reason = 'unmapped_event'")
                .await
                .first()
                .map(|r| uuid(r.get(0)))
        },
    )
    .await;
    let (status, _, _) = api
        .post(
            &api.ops,
            &format!("/v1/dead-letters/{unmapped}/replay"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 409, "not replayable");
    let (_, one) = api
        .get(&api.ops, &format!("/v1/dead-letters/{unmapped}"))
        .await;
    assert_eq!(one["replayable"], false);
    assert!(one["tenant"].is_null(), "the copy named no tenant");

    let (status, _, body) = api
        .post(
            &api.acme_admin,
            &format!("/v1/dead-letters/{id}/replay"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["queue"], world.queue(Queue::Mailbox));
    eventually(
        "the replayed request is taken in",
        Duration::from_secs(20),
        || async { (world.count("SELECT count(*) FROM emails").await == 2).then_some(()) },
    )
    .await;
    let key_source = world
        .query("SELECT key_source, request_key FROM requests")
        .await;
    assert_eq!(key_source[0].get::<_, String>(1), "two-recipients");
    assert_eq!(
        world
            .count("SELECT count(*) FROM dead_letters WHERE reason = 'too_many_recipients' AND attempts = 1")
            .await,
        1,
        "not set aside again"
    );

    stop.cancel();
    handle.await.expect("operator stops");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bulk_replay_republishes_the_open_ones_matching_the_filters() {
    let world = World::new().await;
    let (api, stop, handle) = api(&world).await;
    let now = Utc::now();
    let job =
        |n: u32| serde_json::to_vec(&serde_json::json!({"not": "a job", "n": n})).expect("json");
    for n in 0..3 {
        stored(&world, Some("acme"), "invalid_job", &job(n), now).await;
    }
    let discarded = stored(&world, Some("acme"), "invalid_job", &job(10), now).await;
    stored(&world, Some("acme"), "unsupported_version", &job(11), now).await;
    stored(&world, Some("globex"), "invalid_job", &job(20), now).await;
    stored(&world, None, "invalid_job", &job(30), now).await;
    assert_eq!(
        api.post(
            &api.acme_admin,
            &format!("/v1/dead-letters/{discarded}/discard"),
            serde_json::json!({"reason": "no"})
        )
        .await
        .0,
        200
    );

    assert_eq!(
        api.post(
            &api.acme_read,
            "/v1/dead-letters/replay?reason=invalid_job",
            serde_json::json!({})
        )
        .await
        .0,
        403
    );
    assert_eq!(
        api.post(
            &api.ops,
            "/v1/dead-letters/replay?limit=1001",
            serde_json::json!({})
        )
        .await
        .0,
        400
    );
    // A tenant key replays its own open ones only.
    let (status, _, body) = api
        .post(
            &api.acme_admin,
            "/v1/dead-letters/replay?reason=invalid_job",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"], 3);
    assert_eq!(body["more"], false);
    assert_eq!(body["queues"][world.queue(Queue::Dispatching)], 3);
    let republished = world.drain_queue(Queue::Dispatching).await;
    assert_eq!(republished.len(), 3);
    // Again: nothing left to replay.
    let (_, _, body) = api
        .post(
            &api.acme_admin,
            "/v1/dead-letters/replay?reason=invalid_job",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(body["replayed"], 0);
    assert!(world.drain_queue(Queue::Dispatching).await.is_empty());
    // An all-tenant key, limited, then the rest.
    let (_, _, body) = api
        .post(
            &api.ops,
            "/v1/dead-letters/replay?limit=1",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(
        (body["replayed"].clone(), body["more"].clone()),
        (serde_json::json!(1), serde_json::json!(true))
    );
    let (_, _, body) = api
        .post(&api.ops, "/v1/dead-letters/replay", serde_json::json!({}))
        .await;
    assert_eq!(body["replayed"], 2, "{body}");
    assert_eq!(world.drain_queue(Queue::Dispatching).await.len(), 3);
    assert_eq!(
        world
            .count("SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL")
            .await,
        1,
        "only the discarded one"
    );

    // More than one transaction's worth: the limit holds across chunks, and the rest follows.
    world
        .query(&format!(
            "INSERT INTO dead_letters (id, source_queue, reason, detail, tenant, set_aside_by,
                                       body, headers)
             SELECT gen_random_uuid(), '{}', 'invalid_job', '', 'initech', 'dispatcher',
                    convert_to(n::text, 'UTF8'), '{{}}'::jsonb
               FROM generate_series(1, 150) AS n",
            world.queue(Queue::Dispatching)
        ))
        .await;
    let (_, _, body) = api
        .post(
            &api.ops,
            "/v1/dead-letters/replay?tenant=initech&limit=120",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(
        (body["replayed"].clone(), body["more"].clone()),
        (serde_json::json!(120), serde_json::json!(true)),
        "{body}"
    );
    assert_eq!(world.drain_queue(Queue::Dispatching).await.len(), 120);
    let (_, _, body) = api
        .post(
            &api.ops,
            "/v1/dead-letters/replay?tenant=initech",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(
        (body["replayed"].clone(), body["more"].clone()),
        (serde_json::json!(30), serde_json::json!(false)),
        "{body}"
    );
    assert_eq!(world.drain_queue(Queue::Dispatching).await.len(), 30);
    // One audit entry per replayed dead letter, each naming it and its tenant.
    assert_eq!(
        world
            .count(
                "SELECT count(DISTINCT a.target) FROM audit_log a
                   JOIN dead_letters d ON d.id::text = a.target
                  WHERE a.action = 'dead_letter.replay' AND a.tenant = 'initech'
                    AND d.tenant = 'initech' AND (a.details->>'bulk')::boolean"
            )
            .await,
        150
    );

    stop.cancel();
    handle.await.expect("operator stops");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_broker_a_replay_answers_503_and_the_dead_letter_stays_open() {
    let mut world = World::new().await;
    let id = stored(&world, Some("acme"), "invalid_job", b"{}", Utc::now()).await;
    // Nothing listens on port 1: the HTTP API runs, the broker session never starts.
    world.config.broker.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".to_owned();
    let (api, stop, handle) = api_without_waiting(&world).await;
    assert_eq!(http_get(api.port, "/readyz", None).await.0, 503);
    let (status, content_type, _) = api
        .post(
            &api.ops,
            &format!("/v1/dead-letters/{id}/replay"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(
        (status, content_type.as_str()),
        (503, "application/problem+json")
    );
    let (status, _, _) = api
        .post(&api.ops, "/v1/dead-letters/replay", serde_json::json!({}))
        .await;
    assert_eq!(status, 503);
    // Reading needs no broker.
    let (status, one) = api.get(&api.ops, &format!("/v1/dead-letters/{id}")).await;
    assert_eq!(
        (status, one["state"].clone()),
        (200, serde_json::json!("open"))
    );

    stop.cancel();
    handle.await.expect("operator stops");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_consumer_survives_cut_connections_and_counts_each_copy_once() {
    const COPIES: usize = 60;
    let mut world = World::new().await;
    let (broker_proxy, amqp_url) = TcpProxy::for_url(&world.config.broker.amqp_url)
        .await
        .expect("proxy");
    let (db_proxy, database_url) = TcpProxy::for_url(world.db.url()).await.expect("proxy");
    world.config.broker.amqp_url = amqp_url;
    world.config.database_url = database_url;
    world.config.broker.amqp_heartbeat_secs = 2;
    world.config.database_timeout_ms = 2000;
    world.config.dead_letter_batch = 5;
    let (api, stop, handle) = api(&world).await;

    // Copies published directly (not through the proxies), while the connections are cut.
    let publisher = Publisher::open(&world.connection).await.expect("publisher");
    let copies: Vec<_> = (0..COPIES)
        .map(|n| {
            let message = original(
                &world,
                Queue::Dispatching,
                format!("{{\"n\": {n}}}").as_bytes(),
                FieldTable::default(),
                &format!("job-{n}"),
            );
            SetAside::for_message(&message, "invalid_job", "what to fix", "dispatcher")
                .message_for(&message, &world.config.topology())
        })
        .collect();
    let stored_count = || world.count("SELECT count(*) FROM dead_letters");
    publisher
        .publish_all(&copies[..COPIES / 2])
        .await
        .expect("published");
    eventually(
        "the first copies are stored",
        Duration::from_secs(20),
        || async { (stored_count().await > 0).then_some(()) },
    )
    .await;
    broker_proxy.cut();
    publisher
        .publish_all(&copies[COPIES / 2..])
        .await
        .expect("published");
    db_proxy.cut();

    eventually("every copy is stored", Duration::from_secs(40), || async {
        (stored_count().await == COPIES as i64).then_some(())
    })
    .await;
    assert_eq!(
        world
            .count("SELECT count(*) FROM dead_letters WHERE attempts <> 1")
            .await,
        0,
        "a redelivered copy is not another attempt"
    );
    // The new session fills the API's publisher again: a replay goes through.
    let id = uuid(
        world
            .query("SELECT id::text FROM dead_letters LIMIT 1")
            .await[0]
            .get(0),
    );
    let path = format!("/v1/dead-letters/{id}/replay");
    eventually(
        "a replay after the reconnect",
        Duration::from_secs(20),
        || async {
            let (status, _, _) = api.post(&api.ops, &path, serde_json::json!({})).await;
            (status == 200).then_some(())
        },
    )
    .await;
    assert_eq!(world.drain_queue(Queue::Dispatching).await.len(), 1);

    stop.cancel();
    handle.await.expect("operator stops");
}
