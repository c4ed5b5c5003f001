//! Fair dispatch across tenants: the relay lets at most K of a tenant's jobs be in flight
//! (published, no outcome yet), taking tenants round-robin; a job's first outcome from the
//! dispatcher frees its slot, a lost one frees it after the slot timeout; a lone tenant is capped
//! too (so a newcomer never waits behind its backlog), priority mail never; concurrent relays
//! publish each job once and keep to the cap.

use crate::flight::dispatcher;
use crate::helpers::{World, incoming};
use chrono::{Duration as Span, Utc};
use mailtrail_broker::Publisher;
use mailtrail_operator::clock::Clock;
use mailtrail_operator::intake::{Intake, IntakeOutcome};
use mailtrail_operator::relay::{FairShare, Relay};
use mailtrail_operator::tracking::{Tracker, TrackingOutcome};
use mailtrail_shared::dispatch::DispatchJob;
use mailtrail_shared::history::EventType;
use mailtrail_shared::topology::Queue;
use mailtrail_shared::tracking::TrackingEvent;
use mailtrail_smtp_capture::SmtpCapture;
use mailtrail_test_support::eventually;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

const K: u32 = 20;
const SLOT_TIMEOUT: Duration = Duration::from_secs(900);

fn share(per_tenant: u32) -> FairShare {
    FairShare {
        per_tenant,
        slot_timeout: SLOT_TIMEOUT,
    }
}

struct Steps {
    intake: Intake,
    tracker: Tracker,
    clock: Clock,
}

async fn steps(world: &World) -> Steps {
    let clock = Clock::manual(Utc::now());
    let intake = Intake::new(
        world.pool(),
        Publisher::open(&world.connection).await.expect("publisher"),
        world.config.topology(),
        world.config.limits(),
        Duration::from_secs(5),
        Arc::new(Notify::new()),
    )
    .with_clock(clock.clone());
    let tracker = Tracker::new(
        world.pool(),
        Publisher::open(&world.connection).await.expect("publisher"),
        world.config.topology(),
        Duration::from_secs(5),
    );
    Steps {
        intake,
        tracker,
        clock,
    }
}

/// A relay of its own (own pool, own publisher), as another operator would run it.
async fn relay(world: &World, steps: &Steps, batch: i64, fair: FairShare) -> Relay {
    Relay::new(
        world.pool(),
        Publisher::open(&world.connection).await.expect("publisher"),
        world.config.topology(),
        batch,
        Duration::from_secs(5),
    )
    .with_clock(steps.clock.clone())
    .with_fair_share(fair)
}

/// Accepts `count` emails for `tenant` (requests of up to 50 recipients); returns their ids.
async fn backlog(
    world: &World,
    steps: &Steps,
    tenant: &str,
    label: &str,
    count: usize,
    priority: bool,
) -> Vec<Uuid> {
    let mut bodies = Vec::new();
    for (n, start) in (0..count).step_by(50).enumerate() {
        let to: Vec<String> = (start..count.min(start + 50))
            .map(|i| format!("{label}{i}@example.com"))
            .collect();
        bodies.push(
            serde_json::json!({
                "id": format!("{label}-{n}"), "tenant": tenant, "from": "shop@acme.test",
                "to": to, "subject": "S", "text": "T",
                "priority": if priority { "high" } else { "normal" },
            })
            .to_string(),
        );
    }
    let batch: Vec<_> = bodies
        .iter()
        .map(|b| incoming(world, Queue::Mailbox, b, None))
        .collect();
    let outcomes = steps.intake.handle(&batch).await.expect("intake");
    let mut ids = Vec::new();
    for outcome in outcomes {
        match outcome {
            IntakeOutcome::Accepted { email_ids, .. } => ids.extend(email_ids),
            other => panic!("expected the request to be accepted, got {other:?}"),
        }
    }
    assert_eq!(ids.len(), count);
    ids
}

