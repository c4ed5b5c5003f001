//! `GET /v1/stats`: event counts per bucket and dispatch-cohort rates on a known data set with
//! fixed `occurred_at` times, including late opens of an earlier day's email and a machine open.
//!
//! The data set (tenant acme; day 1 = 2026-11-02, day 2 = 2026-11-03, times UTC):
//!
//! | email | day 1 | day 2 |
//! |---|---|---|
//! | a1 | dispatched 10:00, delivered 10:01, opened 11:00 and 12:00 | opened 06:00, clicked 10:00 |
//! | a2 | dispatched 10:00, delivered 10:01, opened 23:30 | opened 07:00 |
//! | a3 | dispatched 10:00, delivered 10:01, machine open 10:02 | opened 09:00 (the late open) |
//! | a4 | dispatched 10:00, bounced 10:01 | |
//! | b1 | | dispatched 08:00, delivered 08:01 |
//! | b2 | | dispatched 08:00, delivered 08:01, complained 08:30 |
//!
//! and tenant globex: g1 dispatched day 1 10:00, opened 10:30. Day 2 holds three opens and only
//! two dispatched emails, so counting events would give a 150 % open rate; the day-1 cohort has
//! three of its four emails opened by people (a3's only on day 2): 75 %.

use crate::helpers::{World, api_ready, http_get, incoming};
use chrono::{DateTime, Utc};
use mailtrail_operator::history::{NewEvent, record_events};
use mailtrail_operator::keys::{self, Role};
use mailtrail_shared::history::EventType;
use mailtrail_shared::ids;
use mailtrail_shared::topology::Queue;
use serde_json::{Value, json};
use uuid::Uuid;

const DAY1: &str = "2026-11-02";
const DAY2: &str = "2026-11-03";
const PERIOD: &str = "since=2026-11-01T00:00:00Z&until=2026-11-04T00:00:00Z";

fn at(day: &str, time: &str) -> DateTime<Utc> {
    format!("{day}T{time}:00Z").parse().expect("a time")
}

fn event(email: Uuid, event_type: EventType, occurred_at: DateTime<Utc>) -> NewEvent {
    let source = match event_type {
        EventType::Dispatched => "dispatcher",
        _ => "webhook:sendgrid",
    };
    NewEvent {
        event_id: Uuid::new_v4(),
        email_id: email,
        event_type,
        occurred_at,
        source: source.into(),
        provider: Some("sendgrid".into()),
        provider_event_id: None,
        provider_message_id: None,
        details: json!({}),
        trace_id: None,
    }
}

fn machine(mut event: NewEvent) -> NewEvent {
    event.details = json!({"machine": true, "provider_event": "open"});
    event
}

/// Records the data set; returns nothing: the tests read it back through the API.
async fn seed(world: &World) {
    let (intake, _relay) = world.steps().await;
    let mut emails = std::collections::HashMap::new();
    for (tenant, key) in [
        ("acme", "a1"),
        ("acme", "a2"),
        ("acme", "a3"),
        ("acme", "a4"),
        ("acme", "b1"),
        ("acme", "b2"),
        ("globex", "g1"),
    ] {
        let to = format!("{key}@example.com");
        let request = json!({
            "id": key, "tenant": tenant, "from": "shop@acme.test", "to": to,
            "subject": "S", "text": "T",
        })
        .to_string();
        intake
            .handle(&[incoming(world, Queue::Mailbox, &request, None)])
            .await
            .expect("intake");
        emails.insert(key, ids::email_id(tenant, key, &to));
    }
    let e = |key: &str| emails[key];
    use EventType::*;
    let events = vec![
        event(e("a1"), Dispatched, at(DAY1, "10:00")),
        event(e("a1"), Delivered, at(DAY1, "10:01")),
        event(e("a1"), Opened, at(DAY1, "11:00")),
        event(e("a1"), Opened, at(DAY1, "12:00")),
        event(e("a1"), Opened, at(DAY2, "06:00")),
        event(e("a1"), Clicked, at(DAY2, "10:00")),
        event(e("a2"), Dispatched, at(DAY1, "10:00")),
        event(e("a2"), Delivered, at(DAY1, "10:01")),
        event(e("a2"), Opened, at(DAY1, "23:30")),
        event(e("a2"), Opened, at(DAY2, "07:00")),
        event(e("a3"), Dispatched, at(DAY1, "10:00")),
        event(e("a3"), Delivered, at(DAY1, "10:01")),
        machine(event(e("a3"), Opened, at(DAY1, "10:02"))),
        event(e("a3"), Opened, at(DAY2, "09:00")),
        event(e("a4"), Dispatched, at(DAY1, "10:00")),
        event(e("a4"), Bounced, at(DAY1, "10:01")),
        event(e("b1"), Dispatched, at(DAY2, "08:00")),
        event(e("b1"), Delivered, at(DAY2, "08:01")),
        event(e("b2"), Dispatched, at(DAY2, "08:00")),
        event(e("b2"), Delivered, at(DAY2, "08:01")),
        event(e("b2"), Complained, at(DAY2, "08:30")),
        event(e("g1"), Dispatched, at(DAY1, "10:00")),
        event(e("g1"), Opened, at(DAY1, "10:30")),
    ];
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    assert_eq!(record_events(&mut conn, events).await.expect("record"), 23);
}