/// The dispatcher's first outcome for an email.
fn outcome(email_id: Uuid, tenant: &str, event_type: EventType) -> TrackingEvent {
    TrackingEvent {
        version: 1,
        event_id: Uuid::new_v4(),
        email_id: Some(email_id),
        tenant: tenant.to_owned(),
        event_type,
        occurred_at: Utc::now(),
        source: "dispatcher".into(),
        provider: Some("smtp".into()),
        provider_message_id: None,
        provider_event_id: None,
        details: serde_json::json!({"attempt": 1}),
    }
}

async fn report(world: &World, steps: &Steps, events: &[TrackingEvent]) {
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

/// Emails of `tenant` whose jobs are published, in publication order (then job order).
async fn published(world: &World, tenant: &str) -> Vec<Uuid> {
    world
        .query(&format!(
            "SELECT email_id::text FROM outbox WHERE tenant = '{tenant}' AND published_at IS NOT NULL
              ORDER BY published_at, available_at, id"
        ))
        .await
        .iter()
        .map(|r| r.get::<_, String>(0).parse().expect("a uuid"))
        .collect()
}

/// The `n` oldest jobs' emails of `tenant` in the normal queue.
async fn oldest(world: &World, tenant: &str, n: usize) -> BTreeSet<Uuid> {
    world
        .query(&format!(
            "SELECT email_id::text FROM outbox WHERE tenant = '{tenant}' AND queue = 'dispatching'
              ORDER BY available_at, id LIMIT {n}"
        ))
        .await
        .iter()
        .map(|r| r.get::<_, String>(0).parse().expect("a uuid"))
        .collect()
}

/// Normal-queue jobs in flight (published, no outcome yet) per tenant.
async fn unsettled(world: &World) -> BTreeMap<String, i64> {
    world
        .query(
            "SELECT tenant, count(*) FROM outbox
              WHERE queue = 'dispatching' AND published_at IS NOT NULL AND settled_at IS NULL
              GROUP BY tenant",
        )
        .await
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// Unsettled normal-queue emails of `tenant`, oldest first.
async fn unsettled_of(world: &World, tenant: &str) -> Vec<Uuid> {
    world
        .query(&format!(
            "SELECT email_id::text FROM outbox
              WHERE tenant = '{tenant}' AND queue = 'dispatching'
                AND published_at IS NOT NULL AND settled_at IS NULL
              ORDER BY available_at, id"
        ))
        .await
        .iter()
        .map(|r| r.get::<_, String>(0).parse().expect("a uuid"))
        .collect()
}

/// Tenants with unpublished normal-queue jobs.
async fn waiting_tenants(world: &World) -> usize {
    world
        .count(
            "SELECT count(DISTINCT tenant) FROM outbox
              WHERE queue = 'dispatching' AND published_at IS NULL",
        )
        .await as usize
}

fn set(ids: &[Uuid]) -> BTreeSet<Uuid> {
    ids.iter().copied().collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_small_tenant_goes_out_in_the_first_round_beside_a_big_backlog_interleaved() {
    let world = World::new().await;
    let steps = steps(&world).await;
    let big = backlog(&world, &steps, "bulkco", "b", 300, false).await;
    let small = backlog(&world, &steps, "tinyco", "s", 3, false).await;
    let relay = relay(&world, &steps, 50, share(K)).await;

    // First round: K of the big tenant's oldest jobs and every one of the small tenant's.
    assert_eq!(relay.relay_once().await.expect("relay"), 23);
    assert_eq!(set(&published(&world, "tinyco").await), set(&small));
    let big_out = set(&published(&world, "bulkco").await);
    assert_eq!(big_out, oldest(&world, "bulkco", K as usize).await);
    assert!(big_out.is_subset(&set(&big)));
    // Published round-robin: one job of each tenant in turn while both have some left.
    let jobs = world.dispatch_jobs(Queue::Dispatching).await;
    let tenants: Vec<&str> = jobs.iter().map(|j| j.tenant.as_str()).collect();
    assert_eq!(jobs.len(), 23);
    assert_eq!(
        tenants[..6],
        ["bulkco", "tinyco", "bulkco", "tinyco", "bulkco", "tinyco"]
    );
    assert!(tenants[6..].iter().all(|t| *t == "bulkco"));
    assert_eq!(
        unsettled(&world).await,
        BTreeMap::from([("bulkco".into(), 20), ("tinyco".into(), 3)])
    );

    // The small tenant has nothing left waiting; the big one, alone, still keeps to its share
    // and moves as its outcomes come in.
    assert_eq!(relay.relay_once().await.expect("relay"), 0);
    let held = unsettled_of(&world, "bulkco").await;
    let events: Vec<TrackingEvent> = held
        .iter()
        .map(|id| outcome(*id, "bulkco", EventType::Dispatched))
        .collect();
    report(&world, &steps, &events).await;
    assert_eq!(relay.relay_once().await.expect("relay"), 20);
    assert_eq!(
        set(&published(&world, "bulkco").await),
        oldest(&world, "bulkco", 40).await
    );
    assert!(set(&published(&world, "bulkco").await).is_subset(&set(&big)));
}

#[tokio::test(flavor = "multi_thread")]
async fn each_tenant_keeps_to_its_share_while_others_wait_and_outcomes_free_slots() {
    let world = World::new().await;
    let steps = steps(&world).await;
    backlog(&world, &steps, "bulkco", "b", 300, false).await;
    backlog(&world, &steps, "midco", "m", 100, false).await;
    let relay = relay(&world, &steps, 200, share(K)).await;

    assert_eq!(relay.relay_once().await.expect("relay"), 40);
    // Both at their cap and both still waiting: nothing more leaves.
    assert_eq!(relay.relay_once().await.expect("relay"), 0);
    assert_eq!(
        unsettled(&world).await,
        BTreeMap::from([("bulkco".into(), 20), ("midco".into(), 20)])
    );

    // Five `dispatched` and three `deferred` free eight of the big tenant's slots; a webhook's
    // `delivered` frees none (it is not the dispatcher's outcome).
    let held = unsettled_of(&world, "bulkco").await;
    let mut events: Vec<TrackingEvent> = held[..5]
        .iter()
        .map(|id| outcome(*id, "bulkco", EventType::Dispatched))
        .collect();
    events.extend(
        held[5..8]
            .iter()
            .map(|id| outcome(*id, "bulkco", EventType::Deferred)),
    );
    let mid_held = unsettled_of(&world, "midco").await;
    let mut webhook = outcome(mid_held[0], "midco", EventType::Delivered);
    webhook.source = "webhook:sendgrid".into();
    webhook.provider = Some("sendgrid".into());
    events.push(webhook);
    report(&world, &steps, &events).await;
    assert_eq!(
        unsettled(&world).await,
        BTreeMap::from([("bulkco".into(), 12), ("midco".into(), 20)])
    );
    let before = set(&published(&world, "bulkco").await);
    assert_eq!(relay.relay_once().await.expect("relay"), 8);
    let after = set(&published(&world, "bulkco").await);
    assert_eq!(after, oldest(&world, "bulkco", 28).await);
    assert_eq!(after.difference(&before).count(), 8);

    // Outcomes for everything in flight, round after round: the cap holds while both wait.
    let mut rounds = 0;
    while waiting_tenants(&world).await > 1 {
        rounds += 1;
        assert!(rounds < 50, "the backlog does not move");
        let mut events = Vec::new();
        for tenant in ["bulkco", "midco"] {
            for id in unsettled_of(&world, tenant).await {
                events.push(outcome(id, tenant, EventType::Dispatched));
            }
        }
        report(&world, &steps, &events).await;
        let published_now = relay.relay_once().await.expect("relay");
        assert!(published_now > 0);
        let counts = unsettled(&world).await;
        assert!(counts.values().all(|n| *n <= i64::from(K)), "{counts:?}");
    }
    // The mid tenant's last jobs left beside the big one's; the big tenant, now alone, still
    // has jobs waiting and keeps to its share.
    assert_eq!(
        world
            .count("SELECT count(*) FROM outbox WHERE tenant = 'midco' AND published_at IS NULL")
            .await,
        0
    );
    let left = world
        .count("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .await;
    assert!(left > 0);
    let counts = unsettled(&world).await;
    assert!(counts.values().all(|n| *n <= i64::from(K)), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lone_tenant_keeps_to_its_share_and_moves_as_outcomes_free_slots() {
    let world = World::new().await;
    let steps = steps(&world).await;
    let big = backlog(&world, &steps, "bulkco", "b", 300, false).await;
    let relay = relay(&world, &steps, 50, share(K)).await;

    // Alone, it is still held to K in flight: the rest of its backlog stays in the outbox, where
    // a tenant arriving later can be let in beside it.
    assert_eq!(relay.relay_once().await.expect("relay"), K as usize);
    assert_eq!(relay.relay_once().await.expect("relay"), 0);
    let mut taken: Vec<DispatchJob> = world.dispatch_jobs(Queue::Dispatching).await;
    let mut rounds = 0;
    while taken.len() < big.len() {
        rounds += 1;
        assert!(rounds <= 300 / K as usize, "the backlog does not move");
        let events: Vec<TrackingEvent> = unsettled_of(&world, "bulkco")
            .await
            .into_iter()
            .map(|id| outcome(id, "bulkco", EventType::Dispatched))
            .collect();
        report(&world, &steps, &events).await;
        assert_eq!(relay.relay_once().await.expect("relay"), K as usize);
        let counts = unsettled(&world).await;
        assert_eq!(counts, BTreeMap::from([("bulkco".into(), i64::from(K))]));
        taken.extend(world.dispatch_jobs(Queue::Dispatching).await);
    }
    assert_eq!(taken.len(), 300, "each job published once");
    assert_eq!(
        taken.iter().map(|j| j.email_id).collect::<BTreeSet<_>>(),
        set(&big)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn priority_mail_bypasses_the_cap() {
    let world = World::new().await;
    let steps = steps(&world).await;
    backlog(&world, &steps, "bulkco", "b", 300, false).await;
    backlog(&world, &steps, "midco", "m", 100, false).await;
    let urgent = backlog(&world, &steps, "bulkco", "u", 30, true).await;
    let relay = relay(&world, &steps, 200, share(K)).await;

    // Thirty priority jobs of the capped tenant, and K of each tenant's normal ones.
    assert_eq!(relay.relay_once().await.expect("relay"), 30 + 20 + 20);
    let priority = world.dispatch_jobs(Queue::DispatchingPriority).await;
    assert_eq!(
        priority.iter().map(|j| j.email_id).collect::<BTreeSet<_>>(),
        set(&urgent)
    );
    assert_eq!(world.dispatch_jobs(Queue::Dispatching).await.len(), 40);
    assert_eq!(relay.relay_once().await.expect("relay"), 0);

    // At its cap, the tenant's next priority mail still leaves at once.
    let more = backlog(&world, &steps, "bulkco", "v", 2, true).await;
    assert_eq!(relay.relay_once().await.expect("relay"), 2);
    let priority = world.dispatch_jobs(Queue::DispatchingPriority).await;
    assert_eq!(
        priority.iter().map(|j| j.email_id).collect::<BTreeSet<_>>(),
        set(&more)
    );
    assert_eq!(
        unsettled(&world).await,
        BTreeMap::from([("bulkco".into(), 20), ("midco".into(), 20)])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_whose_outcome_never_comes_is_freed_after_the_timeout() {
    let world = World::new().await;
    let steps = steps(&world).await;
    backlog(&world, &steps, "bulkco", "b", 300, false).await;
    backlog(&world, &steps, "midco", "m", 100, false).await;
    let relay = relay(&world, &steps, 200, share(K)).await;

    assert_eq!(relay.relay_once().await.expect("relay"), 40);
    steps
        .clock
        .advance(Span::from_std(SLOT_TIMEOUT).expect("a span") - Span::seconds(1));
    assert_eq!(relay.relay_once().await.expect("relay"), 0);
    steps.clock.advance(Span::seconds(2));
    assert_eq!(relay.relay_once().await.expect("relay"), 40);
    assert_eq!(
        set(&published(&world, "bulkco").await),
        oldest(&world, "bulkco", 40).await
    );
    // The lost outcomes stay unrecorded; only the recent jobs count against the cap.
    assert_eq!(
        unsettled(&world).await,
        BTreeMap::from([("bulkco".into(), 40), ("midco".into(), 40)])
    );
    assert_eq!(relay.relay_once().await.expect("relay"), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_relays_publish_each_job_once_and_keep_to_the_cap() {
    const TENANTS: [&str; 3] = ["alpha", "bravo", "charlie"];
    const PER_TENANT: usize = 120;
    const CAP: u32 = 10;
    let world = World::new().await;
    let steps = steps(&world).await;
    let mut tenant_of: HashMap<Uuid, &str> = HashMap::new();
    for tenant in TENANTS {
        for id in backlog(&world, &steps, tenant, tenant, PER_TENANT, false).await {
            tenant_of.insert(id, tenant);
        }
    }
    let mut relays = Vec::new();
    for _ in 0..3 {
        relays.push(relay(&world, &steps, 15, share(CAP)).await);
    }

    let mut rounds = 0;
    let mut capped_rounds = 0;
    let mut taken: Vec<DispatchJob> = Vec::new();
    loop {
        rounds += 1;
        assert!(rounds < 200, "the backlog does not move");
        let before = waiting_tenants(&world).await;
        if before == 0 {
            break;
        }
        let tasks: Vec<_> = relays
            .iter()
            .cloned()
            .map(|relay| tokio::spawn(async move { relay.relay_once().await.expect("relay") }))
            .collect();
        for task in tasks {
            task.await.expect("relay task");
        }
        // The cap held whatever the interleaving: together the relays took at most K each.
        if waiting_tenants(&world).await > 0 {
            capped_rounds += 1;
        }
        let counts = unsettled(&world).await;
        assert!(counts.values().all(|n| *n <= i64::from(CAP)), "{counts:?}");
        // Half of what is in flight reports back; the rest keeps its slot a while longer.
        let jobs = world.dispatch_jobs(Queue::Dispatching).await;
        let events: Vec<TrackingEvent> = unsettled_of_all(&world, &TENANTS)
            .await
            .into_iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, id)| outcome(id, tenant_of[&id], EventType::Dispatched))
            .collect();
        taken.extend(jobs);
        if !events.is_empty() {
            report(&world, &steps, &events).await;
        }
    }
    assert!(capped_rounds >= 5, "only {capped_rounds} contended rounds");
    taken.extend(world.dispatch_jobs(Queue::Dispatching).await);
    // Every job published exactly once, and `queued` recorded once per email.
    assert_eq!(taken.len(), TENANTS.len() * PER_TENANT);
    let distinct: BTreeSet<Uuid> = taken.iter().map(|j| j.job_id).collect();
    assert_eq!(distinct.len(), taken.len());
    assert_eq!(
        world
            .count("SELECT count(*) FROM events WHERE event_type = 'queued'")
            .await,
        (TENANTS.len() * PER_TENANT) as i64
    );
}

async fn unsettled_of_all(world: &World, tenants: &[&str]) -> Vec<Uuid> {
    let mut all = Vec::new();
    for tenant in tenants {
        all.extend(unsettled_of(world, tenant).await);
    }
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outcome_that_outruns_the_relays_commit_still_frees_the_slot() {
    let world = World::new().await;
    let steps = steps(&world).await;
    let email = backlog(&world, &steps, "bulkco", "b", 1, false).await[0];
    // A relay mid-round: the row is locked and handed to the broker, its commit still to come,
    // while the dispatcher has already sent the job and reported `dispatched`.
    let (relay_session, connection) =
        tokio_postgres::connect(world.db.url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
    tokio::spawn(connection);
    relay_session
        .batch_execute("BEGIN; SELECT id FROM outbox FOR UPDATE")
        .await
        .expect("lock the row");
    let commit_later = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        relay_session
            .batch_execute("UPDATE outbox SET published_at = now(); COMMIT")
            .await
            .expect("the relay commits");
    };
    let dispatched = [outcome(email, "bulkco", EventType::Dispatched)];
    tokio::join!(report(&world, &steps, &dispatched), commit_later);
    assert_eq!(
        world
            .count(
                "SELECT count(*) FROM outbox
                  WHERE published_at IS NOT NULL AND settled_at IS NOT NULL"
            )
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn through_a_real_dispatcher_outcomes_wake_the_relay_and_the_small_tenant_goes_first() {
    let mut world = World::new().await;
    world.config.fair_share_per_tenant = 5;
    // Polling alone would move a capped tenant once a minute: only wake-ups make this pass.
    world.config.relay_interval_ms = 60_000;
    let smtp = SmtpCapture::start().await.expect("smtp server");
    // Both backlogs are in the outbox before the operator starts. The small tenant has more than
    // K of its own, so it stays capped beside the big one for four rounds.
    let steps = steps(&world).await;
    backlog(&world, &steps, "bulkco", "b", 200, false).await;
    let small: Vec<String> = backlog(&world, &steps, "tinyco", "s", 20, false)
        .await
        .iter()
        .map(Uuid::to_string)
        .collect();
    let (stop, operator) = world.start_operator().await;
    let _dispatcher = dispatcher(&world, &smtp, None);
    eventually(
        "every email dispatched",
        Duration::from_secs(60),
        || async {
            (world
                .count("SELECT count(*) FROM emails WHERE status = 'dispatched'")
                .await
                == 220)
                .then_some(())
        },
    )
    .await;
    // The small tenant's mail did not wait behind the big tenant's 200 jobs: K of each at a time.
    let order: Vec<String> = smtp
        .messages()
        .iter()
        .map(|m| m.header("X-Mailtrail-Id").unwrap_or_default())
        .collect();
    assert_eq!(order.len(), 220);
    for id in &small {
        let at = order
            .iter()
            .position(|o| o == id)
            .expect("the small tenant's email arrived");
        assert!(at < 60, "the small tenant's email {id} arrived {at}th");
    }
    assert_eq!(
        world
            .count("SELECT count(*) FROM outbox WHERE settled_at IS NULL")
            .await,
        0
    );
    stop.cancel();
    operator.await.expect("operator stops");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_round_too_small_for_everyone_starts_the_next_with_the_following_tenant() {
    let world = World::new().await;
    let steps = steps(&world).await;
    for tenant in ["alpha", "bravo", "charlie"] {
        backlog(&world, &steps, tenant, tenant, 30, false).await;
    }
    let relay = relay(&world, &steps, 4, share(K)).await;
    let mut rounds = Vec::new();
    for _ in 0..3 {
        assert_eq!(relay.relay_once().await.expect("relay"), 4);
        let jobs = world.dispatch_jobs(Queue::Dispatching).await;
        rounds.push(jobs.into_iter().map(|j| j.tenant).collect::<Vec<_>>());
    }
    assert_eq!(
        rounds,
        [
            ["alpha", "bravo", "charlie", "alpha"],
            ["bravo", "charlie", "alpha", "bravo"],
            ["charlie", "alpha", "bravo", "charlie"],
        ]
    );
    assert_eq!(
        unsettled(&world).await,
        BTreeMap::from([
            ("alpha".into(), 4),
            ("bravo".into(), 4),
            ("charlie".into(), 4)
        ])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_fairness_off_jobs_leave_oldest_first_whatever_their_tenant() {
    let world = World::new().await;
    let steps = steps(&world).await;
    backlog(&world, &steps, "bulkco", "b", 300, false).await;
    let small = backlog(&world, &steps, "tinyco", "s", 3, false).await;
    let relay = relay(&world, &steps, 50, FairShare::off()).await;

    // The small tenant's mail waits behind the whole backlog: what fair dispatch prevents.
    for _ in 0..6 {
        assert_eq!(relay.relay_once().await.expect("relay"), 50);
        assert!(published(&world, "tinyco").await.is_empty());
    }
    assert_eq!(relay.relay_once().await.expect("relay"), 3);
    assert_eq!(set(&published(&world, "tinyco").await), set(&small));
}