struct Api {
    port: u16,
    all: String,
    acme: String,
    globex: String,
}

async fn api(
    world: &World,
) -> (
    Api,
    tokio_util::sync::CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let (stop, handle, port) = world.start_operator_with_port().await;
    let pool = world.pool();
    let mut conn = pool.get().await.expect("db");
    let (_, all) = keys::create(&mut conn, "ops", None, Role::Read)
        .await
        .expect("key");
    let (_, acme) = keys::create(&mut conn, "acme", Some("acme"), Role::Read)
        .await
        .expect("key");
    let (_, globex) = keys::create(&mut conn, "globex", Some("globex"), Role::Admin)
        .await
        .expect("key");
    api_ready(port).await;
    (
        Api {
            port,
            all,
            acme,
            globex,
        },
        stop,
        handle,
    )
}

async fn stats(api: &Api, key: &str, query: &str) -> Value {
    let (status, _, body) = http_get(api.port, &format!("/v1/stats?{query}"), Some(key)).await;
    assert_eq!(status, 200, "{query}: {body}");
    body
}

/// A bucket: start, its non-zero counts, machine opens, machine clicks.
type BucketSummary = (String, Vec<(String, i64)>, i64, i64);

fn buckets(body: &Value) -> Vec<BucketSummary> {
    body["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| {
            let counts = b["counts"]
                .as_object()
                .expect("counts")
                .iter()
                .filter(|(_, n)| n.as_i64() != Some(0))
                .map(|(t, n)| (t.clone(), n.as_i64().expect("a count")))
                .collect();
            (
                b["start"].as_str().expect("start").to_owned(),
                counts,
                b["machine"]["opened"].as_i64().expect("machine opens"),
                b["machine"]["clicked"].as_i64().expect("machine clicks"),
            )
        })
        .collect()
}

fn counts(pairs: &[(&str, i64)]) -> Vec<(String, i64)> {
    let mut v: Vec<(String, i64)> = pairs.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect();
    v.sort();
    v
}

/// `[start, dispatched, delivered, bounced, complained, opened, clicked, machine opened]`.
fn cohort_counts(cohort: &Value) -> (String, [i64; 7]) {
    let n = |v: &Value| v.as_i64().expect("a count");
    (
        cohort["start"].as_str().unwrap_or("").to_owned(),
        [
            n(&cohort["dispatched"]),
            n(&cohort["delivered"]),
            n(&cohort["bounced"]),
            n(&cohort["complained"]),
            n(&cohort["opened"]),
            n(&cohort["clicked"]),
            n(&cohort["machine"]["opened"]),
        ],
    )
}

fn assert_rates(cohort: &Value, expected: [f64; 5]) {
    for (name, want) in ["delivered", "bounced", "complained", "opened", "clicked"]
        .iter()
        .zip(expected)
    {
        let got = cohort["rates"][name].as_f64().expect("a rate");
        assert!(
            (got - want).abs() < 1e-9,
            "{name} rate: {got}, expected {want}: {cohort}"
        );
        assert!(got <= 1.0);
    }
}

#[tokio::test]
async fn stats_count_events_per_bucket_and_rate_cohorts_of_unique_emails() {
    let world = World::new().await;
    seed(&world).await;
    let (api, stop, handle) = api(&world).await;

    // Day buckets in UTC, through acme's key (no tenant asked: its own).
    let body = stats(&api, &api.acme, PERIOD).await;
    assert_eq!(body["tenant"], "acme");
    assert_eq!(
        buckets(&body),
        vec![
            (
                format!("{DAY1}T00:00:00Z"),
                counts(&[
                    ("dispatched", 4),
                    ("delivered", 3),
                    ("bounced", 1),
                    ("opened", 3)
                ]),
                1,
                0
            ),
            (
                format!("{DAY2}T00:00:00Z"),
                counts(&[
                    ("dispatched", 2),
                    ("delivered", 2),
                    ("complained", 1),
                    ("opened", 3),
                    ("clicked", 1)
                ]),
                0,
                0
            ),
        ]
    );
    let cohorts = body["cohorts"].as_array().expect("cohorts");
    assert_eq!(cohorts.len(), 2, "{body}");
    // Day 1: a1–a4 dispatched; a1, a2, a3 delivered; a4 bounced; a1, a2 and a3 (late, on day 2)
    // opened by people; a1 clicked on day 2; a3's machine open apart.
    assert_eq!(
        cohort_counts(&cohorts[0]),
        (format!("{DAY1}T00:00:00Z"), [4, 3, 1, 0, 3, 1, 1])
    );
    assert_rates(&cohorts[0], [0.75, 0.25, 0.0, 0.75, 0.25]);
    // Day 2: b1, b2; three opens that day, none of them by these emails.
    assert_eq!(
        cohort_counts(&cohorts[1]),
        (format!("{DAY2}T00:00:00Z"), [2, 2, 0, 1, 0, 0, 0])
    );
    assert_rates(&cohorts[1], [1.0, 0.0, 0.5, 0.0, 0.0]);
    // Totals: events summed, cohorts summed (disjoint, so still unique emails).
    let totals = &body["totals"];
    assert_eq!(totals["counts"]["opened"], 6);
    assert_eq!(totals["counts"]["dispatched"], 6);
    assert_eq!(totals["machine"]["opened"], 1);
    assert_eq!(cohort_counts(&totals["cohort"]).1, [6, 5, 1, 1, 3, 1, 1]);
    assert_rates(
        &totals["cohort"],
        [5.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0, 0.5, 1.0 / 6.0],
    );

    // The same through the all-tenant key asking for acme; without a tenant it adds globex.
    let asked = stats(&api, &api.all, &format!("{PERIOD}&tenant=acme")).await;
    assert_eq!(asked["buckets"], body["buckets"]);
    assert_eq!(asked["cohorts"], body["cohorts"]);
    let everyone = stats(&api, &api.all, PERIOD).await;
    assert_eq!(everyone["tenant"], Value::Null);
    assert_eq!(everyone["buckets"][0]["counts"]["dispatched"], 5);
    assert_eq!(everyone["buckets"][0]["counts"]["opened"], 4);
    assert_eq!(
        cohort_counts(&everyone["cohorts"][0]).1,
        [5, 3, 1, 0, 4, 1, 1]
    );

    // Globex's key sees only globex, whatever it asks.
    let globex = stats(&api, &api.globex, PERIOD).await;
    assert_eq!(
        buckets(&globex),
        vec![(
            format!("{DAY1}T00:00:00Z"),
            counts(&[("dispatched", 1), ("opened", 1)]),
            0,
            0
        )]
    );
    assert_eq!(
        cohort_counts(&globex["cohorts"][0]).1,
        [1, 0, 0, 0, 1, 0, 0]
    );

    // Hour buckets over day 1: cohorts still count a3's and a1's day-2 events.
    let hours = stats(
        &api,
        &api.acme,
        &format!("since={DAY1}T00:00:00Z&until={DAY2}T00:00:00Z&bucket=hour"),
    )
    .await;
    assert_eq!(
        buckets(&hours),
        vec![
            (
                format!("{DAY1}T10:00:00Z"),
                counts(&[("dispatched", 4), ("delivered", 3), ("bounced", 1)]),
                1,
                0
            ),
            (format!("{DAY1}T11:00:00Z"), counts(&[("opened", 1)]), 0, 0),
            (format!("{DAY1}T12:00:00Z"), counts(&[("opened", 1)]), 0, 0),
            (format!("{DAY1}T23:00:00Z"), counts(&[("opened", 1)]), 0, 0),
        ]
    );
    let hour_cohorts = hours["cohorts"].as_array().expect("cohorts");
    assert_eq!(hour_cohorts.len(), 1);
    assert_eq!(
        cohort_counts(&hour_cohorts[0]),
        (format!("{DAY1}T10:00:00Z"), [4, 3, 1, 0, 3, 1, 1])
    );

    // In Asia/Tokyo (UTC+9) a2's open at 23:30Z on day 1 falls on day 2 (08:30 local).
    let tokyo = stats(&api, &api.acme, &format!("{PERIOD}&tz=Asia/Tokyo")).await;
    assert_eq!(tokyo["tz"], "Asia/Tokyo");
    assert_eq!(
        buckets(&tokyo),
        vec![
            (
                format!("{DAY1}T00:00:00+09:00"),
                counts(&[
                    ("dispatched", 4),
                    ("delivered", 3),
                    ("bounced", 1),
                    ("opened", 2)
                ]),
                1,
                0
            ),
            (
                format!("{DAY2}T00:00:00+09:00"),
                counts(&[
                    ("dispatched", 2),
                    ("delivered", 2),
                    ("complained", 1),
                    ("opened", 4),
                    ("clicked", 1)
                ]),
                0,
                0
            ),
        ]
    );
    assert_eq!(
        cohort_counts(&tokyo["cohorts"][0]),
        (format!("{DAY1}T00:00:00+09:00"), [4, 3, 1, 0, 3, 1, 1])
    );

    stop.cancel();
    handle.await.expect("operator stops");
}

#[tokio::test]
async fn stats_are_scoped_to_the_keys_tenant_and_check_their_parameters() {
    let world = World::new().await;
    let (api, stop, handle) = api(&world).await;

    // No key: 401. Another tenant: 404, never 403.
    let (status, _, _) = http_get(api.port, &format!("/v1/stats?{PERIOD}"), None).await;
    assert_eq!(status, 401);
    let (status, content_type, body) = http_get(
        api.port,
        &format!("/v1/stats?{PERIOD}&tenant=globex"),
        Some(&api.acme),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(
        http_get(api.port, "/v1/stats?tenant=acme", Some(&api.acme))
            .await
            .0,
        200
    );

    // Nothing recorded: no buckets, zero totals, no rates.
    let empty = stats(&api, &api.all, PERIOD).await;
    assert_eq!(empty["buckets"], json!([]));
    assert_eq!(empty["cohorts"], json!([]));
    assert_eq!(empty["totals"]["cohort"]["dispatched"], 0);
    assert_eq!(empty["totals"]["cohort"]["rates"]["opened"], Value::Null);

    for (query, says) in [
        ("bucket=week", "bucket"),
        ("tz=Mars/Olympus_Mons", "tz"),
        ("tz=UTC%2B5", "tz"),
        ("since=yesterday", "since"),
        ("until=2026-11-01", "until"),
        (
            "since=2026-11-02T00:00:00Z&until=2026-11-01T00:00:00Z",
            "earlier",
        ),
        (
            "since=2026-10-01T00:00:00Z&until=2026-11-02T00:00:00Z&bucket=hour",
            "31 days",
        ),
        (
            "since=2025-01-01T00:00:00Z&until=2026-11-02T00:00:00Z",
            "400 days",
        ),
    ] {
        let (status, content_type, body) =
            http_get(api.port, &format!("/v1/stats?{query}"), Some(&api.all)).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(content_type, "application/problem+json");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(detail.contains(says), "{query}: {detail}");
    }

    stop.cancel();
    handle.await.expect("operator stops");
}
